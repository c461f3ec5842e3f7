package files

import (
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"
	"time"
)

func obj(kind Kind, id uint64, owner int) Object {
	return Object{ID: ObjectID{Kind: kind, ID: id}, Owner: owner}
}

func named(kind Kind, id uint64, owner int, name string) Object {
	o := obj(kind, id, owner)
	o.Name = name
	return o
}

func mustCheck(t testing.TB, g *Graph) {
	t.Helper()
	if err := g.Check(); err != nil {
		t.Fatalf("Check: %v", err)
	}
}

// drain runs every node of tr in runnable order and returns that order.
func drain(t testing.TB, tr *Tracker) []NodeID {
	t.Helper()
	var order []NodeID
	for {
		n, ok := tr.Next()
		if !ok {
			return order
		}
		order = append(order, n)
		if err := tr.Done(n); err != nil {
			t.Fatalf("Done(%d): %v", n, err)
		}
	}
}

// simulate runs one tracker per task, delivering each completion only to
// the tasks listed by RemoteWaiters, until nothing progresses. It returns
// the trackers and the global order in which nodes were reached.
func simulate(t *testing.T, g *Graph) (map[int]*Tracker, []NodeID) {
	t.Helper()
	trs := make(map[int]*Tracker)
	for _, pid := range g.Tasks() {
		trs[pid] = g.Tracker(pid)
	}
	type msg struct {
		to int
		n  NodeID
	}
	var inbox []msg
	var order []NodeID
	for progress := true; progress; {
		progress = false
		for _, m := range inbox {
			if err := trs[m.to].Done(m.n); err != nil {
				t.Fatalf("remote Done: %v", err)
			}
		}
		inbox = inbox[:0]
		for _, pid := range g.Tasks() {
			tr := trs[pid]
			for n, ok := tr.Next(); ok; n, ok = tr.Next() {
				if g.Owner(n) != pid {
					t.Fatalf("task %d handed node %v of task %d", pid, g.Info(n), g.Owner(n))
				}
				if err := tr.Done(n); err != nil {
					t.Fatal(err)
				}
				order = append(order, n)
				progress = true
				for _, to := range g.RemoteWaiters(n) {
					inbox = append(inbox, msg{to, n})
				}
			}
		}
		if len(inbox) > 0 {
			progress = true
		}
	}
	return trs, order
}

func TestStageString(t *testing.T) {
	tests := []struct {
		s    Stage
		want string
	}{
		{StageCreated, "Created"},
		{StageServed, "Served"},
		{StageBound, "Bound"},
		{StageListening, "Listening"},
		{StageConnected, "Connected"},
		{StageRestored, "Restored"},
		{StageFlagsSet, "FlagsSet"},
		{0, "Stage(0)"},
		{42, "Stage(42)"},
	}
	for _, tc := range tests {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("Stage(%d).String() = %q, want %q", uint8(tc.s), got, tc.want)
		}
		if tc.s.Valid() != (tc.want[:5] != "Stage") {
			t.Errorf("Stage(%d).Valid() = %v", uint8(tc.s), tc.s.Valid())
		}
	}
}

func TestNodeIdempotent(t *testing.T) {
	g := NewGraph()
	a := g.Node(obj("pipe", 7, 10), StageCreated)
	b := g.Node(named("pipe", 7, 10, "pipe file id 7 (pipe:[1302207])"), StageCreated)
	c := g.Node(obj("pipe", 7, 10), StageRestored)
	d := g.Node(obj("fifo", 7, 10), StageCreated)
	if a != b {
		t.Fatalf("same pair gave %d and %d", a, b)
	}
	if a == c || a == d || c == d {
		t.Fatalf("distinct pairs share ids: %d %d %d", a, c, d)
	}
	if got, ok := g.Lookup(ObjectID{"pipe", 7}, StageRestored); !ok || got != c {
		t.Fatalf("Lookup = %d, %v", got, ok)
	}
	if _, ok := g.Lookup(ObjectID{"pipe", 8}, StageRestored); ok {
		t.Fatal("Lookup found an undeclared node")
	}
	mustCheck(t, g)
	want := "pipe file id 7 (pipe:[1302207]) Created in task 10"
	if got := g.Info(a).String(); got != want {
		t.Errorf("Info = %q, want %q", got, want)
	}
	if got := g.Info(d).String(); got != "fifo id 7 Created in task 10" {
		t.Errorf("Info of unnamed = %q", got)
	}
	if g.Len() != 3 {
		t.Errorf("Len = %d", g.Len())
	}
}

