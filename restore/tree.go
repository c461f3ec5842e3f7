package restore

import (
	"fmt"

	"github.com/fdrestore/fdrestore/images"
)

// Proc is one process the restore creates: a task of the images, or a
// stand-in that recreates a session or process group whose leader was not
// dumped (it had died) and exits once the tree is built.
type Proc struct {
	Index    int          // position in Plan.Procs
	Task     *images.Task // nil for a stand-in
	TaskIx   int          // index in Plan.Tasks, -1 for a stand-in
	Parent   int          // proc that spawns it; -1 for the root (spawned by the coordinator)
	Setsid   bool         // setsid at spawn
	NewGroup bool         // leads a new process group from spawn (stand-ins)
	Why      string       // for stand-ins: what they stand in for
}

// Name describes the process for messages.
func (p *Proc) Name() string {
	if p.Task != nil {
		return fmt.Sprintf("task %d", p.Task.Pid)
	}
	return "stand-in " + p.Why
}

// OpKind is a step of building the process tree.
type OpKind int

// Tree-building steps, carried out by the coordinator in Plan.TreeOps order.
const (
	OpSpawn     OpKind = iota + 1 // Proc's parent spawns Proc
	OpSetsid                      // Proc calls setsid
	OpSetpgid                     // Proc joins the group led by proc Arg (Arg == Proc: its own)
	OpSubreaper                   // Proc sets PR_SET_CHILD_SUBREAPER to Arg
	OpExit                        // stand-in Proc exits; its parent reaps it
)

// TreeOp is one step of building the process tree.
type TreeOp struct {
	Kind OpKind
	Proc int
	Arg  int
}

// Describe renders the step for `fdrestore plan`.
func (op TreeOp) Describe(procs []*Proc) string {
	p := procs[op.Proc]
	switch op.Kind {
	case OpSpawn:
		parent := "the coordinator"
		if p.Parent >= 0 {
			parent = procs[p.Parent].Name()
		}
		s := fmt.Sprintf("spawn %s from %s", p.Name(), parent)
		if p.Setsid {
			s += ", in a new session"
		}
		if p.NewGroup {
			s += ", in a new process group"
		}
		return s
	case OpSetsid:
		return p.Name() + " calls setsid (after spawning the children born in its old session)"
	case OpSetpgid:
		if op.Arg == op.Proc {
			return p.Name() + " leads a new process group"
		}
		return fmt.Sprintf("%s joins the process group of %s", p.Name(), procs[op.Arg].Name())
	case OpSubreaper:
		return fmt.Sprintf("%s sets child-subreaper to %d", p.Name(), op.Arg)
	case OpExit:
		return p.Name() + " exits and is reaped by its parent"
	}
	return fmt.Sprintf("op %d", op.Kind)
}

type treeBuilder struct {
	set      *images.Set
	taskIx   map[*images.Task]int
	procs    []*Proc
	ops      []TreeOp
	exits    []TreeOp
	procOf   map[uint32]int    // task pid -> proc
	born     map[uint32]uint32 // deferred session leaders -> session they are born in
	sessProc map[uint32]int    // session id -> stand-in proc leading it
	standin  map[[2]uint32]int // (spawning task, session) -> stand-in proc
	grp      []int             // per proc: the proc leading its current process group
	// shellPgid: with a shell job, the root's process group, which is the
	// coordinator's (the caller's foreground job) after restore.
	shellPgid uint32
}

