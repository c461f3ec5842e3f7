// Package restore rebuilds a process tree's fd state from CRIU images:
// load → plan → run. Plan finds every problem the images can reveal before
// any process exists; Run builds the tree from helper processes, runs the
// files engine in each, and leaves the tree in the requested end state.
//
// # Embedding
//
// Restore does all three for a program that embeds fdrestore (a container
// runtime; the fdrestore CLI is a thin layer over the same calls). A
// program that restores must let its helpers start: call MaybeHelper first
// thing in main, or install cmd/fdrestore-helper and name it in
// Options.Helper (or $FDRESTORE_HELPER, or next to the executable).
//
// External resources are explicit: the caller's fds replace descriptions
// by key (PlanOptions.Inherit, InheritStdio for a runc-style
// descriptors.json), and a key that matches nothing fails the plan; unix
// sockets whose peer was outside the tree follow an ExtUnixPolicy; a
// terminal from outside becomes a new console whose master goes to
// Config.OnConsole (SendConsole speaks runc's --console-socket protocol).
// Hooks run around the restore; Result has the root's pid and pidfd, the
// pid map and timings.
//
// Errors a caller can branch on, with errors.Is / errors.As:
//
//	ErrUnsupported        the images hold objects fdrestore cannot restore (Plan.Unsupported lists them)
//	ErrUnresolved         an external resource does not resolve (*UnresolvedError: key, reason, candidates)
//	ErrDependencyCycle    objects depend on each other in a cycle; a stage-graph cycle is
//	                      also a *files.CycleError (its steps name the objects)
//	*images.FormatError   an image is corrupt (file, entry, offset, field)
//	ErrTaskDied           a process of the tree died during the restore (*TaskError names it)
//	*TaskError            a process of the tree failed (proc, step, cause)
//	*HookError            one of the caller's Hooks failed
//	context.Canceled, context.DeadlineExceeded, scm.ErrTimeout
//
// After any error no process of the restore is left.
package restore

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/images"
)

// Task states of core_entry.tc.task_state (CRIU's TASK_ALIVE, TASK_STOPPED).
const (
	taskAlive   = 1
	taskStopped = 3
)

// ErrUnsupported is wrapped by the error of a plan that holds objects
// fdrestore cannot restore yet.
var ErrUnsupported = errors.New("unsupported objects in the images")

// PlanOptions tune planning.
type PlanOptions struct {
	// SkipFileCheck restores regular files even when their size or mode
	// changed since the dump.
	SkipFileCheck bool
	// TCPEstablished restores established TCP connections with TCP
	// repair; without it (or TCPClose) images holding any are refused.
	TCPEstablished bool
	// TCPClose restores established TCP connections as closed sockets.
	TCPClose bool
	// ShellJob restores a tree that was a job of a shell: the root's
	// session lies outside the tree and becomes the caller's, and a pty
	// slave whose master is not in the images (the shell's terminal) is
	// the caller's terminal, Terminal.
	ShellJob bool
	// Terminal is the path of the caller's terminal (see tty.CurrentTTY),
	// for ShellJob.
	Terminal string
	// ExtUnixSk allows unix sockets whose peer is outside the dumped tree
	// (USK_EXTERN): they connect to the peer's recorded name, as CRIU's
	// --ext-unix-sk does. Without it such a peer is an error.
	ExtUnixSk bool
	// ExtUnix is the policy for unix sockets whose peer is outside the
	// tree, and ExtUnixSockets the policy of single sockets by inode
	// (socket:[INO]), which takes precedence. See ExtUnixPolicy.
	ExtUnix        ExtUnixPolicy
	ExtUnixSockets map[uint32]ExtUnixPolicy
	// Console is the path of a pty slave (see NewConsole) that stands in
	// for the terminal the tree had from outside: a pty slave whose
	// master is not in the images (a container's console, whose master
	// the runtime held). Unlike with ShellJob the session stays the
	// tree's and its leader gets the console as its controlling
	// terminal. Plan.Console says whether the images have such a pty.
	Console string
	// Inherit hands the caller's fds to the tree in place of the
	// descriptions their keys name (see Inherit; InheritStdio maps a
	// descriptors.json to them).
	Inherit []Inherit
}

