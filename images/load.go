package images

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/fdrestore/fdrestore/proto/criupb"
)

// legacyImages are CRIU's per-type file images from before files.img
// (CRIU < 3.4). fdrestore refuses them rather than ignoring them.
var legacyImages = []string{
	"reg-files.img", "pipes.img", "fifo.img", "unixsk.img", "inetsk.img",
	"tty.img", "eventfd.img", "eventpoll.img", "eventpoll-tfd.img",
	"signalfd.img", "timerfd.img",
}

// loader holds the state of one Load.
type loader struct {
	dir string
	s   *Set
}

// Load reads the image directory dir and returns its validated content.
// Every problem is reported as a *FormatError naming the image file, the
// entry and the field: a missing or truncated image, a wrong magic, an entry
// that does not decode, an unknown file type, an fd whose file id is not in
// files.img, a duplicate fd, a tty without tty-info, an epoll target that
// resolves to nothing, and the like.
func Load(dir string) (*Set, error) {
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("image directory %s: %w", dir, err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("image directory %s: %w", dir, &fs.PathError{Op: "open", Path: dir, Err: syscall.ENOTDIR})
	}
	l := &loader{dir: dir, s: &Set{
		Dir:        dir,
		TaskByPid:  map[uint32]*Task{},
		Files:      map[uint32]*File{},
		FdTables:   map[uint32]*FdTable{},
		Pipes:      map[uint32]*Pipe{},
		Fifos:      map[uint32]*Pipe{},
		Packets:    map[uint32][]*Packet{},
		TTYs:       map[uint32]*TTY{},
		TCPStreams: map[uint32]*TCPStream{},
		Remaps:     map[uint32]*criupb.RemapFilePathEntry{},
		Ghosts:     map[uint32]*Ghost{},
	}}
	steps := []func() error{
		l.inventory, l.pstree, l.tasks, l.files, l.fdTables,
		l.pipeData, l.ttys, l.skQueues, l.tcpStreams, l.remaps, l.ghosts, l.checkRefs,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, err
		}
	}
	return l.s, nil
}

// read decodes image name, which must hold kind k. A missing image is an
// ErrMissing error when required, and no entries otherwise.
func (l *loader) read(name string, k *Kind, required bool) ([]*Entry, error) {
	p := filepath.Join(l.dir, name)
	// A FIFO would block open(2) forever; a directory cannot be read.
	if st, err := os.Stat(p); err == nil && !st.Mode().IsRegular() {
		return nil, errf(name, -1, -1, "", ErrInvalid, "not a regular file (mode %v)", st.Mode())
	}
	_, entries, err := ReadFile(p, k)
	if errors.Is(err, fs.ErrNotExist) {
		if required {
			return nil, errf(name, -1, -1, "", ErrMissing, "not found in %s", l.dir)
		}
		return nil, nil
	}
	return entries, err
}

func invalid(file string, e *Entry, field, format string, args ...any) *FormatError {
	idx, off := -1, int64(-1)
	if e != nil {
		idx, off = e.Index, e.Offset
	}
	return errf(file, idx, off, field, ErrInvalid, format, args...)
}

func (l *loader) inventory() error {
	const name = "inventory.img"
	entries, err := l.read(name, KindNamed("INVENTORY"), true)
	if err != nil {
		return err
	}
	if len(entries) != 1 {
		return invalid(name, nil, "", "holds %d entries, want 1", len(entries))
	}
	inv := entries[0].Msg.(*criupb.InventoryEntry)
	if inv.GetImgVersion() != ImageVersion {
		return invalid(name, entries[0], "img_version", "%d is not supported (want %d, CRIU 3.x/4.x images)", inv.GetImgVersion(), ImageVersion)
	}
	if !inv.GetFdinfoPerId() {
		return invalid(name, entries[0], "fdinfo_per_id", "per-pid fdinfo images (fdinfo_per_id false) are not supported")
	}
	l.s.Inventory = inv
	return nil
}

