package gateway_test

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/healthgate/healthgate/config"
	"github.com/healthgate/healthgate/gateway"
	"github.com/healthgate/healthgate/internal/testutil"
)

// leaf is one field of config.Config, by its YAML path, with its index path.
type leaf struct {
	path  string
	index []int
}

// leaves lists every field of t that holds a value (structs are walked;
// slices, maps and pointers are values of their own).
func leaves(t reflect.Type, prefix string, index []int) []leaf {
	var out []leaf
	for i := range t.NumField() {
		f := t.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		path := key
		if prefix != "" {
			path = prefix + "." + key
		}
		idx := append(slices.Clone(index), i)
		if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Duration(0)) {
			out = append(out, leaves(f.Type, path, idx)...)
			continue
		}
		out = append(out, leaf{path, idx})
	}
	return out
}

// change sets v to another value of its type.
func change(t *testing.T, v reflect.Value, backend string) {
	switch v.Kind() {
	case reflect.Bool:
		v.SetBool(!v.Bool())
	case reflect.Int, reflect.Int64:
		if v.Type() == reflect.TypeOf(time.Duration(0)) {
			v.SetInt(v.Int() + int64(time.Second))
		} else {
			v.SetInt(v.Int() + 1)
		}
	case reflect.Uint, reflect.Uint32, reflect.Uint64:
		v.SetUint(v.Uint() + 1)
	case reflect.String:
		v.SetString(v.String() + "1")
	case reflect.Slice:
		switch v.Type().Elem().Kind() {
		case reflect.String:
			v.Set(reflect.Append(v, reflect.ValueOf("x")))
		default:
			v.Set(reflect.Append(v, reflect.ValueOf(config.Route{Service: "more.Svc", Backends: []string{backend}})))
		}
	case reflect.Pointer:
		n := reflect.New(v.Type().Elem())
		if !v.IsNil() {
			n.Elem().Set(v.Elem())
		}
		change(t, n.Elem(), backend)
		v.Set(n)
	case reflect.Float64:
		v.SetFloat(v.Float()/2 + 0.25)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		for it := v.MapRange(); it.Next(); {
			m.SetMapIndex(it.Key(), it.Value())
		}
		k := reflect.New(v.Type().Key()).Elem()
		change(t, k, backend)
		e := reflect.New(v.Type().Elem()).Elem()
		change(t, e, backend)
		m.SetMapIndex(k, e)
		v.Set(m)
	default:
		t.Fatalf("no way to change a %s", v.Type())
	}
}

// TestReloadEveryFieldAppliedOrRestartOnly: every field of the config file
// is either applied by a reload (its section is in gateway.Reloadable) or
// reported as needing a restart and left running as it was; a change that
// does not validate is rejected whole.
func TestReloadEveryFieldAppliedOrRestartOnly(t *testing.T) {
	be := testutil.StartBackend(t)
	base := config.Config{
		Listen: "127.0.0.1:0",
		Routes: []config.Route{{Service: testutil.TestService, Backends: []string{be.Addr}}},
	}
	h := startGateway(t, base)
	h.routable(t, testutil.TestService, 1)
	all := leaves(reflect.TypeOf(config.Config{}), "", nil)
	if len(all) < 40 {
		t.Fatalf("found %d config fields, fewer than the config has: the walk is broken", len(all))
	}
	applied, restart, rejected := 0, 0, 0
	for _, l := range all {
		t.Run(l.path, func(t *testing.T) {
			running := h.g.Config()
			next := running
			// Routes is a slice shared with running: give next its own.
			next.Routes = slices.Clone(running.Routes)
			change(t, reflect.ValueOf(&next).Elem().FieldByIndex(l.index), be.Addr)
			section, _, _ := strings.Cut(l.path, ".")
			needRestart, err := h.g.Reload(next)
			got := reflect.ValueOf(h.g.Config()).FieldByIndex(l.index).Interface()
			switch {
			case err != nil:
				rejected++
				if !reflect.DeepEqual(h.g.Config(), running) {
					t.Fatalf("rejected reload (%v) changed the running config", err)
				}
			case slices.Contains(gateway.Reloadable(), section):
				applied++
				if slices.Contains(needRestart, section) {
					t.Fatalf("reloadable section %q reported as needing a restart", section)
				}
				if want := reflect.ValueOf(next).FieldByIndex(l.index).Interface(); !reflect.DeepEqual(got, want) {
					t.Fatalf("after reload %s = %v, want %v applied", l.path, got, want)
				}
			default:
				restart++
				if !slices.Contains(needRestart, section) {
					t.Fatalf("changed %s: needs restart %v, want %q named", l.path, needRestart, section)
				}
				if want := reflect.ValueOf(running).FieldByIndex(l.index).Interface(); !reflect.DeepEqual(got, want) {
					t.Fatalf("restart-only %s = %v after reload, want the running %v", l.path, got, want)
				}
			}
			// Back to what runs, for the next field.
			if _, err := h.g.Reload(running); err != nil {
				t.Fatalf("reload back: %v", err)
			}
		})
	}
	t.Logf("%d config fields: %d applied live, %d need a restart, %d changes rejected by validation", len(all), applied, restart, rejected)
	if applied == 0 || restart == 0 {
		t.Fatalf("applied %d, restart %d: both kinds must occur", applied, restart)
	}
}
