// Command splice is the bench's floor for any proxy: a TCP forwarder that
// gives each client connection a backend connection of its own and moves
// the bytes both ways with io.Copy, which between two TCP connections on
// Linux is splice(2): no HTTP/2, no copy into user space. What the load
// generator and the backend lose through it is what any process between
// them costs on this machine, before that process does any work of its
// own: every write of theirs now wakes a process on the other CPU.
//
//	splice -listen 127.0.0.1:21003 -backend 127.0.0.1:21001
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "splice: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:21003", "address to serve on")
	backend := flag.String("backend", "127.0.0.1:21001", "backend address")
	flag.Parse()

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]struct{}{}
	go func() {
		<-ctx.Done()
		lis.Close()
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
	}()
	track := func(c net.Conn, on bool) bool {
		mu.Lock()
		defer mu.Unlock()
		if on && ctx.Err() != nil {
			return false
		}
		if on {
			open[c] = struct{}{}
		} else {
			delete(open, c)
		}
		return true
	}
	for {
		c, err := lis.Accept()
		if err != nil {
			wg.Wait()
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			b, err := net.Dial("tcp", *backend)
			if err != nil {
				fmt.Fprintf(os.Stderr, "splice: backend: %v\n", err)
				return
			}
			defer b.Close()
			if !track(c, true) || !track(b, true) {
				return
			}
			defer track(c, false)
			defer track(b, false)
			done := make(chan struct{})
			go func() {
				defer close(done)
				_, _ = io.Copy(b, c)
				_ = b.(*net.TCPConn).CloseWrite()
			}()
			_, _ = io.Copy(c, b)
			_ = c.(*net.TCPConn).CloseWrite()
			<-done
		}()
	}
}
