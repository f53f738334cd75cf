// Package reflectsvc is the gateway's own gRPC server reflection
// (grpc.reflection.v1 and v1alpha, one implementation): what a client such
// as grpcurl sees of the gateway as a whole. The services it lists are the
// gateway's routes and the services the gateway serves itself; the file
// descriptors it answers with are fetched from each route's routable
// backends' own reflection services over their existing connections,
// cached per route and backend, and merged.
//
// Nothing is fetched until a client asks: a request looks at the routing
// table, and a route whose routable backends changed since its descriptors
// were fetched is asked again, each backend within a short deadline, so
// that a request never waits long and a backend that does not answer is
// left out. A backend without reflection leaves its route listed without
// descriptors. Two backends (of a route, or of two routes) that serve one
// file name with different contents are a conflict: the first one, in
// route and backend address order, is kept, and the conflict is logged and
// reported by Status.
package reflectsvc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	v1pb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	v1alphapb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// DefaultRoute names the route that takes the calls of services no other
// route covers. It is not a service: what it lists is what its backends
// list.
const DefaultRoute = "*"

// Table is what the service reads of the gateway's routing table.
type Table interface {
	// Routes are the routes now, each with the backends that take its
	// calls. It must not block.
	Routes() []Route
}

// Route is one route: a gRPC service name, or DefaultRoute.
type Route struct {
	Name     string
	Backends []Backend
}

// Backend is one routable backend of a route.
type Backend struct {
	Addr string
	// Since is when the backend last became what it is (routable, on this
	// connection): a backend whose Since changed may have been replaced
	// and is asked again.
	Since time.Time
	// Conn reaches the backend: its existing connection, not a second
	// one.
	Conn grpc.ClientConnInterface
}

