//go:build unix

package gateway

import (
	"fmt"
	"net"
	"os"
	"syscall"
)

// socketPair is a connection of the bridge to the engine: a socket pair,
// whose kernel buffers let both ends write their prefaces before either
// reads, as grpc-go's server and net/http's client both do (net.Pipe,
// unbuffered, would hold them both until the handshake timeout). No
// address: nothing outside the process can reach it.
func socketPair() (client, server net.Conn, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("gateway: grpc-web: socketpair: %w", err)
	}
	conn := func(fd int) (net.Conn, error) {
		f := os.NewFile(uintptr(fd), "grpc-web")
		defer f.Close()
		return net.FileConn(f)
	}
	if client, err = conn(fds[0]); err != nil {
		syscall.Close(fds[1])
		return nil, nil, err
	}
	if server, err = conn(fds[1]); err != nil {
		client.Close()
		return nil, nil, err
	}
	return client, server, nil
}