func (l *loader) pstree() error {
	const name = "pstree.img"
	entries, err := l.read(name, KindNamed("PSTREE"), true)
	if err != nil {
		return err
	}
	if len(entries) == 0 {
		return invalid(name, nil, "", "no tasks")
	}
	s := l.s
	for _, e := range entries {
		p := e.Msg.(*criupb.PstreeEntry)
		t := &Task{Pid: p.GetPid(), PPid: p.GetPpid(), Pgid: p.GetPgid(), Sid: p.GetSid(), Threads: p.GetThreads()}
		switch {
		case t.Pid == 0:
			return invalid(name, e, "pid", "pid 0")
		case s.TaskByPid[t.Pid] != nil:
			return invalid(name, e, "pid", "pid %d appears twice", t.Pid)
		case t.Pgid == 0:
			return invalid(name, e, "pgid", "pid %d has pgid 0", t.Pid)
		case t.Sid == 0:
			return invalid(name, e, "sid", "pid %d has sid 0", t.Pid)
		}
		s.TaskByPid[t.Pid] = t
		s.Tasks = append(s.Tasks, t)
	}
	if root := s.Tasks[0]; s.TaskByPid[root.PPid] != nil {
		return invalid(name, entries[0], "ppid", "root pid %d has parent %d, which is in the tree", root.Pid, root.PPid)
	}
	for i, t := range s.Tasks {
		if i == 0 {
			continue // the root's parent is outside the tree
		}
		parent := s.TaskByPid[t.PPid]
		if parent == nil || parent == t {
			return invalid(name, entries[i], "ppid", "parent %d of pid %d is not in the tree", t.PPid, t.Pid)
		}
		t.Parent = parent
		parent.Children = append(parent.Children, t)
	}
	// Every task must descend from the root: a parent loop would leave
	// tasks unreachable.
	reached := map[*Task]bool{}
	stack := []*Task{s.Tasks[0]}
	for len(stack) > 0 {
		t := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		reached[t] = true
		stack = append(stack, t.Children...)
	}
	for i, t := range s.Tasks {
		if !reached[t] {
			return invalid(name, entries[i], "ppid", "pid %d and %d other tasks do not descend from the root pid %d (parent loop)", t.Pid, len(s.Tasks)-len(reached)-1, s.Tasks[0].Pid)
		}
	}
	return nil
}

// tasks reads each task's ids, core and fs images.
func (l *loader) tasks() error {
	for _, t := range l.s.Tasks {
		core, err := l.read(fmt.Sprintf("core-%d.img", t.Pid), KindNamed("CORE"), false)
		if err != nil {
			return err
		}
		if len(core) > 0 {
			t.Core = core[0].Msg.(*criupb.CoreEntry)
		}
		idsName := fmt.Sprintf("ids-%d.img", t.Pid)
		ids, err := l.read(idsName, KindNamed("IDS"), t.Core.GetIds() == nil)
		if err != nil {
			return err
		}
		switch {
		case len(ids) > 0:
			t.IDs = ids[0].Msg.(*criupb.TaskKobjIdsEntry)
		default:
			t.IDs = t.Core.GetIds()
		}
		if t.IDs == nil {
			return invalid(idsName, nil, "", "no ids for pid %d", t.Pid)
		}
		fsImg, err := l.read(fmt.Sprintf("fs-%d.img", t.Pid), KindNamed("FS"), false)
		if err != nil {
			return err
		}
		if len(fsImg) > 0 {
			t.FS = fsImg[0].Msg.(*criupb.FsEntry)
		}
	}
	return nil
}

// payloadID returns the id stored inside a file entry's type payload and
// whether the payload required by the type is present.
func payloadID(fe *criupb.FileEntry) (uint32, bool) {
	switch fe.GetType() {
	case criupb.FdTypes_REG:
		return fe.GetReg().GetId(), fe.GetReg() != nil
	case criupb.FdTypes_PIPE:
		return fe.GetPipe().GetId(), fe.GetPipe() != nil
	case criupb.FdTypes_FIFO:
		return fe.GetFifo().GetId(), fe.GetFifo() != nil
	case criupb.FdTypes_UNIXSK:
		return fe.GetUsk().GetId(), fe.GetUsk() != nil
	case criupb.FdTypes_INETSK:
		return fe.GetIsk().GetId(), fe.GetIsk() != nil
	case criupb.FdTypes_TTY:
		return fe.GetTty().GetId(), fe.GetTty() != nil
	case criupb.FdTypes_EVENTFD:
		return fe.GetEfd().GetId(), fe.GetEfd() != nil
	case criupb.FdTypes_EVENTPOLL:
		return fe.GetEpfd().GetId(), fe.GetEpfd() != nil
	case criupb.FdTypes_SIGNALFD:
		return fe.GetSgfd().GetId(), fe.GetSgfd() != nil
	case criupb.FdTypes_TIMERFD:
		return fe.GetTfd().GetId(), fe.GetTfd() != nil
	}
	// Types whose payload fdrestore keeps opaque: presence only.
	raw := map[criupb.FdTypes][]byte{
		criupb.FdTypes_NS: fe.Nsf, criupb.FdTypes_PACKETSK: fe.Psk,
		criupb.FdTypes_NETLINKSK: fe.Nlsk, criupb.FdTypes_TUNF: fe.Tunf,
		criupb.FdTypes_INOTIFY: fe.Ify, criupb.FdTypes_FANOTIFY: fe.Ffy,
		criupb.FdTypes_EXT: fe.Ext, criupb.FdTypes_MEMFD: fe.Memfd,
		criupb.FdTypes_BPFMAP: fe.Bpf, criupb.FdTypes_PIDFD: fe.Pidfd,
	}
	b, known := raw[fe.GetType()]
	return fe.GetId(), known && b != nil
}

