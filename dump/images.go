package dump

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// TaskStateAlive is CRIU's TASK_ALIVE, the task_state of every dumped task.
const TaskStateAlive = 1

// ExecImage is the name of fdrestore's side image with each task's argv,
// environment and working directory (kind FDRESTORE_EXEC). CRIU ignores it.
const ExecImage = "fdrestore-exec.img"

// imageFile is one image file to write.
type imageFile struct {
	name    string
	kind    *images.Kind
	entries []*images.Entry
}

// imageSet is a whole dump, encoded and ready to write.
type imageSet struct {
	files     []*imageFile
	tasks     int
	threads   int
	fds       int
	nfiles    int
	pipes     int
	pipeBytes int64

	unixSockets  int
	skQueueBytes int64
	tcpConns     [][2]int // (pid, fd) of the TCP connections (inet.go)
	pendingConns [][2]int // the clients of connections not yet accepted (inetpending.go)
}

func (is *imageSet) add(name, kind string, msgs ...proto.Message) *imageFile {
	f := &imageFile{name: name, kind: images.KindNamed(kind)}
	for _, m := range msgs {
		f.entries = append(f.entries, &images.Entry{Msg: m})
	}
	is.files = append(is.files, f)
	return f
}

func fownEntry(f [5]uint32) *criupb.FownEntry {
	return &criupb.FownEntry{Uid: proto.Uint32(f[0]), Euid: proto.Uint32(f[1]), Signum: proto.Uint32(f[2]), PidType: proto.Uint32(f[3]), Pid: proto.Uint32(f[4])}
}

// regEntry is a reg_file_entry like CRIU's: the size only for regular files
// not opened O_WRONLY|O_APPEND (log files grow), the mode always, and no
// mnt_id (CRIU records it only when it dumps the mount namespace).
func regEntry(id uint32, name string, flags uint32, pos uint64, st *unix.Stat_t, fown [5]uint32) *criupb.RegFileEntry {
	r := &criupb.RegFileEntry{
		Id: proto.Uint32(id), Flags: proto.Uint32(flags), Pos: proto.Uint64(pos),
		Fown: fownEntry(fown), Name: proto.String(name), Mode: proto.Uint32(st.Mode),
	}
	appendOnly := flags&unix.O_ACCMODE == unix.O_WRONLY && flags&unix.O_APPEND != 0
	if st.Mode&unix.S_IFMT == unix.S_IFREG && !appendOnly {
		r.Size = proto.Uint64(uint64(st.Size))
	}
	return r
}

func march() criupb.CoreEntryMarch {
	switch runtime.GOARCH {
	case "amd64":
		return criupb.CoreEntry_X86_64
	case "arm64":
		return criupb.CoreEntry_AARCH64
	case "arm":
		return criupb.CoreEntry_ARM
	case "ppc64le":
		return criupb.CoreEntry_PPC64
	case "s390x":
		return criupb.CoreEntry_S390
	case "riscv64":
		return criupb.CoreEntry_RISCV64
	case "loong64":
		return criupb.CoreEntry_LOONGARCH64
	}
	return criupb.CoreEntry_UNKNOWN
}

