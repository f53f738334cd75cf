// Package grpcweb serves gRPC-Web: it translates each gRPC-Web call
// (application/grpc-web, +proto, and the base64 grpc-web-text) into a gRPC
// call to the gateway's own listener, so that it takes the path a native
// call takes (routing, health gating, limits, policies, metrics), and the
// answer back into gRPC-Web, trailers in the body as the gRPC-Web spec
// (PROTOCOL-WEB.md) says. It also answers CORS for the allowed origins.
//
// The translation is byte for byte: a message's frame is the same in both
// protocols, so messages pass without being parsed beyond their 5-byte
// prefixes, which are checked against the request size limit as they go
// by. Nothing a client sends is held longer than one read.
//
// Split tells the connections of a listener apart by their first bytes,
// so that gRPC-Web over HTTP/1.1 can share the port with HTTP/2.
package grpcweb

import (
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"

	"github.com/healthgate/healthgate/internal/grpcwire"
)

// Config is what a Bridge needs.
type Config struct {
	// Transport carries the translated calls, as gRPC over HTTP/2, to the
	// gateway's own listener.
	Transport http.RoundTripper
	// MaxRequestBytes limits one request message, as it does a native
	// call's.
	MaxRequestBytes int
	// AllowedOrigins are the origins allowed to call across origins; "*"
	// is any.
	AllowedOrigins []string
	// Forwarded, if set, sets on the translated call's headers h what the
	// forwarding policy says of a request received from r's client
	// (x-forwarded-for, x-forwarded-host). Nil when what reaches the
	// bridge has been through the policy already.
	Forwarded func(h http.Header, r *http.Request)
	Logger    *slog.Logger
}

// Bridge is an http.Handler that serves gRPC-Web calls.
type Bridge struct {
	cfg  Config
	cors cors
	log  *slog.Logger
}

// New returns a bridge.
func New(cfg Config) (*Bridge, error) {
	if cfg.Transport == nil {
		return nil, errors.New("grpcweb: no transport")
	}
	if cfg.MaxRequestBytes <= 0 {
		return nil, errors.New("grpcweb: max request bytes must be positive")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Bridge{cfg: cfg, cors: newCORS(cfg.AllowedOrigins), log: cfg.Logger.With("component", "grpcweb")}, nil
}

// webType is what a gRPC-Web content type says.
type webType struct {
	text bool
	// subtype is the message codec ("proto" when the type names none).
	subtype string
}

// parseWebType reads application/grpc-web[-text][+subtype][;params].
func parseWebType(ct string) (webType, bool) {
	rest, ok := strings.CutPrefix(ct, "application/grpc-web")
	if !ok {
		return webType{}, false
	}
	if i := strings.IndexByte(rest, ';'); i >= 0 {
		rest = rest[:i]
	}
	rest = strings.TrimSpace(rest)
	var t webType
	if r, ok := strings.CutPrefix(rest, "-text"); ok {
		t.text, rest = true, r
	}
	switch {
	case rest == "":
		t.subtype = "proto"
	case strings.HasPrefix(rest, "+") && len(rest) > 1 && tokenList(rest[1:]) && !strings.Contains(rest, ","):
		t.subtype = strings.ToLower(rest[1:])
	default:
		return webType{}, false
	}
	return t, true
}

func (t webType) contentType() string {
	ct := "application/grpc-web"
	if t.text {
		ct += "-text"
	}
	return ct + "+" + t.subtype
}

// dropped are request headers that describe the browser's HTTP request
// rather than the call: they do not become the call's metadata.
var dropped = map[string]bool{
	"accept": true, "accept-encoding": true, "accept-language": true, "cache-control": true,
	"connection": true, "content-length": true, "content-type": true, "host": true,
	"keep-alive": true, "origin": true, "pragma": true, "proxy-connection": true, "referer": true,
	"te": true, "trailer": true, "transfer-encoding": true, "upgrade": true, "user-agent": true,
	"x-grpc-web": true, "priority": true,
}

// ServeHTTP serves one gRPC-Web call, or its CORS preflight.
func (b *Bridge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodOptions {
		b.cors.preflight(w, r)
		return
	}
	cross, allowed := b.cors.crossOrigin(r)
	if cross && !allowed {
		// A browser asks first and never sends this; anything else is
		// told as plainly.
		http.Error(w, "grpc-web: origin not allowed (grpc_web.allowed_origins)", http.StatusForbidden)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST, OPTIONS")
		http.Error(w, "grpc-web: calls are POST", http.StatusMethodNotAllowed)
		return
	}
	wt, ok := parseWebType(r.Header.Get("Content-Type"))
	if !ok {
		http.Error(w, "grpc-web: content-type must be application/grpc-web, application/grpc-web+proto or application/grpc-web-text", http.StatusUnsupportedMediaType)
		return
	}
	out := &responder{w: w, t: wt, rc: http.NewResponseController(w)}
	if cross {
		out.origin = r.Header.Get("Origin")
		out.cors = &b.cors
	}
	path := r.URL.Path
	if !strings.HasPrefix(path, "/") || strings.Count(path, "/") != 2 || strings.HasSuffix(path, "/") {
		out.status(codes.Unimplemented, "malformed method name: "+strconv.Quote(path))
		return
	}
	// HTTP/1.1: the call's messages and the answer's may overlap (a
	// server-streaming call whose request is still arriving).
	_ = out.rc.EnableFullDuplex()

	var body io.Reader = r.Body
	if wt.text {
		body = newTextDecoder(body)
	}
	check := newFrameChecker(body, b.cfg.MaxRequestBytes)
	host := r.Host
	if host == "" {
		host = "in-process"
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, (&url.URL{Scheme: "http", Host: host, Path: path}).String(), check)
	if err != nil {
		out.status(codes.Internal, "grpc-web: "+err.Error())
		return
	}
	req.Host = host
	req.ContentLength = -1
	for k, vs := range r.Header {
		lk := strings.ToLower(k)
		if dropped[lk] || strings.HasPrefix(lk, "sec-") || strings.HasPrefix(lk, "access-control-") {
			continue
		}
		req.Header[k] = vs
	}
	if b.cfg.Forwarded != nil {
		b.cfg.Forwarded(req.Header, r)
	}
	ct := "application/grpc"
	if wt.subtype != "proto" {
		ct += "+" + wt.subtype
	}
	req.Header.Set("Content-Type", ct)
	req.Header.Set("Te", "trailers")

	resp, err := b.cfg.Transport.RoundTrip(req)
	if err != nil {
		if se := check.failed(); se != nil {
			out.status(se.code, se.msg)
			return
		}
		out.status(codes.Unavailable, "healthgate: grpc-web: the call did not reach the gateway's engine: "+err.Error())
		return
	}
	defer resp.Body.Close()
	b.relayResponse(out, resp, check)
}

// relayResponse writes the engine's answer as gRPC-Web.
func (b *Bridge) relayResponse(out *responder, resp *http.Response, check *frameChecker) {
	if resp.StatusCode != http.StatusOK {
		code := grpcwire.HTTPStatusCode(resp.StatusCode)
		if msg := resp.Header.Get("Grpc-Message"); msg != "" {
			out.end(code, msg, nil)
			return
		}
		out.status(code, "healthgate: grpc-web: the engine answered HTTP "+resp.Status)
		return
	}
	// A status among the headers is a trailers-only answer: it goes in
	// the trailer frame like any other.
	status, hasStatus := resp.Header["Grpc-Status"]
	out.header(resp.Header)
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if werr := out.write(buf[:n]); werr != nil {
				// The client is gone; its context cancels the call.
				return
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if se := check.failed(); se != nil {
				out.status(se.code, se.msg)
				return
			}
			out.status(codes.Unavailable, "healthgate: grpc-web: the call broke: "+err.Error())
			return
		}
	}
	trailers := resp.Trailer
	if st, ok := trailers["Grpc-Status"]; ok {
		status, hasStatus = st, true
	} else {
		trailers = http.Header{}
		for _, k := range []string{"Grpc-Message", "Grpc-Status-Details-Bin"} {
			if v, ok := resp.Header[k]; ok {
				trailers[k] = v
			}
		}
	}
	if !hasStatus || len(status) == 0 {
		out.status(codes.Internal, "healthgate: grpc-web: the call ended without a status")
		return
	}
	n, err := strconv.Atoi(status[0])
	if err != nil {
		n = int(codes.Unknown)
	}
	out.end(codes.Code(n), trailers.Get("Grpc-Message"), trailers)
}

