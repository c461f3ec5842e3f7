package images

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/fdrestore/fdrestore/proto/criupb"
	"google.golang.org/protobuf/proto"
)

// Ghost files: a regular file that was unlinked while open is saved with
// its content in ghost-file-<remap id hex>.img, and every description of it
// has a remap-fpath.img entry (remap_type GHOST) pointing there.
//
// The image is a ghost_file_entry followed by either the raw content up to
// the end of the file (chunks unset or false), or (chunks true) repeated
// ghost_chunk_entry records, each followed by len bytes of data for offset
// off; what lies between chunks is a hole. Through the generic Reader a
// ghost image reads as entry 0 = the ghost_file_entry (its Trailer the raw
// content when unchunked), then one entry per chunk (Trailer = its data);
// Writer takes the same entries back and writes the same bytes.

// remapGhostFlag marks a ghost in remap_id in images older than the
// remap_type field (CRIU's REMAP_GHOST).
const remapGhostFlag = 1 << 31

// GhostFileName returns the name of the image of ghost remap id.
func GhostFileName(id uint32) string { return fmt.Sprintf("ghost-file-%x.img", id) }

// RemapOf returns the type of a remap-fpath entry and the id it names.
// Images from before remap_type carry the ghost flag in remap_id instead.
func RemapOf(r *criupb.RemapFilePathEntry) (criupb.RemapType, uint32) {
	if r.RemapType != nil {
		return r.GetRemapType(), r.GetRemapId()
	}
	if r.GetRemapId()&remapGhostFlag != 0 {
		return criupb.RemapType_GHOST, r.GetRemapId() &^ remapGhostFlag
	}
	return criupb.RemapType_LINKED, r.GetRemapId()
}

// GhostChunk is one run of data of a ghost file.
type GhostChunk struct {
	Off  uint64
	Data []byte
}

// Ghost is a deleted file saved in a ghost-file image.
type Ghost struct {
	ID    uint32 // remap id: the image is GhostFileName(ID)
	Entry *criupb.GhostFileEntry
	// Data is the content of an unchunked ghost (Entry.chunks false).
	Data []byte
	// Chunks are the runs of data of a chunked ghost, by offset.
	Chunks []GhostChunk

	// Set by Load: the REG descriptions remapped to this ghost, in
	// files.img order, and the path of the first of them (the file's name
	// before it was unlinked).
	Files []*File
	Path  string
}

// Chunked reports whether the image stores the content in chunks.
func (g *Ghost) Chunked() bool { return g.Entry.GetChunks() }

// Size returns the size of the file: the entry's size when recorded, and
// otherwise the end of its data.
func (g *Ghost) Size() uint64 {
	if g.Entry.Size != nil {
		return g.Entry.GetSize()
	}
	if !g.Chunked() {
		return uint64(len(g.Data))
	}
	if n := len(g.Chunks); n > 0 {
		return g.Chunks[n-1].Off + uint64(len(g.Chunks[n-1].Data))
	}
	return 0
}

// Runs returns the data of the file as runs by offset (one run at 0 for an
// unchunked ghost); the rest of the file up to Size is holes.
func (g *Ghost) Runs() []GhostChunk {
	if !g.Chunked() {
		if len(g.Data) == 0 {
			return nil
		}
		return []GhostChunk{{Off: 0, Data: g.Data}}
	}
	return g.Chunks
}

// nextGhost is Reader.Next for ghost images.
func (r *Reader) nextGhost() (*Entry, error) {
	start := r.off
	n, err := r.u32("length")
	if err != nil {
		return nil, err
	}
	if n > MaxEntrySize {
		return nil, errf(r.name, r.index, start, "length", ErrTooLarge, "%d bytes exceeds the %d-byte entry limit", n, MaxEntrySize)
	}
	body, err := r.readN(uint64(n), "length", start, true)
	if err != nil {
		return nil, err
	}
	var msg proto.Message = new(criupb.GhostChunkEntry)
	if r.index == 0 {
		msg = new(criupb.GhostFileEntry)
	}
	if err := proto.Unmarshal(body, msg); err != nil {
		return nil, errf(r.name, r.index, start, string(msg.ProtoReflect().Descriptor().Name()), ErrBadEntry, "%v", err)
	}
	e := &Entry{Index: r.index, Offset: start, Msg: msg}
	switch m := msg.(type) {
	case *criupb.GhostFileEntry:
		if !m.GetChunks() {
			// The content runs to the end of the file.
			if e.Trailer, err = r.rest("content"); err != nil {
				return nil, err
			}
		}
	case *criupb.GhostChunkEntry:
		if e.Trailer, err = r.readN(m.GetLen(), "payload", r.off, false); err != nil {
			return nil, err
		}
	}
	r.index++
	return e, nil
}

