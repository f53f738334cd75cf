// Package certfile serves a TLS certificate from files that may be
// replaced while the process runs (a renewal by cert-manager, certbot or
// Vault): new handshakes use the new pair within a second, connections
// already open keep theirs, and a pair that does not load leaves the last
// good one in use.
package certfile

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Reloader holds a certificate and key loaded from files. It has no
// goroutine: a handshake checks the files' modification times at most once
// per Every, and loads them again when they changed.
type Reloader struct {
	certFile, keyFile string
	every             time.Duration
	log               *slog.Logger

	mu sync.Mutex // guards the fields below
	// cert is the pair in use.
	cert *tls.Certificate
	// checked is when the files were last looked at; certMod and keyMod
	// their modification times then.
	checked         time.Time
	certMod, keyMod time.Time
}

// New loads the pair once; it fails if the files do not hold one.
func New(certFile, keyFile string, every time.Duration, logger *slog.Logger) (*Reloader, error) {
	if every <= 0 {
		every = time.Second
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Reloader{certFile: certFile, keyFile: keyFile, every: every, log: logger.With("component", "tls")}
	cm, km, err := r.mtimes()
	if err != nil {
		return nil, err
	}
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("certfile: %s and %s: %w", certFile, keyFile, err)
	}
	r.cert, r.certMod, r.keyMod, r.checked = &c, cm, km, time.Now()
	return r, nil
}

func (r *Reloader) mtimes() (time.Time, time.Time, error) {
	ci, err := os.Stat(r.certFile)
	if err != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("certfile: %w", err)
	}
	ki, err := os.Stat(r.keyFile)
	if err != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("certfile: %w", err)
	}
	return ci.ModTime(), ki.ModTime(), nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.checked) >= r.every {
		r.checked = now
		r.reloadLocked()
	}
	return r.cert, nil
}

// reloadLocked loads the pair again if either file changed. A pair caught
// half-written (the certificate replaced, the key not yet) does not load:
// the old one stays, and the next look tries again.
func (r *Reloader) reloadLocked() {
	cm, km, err := r.mtimes()
	if err != nil {
		r.log.Error("cannot read the certificate files; the loaded certificate stays", "err", err)
		return
	}
	if cm.Equal(r.certMod) && km.Equal(r.keyMod) {
		return
	}
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		r.log.Warn("the certificate files changed but do not load; the previous certificate stays", "err", err)
		return
	}
	r.cert, r.certMod, r.keyMod = &c, cm, km
	r.log.Info("certificate reloaded from disk", "cert_file", r.certFile)
}
