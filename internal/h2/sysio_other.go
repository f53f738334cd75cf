//go:build !linux

package h2

import "io"

// newRawIO: elsewhere than on Linux a connection is read and written
// through the net package (see sysio_linux.go).
func newRawIO(nc any) (io.Reader, sockWriter) { return nil, nil }
