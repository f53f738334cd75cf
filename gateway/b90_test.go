package gateway_test

// B90: gRPC-Web through the gateway, by a client that speaks it by hand
// over net/http, so that every byte on the wire is the test's own.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/example/democa"
	"github.com/healthgate/healthgate/gateway"
	"github.com/healthgate/healthgate/grpcweb/grpcwebcfg"
	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/proxy/proxycfg"
)

// webClient calls a gateway with gRPC-Web over one HTTP version.
type webClient struct {
	c    *http.Client
	addr string
	// h2 is HTTP/2 (without TLS: prior knowledge), else HTTP/1.1.
	h2 bool
	// scheme is http unless set.
	scheme string
}

func newWebClient(t *testing.T, addr string, h2 bool) *webClient {
	var p http.Protocols
	if h2 {
		p.SetUnencryptedHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	tr := &http.Transport{Protocols: &p, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &webClient{c: &http.Client{Transport: tr, Timeout: 20 * time.Second}, addr: addr, h2: h2}
}

// webAnswer is what a gRPC-Web call got back.
type webAnswer struct {
	status   int
	header   http.Header
	messages [][]byte
	// trailers are the trailer frame's lines; nil without one.
	trailers map[string]string
	// body is the body as sent (base64 in text mode).
	body []byte
}

func (a webAnswer) code(t *testing.T) codes.Code {
	t.Helper()
	if a.trailers == nil {
		t.Fatalf("no trailer frame in the answer (HTTP %d, headers %v, body %q)", a.status, a.header, a.body)
	}
	n, err := strconv.Atoi(a.trailers["grpc-status"])
	if err != nil {
		t.Fatalf("trailer frame without a grpc-status: %q", a.trailers)
	}
	return codes.Code(n)
}

// frame is a gRPC message frame.
func frame(flag byte, msg []byte) []byte {
	out := make([]byte, 5, 5+len(msg))
	out[0] = flag
	binary.BigEndian.PutUint32(out[1:], uint32(len(msg)))
	return append(out, msg...)
}

// call sends msgs to method; in text mode each message is base64 on its
// own, padding and all, as browser clients send them.
func (w *webClient) call(t *testing.T, method string, text bool, msgs [][]byte, hdr map[string]string) webAnswer {
	t.Helper()
	var body []byte
	for _, m := range msgs {
		f := frame(0, m)
		if text {
			f = []byte(base64.StdEncoding.EncodeToString(f))
		}
		body = append(body, f...)
	}
	ct := "application/grpc-web+proto"
	if text {
		ct = "application/grpc-web-text"
	}
	return w.raw(t, http.MethodPost, method, ct, body, hdr)
}

// raw sends body as it is.
func (w *webClient) raw(t *testing.T, httpMethod, method, ct string, body []byte, hdr map[string]string) webAnswer {
	t.Helper()
	scheme := "http"
	if w.scheme != "" {
		scheme = w.scheme
	}
	req, err := http.NewRequest(httpMethod, scheme+"://"+w.addr+method, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	req.Header.Set("X-Grpc-Web", "1")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := w.c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", httpMethod, method, err)
	}
	defer resp.Body.Close()
	wantProto := 1
	if w.h2 {
		wantProto = 2
	}
	if resp.ProtoMajor != wantProto {
		t.Fatalf("answered over HTTP/%d, want HTTP/%d", resp.ProtoMajor, wantProto)
	}
	all, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	a := webAnswer{status: resp.StatusCode, header: resp.Header, body: all}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/grpc-web") {
		return a
	}
	data := all
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/grpc-web-text") {
		data = decodeChunkedBase64(t, all)
	}
	for len(data) > 0 {
		if len(data) < 5 {
			t.Fatalf("answer ends inside a frame prefix: %x", data)
		}
		flag, n := data[0], binary.BigEndian.Uint32(data[1:5])
		if int(n) > len(data)-5 {
			t.Fatalf("answer ends inside a frame of %d bytes", n)
		}
		payload := data[5 : 5+n]
		data = data[5+n:]
		if flag&0x80 != 0 {
			if a.trailers != nil {
				t.Fatal("two trailer frames")
			}
			if len(data) > 0 {
				t.Fatalf("%d bytes after the trailer frame", len(data))
			}
			a.trailers = map[string]string{}
			for _, line := range strings.Split(string(payload), "\r\n") {
				if line == "" {
					continue
				}
				k, v, ok := strings.Cut(line, ": ")
				if !ok || k != strings.ToLower(k) {
					t.Fatalf("trailer line %q is not \"name: value\" with a lower-case name", line)
				}
				a.trailers[k] = v
			}
			continue
		}
		if a.trailers != nil {
			t.Fatal("a message after the trailer frame")
		}
		a.messages = append(a.messages, payload)
	}
	return a
}

