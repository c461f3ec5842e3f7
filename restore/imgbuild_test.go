package restore_test

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// imgBuilder writes small synthetic image directories: a process tree,
// regular files and pipes, and each task's fds. It writes only what
// images.Load needs (no core, fs or mm images).
type imgBuilder struct {
	tasks  []*imgTask
	files  []*criupb.FileEntry
	types  map[uint32]criupb.FdTypes
	data   []*images.Entry
	nextID uint32
	nextP  uint32
}

type imgTask struct {
	pid, ppid, pgid, sid uint32
	fds                  []*criupb.FdinfoEntry
	b                    *imgBuilder
}

func newImgBuilder() *imgBuilder {
	return &imgBuilder{types: map[uint32]criupb.FdTypes{}, nextID: 1, nextP: 900000}
}

func noFown() *criupb.FownEntry {
	return &criupb.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(0), PidType: proto.Uint32(0), Pid: proto.Uint32(0)}
}

// task adds a task; ppid 0 makes it the root (add the root first).
func (b *imgBuilder) task(pid, ppid, pgid, sid uint32) *imgTask {
	t := &imgTask{pid: pid, ppid: ppid, pgid: pgid, sid: sid, b: b}
	b.tasks = append(b.tasks, t)
	return t
}

// reg adds a REG description of path and returns its file id. size < 0
// records no size; mode 0 records no mode.
func (b *imgBuilder) reg(path string, flags uint32, pos uint64, size int64, mode uint32) uint32 {
	id := b.nextID
	b.nextID++
	r := &criupb.RegFileEntry{Id: proto.Uint32(id), Flags: proto.Uint32(flags), Pos: proto.Uint64(pos), Fown: noFown(), Name: proto.String(path)}
	if size >= 0 {
		r.Size = proto.Uint64(uint64(size))
	}
	if mode != 0 {
		r.Mode = proto.Uint32(mode)
	}
	b.files = append(b.files, &criupb.FileEntry{Type: criupb.FdTypes_REG.Enum(), Id: proto.Uint32(id), Reg: r})
	b.types[id] = criupb.FdTypes_REG
	return id
}

// devNull adds a /dev/null description.
func (b *imgBuilder) devNull(flags uint32) uint32 {
	return b.reg("/dev/null", flags|unix.O_LARGEFILE, 0, -1, unix.S_IFCHR|0o666)
}

// pipe adds a pipe with the given queued data and buffer size (0: none
// recorded) and returns the file ids of its read and write ends, with the
// given extra status flags.
func (b *imgBuilder) pipe(data []byte, size uint32, rflags, wflags uint32) (r, w uint32) {
	pid := b.nextP
	b.nextP++
	r = b.pipeEnd(pid, unix.O_RDONLY|rflags)
	w = b.pipeEnd(pid, unix.O_WRONLY|wflags)
	if data != nil || size != 0 {
		pd := &criupb.PipeDataEntry{PipeId: proto.Uint32(pid), Bytes: proto.Uint32(uint32(len(data)))}
		if size != 0 {
			pd.Size = proto.Uint32(size)
		}
		b.data = append(b.data, &images.Entry{Msg: pd, Trailer: data})
	}
	return r, w
}

func (b *imgBuilder) pipeEnd(pipeID, flags uint32) uint32 {
	id := b.nextID
	b.nextID++
	b.files = append(b.files, &criupb.FileEntry{Type: criupb.FdTypes_PIPE.Enum(), Id: proto.Uint32(id),
		Pipe: &criupb.PipeEntry{Id: proto.Uint32(id), PipeId: proto.Uint32(pipeID), Flags: proto.Uint32(flags), Fown: noFown()}})
	b.types[id] = criupb.FdTypes_PIPE
	return id
}

// fd installs file id at fd number n.
func (t *imgTask) fd(n uint32, file uint32, cloexec bool) *imgTask {
	typ, ok := t.b.types[file]
	if !ok {
		panic(fmt.Sprintf("no file id %d", file))
	}
	fl := uint32(0)
	if cloexec {
		fl = 1
	}
	t.fds = append(t.fds, &criupb.FdinfoEntry{Id: proto.Uint32(file), Flags: proto.Uint32(fl), Type: typ.Enum(), Fd: proto.Uint32(n)})
	return t
}

// write writes the image directory into a fresh temporary directory and
// returns it.
func (b *imgBuilder) write(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	put := func(name, kind string, es []*images.Entry) {
		t.Helper()
		if err := images.WriteFile(filepath.Join(dir, name), images.KindNamed(kind), es); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
	}
	put("inventory.img", "INVENTORY", []*images.Entry{{Msg: &criupb.InventoryEntry{ImgVersion: proto.Uint32(images.ImageVersion), FdinfoPerId: proto.Bool(true)}}})
	var ps []*images.Entry
	for _, tk := range b.tasks {
		ps = append(ps, &images.Entry{Msg: &criupb.PstreeEntry{Pid: proto.Uint32(tk.pid), Ppid: proto.Uint32(tk.ppid), Pgid: proto.Uint32(tk.pgid), Sid: proto.Uint32(tk.sid), Threads: []uint32{tk.pid}}})
		put(fmt.Sprintf("ids-%d.img", tk.pid), "IDS", []*images.Entry{{Msg: &criupb.TaskKobjIdsEntry{VmId: proto.Uint32(tk.pid), FilesId: proto.Uint32(tk.pid), FsId: proto.Uint32(1), SighandId: proto.Uint32(tk.pid)}}})
		var fds []*images.Entry
		for _, fd := range tk.fds {
			fds = append(fds, &images.Entry{Msg: fd})
		}
		put(fmt.Sprintf("fdinfo-%d.img", tk.pid), "FDINFO", fds)
	}
	put("pstree.img", "PSTREE", ps)
	var fs []*images.Entry
	for _, f := range b.files {
		fs = append(fs, &images.Entry{Msg: f})
	}
	put("files.img", "FILES", fs)
	if len(b.data) > 0 {
		put("pipes-data.img", "PIPES_DATA", b.data)
	}
	return dir
}
