package show

import (
	"fmt"
	"sort"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
)

// MaxShares bounds how many other fds [Summarize] lists per fd; the rest
// are only counted (FdSummary.SharesOmitted). It keeps the summary linear
// in the number of fds even when thousands of fds share one description.
const MaxShares = 16

// Summary is a human-oriented view of an image directory: the process tree
// in depth-first order, and each fd table with its fds.
type Summary struct {
	Dir    string         `json:"dir"`
	Arch   string         `json:"arch,omitempty"` // from the root's core image
	Tasks  []*TaskSummary `json:"tasks"`
	Counts Counts         `json:"counts"`
}

// Counts are totals over the directory.
type Counts struct {
	Tasks    int `json:"tasks"`
	FdTables int `json:"fd_tables"`
	Fds      int `json:"fds"`   // fd entries over all distinct tables
	Files    int `json:"files"` // open file descriptions (files.img entries)
}

// TaskSummary is one task of the tree.
type TaskSummary struct {
	Pid           uint32 `json:"pid"`
	PPid          uint32 `json:"ppid"`
	Pgid          uint32 `json:"pgid"`
	Sid           uint32 `json:"sid"`
	Comm          string `json:"comm,omitempty"`
	Depth         int    `json:"depth"` // 0 for the root
	SessionLeader bool   `json:"session_leader"`
	GroupLeader   bool   `json:"group_leader"`
	// FdTable is the files_id of the task's fd table.
	FdTable uint32 `json:"fd_table"`
	// TableSharedWith lists the other tasks using the same fd table.
	TableSharedWith []uint32 `json:"table_shared_with,omitempty"`
	// FdsListedAt is set when the shared fd table is listed at an earlier
	// task (that task's pid); Fds is empty then.
	FdsListedAt uint32       `json:"fds_listed_at,omitempty"`
	Fds         []*FdSummary `json:"fds,omitempty"`
}

// FdRef names one fd of one task. SameTable marks an fd of the same fd
// table as the fd that refers to it (Pid is then the task where that table
// is listed).
type FdRef struct {
	Pid       uint32 `json:"pid"`
	Fd        uint32 `json:"fd"`
	SameTable bool   `json:"same_table,omitempty"`
}

// FdSummary is one fd with its open file description decoded.
type FdSummary struct {
	Fd       uint32 `json:"fd"`
	Type     string `json:"type"`
	Flags    string `json:"flags,omitempty"` // status flags, e.g. "O_WRONLY|O_NONBLOCK"
	RawFlags uint32 `json:"raw_flags"`
	Cloexec  bool   `json:"cloexec"`
	FileID   uint32 `json:"file_id"`
	// Target describes the object in one line, e.g. "pipe:[1302207] read end".
	Target string `json:"target"`
	// Shares lists other fds (in this or other tasks) holding the same open
	// file description, at most MaxShares of them.
	Shares        []FdRef `json:"shares,omitempty"`
	SharesOmitted int     `json:"shares_omitted,omitempty"`

	Reg      *RegTarget      `json:"reg,omitempty"`
	Pipe     *PipeTarget     `json:"pipe,omitempty"`
	Unix     *UnixTarget     `json:"unix,omitempty"`
	Inet     *InetTarget     `json:"inet,omitempty"`
	TTY      *TTYTarget      `json:"tty,omitempty"`
	Eventfd  *EventfdTarget  `json:"eventfd,omitempty"`
	Epoll    *EpollTarget    `json:"epoll,omitempty"`
	Signalfd *SignalfdTarget `json:"signalfd,omitempty"`
	Timerfd  *TimerfdTarget  `json:"timerfd,omitempty"`
}

// RegTarget is a path-opened file.
type RegTarget struct {
	Path     string `json:"path"`
	Pos      uint64 `json:"pos"`
	Remapped bool   `json:"remapped,omitempty"` // remap-fpath.img has an entry
}