// responder writes one gRPC-Web answer: headers once, messages as they
// come, flushed each, and the trailer frame last.
type responder struct {
	w  http.ResponseWriter
	rc *http.ResponseController
	t  webType
	// origin is set for an allowed cross-origin call.
	origin string
	cors   *cors
	sent   bool
}

// headerOnly are response headers of the engine's hop, or that go in the
// trailer frame instead.
var headerOnly = map[string]bool{
	"Content-Type": true, "Content-Length": true, "Trailer": true, "Date": true,
	"Grpc-Status": true, "Grpc-Message": true, "Grpc-Status-Details-Bin": true,
	"Connection": true, "Transfer-Encoding": true, "Keep-Alive": true,
}

// header sends the response headers: from, as the engine sent them, with
// gRPC-Web's content type.
func (o *responder) header(from http.Header) {
	if o.sent {
		return
	}
	o.sent = true
	h := o.w.Header()
	var names []string
	for k, vs := range from {
		if headerOnly[k] {
			continue
		}
		h[k] = vs
		names = append(names, strings.ToLower(k))
	}
	h.Set("Content-Type", o.t.contentType())
	if o.cors != nil {
		o.cors.allowResponse(h, o.origin, names)
	}
	o.w.WriteHeader(http.StatusOK)
}

// write sends message bytes; text mode encodes each write on its own,
// padding included, which gRPC-Web text clients decode quantum by quantum.
func (o *responder) write(p []byte) error {
	if o.t.text {
		p = []byte(base64.StdEncoding.EncodeToString(p))
	}
	if _, err := o.w.Write(p); err != nil {
		return err
	}
	return o.rc.Flush()
}

// status ends the answer with the bridge's own status, msg as it reads.
func (o *responder) status(code codes.Code, msg string) {
	o.end(code, grpcwire.EncodeMessage(msg), nil)
}

// end ends the answer with its trailer frame, msg already encoded as
// grpc-message is; the headers go first if they have not yet.
func (o *responder) end(code codes.Code, msg string, trailers http.Header) {
	o.header(nil)
	_ = o.write(trailerFrame(code, msg, trailers))
}
