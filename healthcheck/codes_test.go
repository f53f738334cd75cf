package healthcheck_test

import (
	"strconv"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/healthgate/healthgate/healthcheck"
)

// TestOutlierCodeNamesAreGRPCs: outlier_detection.codes is read without
// grpc-go (so that the config schema does not import it), by a table of its
// own; every name grpc-go reads must mean the same code there, and OK and
// unknown names are refused by both.
func TestOutlierCodeNamesAreGRPCs(t *testing.T) {
	names := []string{
		"CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
		"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
		"FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
		"INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
	}
	seen := map[codes.Code]bool{}
	for _, name := range names {
		var want codes.Code
		if err := want.UnmarshalJSON([]byte(strconv.Quote(name))); err != nil {
			t.Fatalf("grpc-go does not read %q: %v", name, err)
		}
		seen[want] = true
		got, err := healthcheck.OutlierConfig{Codes: []string{name}}.CodeNumbers()
		if err != nil || len(got) != 1 || codes.Code(got[0]) != want {
			t.Errorf("CodeNumbers(%q) = %v, %v; want %v", name, got, err, want)
		}
	}
	for c := codes.Code(1); c <= codes.Unauthenticated; c++ {
		if !seen[c] {
			t.Errorf("code %v has no name in the table", c)
		}
	}
	for _, bad := range []string{"OK", "ok", "CANCELED", "14", "Unavailable ", ""} {
		if _, err := (healthcheck.OutlierConfig{Codes: []string{bad}}).CodeNumbers(); err == nil {
			t.Errorf("CodeNumbers(%q) accepted it", bad)
		}
	}
	if got, err := (healthcheck.OutlierConfig{Codes: []string{"unavailable"}}).CodeNumbers(); err != nil || codes.Code(got[0]) != codes.Unavailable {
		t.Errorf("names are read in any case: got %v, %v", got, err)
	}
}