// decodeChunkedBase64 decodes base64 whose chunks may each be padded.
func decodeChunkedBase64(t *testing.T, s []byte) []byte {
	t.Helper()
	if len(s)%4 != 0 {
		t.Fatalf("text answer of %d characters is not whole quanta", len(s))
	}
	var out []byte
	for i := 0; i < len(s); i += 4 {
		b, err := base64.StdEncoding.DecodeString(string(s[i : i+4]))
		if err != nil {
			t.Fatalf("text answer is not base64 at %d: %v", i, err)
		}
		out = append(out, b...)
	}
	return out
}

// webGateway starts backend b behind a gateway with e and gRPC-Web on.
func (e *engine) webGateway(t *testing.T, b *testutil.Backend, web grpcwebcfg.Settings, settings proxycfg.Settings) *harness {
	t.Helper()
	web.Enabled = true
	h := e.start(t, config.Config{
		Routes:  []config.Route{{Service: testutil.TestService, Backends: []string{b.Addr}}},
		GRPCWeb: web,
		Proxy:   settings,
	})
	h.routable(t, testutil.TestService, 1)
	return h
}

// webVersions are the HTTP versions gRPC-Web is served over with engine e:
// HTTP/1.1 always, HTTP/2 through the relay (grpc-go's server refuses it
// before the gateway sees it; see TestB90_GRPCEngineRefusesHTTP2WebClearly).
func webVersions(e *engine) []bool {
	if e.name == proxycfg.EngineRelay {
		return []bool{false, true}
	}
	return []bool{false}
}

func httpName(h2 bool) string {
	if h2 {
		return "http2"
	}
	return "http1"
}

func modeName(text bool) string {
	if text {
		return "text"
	}
	return "binary"
}

