package gateway

import (
	"sync/atomic"

	"github.com/healthgate/healthgate/admin"
	"github.com/healthgate/healthgate/discovery"
	"github.com/healthgate/healthgate/healthcheck"
	"github.com/healthgate/healthgate/reflectsvc"
)

// reflectionTable is the routing table as the reflection service reads it:
// each route with the backends that take its calls.
type reflectionTable struct {
	state *atomic.Pointer[healthcheck.State]
}

func (t reflectionTable) Routes() []reflectsvc.Route {
	st := t.state.Load()
	if st == nil {
		return nil
	}
	out := make([]reflectsvc.Route, 0, len(st.Routes))
	for name, r := range st.Routes {
		if r.Gone {
			// Kept only so that its calls fail UNAVAILABLE for the drain
			// grace: no longer a service to offer.
			continue
		}
		if name == discovery.DefaultRoute {
			name = reflectsvc.DefaultRoute
		}
		rr := reflectsvc.Route{Name: name}
		for _, b := range r.Backends {
			if b.Routable && b.Handle != nil {
				rr.Backends = append(rr.Backends, reflectsvc.Backend{Addr: b.Addr, Since: b.Since, Conn: b.Handle})
			}
		}
		out = append(out, rr)
	}
	return out
}

// Reflection is, per route whose descriptors the gateway's reflection
// fetched, what it holds; nil when reflection is disabled.
func (g *Gateway) Reflection() map[string]admin.ReflectionView {
	if g.reflection == nil {
		return nil
	}
	st := g.reflection.Status()
	out := make(map[string]admin.ReflectionView, len(st))
	for name, s := range st {
		if name == reflectsvc.DefaultRoute {
			name = discovery.DefaultRoute
		}
		out[name] = admin.ReflectionView{Files: s.Files, Conflicts: s.Conflicts, WithoutReflection: s.WithoutReflection, Errors: s.Errors}
	}
	return out
}
