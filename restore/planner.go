package restore

import (
	"fmt"
	"slices"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
)

// planner holds the state NewPlan shares with the per-type planners
// (planFile and the plan<Type> functions in spec_*.go): who holds each
// description, who creates it, and the deliveries still to route.
type planner struct {
	p      *Plan
	set    *images.Set
	taskIx map[*images.Task]int

	arena      []int      // holder lists of single-holder files
	routeArena [][]uint32 // SendTo lists of pipes, carved from one array

	donePipes map[*images.Pipe]bool
	fifoData  map[*images.Pipe]bool

	// inflight maps the id of a file that no fd refers to (it exists only
	// in a unix socket queue) to the task that holds it while it refills
	// that queue. planInflight fills it.
	inflight map[uint32]int

	// inetPorts counts the inet sockets of each local address
	// (spec_inet.go).
	inetPorts map[string]*inetPort

	// deliveries are descriptions a task needs without holding them
	// itself (an epoll's targets, a queue's files in flight).
	deliveries []delivery

	// usk holds the unix sockets grouped into components (spec_unix.go).
	usk    *uskState
	epolls []*epollPlan // spec_epoll.go

	// unsup holds the ids of files listed as unsupported: a delivery of
	// one is not an error (the plan cannot run anyway).
	unsup map[uint32]bool

	ttyDone bool        // planTTYs ran (spec_tty.go)
	opts    PlanOptions // ShellJob, Terminal (spec_tty.go), ExtUnixSk (spec_unix.go), TCP (spec_inet.go)

	// inh maps the ids of descriptions the caller hands over to their fd
	// (inherit.go).
	inh map[uint32]*inhMatch
	// extUnixSeen holds the inodes of sockets with an outside peer
	// (extunix.go).
	extUnixSeen map[uint32]bool
	// pending: clients of connections not yet accepted (spec_inetpending.go).
	pending       []pendingConn
	pendingQueues map[uint32][]*images.File
}

// delivery asks that description file be present in task.
type delivery struct {
	task int
	file uint32
}

// holders returns the tasks holding f, in Set.Tasks order: those of the
// fd tables with an fd of it, or for a file that exists only in flight the
// task that refills the queue carrying it. The lists are carved from a
// shared arena (no map, no allocation per file: tens of thousands of
// files).
func (pl *planner) holders(f *images.File) []int {
	if len(f.Fds) == 1 && len(f.Fds[0].Table.Tasks) == 1 {
		if len(pl.arena) == cap(pl.arena) {
			pl.arena = make([]int, 0, 4096)
		}
		pl.arena = append(pl.arena, pl.taskIx[f.Fds[0].Table.Tasks[0]])
		return pl.arena[len(pl.arena)-1:]
	}
	if len(f.Fds) == 0 {
		if t, ok := pl.inflight[f.ID]; ok {
			return []int{t}
		}
		return nil
	}
	var hs []int
	for _, fd := range f.Fds {
		for _, t := range fd.Table.Tasks {
			hs = append(hs, pl.taskIx[t])
		}
	}
	slices.Sort(hs)
	return slices.Compact(hs)
}

// creator returns the holder with the lowest image pid, as CRIU chooses.
func (pl *planner) creator(hs []int) int {
	best := hs[0]
	for _, h := range hs[1:] {
		if pl.set.Tasks[h].Pid < pl.set.Tasks[best].Pid {
			best = h
		}
	}
	return best
}

// others returns hs without c, as transport addresses.
func (pl *planner) others(hs []int, c int) []uint32 {
	var out []uint32
	for _, h := range hs {
		if h != c {
			out = append(out, uint32(h))
		}
	}
	return out
}

// add gives spec to task c to create.
func (pl *planner) add(c int, spec files.OpenSpec, err error) error {
	if err != nil {
		return fmt.Errorf("plan %s: %w", spec.Name, err)
	}
	tp := pl.p.TaskPlans[c]
	tp.Opens = append(tp.Opens, spec)
	return nil
}

