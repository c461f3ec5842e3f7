package dump

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// task is one process of the tree as read while frozen.
type task struct {
	pid     int
	parent  *task
	stat    *procStat
	threads []int

	personality uint32
	sigBlk      uint64
	umask       uint32
	rlimits     [][2]uint64
	ns          [len(nsKinds)]uint64
	cwd, root   string
	cwdSt       *unix.Stat_t
	rootSt      *unix.Stat_t
	argv, env   []string
	exe         string
	fds         []*fdEnt

	// kobj ids (ids-PID.img): vm, files, fs, sighand.
	kobj [4]uint32
}

// fdEnt is one fd of one task.
type fdEnt struct {
	t       *task
	fd      int
	cloexec bool
	link    string
	flags   uint32 // status flags, without O_CLOEXEC
	pos     uint64
	mntID   int
	st      unix.Stat_t
	kind    fdKind
	fown    [5]uint32
	desc    *fdEnt     // the first fd (in dump order) of the same description
	ghost   *ghostFile // a regular file unlinked while open (ghost.go)
	tty     ttyKey     // kindTTY: the tty side (tty.go)
	anon    *anonInfo  // epoll, eventfd, signalfd, timerfd state (event.go)
	usk     *unixSock  // a unix socket (unixsk.go)
	inet    *inetSock  // kindInet: the socket's state (inet.go)

	// A file found in flight in a unix socket queue (t is nil, fd -1):
	// the dumper's fd of it, the task fd whose queue (or a queue nested
	// in it) holds it, and the inode of the socket whose queue holds it.
	local   int
	carrier *fdEnt
	via     uint32
}

// kcmpRef is the (pid, fd) by which kcmp reaches e's description.
func (e *fdEnt) kcmpRef() (int, int) {
	if e.t == nil {
		return os.Getpid(), e.local
	}
	return e.t.pid, e.fd
}

// ownerPid is the pid of the task that holds e, or whose queue holds
// it in flight.
func (e *fdEnt) ownerPid() int {
	if e.t == nil {
		return e.carrier.t.pid
	}
	return e.t.pid
}

// where names e in errors: the task's fd, or where it is in flight.
func (e *fdEnt) where() string {
	if e.t == nil {
		return fmt.Sprintf("file in flight in socket:[%d] (queue reached from pid %d fd %d)", e.via, e.carrier.t.pid, e.carrier.fd)
	}
	return fmt.Sprintf("pid %d fd %d", e.t.pid, e.fd)
}

// unsupported is the refusal of e as a file of type typ.
func (e *fdEnt) unsupported(typ string) *UnsupportedError {
	if e.t == nil {
		return &UnsupportedError{Pid: e.carrier.t.pid, Fd: e.carrier.fd,
			Type: fmt.Sprintf("%s in flight (SCM_RIGHTS) in the queue of socket:[%d]", typ, e.via), Target: e.link}
	}
	return &UnsupportedError{Pid: e.t.pid, Fd: e.fd, Type: typ, Target: e.link}
}

// pipeData is the queued content of one pipe or FIFO.
type pipeData struct {
	ino  uint64
	data []byte
	size int
}

// nsKinds are the namespaces recorded in task_kobj_ids_entry, in the
// order CRIU numbers them.
var nsKinds = [...]string{"pid", "net", "ipc", "uts", "time", "mnt", "user", "cgroup"}

