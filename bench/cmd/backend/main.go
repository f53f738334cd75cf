// Command backend is the bench backend: /bench.Echo/Unary answers each call
// with its own request (or a fixed-size reply), /bench.Echo/Stream echoes
// every message of a bidi stream, and grpc.health.v1 reports SERVING, so a
// health-checking gateway routes to it.
//
//	backend -listen 127.0.0.1:21001 [-resp-size 1048576]
//	    [-tls-listen 127.0.0.1:21003 -tls-cert server.pem -tls-key server.key]
//
// With -tls-listen it also serves the same over TLS 1.3 there: the TLS
// workload's direct peer, while the proxies in front of it keep calling the
// plaintext listener.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/healthgate/healthgate/bench/internal/rawcodec"
	"github.com/healthgate/healthgate/bench/internal/tlsfiles"
)

const service = "bench.Echo"

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "backend: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:21001", "address to serve on")
	respSize := flag.Int("resp-size", -1, "bytes in each Unary reply; -1 echoes the request")
	tlsListen := flag.String("tls-listen", "", "also serve over TLS 1.3 on this address (needs -tls-cert and -tls-key)")
	tlsCert := flag.String("tls-cert", "", "PEM certificate for -tls-listen")
	tlsKey := flag.String("tls-key", "", "PEM key for -tls-listen")
	flag.Parse()

	var reply []byte
	if *respSize >= 0 {
		var err error
		if reply, err = rawcodec.Payload(*respSize); err != nil {
			return fmt.Errorf("-resp-size: %w", err)
		}
	}
	servers := map[string]*grpc.Server{*listen: newServer(reply)}
	if *tlsListen != "" {
		cfg, err := tlsfiles.ServerConfig(*tlsCert, *tlsKey)
		if err != nil {
			return fmt.Errorf("-tls-cert, -tls-key: %w", err)
		}
		servers[*tlsListen] = newServer(reply, grpc.Creds(credentials.NewTLS(cfg)))
	}
	listeners := map[string]net.Listener{}
	for addr := range servers {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listen: %w", err)
		}
		listeners[addr] = lis
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	errs := make(chan error, len(servers))
	var wg sync.WaitGroup
	for addr, srv := range servers {
		wg.Go(func() {
			if err := srv.Serve(listeners[addr]); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				errs <- fmt.Errorf("serve %s: %w", addr, err)
				stop()
			}
		})
	}
	<-ctx.Done()
	for _, srv := range servers {
		wg.Go(func() { gracefulStop(srv) })
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// newServer serves the echo methods and health with the raw codec. The
// forced codec carries the health service's protobuf too (see
// rawcodec.Codec), so no second server is needed for health.
func newServer(reply []byte, opts ...grpc.ServerOption) *grpc.Server {
	srv := grpc.NewServer(append(opts, grpc.ForceServerCodecV2(rawcodec.Codec{}))...)
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: service,
		HandlerType: (*any)(nil),
		Methods:     []grpc.MethodDesc{{MethodName: "Unary", Handler: unaryHandler(reply)}},
		Streams: []grpc.StreamDesc{{
			StreamName:    "Stream",
			Handler:       streamHandler,
			ServerStreams: true,
			ClientStreams: true,
		}},
	}, struct{}{})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(service, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	return srv
}

// gracefulStop lets calls finish, but not for long: streams of a killed
// load generator can linger.
func gracefulStop(srv *grpc.Server) {
	t := time.AfterFunc(2*time.Second, srv.Stop)
	defer t.Stop()
	srv.GracefulStop()
}

func unaryHandler(reply []byte) func(any, context.Context, func(any) error, grpc.UnaryServerInterceptor) (any, error) {
	if reply != nil {
		return func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var n rawcodec.Size
			if err := dec(&n); err != nil {
				return nil, err
			}
			return &reply, nil
		}
	}
	return func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		f := &rawcodec.Frame{}
		if err := dec(f); err != nil {
			return nil, err
		}
		return f, nil
	}
}

func streamHandler(_ any, ss grpc.ServerStream) error {
	for {
		var f rawcodec.Frame
		if err := ss.RecvMsg(&f); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := ss.SendMsg(&f); err != nil {
			f.Data.Free()
			return err
		}
	}
}
