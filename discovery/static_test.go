package discovery_test

import (
	"slices"
	"testing"
	"time"

	"github.com/healthgate/healthgate/discovery"
)

// TestStaticEndpointsKeepTagsAndWeights: static backends from the config
// file carry their tags and weights to the routing table, as Consul
// instances do; an unset weight is 1.
func TestStaticEndpointsKeepTagsAndWeights(t *testing.T) {
	w := run(t, discovery.StaticEndpoints{"a.S": {
		{Addr: "127.0.0.1:2", Tags: []string{"v2", "canary"}, Weight: 3},
		{Addr: "127.0.0.1:1"},
	}})
	w.waitAddrs(t, 5*time.Second, "a.S", "127.0.0.1:1", "127.0.0.1:2")
	eps := w.snap().Routes["a.S"]
	if e := eps[0]; e.Weight != 1 || len(e.Tags) != 0 || e.Status != "static" {
		t.Errorf("untagged backend: %+v, want weight 1, no tags, status static", e)
	}
	if e := eps[1]; e.Weight != 3 || !slices.Equal(e.Tags, []string{"v2", "canary"}) || e.Status != "static" {
		t.Errorf("tagged backend: %+v, want weight 3, tags [v2 canary], status static", e)
	}
}
