//go:build !unix

package gateway

import "net"

// socketPair is a connection of the bridge to the engine. Without unix
// socket pairs it is net.Pipe, which only the relay engine's server
// handshakes on (it reads and writes at once).
func socketPair() (client, server net.Conn, err error) {
	client, server = net.Pipe()
	return client, server, nil
}