// PipeTarget is a pipe end or a FIFO.
type PipeTarget struct {
	Ino     uint32 `json:"ino"`
	End     string `json:"end"`            // "read", "write" or "read/write"
	Path    string `json:"path,omitempty"` // FIFOs only
	Queued  int    `json:"queued"`         // bytes in pipes-data/fifo-data
	BufSize uint32 `json:"buf_size,omitempty"`
}

// UnixTarget is a unix socket.
type UnixTarget struct {
	SockType      string `json:"sock_type"`
	State         string `json:"state"`
	Name          string `json:"name,omitempty"` // abstract names as @name
	Ino           uint32 `json:"ino"`
	Peer          uint32 `json:"peer,omitempty"`
	Shutdown      string `json:"shutdown,omitempty"`
	QueuedPackets int    `json:"queued_packets"`
	QueuedBytes   int    `json:"queued_bytes"`
	FdsInFlight   int    `json:"fds_in_flight,omitempty"`
}

// InetTarget is an inet socket.
type InetTarget struct {
	Family string `json:"family"`
	Proto  string `json:"proto"`
	State  string `json:"state"`
	Src    string `json:"src"`
	Dst    string `json:"dst"`
	Ino    uint32 `json:"ino"`
	InQ    int    `json:"inq,omitempty"`  // tcp-stream receive queue bytes
	OutQ   int    `json:"outq,omitempty"` // tcp-stream send queue bytes
}

// TTYTarget is a tty; for ptys Side is "master" or "slave".
type TTYTarget struct {
	Type   string `json:"type"` // tty-info type: PTY, CONSOLE, ...
	Side   string `json:"side,omitempty"`
	Index  uint32 `json:"index"`
	Major  uint32 `json:"major"`
	Minor  uint32 `json:"minor"`
	Path   string `json:"path,omitempty"`
	Sid    uint32 `json:"sid,omitempty"`  // session whose ctty it is
	Pgrp   uint32 `json:"pgrp,omitempty"` // its foreground group
	Queued int    `json:"queued"`         // bytes in tty-data.img
}

// EventfdTarget is an eventfd.
type EventfdTarget struct {
	Counter uint64 `json:"counter"`
}

// EpollTarget is an epoll instance and its registrations.
type EpollTarget struct {
	Watches []EpollWatch `json:"watches"`
}

// EpollWatch is one epoll registration.
type EpollWatch struct {
	Fd     uint32 `json:"fd"`
	Events string `json:"events"`
	Data   uint64 `json:"data"`
	Type   string `json:"type,omitempty"` // type of the target fd in the listing table
}

// SignalfdTarget is a signalfd.
type SignalfdTarget struct {
	Mask    uint64   `json:"mask"`
	Signals []string `json:"signals"`
}

// TimerfdTarget is a timerfd.
type TimerfdTarget struct {
	Clock string `json:"clock"`
	Ticks uint64 `json:"ticks"`
}

// Summarize builds the summary of a loaded image directory. It takes time
// linear in the number of tasks, fds and file descriptions.
func Summarize(s *images.Set) *Summary {
	sum := &Summary{Dir: s.Dir}
	var march criupb.CoreEntryMarch
	if len(s.Tasks) > 0 && s.Tasks[0].Core != nil {
		march = s.Tasks[0].Core.GetMtype()
		sum.Arch = march.String()
	}
	sh := newSharing(s)
	listedAt := map[*images.FdTable]uint32{}
	depth := map[*images.Task]int{}
	order := treeOrder(s)
	for _, t := range order {
		if t.Parent != nil {
			depth[t] = depth[t.Parent] + 1
		}
		ts := &TaskSummary{
			Pid: t.Pid, PPid: t.PPid, Pgid: t.Pgid, Sid: t.Sid, Depth: depth[t],
			Comm:          t.Core.GetTc().GetComm(),
			SessionLeader: t.SessionLeader(), GroupLeader: t.GroupLeader(),
		}
		sum.Tasks = append(sum.Tasks, ts)
		tbl := t.Fds
		if tbl == nil {
			continue
		}
		ts.FdTable = tbl.ID
		for _, o := range tbl.Tasks {
			if o != t {
				ts.TableSharedWith = append(ts.TableSharedWith, o.Pid)
			}
		}
		if pid, ok := listedAt[tbl]; ok {
			ts.FdsListedAt = pid
			continue
		}
		listedAt[tbl] = t.Pid
		sum.Counts.FdTables++
		for _, fd := range tbl.Fds {
			ts.Fds = append(ts.Fds, describeFd(s, fd, march, sh, t.Pid))
			sum.Counts.Fds++
		}
	}
	sum.Counts.Tasks = len(s.Tasks)
	sum.Counts.Files = len(s.FileOrder)
	return sum
}

