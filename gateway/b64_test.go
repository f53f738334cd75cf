package gateway_test

import (
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/proxy/proxycfg"
)

// limitsGateway is a gateway routing test.Svc to one backend, with limits.
func limitsGateway(t *testing.T, e *engine, l proxycfg.Limits) (*harness, *testutil.Backend) {
	t.Helper()
	b := testutil.StartBackend(t)
	go drainCalls(t, b)
	cfg := config.Config{Routes: []config.Route{{Service: testutil.TestService, Backends: []string{b.Addr}}}}
	cfg.Proxy.Limits = l
	h := e.start(t, cfg)
	h.routable(t, testutil.TestService, 1)
	return h, b
}

// serverSettings reads frames until the gateway's first SETTINGS.
func (c *h2conn) serverSettings() map[http2.SettingID]uint32 {
	c.t.Helper()
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.t.Fatalf("no SETTINGS from the gateway: %v", err)
		}
		if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
			got := map[http2.SettingID]uint32{}
			s.ForeachSetting(func(s http2.Setting) error { got[s.ID] = s.Val; return nil })
			c.check(c.fr.WriteSettingsAck())
			return got
		}
	}
}

// TestB64_LimitsAdvertisedAndEnforced: the stream and header-list limits
// are advertised in SETTINGS; a stream beyond the first is refused
// (REFUSED_STREAM) while the others go on; a header block over the limit,
// also one that HPACK expands from a few bytes on the wire, is refused
// without growing the gateway's memory with it.
func TestB64_LimitsAdvertisedAndEnforced(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		const streams, headerBytes = 5, 4 << 10
		h, b := limitsGateway(t, e, proxycfg.Limits{MaxConcurrentStreams: streams, MaxHeaderListBytes: headerBytes})

		c := dialH2(t, h.addr)
		got := c.serverSettings()
		if got[http2.SettingMaxConcurrentStreams] != streams || got[http2.SettingMaxHeaderListSize] != headerBytes {
			t.Fatalf("SETTINGS %v, want MAX_CONCURRENT_STREAMS %d and MAX_HEADER_LIST_SIZE %d", got, streams, headerBytes)
		}

		t.Run("streams", func(t *testing.T) {
			var held []uint32
			for range streams {
				id := c.stream()
				c.headers(id, request("/test.Svc/Block"), false)
				c.data(id, false, validMessage("hold"))
				held = append(held, id)
			}
			for range streams {
				select {
				case <-b.Started():
				case <-time.After(h2Deadline):
					t.Fatal("the streams within the limit did not reach the backend")
				}
			}
			extra := c.stream()
			c.headers(extra, request("/test.Svc/Block"), false)
			r := c.read(extra)
			if r.rst[extra] != http2.ErrCodeRefusedStream {
				t.Fatalf("stream %d beyond the limit of %d: %v, want RST_STREAM REFUSED_STREAM", extra, streams, r)
			}
			for _, id := range held {
				c.check(c.fr.WriteRSTStream(id, http2.ErrCodeCancel))
			}
		})

		t.Run("header list", func(t *testing.T) {
			c := dialH2(t, h.addr)
			c.serverSettings()
			id := c.stream()
			c.headers(id, request("/test.Svc/Echo", hpack.HeaderField{Name: "x-big", Value: strings.Repeat("a", 2*headerBytes)}), true)
			if r := c.read(id); r.status[id] == "0" || (len(r.rst) == 0 && r.status[id] == "" && !r.connError()) {
				t.Fatalf("a %d-byte header list over the %d limit: %v, want it refused", 2*headerBytes, headerBytes, r)
			}
		})

		t.Run("hpack amplification", func(t *testing.T) {
			c := dialH2(t, h.addr)
			c.serverSettings()
			var before runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			// One 3 KiB value enters the dynamic table, then each stream names
			// it 2,000 times by index: 2 bytes on the wire each, 6 MiB once
			// decoded, per stream.
			big := hpack.HeaderField{Name: "x-amp", Value: strings.Repeat("b", 3<<10)}
			const n = 50
			var ids []uint32
			for i := range n {
				id := c.stream()
				c.buf.Reset()
				for _, f := range request("/test.Svc/Echo") {
					c.check(c.enc.WriteField(f))
				}
				if i == 0 {
					c.check(c.enc.WriteField(big))
				}
				// Indexed field 62 is the newest dynamic entry: big.
				for range 2000 {
					c.buf.WriteByte(0x80 | 62)
				}
				c.check(c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.buf.Bytes(), EndStream: true, EndHeaders: true}))
				ids = append(ids, id)
			}
			r := c.read(ids...)
			if st := r.status; len(st) > 0 {
				for id, s := range st {
					if s == "0" {
						t.Fatalf("stream %d with a 6 MiB header list answered OK", id)
					}
				}
			}
			var after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&after)
			grew := int64(after.HeapInuse) - int64(before.HeapInuse)
			t.Logf("%d streams of 6 MiB decoded headers (%d KiB on the wire): heap in use grew %d KiB; %v", n, n*4, grew>>10, r)
			if grew > 64<<20 {
				t.Fatalf("heap in use grew %d MiB: the decoded header lists were kept", grew>>20)
			}
		})
	})
}

