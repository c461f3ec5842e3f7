package main

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Environment of a scenario task.
const (
	envReady    = "ZDTM_READY_FD" // root, first start: report "ready" here
	envSync     = "ZDTM_SYNC_FD"  // child, first start: report "ok" here
	envDir      = "ZDTM_DIR"      // work directory for files and FIFOs
	envResult   = "ZDTM_RESULT"   // append verdict lines here
	envRestored = "FDRESTORE_RESTORED"
)

// Deadlines inside a task.
var (
	ioTimeout   = 15 * time.Second // one read/write/wait (ZDTM_IO_TIMEOUT overrides)
	waitForever = 10 * time.Minute // safety net: a forgotten task exits
)

func init() {
	if d, err := time.ParseDuration(os.Getenv("ZDTM_IO_TIMEOUT")); err == nil && d > 0 {
		ioTimeout = d
	}
}

// T is the running task.
type T struct {
	Sc       *Scenario
	Role     string
	Restored bool
	Dir      string
	floor    int // service fds live at or above this number
	fails    []string
	kick     chan os.Signal
	sigio    chan os.Signal
	children []child // snapshot at verification time
	spawned  []*Proc
}

type child struct {
	pid  int
	role string
}

// Fail records a verification failure.
func (t *T) Fail(format string, args ...any) {
	t.fails = append(t.fails, fmt.Sprintf(format, args...))
}

// Check records err (if any) with a prefix and reports whether it was nil.
func (t *T) Check(err error, what string) bool {
	if err != nil {
		t.Fail("%s: %v", what, err)
		return false
	}
	return true
}

// Path names a file in the work directory.
func (t *T) Path(name string) string { return filepath.Join(t.Dir, t.Sc.Name+"."+name) }

func run(sc *Scenario, role string) int {
	r, ok := sc.Roles[role]
	if !ok {
		fmt.Fprintf(os.Stderr, "scenario %s: unknown role %q\n", sc.Name, role)
		return 2
	}
	t := &T{Sc: sc, Role: role, Restored: os.Getenv(envRestored) == "1", Dir: os.Getenv(envDir)}
	verify := make(chan os.Signal, 1)
	t.kick = make(chan os.Signal, 8)
	t.sigio = make(chan os.Signal, 64)
	signal.Notify(verify, unix.SIGUSR2)
	signal.Notify(t.kick, unix.SIGUSR1)
	signal.Notify(t.sigio, unix.SIGIO)
	var rl unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &rl)
	t.floor = int(rl.Cur) - 64
	if t.floor < 1000 {
		t.floor = int(rl.Cur) / 2
	}

	if !t.Restored {
		report, err := t.takeReportFD(role)
		if err == nil && r.Setup != nil {
			err = r.Setup(t)
		}
		if err == nil {
			err = t.checkTable(append(r.Fds(t), r.cloexecFds()...), report)
		}
		if report >= 0 {
			msg := "ok\n"
			if role == "root" {
				msg = "ready\n"
			}
			if err != nil {
				msg = "error: " + sc.Name + "/" + role + ": " + err.Error() + "\n"
			}
			unix.Write(report, []byte(msg))
			unix.Close(report)
		}
		if err != nil {
			t.killSpawned()
			return 1
		}
		if r.ExitAfterSetup {
			return 0
		}
	} else {
		t.restoredStart(r)
	}
	setComm("zdtm-wait")

	select {
	case <-verify:
	case <-after(waitForever):
		return 3
	}
	setComm("zdtm-verify")
	t.snapshotChildren()
	if r.BeforeChildren != nil {
		r.BeforeChildren(t)
	}
	for _, c := range t.children {
		unix.Kill(c.pid, unix.SIGUSR2)
	}
	if r.Verify != nil {
		r.Verify(t)
	}
	if r.Children != nil {
		t.checkChildren(r.Children(t))
	}
	t.waitChildren()
	return t.verdict()
}

func (r *Role) cloexecFds() []int {
	if r.Cloexec == nil {
		return nil
	}
	return r.Cloexec
}