func (l *loader) files() error {
	const name = "files.img"
	entries, err := l.read(name, KindNamed("FILES"), false)
	if err != nil {
		return err
	}
	if entries == nil {
		for _, legacy := range legacyImages {
			if _, err := os.Stat(filepath.Join(l.dir, legacy)); err == nil {
				return errf(legacy, -1, -1, "", ErrInvalid, "legacy per-type image (CRIU < 3.4) is not supported; dump again with CRIU >= 3.4")
			}
		}
	}
	s := l.s
	for _, e := range entries {
		fe := e.Msg.(*criupb.FileEntry)
		switch fe.GetType() {
		case criupb.FdTypes_UND, criupb.FdTypes_CTL_TTY, criupb.FdTypes_AUTOFS_PIPE:
			return invalid(name, e, "type", "file id %d has type %s, which is never stored in images", fe.GetId(), fe.GetType())
		}
		pid, ok := payloadID(fe)
		if !ok {
			return invalid(name, e, "type", "file id %d of type %s has no %s payload", fe.GetId(), fe.GetType(), fe.GetType())
		}
		if pid != fe.GetId() {
			return invalid(name, e, "id", "file id %d holds a %s payload with id %d", fe.GetId(), fe.GetType(), pid)
		}
		if s.Files[fe.GetId()] != nil {
			return invalid(name, e, "id", "file id %d appears twice (first at entry %d)", fe.GetId(), s.Files[fe.GetId()].Index)
		}
		f := &File{ID: fe.GetId(), Type: fe.GetType(), Entry: fe, Index: e.Index}
		s.Files[f.ID] = f
		s.FileOrder = append(s.FileOrder, f)
	}
	// Path references: FIFOs and ttys name a reg_file_entry.
	for _, f := range s.FileOrder {
		e := entries[f.Index]
		var regf uint32
		var has bool
		switch f.Type {
		case criupb.FdTypes_FIFO:
			regf, has = f.Entry.GetFifo().GetRegfId(), f.Entry.GetFifo().RegfId != nil
			if !has {
				return invalid(name, e, "fifo.regf_id", "FIFO file id %d names no path", f.ID)
			}
		case criupb.FdTypes_TTY:
			regf, has = f.Entry.GetTty().GetRegfId(), f.Entry.GetTty().RegfId != nil
		}
		if has {
			target := s.Files[regf]
			if target == nil || target.Type != criupb.FdTypes_REG {
				return invalid(name, e, strings.ToLower(f.Type.String())+".regf_id", "%s names path id %d, which is not a REG entry in files.img", f.Name(), regf)
			}
			f.Path = target
		}
		switch f.Type {
		case criupb.FdTypes_PIPE:
			groupPipe(s.Pipes, f.Entry.GetPipe().GetPipeId(), f)
		case criupb.FdTypes_FIFO:
			groupPipe(s.Fifos, f.Entry.GetFifo().GetPipeId(), f)
		}
	}
	for _, t := range s.Tasks {
		if t.FS == nil {
			continue
		}
		for field, id := range map[string]uint32{"cwd_id": t.FS.GetCwdId(), "root_id": t.FS.GetRootId()} {
			if f := s.Files[id]; f == nil || f.Type != criupb.FdTypes_REG {
				return invalid(fmt.Sprintf("fs-%d.img", t.Pid), nil, field, "%d is not a REG entry in files.img", id)
			}
		}
	}
	return nil
}

func groupPipe(m map[uint32]*Pipe, id uint32, f *File) {
	p := m[id]
	if p == nil {
		p = &Pipe{ID: id}
		m[id] = p
	}
	p.Ends = append(p.Ends, f)
	f.Pipe = p
}