func TestB90_UnaryAndServerStreamingInBothModes(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		b := testutil.StartBackend(t)
		h := e.webGateway(t, b, grpcwebcfg.Settings{}, proxycfg.Settings{})
		for _, h2 := range webVersions(e) {
			wc := newWebClient(t, h.addr, h2)
			for _, text := range []bool{false, true} {
				t.Run(httpName(h2)+"/"+modeName(text), func(t *testing.T) {
					// Sizes whose base64 ends in each of the three ways.
					for _, msg := range [][]byte{{}, []byte("h"), []byte("he"), []byte("hello"), bytes.Repeat([]byte{0xfb}, 100<<10)} {
						a := wc.call(t, "/test.Svc/Echo", text, [][]byte{msg}, map[string]string{
							"x-set-header": "x-head=h1", "x-set-trailer": "x-tail=t1",
						})
						if got := a.code(t); got != codes.OK {
							t.Fatalf("Echo of %d bytes: %v %q", len(msg), got, a.trailers["grpc-message"])
						}
						if len(a.messages) != 1 || !bytes.Equal(a.messages[0], msg) {
							t.Fatalf("Echo of %d bytes: got %d messages back, not the one sent", len(msg), len(a.messages))
						}
						wantCT := "application/grpc-web+proto"
						if text {
							wantCT = "application/grpc-web-text+proto"
						}
						if ct := a.header.Get("Content-Type"); ct != wantCT {
							t.Errorf("content-type %q, want %q", ct, wantCT)
						}
						if v := a.header.Get("X-Head"); v != "h1" {
							t.Errorf("response header x-head = %q, want h1 (headers: %v)", v, a.header)
						}
						if v := a.trailers["x-tail"]; v != "t1" {
							t.Errorf("trailer frame x-tail = %q, want t1 (%q)", v, a.trailers)
						}
						if a.header.Get("Grpc-Status") != "" || a.header.Get("Trailer") != "" {
							t.Errorf("the status must be in the body only: headers %v", a.header)
						}
					}
					c := b.NextCall(t)
					for c.Method != "/test.Svc/Echo" || len(c.Messages) != 1 || len(c.Messages[0]) != 0 {
						c = b.NextCall(t)
					}
					if ct := c.ContentSubtype; ct != "" && ct != "proto" {
						t.Errorf("backend saw content subtype %q, want proto", ct)
					}
					b.Drain()

					a := wc.call(t, "/test.Svc/Repeat", text, [][]byte{[]byte("r")}, map[string]string{"x-repeat": "5"})
					if got := a.code(t); got != codes.OK {
						t.Fatalf("Repeat: %v %q", got, a.trailers["grpc-message"])
					}
					if len(a.messages) != 5 {
						t.Fatalf("Repeat: %d messages, want 5", len(a.messages))
					}
					// Client streaming too: gRPC-Web's request is a stream
					// of messages like gRPC's.
					a = wc.call(t, "/test.Svc/Collect", text, [][]byte{[]byte("a"), {}, []byte("bc")}, nil)
					if a.code(t) != codes.OK || len(a.messages) != 1 || string(a.messages[0]) != "abc" {
						t.Fatalf("Collect: %v %q", a.trailers, a.messages)
					}
				})
			}
		}
		// Native gRPC on the same listener is untouched.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if got, err := testutil.Unary(ctx, testutil.Dial(t, h.addr), "/test.Svc/Echo", []byte("native")); err != nil || string(got) != "native" {
			t.Fatalf("native call beside gRPC-Web: %q, %v", got, err)
		}
	})
}