// takeReportFD moves the ready/sync fd to the service area and closes
// every other fd the task inherited besides 0-2 (leaks from whoever
// started the runner).
func (t *T) takeReportFD(role string) (int, error) {
	name := envSync
	if role == "root" {
		name = envReady
	}
	fd, err := strconv.Atoi(os.Getenv(name))
	if err != nil {
		return -1, fmt.Errorf("%s not set", name)
	}
	fds, err := listFds()
	if err != nil {
		return -1, err
	}
	// A child's other fds are the state it inherited on purpose.
	for n := range fds {
		if role == "root" && n > 2 && n != fd {
			unix.Close(n)
		}
	}
	return t.hi(fd)
}

// restoredStart runs right after the restored task was exec'd: the Go
// runtime opened /dev/null on whichever of 0-2 the task does not have;
// those are closed again, then the fd table is compared with the role's.
func (t *T) restoredStart(r *Role) {
	want := r.Fds(t)
	for fd := 0; fd <= 2; fd++ {
		if !slices.Contains(want, fd) {
			if target, err := readlinkFd(fd); err == nil && target == "/dev/null" {
				unix.Close(fd)
			}
		}
	}
	// --exec-recorded keeps the close-on-exec fds open across its exec
	// and lists them in FDRESTORE_CLOEXEC_FDS: they must be exactly the
	// role's, and the program sets FD_CLOEXEC on them again.
	cloexec, err := parseFdList(os.Getenv("FDRESTORE_CLOEXEC_FDS"))
	if err != nil {
		t.Fail("after restore: FDRESTORE_CLOEXEC_FDS: %v", err)
	}
	if !slices.Equal(cloexec, sortedCopy(r.cloexecFds())) {
		t.Fail("after restore: FDRESTORE_CLOEXEC_FDS lists %v, want %v", cloexec, sortedCopy(r.cloexecFds()))
	}
	if err := t.checkTable(append(slices.Clone(want), cloexec...), -1); err != nil {
		t.Fail("after restore: %v", err)
	}
	for _, fd := range cloexec {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
			t.Fail("after restore: set FD_CLOEXEC on fd %d: %v", fd, err)
		}
	}
	if r.AfterExec != nil {
		t.Check(r.AfterExec(t), "after exec")
	}
}

// parseFdList parses "12,20-23" (FDRESTORE_CLOEXEC_FDS) into sorted fds.
func parseFdList(s string) ([]int, error) {
	var out []int
	if s == "" {
		return out, nil
	}
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", s, err)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("%q: bad range %q", s, part)
			}
		}
		for fd := a; fd <= b; fd++ {
			out = append(out, fd)
		}
	}
	slices.Sort(out)
	return out, nil
}

func sortedCopy(v []int) []int {
	out := append([]int{}, v...)
	slices.Sort(out)
	return out
}

// checkTable compares the open fds with want (plus skip).
func (t *T) checkTable(want []int, skip int) error {
	have, err := listFds()
	if err != nil {
		return err
	}
	var extra, missing []string
	for n, target := range have {
		if n != skip && !slices.Contains(want, n) {
			extra = append(extra, fmt.Sprintf("%d (%s)", n, target))
		}
	}
	for _, n := range want {
		if _, ok := have[n]; !ok {
			missing = append(missing, strconv.Itoa(n))
		}
	}
	sort.Strings(extra)
	var parts []string
	if len(extra) > 0 {
		parts = append(parts, "unexpected fds "+strings.Join(extra, ", "))
	}
	if len(missing) > 0 {
		parts = append(parts, "missing fds "+strings.Join(missing, ", "))
	}
	if parts != nil {
		return errors.New(strings.Join(parts, "; "))
	}
	return nil
}

// Package os must not open files here: on Linux every os.Open registers
// the fd with the runtime's netpoller, which creates its epoll and
// eventfd at the lowest free fd numbers. These read with raw syscalls.

// readFile reads a small file.
func readFile(path string) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var out []byte
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return out, err
		}
		if n == 0 {
			return out, nil
		}
		out = append(out, buf[:n]...)
	}
}

// readDirNames lists a directory.
func readDirNames(path string) ([]string, error) {
	dir, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dir)
	var names []string
	buf := make([]byte, 16384)
	for {
		n, err := unix.ReadDirent(dir, buf)
		if err != nil {
			return names, err
		}
		if n == 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}