func (l *loader) fdTables() error {
	s := l.s
	for _, t := range s.Tasks {
		id := t.IDs.GetFilesId()
		if tbl := s.FdTables[id]; tbl != nil {
			t.Fds = tbl
			tbl.Tasks = append(tbl.Tasks, t)
			continue
		}
		name := fmt.Sprintf("fdinfo-%d.img", id)
		entries, err := l.read(name, KindNamed("FDINFO"), true)
		if err != nil {
			return err
		}
		tbl := &FdTable{ID: id, Tasks: []*Task{t}, byNum: make(map[uint32]*Fd, len(entries))}
		for _, e := range entries {
			fi := e.Msg.(*criupb.FdinfoEntry)
			if prev := tbl.byNum[fi.GetFd()]; prev != nil {
				return invalid(name, e, "fd", "fd %d appears twice (first at entry %d)", fi.GetFd(), prev.Index)
			}
			if fi.GetFd() >= 1<<30 {
				return invalid(name, e, "fd", "fd %d is beyond any fd limit", fi.GetFd())
			}
			f := s.Files[fi.GetId()]
			if f == nil {
				return invalid(name, e, "id", "fd %d refers to file id %d, which is not in files.img", fi.GetFd(), fi.GetId())
			}
			if f.Type != fi.GetType() {
				return invalid(name, e, "type", "fd %d has type %s but file id %d in files.img is %s", fi.GetFd(), fi.GetType(), f.ID, f.Type)
			}
			fd := &Fd{Num: fi.GetFd(), Flags: fi.GetFlags(), Table: tbl, File: f, Index: e.Index}
			tbl.byNum[fd.Num] = fd
			tbl.Fds = append(tbl.Fds, fd)
			f.Fds = append(f.Fds, fd)
		}
		sort.Slice(tbl.Fds, func(i, j int) bool { return tbl.Fds[i].Num < tbl.Fds[j].Num })
		s.FdTables[id] = tbl
		t.Fds = tbl
	}
	return nil
}

func (l *loader) pipeData() error {
	for _, c := range []struct {
		name  string
		kind  string
		pipes map[uint32]*Pipe
	}{{"pipes-data.img", "PIPES_DATA", l.s.Pipes}, {"fifo-data.img", "FIFO_DATA", l.s.Fifos}} {
		entries, err := l.read(c.name, KindNamed(c.kind), false)
		if err != nil {
			return err
		}
		for _, e := range entries {
			pd := e.Msg.(*criupb.PipeDataEntry)
			p := c.pipes[pd.GetPipeId()]
			switch {
			case p == nil:
				return invalid(c.name, e, "pipe_id", "data for pipe_id %d, which no description in files.img has", pd.GetPipeId())
			case p.HasData:
				return invalid(c.name, e, "pipe_id", "second data entry for pipe_id %d", pd.GetPipeId())
			case pd.Size != nil && pd.GetSize() != 0 && uint64(pd.GetBytes()) > uint64(pd.GetSize()):
				return invalid(c.name, e, "bytes", "%d queued bytes exceed the pipe size %d", pd.GetBytes(), pd.GetSize())
			}
			p.HasData, p.Data, p.Size = true, e.Trailer, pd.GetSize()
		}
	}
	return nil
}

func (l *loader) ttys() error {
	s := l.s
	const infoName, dataName = "tty-info.img", "tty-data.img"
	infos, err := l.read(infoName, KindNamed("TTY_INFO"), false)
	if err != nil {
		return err
	}
	for _, e := range infos {
		ti := e.Msg.(*criupb.TtyInfoEntry)
		if s.TTYs[ti.GetId()] != nil {
			return invalid(infoName, e, "id", "tty id %d appears twice", ti.GetId())
		}
		if ti.Termios != nil && len(ti.Termios.GetCCc()) < 8 {
			return invalid(infoName, e, "termios.c_cc", "tty id %d has %d control characters, want at least 8", ti.GetId(), len(ti.Termios.GetCCc()))
		}
		s.TTYs[ti.GetId()] = &TTY{Info: ti}
	}
	for _, f := range s.FileOrder {
		if f.Type != criupb.FdTypes_TTY {
			continue
		}
		id := f.Entry.GetTty().GetTtyInfoId()
		tty := s.TTYs[id]
		if tty == nil {
			return errf("files.img", f.Index, -1, "tty.tty_info_id", ErrInvalid, "%s names tty-info id %d, which is not in %s", f.Name(), id, infoName)
		}
		f.TTY = tty
		tty.Files = append(tty.Files, f)
	}
	data, err := l.read(dataName, KindNamed("TTY_DATA"), false)
	if err != nil {
		return err
	}
	for _, e := range data {
		td := e.Msg.(*criupb.TtyDataEntry)
		tty := s.TTYs[td.GetTtyId()]
		if tty == nil {
			return invalid(dataName, e, "tty_id", "data for tty id %d, which is not in %s", td.GetTtyId(), infoName)
		}
		tty.Data = append(tty.Data, td.GetData()...)
	}
	return nil
}

