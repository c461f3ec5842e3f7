package images

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/fdrestore/fdrestore/proto/criupb"
	"google.golang.org/protobuf/proto"
)

// Corrupt-input tests: real fixture images, damaged in every way the framing
// can be damaged, must give a *FormatError naming the file, the entry and
// its offset — never a panic, never a success, never a huge allocation.

// corruptFixtures are real images of different kinds, with and without
// trailers, with one or several entries.
var corruptFixtures = []string{
	"pipe-basic/files.img",
	"mixed/fdinfo-2.img",
	"pipe-tree/pipes-data.img", // 1 KiB trailer
	"mixed/pipes-data.img",
	"fifo/fifo-data.img",
	"unix-dgram/sk-queues.img", // several packets with trailers
	"tcp/tcp-stream-13f102.img",
	"pty/tty-info.img",
	"pipe-basic/core-2.img",
	"pipe-basic/inventory.img", // no framing magic
	"pipe-basic/stats-dump",    // service magic
}

// allocLimit is what decoding a hostile image may allocate at most.
const allocLimit = 1 << 20

// fixture is a decoded fixture image and the layout of its entries.
type fixture struct {
	name    string
	data    []byte
	kind    *Kind
	entries []*Entry
	hdr     int    // bytes of magic before the first entry
	spans   []span // one per entry
}

// span is where one entry lies: [start, bodyEnd) is the length prefix and
// the protobuf, [bodyEnd, end) the trailer.
type span struct{ start, bodyEnd, end int }

func loadFixture(t testing.TB, rel string) *fixture {
	t.Helper()
	p := filepath.Join(fixtureDir(t), rel)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	fx := &fixture{name: filepath.Base(p), data: data}
	fx.kind, fx.entries, err = DecodeBytes(data, fx.name, KindForFile(fx.name))
	if err != nil {
		t.Fatalf("clean decode of %s: %v", rel, err)
	}
	if len(fx.entries) == 0 {
		t.Fatalf("%s has no entries", rel)
	}
	fx.hdr = 8
	if fx.kind.Framing == 0 {
		fx.hdr = 4
	}
	if int(fx.entries[0].Offset) != fx.hdr {
		t.Fatalf("%s: first entry at %d, want %d", rel, fx.entries[0].Offset, fx.hdr)
	}
	for i, e := range fx.entries {
		start := int(e.Offset)
		end := len(data)
		if i+1 < len(fx.entries) {
			end = int(fx.entries[i+1].Offset)
		}
		bodyEnd := start + 4 + int(byteOrder.Uint32(data[start:]))
		if bodyEnd+len(e.Trailer) != end {
			t.Fatalf("%s entry %d: body ends at %d, trailer %d bytes, next entry at %d", rel, i, bodyEnd, len(e.Trailer), end)
		}
		fx.spans = append(fx.spans, span{start, bodyEnd, end})
	}
	return fx
}

// withEntry0 returns the image with entry 0's length prefix, protobuf and
// trailer replaced by the given ones (other entries kept).
func (fx *fixture) withEntry0(length uint32, body, trailer []byte) []byte {
	var b []byte
	b = append(b, fx.data[:fx.hdr]...)
	b = byteOrder.AppendUint32(b, length)
	b = append(b, body...)
	b = append(b, trailer...)
	return append(b, fx.data[fx.spans[0].end:]...)
}

// decodeStream decodes through the streaming Reader. size -1 stands for a
// source of unknown size (a pipe); the reader then sees the bytes one read
// at a time as a pipe would give them.
func decodeStream(data []byte, name string, size int64, want *Kind) ([]*Entry, error) {
	var src io.Reader = bytes.NewReader(data)
	if size < 0 {
		src = iotest.HalfReader(struct{ io.Reader }{src})
	}
	r, err := NewReader(src, name, size, want)
	if err != nil {
		return nil, err
	}
	return r.All()
}

// sizeModes are the two ways a reader learns (or not) the file's size.
var sizeModes = []struct {
	name  string
	known bool
}{{"size-known", true}, {"size-unknown", false}}

func (fx *fixture) decode(data []byte, known bool) ([]*Entry, error) {
	size := int64(-1)
	if known {
		size = int64(len(data))
	}
	return decodeStream(data, fx.name, size, fx.kind)
}

