package files

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/fdrestore/fdrestore/scm"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// An Opener creates one object and publishes the fds of its descriptions.
// The engine calls Open until it reports done; a call that reports not done
// is repeated after the task next receives something. Open must create fds
// only with calls that take the lowest free number (open, pipe2, socket,
// ...) and must hand every fd it keeps to Context.Adopt or Context.Temp
// before returning, so that the engine's placement never clobbers an fd.
type Opener interface {
	Open(c *Context) (done bool, err error)
}

// OpenerFunc adapts a function to the Opener interface.
type OpenerFunc func(c *Context) (bool, error)

// Open calls f.
func (f OpenerFunc) Open(c *Context) (bool, error) { return f(c) }

// NewOpener builds the opener of one OpenSpec from its data.
type NewOpener func(spec *OpenSpec) (Opener, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]NewOpener{}
)

// Register makes an opener type available to helpers. Type packages call it
// from init.
func Register(typ string, f NewOpener) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[typ]; dup {
		panic("files: opener type " + typ + " registered twice")
	}
	registry[typ] = f
}

func lookupOpener(typ string) NewOpener {
	registryMu.RLock()
	defer registryMu.RUnlock()
	return registry[typ]
}

// desc is the engine's state of one description in this task.
type desc struct {
	id     uint32
	fles   []int32 // target fds in this task, ascending
	fd     int     // an fd referring to it, or -1 while it is absent
	temp   bool    // fd is a temporary above the target range
	ce     int8    // FD_CLOEXEC of fd when known (0 or 1), else -1
	sendTo []uint32
	waiter []int // opens whose Needs include this description
}

// descTable holds the task's descriptions by file id: in a slice indexed
// by id when the ids are dense (they are in images from CRIU and from
// fdrestore dump), else in a map.
type descTable struct {
	all   []desc  // every description; never reallocated once built
	dense []int32 // id -> index in all + 1 (0: absent)
	m     map[uint32]int32
}

func (t *descTable) get(id uint32) *desc {
	var i int32
	if t.dense != nil {
		if int(id) >= len(t.dense) {
			return nil
		}
		i = t.dense[id]
	} else {
		i = t.m[id]
	}
	if i == 0 {
		return nil
	}
	return &t.all[i-1]
}

// add returns the description id, adding it if new. all must have room:
// add never grows it, so that pointers into it stay valid.
func (t *descTable) add(id uint32) *desc {
	if d := t.get(id); d != nil {
		return d
	}
	if len(t.all) == cap(t.all) {
		panic("files: description table full")
	}
	t.all = append(t.all, desc{id: id, fd: -1, ce: -1})
	if t.dense != nil {
		t.dense[id] = int32(len(t.all))
	} else {
		t.m[id] = int32(len(t.all))
	}
	return &t.all[len(t.all)-1]
}

// open is the engine's state of one OpenSpec.
type open struct {
	spec    *OpenSpec
	opener  Opener
	missing int // Needs not yet present
	done    bool
	queued  bool
}

// Engine restores one task's fd table from its TaskPlan. It is used by one
// goroutine.
type Engine struct {
	plan     *TaskPlan
	tr       *scm.Transport
	log      logrus.FieldLogger
	tempBase int
	descs    descTable
	cloexec  []bool // recorded FD_CLOEXEC by target fd
	scratch  []*desc
	opens    []*open
	runq     []*open
	parked   []*open // ran, reported not done: retried on news
	placed   int     // fles placed
	pending  int     // opens not done
	temps    []int
	ctx      Context
	ctlFD    int
	after    []func() error // Context.AfterTree, in registration order

	// Idle, when set, is told when the task has had nothing to do for
	// IdleAfter (idle true, with what it waits for) and when it next
	// wakes up (idle false). The coordinator uses it to tell a stalled
	// tree from a slow one at once.
	Idle      func(idle bool, waitsFor string)
	IdleAfter time.Duration
}

// EngineError says which object failed and why.
type EngineError struct {
	Task   uint32 // image pid
	Object string // e.g. "pipe:[1302207] (file ids 6, 7)"
	Stage  string // e.g. "open", "place fd 12", "receive"
	Err    error
}

