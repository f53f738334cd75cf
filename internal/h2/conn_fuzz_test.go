package h2

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// echo answers every stream with headers, its DATA back, and trailers.
type echo struct{}

func (echo) Headers(s *Stream, f *http2.MetaHeadersFrame) {
	if f.StreamEnded() {
		s.WriteHeaders([]hpack.HeaderField{{Name: "grpc-status", Value: "0"}}, true)
	}
}

func (echo) Data(s *Stream, ch Chunk, end bool) {
	n := len(ch.B)
	s.WriteData(ch, false)
	s.Consumed(n)
	if end {
		s.WriteHeaders([]hpack.HeaderField{{Name: "grpc-status", Value: "0"}}, true)
	}
}

func (echo) Reset(*Stream, http2.ErrCode, error) {}
func (echo) Sent(*Stream, int)                   {}

// FuzzServerConn sends a server connection a valid preface and then any
// bytes at all, over real TCP (so that the inline and vectored writes
// run too): it must neither panic nor hang, and must end once the peer
// hangs up.
func FuzzServerConn(f *testing.F) {
	var seed bytes.Buffer
	fr := http2.NewFramer(&seed, nil)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, hf := range []hpack.HeaderField{{Name: ":method", Value: "POST"}, {Name: ":path", Value: "/a.B/C"}, {Name: ":scheme", Value: "http"}, {Name: ":authority", Value: "x"}, {Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"}} {
		_ = enc.WriteField(hf)
	}
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
	_ = fr.WriteData(1, false, []byte{0, 0, 0, 0, 3, 'a', 'b', 'c'})
	_ = fr.WriteData(1, true, bytes.Repeat([]byte{7}, 5000))
	_ = fr.WritePing(false, [8]byte{1})
	_ = fr.WriteWindowUpdate(0, 1000)
	_ = fr.WriteRSTStream(1, http2.ErrCodeCancel)
	f.Add(seed.Bytes())
	f.Add([]byte{0, 0, 8, 0, 0, 0, 0, 0, 1, 1, 2})
	f.Add([]byte{0, 0, 0, 9, 4, 0, 0, 0, 1})

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer lis.Close()
	pool := NewPool(DefaultMaxFrameSize)
	f.Fuzz(func(t *testing.T, in []byte) {
		client, err := net.Dial("tcp", lis.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		server, err := lis.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c := NewConn(server, Server, Config{
			Pool: pool, MaxConcurrentStreams: 10,
			OnStream: func(s *Stream, f *http2.MetaHeadersFrame) {
				s.Accept(echo{})
				s.WriteHeaders([]hpack.HeaderField{{Name: ":status", Value: "200"}}, false)
			},
		})
		served := make(chan error, 1)
		go func() { served <- c.Serve(time.Now().Add(5 * time.Second)) }()
		read := make(chan struct{})
		go func() {
			defer close(read)
			_, _ = io.Copy(io.Discard, client)
		}()
		var out bytes.Buffer
		out.WriteString(ClientPreface)
		_ = http2.NewFramer(&out, nil).WriteSettings()
		out.Write(in)
		_, _ = client.Write(out.Bytes())
		_ = client.(*net.TCPConn).CloseWrite()
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Fatal("the connection did not end after the peer hung up")
		}
		client.Close()
		<-read
	})
}