// treeOrder returns the tasks depth-first from the root, children in
// pstree order.
func treeOrder(s *images.Set) []*images.Task {
	if len(s.Tasks) == 0 {
		return nil
	}
	var out []*images.Task
	stack := []*images.Task{s.Tasks[0]}
	for len(stack) > 0 {
		t := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		out = append(out, t)
		for i := len(t.Children) - 1; i >= 0; i-- {
			stack = append(stack, t.Children[i])
		}
	}
	return out
}

// sharing precomputes, per file description, how many (task, fd) pairs
// refer to it, so that each fd's share count is O(1) and its listing
// O(MaxShares).
type sharing struct {
	weight  map[*images.File]int                     // Σ over fds of len(table.Tasks)
	inTable map[*images.File]map[*images.FdTable]int // fds of the file per table
}

func newSharing(s *images.Set) *sharing {
	sh := &sharing{weight: map[*images.File]int{}, inTable: map[*images.File]map[*images.FdTable]int{}}
	for _, f := range s.FileOrder {
		if len(f.Fds) < 2 {
			continue
		}
		per := map[*images.FdTable]int{}
		w := 0
		for _, fd := range f.Fds {
			per[fd.Table]++
			w += len(fd.Table.Tasks)
		}
		sh.weight[f], sh.inTable[f] = w, per
	}
	return sh
}

// total returns how many other fds share fd's description: every other fd
// of the same table once, and every fd of another table once per task
// using that table.
func (sh *sharing) total(fd *images.Fd) int {
	w, ok := sh.weight[fd.File]
	if !ok {
		return 0
	}
	c := sh.inTable[fd.File][fd.Table]
	return w - c*len(fd.Table.Tasks) + c - 1
}

// shares lists up to MaxShares other fds of fd's description.
func (sh *sharing) shares(fd *images.Fd, self uint32) ([]FdRef, int) {
	total := sh.total(fd)
	if total == 0 {
		return nil, 0
	}
	var refs []FdRef
	for _, o := range fd.File.Fds {
		if len(refs) >= MaxShares {
			break
		}
		switch {
		case o == fd:
		case o.Table == fd.Table:
			refs = append(refs, FdRef{Pid: self, Fd: o.Num, SameTable: true})
		default:
			for _, t := range o.Table.Tasks {
				if len(refs) >= MaxShares {
					break
				}
				refs = append(refs, FdRef{Pid: t.Pid, Fd: o.Num})
			}
		}
	}
	// Fds of the same table first, then the other tasks in listing order.
	sort.SliceStable(refs, func(i, j int) bool { return refs[i].SameTable && !refs[j].SameTable })
	return refs, total - len(refs)
}

