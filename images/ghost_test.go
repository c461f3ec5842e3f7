package images

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fdrestore/fdrestore/proto/criupb"
	"google.golang.org/protobuf/proto"
)

func testGhostEntry(chunks bool, size uint64) *criupb.GhostFileEntry {
	return &criupb.GhostFileEntry{
		Uid: proto.Uint32(1), Gid: proto.Uint32(2), Mode: proto.Uint32(0o100640),
		Dev: proto.Uint32(8 << 20), Ino: proto.Uint64(77),
		Atim:   &criupb.Timeval{TvSec: proto.Uint64(10), TvUsec: proto.Uint64(20)},
		Mtim:   &criupb.Timeval{TvSec: proto.Uint64(30), TvUsec: proto.Uint64(40)},
		Chunks: proto.Bool(chunks), Size: proto.Uint64(size),
	}
}

func testGhosts() map[string]*Ghost {
	return map[string]*Ghost{
		"raw":          {ID: 1, Entry: testGhostEntry(false, 5), Data: []byte("hello")},
		"raw-empty":    {ID: 2, Entry: testGhostEntry(false, 0), Data: []byte{}},
		"chunked":      {ID: 3, Entry: testGhostEntry(true, 9000), Chunks: []GhostChunk{{0, []byte("abc")}, {4096, bytes.Repeat([]byte{7}, 4904)}}},
		"chunked-hole": {ID: 0x1f, Entry: testGhostEntry(true, 1<<20)},
	}
}

func TestGhostRoundTrip(t *testing.T) {
	for name, g := range testGhosts() {
		t.Run(name, func(t *testing.T) {
			b, err := EncodeGhost(g)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ReadGhost(bytes.NewReader(b), GhostFileName(g.ID), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got.Entry, g.Entry) || !bytes.Equal(got.Data, g.Data) || len(got.Chunks) != len(g.Chunks) || got.Size() != g.Size() {
				t.Fatalf("read back %+v, want %+v", got, g)
			}
			for i := range g.Chunks {
				if got.Chunks[i].Off != g.Chunks[i].Off || !bytes.Equal(got.Chunks[i].Data, g.Chunks[i].Data) {
					t.Errorf("chunk %d differs", i)
				}
			}
			again, err := EncodeGhost(got)
			if err != nil || !bytes.Equal(again, b) {
				t.Errorf("re-encoding differs (%v)", err)
			}
			// The generic reader and writer frame it the same way.
			k, es, err := DecodeBytes(b, "x", KindForFile(GhostFileName(g.ID)))
			if err != nil {
				t.Fatal(err)
			}
			if k.Name != "GHOST_FILE" || len(es) != 1+len(g.Chunks) {
				t.Fatalf("generic decode: %s, %d entries", k.Name, len(es))
			}
			if again, err := EncodeBytes(k, es); err != nil || !bytes.Equal(again, b) {
				t.Errorf("generic re-encoding differs (%v)", err)
			}
			// Unknown size (a pipe): same result.
			if got, err := ReadGhost(bytes.NewReader(b), "x", -1); err != nil || got.Size() != g.Size() {
				t.Errorf("size unknown: %v", err)
			}
		})
	}
	if GhostFileName(0x1f) != "ghost-file-1f.img" {
		t.Errorf("GhostFileName(0x1f) = %s", GhostFileName(0x1f))
	}
}

// ghostBytes assembles a ghost image from raw parts: the magics, then
// each part length-prefixed when it is a message and as is otherwise.
func ghostBytes(parts ...any) []byte {
	var b []byte
	u32 := func(v uint32) { b = byteOrder.AppendUint32(b, v) }
	u32(uint32(MagicCommon))
	u32(uint32(MagicGhostFile))
	for _, p := range parts {
		switch p := p.(type) {
		case proto.Message:
			m, _ := proto.Marshal(p)
			u32(uint32(len(m)))
			b = append(b, m...)
		case uint32: // a bare length
			u32(p)
		case []byte:
			b = append(b, p...)
		case string:
			b = append(b, p...)
		}
	}
	return b
}

func chunk(off, n uint64) *criupb.GhostChunkEntry {
	return &criupb.GhostChunkEntry{Off: proto.Uint64(off), Len: proto.Uint64(n)}
}

