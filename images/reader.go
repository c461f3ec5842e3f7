package images

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/proto"
)

// MaxEntrySize bounds the protobuf part of one entry. CRIU's largest entries
// (core with its register sets, mm with many VMAs) stay far below it.
const MaxEntrySize = 64 << 20

// byteOrder is the order of magics and lengths: CRIU writes them in the
// host's native order.
var byteOrder = binary.NativeEndian

// Entry is one decoded image entry and the raw bytes that followed it.
type Entry struct {
	Index   int           // position in the image, from 0
	Offset  int64         // byte offset of the entry's length prefix
	Msg     proto.Message // the decoded entry
	Trailer []byte        // raw payload after the entry (nil for most kinds)
}

// Reader decodes one image file entry by entry. Every length is checked
// against what remains of the file before anything is allocated, so a
// hostile length costs nothing.
type Reader struct {
	name   string
	kind   *Kind
	r      *bufio.Reader
	remain int64 // bytes left in the file; -1 when unknown
	off    int64
	index  int
	buf    []byte
	fast   fastDec // fastdec.go
	ents   []Entry // room for the next entries
}

// NewReader reads the magics at the start of r and returns a Reader for the
// entries after them. name is used in errors. size is the number of bytes r
// holds, or -1 when unknown (then lengths are only checked against
// MaxEntrySize and the data actually present). want, when not nil, is the
// kind the file must hold.
func NewReader(r io.Reader, name string, size int64, want *Kind) (*Reader, error) {
	bufSize := 64 << 10
	if size >= 0 && size < int64(bufSize) {
		bufSize = int(size) // bufio rounds tiny sizes up to its minimum
	}
	rd := &Reader{name: name, r: bufio.NewReaderSize(r, bufSize), remain: size}
	first, err := rd.u32("magic")
	if err != nil {
		return nil, err
	}
	m := Magic(first)
	if m == MagicCommon || m == MagicService {
		second, err := rd.u32("magic")
		if err != nil {
			return nil, err
		}
		k := KindOf(Magic(second))
		switch {
		case k == nil:
			return nil, errf(name, -1, 4, "magic", ErrBadMagic, "unknown image magic %#08x", second)
		case k.Framing != m:
			return nil, errf(name, -1, 0, "magic", ErrBadMagic, "%s image framed by %s, want %s", k.Name, m, k.Framing)
		}
		rd.kind = k
	} else {
		k := KindOf(m)
		if k == nil || k.Framing != 0 {
			return nil, errf(name, -1, 0, "magic", ErrBadMagic, "%#08x is neither a framing magic nor the inventory magic", first)
		}
		rd.kind = k
	}
	if want != nil && rd.kind != want {
		return nil, errf(name, -1, 0, "magic", ErrBadMagic, "holds %s, want %s", rd.kind.Name, want.Name)
	}
	return rd, nil
}

// Kind returns the kind of image being read.
func (r *Reader) Kind() *Kind { return r.kind }

// Name returns the file name used in errors.
func (r *Reader) Name() string { return r.name }

func (r *Reader) u32(field string) (uint32, error) {
	var b [4]byte
	n, err := io.ReadFull(r.r, b[:])
	if err != nil {
		if n == 0 && errors.Is(err, io.EOF) && field == "length" {
			return 0, io.EOF
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, errf(r.name, r.entryIndex(field), r.off, field, ErrTruncated, "%d of 4 bytes", n)
		}
		return 0, &FormatError{File: r.name, Entry: r.entryIndex(field), Offset: r.off, Field: field, Err: err}
	}
	r.off += 4
	if r.remain >= 0 {
		r.remain -= 4
	}
	return byteOrder.Uint32(b[:]), nil
}

func (r *Reader) entryIndex(field string) int {
	if field == "magic" {
		return -1
	}
	return r.index
}

