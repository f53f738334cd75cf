package h2

import "sync"

// Chunk is one DATA frame's payload, read from the socket straight into
// pooled memory. Whoever holds a Chunk owns it: it passes it on to
// Stream.WriteData, which gives it back once written, or calls Release.
// So a relayed frame is copied once, from the socket's read buffer, and
// never again on its way to the other connection.
type Chunk struct {
	B []byte
	// buf is B's pooled backing; nil when B is not the pool's.
	buf  *[]byte
	pool *Pool
}

// Bytes wraps p, which is not pooled, as a Chunk.
func Bytes(p []byte) Chunk { return Chunk{B: p} }

// Release gives the chunk's memory back; the chunk must not be used after.
func (c Chunk) Release() {
	if c.buf != nil {
		c.pool.p.Put(c.buf)
	}
}

// DefaultMaxFrameSize is the largest frame a peer may send unless the
// Config says otherwise: HTTP/2's initial value, which gRPC peers keep.
const DefaultMaxFrameSize = 16 << 10

// Pool hands out the buffers DATA payloads are read into. Connections that
// relay to each other may share one or not: a Chunk goes back to its own.
type Pool struct {
	size int
	p    sync.Pool
}

// NewPool returns a pool of buffers of size bytes: frames up to that size
// are read into them; larger ones get memory of their own.
func NewPool(size int) *Pool {
	p := &Pool{size: size}
	p.p.New = func() any {
		b := make([]byte, size)
		return &b
	}
	return p
}

// get returns a chunk of n bytes.
func (p *Pool) get(n int) Chunk {
	if p == nil || n > p.size {
		return Chunk{B: make([]byte, n)}
	}
	bp := p.p.Get().(*[]byte)
	return Chunk{B: (*bp)[:n], buf: bp, pool: p}
}

// copyOf returns b copied into a chunk.
func (p *Pool) copyOf(b []byte) Chunk {
	if len(b) == 0 {
		return Chunk{}
	}
	ch := p.get(len(b))
	copy(ch.B, b)
	return ch
}