func TestChainsAndDiamonds(t *testing.T) {
	type edge struct{ waiter, dep int }
	tests := []struct {
		name  string
		nodes int
		edges []edge
		// waves[i] is the set of nodes runnable after all of waves[<i]
		// are done.
		waves [][]int
	}{
		{"single", 1, nil, [][]int{{0}}},
		{"independent", 3, nil, [][]int{{0, 1, 2}}},
		{"chain", 4, []edge{{1, 0}, {2, 1}, {3, 2}}, [][]int{{0}, {1}, {2}, {3}}},
		{"diamond", 4, []edge{{1, 0}, {2, 0}, {3, 1}, {3, 2}}, [][]int{{0}, {1, 2}, {3}}},
		{"repeated edge", 2, []edge{{1, 0}, {1, 0}}, [][]int{{0}, {1}}},
		{"fan-in", 4, []edge{{3, 0}, {3, 1}, {3, 2}}, [][]int{{0, 1, 2}, {3}}},
		{"two roots", 5, []edge{{2, 0}, {2, 1}, {3, 2}, {4, 0}}, [][]int{{0, 1}, {2, 4}, {3}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := NewGraph()
			ids := make([]NodeID, tc.nodes)
			for i := range ids {
				ids[i] = g.Node(obj("file", uint64(i), 1), StageCreated)
			}
			for _, e := range tc.edges {
				g.Need(ids[e.waiter], ids[e.dep], "test")
			}
			mustCheck(t, g)
			tr := g.Tracker(1)
			for i, wave := range tc.waves {
				got := tr.Ready()
				var want []NodeID
				for _, n := range wave {
					want = append(want, ids[n])
				}
				slices.Sort(got)
				if !slices.Equal(got, want) {
					t.Fatalf("wave %d: ready %v, want %v", i, got, want)
				}
				for _, n := range got {
					if !tr.Runnable(n) {
						t.Fatalf("node %d handed out but not runnable", n)
					}
					if err := tr.Done(n); err != nil {
						t.Fatal(err)
					}
				}
			}
			if r := tr.Ready(); r != nil {
				t.Fatalf("left over ready nodes %v", r)
			}
			if !tr.Finished() || tr.Stalled() != nil {
				t.Fatalf("not finished: %v", tr.Stalled())
			}
		})
	}
}

func TestChainHelper(t *testing.T) {
	g := NewGraph()
	sk := named("unix socket", 3, 5, "unix socket id 3")
	ids := g.Chain(sk, StageCreated, StageBound, StageListening, StageRestored, StageFlagsSet)
	if len(ids) != 5 || g.Edges() != 4 {
		t.Fatalf("Chain gave %d ids, %d edges", len(ids), g.Edges())
	}
	// Chaining again is idempotent on nodes.
	if again := g.Chain(sk, StageCreated, StageBound); again[0] != ids[0] || again[1] != ids[1] {
		t.Fatalf("Chain not idempotent: %v vs %v", again, ids)
	}
	mustCheck(t, g)
	if got := drain(t, g.Tracker(5)); !slices.Equal(got, ids) {
		t.Fatalf("order %v, want %v", got, ids)
	}
}