func TestB90_ErrorsAreStatusesInTheTrailerFrame(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		b := testutil.StartBackend(t)
		h := e.webGateway(t, b, grpcwebcfg.Settings{}, proxycfg.Settings{MaxRequestBytes: 1 << 10})
		for _, h2 := range webVersions(e) {
			wc := newWebClient(t, h.addr, h2)
			for _, text := range []bool{false, true} {
				t.Run(httpName(h2)+"/"+modeName(text), func(t *testing.T) {
					check := func(name string, a webAnswer, want codes.Code, msgHas string) {
						t.Helper()
						if a.status != http.StatusOK {
							t.Fatalf("%s: HTTP %d, want 200 with the status in the body: %q", name, a.status, a.body)
						}
						if got := a.code(t); got != want || !strings.Contains(a.trailers["grpc-message"], msgHas) {
							t.Fatalf("%s: %v %q, want %v with %q", name, got, a.trailers["grpc-message"], want, msgHas)
						}
					}
					a := wc.call(t, "/test.Svc/Echo", text, [][]byte{[]byte("x")}, map[string]string{"x-status-code": "5", "x-status-message": "SPECIAL", "x-status-details": "1"})
					check("backend status", a, codes.NotFound, "bad input: %C3%BC 100%25 %0A second line")
					if a.trailers["grpc-status-details-bin"] == "" {
						t.Errorf("grpc-status-details-bin missing from the trailer frame: %q", a.trailers)
					}
					check("unknown service", wc.call(t, "/other.Svc/Echo", text, [][]byte{[]byte("x")}, nil), codes.Unimplemented, "other.Svc")
					check("malformed method", wc.call(t, "/nomethod", text, nil, nil), codes.Unimplemented, "malformed method name")
					check("oversized message", wc.call(t, "/test.Svc/Echo", text, [][]byte{make([]byte, 2<<10)}, nil), codes.ResourceExhausted, "larger than max (2048 vs. 1024)")
					// A frame whose prefix lies about its length.
					bad := frame(0, []byte("abc"))[:6]
					ct := "application/grpc-web"
					if text {
						bad, ct = []byte(base64.StdEncoding.EncodeToString(bad)), "application/grpc-web-text"
					}
					check("truncated message", wc.raw(t, http.MethodPost, "/test.Svc/Echo", ct, bad, nil), codes.InvalidArgument, "ended inside a message")
					check("trailer flag in a request", wc.raw(t, http.MethodPost, "/test.Svc/Echo", "application/grpc-web", frame(0x80, nil), nil), codes.InvalidArgument, "flags 0x80")
					if text {
						check("bad base64", wc.raw(t, http.MethodPost, "/test.Svc/Echo", ct, []byte("AAAA*AAA"), nil), codes.InvalidArgument, "not base64")
						check("unfinished base64", wc.raw(t, http.MethodPost, "/test.Svc/Echo", ct, []byte("AAAAAA"), nil), codes.InvalidArgument, "unfinished quantum")
					}
				})
			}
			t.Run(httpName(h2)+"/not gRPC-Web", func(t *testing.T) {
				if a := wc.raw(t, http.MethodPost, "/test.Svc/Echo", "application/grpc-web+x,y", nil, nil); a.status != http.StatusUnsupportedMediaType {
					t.Errorf("bad content type: HTTP %d, want 415", a.status)
				}
				if a := wc.raw(t, http.MethodGet, "/test.Svc/Echo", "application/grpc-web", nil, nil); a.status != http.StatusMethodNotAllowed {
					t.Errorf("GET: HTTP %d, want 405", a.status)
				}
			})
		}
		// Last: the backend turns NOT_SERVING, and calls fail at once with
		// UNAVAILABLE naming the route.
		b.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_NOT_SERVING)
		h.routable(t, testutil.TestService, 0)
		b.Drain()
		for _, h2 := range webVersions(e) {
			wc := newWebClient(t, h.addr, h2)
			for _, text := range []bool{false, true} {
				a := wc.call(t, "/test.Svc/Echo", text, [][]byte{[]byte("x")}, nil)
				if got := a.code(t); got != codes.Unavailable || !strings.Contains(a.trailers["grpc-message"], `no healthy upstream for route "test.Svc"`) {
					t.Fatalf("%s/%s to a NOT_SERVING backend: %v %q, want UNAVAILABLE naming the route", httpName(h2), modeName(text), got, a.trailers["grpc-message"])
				}
			}
		}
		select {
		case <-b.Started():
			t.Fatal("a call reached the NOT_SERVING backend")
		default:
		}
	})
}

func TestB90_CORS(t *testing.T) {
	const page = "http://app.example"
	forEachEngine(t, func(t *testing.T, e *engine) {
		b := testutil.StartBackend(t)
		h := e.webGateway(t, b, grpcwebcfg.Settings{AllowedOrigins: []string{page}}, proxycfg.Settings{})
		for _, h2 := range webVersions(e) {
			wc := newWebClient(t, h.addr, h2)
			t.Run(httpName(h2), func(t *testing.T) {
				preflight := func(origin string) webAnswer {
					return wc.raw(t, http.MethodOptions, "/test.Svc/Echo", "", nil, map[string]string{
						"Origin": origin, "Access-Control-Request-Method": "POST",
						"Access-Control-Request-Headers": "content-type,x-grpc-web,x-user-agent,grpc-timeout,x-custom",
					})
				}
				a := preflight(page)
				if a.status != http.StatusNoContent || a.header.Get("Access-Control-Allow-Origin") != page {
					t.Fatalf("preflight from an allowed origin: HTTP %d, headers %v", a.status, a.header)
				}
				allowH := strings.ReplaceAll(a.header.Get("Access-Control-Allow-Headers"), " ", "")
				for _, want := range []string{"content-type", "x-grpc-web", "x-user-agent", "grpc-timeout", "x-custom"} {
					if !strings.Contains(allowH, want) {
						t.Errorf("preflight allows headers %q, without %s", allowH, want)
					}
				}
				if m := a.header.Get("Access-Control-Allow-Methods"); m != "POST" {
					t.Errorf("preflight allows methods %q, want POST", m)
				}
				a = preflight("http://evil.example")
				if a.status != http.StatusForbidden || a.header.Get("Access-Control-Allow-Origin") != "" {
					t.Fatalf("preflight from another origin: HTTP %d, headers %v; want 403 without permission", a.status, a.header)
				}

				a = wc.call(t, "/test.Svc/Echo", false, [][]byte{[]byte("x")}, map[string]string{"Origin": page, "x-set-header": "x-head=h1"})
				if a.code(t) != codes.OK || a.header.Get("Access-Control-Allow-Origin") != page {
					t.Fatalf("call from an allowed origin: %q, headers %v", a.trailers, a.header)
				}
				expose := a.header.Get("Access-Control-Expose-Headers")
				for _, want := range []string{"grpc-status", "grpc-message", "x-head"} {
					if !strings.Contains(expose, want) {
						t.Errorf("exposed headers %q, without %s", expose, want)
					}
				}
				b.Drain()
				a = wc.call(t, "/test.Svc/Echo", false, [][]byte{[]byte("x")}, map[string]string{"Origin": "http://evil.example"})
				if a.status != http.StatusForbidden {
					t.Fatalf("call from another origin: HTTP %d, want 403", a.status)
				}
				select {
				case <-b.Started():
					t.Fatal("a call from an origin not allowed reached the backend")
				default:
				}
				// A page of the gateway's own origin needs no permission.
				a = wc.call(t, "/test.Svc/Echo", false, [][]byte{[]byte("x")}, map[string]string{"Origin": "http://" + h.addr})
				if a.code(t) != codes.OK || a.header.Get("Access-Control-Allow-Origin") != "" {
					t.Fatalf("same-origin call: %q, headers %v", a.trailers, a.header)
				}
			})
		}
	})
}

