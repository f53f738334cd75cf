package scale

// This file is the harness's only contact with package healthcheck, whose
// API is being reworked: it uses healthcheck.New, Config.DialOptions,
// Checker.Run, State.Routes, Route.Backends and Backend's Addr and
// Routable, and nothing else. Adapting the harness to a new API means
// rewriting this file alone.

import (
	"context"
	"log/slog"

	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/healthcheck"
)

// runChecker runs healthgate's health checker over one static route that
// lists addrs, calling publish with each table it publishes, until ctx
// ends. publish is called from runChecker's goroutine and must not block.
func runChecker(ctx context.Context, route string, addrs []string, logger *slog.Logger, publish func(table)) error {
	c, err := healthcheck.New(healthcheck.Config{DialOptions: dialOptions()}, logger)
	if err != nil {
		return err
	}
	return c.Run(ctx, discovery.Static{route: addrs}, func(st *healthcheck.State) { publish(table{st}) })
}

// table is one published routing table.
type table struct{ st *healthcheck.State }

// routable reports whether addr is listed for route and may take calls.
func (t table) routable(route, addr string) bool {
	r, ok := t.st.Routes[route]
	if !ok {
		return false
	}
	for _, b := range r.Backends {
		if b.Addr == addr {
			return b.Routable
		}
	}
	return false
}

// routableCount counts route's backends that may take calls.
func (t table) routableCount(route string) int {
	r, ok := t.st.Routes[route]
	if !ok {
		return 0
	}
	n := 0
	for _, b := range r.Backends {
		if b.Routable {
			n++
		}
	}
	return n
}
