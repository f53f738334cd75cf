//go:build unix

package admin_test

import (
	"image"
	"maps"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/internal/gatewaytest"
	"github.com/healthgate/healthgate/internal/testutil"
)

// screenshotDir holds the screenshots; it is in .gitignore.
const screenshotDir = "testdata/screenshots"

// TestUIStatusPage renders the status page of a gateway with two routes, one
// of whose backends is NOT_SERVING, in headless Chromium: the DOM after the
// page's script has run must show both routes with the right pills on the
// right backends, and the screenshot must be a real picture. It needs
// Chromium, so it runs only with HEALTHGATE_UI_TEST=1 (make ui-test).
func TestUIStatusPage(t *testing.T) {
	if os.Getenv("HEALTHGATE_UI_TEST") != "1" {
		t.Skip("set HEALTHGATE_UI_TEST=1 (or run make ui-test) to render the status page in Chromium")
	}
	if _, err := os.Stat(testutil.Chromium); err != nil {
		t.Fatalf("HEALTHGATE_UI_TEST=1 but %s is missing (make ui-test installs it): %v", testutil.Chromium, err)
	}

	up1, down, other := testutil.StartBackend(t), testutil.StartBackend(t), testutil.StartBackend(t)
	other.Health.SetServingStatus("other.Svc", healthpb.HealthCheckResponse_SERVING)
	down.Health.SetServingStatus(testutil.TestService, healthpb.HealthCheckResponse_NOT_SERVING)

	g := gatewaytest.Start(t, config.Config{
		Routes: []config.Route{
			{Service: testutil.TestService, Backends: []string{up1.Addr, down.Addr}},
			{Service: "other.Svc", Backends: []string{other.Addr}},
		},
	}, nil)
	testutil.WaitFor(t, 10*time.Second, "every backend's health to be known", func() bool {
		st := g.State()
		if st == nil || !st.Synced {
			return false
		}
		svc, oth := st.Routes[testutil.TestService], st.Routes["other.Svc"]
		if len(svc.Backends) != 2 || len(oth.Backends) != 1 || svc.Routable != 1 || oth.Routable != 1 {
			return false
		}
		for _, b := range svc.Backends {
			if b.Addr == down.Addr && b.Status != healthpb.HealthCheckResponse_NOT_SERVING {
				return false
			}
		}
		return true
	})

	srv := httptest.NewServer(g.AdminHandler())
	t.Cleanup(srv.Close)
	url := srv.URL + "/"

	// The DOM once the page has fetched /backends and rendered it.
	// The page's script holds the same markup as templates: leave it out.
	dom := scriptRE.ReplaceAllString(testutil.RunChromium(t, "--dump-dom", url, 3*time.Second), "")
	if !strings.Contains(dom, `id="routes"`) {
		t.Fatalf("the dumped DOM is not the status page:\n%s", dom)
	}
	checkSummary(t, dom)
	want := map[string]map[string][]string{
		testutil.TestService: {
			up1.Addr:  {"ROUTABLE", "SERVING", "static"},
			down.Addr: {"OUT", "NOT_SERVING", "static"},
		},
		"other.Svc": {
			other.Addr: {"ROUTABLE", "SERVING", "static"},
		},
	}
	sections := routeSections(dom)
	if got := slices.Sorted(maps.Keys(sections)); !slices.Equal(got, []string{"other.Svc", testutil.TestService}) {
		t.Fatalf("the page shows routes %q, want other.Svc and %s\n%s", got, testutil.TestService, dom)
	}
	for route, backends := range want {
		sec := sections[route]
		// The route's own pill: each route has a routable backend, so both
		// are SERVING even though one of test.Svc's backends is not.
		if h2 := between(sec, "<h2", "</h2>"); !slices.Equal(pills(h2), []string{"SERVING"}) {
			t.Errorf("route %s heading has pills %q, want [SERVING]: %s", route, pills(h2), h2)
		}
		rows := backendRows(sec)
		if len(rows) != len(backends) {
			t.Errorf("route %s shows %d backends, want %d: %q", route, len(rows), len(backends), slices.Sorted(maps.Keys(rows)))
		}
		for addr, wantPills := range backends {
			row, ok := rows[addr]
			if !ok {
				t.Errorf("route %s has no row for backend %s", route, addr)
				continue
			}
			if got := pills(row); !slices.Equal(got, wantPills) {
				t.Errorf("route %s backend %s: pills %q, want %q (rotation, grpc health, discovery)", route, addr, got, wantPills)
			}
		}
	}
	if t.Failed() {
		t.Logf("dumped DOM:\n%s", dom)
	}

	// The screenshot, kept for a person to look at.
	if err := os.MkdirAll(screenshotDir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot, err := filepath.Abs(filepath.Join(screenshotDir, "status.png"))
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(shot)
	testutil.RunChromium(t, "--screenshot="+shot, url, 3*time.Second)
	checkScreenshot(t, shot)
	t.Logf("screenshot: %s", shot)
}

var (
	scriptRE  = regexp.MustCompile(`(?s)<script\b.*?</script>`)
	sectionRE = regexp.MustCompile(`<section\b[^>]*\bclass="route"[^>]*\bdata-route="([^"]*)"`)
	rowRE     = regexp.MustCompile(`<tr\b[^>]*\bdata-addr="([^"]*)"`)
	pillRE    = regexp.MustCompile(`<span class="pill [a-z]+">([^<]*)</span>`)
)

// routeSections splits the DOM into each route's section, by route.
func routeSections(dom string) map[string]string {
	out := map[string]string{}
	for _, m := range sectionRE.FindAllStringSubmatchIndex(dom, -1) {
		route := dom[m[2]:m[3]]
		out[route] = between(dom[m[0]:], "<section", "</section>")
	}
	return out
}

// backendRows splits a route's section into its backends' rows, by address.
func backendRows(section string) map[string]string {
	out := map[string]string{}
	for _, m := range rowRE.FindAllStringSubmatchIndex(section, -1) {
		out[section[m[2]:m[3]]] = between(section[m[0]:], "<tr", "</tr>")
	}
	return out
}

// pills lists the pill texts in s, in order.
func pills(s string) []string {
	var out []string
	for _, m := range pillRE.FindAllStringSubmatch(s, -1) {
		out = append(out, m[1])
	}
	return out
}

// between returns s from its first start to the end of the first end after it.
func between(s, start, end string) string {
	i := strings.Index(s, start)
	if i < 0 {
		return ""
	}
	j := strings.Index(s[i:], end)
	if j < 0 {
		return s[i:]
	}
	return s[i : i+j+len(end)]
}

// checkSummary wants the header to say READY with the two routes.
func checkSummary(t *testing.T, dom string) {
	t.Helper()
	summary := between(dom, `id="summary"`, "</span></span>")
	if !strings.Contains(summary, ">READY</span>") || !strings.Contains(summary, "2 route(s)") {
		t.Errorf("the header summary does not say READY with 2 routes: %s", summary)
	}
}

// checkScreenshot wants a PNG of at least 1000x600 that is not one colour
// and shows the pills' green (SERVING, ROUTABLE) and red (NOT_SERVING, OUT).
func checkScreenshot(t *testing.T, path string) {
	t.Helper()
	img := testutil.Screenshot(t, path)
	b := img.Bounds()
	colours := map[[3]uint32]int{}
	var green, red int
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			c := rgb(img, x, y)
			colours[c]++
			switch {
			case near(c, [3]uint32{0x1a, 0x7f, 0x37}): // --ok
				green++
			case near(c, [3]uint32{0xcf, 0x22, 0x2e}): // --bad
				red++
			}
		}
	}
	t.Logf("screenshot %dx%d: %d colours, %d green and %d red pill pixels", b.Dx(), b.Dy(), len(colours), green, red)
	if len(colours) < 2 {
		t.Fatal("screenshot is a single colour")
	}
	if len(colours) < 50 {
		t.Errorf("screenshot has only %d colours: is any text rendered?", len(colours))
	}
	// A pill is some 70x18 pixels; there are four green ones at least and two red.
	if green < 1000 || red < 500 {
		t.Errorf("screenshot shows %d green and %d red pill pixels; want the SERVING/ROUTABLE and NOT_SERVING/OUT pills", green, red)
	}
}

func rgb(img image.Image, x, y int) [3]uint32 {
	r, g, b, _ := img.At(x, y).RGBA()
	return [3]uint32{r >> 8, g >> 8, b >> 8}
}

func near(c, want [3]uint32) bool {
	for i := range c {
		d := int(c[i]) - int(want[i])
		if d < -6 || d > 6 {
			return false
		}
	}
	return true
}
