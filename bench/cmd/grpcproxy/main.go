// Command grpcproxy is the smallest transparent gRPC proxy that
// github.com/mwitkow/grpc-proxy makes: every call, whatever its method, goes
// to one backend over one connection. It is the bench's baseline for what a
// Go proxy on grpc-go's public API costs.
//
//	grpcproxy -listen 127.0.0.1:21002 -backend 127.0.0.1:21001
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
	"google.golang.org/grpc/credentials/insecure"
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
	flag.Parse()

	cc, err := grpc.NewClient("passthrough:///"+*backend, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("backend %s: %w", *backend, err)
	}
	defer cc.Close()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := grpc.NewServer(grpc.UnknownServiceHandler(proxy.TransparentHandler(proxy.DefaultDirector(cc))))

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
