package restore

import (
	"cmp"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/files/tty"
	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
)

// ptyGroup is one pty of the images: its descriptions by side, and the
// tty-info entries of its sides.
type ptyGroup struct {
	index          uint32
	masters        []*images.File
	slaves         []*images.File
	master, slave  *images.TTY
	creator        int    // task index
	cttySlave      uint32 // slave description the leader sets it through
	several        bool   // the index names several ptys (several devpts instances)
	restoredMaster uint32 // file id whose Restored node stands for the pty
}

// isPtyMaster reports whether a tty-info's device is a pty master (ptmx,
// or a legacy Unix98 master major).
func isPtyMaster(info *criupb.TtyInfoEntry) bool {
	rdev := uint64(info.GetRdev())
	maj, min := unix.Major(rdev), unix.Minor(rdev)
	return (maj == 5 && min == 2) || (maj >= 128 && maj <= 135)
}

// termiosFrom converts a termios_entry. c_cc holds CRIU's raw copy of
// the C library's control-character array: four bytes per value, little
// endian.
func termiosFrom(t *criupb.TermiosEntry) *tty.Termios {
	if t == nil {
		return nil
	}
	out := &tty.Termios{Iflag: t.GetCIflag(), Oflag: t.GetCOflag(), Cflag: t.GetCCflag(), Lflag: t.GetCLflag(), Line: uint8(t.GetCLine())}
	cc := t.GetCCc()
	for i := range out.Cc {
		if i/4 < len(cc) {
			out.Cc[i] = uint8(cc[i/4] >> (8 * (i % 4)))
		}
	}
	return out
}

func sideFrom(t *images.TTY) tty.Side {
	if t == nil {
		return tty.Side{}
	}
	in := t.Info
	s := tty.Side{Present: true, Termios: termiosFrom(in.GetTermios()), Locked: termiosFrom(in.GetTermiosLocked()),
		Packet: in.GetPacketMode(), Lock: in.GetLocked(), Exclusive: in.GetExclusive(),
		HasOwner: in.Uid != nil, UID: in.GetUid(), GID: in.GetGid(), Data: t.Data}
	if w := in.GetWinsize(); w != nil {
		s.Winsize = &unix.Winsize{Row: uint16(w.GetWsRow()), Col: uint16(w.GetWsCol()), Xpixel: uint16(w.GetWsXpixel()), Ypixel: uint16(w.GetWsYpixel())}
	}
	return s
}

func ttyDesc(f *images.File) tty.Desc {
	te := f.Entry.GetTty()
	d := tty.Desc{File: f.ID, Flags: te.GetFlags(), Fown: fownFrom(te.GetFown())}
	if f.Path != nil {
		if name := f.Path.Entry.GetReg().GetName(); strings.HasPrefix(name, "/dev/pts/") {
			d.Mode = f.Path.Entry.GetReg().GetMode() & 0o7777
		}
	}
	return d
}

// holds reports whether task ti has an fd of f.
func (pl *planner) holds(ti int, f *images.File) bool {
	for _, fd := range f.Fds {
		for _, t := range fd.Table.Tasks {
			if pl.taskIx[t] == ti {
				return true
			}
		}
	}
	return false
}

