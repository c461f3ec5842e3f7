// Package synth generates synthetic CRIU-format image directories: a
// process tree and its fd tables (regular files, /dev/null stdio, pipes
// with queued data) described in a few calls, written as the images a
// CRIU 4.x dump of such a tree would hold. No process is dumped; the
// directories are for tests and benchmarks of the restore side.
//
//	b := synth.New()
//	root := b.Task(100)
//	child := b.Child(root, 101)
//	b.Stdio(root)
//	p := b.Pipe(root, 3, child, 4, []byte("hi"), 0)
//	b.Share(p.Read, child, 5) // fd 5 of child: the same read description
//	if err := b.Write(dir); err != nil { ... }
//
// Unix sockets (UnixSocket, UnixPair, Connect) and their queued packets
// with files in flight (Packet) are written to files.img and
// sk-queues.img; a description installed nowhere exists only in flight.
//
// Write produces inventory.img (img_version 2, fdinfo_per_id), pstree.img,
// ids-PID.img and fdinfo-<files_id>.img per task (files_id is the pid),
// files.img, pipes-data.img, sk-queues.img (when packets are queued), and fs-PID.img whose cwd and root are REG
// entries of "/". core-PID.img and the memory images are not written;
// fdrestore does not need them.
//
// Description ids are assigned from 1 in call order; pipe inode numbers
// (pipe_id) from 0x10000. Mistakes (a task created twice, an fd used twice
// in one task, a task of another Builder) are reported by Write.
package synth

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// Builder accumulates a tree and its open files. The zero value is not
// usable; call New.
type Builder struct {
	tasks  []*Task
	byPid  map[uint32]*Task
	descs  []*Desc
	pipes  []*Pipe
	nextID uint32
	nextPI uint32
	errs   []error

	skIno   uint32   // unix socket inodes
	packets []packet // sk-queues.img
}

// Task is one process of the tree. Pgid and Sid may be changed before
// Write (they default to the parent's, and to the pid for the root).
type Task struct {
	Pid, Pgid, Sid uint32
	Parent         *Task
	b              *Builder
	fds            map[uint32]*fdEntry
}

type fdEntry struct {
	desc    *Desc
	cloexec bool
}

// Desc is one open file description (one files.img entry).
type Desc struct {
	ID    uint32
	Type  criupb.FdTypes
	entry *criupb.FileEntry
	b     *Builder
}

// Pipe is one pipe: its two descriptions, and what pipes-data.img records.
type Pipe struct {
	PipeID      uint32 // the pipe's inode number in the images
	Read, Write *Desc
	Data        []byte
	Size        uint32 // F_GETPIPE_SZ at dump; 0 records none
}

// New returns an empty Builder.
func New() *Builder {
	return &Builder{byPid: map[uint32]*Task{}, nextID: 1, nextPI: 0x10000}
}

func (b *Builder) errorf(format string, args ...any) {
	b.errs = append(b.errs, fmt.Errorf("synth: "+format, args...))
}

// Task creates the root task: its own session and process group.
func (b *Builder) Task(pid uint32) *Task {
	if len(b.tasks) > 0 {
		b.errorf("root task %d: the tree already has root %d", pid, b.tasks[0].Pid)
	}
	return b.newTask(pid, nil)
}

// Child creates a task whose parent is parent, in the parent's session and
// process group.
func (b *Builder) Child(parent *Task, pid uint32) *Task {
	if parent == nil || parent.b != b {
		b.errorf("task %d: parent is not a task of this builder", pid)
		return b.newTask(pid, nil)
	}
	return b.newTask(pid, parent)
}

func (b *Builder) newTask(pid uint32, parent *Task) *Task {
	t := &Task{Pid: pid, Pgid: pid, Sid: pid, Parent: parent, b: b, fds: map[uint32]*fdEntry{}}
	if parent != nil {
		t.Pgid, t.Sid = parent.Pgid, parent.Sid
	}
	if pid == 0 {
		b.errorf("task pid 0")
	}
	if b.byPid[pid] != nil {
		b.errorf("task %d created twice", pid)
	}
	b.byPid[pid] = t
	b.tasks = append(b.tasks, t)
	return t
}

// Tasks returns the tasks in creation order.
func (b *Builder) Tasks() []*Task { return b.tasks }

// Fds returns how many fds the task holds.
func (t *Task) Fds() int { return len(t.fds) }

func fown() *criupb.FownEntry {
	return &criupb.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(0), PidType: proto.Uint32(0), Pid: proto.Uint32(0)}
}

func (b *Builder) newDesc(typ criupb.FdTypes) *Desc {
	d := &Desc{ID: b.nextID, Type: typ, b: b}
	b.nextID++
	d.entry = &criupb.FileEntry{Type: typ.Enum(), Id: proto.Uint32(d.ID)}
	b.descs = append(b.descs, d)
	return d
}

