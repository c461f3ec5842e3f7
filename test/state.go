package zdtm

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unsafe"

	"github.com/fdrestore/fdrestore/dump"
	"golang.org/x/sys/unix"
)

// State is what can be seen of a process tree from outside, with pids,
// inode numbers and description identities replaced by names that do not
// depend on the run: tasks by their position in the tree, objects and
// open file descriptions by the order they are first met.
type State struct {
	Tasks []*TaskState // sorted by Key
}

// TaskState is one task.
type TaskState struct {
	Key    string // position in the tree: "0" for the root, "0.1", "0.2", ... for its children
	Name   string // its command line after argv[0] (for messages only)
	Pid    int    // not compared
	Parent string // Key of the parent; "" for the root
	Pgid   string // Key of the group leader, or "outside"
	Sid    string // Key of the session leader, or "outside"
	Cwd    string // the working directory
	Fds    []*FdState
}

// FdState is one fd of a task.
type FdState struct {
	Num     int
	Kind    string // pipe, fifo, file, dir, chr, blk, socket, anon, link, ...
	Target  string // readlink of /proc/PID/fd/N with inode numbers removed
	Object  string // the inode: "obj1", "obj2", ... in order of appearance
	Desc    string // the open file description: "desc1", ... in order of appearance
	Flags   int    // status flags from fdinfo, without O_CLOEXEC
	Cloexec bool
	Pos     int64
	// Pipes and FIFOs.
	PipeSize int    // F_GETPIPE_SZ
	Queued   int    // bytes queued in the pipe (FIONREAD)
	DataSum  string // sha256 prefix of the queued bytes ("" when not read)
	// Owner (F_GETOWN_EX) as "pid:<task key>", "pgrp:<key>", "tid:<key>";
	// "" when none.
	Owner string
	Sig   int // F_GETSIG
	// Unix sockets: SO_TYPE, SO_ACCEPTCONN, the own and peer names as
	// ss shows them ("" unnamed, @ abstract, "-" no peer), bytes to read
	// (SIOCINQ: a datagram socket's next datagram), and the peer socket
	// by its object label ("none", or "unheld" when no fd holds it).
	SockType  int
	Listening bool
	SockName  string
	PeerName  string
	InQ       int
	Peer      string

	rawObj uint64 // dev<<32 ^ ino, for grouping
	ino    uint64
	dev    uint64
	task   *TaskState
}

func (f *FdState) String() string { return fmt.Sprintf("task %s fd %d", f.task.Key, f.Num) }

// PidKeys maps pids to task keys. Capture with a nil PidKeys names the
// tree by its shape (children in pid order).
type PidKeys map[int]string

// Capture records the state of the tree rooted at root. keys, when not
// nil, names the tasks; a task missing from it is an error.
func Capture(root int, keys PidKeys) (*State, PidKeys, error) {
	st := &State{}
	out := PidKeys{}
	type item struct {
		pid    int
		key    string
		parent string
	}
	queue := []item{{root, "0", ""}}
	if keys != nil {
		k, ok := keys[root]
		if !ok {
			return nil, nil, fmt.Errorf("root pid %d is not a known task", root)
		}
		queue[0].key = k
	}
	var tasks []*TaskState
	for len(queue) > 0 {
		it := queue[0]
		queue = queue[1:]
		ts := &TaskState{Key: it.key, Pid: it.pid, Parent: it.parent, Name: cmdline(it.pid)}
		out[it.pid] = it.key
		tasks = append(tasks, ts)
		kids := ChildPids(it.pid)
		for i, c := range kids {
			k := it.key + "." + strconv.Itoa(i+1)
			if keys != nil {
				var ok bool
				if k, ok = keys[c]; !ok {
					return nil, nil, fmt.Errorf("task %d (%s) in the tree is not a known task", c, cmdline(c))
				}
			}
			queue = append(queue, item{c, k, it.key})
		}
	}
	pidfds := map[int]int{}
	defer func() {
		for _, fd := range pidfds {
			unix.Close(fd)
		}
	}()
	for _, ts := range tasks {
		pgid, sid, err := statIDs(ts.Pid)
		if err != nil {
			return nil, nil, err
		}
		ts.Pgid, ts.Sid = keyOr(out, pgid), keyOr(out, sid)
		if ts.Cwd, err = os.Readlink("/proc/" + strconv.Itoa(ts.Pid) + "/cwd"); err != nil {
			return nil, nil, err
		}
		pfd, err := unix.PidfdOpen(ts.Pid, 0)
		if err != nil {
			return nil, nil, fmt.Errorf("pidfd_open %d: %w", ts.Pid, err)
		}
		pidfds[ts.Pid] = pfd
		if ts.Fds, err = captureFds(ts, pfd, out); err != nil {
			return nil, nil, err
		}
	}
	sort.Slice(tasks, func(i, j int) bool { return lessKey(tasks[i].Key, tasks[j].Key) })
	st.Tasks = tasks
	if err := labelShared(st, true); err != nil {
		return nil, nil, err
	}
	if err := labelPeers(st, root); err != nil {
		return nil, nil, err
	}
	return st, out, nil
}

