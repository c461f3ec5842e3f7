package restore

import (
	"fmt"
	"os"
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
	_ "github.com/fdrestore/fdrestore/files/pipe"
	_ "github.com/fdrestore/fdrestore/files/reg"
)

// HelperArg is argv[1] of a restore helper process: the fdrestore binary
// re-executed to become one task of the restored tree. A program that
// embeds package restore must call HelperMain first thing in main when
// os.Args[1] is HelperArg (see MaybeHelper).
const HelperArg = "__fdrestore-helper"

// helperExe is the binary helpers run: the running executable.
const helperExe = "/proc/self/exe"

// helperFiles is the fd list for starting a helper whose service area
// starts at tempBase: every fd below it holds a placeholder (a dup of the
// control socket), the control socket sits at tempBase and a task's
// transport endpoint at tempBase+1. The placeholders make whatever the Go
// runtime and package initialisers open before main land above the fds to
// restore.
//
// The fork child's fd shuffle (syscall.ForkExec) first copies every entry
// whose fd is below its slot to a fresh number above the list, so with
// sources at low numbers thousands of placeholders would need twice the fd
// limit. helperFiles therefore duplicates the sources above the list
// first; release closes those duplicates once the child has started.
func helperFiles(tempBase int, fds []int) (files []uintptr, release func(), err error) {
	n := tempBase + len(fds)
	high := make([]int, 0, len(fds))
	release = func() { closeFDs(high) }
	for _, fd := range fds {
		h, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, n)
		if err != nil {
			release()
			return nil, nil, fmt.Errorf("move fd %d above %d for the new helper: %w", fd, n, err)
		}
		high = append(high, h)
	}
	files = make([]uintptr, 0, n)
	for i := 0; i < tempBase; i++ {
		files = append(files, uintptr(high[0]))
	}
	for _, fd := range high {
		files = append(files, uintptr(fd))
	}
	return files, release, nil
}

// MaybeHelper runs the helper and exits if this process was started as a
// restore helper; otherwise it returns. Call it at the top of main.
func MaybeHelper() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case HelperArg:
			os.Exit(HelperMain(os.Args[2:]))
		case stopperArg:
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
}

// helperArgs are the arguments after HelperArg: proc index, run id, task
// index (-1 for a stand-in), service fd floor, deadline (Unix ns), log
// level. The fds are laid out by helperFiles.
func helperArgs(proc int, runID string, taskIx, tempBase int, deadline time.Time, level logrus.Level) []string {
	return []string{"fdrestore-helper", HelperArg, strconv.Itoa(proc), runID, strconv.Itoa(taskIx),
		strconv.Itoa(tempBase), strconv.FormatInt(deadline.UnixNano(), 10), strconv.Itoa(int(level))}
}

// HelperMain is the body of a restore helper process; it returns the exit
// status. Its control channel is fd 0.
func HelperMain(args []string) int {
	h, err := startHelper(args)
	if err != nil {
		if h != nil && h.ctl >= 0 {
			ctlSend(h.ctl, &ctlMsg{Op: ctlErr, Err: err.Error()})
		}
		return 125
	}
	if err := h.serve(); err != nil {
		ctlSend(h.ctl, &ctlMsg{Op: ctlErr, Err: err.Error()})
		return 1
	}
	return 0
}

