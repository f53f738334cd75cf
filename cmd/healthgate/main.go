// Command healthgate is an L7 gRPC load-balancing gateway: clients call one
// address, and each call goes to a backend that Consul lists as passing and
// that reports SERVING over its own grpc.health.v1 Watch stream.
//
//	healthgate -listen 127.0.0.1:9000 -config configs/healthgate.yaml
//	healthgate -listen 127.0.0.1:9000 -consul 127.0.0.1:8500 -admin 127.0.0.1:9901
//	healthgate probe -addr 127.0.0.1:9000 [-service NAME] [-timeout 1s]
//
// SIGTERM or SIGINT drains and stops; SIGHUP re-reads the config file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/gateway"
	"github.com/healthgate/healthgate/internal/memlimit"
)

func main() {
	if os.Getenv("GOGC") == "" {
		// A gateway's garbage is per-call garbage: at Go's default of 100
		// the collector took about an eighth of the CPU per call (make
		// bench: 66 against 44-51 µs per call at 400). The memory that 400
		// would cost grows with the live set (backends), so a soft limit
		// that follows the live set caps it (see run); $GOGC still decides.
		debug.SetGCPercent(400)
	}
	if len(os.Args) > 1 && os.Args[1] == "probe" {
		os.Exit(probe(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(run(os.Args[1:], os.Stderr))
}

// flags are the command line's overrides of the config file.
type flags struct {
	configPath, listen, admin, consul, logLevel, logFormat string
	adminPublic, pprof, listenPlaintext                    bool
}

// load reads the config file, if any, and applies flags and environment.
func (f flags) load() (*config.Config, error) {
	cfg := &config.Config{}
	if f.configPath != "" {
		var err error
		if cfg, err = config.Load(f.configPath); err != nil {
			return nil, err
		}
	}
	override(&cfg.Listen, f.listen)
	override(&cfg.Admin, f.admin)
	override(&cfg.Log.Level, f.logLevel)
	override(&cfg.Log.Format, f.logFormat)
	cfg.AdminPublic = cfg.AdminPublic || f.adminPublic
	cfg.ListenPlaintext = cfg.ListenPlaintext || f.listenPlaintext
	cfg.Pprof = cfg.Pprof || f.pprof
	if cfg.Consul.Address == "" {
		cfg.Consul.Address = os.Getenv("CONSUL_HTTP_ADDR")
	}
	override(&cfg.Consul.Address, f.consul)
	if cfg.Consul.Token == "" {
		cfg.Consul.Token = os.Getenv("CONSUL_HTTP_TOKEN")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.ApplyDefaults()
	return cfg, nil
}

// run is main without the process: it returns the exit code.
func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthgate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f flags
	fs.StringVar(&f.configPath, "config", "", "YAML config file (optional: without it, routes come from Consul route tags)")
	fs.StringVar(&f.listen, "listen", "", "gRPC listen address (overrides the config's listen; default "+config.DefaultListen+")")
	fs.StringVar(&f.admin, "admin", "", "admin HTTP address (overrides the config's admin; loopback unless -admin-public)")
	fs.BoolVar(&f.adminPublic, "admin-public", false, "allow an admin address that is not loopback")
	fs.BoolVar(&f.listenPlaintext, "listen-plaintext", false, "serve plaintext h2c on a listen address that is not loopback (without listen_tls)")
	fs.BoolVar(&f.pprof, "pprof", false, "serve /debug/pprof/ on the admin address")
	fs.StringVar(&f.consul, "consul", "", "Consul HTTP address (overrides the config and $CONSUL_HTTP_ADDR)")
	fs.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (overrides the config)")
	fs.StringVar(&f.logFormat, "log-format", "", "text or json (overrides the config)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: healthgate [flags]\n       healthgate probe -addr ADDR [-service NAME] [-timeout D]\n\nflags:\n")
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
	cfg, err := f.load()
	if err != nil {
		fmt.Fprintf(stderr, "healthgate: %v\n", err)
		return 1
	}
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
	var adminSrv *http.Server
	adminDone := make(chan error, 1)
	if cfg.Admin != "" {
		alis, err := net.Listen("tcp", cfg.Admin)
		if err != nil {
			lis.Close()
			fmt.Fprintf(stderr, "healthgate: admin listen: %v\n", err)
			return 1
		}
		adminSrv = &http.Server{Handler: g.AdminHandler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { adminDone <- adminSrv.Serve(alis) }()
		logger.Info("admin endpoint serving", "admin", alis.Addr().String())
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if os.Getenv("GOGC") == "" && os.Getenv("GOMEMLIMIT") == "" {
		// Resident memory stays near 1.5x the live set + 20 MiB whatever
		// the number of backends, while a small gateway keeps GOGC 400's
		// CPU gain (README "Memory").
		limCtx, stopLimit := context.WithCancel(ctx)
		limDone := make(chan error, 1)
		go func() { limDone <- memlimit.Run(limCtx, memlimit.Config{}) }()
		defer func() { stopLimit(); <-limDone }()
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				reload(f, g, logger)
			}
		}
	}()

	code := 0
	if err := g.Run(ctx, lis); err != nil {
		logger.Error("healthgate failed", "err", err)
		code = 1
	}
	if adminSrv != nil {
		// The admin endpoint outlives the drain, so that /readyz says
		// "draining" while the gateway drains.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		adminSrv.Shutdown(sctx) //nolint:errcheck // the process is ending
		cancel()
		<-adminDone
	}
	return code
}

// reload re-reads the config on SIGHUP. A config that does not load keeps
// the running one.
func reload(f flags, g *gateway.Gateway, logger *slog.Logger) {
	if f.configPath == "" {
		logger.Warn("SIGHUP ignored: no config file to re-read")
		return
	}
	cfg, err := f.load()
	if err != nil {
		logger.Error("reload rejected, the running config stays", "err", err)
		return
	}
	needRestart, err := g.Reload(*cfg)
	if err != nil {
		logger.Error("reload rejected, the running config stays", "err", err)
		return
	}
	if len(needRestart) > 0 {
		logger.Warn("reload: these fields changed but need a restart to take effect", "fields", strings.Join(needRestart, ", "))
	}
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