// captureSocket reads what can be seen of a unix socket from outside.
func captureSocket(fd int, f *FdState) {
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil || v != unix.AF_UNIX {
		return
	}
	f.SockType, _ = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	acc, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	f.Listening = acc != 0
	f.SockName = sockName(fd, unix.SYS_GETSOCKNAME)
	f.PeerName = sockName(fd, unix.SYS_GETPEERNAME)
	if !f.Listening {
		f.InQ, _ = unix.IoctlGetInt(fd, unix.SIOCINQ)
	}
}

// sockName is a unix socket's name (or its peer's) as ss shows it.
func sockName(fd int, call uintptr) string {
	var sa unix.RawSockaddrUnix
	l := uint32(unsafe.Sizeof(sa))
	if _, _, e := unix.Syscall(call, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l))); e != 0 {
		if e == unix.ENOTCONN {
			return "-"
		}
		return "error: " + e.Error()
	}
	n := int(l) - 2
	if n <= 0 {
		return ""
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(sa.Path[i])
	}
	if b[0] == 0 {
		return "@" + string(b[1:])
	}
	return strings.TrimRight(string(b), "\x00")
}

// labelPeers names each unix socket's peer by the peer's object label,
// from one sock_diag dump of the root's network namespace.
func labelPeers(st *State, root int) error {
	var socks []*FdState
	for _, t := range st.Tasks {
		for _, f := range t.Fds {
			if f.Kind == "socket" && f.SockType != 0 {
				socks = append(socks, f)
			}
		}
	}
	if len(socks) == 0 {
		return nil
	}
	peers, err := dump.UnixPeers(root)
	if err != nil {
		return fmt.Errorf("unix socket peers: %w", err)
	}
	labels := map[uint64]string{}
	for _, f := range socks {
		labels[f.rawObj] = f.Object
	}
	for _, f := range socks {
		p, ok := peers[f.ino]
		switch {
		case !ok || p == 0:
			f.Peer = "none"
		case labels[f.dev<<32^p] != "":
			f.Peer = labels[f.dev<<32^p]
		default:
			f.Peer = "unheld"
		}
	}
	return nil
}

// lessKey orders "0.2" before "0.10".
func lessKey(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		x, errx := strconv.Atoi(as[i])
		y, erry := strconv.Atoi(bs[i])
		if errx == nil && erry == nil && x != y {
			return x < y
		}
		if as[i] != bs[i] {
			return as[i] < bs[i]
		}
	}
	return len(as) < len(bs)
}

func keyOr(keys PidKeys, pid int) string {
	if k, ok := keys[pid]; ok {
		return k
	}
	return "outside"
}

// ChildPids lists the children of pid over all its threads, sorted.
func ChildPids(pid int) []int {
	var out []int
	files, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/children")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, s := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(s); err == nil {
				out = append(out, n)
			}
		}
	}
	sort.Ints(out)
	return out
}

func cmdline(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return "?"
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if len(args) > 1 {
		args = args[1:]
	}
	return strings.Join(args, " ")
}

// statIDs returns the process group and session of pid.
func statIDs(pid int) (pgid, sid int, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if len(f) < 4 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	pgid, _ = strconv.Atoi(f[2])
	sid, _ = strconv.Atoi(f[3])
	return pgid, sid, nil
}

// ProcState returns the state letter of pid ("" when gone).
func ProcState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

func captureFds(ts *TaskState, pidfd int, keys PidKeys) ([]*FdState, error) {
	dir := "/proc/" + strconv.Itoa(ts.Pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []*FdState
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := captureFd(ts, pidfd, n, keys)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.EBADF) {
				continue // closed meanwhile
			}
			return nil, fmt.Errorf("task %s (pid %d) fd %d: %w", ts.Key, ts.Pid, n, err)
		}
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Num < out[j].Num })
	return out, nil
}