// Config of a Service. Table is required.
type Config struct {
	Table Table
	// Own are the services the gateway serves itself, beside reflection
	// (grpc.health.v1.Health): listed, and described from these
	// descriptors.
	Own []protoreflect.ServiceDescriptor
	// Timeout is how long one backend is given to answer, for all it is
	// asked at once; zero means DefaultTimeout. A request waits at most
	// a few times this long.
	Timeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// DefaultTimeout is the time a backend is given to answer.
const DefaultTimeout = 2 * time.Second

// Bounds of the work and the state behind one request.
const (
	// maxBackendsPerRoute backends are asked per route, the first by
	// address: enough to see a route's backends disagree, without making
	// a large route's every change cost a round trip per backend.
	maxBackendsPerRoute = 8
	// parallel bounds the routes (or backends) asked at once.
	parallel = 8
	// errorRetry is how long a backend that failed in a way that may pass
	// (a deadline, a broken stream) is left before it is asked again, and
	// how long a name no backend knew is not asked for again.
	errorRetry = 10 * time.Second
	// maxMisses bounds the names remembered as unknown.
	maxMisses = 1024
)

// Services are the names of the reflection services.
func Services() []string {
	return []string{v1pb.ServerReflection_ServiceDesc.ServiceName, v1alphapb.ServerReflection_ServiceDesc.ServiceName}
}

// Service is the gateway's reflection service.
type Service struct {
	cfg Config
	log *slog.Logger
	// own are the services the gateway serves, reflection included.
	own map[string]bool
	// local are the descriptors of own.
	local *fileSet

	// asking lets one round of questions the cache could not answer go
	// to the backends at a time.
	asking chan struct{}

	mu sync.Mutex // guards the fields below
	// routes by name: every route of the table that was asked about.
	routes map[string]*entry
	// misses are the requests the backends were asked lately and could
	// not answer, with when they may be asked again.
	misses map[string]time.Time
}

// entry is one route's cache.
type entry struct {
	// sem lets one request at a time refresh the route; the others wait
	// for its view rather than ask the backends again.
	sem  chan struct{}
	view atomic.Pointer[view]
}

// view is what a route's backends said, merged; never modified once
// stored.
type view struct {
	// keys identify the backends it was built from, in address order.
	keys    []string
	results []*backendResult
	set     *fileSet
	// services are what a default route's backends list.
	services []string
	// retryAt, when set, is when a failed backend is to be asked again.
	retryAt time.Time
}

// New returns the service for cfg.Table.
func New(cfg Config, logger *slog.Logger) (*Service, error) {
	if cfg.Table == nil {
		return nil, errors.New("reflectsvc: Config.Table is required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{
		cfg: cfg, log: logger.With("component", "reflection"), own: map[string]bool{},
		asking: make(chan struct{}, 1), routes: map[string]*entry{}, misses: map[string]time.Time{},
	}
	var files []*file
	own := append(slices.Clone(cfg.Own),
		v1pb.File_grpc_reflection_v1_reflection_proto.Services().Get(0),
		v1alphapb.File_grpc_reflection_v1alpha_reflection_proto.Services().Get(0))
	for _, d := range own {
		s.own[string(d.FullName())] = true
		fs, err := localFiles(d.ParentFile())
		if err != nil {
			return nil, err
		}
		files = append(files, fs...)
	}
	s.local = newFileSet(files)
	return s, nil
}

// localFiles are fd and its imports, as the gateway's binary holds them.
func localFiles(fd protoreflect.FileDescriptor) ([]*file, error) {
	var out []*file
	seen := map[string]bool{}
	queue := []protoreflect.FileDescriptor{fd}
	for len(queue) > 0 {
		fd := queue[0]
		queue = queue[1:]
		if seen[fd.Path()] || fd.IsPlaceholder() {
			continue
		}
		seen[fd.Path()] = true
		raw, err := proto.Marshal(protodesc.ToFileDescriptorProto(fd))
		if err != nil {
			return nil, fmt.Errorf("reflectsvc: %s: %w", fd.Path(), err)
		}
		f, err := parseFile(raw, "")
		if err != nil {
			return nil, fmt.Errorf("reflectsvc: %w", err)
		}
		out = append(out, f)
		for i := range fd.Imports().Len() {
			queue = append(queue, fd.Imports().Get(i).FileDescriptor)
		}
	}
	return out, nil
}

// Register serves both reflection versions on r.
func (s *Service) Register(r grpc.ServiceRegistrar) {
	v1pb.RegisterServerReflectionServer(r, v1Server{s: s})
	v1alphapb.RegisterServerReflectionServer(r, v1alphaServer{s: s})
}

type v1Server struct {
	v1pb.UnimplementedServerReflectionServer
	s *Service
}

func (v v1Server) ServerReflectionInfo(st v1pb.ServerReflection_ServerReflectionInfoServer) error {
	return v.s.serve(st.Context(), st.Recv, st.Send)
}

type v1alphaServer struct {
	v1alphapb.UnimplementedServerReflectionServer
	s *Service
}

func (v v1alphaServer) ServerReflectionInfo(st v1alphapb.ServerReflection_ServerReflectionInfoServer) error {
	recv := func() (*v1pb.ServerReflectionRequest, error) {
		r, err := st.Recv()
		if err != nil {
			return nil, err
		}
		return convert[v1pb.ServerReflectionRequest](r)
	}
	send := func(r *v1pb.ServerReflectionResponse) error {
		a, err := convert[v1alphapb.ServerReflectionResponse](r)
		if err != nil {
			return status.Errorf(codes.Internal, "reflection: %v", err)
		}
		return st.Send(a)
	}
	return v.s.serve(st.Context(), recv, send)
}

// serve answers one stream's requests in order.
func (s *Service) serve(ctx context.Context, recv func() (*v1pb.ServerReflectionRequest, error), send func(*v1pb.ServerReflectionResponse) error) error {
	// sent are the files this stream was sent: imports go once per stream,
	// as grpc-go's own reflection does.
	sent := map[string]bool{}
	for {
		req, err := recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		resp, err := s.answer(ctx, req, sent)
		if err != nil {
			return err
		}
		if err := send(resp); err != nil {
			return err
		}
	}
}

// answer is the response to one request: never an error for a name that is
// not found (the stream goes on), only for a request that makes no sense.
func (s *Service) answer(ctx context.Context, req *v1pb.ServerReflectionRequest, sent map[string]bool) (*v1pb.ServerReflectionResponse, error) {
	// Every wait below is bounded by the backend timeout; this bounds
	// their sum.
	ctx, cancel := context.WithTimeout(ctx, 3*s.cfg.Timeout)
	defer cancel()
	resp := &v1pb.ServerReflectionResponse{ValidHost: req.GetHost(), OriginalRequest: req}
	routes := s.table()
	var (
		f    *file
		home *fileSet
		miss string
	)
	switch m := req.GetMessageRequest().(type) {
	case *v1pb.ServerReflectionRequest_ListServices:
		resp.MessageResponse = &v1pb.ServerReflectionResponse_ListServicesResponse{ListServicesResponse: s.list(ctx, routes)}
		return resp, nil
	case *v1pb.ServerReflectionRequest_FileByFilename:
		name := m.FileByFilename
		f, home, miss = s.find(ctx, routes, "", req, func(fs *fileSet) *file { return fs.files[name] })
	case *v1pb.ServerReflectionRequest_FileContainingSymbol:
		sym := m.FileContainingSymbol
		f, home, miss = s.find(ctx, routes, covering(routes, sym), req, func(fs *fileSet) *file { return fs.symbols[sym] })
	case *v1pb.ServerReflectionRequest_FileContainingExtension:
		k := extKey{m.FileContainingExtension.GetContainingType(), m.FileContainingExtension.GetExtensionNumber()}
		f, home, miss = s.find(ctx, routes, "", req, func(fs *fileSet) *file { return fs.exts[k] })
	case *v1pb.ServerReflectionRequest_AllExtensionNumbersOfType:
		typ := m.AllExtensionNumbersOfType
		if f, _, miss = s.find(ctx, routes, "", req, func(fs *fileSet) *file { return fs.symbols[typ] }); f == nil {
			resp.MessageResponse = notFound(miss)
			return resp, nil
		}
		resp.MessageResponse = &v1pb.ServerReflectionResponse_AllExtensionNumbersResponse{AllExtensionNumbersResponse: &v1pb.ExtensionNumberResponse{
			BaseTypeName: typ, ExtensionNumber: s.extensionNumbers(typ),
		}}
		return resp, nil
	default:
		return nil, status.Errorf(codes.InvalidArgument, "reflection: unknown request %T", m)
	}
	if f == nil {
		resp.MessageResponse = notFound(miss)
		return resp, nil
	}
	resp.MessageResponse = &v1pb.ServerReflectionResponse_FileDescriptorResponse{FileDescriptorResponse: &v1pb.FileDescriptorResponse{
		FileDescriptorProto: s.withImports(f, home, sent),
	}}
	return resp, nil
}

func notFound(msg string) *v1pb.ServerReflectionResponse_ErrorResponse {
	return &v1pb.ServerReflectionResponse_ErrorResponse{ErrorResponse: &v1pb.ErrorResponse{ErrorCode: int32(codes.NotFound), ErrorMessage: msg}}
}

// table reads the routes, sorted by name, and forgets the cache of every
// route that left.
func (s *Service) table() []Route {
	routes := slices.SortedFunc(slices.Values(s.cfg.Table.Routes()), func(a, b Route) int { return strings.Compare(a.Name, b.Name) })
	s.mu.Lock()
	defer s.mu.Unlock()
	for name := range s.routes {
		if _, ok := slices.BinarySearchFunc(routes, name, func(r Route, n string) int { return strings.Compare(r.Name, n) }); !ok {
			delete(s.routes, name)
		}
	}
	return routes
}

// covering is the route whose calls the symbol's service takes: the route
// named by the symbol or by its prefix before a method (pkg.Svc.Method),
// or the default route; "" for none.
func covering(routes []Route, sym string) string {
	has := func(name string) bool {
		_, ok := slices.BinarySearchFunc(routes, name, func(r Route, n string) int { return strings.Compare(r.Name, n) })
		return ok
	}
	if has(sym) {
		return sym
	}
	if i := strings.LastIndexByte(sym, '.'); i > 0 && has(sym[:i]) {
		return sym[:i]
	}
	if has(DefaultRoute) {
		return DefaultRoute
	}
	return ""
}

// list is every service a client can call through the gateway.
func (s *Service) list(ctx context.Context, routes []Route) *v1pb.ListServiceResponse {
	names := map[string]bool{}
	for name := range s.own {
		names[name] = true
	}
	for _, r := range routes {
		if r.Name != DefaultRoute {
			names[r.Name] = true
			continue
		}
		// The default route serves what its backends serve, less what
		// other routes take; those are listed anyway.
		for _, svc := range s.refresh(ctx, r).services {
			names[svc] = true
		}
	}
	out := &v1pb.ListServiceResponse{}
	for _, name := range slices.Sorted(maps.Keys(names)) {
		out.Service = append(out.Service, &v1pb.ServiceResponse{Name: name})
	}
	return out
}

// find looks for a file with pick: in the gateway's own files, then in the
// preferred route's (fetched if its backends changed), in every route's
// cache, in every route's after fetching the ones whose backends changed,
// and last by asking the backends themselves. It returns the file and the
// set it was found in, or why it was not found.
func (s *Service) find(ctx context.Context, routes []Route, preferred string, req *v1pb.ServerReflectionRequest, pick func(*fileSet) *file) (*file, *fileSet, string) {
	if f := pick(s.local); f != nil {
		return f, s.local, ""
	}
	if preferred != "" {
		i, _ := slices.BinarySearchFunc(routes, preferred, func(r Route, n string) int { return strings.Compare(r.Name, n) })
		if v := s.refresh(ctx, routes[i]); v != nil {
			if f := pick(v.set); f != nil {
				return f, v.set, ""
			}
		}
	}
	look := func() (*file, *fileSet) {
		for _, v := range s.views(routes) {
			if f := pick(v.set); f != nil {
				return f, v.set
			}
		}
		return nil, nil
	}
	if f, set := look(); f != nil {
		return f, set, ""
	}
	s.each(ctx, routes, func(r Route) { s.refresh(ctx, r) })
	if f, set := look(); f != nil {
		return f, set, ""
	}
	asked := routes
	if preferred != "" {
		i, _ := slices.BinarySearchFunc(routes, preferred, func(r Route, n string) int { return strings.Compare(r.Name, n) })
		asked = routes[i : i+1]
	}
	if s.askBackends(ctx, asked, req) {
		if f, set := look(); f != nil {
			return f, set, ""
		}
		s.missed(req)
	}
	return nil, nil, s.why(routes, preferred)
}

// askBackends asks the routes' backends a request the cache could not
// answer, unless they were asked it lately and had no answer (missed): a
// client that asks for names that exist nowhere costs the backends one
// round of questions per name and errorRetry, not one per request. One
// round runs at a time. It reports whether it asked.
func (s *Service) askBackends(ctx context.Context, routes []Route, req *v1pb.ServerReflectionRequest) bool {
	s.mu.Lock()
	until, missed := s.misses[missKey(req)]
	s.mu.Unlock()
	if missed && s.cfg.Now().Before(until) {
		return false
	}
	select {
	case s.asking <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	defer func() { <-s.asking }()
	s.each(ctx, routes, func(r Route) { s.extend(ctx, r, req) })
	return true
}

// missed remembers that the backends had no answer to req.
func (s *Service) missed(req *v1pb.ServerReflectionRequest) {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.misses) >= maxMisses {
		for k, until := range s.misses {
			if !now.Before(until) {
				delete(s.misses, k)
			}
		}
		if len(s.misses) >= maxMisses {
			clear(s.misses)
		}
	}
	s.misses[missKey(req)] = now.Add(errorRetry)
}

// missKey names what a request asks for.
func missKey(req *v1pb.ServerReflectionRequest) string {
	switch m := req.GetMessageRequest().(type) {
	case *v1pb.ServerReflectionRequest_FileByFilename:
		return "file " + m.FileByFilename
	case *v1pb.ServerReflectionRequest_FileContainingExtension:
		return fmt.Sprintf("extension %s %d", m.FileContainingExtension.GetContainingType(), m.FileContainingExtension.GetExtensionNumber())
	}
	// A symbol, or the type of all_extension_numbers_of_type, which is
	// looked up as one.
	return "symbol " + req.GetFileContainingSymbol() + req.GetAllExtensionNumbersOfType()
}

// why a lookup found nothing, for the client.
func (s *Service) why(routes []Route, preferred string) string {
	const none = "not found in the gateway's routes"
	if preferred == "" {
		return none
	}
	i, _ := slices.BinarySearchFunc(routes, preferred, func(r Route, n string) int { return strings.Compare(r.Name, n) })
	v := s.views(routes[i : i+1])
	switch {
	case len(routes[i].Backends) == 0:
		return fmt.Sprintf("route %s has no routable backend to ask", preferred)
	case len(v) == 0:
		return none
	}
	var errs []string
	for _, r := range v[0].results {
		if r.err != nil {
			errs = append(errs, r.addr+": "+r.err.Error())
		}
	}
	if len(errs) == 0 {
		return fmt.Sprintf("not found in route %s's backends' reflection", preferred)
	}
	return fmt.Sprintf("route %s: %s", preferred, strings.Join(errs, "; "))
}

// each runs f for every route, a few at a time, and returns when all are
// done.
func (s *Service) each(ctx context.Context, routes []Route, f func(Route)) {
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for _, r := range routes {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return
		}
		wg.Go(func() {
			defer func() { <-sem }()
			f(r)
		})
	}
	wg.Wait()
}

// views are the routes' cached views, in route order; routes never
// fetched have none.
func (s *Service) views(routes []Route) []*view {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*view
	for _, r := range routes {
		if e := s.routes[r.Name]; e != nil {
			if v := e.view.Load(); v != nil {
				out = append(out, v)
			}
		}
	}
	return out
}

func (s *Service) entry(route string) *entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.routes[route]
	if e == nil {
		e = &entry{sem: make(chan struct{}, 1)}
		s.routes[route] = e
	}
	return e
}

