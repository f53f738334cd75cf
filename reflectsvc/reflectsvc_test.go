package reflectsvc

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	v1pb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	v1alphapb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// svcFile is a proto3 file of package pkg declaring service svc, whose Do
// takes and returns message M, and the messages in extra, importing deps.
func svcFile(name, pkg, svc string, extra []string, deps ...string) *descriptorpb.FileDescriptorProto {
	fd := &descriptorpb.FileDescriptorProto{
		Name: proto.String(name), Package: proto.String(pkg), Syntax: proto.String("proto3"), Dependency: deps,
		MessageType: []*descriptorpb.DescriptorProto{{Name: proto.String("M")}},
	}
	for _, m := range extra {
		fd.MessageType = append(fd.MessageType, &descriptorpb.DescriptorProto{Name: proto.String(m)})
	}
	if svc != "" {
		fd.Service = []*descriptorpb.ServiceDescriptorProto{{
			Name: proto.String(svc),
			Method: []*descriptorpb.MethodDescriptorProto{{
				Name: proto.String("Do"), InputType: proto.String("." + pkg + ".M"), OutputType: proto.String("." + pkg + ".M"),
			}},
		}}
	}
	return fd
}

// backendOpts choose what a test backend's reflection does.
type backendOpts struct {
	// v1alphaOnly serves v1alpha alone; none serves no reflection; block
	// never answers.
	v1alphaOnly, none, block bool
	// types resolves extensions.
	types *protoregistry.Types
}

// backend is a real grpc-go server whose reflection serves files, and the
// gateway's connection to it.
type backend struct {
	addr string
	conn *grpc.ClientConn
	// streams counts the reflection streams opened on it.
	streams atomic.Int32
}

// services lists what a test backend says it serves.
type services []string

func (s services) GetServiceInfo() map[string]grpc.ServiceInfo {
	m := map[string]grpc.ServiceInfo{}
	for _, name := range s {
		m[name] = grpc.ServiceInfo{}
	}
	return m
}

// blocking is a reflection service that never answers.
type blocking struct {
	v1pb.UnimplementedServerReflectionServer
}

func (blocking) ServerReflectionInfo(st v1pb.ServerReflection_ServerReflectionInfoServer) error {
	<-st.Context().Done()
	return st.Context().Err()
}

func startBackend(t *testing.T, o backendOpts, files ...*descriptorpb.FileDescriptorProto) *backend {
	t.Helper()
	reg, err := protodesc.NewFiles(&descriptorpb.FileDescriptorSet{File: files})
	if err != nil {
		t.Fatal(err)
	}
	var svcs services
	for _, f := range files {
		for _, s := range f.GetService() {
			svcs = append(svcs, f.GetPackage()+"."+s.GetName())
		}
	}
	b := &backend{}
	s := grpc.NewServer(grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		b.streams.Add(1)
		return h(srv, ss)
	}))
	opts := reflection.ServerOptions{Services: svcs, DescriptorResolver: reg}
	if o.types != nil {
		opts.ExtensionResolver = o.types
	}
	switch {
	case o.block:
		v1pb.RegisterServerReflectionServer(s, blocking{})
	case o.none:
	case o.v1alphaOnly:
		v1alphapb.RegisterServerReflectionServer(s, reflection.NewServer(opts))
	default:
		v1pb.RegisterServerReflectionServer(s, reflection.NewServerV1(opts))
		v1alphapb.RegisterServerReflectionServer(s, reflection.NewServer(opts))
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(lis) //nolint:errcheck // ends with Stop
	b.addr = lis.Addr().String()
	b.conn, err = grpc.NewClient(b.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b.conn.Close()
		s.Stop()
	})
	return b
}

func (b *backend) at(since time.Time) Backend {
	return Backend{Addr: b.addr, Since: since, Conn: b.conn}
}

// table is a routing table a test sets.
type table struct {
	mu     sync.Mutex
	routes []Route
}

func (t *table) Routes() []Route {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.routes)
}

func (t *table) set(routes ...Route) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.routes = routes
}

// clock is a settable clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// gw is a Service on a real grpc server, and a client of it.
type gw struct {
	s     *Service
	tab   *table
	clock *clock
	cc    *grpc.ClientConn
}