func (e *EngineError) Error() string {
	s := fmt.Sprintf("task %d", e.Task)
	if e.Object != "" {
		s += ": " + e.Object
	}
	if e.Stage != "" {
		s += ": " + e.Stage
	}
	return s + ": " + e.Err.Error()
}

func (e *EngineError) Unwrap() error { return e.Err }

// ErrAborted is returned when the coordinator or another task gave up.
var ErrAborted = errors.New("restore aborted")

// NewEngine prepares the engine for plan. tr is the task's transport,
// whose fds must already sit at or above TempBase(plan). ctlFD, if >= 0,
// is polled too: any input on it (or its hang-up) aborts the engine.
func NewEngine(plan *TaskPlan, tr *scm.Transport, ctlFD int, log logrus.FieldLogger) (*Engine, error) {
	if err := plan.Validate(); err != nil {
		return nil, err
	}
	e := &Engine{plan: plan, tr: tr, log: log, tempBase: TempBase(plan), ctlFD: ctlFD}
	e.ctx.e = e
	e.initDescs()
	get := e.descs.add
	e.cloexec = make([]bool, e.tempBase)
	for _, f := range plan.Fles {
		e.cloexec[f.Fd] = f.Cloexec
	}
	for _, id := range plan.Hold {
		get(id)
	}
	opens := make([]open, len(plan.Opens))
	e.opens = make([]*open, 0, len(plan.Opens))
	for i := range plan.Opens {
		spec := &plan.Opens[i]
		mk := lookupOpener(spec.Type)
		if mk == nil {
			return nil, &EngineError{Task: plan.Pid, Object: spec.Name, Stage: "plan", Err: fmt.Errorf("no opener registered for type %q", spec.Type)}
		}
		op, err := mk(spec)
		if err != nil {
			return nil, &EngineError{Task: plan.Pid, Object: spec.Name, Stage: "plan", Err: err}
		}
		o := &opens[i]
		o.spec, o.opener = spec, op
		for j, id := range spec.Files {
			d := get(id)
			d.sendTo = spec.SendTo[j]
		}
		for _, id := range spec.Needs {
			d := get(id)
			d.waiter = append(d.waiter, len(e.opens))
			o.missing++
		}
		e.opens = append(e.opens, o)
	}
	e.pending = len(e.opens)
	for _, o := range e.opens {
		if o.missing == 0 {
			e.enqueue(o)
		}
	}
	return e, nil
}

// initDescs builds the description table with every description the plan
// names, and each one's target fds (carved from one array).
func (e *Engine) initDescs() {
	plan := e.plan
	n, maxID := len(plan.Fles)+len(plan.Hold), uint32(0)
	each := func(fn func(id uint32)) {
		for _, f := range plan.Fles {
			fn(f.File)
		}
		for _, id := range plan.Hold {
			fn(id)
		}
		for i := range plan.Opens {
			for _, id := range plan.Opens[i].Files {
				fn(id)
			}
			for _, id := range plan.Opens[i].Needs {
				fn(id)
			}
		}
	}
	for i := range plan.Opens {
		n += len(plan.Opens[i].Files) + len(plan.Opens[i].Needs)
	}
	each(func(id uint32) { maxID = max(maxID, id) })
	t := &e.descs
	if uint64(maxID) < 4*uint64(n)+4096 {
		t.dense = make([]int32, maxID+1)
	} else {
		t.m = make(map[uint32]int32, n)
	}
	// Number the descriptions first, so that all is allocated once.
	var order []uint32
	each(func(id uint32) {
		if t.dense != nil {
			if t.dense[id] == 0 {
				order = append(order, id)
				t.dense[id] = int32(len(order))
			}
		} else if t.m[id] == 0 {
			order = append(order, id)
			t.m[id] = int32(len(order))
		}
	})
	t.all = make([]desc, len(order))
	for i, id := range order {
		t.all[i] = desc{id: id, fd: -1, ce: -1}
	}
	// Targets: count per description, then fill in fd order.
	for _, f := range plan.Fles {
		t.get(f.File).fd-- // fd counts down from -1 meanwhile
	}
	fds := make([]int32, len(plan.Fles))
	off := 0
	for i := range t.all {
		d := &t.all[i]
		k := -1 - d.fd
		d.fles, d.fd = fds[off:off:off+k], -1
		off += k
	}
	for _, f := range plan.Fles {
		d := t.get(f.File)
		d.fles = append(d.fles, f.Fd)
	}
}