// lock takes the route's turn to refresh, or gives up with ctx.
func (e *entry) lock(ctx context.Context) bool {
	select {
	case e.sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (e *entry) unlock() { <-e.sem }

// backendKeys are the backends a route's view is built from, in address
// order, and their keys.
func backendKeys(r Route) ([]Backend, []string) {
	bs := slices.SortedFunc(slices.Values(r.Backends), func(a, b Backend) int { return strings.Compare(a.Addr, b.Addr) })
	if len(bs) > maxBackendsPerRoute {
		bs = bs[:maxBackendsPerRoute]
	}
	keys := make([]string, len(bs))
	for i, b := range bs {
		keys[i] = fmt.Sprintf("%s@%d", b.Addr, b.Since.UnixNano())
	}
	return bs, keys
}

// refresh is the route's view, fetched again from the backends that are
// new to it, or failed and are due for another try. It returns nil only
// when ctx ended before the route was ever fetched.
func (s *Service) refresh(ctx context.Context, r Route) *view {
	e := s.entry(r.Name)
	if !e.lock(ctx) {
		return e.view.Load()
	}
	defer e.unlock()
	old := e.view.Load()
	bs, keys := backendKeys(r)
	now := s.cfg.Now()
	if old != nil && slices.Equal(old.keys, keys) && (old.retryAt.IsZero() || now.Before(old.retryAt)) {
		return old
	}
	prev := map[string]*backendResult{}
	if old != nil {
		for _, res := range old.results {
			if res.retryAt.IsZero() || now.Before(res.retryAt) {
				prev[res.key] = res
			}
		}
	}
	results := make([]*backendResult, len(bs))
	fctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	var wg sync.WaitGroup
	for i, b := range bs {
		if res := prev[keys[i]]; res != nil {
			results[i] = res
			continue
		}
		wg.Go(func() {
			res := fetch(fctx, b, keys[i], r.Name, r.Name == DefaultRoute, s.own)
			switch {
			case ctx.Err() != nil:
				// The asking client went away: the next request asks
				// again, whatever this one got.
				res.retryAt = now
			case res.err != nil && !errors.Is(res.err, errNoReflection):
				res.retryAt = now.Add(errorRetry)
			}
			results[i] = res
		})
	}
	wg.Wait()
	v := newView(keys, results)
	e.view.Store(v)
	s.logChanges(r.Name, old, v)
	return v
}

// extend asks the route's first backend with reflection the request the
// cache could not answer, and keeps the files it answers with.
func (s *Service) extend(ctx context.Context, r Route, req *v1pb.ServerReflectionRequest) {
	e := s.entry(r.Name)
	if !e.lock(ctx) {
		return
	}
	defer e.unlock()
	old := e.view.Load()
	if old == nil {
		return
	}
	bs, keys := backendKeys(r)
	if !slices.Equal(keys, old.keys) {
		// The backends changed since the view was built: the next
		// request refreshes it.
		return
	}
	for i, res := range old.results {
		if errors.Is(res.err, errNoReflection) {
			continue
		}
		next := *res
		next.files = slices.Clip(next.files)
		fctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		_, err := ask(fctx, bs[i], req, &next)
		cancel()
		if err != nil || len(next.files) == len(res.files) {
			return
		}
		results := slices.Clone(old.results)
		results[i] = &next
		e.view.Store(newView(old.keys, results))
		return
	}
}

func newView(keys []string, results []*backendResult) *view {
	v := &view{keys: keys, results: results}
	var files [][]*file
	services := map[string]bool{}
	for _, res := range results {
		files = append(files, res.files)
		for _, svc := range res.services {
			services[svc] = true
		}
		if !res.retryAt.IsZero() && (v.retryAt.IsZero() || res.retryAt.Before(v.retryAt)) {
			v.retryAt = res.retryAt
		}
	}
	v.set = newFileSet(files...)
	v.services = slices.Sorted(maps.Keys(services))
	return v
}

// logChanges says what a route's new view brings: backends without
// reflection or failing, and files it serves differently from its other
// backends or from other routes.
func (s *Service) logChanges(route string, old, v *view) {
	oldRes := map[string]bool{}
	var oldConflicts []conflict
	if old != nil {
		for _, res := range old.results {
			oldRes[res.key] = true
		}
		oldConflicts = old.set.conflicts
	}
	for _, res := range v.results {
		if oldRes[res.key] || res.err == nil {
			continue
		}
		if errors.Is(res.err, errNoReflection) {
			s.log.Info("backend does not serve reflection: its route is listed without descriptors", "route", route, "addr", res.addr)
		} else {
			s.log.Warn("backend reflection failed", "route", route, "addr", res.addr, "err", res.err)
		}
	}
	for _, c := range v.set.conflicts {
		if !slices.Contains(oldConflicts, c) {
			s.log.Warn("backends of a route serve different descriptors under one file name; the first backend's is kept", "route", route, "file", c.name, "kept", c.kept, "differs", c.lost)
		}
	}
	routes := s.allViews()
	for _, f := range v.set.files {
		if old != nil {
			if of := old.set.files[f.name]; of != nil && of.digest == f.digest {
				continue
			}
		}
		for name, ov := range routes {
			if of := ov.set.files[f.name]; name != route && of != nil && of.digest != f.digest {
				s.log.Warn("two routes serve different descriptors under one file name; lookups by file name get the first route's", "file", f.name, "route", route, "other_route", name)
			}
		}
	}
}

func (s *Service) allViews() map[string]*view {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]*view, len(s.routes))
	for name, e := range s.routes {
		if v := e.view.Load(); v != nil {
			out[name] = v
		}
	}
	return out
}

