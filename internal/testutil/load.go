package testutil

import (
	"context"
	"maps"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// LoadConfig says what a Load sends. The zero value is usable.
type LoadConfig struct {
	// Method is the full method each call goes to. Zero means
	// "/test.Svc/Echo".
	Method string
	// Workers is how many calls are in flight at once. Zero means 4.
	Workers int
	// Timeout is each call's deadline. Zero means 1s.
	Timeout time.Duration
	// Interval is the least time between the starts of two calls of one
	// worker; zero means none. Calls that fail fast would otherwise spin.
	Interval time.Duration
	// Payload is the request message. Nil means "ping".
	Payload []byte
	// CallOptions are added to every call.
	CallOptions []grpc.CallOption
}

// Load keeps unary calls going through a connection until Stop, and counts
// how they end: by status code, and by the backend that answered (the
// x-backend header testbackend sends).
type Load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu sync.Mutex // guards the fields below
	// codes counts the calls by status code.
	codes map[codes.Code]int
	// backends counts the successful calls by x-backend header value.
	backends map[string]int
	// lastFailure is when the latest failed call ended; lastErr its error.
	lastFailure time.Time
	lastErr     error
	// okStreak counts the successful calls since the latest failure.
	okStreak int
}

// StartLoad starts cfg.Workers goroutines calling through cc; the load stops
// at the end of the test if not before.
func StartLoad(t testing.TB, cc grpc.ClientConnInterface, cfg LoadConfig) *Load {
	if cfg.Method == "" {
		cfg.Method = "/" + TestService + "/Echo"
	}
	if cfg.Workers == 0 {
		cfg.Workers = 4
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = time.Second
	}
	if cfg.Payload == nil {
		cfg.Payload = []byte("ping")
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Load{cancel: cancel, codes: map[codes.Code]int{}, backends: map[string]int{}}
	for range cfg.Workers {
		l.wg.Go(func() { l.work(ctx, cc, cfg) })
	}
	t.Cleanup(l.Stop)
	return l
}

func (l *Load) work(ctx context.Context, cc grpc.ClientConnInterface, cfg LoadConfig) {
	var pace *time.Timer
	if cfg.Interval > 0 {
		pace = time.NewTimer(0)
		defer pace.Stop()
	}
	for {
		if pace != nil {
			select {
			case <-ctx.Done():
				return
			case <-pace.C:
			}
			pace.Reset(cfg.Interval)
		}
		if ctx.Err() != nil {
			return
		}
		cctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		var md metadata.MD
		opts := append([]grpc.CallOption{grpc.Header(&md)}, cfg.CallOptions...)
		_, err := Unary(cctx, cc, cfg.Method, cfg.Payload, opts...)
		cancel()
		if ctx.Err() != nil {
			// Cut short by Stop: the outcome is the test's doing, not
			// the backend's.
			return
		}
		l.record(err, first(md, "x-backend"))
	}
}

func (l *Load) record(err error, backend string) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.codes[status.Code(err)]++
	if err != nil {
		l.lastFailure, l.lastErr = now, err
		l.okStreak = 0
		return
	}
	l.backends[backend]++
	l.okStreak++
}

// Stop ends the calls and waits for the workers. Calls cut short by Stop are
// not counted. Stop may be called more than once.
func (l *Load) Stop() {
	l.cancel()
	l.wg.Wait()
}

// Counts is how many calls ended with each status code so far.
func (l *Load) Counts() map[codes.Code]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.codes)
}

// Backends is how many calls each backend answered successfully so far, by
// the value of their x-backend header ("" for answers without one).
func (l *Load) Backends() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.backends)
}

// LastFailure is when the latest failed call ended and its error; the zero
// time when no call has failed.
func (l *Load) LastFailure() (time.Time, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastFailure, l.lastErr
}

// OKStreak is how many calls have succeeded since the latest failure: a
// test waits on it to see traffic recover.
func (l *Load) OKStreak() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.okStreak
}
