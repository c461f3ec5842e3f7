package images

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/metrics"
	"testing"

	"github.com/fdrestore/fdrestore/proto/criupb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// fuzzAllocSlack is what one decode may allocate beyond 64 bytes per input
// byte: the 64 KiB read buffer and small bookkeeping.
const fuzzAllocSlack = 1 << 20

// FuzzDecode decodes arbitrary bytes as an image. Decoding must not panic,
// must fail with a *FormatError or succeed, must not allocate much more than
// the input's size, and whatever decodes must re-encode to an image that
// decodes to the same entries.
func FuzzDecode(f *testing.F) {
	for _, seed := range fuzzHandSeeds(f) {
		f.Add(seed)
	}
	// The real CRIU images, when the fixtures are there.
	dir := os.Getenv("FDRESTORE_FIXTURES")
	if dir == "" {
		dir, _ = filepath.Abs("../../shared/criu-images")
	}
	if _, err := os.Stat(dir); err == nil {
		for _, p := range fixtureImages(f) {
			data, err := os.ReadFile(p)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkDecode(t, data)
	})
}

func checkDecode(t testing.TB, data []byte) {
	const name = "fuzz.img"
	var k *Kind
	var entries []*Entry
	var err error
	limit := 64*uint64(len(data)) + fuzzAllocSlack
	before := heapAllocated()
	k, entries, err = DecodeBytes(data, name, nil)
	if alloc := heapAllocated() - before; alloc > limit {
		t.Fatalf("decoding %d bytes allocated %d bytes, limit %d", len(data), alloc, limit)
	}

	// The same bytes through a source of unknown size (a pipe) must give
	// the same outcome.
	var sk *Kind
	var sentries []*Entry
	before = heapAllocated()
	r, serr := NewReader(struct{ io.Reader }{bytes.NewReader(data)}, name, -1, nil)
	if serr == nil {
		sk = r.Kind()
		sentries, serr = r.All()
	}
	if alloc := heapAllocated() - before; alloc > limit {
		t.Fatalf("streaming decode of %d bytes allocated %d bytes, limit %d", len(data), alloc, limit)
	}

	if err != nil {
		checkFuzzError(t, err, name)
		if serr == nil {
			t.Fatalf("decoding from memory failed (%v) but streaming succeeded with %d entries", err, len(sentries))
		}
		checkFuzzError(t, serr, name)
		return
	}
	if serr != nil {
		t.Fatalf("decoding from memory succeeded with %d entries but streaming failed: %v", len(entries), serr)
	}
	if sk != k {
		t.Fatalf("streaming decode gave kind %v, from memory %v", sk, k)
	}
	requireSameEntries(t, "streaming decode", entries, sentries)

	out, err := EncodeBytes(k, entries)
	if err != nil {
		t.Fatalf("re-encoding %d decoded %s entries: %v", len(entries), k, err)
	}
	k2, entries2, err := DecodeBytes(out, name, k)
	if err != nil {
		t.Fatalf("decoding the re-encoded image: %v", err)
	}
	if k2 != k {
		t.Fatalf("re-encoded image holds %v, want %v", k2, k)
	}
	requireSameEntries(t, "re-encoded image", entries, entries2)
	out2, err := EncodeBytes(k2, entries2)
	if err != nil {
		t.Fatalf("re-encoding again: %v", err)
	}
	if !bytes.Equal(out, out2) {
		t.Fatalf("encoding is not stable: %d bytes, then %d bytes", len(out), len(out2))
	}
}

// heapAllocated returns the bytes allocated on the heap so far. Unlike
// runtime.ReadMemStats it does not stop the world, so it is cheap enough to
// call around every fuzz input. Small allocations are counted a span at a
// time, so the count may run ahead by a few KiB, well inside
// fuzzAllocSlack; large ones are counted exactly.
func heapAllocated() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func checkFuzzError(t testing.TB, err error, name string) {
	t.Helper()
	var fe *FormatError
	if !errors.As(err, &fe) {
		t.Fatalf("error %q (%T) is not a *FormatError", err, err)
	}
	if fe.File != name {
		t.Fatalf("error %q names file %q, want %q", err, fe.File, name)
	}
	for _, s := range []error{ErrTruncated, ErrBadMagic, ErrTooLarge, ErrBadEntry} {
		if errors.Is(err, s) {
			return
		}
	}
	t.Fatalf("error %q wraps no framing sentinel", err)
}