// buildTree plans the processes and steps that reproduce the tree's parent
// links, sessions and process groups.
//
// With shellJob the root may belong to a session outside the tree (the
// shell's): it is then spawned in the coordinator's session and process
// group, and every task of that session stays in it.
func buildTree(set *images.Set, shellJob bool) ([]*Proc, []TreeOp, error) {
	b := &treeBuilder{set: set, taskIx: map[*images.Task]int{}, procOf: map[uint32]int{},
		born: map[uint32]uint32{}, sessProc: map[uint32]int{}, standin: map[[2]uint32]int{}}
	for i, t := range set.Tasks {
		b.taskIx[t] = i
	}
	root := set.Tasks[0]
	if root.Sid != root.Pid && !shellJob {
		return nil, nil, fmt.Errorf("pstree.img: root task %d is not a session leader (sid %d): its session lies outside the dumped tree, and restore it with --shell-job to make it a job of the caller's session", root.Pid, root.Sid)
	}
	for _, t := range set.Tasks {
		if t.Sid == t.Pid && t.Pgid != t.Pid {
			return nil, nil, fmt.Errorf("pstree.img: task %d leads session %d but is in process group %d; a session leader leads its own group", t.Pid, t.Sid, t.Pgid)
		}
	}
	if shellJob && root.Sid != root.Pid {
		b.shellPgid = root.Pgid
	}
	if err := b.bornSessions(); err != nil {
		return nil, nil, err
	}
	b.spawn(root, -1)
	if err := b.groups(); err != nil {
		return nil, nil, err
	}
	b.ops = append(b.ops, b.exits...)
	return b.procs, b.ops, nil
}

// bornSessions finds the session leaders that forked children before
// calling setsid: every ancestor between a task and the leader of its
// session, when that leader is an ancestor, was born in that session.
func (b *treeBuilder) bornSessions() error {
	for _, c := range b.set.Tasks {
		if c.Parent == nil || c.Sid == c.Pid || c.Sid == c.Parent.Sid {
			continue
		}
		leader := b.set.TaskByPid[c.Sid]
		if leader == nil || !isAncestor(leader, c) {
			continue // led by a task that was not dumped: a stand-in recreates it
		}
		for a := c.Parent; a != leader; a = a.Parent {
			if a.Sid != a.Pid {
				return fmt.Errorf("pstree.img: task %d is in session %d, but its ancestor %d is in session %d without leading it", c.Pid, c.Sid, a.Pid, a.Sid)
			}
			if prev, ok := b.born[a.Pid]; ok && prev != c.Sid {
				return fmt.Errorf("pstree.img: task %d would have to be born in both session %d and session %d", a.Pid, prev, c.Sid)
			}
			b.born[a.Pid] = c.Sid
		}
	}
	return nil
}

func isAncestor(a, t *images.Task) bool {
	for p := t.Parent; p != nil; p = p.Parent {
		if p == a {
			return true
		}
	}
	return false
}

func (b *treeBuilder) addProc(p *Proc) int {
	p.Index = len(b.procs)
	b.procs = append(b.procs, p)
	// A new process is in its parent's group unless it starts its own.
	g := p.Index
	if p.Parent >= 0 && !p.Setsid && !p.NewGroup {
		g = b.grp[p.Parent]
	}
	b.grp = append(b.grp, g)
	b.ops = append(b.ops, TreeOp{Kind: OpSpawn, Proc: p.Index})
	return p.Index
}

// need returns the session task c must be in when spawned, and whether it
// gets a new session at spawn instead.
func (b *treeBuilder) need(c *images.Task) (uint32, bool) {
	if s, ok := b.born[c.Pid]; ok {
		return s, false
	}
	if c.Sid == c.Pid {
		return 0, true
	}
	return c.Sid, false
}

// spawn adds task t, spawned by proc parent, then its subtree.
func (b *treeBuilder) spawn(t *images.Task, parent int) {
	_, deferred := b.born[t.Pid]
	ix := b.addProc(&Proc{Task: t, TaskIx: b.taskIx[t], Parent: parent, Setsid: t.Sid == t.Pid && !deferred})
	b.procOf[t.Pid] = ix
	cur := t.Sid // session while spawning (its own for a leader)
	if deferred {
		cur = b.born[t.Pid]
	}
	var later []*images.Task
	for _, c := range t.Children {
		s, own := b.need(c)
		if deferred && !own && s == t.Pid {
			later = append(later, c)
			continue
		}
		b.spawnChild(c, ix, cur, s, own)
	}
	if deferred {
		b.ops = append(b.ops, TreeOp{Kind: OpSetsid, Proc: ix})
		b.grp[ix] = ix
		for _, c := range later {
			b.spawnChild(c, ix, t.Pid, t.Pid, false)
		}
	}
}