func TestGhostCorrupt(t *testing.T) {
	ok := ghostBytes(testGhostEntry(true, 100), chunk(0, 3), "abc", chunk(50, 2), "xy")
	if _, err := ReadGhost(bytes.NewReader(ok), "ok", int64(len(ok))); err != nil {
		t.Fatalf("valid image: %v", err)
	}
	cases := []struct {
		name     string
		data     []byte
		sentinel error
		entry    int
		field    string
	}{
		{"no entry", ghostBytes(), ErrTruncated, 0, "ghost_file_entry"},
		{"truncated magic", ghostBytes()[:6], ErrTruncated, -1, "magic"},
		{"wrong magic", append(byteOrder.AppendUint32(byteOrder.AppendUint32(nil, uint32(MagicCommon)), uint32(MagicPipesData)), ok[8:]...), ErrBadMagic, -1, "magic"},
		{"hostile entry length", ghostBytes(uint32(0xfffffff0)), ErrTooLarge, 0, "length"},
		{"garbage entry", ghostBytes(uint32(3), "\xff\xff\xff"), ErrBadEntry, 0, "ghost_file_entry"},
		{"missing required", ghostBytes(&criupb.GhostChunkEntry{Len: proto.Uint64(1)}), ErrBadEntry, 0, "ghost_file_entry"},
		{"hostile chunk length", ghostBytes(testGhostEntry(true, 100), chunk(0, 1<<62), "abc"), ErrTooLarge, 1, "payload"},
		{"truncated chunk", ghostBytes(testGhostEntry(true, 100), chunk(0, 10), "abc"), ErrTruncated, 1, "payload"},
		{"truncated chunk header", append(ghostBytes(testGhostEntry(true, 100), chunk(0, 3), "abc"), 9, 0), ErrTruncated, 2, "length"},
		{"overlapping chunks", ghostBytes(testGhostEntry(true, 100), chunk(0, 3), "abc", chunk(2, 2), "xy"), ErrInvalid, 2, "off"},
		{"unordered chunks", ghostBytes(testGhostEntry(true, 100), chunk(50, 2), "xy", chunk(0, 3), "abc"), ErrInvalid, 2, "off"},
		{"chunk beyond size", ghostBytes(testGhostEntry(true, 100), chunk(99, 2), "xy"), ErrInvalid, 1, "len"},
		{"chunk overflow", ghostBytes(testGhostEntry(true, 100), chunk(1<<64-1, 1), "x"), ErrInvalid, 1, "len"},
		{"raw size mismatch", ghostBytes(testGhostEntry(false, 100), "only this"), ErrInvalid, 0, "size"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ReadGhost(bytes.NewReader(c.data), "ghost-file-1.img", int64(len(c.data)))
			var fe *FormatError
			if !errors.As(err, &fe) || !errors.Is(err, c.sentinel) {
				t.Fatalf("got %v, want a FormatError wrapping %v", err, c.sentinel)
			}
			if fe.File != "ghost-file-1.img" || fe.Entry != c.entry || fe.Field != c.field {
				t.Errorf("error names file %q entry %d field %q, want entry %d field %q (%v)", fe.File, fe.Entry, fe.Field, c.entry, c.field, err)
			}
		})
	}
}