func startService(t *testing.T, timeout time.Duration) *gw {
	t.Helper()
	g := &gw{tab: &table{}, clock: &clock{now: time.Unix(1e9, 0)}}
	var err error
	g.s, err = New(Config{Table: g.tab, Own: []protoreflect.ServiceDescriptor{healthpb.File_grpc_health_v1_health_proto.Services().Get(0)}, Timeout: timeout, Now: g.clock.Now}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	g.s.Register(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis) //nolint:errcheck // ends with Stop
	g.cc, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		g.cc.Close()
		srv.Stop()
	})
	return g
}

// ask sends reqs on one v1 stream (or v1alpha's) and returns the answers.
func (g *gw) ask(t *testing.T, alpha bool, reqs ...*v1pb.ServerReflectionRequest) []*v1pb.ServerReflectionResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := openConv(ctx, g.cc, alpha)
	if err != nil {
		t.Fatal(err)
	}
	defer c.cancel()
	var out []*v1pb.ServerReflectionResponse
	for _, r := range reqs {
		resp, err := c.ask(r)
		if err != nil {
			t.Fatalf("%v: %v", r, err)
		}
		out = append(out, resp)
	}
	return out
}

func listReq() *v1pb.ServerReflectionRequest {
	return &v1pb.ServerReflectionRequest{MessageRequest: &v1pb.ServerReflectionRequest_ListServices{}}
}

func symReq(s string) *v1pb.ServerReflectionRequest {
	return &v1pb.ServerReflectionRequest{MessageRequest: &v1pb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: s}}
}

func fileReq(s string) *v1pb.ServerReflectionRequest {
	return &v1pb.ServerReflectionRequest{MessageRequest: &v1pb.ServerReflectionRequest_FileByFilename{FileByFilename: s}}
}

func names(resp *v1pb.ServerReflectionResponse) []string {
	var out []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		out = append(out, s.GetName())
	}
	return out
}

// fileNames are the names of the files in a response, in its order.
func fileNames(t *testing.T, resp *v1pb.ServerReflectionResponse) []string {
	t.Helper()
	var out []string
	for _, raw := range resp.GetFileDescriptorResponse().GetFileDescriptorProto() {
		fd := &descriptorpb.FileDescriptorProto{}
		if err := proto.Unmarshal(raw, fd); err != nil {
			t.Fatal(err)
		}
		out = append(out, fd.GetName())
	}
	return out
}

var own = []string{"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}

func TestListIsRoutesAndOwnServices(t *testing.T) {
	g := startService(t, time.Second)
	g.tab.set(Route{Name: "b.Svc"}, Route{Name: "a.Svc"})
	for _, alpha := range []bool{false, true} {
		got := names(g.ask(t, alpha, listReq())[0])
		want := append([]string{"a.Svc", "b.Svc"}, own...)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("list (v1alpha %v) = %q, want %q", alpha, got, want)
		}
	}
}

func TestDefaultRouteListsItsBackendsServicesOnce(t *testing.T) {
	g := startService(t, time.Second)
	be := startBackend(t, backendOpts{}, svcFile("x.proto", "x", "Svc", nil), svcFile("y.proto", "y", "Svc", nil))
	g.tab.set(Route{Name: DefaultRoute, Backends: []Backend{be.at(time.Time{})}}, Route{Name: "y.Svc"})
	got := names(g.ask(t, false, listReq())[0])
	want := append([]string{"x.Svc", "y.Svc"}, own...)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("list = %q, want %q", got, want)
	}
	if got := fileNames(t, g.ask(t, false, symReq("x.Svc.Do"))[0]); !slices.Equal(got, []string{"x.proto"}) {
		t.Fatalf("file_containing_symbol x.Svc.Do through the default route = %q, want x.proto", got)
	}
}