func (b *Builder) regDesc(path string, flags uint32, pos uint64) *Desc {
	d := b.newDesc(criupb.FdTypes_REG)
	d.entry.Reg = &criupb.RegFileEntry{Id: proto.Uint32(d.ID), Flags: proto.Uint32(flags), Pos: proto.Uint64(pos), Fown: fown(), Name: proto.String(path)}
	return d
}

// Share makes fd of task t another fd of description d.
func (b *Builder) Share(d *Desc, t *Task, fd uint32) {
	b.addFd(t, fd, d, false)
}

// ShareCloexec is Share with FD_CLOEXEC set on the new fd.
func (b *Builder) ShareCloexec(d *Desc, t *Task, fd uint32) {
	b.addFd(t, fd, d, true)
}

func (b *Builder) addFd(t *Task, fd uint32, d *Desc, cloexec bool) {
	switch {
	case t == nil || t.b != b:
		b.errorf("fd %d: task is not a task of this builder", fd)
	case d == nil || d.b != b:
		b.errorf("task %d fd %d: description is not one of this builder", t.Pid, fd)
	case t.fds[fd] != nil:
		b.errorf("task %d: fd %d used twice", t.Pid, fd)
	default:
		t.fds[fd] = &fdEntry{desc: d, cloexec: cloexec}
	}
}

// RegFile opens path in task t at fd with the open(2) flags and file
// position, as a description of its own. It returns the description.
func (b *Builder) RegFile(t *Task, fd uint32, path string, flags uint32, pos uint64) *Desc {
	d := b.regDesc(path, flags, pos)
	b.addFd(t, fd, d, false)
	return d
}

// Stdio gives task t fd 0 on /dev/null O_RDONLY, and fds 1 and 2 on one
// /dev/null O_WRONLY description, as a shell would (O_LARGEFILE set, as
// CRIU records on x86_64).
func (b *Builder) Stdio(t *Task) (in, out *Desc) {
	in = b.RegFile(t, 0, "/dev/null", unix.O_RDONLY|unix.O_LARGEFILE, 0)
	out = b.RegFile(t, 1, "/dev/null", unix.O_WRONLY|unix.O_LARGEFILE, 0)
	b.Share(out, t, 2)
	return in, out
}

// Pipe creates a pipe whose read end is readFd of readTask and write end
// writeFd of writeTask, both as made by pipe(2) (flags O_RDONLY and
// O_WRONLY). data is queued in it; size is its buffer size (0: not
// recorded; data without a size needs at most the default 64 KiB).
// pipes-data.img gets an entry when data or size is set.
func (b *Builder) Pipe(readTask *Task, readFd uint32, writeTask *Task, writeFd uint32, data []byte, size uint32) *Pipe {
	p := &Pipe{PipeID: b.nextPI, Data: data, Size: size}
	b.nextPI++
	mk := func(flags uint32) *Desc {
		d := b.newDesc(criupb.FdTypes_PIPE)
		d.entry.Pipe = &criupb.PipeEntry{Id: proto.Uint32(d.ID), PipeId: proto.Uint32(p.PipeID), Flags: proto.Uint32(flags), Fown: fown()}
		return d
	}
	p.Read, p.Write = mk(unix.O_RDONLY), mk(unix.O_WRONLY)
	b.addFd(readTask, readFd, p.Read, false)
	b.addFd(writeTask, writeFd, p.Write, false)
	b.pipes = append(b.pipes, p)
	return p
}

// SetNonblock records O_NONBLOCK on description d (a pipe end).
func (d *Desc) SetNonblock() {
	switch {
	case d.entry.Pipe != nil:
		d.entry.Pipe.Flags = proto.Uint32(d.entry.Pipe.GetFlags() | unix.O_NONBLOCK)
	case d.entry.Reg != nil:
		d.entry.Reg.Flags = proto.Uint32(d.entry.Reg.GetFlags() | unix.O_NONBLOCK)
	}
}

