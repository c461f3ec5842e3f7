// Package helper is the process side of a restore: the helper process that
// becomes one task of the restored tree (or a stand-in for a dead session or
// group leader), runs the files engine for its task, and ends by exec'ing
// the task's program or the stopper; plus the control protocol between a
// helper and the coordinator (package restore).
//
// It links only what a helper needs (the files engine, the opener types,
// the scm transport, x/sys/unix, logrus for the engine's log), never the
// image model or protobuf: cmd/fdrestore-helper, the lean binary the
// coordinator starts its helpers from, is this package and nothing else,
// so that each of the hundreds of helper processes of a large restore
// faults in as little of its executable as possible. A program that
// starts helpers from its own executable instead (restore's fallback)
// calls Maybe first thing in main.
package helper

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/scm"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	// The opener types a helper can restore.
	_ "github.com/fdrestore/fdrestore/files/openers"
)

// Arg is argv[1] of a restore helper process. A program whose own
// executable may be started as a helper must call Maybe first thing in
// main.
const Arg = "__fdrestore-helper"

// Protocol is the version of the control protocol and argument layout
// between the coordinator and its helpers. The coordinator passes it as the
// helper's last argument; a helper binary built from other sources (a stale
// fdrestore-helper next to a newer fdrestore) refuses to run with an error
// naming both versions. Bump it whenever Msg, the ops or Args change.
const Protocol = "fdrp2"

// CloexecEnv names the environment variable through which a task exec'd
// with Msg.KeepCloexec learns which of its fds had FD_CLOEXEC ("12,20-23").
const CloexecEnv = "FDRESTORE_CLOEXEC_FDS"

// helperExe is what a helper runs its children and the stopper from: its
// own executable, the coordinator's memfd copy of the helper binary.
const helperExe = "/proc/self/exe"

// Files is the fd list for starting a helper whose service area
// starts at tempBase: every fd below it holds a placeholder (a dup of the
// control socket), the control socket sits at tempBase and a task's
// transport endpoint at tempBase+1. The placeholders make whatever the Go
// runtime and package initialisers open before main land above the fds to
// restore.
//
// The fork child's fd shuffle (syscall.ForkExec) first copies every entry
// whose fd is below its slot to a fresh number above the list, so with
// sources at low numbers thousands of placeholders would need twice the fd
// limit. Files therefore duplicates the sources above the list
// first; release closes those duplicates once the child has started.
func Files(tempBase int, fds []int) (files []uintptr, release func(), err error) {
	files, high, err := appendFiles(nil, nil, tempBase, fds)
	if err != nil {
		return nil, nil, err
	}
	return files, func() { CloseFDs(high) }, nil
}

// appendFiles is Files into the caller's buffers (a helper spawns many
// children and keeps its garbage small): files and the high duplicates
// are appended to dst and high. On error the duplicates are closed.
func appendFiles(dst []uintptr, high []int, tempBase int, fds []int) ([]uintptr, []int, error) {
	n := tempBase + len(fds)
	for _, fd := range fds {
		h, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, n)
		if err != nil {
			CloseFDs(high)
			return nil, nil, fmt.Errorf("move fd %d above %d for the new helper: %w", fd, n, err)
		}
		high = append(high, h)
	}
	dst = slices.Grow(dst, n)
	for i := 0; i < tempBase; i++ {
		dst = append(dst, uintptr(high[0]))
	}
	for _, fd := range high {
		dst = append(dst, uintptr(fd))
	}
	return dst, high, nil
}

// Maybe runs the helper (or the stopper) and exits if this process was
// started as one; otherwise it returns. Call it at the top of main.
func Maybe() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case Arg:
			os.Exit(Main(os.Args[2:]))
		case StopperArg:
			os.Exit(stopperMain(os.Args[2:]))
		}
	}
}

