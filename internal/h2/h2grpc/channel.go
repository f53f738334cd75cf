// Package h2grpc speaks gRPC as a client over the relay's own HTTP/2
// connections (internal/h2): a Channel is one backend's connection, kept
// up with a state machine like grpc-go's (IDLE, CONNECTING, READY,
// TRANSIENT_FAILURE, SHUTDOWN), and a grpc.ClientConnInterface on it, so
// that the health Watch and the liveness probe travel the connection that
// carries the relayed calls, with no grpc-go connection beside it.
//
// The calls are framed here: request HEADERS, messages with the 5-byte
// prefix, the status from trailers (or a trailers-only answer, or the
// HTTP status of a proxy that answered instead). Any unary or streaming
// call works, with the codec of grpc.ForceCodecV2 or the proto codec; it
// is not a general gRPC client: no compression, no per-call credentials,
// no retries, no load balancing.
//
// There is no PING keepalive: a default grpc-go server answers PINGs on a
// connection without calls with GOAWAY too_many_pings, and the gateway
// finds a backend that stopped answering with its liveness probe (an
// ordinary Health/Check on this connection) and Severs it.
package h2grpc

import (
	"context"
	"errors"
	"fmt"
	"github.com/healthgate/healthgate/internal/backoff"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/internal/h2"
)