// spawnChild spawns c from proc ix, which is in session cur. A task whose
// session's leader was not dumped goes under a stand-in that recreates the
// session, spawns it and exits; the spawner, a child-subreaper meanwhile,
// adopts it.
func (b *treeBuilder) spawnChild(c *images.Task, ix int, cur, want uint32, own bool) {
	if own || want == cur {
		b.spawn(c, ix)
		return
	}
	key := [2]uint32{uint32(ix), want}
	h, ok := b.standin[key]
	if !ok {
		h = b.addProc(&Proc{TaskIx: -1, Parent: ix, Setsid: true, Why: fmt.Sprintf("for the leader of session %d", want)})
		b.standin[key] = h
		if _, ok := b.sessProc[want]; !ok {
			b.sessProc[want] = h
		}
		b.ops = append(b.ops, TreeOp{Kind: OpSubreaper, Proc: ix, Arg: 1})
		b.exits = append(b.exits, TreeOp{Kind: OpExit, Proc: h}, TreeOp{Kind: OpSubreaper, Proc: ix, Arg: 0})
	}
	b.spawn(c, h)
}

// groups adds the steps that put every task in its process group: leaders
// first, then members; a group whose leader was not dumped gets a stand-in
// leader spawned by its first member.
func (b *treeBuilder) groups() error {
	for _, t := range b.set.Tasks {
		if ix := b.procOf[t.Pid]; t.Pgid == t.Pid && b.grp[ix] != ix {
			b.ops = append(b.ops, TreeOp{Kind: OpSetpgid, Proc: ix, Arg: ix})
			b.grp[ix] = ix
		}
	}
	groupSid := map[uint32]uint32{}
	deadLeader := map[uint32]int{}
	for _, t := range b.set.Tasks {
		if prev, ok := groupSid[t.Pgid]; ok && prev != t.Sid {
			return fmt.Errorf("pstree.img: process group %d spans sessions %d and %d (task %d)", t.Pgid, prev, t.Sid, t.Pid)
		}
		groupSid[t.Pgid] = t.Sid
		if t.Pgid == t.Pid {
			continue
		}
		me := b.procOf[t.Pid]
		var leader int
		if l := b.set.TaskByPid[t.Pgid]; l != nil {
			if l.Sid != t.Sid {
				return fmt.Errorf("pstree.img: task %d is in process group %d of session %d, but its leader %d is in session %d", t.Pid, t.Pgid, t.Sid, l.Pid, l.Sid)
			}
			leader = b.procOf[l.Pid]
		} else if b.shellPgid != 0 && t.Pgid == b.shellPgid {
			leader = b.procOf[b.set.Tasks[0].Pid] // the root, in the caller's job
		} else if h, ok := b.sessProc[t.Pgid]; ok && t.Pgid == t.Sid {
			leader = h // the session's stand-in leads the session's group
		} else if h, ok := deadLeader[t.Pgid]; ok {
			leader = h
		} else {
			leader = b.addProc(&Proc{TaskIx: -1, Parent: me, NewGroup: true, Why: fmt.Sprintf("for the leader of process group %d", t.Pgid)})
			deadLeader[t.Pgid] = leader
			b.exits = append(b.exits, TreeOp{Kind: OpExit, Proc: leader})
		}
		if b.grp[me] != leader {
			b.ops = append(b.ops, TreeOp{Kind: OpSetpgid, Proc: me, Arg: leader})
			b.grp[me] = leader
		}
	}
	return nil
}