func TestCycles(t *testing.T) {
	type edge struct {
		waiter, dep int
		why         string
	}
	tests := []struct {
		name    string
		objs    []Object
		stages  []Stage
		edges   []edge
		onCycle []int // node indices that must be on the reported cycle
		offCyc  []int // node indices that must not
	}{
		{
			name: "two unix sockets",
			objs: []Object{
				named("unix socket", 3, 1, "unix socket id 3"),
				named("unix socket", 4, 2, "unix socket id 4"),
			},
			stages:  []Stage{StageConnected, StageListening},
			edges:   []edge{{0, 1, "connect to peer"}, {1, 0, "listen after peer connected"}},
			onCycle: []int{0, 1},
		},
		{
			name: "three ttys",
			objs: []Object{
				named("tty", 1, 1, "tty id 1 (/dev/pts/1)"),
				named("tty", 2, 1, "tty id 2 (/dev/pts/2)"),
				named("tty", 3, 2, "tty id 3 (ptmx)"),
			},
			stages: []Stage{StageRestored, StageRestored, StageCreated},
			edges: []edge{
				{0, 1, "rule a"}, {1, 2, "rule b"}, {2, 0, "rule c"},
			},
			onCycle: []int{0, 1, 2},
		},
		{
			name:    "self loop",
			objs:    []Object{named("epoll", 9, 1, "eventpoll id 9")},
			stages:  []Stage{StageRestored},
			edges:   []edge{{0, 0, "registers itself"}},
			onCycle: []int{0},
		},
		{
			name: "cycle behind a tail",
			objs: []Object{
				named("file", 1, 1, "tail one"),
				named("file", 2, 1, "tail two"),
				named("epoll", 3, 1, "eventpoll id 3"),
				named("epoll", 4, 1, "eventpoll id 4"),
				named("file", 5, 1, "fine"),
			},
			stages: []Stage{StageCreated, StageCreated, StageRestored, StageRestored, StageCreated},
			edges: []edge{
				{1, 0, "t"}, {0, 2, "t"}, {2, 3, "target restored"}, {3, 2, "target restored"},
				{4, 1, "x"},
			},
			onCycle: []int{2, 3},
			offCyc:  []int{0, 1, 4},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := NewGraph()
			ids := make([]NodeID, len(tc.objs))
			for i, o := range tc.objs {
				ids[i] = g.Node(o, tc.stages[i])
			}
			for _, e := range tc.edges {
				g.Need(ids[e.waiter], ids[e.dep], e.why)
			}
			err := g.Check()
			var ce *CycleError
			if !errors.As(err, &ce) {
				t.Fatalf("Check = %v, want a *CycleError", err)
			}
			if g.Check() != err {
				t.Error("second Check returned a different result")
			}
			msg := err.Error()
			t.Log(msg)
			if !strings.HasPrefix(msg, "dependency cycle: ") || !strings.Contains(msg, " -> back to ") {
				t.Errorf("bad message shape: %q", msg)
			}
			on := ce.Nodes()
			if len(on) != len(tc.onCycle) {
				t.Fatalf("cycle %v, want nodes %v", on, tc.onCycle)
			}
			for _, i := range tc.onCycle {
				if !slices.Contains(on, ids[i]) {
					t.Errorf("node %d not on cycle %v", i, on)
				}
				name := tc.objs[i].Name + " " + tc.stages[i].String()
				if !strings.Contains(msg, name) {
					t.Errorf("message lacks %q", name)
				}
			}
			for _, i := range tc.offCyc {
				if strings.Contains(msg, tc.objs[i].Name) {
					t.Errorf("message names %q, which is not on the cycle", tc.objs[i].Name)
				}
			}
			// Every step's dependency is the next step's node, through a
			// real edge with the reported reason.
			for i, s := range ce.Steps {
				next := ce.Steps[(i+1)%len(ce.Steps)].Node.ID
				found := false
				for _, e := range tc.edges {
					if ids[e.waiter] == s.Node.ID && ids[e.dep] == next && e.why == s.Why {
						found = true
					}
				}
				if !found {
					t.Errorf("step %d (%v needs %d, %q) is not an edge", i, s.Node, next, s.Why)
				}
				if !strings.Contains(msg, "("+s.Why+")") {
					t.Errorf("message lacks reason %q", s.Why)
				}
			}
			func() {
				defer func() {
					if recover() == nil {
						t.Error("Tracker after a failed Check did not panic")
					}
				}()
				g.Tracker(1)
			}()
		})
	}
}

