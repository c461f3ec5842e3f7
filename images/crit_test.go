package images

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit"
	critcli "github.com/checkpoint-restore/go-criu/v8/crit/cli"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/fdrestore/fdrestore/proto/criupb"
)

// This file cross-checks our decoder against an independent one: go-criu's
// crit library (test-only dependency). Both decode every fixture image; the
// entries must agree field by field.

// opaqueFields are the fields our schema keeps as raw bytes where CRIU (and
// go-criu) have a sub-message. They must be present in go-criu's decoding;
// their contents are checked on the wire (see wireCheck).
var opaqueFields = map[string]bool{
	"core_entry.thread_info":    true,
	"core_entry.thread_core":    true,
	"core_entry.ti_arm":         true,
	"core_entry.ti_aarch64":     true,
	"core_entry.ti_ppc64":       true,
	"core_entry.ti_s390":        true,
	"core_entry.ti_mips":        true,
	"core_entry.ti_loongarch64": true,
	"core_entry.ti_riscv64":     true,
	"task_core_entry.timers":    true,
	"mm_entry.vmas":             true,
	"mm_entry.aios":             true,
	"file_entry.nsf":            true,
	"file_entry.psk":            true,
	"file_entry.nlsk":           true,
	"file_entry.tunf":           true,
	"file_entry.ify":            true,
	"file_entry.ffy":            true,
	"file_entry.ext":            true,
	"file_entry.memfd":          true,
	"file_entry.bpf":            true,
	"file_entry.pidfd":          true,
}

// partialMessages are sub-messages of which our schema declares only some
// fields (the rest stay unknown fields): keys go-criu decodes that we do not
// declare are allowed there, and only there.
var partialMessages = map[string]bool{
	"task_core_entry": true,
}

func TestCritCrossCheck(t *testing.T) {
	dir := fixtureDir(t)
	var skipped []string
	for _, p := range fixtureImages(t) {
		rel, _ := filepath.Rel(dir, p)
		t.Run(rel, func(t *testing.T) {
			crossCheckImage(t, p, &skipped)
		})
	}
	if len(skipped) > 0 {
		t.Logf("skipped: %s", strings.Join(skipped, ", "))
	}
}

func crossCheckImage(t *testing.T, path string, skipped *[]string) {
	base := filepath.Base(path)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	k, ours, err := DecodeBytes(data, base, KindForFile(base))
	if err != nil {
		t.Fatalf("our decoder: %v", err)
	}

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	typ, err := critcli.GetEntryTypeFromImg(f)
	if err != nil {
		*skipped = append(*skipped, base)
		t.Skipf("go-criu crit does not know this image kind (%s): %v", k.Name, err)
	}
	img, err := crit.New(f, nil, "", false, false).Decode(typ)
	if err != nil {
		*skipped = append(*skipped, base)
		t.Skipf("go-criu crit cannot decode this %s image: %v", k.Name, err)
	}

	if img.Magic != k.Name {
		t.Errorf("magic: ours %s, go-criu %s", k.Name, img.Magic)
	}
	if len(img.Entries) != len(ours) {
		t.Fatalf("entry count: ours %d, go-criu %d", len(ours), len(img.Entries))
	}
	for i, oe := range ours {
		te := img.Entries[i]
		where := fmt.Sprintf("%s entry %d", base, i)
		compareEntryJSON(t, where, oe.Msg, te.Message)
		if err := wireCheck(oe.Msg, te.Message); err != nil {
			t.Errorf("%s: %v", where, err)
		}

		want, err := critExtra(k, te.Extra)
		if err != nil {
			t.Errorf("%s: go-criu extra %q: %v", where, te.Extra, err)
			continue
		}
		if !bytes.Equal(oe.Trailer, want) {
			t.Errorf("%s: trailer: ours %d bytes %q, go-criu %d bytes %q", where, len(oe.Trailer), oe.Trailer, len(want), want)
		}
	}
}

// critExtra turns go-criu's Extra string back into the raw trailer bytes.
func critExtra(k *Kind, extra string) ([]byte, error) {
	if k.Trailer == TCPStreamTrailer {
		if extra == "" {
			return nil, nil
		}
		var q struct {
			InQ  string `json:"in_q"`
			OutQ string `json:"out_q"`
		}
		if err := json.Unmarshal([]byte(extra), &q); err != nil {
			return nil, err
		}
		in, err := base64.StdEncoding.DecodeString(q.InQ)
		if err != nil {
			return nil, err
		}
		out, err := base64.StdEncoding.DecodeString(q.OutQ)
		if err != nil {
			return nil, err
		}
		return append(in, out...), nil
	}
	return base64.StdEncoding.DecodeString(extra)
}