// allocated returns how many bytes f allocates (the least of a few runs, to
// discount the odd background allocation).
func allocated(f func()) uint64 {
	var best uint64 = 1<<64 - 1
	for range 3 {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after)
		best = min(best, after.TotalAlloc-before.TotalAlloc)
	}
	return best
}

// checkFormatError requires err to be a *FormatError naming the file and
// wrapping one of sentinels, and returns it.
func checkFormatError(t *testing.T, what string, err error, file string, sentinels ...error) *FormatError {
	t.Helper()
	if err == nil {
		t.Errorf("%s: decoded without error", what)
		return nil
	}
	var fe *FormatError
	if !errors.As(err, &fe) {
		t.Errorf("%s: error %q (%T) is not a *FormatError", what, err, err)
		return nil
	}
	if fe.File != file || !strings.Contains(err.Error(), file) {
		t.Errorf("%s: error %q does not name file %s (File=%q)", what, err, file, fe.File)
	}
	ok := false
	for _, s := range sentinels {
		ok = ok || errors.Is(err, s)
	}
	if !ok {
		t.Errorf("%s: error %q wraps none of %v", what, err, sentinels)
	}
	return fe
}

func TestCorruptTruncated(t *testing.T) {
	for _, rel := range corruptFixtures {
		fx := loadFixture(t, rel)
		for _, mode := range sizeModes {
			t.Run(rel+"/"+mode.name, func(t *testing.T) {
				for cut := 0; cut < len(fx.data); cut++ {
					fx.checkTruncation(t, cut, mode.known)
				}
			})
		}
	}
}

func (fx *fixture) checkTruncation(t *testing.T, cut int, known bool) {
	t.Helper()
	what := fmt.Sprintf("%s cut at %d of %d", fx.name, cut, len(fx.data))
	entries, err := fx.decode(fx.data[:cut], known)

	if cut < fx.hdr {
		fe := checkFormatError(t, what, err, fx.name, ErrTruncated)
		if fe != nil && (fe.Entry != -1 || fe.Field != "magic") {
			t.Errorf("%s: inside the magic: got Entry %d Field %q, want -1 and \"magic\" (%v)", what, fe.Entry, fe.Field, err)
		}
		return
	}
	for i, sp := range fx.spans {
		if cut == sp.start {
			// An entry boundary: a shorter but well-formed image.
			if err != nil {
				t.Errorf("%s: cut on the boundary before entry %d: %v", what, i, err)
			} else if len(entries) != i {
				t.Errorf("%s: cut on the boundary before entry %d: got %d entries", what, i, len(entries))
			}
			return
		}
		if cut >= sp.end {
			continue
		}
		fe := checkFormatError(t, what, err, fx.name, ErrTruncated, ErrTooLarge)
		if fe == nil {
			return
		}
		if fe.Entry != i {
			t.Errorf("%s: inside entry %d (bytes %d..%d): FormatError.Entry = %d (%v)", what, i, sp.start, sp.end, fe.Entry, err)
		}
		if cut < sp.bodyEnd {
			if fe.Offset != int64(sp.start) || fe.Field != "length" {
				t.Errorf("%s: inside entry %d's length or protobuf: got Offset %d Field %q, want %d and \"length\" (%v)", what, i, fe.Offset, fe.Field, sp.start, err)
			}
		} else {
			// The trailer: the error points at the entry or at the
			// trailer's first byte.
			if (fe.Offset != int64(sp.start) && fe.Offset != int64(sp.bodyEnd)) || fe.Field != "payload" {
				t.Errorf("%s: inside entry %d's trailer: got Offset %d Field %q, want %d or %d and \"payload\" (%v)", what, i, fe.Offset, fe.Field, sp.start, sp.bodyEnd, err)
			}
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("entry %d", i)) {
			t.Errorf("%s: error %q does not name entry %d", what, err, i)
		}
		return
	}
	t.Fatalf("%s: cut not inside any entry (spans %v)", what, fx.spans)
}