func TestDescriptorsCachedUntilBackendsChange(t *testing.T) {
	g := startService(t, time.Second)
	v1 := startBackend(t, backendOpts{}, svcFile("a.proto", "a", "Svc", nil, "common.proto"), svcFile("common.proto", "common", "", nil))
	g.tab.set(Route{Name: "a.Svc", Backends: []Backend{v1.at(time.Unix(1, 0))}})
	resp := g.ask(t, false, symReq("a.Svc"), symReq("a.Svc"), fileReq("common.proto"))
	if got := fileNames(t, resp[0]); !slices.Equal(got, []string{"a.proto", "common.proto"}) {
		t.Fatalf("first answer = %q, want a.proto with its import", got)
	}
	// Imports go once per stream, as grpc-go's own reflection does.
	if got := fileNames(t, resp[1]); !slices.Equal(got, []string{"a.proto"}) {
		t.Fatalf("second answer on the stream = %q, want a.proto alone", got)
	}
	if got := fileNames(t, resp[2]); !slices.Equal(got, []string{"common.proto"}) {
		t.Fatalf("file_by_filename common.proto = %q", got)
	}
	g.ask(t, false, symReq("a.Svc.Do"), symReq("a.M"))
	if n := v1.streams.Load(); n != 1 {
		t.Fatalf("the backend was asked on %d streams, want 1: answers come from the cache", n)
	}

	// The same address, become another backend (Since moved): asked
	// again.
	v2 := startBackend(t, backendOpts{}, svcFile("a.proto", "a", "Svc", []string{"New"}))
	g.tab.set(Route{Name: "a.Svc", Backends: []Backend{{Addr: v1.addr, Since: time.Unix(2, 0), Conn: v2.conn}}})
	if got := fileNames(t, g.ask(t, false, symReq("a.New"))[0]); !slices.Equal(got, []string{"a.proto"}) {
		t.Fatalf("file_containing_symbol a.New after the backend changed = %q, want a.proto", got)
	}
	if n := v2.streams.Load(); n != 1 {
		t.Fatalf("the new backend was asked on %d streams, want 1", n)
	}

	// The route leaves: nothing of it is kept.
	g.tab.set(Route{Name: "b.Svc"})
	if resp := g.ask(t, false, symReq("a.Svc"))[0]; resp.GetErrorResponse().GetErrorCode() != int32(codes.NotFound) {
		t.Fatalf("file_containing_symbol a.Svc after its route left = %v, want NOT_FOUND", resp)
	}
	if _, ok := g.s.Status()["a.Svc"]; ok {
		t.Fatal("Status still has the route that left")
	}
}

func TestV1AlphaOnlyBackend(t *testing.T) {
	g := startService(t, time.Second)
	be := startBackend(t, backendOpts{v1alphaOnly: true}, svcFile("a.proto", "a", "Svc", nil))
	g.tab.set(Route{Name: "a.Svc", Backends: []Backend{be.at(time.Time{})}})
	if got := fileNames(t, g.ask(t, false, symReq("a.Svc"))[0]); !slices.Equal(got, []string{"a.proto"}) {
		t.Fatalf("file_containing_symbol a.Svc from a v1alpha backend = %q, want a.proto", got)
	}
}

func TestOwnServicesDescribed(t *testing.T) {
	g := startService(t, time.Second)
	for _, svc := range own {
		if got := fileNames(t, g.ask(t, true, symReq(svc))[0]); len(got) == 0 || !strings.HasPrefix(got[0], "grpc/") {
			t.Fatalf("file_containing_symbol %s = %q, want the gateway's own grpc/... file", svc, got)
		}
	}
}

func TestSilentBackendSkippedWithinTimeoutAndRetriedLater(t *testing.T) {
	const timeout = 200 * time.Millisecond
	g := startService(t, timeout)
	silent := startBackend(t, backendOpts{block: true})
	good := startBackend(t, backendOpts{}, svcFile("a.proto", "a", "Svc", nil))
	g.tab.set(Route{Name: "a.Svc", Backends: []Backend{silent.at(time.Time{}), good.at(time.Time{})}})
	start := time.Now()
	resp := g.ask(t, false, symReq("a.Svc"))[0]
	if took := time.Since(start); took > 10*timeout {
		t.Fatalf("the answer took %v with a backend that never answers; the timeout is %v", took, timeout)
	}
	if got := fileNames(t, resp); !slices.Equal(got, []string{"a.proto"}) {
		t.Fatalf("file_containing_symbol a.Svc = %q, want the answering backend's a.proto", got)
	}
	st := g.s.Status()["a.Svc"]
	if len(st.Errors) != 1 || !strings.HasPrefix(st.Errors[0], silent.addr+": ") {
		t.Fatalf("status errors = %q, want the silent backend's", st.Errors)
	}
	g.ask(t, false, symReq("a.Svc"))
	if n := silent.streams.Load(); n != 1 {
		t.Fatalf("the silent backend was asked %d times before its retry was due, want 1", n)
	}
	g.clock.add(errorRetry)
	g.ask(t, false, symReq("a.Svc"))
	if n := silent.streams.Load(); n != 2 {
		t.Fatalf("the silent backend was asked %d times after its retry was due, want 2", n)
	}
	if n := good.streams.Load(); n != 1 {
		t.Fatalf("the good backend was asked %d times, want 1: its answer is kept", n)
	}
}