// planTTYs plans every tty of the images at once, at the first TTY
// description: ptys (with their slaves), controlling terminals and
// /dev/tty descriptions depend on each other across descriptions.
func (pl *planner) planTTYs() error {
	if pl.ttyDone {
		return nil
	}
	pl.ttyDone = true
	p, set := pl.p, pl.set
	ptys := map[uint32]*ptyGroup{}
	var devTTY []*images.File
	maxID := uint32(0)
	for _, f := range set.FileOrder {
		maxID = max(maxID, f.ID)
		if f.Type != criupb.FdTypes_TTY {
			continue
		}
		info := f.TTY.Info
		switch info.GetType() {
		case criupb.TtyType_PTY:
			if info.GetPty() == nil {
				return fmt.Errorf("tty-info.img: tty id %d of %s is a pty without pty.index", info.GetId(), f.Name())
			}
			idx := info.GetPty().GetIndex()
			g := ptys[idx]
			if g == nil {
				g = &ptyGroup{index: idx}
				ptys[idx] = g
			}
			// Two entries of one side (or two master descriptions)
			// with one index: ptys of several devpts instances.
			if isPtyMaster(info) {
				g.masters = append(g.masters, f)
				g.several = g.several || (g.master != nil && g.master != f.TTY) || len(g.masters) > 1
				g.master = f.TTY
			} else {
				g.slaves = append(g.slaves, f)
				g.several = g.several || (g.slave != nil && g.slave != f.TTY)
				g.slave = f.TTY
			}
		case criupb.TtyType_CTTY:
			devTTY = append(devTTY, f)
		default:
			pl.unsupported(f)
		}
	}
	idxs := make([]uint32, 0, len(ptys))
	for i := range ptys {
		idxs = append(idxs, i)
	}
	slices.Sort(idxs)

	// Sessions whose controlling terminal is a pty of the images.
	type session struct {
		leader int
		pty    *ptyGroup
		pgrp   uint32
	}
	sessions := map[uint32]*session{}
	var sids []uint32
	nextID := maxID + 1
	var shellPty *ptyGroup   // the shell's terminal, with ShellJob
	var consolePty *ptyGroup // the console, with Console
	specs := map[*ptyGroup]*tty.PtyParams{}
	ids := map[*ptyGroup][]uint32{}
	for _, idx := range idxs {
		g := ptys[idx]
		if g.several {
			for _, f := range append(slices.Clone(g.masters), g.slaves...) {
				pl.unsupportedFds(f, fmt.Sprintf("pty index %d belongs to several ptys (of several devpts instances), which is not supported", idx))
			}
			continue
		}
		var all []int
		inFlight := false
		for _, f := range append(slices.Clone(g.masters), g.slaves...) {
			hs := pl.holders(f)
			if len(hs) == 0 {
				p.Unsupported = append(p.Unsupported, fmt.Sprintf("pty %d: %s exists only in flight (in a unix socket queue)", idx, f.Name()))
				inFlight = true
				continue
			}
			all = append(all, hs...)
		}
		if len(all) == 0 || inFlight {
			continue
		}
		params := &tty.PtyParams{Index: idx, Master: sideFrom(g.master), Slave: sideFrom(g.slave)}
		console := false
		switch {
		case len(g.masters) == 1:
			g.creator = pl.creator(pl.holders(g.masters[0]))
			g.restoredMaster = g.masters[0].ID
		case g.slave != nil && g.slave.Info.GetTermios() == nil:
			// The master was closed: the slave is hung up.
			params.HangUp = true
			g.creator = pl.creator(all)
		case len(g.masters) == 0 && pl.ttyInherited(g.slaves):
			// The caller's fds stand for this terminal (inherit.go).
			p.Warnings = append(p.Warnings, fmt.Sprintf("pty %d: the caller's fd stands in for this terminal; it is nobody's controlling terminal after the restore", idx))
			continue
		case pl.opts.Console != "" && !pl.opts.ShellJob && (consolePty == nil || consolePty == g):
			// The container's console: a fresh pty's slave, whose
			// master goes to the caller (console.go). The session
			// stays the tree's, its leader gets it back as its
			// controlling terminal.
			consolePty, console = g, true
			params.Reopen, params.Path = true, pl.opts.Console
			g.creator = pl.creator(all)
			p.Console = true
		case pl.opts.ShellJob && (shellPty == nil || shellPty == g):
			// The shell's terminal: the caller's terminal now.
			shellPty = g
			params.Reopen, params.Path = true, pl.opts.Terminal
			g.creator = pl.creator(all)
		default:
			for _, f := range g.slaves {
				pl.unsupportedFds(f, fmt.Sprintf("pty slave /dev/pts/%d whose master is not in the images (a terminal outside the dumped tree; --shell-job takes one such terminal for the caller's, --console-socket gives it a new console)", idx))
			}
			continue
		}
		var fids []uint32
		var routes [][]uint32
		for _, f := range g.masters {
			params.Masters = append(params.Masters, ttyDesc(f))
			fids = append(fids, f.ID)
			routes = append(routes, pl.others(pl.holders(f), g.creator))
		}
		for _, f := range g.slaves {
			hs := pl.holders(f)
			if len(hs) == 0 || pl.inherited(f.ID) != nil {
				continue
			}
			params.Slaves = append(params.Slaves, ttyDesc(f))
			fids = append(fids, f.ID)
			routes = append(routes, pl.others(hs, g.creator))
		}
		// The session this pty is the controlling terminal of.
		sid, pgrp := uint32(0), uint32(0)
		for _, side := range []*images.TTY{g.slave, g.master} {
			if side != nil && side.Info.GetSid() != 0 {
				sid, pgrp = side.Info.GetSid(), side.Info.GetPgrp()
				break
			}
		}
		if sid != 0 && !params.HangUp && (!params.Reopen || console) {
			leader := set.TaskByPid[sid]
			switch {
			case leader == nil || !leader.SessionLeader():
				p.Warnings = append(p.Warnings, fmt.Sprintf("pty %d is the controlling terminal of session %d, whose leader is not in the images: it is restored as nobody's controlling terminal", idx, sid))
			case sessions[sid] != nil:
				return fmt.Errorf("tty-info.img: session %d has two controlling terminals (ptys %d and %d)", sid, sessions[sid].pty.index, idx)
			default:
				li := pl.taskIx[leader]
				sessions[sid] = &session{leader: li, pty: g, pgrp: pgrp}
				sids = append(sids, sid)
				for _, f := range g.slaves {
					if pl.holds(li, f) {
						g.cttySlave = f.ID
						break
					}
				}
				if g.cttySlave == 0 {
					// The leader holds no slave: the pty's creator
					// makes one more slave description for it.
					g.cttySlave = nextID
					nextID++
					params.Slaves = append(params.Slaves, tty.Desc{File: g.cttySlave, Flags: unix.O_RDWR | files.OLargefile})
					fids = append(fids, g.cttySlave)
					routes = append(routes, nil)
					pl.deliver(li, g.cttySlave)
				}
			}
		}
		if !params.Reopen {
			if _, err := os.Lstat(fmt.Sprintf("/dev/pts/%d", idx)); err == nil {
				p.Warnings = append(p.Warnings, fmt.Sprintf("pty %d: /dev/pts/%d exists now: the restore needs that index free (a fresh devpts instance, mount -t devpts -o newinstance)", idx, idx))
			}
		}
		specs[g], ids[g] = params, fids
		kind := "pty"
		switch {
		case params.HangUp:
			kind = "hung-up pty"
		case console:
			kind = "the console " + params.Path + " for pty"
		case params.Reopen:
			kind = "the caller's terminal " + cmp.Or(params.Path, "(at restore)") + " for pty"
		}
		data, err := params.MarshalBinary()
		spec := files.OpenSpec{Type: tty.PtyType, Files: fids, SendTo: routes, Data: data,
			Name: fmt.Sprintf("/dev/pts/%d (%s, file ids %v)", idx, kind, fids)}
		if err := pl.add(g.creator, spec, err); err != nil {
			return err
		}
	}

	// /dev/tty descriptions go to the session leader that has the
	// terminal as its controlling tty.
	devBySid := map[uint32][]*images.File{}
	var shellDev []*images.File // /dev/tty of the caller's session (ShellJob)
	for _, f := range devTTY {
		if len(pl.holders(f)) == 0 {
			p.Unsupported = append(p.Unsupported, fmt.Sprintf("%s: /dev/tty exists only in flight (in a unix socket queue)", f.Name()))
			continue
		}
		sid := f.TTY.Info.GetSid()
		if sid == 0 {
			if hs := pl.holders(f); len(hs) > 0 {
				sid = set.Tasks[hs[0]].Sid
			}
		}
		if sessions[sid] == nil && pl.opts.ShellJob && sid == set.Tasks[0].Sid && set.Tasks[0].Sid != set.Tasks[0].Pid {
			shellDev = append(shellDev, f)
			continue
		}
		if sessions[sid] == nil {
			pl.unsupportedFds(f, fmt.Sprintf("/dev/tty of session %d, which has no controlling terminal in the images", sid))
			continue
		}
		devBySid[sid] = append(devBySid[sid], f)
	}

	// /dev/tty of the caller's session: every task in it has the
	// caller's terminal as its controlling tty, inherited from the
	// coordinator; one of the holders opens them.
	if len(shellDev) > 0 {
		var all []int
		for _, f := range shellDev {
			all = append(all, pl.holders(f)...)
		}
		c := pl.creator(all)
		params := tty.CttyParams{}
		var fids []uint32
		var routes [][]uint32
		for _, f := range shellDev {
			params.DevTTY = append(params.DevTTY, ttyDesc(f))
			fids = append(fids, f.ID)
			routes = append(routes, pl.others(pl.holders(f), c))
		}
		data, err := params.MarshalBinary()
		spec := files.OpenSpec{Type: tty.CttyType, Files: fids, SendTo: routes, Data: data, Name: "/dev/tty of the caller's session"}
		if err := pl.add(c, spec, err); err != nil {
			return err
		}
	}
	slices.Sort(sids)
	members := map[uint32][]*images.Task{}
	for _, t := range set.Tasks {
		if sessions[t.Sid] != nil && t.Sid != t.Pid {
			members[t.Sid] = append(members[t.Sid], t)
		}
	}
	for _, sid := range sids {
		s := sessions[sid]
		leader := set.Tasks[s.leader]
		if m := members[sid]; len(m) > 0 {
			p.Warnings = append(p.Warnings, fmt.Sprintf("session %d: only its leader gets pty %d back as its controlling terminal; tasks %s of the session have none in /proc/PID/stat and cannot open /dev/tty (a process gets a controlling terminal only by forking from one that has it)", sid, s.pty.index, pids(m)))
		}
		params := tty.CttyParams{Slave: s.pty.cttySlave, Index: s.pty.index, Pgrp: s.pgrp}
		if s.pgrp != 0 {
			if t := set.TaskByPid[s.pgrp]; t != nil && t.Pgid == s.pgrp {
				params.PgrpTask = t.Pid
			} else {
				for _, t := range set.Tasks {
					if t.Pgid == s.pgrp {
						params.PgrpTask = t.Pid
						break
					}
				}
			}
			if params.PgrpTask == 0 {
				p.Warnings = append(p.Warnings, fmt.Sprintf("pty %d: foreground group %d of session %d has no task in the images; the leader's group stays in the foreground", s.pty.index, s.pgrp, sid))
			} else if set.TaskByPid[params.PgrpTask].Sid != sid {
				return fmt.Errorf("tty-info.img: pty %d: foreground group %d is not in session %d", s.pty.index, s.pgrp, sid)
			}
		}
		// Needs: every tty the leader holds, and the slave to set the
		// terminal through.
		needs := []uint32{s.pty.cttySlave}
		var ttyFiles []*images.File
		for _, fd := range leader.Fds.Fds {
			if fd.File.Type == criupb.FdTypes_TTY && fd.File.TTY.Info.GetType() == criupb.TtyType_PTY {
				needs = append(needs, fd.File.ID)
				ttyFiles = append(ttyFiles, fd.File)
			}
		}
		slices.Sort(needs)
		needs = slices.Compact(needs)
		var fids []uint32
		var routes [][]uint32
		for _, f := range devBySid[sid] {
			params.DevTTY = append(params.DevTTY, ttyDesc(f))
			fids = append(fids, f.ID)
			routes = append(routes, pl.others(pl.holders(f), s.leader))
		}
		data, err := params.MarshalBinary()
		spec := files.OpenSpec{Type: tty.CttyType, Files: fids, SendTo: routes, Needs: needs, Data: data,
			Name: fmt.Sprintf("controlling tty of session %d (pty %d)", sid, s.pty.index)}
		if err := pl.add(s.leader, spec, err); err != nil {
			return err
		}
		pl.p.edges = append(pl.p.edges, pl.cttyEdges(sid, s.leader, s.pty, ttyFiles, devBySid[sid], ptys))
	}
	for _, idx := range idxs {
		g := ptys[idx]
		if specs[g] != nil && g.restoredMaster != 0 {
			pl.p.edges = append(pl.p.edges, pl.ptyEdges(g, ids[g]))
		}
	}
	return nil
}

