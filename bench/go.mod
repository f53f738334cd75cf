module github.com/healthgate/healthgate/bench

go 1.26.0

require (
	github.com/mwitkow/grpc-proxy v0.0.0-20250813121105-2866842de9a5
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261019180522-ce908d29299b // indirect
)
