package files

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Stage is a point in the restore of one object. Which stages an object
// goes through depends on its type; the graph does not order the stages of
// one object by itself (use [Graph.Chain] for that).
type Stage uint8

// The stages known to the engine. The zero Stage is invalid.
const (
	// StageCreated: the kernel object exists and its fd is placed in the
	// creating task (CRIU's FLE_OPEN). Other tasks may use the fd from now
	// on, even though type-specific set-up may still be running.
	StageCreated Stage = iota + 1
	// StageServed: the fd has been handed to the fd entry that needs it
	// (sent over SCM_RIGHTS or duplicated locally) and planted at its
	// final number.
	StageServed
	// StageBound: a socket has its address (bind done).
	StageBound
	// StageListening: a stream or seqpacket socket accepts connections.
	StageListening
	// StageConnected: a socket is connected to its peer.
	StageConnected
	// StageRestored: all type-specific state is back (queues refilled,
	// termios set, epoll registrations made, ...) — CRIU's FLE_RESTORED.
	StageRestored
	// StageFlagsSet: the final per-description and per-fd flags are
	// applied (O_NONBLOCK, socket options that must come last, ...).
	StageFlagsSet

	stageEnd // one past the last valid stage
)

var stageNames = [stageEnd]string{
	"Stage(0)",
	"Created",
	"Served",
	"Bound",
	"Listening",
	"Connected",
	"Restored",
	"FlagsSet",
}

// String returns the stage name, for example "Listening", or "Stage(N)"
// for a value outside the enum.
func (s Stage) String() string {
	if s > 0 && s < stageEnd {
		return stageNames[s]
	}
	return "Stage(" + strconv.Itoa(int(s)) + ")"
}

// Valid reports whether s is one of the defined stages.
func (s Stage) Valid() bool { return s > 0 && s < stageEnd }

// Kind is the type of an object in the stage graph, for example "pipe",
// "unix socket", "tty", "fd" or "task". Kinds are free-form so that every
// file type can introduce its own; they are only compared and printed.
type Kind string

// ObjectID identifies an object of the stage graph: its kind plus a
// number that is unique within the kind (a file id from files.img, a
// task pid, an fd-entry index, ...).
type ObjectID struct {
	Kind Kind
	ID   uint64
}

// String returns "<kind> id <n>", for example "pipe id 7".
func (o ObjectID) String() string {
	return string(o.Kind) + " id " + strconv.FormatUint(o.ID, 10)
}

// Object describes an object when its nodes are declared with
// [Graph.Node]: its identity, a human-readable name used in error
// messages, and the pid of the task that works on it.
type Object struct {
	// ID identifies the object. Two nodes with the same ID and stage are
	// the same node.
	ID ObjectID
	// Name is used in messages, for example
	// "pipe file id 7 (pipe:[1302207])". When empty, ID.String() is used.
	Name string
	// Owner is the pid of the task that reaches the object's stages, for
	// example the master task of a file description or the task of an fd
	// entry. Different stages of one object may have different owners,
	// but one (object, stage) node has exactly one.
	Owner int
}

// NodeID is the handle of a node (an object at a stage) in a [Graph].
// IDs are dense, start at 0 and follow declaration order.
type NodeID int32

// NodeInfo is the printable description of one node.
type NodeInfo struct {
	ID     NodeID   // the node
	Object ObjectID // its object
	Name   string   // the object's name; may be empty
	Stage  Stage    // its stage
	Owner  int      // pid of the task that reaches it
}

// String returns "<name> <stage> in task <owner>", for example
// "unix socket id 4 Listening in task 13".
func (n NodeInfo) String() string {
	name := n.Name
	if name == "" {
		name = n.Object.String()
	}
	return name + " " + n.Stage.String() + " in task " + strconv.Itoa(n.Owner)
}

type nodeKey struct {
	obj   ObjectID
	stage Stage
}

type node struct {
	obj   ObjectID
	name  string
	owner int
	stage Stage
}

type edge struct {
	waiter, dep NodeID
	why         string
}

