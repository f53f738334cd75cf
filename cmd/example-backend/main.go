// Command example-backend runs one backend of the healthgate example: the
// login service from the gRPC health checking article. A wrong password flips
// it to NOT_SERVING; GET or POST /update on the HTTP address flips it back.
// With -consul it registers itself so the gateway can discover it.
//
// With -tls-cert and -tls-key it serves gRPC over TLS, and with
// -tls-client-ca it requires a client certificate that CA signed (mTLS).
// It then registers the meta healthgate_tls=true, so that healthgate dials
// it with TLS, and a Consul gRPC check over TLS: Consul's agent presents a
// client certificate only with enable_agent_tls_for_checks and its own
// tls.internal_rpc certificate (see authserver.TLS).
//
// Two backends for the demo:
//
//	example-backend -grpc 127.0.0.1:8080 -http 127.0.0.1:8082
//	example-backend -grpc 127.0.0.1:8081 -http 127.0.0.1:8083
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/healthgate/healthgate/example/authserver"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "example-backend: %v\n", err)
		os.Exit(1)
	}
}

// run is separate from main so that every deferred cleanup runs before the
// exit code is chosen.
func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("example-backend", flag.ContinueOnError)
	fs.SetOutput(stderr)
	grpcAddr := fs.String("grpc", "127.0.0.1:8080", "gRPC listen `address` (also what Consul advertises)")
	httpAddr := fs.String("http", "127.0.0.1:8082", "HTTP `address` for /update and /status; empty disables it")
	consulAddr := fs.String("consul", os.Getenv("CONSUL_HTTP_ADDR"), "Consul agent HTTP `address` to register with, from $CONSUL_HTTP_ADDR if set; empty skips registration")
	token := fs.String("token", os.Getenv("CONSUL_HTTP_TOKEN"), "Consul ACL `token`, from $CONSUL_HTTP_TOKEN if set")
	name := fs.String("name", authserver.DefaultServiceName, "Consul service `name`")
	id := fs.String("id", "", "Consul service `id` (default name-host-port)")
	tlsCert := fs.String("tls-cert", "", "TLS certificate `file` (PEM) for the gRPC listener; with -tls-key turns TLS on")
	tlsKey := fs.String("tls-key", "", "TLS key `file` (PEM) for -tls-cert")
	tlsClientCA := fs.String("tls-client-ca", "", "CA `file` (PEM) that client certificates must be signed by: mTLS, a client without one is refused")
	tlsServerName := fs.String("tls-server-name", "", "`name` clients verify the certificate for, when not the -grpc host (registered as healthgate_tls_server_name)")
	connectNative := fs.Bool("connect", false, "be a Consul Connect-native service: TLS with a Connect certificate from the agent, calls allowed by intentions (needs -consul)")
	drain := fs.Duration("drain", 500*time.Millisecond, "on stop, how long to keep serving after deregistering and reporting NOT_SERVING")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}

	var serverTLS *authserver.TLS
	if *tlsCert != "" || *tlsKey != "" || *tlsClientCA != "" || *tlsServerName != "" {
		serverTLS = &authserver.TLS{CertFile: *tlsCert, KeyFile: *tlsKey, ClientCAFile: *tlsClientCA, ServerName: *tlsServerName}
	}

	logger := slog.New(slog.NewTextHandler(stderr, nil))
	srv, err := authserver.New(authserver.Config{
		GRPCAddr:    *grpcAddr,
		HTTPAddr:    *httpAddr,
		ConsulAddr:  *consulAddr,
		ConsulToken: *token,
		ServiceName: *name,
		ServiceID:   *id,
		DrainDelay:  *drain,
		TLS:         serverTLS,
		Logger:      logger,

		ConnectNative: *connectNative,
	})
	if err != nil {
		return fmt.Errorf("start backend: %w", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Restore default signal handling once stopping begins, so a second
	// Ctrl-C kills a backend stuck in its shutdown bound.
	go func() {
		<-ctx.Done()
		stop()
	}()
	if err := srv.Run(ctx); err != nil {
		return fmt.Errorf("run backend on %s: %w", srv.GRPCAddr(), err)
	}
	return nil
}
