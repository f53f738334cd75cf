package scale

import (
	"google.golang.org/grpc"

	"github.com/healthgate/healthgate/gateway"
)

// dialOptions are the gateway's backend connection options, so that each
// backend costs here what it costs in the gateway.
func dialOptions() []grpc.DialOption { return gateway.BackendDialOptions() }