// withImports is f and the files it imports, transitively, that this
// stream was not sent yet: an import is looked for in f's own set first,
// then in the gateway's, then in every route's.
func (s *Service) withImports(f *file, home *fileSet, sent map[string]bool) [][]byte {
	out := [][]byte{f.raw}
	sent[f.name] = true
	var others []*view
	othersRead := false
	seen := map[string]bool{f.name: true}
	queue := slices.Clone(f.fd.GetDependency())
	for len(queue) > 0 {
		name := queue[0]
		queue = queue[1:]
		if seen[name] {
			continue
		}
		seen[name] = true
		dep := home.files[name]
		if dep == nil {
			dep = s.local.files[name]
		}
		if dep == nil {
			if !othersRead {
				others, othersRead = s.views(s.table()), true
			}
			for _, v := range others {
				if dep = v.set.files[name]; dep != nil {
					break
				}
			}
		}
		if dep == nil {
			continue
		}
		if !sent[name] {
			sent[name] = true
			out = append(out, dep.raw)
		}
		queue = append(queue, dep.fd.GetDependency()...)
	}
	return out
}

// extensionNumbers of typ in every file known.
func (s *Service) extensionNumbers(typ string) []int32 {
	nums := map[int32]bool{}
	sets := []*fileSet{s.local}
	for _, v := range s.allViews() {
		sets = append(sets, v.set)
	}
	for _, fs := range sets {
		for _, n := range fs.extNums[typ] {
			nums[n] = true
		}
	}
	return slices.Sorted(maps.Keys(nums))
}

