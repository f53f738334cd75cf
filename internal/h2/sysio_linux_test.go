//go:build linux

package h2

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// tcpPair is a connected pair of loopback TCP connections.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		acc <- c
	}()
	a, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-acc
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// Writes larger than the socket takes at once wait for the peer to read,
// vectored writes of more buffers than one writev(2) takes arrive whole and
// in order, and the reader sees every byte then io.EOF.
func TestRawIOMovesEveryByte(t *testing.T) {
	a, b := tcpPair(t)
	_, w := newRawIO(a)
	r, _ := newRawIO(b)
	if w == nil || r == nil {
		t.Fatal("no raw I/O for a TCP connection")
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB: more than the socket buffers
	var bufs [][]byte
	var want bytes.Buffer
	want.Write(big)
	for i := range 3000 {
		p := []byte{byte(i), byte(i >> 8), 0, 1, 2}
		bufs = append(bufs, p, nil)
		want.Write(p)
	}
	got := make(chan []byte, 1)
	go func() {
		b, err := io.ReadAll(r)
		if err != nil {
			t.Errorf("read: %v", err)
		}
		got <- b
	}()
	if n, err := w.Write(big); err != nil || n != len(big) {
		t.Fatalf("Write = %d, %v; want %d", n, err, len(big))
	}
	if n, err := w.WriteBuffers(bufs); err != nil || n != want.Len()-len(big) {
		t.Fatalf("WriteBuffers = %d, %v; want %d", n, err, want.Len()-len(big))
	}
	a.Close()
	select {
	case b := <-got:
		if !bytes.Equal(b, want.Bytes()) {
			t.Fatalf("read %d bytes, not the %d written", len(b), want.Len())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reader did not finish")
	}
}

// TryWrite never waits: against a peer that does not read, it takes what
// the socket holds and then nothing.
func TestRawIOTryWriteDoesNotWait(t *testing.T) {
	a, _ := tcpPair(t)
	_, w := newRawIO(a)
	chunk := make([]byte, 1<<20)
	var total int
	for i := 0; ; i++ {
		n, err := w.TryWrite(chunk)
		if err != nil {
			t.Fatal(err)
		}
		total += n
		if n == 0 {
			break
		}
		if i > 1000 {
			t.Fatalf("the socket took %d bytes and still takes more", total)
		}
	}
	if total == 0 {
		t.Fatal("an empty socket took nothing")
	}
}

// A read waiting for data ends with the net package's errors: a deadline,
// then the connection's Close.
func TestRawIOReadDeadlineAndClose(t *testing.T) {
	_, b := tcpPair(t)
	r, _ := newRawIO(b)
	_ = b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	_ = b.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := r.Read(make([]byte, 10))
		done <- err
	}()
	b.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read on a closed connection: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read did not end on Close")
	}
}

// Not a socket: no raw I/O, the net.Conn is used as it is.
func TestRawIONotASocket(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if r, w := newRawIO(a); r != nil || w != nil {
		t.Fatal("raw I/O for an in-memory pipe")
	}
}

// Writing to a peer that is gone is an error, not the end of the process:
// the raw write raises SIGPIPE, which the Go runtime ignores for sockets.
func TestRawIOWriteToClosedPeer(t *testing.T) {
	a, b := tcpPair(t)
	_, w := newRawIO(a)
	b.Close()
	p := make([]byte, 64<<10)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := w.Write(p); err != nil {
			if !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("write to a closed peer: %v, want EPIPE or ECONNRESET", err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("writes to a closed peer kept succeeding")
		}
	}
}