// Config of a Channel. Dial is required; zero values of the others are
// documented defaults.
type Config struct {
	// Dial makes one connection to the backend: TCP, and TLS over it
	// (ALPN h2) if the backend wants it, within ctx. Its error is the
	// channel's LastErr, for people: say what failed.
	Dial func(ctx context.Context) (net.Conn, error)
	// Authority is each call's :authority, normally the backend's
	// host:port.
	Authority string
	// UserAgent is each call's user-agent; empty sends none.
	UserAgent string
	// H2 configures each connection. OnGoAway, if set, is called as well
	// as the channel's own.
	H2 h2.Config
	// BackoffBase and BackoffMax bound the jittered exponential backoff
	// between failed attempts to connect. Zero means 100ms and 5s.
	BackoffBase, BackoffMax time.Duration
	// ConnectTimeout bounds one attempt: Dial and the HTTP/2 handshake.
	// Zero means 20s.
	ConnectTimeout time.Duration
	// Logger receives state changes at debug level; nil discards them.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.BackoffBase <= 0 {
		c.BackoffBase = 100 * time.Millisecond
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 5 * time.Second
	}
	if c.BackoffMax < c.BackoffBase {
		c.BackoffMax = c.BackoffBase
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 20 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// flapWindow: a connection lost within this time of becoming READY does
// not reset the backoff, so that a backend that accepts and then drops
// every connection is not dialled in a tight loop.
const flapWindow = time.Second

// Channel is one backend's connection, dialled again whenever it is lost,
// with the state of a grpc.ClientConn. Its methods may be called from any
// goroutine. One goroutine owns the connecting; each connection has its
// reader and writer (h2.Conn's).
type Channel struct {
	cfg       Config
	sc        streamConfig
	ctx       context.Context
	cancel    context.CancelFunc
	connectCh chan struct{} // capacity 1: Connect was called
	loopDone  chan struct{}
	closeOnce sync.Once
	serving   sync.WaitGroup // each connection's Serve

	mu sync.Mutex // guards the fields below
	// state is the channel's; changed is closed at its next change.
	state   connectivity.State
	changed chan struct{}
	// conn takes the new calls: the READY connection, nil otherwise.
	conn *h2.Conn
	// conns are every connection not yet closed: conn, and those that
	// drain after the backend's GOAWAY.
	conns map[*h2.Conn]struct{}
	// lastErr is why the latest attempt to connect failed; nil after one
	// that succeeded.
	lastErr error
}

// New returns an IDLE channel; Connect, or a call that waits for READY,
// starts connecting.
func New(cfg Config) (*Channel, error) {
	if cfg.Dial == nil {
		return nil, errors.New("h2grpc: Config.Dial is required")
	}
	cfg = cfg.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	ch := &Channel{
		cfg: cfg, sc: streamConfig{authority: cfg.Authority, userAgent: cfg.UserAgent},
		ctx: ctx, cancel: cancel,
		connectCh: make(chan struct{}, 1), loopDone: make(chan struct{}),
		state: connectivity.Idle, changed: make(chan struct{}),
		conns: map[*h2.Conn]struct{}{},
	}
	go ch.run()
	return ch, nil
}

// Connect starts connecting an IDLE channel; otherwise it does nothing.
func (ch *Channel) Connect() { signal(ch.connectCh) }

// GetState is the channel's state now.
func (ch *Channel) GetState() connectivity.State {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.state
}

// WaitForStateChange waits until the state is not from, and reports true;
// false if ctx ended first.
func (ch *Channel) WaitForStateChange(ctx context.Context, from connectivity.State) bool {
	for {
		ch.mu.Lock()
		st, changed := ch.state, ch.changed
		ch.mu.Unlock()
		if st != from {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-changed:
		}
	}
}

// LastErr is why the latest attempt to connect failed (the dial, the TLS
// or the HTTP/2 handshake); nil if it did not.
func (ch *Channel) LastErr() error {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.lastErr
}

// Conn is the READY connection if it takes new streams; nil otherwise.
// It never blocks.
func (ch *Channel) Conn() *h2.Conn {
	ch.mu.Lock()
	c := ch.conn
	ch.mu.Unlock()
	if c == nil || !c.CanOpen() {
		return nil
	}
	return c
}

// Sever closes every connection at once, the draining ones too, and
// reports whether one was open: the calls on them fail UNAVAILABLE now,
// not at their deadlines, and the channel dials again. It is what the
// liveness probe does to a backend that stopped answering.
func (ch *Channel) Sever() bool {
	ch.mu.Lock()
	conns := make([]*h2.Conn, 0, len(ch.conns))
	for c := range ch.conns {
		conns = append(conns, c)
	}
	ch.mu.Unlock()
	severed := false
	for _, c := range conns {
		select {
		case <-c.Done():
		default:
			// Out of READY before the connection closes: no call may
			// pick it in between.
			ch.lost(c)
			c.Close()
			severed = true
		}
	}
	return severed
}

// lost takes c out of READY if it is the connection calls go to. The
// connecting goroutine would see it too, a moment later; GOAWAY and Sever
// say it at once.
func (ch *Channel) lost(c *h2.Conn) {
	ch.mu.Lock()
	if ch.conn == c {
		ch.conn = nil
		ch.setStateLocked(connectivity.Connecting)
	}
	ch.mu.Unlock()
}

// Close shuts the channel down: its connections close, the calls on them
// fail, and every goroutine of the channel has ended when it returns.
func (ch *Channel) Close() error {
	ch.closeOnce.Do(func() {
		ch.cancel()
		<-ch.loopDone
		ch.mu.Lock()
		ch.setStateLocked(connectivity.Shutdown)
		ch.conn = nil
		conns := make([]*h2.Conn, 0, len(ch.conns))
		for c := range ch.conns {
			conns = append(conns, c)
		}
		ch.mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
		ch.serving.Wait()
	})
	return nil
}

func (ch *Channel) setStateLocked(st connectivity.State) {
	if ch.state == st || ch.state == connectivity.Shutdown {
		return
	}
	ch.state = st
	close(ch.changed)
	ch.changed = make(chan struct{})
}

func (ch *Channel) setState(st connectivity.State, conn *h2.Conn, lastErr error) {
	ch.mu.Lock()
	ch.conn, ch.lastErr = conn, lastErr
	ch.setStateLocked(st)
	ch.mu.Unlock()
	ch.cfg.Logger.Debug("backend channel state", "state", st.String(), "err", lastErr)
}

// run is the connecting goroutine: it dials, waits while the connection
// is READY, and dials again when it is lost or the backend says GOAWAY,
// with a backoff after failures, until Close.
func (ch *Channel) run() {
	defer close(ch.loopDone)
	select {
	case <-ch.connectCh:
	case <-ch.ctx.Done():
		return
	}
	attempt := 0
	for ch.ctx.Err() == nil {
		// TRANSIENT_FAILURE holds through the next attempts until one
		// succeeds, as grpc-go's pick_first does (gRFC A62): a backend
		// that stays down reads as down, not as flapping CONNECTING.
		if ch.GetState() != connectivity.TransientFailure {
			ch.setState(connectivity.Connecting, nil, ch.LastErr())
		}
		c, goaway, err := ch.dial()
		if err != nil {
			if ch.ctx.Err() != nil {
				return
			}
			ch.setState(connectivity.TransientFailure, nil, err)
			if !ch.sleep(backoff.Delay(ch.cfg.BackoffBase, ch.cfg.BackoffMax, attempt)) {
				return
			}
			attempt++
			continue
		}
		readyAt := time.Now()
		ch.setState(connectivity.Ready, c, nil)
		select {
		case <-c.Done():
			ch.cfg.Logger.Debug("backend connection lost", "err", c.Err())
		case <-goaway:
			// The backend takes no new streams on this connection: leave
			// READY now, let the streams it kept finish on it, and close
			// it when they have, whatever the backend does then.
			c.SetOnIdle(c.Close)
			if c.Active() == 0 {
				c.Close()
			}
		case <-ch.ctx.Done():
			return
		}
		ch.setState(connectivity.Connecting, nil, nil)
		if time.Since(readyAt) >= flapWindow {
			attempt = 0
			continue
		}
		if !ch.sleep(backoff.Delay(ch.cfg.BackoffBase, ch.cfg.BackoffMax, attempt)) {
			return
		}
		attempt++
	}
}

func (ch *Channel) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch.ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// dial makes one connection and waits for its HTTP/2 handshake: READY is
// the peer's SETTINGS, not a TCP connection. goaway is signalled when the
// backend sends GOAWAY.
func (ch *Channel) dial() (*h2.Conn, <-chan struct{}, error) {
	ctx, cancel := context.WithTimeout(ch.ctx, ch.cfg.ConnectTimeout)
	defer cancel()
	nc, err := ch.cfg.Dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	ga := make(chan struct{}, 1)
	cfg := ch.cfg.H2
	user := cfg.OnGoAway
	var c *h2.Conn
	cfg.OnGoAway = func(last uint32, code http2.ErrCode) {
		if user != nil {
			user(last, code)
		}
		// On the connection's reader goroutine: lost takes only the
		// channel's lock, never held while waiting.
		ch.lost(c)
		signal(ga)
	}
	c = h2.NewConn(nc, h2.Client, cfg)
	ready := make(chan struct{})
	c.SetOnReady(func() { close(ready) })
	deadline, _ := ctx.Deadline()
	ch.mu.Lock()
	ch.conns[c] = struct{}{}
	ch.mu.Unlock()
	ch.serving.Add(1)
	go func() {
		defer ch.serving.Done()
		_ = c.Serve(deadline)
		ch.mu.Lock()
		delete(ch.conns, c)
		ch.mu.Unlock()
	}()
	select {
	case <-ready:
		return c, ga, nil
	case <-c.Done():
		return nil, nil, fmt.Errorf("http2 handshake: %w", c.Err())
	case <-ch.ctx.Done():
		c.Close()
		return nil, nil, ch.ctx.Err()
	}
}

// errClosing fails calls on a channel that is shut down, as grpc-go does.
var errClosing = status.Error(codes.Canceled, "h2grpc: the channel is closing")

// ready is the connection a new call goes to. Without waitForReady a
// channel that is not READY fails the call at once, UNAVAILABLE with why;
// with it, the call waits for READY until its context ends.
func (ch *Channel) ready(ctx context.Context, waitForReady bool) (*h2.Conn, error) {
	for {
		ch.mu.Lock()
		c, st, changed, lastErr := ch.conn, ch.state, ch.changed, ch.lastErr
		ch.mu.Unlock()
		switch {
		case c != nil && c.CanOpen():
			return c, nil
		case st == connectivity.Shutdown:
			return nil, errClosing
		case st == connectivity.Idle:
			ch.Connect()
		}
		if !waitForReady {
			msg := "h2grpc: backend connection is " + st.String()
			if c != nil {
				msg = "h2grpc: backend connection is closing"
			}
			if lastErr != nil {
				msg += ": " + lastErr.Error()
			}
			return nil, status.Error(codes.Unavailable, msg)
		}
		select {
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-changed:
			// A connection that stopped taking streams (GOAWAY, closed)
			// while READY is left by the connecting goroutine at once:
			// that too is a change.
		}
	}
}

// NewStream starts a call on the READY connection.
func (ch *Channel) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	co, err := parseOptions(opts)
	if err != nil {
		return nil, err
	}
	for {
		c, err := ch.ready(ctx, co.waitForReady)
		if err != nil {
			return nil, err
		}
		cs, err := newClientStream(ctx, c, ch.sc, desc, method, co)
		if err != nil && co.waitForReady && status.Code(err) == codes.Unavailable && ctx.Err() == nil {
			// The connection went away between the look and the open.
			continue
		}
		if err != nil {
			return nil, err
		}
		return cs, nil
	}
}

// Invoke makes a unary call on the READY connection.
func (ch *Channel) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return invoke(ctx, ch.NewStream, method, args, reply, opts...)
}

var _ grpc.ClientConnInterface = (*Channel)(nil)