func TestNoReflectionListedWithoutDescriptors(t *testing.T) {
	g := startService(t, time.Second)
	be := startBackend(t, backendOpts{none: true})
	g.tab.set(Route{Name: "a.Svc", Backends: []Backend{be.at(time.Time{})}})
	if got := names(g.ask(t, false, listReq())[0]); !slices.Contains(got, "a.Svc") {
		t.Fatalf("list = %q, want a.Svc", got)
	}
	e := g.ask(t, false, symReq("a.Svc.Do"))[0].GetErrorResponse()
	if e.GetErrorCode() != int32(codes.NotFound) || !strings.Contains(e.GetErrorMessage(), "does not serve grpc.reflection") {
		t.Fatalf("file_containing_symbol a.Svc.Do = %v, want NOT_FOUND saying the backend has no reflection", e)
	}
	if st := g.s.Status()["a.Svc"]; st.Files != 0 || !slices.Equal(st.WithoutReflection, []string{be.addr}) {
		t.Fatalf("status = %+v, want no files and %s without reflection", st, be.addr)
	}
}

func TestConflicts(t *testing.T) {
	g := startService(t, time.Second)
	a := startBackend(t, backendOpts{}, svcFile("a.proto", "a", "Svc", nil, "common.proto"), svcFile("common.proto", "common", "", nil))
	b := startBackend(t, backendOpts{}, svcFile("a.proto", "a", "Svc", []string{"More"}, "common.proto"), svcFile("common.proto", "common", "", nil))
	c := startBackend(t, backendOpts{}, svcFile("c.proto", "c", "Svc", nil, "common.proto"), svcFile("common.proto", "common", "", []string{"Other"}))
	g.tab.set(
		Route{Name: "a.Svc", Backends: []Backend{a.at(time.Time{}), b.at(time.Time{})}},
		Route{Name: "c.Svc", Backends: []Backend{c.at(time.Time{})}},
	)
	kept, lost := min(a.addr, b.addr), max(a.addr, b.addr)
	g.ask(t, false, symReq("a.Svc"), symReq("c.Svc"))
	st := g.s.Status()
	want := fmt.Sprintf("a.proto: backend %s differs from backend %s (kept)", lost, kept)
	if got := st["a.Svc"].Conflicts; !slices.Equal(got, []string{want}) {
		t.Fatalf("a.Svc conflicts = %q, want %q", got, want)
	}
	want = "common.proto: differs from route a.Svc's (kept for lookups by file name)"
	if got := st["c.Svc"].Conflicts; !slices.Equal(got, []string{want}) {
		t.Fatalf("c.Svc conflicts = %q, want %q", got, want)
	}
	// A file's imports come from its own route first: c.proto is
	// sent with c.Svc's common.proto, which has Other.
	resp := g.ask(t, false, symReq("c.Svc"))[0]
	raw := resp.GetFileDescriptorResponse().GetFileDescriptorProto()
	fd := &descriptorpb.FileDescriptorProto{}
	if len(raw) != 2 || proto.Unmarshal(raw[1], fd) != nil || len(fd.GetMessageType()) != 2 {
		t.Fatalf("c.Svc's answer = %q, want c.proto with its own route's common.proto", fileNames(t, resp))
	}
}