func TestB90_ForwardingPolicyAppliesToTheBrowser(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		b := testutil.StartBackend(t)
		h := e.webGateway(t, b, grpcwebcfg.Settings{}, proxycfg.Settings{DefaultTimeout: 7 * time.Second})
		for _, h2 := range webVersions(e) {
			t.Run(httpName(h2), func(t *testing.T) {
				wc := newWebClient(t, h.addr, h2)
				b.Drain()
				a := wc.call(t, "/test.Svc/Echo", false, [][]byte{[]byte("x")}, map[string]string{
					"X-Forwarded-For": "10.9.9.9", "X-Forwarded-Host": "evil", "Authorization": "Bearer t", "X-User-Agent": "grpc-web-javascript/0.1",
					"Grpc-Timeout": "3S",
				})
				if a.code(t) != codes.OK {
					t.Fatalf("call: %q", a.trailers)
				}
				c := b.NextCall(t)
				if got := c.MD.Get("x-forwarded-for"); len(got) != 1 || got[0] != "127.0.0.1" {
					t.Errorf("backend saw x-forwarded-for %q, want [127.0.0.1]: the client's address, the client's own replaced", got)
				}
				if got := c.MD.Get("x-forwarded-host"); len(got) != 1 || got[0] != h.addr {
					t.Errorf("backend saw x-forwarded-host %q, want [%s]", got, h.addr)
				}
				if got := c.MD.Get("authorization"); len(got) != 1 || got[0] != "Bearer t" {
					t.Errorf("backend saw authorization %q", got)
				}
				if got := c.MD.Get("x-user-agent"); len(got) != 1 {
					t.Errorf("backend saw x-user-agent %q, want the client's", got)
				}
				for _, k := range []string{"x-grpc-web", "origin", "accept-encoding"} {
					if v := c.MD.Get(k); len(v) > 0 {
						t.Errorf("backend saw %s %q: it is the browser's HTTP, not the call's metadata", k, v)
					}
				}
				if d := time.Until(c.Deadline); c.Deadline.IsZero() || d > 3*time.Second {
					t.Errorf("backend deadline in %v, want the client's 3s (not default_timeout)", d)
				}
			})
		}
	})
}