// listFds returns the open fds and their /proc targets, without the fd
// used to read the directory.
func listFds() (map[int]string, error) {
	dir, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /proc/self/fd: %w", err)
	}
	defer unix.Close(dir)
	out := map[int]string{}
	buf := make([]byte, 16384)
	for {
		n, err := unix.ReadDirent(dir, buf)
		if err != nil {
			return nil, fmt.Errorf("read /proc/self/fd: %w", err)
		}
		if n == 0 {
			break
		}
		var names []string
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
		for _, name := range names {
			fd, err := strconv.Atoi(name)
			if err != nil || fd == dir {
				continue
			}
			target, _ := readlinkFd(fd)
			out[fd] = target
		}
	}
	return out, nil
}

func readlinkFd(fd int) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Readlink("/proc/self/fd/"+strconv.Itoa(fd), buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func setComm(name string) {
	b := append([]byte(name), 0)
	unix.Syscall(unix.SYS_PRCTL, unix.PR_SET_NAME, uintptr(unsafe.Pointer(&b[0])), 0)
}

// verdict writes the task's result line and returns its exit status.
func (t *T) verdict() int {
	line := t.Sc.Name + "/" + t.Role + ": PASS\n"
	status := 0
	if len(t.fails) > 0 {
		line = t.Sc.Name + "/" + t.Role + ": FAIL: " + strings.ReplaceAll(strings.Join(t.fails, "; "), "\n", " ") + "\n"
		status = 1
	}
	if path := os.Getenv(envResult); path != "" {
		fd, err := unix.Open(path, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
		if err == nil {
			unix.Write(fd, []byte(line))
			unix.Close(fd)
		}
	}
	return status
}

// snapshotChildren records the task's children and their roles.
func (t *T) snapshotChildren() {
	for _, pid := range childPids(os.Getpid()) {
		t.children = append(t.children, child{pid: pid, role: roleOf(pid)})
	}
}

// childPids lists the children of pid over all its threads.
func childPids(pid int) []int {
	var out []int
	tids, _ := readDirNames("/proc/" + strconv.Itoa(pid) + "/task")
	for _, tid := range tids {
		b, err := readFile("/proc/" + strconv.Itoa(pid) + "/task/" + tid + "/children")
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

// roleOf returns the role a scenario task runs ("root" without one).
func roleOf(pid int) string {
	b, err := readFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return "?"
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	switch len(args) {
	case 2:
		return "root"
	case 3:
		return args[2]
	}
	return fmt.Sprintf("? (%q)", args)
}

// Child returns the pid of the child running role, or fails.
func (t *T) Child(role string) int {
	for _, c := range t.children {
		if c.role == role {
			return c.pid
		}
	}
	t.Fail("no child with role %s", role)
	return -1
}

func (t *T) checkChildren(want []string) {
	var have []string
	for _, c := range t.children {
		have = append(have, c.role)
	}
	sort.Strings(have)
	w := slices.Clone(want)
	sort.Strings(w)
	if !slices.Equal(have, w) {
		t.Fail("children %v, want %v", have, w)
	}
}

// waitChildren reaps every child within the I/O deadline and fails on
// any that did not exit 0.
func (t *T) waitChildren() {
	deadline := time.Now().Add(ioTimeout)
	roles := map[int]string{}
	for _, c := range t.children {
		roles[c.pid] = c.role
	}
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.ECHILD {
			return
		}
		if err != nil && err != unix.EINTR {
			t.Fail("wait for children: %v", err)
			return
		}
		if pid > 0 {
			switch {
			case ws.Exited() && ws.ExitStatus() == 0:
			case ws.Exited():
				t.Fail("child %s (pid %d) exited with status %d", roles[pid], pid, ws.ExitStatus())
			default:
				t.Fail("child %s (pid %d) killed by %v", roles[pid], pid, ws.Signal())
			}
			continue
		}
		if time.Now().After(deadline) {
			t.Fail("children still running after %v: %v", ioTimeout, childPids(os.Getpid()))
			for _, pid := range childPids(os.Getpid()) {
				unix.Kill(pid, unix.SIGKILL)
			}
			return
		}
		sleep(2 * time.Millisecond)
	}
}

// WaitKick waits for SIGUSR1 from a peer task.
func (t *T) WaitKick(what string) bool {
	select {
	case <-t.kick:
		return true
	case <-after(ioTimeout):
		t.Fail("timed out waiting for %s", what)
		return false
	}
}

// Kick sends SIGUSR1 to pid.
func (t *T) Kick(pid int) {
	if pid > 0 {
		unix.Kill(pid, unix.SIGUSR1)
	}
}

// SigioCount returns how many SIGIO arrived so far.
func (t *T) SigioCount() int {
	n := 0
	for {
		select {
		case <-t.sigio:
			n++
		default:
			return n
		}
	}
}

// ---- building state ----

// hi moves fd into the service area (close-on-exec) and returns the new
// number.
func (t *T) hi(fd int) (int, error) {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, t.floor)
	if err != nil {
		return -1, fmt.Errorf("move fd %d above %d: %w", fd, t.floor, err)
	}
	unix.Close(fd)
	return nfd, nil
}

// Place puts fd at number target (no FD_CLOEXEC) and closes fd.
func (t *T) Place(fd, target int) error {
	if fd == target {
		_, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0)
		return err
	}
	if err := unix.Dup3(fd, target, 0); err != nil {
		return fmt.Errorf("dup3 %d -> %d: %w", fd, target, err)
	}
	return unix.Close(fd)
}

// placeNew puts a fresh fd (from eventfd, signalfd, ...) at number n.
func (t *T) placeNew(fd int, err error, n int) error {
	if err != nil {
		return err
	}
	if fd, err = t.hi(fd); err != nil {
		return err
	}
	return t.Place(fd, n)
}

// PipeAt creates a pipe (pipe2 flags) with its ends at r and w.
func (t *T) PipeAt(r, w, flags int) error {
	var p [2]int
	if err := unix.Pipe2(p[:], flags|unix.O_CLOEXEC); err != nil {
		return fmt.Errorf("pipe2: %w", err)
	}
	hr, err := t.hi(p[0])
	if err != nil {
		return err
	}
	hw, err := t.hi(p[1])
	if err != nil {
		return err
	}
	if err := t.Place(hr, r); err != nil {
		return err
	}
	return t.Place(hw, w)
}

// OpenAt opens path at number target.
func (t *T) OpenAt(path string, flags int, mode uint32, target int) error {
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, mode)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	if fd, err = t.hi(fd); err != nil {
		return err
	}
	return t.Place(fd, target)
}

