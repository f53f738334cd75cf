// Command healthgate is an L7 gRPC load-balancing gateway: clients call one
// address, and each call goes to a backend that Consul lists as passing and
// that reports SERVING over its own grpc.health.v1 Watch stream.
//
//	healthgate -listen 127.0.0.1:9000 -config configs/healthgate.yaml
//	healthgate -listen 127.0.0.1:9000 -consul 127.0.0.1:8500
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/gateway"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run is main without the process: it returns the exit code.
func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthgate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		configPath = fs.String("config", "", "YAML config file (optional: without it, routes come from Consul route tags)")
		listen     = fs.String("listen", "", "gRPC listen address (overrides the config's listen; default "+config.DefaultListen+")")
		admin      = fs.String("admin", "", "admin HTTP address (overrides the config's admin)")
		consul     = fs.String("consul", "", "Consul HTTP address (overrides the config and $CONSUL_HTTP_ADDR)")
		logLevel   = fs.String("log-level", "", "debug, info, warn or error (overrides the config)")
		logFormat  = fs.String("log-format", "", "text or json (overrides the config)")
	)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: healthgate [flags]\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "healthgate: unexpected argument %q\n", fs.Arg(0))
		return 2
	}

	cfg := &config.Config{}
	if *configPath != "" {
		var err error
		if cfg, err = config.Load(*configPath); err != nil {
			fmt.Fprintf(stderr, "healthgate: %v\n", err)
			return 1
		}
	}
	override(&cfg.Listen, *listen)
	override(&cfg.Admin, *admin)
	override(&cfg.Log.Level, *logLevel)
	override(&cfg.Log.Format, *logFormat)
	if cfg.Consul.Address == "" {
		cfg.Consul.Address = os.Getenv("CONSUL_HTTP_ADDR")
	}
	override(&cfg.Consul.Address, *consul)
	if cfg.Consul.Token == "" {
		cfg.Consul.Token = os.Getenv("CONSUL_HTTP_TOKEN")
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "healthgate: %v\n", err)
		return 1
	}
	cfg.ApplyDefaults()
	logger := newLogger(cfg.Log, stderr)

	g, err := gateway.New(*cfg, logger)
	if err != nil {
		fmt.Fprintf(stderr, "healthgate: %v\n", err)
		return 1
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		fmt.Fprintf(stderr, "healthgate: listen: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := g.Run(ctx, lis); err != nil {
		logger.Error("healthgate failed", "err", err)
		return 1
	}
	return 0
}

func override(dst *string, v string) {
	if v != "" {
		*dst = v
	}
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	switch strings.ToLower(c.Level) {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