func (l *loader) skQueues() error {
	const name = "sk-queues.img"
	entries, err := l.read(name, KindNamed("SK_QUEUES"), false)
	if err != nil {
		return err
	}
	s := l.s
	for _, e := range entries {
		pe := e.Msg.(*criupb.SkPacketEntry)
		owner := s.Files[pe.GetIdFor()]
		if owner == nil || owner.Type != criupb.FdTypes_UNIXSK {
			return invalid(name, e, "id_for", "packet for file id %d, which is not a unix socket in files.img", pe.GetIdFor())
		}
		pkt := &Packet{Entry: pe, Data: e.Trailer, Index: e.Index, Owner: owner}
		for i, scm := range pe.GetScm() {
			if scm.GetType() != 1 { // SCM_RIGHTS
				return invalid(name, e, fmt.Sprintf("scm[%d].type", i), "ancillary type %d is not supported (only SCM_RIGHTS)", scm.GetType())
			}
			for _, id := range scm.GetRights() {
				f := s.Files[id]
				if f == nil {
					return invalid(name, e, fmt.Sprintf("scm[%d].rights", i), "file id %d in flight is not in files.img", id)
				}
				pkt.Fds = append(pkt.Fds, f)
			}
		}
		s.Packets[owner.ID] = append(s.Packets[owner.ID], pkt)
	}
	return nil
}

func (l *loader) tcpStreams() error {
	ents, err := os.ReadDir(l.dir)
	if err != nil {
		return fmt.Errorf("image directory %s: %w", l.dir, err)
	}
	seen := map[uint32]string{} // image name by socket inode
	for _, de := range ents {
		n := de.Name()
		if !strings.HasPrefix(n, "tcp-stream-") || !strings.HasSuffix(n, ".img") {
			continue
		}
		ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(n, "tcp-stream-"), ".img"), 16, 32)
		if err != nil {
			return errf(n, -1, -1, "", ErrInvalid, "file name does not end in a hex socket inode")
		}
		if prev, dup := seen[uint32(ino)]; dup {
			return errf(n, -1, -1, "", ErrInvalid, "socket inode %#x already has %s", ino, prev)
		}
		seen[uint32(ino)] = n
		entries, err := l.read(n, KindNamed("TCP_STREAM"), true)
		if err != nil {
			return err
		}
		if len(entries) != 1 {
			return invalid(n, nil, "", "holds %d entries, want 1", len(entries))
		}
		e := entries[0]
		ts := e.Msg.(*criupb.TcpStreamEntry)
		inq := ts.GetInqLen()
		l.s.TCPStreams[uint32(ino)] = &TCPStream{Ino: uint32(ino), Entry: ts, InQ: e.Trailer[:inq], OutQ: e.Trailer[inq:]}
	}
	return nil
}

func (l *loader) remaps() error {
	const name = "remap-fpath.img"
	entries, err := l.read(name, KindNamed("REMAP_FPATH"), false)
	if err != nil {
		return err
	}
	for _, e := range entries {
		r := e.Msg.(*criupb.RemapFilePathEntry)
		if l.s.Files[r.GetOrigId()] == nil {
			return invalid(name, e, "orig_id", "file id %d is not in files.img", r.GetOrigId())
		}
		if l.s.Remaps[r.GetOrigId()] != nil {
			return invalid(name, e, "orig_id", "file id %d is remapped twice", r.GetOrigId())
		}
		l.s.Remaps[r.GetOrigId()] = r
	}
	return nil
}

// checkRefs validates references that need the whole set: epoll targets.
func (l *loader) checkRefs() error {
	s := l.s
	for _, f := range s.FileOrder {
		if f.Type != criupb.FdTypes_EVENTPOLL {
			continue
		}
		// The tables holding the epoll, once each (f.Fds is grouped by
		// table), so that the check costs targets x tables, not x fds.
		var tables []*FdTable
		for j, fd := range f.Fds {
			if j == 0 || f.Fds[j-1].Table != fd.Table {
				tables = append(tables, fd.Table)
			}
		}
		for i, tfd := range f.Entry.GetEpfd().GetTfd() {
			found := false
			for _, tbl := range tables {
				if tbl.Lookup(tfd.GetTfd()) != nil {
					found = true
					break
				}
			}
			if !found && len(tables) > 0 {
				return errf("files.img", f.Index, -1, fmt.Sprintf("epfd.tfd[%d].tfd", i), ErrInvalid,
					"%s registers target fd %d, which no fd table holding the epoll has", f.Name(), tfd.GetTfd())
			}
		}
	}
	return nil
}