// RouteStatus is what the reflection service holds for one route.
type RouteStatus struct {
	// Files is how many file descriptors its backends served.
	Files int
	// Conflicts name each file served with two contents: by two of the
	// route's backends, or by this route and another.
	Conflicts []string
	// WithoutReflection are the backends that do not serve reflection.
	WithoutReflection []string
	// Errors are the backends whose reflection failed, and why.
	Errors []string
}

// Status is, per route that a reflection request made the gateway fetch,
// what it holds; routes not fetched yet are absent.
func (s *Service) Status() map[string]RouteStatus {
	views := s.allViews()
	names := slices.Sorted(maps.Keys(views))
	// first has, per file name, the route whose file is kept for lookups
	// by name.
	first := map[string]string{}
	for _, name := range names {
		for fn := range views[name].set.files {
			if _, ok := first[fn]; !ok {
				first[fn] = name
			}
		}
	}
	out := make(map[string]RouteStatus, len(views))
	for _, name := range names {
		v := views[name]
		st := RouteStatus{Files: len(v.set.files)}
		for _, c := range v.set.conflicts {
			st.Conflicts = append(st.Conflicts, c.String())
		}
		for _, fn := range slices.Sorted(maps.Keys(v.set.files)) {
			if other := first[fn]; other != name && views[other].set.files[fn].digest != v.set.files[fn].digest {
				st.Conflicts = append(st.Conflicts, fmt.Sprintf("%s: differs from route %s's (kept for lookups by file name)", fn, other))
			}
		}
		for _, res := range v.results {
			switch {
			case errors.Is(res.err, errNoReflection):
				st.WithoutReflection = append(st.WithoutReflection, res.addr)
			case res.err != nil:
				st.Errors = append(st.Errors, res.addr+": "+res.err.Error())
			}
		}
		out[name] = st
	}
	return out
}