func requireSameEntries(t testing.TB, what string, want, got []*Entry) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d entries, want %d", what, len(got), len(want))
	}
	for i := range want {
		if got[i].Index != i {
			t.Fatalf("%s entry %d: Index %d", what, i, got[i].Index)
		}
		if !proto.Equal(got[i].Msg, want[i].Msg) {
			t.Fatalf("%s entry %d differs:\ngot  %v\nwant %v", what, i, got[i].Msg, want[i].Msg)
		}
		if !bytes.Equal(got[i].Trailer, want[i].Trailer) {
			t.Fatalf("%s entry %d: trailer %q, want %q", what, i, got[i].Trailer, want[i].Trailer)
		}
	}
}

// fuzzHandSeeds are small handcrafted images: valid ones of the trailer
// kinds and ones with unknown fields, and broken ones (hostile lengths,
// wrong framing, missing required fields). They do not need the fixtures.
func fuzzHandSeeds(tb testing.TB) [][]byte {
	tb.Helper()
	u32 := func(b []byte, v uint32) []byte { return byteOrder.AppendUint32(b, v) }
	framed := func(k *Kind) []byte {
		var b []byte
		if k.Framing != 0 {
			b = u32(b, uint32(k.Framing))
		}
		return u32(b, uint32(k.Magic))
	}
	enc := func(k *Kind, msgs []proto.Message, trailers [][]byte) []byte {
		var entries []*Entry
		for i, m := range msgs {
			var tr []byte
			if trailers != nil {
				tr = trailers[i]
			}
			entries = append(entries, &Entry{Msg: m, Trailer: tr})
		}
		b, err := EncodeBytes(k, entries)
		if err != nil {
			tb.Fatalf("hand seed %s: %v", k, err)
		}
		return b
	}
	// raw appends an entry with a length prefix and the given body.
	raw := func(b, body []byte) []byte { return append(u32(b, uint32(len(body))), body...) }
	u := proto.Uint32
	fdinfo, files, pipesData := KindNamed("FDINFO"), KindNamed("FILES"), KindNamed("PIPES_DATA")
	skq, tcp, stats, core := KindNamed("SK_QUEUES"), KindNamed("TCP_STREAM"), KindNamed("STATS"), KindNamed("CORE")

	// core entry whose task_core_entry carries fields we do not declare
	// (kept as unknown fields) and opaque thread_info bytes.
	var tc []byte
	for i, v := range []uint64{1, 0, 0, 0x400100, 0} {
		tc = protowire.AppendTag(tc, protowire.Number(i+1), protowire.VarintType)
		tc = protowire.AppendVarint(tc, v)
	}
	tc = protowire.AppendTag(tc, 6, protowire.BytesType)
	tc = protowire.AppendString(tc, "seed")
	tc = protowire.AppendTag(tc, 10, protowire.VarintType) // cg_set, unknown to us
	tc = protowire.AppendVarint(tc, 7)
	tc = protowire.AppendTag(tc, 11, protowire.BytesType) // signals_s, unknown to us
	tc = protowire.AppendBytes(tc, []byte{0x0a, 0x00})
	var coreBody []byte
	coreBody = protowire.AppendTag(coreBody, 1, protowire.VarintType)
	coreBody = protowire.AppendVarint(coreBody, 1)
	coreBody = protowire.AppendTag(coreBody, 2, protowire.BytesType)
	coreBody = protowire.AppendBytes(coreBody, []byte{0x08, 0x01, 0x12, 0x00})
	coreBody = protowire.AppendTag(coreBody, 3, protowire.BytesType)
	coreBody = protowire.AppendBytes(coreBody, tc)

	pdata := enc(pipesData, []proto.Message{&criupb.PipeDataEntry{PipeId: u(7), Bytes: u(5)}, &criupb.PipeDataEntry{PipeId: u(8), Bytes: u(0)}}, [][]byte{[]byte("hello"), nil})
	hostilePipe := raw(framed(pipesData), mustMarshal(tb, &criupb.PipeDataEntry{PipeId: u(7), Bytes: u(0xffffffff)}))

	return [][]byte{
		{},
		u32(nil, uint32(MagicCommon)),
		framed(KindNamed("INVENTORY")),
		framed(fdinfo),
		u32(framed(fdinfo), 0xffffffff),
		append(u32(framed(fdinfo), MaxEntrySize), 1, 2, 3),
		u32(framed(fdinfo), 0),
		append(u32(nil, uint32(MagicCommon)), u32(nil, uint32(MagicStats))...),
		enc(fdinfo, []proto.Message{
			&criupb.FdinfoEntry{Id: u(1), Flags: u(0), Type: criupb.FdTypes_PIPE.Enum(), Fd: u(0)},
			&criupb.FdinfoEntry{Id: u(2), Flags: u(1), Type: criupb.FdTypes_UNIXSK.Enum(), Fd: u(1000)},
		}, nil),
		enc(files, []proto.Message{&criupb.FileEntry{Type: criupb.FdTypes_PIPE.Enum(), Id: u(1),
			Pipe: &criupb.PipeEntry{Id: u(1), PipeId: u(7), Flags: u(0), Fown: &criupb.FownEntry{Uid: u(0), Euid: u(0), Signum: u(0), PidType: u(0), Pid: u(0)}}}}, nil),
		pdata,
		pdata[:len(pdata)-3],
		hostilePipe,
		append(bytes.Clone(hostilePipe), "short"...),
		enc(skq, []proto.Message{&criupb.SkPacketEntry{IdFor: u(3), Length: u(3)}, &criupb.SkPacketEntry{IdFor: u(3), Length: u(2),
			Scm: []*criupb.ScmEntry{{Type: u(1), Rights: []uint32{4, 5}}}}}, [][]byte{[]byte("abc"), []byte("de")}),
		enc(tcp, []proto.Message{&criupb.TcpStreamEntry{InqLen: u(2), InqSeq: u(1), OutqLen: u(3), OutqSeq: u(9), OptMask: u(0), SndWscale: u(7), MssClamp: u(65483)}},
			[][]byte{[]byte("inout")}),
		enc(stats, []proto.Message{&criupb.StatsEntry{}}, nil),
		raw(framed(core), coreBody),
	}
}

