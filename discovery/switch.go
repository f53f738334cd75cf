package discovery

import (
	"context"
	"sync"
)

// Switch is a Source whose inner source can be replaced while it runs, for
// a configuration reload. The last snapshot stays in force across the
// switch: the new source's snapshots are held back until it has synced, so
// that backends do not drop out while a new Consul query is on its way.
type Switch struct {
	mu      sync.Mutex // guards the fields below
	cur     Source
	changed chan struct{}
}

// NewSwitch starts with src.
func NewSwitch(src Source) *Switch {
	return &Switch{cur: src, changed: make(chan struct{})}
}

// Set replaces the running source.
func (w *Switch) Set(src Source) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cur = src
	close(w.changed)
	w.changed = make(chan struct{})
}

// Run runs the current source, and each one that replaces it, until ctx
// ends.
func (w *Switch) Run(ctx context.Context, publish func(Snapshot)) error {
	first := true
	for {
		w.mu.Lock()
		src, changed := w.cur, w.changed
		w.mu.Unlock()

		innerCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		held := !first
		go func() {
			done <- src.Run(innerCtx, func(s Snapshot) {
				if held && !s.Synced {
					return
				}
				held = false
				publish(s)
			})
		}()
		first = false
		select {
		case <-ctx.Done():
			cancel()
			<-done
			return nil
		case <-changed:
			cancel()
			<-done
		case err := <-done:
			cancel()
			if err != nil {
				return err
			}
			// The source ended by itself: wait for a new one or the end.
			select {
			case <-ctx.Done():
				return nil
			case <-changed:
			}
		}
	}
}
