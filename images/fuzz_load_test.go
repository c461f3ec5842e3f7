package images

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/fdrestore/fdrestore/proto/criupb"
	"google.golang.org/protobuf/proto"
)

// FuzzLoad input layout. The input picks one image file of one fixture and
// changes it; the rest of the fixture stays as CRIU wrote it, so the
// fuzzer mostly exercises the cross-image validation of Load rather than
// the decoder alone.
//
//	data[0]        fixture: index into the sorted fixture directories, mod their number
//	data[1] & 0x7f file: index into that fixture's fuzzLoadFiles, mod their number
//	data[1] & 0x80 mode: 0 replaces the file's content with data[2:];
//	               1 XORs data[6:] into the original content at offset
//	               LE32(data[2:6]) mod (size+1), extending the file when
//	               the patch runs past its end
//
// Files Load reads but the fixture lacks (fuzzLoadExtra) are candidates
// too: changing one creates it.
const (
	fuzzLoadHeader  = 2
	fuzzLoadXOR     = 0x80
	fuzzLoadXORHead = 6
)

// fuzzLoadExtra are images Load reads that some fixtures lack; pipes.img
// stands for the legacy images Load must refuse.
var fuzzLoadExtra = []string{
	"fifo-data.img", "pipes-data.img", "pipes.img", "remap-fpath.img",
	"sk-queues.img", "tcp-stream-1.img", "tty-data.img", "tty-info.img",
}

// fuzzLoadReads reports whether Load reads image file name.
func fuzzLoadReads(name string) bool {
	switch name {
	case "inventory.img", "pstree.img", "files.img", "pipes-data.img",
		"fifo-data.img", "tty-info.img", "tty-data.img", "sk-queues.img",
		"remap-fpath.img", "pipes.img":
		return true
	}
	for _, p := range []string{"core-", "ids-", "fs-", "fdinfo-", "tcp-stream-"} {
		if strings.HasPrefix(name, p) && strings.HasSuffix(name, ".img") {
			return true
		}
	}
	return false
}

// fuzzLoadFixture is one fixture copied once per fuzzing process.
type fuzzLoadFixture struct {
	name  string
	dir   string            // the process's own copy
	files []string          // candidate files, sorted
	orig  map[string][]byte // original contents; absent key: file absent
	other int64             // bytes of the copy's files that are not candidates
}

