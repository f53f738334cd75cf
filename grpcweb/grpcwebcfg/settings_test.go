package grpcwebcfg

import (
	"strings"
	"testing"
)

func TestValidateNamesTheOrigin(t *testing.T) {
	ok := Settings{Enabled: true, AllowedOrigins: []string{"*", "https://app.example.com", "http://localhost:8080"}}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid origins: %v", err)
	}
	for _, bad := range []string{"app.example.com", "https://app.example.com/", "https://app.example.com/x", "ftp://a", "https://", "HTTPS://A.example", "https://u@a.example"} {
		err := Settings{AllowedOrigins: []string{"*", bad}}.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), "allowed_origins[1]: ") {
			t.Errorf("%q: got %v, want an error naming allowed_origins[1]", bad, err)
		}
	}
}