func mustMarshal(tb testing.TB, m proto.Message) []byte {
	tb.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// TestWriteFuzzSeedCorpus regenerates testdata/fuzz/FuzzDecode/hand-* from
// fuzzHandSeeds when FDRESTORE_WRITE_FUZZ_SEEDS=1.
func TestWriteFuzzSeedCorpus(t *testing.T) {
	if os.Getenv("FDRESTORE_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set FDRESTORE_WRITE_FUZZ_SEEDS=1 to regenerate the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, seed := range fuzzHandSeeds(t) {
		p := filepath.Join(dir, fmt.Sprintf("hand-%02d", i))
		if err := os.WriteFile(p, []byte(fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", seed)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestHandSeedsDecode: the valid hand seeds decode (so the seeds exercise
// the round trip, not only the error paths), and every seed passes the fuzz
// checks.
func TestHandSeedsDecode(t *testing.T) {
	ok := 0
	for i, seed := range fuzzHandSeeds(t) {
		t.Run(fmt.Sprint(i), func(t *testing.T) { checkDecode(t, seed) })
		if _, entries, err := DecodeBytes(seed, "seed", nil); err == nil && len(entries) > 0 {
			ok++
		}
	}
	if ok < 7 {
		t.Errorf("only %d hand seeds decode to at least one entry", ok)
	}
}
