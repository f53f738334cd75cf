package config

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// BackendOptions is what the config file may say of a static backend
// besides its address.
type BackendOptions struct {
	// Tags place the backend in the route's subsets (match, split), as
	// Consul tags place an instance.
	Tags []string `yaml:"tags"`
	// Weight is the backend's share of the route's calls relative to the
	// other backends'. 0 means 1.
	Weight int `yaml:"weight"`
}

func (o BackendOptions) validate() error {
	if o.Weight < 0 {
		return fmt.Errorf("weight: must not be negative, got %d", o.Weight)
	}
	for i, t := range o.Tags {
		if t == "" {
			return fmt.Errorf("tags[%d]: empty", i)
		}
	}
	return nil
}

// staticBackend is an item of a route's backends in the file: "host:port",
// or {address: host:port, tags: [...], weight: n}.
type staticBackend struct {
	Address        string `yaml:"address"`
	BackendOptions `yaml:",inline"`
	// line is where the item is in the file, for errors found later.
	line int
}

// staticBackendFields are the keys of the mapping form. The node form of
// yaml's unmarshaler decodes with a decoder of its own, which does not
// refuse unknown fields as the file's does: the keys are checked here.
var staticBackendFields = []string{"address", "tags", "weight"}

// UnmarshalYAML takes either form.
func (b *staticBackend) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	b.line = n.Line
	switch n.Kind {
	case yaml.ScalarNode:
		return n.Decode(&b.Address)
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k := n.Content[i]; !slices.Contains(staticBackendFields, k.Value) {
				return typeError(k.Line, "field %s not found in a backend (want %s)", k.Value, strings.Join(staticBackendFields, ", "))
			}
		}
		type plain staticBackend
		if err := n.Decode((*plain)(b)); err != nil {
			return err
		}
		if b.Address == "" {
			return typeError(n.Line, "a backend mapping needs address: host:port")
		}
		return nil
	}
	return typeError(n.Line, `a backend is "host:port" or a mapping {address: host:port, tags: [...], weight: n}`)
}

// typeError is an error of the file's content at line, which Parse names
// by its field path.
func typeError(line int, format string, args ...any) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: ", line) + fmt.Sprintf(format, args...)}}
}

// routeFields are Route's fields without its methods, so that decoding
// into them does not come back to Route.UnmarshalYAML; their Backends and
// BackendOptions are not read from the file.
type routeFields Route

// routeFile is a route as the file writes it.
type routeFile struct {
	routeFields `yaml:",inline"`
	Backends    []staticBackend `yaml:"backends"`
}

// UnmarshalYAML reads a route, whose backends may each be an address or a
// mapping with tags and weight: the addresses go to Backends, the rest to
// BackendOptions. It is the callback form of yaml's unmarshaler because
// that one decodes with the file's own decoder, which refuses unknown
// fields.
func (r *Route) UnmarshalYAML(unmarshal func(any) error) error {
	var raw routeFile
	if err := unmarshal(&raw); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			// Name the type the reader knows.
			for i, m := range te.Errors {
				te.Errors[i] = strings.Replace(m, "in type config.routeFile", "in type config.Route", 1)
			}
		}
		return err
	}
	*r = Route(raw.routeFields)
	r.Backends, r.BackendOptions = nil, nil
	for _, b := range raw.Backends {
		o, seen := r.BackendOptions[b.Address]
		if slices.Contains(r.Backends, b.Address) {
			if !seen && b.BackendOptions.isZero() || seen && o.equal(b.BackendOptions) {
				// The same backend twice is one backend, as it always was.
				continue
			}
			return typeError(b.line, "%q is listed twice with different tags or weight", b.Address)
		}
		r.Backends = append(r.Backends, b.Address)
		if len(b.Tags) == 0 {
			// tags: [] says what no tags says.
			b.Tags = nil
		}
		if !b.BackendOptions.isZero() {
			if r.BackendOptions == nil {
				r.BackendOptions = map[string]BackendOptions{}
			}
			r.BackendOptions[b.Address] = b.BackendOptions
		}
	}
	return nil
}

func (o BackendOptions) isZero() bool { return len(o.Tags) == 0 && o.Weight == 0 }

func (o BackendOptions) equal(p BackendOptions) bool {
	return o.Weight == p.Weight && slices.Equal(o.Tags, p.Tags)
}
