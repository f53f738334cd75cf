package rawcodec

import (
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

func TestPayloadIsExactAndParses(t *testing.T) {
	for _, n := range []int{0, 2, 3, 100, 129, 130, 131, 16386, 16387, 16388, 1 << 20} {
		b, err := Payload(n)
		if err != nil {
			t.Fatalf("Payload(%d): %v", n, err)
		}
		if len(b) != n {
			t.Fatalf("Payload(%d) is %d bytes", n, len(b))
		}
		if n == 0 {
			continue
		}
		// Every field must parse; the last one is the bulk of the bytes.
		rest := b
		for len(rest) > 0 {
			num, typ, tagLen := protowire.ConsumeTag(rest)
			if tagLen < 0 || typ != protowire.BytesType || (num != 1 && num != 2) {
				t.Fatalf("Payload(%d): bad tag at %d", n, n-len(rest))
			}
			_, l := protowire.ConsumeBytes(rest[tagLen:])
			if l < 0 {
				t.Fatalf("Payload(%d): bad bytes field at %d", n, n-len(rest))
			}
			rest = rest[tagLen+l:]
		}
	}
	if _, err := Payload(1); err == nil {
		t.Fatal("Payload(1) should fail: no message is one byte long")
	}
}

func TestFrameEchoKeepsOneReference(t *testing.T) {
	pool := mem.DefaultBufferPool()
	in := mem.BufferSlice{mem.Copy([]byte("hello"), pool)}
	var f Frame
	if err := (Codec{}).Unmarshal(in, &f); err != nil {
		t.Fatal(err)
	}
	in.Free() // what gRPC does when Unmarshal returns
	out, err := (Codec{}).Marshal(&f)
	if err != nil {
		t.Fatal(err)
	}
	if string(out.Materialize()) != "hello" || f.Data != nil {
		t.Fatalf("echo got %q, frame keeps %v", out.Materialize(), f.Data)
	}
	out.Free()
}
