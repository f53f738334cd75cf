package reflectsvc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	v1pb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	v1alphapb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Bounds of what one backend's reflection may make the gateway hold: past
// them the backend's descriptors are kept as far as they got, and the
// route's status says so.
const (
	maxFilesPerBackend = 1024
	maxBytesPerBackend = 4 << 20
	// maxServicesPerBackend bounds the services a default route's backend
	// may list.
	maxServicesPerBackend = 256
)

// errNoReflection is a backend that serves neither reflection version.
var errNoReflection = errors.New("backend does not serve grpc.reflection")

// backendResult is what one backend's reflection said, for one route: kept
// while the backend stays the same.
type backendResult struct {
	key  string
	addr string
	// files in the order received, closed under their imports as far as
	// the backend could answer.
	files []*file
	bytes int
	// services are the services the backend listed; asked of a default
	// route's backends only.
	services []string
	// err: errNoReflection, or why the backend's descriptors are missing
	// or incomplete.
	err error
	// retryAt, when set, is when a backend that failed in a way that may
	// pass is asked again.
	retryAt time.Time
}

// conv is one reflection stream to a backend, in v1's words whichever
// version the backend speaks.
type conv struct {
	send   func(*v1pb.ServerReflectionRequest) error
	recv   func() (*v1pb.ServerReflectionResponse, error)
	cancel context.CancelFunc
}

func openConv(ctx context.Context, cc grpc.ClientConnInterface, alpha bool) (*conv, error) {
	ctx, cancel := context.WithCancel(ctx)
	if !alpha {
		st, err := v1pb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
		if err != nil {
			cancel()
			return nil, err
		}
		return &conv{send: st.Send, recv: st.Recv, cancel: cancel}, nil
	}
	st, err := v1alphapb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	return &conv{
		send: func(r *v1pb.ServerReflectionRequest) error {
			a, err := convert[v1alphapb.ServerReflectionRequest](r)
			if err != nil {
				return err
			}
			return st.Send(a)
		},
		recv: func() (*v1pb.ServerReflectionResponse, error) {
			a, err := st.Recv()
			if err != nil {
				return nil, err
			}
			return convert[v1pb.ServerReflectionResponse](a)
		},
		cancel: cancel,
	}, nil
}

func (c *conv) ask(req *v1pb.ServerReflectionRequest) (*v1pb.ServerReflectionResponse, error) {
	if err := c.send(req); err != nil {
		// The stream's status says why; Send only says that it ended.
		if errors.Is(err, io.EOF) {
			_, err = c.recv()
		}
		return nil, err
	}
	return c.recv()
}

// convert moves a message between the two reflection versions, whose
// messages are the same on the wire.
func convert[T any, PT interface {
	*T
	proto.Message
}](m proto.Message) (PT, error) {
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	out := PT(new(T))
	if err := proto.Unmarshal(b, out); err != nil {
		return nil, err
	}
	return out, nil
}

// fetcher asks one backend for one route's descriptors.
type fetcher struct {
	c   *conv
	res *backendResult
	// asked are the file names asked for, so that none is asked twice;
	// have the names in res.files.
	asked, have map[string]bool
}

func newFetcher(c *conv, res *backendResult) *fetcher {
	f := &fetcher{c: c, res: res, asked: map[string]bool{}, have: map[string]bool{}}
	for _, fl := range res.files {
		f.have[fl.name] = true
	}
	return f
}

// fetch asks b's reflection service for what route needs: the file of the
// route's service and its imports, or, for a default route, the services
// it lists and their files. own are the services the gateway serves
// itself, which a default route's backend does not add.
func fetch(ctx context.Context, b Backend, key, route string, dflt bool, own map[string]bool) *backendResult {
	res := &backendResult{key: key, addr: b.Addr}
	first := &v1pb.ServerReflectionRequest{MessageRequest: &v1pb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: route}}
	if dflt {
		first = &v1pb.ServerReflectionRequest{MessageRequest: &v1pb.ServerReflectionRequest_ListServices{}}
	}
	c, resp, err := start(ctx, b.Conn, first)
	if err != nil {
		res.err = err
		return res
	}
	defer c.cancel()
	f := newFetcher(c, res)
	var missing []string
	if dflt {
		for _, s := range resp.GetListServicesResponse().GetService() {
			if own[s.GetName()] {
				continue
			}
			if len(res.services) == maxServicesPerBackend {
				res.err = fmt.Errorf("lists more than %d services; the rest are left out", maxServicesPerBackend)
				break
			}
			res.services = append(res.services, s.GetName())
		}
		for _, s := range res.services {
			missing = append(missing, f.symbol(s)...)
		}
	} else {
		missing = f.take(resp, route)
	}
	f.closure(missing)
	return res
}

