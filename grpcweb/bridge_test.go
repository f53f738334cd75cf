package grpcweb

import (
	"bytes"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// echoTransport answers every call as a gRPC server would: the request's
// bytes back as the response, then trailers.
type echoTransport struct{ got *http.Request }

func (e *echoTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	e.got = r
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, err
	}
	return &http.Response{
		StatusCode: 200, Header: http.Header{"Content-Type": {"application/grpc"}, "X-Head": {"h"}},
		Body:    io.NopCloser(bytes.NewReader(body)),
		Trailer: http.Header{"Grpc-Status": {"0"}, "X-Tail": {"t"}},
	}, nil
}

func serve(t *testing.T, b *Bridge, method, path, ct string, body string, hdr map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, "http://gw.example"+path, strings.NewReader(body))
	if ct != "" {
		r.Header.Set("Content-Type", ct)
	}
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	b.ServeHTTP(w, r)
	return w
}

func TestBridgeTranslates(t *testing.T) {
	tr := &echoTransport{}
	b, err := New(Config{Transport: tr, MaxRequestBytes: 100})
	if err != nil {
		t.Fatal(err)
	}
	req := string(msgFrame(0, []byte("hi")))
	w := serve(t, b, "POST", "/a.B/C", "application/grpc-web-text", base64.StdEncoding.EncodeToString([]byte(req)), map[string]string{"X-Grpc-Web": "1", "X-Md": "v", "Sec-Fetch-Mode": "cors"})
	if got := tr.got.Header.Get("Content-Type"); got != "application/grpc" {
		t.Errorf("engine saw content-type %q, want application/grpc", got)
	}
	if tr.got.Header.Get("Te") != "trailers" || tr.got.Header.Get("X-Md") != "v" || tr.got.Header.Get("X-Grpc-Web") != "" || tr.got.Header.Get("Sec-Fetch-Mode") != "" {
		t.Errorf("engine saw headers %v", tr.got.Header)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/grpc-web-text+proto" {
		t.Errorf("content-type %q", ct)
	}
	if w.Header().Get("X-Head") != "h" {
		t.Errorf("headers %v", w.Header())
	}
	body, err := base64.StdEncoding.DecodeString(w.Body.String()[:len(w.Body.String())-len(base64.StdEncoding.EncodeToString(trailerFrame(0, "", http.Header{"X-Tail": {"t"}})))])
	if err != nil || string(body) != req {
		t.Errorf("body %q, %v; want the message %q", w.Body.String(), err, req)
	}
	if !strings.HasSuffix(w.Body.String(), base64.StdEncoding.EncodeToString(trailerFrame(0, "", http.Header{"X-Tail": {"t"}}))) {
		t.Errorf("body %q does not end with the trailer frame", w.Body.String())
	}
}

func TestBridgeRefusesBadRequests(t *testing.T) {
	b, err := New(Config{Transport: &echoTransport{}, MaxRequestBytes: 4, AllowedOrigins: []string{"https://ok.example"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, method, path, ct, body string
		hdr                          map[string]string
		status                       int
		// grpcStatus is the trailer frame's status line, for 200.
		grpcStatus string
	}{
		{"GET", "GET", "/a.B/C", "application/grpc-web", "", nil, 405, ""},
		{"not grpc-web", "POST", "/a.B/C", "application/json", "", nil, 415, ""},
		{"bad subtype", "POST", "/a.B/C", "application/grpc-web+a b", "", nil, 415, ""},
		{"malformed path", "POST", "/a.B", "application/grpc-web", "", nil, 200, "grpc-status: 12"},
		{"oversized", "POST", "/a.B/C", "application/grpc-web", string(msgFrame(0, []byte("12345"))), nil, 200, "grpc-status: 8"},
		{"bad base64", "POST", "/a.B/C", "application/grpc-web-text", "!!!!", nil, 200, "grpc-status: 3"},
		{"origin not allowed", "POST", "/a.B/C", "application/grpc-web", "", map[string]string{"Origin": "https://evil.example"}, 403, ""},
		{"preflight not allowed", "OPTIONS", "/a.B/C", "", "", map[string]string{"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}, 403, ""},
		{"preflight for GET", "OPTIONS", "/a.B/C", "", "", map[string]string{"Origin": "https://ok.example", "Access-Control-Request-Method": "GET"}, 403, ""},
		{"preflight allowed", "OPTIONS", "/a.B/C", "", "", map[string]string{"Origin": "https://ok.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "bad header"}, 204, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := serve(t, b, tc.method, tc.path, tc.ct, tc.body, tc.hdr)
			if w.Code != tc.status {
				t.Fatalf("HTTP %d, want %d: %q", w.Code, tc.status, w.Body.String())
			}
			body := w.Body.String()
			if strings.Contains(tc.ct, "-text") {
				b, _ := base64.StdEncoding.DecodeString(body)
				body = string(b)
			}
			if tc.grpcStatus != "" && !strings.Contains(body, tc.grpcStatus+"\r\n") {
				t.Fatalf("body %q, want a trailer frame with %q", w.Body.String(), tc.grpcStatus)
			}
			if tc.status == 204 && w.Header().Get("Access-Control-Allow-Headers") != defaultAllowHeaders {
				t.Fatalf("a request for headers that are not header names got %q", w.Header().Get("Access-Control-Allow-Headers"))
			}
		})
	}
}

func TestParseWebType(t *testing.T) {
	for ct, want := range map[string]string{
		"application/grpc-web":                   "application/grpc-web+proto",
		"application/grpc-web+proto":             "application/grpc-web+proto",
		"application/grpc-web-text":              "application/grpc-web-text+proto",
		"application/grpc-web-text+proto; q=1":   "application/grpc-web-text+proto",
		"application/grpc-web+JSON":              "application/grpc-web+json",
		"application/grpc":                       "",
		"application/grpc-webx":                  "",
		"application/grpc-web+":                  "",
		"application/grpc-web-text-text+proto":   "",
		"application/grpc-web+proto,application": "",
	} {
		wt, ok := parseWebType(ct)
		if got := wt.contentType(); ok != (want != "") || ok && got != want {
			t.Errorf("%q: %q, %v; want %q", ct, got, ok, want)
		}
	}
}