func describeFd(s *images.Set, fd *images.Fd, march criupb.CoreEntryMarch, sh *sharing, self uint32) *FdSummary {
	f := fd.File
	d := &FdSummary{Fd: fd.Num, Type: f.Type.String(), Cloexec: fd.Cloexec(), FileID: f.ID}
	if fl, ok := f.Flags(); ok {
		d.RawFlags = fl
		d.Flags = OpenFlags(fl, march)
	}
	d.Shares, d.SharesOmitted = sh.shares(fd, self)
	e := f.Entry
	switch f.Type {
	case criupb.FdTypes_REG:
		r := e.GetReg()
		_, remapped := s.Remaps[f.ID]
		d.Reg = &RegTarget{Path: r.GetName(), Pos: r.GetPos(), Remapped: remapped}
		d.Target = fmt.Sprintf("%s pos %d", printable(r.GetName()), r.GetPos())
		if remapped {
			d.Target += " (remapped)"
		}
	case criupb.FdTypes_PIPE, criupb.FdTypes_FIFO:
		p := &PipeTarget{End: pipeEnd(d.RawFlags)}
		if f.Pipe != nil {
			p.Ino, p.Queued, p.BufSize = f.Pipe.ID, len(f.Pipe.Data), f.Pipe.Size
		}
		d.Pipe = p
		d.Target = fmt.Sprintf("pipe:[%d] %s end, %d B queued", p.Ino, p.End, p.Queued)
		if p.BufSize != 0 {
			d.Target += fmt.Sprintf(", buffer %d", p.BufSize)
		}
		if f.Type == criupb.FdTypes_FIFO {
			if f.Path != nil {
				p.Path = f.Path.Entry.GetReg().GetName()
			}
			d.Target = printable(p.Path) + " " + d.Target
		}
	case criupb.FdTypes_UNIXSK:
		u := e.GetUsk()
		t := &UnixTarget{
			SockType: SocketType(u.GetType()), State: SocketState(u.GetState()),
			Name: unixName(u.GetName()), Ino: u.GetIno(), Peer: u.GetPeer(),
		}
		if u.Shutdown != nil && u.GetShutdown() != criupb.SkShutdown_NONE {
			t.Shutdown = u.GetShutdown().String()
		}
		for _, pkt := range s.Packets[f.ID] {
			t.QueuedPackets++
			t.QueuedBytes += len(pkt.Data)
			t.FdsInFlight += len(pkt.Fds)
		}
		d.Unix = t
		name := t.Name
		if name == "" {
			name = "unnamed"
		}
		d.Target = fmt.Sprintf("%s %s %s ino %d", t.SockType, t.State, name, t.Ino)
		if t.Peer != 0 {
			d.Target += fmt.Sprintf(" peer %d", t.Peer)
		}
		if t.Shutdown != "" {
			d.Target += " shutdown " + t.Shutdown
		}
		d.Target += fmt.Sprintf(", %d packets (%d B) queued", t.QueuedPackets, t.QueuedBytes)
		if t.FdsInFlight > 0 {
			d.Target += fmt.Sprintf(", %d fds in flight", t.FdsInFlight)
		}
	case criupb.FdTypes_INETSK:
		i := e.GetIsk()
		t := &InetTarget{
			Family: familyName(i.GetFamily()), Proto: protoName(i.GetProto()),
			State: SocketState(i.GetState()), Ino: i.GetIno(),
			Src: inetAddr(i.GetFamily(), i.GetSrcAddr(), i.GetSrcPort()),
			Dst: inetAddr(i.GetFamily(), i.GetDstAddr(), i.GetDstPort()),
		}
		if ts := s.TCPStreams[t.Ino]; ts != nil {
			t.InQ, t.OutQ = len(ts.InQ), len(ts.OutQ)
		}
		d.Inet = t
		d.Target = fmt.Sprintf("%s %s %s %s -> %s ino %d", t.Family, t.Proto, t.State, t.Src, t.Dst, t.Ino)
		if t.InQ > 0 || t.OutQ > 0 {
			d.Target += fmt.Sprintf(", queued in %d B out %d B", t.InQ, t.OutQ)
		}
	case criupb.FdTypes_TTY:
		d.TTY, d.Target = describeTTY(f)
	case criupb.FdTypes_EVENTFD:
		d.Eventfd = &EventfdTarget{Counter: e.GetEfd().GetCounter()}
		d.Target = fmt.Sprintf("eventfd counter %d", d.Eventfd.Counter)
	case criupb.FdTypes_EVENTPOLL:
		t := &EpollTarget{Watches: []EpollWatch{}}
		d.Target = "epoll"
		for _, w := range e.GetEpfd().GetTfd() {
			ew := EpollWatch{Fd: w.GetTfd(), Events: EpollEvents(w.GetEvents()), Data: w.GetData()}
			if tfd := fd.Table.Lookup(w.GetTfd()); tfd != nil {
				ew.Type = tfd.File.Type.String()
			}
			t.Watches = append(t.Watches, ew)
			typ := ""
			if ew.Type != "" {
				typ = " (" + ew.Type + ")"
			}
			d.Target += fmt.Sprintf(" [fd %d%s %s data %#x]", ew.Fd, typ, ew.Events, ew.Data)
		}
		if len(t.Watches) == 0 {
			d.Target += " (no watches)"
		}
		d.Epoll = t
	case criupb.FdTypes_SIGNALFD:
		m := e.GetSgfd().GetSigmask()
		d.Signalfd = &SignalfdTarget{Mask: m, Signals: Signals(m)}
		d.Target = fmt.Sprintf("signalfd mask %#x %v", m, d.Signalfd.Signals)
	case criupb.FdTypes_TIMERFD:
		t := e.GetTfd()
		d.Timerfd = &TimerfdTarget{Clock: ClockName(t.GetClockid()), Ticks: t.GetTicks()}
		d.Target = fmt.Sprintf("timerfd %s", d.Timerfd.Clock)
	default:
		d.Target = "(not interpreted by fdrestore)"
	}
	return d
}