func TestBuildErrors(t *testing.T) {
	tests := []struct {
		name  string
		build func(g *Graph)
		want  string
	}{
		{"owner conflict", func(g *Graph) {
			g.Node(named("pipe", 1, 10, "pipe file id 1"), StageCreated)
			g.Node(named("pipe", 1, 11, "pipe file id 1"), StageCreated)
		}, "declared for task 10 and for task 11"},
		{"invalid stage", func(g *Graph) {
			g.Node(named("pipe", 1, 10, "pipe file id 1"), 0)
		}, "invalid stage 0"},
		{"unknown node", func(g *Graph) {
			a := g.Node(obj("pipe", 1, 10), StageCreated)
			g.Need(a, 99, "bogus")
		}, "unknown node"},
		{"several", func(g *Graph) {
			a := g.Node(obj("pipe", 1, 10), StageCreated)
			g.Need(a, -1, "bogus")
			g.Need(-1, a, "bogus")
		}, "and 1 more"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := NewGraph()
			tc.build(g)
			err := g.Check()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check = %v, want error containing %q", err, tc.want)
			}
			var ce *CycleError
			if errors.As(err, &ce) {
				t.Fatal("build error reported as a cycle")
			}
		})
	}
}

func TestFrozenAfterCheck(t *testing.T) {
	g := NewGraph()
	a := g.Node(obj("pipe", 1, 1), StageCreated)
	mustCheck(t, g)
	for name, f := range map[string]func(){
		"Node":  func() { g.Node(obj("pipe", 2, 1), StageCreated) },
		"Need":  func() { g.Need(a, a, "x") },
		"Chain": func() { g.Chain(obj("pipe", 3, 1), StageCreated) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s after Check did not panic", name)
				}
			}()
			f()
		}()
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("Tracker before Check did not panic")
			}
		}()
		NewGraph().Tracker(1)
	}()
}

func TestDoneIdempotentAndOrder(t *testing.T) {
	g := NewGraph()
	m := g.Node(named("pipe", 7, 10, "pipe file id 7"), StageCreated)
	s := g.Node(named("fd", 1, 11, "fd 3 of task 11"), StageServed)
	f := g.Node(named("fd", 1, 11, "fd 3 of task 11"), StageFlagsSet)
	g.Need(s, m, "slave after master created")
	g.Need(f, s, "flags last")
	mustCheck(t, g)

	t10, t11 := g.Tracker(10), g.Tracker(11)
	if r := t11.Ready(); r != nil {
		t.Fatalf("task 11 runnable too early: %v", r)
	}
	// Marking a node done before its dependencies is a caller bug.
	err := t11.Done(s)
	if err == nil || !strings.Contains(err.Error(), "pipe file id 7 Created in task 10") {
		t.Fatalf("early Done = %v", err)
	}
	if t11.IsDone(s) || t11.Pending() != 2 {
		t.Fatal("failed Done changed state")
	}
	if err := t11.Done(NodeID(1000)); err == nil {
		t.Fatal("Done of an unknown node succeeded")
	}

	if n, ok := t10.Next(); !ok || n != m {
		t.Fatalf("task 10 Next = %d, %v", n, ok)
	}
	for i := 0; i < 2; i++ {
		if err := t10.Done(m); err != nil {
			t.Fatalf("Done #%d: %v", i, err)
		}
	}
	if !t10.Finished() {
		t.Fatal("task 10 not finished")
	}
	// The completion message arrives twice: the second is a no-op.
	for i := 0; i < 2; i++ {
		if err := t11.Done(m); err != nil {
			t.Fatalf("remote Done #%d: %v", i, err)
		}
	}
	if !t11.IsDone(m) {
		t.Fatal("remote completion not remembered")
	}
	if got := t11.Ready(); !slices.Equal(got, []NodeID{s}) {
		t.Fatalf("ready after remote done = %v", got)
	}
	if err := t11.Done(s); err != nil {
		t.Fatal(err)
	}
	if err := t11.Done(s); err != nil {
		t.Fatal(err)
	}
	if got := drain(t, t11); !slices.Equal(got, []NodeID{f}) {
		t.Fatalf("drain = %v", got)
	}
	if !t11.Finished() || t11.Pending() != 0 {
		t.Fatal("task 11 not finished")
	}
}