// start opens a reflection stream to cc and asks first, in v1 and, if the
// backend does not know v1, in v1alpha.
func start(ctx context.Context, cc grpc.ClientConnInterface, first *v1pb.ServerReflectionRequest) (*conv, *v1pb.ServerReflectionResponse, error) {
	var last error
	for _, alpha := range []bool{false, true} {
		c, err := openConv(ctx, cc, alpha)
		if err != nil {
			last = err
		} else if resp, err := c.ask(first); err != nil {
			c.cancel()
			last = err
		} else {
			return c, resp, nil
		}
		if status.Code(last) != codes.Unimplemented {
			return nil, nil, fmt.Errorf("reflection: %w", last)
		}
	}
	return nil, nil, errNoReflection
}

// symbol asks for the file declaring name; it returns the imports to ask
// for next.
func (f *fetcher) symbol(name string) []string {
	if f.full() {
		return nil
	}
	resp, err := f.c.ask(&v1pb.ServerReflectionRequest{MessageRequest: &v1pb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: name}})
	if err != nil {
		f.fail(err)
		return nil
	}
	return f.take(resp, name)
}

// take keeps the files of a FileDescriptorResponse and returns their
// imports not yet asked for.
func (f *fetcher) take(resp *v1pb.ServerReflectionResponse, asked string) []string {
	if e := resp.GetErrorResponse(); e != nil {
		if f.res.err == nil {
			f.res.err = fmt.Errorf("reflection has no descriptor for %s: %s", asked, e.GetErrorMessage())
		}
		return nil
	}
	var next []string
	for _, raw := range resp.GetFileDescriptorResponse().GetFileDescriptorProto() {
		if f.full() {
			return nil
		}
		fl, err := parseFile(raw, f.res.addr)
		if err != nil {
			f.fail(err)
			continue
		}
		f.asked[fl.name] = true
		if f.has(fl.name) {
			continue
		}
		f.res.files = append(f.res.files, fl)
		f.have[fl.name] = true
		f.res.bytes += len(raw)
		next = append(next, fl.fd.GetDependency()...)
	}
	return next
}

// closure asks for the files in missing, and for their imports, until the
// backend's files import nothing that it was not asked for.
func (f *fetcher) closure(missing []string) {
	for len(missing) > 0 && !f.full() {
		name := missing[0]
		missing = missing[1:]
		if f.asked[name] || f.has(name) {
			continue
		}
		f.asked[name] = true
		resp, err := f.c.ask(&v1pb.ServerReflectionRequest{MessageRequest: &v1pb.ServerReflectionRequest_FileByFilename{FileByFilename: name}})
		if err != nil {
			f.fail(err)
			return
		}
		missing = append(missing, f.take(resp, name)...)
	}
}

func (f *fetcher) has(name string) bool { return f.have[name] }

// full reports, once, that the backend reached its bounds.
func (f *fetcher) full() bool {
	if len(f.res.files) < maxFilesPerBackend && f.res.bytes < maxBytesPerBackend {
		return false
	}
	if f.res.err == nil {
		f.res.err = fmt.Errorf("descriptors over the gateway's bound (%d files, %d bytes); the rest are left out", maxFilesPerBackend, maxBytesPerBackend)
	}
	return true
}

func (f *fetcher) fail(err error) {
	if f.res.err == nil {
		f.res.err = fmt.Errorf("reflection: %w", err)
	}
}

// ask sends one request to a backend on a stream of its own and keeps the
// files it answers with in res; for a miss in the cache.
func ask(ctx context.Context, b Backend, req *v1pb.ServerReflectionRequest, res *backendResult) (*v1pb.ServerReflectionResponse, error) {
	c, resp, err := start(ctx, b.Conn, req)
	if err != nil {
		return nil, err
	}
	defer c.cancel()
	if resp.GetFileDescriptorResponse() != nil {
		f := newFetcher(c, res)
		f.closure(f.take(resp, ""))
	}
	return resp, nil
}
