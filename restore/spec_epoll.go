package restore

import (
	"fmt"
	"slices"
	"strconv"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/files/epoll"
	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
)

// epollPlan is what the stage graph needs of one planned epoll set.
type epollPlan struct {
	file    *images.File
	creator int // task index
	reg     int // task index of the task that registers the targets
	name    string
	targets []uint32 // distinct target file ids
}

// fileInode returns the inode a description's file had at dump time, for
// the types whose images record it.
func fileInode(f *images.File) (uint64, bool) {
	switch f.Type {
	case criupb.FdTypes_PIPE, criupb.FdTypes_FIFO:
		if f.Pipe != nil {
			return uint64(f.Pipe.ID), true
		}
	case criupb.FdTypes_UNIXSK:
		return uint64(f.Entry.GetUsk().GetIno()), true
	}
	return 0, false
}

// sameFile reports whether target could be the file a registration
// recorded with inode ino (0: not recorded).
func sameFile(target *images.File, ino uint64) bool {
	if ino == 0 {
		return true
	}
	have, ok := fileInode(target)
	return !ok || have == ino
}

// resolveTarget finds the file of registration i of epoll f. Its tfd is an
// fd number of table, the table of the task that dumped the epoll. When
// the number is missing there, or holds a file whose recorded inode is not
// the registration's, the target is looked for by inode among the table's
// files.
//
// byInode indexes the table's files by inode; resolveTarget builds it on
// first use, so that a set of many stale registrations costs one pass over
// the table.
func resolveTarget(f *images.File, table *images.FdTable, byInode *map[uint64][]*images.File, i int, t *criupb.EventpollTfdEntry) (*images.File, error) {
	if fd := table.Lookup(t.GetTfd()); fd != nil && sameFile(fd.File, t.GetInode()) {
		return fd.File, nil
	}
	field := "epfd.tfd[" + strconv.Itoa(i) + "]"
	if t.GetInode() == 0 {
		return nil, entryErr(f, field+".tfd", "target fd %d is not open in the task that dumped the epoll, and no inode is recorded to find the target by", t.GetTfd())
	}
	if *byInode == nil {
		*byInode = map[uint64][]*images.File{}
		for _, fd := range table.Fds {
			if ino, ok := fileInode(fd.File); ok && !slices.Contains((*byInode)[ino], fd.File) {
				(*byInode)[ino] = append((*byInode)[ino], fd.File)
			}
		}
	}
	found := (*byInode)[t.GetInode()]
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return nil, entryErr(f, field, "target fd %d (inode %d) is not open in the task that dumped the epoll, and no fd there refers to inode %d", t.GetTfd(), t.GetInode(), t.GetInode())
	}
	return nil, entryErr(f, field, "target fd %d does not refer to inode %d, and several files in the task that dumped the epoll do (%s, %s, ...): the target is ambiguous",
		t.GetTfd(), t.GetInode(), found[0].Name(), found[1].Name())
}

// epoll event bits that are flags of the registration, not events.
const epollFlagBits = unix.EPOLLONESHOT | unix.EPOLLET | unix.EPOLLWAKEUP | unix.EPOLLEXCLUSIVE

