package gateway_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/healthgate/healthgate/admin"
	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/healthcheck"
	"github.com/healthgate/healthgate/internal/testutil"
)

// An application that answers UNAVAILABLE is answering: by default it is
// not ejected, so no client can empty a route by calling a method that
// fails.
func TestB35_ApplicationAnswersDoNotEjectByDefault(t *testing.T) {
	good, bad := testutil.StartBackend(t), testutil.StartBackend(t)
	bad.FailWith.Store(int32(codes.Unavailable))
	h := startGateway(t, config.Config{
		Routes:  []config.Route{{Service: testutil.TestService, Backends: []string{good.Addr, bad.Addr}}},
		Outlier: healthcheck.OutlierConfig{ConsecutiveFailures: 3, Ejection: time.Minute},
	})
	h.routable(t, testutil.TestService, 2)
	cc := testutil.Dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	failed := 0
	for range 20 {
		if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x")); status.Code(err) == codes.Unavailable {
			failed++
		}
	}
	if failed != 10 {
		t.Fatalf("%d of 20 calls failed, want the 10 the failing backend answered (round robin over two)", failed)
	}
	if r := h.g.State().Routes[testutil.TestService]; r.Routable != 2 {
		t.Fatalf("routable %d after application errors, want 2: nothing ejected", r.Routable)
	}
}

// A backend that says SERVING but answers every call with a code the route
// counts is ejected after the configured failures in a row; the other
// backend takes the calls, and the table (/backends) shows the ejection.
func TestPassiveFailureDetectionEjectsOnConfiguredCodes(t *testing.T) {
	good, bad := testutil.StartBackend(t), testutil.StartBackend(t)
	bad.FailWith.Store(int32(codes.Unavailable))
	h := startGateway(t, config.Config{
		Routes:  []config.Route{{Service: testutil.TestService, Backends: []string{good.Addr, bad.Addr}}},
		Outlier: healthcheck.OutlierConfig{ConsecutiveFailures: 3, Ejection: time.Minute, Codes: []string{"UNAVAILABLE"}},
	})
	h.routable(t, testutil.TestService, 2)
	cc := testutil.Dial(t, h.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	failed := 0
	for range 6 {
		if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x")); err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("call failed with %v", err)
			}
			failed++
		}
	}
	if failed != 3 {
		t.Fatalf("%d of 6 calls failed, want the 3 that eject the bad backend", failed)
	}
	// The ejection reaches the table a moment after the third failure.
	h.routable(t, testutil.TestService, 1)
	for range 20 {
		if _, err := testutil.Unary(ctx, cc, "/test.Svc/Echo", []byte("x")); err != nil {
			t.Fatalf("a call after the ejection failed: %v", err)
		}
	}
	srv := httptest.NewServer(h.g.AdminHandler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/backends")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v admin.View
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	for _, b := range v.Routes[0].Backends {
		if b.Addr == bad.Addr && (b.Routable || b.EjectedUntil == nil) {
			t.Fatalf("/backends shows the ejected backend as %+v", b)
		}
		if b.Addr == good.Addr && (!b.Routable || b.EjectedUntil != nil) {
			t.Fatalf("/backends shows the good backend as %+v", b)
		}
	}
}