func TestDoneSkipsQueued(t *testing.T) {
	// A runnable node marked done before it was popped is not handed out.
	g := NewGraph()
	a := g.Node(obj("file", 1, 1), StageCreated)
	b := g.Node(obj("file", 2, 1), StageCreated)
	mustCheck(t, g)
	tr := g.Tracker(1)
	if err := tr.Done(a); err != nil {
		t.Fatal(err)
	}
	if got := tr.Ready(); !slices.Equal(got, []NodeID{b}) {
		t.Fatalf("Ready = %v", got)
	}
}

func TestRemoteWaiters(t *testing.T) {
	g := NewGraph()
	master := g.Node(named("pipe", 7, 10, "pipe file id 7"), StageCreated)
	var slaves []NodeID
	for i, pid := range []int{12, 11, 10, 12, 13, 11} {
		sl := g.Node(obj("fd", uint64(i), pid), StageServed)
		g.Need(sl, master, "slave after master created")
		slaves = append(slaves, sl)
	}
	lonely := g.Node(obj("file", 99, 10), StageCreated)
	local := g.Node(obj("file", 100, 10), StageRestored)
	g.Need(local, lonely, "local only")
	mustCheck(t, g)

	tests := []struct {
		n    NodeID
		want []int
	}{
		{master, []int{11, 12, 13}},
		{lonely, nil},
		{local, nil},
		{slaves[0], nil},
	}
	for _, tc := range tests {
		got := g.RemoteWaiters(tc.n)
		if !slices.Equal(got, tc.want) {
			t.Errorf("RemoteWaiters(%v) = %v, want %v", g.Info(tc.n), got, tc.want)
		}
	}
	// The result is a copy.
	rw := g.RemoteWaiters(master)
	rw[0] = -5
	if g.RemoteWaiters(master)[0] != 11 {
		t.Error("RemoteWaiters returned shared storage")
	}
	if got := g.Tasks(); !slices.Equal(got, []int{10, 11, 12, 13}) {
		t.Errorf("Tasks = %v", got)
	}
	// A task that owns nothing has an empty tracker that ignores messages.
	tr := g.Tracker(999)
	if !tr.Finished() || tr.Stalled() != nil || tr.Done(master) != nil || tr.Owns(master) {
		t.Error("empty tracker misbehaves")
	}
}