// Plan is what a restore will do: the processes and the steps that build
// the tree, and for each task the fds to place and the objects it creates.
type Plan struct {
	Set       *images.Set
	Procs     []*Proc
	TreeOps   []TreeOp
	TaskPlans []*files.TaskPlan // by task index (Set.Tasks order)
	Graph     *files.Graph

	// Objects lists every object to create, for printing.
	Objects []PlannedObject
	// Unsupported lists what cannot be restored; Run refuses such a plan.
	Unsupported []string
	// Warnings lists what will be restored differently from the dump.
	Warnings []string
	// ExtUnix lists the unix sockets whose peer is outside the tree and
	// the policy each gets.
	ExtUnix []ExtUnixChoice
	// Console is true when the tree takes PlanOptions.Console for a
	// terminal whose master was outside it.
	Console bool
	// Inherited lists the descriptions the caller's fds replace
	// (PlanOptions.Inherit).
	Inherited []InheritedFd

	// inherited holds, by task index, the caller's fds sent with each
	// task's plan, in the order of their inherit.Params.Index.
	inherited [][]*inhMatch

	// edges add the type planners' own stage-graph edges (bind before
	// connect, queues before shutdown, ...) once every object is planned.
	edges []func(g *files.Graph) error
}

// PlannedObject is one object and the task that creates it.
type PlannedObject struct {
	Spec    *files.OpenSpec
	Creator int // task index
}

// Err returns nil when the plan can be run, and otherwise an error listing
// everything that stands in the way.
func (p *Plan) Err() error {
	if len(p.Unsupported) == 0 {
		return nil
	}
	return fmt.Errorf("%w:\n  %s", ErrUnsupported, strings.Join(p.Unsupported, "\n  "))
}

// NewPlan plans the restore of set. An error means the images cannot be
// restored as they are (an impossible tree, a dependency cycle); objects
// of unsupported types do not fail NewPlan but are listed in
// Plan.Unsupported.
func NewPlan(set *images.Set, opts PlanOptions) (*Plan, error) {
	p := &Plan{Set: set, Graph: files.NewGraph()}
	procs, ops, err := buildTree(set, opts.ShellJob)
	if err != nil {
		return nil, err
	}
	p.Procs, p.TreeOps = procs, ops
	taskIx := make(map[*images.Task]int, len(set.Tasks))
	for i, t := range set.Tasks {
		taskIx[t] = i
		tp := &files.TaskPlan{Task: uint32(i), Pid: t.Pid, SkipFileCheck: opts.SkipFileCheck}
		for _, fd := range t.Fds.Fds {
			tp.Fles = append(tp.Fles, files.Fle{Fd: int32(fd.Num), File: fd.File.ID, Cloexec: fd.Cloexec()})
		}
		p.TaskPlans = append(p.TaskPlans, tp)
		if len(t.Fds.Tasks) > 1 && t.Fds.Tasks[0] == t {
			p.Warnings = append(p.Warnings, fmt.Sprintf("tasks %s share one fd table (files_id %d); each gets its own copy of it", pids(t.Fds.Tasks), t.Fds.ID))
		}
		if len(t.Threads) > 1 {
			p.Warnings = append(p.Warnings, fmt.Sprintf("task %d had %d threads; only the fd table is restored", t.Pid, len(t.Threads)))
		}
		switch st := t.Core.GetTc().GetTaskState(); st {
		case 0, taskAlive:
		case taskStopped:
			p.Warnings = append(p.Warnings, fmt.Sprintf("task %d was stopped at dump; it ends like every task (stopped or exec'd, as requested)", t.Pid))
		default:
			p.Unsupported = append(p.Unsupported, fmt.Sprintf("task %d: task state %d (dead or helper tasks are not restored)", t.Pid, st))
		}
	}

	pl := &planner{p: p, set: set, taskIx: taskIx, opts: opts}
	if err := pl.resolveInherit(); err != nil {
		return nil, err
	}
	if err := pl.planInflight(); err != nil {
		return nil, err
	}
	if err := pl.checkExtUnixSockets(); err != nil {
		return nil, err
	}
	for _, f := range set.FileOrder {
		if err := pl.planFile(f); err != nil {
			return nil, err
		}
	}
	if err := pl.resolveDeliveries(); err != nil {
		return nil, err
	}
	p.planRemaps() // ghost.go
	for i, tp := range p.TaskPlans {
		fo := fdsByFile(tp)
		nameFds(tp, fo)
		sortOpens(tp, fo)
		for j := range tp.Opens {
			p.Objects = append(p.Objects, PlannedObject{Spec: &tp.Opens[j], Creator: i})
		}
		if err := tp.Validate(); err != nil {
			return nil, err
		}
	}
	if err := p.buildGraph(); err != nil {
		return nil, err
	}
	return p, nil
}

func hasReadEnd(ends []*images.File) bool {
	for _, e := range ends {
		if acc := e.Entry.GetPipe().GetFlags() & 3; acc == 0 || acc == 2 {
			return true
		}
	}
	return false
}

