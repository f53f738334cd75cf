package gateway_test

// B91: reflection through the gateway, proven with grpcurl's own library
// (what `grpcurl list`, `describe` and a call by name run) against real
// backends that serve the example Login service with grpc-go's reflection.

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fullstorydev/grpcurl"
	"github.com/jhump/protoreflect/desc"
	"github.com/jhump/protoreflect/grpcreflect"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	v1pb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	v1alphapb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/healthgate/healthgate/admin"
	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/example/authpb"
	"github.com/healthgate/healthgate/healthcheck/healthcheckcfg"
	"github.com/healthgate/healthgate/internal/testutil"
	"github.com/healthgate/healthgate/reflectsvc"
)

const loginService = "example.auth.v1.Authorization"

// loginKind is what a Login backend's reflection serves.
type loginKind int

const (
	// withReflection: grpc-go's reflection (v1 and v1alpha) of its own
	// registry.
	withReflection loginKind = iota
	// noReflection: no reflection service at all.
	noReflection
	// variant: v1alpha reflection only, serving auth.proto with one more
	// message (example.auth.v1.Extra) than the Go package's: the same
	// file name with another content.
	variant
)

// loginByAddr answers every Login with the address of the backend that took it.
type loginByAddr struct {
	authpb.UnimplementedAuthorizationServer
	addr string
}

func (l loginByAddr) Login(_ context.Context, req *authpb.LoginRequest) (*authpb.LoginResponse, error) {
	return &authpb.LoginResponse{Message: "welcome " + req.GetEmail() + " from " + l.addr}, nil
}

// startReflecting runs the example Login service on a real grpc-go server until
// the test ends and returns its address.
func startReflecting(t *testing.T, kind loginKind) string {
	t.Helper()
	addr, _ := startReflectingOn(t, "127.0.0.1:0", kind)
	return addr
}

// startReflectingOn is startReflecting on addr; stop ends the server before
// the test does.
func startReflectingOn(t *testing.T, addr string, kind loginKind) (string, func()) {
	t.Helper()
	lis := listenOn(t, addr)
	s := grpc.NewServer()
	authpb.RegisterAuthorizationServer(s, loginByAddr{addr: lis.Addr().String()})
	hs := health.NewServer()
	hs.SetServingStatus(loginService, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	switch kind {
	case withReflection:
		reflection.Register(s)
	case variant:
		fdp := protodesc.ToFileDescriptorProto(authpb.File_auth_proto)
		fdp.MessageType = append(fdp.MessageType, &descriptorpb.DescriptorProto{Name: proto.String("Extra")})
		fd, err := protodesc.NewFile(fdp, protoregistry.GlobalFiles)
		if err != nil {
			t.Fatal(err)
		}
		files := &protoregistry.Files{}
		if err := files.RegisterFile(fd); err != nil {
			t.Fatal(err)
		}
		v1alphapb.RegisterServerReflectionServer(s, reflection.NewServer(reflection.ServerOptions{Services: s, DescriptorResolver: files}))
	}
	go s.Serve(lis) //nolint:errcheck // ends with Stop
	t.Cleanup(s.Stop)
	return lis.Addr().String(), s.Stop
}

// grpcurlClient is what grpcurl runs against the gateway: a reflection
// client (v1, falling back to v1alpha, or v1alpha alone) and a descriptor
// source over it, new for each command, as each grpcurl run is: grpcreflect
// keeps what it learned.
type grpcurlClient struct {
	cc      *grpc.ClientConn
	v1alpha bool
}

func newGrpcurl(t *testing.T, addr string, v1alpha bool) *grpcurlClient {
	t.Helper()
	return &grpcurlClient{cc: testutil.Dial(t, addr), v1alpha: v1alpha}
}

// run gives f a descriptor source of its own.
func (c *grpcurlClient) run(f func(grpcurl.DescriptorSource)) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ref := grpcreflect.NewClientAuto(ctx, c.cc)
	if c.v1alpha {
		ref = grpcreflect.NewClientV1Alpha(ctx, v1alphapb.NewServerReflectionClient(c.cc))
	}
	defer ref.Reset()
	f(grpcurl.DescriptorSourceFromServer(ctx, ref))
}

