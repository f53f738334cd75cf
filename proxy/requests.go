package proxy

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
)

// DefaultReplayBufferBytes is how many request bytes a call keeps to send
// again to another backend when the first did not accept it.
const DefaultReplayBufferBytes = 64 << 10

// requests copies a call's messages from the client to the backend stream
// until the client half-closes, on its own goroutine. Until the backend has
// answered (release), it keeps a reference to every message it sent, up to
// a byte limit, so that a call the backend never accepted (REFUSED_STREAM,
// GOAWAY) can be sent whole to another backend. A call whose messages
// overflow the limit is not sent again.
//
// It may outlive the handler when the backend ends the call first; grpc
// ends the server stream then, which unblocks RecvMsg.
type requests struct {
	ss     grpc.ServerStream
	cancel context.CancelCauseFunc
	limit  int
	// bytes counts the message bytes read from the client.
	bytes atomic.Int64

	mu sync.Mutex // guards the fields below
	// cur is the backend stream messages go to.
	cur grpc.ClientStream
	// kept are the messages sent so far, while a replay is possible;
	// keptArr holds the first ones without an allocation (a unary call
	// has one).
	kept      []mem.BufferSlice
	keptArr   [2]mem.BufferSlice
	keptBytes int
	// keeping is false once the backend answered or kept overflowed.
	keeping    bool
	halfClosed bool
}

func newRequests(ss grpc.ServerStream, cs grpc.ClientStream, cancel context.CancelCauseFunc, limit int) *requests {
	r := &requests{ss: ss, cur: cs, cancel: cancel, limit: limit, keeping: limit > 0}
	r.kept = r.keptArr[:0]
	return r
}

func (r *requests) run() {
	var f Frame
	for {
		if err := r.ss.RecvMsg(&f); err != nil {
			if errors.Is(err, io.EOF) {
				// Half-close: the backend sees end-of-stream and answers.
				r.mu.Lock()
				r.halfClosed = true
				cs := r.cur
				r.mu.Unlock()
				cs.CloseSend()
				return
			}
			// The client's side failed (cancel, deadline, a message over
			// the limit): the backend call ends too.
			r.cancel(err)
			return
		}
		r.bytes.Add(int64(f.Len()))
		r.mu.Lock()
		if r.keeping {
			if r.keptBytes+f.Len() <= r.limit {
				f.data.Ref()
				r.kept = append(r.kept, f.data)
				r.keptBytes += f.Len()
			} else {
				r.releaseLocked()
			}
		}
		cs := r.cur
		r.mu.Unlock()
		if err := cs.SendMsg(&f); err != nil {
			// The backend stream has ended; its status reaches the client
			// through the response side, or the call goes to another
			// backend with what was kept. Keep reading: a half-close or
			// the end of the call stops the loop.
			f.Free()
		}
	}
}

// replayable reports whether everything sent so far was kept.
func (r *requests) replayable() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.keeping
}

// fits reports whether everything sent so far was kept, within n bytes.
func (r *requests) fits(n int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.keeping && r.keptBytes <= n
}

// switchTo sends what was kept to cs and makes it the stream messages go
// to. The lock is held while replaying, so that no message overtakes the
// replay; the kept bytes fit in a stream's first window, so the sends do not
// wait for the backend. It reports false, sending nothing, when what was
// sent is no longer kept whole: the request grew past the limit since the
// caller asked.
func (r *requests) switchTo(cs grpc.ClientStream) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.keeping {
		return false
	}
	for _, d := range r.kept {
		// The stream frees what it sends; the kept reference stays ours.
		d.Ref()
		if err := cs.SendMsg(&Frame{data: d}); err != nil {
			d.Free()
			break
		}
	}
	if r.halfClosed {
		cs.CloseSend()
	}
	r.cur = cs
	return true
}

// release stops keeping messages and frees those kept.
func (r *requests) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.releaseLocked()
}

func (r *requests) releaseLocked() {
	for _, d := range r.kept {
		d.Free()
	}
	clear(r.kept)
	r.kept, r.keptBytes, r.keeping = nil, 0, false
}