// deliver asks that description file be present in task (placed or held)
// before the task finishes; resolveDeliveries routes it there.
func (pl *planner) deliver(task int, file uint32) {
	pl.deliveries = append(pl.deliveries, delivery{task, file})
}

// planInflight finds the files that exist only in flight and the task
// that will hold each: the unix sockets are grouped into components (one
// task creates each, see spec_unix.go), and every file carried in a
// component's queues is held by the component's creator, recursively,
// since a socket in flight may carry files in its own queue. Files in
// flight of any type are then created by that task through the normal
// planner (holders returns it).
func (pl *planner) planInflight() error {
	st, err := pl.unixSockets()
	if err != nil || st == nil {
		return err
	}
	pl.usk = st
	return pl.planUnixInflight()
}

// planFile plans one description of files.img.
func (pl *planner) planFile(f *images.File) error {
	p := pl.p
	if m := pl.inherited(f.ID); m != nil {
		return pl.planInherit(f, m)
	}
	hs := pl.holders(f)
	switch f.Type {
	case criupb.FdTypes_REG:
		if len(hs) == 0 {
			return nil // a path entry of a FIFO or tty, or cwd/root
		}
		if f.Entry.GetReg().GetExt() {
			return pl.externalFile(f) // inherit.go
		}
		c := pl.creator(hs)
		spec, err := regSpec(f, pl.others(hs, c))
		return pl.add(c, spec, err)
	case criupb.FdTypes_PIPE:
		return pl.planPipe(f.Pipe)
	case criupb.FdTypes_UNIXSK:
		return pl.planUnix(f)
	case criupb.FdTypes_EVENTPOLL:
		return pl.planEpoll(f)
	case criupb.FdTypes_EVENTFD:
		return pl.planEventfd(f)
	case criupb.FdTypes_SIGNALFD:
		return pl.planSignalfd(f)
	case criupb.FdTypes_TIMERFD:
		return pl.planTimerfd(f)
	case criupb.FdTypes_TTY:
		return pl.planTTYs()
	case criupb.FdTypes_FIFO:
		if len(hs) == 0 {
			p.Unsupported = append(p.Unsupported, fmt.Sprintf("FIFO file id %d exists only in flight (in a unix socket queue)", f.ID))
			return nil
		}
		if pl.fifoData == nil {
			pl.fifoData = map[*images.Pipe]bool{}
		}
		c := pl.creator(hs)
		writeData := f.Pipe != nil && !pl.fifoData[f.Pipe] && f.Pipe.HasData
		if writeData {
			pl.fifoData[f.Pipe] = true
		}
		spec, err := fifoSpec(f, writeData, pl.others(hs, c))
		return pl.add(c, spec, err)
	case criupb.FdTypes_INETSK:
		return pl.planInet(f, hs)
	}
	pl.unsupported(f)
	return nil
}

// unsupported lists every fd of f as not restorable.
func (pl *planner) unsupported(f *images.File) {
	p := pl.p
	if pl.unsup == nil {
		pl.unsup = map[uint32]bool{}
	}
	pl.unsup[f.ID] = true
	if len(f.Fds) == 0 {
		p.Unsupported = append(p.Unsupported, fmt.Sprintf("%s: type %s is not supported yet (it exists only in flight)", f.Name(), f.Type))
	}
	pl.unsupportedFds(f, fmt.Sprintf("type %s is not supported yet", f.Type))
}

// unsupportedFds lists every fd of f as not restorable, for reason.
func (pl *planner) unsupportedFds(f *images.File, reason string) {
	for _, fd := range f.Fds {
		pl.p.Unsupported = append(pl.p.Unsupported, fdName(fd)+": "+f.Name()+": "+reason)
	}
}