type helper struct {
	ctl      int
	tr       *scm.Transport
	runID    string
	proc     int
	taskIx   int // -1 for a stand-in
	tempBase int
	deadline time.Time
	log      *logrus.Logger
	plan     *files.TaskPlan
	engine   *files.Engine // for its after-tree steps
	env      []string      // of the helpers it spawns (Env, once)
	filesBuf []uintptr
	highBuf  []int
	envBytes int // estimated garbage of one spawn's environment copies
	garbage  int // estimated garbage of the spawns since the last collection
}

// spawnGarbage is how much estimated garbage of spawns a helper collects.
const spawnGarbage = 256 << 10

// Args returns the argv of a helper: argv[0], Arg, then proc index, run
// id, task index (-1 for a stand-in), service fd floor, deadline (Unix
// ns), log level and Protocol. The fds are laid out by Files.
func Args(proc int, runID string, taskIx, tempBase int, deadline time.Time, level logrus.Level) []string {
	return []string{"fdrestore-helper", Arg, strconv.Itoa(proc), runID, strconv.Itoa(taskIx),
		strconv.Itoa(tempBase), strconv.FormatInt(deadline.UnixNano(), 10), strconv.Itoa(int(level)), Protocol}
}

// Main is the body of a restore helper process; it returns the exit
// status. Its control channel is fd 0.
func Main(args []string) int {
	h, err := start(args)
	if err != nil {
		if h != nil && h.ctl >= 0 {
			Send(h.ctl, &Msg{Op: OpErr, Err: err.Error()})
		}
		return 125
	}
	if err := h.serve(); err != nil {
		Send(h.ctl, &Msg{Op: OpErr, Err: err.Error()})
		return 1
	}
	return 0
}

func start(args []string) (*helper, error) {
	h := &helper{ctl: -1}
	if len(args) != 7 || args[6] != Protocol {
		// Without the version it is not safe to use any argument: not
		// even the control socket's number.
		got := "none"
		if len(args) > 0 {
			got = args[len(args)-1]
		}
		fmt.Fprintf(os.Stderr, "fdrestore-helper: started by a coordinator of another version (want protocol %s and 7 arguments, got %d arguments ending in %q)\n", Protocol, len(args), got)
		return nil, fmt.Errorf("helper: protocol mismatch: helper speaks %s, got %d arguments ending in %q (is the fdrestore-helper binary from the same build as fdrestore?)", Protocol, len(args), got)
	}
	nums := make([]int64, 0, 5)
	for _, i := range []int{0, 2, 3, 4, 5} {
		v, err := strconv.ParseInt(args[i], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("helper: argument %d: %w", i, err)
		}
		nums = append(nums, v)
	}
	h.proc, h.runID, h.taskIx, h.tempBase = int(nums[0]), args[1], int(nums[1]), int(nums[2])
	h.deadline = time.Unix(0, nums[3])
	if h.tempBase < 3 {
		return nil, fmt.Errorf("helper: service fd floor %d below 3", h.tempBase)
	}
	h.ctl = h.tempBase
	// Start the netpoller now, while the placeholders hold every number
	// below the service area: the runtime creates its epoll and eventfd on
	// the first timer armed, at the lowest free numbers, and that may come
	// deep into the restore (the scavenger sleeps on one after a GC).
	time.AfterFunc(time.Hour, func() {}).Stop()
	// A crash report goes to the coordinator. The runtime dups the fd at
	// the lowest free number, so this must happen while the placeholders
	// still hold the low numbers; the os.File wraps a throwaway dup, whose
	// finalizer must never close the control socket itself.
	cdup, err := unix.FcntlInt(uintptr(h.ctl), unix.F_DUPFD_CLOEXEC, h.tempBase)
	if err != nil {
		return nil, fmt.Errorf("helper: crash output: %w", err)
	}
	crash := os.NewFile(uintptr(cdup), "control")
	err = debug.SetCrashOutput(crash, debug.CrashOptions{})
	crash.Close()
	if err != nil {
		return nil, fmt.Errorf("helper: crash output: %w", err)
	}
	keep := []int{h.ctl}
	if h.taskIx >= 0 {
		keep = append(keep, h.tempBase+1)
	}
	if err := dropInherited(h.tempBase, keep); err != nil {
		return nil, err
	}
	if _, err := unix.FcntlInt(uintptr(h.ctl), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return nil, fmt.Errorf("helper: control socket: %w", err)
	}
	h.log = logrus.New()
	h.log.SetLevel(logrus.Level(nums[4]))
	h.log.SetFormatter(logFormatter{})
	h.log.SetOutput(ctlLogWriter{h.ctl})
	if h.taskIx >= 0 {
		tr, err := scm.Adopt(h.tempBase+1, h.runID, uint32(h.taskIx), scm.Options{FDFloor: h.tempBase})
		if err != nil {
			return h, err
		}
		h.tr = tr
	}
	return h, nil
}

