package h2grpc

import (
	"encoding/base64"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/healthgate/healthgate/internal/grpcwire"
)

// What gRPC over HTTP/2 says of headers, timeouts and statuses
// (PROTOCOL-HTTP2.md in grpc/grpc), as much of it as a client needs.

// reservedHeader is a header the transport owns: never sent from, nor
// shown as, metadata.
func reservedHeader(name string) bool {
	if name != "" && name[0] == ':' {
		return true
	}
	switch name {
	case "content-type", "user-agent", "grpc-message-type", "grpc-encoding",
		"grpc-accept-encoding", "grpc-message", "grpc-status", "grpc-timeout",
		"grpc-status-details-bin", "te", "connection", "host":
		return true
	}
	return false
}

// decodeBin decodes a -bin header's value: base64, padded or not.
func decodeBin(v string) ([]byte, error) {
	if len(v)%4 == 0 {
		return base64.StdEncoding.DecodeString(v)
	}
	return base64.RawStdEncoding.DecodeString(v)
}

// decodeMessage undoes grpc-message's percent-encoding; a malformed escape
// is kept as it is, since a status message is for people.
func decodeMessage(msg string) string {
	if !strings.Contains(msg, "%") {
		return msg
	}
	var sb strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c == '%' && i+2 < len(msg) {
			if v, err := strconv.ParseUint(msg[i+1:i+3], 16, 8); err == nil {
				sb.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		sb.WriteByte(c)
	}
	return sb.String()
}

// encodeTimeout is grpc-timeout's value for d: at most eight digits and a
// unit, rounded up so that the server never sees less time than there is.
func encodeTimeout(d time.Duration) string {
	const maxValue = 1e8 - 1
	if d <= 0 {
		return "0n"
	}
	for _, u := range []struct {
		d    time.Duration
		unit string
	}{{time.Nanosecond, "n"}, {time.Microsecond, "u"}, {time.Millisecond, "m"}, {time.Second, "S"}, {time.Minute, "M"}} {
		if v := (d + u.d - 1) / u.d; v <= maxValue {
			return strconv.FormatInt(int64(v), 10) + u.unit
		}
	}
	return strconv.FormatInt(int64((d+time.Hour-1)/time.Hour), 10) + "H"
}

// resetCode is the gRPC code of a stream the peer reset, as grpc-go maps
// it.
func resetCode(c http2.ErrCode) codes.Code {
	switch c {
	case http2.ErrCodeRefusedStream:
		return codes.Unavailable
	case http2.ErrCodeCancel:
		return codes.Canceled
	case http2.ErrCodeEnhanceYourCalm:
		return codes.ResourceExhausted
	case http2.ErrCodeInadequateSecurity:
		return codes.PermissionDenied
	}
	return codes.Internal
}

// response is what a header block says: the metadata, and for trailers
// the call's status.
type response struct {
	md         metadata.MD
	httpStatus int
	grpc       bool // content-type is application/grpc[+...]
	contentTyp string
	hasStatus  bool
	code       codes.Code
	message    string
	details    []byte
	bad        string // a malformed field, if any
}

func parseFields(f *http2.MetaHeadersFrame) response {
	r := response{md: metadata.MD{}, code: codes.Unknown}
	for _, hf := range f.Fields {
		switch hf.Name {
		case ":status":
			r.httpStatus, _ = strconv.Atoi(hf.Value)
		case "content-type":
			r.contentTyp = hf.Value
			r.grpc = isGRPCContentType(hf.Value)
		case "grpc-status":
			c, err := strconv.ParseUint(hf.Value, 10, 32)
			if err != nil {
				r.bad = "malformed grpc-status " + strconv.Quote(hf.Value)
				continue
			}
			r.hasStatus, r.code = true, codes.Code(c)
		case "grpc-message":
			r.message = decodeMessage(hf.Value)
		case "grpc-status-details-bin":
			b, err := decodeBin(hf.Value)
			if err != nil {
				r.bad = "malformed grpc-status-details-bin"
				continue
			}
			r.details = b
		default:
			if reservedHeader(hf.Name) {
				continue
			}
			v := hf.Value
			if strings.HasSuffix(hf.Name, "-bin") {
				b, err := decodeBin(v)
				if err != nil {
					r.bad = "malformed " + hf.Name
					continue
				}
				v = string(b)
			}
			r.md[hf.Name] = append(r.md[hf.Name], v)
		}
	}
	return r
}

func isGRPCContentType(ct string) bool {
	rest, ok := strings.CutPrefix(ct, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// status is the call's status from a header block that ends the stream.
func (r response) status() *status.Status {
	if r.bad != "" {
		return status.New(codes.Internal, "h2grpc: "+r.bad)
	}
	if !r.hasStatus {
		if r.httpStatus != 0 && r.httpStatus != 200 {
			return status.Newf(grpcwire.HTTPStatusCode(r.httpStatus), "unexpected HTTP status code received from server: %d", r.httpStatus)
		}
		return status.New(codes.Unknown, "h2grpc: the server ended the call without grpc-status")
	}
	if len(r.details) > 0 {
		p := &spb.Status{}
		if err := proto.Unmarshal(r.details, p); err == nil && codes.Code(p.GetCode()) == r.code {
			return status.FromProto(p)
		}
	}
	return status.New(r.code, r.message)
}
