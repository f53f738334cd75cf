package proxy

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// Frame is one gRPC message in its wire form. The proxy moves Frames between
// the client stream and the backend stream without looking inside them.
//
// A Frame owns a reference to the buffers grpc received the message into;
// whoever ends up holding it must either send it (grpc frees the buffers after
// writing them) or call Free.
type Frame struct {
	data mem.BufferSlice
}

// Len is the message size in bytes.
func (f *Frame) Len() int { return f.data.Len() }

// Free releases the buffers if the frame was never sent.
func (f *Frame) Free() {
	f.data.Free()
	f.data = nil
}

// codec hands received buffers to the sending side untouched: Unmarshal takes
// a reference to them, Marshal gives that reference to grpc, which frees it
// once written. Nothing is copied or re-encoded, whatever the payload is.
//
// Values that are not Frames (the gateway's own grpc.health.v1 service on the
// same listener) go through the proto codec.
type codec struct {
	fallback encoding.CodecV2
}

func newCodec() codec {
	return codec{fallback: encoding.GetCodecV2(proto.Name)}
}

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*Frame); ok {
		data := f.data
		// Ownership moves to grpc; a second send of the same Frame must not
		// free the buffers twice.
		f.data = nil
		return data, nil
	}
	return c.fallback.Marshal(v)
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	if f, ok := v.(*Frame); ok {
		data.Ref()
		f.data = data
		return nil
	}
	return c.fallback.Unmarshal(data, v)
}

// Name is empty so that a backend call made without an explicit content
// subtype goes out as plain "application/grpc", exactly like the client's
// call came in; calls that had a subtype set it with grpc.CallContentSubtype.
func (codec) Name() string { return "" }