// DupAt duplicates fd at number target.
func (t *T) DupAt(fd, target int) error {
	if err := unix.Dup3(fd, target, 0); err != nil {
		return fmt.Errorf("dup3 %d -> %d: %w", fd, target, err)
	}
	return nil
}

// Mkfifo creates a FIFO with exactly mode.
func Mkfifo(path string, mode uint32) error {
	unix.Unlink(path)
	if err := unix.Mknod(path, unix.S_IFIFO|mode, 0); err != nil {
		return fmt.Errorf("mknod %s: %w", path, err)
	}
	return unix.Chmod(path, mode)
}

// Proc is a started child.
type Proc struct {
	Pid  int
	sync int
	role string
}

// SpawnOpts adjust a child's start.
type SpawnOpts struct {
	Stdio   [3]int // fds that become the child's 0-2 (default: 0, 1, 2)
	Setpgid bool
	Pgid    int
	NewNet  bool // born in a network namespace of its own
}

// Start starts a child running role; it inherits every fd without
// FD_CLOEXEC. Wait for its report with Proc.Ready.
func (t *T) Start(role string, o *SpawnOpts) (*Proc, error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, err
	}
	r, err := t.hi(p[0])
	if err != nil {
		return nil, err
	}
	w, err := t.hi(p[1])
	if err != nil {
		return nil, err
	}
	defer unix.Close(w)
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	// A child of a child must not see its parent's report fd.
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, envSync+"=") })
	env = append(env, envSync+"="+strconv.Itoa(w))
	files := []uintptr{0, 1, 2}
	sys := &syscall.SysProcAttr{}
	if o != nil {
		if o.Stdio != [3]int{} {
			for i, fd := range o.Stdio {
				files[i] = uintptr(fd)
			}
		}
		sys.Setpgid, sys.Pgid = o.Setpgid, o.Pgid
		if o.NewNet {
			sys.Cloneflags = unix.CLONE_NEWNET
		}
	}
	// Only this child may inherit its report fd.
	if _, err := unix.FcntlInt(uintptr(w), unix.F_SETFD, 0); err != nil {
		return nil, err
	}
	pid, err := syscall.ForkExec(exe, []string{os.Args[0], t.Sc.Name, role}, &syscall.ProcAttr{Env: env, Files: files, Sys: sys})
	if err != nil {
		unix.Close(r)
		return nil, fmt.Errorf("start %s: %w", role, err)
	}
	pr := &Proc{Pid: pid, sync: r, role: role}
	t.spawned = append(t.spawned, pr)
	return pr, nil
}