func TestCorruptMagic(t *testing.T) {
	flip := func(data []byte, off int) []byte {
		b := bytes.Clone(data)
		b[off] ^= 0x5a
		return b
	}
	setU32 := func(data []byte, off int, v Magic) []byte {
		b := bytes.Clone(data)
		byteOrder.PutUint32(b[off:], uint32(v))
		return b
	}
	for _, rel := range corruptFixtures {
		fx := loadFixture(t, rel)
		other := KindNamed("FDINFO")
		if fx.kind == other {
			other = KindNamed("FILES")
		}
		type tc struct {
			name string
			data []byte
			want *Kind
		}
		cases := []tc{
			{"image magic flipped", flip(fx.data, fx.hdr-4), fx.kind},
			{"image magic flipped, any kind", flip(fx.data, fx.hdr-1), nil},
			{"image magic of another kind", setU32(fx.data, fx.hdr-4, other.Magic), fx.kind},
			{"wanted as another kind", fx.data, other},
		}
		if fx.kind.Framing != 0 {
			wrong := MagicService
			if fx.kind.Framing == MagicService {
				wrong = MagicCommon
			}
			cases = append(cases,
				tc{"framing magic flipped", flip(fx.data, 0), nil},
				tc{"wrong framing magic", setU32(fx.data, 0, wrong), nil},
				tc{"framing magic missing", fx.data[4:], nil},
			)
		} else {
			cases = append(cases, tc{"framed by IMG_COMMON", append(byteOrder.AppendUint32(nil, uint32(MagicCommon)), fx.data...), nil})
		}
		for _, c := range cases {
			for _, mode := range sizeModes {
				what := fmt.Sprintf("%s: %s (%s)", rel, c.name, mode.name)
				size := int64(-1)
				if mode.known {
					size = int64(len(c.data))
				}
				_, err := decodeStream(c.data, fx.name, size, c.want)
				if fe := checkFormatError(t, what, err, fx.name, ErrBadMagic); fe != nil && fe.Entry != -1 {
					t.Errorf("%s: FormatError.Entry = %d, want -1 (%v)", what, fe.Entry, err)
				}
			}
		}
	}
}

func TestCorruptHugeLength(t *testing.T) {
	for _, rel := range corruptFixtures {
		fx := loadFixture(t, rel)
		remain := uint32(len(fx.data) - fx.hdr - 4)
		for _, n := range []uint32{0xffffffff, 0x80000000, MaxEntrySize + 1, MaxEntrySize, 16 << 20, remain + 1} {
			data := bytes.Clone(fx.data)
			byteOrder.PutUint32(data[fx.hdr:], n)
			for _, mode := range sizeModes {
				what := fmt.Sprintf("%s: first length %#x (%s)", rel, n, mode.name)
				var err error
				alloc := allocated(func() { _, err = fx.decode(data, mode.known) })
				sentinels := []error{ErrTooLarge}
				if !mode.known && n <= MaxEntrySize {
					// Without the size, a length within the limit is
					// only found wrong when the data runs out.
					sentinels = append(sentinels, ErrTruncated)
				}
				fe := checkFormatError(t, what, err, fx.name, sentinels...)
				if fe != nil && (fe.Entry != 0 || fe.Offset != int64(fx.hdr) || fe.Field != "length") {
					t.Errorf("%s: got Entry %d Offset %d Field %q, want 0, %d, \"length\" (%v)", what, fe.Entry, fe.Offset, fe.Field, fx.hdr, err)
				}
				if alloc >= allocLimit {
					t.Errorf("%s: decoding allocated %d bytes, limit %d", what, alloc, allocLimit)
				}
			}
		}
	}
}

func TestCorruptGarbageEntry(t *testing.T) {
	for _, rel := range corruptFixtures {
		fx := loadFixture(t, rel)
		msgName := string(fx.kind.NewEntry().ProtoReflect().Descriptor().Name())
		type tc struct {
			name  string
			data  []byte
			entry int
		}
		var cases []tc
		for i, sp := range fx.spans {
			if i > 1 {
				break
			}
			b := bytes.Clone(fx.data)
			for j := sp.start + 4; j < sp.bodyEnd; j++ {
				b[j] = 0xff
			}
			cases = append(cases, tc{fmt.Sprintf("entry %d protobuf all 0xff", i), b, i})
			if sp.bodyEnd-sp.start-4 < 2 || sp.bodyEnd-sp.start-4 > 100 {
				continue
			}
			b = bytes.Clone(fx.data)
			b[sp.start+5] = 0x7f // field 1's length (if bytes) or next tag: now past the end
			b[sp.start+4] = 0x0a // field 1, length-delimited
			cases = append(cases, tc{fmt.Sprintf("entry %d field 1 overruns the entry", i), b, i})
		}
		if proto.CheckInitialized(fx.kind.NewEntry()) != nil {
			cases = append(cases, tc{"entry 0 empty (required fields missing)", fx.withEntry0(0, nil, nil)[:fx.hdr+4], 0})
		}
		for _, c := range cases {
			for _, mode := range sizeModes {
				what := fmt.Sprintf("%s: %s (%s)", rel, c.name, mode.name)
				_, err := fx.decode(c.data, mode.known)
				fe := checkFormatError(t, what, err, fx.name, ErrBadEntry)
				if fe == nil {
					continue
				}
				if fe.Entry != c.entry || fe.Offset != int64(fx.spans[c.entry].start) || fe.Field != msgName {
					t.Errorf("%s: got Entry %d Offset %d Field %q, want %d, %d, %q (%v)", what, fe.Entry, fe.Offset, fe.Field, c.entry, fx.spans[c.entry].start, msgName, err)
				}
				if !strings.Contains(err.Error(), fmt.Sprintf("entry %d", c.entry)) {
					t.Errorf("%s: error %q does not name entry %d", what, err, c.entry)
				}
			}
		}
	}
}