func startHelper(args []string) (*helper, error) {
	h := &helper{ctl: -1}
	if len(args) != 6 {
		return nil, fmt.Errorf("helper: want 6 arguments, got %d", len(args))
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
	h.log.SetFormatter(&logrus.JSONFormatter{})
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

// helperEnv is the environment of helper processes: the caller's, with
// the Go runtime's container-aware GOMAXPROCS off, since it keeps a cgroup
// file open at a low fd number.
func helperEnv() []string {
	const off = "containermaxprocs=0,updatemaxprocs=0"
	env := os.Environ()
	for i, kv := range env {
		if strings.HasPrefix(kv, "GODEBUG=") {
			env[i] = kv + "," + off
			return env
		}
	}
	return append(env, "GODEBUG="+off)
}

// ctlLogWriter sends each log entry to the coordinator.
type ctlLogWriter struct{ fd int }

func (w ctlLogWriter) Write(p []byte) (int, error) {
	if err := ctlSend(w.fd, &ctlMsg{Op: ctlLog, Log: p}); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (h *helper) reply(err error, pid int) error {
	if err != nil {
		return ctlSend(h.ctl, &ctlMsg{Op: ctlErr, Err: err.Error()})
	}
	return ctlSend(h.ctl, &ctlMsg{Op: ctlOK, Pid: pid})
}

// serve runs commands until the end state is reached.
func (h *helper) serve() error {
	for {
		m, fds, err := ctlRecv(h.ctl, h.deadline)
		if err != nil {
			return err
		}
		var pid int
		switch m.Op {
		case ctlSpawn:
			pid, err = h.spawn(m, fds)
		case ctlSetsid:
			_, err = unix.Setsid()
		case ctlSetpgid:
			err = unix.Setpgid(0, m.Arg)
		case ctlSubreaper:
			err = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, uintptr(m.Arg), 0, 0, 0)
		case ctlReap:
			err = reap(m.Arg, h.deadline)
		case ctlExit:
			closeFDs(fds)
			os.Exit(0)
		case ctlPlan:
			err = h.restore(fds)
		case ctlEnd:
			closeFDs(fds)
			return h.end(m)
		default:
			closeFDs(fds)
			err = fmt.Errorf("unknown command %q", m.Op)
		}
		if err != nil && m.Op != ctlPlan {
			err = fmt.Errorf("%s: %w", m.Op, err)
		}
		if rerr := h.reply(err, pid); rerr != nil {
			return rerr
		}
		if err != nil && m.Op == ctlPlan {
			return nil // the coordinator aborts the restore
		}
	}
}

func (h *helper) spawn(m *ctlMsg, fds []int) (int, error) {
	defer closeFDs(fds)
	want := 1
	if m.Task {
		want = 2
	}
	if len(fds) != want {
		return 0, fmt.Errorf("got %d fds, want %d", len(fds), want)
	}
	files, release, err := helperFiles(m.TempBase, fds)
	if err != nil {
		return 0, err
	}
	defer release()
	taskIx := -1
	if m.Task {
		taskIx = m.TaskIx
	}
	argv := helperArgs(m.Proc, h.runID, taskIx, m.TempBase, h.deadline, h.log.GetLevel())
	attr := &syscall.ProcAttr{Env: helperEnv(), Files: files, Sys: &syscall.SysProcAttr{Setsid: m.Setsid, Setpgid: m.NewGroup}}
	pid, err := syscall.ForkExec(helperExe, argv, attr)
	if err != nil {
		return 0, fmt.Errorf("start helper for proc %d: %w", m.Proc, err)
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

// restore runs the files engine for the plan in the memfd fds[0].
func (h *helper) restore(fds []int) error {
	if len(fds) != 1 || h.tr == nil {
		closeFDs(fds)
		return fmt.Errorf("plan needs one memfd and a task helper")
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
	h.plan = plan
	log := h.log.WithField("task", plan.Pid)
	e, err := files.NewEngine(plan, h.tr, h.ctl, log)
	if err != nil {
		return err
	}
	e.Idle = func(idle bool, waitsFor string) {
		if idle {
			ctlSend(h.ctl, &ctlMsg{Op: ctlIdle, Err: waitsFor})
		} else {
			ctlSend(h.ctl, &ctlMsg{Op: ctlBusy})
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

// keepCloexec clears FD_CLOEXEC on the task's close-on-exec fds so they
// survive the exec, and names them in the environment (CloexecEnv) so that
// the program can set the flag again.
func (h *helper) keepCloexec(env []string) ([]string, error) {
	var fds []int
	for _, fl := range h.plan.Fles {
		if fl.Cloexec {
			if _, err := unix.FcntlInt(uintptr(fl.Fd), unix.F_SETFD, 0); err != nil {
				return nil, fmt.Errorf("keep close-on-exec fd %d across exec: %w", fl.Fd, err)
			}
			fds = append(fds, int(fl.Fd))
		}
	}
	if len(fds) == 0 {
		return env, nil
	}
	return append(env, CloexecEnv+"="+strings.TrimPrefix(encodeRanges(fds), "r:")), nil
}

// end brings the task to its end state: the fd table is checked to be
// exactly the image's, then the task stops itself or execs.
func (h *helper) end(m *ctlMsg) error {
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
	if m.Mode == modeStop {
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
	case modeStop:
		return h.execStopper()
	case modeExec:
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