// Ready waits for the child's report.
func (p *Proc) Ready() error {
	defer unix.Close(p.sync)
	var out []byte
	deadline := time.Now().Add(ioTimeout)
	buf := make([]byte, 512)
	for {
		if err := pollIn(p.sync, deadline); err != nil {
			return fmt.Errorf("child %s: %w", p.role, err)
		}
		n, err := unix.Read(p.sync, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("child %s: %w", p.role, err)
		}
		if n == 0 {
			break
		}
		out = append(out, buf[:n]...)
	}
	s := strings.TrimSpace(string(out))
	if s != "ok" {
		if s == "" {
			s = "exited without reporting"
		}
		return fmt.Errorf("child %s: %s", p.role, s)
	}
	return nil
}

// Spawn starts a child and waits until it is ready.
func (t *T) Spawn(role string, o *SpawnOpts) (*Proc, error) {
	p, err := t.Start(role, o)
	if err != nil {
		return nil, err
	}
	return p, p.Ready()
}

func (t *T) killSpawned() {
	for _, p := range t.spawned {
		unix.Kill(p.Pid, unix.SIGKILL)
	}
}

// ---- time without the netpoller ----

// Go's timers (time.Sleep, time.After, ...) start the runtime's network
// poller, whose epoll and eventfd would take the lowest free fd numbers
// of the task. These helpers sleep with nanosleep(2) instead.

func sleep(d time.Duration) {
	ts := unix.NsecToTimespec(d.Nanoseconds())
	for unix.Nanosleep(&ts, &ts) == unix.EINTR {
	}
}

// after is time.After on a sleeping thread.
func after(d time.Duration) <-chan struct{} {
	c := make(chan struct{}, 1)
	go func() { sleep(d); c <- struct{}{} }()
	return c
}

// ---- I/O with deadlines ----

func pollFd(fd int, ev int16, deadline time.Time) error {
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("fd %d: timed out after %v", fd, ioTimeout)
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: ev}}
		n, err := unix.Poll(pfd, int(left/time.Millisecond)+1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll fd %d: %w", fd, err)
		}
		if n > 0 {
			if pfd[0].Revents&unix.POLLNVAL != 0 {
				return fmt.Errorf("fd %d: not open", fd)
			}
			return nil
		}
	}
}

func pollIn(fd int, deadline time.Time) error { return pollFd(fd, unix.POLLIN, deadline) }

// ReadFull reads exactly n bytes from fd (EOF first is an error).
func ReadFull(fd, n int) ([]byte, error) {
	deadline := time.Now().Add(ioTimeout)
	out := make([]byte, 0, n)
	buf := make([]byte, min(n, 1<<20))
	for len(out) < n {
		if err := pollIn(fd, deadline); err != nil {
			return out, fmt.Errorf("read fd %d: got %d of %d bytes: %w", fd, len(out), n, err)
		}
		m, err := unix.Read(fd, buf[:min(len(buf), n-len(out))])
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("read fd %d: got %d of %d bytes: %w", fd, len(out), n, err)
		}
		if m == 0 {
			return out, fmt.Errorf("read fd %d: EOF after %d of %d bytes", fd, len(out), n)
		}
		out = append(out, buf[:m]...)
	}
	return out, nil
}

// ReadToEOF reads fd until EOF (a writer left open somewhere makes it
// time out).
func ReadToEOF(fd int) ([]byte, error) {
	deadline := time.Now().Add(ioTimeout)
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		if err := pollIn(fd, deadline); err != nil {
			return out, fmt.Errorf("read fd %d to EOF after %d bytes (is a write end still open?): %w", fd, len(out), err)
		}
		m, err := unix.Read(fd, buf)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("read fd %d: %w", fd, err)
		}
		if m == 0 {
			return out, nil
		}
		out = append(out, buf[:m]...)
	}
}