// TempBase returns the lowest fd number the helper may use for its own fds
// and temporaries: one above the task's highest target fd.
func TempBase(plan *TaskPlan) int { return plan.MaxFd() + 1 }

func (e *Engine) enqueue(o *open) {
	if !o.queued && !o.done {
		o.queued = true
		e.runq = append(e.runq, o)
	}
}

func (e *Engine) errf(obj, stage string, err error) error {
	return &EngineError{Task: e.plan.Pid, Object: obj, Stage: stage, Err: err}
}

// Run restores the fd table. It returns when every fd is in place and
// every description this task serves has been sent, or with the first
// error, or when deadline passes.
func (e *Engine) Run(deadline time.Time) error {
	var pfds []unix.PollFd
	idle := false
	for {
		if err := e.runOpens(); err != nil {
			return err
		}
		if err := e.tr.Flush(); err != nil {
			return e.errf("", "send", err)
		}
		if e.finished() {
			return e.closeTemps()
		}
		pfds = e.tr.PollFDs(pfds[:0])
		if e.ctlFD >= 0 {
			pfds = append(pfds, unix.PollFd{Fd: int32(e.ctlFD), Events: unix.POLLIN})
		}
		until := deadline
		if e.Idle != nil && !idle && !e.tr.Pending() {
			if t := time.Now().Add(e.idleAfter()); t.Before(deadline) {
				until = t
			}
		}
		if _, err := scm.WaitFunc(until, e.waitingFor, pfds...); err != nil {
			if errors.Is(err, scm.ErrTimeout) && until.Before(deadline) {
				idle = true
				e.Idle(true, e.Stalled())
				continue
			}
			return e.errf("", "wait", fmt.Errorf("%w\n%s", err, e.Stalled()))
		}
		if idle {
			idle = false
			e.Idle(false, "")
		}
		if e.ctlFD >= 0 && pfds[len(pfds)-1].Revents != 0 {
			return e.errf("", "wait", fmt.Errorf("%w: the coordinator closed the control channel or sent an abort", ErrAborted))
		}
		if err := e.tr.Drain(e.receive); err != nil {
			return err
		}
	}
}

func (e *Engine) idleAfter() time.Duration {
	if e.IdleAfter > 0 {
		return e.IdleAfter
	}
	return 50 * time.Millisecond
}

func (e *Engine) finished() bool {
	return e.pending == 0 && e.placed == len(e.plan.Fles) && e.allHeld() && !e.tr.Pending()
}

func (e *Engine) allHeld() bool {
	for _, id := range e.plan.Hold {
		if e.descs.get(id).fd < 0 {
			return false
		}
	}
	return true
}

func (e *Engine) waitingFor() string {
	return fmt.Sprintf("task %d: fds from other tasks (%d of %d fds placed, %d objects pending)", e.plan.Pid, e.placed, len(e.plan.Fles), e.pending)
}

// Stalled describes what the task still waits for: every description not
// yet present and every unfinished opener.
func (e *Engine) Stalled() string {
	var missing []int
	for i := range e.descs.all {
		if d := &e.descs.all[i]; d.fd < 0 {
			missing = append(missing, int(d.id))
		}
	}
	sort.Ints(missing)
	s := fmt.Sprintf("task %d waits for file ids %v", e.plan.Pid, missing)
	for _, o := range e.opens {
		if !o.done {
			s += fmt.Sprintf("; %s %s not finished (%d needs missing)", o.spec.Type, o.spec.Name, o.missing)
		}
	}
	if e.tr.Pending() {
		s += "; sends to other tasks still queued"
	}
	return s
}

