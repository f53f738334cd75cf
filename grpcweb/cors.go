package grpcweb

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// cors decides which pages may call the gateway from another origin.
// gRPC-Web's content types are not ones a browser sends across origins
// without asking first, so a page of an origin that is not allowed never
// gets its call sent: its preflight is refused.
type cors struct {
	any     bool
	origins []string
}

func newCORS(allowed []string) cors {
	return cors{any: slices.Contains(allowed, "*"), origins: slices.Clone(allowed)}
}

// The request headers a gRPC-Web client sends beside the call's own
// metadata; a preflight that asks for none is told these.
const defaultAllowHeaders = "content-type, x-grpc-web, x-user-agent, grpc-timeout, authorization"

// The response headers a page must be able to read: the status, when it
// comes as headers, and its details.
const exposeStatusHeaders = "grpc-status, grpc-message, grpc-status-details-bin"

// crossOrigin reports whether r comes from a page of another origin than
// the one it calls, and whether that origin is allowed. A request without
// Origin is not a browser's cross-origin request.
func (c cors) crossOrigin(r *http.Request) (cross, allowed bool) {
	origin := r.Header.Get("Origin")
	if origin == "" || sameOrigin(origin, r.Host) {
		return false, true
	}
	return true, c.any || slices.Contains(c.origins, origin)
}

func sameOrigin(origin, host string) bool {
	u, err := url.Parse(origin)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, host)
}

// preflight answers a CORS preflight (OPTIONS): 204 with the permission
// when the origin is allowed, 403 without one when it is not.
func (c cors) preflight(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Add("Vary", "Origin")
	h.Add("Vary", "Access-Control-Request-Method")
	h.Add("Vary", "Access-Control-Request-Headers")
	cross, allowed := c.crossOrigin(r)
	if cross && !allowed {
		http.Error(w, "grpc-web: origin not allowed (grpc_web.allowed_origins)", http.StatusForbidden)
		return
	}
	if m := r.Header.Get("Access-Control-Request-Method"); m != "" && m != http.MethodPost {
		http.Error(w, "grpc-web: only POST is allowed", http.StatusForbidden)
		return
	}
	if o := r.Header.Get("Origin"); o != "" {
		h.Set("Access-Control-Allow-Origin", o)
	}
	h.Set("Access-Control-Allow-Methods", http.MethodPost)
	// The call's own metadata are headers of the page's choosing: the
	// origin is what is checked, and whatever headers it asks for are
	// allowed, as long as they are header names.
	allow := defaultAllowHeaders
	if req := r.Header.Get("Access-Control-Request-Headers"); req != "" && tokenList(req) {
		allow = req
	}
	h.Set("Access-Control-Allow-Headers", allow)
	h.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
}

// allowResponse adds to an allowed cross-origin call's response what lets
// its page read it: the origin, and every header the page may need.
func (c cors) allowResponse(h http.Header, origin string, names []string) {
	h.Set("Access-Control-Allow-Origin", origin)
	h.Add("Vary", "Origin")
	expose := exposeStatusHeaders
	if len(names) > 0 {
		expose += ", " + strings.Join(names, ", ")
	}
	h.Set("Access-Control-Expose-Headers", expose)
}

// tokenList reports whether s is a comma-separated list of header names.
func tokenList(s string) bool {
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			return false
		}
		for i := 0; i < len(f); i++ {
			c := f[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
				return false
			}
		}
	}
	return true
}