func uuid() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// images turns the collected state into CRIU's image files.
func (s *state) images() (*imageSet, error) {
	is := &imageSet{tasks: len(s.tasks), fds: len(s.all)}

	// Namespace ids: one counter over all kinds, the dumper's own
	// namespaces first (they make inventory's root_ids), as CRIU does.
	nsIDs := map[[2]uint64]uint32{}
	nsID := func(kind int, ino uint64) *uint32 {
		if ino == 0 {
			return nil
		}
		k := [2]uint64{uint64(kind), ino}
		if id, ok := nsIDs[k]; ok {
			return proto.Uint32(id)
		}
		id := uint32(len(nsIDs) + 1)
		nsIDs[k] = id
		return proto.Uint32(id)
	}
	kobjIDs := func(kobj [4]uint32, ns [len(nsKinds)]uint64) *criupb.TaskKobjIdsEntry {
		e := &criupb.TaskKobjIdsEntry{
			VmId: proto.Uint32(kobj[0]), FilesId: proto.Uint32(kobj[1]),
			FsId: proto.Uint32(kobj[2]), SighandId: proto.Uint32(kobj[3]),
		}
		e.PidNsId, e.NetNsId, e.IpcNsId, e.UtsNsId = nsID(0, ns[0]), nsID(1, ns[1]), nsID(2, ns[2]), nsID(3, ns[3])
		e.TimeNsId, e.MntNsId, e.UserNsId, e.CgroupNsId = nsID(4, ns[4]), nsID(5, ns[5]), nsID(6, ns[6]), nsID(7, ns[7])
		return e
	}
	root := kobjIDs([4]uint32{1, 1, 1, 1}, s.selfNS)
	is.add("inventory.img", "INVENTORY", &criupb.InventoryEntry{
		ImgVersion:        proto.Uint32(images.ImageVersion),
		FdinfoPerId:       proto.Bool(true),
		RootIds:           root,
		NsPerId:           proto.Bool(true),
		Lsmtype:           criupb.Lsmtype_NO_LSM.Enum(),
		NetworkLockMethod: proto.Uint32(0),
		PluginsEntry:      &criupb.PluginsEntry{},
		DumpCriuRunId:     proto.String(uuid()),
	})

	var pstree []proto.Message
	for _, t := range s.tasks {
		ppid := uint32(0) // CRIU records the root's parent as 0
		if t.parent != nil {
			ppid = uint32(t.parent.pid)
		}
		e := &criupb.PstreeEntry{Pid: proto.Uint32(uint32(t.pid)), Ppid: proto.Uint32(ppid),
			Pgid: proto.Uint32(uint32(t.stat.pgid)), Sid: proto.Uint32(uint32(t.stat.sid))}
		for _, tid := range t.threads {
			e.Threads = append(e.Threads, uint32(tid))
		}
		is.threads += len(t.threads)
		pstree = append(pstree, e)
	}
	is.add("pstree.img", "PSTREE", pstree...)

	// File ids in dump order: per task its fds in fd order (a new id for
	// each new description; a FIFO's path entry takes the id after the
	// FIFO's and is written before it), then its cwd and root.
	files := is.add("files.img", "FILES")
	var nextID uint32 = 1
	ids := map[*fdEnt]uint32{}
	pipes := map[uint64]bool{}
	addFile := func(m *criupb.FileEntry) { files.entries = append(files.entries, &images.Entry{Msg: m}) }
	var execs, remaps []proto.Message
	var streams []*inetSock
	doneTables := map[uint32]bool{}
	uw := &unixWriter{s: s, add: addFile, netnsID: func(ino uint64) *uint32 { return nsID(1, ino) }}
	// fileID returns the id of e's description, writing its entries the
	// first time (a unix socket's queue, with the files in flight in it,
	// goes first).
	var fileID func(e *fdEnt) uint32
	fileID = func(e *fdEnt) uint32 {
		if id, ok := ids[e.desc]; ok {
			return id
		}
		e = e.desc
		id := nextID
		nextID++
		ids[e] = id
		switch e.kind {
		case kindReg:
			name := e.link
			if e.ghost != nil {
				name = e.ghost.path
				remaps = append(remaps, ghostRemap(id, e.ghost))
			}
			addFile(&criupb.FileEntry{Type: criupb.FdTypes_REG.Enum(), Id: proto.Uint32(id),
				Reg: regEntry(id, name, e.flags, e.pos, &e.st, e.fown)})
		case kindPipe:
			pipes[e.st.Ino] = true
			addFile(&criupb.FileEntry{Type: criupb.FdTypes_PIPE.Enum(), Id: proto.Uint32(id),
				Pipe: &criupb.PipeEntry{Id: proto.Uint32(id), PipeId: proto.Uint32(uint32(e.st.Ino)),
					Flags: proto.Uint32(e.flags), Fown: fownEntry(e.fown)}})
		case kindFifo:
			pipes[e.st.Ino] = true
			regID := nextID
			nextID++
			addFile(&criupb.FileEntry{Type: criupb.FdTypes_REG.Enum(), Id: proto.Uint32(regID),
				Reg: regEntry(regID, e.link, e.flags, e.pos, &e.st, e.fown)})
			addFile(&criupb.FileEntry{Type: criupb.FdTypes_FIFO.Enum(), Id: proto.Uint32(id),
				Fifo: &criupb.FifoEntry{Id: proto.Uint32(id), PipeId: proto.Uint32(uint32(e.st.Ino)), RegfId: proto.Uint32(regID)}})
		case kindTTY:
			regID := nextID
			nextID++
			addFile(&criupb.FileEntry{Type: criupb.FdTypes_REG.Enum(), Id: proto.Uint32(regID),
				Reg: regEntry(regID, ttyPath(e.link), e.flags, 0, &e.st, e.fown)})
			addFile(&criupb.FileEntry{Type: criupb.FdTypes_TTY.Enum(), Id: proto.Uint32(id),
				Tty: &criupb.TtyFileEntry{Id: proto.Uint32(id), TtyInfoId: proto.Uint32(e.tty.id()), Flags: proto.Uint32(e.flags),
					Fown: fownEntry(e.fown), RegfId: proto.Uint32(regID)}})
		case kindInet:
			ie := proto.Clone(e.inet.entry).(*criupb.InetSkEntry)
			ie.Id = proto.Uint32(id)
			ie.Fown = fownEntry(e.fown) // read after the socket
			ie.Flags = proto.Uint32(e.flags)
			if sk := e.inet; sk.pendingOn != nil {
				pendingFields(ie, sk, fileID(sk.pendingOn))
			}
			addFile(&criupb.FileEntry{Type: criupb.FdTypes_INETSK.Enum(), Id: proto.Uint32(id), Isk: ie})
			if sk := e.inet; sk.stream != nil {
				streams = append(streams, sk)
			}
		case kindUnix:
			uw.dump(e, id, fileID)
		default:
			if fe := anonEntry(e, id); fe != nil {
				addFile(fe) // event.go
			}
		}
		return id
	}
	for _, t := range s.tasks {
		var fdinfo []proto.Message
		for _, e := range t.fds {
			id := fileID(e)
			typ := map[fdKind]criupb.FdTypes{kindReg: criupb.FdTypes_REG, kindPipe: criupb.FdTypes_PIPE, kindFifo: criupb.FdTypes_FIFO, kindTTY: criupb.FdTypes_TTY, kindUnix: criupb.FdTypes_UNIXSK, kindInet: criupb.FdTypes_INETSK}[e.kind]
			if t, ok := anonType(e.kind); ok {
				typ = t
			}
			var fl uint32
			if e.cloexec {
				fl = unix.FD_CLOEXEC
			}
			fdinfo = append(fdinfo, &criupb.FdinfoEntry{Id: proto.Uint32(id), Flags: proto.Uint32(fl), Type: typ.Enum(), Fd: proto.Uint32(uint32(e.fd))})
		}
		if filesID := t.kobj[1]; !doneTables[filesID] {
			doneTables[filesID] = true
			is.add(fmt.Sprintf("fdinfo-%d.img", filesID), "FDINFO", fdinfo...)
		}
		cwdID, rootID := nextID, nextID+1
		nextID += 2
		addFile(&criupb.FileEntry{Type: criupb.FdTypes_REG.Enum(), Id: proto.Uint32(cwdID), Reg: regEntry(cwdID, t.cwd, 0, 0, t.cwdSt, [5]uint32{})})
		addFile(&criupb.FileEntry{Type: criupb.FdTypes_REG.Enum(), Id: proto.Uint32(rootID), Reg: regEntry(rootID, t.root, 0, 0, t.rootSt, [5]uint32{})})
		is.add(fmt.Sprintf("fs-%d.img", t.pid), "FS", &criupb.FsEntry{CwdId: proto.Uint32(cwdID), RootId: proto.Uint32(rootID), Umask: proto.Uint32(t.umask)})
		is.add(fmt.Sprintf("ids-%d.img", t.pid), "IDS", kobjIDs(t.kobj, t.ns))

		tc := &criupb.TaskCoreEntry{
			TaskState: proto.Uint32(TaskStateAlive), ExitCode: proto.Uint32(0),
			Personality: proto.Uint32(t.personality), Flags: proto.Uint32(t.stat.flags),
			BlkSigset: proto.Uint64(t.sigBlk), Comm: proto.String(t.stat.comm),
			Rlimits: &criupb.TaskRlimitsEntry{},
		}
		for _, rl := range t.rlimits {
			tc.Rlimits.Rlimits = append(tc.Rlimits.Rlimits, &criupb.RlimitEntry{Cur: proto.Uint64(rl[0]), Max: proto.Uint64(rl[1])})
		}
		is.add(fmt.Sprintf("core-%d.img", t.pid), "CORE", &criupb.CoreEntry{Mtype: march().Enum(), Tc: tc})
		for _, tid := range t.threads[1:] {
			is.add(fmt.Sprintf("core-%d.img", tid), "CORE", &criupb.CoreEntry{Mtype: march().Enum()})
		}
		ex := &criupb.FdrestoreExecEntry{Pid: proto.Uint32(uint32(t.pid)), Argv: t.argv, Env: t.env, Cwd: proto.String(t.cwd)}
		if t.exe != "" {
			ex.Exe = proto.String(t.exe)
		}
		execs = append(execs, ex)
	}
	// Datagram sockets connected to sockets outside the tree
	// (--ext-unix-sk): the outside sockets come last.
	if err := uw.external(func() uint32 { id := nextID; nextID++; return id }); err != nil {
		return nil, err
	}
	is.nfiles = len(files.entries)
	is.pipes = len(pipes)
	is.unixSockets = len(s.sockList)
	if len(uw.packets) > 0 {
		f := is.add("sk-queues.img", "SK_QUEUES")
		f.entries = uw.packets
		is.skQueueBytes = uw.bytes
	}

	data := func(name, kind string, list []*pipeData) {
		if len(list) == 0 {
			return
		}
		f := is.add(name, kind)
		for _, p := range list {
			f.entries = append(f.entries, &images.Entry{Msg: &criupb.PipeDataEntry{
				PipeId: proto.Uint32(uint32(p.ino)), Bytes: proto.Uint32(uint32(len(p.data))), Size: proto.Uint32(uint32(p.size)),
			}, Trailer: p.data})
			is.pipeBytes += int64(len(p.data))
		}
	}
	data("pipes-data.img", "PIPES_DATA", s.pipes)
	data("fifo-data.img", "FIFO_DATA", s.fifos)
	is.tcpConns = s.tcpConns
	is.pendingConns = s.pendingConns
	for _, sk := range streams {
		f := is.add(fmt.Sprintf("tcp-stream-%x.img", sk.entry.GetIno()), "TCP_STREAM")
		trailer := append(append([]byte{}, sk.inq...), sk.outq...)
		f.entries = append(f.entries, &images.Entry{Msg: sk.stream, Trailer: trailer})
	}
	if infos, tdata := s.ttyImages(); len(infos) > 0 {
		is.add("tty-info.img", "TTY_INFO", infos...)
		if len(tdata) > 0 {
			is.add("tty-data.img", "TTY_DATA", tdata...)
		}
	}
	is.addGhosts(s, remaps)
	is.add(ExecImage, "FDRESTORE_EXEC", execs...)
	return is, nil
}