func captureFd(ts *TaskState, pidfd, n int, keys PidKeys) (*FdState, error) {
	link := fmt.Sprintf("/proc/%d/fd/%d", ts.Pid, n)
	target, err := os.Readlink(link)
	if err != nil {
		return nil, err
	}
	f := &FdState{Num: n, task: ts, Target: target}
	var st unix.Stat_t
	if err := unix.Stat(link, &st); err != nil {
		return nil, err
	}
	f.rawObj, f.ino, f.dev = st.Dev<<32^st.Ino, st.Ino, st.Dev
	switch {
	case strings.HasPrefix(target, "pipe:"):
		f.Kind, f.Target = "pipe", "pipe"
	case strings.HasPrefix(target, "socket:"):
		f.Kind, f.Target = "socket", "socket"
	case strings.HasPrefix(target, "anon_inode:"):
		f.Kind = "anon"
	default:
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFIFO:
			f.Kind = "fifo"
		case unix.S_IFREG:
			f.Kind = "file"
		case unix.S_IFDIR:
			f.Kind = "dir"
		case unix.S_IFCHR:
			f.Kind = "chr"
		case unix.S_IFBLK:
			f.Kind = "blk"
		case unix.S_IFLNK:
			f.Kind = "link"
		default:
			f.Kind = fmt.Sprintf("mode%o", st.Mode&unix.S_IFMT)
		}
	}
	if err := parseFdinfo(ts.Pid, n, f); err != nil {
		return nil, err
	}
	// A duplicate of the task's fd tells what /proc does not.
	fd, err := pidfdGetfd(pidfd, n)
	if err != nil {
		return nil, fmt.Errorf("pidfd_getfd: %w", err)
	}
	defer unix.Close(fd)
	var ex [2]int32 // struct f_owner_ex
	if _, _, errno := unix.Syscall(unix.SYS_FCNTL, uintptr(fd), unix.F_GETOWN_EX, uintptr(unsafe.Pointer(&ex))); errno == 0 && ex[1] != 0 {
		typ := map[int32]string{0: "tid", 1: "pid", 2: "pgrp"}[ex[0]] // F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP
		f.Owner = typ + ":" + keyOr(keys, int(ex[1]))
		if f.Owner == typ+":outside" {
			f.Owner += "(" + strconv.Itoa(int(ex[1])) + ")"
		}
	}
	if sig, err := unix.FcntlInt(uintptr(fd), unix.F_GETSIG, 0); err == nil {
		f.Sig = sig
	}
	if f.Kind == "socket" {
		captureSocket(fd, f)
	}
	if f.Kind == "pipe" || f.Kind == "fifo" {
		if sz, err := unix.FcntlInt(uintptr(fd), unix.F_GETPIPE_SZ, 0); err == nil {
			f.PipeSize = sz
		}
		if q, err := unix.IoctlGetInt(fd, unix.TIOCINQ); err == nil { // TIOCINQ is FIONREAD
			f.Queued = q
		}
	}
	return f, nil
}

func pidfdGetfd(pidfd, fd int) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_PIDFD_GETFD, uintptr(pidfd), uintptr(fd), 0)
	if errno != 0 {
		return -1, errno
	}
	nfd := int(r)
	unix.CloseOnExec(nfd)
	return nfd, nil
}

func parseFdinfo(pid, n int, f *FdState) error {
	fh, err := os.Open(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, n))
	if err != nil {
		return err
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "pos":
			f.Pos, _ = strconv.ParseInt(v, 10, 64)
		case "flags":
			fl, _ := strconv.ParseInt(v, 8, 64)
			f.Cloexec = fl&unix.O_CLOEXEC != 0
			f.Flags = int(fl) &^ unix.O_CLOEXEC
		}
	}
	return sc.Err()
}

