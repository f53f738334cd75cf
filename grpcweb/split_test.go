package grpcweb

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestSplitByFirstBytes: the HTTP/2 preface and TLS go to H2 with their
// bytes given back, HTTP/1 to HTTP1, a silent client is cut after the
// timeout without holding up the others, and Close ends it all.
func TestSplitByFirstBytes(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewSplit(lis, 200*time.Millisecond)
	defer s.Close()

	silent := dial(t, lis.Addr().String(), "")
	defer silent.Close()
	for _, tc := range []struct {
		name, first string
		h2          bool
	}{
		{"http2 preface", preface + "\x00\x00\x00\x04", true},
		{"tls", "\x16\x03\x01\x02\x00", true},
		{"http1", "POST /a.B/C HTTP/1.1\r\n", false},
		{"http1 after part of the preface", "PRI * HTTP/1.1\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, lis.Addr().String(), tc.first)
			defer c.Close()
			got, other := s.HTTP1(), s.H2()
			if tc.h2 {
				got, other = other, got
			}
			sc := accept(t, got)
			defer sc.Close()
			buf := make([]byte, len(tc.first))
			if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != tc.first {
				t.Fatalf("served connection reads %q, %v; want %q", buf, err, tc.first)
			}
			// And the rest of the connection is the client's.
			if _, err := c.Write([]byte("more")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(sc, buf[:4]); err != nil || string(buf[:4]) != "more" {
				t.Fatalf("then reads %q, %v", buf[:4], err)
			}
			_ = other
		})
	}
	_ = silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("silent client: %v, want EOF once the timeout cut it", err)
	}
	s.Close()
	for _, l := range []net.Listener{s.H2(), s.HTTP1()} {
		if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
		}
	}
}

func dial(t *testing.T, addr, first string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if first != "" {
		if _, err := c.Write([]byte(first)); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func accept(t *testing.T, l net.Listener) net.Conn {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		ch <- res{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.c
	case <-time.After(5 * time.Second):
		t.Fatal("no connection within 5s")
		return nil
	}
}