// list is `grpcurl list`.
func (c *grpcurlClient) list(t *testing.T) []string {
	t.Helper()
	svcs, err := c.tryList()
	if err != nil {
		t.Fatalf("grpcurl list: %v", err)
	}
	return svcs
}

func (c *grpcurlClient) tryList() (svcs []string, err error) {
	c.run(func(src grpcurl.DescriptorSource) { svcs, err = grpcurl.ListServices(src) })
	return svcs, err
}

// describe is `grpcurl describe sym`.
func (c *grpcurlClient) describe(sym string) (d desc.Descriptor, txt string, err error) {
	c.run(func(src grpcurl.DescriptorSource) {
		if d, err = src.FindSymbol(sym); err == nil {
			txt, err = grpcurl.GetDescriptorText(d, src)
		}
	})
	return d, txt, err
}

// call is `grpcurl -d '{...}' GATEWAY example.auth.v1.Authorization/Login`.
func (c *grpcurlClient) call(t *testing.T, method, reqJSON string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	var err error
	c.run(func(src grpcurl.DescriptorSource) {
		var parser grpcurl.RequestParser
		var formatter grpcurl.Formatter
		parser, formatter, err = grpcurl.RequestParserAndFormatter(grpcurl.FormatJSON, src, strings.NewReader(reqJSON), grpcurl.FormatOptions{})
		if err != nil {
			return
		}
		h := &grpcurl.DefaultEventHandler{Out: &out, Formatter: formatter}
		if err = grpcurl.InvokeRPC(ctx, src, c.cc, method, nil, h, parser.Next); err == nil {
			err = h.Status.Err()
		}
	})
	if err != nil {
		t.Fatalf("grpcurl %s: %v", method, err)
	}
	return out.String()
}

// routeReflection is the route's reflection in /backends; nil if it has
// none.
func routeReflection(h *harness, route string) *admin.ReflectionView {
	for _, r := range admin.Snapshot(h.g.Gateway).Routes {
		if r.Route == route {
			return r.Reflection
		}
	}
	return nil
}

func TestB91_ListShowsRoutes(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		be := testutil.StartBackend(t)
		h := e.start(t, config.Config{Routes: []config.Route{
			{Service: loginService, Backends: []string{startReflecting(t, withReflection), startReflecting(t, withReflection)}},
			{Service: testutil.TestService, Backends: []string{be.Addr}},
		}})
		h.routable(t, loginService, 2)
		h.routable(t, testutil.TestService, 1)
		want := []string{loginService, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection", testutil.TestService}
		for _, v1alpha := range []bool{false, true} {
			if got := newGrpcurl(t, h.addr, v1alpha).list(t); !slices.Equal(got, want) {
				t.Fatalf("grpcurl list (v1alpha %v) = %q, want %q", v1alpha, got, want)
			}
		}
	})
}

func TestB91_DescribeAndCallByName(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		h := e.start(t, config.Config{Routes: []config.Route{
			{Service: loginService, Backends: []string{startReflecting(t, withReflection)}},
		}})
		h.routable(t, loginService, 1)
		for _, v1alpha := range []bool{false, true} {
			c := newGrpcurl(t, h.addr, v1alpha)
			d, txt, err := c.describe(loginService)
			if err != nil {
				t.Fatalf("grpcurl describe %s (v1alpha %v): %v", loginService, v1alpha, err)
			}
			if sd, ok := d.(*desc.ServiceDescriptor); !ok || sd.FindMethodByName("Login") == nil {
				t.Fatalf("describe %s = %s, want a service with Login", loginService, txt)
			}
			_, txt, err = c.describe("example.auth.v1.LoginResponse")
			if err != nil || !strings.Contains(txt, ".example.auth.v1.User user = 2;") {
				t.Fatalf("describe example.auth.v1.LoginResponse = %q, %v; want its user field", txt, err)
			}
			// The gateway's own services describe too.
			if _, _, err := c.describe("grpc.health.v1.Health"); err != nil {
				t.Fatalf("describe grpc.health.v1.Health: %v", err)
			}
			out := c.call(t, loginService+"/Login", `{"email": "a@example.com", "password": "x"}`)
			if !strings.Contains(out, `"message": "welcome a@example.com from 127.0.0.1:`) {
				t.Fatalf("grpcurl call by name answered %q, want the backend's welcome", out)
			}
		}
	})
}

