package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"github.com/fdrestore/fdrestore/restore/helper"
	"github.com/fdrestore/fdrestore/scm"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// EndMode says what each restored task does once the whole tree is
// restored.
type EndMode int

const (
	// EndStop: every task stops itself with SIGSTOP, its fd table exactly
	// the image's. (A task that is continued exits.)
	EndStop EndMode = iota + 1
	// EndExec: every task execs Options.Exec through /bin/sh -c.
	EndExec
	// EndExecRecorded: every task execs the argv, environment (plus
	// FDRESTORE_RESTORED=1) and cwd recorded by fdrestore dump in
	// fdrestore-exec.img (see exec_recorded.go).
	EndExecRecorded
	// EndFunc: every task execs what Options.EndFunc returns for it
	// (endfunc.go): a runtime's own command per task.
	EndFunc
)

// Options control a restore run.
type Options struct {
	End EndMode
	// Exec is the command line for EndExec; "{pid}" expands to the
	// task's pid in the images.
	Exec string
	// Timeout bounds the whole restore (default 60s).
	Timeout time.Duration
	// Log receives the coordinator's and the helpers' log entries
	// (default: logrus's standard logger).
	Log *logrus.Logger
	// LogEntry, when set, is used instead of Log: every entry of the
	// restore carries its fields (a runtime's container id, ...).
	LogEntry *logrus.Entry
	// Hooks are called at fixed points of the run (see Hooks).
	Hooks Hooks
	// EndFunc chooses each task's exec for the EndFunc end state.
	EndFunc func(TaskEnd) (Exec, error)
	// Helper is the path of the helper binary (cmd/fdrestore-helper) the
	// tree's processes run. Empty: $FDRESTORE_HELPER, else
	// fdrestore-helper next to the running executable, else the running
	// executable itself (see helper.go).
	Helper string
	// NetworkLock: "skip" leaves the dump's network lock in place;
	// anything else ("", "nftables", "iptables") removes the lock the
	// dump recorded once the tree is restored (netlock.go).
	NetworkLock string
}

// Result describes a restored tree.
type Result struct {
	RootPid int
	// PidFd is a pidfd of the root task (pidfd_open), or nil where the
	// kernel has none. The caller owns it: poll it for the root's exit,
	// signal through it without pid-reuse races, close it when done.
	PidFd *os.File
	// PidMap maps image pids to the pids of the restored tasks.
	PidMap map[uint32]int
	// Took is the wall time of the restore.
	Took time.Duration
	// Timings split Took into its phases.
	Timings Timings
}

// Timings are the durations of a restore's phases.
type Timings struct {
	Tree  time.Duration // building the process tree
	Files time.Duration // restoring every task's fds
	End   time.Duration // bringing the tasks to their end state
	Hooks time.Duration // in the caller's hooks (within the above)
}

// TaskError is returned when a restore fails in or because of one process
// of the tree. errors.Is(err, ErrTaskDied) tells whether the process died.
type TaskError struct {
	Proc string // "task 2", or a stand-in's description
	Op   string // what the coordinator was doing: "spawn", "plan", "end", ...
	Err  error
}

func (e *TaskError) Error() string {
	msg := e.Err.Error()
	// Engine errors already start with the task they happened in.
	if strings.HasPrefix(msg, e.Proc+": ") {
		return fmt.Sprintf("%s: %s: %s", e.Proc, e.Op, strings.TrimPrefix(msg, e.Proc+": "))
	}
	return fmt.Sprintf("%s: %s: %s", e.Proc, e.Op, msg)
}
func (e *TaskError) Unwrap() error { return e.Err }

// ErrTaskDied is wrapped when a helper process exited or was killed
// during the restore.
var ErrTaskDied = errors.New("helper process died")

type procState struct {
	p   *Proc
	ctl int // coordinator's end of the control channel; -1 once closed
	pid int
}

type coordinator struct {
	ctx      context.Context
	plan     *Plan
	opts     Options
	log      *logrus.Entry
	runID    string
	hookTime time.Duration
	deadline time.Time
	ps       []*procState
	oldSub   int
	started  time.Time
	recorded map[uint32]*criupb.FdrestoreExecEntry // EndExecRecorded: by image pid
	ghosts   []*liveGhost                          // deleted files recreated for this run (ghost.go)
	nl       netUnlock                             // the dump's network lock (netlock.go)
}