func TestCorruptTrailerLength(t *testing.T) {
	set := map[Trailer]func(m proto.Message, n uint32){
		PipeDataTrailer: func(m proto.Message, n uint32) { m.(*criupb.PipeDataEntry).Bytes = proto.Uint32(n) },
		PacketTrailer:   func(m proto.Message, n uint32) { m.(*criupb.SkPacketEntry).Length = proto.Uint32(n) },
		TCPStreamTrailer: func(m proto.Message, n uint32) {
			e := m.(*criupb.TcpStreamEntry)
			e.InqLen = proto.Uint32(n)
			e.OutqLen = proto.Uint32(n)
		},
	}
	tested := map[Trailer]bool{}
	for _, rel := range corruptFixtures {
		fx := loadFixture(t, rel)
		if fx.kind.Trailer == NoTrailer {
			continue
		}
		tested[fx.kind.Trailer] = true
		e0 := fx.entries[0]
		for _, n := range []uint32{uint32(len(fx.data)), 1 << 31, 0xffffffff} {
			m := proto.Clone(e0.Msg)
			set[fx.kind.Trailer](m, n)
			body, err := proto.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			data := fx.withEntry0(uint32(len(body)), body, e0.Trailer)
			bodyEnd := fx.hdr + 4 + len(body)
			for _, mode := range sizeModes {
				what := fmt.Sprintf("%s: entry 0 announces a %d-byte trailer (%s)", rel, fx.kind.TrailerLen(m), mode.name)
				var err error
				alloc := allocated(func() { _, err = fx.decode(data, mode.known) })
				fe := checkFormatError(t, what, err, fx.name, ErrTooLarge, ErrTruncated)
				if fe != nil && (fe.Entry != 0 || fe.Field != "payload" || (fe.Offset != int64(fx.hdr) && fe.Offset != int64(bodyEnd))) {
					t.Errorf("%s: got Entry %d Offset %d Field %q, want 0, %d or %d, \"payload\" (%v)", what, fe.Entry, fe.Offset, fe.Field, fx.hdr, bodyEnd, err)
				}
				if alloc >= allocLimit {
					t.Errorf("%s: decoding allocated %d bytes, limit %d", what, alloc, allocLimit)
				}
			}
		}
	}
	for _, tr := range []Trailer{PipeDataTrailer, PacketTrailer, TCPStreamTrailer} {
		if !tested[tr] {
			t.Errorf("no fixture with trailer kind %d among corruptFixtures", tr)
		}
	}
}

// TestStreamingMatchesBytes: short reads (a pipe) and an unknown size give
// the same entries as decoding from memory.
func TestStreamingMatchesBytes(t *testing.T) {
	for _, rel := range corruptFixtures {
		fx := loadFixture(t, rel)
		r, err := NewReader(iotest.OneByteReader(bytes.NewReader(fx.data)), fx.name, -1, fx.kind)
		if err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		got, err := r.All()
		if err != nil {
			t.Fatalf("%s: streaming decode: %v", rel, err)
		}
		if len(got) != len(fx.entries) {
			t.Fatalf("%s: streaming decode gave %d entries, want %d", rel, len(got), len(fx.entries))
		}
		for i, e := range got {
			w := fx.entries[i]
			if e.Index != w.Index || e.Offset != w.Offset || !proto.Equal(e.Msg, w.Msg) || !bytes.Equal(e.Trailer, w.Trailer) {
				t.Errorf("%s entry %d: streaming decode differs: %+v vs %+v", rel, i, e, w)
			}
		}
	}
}