// planEpoll plans an epoll set: its creator makes it and publishes it at
// once. A second OpenSpec registers the targets once the set and all of
// them are present, in the task that dumped the set (the first holder in
// pstree order): the recorded tfd numbers are its fd numbers, so there the
// targets sit at the recorded numbers and nothing needs delivering. A
// target found by inode instead is delivered if the task lacks it.
func (pl *planner) planEpoll(f *images.File) error {
	p := pl.p
	hs := pl.holders(f)
	if len(hs) == 0 {
		pl.unsupported(f)
		return nil
	}
	e := f.Entry.GetEpfd()
	c := pl.creator(hs)
	name := fmt.Sprintf("epoll (file id %d)", f.ID)
	params := epoll.Params{File: f.ID, Flags: e.GetFlags(), Fown: fownFrom(e.GetFown())}
	data, err := params.MarshalBinary()
	if err := pl.add(c, files.OpenSpec{Type: epoll.Type, Files: []uint32{f.ID}, SendTo: [][]uint32{pl.others(hs, c)}, Data: data, Name: name}, err); err != nil {
		return err
	}
	if len(e.GetTfd()) == 0 {
		return nil
	}
	// tfd numbers are fd numbers of the task that dumped the epoll: the
	// first holder in pstree order.
	rt := hs[0]
	dumper := pl.set.Tasks[rt].Fds
	rp := epoll.RegParams{Epoll: f.ID, Regs: make([]epoll.Reg, 0, len(e.GetTfd()))}
	needs := []uint32{f.ID}
	ep := &epollPlan{file: f, creator: c, reg: rt, name: name}
	seen := make(map[uint32]bool, len(e.GetTfd()))
	var byInode map[uint64][]*images.File
	for i, t := range e.GetTfd() {
		target, err := resolveTarget(f, dumper, &byInode, i, t)
		if err != nil {
			return err
		}
		if target == f {
			return entryErr(f, "epfd.tfd["+strconv.Itoa(i)+"]", "the epoll set registers itself")
		}
		r := epoll.Reg{Target: target.ID, Tfd: t.GetTfd(), Events: t.GetEvents(), Data: t.GetData()}
		switch cfd := dumper.Lookup(r.Tfd); {
		case cfd == nil:
			r.Mode = epoll.ModeFree
			if int(r.Tfd) > dumper.MaxFd() {
				p.Warnings = append(p.Warnings, fmt.Sprintf("%s: target %s was registered as fd %d, above task %d's highest fd: if the restore helper's own fds sit there, it is registered through another number (logged)",
					name, target.Name(), r.Tfd, pl.set.Tasks[rt].Pid))
			}
		case cfd.File == target:
			r.Mode = epoll.ModeAt
		default:
			r.Mode = epoll.ModeOther
			p.Warnings = append(p.Warnings, fmt.Sprintf("%s: target %s was registered as fd %d, which holds %s in task %d: it is registered through another fd, and fdinfo shows that number",
				name, target.Name(), r.Tfd, cfd.File.Name(), pl.set.Tasks[rt].Pid))
		}
		if r.Events&epollFlagBits != 0 && r.Events&^uint32(epollFlagBits|unix.EPOLLERR|unix.EPOLLHUP) == 0 && r.Events&unix.EPOLLONESHOT != 0 {
			p.Warnings = append(p.Warnings, fmt.Sprintf("%s: the EPOLLONESHOT registration of %s (events %#x) had fired; it is restored waiting for EPOLLERR|EPOLLHUP, which the kernel adds to every registration",
				name, target.Name(), r.Events))
		}
		rp.Regs = append(rp.Regs, r)
		if !seen[target.ID] {
			seen[target.ID] = true
			ep.targets = append(ep.targets, target.ID)
			needs = append(needs, target.ID)
			pl.deliver(rt, target.ID)
		}
	}
	data, err = rp.MarshalBinary()
	regName := fmt.Sprintf("epoll registrations (file id %d, %d targets)", f.ID, len(rp.Regs))
	if err := pl.add(rt, files.OpenSpec{Type: epoll.RegType, Needs: needs, Data: data, Name: regName}, err); err != nil {
		return err
	}
	if len(pl.epolls) == 0 {
		p.edges = append(p.edges, pl.epollEdges)
	}
	pl.epolls = append(pl.epolls, ep)
	return nil
}

// epollEdges adds the registrations' edges: an epoll set is Restored (in
// the task that registers) once it is Created and each target is Created
// (for an epoll target that is all it needs; every other target is
// published by its opener only once it is usable), each of them Served
// in that task when another task creates it.
func (pl *planner) epollEdges(g *files.Graph) error {
	creators := make(map[uint32]int)
	for _, ep := range pl.epolls {
		for _, t := range ep.targets {
			creators[t] = -1
		}
	}
	for ti, tp := range pl.p.TaskPlans {
		for oi := range tp.Opens {
			for _, id := range tp.Opens[oi].Files {
				if _, ok := creators[id]; ok {
					creators[id] = ti
				}
			}
		}
	}
	for _, ep := range pl.epolls {
		cpid := int(pl.set.Tasks[ep.creator].Pid)
		rpid := int(pl.set.Tasks[ep.reg].Pid)
		kind := files.Kind("task " + strconv.FormatUint(uint64(rpid), 10) + " file")
		obj := files.ObjectID{Kind: "file", ID: uint64(ep.file.ID)}
		restored := g.Node(files.Object{ID: obj, Name: ep.name, Owner: rpid}, files.StageRestored)
		g.Need(restored, g.Node(files.Object{ID: obj, Name: ep.name, Owner: cpid}, files.StageCreated), "epoll registrations after the epoll set exists")
		if ep.reg != ep.creator {
			g.Need(restored, g.Node(files.Object{ID: files.ObjectID{Kind: kind, ID: uint64(ep.file.ID)}, Owner: rpid}, files.StageServed), "epoll registrations in the task that dumped the set")
		}
		for _, t := range ep.targets {
			tc := creators[t]
			if tc < 0 && pl.unsup[t] {
				continue // listed in Unsupported: the plan cannot run
			}
			if tc < 0 {
				return fmt.Errorf("plan %s: target file id %d is created by no task", ep.name, t)
			}
			tf := pl.set.Files[t]
			why := "epoll registration needs its target"
			if tf.Type == criupb.FdTypes_EVENTPOLL {
				why = "epoll registration needs the inner epoll set created (not its registrations)"
			}
			tpid := int(pl.set.Tasks[tc].Pid)
			g.Need(restored, g.Node(files.Object{ID: files.ObjectID{Kind: "file", ID: uint64(t)}, Name: tf.Name(), Owner: tpid}, files.StageCreated), why)
			if tc != ep.reg {
				g.Need(restored, g.Node(files.Object{ID: files.ObjectID{Kind: kind, ID: uint64(t)}, Owner: rpid}, files.StageServed), "epoll registration needs its target in the registering task")
			}
		}
	}
	return nil
}