// Run restores the tree described by plan and brings it to the requested
// end state. On failure every process it created is killed and reaped and
// the error names the process, the step and the cause. Run makes the
// calling process a child-subreaper for its duration so that it can reap
// helpers whose parents died.
func Run(ctx context.Context, plan *Plan, opts Options) (*Result, error) {
	if err := plan.Err(); err != nil {
		return nil, err
	}
	if opts.End != EndStop && opts.End != EndExec && opts.End != EndExecRecorded && opts.End != EndFunc {
		return nil, fmt.Errorf("restore: choose an end state (stop or exec)")
	}
	if opts.End == EndFunc && opts.EndFunc == nil {
		return nil, fmt.Errorf("restore: the EndFunc end state needs Options.EndFunc")
	}
	if opts.End == EndExec && strings.TrimSpace(opts.Exec) == "" {
		return nil, fmt.Errorf("restore: exec end state needs a command")
	}
	if err := checkNetworkLock(opts.NetworkLock); err != nil {
		return nil, err
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 60 * time.Second
	}
	if opts.Log == nil {
		opts.Log = logrus.StandardLogger()
	}
	log := logrus.NewEntry(opts.Log)
	if opts.LogEntry != nil {
		log = opts.LogEntry
	}
	c := &coordinator{ctx: ctx, plan: plan, opts: opts, log: log, runID: scm.NewRunID(), started: time.Now()}
	if opts.End == EndFunc {
		// Records are optional here: the function sees them if any.
		if recs, err := LoadExecRecords(plan.Set.Dir); err == nil {
			c.recorded = recs
		}
	}
	if opts.End == EndExecRecorded {
		recs, err := LoadExecRecords(plan.Set.Dir)
		if err == nil {
			err = checkExecRecords(plan, recs)
		}
		if err != nil {
			return nil, err
		}
		c.recorded = recs
	}
	c.deadline = c.started.Add(opts.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(c.deadline) {
		c.deadline = d
	}
	// PR_GET_CHILD_SUBREAPER stores the flag through the pointer in arg2.
	var sub int32
	if err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&sub)), 0, 0, 0); err == nil {
		c.oldSub = int(sub)
	}
	unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, uintptr(c.oldSub), 0, 0, 0)

	res, err := c.run(ctx)
	if err != nil {
		c.abort()
		return nil, c.unlockAfterFailure(err)
	}
	return res, nil
}

func (c *coordinator) run(ctx context.Context) (*Result, error) {
	c.ps = make([]*procState, len(c.plan.Procs))
	for i, p := range c.plan.Procs {
		c.ps[i] = &procState{p: p, ctl: -1}
	}
	if err := c.hook(ctx, "pre-restore", c.opts.Hooks.PreRestore, nil); err != nil {
		return nil, err
	}
	if err := c.makeGhosts(); err != nil {
		return nil, err
	}
	for _, op := range c.plan.TreeOps {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := c.treeOp(op); err != nil {
			return nil, err
		}
		if op.Kind == OpSpawn && op.Proc == 0 && c.opts.Hooks.SetupNamespaces != nil {
			// The root exists, alone: a runtime moves it into its
			// cgroup and sets up its network now, and every process
			// the tree spawns later inherits both.
			res := &Result{RootPid: c.ps[0].pid}
			if err := c.hook(ctx, "setup-namespaces", c.opts.Hooks.SetupNamespaces, res); err != nil {
				return nil, err
			}
		}
	}
	treeDone := time.Now()
	pidMap := map[uint32]int{}
	for _, st := range c.ps {
		if st.p.Task != nil {
			pidMap[st.p.Task.Pid] = st.pid
		}
	}
	result := func() *Result {
		return &Result{RootPid: c.ps[0].pid, PidMap: pidMap, Took: time.Since(c.started),
			Timings: Timings{Tree: treeDone.Sub(c.started), Hooks: c.hookTime}}
	}
	// Files: every task restores its fds at once; the coordinator only
	// waits for them to report.
	tasks := c.taskProcs()
	c.nl.armed = true
	for _, st := range tasks {
		if err := c.sendPlan(st, pidMap); err != nil {
			return nil, err
		}
	}
	if err := c.collect(tasks, "restore fds"); err != nil {
		return nil, err
	}
	c.dropGhosts() // every task holds its fds of them now
	if err := c.hook(ctx, "post-restore", c.opts.Hooks.PostRestore, result()); err != nil {
		return nil, err
	}
	filesDone := time.Now()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := c.hook(ctx, "pre-resume", c.opts.Hooks.PreResume, result()); err != nil {
		return nil, err
	}
	for _, st := range tasks {
		if err := c.sendEnd(st); err != nil {
			return nil, err
		}
	}
	if err := c.collect(tasks, "end"); err != nil {
		return nil, err
	}
	// Every connection is out of repair mode.
	if err := c.unlockNetwork(); err != nil {
		return nil, err
	}
	for _, st := range tasks {
		if err := c.waitEnd(st); err != nil {
			return nil, err
		}
	}
	endDone := time.Now()
	res := result()
	res.Timings.Files, res.Timings.End = filesDone.Sub(treeDone), endDone.Sub(filesDone)
	if err := c.hook(ctx, "post-resume", c.opts.Hooks.PostResume, res); err != nil {
		return nil, err
	}
	res.Timings.Hooks = c.hookTime
	if fd, err := unix.PidfdOpen(res.RootPid, 0); err == nil {
		unix.CloseOnExec(fd)
		res.PidFd = os.NewFile(uintptr(fd), "pidfd:"+strconv.Itoa(res.RootPid))
	}
	res.Took = time.Since(c.started)
	c.log.WithFields(logrus.Fields{"tree": res.Timings.Tree, "files": res.Timings.Files, "end": res.Timings.End, "total": res.Took}).Info("tree restored")
	return res, nil
}