// state is everything read from the frozen tree.
type state struct {
	tasks  []*task
	all    []*fdEnt
	pipes  []*pipeData // pipes-data.img, in dump order
	fifos  []*pipeData // fifo-data.img, in dump order
	selfNS [len(nsKinds)]uint64
	log    *logrus.Logger
	// pk peeks pipe data; peeked lists the pipes and FIFOs (by inode)
	// whose data is saved.
	pk     *peeker
	peeked map[uint64]bool
	// unread holds, for every pipe or FIFO seen only through fds that
	// cannot read (write-only ends), the first such fd in dump order.
	unread map[uint64]*fdEnt
	// Deleted regular files saved with their content (ghost.go), by
	// (dev, ino) and in dump order, and the size limit for one.
	ghosts     map[[2]uint64]*ghostFile
	ghostList  []*ghostFile
	ghostLimit int64
	// ttys: every side of a tty the tree holds (tty.go).
	ttys ttys
	// Unix sockets (unixsk.go): sock_diag tables by netns inode, the
	// tree's sockets by inode and in dump order, the dumper's fds of
	// files in flight (closed when the dump ends), and --ext-unix-sk.
	diags    map[uint64]unixDiagTable
	socks    map[uint32]*unixSock
	sockList []*unixSock
	inflight []int
	extUnix  bool
	skBuf    []byte // peekQueue's scratch buffer
	// diag caches sock_diag dumps of inet sockets (inet.go), and
	// tcpEstablished allows dumping TCP connections.
	diag           inetDiag
	tcpEstablished bool
	tcpConns       [][2]int // (pid, fd) of every TCP connection
	// leaveRunning: the tree goes on after the dump; pendingListeners
	// and pendingConns (the clients of their queues) are the
	// connections not yet accepted (inetpending.go).
	leaveRunning     bool
	pendingListeners []*pendingListener
	pendingConns     [][2]int
}

// collect reads every task of the frozen tree. An unsupported fd anywhere
// fails it with the list of such fds.
func (d *dumper) collect(tasks []*task) (*imageSet, error) {
	s := &state{tasks: tasks, log: d.log, ghostLimit: d.opts.ghostLimit(), extUnix: d.opts.ExtUnixSk,
		tcpEstablished: d.opts.TCPEstablished, leaveRunning: d.opts.LeaveRunning}
	defer s.closePendingListeners()
	defer func() {
		for _, fd := range s.inflight {
			unix.Close(fd)
		}
	}()
	for i, k := range nsKinds {
		ino, err := nsInode(0, k)
		if err != nil {
			return nil, err
		}
		s.selfNS[i] = ino
	}
	s.pk, s.peeked = &peeker{}, map[uint64]bool{}
	defer s.pk.close()
	defer s.closeTTYs()
	var refused []error
	for _, t := range tasks {
		if err := readTask(t); err != nil {
			return nil, fmt.Errorf("dump: pid %d: %w", t.pid, err)
		}
		errs, err := s.readFds(t)
		if err != nil {
			return nil, fmt.Errorf("dump: pid %d: %w", t.pid, err)
		}
		refused = append(refused, errs...)
	}
	if len(refused) == 0 {
		refused = s.resolveUnix()
	}
	if len(refused) == 0 {
		var err error
		if refused, err = s.checkPending(); err != nil {
			return nil, fmt.Errorf("dump: %w", err)
		}
	}
	if err := refusal(refused); err != nil {
		return nil, err
	}
	if err := s.peekUnread(); err != nil {
		return nil, fmt.Errorf("dump: %w", err)
	}
	if err := s.finishTTYs(); err != nil {
		return nil, fmt.Errorf("dump: %w", err)
	}
	t0 := time.Now()
	defer func() { d.log.WithField("took", time.Since(t0)).Debug("descriptions and ids matched") }()
	if err := s.shareDescriptions(); err != nil {
		return nil, fmt.Errorf("dump: %w", err)
	}
	refused, err := s.resolveEpolls()
	if err != nil {
		return nil, fmt.Errorf("dump: %w", err)
	}
	if err := refusal(refused); err != nil {
		return nil, err
	}
	if err := s.kobjIDs(); err != nil {
		return nil, fmt.Errorf("dump: %w", err)
	}
	// Last, as nothing can put them back: the connections not yet
	// accepted (inetpending.go).
	if err := s.acceptPending(); err != nil {
		return nil, fmt.Errorf("dump: %w", err)
	}
	return s.images()
}