// write writes every image into dir, after removing image files an earlier
// dump left there that this one does not write (so that the directory
// never mixes two dumps).
func (is *imageSet) write(dir string) error {
	ours := map[string]bool{"stats-dump": true}
	for _, f := range is.files {
		ours[f.name] = true
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("dump: %w", err)
	}
	for _, e := range ents {
		if !ours[e.Name()] && e.Type().IsRegular() && images.KindForFile(e.Name()) != nil {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("dump: remove stale image: %w", err)
			}
		}
	}
	// Encode everything first, so that an encoding error leaves no file.
	enc := make([][]byte, len(is.files))
	for i, f := range is.files {
		b, err := images.EncodeBytes(f.kind, f.entries)
		if err != nil {
			return fmt.Errorf("dump: encode %s: %w", f.name, err)
		}
		enc[i] = b
	}
	// inventory.img goes last: a directory whose inventory is missing or
	// stale is not a loadable dump.
	inv := filepath.Join(dir, "inventory.img")
	if err := os.Remove(inv); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("dump: %w", err)
	}
	for i := len(is.files) - 1; i >= 0; i-- {
		if err := os.WriteFile(filepath.Join(dir, is.files[i].name), enc[i], 0o600); err != nil {
			return fmt.Errorf("dump: write %s: %w", is.files[i].name, err)
		}
	}
	return nil
}