func fileIDs(fs []*images.File) []uint32 {
	out := make([]uint32, len(fs))
	for i, f := range fs {
		out[i] = f.ID
	}
	return out
}

func pids(ts []*images.Task) string {
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = fmt.Sprint(t.Pid)
	}
	return strings.Join(s, ",")
}

// fdName names fd: "task 2 fd 4", or "task 2,3 fd 4" for a table several
// tasks share.
func fdName(fd *images.Fd) string {
	return fmt.Sprintf("task %s fd %d", pids(fd.Table.Tasks), fd.Num)
}

// fileFds lists a task's fd numbers by file id: for i = idx[id],
// fds[start[i]:start[i]+n[i]], ascending. It is built with counting passes
// over the task's fles rather than a slice per file.
type fileFds struct {
	idx   map[uint32]int32 // file id -> i
	n     []int32          // fds of the file
	start []int32          // its first in fds
	fds   []int32
}

func fdsByFile(tp *files.TaskPlan) *fileFds {
	fo := &fileFds{idx: make(map[uint32]int32, len(tp.Fles))}
	for _, fl := range tp.Fles {
		i, ok := fo.idx[fl.File]
		if !ok {
			i = int32(len(fo.n))
			fo.idx[fl.File] = i
			fo.n = append(fo.n, 0)
		}
		fo.n[i]++
	}
	start := make([]int32, len(fo.n))
	off := int32(0)
	for i, k := range fo.n {
		start[i] = off
		off += k
	}
	fo.fds = make([]int32, len(tp.Fles))
	pos := slices.Clone(start)
	for _, fl := range tp.Fles {
		i := fo.idx[fl.File]
		fo.fds[pos[i]] = fl.Fd
		pos[i]++
	}
	fo.start = start
	return fo
}

// of returns the task's fds of file id, ascending.
func (fo *fileFds) of(id uint32) []int32 {
	i, ok := fo.idx[id]
	if !ok {
		return nil
	}
	return fo.fds[fo.start[i] : fo.start[i]+fo.n[i]]
}

// nameFds adds the creating task's fd numbers to each object's name, so
// that every engine error names the fds concerned.
func nameFds(tp *files.TaskPlan, fo *fileFds) {
	var b []byte
	for i := range tp.Opens {
		o := &tp.Opens[i]
		b = b[:0]
		n := 0
		for _, id := range o.Files {
			for _, fd := range fo.of(id) {
				if n > 0 {
					b = append(b, ',')
				}
				b = strconv.AppendInt(b, int64(fd), 10)
				n++
			}
		}
		switch n {
		case 0:
		case 1:
			o.Name += " at fd " + string(b)
		default:
			o.Name += " at fds " + string(b)
		}
	}
}

// sortOpens orders a task's opens by the lowest fd they fill, so that fresh
// fds tend to land right on their targets.
func sortOpens(tp *files.TaskPlan, fo *fileFds) {
	key := func(o *files.OpenSpec) int64 {
		best := int64(1) << 40
		for _, f := range o.Files {
			if fds := fo.of(f); len(fds) > 0 && int64(fds[0]) < best {
				best = int64(fds[0])
			}
		}
		return best
	}
	keys := make([]int64, len(tp.Opens))
	sorted := true
	for i := range tp.Opens {
		keys[i] = key(&tp.Opens[i])
		sorted = sorted && (i == 0 || keys[i-1] <= keys[i])
	}
	if sorted {
		return // the usual case: files.img order follows the fds
	}
	ix := make([]int, len(tp.Opens))
	for i := range ix {
		ix[i] = i
	}
	sort.SliceStable(ix, func(a, b int) bool { return keys[ix[a]] < keys[ix[b]] })
	opens := make([]files.OpenSpec, len(tp.Opens))
	for i, j := range ix {
		opens[i] = tp.Opens[j]
	}
	tp.Opens = opens
}