// readTask reads a task's attributes other than its fds.
func readTask(t *task) error {
	pid := t.pid
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/personality", pid))
	if err != nil {
		return err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 32)
	if err != nil {
		return fmt.Errorf("personality %q: %w", b, err)
	}
	t.personality = uint32(v)
	st, err := readStatus(pid, "SigBlk", "Umask")
	if err != nil {
		return err
	}
	if t.sigBlk, err = strconv.ParseUint(st["SigBlk"], 16, 64); err != nil {
		return fmt.Errorf("status SigBlk %q: %w", st["SigBlk"], err)
	}
	if u, ok := st["Umask"]; ok {
		v, err := strconv.ParseUint(u, 8, 32)
		if err != nil {
			return fmt.Errorf("status Umask %q: %w", u, err)
		}
		t.umask = uint32(v)
	}
	for r := 0; r < 16; r++ { // RLIM_NLIMITS
		var rl unix.Rlimit
		if err := unix.Prlimit(pid, r, nil, &rl); err != nil {
			return fmt.Errorf("prlimit %d: %w", r, err)
		}
		t.rlimits = append(t.rlimits, [2]uint64{rl.Cur, rl.Max})
	}
	for i, k := range nsKinds {
		if t.ns[i], err = nsInode(pid, k); err != nil {
			return err
		}
	}
	if t.cwd, t.cwdSt, err = readLinkStat(fmt.Sprintf("/proc/%d/cwd", pid)); err != nil {
		return fmt.Errorf("cwd: %w", err)
	}
	if t.root, t.rootSt, err = readLinkStat(fmt.Sprintf("/proc/%d/root", pid)); err != nil {
		return fmt.Errorf("root: %w", err)
	}
	if strings.HasSuffix(t.cwd, " (deleted)") {
		return fmt.Errorf("cwd %q was deleted: not supported", t.cwd)
	}
	if b, err = os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err != nil {
		return fmt.Errorf("cmdline: %w", err)
	}
	t.argv = nulSplit(b)
	if b, err = os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err != nil {
		return fmt.Errorf("environ: %w", err)
	}
	t.env = nulSplit(b)
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && !strings.HasSuffix(exe, " (deleted)") {
		t.exe = exe
	}
	return nil
}

// readFds reads the fd table of t: each fd is taken with pidfd_getfd to be
// inspected, and pipe data is peeked from the first read side of each pipe.
// Unsupported fds are returned as errors to report (the walk goes on to
// find them all); a failing system call is an error.
func (s *state) readFds(t *task) ([]error, error) {
	pidfd, err := unix.PidfdOpen(t.pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open: %w", err)
	}
	defer unix.Close(pidfd)
	fds, err := listFds(t.pid)
	if err != nil {
		return nil, fmt.Errorf("list fds: %w", err)
	}
	var refused []error
	for _, fd := range fds {
		e, bad, err := s.readFd(t, pidfd, fd)
		if err != nil {
			return nil, fmt.Errorf("fd %d: %w", fd, err)
		}
		if bad != nil {
			refused = append(refused, bad)
			continue
		}
		t.fds = append(t.fds, e)
		s.all = append(s.all, e)
	}
	return refused, nil
}

func (s *state) readFd(t *task, pidfd, fd int) (*fdEnt, *UnsupportedError, error) {
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", t.pid, fd))
	if err != nil {
		return nil, nil, err
	}
	unsupported := func(typ string) (*fdEnt, *UnsupportedError, error) {
		return nil, &UnsupportedError{Pid: t.pid, Fd: fd, Type: typ, Target: link}, nil
	}
	if typ := unsupportedByLink(link); typ != "" && typ != "socket" { // sockets: by family (inspect)
		return unsupported(typ)
	}
	fi, err := readFdInfo(t.pid, fd)
	if err != nil {
		return nil, nil, err
	}
	e := &fdEnt{t: t, fd: fd, link: link, pos: fi.pos, mntID: fi.mntID, local: -1,
		cloexec: fi.flags&unix.O_CLOEXEC != 0, flags: fi.flags &^ unix.O_CLOEXEC}
	local, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("pidfd_getfd: %w", err)
	}
	defer unix.Close(local)
	if err := unix.Fstat(local, &e.st); err != nil {
		return nil, nil, fmt.Errorf("fstat: %w", err)
	}
	bad, err := s.inspect(e, local, 0)
	if bad != nil || err != nil {
		return nil, bad, err
	}
	return e, nil, nil
}