func TestStall(t *testing.T) {
	g := NewGraph()
	sk3 := named("unix socket", 3, 20, "unix socket id 3")
	sk4 := named("unix socket", 4, 21, "unix socket id 4")
	ep := named("eventpoll", 5, 20, "eventpoll id 5")
	c3 := g.Node(sk3, StageCreated)
	conn := g.Node(sk3, StageConnected)
	lst := g.Node(sk4, StageListening)
	epr := g.Node(ep, StageRestored)
	epc := g.Node(ep, StageCreated)
	g.Need(conn, c3, "Connected after Created")
	g.Need(conn, lst, "connect to peer")
	g.Need(epr, epc, "Restored after Created")
	g.Need(epr, conn, "epoll target restored")
	g.Need(epr, conn, "epoll target restored") // repeated: listed once
	mustCheck(t, g)

	tr := g.Tracker(20)
	got := drain(t, tr) // c3 and epc run; the rest waits for task 21
	if !slices.Equal(got, []NodeID{c3, epc}) {
		t.Fatalf("drained %v", got)
	}
	err := tr.Stalled()
	var se *StallError
	if !errors.As(err, &se) {
		t.Fatalf("Stalled = %v", err)
	}
	msg := err.Error()
	t.Log(msg)
	want := "task 20 stalled with 2 stage(s) not reached:\n" +
		"  unix socket id 3 Connected in task 20 waits for unix socket id 4 Listening in task 21 (connect to peer)\n" +
		"  eventpoll id 5 Restored in task 20 waits for unix socket id 3 Connected in task 20 (epoll target restored)"
	if msg != want {
		t.Fatalf("message\n%s\nwant\n%s", msg, want)
	}
	if se.Task != 20 || len(se.Pending) != 2 || se.Pending[0].Awaits[0].Node.Owner != 21 {
		t.Fatalf("bad StallError %+v", se)
	}

	// After the peer listens, the connect is runnable but suppose its
	// callback never finishes: it is listed as runnable.
	if err := tr.Done(lst); err != nil {
		t.Fatal(err)
	}
	if r := tr.Ready(); !slices.Equal(r, []NodeID{conn}) {
		t.Fatalf("Ready = %v", r)
	}
	msg = tr.Stalled().Error()
	if !strings.Contains(msg, "unix socket id 3 Connected in task 20: dependencies met") {
		t.Fatalf("runnable node not explained: %s", msg)
	}

	// The all-tasks tracker of the same graph reports across tasks.
	all := g.TrackerAll()
	if all.Task() != AllTasks {
		t.Fatal("TrackerAll task")
	}
	if err := all.Stalled(); !strings.HasPrefix(err.Error(), "restore stalled with 5 stage(s)") {
		t.Fatalf("all-tasks stall: %v", err)
	}
	if got := drain(t, all); len(got) != 5 || !all.Finished() {
		t.Fatalf("all-tasks drain %v", got)
	}
}