// dropInherited closes the placeholders below floor (one close_range),
// then every other fd without FD_CLOEXEC except keep: anything leaked by
// whoever started the coordinator. What the Go runtime opened is CLOEXEC
// and stays.
func dropInherited(floor int, keep []int) error {
	if err := unix.CloseRange(0, uint(floor-1), 0); err != nil {
		return fmt.Errorf("helper: close placeholders: %w", err)
	}
	fds, err := files.ListFDs()
	if err != nil {
		return fmt.Errorf("helper: %w", err)
	}
	for _, fd := range fds {
		if slices.Contains(keep, fd) {
			continue
		}
		if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil && fl&unix.FD_CLOEXEC == 0 {
			unix.Close(fd)
		}
	}
	return nil
}

// Env is the environment of helper processes: the caller's, with the Go
// runtime's container-aware GOMAXPROCS off, since it keeps a cgroup file
// open at a low fd number, and GOMAXPROCS=1 unless the caller set it: a
// helper runs one goroutine, and every further P costs it resident memory
// (its allocation cache, GC work buffers). It is idempotent, so helpers
// spawned by helpers get the same.
func Env() []string {
	const off = "containermaxprocs=0,updatemaxprocs=0"
	env := os.Environ()
	debugSet, procsSet := false, false
	for i, kv := range env {
		switch {
		case strings.HasPrefix(kv, "GODEBUG="):
			debugSet = true
			if !strings.HasSuffix(kv, off) {
				env[i] = kv + "," + off
			}
		case strings.HasPrefix(kv, "GOMAXPROCS="):
			procsSet = true
		}
	}
	if !debugSet {
		env = append(env, "GODEBUG="+off)
	}
	if !procsSet {
		env = append(env, "GOMAXPROCS=1")
	}
	return env
}

// ctlLogWriter sends each log entry to the coordinator.
type ctlLogWriter struct{ fd int }

func (w ctlLogWriter) Write(p []byte) (int, error) {
	if err := Send(w.fd, &Msg{Op: OpLog, Log: p}); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (h *helper) reply(err error, pid int) error {
	if err != nil {
		return Send(h.ctl, &Msg{Op: OpErr, Err: err.Error()})
	}
	return Send(h.ctl, &Msg{Op: OpOK, Pid: pid})
}

// serve runs commands until the end state is reached.
func (h *helper) serve() error {
	for {
		m, fds, err := Recv(h.ctl, h.deadline)
		if err != nil {
			return err
		}
		var pid int
		switch m.Op {
		case OpSpawn:
			pid, err = h.spawn(m, fds)
		case OpSetsid:
			_, err = unix.Setsid()
		case OpSetpgid:
			err = unix.Setpgid(0, m.Arg)
		case OpSubreaper:
			err = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, uintptr(m.Arg), 0, 0, 0)
		case OpReap:
			err = reap(m.Arg, h.deadline)
		case OpExit:
			CloseFDs(fds)
			os.Exit(0)
		case OpPlan:
			err = h.restore(fds)
		case OpEnd:
			CloseFDs(fds)
			return h.end(m)
		default:
			CloseFDs(fds)
			err = fmt.Errorf("unknown command %q", m.Op)
		}
		if err != nil && m.Op != OpPlan {
			err = fmt.Errorf("%s: %w", m.Op, err)
		}
		if rerr := h.reply(err, pid); rerr != nil {
			return rerr
		}
		if err != nil && m.Op == OpPlan {
			return nil // the coordinator aborts the restore
		}
	}
}