// planPipe plans a pipe once, at the first of its ends in files.img.
func (pl *planner) planPipe(pp *images.Pipe) error {
	p := pl.p
	if pl.donePipes == nil {
		pl.donePipes = map[*images.Pipe]bool{}
	}
	if pl.donePipes[pp] {
		return nil
	}
	pl.donePipes[pp] = true
	var endsBuf [2]*images.File
	var allBuf [4]int
	var holdBuf [2][]int
	ends, all, endHolders := endsBuf[:0], allBuf[:0], holdBuf[:0]
	handed := 0
	for _, e := range pp.Ends {
		if pl.inherited(e.ID) != nil {
			handed++ // the caller's (inherit.go)
			continue
		}
		if eh := pl.holders(e); len(eh) > 0 {
			ends = append(ends, e)
			endHolders = append(endHolders, eh)
			all = append(all, eh...)
		}
	}
	if len(ends) == 0 && handed > 0 {
		return nil
	}
	if len(ends) == 0 {
		p.Unsupported = append(p.Unsupported, fmt.Sprintf("pipe:[%d] (file ids %v) exists only in flight (in a unix socket queue)", pp.ID, fileIDs(pp.Ends)))
		return nil
	}
	c := pl.creator(all)
	if len(pl.routeArena) < len(ends) {
		pl.routeArena = make([][]uint32, max(len(ends), 4096))
	}
	routes := pl.routeArena[:len(ends):len(ends)]
	pl.routeArena = pl.routeArena[len(ends):]
	for i := range ends {
		routes[i] = pl.others(endHolders[i], c)
	}
	if len(pp.Data) > 0 && !hasReadEnd(ends) {
		p.Warnings = append(p.Warnings, fmt.Sprintf("pipe:[%d] holds %d queued bytes but no task holds its read end", pp.ID, len(pp.Data)))
	}
	spec, err := pipeSpec(pp, ends, routes)
	return pl.add(c, spec, err)
}

// resolveDeliveries routes every delivered description to its task: the
// task is added to the description's SendTo in its creator's OpenSpec and
// the id to the task's Hold, unless the task already has it. Files that
// exist only in flight are held by their task as well.
func (pl *planner) resolveDeliveries() error {
	p := pl.p
	for id, t := range pl.inflight {
		if f := pl.set.Files[id]; f != nil && len(f.Fds) == 0 {
			pl.deliveries = append(pl.deliveries, delivery{t, id})
		}
	}
	if len(pl.deliveries) == 0 {
		return nil
	}
	type at struct {
		task, open, file int
	}
	published := map[uint32]at{}
	for ti, tp := range p.TaskPlans {
		for oi := range tp.Opens {
			for fi, id := range tp.Opens[oi].Files {
				published[id] = at{ti, oi, fi}
			}
		}
	}
	held := make([]map[uint32]bool, len(p.TaskPlans))
	has := func(t int, id uint32) bool {
		if held[t] == nil {
			held[t] = map[uint32]bool{}
			for _, fl := range p.TaskPlans[t].Fles {
				held[t][fl.File] = true
			}
			for _, h := range p.TaskPlans[t].Hold {
				held[t][h] = true
			}
		}
		return held[t][id]
	}
	slices.SortFunc(pl.deliveries, func(a, b delivery) int {
		if a.task != b.task {
			return a.task - b.task
		}
		return int(a.file) - int(b.file)
	})
	pl.deliveries = slices.Compact(pl.deliveries)
	for _, d := range pl.deliveries {
		src, ok := published[d.file]
		if !ok && pl.unsup[d.file] {
			continue // listed in Unsupported
		}
		if !ok {
			return fmt.Errorf("plan: task %d needs file id %d, which no task creates", pl.set.Tasks[d.task].Pid, d.file)
		}
		if has(d.task, d.file) {
			continue
		}
		tp := p.TaskPlans[d.task]
		tp.Hold = append(tp.Hold, d.file)
		held[d.task][d.file] = true
		if src.task != d.task && !slices.Contains(p.TaskPlans[src.task].Opens[src.open].SendTo[src.file], uint32(d.task)) {
			spec := &p.TaskPlans[src.task].Opens[src.open]
			// Copy before appending: SendTo lists may share an arena.
			spec.SendTo[src.file] = append(slices.Clip(spec.SendTo[src.file]), uint32(d.task))
		}
	}
	return nil
}