func TestB91_RoutesAppearAndLeave(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		be := testutil.StartBackend(t)
		plain, extra := startReflecting(t, withReflection), startReflecting(t, variant)
		cfg := config.Config{
			Routes: []config.Route{{Service: loginService, Backends: []string{plain}}},
			// What leaves goes at once: no call is in flight.
			Health: healthcheckcfg.Settings{DrainGrace: time.Millisecond},
		}
		h := e.start(t, cfg)
		h.routable(t, loginService, 1)
		c := newGrpcurl(t, h.addr, false)
		if got := c.list(t); !slices.Contains(got, loginService) || slices.Contains(got, testutil.TestService) {
			t.Fatalf("grpcurl list = %q, want %s and not %s", got, loginService, testutil.TestService)
		}
		if _, _, err := c.describe("example.auth.v1.Extra"); err == nil {
			t.Fatal("describe example.auth.v1.Extra succeeded before any backend serves it")
		}

		// A route appears; the Login route's backend is replaced by one
		// whose auth.proto has one more message.
		next := cfg
		next.Routes = []config.Route{
			{Service: loginService, Backends: []string{extra}},
			{Service: testutil.TestService, Backends: []string{be.Addr}},
		}
		if _, err := h.g.Reload(next); err != nil {
			t.Fatal(err)
		}
		h.routable(t, testutil.TestService, 1)
		testutil.WaitFor(t, 10*time.Second, "the Login route to have only the new backend", func() bool {
			_, old := h.backendIn(loginService, plain)
			b, ok := h.backendIn(loginService, extra)
			return !old && ok && b.Routable
		})
		if got := c.list(t); !slices.Contains(got, testutil.TestService) {
			t.Fatalf("grpcurl list after the route appeared = %q, want %s", got, testutil.TestService)
		}
		if _, _, err := c.describe("example.auth.v1.Extra"); err != nil {
			t.Fatalf("describe example.auth.v1.Extra after its backend took the route: %v", err)
		}

		// The Login route leaves.
		next.Routes = next.Routes[1:]
		if _, err := h.g.Reload(next); err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, 10*time.Second, "the Login route to leave", func() bool {
			r, ok := h.g.State().Routes[loginService]
			return !ok || r.Gone
		})
		if got := c.list(t); slices.Contains(got, loginService) {
			t.Fatalf("grpcurl list after the route left = %q, still has %s", got, loginService)
		}
		if _, _, err := c.describe(loginService); err == nil {
			t.Fatalf("describe %s succeeded after its route left", loginService)
		}
	})
}

// TestB91_RestartedBackendDescribedAnew: a backend that restarts on the same
// address with other descriptors is asked again once it is back in
// rotation, without any change to the route.
func TestB91_RestartedBackendDescribedAnew(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		addr, stop := startReflectingOn(t, "127.0.0.1:0", withReflection)
		h := e.start(t, config.Config{Routes: []config.Route{{Service: loginService, Backends: []string{addr}}}})
		h.routable(t, loginService, 1)
		c := newGrpcurl(t, h.addr, false)
		if _, _, err := c.describe(loginService); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.describe("example.auth.v1.Extra"); err == nil {
			t.Fatal("describe example.auth.v1.Extra succeeded before any backend serves it")
		}
		stop()
		h.routable(t, loginService, 0)
		startReflectingOn(t, addr, variant)
		h.routable(t, loginService, 1)
		if _, _, err := c.describe("example.auth.v1.Extra"); err != nil {
			t.Fatalf("describe example.auth.v1.Extra after the backend came back with it: %v", err)
		}
	})
}