// rest reads everything up to the end of the file.
func (r *Reader) rest(field string) ([]byte, error) {
	if r.remain >= 0 {
		return r.readN(uint64(r.remain), field, r.off, false)
	}
	// Size unknown: grow with the data actually present.
	start := r.off
	b, err := io.ReadAll(r.r)
	r.off += int64(len(b))
	if err != nil {
		return nil, &FormatError{File: r.name, Entry: r.index, Offset: start, Field: field, Err: err}
	}
	if b == nil {
		b = []byte{}
	}
	return b, nil
}

// checkGhostWrite checks entry n of a ghost image before Writer writes it.
// raw says entry 0 was an unchunked ghost_file_entry.
func checkGhostWrite(name string, n int, raw bool, m proto.Message, trailer []byte) error {
	if n == 0 {
		g, ok := m.(*criupb.GhostFileEntry)
		if !ok {
			return fmt.Errorf("%s entry 0: a ghost image starts with a ghost_file_entry, not %s", name, m.ProtoReflect().Descriptor().Name())
		}
		if g.GetChunks() && len(trailer) > 0 {
			return fmt.Errorf("%s entry 0: a chunked ghost's data goes in its chunks, got a %d-byte trailer", name, len(trailer))
		}
		return nil
	}
	if raw {
		return fmt.Errorf("%s entry %d: nothing may follow the content of an unchunked ghost", name, n)
	}
	c, ok := m.(*criupb.GhostChunkEntry)
	if !ok {
		return fmt.Errorf("%s entry %d: want a ghost_chunk_entry, not %s", name, n, m.ProtoReflect().Descriptor().Name())
	}
	if c.GetLen() != uint64(len(trailer)) {
		return fmt.Errorf("%s entry %d: chunk announces %d bytes, got %d", name, n, c.GetLen(), len(trailer))
	}
	return nil
}

// ReadGhost decodes a ghost image from r, which holds size bytes (-1 when
// unknown); name is used in errors. Besides the framing it checks that
// chunks come in offset order without overlapping, and that the data fits
// the recorded size.
func ReadGhost(r io.Reader, name string, size int64) (*Ghost, error) {
	rd, err := NewReader(r, name, size, KindNamed("GHOST_FILE"))
	if err != nil {
		return nil, err
	}
	entries, err := rd.All()
	if err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return nil, errf(name, 0, rd.off, "ghost_file_entry", ErrTruncated, "the image ends before its ghost_file_entry")
	}
	g := &Ghost{Entry: entries[0].Msg.(*criupb.GhostFileEntry)}
	if !g.Chunked() {
		g.Data = entries[0].Trailer
		if g.Entry.Size != nil && g.Entry.GetSize() != uint64(len(g.Data)) {
			return nil, errf(name, 0, entries[0].Offset, "size", ErrInvalid, "the file is %d bytes but the image holds %d bytes of content", g.Entry.GetSize(), len(g.Data))
		}
		return g, nil
	}
	var end uint64
	for _, e := range entries[1:] {
		c := e.Msg.(*criupb.GhostChunkEntry)
		off, n := c.GetOff(), c.GetLen()
		switch {
		case off < end:
			return nil, errf(name, e.Index, e.Offset, "off", ErrInvalid, "chunk at %d overlaps or precedes the previous one (which ends at %d)", off, end)
		case off+n < off:
			return nil, errf(name, e.Index, e.Offset, "len", ErrInvalid, "chunk at %d of %d bytes overflows", off, n)
		case g.Entry.Size != nil && off+n > g.Entry.GetSize():
			return nil, errf(name, e.Index, e.Offset, "len", ErrInvalid, "chunk [%d, %d) lies beyond the file size %d", off, off+n, g.Entry.GetSize())
		}
		end = off + n
		g.Chunks = append(g.Chunks, GhostChunk{Off: off, Data: e.Trailer})
	}
	return g, nil
}