func (c *coordinator) taskProcs() []*procState {
	var out []*procState
	for _, st := range c.ps {
		if st.p.Task != nil {
			out = append(out, st)
		}
	}
	return out
}

func (c *coordinator) fail(st *procState, op string, err error) error {
	if errors.Is(err, errPeerGone) {
		err = fmt.Errorf("%w (pid %d): %v%s", ErrTaskDied, st.pid, err, lastWords(st.ctl))
	}
	return &TaskError{Proc: st.p.Name(), Op: op, Err: err}
}

// call sends a command to a helper and waits for its answer, passing its
// log entries on meanwhile.
func (c *coordinator) call(st *procState, m *ctlMsg, fds ...int) (*ctlMsg, error) {
	if err := ctlSend(st.ctl, m, fds...); err != nil {
		return nil, c.fail(st, m.Op, err)
	}
	return c.await(st, m.Op)
}

func (c *coordinator) await(st *procState, op string) (*ctlMsg, error) {
	for {
		r, err := c.recv(st, op)
		if err != nil {
			return nil, c.fail(st, op, err)
		}
		switch {
		case r == nil: // a log entry
		case r.Op == ctlOK:
			return r, nil
		default:
			return nil, c.fail(st, op, fmt.Errorf("unexpected answer %q", r.Op))
		}
	}
}

// recv receives one message from st. A log entry is passed on to the
// coordinator's logger and reported as a nil message; a helper's error
// report is returned as an error.
func (c *coordinator) recv(st *procState, op string) (*ctlMsg, error) {
	r, fds, err := ctlRecv(st.ctl, c.deadline)
	closeFDs(fds)
	switch {
	case err != nil:
		return nil, err
	case r.Op == ctlLog:
		c.relog(st, r.Log)
		return nil, nil
	case r.Op == ctlErr:
		return nil, errors.New(r.Err)
	}
	return r, nil
}

// relog passes a helper's log entry on to the coordinator's logger.
func (c *coordinator) relog(st *procState, entry []byte) {
	lvl, msg, fields, err := helper.DecodeLog(entry)
	if err != nil {
		c.log.WithField("proc", st.p.Name()).Warnf("undecodable log entry from the helper: %v", err)
		return
	}
	fields["proc"] = st.p.Name()
	c.log.WithFields(fields).Log(lvl, msg)
}