// buildGraph records the cross-task dependencies as stage-graph edges and
// checks them for cycles: every description a task receives is Served
// there only after its creator made it.
//
// Only descriptions that travel get nodes: one a task creates and keeps to
// itself has no edge, so a node for it would only cost time (a task of
// 9,000 private pipes would need 18,000 of them).
func (p *Plan) buildGraph() error {
	g := p.Graph
	nodes, edges := 0, 0
	for _, o := range p.Objects {
		for i := range o.Spec.Files {
			if k := len(o.Spec.SendTo[i]); k > 0 {
				nodes, edges = nodes+1+k, edges+k
			}
		}
	}
	g.Grow(nodes, edges)
	// The receiving end's object is "task P file" number id, so that its
	// nodes print as "task P file id N Served ..." with no name to build
	// for each of them (b-like trees have 100,000).
	kinds := make([]files.Kind, len(p.Set.Tasks))
	for i, t := range p.Set.Tasks {
		kinds[i] = files.Kind("task " + strconv.FormatUint(uint64(t.Pid), 10) + " file")
	}
	for _, o := range p.Objects {
		creator := p.Set.Tasks[o.Creator]
		for i, id := range o.Spec.Files {
			if len(o.Spec.SendTo[i]) == 0 {
				continue
			}
			obj := files.Object{ID: files.ObjectID{Kind: "file", ID: uint64(id)}, Name: o.Spec.Name, Owner: int(creator.Pid)}
			created := g.Node(obj, files.StageCreated)
			for _, dst := range o.Spec.SendTo[i] {
				fobj := files.Object{ID: files.ObjectID{Kind: kinds[dst], ID: uint64(id)}, Owner: int(p.Set.Tasks[dst].Pid)}
				g.Need(g.Node(fobj, files.StageServed), created, "received over SCM_RIGHTS")
			}
		}
	}
	for _, fn := range p.edges {
		if err := fn(g); err != nil {
			return err
		}
	}
	if err := g.Check(); err != nil {
		return cycleError{err}
	}
	return nil
}

// Print writes the plan for people: tasks, tree steps, objects with their
// creators and receivers, graph edges, and what is unsupported.
func (p *Plan) Print(w io.Writer) {
	fmt.Fprintf(w, "Tasks (%d):\n", len(p.Set.Tasks))
	for _, t := range p.Set.Tasks {
		role := ""
		if t.SessionLeader() {
			role = ", session leader"
		} else if t.GroupLeader() {
			role = ", group leader"
		}
		fmt.Fprintf(w, "  task %d: ppid %d pgid %d sid %d%s, %d fds\n", t.Pid, t.PPid, t.Pgid, t.Sid, role, len(t.Fds.Fds))
	}
	fmt.Fprintf(w, "Tree (%d processes, %d steps):\n", len(p.Procs), len(p.TreeOps))
	for i, op := range p.TreeOps {
		fmt.Fprintf(w, "  %d. %s\n", i+1, op.Describe(p.Procs))
	}
	fmt.Fprintf(w, "Objects (%d):\n", len(p.Objects))
	for _, o := range p.Objects {
		fmt.Fprintf(w, "  %s %s: created by task %d", o.Spec.Type, o.Spec.Name, p.Set.Tasks[o.Creator].Pid)
		var dst []string
		for i, id := range o.Spec.Files {
			for _, t := range o.Spec.SendTo[i] {
				dst = append(dst, fmt.Sprintf("file id %d to task %d", id, p.Set.Tasks[t].Pid))
			}
		}
		if len(dst) > 0 {
			fmt.Fprintf(w, "; sends %s", strings.Join(dst, ", "))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "Stage graph: %d nodes, %d edges, no cycle\n", p.Graph.Len(), p.Graph.Edges())
	p.printEdges(w)
	p.printExtUnix(w)
	if len(p.Inherited) > 0 {
		fmt.Fprintf(w, "Inherited (%d):\n", len(p.Inherited))
		for _, in := range p.Inherited {
			fmt.Fprintf(w, "  %s: the caller's fd for %q, received by task %d\n", p.Set.Files[in.File].Name(), in.Key, in.Task)
		}
	}
	if len(p.Warnings) > 0 {
		fmt.Fprintf(w, "Warnings (%d):\n", len(p.Warnings))
		for _, s := range p.Warnings {
			fmt.Fprintf(w, "  %s\n", s)
		}
	}
	if len(p.Unsupported) > 0 {
		fmt.Fprintf(w, "Unsupported (%d):\n", len(p.Unsupported))
		for _, s := range p.Unsupported {
			fmt.Fprintf(w, "  %s\n", s)
		}
	} else {
		fmt.Fprintln(w, "Restorable: yes")
	}
}

func (p *Plan) printEdges(w io.Writer) {
	g := p.Graph
	for n := 0; n < g.Len(); n++ {
		for _, e := range g.Deps(files.NodeID(n)) {
			fmt.Fprintf(w, "  %s needs %s (%s)\n", g.Info(files.NodeID(n)), g.Info(e.Node), e.Why)
		}
	}
}

// Cwd returns the working directory recorded for t (fs-PID.img), or "".
func (p *Plan) Cwd(t *images.Task) string {
	if t == nil || t.FS == nil {
		return ""
	}
	if f := p.Set.Files[t.FS.GetCwdId()]; f != nil {
		return f.Entry.GetReg().GetName()
	}
	return ""
}