// WriteAll writes data to fd.
func WriteAll(fd int, data []byte) error {
	deadline := time.Now().Add(ioTimeout)
	for len(data) > 0 {
		if err := pollFd(fd, unix.POLLOUT, deadline); err != nil {
			return fmt.Errorf("write fd %d: %d bytes left: %w", fd, len(data), err)
		}
		n, err := unix.Write(fd, data)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return fmt.Errorf("write fd %d: %w", fd, err)
		}
		data = data[n:]
	}
	return nil
}

// ---- checks ----

// GetFL returns F_GETFL of fd.
func GetFL(fd int) (int, error) { return unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0) }

// CheckFlags fails unless the status flags of fd under mask equal want.
func (t *T) CheckFlags(fd, mask, want int) {
	fl, err := GetFL(fd)
	if err != nil {
		t.Fail("fd %d: F_GETFL: %v", fd, err)
		return
	}
	if fl&mask != want {
		t.Fail("fd %d: flags %#o under mask %#o, want %#o", fd, fl&mask, mask, want)
	}
}

// CheckCloexec fails unless FD_CLOEXEC of fd is want.
func (t *T) CheckCloexec(fd int, want bool) {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fail("fd %d: F_GETFD: %v", fd, err)
		return
	}
	if (fl&unix.FD_CLOEXEC != 0) != want {
		t.Fail("fd %d: FD_CLOEXEC %v, want %v", fd, fl&unix.FD_CLOEXEC != 0, want)
	}
}

// CheckPos fails unless the offset of fd is want.
func (t *T) CheckPos(fd int, want int64) {
	pos, err := unix.Seek(fd, 0, unix.SEEK_CUR)
	if err != nil {
		t.Fail("fd %d: lseek: %v", fd, err)
		return
	}
	if pos != want {
		t.Fail("fd %d: offset %d, want %d", fd, pos, want)
	}
}

// CheckType fails unless fd's /proc link starts with prefix.
func (t *T) CheckType(fd int, prefix string) {
	target, err := readlinkFd(fd)
	if err != nil {
		t.Fail("fd %d: %v", fd, err)
		return
	}
	if !strings.HasPrefix(target, prefix) {
		t.Fail("fd %d is %s, want %s...", fd, target, prefix)
	}
}

// Ino returns the inode number of fd.
func Ino(fd int) uint64 {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return 0
	}
	return st.Ino
}

// SameFile reports whether fd1 of pid1 and fd2 of pid2 are one open file
// description (kcmp KCMP_FILE).
func SameFile(pid1, fd1, pid2, fd2 int) (bool, error) {
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, uintptr(pid1), uintptr(pid2), 0 /* KCMP_FILE */, uintptr(fd1), uintptr(fd2), 0)
	if errno != 0 {
		return false, fmt.Errorf("kcmp: %w", errno)
	}
	return r == 0, nil
}

// ---- data ----

// Datagen returns n bytes derived from seed whose last 4 bytes are the
// CRC32 of the rest.
func Datagen(seed uint32, n int) []byte {
	b := make([]byte, n)
	x := seed*2654435761 + 1
	for i := 0; i < n-4; i++ {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	crc := crc32.ChecksumIEEE(b[:n-4])
	b[n-4], b[n-3], b[n-2], b[n-1] = byte(crc), byte(crc>>8), byte(crc>>16), byte(crc>>24)
	return b
}

// Datachk reports whether b carries a valid trailing CRC32.
func Datachk(b []byte) bool {
	if len(b) < 4 {
		return false
	}
	n := len(b)
	crc := crc32.ChecksumIEEE(b[:n-4])
	return b[n-4] == byte(crc) && b[n-3] == byte(crc>>8) && b[n-2] == byte(crc>>16) && b[n-1] == byte(crc>>24)
}

// CheckData fails unless got is want, naming where they differ.
func (t *T) CheckData(what string, got, want []byte) {
	if bytes.Equal(got, want) {
		return
	}
	if len(got) != len(want) {
		t.Fail("%s: %d bytes, want %d", what, len(got), len(want))
		return
	}
	i := 0
	for i < len(got) && got[i] == want[i] {
		i++
	}
	t.Fail("%s: differs at byte %d", what, i)
}

func execve(path string, argv, env []string) error { return syscall.Exec(path, argv, env) }