// TestB90_GRPCEngineRefusesHTTP2WebClearly: grpc-go's server refuses
// content types other than gRPC's on its HTTP/2 connections, so with the
// grpc engine gRPC-Web is served over HTTP/1.1 only; an HTTP/2 gRPC-Web
// call gets a clear refusal, not a hang.
func TestB90_GRPCEngineRefusesHTTP2WebClearly(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		b := testutil.StartBackend(t)
		h := e.webGateway(t, b, grpcwebcfg.Settings{}, proxycfg.Settings{})
		if e.name != proxycfg.EngineGRPC {
			return
		}
		a := newWebClient(t, h.addr, true).call(t, "/test.Svc/Echo", false, [][]byte{[]byte("x")}, nil)
		if a.status != http.StatusUnsupportedMediaType {
			t.Fatalf("HTTP/2 gRPC-Web with the grpc engine: HTTP %d %q, want 415", a.status, a.body)
		}
	})
}

// TestB90_SlowAndBrokenHTTP1Clients: a connection that says nothing is
// cut after the handshake timeout, and one that is neither HTTP/1 nor
// HTTP/2 gets an HTTP error; native clients are not held up by either.
func TestB90_SlowAndBrokenHTTP1Clients(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		b := testutil.StartBackend(t)
		h := e.webGateway(t, b, grpcwebcfg.Settings{}, proxycfg.Settings{Limits: proxycfg.Limits{HandshakeTimeout: 300 * time.Millisecond}})
		silent, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer silent.Close()
		garbage, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer garbage.Close()
		fmt.Fprint(garbage, "\x00\x01\x02 not http\r\n\r\n")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := testutil.Unary(ctx, testutil.Dial(t, h.addr), "/test.Svc/Echo", []byte("x")); err != nil {
			t.Fatalf("native call beside a silent connection: %v", err)
		}
		_ = garbage.SetReadDeadline(time.Now().Add(10 * time.Second))
		reply, _ := io.ReadAll(garbage)
		if !strings.HasPrefix(string(reply), "HTTP/1.1 400") {
			t.Errorf("garbage got %q, want an HTTP 400", reply)
		}
		_ = silent.SetReadDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		if _, err := silent.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("silent connection: read %v, want EOF when the gateway cuts it", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("silent connection cut after %v, want about the 300ms handshake timeout", d)
		}
	})
}

// TestB90_HTTP2OverTLSThroughTheRelay: with TLS on the listener, browsers
// speak HTTP/2 (ALPN h2), which the relay diverts to the bridge; the
// bridge's own connection to the relay is in memory, without TLS.
func TestB90_HTTP2OverTLSThroughTheRelay(t *testing.T) {
	ca, err := democa.New("b90 test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.WriteLeaf(t.TempDir(), "gateway", democa.Leaf{CommonName: "gateway", Hosts: []string{"127.0.0.1"}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	forEachEngine(t, func(t *testing.T, e *engine) {
		b := testutil.StartBackend(t)
		cfg := config.Config{
			Routes:    []config.Route{{Service: testutil.TestService, Backends: []string{b.Addr}}},
			GRPCWeb:   grpcwebcfg.Settings{Enabled: true},
			ListenTLS: proxycfg.ListenTLS{CertFile: cert, KeyFile: key},
		}
		if e.name != proxycfg.EngineRelay {
			// grpc-go's server would refuse gRPC-Web on its TLS
			// connections: the config says so at once instead.
			if _, err := gateway.New(e.config(cfg), nil); err == nil || !strings.Contains(err.Error(), "needs the relay engine") {
				t.Fatalf("gRPC-Web with TLS on the %s engine: New gave %v, want the config refused", e.name, err)
			}
			// The engine was tried, with the answer it must give.
			e.started.Add(1)
			return
		}
		h := e.start(t, cfg)
		h.routable(t, testutil.TestService, 1)
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}, ForceAttemptHTTP2: true, DisableCompression: true}
		t.Cleanup(tr.CloseIdleConnections)
		wc := &webClient{c: &http.Client{Transport: tr, Timeout: 20 * time.Second}, addr: h.addr, h2: true, scheme: "https"}
		for _, text := range []bool{false, true} {
			a := wc.call(t, "/test.Svc/Echo", text, [][]byte{[]byte("over tls")}, nil)
			if a.code(t) != codes.OK || len(a.messages) != 1 || string(a.messages[0]) != "over tls" {
				t.Fatalf("%s over TLS: %q %q", modeName(text), a.trailers, a.messages)
			}
			if c := b.NextCall(t); len(c.MD.Get("x-forwarded-for")) != 1 || c.MD.Get("x-forwarded-for")[0] != "127.0.0.1" {
				t.Errorf("backend saw x-forwarded-for %q, want [127.0.0.1]", c.MD.Get("x-forwarded-for"))
			}
		}
	})
}