func pipeEnd(flags uint32) string {
	switch flags & 3 {
	case 0:
		return "read"
	case 1:
		return "write"
	}
	return "read/write"
}

// Device numbers of the pty multiplexer and of Unix98 pty slaves.
const (
	ttyAuxMajor     = 5 // /dev/tty (minor 0), /dev/console (1), /dev/ptmx (2)
	ptmxMinor       = 2
	ptsMajorFirst   = 136 // UNIX98_PTY_SLAVE_MAJOR .. +7
	ptsMajorLast    = 143
	ptyMasterMajor0 = 128 // UNIX98_PTY_MASTER_MAJOR .. +7 (legacy masters)
)

func describeTTY(f *images.File) (*TTYTarget, string) {
	t := &TTYTarget{}
	if f.Path != nil {
		t.Path = f.Path.Entry.GetReg().GetName()
	}
	if f.TTY == nil {
		return t, "tty " + t.Path
	}
	info := f.TTY.Info
	t.Type = info.GetType().String()
	t.Index = info.GetPty().GetIndex()
	t.Major, t.Minor = unix.Major(uint64(info.GetRdev())), unix.Minor(uint64(info.GetRdev()))
	t.Sid, t.Pgrp = info.GetSid(), info.GetPgrp()
	t.Queued = len(f.TTY.Data)
	switch {
	case t.Major == ttyAuxMajor && t.Minor == ptmxMinor,
		t.Major >= ptyMasterMajor0 && t.Major < ptyMasterMajor0+8:
		t.Side = "master"
	case t.Major >= ptsMajorFirst && t.Major <= ptsMajorLast:
		t.Side = "slave"
	}
	var s string
	if t.Side != "" {
		s = fmt.Sprintf("pty #%d %s", t.Index, t.Side)
	} else {
		s = fmt.Sprintf("%s tty %d:%d", t.Type, t.Major, t.Minor)
	}
	if t.Path != "" {
		s += " " + printable(t.Path)
	}
	if t.Sid != 0 && t.Side != "master" {
		s += fmt.Sprintf(", ctty of sid %d fg pgrp %d", t.Sid, t.Pgrp)
	}
	s += fmt.Sprintf(", %d B queued", t.Queued)
	return t, s
}