// ReadGhostFile reads the ghost image at path.
func ReadGhostFile(path string) (*Ghost, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if !st.Mode().IsRegular() {
		size = -1
	}
	return ReadGhost(f, filepath.Base(path), size)
}

// GhostEntries returns g as image entries (see the top of this file).
func GhostEntries(g *Ghost) []*Entry {
	out := []*Entry{{Msg: g.Entry}}
	if !g.Chunked() {
		out[0].Trailer = g.Data
		if out[0].Trailer == nil {
			out[0].Trailer = []byte{}
		}
		return out
	}
	for _, c := range g.Chunks {
		out = append(out, &Entry{Msg: &criupb.GhostChunkEntry{Len: proto.Uint64(uint64(len(c.Data))), Off: proto.Uint64(c.Off)}, Trailer: c.Data})
	}
	return out
}

// WriteGhost writes g as a ghost image to w; name is used in errors.
func WriteGhost(w io.Writer, name string, g *Ghost) error {
	wr, err := NewWriter(w, KindNamed("GHOST_FILE"), name)
	if err != nil {
		return err
	}
	for _, e := range GhostEntries(g) {
		if err := wr.Write(e.Msg, e.Trailer); err != nil {
			return err
		}
	}
	return wr.Flush()
}

// EncodeGhost encodes g as a whole ghost image.
func EncodeGhost(g *Ghost) ([]byte, error) {
	var b bytes.Buffer
	if err := WriteGhost(&b, GhostFileName(g.ID), g); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// ghosts loads the ghost image of every GHOST remap and checks it against
// the descriptions remapped to it: each must be a REG description whose
// recorded size and mode are the ghost's.
func (l *loader) ghosts() error {
	const name = "remap-fpath.img"
	s := l.s
	var origs []uint32
	for id := range s.Remaps {
		origs = append(origs, id)
	}
	sort.Slice(origs, func(i, j int) bool { return s.Files[origs[i]].Index < s.Files[origs[j]].Index })
	for _, id := range origs {
		r := s.Remaps[id]
		typ, rid := RemapOf(r)
		if typ != criupb.RemapType_GHOST {
			continue
		}
		f := s.Files[id]
		if f.Type != criupb.FdTypes_REG {
			return errf(name, -1, -1, "orig_id", ErrInvalid, "%s is remapped to ghost %#x, but only REG descriptions can be", f.Name(), rid)
		}
		g := s.Ghosts[rid]
		if g == nil {
			img := GhostFileName(rid)
			p := filepath.Join(l.dir, img)
			if st, err := os.Stat(p); err != nil {
				if os.IsNotExist(err) {
					return errf(img, -1, -1, "", ErrMissing, "not found in %s (ghost of %s)", l.dir, f.Name())
				}
				return err
			} else if !st.Mode().IsRegular() {
				return errf(img, -1, -1, "", ErrInvalid, "not a regular file (mode %v)", st.Mode())
			}
			var err error
			if g, err = ReadGhostFile(p); err != nil {
				return err
			}
			g.ID, g.Path = rid, f.Entry.GetReg().GetName()
			s.Ghosts[rid] = g
		}
		reg := f.Entry.GetReg()
		if reg.Size != nil && reg.GetSize() != g.Size() {
			return errf("files.img", f.Index, -1, "reg.size", ErrInvalid, "%s is %d bytes, but its ghost %s holds a %d-byte file", f.Name(), reg.GetSize(), GhostFileName(rid), g.Size())
		}
		if reg.Mode != nil && reg.GetMode() != g.Entry.GetMode() {
			return errf("files.img", f.Index, -1, "reg.mode", ErrInvalid, "%s has mode %#o, but its ghost %s has mode %#o", f.Name(), reg.GetMode(), GhostFileName(rid), g.Entry.GetMode())
		}
		g.Files = append(g.Files, f)
	}
	return nil
}
