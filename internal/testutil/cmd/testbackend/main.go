// Command testbackend is a gRPC backend for tests that need a real process:
// one to kill -9, stop with SIGSTOP, and start again on the same port.
//
// Any service's Echo method sends back each message it receives, as raw
// bytes, with the header x-backend set to the address the backend listens
// on, so that a test knows which backend answered. grpc.health.v1 reports
// SERVING for "" and test.Svc. The backend prints "ready <addr>" on stdout
// once it listens, and on SIGTERM or SIGINT reports NOT_SERVING and stops
// gracefully, cancelling the calls still running after -grace.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "testbackend: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("testbackend", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "address to listen on")
	grace := fs.Duration("grace", 5*time.Second, "how long a graceful stop waits for the calls in flight")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// Before listening: a signal that arrives once "ready" is out must not
	// kill the process before it can stop gracefully.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, os.Interrupt)

	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	self := lis.Addr().String()
	srv := grpc.NewServer(
		grpc.ForceServerCodecV2(rawCodec{}),
		grpc.UnknownServiceHandler(echo(self)),
	)
	hs := health.NewServer()
	hs.SetServingStatus("test.Svc", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	fmt.Printf("ready %s\n", self)

	select {
	case err := <-served:
		return err
	case <-sigs:
	}
	// Watch streams see NOT_SERVING before the GOAWAY, as from a backend
	// that drains.
	hs.Shutdown()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	t := time.NewTimer(*grace)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		srv.Stop()
		<-stopped
	}
	return <-served
}

// echo serves every method named Echo, unary or streaming.
func echo(self string) grpc.StreamHandler {
	return func(_ any, ss grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(ss)
		if !strings.HasSuffix(method, "/Echo") {
			return status.Errorf(codes.Unimplemented, "testbackend: no method %s", method)
		}
		if err := ss.SetHeader(metadata.Pairs("x-backend", self)); err != nil {
			return err
		}
		for {
			var m []byte
			err := ss.RecvMsg(&m)
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if err := ss.SendMsg(&m); err != nil {
				return err
			}
		}
	}
}

// rawCodec moves []byte messages as they are and the health service's
// messages as protobuf, like testutil.RawCodec; it is repeated here so that
// the program does not link the test helpers.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(*[]byte); ok {
		return mem.BufferSlice{mem.SliceBuffer(*m)}, nil
	}
	return encoding.GetCodecV2(proto.Name).Marshal(v)
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if m, ok := v.(*[]byte); ok {
		*m = data.Materialize()
		return nil
	}
	return encoding.GetCodecV2(proto.Name).Unmarshal(data, v)
}

func (rawCodec) Name() string { return proto.Name }