// TestRealRules builds a small restore with the engine's real rules and runs
// it with one tracker per task, delivering completions only where needed.
func TestRealRules(t *testing.T) {
	const leader, child = 100, 101
	g := NewGraph()

	// A pipe created by the leader (master of both ends), the read end
	// also open in the child.
	pipeR := named("pipe", 7, leader, "pipe file id 7 (pipe:[1302207])")
	pipeW := named("pipe", 8, leader, "pipe file id 8 (pipe:[1302207])")
	fleLeaderR := named("fd", 1, leader, "fd 3 of task 100")
	fleChildR := named("fd", 2, child, "fd 3 of task 101")
	fleLeaderW := named("fd", 3, leader, "fd 4 of task 100")
	pr := g.Chain(pipeR, StageCreated, StageRestored)
	pw := g.Chain(pipeW, StageCreated, StageRestored)
	g.Need(pw[0], pr[0], "both pipe ends come from one pipe()")
	for _, f := range []struct {
		fle  Object
		desc NodeID
	}{{fleLeaderR, pr[0]}, {fleChildR, pr[0]}, {fleLeaderW, pw[0]}} {
		ids := g.Chain(f.fle, StageServed, StageFlagsSet)
		g.Need(ids[0], f.desc, "fd served after its file is created")
		// Final flags last: after the description is fully restored.
		g.Need(ids[1], f.desc+1, "final flags after the file is restored")
	}

	// A pty pair: the slave (child) after its master (leader) is restored,
	// the child's controlling tty after every tty of the session leader.
	ptmx := named("tty", 20, leader, "tty id 20 (ptmx index 3)")
	pts := named("tty", 21, child, "tty id 21 (/dev/pts/3)")
	ctty := named("ctty", child, child, "controlling tty of task 101")
	m := g.Chain(ptmx, StageCreated, StageRestored)
	s := g.Chain(pts, StageCreated, StageRestored)
	g.Need(s[0], m[1], "pty slave after its master is restored")
	c := g.Node(ctty, StageRestored)
	g.Need(c, m[1], "ctty after every tty of the session leader")
	g.Need(c, s[1], "ctty after its tty is restored")

	// Unix stream pair: the child connects to the leader's listener, and
	// the leader's queue carries the pipe's write end (SCM_RIGHTS).
	lsk := named("unix socket", 30, leader, "unix socket id 30 (/run/x.sock)")
	csk := named("unix socket", 31, child, "unix socket id 31")
	l := g.Chain(lsk, StageCreated, StageBound, StageListening, StageRestored)
	cs := g.Chain(csk, StageCreated, StageConnected, StageRestored)
	g.Need(cs[1], l[2], "connect to peer")
	g.Need(l[3], pw[0], "queue refill after the fds it carries exist")

	// Epoll in the child watching the connected socket and a nested epoll.
	ep := named("eventpoll", 40, child, "eventpoll id 40")
	nested := named("eventpoll", 41, child, "eventpoll id 41")
	e := g.Chain(ep, StageCreated, StageRestored)
	n := g.Chain(nested, StageCreated, StageRestored)
	g.Need(e[1], cs[2], "epoll target restored")
	g.Need(e[1], n[0], "nested epoll target created")
	g.Need(n[1], e[0], "nested epoll target created")

	mustCheck(t, g)
	if got := g.RemoteWaiters(pr[0]); !slices.Equal(got, []int{child}) {
		t.Errorf("pipe master remote waiters = %v", got)
	}
	if got := g.RemoteWaiters(pw[0]); got != nil {
		t.Errorf("write end remote waiters = %v (nobody outside the leader needs it)", got)
	}

	trs, order := simulate(t, g)
	for pid, tr := range trs {
		if err := tr.Stalled(); err != nil {
			t.Errorf("task %d: %v", pid, err)
		}
	}
	if len(order) != g.Len() {
		t.Fatalf("ran %d of %d nodes", len(order), g.Len())
	}
	pos := make(map[NodeID]int)
	for i, n := range order {
		pos[n] = i
	}
	before := func(a, b NodeID) {
		t.Helper()
		if pos[a] >= pos[b] {
			t.Errorf("%v ran after %v", g.Info(a), g.Info(b))
		}
	}
	before(m[1], s[0])
	before(s[1], c)
	before(l[2], cs[1])
	before(pw[0], l[3])
	before(cs[2], e[1])
	before(n[0], e[1])
	before(e[0], n[1])
}

// TestStallAcrossTasks: a lost completion message leaves the waiter
// stalled, naming the remote dependency and its task.
func TestStallAcrossTasks(t *testing.T) {
	g := NewGraph()
	m := g.Node(named("pipe", 7, 1, "pipe file id 7"), StageCreated)
	sl := g.Node(named("fd", 9, 2, "fd 5 of task 2"), StageServed)
	g.Need(sl, m, "slave after master created")
	mustCheck(t, g)
	t1, t2 := g.Tracker(1), g.Tracker(2)
	drain(t, t1)
	drain(t, t2) // the message from task 1 was never delivered
	err := t2.Stalled()
	if err == nil || !strings.Contains(err.Error(),
		"fd 5 of task 2 Served in task 2 waits for pipe file id 7 Created in task 1 (slave after master created)") {
		t.Fatalf("Stalled = %v", err)
	}
	if t1.Stalled() != nil {
		t.Fatal("task 1 should be finished")
	}
}

func buildChain(n int) *Graph {
	g := NewGraph()
	g.Grow(n, n)
	prev := NodeID(-1)
	for i := 0; i < n; i++ {
		id := g.Node(Object{ID: ObjectID{Kind: "file", ID: uint64(i)}, Owner: 1}, StageCreated)
		if prev >= 0 {
			g.Need(id, prev, "chain")
		}
		prev = id
	}
	return g
}