// Graph is the stage graph of one restore. Nodes are (object, stage) pairs
// and an edge "waiter needs dependency" means the waiter's stage may only
// be worked on once the dependency's stage has been reached.
//
// A Graph is built by one goroutine with [Graph.Node], [Graph.Need] and
// [Graph.Chain], then frozen by [Graph.Check]. After Check the Graph is
// immutable: Node, Need and Chain panic, and all read methods may be used
// by any number of goroutines at once.
type Graph struct {
	nodes   []node
	index   map[nodeKey]NodeID
	edges   []edge
	err     error // first build error
	nerrs   int   // number of build errors
	checked bool
	result  error // result of Check

	// Adjacency, built by Check. Waiters of node d are
	// outW[outStart[d]:outStart[d+1]]. Dependencies of node w are
	// inDep[inStart[w]:inStart[w+1]], in ascending order, and the edge
	// that put each there is inEdge[...] (an index into edges).
	outStart []int32
	outW     []NodeID
	inStart  []int32
	inDep    []NodeID
	inEdge   []int32

	// Task bookkeeping, built by Check. nodeTask is a dense task index
	// per node, local the index of the node among the nodes of its owner.
	taskIdx  map[int]int32
	taskNode [][]NodeID // per dense task index, ascending
	nodeTask []int32
	local    []int32

	// Remote waiters: pids of the other tasks waiting on node n are
	// remTask[remStart[n]:remStart[n+1]], ascending.
	remStart []int32
	remTask  []int
}

// NewGraph returns an empty graph ready to be built.
func NewGraph() *Graph {
	return &Graph{index: make(map[nodeKey]NodeID)}
}

// Grow reserves room for about nodes more nodes and edges more edges, to
// avoid re-allocation while building large graphs. It is only a hint.
func (g *Graph) Grow(nodes, edges int) {
	g.mutable("Grow")
	if nodes > 0 {
		g.nodes = slices.Grow(g.nodes, nodes)
		if len(g.index) == 0 {
			g.index = make(map[nodeKey]NodeID, nodes)
		}
	}
	if edges > 0 {
		g.edges = slices.Grow(g.edges, edges)
	}
}

func (g *Graph) mutable(op string) {
	if g.checked {
		panic("files: Graph." + op + " called after Check")
	}
}

func (g *Graph) fail(err error) {
	if g.err == nil {
		g.err = err
	}
	g.nerrs++
}

// Node returns the node of obj at stage s, declaring it on first use.
// Calling Node again with the same obj.ID and s returns the same NodeID;
// obj.Name is taken from the first call that gives a non-empty one.
//
// Declaring the same node with a different owner, or an invalid stage, is
// recorded and reported by [Graph.Check]; Node still returns a usable ID so
// that building can go on. Node panics after Check.
func (g *Graph) Node(obj Object, s Stage) NodeID {
	g.mutable("Node")
	key := nodeKey{obj.ID, s}
	if id, ok := g.index[key]; ok {
		n := &g.nodes[id]
		if n.owner != obj.Owner {
			g.fail(fmt.Errorf("stage graph: %s declared for task %d and for task %d",
				g.info(id), n.owner, obj.Owner))
		}
		if n.name == "" {
			n.name = obj.Name
		}
		return id
	}
	if !s.Valid() {
		g.fail(fmt.Errorf("stage graph: %s declared with invalid stage %d",
			objName(obj.Name, obj.ID), uint8(s)))
	}
	if len(g.nodes) >= math.MaxInt32 {
		panic("files: stage graph has too many nodes")
	}
	id := NodeID(len(g.nodes))
	g.nodes = append(g.nodes, node{obj: obj.ID, name: obj.Name, owner: obj.Owner, stage: s})
	g.index[key] = id
	return id
}

// Need records that node waiter needs node dep: waiter is not runnable
// until dep has been reached. why says which rule asked for the edge, for
// example "connect to peer"; it appears in cycle and stall messages.
// Repeating an edge is harmless. An edge from a node to itself is a cycle
// and is reported by Check. Unknown node IDs are recorded and reported by
// Check. Need panics after Check.
func (g *Graph) Need(waiter, dep NodeID, why string) {
	g.mutable("Need")
	if !g.valid(waiter) || !g.valid(dep) {
		g.fail(fmt.Errorf("stage graph: edge %d needs %d (%s): unknown node", waiter, dep, why))
		return
	}
	if len(g.edges) >= math.MaxInt32 {
		panic("files: stage graph has too many edges")
	}
	g.edges = append(g.edges, edge{waiter: waiter, dep: dep, why: why})
}