func TestSourceInfoIsNoConflict(t *testing.T) {
	plain := svcFile("a.proto", "a", "Svc", nil)
	commented := proto.Clone(plain).(*descriptorpb.FileDescriptorProto)
	commented.SourceCodeInfo = &descriptorpb.SourceCodeInfo{Location: []*descriptorpb.SourceCodeInfo_Location{{Path: []int32{4, 0}, Span: []int32{1, 0, 5}, LeadingComments: proto.String(" M.\n")}}}
	var files []*file
	for i, fd := range []*descriptorpb.FileDescriptorProto{plain, commented} {
		raw, err := proto.Marshal(fd)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parseFile(raw, fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	if s := newFileSet(files); len(s.conflicts) != 0 {
		t.Fatalf("conflicts %v between two files that differ in comments only", s.conflicts)
	}
}

func TestSymbolsIndexed(t *testing.T) {
	fd := svcFile("a.proto", "a.b", "Svc", nil)
	fd.MessageType[0].Field = []*descriptorpb.FieldDescriptorProto{{Name: proto.String("f"), Number: proto.Int32(1), Type: descriptorpb.FieldDescriptorProto_TYPE_INT32.Enum()}}
	fd.MessageType[0].NestedType = []*descriptorpb.DescriptorProto{{Name: proto.String("N")}}
	fd.MessageType[0].EnumType = []*descriptorpb.EnumDescriptorProto{{Name: proto.String("E"), Value: []*descriptorpb.EnumValueDescriptorProto{{Name: proto.String("E_ZERO"), Number: proto.Int32(0)}}}}
	fd.EnumType = []*descriptorpb.EnumDescriptorProto{{Name: proto.String("Top"), Value: []*descriptorpb.EnumValueDescriptorProto{{Name: proto.String("TOP_ZERO"), Number: proto.Int32(0)}}}}
	raw, err := proto.Marshal(fd)
	if err != nil {
		t.Fatal(err)
	}
	f, err := parseFile(raw, "x")
	if err != nil {
		t.Fatal(err)
	}
	s := newFileSet([]*file{f})
	for _, sym := range []string{"a.b.Svc", "a.b.Svc.Do", "a.b.M", "a.b.M.f", "a.b.M.N", "a.b.M.E", "a.b.M.E_ZERO", "a.b.Top", "a.b.TOP_ZERO"} {
		if s.symbols[sym] != f {
			t.Errorf("symbol %s not indexed", sym)
		}
	}
	if len(s.symbols) != 9 {
		t.Errorf("%d symbols indexed, want 9: %v", len(s.symbols), slices.Sorted(func(yield func(string) bool) {
			for k := range s.symbols {
				if !yield(k) {
					return
				}
			}
		}))
	}
}

// extFiles are base.proto (proto2, message a.Base with an extension range
// and service a.Svc) and ext.proto, which extends a.Base with field 150
// and is imported by nothing: only the backend's extension lookup finds
// it.
func extFiles(t *testing.T) ([]*descriptorpb.FileDescriptorProto, *protoregistry.Types) {
	base := svcFile("base.proto", "a", "Svc", nil)
	base.Syntax = proto.String("proto2")
	base.MessageType = append(base.MessageType, &descriptorpb.DescriptorProto{
		Name:           proto.String("Base"),
		ExtensionRange: []*descriptorpb.DescriptorProto_ExtensionRange{{Start: proto.Int32(100), End: proto.Int32(200)}},
	})
	ext := &descriptorpb.FileDescriptorProto{
		Name: proto.String("ext.proto"), Package: proto.String("a"), Syntax: proto.String("proto2"), Dependency: []string{"base.proto"},
		Extension: []*descriptorpb.FieldDescriptorProto{{
			Name: proto.String("extra"), Number: proto.Int32(150), Extendee: proto.String(".a.Base"),
			Type: descriptorpb.FieldDescriptorProto_TYPE_INT32.Enum(), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
		}},
	}
	reg, err := protodesc.NewFiles(&descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{base, ext}})
	if err != nil {
		t.Fatal(err)
	}
	types := &protoregistry.Types{}
	d, err := reg.FindDescriptorByName("a.extra")
	if err != nil {
		t.Fatal(err)
	}
	if err := types.RegisterExtension(dynamicpb.NewExtensionType(d.(protoreflect.ExtensionDescriptor))); err != nil {
		t.Fatal(err)
	}
	return []*descriptorpb.FileDescriptorProto{base, ext}, types
}

func TestExtensionsAskTheBackendWhenTheCacheLacksThem(t *testing.T) {
	g := startService(t, time.Second)
	files, types := extFiles(t)
	be := startBackend(t, backendOpts{types: types}, files...)
	g.tab.set(Route{Name: "a.Svc", Backends: []Backend{be.at(time.Time{})}})
	extReq := &v1pb.ServerReflectionRequest{MessageRequest: &v1pb.ServerReflectionRequest_FileContainingExtension{
		FileContainingExtension: &v1pb.ExtensionRequest{ContainingType: "a.Base", ExtensionNumber: 150},
	}}
	numsReq := &v1pb.ServerReflectionRequest{MessageRequest: &v1pb.ServerReflectionRequest_AllExtensionNumbersOfType{AllExtensionNumbersOfType: "a.Base"}}
	resp := g.ask(t, false, numsReq, extReq, numsReq)
	if got := resp[0].GetAllExtensionNumbersResponse(); got.GetBaseTypeName() != "a.Base" || len(got.GetExtensionNumber()) != 0 {
		t.Fatalf("extension numbers of a.Base before ext.proto was fetched = %v, want none", resp[0])
	}
	if got := fileNames(t, resp[1]); !slices.Equal(got, []string{"ext.proto", "base.proto"}) {
		t.Fatalf("file_containing_extension a.Base 150 = %q (%v), want ext.proto and its import", got, resp[1])
	}
	if got := resp[2].GetAllExtensionNumbersResponse().GetExtensionNumber(); !slices.Equal(got, []int32{150}) {
		t.Fatalf("extension numbers of a.Base after = %v, want [150]", got)
	}
	if st := g.s.Status()["a.Svc"]; st.Files != 2 {
		t.Fatalf("status files = %d, want 2: what the backend answered is kept", st.Files)
	}
}

func TestBackendBoundedFiles(t *testing.T) {
	// A chain of imports longer than a backend may make the gateway
	// hold.
	n := maxFilesPerBackend + 10
	files := make([]*descriptorpb.FileDescriptorProto, n)
	for i := range n {
		var deps []string
		if i+1 < n {
			deps = []string{fmt.Sprintf("f%d.proto", i+1)}
		}
		svc := ""
		if i == 0 {
			svc = "Svc"
		}
		files[i] = svcFile(fmt.Sprintf("f%d.proto", i), fmt.Sprintf("p%d", i), svc, nil, deps...)
	}
	be := startBackend(t, backendOpts{}, files...)
	g := startService(t, 10*time.Second)
	g.tab.set(Route{Name: "p0.Svc", Backends: []Backend{be.at(time.Time{})}})
	g.ask(t, false, symReq("p0.Svc"))
	st := g.s.Status()["p0.Svc"]
	if st.Files != maxFilesPerBackend || len(st.Errors) != 1 || !strings.Contains(st.Errors[0], "over the gateway's bound") {
		t.Fatalf("status = %d files, errors %q; want %d files and the bound named", st.Files, st.Errors, maxFilesPerBackend)
	}
}

func TestUnknownNamesAskedOncePerRetry(t *testing.T) {
	g := startService(t, time.Second)
	be := startBackend(t, backendOpts{}, svcFile("a.proto", "a", "Svc", nil))
	g.tab.set(Route{Name: "a.Svc", Backends: []Backend{be.at(time.Time{})}})
	for range 3 {
		if resp := g.ask(t, false, symReq("nowhere.Msg"))[0]; resp.GetErrorResponse().GetErrorCode() != int32(codes.NotFound) {
			t.Fatalf("file_containing_symbol nowhere.Msg = %v, want NOT_FOUND", resp)
		}
	}
	// One stream to fetch the route, one to ask for the unknown name.
	if n := be.streams.Load(); n != 2 {
		t.Fatalf("the backend was asked on %d streams for 3 requests of one unknown name, want 2", n)
	}
	g.clock.add(errorRetry)
	g.ask(t, false, symReq("nowhere.Msg"))
	if n := be.streams.Load(); n != 3 {
		t.Fatalf("after errorRetry the backend was asked on %d streams in all, want 3", n)
	}
}