// readN reads n bytes into a reusable or fresh buffer after checking n
// against what remains.
func (r *Reader) readN(n uint64, field string, start int64, reuse bool) ([]byte, error) {
	if r.remain >= 0 && n > uint64(r.remain) {
		// The file ends before the bytes its length announces: it is
		// truncated, or the length is too large. Say both.
		return nil, &FormatError{File: r.name, Entry: r.index, Offset: start, Field: field,
			Err: fmt.Errorf("%w (%w): %d bytes wanted, %d left in the file", ErrTruncated, ErrTooLarge, n, r.remain)}
	}
	if r.remain < 0 && n > MaxEntrySize && field == "length" {
		return nil, errf(r.name, r.index, start, field, ErrTooLarge, "%d bytes exceeds the %d-byte entry limit", n, MaxEntrySize)
	}
	var b []byte
	if reuse && (r.remain >= 0 || n <= uint64(cap(r.buf))) {
		if uint64(cap(r.buf)) < n {
			r.buf = make([]byte, n)
		}
		b = r.buf[:n]
	} else if r.remain >= 0 {
		b = make([]byte, n)
	} else {
		// Size unknown: grow with the data actually present, never by the
		// claimed length alone.
		var got []byte
		lr := io.LimitReader(r.r, int64(n))
		got, err := io.ReadAll(lr)
		if err != nil {
			return nil, &FormatError{File: r.name, Entry: r.index, Offset: r.off, Field: field, Err: err}
		}
		r.off += int64(len(got))
		if uint64(len(got)) < n {
			return nil, errf(r.name, r.index, start, field, ErrTruncated, "%d of %d bytes", len(got), n)
		}
		return got, nil
	}
	got, err := io.ReadFull(r.r, b)
	r.off += int64(got)
	if r.remain >= 0 {
		r.remain -= int64(got)
	}
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, errf(r.name, r.index, start, field, ErrTruncated, "%d of %d bytes", got, n)
		}
		return nil, &FormatError{File: r.name, Entry: r.index, Offset: start, Field: field, Err: err}
	}
	return b, nil
}

// Next decodes the next entry. It returns io.EOF (unwrapped) after the last
// entry, and a *FormatError for anything malformed.
func (r *Reader) Next() (*Entry, error) {
	if r.kind.Trailer == GhostTrailer {
		return r.nextGhost() // ghost.go
	}
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
	msg := r.fast.decode(r.kind, body)
	if msg == nil {
		msg = r.kind.NewEntry()
		if err := proto.Unmarshal(body, msg); err != nil {
			return nil, errf(r.name, r.index, start, string(msg.ProtoReflect().Descriptor().Name()), ErrBadEntry, "%v", err)
		}
	}
	if len(r.ents) == 0 {
		r.ents = make([]Entry, allocChunk(r.index))
	}
	e := &r.ents[0]
	r.ents = r.ents[1:]
	*e = Entry{Index: r.index, Offset: start, Msg: msg}
	if tl := r.kind.TrailerLen(msg); tl > 0 || r.kind.Trailer != NoTrailer {
		e.Trailer, err = r.readN(tl, "payload", r.off, false)
		if err != nil {
			return nil, err
		}
	}
	r.index++
	return e, nil
}

// All decodes every remaining entry.
func (r *Reader) All() ([]*Entry, error) {
	var out []*Entry
	for {
		e, err := r.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, e)
	}
}

// ReadFile decodes a whole image file. want, when not nil, is the kind the
// file must hold.
func ReadFile(path string, want *Kind) (*Kind, []*Entry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	size := st.Size()
	if !st.Mode().IsRegular() {
		size = -1 // unknown: lengths are checked against what arrives
	}
	r, err := NewReader(f, filepath.Base(path), size, want)
	if err != nil {
		return nil, nil, err
	}
	entries, err := r.All()
	return r.kind, entries, err
}

// DecodeBytes decodes an image held in memory; name is used in errors.
func DecodeBytes(data []byte, name string, want *Kind) (*Kind, []*Entry, error) {
	r, err := NewReader(bytes.NewReader(data), name, int64(len(data)), want)
	if err != nil {
		return nil, nil, err
	}
	entries, err := r.All()
	return r.kind, entries, err
}
