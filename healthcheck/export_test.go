package healthcheck

// Backoff is backoff, for the external tests of B24: the jitter of a single
// delay cannot be told from scheduling noise by timing real Watch retries.
var Backoff = backoff
