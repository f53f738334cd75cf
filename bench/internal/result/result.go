// Package result is the JSON the load generator prints and the runner
// stores, one line per measured run.
package result

// Run is one load generator run against one peer.
type Run struct {
	// Filled by the runner.
	Time     string `json:"time,omitempty"`
	Mode     string `json:"mode,omitempty"`
	Workload string `json:"workload,omitempty"`
	Peer     string `json:"peer,omitempty"`
	Rep      int    `json:"rep,omitempty"`
	// Error is set, and the rest left empty, when the runner could not
	// measure the peer.
	Error string `json:"error,omitempty"`

	// Filled by the load generator.
	Target      string `json:"target"`
	Kind        string `json:"kind"` // unary or stream
	Conns       int    `json:"conns"`
	Concurrency int    `json:"concurrency"`
	// TLS is what the client's connections negotiated (tlsfiles.Describe),
	// empty over plaintext h2c.
	TLS       string  `json:"tls,omitempty"`
	ReqBytes  int     `json:"req_bytes"`
	RespBytes int     `json:"resp_bytes"`
	WarmupSec float64 `json:"warmup_sec"`
	WindowSec float64 `json:"window_sec"`
	// Ops counts RPCs (unary) or echoed messages (stream) that completed
	// inside the window.
	Ops        int64  `json:"ops"`
	Errors     int64  `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
	// Undrained: calls still in flight drainTimeout after the window had
	// to be cancelled; the peer may be stuck.
	Undrained bool    `json:"undrained,omitempty"`
	Rate      float64 `json:"rate"`          // ops per second
	RespMBps  float64 `json:"resp_mb_per_s"` // response payload, 1e6 bytes per second
	MeanUs    float64 `json:"mean_us"`
	P50Us     float64 `json:"p50_us"`
	P99Us     float64 `json:"p99_us"`
	P999Us    float64 `json:"p999_us"`
	MaxUs     float64 `json:"max_us"`
	// CPU is each watched process tree's CPU time in the window, by role
	// (proxy, backend, loadgen).
	CPU map[string]CPU `json:"cpu"`
	// OtherCPUPercent is what every other process on the machine used in
	// the window, in percent of one core; StealPercent is CPU time the
	// hypervisor took from this machine. Either one high means noise.
	OtherCPUPercent float64 `json:"other_cpu_percent"`
	StealPercent    float64 `json:"steal_percent"`
}

// CPU is utime+stime of a process and its descendants over the window.
type CPU struct {
	PID      int     `json:"pid"`
	Seconds  float64 `json:"seconds"`
	UsPerOp  float64 `json:"us_per_op"`
	Percent  float64 `json:"percent"` // of one core
	Included int     `json:"processes"`
}