func TestB91_BackendWithoutReflectionListedWithoutDescriptors(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		bare := startReflecting(t, noReflection)
		h := e.start(t, config.Config{Routes: []config.Route{{Service: loginService, Backends: []string{bare}}}})
		h.routable(t, loginService, 1)
		c := newGrpcurl(t, h.addr, false)
		if got := c.list(t); !slices.Contains(got, loginService) {
			t.Fatalf("grpcurl list = %q, want %s listed", got, loginService)
		}
		if _, _, err := c.describe(loginService); err == nil {
			t.Fatalf("describe %s succeeded with no descriptor to describe it", loginService)
		}
		// grpcurl says only "Symbol not found"; the gateway says why.
		st, err := v1pb.NewServerReflectionClient(c.cc).ServerReflectionInfo(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&v1pb.ServerReflectionRequest{MessageRequest: &v1pb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: loginService}}); err != nil {
			t.Fatal(err)
		}
		resp, err := st.Recv()
		if e := resp.GetErrorResponse(); err != nil || e.GetErrorCode() != int32(codes.NotFound) || !strings.Contains(e.GetErrorMessage(), bare+": backend does not serve grpc.reflection") {
			t.Fatalf("file_containing_symbol %s answered %v, %v; want NOT_FOUND saying that %s has no reflection", loginService, resp, err, bare)
		}
		st.CloseSend()
		r := routeReflection(h, loginService)
		if r == nil || r.Files != 0 || !slices.Equal(r.WithoutReflection, []string{bare}) {
			t.Fatalf("/backends reflection of %s = %+v, want no files and %s without reflection", loginService, r, bare)
		}
	})
}

func TestB91_ConflictReported(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		a, b := startReflecting(t, withReflection), startReflecting(t, variant)
		rec, logger := testutil.NewLogRecorder(t)
		h := e.startLog(t, config.Config{Routes: []config.Route{{Service: loginService, Backends: []string{a, b}}}}, logger)
		h.routable(t, loginService, 2)
		kept, lost := min(a, b), max(a, b)
		c := newGrpcurl(t, h.addr, false)
		_, _, err := c.describe("example.auth.v1.Extra")
		if keptVariant := kept == b; (err == nil) != keptVariant {
			t.Fatalf("describe example.auth.v1.Extra: %v; the kept auth.proto is %s's (the variant's: %v)", err, kept, keptVariant)
		}
		if n := rec.Count(slog.LevelWarn, "serve different descriptors under one file name"); n != 1 {
			t.Fatalf("%d conflict warnings logged, want 1: %q", n, rec.Messages(slog.LevelWarn))
		}
		r := routeReflection(h, loginService)
		want := fmt.Sprintf("auth.proto: backend %s differs from backend %s (kept)", lost, kept)
		if r == nil || r.Files != 1 || !slices.Equal(r.Conflicts, []string{want}) {
			t.Fatalf("/backends reflection of %s = %+v, want 1 file and the conflict %q", loginService, r, want)
		}
	})
}

func TestB91_DefaultRouteListsWhatItsBackendsServe(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		be := testutil.StartBackend(t)
		h := e.start(t, config.Config{Routes: []config.Route{
			{Service: "*", Backends: []string{startReflecting(t, withReflection)}},
			{Service: testutil.TestService, Backends: []string{be.Addr}},
		}})
		h.routable(t, "*", 1)
		h.routable(t, testutil.TestService, 1)
		c := newGrpcurl(t, h.addr, false)
		want := []string{loginService, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection", testutil.TestService}
		if got := c.list(t); !slices.Equal(got, want) {
			t.Fatalf("grpcurl list = %q, want %q", got, want)
		}
		if out := c.call(t, loginService+"/Login", `{"email": "d@example.com"}`); !strings.Contains(out, "welcome d@example.com") {
			t.Fatalf("grpcurl call by name through the default route answered %q", out)
		}
	})
}

func TestB91_DisabledRoutesReflectionLikeAnyService(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *engine) {
		h := e.start(t, config.Config{
			Routes:     []config.Route{{Service: loginService, Backends: []string{startReflecting(t, withReflection)}}},
			Reflection: config.Reflection{Disabled: true},
		})
		h.routable(t, loginService, 1)
		// No route covers grpc.reflection: UNIMPLEMENTED (B11), which
		// grpcurl reads as a server without reflection.
		_, err := newGrpcurl(t, h.addr, false).tryList()
		if err == nil || !strings.Contains(err.Error(), "does not support the reflection API") {
			t.Fatalf("grpcurl list with reflection disabled: %v, want the server to have no reflection", err)
		}
	})
}

// TestReflectionNamesMatchConfig: config, which cannot import grpc, keeps its
// own copy of the names that a route may not take while the gateway serves
// reflection.
func TestReflectionNamesMatchConfig(t *testing.T) {
	if got, want := reflectsvc.Services(), []string{config.ReflectionV1, config.ReflectionV1Alpha}; !slices.Equal(got, want) {
		t.Fatalf("reflectsvc.Services() = %q, config names %q", got, want)
	}
}