// Chain declares the nodes of obj at the given stages, in that order, and
// makes each one need the one before it (why: "<stage> after <previous
// stage>"). It returns the node IDs, one per stage. Chain panics after
// Check.
func (g *Graph) Chain(obj Object, stages ...Stage) []NodeID {
	g.mutable("Chain")
	ids := make([]NodeID, len(stages))
	for i, s := range stages {
		ids[i] = g.Node(obj, s)
		if i > 0 {
			g.Need(ids[i], ids[i-1], s.String()+" after "+stages[i-1].String())
		}
	}
	return ids
}

func (g *Graph) valid(n NodeID) bool { return n >= 0 && int(n) < len(g.nodes) }

// Len returns the number of nodes.
func (g *Graph) Len() int { return len(g.nodes) }

// Edges returns the number of edges, repeats included.
func (g *Graph) Edges() int { return len(g.edges) }

// Lookup returns the node of object id at stage s, if it was declared.
func (g *Graph) Lookup(id ObjectID, s Stage) (NodeID, bool) {
	n, ok := g.index[nodeKey{id, s}]
	return n, ok
}

// Info returns the description of node n. It panics if n is not a node of
// g.
func (g *Graph) Info(n NodeID) NodeInfo {
	if !g.valid(n) {
		panic(fmt.Sprintf("files: stage graph has no node %d", n))
	}
	return g.info(n)
}

func (g *Graph) info(n NodeID) NodeInfo {
	nd := &g.nodes[n]
	return NodeInfo{ID: n, Object: nd.obj, Name: nd.name, Stage: nd.stage, Owner: nd.owner}
}

func objName(name string, id ObjectID) string {
	if name != "" {
		return name
	}
	return id.String()
}

// Owner returns the pid of the task that owns node n. It panics if n is
// not a node of g.
func (g *Graph) Owner(n NodeID) int { return g.nodes[n].owner }

// RemoteWaiters returns the pids of the tasks, other than n's owner, that
// own at least one node needing n: the tasks that must be told when n is
// reached. The result is sorted, has no repeats, and is a fresh slice; it
// is nil when no other task waits on n, and before a successful Check.
func (g *Graph) RemoteWaiters(n NodeID) []int {
	if g.remStart == nil || !g.valid(n) {
		return nil
	}
	lo, hi := g.remStart[n], g.remStart[n+1]
	if lo == hi {
		return nil
	}
	return slices.Clone(g.remTask[lo:hi])
}