func (h *helper) spawn(m *Msg, fds []int) (int, error) {
	defer CloseFDs(fds)
	want := 1
	if m.Task {
		want = 2
	}
	if len(fds) != want {
		return 0, fmt.Errorf("got %d fds, want %d", len(fds), want)
	}
	files, high, err := appendFiles(h.filesBuf[:0], h.highBuf[:0], m.TempBase, fds)
	if err != nil {
		return 0, err
	}
	h.filesBuf, h.highBuf = files, high
	defer CloseFDs(high)
	taskIx := -1
	if m.Task {
		taskIx = m.TaskIx
	}
	argv := Args(m.Proc, h.runID, taskIx, m.TempBase, h.deadline, h.log.GetLevel())
	if h.env == nil {
		h.env = Env()
		for _, kv := range h.env {
			h.envBytes += len(kv) + 1 + 8
		}
	}
	attr := &syscall.ProcAttr{Env: h.env, Files: files, Sys: &syscall.SysProcAttr{Setsid: m.Setsid, Setpgid: m.NewGroup}}
	pid, err := syscall.ForkExec(helperExe, argv, attr)
	if err != nil {
		return 0, fmt.Errorf("start helper for proc %d: %w", m.Proc, err)
	}
	// Each spawn leaves garbage: ForkExec's copies of the environment
	// and the fd list, the messages. A helper that spawns hundreds of
	// children would grow its heap by megabytes before the runtime's
	// first collection (its minimum heap goal is 4 MiB), and a heap's
	// pages stay resident; a collection of a helper's small heap takes
	// tens of microseconds, but its first ones cost the runtime a few
	// hundred kilobytes of its own. So collect once the spawns' garbage
	// reaches spawnGarbage.
	if h.garbage += h.envBytes + 16*len(files) + 1024; h.garbage >= spawnGarbage {
		runtime.GC()
		h.garbage = 0
	}
	return pid, nil
}

// reap waits until deadline for child pid to exit and collects it.
func reap(pid int, deadline time.Time) error {
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(pfd)
	if _, err := scm.Wait(deadline, fmt.Sprintf("exit of process %d", pid), unix.PollFd{Fd: int32(pfd), Events: unix.POLLIN}); err != nil {
		return err
	}
	var ws unix.WaitStatus
	_, err = unix.Wait4(pid, &ws, 0, nil)
	return err
}

// restore runs the files engine for the plan in the memfd fds[0]; the
// other fds are the caller's inherited fds for this task
// (TaskPlan.Inherited, see files/inherit).
func (h *helper) restore(fds []int) error {
	if len(fds) < 1 || h.tr == nil {
		CloseFDs(fds)
		return fmt.Errorf("plan needs a memfd and a task helper")
	}
	// Received fds land at the lowest free numbers, which may be targets:
	// move the inherited ones into the service area at once.
	inherited := fds[1:]
	defer CloseFDs(inherited)
	for i, fd := range inherited {
		nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, h.tempBase)
		if err != nil {
			unix.Close(fds[0])
			return fmt.Errorf("move inherited fd: %w", err)
		}
		unix.Close(fd)
		inherited[i] = nfd
	}
	// Nearly all a helper allocates (its plan, the engine's tables) lives
	// until the fds are in place: collecting meanwhile costs time and
	// frees little. The memory limit still bounds a runaway plan.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(256 << 20))
	data, err := readAll(fds[0])
	unix.Close(fds[0])
	if err != nil {
		return fmt.Errorf("read plan: %w", err)
	}
	plan, err := files.DecodeTaskPlan(data)
	if err != nil {
		return err
	}
	if files.TempBase(plan) > h.tempBase {
		return fmt.Errorf("plan of task %d needs fds up to %d, above the service area at %d", plan.Pid, plan.MaxFd(), h.tempBase)
	}
	plan.Inherited = inherited
	h.plan = plan
	log := h.log.WithField("task", plan.Pid)
	e, err := files.NewEngine(plan, h.tr, h.ctl, log)
	if err != nil {
		return err
	}
	e.Idle = func(idle bool, waitsFor string) {
		if idle {
			Send(h.ctl, &Msg{Op: OpIdle, Err: waitsFor})
		} else {
			Send(h.ctl, &Msg{Op: OpBusy})
		}
	}
	start := time.Now()
	if err := e.Run(h.deadline); err != nil {
		return err
	}
	log.WithField("fds", len(plan.Fles)).WithField("took", time.Since(start)).Debug("fds restored")
	h.engine = e
	return nil
}

