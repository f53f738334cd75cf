//go:build unix

// Package webclient_test proves gRPC-Web the way users use it: the
// example page (index.html, app.js bundled with grpc-web by esbuild) calls
// the example Login service through a gateway in headless Chromium.
package webclient_test

import (
	"context"
	"html"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/example/authserver"
	"github.com/healthgate/healthgate/example/democa"
	"github.com/healthgate/healthgate/grpcweb/grpcwebcfg"
	"github.com/healthgate/healthgate/internal/gatewaytest"
	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/proxy/proxycfg"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// bundle is the page's script, built by `make grpcweb-ui-test` (npm ci,
// then esbuild).
const bundle = "dist/app.js"

// screenshotDir holds the screenshots; it is in .gitignore.
const screenshotDir = "testdata/screenshots"

// answer is what the page shows once its call has ended.
type answer struct {
	state, backend string
	code           int
	text           string
}

var resultRE = regexp.MustCompile(`(?s)<p id="result"([^>]*)>(.*?)</p>`)

func attr(attrs, name string) string {
	m := regexp.MustCompile(`\b` + name + `="([^"]*)"`).FindStringSubmatch(attrs)
	if m == nil {
		return ""
	}
	return html.UnescapeString(m[1])
}

// TestB90_BrowserCallsLoginThroughGateway: the example page, served by
// the test on another origin than the gateway's (so CORS is asked for and
// given), calls Login through the gateway in headless Chromium, in text
// and binary mode, over HTTP/1.1 with each engine and over HTTP/2 (TLS)
// with the relay. A wrong password flips the backend NOT_SERVING, and
// the page then shows UNAVAILABLE; /update brings it back. Needs Chromium
// and the built bundle: HEALTHGATE_UI_TEST=1 (make grpcweb-ui-test).
func TestB90_BrowserCallsLoginThroughGateway(t *testing.T) {
	if os.Getenv("HEALTHGATE_UI_TEST") != "1" {
		t.Skip("set HEALTHGATE_UI_TEST=1 (or run make grpcweb-ui-test) to run the gRPC-Web page in Chromium")
	}
	for _, need := range []string{testutil.Chromium, bundle} {
		if _, err := os.Stat(need); err != nil {
			t.Fatalf("HEALTHGATE_UI_TEST=1 but %s is missing (make grpcweb-ui-test installs and builds it): %v", need, err)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, "index.html") })
	mux.HandleFunc("GET /"+bundle, func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, bundle) })
	page := httptest.NewServer(mux)
	t.Cleanup(page.Close)

	testutil.ForEachEngine(t, func(t *testing.T, engine string) {
		t.Run("http1", func(t *testing.T) { browserLogin(t, page.URL, engine, false) })
		if engine == proxycfg.EngineRelay {
			// Over TLS Chromium offers h2 and the relay takes nothing
			// else: a call that works went over HTTP/2.
			t.Run("https-h2", func(t *testing.T) { browserLogin(t, page.URL, engine, true) })
		}
	})
}

// browserLogin runs the page's story against a gateway with engine, with
// TLS on its listener or not.
func browserLogin(t *testing.T, pageOrigin, engine string, withTLS bool) {
	backend, err := authserver.New(authserver.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- backend.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("backend: %v", err)
		}
	})
	cfg := config.Config{
		Routes:  []config.Route{{Service: authserver.HealthService, Backends: []string{backend.GRPCAddr()}}},
		GRPCWeb: grpcwebcfg.Settings{Enabled: true, AllowedOrigins: []string{pageOrigin}},
		Proxy:   proxycfg.Settings{Engine: engine},
	}
	scheme, flags := "http", []string(nil)
	if withTLS {
		ca, err := democa.New("healthgate grpc-web test CA")
		if err != nil {
			t.Fatal(err)
		}
		cfg.ListenTLS.CertFile, cfg.ListenTLS.KeyFile, err = ca.WriteLeaf(t.TempDir(), "gateway", democa.Leaf{CommonName: "gateway", Hosts: []string{"127.0.0.1"}, Server: true})
		if err != nil {
			t.Fatal(err)
		}
		// The test's CA is not the browser's to trust.
		scheme, flags = "https", []string{"--ignore-certificate-errors"}
	}
	g := gatewaytest.Start(t, cfg, nil)
	g.WaitRoutable(t, authserver.HealthService, 1)

	pageURL := func(format, password string) string {
		q := url.Values{"gw": {scheme + "://" + g.Addr}, "email": {"admin@admin.com"}, "password": {password}, "format": {format}}
		return pageOrigin + "/?" + q.Encode()
	}
	load := func(format, password string) answer {
		t.Helper()
		dom := testutil.RunChromium(t, "--dump-dom", pageURL(format, password), 5*time.Second, flags...)
		m := resultRE.FindStringSubmatch(dom)
		if m == nil {
			t.Fatalf("the page has no result:\n%s", dom)
		}
		a := answer{state: attr(m[1], "data-state"), backend: attr(m[1], "data-backend"), text: html.UnescapeString(m[2])}
		a.code, _ = strconv.Atoi(attr(m[1], "data-code"))
		if a.state != "done" {
			t.Fatalf("the page's call did not end: %+v\n%s", a, dom)
		}
		t.Logf("page (%s): code %d, %q, backend %q", format, a.code, a.text, a.backend)
		return a
	}

	for _, format := range []string{"text", "binary"} {
		a := load(format, "123456")
		if a.code != 0 || !strings.Contains(a.text, "OK: success (user admin, id 1)") {
			t.Fatalf("%s: the page shows %+v, want the successful login", format, a)
		}
		if a.backend != backend.GRPCAddr() {
			t.Errorf("%s: the page read x-backend %q, want %s (exposed by CORS)", format, a.backend, backend.GRPCAddr())
		}
	}

	// The article's flip: a wrong password turns the backend NOT_SERVING;
	// the gateway sees it and the page gets UNAVAILABLE at once.
	if a := load("text", "wrong"); a.code != 0 || !strings.Contains(a.text, "wrong email or password") {
		t.Fatalf("wrong password: the page shows %+v", a)
	}
	g.WaitRoutable(t, authserver.HealthService, 0)
	if a := load("text", "123456"); a.code != 14 || !strings.Contains(a.text, "no healthy upstream") {
		t.Fatalf("after the flip: the page shows %+v, want UNAVAILABLE (14), no healthy upstream", a)
	}
	name := engine + "-http1-unavailable.png"
	if withTLS {
		name = engine + "-https-h2-unavailable.png"
	}
	shot(t, pageURL("text", "123456"), name, flags)

	resp, err := http.Get("http://" + backend.HTTPAddr() + "/update")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	g.WaitRoutable(t, authserver.HealthService, 1)
	if a := load("binary", "123456"); a.code != 0 {
		t.Fatalf("after /update: the page shows %+v, want the successful login", a)
	}
}

// shot keeps a screenshot of the page at url for a person to look at, and
// checks that it is a picture of some size.
func shot(t *testing.T, url, name string, flags []string) {
	t.Helper()
	if err := os.MkdirAll(screenshotDir, 0o755); err != nil {
		t.Fatal(err)
	}
	path, err := filepath.Abs(filepath.Join(screenshotDir, name))
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	testutil.RunChromium(t, "--screenshot="+path, url, 5*time.Second, flags...)
	testutil.Screenshot(t, path)
	t.Logf("screenshot: %s", path)
}
