package reflectsvc

import (
	"crypto/sha256"
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
)

// file is one file descriptor as a backend (or the gateway itself) serves
// it.
type file struct {
	name string
	// raw is the serialized FileDescriptorProto as it was received: what
	// clients are sent, never re-encoded.
	raw []byte
	fd  *descriptorpb.FileDescriptorProto
	// digest identifies the descriptor's content without its source info:
	// two backends that built the same .proto with and without comments
	// do not disagree.
	digest [sha256.Size]byte
	// from is the backend it came from; "" for the gateway's own.
	from string
}

// parseFile reads one serialized FileDescriptorProto.
func parseFile(raw []byte, from string) (*file, error) {
	fd := &descriptorpb.FileDescriptorProto{}
	if err := proto.Unmarshal(raw, fd); err != nil {
		return nil, fmt.Errorf("file descriptor from %s: %w", from, err)
	}
	if fd.GetName() == "" {
		return nil, fmt.Errorf("file descriptor from %s has no name", from)
	}
	bare := proto.Clone(fd).(*descriptorpb.FileDescriptorProto)
	bare.SourceCodeInfo = nil
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(bare)
	if err != nil {
		return nil, fmt.Errorf("file descriptor %s from %s: %w", fd.GetName(), from, err)
	}
	return &file{name: fd.GetName(), raw: raw, fd: fd, digest: sha256.Sum256(b), from: from}, nil
}

// extKey is one extension: the message it extends and its field number.
type extKey struct {
	extendee string
	number   int32
}

// fileSet is an immutable set of files with every name they declare
// indexed, the answers to the reflection requests. A later file of a name
// already in the set is a conflict, not a replacement: the first is kept.
type fileSet struct {
	files   map[string]*file
	symbols map[string]*file
	exts    map[extKey]*file
	// extNums are the extension numbers of each extended message.
	extNums map[string][]int32
	// conflicts are the files that came with a name already in the set and
	// another content, in the order met.
	conflicts []conflict
}

// conflict is a file name served with two contents.
type conflict struct {
	name       string
	kept, lost string // where each came from
}

func (c conflict) String() string {
	return fmt.Sprintf("%s: %s differs from %s (kept)", c.name, label(c.lost), label(c.kept))
}

func label(from string) string {
	if from == "" {
		return "the gateway's own"
	}
	return "backend " + from
}

// newFileSet indexes files, the first of each name winning.
func newFileSet(files ...[]*file) *fileSet {
	s := &fileSet{files: map[string]*file{}, symbols: map[string]*file{}, exts: map[extKey]*file{}, extNums: map[string][]int32{}}
	for _, fs := range files {
		for _, f := range fs {
			s.add(f)
		}
	}
	return s
}

func (s *fileSet) add(f *file) {
	if old, ok := s.files[f.name]; ok {
		if old.digest != f.digest && !slices.ContainsFunc(s.conflicts, func(c conflict) bool { return c.name == f.name && c.lost == f.from }) {
			s.conflicts = append(s.conflicts, conflict{name: f.name, kept: old.from, lost: f.from})
		}
		return
	}
	s.files[f.name] = f
	pkg := f.fd.GetPackage()
	sym := func(name string) {
		if _, ok := s.symbols[name]; !ok {
			s.symbols[name] = f
		}
	}
	ext := func(e *descriptorpb.FieldDescriptorProto) {
		k := extKey{trimDot(e.GetExtendee()), e.GetNumber()}
		if _, ok := s.exts[k]; !ok {
			s.exts[k] = f
			s.extNums[k.extendee] = append(s.extNums[k.extendee], k.number)
		}
	}
	for _, m := range f.fd.GetMessageType() {
		indexMessage(join(pkg, m.GetName()), m, sym, ext)
	}
	for _, e := range f.fd.GetEnumType() {
		indexEnum(pkg, e, sym)
	}
	for _, e := range f.fd.GetExtension() {
		sym(join(pkg, e.GetName()))
		ext(e)
	}
	for _, sv := range f.fd.GetService() {
		name := join(pkg, sv.GetName())
		sym(name)
		for _, m := range sv.GetMethod() {
			sym(name + "." + m.GetName())
		}
	}
}

// indexMessage names a message, its fields, oneofs, nested types and
// extensions as protobuf scopes them.
func indexMessage(name string, m *descriptorpb.DescriptorProto, sym func(string), ext func(*descriptorpb.FieldDescriptorProto)) {
	sym(name)
	for _, f := range m.GetField() {
		sym(name + "." + f.GetName())
	}
	for _, o := range m.GetOneofDecl() {
		sym(name + "." + o.GetName())
	}
	for _, e := range m.GetExtension() {
		sym(name + "." + e.GetName())
		ext(e)
	}
	for _, n := range m.GetNestedType() {
		indexMessage(name+"."+n.GetName(), n, sym, ext)
	}
	for _, e := range m.GetEnumType() {
		indexEnum(name, e, sym)
	}
}

// indexEnum names an enum and its values, which protobuf scopes beside the
// enum, not inside it.
func indexEnum(scope string, e *descriptorpb.EnumDescriptorProto, sym func(string)) {
	sym(join(scope, e.GetName()))
	for _, v := range e.GetValue() {
		sym(join(scope, v.GetName()))
	}
}

func join(scope, name string) string {
	if scope == "" {
		return name
	}
	return scope + "." + name
}

func trimDot(s string) string {
	if len(s) > 0 && s[0] == '.' {
		return s[1:]
	}
	return s
}
