package images

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/fdrestore/fdrestore/proto/criupb"
	"google.golang.org/protobuf/proto"
)

// Writer encodes an image: the magics, then one length-prefixed entry (and
// its trailer) per Write. Re-encoding what a Reader decoded gives the same
// bytes: fields are written in field-number order, unknown fields last,
// as CRIU does.
type Writer struct {
	kind *Kind
	w    *bufio.Writer
	name string
	n    int
	buf  []byte
	err  error
	// rawGhost: entry 0 of a ghost image without chunks was written; its
	// content runs to the end of the file, so nothing may follow.
	rawGhost bool
}

// NewWriter writes the magics of kind k to w and returns a Writer for its
// entries. name is used in errors. Call Flush (or Close for a file) at the
// end.
func NewWriter(w io.Writer, k *Kind, name string) (*Writer, error) {
	wr := &Writer{kind: k, w: bufio.NewWriterSize(w, 64<<10), name: name}
	if k.Framing != 0 {
		wr.u32(uint32(k.Framing))
	}
	wr.u32(uint32(k.Magic))
	return wr, wr.err
}

func (w *Writer) u32(v uint32) {
	if w.err != nil {
		return
	}
	var b [4]byte
	byteOrder.PutUint32(b[:], v)
	_, w.err = w.w.Write(b[:])
}

// Write appends one entry and its trailer. The trailer's length must be
// what the entry says (e.g. pipe_data_entry.bytes).
func (w *Writer) Write(m proto.Message, trailer []byte) error {
	if w.err != nil {
		return w.err
	}
	if w.kind.Trailer == GhostTrailer {
		if err := checkGhostWrite(w.name, w.n, w.rawGhost, m, trailer); err != nil { // ghost.go
			return err
		}
		if w.n == 0 {
			w.rawGhost = !m.(*criupb.GhostFileEntry).GetChunks()
		}
	} else if want := w.kind.TrailerLen(m); want != uint64(len(trailer)) {
		return fmt.Errorf("%s entry %d: entry announces a %d-byte payload, got %d bytes", w.name, w.n, want, len(trailer))
	}
	b, err := proto.MarshalOptions{}.MarshalAppend(w.buf[:0], m)
	if err != nil {
		return fmt.Errorf("%s entry %d: encode %s: %w", w.name, w.n, m.ProtoReflect().Descriptor().Name(), err)
	}
	w.buf = b
	if len(b) > MaxEntrySize {
		return fmt.Errorf("%s entry %d: %d-byte entry exceeds the %d-byte limit", w.name, w.n, len(b), MaxEntrySize)
	}
	w.u32(uint32(len(b)))
	if w.err == nil {
		_, w.err = w.w.Write(b)
	}
	if w.err == nil && len(trailer) > 0 {
		_, w.err = w.w.Write(trailer)
	}
	if w.err != nil {
		return fmt.Errorf("%s entry %d: %w", w.name, w.n, w.err)
	}
	w.n++
	return nil
}

// Flush writes buffered data to the underlying writer.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	if err := w.w.Flush(); err != nil {
		return fmt.Errorf("%s: %w", w.name, err)
	}
	return nil
}

// WriteFile writes a whole image file atomically (temporary file, then
// rename). Each entry's trailer is taken from the Entry.
func WriteFile(path string, k *Kind, entries []*Entry) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	fail := func(err error) error {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	w, err := NewWriter(tmp, k, filepath.Base(path))
	if err != nil {
		return fail(err)
	}
	for _, e := range entries {
		if err := w.Write(e.Msg, e.Trailer); err != nil {
			return fail(err)
		}
	}
	if err := w.Flush(); err != nil {
		return fail(err)
	}
	if err := tmp.Chmod(0o600); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// EncodeBytes encodes a whole image in memory.
func EncodeBytes(k *Kind, entries []*Entry) ([]byte, error) {
	var sb bytes.Buffer
	w, err := NewWriter(&sb, k, k.Name)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if err := w.Write(e.Msg, e.Trailer); err != nil {
			return nil, err
		}
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	return sb.Bytes(), nil
}