func (e *Engine) runOpens() error {
	for len(e.runq) > 0 {
		q := e.runq
		e.runq = nil
		for _, o := range q {
			o.queued = false
			if o.done {
				continue
			}
			e.ctx.cur = o
			done, err := o.opener.Open(&e.ctx)
			e.ctx.cur = nil
			if err != nil {
				return e.errf(o.spec.Type+" "+o.spec.Name, "open", err)
			}
			if done {
				for _, id := range o.spec.Files {
					if e.descs.get(id).fd < 0 {
						return e.errf(o.spec.Type+" "+o.spec.Name, "open", fmt.Errorf("reported done without publishing file id %d", id))
					}
				}
				o.done = true
				e.pending--
			} else {
				e.parked = append(e.parked, o)
			}
		}
	}
	return nil
}

// receive handles one transport message: fds of descriptions other tasks
// created.
func (e *Engine) receive(m scm.Message) error {
	switch m.Kind {
	case scm.KindFDs:
		// The transport checked one key per fd: the keys are the file ids.
		if err := e.adopt(m.Keys, m.FDs, true, 1); err != nil {
			return err
		}
		// Openers that reported "not yet" may try again.
		for _, o := range e.parked {
			e.enqueue(o)
		}
		e.parked = e.parked[:0]
		return nil
	case scm.KindAbort:
		return e.errf("", "receive", fmt.Errorf("%w by task index %d: %s", ErrAborted, m.From, m.Data))
	}
	closeAll(m.FDs)
	return e.errf("", "receive", fmt.Errorf("unexpected %s message from task index %d", m.Kind, m.From))
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// adopt takes ownership of fresh fds for descriptions ids (one fd each),
// places them at their targets and serves them to the tasks that need them.
// The fds may sit anywhere, including on target numbers of other
// descriptions: first every fd that is not on a target of its own
// description moves above the target range, then the targets are filled.
// ce is the FD_CLOEXEC of the fds when known (0 or 1), else -1.
func (e *Engine) adopt(ids []uint32, fds []int, remote bool, ce int8) error {
	ds := e.scratch[:0]
	defer func() { clear(ds); e.scratch = ds[:0] }()
	for _, id := range ids {
		d := e.descs.get(id)
		if d == nil || d.fd >= 0 || (remote && len(d.sendTo) > 0) {
			closeAll(fds)
			what := "not needed by this task"
			if d != nil && d.fd >= 0 {
				what = "already present"
			}
			return e.errf(fmt.Sprintf("file id %d", id), "place", fmt.Errorf("received an fd for a description %s", what))
		}
		ds = append(ds, d)
	}
	// Pass 1: leave an fd in place only if it sits on one of its own
	// targets; move every other one above the target range.
	for i, d := range ds {
		fd := fds[i]
		if fd < e.tempBase && d.hasTarget(int32(fd)) {
			d.fd, d.temp, d.ce = fd, false, ce
			continue
		}
		if fd < e.tempBase {
			nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, e.tempBase)
			if err != nil {
				closeAll(fds[i:])
				return e.errf(fmt.Sprintf("file id %d", d.id), "move fd "+strconv.Itoa(fd), err)
			}
			unix.Close(fd)
			fd, d.ce = nfd, 1
		} else {
			d.ce = ce
		}
		d.fd, d.temp = fd, true
	}
	// Pass 2: fill every target; all of them are free now.
	for _, d := range ds {
		if err := e.place(d); err != nil {
			return err
		}
		for _, dst := range d.sendTo {
			if err := e.tr.Queue(dst, d.id, d.fd); err != nil {
				return e.errf(fmt.Sprintf("file id %d", d.id), "serve", err)
			}
		}
		for _, w := range d.waiter {
			o := e.opens[w]
			if o.missing--; o.missing == 0 {
				e.enqueue(o)
			}
		}
	}
	return nil
}

func (d *desc) hasTarget(fd int32) bool {
	for _, t := range d.fles {
		if t == fd {
			return true
		}
	}
	return false
}