func TestGhostWriterChecks(t *testing.T) {
	k := KindNamed("GHOST_FILE")
	for name, es := range map[string][]*Entry{
		"chunk first":           {{Msg: chunk(0, 1), Trailer: []byte("x")}},
		"data after raw":        {{Msg: testGhostEntry(false, 1), Trailer: []byte("x")}, {Msg: chunk(1, 1), Trailer: []byte("y")}},
		"trailer on chunked":    {{Msg: testGhostEntry(true, 1), Trailer: []byte("x")}},
		"chunk length mismatch": {{Msg: testGhostEntry(true, 9)}, {Msg: chunk(0, 5), Trailer: []byte("x")}},
		"wrong message":         {{Msg: testGhostEntry(true, 9)}, {Msg: testGhostEntry(true, 9)}},
	} {
		if _, err := EncodeBytes(k, es); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
}

// ghostFixture returns a copy of the reg-files fixture, the REG file it
// remaps (the first regular file held by an fd) and a ghost matching it.
func ghostFixture(t *testing.T) (string, *File, *Ghost) {
	t.Helper()
	dir := liCopyFixture(t, "reg-files")
	set, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range set.FileOrder {
		r := f.Entry.GetReg()
		if f.Type == criupb.FdTypes_REG && len(f.Fds) > 0 && r.Size != nil && r.GetMode()&0o170000 == 0o100000 {
			e := testGhostEntry(false, r.GetSize())
			e.Mode = proto.Uint32(r.GetMode())
			return dir, f, &Ghost{ID: 5, Entry: e, Data: bytes.Repeat([]byte("g"), int(r.GetSize()))}
		}
	}
	t.Fatal("reg-files has no regular file with a size")
	return "", nil, nil
}

func writeGhostSet(t *testing.T, dir string, remaps []*criupb.RemapFilePathEntry, gs ...*Ghost) {
	t.Helper()
	var es []*Entry
	for _, r := range remaps {
		es = append(es, &Entry{Msg: r})
	}
	if err := WriteFile(filepath.Join(dir, "remap-fpath.img"), KindNamed("REMAP_FPATH"), es); err != nil {
		t.Fatal(err)
	}
	for _, g := range gs {
		b, err := EncodeGhost(g)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, GhostFileName(g.ID)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func ghostRemap(orig, id uint32) *criupb.RemapFilePathEntry {
	return &criupb.RemapFilePathEntry{OrigId: proto.Uint32(orig), RemapId: proto.Uint32(id), RemapType: criupb.RemapType_GHOST.Enum()}
}

func TestLoadGhost(t *testing.T) {
	dir, f, g := ghostFixture(t)
	writeGhostSet(t, dir, []*criupb.RemapFilePathEntry{ghostRemap(f.ID, g.ID)}, g)
	set, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	lg := set.Ghosts[g.ID]
	if lg == nil || len(lg.Files) != 1 || lg.Files[0].ID != f.ID || lg.Path != f.Entry.GetReg().GetName() || !bytes.Equal(lg.Data, g.Data) {
		t.Fatalf("loaded ghost %+v", lg)
	}

	// Images from before remap_type flag ghosts in remap_id.
	dir, f, g = ghostFixture(t)
	writeGhostSet(t, dir, []*criupb.RemapFilePathEntry{{OrigId: proto.Uint32(f.ID), RemapId: proto.Uint32(g.ID | 1<<31)}}, g)
	if set, err := Load(dir); err != nil || set.Ghosts[g.ID] == nil {
		t.Fatalf("legacy remap: %v", err)
	}
}

func TestLoadGhostInvalid(t *testing.T) {
	for _, c := range []struct {
		name     string
		edit     func(f *File, g *Ghost) ([]*criupb.RemapFilePathEntry, []*Ghost)
		sentinel error
		file     string
		field    string
		msg      string
	}{
		{"missing image", func(f *File, g *Ghost) ([]*criupb.RemapFilePathEntry, []*Ghost) {
			return []*criupb.RemapFilePathEntry{ghostRemap(f.ID, g.ID)}, nil
		}, ErrMissing, "ghost-file-5.img", "", "not found"},
		{"size mismatch", func(f *File, g *Ghost) ([]*criupb.RemapFilePathEntry, []*Ghost) {
			g.Data = append(g.Data, 'x')
			g.Entry.Size = proto.Uint64(uint64(len(g.Data)))
			return []*criupb.RemapFilePathEntry{ghostRemap(f.ID, g.ID)}, []*Ghost{g}
		}, ErrInvalid, "files.img", "reg.size", "holds a"},
		{"mode mismatch", func(f *File, g *Ghost) ([]*criupb.RemapFilePathEntry, []*Ghost) {
			g.Entry.Mode = proto.Uint32(0o100777)
			return []*criupb.RemapFilePathEntry{ghostRemap(f.ID, g.ID)}, []*Ghost{g}
		}, ErrInvalid, "files.img", "reg.mode", "mode"},
		{"corrupt image", func(f *File, g *Ghost) ([]*criupb.RemapFilePathEntry, []*Ghost) {
			g.Entry.Chunks = proto.Bool(true)
			g.Data = nil
			g.Chunks = []GhostChunk{{Off: g.Entry.GetSize(), Data: []byte("x")}}
			return []*criupb.RemapFilePathEntry{ghostRemap(f.ID, g.ID)}, []*Ghost{g}
		}, ErrInvalid, "ghost-file-5.img", "len", "beyond the file size"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir, f, g := ghostFixture(t)
			remaps, gs := c.edit(f, g)
			writeGhostSet(t, dir, remaps, gs...)
			_, err := Load(dir)
			var fe *FormatError
			if !errors.As(err, &fe) || !errors.Is(err, c.sentinel) {
				t.Fatalf("got %v, want a FormatError wrapping %v", err, c.sentinel)
			}
			if fe.File != c.file || fe.Field != c.field || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %v: want file %s field %q mentioning %q", err, c.file, c.field, c.msg)
			}
		})
	}
}

// FuzzGhost feeds ghost images to the generic decoder (checkDecode: no
// panic, bounded allocation, stable re-encoding) and to ReadGhost.
func FuzzGhost(f *testing.F) {
	for _, g := range testGhosts() {
		b, err := EncodeGhost(g)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(ghostBytes(testGhostEntry(true, 100), chunk(0, 1<<62), "abc"))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkDecode(t, data)
		g, err := ReadGhost(bytes.NewReader(data), "fuzz.img", int64(len(data)))
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) || fe.File != "fuzz.img" {
				t.Fatalf("error %v is not a FormatError naming the file", err)
			}
			return
		}
		b, err := EncodeGhost(g)
		if err != nil {
			t.Fatal(err)
		}
		if g2, err := ReadGhost(bytes.NewReader(b), "fuzz.img", int64(len(b))); err != nil || g2.Size() != g.Size() {
			t.Fatalf("re-read: %v", err)
		}
	})
}