// wireCheck re-encodes our entry and decodes the bytes with go-criu's type:
// this checks the opaque byte fields and the unknown fields we carry too.
func wireCheck(ours, theirs proto.Message) error {
	b, err := proto.Marshal(ours)
	if err != nil {
		return fmt.Errorf("marshal ours: %w", err)
	}
	m := theirs.ProtoReflect().New().Interface()
	if err := proto.Unmarshal(b, m); err != nil {
		return fmt.Errorf("go-criu type cannot decode our re-encoding: %w", err)
	}
	if !proto.Equal(m, theirs) {
		return fmt.Errorf("our re-encoding, decoded by go-criu's type, differs from go-criu's decoding:\nours:   %v\ntheirs: %v", m, theirs)
	}
	return nil
}

// jsonMap renders m as protojson with proto field names and decodes that
// into a map. partial allows missing required fields (for the self-test).
func jsonMap(m proto.Message, partial bool) (map[string]any, error) {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: false, AllowPartial: partial}.Marshal(m)
	if err != nil {
		return nil, err
	}
	var out map[string]any
	err = json.Unmarshal(b, &out)
	return out, err
}

func compareEntryJSON(t *testing.T, where string, ours, theirs proto.Message) {
	t.Helper()
	om, err := jsonMap(ours, false)
	if err != nil {
		t.Errorf("%s: protojson ours: %v", where, err)
		return
	}
	tm, err := jsonMap(theirs, false)
	if err != nil {
		t.Errorf("%s: protojson go-criu: %v", where, err)
		return
	}
	od, td := ours.ProtoReflect().Descriptor(), theirs.ProtoReflect().Descriptor()
	if od.Name() != td.Name() {
		t.Errorf("%s: message type: ours %s, go-criu %s", where, od.FullName(), td.FullName())
	}
	for _, p := range compareMaps(om, tm, od, td, string(od.Name()), true) {
		t.Errorf("%s: %s", where, p)
	}
}

// compareMaps compares the protojson maps of one message decoded by us (om,
// descriptor od) and by go-criu (tm, td) and returns the differences. top
// says whether this is the entry itself rather than a sub-message.
func compareMaps(om, tm map[string]any, od, td protoreflect.MessageDescriptor, path string, top bool) []string {
	var probs []string
	for _, key := range sortedKeys(om) {
		p := path + "." + key
		ofd := od.Fields().ByName(protoreflect.Name(key))
		tfd := td.Fields().ByName(protoreflect.Name(key))
		if ofd == nil {
			probs = append(probs, fmt.Sprintf("%s: our JSON has a key our descriptor lacks", p))
			continue
		}
		if tfd == nil {
			probs = append(probs, fmt.Sprintf("%s: go-criu's %s has no such field", p, td.Name()))
			continue
		}
		if ofd.Number() != tfd.Number() {
			probs = append(probs, fmt.Sprintf("%s: field number: ours %d, go-criu %d", p, ofd.Number(), tfd.Number()))
		}
		tv, ok := tm[key]
		if !ok {
			probs = append(probs, fmt.Sprintf("%s: present in ours (%v), absent in go-criu's decoding", p, om[key]))
			continue
		}
		ov := om[key]
		switch {
		case ofd.Kind() == protoreflect.BytesKind && tfd.Kind() == protoreflect.MessageKind:
			name := string(od.Name()) + "." + key
			if !opaqueFields[name] {
				probs = append(probs, fmt.Sprintf("%s: kept as bytes by us but a message in go-criu, and not a known opaque field", p))
			}
			if ol, ok := ov.([]any); ok {
				if tl, ok := tv.([]any); !ok || len(tl) != len(ol) {
					probs = append(probs, fmt.Sprintf("%s: opaque list of %d, go-criu has %v", p, len(ol), tv))
				}
			}
		case ofd.Kind() == protoreflect.MessageKind && tfd.Kind() == protoreflect.MessageKind:
			probs = append(probs, compareNested(ov, tv, ofd.Message(), tfd.Message(), p)...)
		default:
			if !reflect.DeepEqual(ov, tv) {
				probs = append(probs, fmt.Sprintf("%s: ours %v, go-criu %v", p, jsonString(ov), jsonString(tv)))
			}
		}
	}
	for _, key := range sortedKeys(tm) {
		if _, ok := om[key]; ok {
			continue
		}
		p := path + "." + key
		if od.Fields().ByName(protoreflect.Name(key)) == nil && !top && partialMessages[string(od.Name())] {
			continue // a field we leave unknown in a partial sub-message
		}
		probs = append(probs, fmt.Sprintf("%s: go-criu decodes %v, absent in ours", p, jsonString(tm[key])))
	}
	return probs
}