// place puts d at every one of its targets, with the recorded fd flags.
func (e *Engine) place(d *desc) error {
	for _, t := range d.fles {
		ce := e.cloexec[t]
		if int(t) == d.fd {
			flag, want := 0, int8(0)
			if ce {
				flag, want = unix.FD_CLOEXEC, 1
			}
			if d.ce == want {
				e.placed++
				continue // already right
			}
			if _, err := unix.FcntlInt(uintptr(t), unix.F_SETFD, flag); err != nil {
				return e.errf(fmt.Sprintf("file id %d", d.id), fmt.Sprintf("set flags of fd %d", t), err)
			}
			d.ce = want
		} else {
			flag := 0
			if ce {
				flag = unix.O_CLOEXEC
			}
			if err := unix.Dup3(d.fd, int(t), flag); err != nil {
				return e.errf(fmt.Sprintf("file id %d", d.id), fmt.Sprintf("place fd %d", t), err)
			}
		}
		e.placed++
	}
	// Once a target holds the description, the temporary is not needed:
	// the target is what gets sent.
	if d.temp && len(d.fles) > 0 {
		unix.Close(d.fd)
		d.fd, d.temp, d.ce = int(d.fles[0]), false, boolCE(e.cloexec[d.fles[0]])
	} else if d.temp {
		e.temps = append(e.temps, d.fd)
	}
	return nil
}

func boolCE(b bool) int8 {
	if b {
		return 1
	}
	return 0
}

func (e *Engine) closeTemps() error {
	for _, fd := range e.temps {
		unix.Close(fd)
	}
	e.temps = nil
	for i := range e.descs.all {
		if d := &e.descs.all[i]; d.temp {
			d.fd, d.temp = -1, false
		}
	}
	return nil
}

// RunAfterTree runs the functions openers registered with
// Context.AfterTree, in registration order, once the coordinator reports
// that every task of the tree is restored. It stops at the first error.
func (e *Engine) RunAfterTree() error {
	fns := e.after
	e.after = nil
	for _, fn := range fns {
		if err := fn(); err != nil {
			return &EngineError{Task: e.plan.Pid, Stage: "after tree", Err: err}
		}
	}
	return nil
}

// Context is what an Opener gets to work with.
type Context struct {
	e   *Engine
	cur *open
}

// Spec returns the OpenSpec being opened.
func (c *Context) Spec() *OpenSpec { return c.cur.spec }

// Log returns the task's logger.
func (c *Context) Log() logrus.FieldLogger { return c.e.log }

// Plan returns the task's plan.
func (c *Context) Plan() *TaskPlan { return c.e.plan }

// Adopt publishes fresh fds, one per description: the engine places them
// at their targets and serves them to other tasks at once. The engine owns
// the fds from then on. Pass every fd of one creation (both ends of a
// pipe, ...) in one call.
func (c *Context) Adopt(ids []uint32, fds []int) error {
	return c.adopt(ids, fds, -1)
}

// AdoptCloexec is Adopt for fds whose FD_CLOEXEC the caller knows (all
// set, or all clear): the engine then skips setting it on the fds that
// land right on their targets with the recorded flag.
func (c *Context) AdoptCloexec(ids []uint32, fds []int, cloexec bool) error {
	return c.adopt(ids, fds, boolCE(cloexec))
}

func (c *Context) adopt(ids []uint32, fds []int, ce int8) error {
	if len(ids) != len(fds) {
		closeAll(fds)
		return fmt.Errorf("adopt: %d ids for %d fds", len(ids), len(fds))
	}
	return c.e.adopt(ids, fds, false, ce)
}

// Cloexec reports whether a fresh fd of description id is best created
// close-on-exec: false only when its lowest target fd in this task is
// recorded without FD_CLOEXEC. An fd created to match lands on its target
// with no further call, and an fd that lands elsewhere is moved with
// F_DUPFD_CLOEXEC anyway.
func (c *Context) Cloexec(id uint32) bool {
	if d := c.e.descs.get(id); d != nil && len(d.fles) > 0 {
		return c.e.cloexec[d.fles[0]]
	}
	return true
}