// fuzzLoadFixtures copies every fixture into base and lists its candidate
// files.
func fuzzLoadFixtures(t testing.TB, base string) []*fuzzLoadFixture {
	t.Helper()
	root := fixtureDir(t)
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var out []*fuzzLoadFixture
	for _, de := range ents {
		if !de.IsDir() {
			continue
		}
		fx := &fuzzLoadFixture{name: de.Name(), dir: filepath.Join(base, de.Name()), orig: map[string][]byte{}}
		if err := os.Mkdir(fx.dir, 0o755); err != nil {
			t.Fatal(err)
		}
		files, err := os.ReadDir(filepath.Join(root, de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if !f.Type().IsRegular() {
				continue
			}
			b, err := os.ReadFile(filepath.Join(root, de.Name(), f.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(fx.dir, f.Name()), b, 0o644); err != nil {
				t.Fatal(err)
			}
			if fuzzLoadReads(f.Name()) {
				fx.orig[f.Name()] = b
				fx.files = append(fx.files, f.Name())
			} else {
				fx.other += int64(len(b))
			}
		}
		for _, n := range fuzzLoadExtra {
			if _, ok := fx.orig[n]; !ok {
				fx.files = append(fx.files, n)
			}
		}
		sort.Strings(fx.files)
		out = append(out, fx)
	}
	if len(out) == 0 {
		t.Fatalf("no fixtures under %s", root)
	}
	return out
}

// fuzzLoadApply decodes a FuzzLoad input: the fixture, the file and its new
// content. ok is false for inputs too short to say.
func fuzzLoadApply(fxs []*fuzzLoadFixture, data []byte) (fx *fuzzLoadFixture, name string, content []byte, ok bool) {
	if len(data) < fuzzLoadHeader {
		return nil, "", nil, false
	}
	fx = fxs[int(data[0])%len(fxs)]
	name = fx.files[int(data[1]&^fuzzLoadXOR)%len(fx.files)]
	if data[1]&fuzzLoadXOR == 0 {
		return fx, name, data[fuzzLoadHeader:], true
	}
	if len(data) < fuzzLoadXORHead {
		return nil, "", nil, false
	}
	orig := fx.orig[name]
	off := int(binary.LittleEndian.Uint32(data[2:6]) % uint32(len(orig)+1))
	patch := data[fuzzLoadXORHead:]
	content = make([]byte, max(len(orig), off+len(patch)))
	copy(content, orig)
	for i, b := range patch {
		content[off+i] ^= b
	}
	return fx, name, content, true
}

// restore puts file name of the copy back as the fixture has it.
func (fx *fuzzLoadFixture) restore(name string) error {
	p := filepath.Join(fx.dir, name)
	if b, ok := fx.orig[name]; ok {
		return os.WriteFile(p, b, 0o644)
	}
	err := os.Remove(p)
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	return err
}

// size returns the copy's total bytes when file name holds n bytes.
func (fx *fuzzLoadFixture) size(name string, n int) int64 {
	total := fx.other + int64(n)
	for f, b := range fx.orig {
		if f != name {
			total += int64(len(b))
		}
	}
	return total
}

func FuzzLoad(f *testing.F) {
	fxs := fuzzLoadFixtures(f, f.TempDir())
	f.Fuzz(func(t *testing.T, data []byte) {
		fx, name, content, ok := fuzzLoadApply(fxs, data)
		if !ok {
			return
		}
		p := filepath.Join(fx.dir, name)
		if err := os.WriteFile(p, content, 0o644); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := fx.restore(name); err != nil {
				t.Fatal(err)
			}
		}()
		limit := 64*uint64(fx.size(name, len(content))) + 4<<20

		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		s, err := Load(fx.dir)
		runtime.ReadMemStats(&after)

		where := fmt.Sprintf("%s/%s (%d bytes)", fx.name, name, len(content))
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > limit {
			t.Fatalf("%s: Load allocated %d bytes, more than the %d-byte limit (64x the directory + 4 MiB)", where, alloc, limit)
		}
		if err != nil {
			if s != nil {
				t.Fatalf("%s: Load returned a Set with error %v", where, err)
			}
			if msg := checkLoadErrorShape(fx.dir, err); msg != "" {
				t.Fatalf("%s: %s: %v", where, msg, err)
			}
			t.Logf("%s: %v", where, err)
			return
		}
		if err := checkSet(s); err != nil {
			t.Fatalf("%s: Load accepted an inconsistent directory: %v", where, err)
		}
	})
}

// checkLoadErrorShape says what is wrong with an error Load returned for
// an existing directory, or returns "".
func checkLoadErrorShape(dir string, err error) string {
	var fe *FormatError
	if !errors.As(err, &fe) {
		var pe *fs.PathError
		if errors.As(err, &pe) && strings.Contains(err.Error(), dir) {
			return ""
		}
		return "error is neither a *FormatError nor an fs error naming the directory"
	}
	switch {
	case fe.File == "" || strings.ContainsRune(fe.File, '/'):
		return fmt.Sprintf("FormatError.File %q is not an image file name", fe.File)
	case fe.Err == nil:
		return "FormatError.Err is nil"
	case fe.Entry < -1 || fe.Offset < -1:
		return fmt.Sprintf("FormatError Entry %d Offset %d", fe.Entry, fe.Offset)
	case !strings.HasPrefix(err.Error(), fe.File):
		return "message does not start with the file name"
	}
	for _, s := range []error{ErrTruncated, ErrBadMagic, ErrTooLarge, ErrBadEntry, ErrInvalid, ErrMissing} {
		if errors.Is(err, s) {
			return ""
		}
	}
	return "FormatError wraps no sentinel"
}

// checkSet verifies what Load promises: nothing in a Set dangles.
func checkSet(s *Set) error {
	if len(s.Tasks) == 0 || s.Tasks[0].Parent != nil || s.Inventory == nil {
		return errors.New("no root task or inventory")
	}
	if len(s.TaskByPid) != len(s.Tasks) {
		return fmt.Errorf("%d tasks, %d pids", len(s.Tasks), len(s.TaskByPid))
	}
	if s.TaskByPid[s.Tasks[0].PPid] != nil {
		return fmt.Errorf("root pid %d has parent %d in the tree", s.Tasks[0].Pid, s.Tasks[0].PPid)
	}
	for i, t := range s.Tasks {
		if s.TaskByPid[t.Pid] != t || t.IDs == nil || t.Fds == nil {
			return fmt.Errorf("pid %d: not indexed, or no ids or fd table", t.Pid)
		}
		if i > 0 && (t.Parent == nil || t.Parent.Pid != t.PPid || s.TaskByPid[t.PPid] != t.Parent) {
			return fmt.Errorf("pid %d: parent %v, ppid %d", t.Pid, t.Parent, t.PPid)
		}
		if s.FdTables[t.IDs.GetFilesId()] != t.Fds {
			return fmt.Errorf("pid %d: fd table is not files_id %d", t.Pid, t.IDs.GetFilesId())
		}
	}
	for id, tbl := range s.FdTables {
		if tbl.ID != id {
			return fmt.Errorf("fd table %d filed under %d", tbl.ID, id)
		}
		for i, fd := range tbl.Fds {
			if i > 0 && tbl.Fds[i-1].Num >= fd.Num {
				return fmt.Errorf("fd table %d: fds not strictly ascending", id)
			}
			if fd.Table != tbl || tbl.Lookup(fd.Num) != fd || fd.File == nil || s.Files[fd.File.ID] != fd.File {
				return fmt.Errorf("fd table %d fd %d dangles", id, fd.Num)
			}
			if fd.Num >= 1<<30 {
				return fmt.Errorf("fd table %d: fd %d", id, fd.Num)
			}
		}
	}
	if len(s.FileOrder) != len(s.Files) {
		return fmt.Errorf("%d files in order, %d by id", len(s.FileOrder), len(s.Files))
	}
	for _, f := range s.FileOrder {
		if s.Files[f.ID] != f || f.Entry.GetId() != f.ID || f.Entry.GetType() != f.Type {
			return fmt.Errorf("%s: inconsistent with its entry", f.Name())
		}
		for _, fd := range f.Fds {
			if fd.File != f || fd.Table.Lookup(fd.Num) != fd {
				return fmt.Errorf("%s: fd %d dangles", f.Name(), fd.Num)
			}
		}
		switch f.Type {
		case criupb.FdTypes_UND, criupb.FdTypes_CTL_TTY, criupb.FdTypes_AUTOFS_PIPE:
			return fmt.Errorf("%s: type never stored in images", f.Name())
		case criupb.FdTypes_PIPE:
			if f.Pipe == nil || s.Pipes[f.Entry.GetPipe().GetPipeId()] != f.Pipe {
				return fmt.Errorf("%s: no pipe", f.Name())
			}
		case criupb.FdTypes_FIFO:
			if f.Pipe == nil || s.Fifos[f.Entry.GetFifo().GetPipeId()] != f.Pipe || f.Path == nil || f.Path.Type != criupb.FdTypes_REG {
				return fmt.Errorf("%s: no pipe or path", f.Name())
			}
		case criupb.FdTypes_TTY:
			if f.TTY == nil || s.TTYs[f.Entry.GetTty().GetTtyInfoId()] != f.TTY {
				return fmt.Errorf("%s: no tty", f.Name())
			}
			if f.Entry.GetTty().RegfId != nil && (f.Path == nil || f.Path.Type != criupb.FdTypes_REG) {
				return fmt.Errorf("%s: path is not REG", f.Name())
			}
		case criupb.FdTypes_EVENTPOLL:
			tables := map[*FdTable]bool{}
			for _, fd := range f.Fds {
				tables[fd.Table] = true
			}
			for i, tfd := range f.Entry.GetEpfd().GetTfd() {
				found := len(tables) == 0
				for tbl := range tables {
					found = found || tbl.Lookup(tfd.GetTfd()) != nil
				}
				if !found {
					return fmt.Errorf("%s: target %d (fd %d) resolves to nothing", f.Name(), i, tfd.GetTfd())
				}
			}
		}
	}
	for _, m := range []map[uint32]*Pipe{s.Pipes, s.Fifos} {
		for id, p := range m {
			if p.ID != id || len(p.Ends) == 0 {
				return fmt.Errorf("pipe %d: no ends", id)
			}
			if p.Size != 0 && uint64(len(p.Data)) > uint64(p.Size) {
				return fmt.Errorf("pipe %d: %d bytes queued in a %d-byte pipe", id, len(p.Data), p.Size)
			}
			for _, e := range p.Ends {
				if e.Pipe != p {
					return fmt.Errorf("pipe %d: end %s points elsewhere", id, e.Name())
				}
			}
		}
	}
	for owner, pkts := range s.Packets {
		for _, pkt := range pkts {
			if pkt.Owner == nil || pkt.Owner.ID != owner || pkt.Owner.Type != criupb.FdTypes_UNIXSK {
				return fmt.Errorf("packet %d: owner is not unix socket %d", pkt.Index, owner)
			}
			if uint64(len(pkt.Data)) != uint64(pkt.Entry.GetLength()) {
				return fmt.Errorf("packet %d: %d bytes, length %d", pkt.Index, len(pkt.Data), pkt.Entry.GetLength())
			}
			for _, f := range pkt.Fds {
				if f == nil || s.Files[f.ID] != f {
					return fmt.Errorf("packet %d: in-flight file dangles", pkt.Index)
				}
			}
		}
	}
	for id, tty := range s.TTYs {
		if tty.Info == nil || tty.Info.GetId() != id {
			return fmt.Errorf("tty %d: no info", id)
		}
	}
	for ino, ts := range s.TCPStreams {
		if ts.Ino != ino || uint64(len(ts.InQ)) != uint64(ts.Entry.GetInqLen()) || uint64(len(ts.OutQ)) != uint64(ts.Entry.GetOutqLen()) {
			return fmt.Errorf("tcp stream %#x: queues do not match their lengths", ino)
		}
	}
	for id, r := range s.Remaps {
		if r.GetOrigId() != id || s.Files[id] == nil {
			return fmt.Errorf("remap of file id %d dangles", id)
		}
	}
	return nil
}

// TestWriteFuzzLoadSeeds regenerates the committed seed corpus of FuzzLoad
// under testdata/fuzz/FuzzLoad when FDRESTORE_WRITE_FUZZ_SEEDS=1.
func TestWriteFuzzLoadSeeds(t *testing.T) {
	if os.Getenv("FDRESTORE_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set FDRESTORE_WRITE_FUZZ_SEEDS=1 to rewrite testdata/fuzz/FuzzLoad")
	}
	fxs := fuzzLoadFixtures(t, t.TempDir())
	index := func(fixture, file string) (byte, byte) {
		for i, fx := range fxs {
			if fx.name != fixture {
				continue
			}
			for j, n := range fx.files {
				if n == file {
					return byte(i), byte(j)
				}
			}
		}
		t.Fatalf("no %s/%s", fixture, file)
		return 0, 0
	}
	// replace returns an input replacing fixture/file with edit's result
	// on the decoded entries.
	replace := func(fixture, file string, edit func(es []*Entry) []*Entry) []byte {
		fi, ni := index(fixture, file)
		var content []byte
		if edit != nil {
			k := KindForFile(file)
			var es []*Entry
			if b, ok := fxs[fi].orig[file]; ok {
				var err error
				if _, es, err = DecodeBytes(b, file, k); err != nil {
					t.Fatal(err)
				}
			}
			var err error
			if content, err = EncodeBytes(k, edit(es)); err != nil {
				t.Fatal(err)
			}
		}
		return append([]byte{fi, ni}, content...)
	}
	xor := func(fixture, file string, off uint32, patch ...byte) []byte {
		fi, ni := index(fixture, file)
		b := []byte{fi, ni | fuzzLoadXOR, 0, 0, 0, 0}
		binary.LittleEndian.PutUint32(b[2:], off)
		return append(b, patch...)
	}
	same := func(es []*Entry) []*Entry { return es }
	seeds := [][]byte{
		replace("pipe-basic", "files.img", same),
		replace("mixed", "pstree.img", same),
		replace("pipe-basic", "fdinfo-2.img", func(es []*Entry) []*Entry {
			es[7].Msg.(*criupb.FdinfoEntry).Fd = proto.Uint32(3)
			return es
		}),
		replace("epoll", "files.img", func(es []*Entry) []*Entry {
			es[5].Msg.(*criupb.FileEntry).Epfd.Tfd[0].Tfd = proto.Uint32(999)
			return es
		}),
		replace("pipe-tree", "pstree.img", func(es []*Entry) []*Entry {
			es[1].Msg.(*criupb.PstreeEntry).Ppid = proto.Uint32(4)
			es[2].Msg.(*criupb.PstreeEntry).Ppid = proto.Uint32(3)
			return es
		}),
		replace("unix-scm", "sk-queues.img", func(es []*Entry) []*Entry {
			es[0].Msg.(*criupb.SkPacketEntry).Scm[0].Rights = []uint32{7, 999}
			return es
		}),
		replace("pty", "tty-info.img", func(es []*Entry) []*Entry { return es[1:] }),
		replace("fifo", "fifo-data.img", func(es []*Entry) []*Entry { return append(es, es[0]) }),
		replace("tcp", "tcp-stream-1.img", func([]*Entry) []*Entry { return nil }),
		replace("pipe-basic", "remap-fpath.img", func([]*Entry) []*Entry {
			return []*Entry{{Msg: &criupb.RemapFilePathEntry{OrigId: proto.Uint32(4), RemapId: proto.Uint32(1)}}}
		}),
		replace("reg-files", "inventory.img", nil),
		xor("pipe-basic", "pipes-data.img", 17, 0x40), // bytes 13 -> 77
		xor("mixed", "files.img", 1337, 0x01),         // at the end: appends a byte
		xor("unix-stream", "fdinfo-2.img", 8, 0x00, 0x00, 0x01),
		xor("pty", "files.img", 2, 0xff),
	}
	out := filepath.Join("testdata", "fuzz", "FuzzLoad")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	total := 0
	for i, seed := range seeds {
		body := "go test fuzz v1\n[]byte(" + strconv.Quote(string(seed)) + ")\n"
		total += len(body)
		if err := os.WriteFile(filepath.Join(out, fmt.Sprintf("seed-%02d", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if total > 100<<10 {
		t.Fatalf("seed corpus is %d bytes, keep it under 100 KiB", total)
	}
}