// inspect reads what e is through the dumper's fd local of it (e.st is
// filled): its kind, owner, queued pipe data, deleted-file content,
// anon-inode state (event.go), or unix socket state and queue (files in
// flight there are read at depth+1).
func (s *state) inspect(e *fdEnt, local int, depth int) (*UnsupportedError, error) {
	var err error
	link := e.link
	if k, ok := anonKinds[link]; ok {
		// In flight, the state is read from the dumper's own fdinfo of
		// local; an epoll set's targets are matched to a task's fds in
		// resolveEpolls.
		if err := readAnon(e, k); err != nil {
			return nil, err
		}
		if e.fown, err = readFown(local); err != nil {
			return nil, err
		}
		return nil, nil
	}
	if (e.st.Mode&unix.S_IFMT == unix.S_IFREG && e.st.Nlink == 0) || (isDeletedLink(link) && !isPtsLink(link)) {
		if bad, err := s.readGhost(e, local); bad != nil || err != nil {
			return bad, err
		}
	}
	switch e.st.Mode & unix.S_IFMT {
	case unix.S_IFSOCK:
		fam, err := socketFamily(local)
		if err != nil {
			return nil, err
		}
		switch fam {
		case unix.AF_UNIX:
			e.kind = kindUnix
		case unix.AF_INET, unix.AF_INET6:
			if e.t == nil {
				return e.unsupported(familyName(fam)), nil
			}
			sk, bad, err := s.readInet(e, local, s.tcpEstablished)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", link, err)
			}
			if bad != "" {
				return e.unsupported(bad), nil
			}
			e.kind, e.inet = kindInet, sk
			if sk.stream != nil {
				// The clients of connections not yet accepted move
				// to pendingConns (resolvePending).
				s.tcpConns = append(s.tcpConns, [2]int{e.t.pid, e.fd})
			}
		default:
			return e.unsupported(familyName(fam)), nil
		}
	case unix.S_IFCHR:
		e.kind = kindReg
		if ttyMajor(unix.Major(e.st.Rdev)) {
			if e.t == nil {
				// A tty's session and data are read through its
				// holder; in flight it has none.
				return e.unsupported("tty"), nil
			}
			typ, err := s.readTTY(e, local)
			if err != nil {
				return nil, err
			}
			if typ != "" {
				return e.unsupported(typ), nil
			}
		}
	case unix.S_IFREG, unix.S_IFDIR, unix.S_IFBLK, unix.S_IFLNK:
		e.kind = kindReg
	case unix.S_IFIFO:
		e.kind = kindFifo
		if strings.HasPrefix(link, "pipe:") {
			e.kind = kindPipe
		}
	default:
		return e.unsupported(fmt.Sprintf("file of mode %#o", e.st.Mode)), nil
	}
	if e.fown, err = readFown(local); err != nil {
		return nil, err
	}
	if e.kind == kindUnix {
		return s.readUnix(e, local, depth)
	}
	acc := e.flags & unix.O_ACCMODE
	if (e.kind == kindPipe || e.kind == kindFifo) && acc == unix.O_WRONLY && !s.peeked[e.st.Ino] {
		if s.unread == nil {
			s.unread = map[uint64]*fdEnt{}
		}
		if s.unread[e.st.Ino] == nil {
			s.unread[e.st.Ino] = e
		}
	}
	if (e.kind == kindPipe || e.kind == kindFifo) && (acc == unix.O_RDONLY || acc == unix.O_RDWR) && !s.peeked[e.st.Ino] {
		s.peeked[e.st.Ino] = true
		data, size, err := s.pk.peek(local)
		if err != nil {
			return nil, fmt.Errorf("peek %s: %w", link, err)
		}
		pd := &pipeData{ino: e.st.Ino, data: data, size: size}
		if e.kind == kindPipe {
			s.pipes = append(s.pipes, pd)
		} else {
			s.fifos = append(s.fifos, pd)
		}
	}
	return nil, nil
}