func readAll(fd int) ([]byte, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	buf := make([]byte, st.Size)
	for off := 0; off < len(buf); {
		n, err := unix.Pread(fd, buf[off:], int64(off))
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, fmt.Errorf("short read: %d of %d bytes", off, len(buf))
		}
		off += n
	}
	return buf, nil
}

// carryCloexec clears FD_CLOEXEC on the task's close-on-exec fds, so
// that they survive an exec (which would have closed them), and returns
// them, ascending as the plan lists them.
func (h *helper) carryCloexec() ([]int, error) {
	var fds []int
	for _, fl := range h.plan.Fles {
		if fl.Cloexec {
			if _, err := unix.FcntlInt(uintptr(fl.Fd), unix.F_SETFD, 0); err != nil {
				return nil, fmt.Errorf("carry close-on-exec fd %d across exec: %w", fl.Fd, err)
			}
			fds = append(fds, int(fl.Fd))
		}
	}
	return fds, nil
}

// keepCloexec carries the task's close-on-exec fds across the exec and
// names them in the environment (CloexecEnv) so that the program can set
// the flag again.
func (h *helper) keepCloexec(env []string) ([]string, error) {
	fds, err := h.carryCloexec()
	if err != nil || len(fds) == 0 {
		return env, err
	}
	return append(env, CloexecEnv+"="+strings.TrimPrefix(encodeRanges(fds), "r:")), nil
}

// end brings the task to its end state: the fd table is checked to be
// exactly the image's, then the task stops itself or execs.
func (h *helper) end(m *Msg) error {
	if h.plan == nil {
		return fmt.Errorf("end before the fds were restored")
	}
	// Every task is restored: the openers' after-tree steps (TCP repair
	// off, ...) run now, before the fd table is checked.
	if h.engine != nil {
		if err := h.engine.RunAfterTree(); err != nil {
			return err
		}
	}
	// The stopper counts the task's fds after its exec, which leaves
	// less to check here (see PrepareExec).
	check := files.CheckTable
	if m.Mode == ModeStop {
		check = files.PrepareExec
	}
	if err := check(h.plan, h.tempBase); err != nil {
		return err
	}
	if m.Dir != "" {
		if err := unix.Chdir(m.Dir); err != nil {
			return fmt.Errorf("chdir %s: %w", m.Dir, err)
		}
	}
	h.tr.Close()
	debug.SetCrashOutput(nil, debug.CrashOptions{}) // closes the runtime's dup
	switch m.Mode {
	case ModeStop:
		return h.execStopper()
	case ModeExec:
		if err := h.reply(nil, 0); err != nil {
			return err
		}
		path := m.Argv[0]
		if m.Path != "" {
			path = m.Path
		}
		env := m.Env
		if m.KeepCloexec {
			var err error
			if env, err = h.keepCloexec(env); err != nil {
				return err
			}
		}
		err := syscall.Exec(path, m.Argv, env)
		return fmt.Errorf("exec %q: %w", m.Argv, err)
	}
	return fmt.Errorf("unknown end mode %q", m.Mode)
}