// Tasks returns the pids of all tasks that own nodes, sorted. It is nil
// before a successful Check.
func (g *Graph) Tasks() []int {
	if g.result != nil || !g.checked {
		return nil
	}
	pids := make([]int, 0, len(g.taskIdx))
	for pid := range g.taskIdx {
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	return pids
}

// Check freezes the graph and verifies it: build errors (unknown nodes,
// invalid stages, conflicting owners) are returned first, then dependency
// cycles as a [*CycleError] describing one cycle. Check runs in
// O(nodes + edges) time without recursion. It must be called, and succeed,
// before [Graph.Tracker]; calling it again returns the same result.
func (g *Graph) Check() error {
	if g.checked {
		return g.result
	}
	g.checked = true
	g.result = g.check()
	if g.result != nil {
		// Keep no half-built run-time state around.
		g.remStart, g.remTask = nil, nil
	}
	return g.result
}

func (g *Graph) check() error {
	if g.err != nil {
		if g.nerrs > 1 {
			return fmt.Errorf("%w (and %d more stage graph errors)", g.err, g.nerrs-1)
		}
		return g.err
	}
	g.buildAdjacency()
	if err := g.findCycle(); err != nil {
		return err
	}
	g.buildTasks()
	return nil
}

// buildAdjacency builds the out (waiter) and in (dependency) lists in
// compressed form, with counting sorts only.
func (g *Graph) buildAdjacency() {
	nv, ne := len(g.nodes), len(g.edges)
	g.outStart = make([]int32, nv+1)
	g.inStart = make([]int32, nv+1)
	for i := range g.edges {
		e := &g.edges[i]
		g.outStart[e.dep+1]++
		g.inStart[e.waiter+1]++
	}
	for i := 0; i < nv; i++ {
		g.outStart[i+1] += g.outStart[i]
		g.inStart[i+1] += g.inStart[i]
	}
	// Edges grouped by dependency, in declaration order within a group.
	outEdge := make([]int32, ne)
	pos := make([]int32, nv)
	copy(pos, g.outStart[:nv])
	for i := range g.edges {
		d := g.edges[i].dep
		outEdge[pos[d]] = int32(i)
		pos[d]++
	}
	// Walking the groups by ascending dependency fills the in lists in
	// ascending dependency order.
	g.outW = make([]NodeID, ne)
	g.inDep = make([]NodeID, ne)
	g.inEdge = make([]int32, ne)
	copy(pos, g.inStart[:nv])
	for d := 0; d < nv; d++ {
		for k := g.outStart[d]; k < g.outStart[d+1]; k++ {
			ei := outEdge[k]
			w := g.edges[ei].waiter
			g.outW[k] = w
			p := pos[w]
			g.inDep[p] = NodeID(d)
			g.inEdge[p] = ei
			pos[w]++
		}
	}
}

// findCycle runs Kahn's algorithm. If some nodes are never freed, every
// one of them still has an unfreed dependency, so following such
// dependencies from any of them must come back to a node already seen:
// that loop is reported.
func (g *Graph) findCycle() error {
	nv := len(g.nodes)
	left := make([]int32, nv) // unmet dependencies
	queue := make([]NodeID, 0, nv)
	for i := 0; i < nv; i++ {
		left[i] = g.inStart[i+1] - g.inStart[i]
		if left[i] == 0 {
			queue = append(queue, NodeID(i))
		}
	}
	for h := 0; h < len(queue); h++ {
		d := queue[h]
		for _, w := range g.outW[g.outStart[d]:g.outStart[d+1]] {
			left[w]--
			if left[w] == 0 {
				queue = append(queue, w)
			}
		}
	}
	if len(queue) == nv {
		return nil
	}
	start := NodeID(-1)
	for i := 0; i < nv; i++ {
		if left[i] > 0 {
			start = NodeID(i)
			break
		}
	}
	// seen[n] is 1 + the position of n on the walk, 0 if not visited.
	seen := make([]int32, nv)
	var path []NodeID
	var whys []string
	cur := start
	for seen[cur] == 0 {
		path = append(path, cur)
		seen[cur] = int32(len(path))
		next, why := NodeID(-1), ""
		for k := g.inStart[cur]; k < g.inStart[cur+1]; k++ {
			if d := g.inDep[k]; left[d] > 0 {
				next, why = d, g.edges[g.inEdge[k]].why
				break
			}
		}
		if next < 0 { // cannot happen: an unfreed node has an unfreed dependency
			panic("files: stage graph cycle search lost its way")
		}
		whys = append(whys, why)
		cur = next
	}
	first := int(seen[cur]) - 1
	path, whys = path[first:], whys[first:]
	// Start the report at the earliest declared node, for stable output.
	low := 0
	for i, n := range path {
		if n < path[low] {
			low = i
		}
	}
	steps := make([]CycleStep, len(path))
	for i := range path {
		j := (low + i) % len(path)
		steps[i] = CycleStep{Node: g.info(path[j]), Why: whys[j]}
	}
	return &CycleError{Steps: steps}
}

func (g *Graph) buildTasks() {
	nv := len(g.nodes)
	g.taskIdx = make(map[int]int32)
	g.nodeTask = make([]int32, nv)
	g.local = make([]int32, nv)
	last, lastIdx := 0, int32(-1)
	for i := range g.nodes {
		pid := g.nodes[i].owner
		ti := lastIdx
		if ti < 0 || pid != last {
			var ok bool
			ti, ok = g.taskIdx[pid]
			if !ok {
				ti = int32(len(g.taskNode))
				g.taskIdx[pid] = ti
				g.taskNode = append(g.taskNode, nil)
			}
			last, lastIdx = pid, ti
		}
		g.nodeTask[i] = ti
		g.local[i] = int32(len(g.taskNode[ti]))
		g.taskNode[ti] = append(g.taskNode[ti], NodeID(i))
	}
	// Remote waiters, deduplicated with a per-task stamp.
	stamp := make([]int32, len(g.taskNode)) // 1 + last node stamped
	g.remStart = make([]int32, nv+1)
	for d := 0; d < nv; d++ {
		mine := g.nodeTask[d]
		from := len(g.remTask)
		for _, w := range g.outW[g.outStart[d]:g.outStart[d+1]] {
			tw := g.nodeTask[w]
			if tw != mine && stamp[tw] != int32(d)+1 {
				stamp[tw] = int32(d) + 1
				g.remTask = append(g.remTask, g.nodes[w].owner)
			}
		}
		slices.Sort(g.remTask[from:])
		g.remStart[d+1] = int32(len(g.remTask))
	}
}

// CycleStep is one edge of a dependency cycle: Node needs the Node of the
// next step (the last step's dependency is the first step's Node), and Why
// is the reason given for that edge.
type CycleStep struct {
	Node NodeInfo
	Why  string
}

// CycleError is returned by [Graph.Check] when the dependencies form a
// cycle. Steps lists the nodes of one cycle in order, starting with the
// earliest declared one. Use errors.As to get at it.
type CycleError struct {
	Steps []CycleStep
}

// Nodes returns the IDs of the nodes on the cycle, in order.
func (e *CycleError) Nodes() []NodeID {
	ids := make([]NodeID, len(e.Steps))
	for i, s := range e.Steps {
		ids[i] = s.Node.ID
	}
	return ids
}

// Error names every node of the cycle and the reason of every edge, for
// example "dependency cycle: unix socket id 3 Connected in task 1 needs
// unix socket id 4 Listening in task 2 (connect to peer) -> unix socket
// id 4 Listening in task 2 needs ... -> back to unix socket id 3 Connected
// in task 1".
func (e *CycleError) Error() string {
	if len(e.Steps) == 0 {
		return "dependency cycle"
	}
	var b strings.Builder
	b.WriteString("dependency cycle: ")
	for i, s := range e.Steps {
		next := e.Steps[(i+1)%len(e.Steps)].Node
		if i > 0 {
			b.WriteString(" -> ")
		}
		b.WriteString(s.Node.String())
		b.WriteString(" needs ")
		b.WriteString(next.String())
		b.WriteString(" (")
		b.WriteString(s.Why)
		b.WriteString(")")
	}
	b.WriteString(" -> back to ")
	b.WriteString(e.Steps[0].Node.String())
	return b.String()
}

// AllTasks is the task of a tracker made by [Graph.TrackerAll].
const AllTasks = -1

const (
	stBlocked  uint8 = iota // some dependency not reached
	stRunnable              // all dependencies reached, node not reached
	stDone                  // node reached
)

// Tracker follows the progress of the nodes owned by one task at run time.
// It keeps, per node, a counter of unmet dependencies; [Tracker.Done]
// lowers the counters of the node's waiters and queues those that reach
// zero, in O(number of waiters). Nodes whose dependencies are all met are
// handed out by [Tracker.Next] or [Tracker.Ready].
//
// A Tracker is not safe for concurrent use: it belongs to the one goroutine
// that runs the task's engine loop. Several trackers may share a Graph.
type Tracker struct {
	g     *Graph
	task  int
	all   bool
	ti    int32    // dense task index, -1 if the task owns no node
	nodes []NodeID // local index -> node; nil for an all-tasks tracker
	wait  []int32  // unmet dependencies, per local index
	state []uint8  // per local index

	// Pending (not done) local nodes as a doubly linked list over local
	// indices, kept in ascending order; index len(wait) is the sentinel.
	next, prev []int32
	npending   int

	queue []NodeID
	head  int

	remoteDone map[NodeID]struct{}
}

// Tracker returns a new tracker for the nodes owned by task pid (which may
// own none: such a tracker has nothing to do). Nodes with no dependency are
// runnable at once. Tracker panics unless [Graph.Check] succeeded.
func (g *Graph) Tracker(pid int) *Tracker {
	g.mustBeChecked()
	t := &Tracker{g: g, task: pid, ti: -1}
	if ti, ok := g.taskIdx[pid]; ok {
		t.ti = ti
		t.nodes = g.taskNode[ti]
	}
	t.init(len(t.nodes))
	return t
}

// TrackerAll returns a tracker that owns every node of the graph, whatever
// its owner: useful to simulate a whole restore in one place, and in
// tests. Its Task is [AllTasks]. TrackerAll panics unless [Graph.Check]
// succeeded.
func (g *Graph) TrackerAll() *Tracker {
	g.mustBeChecked()
	t := &Tracker{g: g, task: AllTasks, all: true, ti: -1}
	t.init(len(g.nodes))
	return t
}

func (g *Graph) mustBeChecked() {
	if !g.checked || g.result != nil {
		panic("files: stage graph used before a successful Check")
	}
}

func (t *Tracker) init(n int) {
	g := t.g
	t.wait = make([]int32, n)
	t.state = make([]uint8, n)
	t.next = make([]int32, n+1)
	t.prev = make([]int32, n+1)
	for i := 0; i <= n; i++ {
		t.next[i] = int32(i+1) % int32(n+1)
		t.prev[i] = int32(i+n) % int32(n+1)
	}
	t.npending = n
	for li := 0; li < n; li++ {
		id := NodeID(li)
		if !t.all {
			id = t.nodes[li]
		}
		t.wait[li] = g.inStart[id+1] - g.inStart[id]
		if t.wait[li] == 0 {
			t.state[li] = stRunnable
			t.queue = append(t.queue, id)
		}
	}
}

// Task returns the pid the tracker works for, or [AllTasks].
func (t *Tracker) Task() int { return t.task }

// localIndex returns the local index of n if the tracker owns it.
func (t *Tracker) localIndex(n NodeID) (int32, bool) {
	if t.all {
		return int32(n), true
	}
	if t.g.nodeTask[n] == t.ti {
		return t.g.local[n], true
	}
	return -1, false
}

// Owns reports whether node n belongs to the tracker's task.
func (t *Tracker) Owns(n NodeID) bool {
	if !t.g.valid(n) {
		return false
	}
	_, ok := t.localIndex(n)
	return ok
}

// Next pops one node that has become runnable (all its dependencies met)
// and has not been marked done, in the order nodes became runnable. ok is
// false when there is none right now.
func (t *Tracker) Next() (n NodeID, ok bool) {
	for t.head < len(t.queue) {
		n = t.queue[t.head]
		t.head++
		if li, _ := t.localIndex(n); t.state[li] != stDone {
			return n, true
		}
	}
	t.queue, t.head = t.queue[:0], 0
	return -1, false
}

// Ready pops every node that has become runnable since the last Next or
// Ready call and has not been marked done. The slice is fresh; it is nil
// when there is none.
func (t *Tracker) Ready() []NodeID {
	var out []NodeID
	for t.head < len(t.queue) {
		n := t.queue[t.head]
		t.head++
		if li, _ := t.localIndex(n); t.state[li] != stDone {
			out = append(out, n)
		}
	}
	t.queue, t.head = t.queue[:0], 0
	return out
}

// Runnable reports whether node n (owned by this tracker) has all its
// dependencies met and is not done yet.
func (t *Tracker) Runnable(n NodeID) bool {
	if !t.g.valid(n) {
		return false
	}
	li, ok := t.localIndex(n)
	return ok && t.state[li] == stRunnable
}

// IsDone reports whether the tracker knows node n to be reached: a local
// node marked done, or a remote node it was told about.
func (t *Tracker) IsDone(n NodeID) bool {
	if !t.g.valid(n) {
		return false
	}
	if li, ok := t.localIndex(n); ok {
		return t.state[li] == stDone
	}
	_, ok := t.remoteDone[n]
	return ok
}

// Pending returns the number of the tracker's own nodes not marked done.
func (t *Tracker) Pending() int { return t.npending }

// Finished reports whether every node of the tracker's task is done.
func (t *Tracker) Finished() bool { return t.npending == 0 }

// Done records that node n has reached its stage, and queues the
// tracker's nodes that thereby got their last dependency met (see
// [Tracker.Next]). It costs O(number of waiters of n).
//
// n may be a node of this task or of another task: in the latter case
// this is how the tracker learns about a completion message, and only
// counters of local waiters change. Done is idempotent: marking a node
// done again (for example a repeated completion message) is a no-op and
// returns nil.
//
// An error is returned, and nothing changes, if n is not a node of the
// graph or if n is a local node whose dependencies are not all met yet:
// that is a bug in the caller, which must only work on runnable nodes.
func (t *Tracker) Done(n NodeID) error {
	g := t.g
	if !g.valid(n) {
		return fmt.Errorf("stage graph: Done(%d): no such node", n)
	}
	if li, ok := t.localIndex(n); ok {
		switch t.state[li] {
		case stDone:
			return nil
		case stBlocked:
			return fmt.Errorf("stage graph: %s marked done while it still waits for %s",
				g.info(n), joinAwaits(t.awaits(n, nil)))
		}
		t.state[li] = stDone
		p, x := t.prev[li], t.next[li]
		t.next[p], t.prev[x] = x, p
		t.npending--
	} else {
		if _, dup := t.remoteDone[n]; dup {
			return nil
		}
		if t.remoteDone == nil {
			t.remoteDone = make(map[NodeID]struct{})
		}
		t.remoteDone[n] = struct{}{}
	}
	for _, w := range g.outW[g.outStart[n]:g.outStart[n+1]] {
		wi, ok := t.localIndex(w)
		if !ok {
			continue
		}
		t.wait[wi]--
		if t.wait[wi] == 0 {
			t.state[wi] = stRunnable
			t.queue = append(t.queue, w)
		}
	}
	return nil
}

// Await is a dependency a pending node still waits for.
type Await struct {
	Node NodeInfo
	Why  string // reason given for the edge
}

// StalledNode is a node not yet done, with the dependencies it still
// waits for. Awaits is empty when all dependencies are met and the node's
// own work has not finished.
type StalledNode struct {
	Node   NodeInfo
	Awaits []Await
}

// StallError describes the nodes of a task that are not done, as returned
// by [Tracker.Stalled]. Pending is in declaration order of the nodes, and
// each node's Awaits in declaration order of the dependencies, so the
// output is deterministic.
type StallError struct {
	Task    int // pid, or AllTasks
	Pending []StalledNode
}

// Error lists, one per line, every pending node and what it waits for.
func (e *StallError) Error() string {
	var b strings.Builder
	if e.Task == AllTasks {
		b.WriteString("restore stalled")
	} else {
		b.WriteString("task ")
		b.WriteString(strconv.Itoa(e.Task))
		b.WriteString(" stalled")
	}
	b.WriteString(" with ")
	b.WriteString(strconv.Itoa(len(e.Pending)))
	b.WriteString(" stage(s) not reached:")
	for _, p := range e.Pending {
		b.WriteString("\n  ")
		b.WriteString(p.Node.String())
		if len(p.Awaits) == 0 {
			b.WriteString(": dependencies met, its own work has not finished")
			continue
		}
		b.WriteString(" waits for ")
		b.WriteString(joinAwaits(p.Awaits))
	}
	return b.String()
}

func joinAwaits(as []Await) string {
	var b strings.Builder
	for i, a := range as {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(a.Node.String())
		b.WriteString(" (")
		b.WriteString(a.Why)
		b.WriteString(")")
	}
	return b.String()
}

// awaits appends to dst the dependencies of n not known to be done.
func (t *Tracker) awaits(n NodeID, dst []Await) []Await {
	g := t.g
	prev := NodeID(-1)
	for k := g.inStart[n]; k < g.inStart[n+1]; k++ {
		d := g.inDep[k]
		if d == prev { // repeated edge: list the dependency once
			continue
		}
		prev = d
		if !t.IsDone(d) {
			dst = append(dst, Await{Node: g.info(d), Why: g.edges[g.inEdge[k]].why})
		}
	}
	return dst
}

// Stalled returns nil if every node of the task is done, and otherwise a
// [*StallError] listing every pending node and, for each, the
// dependencies it still waits for (with their owner tasks). The tracker
// does not decide that the task is stuck — the engine does, when nothing
// progressed before its deadline — it only explains the state. It costs
// O(pending nodes + their edges).
func (t *Tracker) Stalled() error {
	if t.npending == 0 {
		return nil
	}
	e := &StallError{Task: t.task, Pending: make([]StalledNode, 0, t.npending)}
	end := int32(len(t.wait))
	for li := t.next[end]; li != end; li = t.next[li] {
		n := NodeID(li)
		if !t.all {
			n = t.nodes[li]
		}
		e.Pending = append(e.Pending, StalledNode{Node: t.g.info(n), Awaits: t.awaits(n, nil)})
	}
	return e
}

// Dep is one dependency of a node and the rule that asked for it.
type Dep struct {
	Node NodeID
	Why  string
}

// Deps returns the dependencies of node n in ascending order. The graph
// must have been checked successfully.
func (g *Graph) Deps(n NodeID) []Dep {
	g.mustBeChecked()
	var out []Dep
	for k := g.inStart[n]; k < g.inStart[n+1]; k++ {
		out = append(out, Dep{Node: g.inDep[k], Why: g.edges[g.inEdge[k]].why})
	}
	return out
}