// TestB64_ConnectionsBounded: a client that sends its preface too slowly
// is cut after the handshake timeout; a PING flood gets GOAWAY
// ENHANCE_YOUR_CALM; an idle connection gets GOAWAY.
func TestB64_ConnectionsBounded(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		h, _ := limitsGateway(t, e, proxycfg.Limits{HandshakeTimeout: 300 * time.Millisecond, IdleTimeout: 500 * time.Millisecond})

		t.Run("slow preface", func(t *testing.T) {
			nc, err := net.Dial("tcp", h.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			start := time.Now()
			nc.SetDeadline(time.Now().Add(h2Deadline))
			io.WriteString(nc, http2.ClientPreface[:10])
			_, err = io.ReadAll(nc)
			if errors.Is(err, io.ErrUnexpectedEOF) || isTimeout(err) {
				t.Fatalf("half a preface: %v, want the gateway to close the connection", err)
			}
			took := time.Since(start)
			t.Logf("half a preface cut after %v (handshake_timeout 300ms)", took.Round(time.Millisecond))
			if took > 5*time.Second {
				t.Fatalf("half a preface held for %v, want the 300ms handshake timeout", took)
			}
		})

		t.Run("ping flood", func(t *testing.T) {
			c := dialH2(t, h.addr)
			c.serverSettings()
			for i := range 10 {
				c.check(c.fr.WritePing(false, [8]byte{byte(i)}))
			}
			r := c.read(1 << 30) // a stream never opened: read until the connection ends
			if r.goAway == nil || r.goAway.ErrCode != http2.ErrCodeEnhanceYourCalm {
				t.Fatalf("10 PINGs at once: %v, want GOAWAY ENHANCE_YOUR_CALM", r)
			}
		})

		t.Run("idle", func(t *testing.T) {
			c := dialH2(t, h.addr)
			c.serverSettings()
			start := time.Now()
			r := c.read(1 << 30)
			if r.goAway == nil {
				t.Fatalf("an idle connection: %v, want GOAWAY", r)
			}
			t.Logf("idle connection closed after %v (idle_timeout 500ms)", time.Since(start).Round(time.Millisecond))
		})

	})
}