// ptyEdges: every slave description of a pty is made after its master is
// restored.
func (pl *planner) ptyEdges(g *ptyGroup, fids []uint32) func(*files.Graph) error {
	owner := int(pl.set.Tasks[g.creator].Pid)
	return func(gr *files.Graph) error {
		m := gr.Node(files.Object{ID: files.ObjectID{Kind: "file", ID: uint64(g.restoredMaster)}, Name: fmt.Sprintf("pty %d master", g.index), Owner: owner}, files.StageRestored)
		for _, id := range fids {
			if id == g.restoredMaster {
				continue
			}
			s := gr.Node(files.Object{ID: files.ObjectID{Kind: "file", ID: uint64(id)}, Name: fmt.Sprintf("pty %d slave", g.index), Owner: owner}, files.StageCreated)
			gr.Need(s, m, "pty slave after its master is restored")
		}
		return nil
	}
}

// cttyEdges: the controlling terminal is set after the session exists and
// every tty its leader holds is restored; /dev/tty is opened after it.
func (pl *planner) cttyEdges(sid uint32, leader int, g *ptyGroup, held, dev []*images.File, ptys map[uint32]*ptyGroup) func(*files.Graph) error {
	set := pl.set
	lpid := int(set.Tasks[leader].Pid)
	return func(gr *files.Graph) error {
		ctty := gr.Node(files.Object{ID: files.ObjectID{Kind: "ctty of session", ID: uint64(sid)}, Name: fmt.Sprintf("controlling tty of session %d (pty %d)", sid, g.index), Owner: lpid}, files.StageRestored)
		sess := gr.Node(files.Object{ID: files.ObjectID{Kind: "session", ID: uint64(sid)}, Owner: lpid}, files.StageCreated)
		gr.Need(ctty, sess, "controlling tty after the session exists")
		seen := map[uint32]bool{}
		for _, f := range held {
			pg := ptys[f.TTY.Info.GetPty().GetIndex()]
			if pg == nil || seen[pg.index] {
				continue
			}
			seen[pg.index] = true
			owner := int(set.Tasks[pg.creator].Pid)
			id := pg.restoredMaster
			if id == 0 {
				id = f.ID
			}
			n := gr.Node(files.Object{ID: files.ObjectID{Kind: "file", ID: uint64(id)}, Owner: owner}, files.StageRestored)
			gr.Need(ctty, n, "controlling tty after every tty of its session leader is restored")
		}
		if !seen[g.index] && g.restoredMaster != 0 {
			n := gr.Node(files.Object{ID: files.ObjectID{Kind: "file", ID: uint64(g.restoredMaster)}, Owner: int(set.Tasks[g.creator].Pid)}, files.StageRestored)
			gr.Need(ctty, n, "controlling tty after its pty is restored")
		}
		for _, f := range dev {
			n := gr.Node(files.Object{ID: files.ObjectID{Kind: "file", ID: uint64(f.ID)}, Name: "/dev/tty " + f.Name(), Owner: lpid}, files.StageCreated)
			gr.Need(n, ctty, "/dev/tty after the controlling tty is set")
		}
		return nil
	}
}