// treeOp carries out one tree-building step.
func (c *coordinator) treeOp(op TreeOp) error {
	st := c.ps[op.Proc]
	switch op.Kind {
	case OpSpawn:
		return c.spawn(st)
	case OpSetsid:
		_, err := c.call(st, &ctlMsg{Op: ctlSetsid})
		return err
	case OpSetpgid:
		_, err := c.call(st, &ctlMsg{Op: ctlSetpgid, Arg: c.ps[op.Arg].pid})
		return err
	case OpSubreaper:
		_, err := c.call(st, &ctlMsg{Op: ctlSubreaper, Arg: op.Arg})
		return err
	case OpExit:
		if err := ctlSend(st.ctl, &ctlMsg{Op: ctlExit}); err != nil {
			return c.fail(st, "exit", err)
		}
		parent := c.ps[st.p.Parent]
		if _, err := c.call(parent, &ctlMsg{Op: ctlReap, Arg: st.pid}); err != nil {
			return err
		}
		unix.Close(st.ctl)
		st.ctl, st.pid = -1, 0
		return nil
	}
	return fmt.Errorf("unknown tree step %d", op.Kind)
}

// tempBase is the service fd floor of a proc: above its task's targets.
func (c *coordinator) tempBase(p *Proc) int {
	if p.Task == nil {
		return 3
	}
	// Never below 3: the helper's channels must not take stdio numbers.
	return max(3, files.TempBase(c.plan.TaskPlans[p.TaskIx]))
}

// spawn creates the control channel (and transport endpoint) of a proc
// and has its parent start it — or starts it directly for the root.
func (c *coordinator) spawn(st *procState) error {
	p := st.p
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return c.fail(st, "spawn", fmt.Errorf("control socketpair: %w", err))
	}
	st.ctl = pair[0]
	fds := []int{pair[1]}
	defer func() { closeFDs(fds) }()
	taskIx := -1
	if p.Task != nil {
		taskIx = p.TaskIx
		tr, err := scm.Open(c.runID, uint32(p.TaskIx), scm.Options{})
		if err != nil {
			return c.fail(st, "spawn", err)
		}
		fds = append(fds, tr.FD()) // the transport struct is dropped; the helper adopts the socket
	}
	if p.Parent < 0 {
		argv := helper.Args(p.Index, c.runID, taskIx, c.tempBase(p), c.deadline, c.log.Logger.GetLevel())
		files, release, err := helper.Files(c.tempBase(p), fds)
		if err != nil {
			return c.fail(st, "spawn", err)
		}
		defer release()
		exe, err := c.helperExe()
		if err != nil {
			return c.fail(st, "spawn", err)
		}
		// The path's fd must stay clear of the child's fd layout and of
		// the error pipe, which the fork child moves to one above both
		// len(files) and the highest fd in files, or the shuffle would
		// replace it before execve (execve of the pipe: EACCES).
		above := len(files)
		for _, f := range files {
			above = max(above, int(f)+1)
		}
		path, err := dupAbove(exe, above+4)
		if err != nil {
			return c.fail(st, "spawn", err)
		}
		defer unix.Close(path)
		pid, err := syscall.ForkExec("/proc/self/fd/"+strconv.Itoa(path), argv, &syscall.ProcAttr{Env: helper.Env(), Files: files, Sys: &syscall.SysProcAttr{Setsid: p.Setsid, Setpgid: p.NewGroup}})
		if err != nil {
			return c.fail(st, "spawn", err)
		}
		st.pid = pid
		return nil
	}
	parent := c.ps[p.Parent]
	r, err := c.call(parent, &ctlMsg{Op: ctlSpawn, Proc: p.Index, Setsid: p.Setsid, NewGroup: p.NewGroup,
		Task: p.Task != nil, TaskIx: taskIx, TempBase: c.tempBase(p)}, fds...)
	if err != nil {
		return err
	}
	st.pid = r.Pid
	return nil
}

// sendPlan hands a task its plan in a memfd.
func (c *coordinator) sendPlan(st *procState, pidMap map[uint32]int) error {
	tp := c.plan.TaskPlans[st.p.TaskIx]
	tp.RunID = c.runID
	tp.PidMap = make(map[uint32]uint32, len(pidMap))
	for k, v := range pidMap {
		tp.PidMap[k] = uint32(v)
	}
	data, err := tp.Encode()
	if err != nil {
		return c.fail(st, "plan", err)
	}
	mfd, err := unix.MemfdCreate("fdrestore-plan", unix.MFD_CLOEXEC)
	if err != nil {
		return c.fail(st, "plan", fmt.Errorf("memfd_create: %w", err))
	}
	defer unix.Close(mfd)
	for off := 0; off < len(data); {
		n, err := unix.Write(mfd, data[off:])
		if err != nil {
			return c.fail(st, "plan", fmt.Errorf("write plan: %w", err))
		}
		off += n
	}
	inh, err := c.plan.taskInherited(st.p.TaskIx)
	if err != nil {
		return c.fail(st, "plan", err)
	}
	if err := ctlSend(st.ctl, &ctlMsg{Op: ctlPlan}, append([]int{mfd}, inh...)...); err != nil {
		return c.fail(st, "plan", err)
	}
	return nil
}

