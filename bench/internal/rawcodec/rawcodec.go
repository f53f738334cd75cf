// Package rawcodec is the gRPC codec of the bench binaries: messages of the
// bench service travel as the bytes they are on the wire, so neither the load
// generator nor the backend spends CPU on protobuf, and the proxies under test
// are the only thing that varies between runs.
package rawcodec

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the fallback codec
	"google.golang.org/grpc/mem"
)

// Frame holds one received message by reference; marshalling a Frame hands
// that reference back to gRPC, so an echo copies nothing.
type Frame struct {
	Data mem.BufferSlice
}

// Size receives a message by its length alone: the load generator checks
// the size of a reply and never looks at its bytes.
type Size int

// Codec marshals *[]byte, *Frame and *Size as raw bytes and hands every other
// type (the health service's messages) to the registered proto codec, so one
// forced codec serves the bench service and grpc.health.v1 on one server.
type Codec struct{}

var fallback = encoding.GetCodecV2("proto")

// Name is "proto" because it sets the content-subtype on the wire: the raw
// bytes are protobuf messages, and every peer sees ordinary gRPC traffic.
func (Codec) Name() string { return "proto" }

// Marshal never copies: a *[]byte is sent from the caller's slice, which
// therefore must not change until the call is done.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	switch m := v.(type) {
	case *[]byte:
		return mem.BufferSlice{mem.SliceBuffer(*m)}, nil
	case *Frame:
		// gRPC frees what Marshal returns, so the Frame gives up its reference.
		out := m.Data
		m.Data = nil
		return out, nil
	}
	return fallback.Marshal(v)
}

// Unmarshal keeps a reference for a *Frame, since gRPC frees data on return.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	switch m := v.(type) {
	case *Frame:
		data.Ref()
		m.Data = data
		return nil
	case *Size:
		*m = Size(data.Len())
		return nil
	case *[]byte:
		*m = data.Materialize()
		return nil
	}
	return fallback.Unmarshal(data, v)
}

// Payload returns a message of exactly n bytes that is valid protobuf (field
// 1, bytes), so that a proxy which parses messages, as grpc-proxy does into
// emptypb.Empty, accepts it like any real message.
func Payload(n int) ([]byte, error) {
	switch {
	case n < 0:
		return nil, errors.New("payload size is negative")
	case n == 0:
		return []byte{}, nil
	case n == 1:
		return nil, errors.New("no protobuf message is exactly 1 byte long")
	}
	b := make([]byte, 0, n)
	for lenSize := 1; lenSize <= 5; lenSize++ {
		if l := n - 1 - lenSize; l >= 0 && varintSize(uint64(l)) == lenSize {
			return appendField1(b, l), nil
		}
	}
	// n sits just past a varint length boundary (130, 16387, ...): an empty
	// field 2 takes two bytes and the rest fits.
	b = append(b, 0x12, 0x00)
	for lenSize := 1; lenSize <= 5; lenSize++ {
		if l := n - 3 - lenSize; l >= 0 && varintSize(uint64(l)) == lenSize {
			return appendField1(b, l), nil
		}
	}
	return nil, fmt.Errorf("no protobuf message is exactly %d bytes long", n)
}

func appendField1(b []byte, l int) []byte {
	b = append(b, 0x0a) // field 1, wire type 2
	for u := uint64(l); ; u >>= 7 {
		if u < 0x80 {
			b = append(b, byte(u))
			break
		}
		b = append(b, byte(u)|0x80)
	}
	for i := 0; i < l; i++ {
		b = append(b, byte('a'+i%26))
	}
	return b
}

func varintSize(u uint64) int {
	n := 1
	for ; u >= 0x80; u >>= 7 {
		n++
	}
	return n
}