// TestB90_StreamInFlightOutlivesTheDrain: a gRPC-Web call whose request
// is still arriving when the gateway begins to drain (over HTTP/1.1, the
// request and the answer flowing at once) gets its messages and its status;
// new connections are refused.
func TestB90_StreamInFlightOutlivesTheDrain(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		b := testutil.StartBackend(t)
		h := e.webGateway(t, b, grpcwebcfg.Settings{}, proxycfg.Settings{})
		wc := newWebClient(t, h.addr, false)
		pr, pw := io.Pipe()
		req, err := http.NewRequest(http.MethodPost, "http://"+h.addr+"/test.Svc/Echo", pr)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/grpc-web+proto")
		done := make(chan struct{})
		var resp *http.Response
		var rerr error
		go func() {
			defer close(done)
			resp, rerr = wc.c.Do(req)
		}()
		if _, err := pw.Write(frame(0, []byte("one"))); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("no response headers within 10s of the first message")
		}
		if rerr != nil {
			t.Fatal(rerr)
		}
		defer resp.Body.Close()
		first := make([]byte, 8)
		if _, err := io.ReadFull(resp.Body, first); err != nil || string(first[5:]) != "one" {
			t.Fatalf("first echo: %q, %v", first, err)
		}
		h.stop()
		testutil.WaitFor(t, 10*time.Second, "the listener to close", func() bool {
			c, err := net.Dial("tcp", h.addr)
			if err == nil {
				c.Close()
			}
			return err != nil
		})
		if _, err := pw.Write(frame(0, []byte("two"))); err != nil {
			t.Fatal(err)
		}
		pw.Close()
		rest, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("rest of the answer: %v", err)
		}
		want := append(frame(0, []byte("two")), []byte("\x80\x00\x00\x00\x10grpc-status: 0\r\n")...)
		if !bytes.Equal(rest, want) {
			t.Fatalf("rest of the answer %q, want the second echo and status 0: %q", rest, want)
		}
		select {
		case <-h.done:
		case <-time.After(10 * time.Second):
			t.Fatal("the gateway did not stop within 10s of the call's end")
		}
	})
}

// TestB90_CountedOnceInMetrics: a gRPC-Web call is one call in the
// metrics, whichever way it came: the engine's own observer counts the
// translated call, and the relay's diversion of an HTTP/2 one is not a
// second.
func TestB90_CountedOnceInMetrics(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		b := testutil.StartBackend(t)
		h := e.webGateway(t, b, grpcwebcfg.Settings{}, proxycfg.Settings{})
		admin := httptest.NewServer(h.g.AdminHandler())
		t.Cleanup(admin.Close)
		calls := 0
		for _, h2 := range webVersions(e) {
			wc := newWebClient(t, h.addr, h2)
			for _, text := range []bool{false, true} {
				if a := wc.call(t, "/test.Svc/Echo", text, [][]byte{[]byte("x")}, nil); a.code(t) != codes.OK {
					t.Fatalf("call: %q", a.trailers)
				}
				calls++
			}
		}
		// The observer is told of a call's end before its client is.
		mfs := scrape(t, admin)
		if got := sample(t, mfs, "healthgate_proxy_handled_total", "grpc_service", "test.Svc", "grpc_method", "Echo", "grpc_code", "OK"); got != float64(calls) {
			t.Fatalf("handled_total for Echo OK = %v after %d gRPC-Web calls", got, calls)
		}
		if got := sample(t, mfs, "healthgate_proxy_in_flight"); got != 0 {
			t.Fatalf("in_flight = %v with no call in flight", got)
		}
	})
}
