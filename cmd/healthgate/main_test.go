package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	cleanup, err := mkBinDir()
	if err != nil {
		panic(err)
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(cleanup))
}

func TestBadConfigExitsNonZeroNamingTheField(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, yaml string
		args       []string
		want       string
	}{
		{"bad policy", "routes:\n- service: a.B\n  backends: ['127.0.0.1:1']\n  policy: random\n", nil, "routes[0].policy"},
		{"bad duration", "shutdown:\n  grace: later\n", nil, "shutdown.grace"},
		{"unknown field", "listen: 127.0.0.1:0\nroute: []\n", nil, "field route not found"},
		{"bad listen flag", "routes:\n- service: a.B\n  backends: ['127.0.0.1:1']\n", []string{"-listen", "nohost"}, "listen:"},
		{"nothing to route", "listen: 127.0.0.1:0\n", nil, "nothing to route"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			code := run(append([]string{"-config", path}, tc.args...), &stderr)
			if code == 0 || !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("case %d: exit %d, stderr %q; want non-zero and %q", i, code, stderr.String(), tc.want)
			}
		})
	}
}

func TestMissingConfigFile(t *testing.T) {
	var stderr bytes.Buffer
	if code := run([]string{"-config", filepath.Join(t.TempDir(), "nope.yaml")}, &stderr); code != 1 || !strings.Contains(stderr.String(), "no such file") {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
}