// Temp moves an fd the opener keeps across calls above the target range
// and returns its new number; the opener still owns it.
func (c *Context) Temp(fd int) (int, error) {
	if fd >= c.e.tempBase {
		return fd, nil
	}
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, c.e.tempBase)
	unix.Close(fd)
	return nfd, err
}

// FD returns an fd of description id present in this task (placed or
// held), or -1.
func (c *Context) FD(id uint32) int {
	if d := c.e.descs.get(id); d != nil {
		return d.fd
	}
	return -1
}

// AfterTree registers fn to run in this task after the whole tree is
// restored (every task's fds in place) and before the task reaches its
// end state: for work that must wait for every other object, such as
// turning TCP repair mode off. fn must leave the fd table as it found it.
func (c *Context) AfterTree(fn func() error) { c.e.after = append(c.e.after, fn) }

// MapPid translates an image pid to the restored pid (0 when unknown).
func (c *Context) MapPid(pid uint32) uint32 { return c.e.plan.PidMap[pid] }

// TempBase returns the lowest number above the target range.
func (c *Context) TempBase() int { return c.e.tempBase }

// CheckTable verifies that the calling process's fd table below tempBase
// holds exactly the plan's fds, each with its recorded FD_CLOEXEC, and
// makes every fd from tempBase up close-on-exec, so that after exec the
// table is exactly the image's. It returns a description of every
// difference.
//
// When the target range is dense enough it probes each number below
// tempBase with F_GETFD (about 0.2µs each): listing /proc/self/fd costs
// several times more per fd, since procfs builds a dentry for each. A
// sparse table (a few fds at huge numbers) is listed instead.
func CheckTable(plan *TaskPlan, tempBase int) error {
	return checkTable(plan, tempBase, true)
}

// PrepareExec is the check before a helper execs into a program that
// counts its fds itself (the restore's stopper, see restore/stopper.go):
// every target fd is open (one poll(2) per 4096 fds reports a closed one
// as POLLNVAL, at half the cost of F_GETFD each), no number below tempBase
// other than a target is, and every fd from tempBase up is made
// close-on-exec. The targets' FD_CLOEXEC, which placement sets with checked
// calls, is then checked by the count after exec: a target wrongly
// close-on-exec would be missing.
func PrepareExec(plan *TaskPlan, tempBase int) error {
	return checkTable(plan, tempBase, false)
}

func checkTable(plan *TaskPlan, tempBase int, flags bool) error {
	var problems []string
	switch {
	case !flags && tempBase <= 4*len(plan.Fles)+1024:
		problems = pollTable(plan, tempBase)
	case tempBase <= 4*len(plan.Fles)+1024:
		problems = probeTable(plan, tempBase)
	default:
		var err error
		if problems, err = listTable(plan, tempBase); err != nil {
			return err
		}
	}
	// The helper's own fds and the Go runtime's: all must go away at
	// exec. One call makes sure of it, whatever opened them.
	if err := unix.CloseRange(uint(tempBase), ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		problems = append(problems, fmt.Sprintf("make fds from %d up close-on-exec: %v", tempBase, err))
	}
	if len(problems) > 0 {
		return fmt.Errorf("fd table of task %d differs from the images: %v", plan.Pid, problems)
	}
	return nil
}

// pollTable checks that every target is open with poll(2) and that every
// other number below tempBase is closed with F_GETFD.
func pollTable(plan *TaskPlan, tempBase int) []string {
	var problems []string
	fles := plan.Fles
	pfds := make([]unix.PollFd, 0, min(len(fles), 4096))
	for i := 0; i < len(fles); {
		pfds = pfds[:0]
		for ; i < len(fles) && len(pfds) < cap(pfds); i++ {
			pfds = append(pfds, unix.PollFd{Fd: fles[i].Fd})
		}
		var err error
		for {
			if _, err = unix.Poll(pfds, 0); err != unix.EINTR {
				break
			}
		}
		if err != nil {
			return probeTable(plan, tempBase) // EINVAL: more than RLIMIT_NOFILE
		}
		for _, p := range pfds {
			if p.Revents&unix.POLLNVAL != 0 {
				problems = append(problems, fmt.Sprintf("fd %d missing", p.Fd))
			}
		}
	}
	j := 0
	for fd := 0; fd < tempBase; fd++ {
		if j < len(fles) && int(fles[j].Fd) == fd {
			j++
			continue
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
			target, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
			problems = append(problems, fmt.Sprintf("stray fd %d (%s)", fd, target))
		}
	}
	return problems
}

