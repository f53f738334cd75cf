package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// Exit codes of probe, as grpc-health-probe has them, so that existing
// probe configurations read the same.
const (
	probeServing    = 0
	probeBadArgs    = 1
	probeConnFailed = 2
	probeRPCFailed  = 3
	probeUnhealthy  = 4
)

// probe asks a grpc.health.v1 server (healthgate or any other) for a
// service's status and exits 0 only when it is SERVING: a Docker
// HEALTHCHECK or Kubernetes exec probe.
func probe(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthgate probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:9000", "address of the gRPC health service")
	service := fs.String("service", "", `service to check; "" is the server as a whole`)
	timeout := fs.Duration("timeout", time.Second, "how long the whole probe may take")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return probeServing
		}
		return probeBadArgs
	}
	if fs.NArg() > 0 || *timeout <= 0 {
		fmt.Fprintln(stderr, "healthgate probe: usage: healthgate probe -addr ADDR [-service NAME] [-timeout D]")
		return probeBadArgs
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	cc, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(stderr, "healthgate probe: %v\n", err)
		return probeConnFailed
	}
	defer cc.Close()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: *service}, grpc.WaitForReady(true))
	if err != nil {
		st := status.Convert(err)
		if ctx.Err() != nil {
			fmt.Fprintf(stderr, "healthgate probe: %s: no answer within %s: %s\n", *addr, *timeout, st.Message())
			return probeConnFailed
		}
		fmt.Fprintf(stderr, "healthgate probe: %s: %s: %s\n", *addr, st.Code(), st.Message())
		return probeRPCFailed
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		fmt.Fprintf(stderr, "healthgate probe: %s service %q is %s\n", *addr, *service, resp.GetStatus())
		return probeUnhealthy
	}
	fmt.Fprintf(stdout, "%s service %q is SERVING\n", *addr, *service)
	return probeServing
}