func compareNested(ov, tv any, od, td protoreflect.MessageDescriptor, path string) []string {
	switch o := ov.(type) {
	case map[string]any:
		tmap, ok := tv.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: ours is a message, go-criu has %v", path, jsonString(tv))}
		}
		return compareMaps(o, tmap, od, td, path, false)
	case []any:
		tl, ok := tv.([]any)
		if !ok || len(tl) != len(o) {
			return []string{fmt.Sprintf("%s: ours is a list of %d, go-criu has %v", path, len(o), jsonString(tv))}
		}
		var probs []string
		for i := range o {
			probs = append(probs, compareNested(o[i], tl[i], od, td, fmt.Sprintf("%s[%d]", path, i))...)
		}
		return probs
	}
	return []string{fmt.Sprintf("%s: unexpected JSON %T for a message field", path, ov)}
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func jsonString(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// TestCritRegistryCoexists checks that go-criu's descriptors (no package,
// files named like "fdinfo.proto") and ours (package fdrestore.criu, files
// under proto/) are both registered in one binary without a conflict.
func TestCritRegistryCoexists(t *testing.T) {
	for _, name := range []string{"fdinfo.proto", "criu-core.proto", "proto/files.proto", "proto/task.proto"} {
		if _, err := protoregistry.GlobalFiles.FindFileByPath(name); err != nil {
			t.Errorf("%s not registered: %v", name, err)
		}
	}
	for _, name := range []protoreflect.FullName{"fdinfo_entry", "fdrestore.criu.fdinfo_entry", "core_entry", "fdrestore.criu.core_entry"} {
		if _, err := protoregistry.GlobalTypes.FindMessageByName(name); err != nil {
			t.Errorf("message %s not registered: %v", name, err)
		}
	}
}

// TestCritCompareDetectsDifferences makes sure the comparison is not
// vacuous: a changed value, a dropped field and a dropped nested field are
// all reported.
func TestCritCompareDetectsDifferences(t *testing.T) {
	decodeBoth := func(rel string) ([]*Entry, *crit.CriuImage) {
		t.Helper()
		p := filepath.Join(fixtureDir(t), rel)
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		_, ours, err := DecodeBytes(data, filepath.Base(p), nil)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		typ, err := critcli.GetEntryTypeFromImg(f)
		if err != nil {
			t.Fatal(err)
		}
		img, err := crit.New(f, nil, "", false, false).Decode(typ)
		if err != nil {
			t.Fatal(err)
		}
		return ours, img
	}
	diff := func(ours, theirs proto.Message) []string {
		om, err := jsonMap(ours, true)
		if err != nil {
			t.Fatal(err)
		}
		tm, err := jsonMap(theirs, true)
		if err != nil {
			t.Fatal(err)
		}
		od, td := ours.ProtoReflect().Descriptor(), theirs.ProtoReflect().Descriptor()
		return compareMaps(om, tm, od, td, string(od.Name()), true)
	}

	ours, img := decodeBoth("pipe-basic/fdinfo-2.img")
	if p := diff(ours[0].Msg, img.Entries[0].Message); len(p) != 0 {
		t.Fatalf("unmodified entry reported: %v", p)
	}
	m := proto.Clone(ours[0].Msg).(*criupb.FdinfoEntry)
	m.Fd = proto.Uint32(m.GetFd() + 100)
	if p := diff(m, img.Entries[0].Message); len(p) != 1 || !strings.Contains(p[0], ".fd:") {
		t.Errorf("changed fd: got %q, want one problem naming fd", p)
	}
	m = proto.Clone(ours[0].Msg).(*criupb.FdinfoEntry)
	m.Flags = nil
	m.Type = nil
	if p := diff(m, img.Entries[0].Message); len(p) != 2 {
		t.Errorf("dropped flags and type: got %q, want two problems", p)
	}

	ours, img = decodeBoth("pipe-basic/core-2.img")
	if p := diff(ours[0].Msg, img.Entries[0].Message); len(p) != 0 {
		t.Fatalf("unmodified core entry reported: %v", p)
	}
	c := proto.Clone(ours[0].Msg).(*criupb.CoreEntry)
	c.Tc.Comm = proto.String(c.Tc.GetComm() + "x")
	c.ThreadCore = nil
	if p := diff(c, img.Entries[0].Message); len(p) != 2 {
		t.Errorf("changed tc.comm and dropped thread_core: got %q, want two problems", p)
	}
	c = proto.Clone(ours[0].Msg).(*criupb.CoreEntry)
	c.Tc.Rlimits = nil
	if p := diff(c, img.Entries[0].Message); len(p) != 1 || !strings.Contains(p[0], "tc.rlimits") {
		t.Errorf("dropped tc.rlimits: got %q, want one problem naming it", p)
	}
	c = proto.Clone(ours[0].Msg).(*criupb.CoreEntry)
	c.ThreadInfo = append([]byte(nil), c.ThreadInfo...)
	c.ThreadInfo[len(c.ThreadInfo)-1] ^= 1
	if err := wireCheck(c, img.Entries[0].Message); err == nil {
		t.Errorf("wireCheck missed a changed byte in opaque thread_info")
	}
}