func TestLargeChain(t *testing.T) {
	const n = 200_000
	start := time.Now()
	g := buildChain(n)
	mustCheck(t, g)
	tr := g.Tracker(1)
	count := 0
	for id, ok := tr.Next(); ok; id, ok = tr.Next() {
		if err := tr.Done(id); err != nil {
			t.Fatal(err)
		}
		count++
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("200k chain took %v", el)
	}
	if count != n || !tr.Finished() {
		t.Fatalf("ran %d of %d", count, n)
	}
}

func TestLargeCycle(t *testing.T) {
	const n = 200_000
	g := buildChain(n)
	// Close the chain into one big ring: no stack overflow, full cycle.
	g.Need(0, NodeID(n-1), "ring")
	start := time.Now()
	var ce *CycleError
	if err := g.Check(); !errors.As(err, &ce) {
		t.Fatalf("Check = %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("cycle search took %v", el)
	}
	if len(ce.Steps) != n || ce.Steps[0].Node.ID != 0 {
		t.Fatalf("cycle of %d steps starting at %d", len(ce.Steps), ce.Steps[0].Node.ID)
	}
}

// buildRandom makes a DAG of nv nodes and ne edges over ntasks tasks: every
// edge goes from a lower to a higher node id.
func buildRandom(nv, ne, ntasks int, seed int64) *Graph {
	r := rand.New(rand.NewSource(seed))
	g := NewGraph()
	g.Grow(nv, ne)
	for i := 0; i < nv; i++ {
		g.Node(Object{ID: ObjectID{Kind: "file", ID: uint64(i)}, Owner: 1 + i%ntasks}, Stage(1+i%7))
	}
	for i := 0; i < ne; i++ {
		a := r.Intn(nv - 1)
		b := a + 1 + r.Intn(min(nv-a-1, 1000))
		g.Need(NodeID(b), NodeID(a), "random")
	}
	return g
}

func TestLargeRandomLinear(t *testing.T) {
	const nv, ne = 200_000, 400_000
	start := time.Now()
	g := buildRandom(nv, ne, 1, 1)
	mustCheck(t, g)
	got := drain(t, g.Tracker(1))
	// Loose bound: the race detector slows this down several times.
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("200k nodes / 400k edges took %v", el)
	}
	if len(got) != nv {
		t.Fatalf("ran %d of %d", len(got), nv)
	}
}

func TestRandomMultiTask(t *testing.T) {
	g := buildRandom(5000, 15000, 7, 2)
	mustCheck(t, g)
	trs, order := simulate(t, g)
	if len(order) != g.Len() {
		for _, tr := range trs {
			t.Log(tr.Stalled())
		}
		t.Fatalf("ran %d of %d", len(order), g.Len())
	}
}

func BenchmarkGraph200k(b *testing.B) {
	const nv, ne = 200_000, 400_000
	r := rand.New(rand.NewSource(3))
	type pair struct{ w, d NodeID }
	pairs := make([]pair, ne)
	for i := range pairs {
		a := r.Intn(nv - 1)
		pairs[i] = pair{NodeID(a + 1 + r.Intn(min(nv-a-1, 1000))), NodeID(a)}
	}
	objs := make([]Object, nv)
	for i := range objs {
		objs[i] = Object{ID: ObjectID{Kind: "file", ID: uint64(i)}, Name: fmt.Sprint("file id ", i), Owner: 1}
	}
	b.ResetTimer()
	for b.Loop() {
		g := NewGraph()
		g.Grow(nv, ne)
		for i := range objs {
			g.Node(objs[i], StageCreated)
		}
		for _, p := range pairs {
			g.Need(p.w, p.d, "bench")
		}
		if err := g.Check(); err != nil {
			b.Fatal(err)
		}
		tr := g.Tracker(1)
		for n, ok := tr.Next(); ok; n, ok = tr.Next() {
			if err := tr.Done(n); err != nil {
				b.Fatal(err)
			}
		}
		if !tr.Finished() {
			b.Fatal("not finished")
		}
	}
}