// probeTable checks every number below tempBase with F_GETFD.
func probeTable(plan *TaskPlan, tempBase int) []string {
	var problems []string
	fles := plan.Fles
	j := 0 // next fle, by ascending fd
	for fd := 0; fd < tempBase; fd++ {
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		isTarget := j < len(fles) && int(fles[j].Fd) == fd
		switch {
		case isTarget && err != nil:
			problems = append(problems, fmt.Sprintf("fd %d (file id %d) missing: %v", fd, fles[j].File, err))
		case isTarget && (fl&unix.FD_CLOEXEC != 0) != fles[j].Cloexec:
			problems = append(problems, fmt.Sprintf("fd %d has FD_CLOEXEC %v, want %v", fd, !fles[j].Cloexec, fles[j].Cloexec))
		case !isTarget && err == nil:
			target, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
			problems = append(problems, fmt.Sprintf("stray fd %d (%s)", fd, target))
		case !isTarget && err != unix.EBADF:
			problems = append(problems, fmt.Sprintf("fd %d: F_GETFD: %v", fd, err))
		}
		if isTarget {
			j++
		}
	}
	return problems
}

// listTable checks the fds below tempBase as listed by /proc/self/fd.
func listTable(plan *TaskPlan, tempBase int) ([]string, error) {
	want := make(map[int]bool, len(plan.Fles))
	for _, fl := range plan.Fles {
		want[int(fl.Fd)] = fl.Cloexec
	}
	fds, err := ListFDs()
	if err != nil {
		return nil, err
	}
	var problems []string
	seen := 0
	for _, fd := range fds {
		if fd >= tempBase {
			continue
		}
		ce, ok := want[fd]
		if !ok {
			target, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
			problems = append(problems, fmt.Sprintf("stray fd %d (%s)", fd, target))
			continue
		}
		seen++
		if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || (fl&unix.FD_CLOEXEC != 0) != ce {
			problems = append(problems, fmt.Sprintf("fd %d: FD_CLOEXEC is not %v (%v)", fd, ce, err))
		}
	}
	if seen != len(plan.Fles) {
		problems = append(problems, fmt.Sprintf("%d of %d fds present", seen, len(plan.Fles)))
	}
	return problems, nil
}

// CountFDs returns the number of open fds of the calling process. On
// Linux 6.2 and later, stat of /proc/self/fd reports it as the size (the
// kernel counts its open-fd bitmap), without listing the directory;
// ok is false on kernels that report no count.
func CountFDs() (n int, ok bool) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/fd", &st); err != nil || st.Size <= 0 {
		return 0, false
	}
	return int(st.Size), true
}

// ListFDs returns the open fds of the calling process, read from
// /proc/self/fd with raw getdents (no os.File, no netpoller), without the
// fd it used to read them.
func ListFDs() ([]int, error) {
	dir, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("list fds: %w", err)
	}
	defer unix.Close(dir)
	var fds []int
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.ReadDirent(dir, buf)
		if err != nil {
			return nil, fmt.Errorf("list fds: %w", err)
		}
		if n == 0 {
			return fds, nil
		}
		for b := buf[:n]; len(b) > 0; {
			// struct linux_dirent64: ino 8, off 8, reclen 2, type 1, name.
			reclen := int(b[16]) | int(b[17])<<8
			if reclen <= 19 || reclen > len(b) {
				return nil, fmt.Errorf("list fds: malformed directory entry")
			}
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if fd, err := strconv.Atoi(string(name)); err == nil && fd != dir {
				fds = append(fds, fd)
			}
			b = b[reclen:]
		}
	}
}
