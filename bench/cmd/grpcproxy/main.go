// Command grpcproxy is the smallest transparent gRPC proxy that
// github.com/mwitkow/grpc-proxy makes: every call, whatever its method, goes
// to one backend over one connection. It is the bench's baseline for what a
// Go proxy on grpc-go's public API costs.
//
//	grpcproxy -listen 127.0.0.1:21002 -backend 127.0.0.1:21001 [-tls-cert server.pem -tls-key server.key]
//
// With -tls-cert and -tls-key it terminates TLS 1.3 from clients and still
// calls the backend over plaintext h2c.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mwitkow/grpc-proxy/proxy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/healthgate/healthgate/bench/internal/tlsfiles"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "grpcproxy: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:21002", "address to serve on")
	backend := flag.String("backend", "127.0.0.1:21001", "backend address")
	tlsCert := flag.String("tls-cert", "", "PEM certificate: serve clients over TLS 1.3 (with -tls-key)")
	tlsKey := flag.String("tls-key", "", "PEM key for -tls-cert")
	flag.Parse()

	cc, err := grpc.NewClient("passthrough:///"+*backend, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("backend %s: %w", *backend, err)
	}
	defer cc.Close()
	opts := []grpc.ServerOption{grpc.UnknownServiceHandler(proxy.TransparentHandler(proxy.DefaultDirector(cc)))}
	if *tlsCert != "" || *tlsKey != "" {
		cfg, err := tlsfiles.ServerConfig(*tlsCert, *tlsKey)
		if err != nil {
			return fmt.Errorf("-tls-cert, -tls-key: %w", err)
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg)))
	}

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := grpc.NewServer(opts...)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		t := time.AfterFunc(2*time.Second, srv.Stop)
		defer t.Stop()
		srv.GracefulStop()
	}()
	if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}