// labelShared names objects and descriptions in order of appearance and,
// when live, reads the queued data of every pipe. Descriptions are told
// apart with kcmp(KCMP_FILE) among fds on the same inode.
func labelShared(st *State, live bool) error {
	var all []*FdState
	for _, t := range st.Tasks {
		all = append(all, t.Fds...)
	}
	objs := map[uint64]string{}
	byObj := map[uint64][]*FdState{}
	for _, f := range all {
		if _, ok := objs[f.rawObj]; !ok {
			objs[f.rawObj] = "obj" + strconv.Itoa(len(objs)+1)
		}
		f.Object = objs[f.rawObj]
		byObj[f.rawObj] = append(byObj[f.rawObj], f)
	}
	ndesc := 0
	for _, f := range all {
		if f.Desc != "" {
			continue
		}
		ndesc++
		f.Desc = "desc" + strconv.Itoa(ndesc)
		for _, g := range byObj[f.rawObj] {
			if g.Desc != "" {
				continue
			}
			same, err := sameFile(f.task.Pid, f.Num, g.task.Pid, g.Num)
			if err != nil {
				return fmt.Errorf("kcmp %s and %s: %w", f, g, err)
			}
			if same {
				g.Desc = f.Desc
			}
		}
	}
	if !live {
		return nil
	}
	for _, fs := range byObj {
		if fs[0].Kind != "pipe" && fs[0].Kind != "fifo" {
			continue
		}
		sum, err := peekPipe(fs)
		if err != nil {
			return fmt.Errorf("%s: queued data: %w", fs[0], err)
		}
		for _, f := range fs {
			f.DataSum = sum
		}
	}
	return nil
}

func sameFile(pid1, fd1, pid2, fd2 int) (bool, error) {
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, uintptr(pid1), uintptr(pid2), 0 /* KCMP_FILE */, uintptr(fd1), uintptr(fd2), 0)
	if errno != 0 {
		return false, errno
	}
	return r == 0, nil
}