// Write writes the image directory dir (created if missing). Existing
// images of the same names are replaced; the directory should be empty.
func (b *Builder) Write(dir string) error {
	if len(b.errs) > 0 {
		return errors.Join(b.errs...)
	}
	if len(b.tasks) == 0 {
		return errors.New("synth: no tasks")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	put := func(name, kind string, entries []*images.Entry) error {
		k := images.KindNamed(kind)
		if k == nil {
			return fmt.Errorf("synth: no image kind %s", kind)
		}
		return images.WriteFile(filepath.Join(dir, name), k, entries)
	}
	one := func(m proto.Message) []*images.Entry { return []*images.Entry{{Msg: m}} }
	ids := func(t *Task) *criupb.TaskKobjIdsEntry {
		return &criupb.TaskKobjIdsEntry{VmId: proto.Uint32(t.Pid), FilesId: proto.Uint32(t.Pid), FsId: proto.Uint32(t.Pid), SighandId: proto.Uint32(t.Pid),
			PidNsId: proto.Uint32(1), NetNsId: proto.Uint32(2), IpcNsId: proto.Uint32(3), UtsNsId: proto.Uint32(4), MntNsId: proto.Uint32(5), UserNsId: proto.Uint32(6), CgroupNsId: proto.Uint32(7), TimeNsId: proto.Uint32(8)}
	}

	// Root ids as CRIU records the dumping process's own: ids 1.
	root := &criupb.TaskKobjIdsEntry{VmId: proto.Uint32(1), FilesId: proto.Uint32(1), FsId: proto.Uint32(1), SighandId: proto.Uint32(1),
		PidNsId: proto.Uint32(1), NetNsId: proto.Uint32(2), IpcNsId: proto.Uint32(3), UtsNsId: proto.Uint32(4), MntNsId: proto.Uint32(5), UserNsId: proto.Uint32(6), CgroupNsId: proto.Uint32(7), TimeNsId: proto.Uint32(8)}
	inv := &criupb.InventoryEntry{ImgVersion: proto.Uint32(images.ImageVersion), FdinfoPerId: proto.Bool(true), RootIds: root, NsPerId: proto.Bool(true)}
	if err := put("inventory.img", "INVENTORY", one(inv)); err != nil {
		return err
	}

	// pstree.img in depth-first order, as CRIU writes it.
	var order []*Task
	kids := map[*Task][]*Task{}
	for _, t := range b.tasks[1:] {
		kids[t.Parent] = append(kids[t.Parent], t)
	}
	var walk func(t *Task)
	walk = func(t *Task) {
		order = append(order, t)
		for _, c := range kids[t] {
			walk(c)
		}
	}
	walk(b.tasks[0])
	var pst []*images.Entry
	for _, t := range order {
		ppid := uint32(0)
		if t.Parent != nil {
			ppid = t.Parent.Pid
		}
		pst = append(pst, &images.Entry{Msg: &criupb.PstreeEntry{Pid: proto.Uint32(t.Pid), Ppid: proto.Uint32(ppid), Pgid: proto.Uint32(t.Pgid), Sid: proto.Uint32(t.Sid), Threads: []uint32{t.Pid}}})
	}
	if err := put("pstree.img", "PSTREE", pst); err != nil {
		return err
	}

	// cwd and root of every task: two REG entries of "/" after the others.
	cwd := b.regDesc("/", 0, 0)
	rootDir := b.regDesc("/", 0, 0)
	defer func() { b.descs = b.descs[:len(b.descs)-2]; b.nextID -= 2 }()

	for _, t := range order {
		if err := put(fmt.Sprintf("ids-%d.img", t.Pid), "IDS", one(ids(t))); err != nil {
			return err
		}
		fs := &criupb.FsEntry{CwdId: proto.Uint32(cwd.ID), RootId: proto.Uint32(rootDir.ID), Umask: proto.Uint32(0o22)}
		if err := put(fmt.Sprintf("fs-%d.img", t.Pid), "FS", one(fs)); err != nil {
			return err
		}
		nums := make([]uint32, 0, len(t.fds))
		for fd := range t.fds {
			nums = append(nums, fd)
		}
		sort.Slice(nums, func(i, j int) bool { return nums[i] < nums[j] })
		fdi := make([]*images.Entry, 0, len(nums))
		for _, fd := range nums {
			e := t.fds[fd]
			flags := uint32(0)
			if e.cloexec {
				flags = 1 // FD_CLOEXEC, as CRIU records it
			}
			fdi = append(fdi, &images.Entry{Msg: &criupb.FdinfoEntry{Id: proto.Uint32(e.desc.ID), Flags: proto.Uint32(flags), Type: e.desc.Type.Enum(), Fd: proto.Uint32(fd)}})
		}
		if err := put(fmt.Sprintf("fdinfo-%d.img", t.Pid), "FDINFO", fdi); err != nil {
			return err
		}
	}

	fe := make([]*images.Entry, len(b.descs))
	for i, d := range b.descs {
		fe[i] = &images.Entry{Msg: d.entry}
	}
	if err := put("files.img", "FILES", fe); err != nil {
		return err
	}

	var pd []*images.Entry
	for _, p := range b.pipes {
		if len(p.Data) == 0 && p.Size == 0 {
			continue
		}
		m := &criupb.PipeDataEntry{PipeId: proto.Uint32(p.PipeID), Bytes: proto.Uint32(uint32(len(p.Data)))}
		if p.Size != 0 {
			m.Size = proto.Uint32(p.Size)
		}
		pd = append(pd, &images.Entry{Msg: m, Trailer: p.Data})
	}
	if err := put("pipes-data.img", "PIPES_DATA", pd); err != nil {
		return err
	}
	if len(b.packets) == 0 {
		return nil
	}
	return put("sk-queues.img", "SK_QUEUES", b.skQueues())
}
