// Package authpb holds the generated messages and gRPC stubs for the example
// Authorization service. The generated files are checked in so that building
// the example needs neither protoc nor its plugins.
package authpb

// Requires protoc (Debian protobuf-compiler), protoc-gen-go at the
// google.golang.org/protobuf version in go.mod, and protoc-gen-go-grpc on PATH.
//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative auth.proto