// peekPipe hashes the bytes queued in a pipe without consuming them: a
// fresh non-blocking read-only open of the pipe through /proc, tee'd into
// a scratch pipe.
func peekPipe(fs []*FdState) (string, error) {
	f := fs[0]
	queued := f.Queued
	if queued == 0 {
		return "empty", nil
	}
	src, err := unix.Open(fmt.Sprintf("/proc/%d/fd/%d", f.task.Pid, f.Num), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(src)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return "", err
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	size := max(f.PipeSize, 64<<10)
	if _, err := unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, size); err != nil {
		return "", fmt.Errorf("scratch pipe of %d bytes: %w", size, err)
	}
	n, err := unix.Tee(src, p[1], queued, unix.SPLICE_F_NONBLOCK)
	if err != nil {
		return "", fmt.Errorf("tee: %w", err)
	}
	h := sha256.New()
	buf := make([]byte, 64<<10)
	for got := int64(0); got < n; {
		m, err := unix.Read(p[0], buf)
		if err != nil || m == 0 {
			return "", fmt.Errorf("read scratch pipe: %v", err)
		}
		h.Write(buf[:m])
		got += int64(m)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// ---- comparison ----

// link points every fd at its task (states built by hand or decoded from
// JSON lack it).
func (s *State) link() {
	for _, t := range s.Tasks {
		for _, f := range t.Fds {
			f.task = t
		}
	}
}

// Compare lists every difference between the recorded state and the
// restored one, as sentences naming the task, the fd and what differed.
func Compare(rec, got *State) []string {
	rec.link()
	got.link()
	var diffs []string
	add := func(format string, args ...any) { diffs = append(diffs, fmt.Sprintf(format, args...)) }
	gotTasks := map[string]*TaskState{}
	for _, t := range got.Tasks {
		gotTasks[t.Key] = t
	}
	recTasks := map[string]*TaskState{}
	for _, t := range rec.Tasks {
		recTasks[t.Key] = t
	}
	for _, rt := range rec.Tasks {
		gt, ok := gotTasks[rt.Key]
		if !ok {
			add("task %s (%s) missing after restore", rt.Key, rt.Name)
			continue
		}
		for _, c := range [][3]string{{"parent", rt.Parent, gt.Parent}, {"process group", rt.Pgid, gt.Pgid}, {"session", rt.Sid, gt.Sid}} {
			if c[1] != c[2] {
				add("task %s: %s is task %s before the dump, task %s after restore", rt.Key, c[0], c[1], c[2])
			}
		}
		if rt.Cwd != gt.Cwd {
			add("task %s: working directory %s before the dump, %s after restore", rt.Key, rt.Cwd, gt.Cwd)
		}
		gfds := map[int]*FdState{}
		for _, f := range gt.Fds {
			gfds[f.Num] = f
		}
		for _, rf := range rt.Fds {
			gf, ok := gfds[rf.Num]
			if !ok {
				add("task %s: fd %d (%s) missing after restore", rt.Key, rf.Num, rf.Target)
				continue
			}
			delete(gfds, rf.Num)
			compareFd(rf, gf, add)
		}
		var extra []int
		for n := range gfds {
			extra = append(extra, n)
		}
		sort.Ints(extra)
		for _, n := range extra {
			add("task %s: extra fd %d (%s) after restore", rt.Key, n, gfds[n].Target)
		}
	}
	for _, gt := range got.Tasks {
		if _, ok := recTasks[gt.Key]; !ok {
			add("extra task %s (%s) after restore", gt.Key, gt.Name)
		}
	}
	diffs = append(diffs, comparePartition(rec, got, "open file description", func(f *FdState) string { return f.Desc })...)
	diffs = append(diffs, comparePartition(rec, got, "object (inode)", func(f *FdState) string { return f.Object })...)
	return diffs
}

func compareFd(r, g *FdState, add func(string, ...any)) {
	where := fmt.Sprintf("task %s fd %d", r.task.Key, r.Num)
	if r.Kind != g.Kind || r.Target != g.Target {
		add("%s: %s %s before the dump, %s %s after restore", where, r.Kind, r.Target, g.Kind, g.Target)
		return
	}
	if r.Flags != g.Flags {
		add("%s: flags %s before the dump, %s after restore", where, FlagString(r.Flags), FlagString(g.Flags))
	}
	if r.Cloexec != g.Cloexec {
		add("%s: FD_CLOEXEC %v before the dump, %v after restore", where, r.Cloexec, g.Cloexec)
	}
	if r.Pos != g.Pos {
		add("%s: offset %d before the dump, %d after restore", where, r.Pos, g.Pos)
	}
	if r.PipeSize != g.PipeSize {
		add("%s: pipe buffer %d bytes before the dump, %d after restore", where, r.PipeSize, g.PipeSize)
	}
	if r.Queued != g.Queued {
		add("%s: %d bytes queued before the dump, %d after restore", where, r.Queued, g.Queued)
	} else if r.DataSum != g.DataSum {
		add("%s: queued data differs (sha256 %s before the dump, %s after restore)", where, r.DataSum, g.DataSum)
	}
	if r.Owner != g.Owner {
		add("%s: owner %q before the dump, %q after restore", where, r.Owner, g.Owner)
	}
	if r.Sig != g.Sig {
		add("%s: F_GETSIG %d before the dump, %d after restore", where, r.Sig, g.Sig)
	}
	if r.SockType != g.SockType || r.Listening != g.Listening {
		add("%s: socket type %d listening %v before the dump, type %d listening %v after restore", where, r.SockType, r.Listening, g.SockType, g.Listening)
	}
	if r.SockName != g.SockName || r.PeerName != g.PeerName {
		add("%s: socket name %q peer name %q before the dump, %q and %q after restore", where, r.SockName, r.PeerName, g.SockName, g.PeerName)
	}
	if r.InQ != g.InQ {
		add("%s: %d bytes to read on the socket before the dump, %d after restore", where, r.InQ, g.InQ)
	}
	if r.Peer != g.Peer {
		add("%s: peer socket %s before the dump, %s after restore", where, r.Peer, g.Peer)
	}
}

// comparePartition reports fds that shared something (description or
// inode) before the dump but not after, and the other way round.
func comparePartition(rec, got *State, what string, label func(*FdState) string) []string {
	index := func(s *State) map[string]*FdState {
		m := map[string]*FdState{}
		for _, t := range s.Tasks {
			for _, f := range t.Fds {
				m[t.Key+"/"+strconv.Itoa(f.Num)] = f
			}
		}
		return m
	}
	rm, gm := index(rec), index(got)
	var diffs []string
	check := func(a, b map[string]*FdState, shared, apart string) {
		groups := map[string][]string{}
		for id, f := range a {
			if _, ok := b[id]; ok {
				groups[label(f)] = append(groups[label(f)], id)
			}
		}
		var labels []string
		for l := range groups {
			labels = append(labels, l)
		}
		sort.Strings(labels)
		for _, l := range labels {
			ids := groups[l]
			sort.Slice(ids, func(i, j int) bool { return lessFdID(ids[i], ids[j]) })
			parts := map[string][]string{}
			var order []string
			for _, id := range ids {
				bl := label(b[id])
				if _, ok := parts[bl]; !ok {
					order = append(order, bl)
				}
				parts[bl] = append(parts[bl], id)
			}
			if len(parts) < 2 {
				continue
			}
			var sets []string
			for _, bl := range order {
				sets = append(sets, "{"+fdNames(parts[bl])+"}")
			}
			diffs = append(diffs, fmt.Sprintf("%s share one %s %s, but %d after restore: %s", fdNames(ids), what, shared, len(parts), apart+strings.Join(sets, " ")))
		}
	}
	check(rm, gm, "before the dump", "")
	// The other way round: one after restore, several before.
	var merged []string
	groups := map[string][]string{}
	for id, f := range gm {
		if _, ok := rm[id]; ok {
			groups[label(f)] = append(groups[label(f)], id)
		}
	}
	for _, ids := range groups {
		sort.Slice(ids, func(i, j int) bool { return lessFdID(ids[i], ids[j]) })
		seen := map[string]bool{}
		for _, id := range ids {
			seen[label(rm[id])] = true
		}
		if len(seen) > 1 {
			merged = append(merged, fmt.Sprintf("%s are %d separate %ss before the dump, but one after restore", fdNames(ids), len(seen), what))
		}
	}
	sort.Strings(merged)
	return append(diffs, merged...)
}

func lessFdID(a, b string) bool {
	ak, an, _ := strings.Cut(a, "/")
	bk, bn, _ := strings.Cut(b, "/")
	if ak != bk {
		return lessKey(ak, bk)
	}
	x, _ := strconv.Atoi(an)
	y, _ := strconv.Atoi(bn)
	return x < y
}

func fdNames(ids []string) string {
	var out []string
	for _, id := range ids {
		k, n, _ := strings.Cut(id, "/")
		out = append(out, "task "+k+" fd "+n)
	}
	return strings.Join(out, ", ")
}

// FlagString renders open(2) status flags.
func FlagString(fl int) string {
	var parts []string
	switch fl & unix.O_ACCMODE {
	case unix.O_RDONLY:
		parts = append(parts, "O_RDONLY")
	case unix.O_WRONLY:
		parts = append(parts, "O_WRONLY")
	case unix.O_RDWR:
		parts = append(parts, "O_RDWR")
	default:
		parts = append(parts, "O_ACCMODE(3)")
	}
	rest := fl &^ unix.O_ACCMODE
	for _, n := range []struct {
		v    int
		name string
	}{{unix.O_APPEND, "O_APPEND"}, {unix.O_NONBLOCK, "O_NONBLOCK"}, {unix.O_ASYNC, "O_ASYNC"}, {unix.O_DIRECT, "O_DIRECT"},
		{0o100000, "O_LARGEFILE"}, {unix.O_DIRECTORY, "O_DIRECTORY"}, {unix.O_NOFOLLOW, "O_NOFOLLOW"},
		{unix.O_NOATIME, "O_NOATIME"}, {unix.O_PATH, "O_PATH"}, {unix.O_DSYNC, "O_DSYNC"}, {unix.O_SYNC &^ unix.O_DSYNC, "__O_SYNC"},
		{unix.O_CREAT, "O_CREAT"}, {unix.O_EXCL, "O_EXCL"}, {unix.O_NOCTTY, "O_NOCTTY"}, {unix.O_TRUNC, "O_TRUNC"}} {
		if rest&n.v != 0 {
			parts = append(parts, n.name)
			rest &^= n.v
		}
	}
	if rest != 0 {
		parts = append(parts, fmt.Sprintf("%#o", rest))
	}
	return strings.Join(parts, "|")
}

// Summary renders a state for logs, one line per fd.
func (s *State) Summary() string {
	var b strings.Builder
	for _, t := range s.Tasks {
		fmt.Fprintf(&b, "task %s (%s) parent=%q pgid=%s sid=%s cwd=%s\n", t.Key, t.Name, t.Parent, t.Pgid, t.Sid, t.Cwd)
		for _, f := range t.Fds {
			fmt.Fprintf(&b, "  fd %d %s %s %s %s flags=%s cloexec=%v pos=%d", f.Num, f.Kind, f.Target, f.Object, f.Desc, FlagString(f.Flags), f.Cloexec, f.Pos)
			if f.Kind == "pipe" || f.Kind == "fifo" {
				fmt.Fprintf(&b, " size=%d queued=%d data=%s", f.PipeSize, f.Queued, f.DataSum)
			}
			if f.SockType != 0 {
				fmt.Fprintf(&b, " type=%d listening=%v name=%q peername=%q inq=%d peer=%s", f.SockType, f.Listening, f.SockName, f.PeerName, f.InQ, f.Peer)
			}
			if f.Owner != "" || f.Sig != 0 {
				fmt.Fprintf(&b, " owner=%s sig=%d", f.Owner, f.Sig)
			}
			b.WriteByte('\n')
		}
	}
	return b.String()
}
