package healthcheck

import "github.com/healthgate/healthgate/internal/backoff"

// Backoff is the Watch's retry schedule, for the external tests of B24:
// the jitter of a single delay cannot be told from scheduling noise by
// timing real Watch retries.
var Backoff = backoff.Delay