// peekUnread saves the data of every pipe and FIFO the tree holds only
// write ends of: a read side is opened for the moment through
// /proc/PID/fd/N (non-blocking, so it never waits for a writer) and the
// data is peeked from it without being consumed.
func (s *state) peekUnread() error {
	pk, peeked := s.pk, s.peeked
	var todo []*fdEnt
	for ino, e := range s.unread {
		if !peeked[ino] {
			todo = append(todo, e)
		}
	}
	sort.Slice(todo, func(i, j int) bool { return todo[i].st.Ino < todo[j].st.Ino })
	for _, e := range todo {
		pid, fd := e.kcmpRef()
		path := fmt.Sprintf("/proc/%d/fd/%d", pid, fd)
		r, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("%s: open a read side of %s to save its data: %w", e.where(), e.link, err)
		}
		data, size, err := pk.peek(r)
		unix.Close(r)
		if err != nil {
			return fmt.Errorf("%s: peek %s: %w", e.where(), e.link, err)
		}
		peeked[e.st.Ino] = true
		pd := &pipeData{ino: e.st.Ino, data: data, size: size}
		if e.kind == kindPipe {
			s.pipes = append(s.pipes, pd)
		} else {
			s.fifos = append(s.fifos, pd)
		}
	}
	return nil
}

// descKey buckets fds that may share a description: equal descriptions
// have equal keys. kcmp decides within a bucket.
type descKey struct {
	dev, ino, rdev uint64
	mnt            int
	pos            uint64
	flags          uint32
}

// shareDescriptions links every fd to the first fd (in dump order) of the
// open file description it refers to.
func (s *state) shareDescriptions() error {
	buckets := map[descKey][]*fdEnt{}
	var keys []descKey
	for _, e := range s.all {
		k := descKey{e.st.Dev, e.st.Ino, e.st.Rdev, e.mntID, e.pos, e.flags}
		if buckets[k] == nil {
			keys = append(keys, k)
		}
		buckets[k] = append(buckets[k], e)
	}
	for _, k := range keys {
		b := buckets[k]
		rep, err := groupByKcmp(len(b), func(i, j int) (int, error) {
			pi, fi := b[i].kcmpRef()
			pj, fj := b[j].kcmpRef()
			r, err := kcmp(pi, pj, kcmpFile, fi, fj)
			if err != nil {
				return 0, fmt.Errorf("kcmp(KCMP_FILE) %s, %s: %w", b[i].where(), b[j].where(), err)
			}
			return r, nil
		})
		if err != nil {
			return err
		}
		for i, e := range b {
			e.desc = b[rep[i]]
		}
	}
	return nil
}

// kobjIDs numbers the tasks' mm, fd table, fs and signal handlers the way
// CRIU does: 1 is the dumper's own, then 2, 3, ... in pstree order, with
// tasks that share one object (kcmp) sharing the id.
func (s *state) kobjIDs() error {
	types := [4]int{kcmpVM, kcmpFiles, kcmpFS, kcmpSighand}
	names := [4]string{"KCMP_VM", "KCMP_FILES", "KCMP_FS", "KCMP_SIGHAND"}
	for k, typ := range types {
		rep, err := groupByKcmp(len(s.tasks), func(i, j int) (int, error) {
			r, err := kcmp(s.tasks[i].pid, s.tasks[j].pid, typ, 0, 0)
			if err != nil {
				return 0, fmt.Errorf("kcmp(%s) pid %d, pid %d: %w", names[k], s.tasks[i].pid, s.tasks[j].pid, err)
			}
			return r, nil
		})
		if err != nil {
			return err
		}
		next := uint32(2)
		for i, t := range s.tasks {
			if rep[i] != i {
				t.kobj[k] = s.tasks[rep[i]].kobj[k]
				continue
			}
			t.kobj[k] = next
			next++
		}
	}
	return nil
}