func (is *imageSet) fillStats(st *Stats) {
	st.Tasks, st.Threads, st.Fds, st.Files, st.Pipes, st.PipeBytes = is.tasks, is.threads, is.fds, is.nfiles, is.pipes, is.pipeBytes
	st.UnixSockets, st.SkQueueBytes = is.unixSockets, is.skQueueBytes
}

// writeStats writes stats-dump (CRIU's dump statistics; times in µs).
func (is *imageSet) writeStats(dir string, st *Stats) error {
	us := func(d time.Duration) *uint32 { return proto.Uint32(uint32(d.Microseconds())) }
	z32, z64 := proto.Uint32(0), proto.Uint64(0)
	e := &criupb.StatsEntry{Dump: &criupb.DumpStatsEntry{
		FreezingTime: us(st.Freezing), FrozenTime: us(st.Frozen), MemdumpTime: z32, MemwriteTime: z32,
		PagesScanned: z64, PagesSkippedParent: z64, PagesWritten: z64, PagesLazy: z64,
	}}
	if err := images.WriteFile(filepath.Join(dir, "stats-dump"), images.KindNamed("STATS"), []*images.Entry{{Msg: e}}); err != nil {
		return fmt.Errorf("dump: write stats-dump: %w", err)
	}
	return nil
}