// stallGrace is how long every unfinished task must have been idle at
// once before the coordinator declares the restore stalled. A task that
// receives something reports busy within microseconds, so a grace of a few
// hundred milliseconds tells a stall from a message in flight.
const stallGrace = 300 * time.Millisecond

// collect waits for every proc in sts to answer the command just sent, in
// whatever order they finish; the first failure aborts. An epoll set keeps
// each wake-up O(ready), however many tasks there are. While waiting it
// tracks which tasks report themselves idle: when all unfinished ones have
// been idle together for stallGrace, nothing can progress any more and the
// restore fails at once, naming what each task waits for.
func (c *coordinator) collect(sts []*procState, op string) error {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("%s: epoll_create: %w", op, err)
	}
	defer unix.Close(ep)
	pending := make(map[int32]*procState, len(sts))
	idle := map[*procState]string{}
	var allIdleSince time.Time
	for _, st := range sts {
		pending[int32(st.ctl)] = st
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(st.ctl)}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, st.ctl, &ev); err != nil {
			return fmt.Errorf("%s: epoll_ctl: %w", op, err)
		}
	}
	events := make([]unix.EpollEvent, 256)
	for len(pending) > 0 {
		if err := c.ctx.Err(); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		now := time.Now()
		if len(idle) == len(pending) && !allIdleSince.IsZero() && now.Sub(allIdleSince) >= stallGrace {
			return c.stalled(op, pending, idle)
		}
		ms := c.deadline.Sub(now).Milliseconds()
		if ms <= 0 {
			var names []string
			for _, st := range pending {
				names = append(names, st.p.Name())
			}
			sort.Strings(names)
			return fmt.Errorf("%s: %w after %v (still waiting for %s)", op, scm.ErrTimeout, c.opts.Timeout, strings.Join(names, ", "))
		}
		wait := min(ms, 1000)
		if len(idle) == len(pending) && !allIdleSince.IsZero() {
			wait = min(wait, (stallGrace-now.Sub(allIdleSince)).Milliseconds()+1)
		}
		n, err := unix.EpollWait(ep, events, int(wait))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("%s: epoll_wait: %w", op, err)
		}
		for _, ev := range events[:n] {
			st := pending[ev.Fd]
			if st == nil {
				continue
			}
			r, err := c.recv(st, op)
			if err != nil {
				return c.fail(st, op, err)
			}
			if r == nil {
				continue // a log entry
			}
			switch r.Op {
			case ctlIdle:
				idle[st] = r.Err
			case ctlBusy:
				delete(idle, st)
			case ctlOK:
				delete(idle, st)
				delete(pending, ev.Fd)
				unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, int(ev.Fd), nil)
			default:
				return c.fail(st, op, fmt.Errorf("unexpected answer %q", r.Op))
			}
		}
		if len(idle) == len(pending) && len(pending) > 0 {
			if allIdleSince.IsZero() {
				allIdleSince = time.Now()
			}
		} else {
			allIdleSince = time.Time{}
		}
	}
	return nil
}

// stalled builds the error for a restore in which no task can progress.
func (c *coordinator) stalled(op string, pending map[int32]*procState, idle map[*procState]string) error {
	lines := make([]string, 0, len(pending))
	for _, st := range pending {
		lines = append(lines, "  "+idle[st])
	}
	sort.Strings(lines)
	return fmt.Errorf("%s: stalled: no task can make progress (all %d unfinished tasks idle for %v):\n%s",
		op, len(pending), stallGrace, strings.Join(lines, "\n"))
}