// TestB64_ConnectionCap: connections over max_connections are closed as
// soon as they are accepted, and a slot comes back when one closes.
func TestB64_ConnectionCap(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		h, _ := limitsGateway(t, e, proxycfg.Limits{MaxConnections: 3})
		{
			var open []*h2conn
			for range 3 {
				c := dialH2(t, h.addr)
				c.serverSettings()
				open = append(open, c)
			}
			nc, err := net.Dial("tcp", h.addr)
			if err != nil {
				t.Fatal(err)
			}
			nc.SetDeadline(time.Now().Add(h2Deadline))
			io.WriteString(nc, http2.ClientPreface)
			if _, err := io.ReadAll(nc); isTimeout(err) {
				t.Fatal("a fourth connection over the cap of 3 was held, want it closed at once")
			}
			nc.Close()
			open[0].nc.Close()
			testutil.WaitFor(t, 10*time.Second, "a slot to come back", func() bool {
				nc, err := net.Dial("tcp", h.addr)
				if err != nil {
					return false
				}
				defer nc.Close()
				fr := http2.NewFramer(nc, nc)
				nc.SetDeadline(time.Now().Add(time.Second))
				io.WriteString(nc, http2.ClientPreface)
				fr.WriteSettings()
				f, err := fr.ReadFrame()
				return err == nil && f.Header().Type == http2.FrameSettings
			})
		}
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestB64_RapidResetStaysBounded: a client that opens streams and resets
// them at once, thousands in a row (CVE-2023-44487), neither grows the
// gateway's goroutines without bound nor stops it serving others.
func TestB64_RapidResetStaysBounded(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		h, _ := limitsGateway(t, e, proxycfg.Limits{MaxConcurrentStreams: 100})
		base := runtime.NumGoroutine()
		c := dialH2(t, h.addr)
		c.serverSettings()
		peak := 0
		const n = 5000
		for i := range n {
			id := c.stream()
			c.headers(id, request("/test.Svc/Block"), false)
			c.check(c.fr.WriteRSTStream(id, http2.ErrCodeCancel))
			if i%500 == 0 {
				peak = max(peak, runtime.NumGoroutine())
			}
			if c.broken {
				break
			}
		}
		t.Logf("%d streams opened and reset; goroutines %d before, at most %d during", n, base, peak)
		// 100 streams at most at once, a few goroutines each, and the test's
		// own: far from one per stream sent.
		if peak > base+1000 {
			t.Fatalf("goroutines went from %d to %d: reset streams are not bounded by max_concurrent_streams", base, peak)
		}
		cc := testutil.Dial(t, h.addr)
		if _, err := testutil.Unary(t.Context(), cc, "/test.Svc/Echo", []byte("after")); err != nil {
			t.Fatalf("another client after the rapid resets: %v", err)
		}
		c.nc.Close()
		testutil.WaitFor(t, 10*time.Second, "goroutines back near the baseline", func() bool { return runtime.NumGoroutine() <= base+20 })
	})
}

// TestB64_MaxConnectionAgeSparesCallsInFlight: a connection past its age
// gets GOAWAY, so its client reconnects (elsewhere, behind a load
// balancer), while a call in flight on it goes on: the default grace has no
// end.
func TestB64_MaxConnectionAgeSparesCallsInFlight(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		h, _ := limitsGateway(t, e, proxycfg.Limits{MaxConnectionAge: 300 * time.Millisecond})
		c := dialH2(t, h.addr)
		c.serverSettings()
		id := c.stream()
		c.headers(id, request("/test.Svc/Echo"), false)
		c.data(id, false, validMessage("before"))
		start := time.Now()
		var goAway *http2.GoAwayFrame
		gotEcho := 0
		for goAway == nil || gotEcho < 2 {
			f, err := c.fr.ReadFrame()
			if err != nil {
				t.Fatalf("reading: %v (GOAWAY %v, echoes %d)", err, goAway, gotEcho)
			}
			switch f := f.(type) {
			case *http2.GoAwayFrame:
				if goAway == nil {
					goAway = f
					t.Logf("GOAWAY after %v (max_connection_age 300ms)", time.Since(start).Round(time.Millisecond))
					// The call opened before the GOAWAY goes on.
					c.data(id, false, validMessage("after"))
				}
			case *http2.DataFrame:
				if f.StreamID == id && len(f.Data()) > 0 {
					gotEcho++
				}
			case *http2.RSTStreamFrame:
				t.Fatalf("the call in flight was reset (%v): the grace has no end by default", f.ErrCode)
			case *http2.PingFrame:
				if !f.IsAck() {
					c.check(c.fr.WritePing(true, f.Data))
				}
			}
		}
	})
}