func (c *coordinator) sendEnd(st *procState) error {
	m := &ctlMsg{Op: ctlEnd}
	if dir := c.plan.Cwd(st.p.Task); dir != "" {
		m.Dir = dir
	}
	switch c.opts.End {
	case EndStop:
		m.Mode = modeStop
	case EndExec:
		m.Mode = modeExec
		cmd := strings.ReplaceAll(c.opts.Exec, "{pid}", strconv.Itoa(int(st.p.Task.Pid)))
		m.Argv = []string{"/bin/sh", "-c", cmd}
		m.Env = os.Environ()
	case EndExecRecorded:
		execRecorded(m, c.recorded[st.p.Task.Pid])
	case EndFunc:
		if err := c.endFunc(m, st); err != nil {
			return c.fail(st, "end", err)
		}
	}
	if err := ctlSend(st.ctl, m); err != nil {
		return c.fail(st, "end", err)
	}
	return nil
}

// waitEnd confirms a task reached its end state: its control channel
// closes (it stopped or exec'd), and a stopping task shows state T.
func (c *coordinator) waitEnd(st *procState) error {
	for {
		// Anything but an error (log entries, a late "ok") until the
		// channel closes.
		_, err := c.recv(st, "end")
		if errors.Is(err, errPeerGone) {
			break
		}
		if err != nil {
			return c.fail(st, "end", err)
		}
	}
	unix.Close(st.ctl)
	st.ctl = -1
	if c.opts.End != EndStop {
		return nil
	}
	for {
		state, err := procState1(st.pid)
		if err != nil {
			return c.fail(st, "end", fmt.Errorf("%w: %v", ErrTaskDied, err))
		}
		switch state {
		case 'T', 't':
			return nil
		case 'Z', 'X':
			return c.fail(st, "end", fmt.Errorf("%w before it stopped", ErrTaskDied))
		}
		if time.Now().After(c.deadline) {
			return c.fail(st, "end", fmt.Errorf("%w: task did not stop (state %c)", scm.ErrTimeout, state))
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// procState1 returns the state letter of /proc/PID/stat.
func procState1(pid int) (byte, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	return b[i+2], nil
}

// abort kills every process the restore created and reaps them.
func (c *coordinator) abort() {
	c.dropGhosts()
	if c.plan.hasTCP() {
		c.silenceTCP() // spec_inet.go
	}
	var pids []int
	for _, st := range c.ps {
		if st != nil && st.pid > 0 {
			unix.Kill(st.pid, unix.SIGKILL)
			pids = append(pids, st.pid)
		}
	}
	// Everything the restore started becomes our child (directly, or
	// through the subreaper flag once its parent died): reap each one, or
	// wait until it is gone, within a grace period.
	grace := time.Now().Add(5 * time.Second)
	reapAll(pids, grace)
	// A helper whose parent died before reporting its pid is not in c.ps;
	// orphaned, it is our child now. It waits on its control channel, so
	// it is still alive (and recognisable) until the channels close.
	strays := c.strays()
	for _, pid := range strays {
		unix.Kill(pid, unix.SIGKILL)
	}
	reapAll(strays, grace)
	for _, st := range c.ps {
		if st != nil && st.ctl >= 0 {
			unix.Close(st.ctl)
			st.ctl = -1
		}
	}
}

func reapAll(pids []int, grace time.Time) {
	for _, pid := range pids {
		for {
			var ws unix.WaitStatus
			wpid, _ := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
			if wpid == pid || !exists(pid) || time.Now().After(grace) {
				break
			}
			time.Sleep(500 * time.Microsecond)
		}
	}
}

// strays returns the children of the calling process that are helpers of
// this run (by their command line).
func (c *coordinator) strays() []int {
	threads, _ := os.ReadDir("/proc/self/task")
	var out []int
	for _, th := range threads {
		b, _ := os.ReadFile("/proc/self/task/" + th.Name() + "/children")
		for _, f := range strings.Fields(string(b)) {
			cl, _ := os.ReadFile("/proc/" + f + "/cmdline")
			args := strings.Split(string(cl), "\x00")
			if len(args) > 3 && args[1] == HelperArg && args[3] == c.runID {
				if pid, err := strconv.Atoi(f); err == nil {
					out = append(out, pid)
				}
			}
		}
	}
	return out
}

// exists reports whether /proc has pid (alive or a zombie).
func exists(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err == nil
}
