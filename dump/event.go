package dump

import (
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"unsafe"

	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// The anon-inode kinds fdrestore dumps: epoll sets, eventfds, signalfds
// and timerfds. Their state comes from /proc/PID/fdinfo/N.
const (
	kindEpoll fdKind = iota + 100
	kindEventfd
	kindSignalfd
	kindTimerfd
)

// anonKinds maps the readlink of such an fd to its kind.
var anonKinds = map[string]fdKind{
	"anon_inode:[eventpoll]": kindEpoll,
	"anon_inode:[eventfd]":   kindEventfd,
	"anon_inode:[signalfd]":  kindSignalfd,
	"anon_inode:[timerfd]":   kindTimerfd,
}

// kcmp's KCMP_EPOLL_TFD (include/uapi/linux/kcmp.h) and its slot.
const kcmpEpollTFD = 7

type kcmpEpollSlot struct {
	efd, tfd, toff uint32
}

// anonInfo is the state of one anon-inode fd, as fdinfo shows it.
type anonInfo struct {
	// eventfd
	counter   uint64
	semaphore bool
	// signalfd
	sigmask uint64
	// timerfd
	clockid      uint32
	ticks        uint64
	settimeFlags uint32
	value        [2]uint64 // time left: seconds, nanoseconds
	interval     [2]uint64
	// epoll
	tfds []epollTfd
}

// epollTfd is one registration of an epoll set.
type epollTfd struct {
	tfd    int // fd number it was registered with (rewritten by resolveEpolls)
	toff   int // how many registrations with the same tfd come before it
	events uint32
	data   uint64
	pos    uint64
	ino    uint64
	sdev   uint64
}

// readAnon fills e's kind and state from fdinfo: the holder's, or for a
// file in flight the dumper's own fdinfo of its fd of it.
func readAnon(e *fdEnt, kind fdKind) error {
	pid, fd := e.kcmpRef()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		return err
	}
	e.kind = kind
	a := &anonInfo{}
	e.anon = a
	seen := map[string]bool{}
	count := map[int]int{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		var err error
		switch {
		case kind == kindEpoll && k == "tfd":
			var t epollTfd
			if t, err = parseTfd(v); err == nil {
				t.toff = count[t.tfd]
				count[t.tfd]++
				a.tfds = append(a.tfds, t)
			}
		case kind == kindEventfd && k == "eventfd-count":
			a.counter, err = strconv.ParseUint(v, 16, 64)
		case kind == kindEventfd && k == "eventfd-semaphore":
			var s uint64
			s, err = strconv.ParseUint(v, 10, 8)
			a.semaphore = s != 0
		case kind == kindSignalfd && k == "sigmask":
			a.sigmask, err = strconv.ParseUint(v, 16, 64)
		case kind == kindTimerfd && k == "clockid":
			var c uint64
			c, err = strconv.ParseUint(v, 10, 32)
			a.clockid = uint32(c)
		case kind == kindTimerfd && k == "ticks":
			a.ticks, err = strconv.ParseUint(v, 10, 64)
		case kind == kindTimerfd && k == "settime flags":
			var f uint64
			f, err = strconv.ParseUint(v, 8, 32)
			a.settimeFlags = uint32(f)
		case kind == kindTimerfd && k == "it_value":
			a.value, err = parsePair(v)
		case kind == kindTimerfd && k == "it_interval":
			a.interval, err = parsePair(v)
		default:
			continue
		}
		if err != nil {
			return fmt.Errorf("fdinfo of %s: %s %q: %w", e.link, k, v, err)
		}
		seen[k] = true
	}
	var need []string
	switch kind {
	case kindEventfd:
		need = []string{"eventfd-count"}
	case kindSignalfd:
		need = []string{"sigmask"}
	case kindTimerfd:
		need = []string{"clockid", "ticks", "settime flags", "it_value", "it_interval"}
	}
	for _, k := range need {
		if !seen[k] {
			return fmt.Errorf("fdinfo of %s has no %q line (kernel too old?)", e.link, k)
		}
	}
	return nil
}

// parseTfd parses the rest of an epoll fdinfo line, "N events: X data: X
// pos:N ino:X sdev:X" (the last three on Linux 4.10 and later).
func parseTfd(s string) (epollTfd, error) {
	var t epollTfd
	f := strings.Fields(s)
	if len(f) < 5 || f[1] != "events:" || f[3] != "data:" {
		return t, fmt.Errorf("unexpected format")
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return t, err
	}
	t.tfd = n
	ev, err := strconv.ParseUint(f[2], 16, 32)
	if err != nil {
		return t, err
	}
	t.events = uint32(ev)
	if t.data, err = strconv.ParseUint(f[4], 16, 64); err != nil {
		return t, err
	}
	for _, kv := range f[5:] {
		k, v, _ := strings.Cut(kv, ":")
		switch k {
		case "pos":
			t.pos, err = strconv.ParseUint(v, 10, 64)
		case "ino":
			t.ino, err = strconv.ParseUint(v, 16, 64)
		case "sdev":
			t.sdev, err = strconv.ParseUint(v, 16, 64)
		}
		if err != nil {
			return t, err
		}
	}
	return t, nil
}

// parsePair parses "(A, B)".
func parsePair(s string) ([2]uint64, error) {
	var p [2]uint64
	a, b, ok := strings.Cut(strings.Trim(s, "()"), ",")
	if !ok {
		return p, fmt.Errorf("not a pair")
	}
	var err error
	if p[0], err = strconv.ParseUint(strings.TrimSpace(a), 10, 64); err != nil {
		return p, err
	}
	p[1], err = strconv.ParseUint(strings.TrimSpace(b), 10, 64)
	return p, err
}

// kcmpEpollTarget compares the file at fd of pid with the target of
// registration slot of epoll slot.efd in epid: 0 equal, 1 the fd's file is
// less, 2 greater (the order of KCMP_FILE).
func kcmpEpollTarget(pid, fd, epid int, slot *kcmpEpollSlot) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid), uintptr(epid), kcmpEpollTFD, uintptr(fd), uintptr(unsafe.Pointer(slot)), 0)
	runtime.KeepAlive(slot)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// resolveEpolls checks every registration of every epoll set against the
// task in which restore registers the set's targets (restore/spec_epoll.go:
// the first holder in pstree order, or for a set that exists only in
// flight, the task that refills the queue carrying it; see registrar): the
// recorded tfd must be an fd of the registered file there (kcmp
// KCMP_EPOLL_TFD, the set reached through its holder's fd or the dumper's
// own fd of it). A registration whose number was closed, now holds another
// file, or (in flight) was the number of another task, is recorded under
// an fd of that task that refers to the registered file and that no other
// registration of the set uses (the kernel keys registrations by file and
// number), found by a binary search over the task's fds in kcmp order. A
// registered file no such fd refers to refuses the dump.
func (s *state) resolveEpolls() ([]error, error) {
	var refused []error
	sorted := map[*task][]*fdEnt{}
	var holder map[*fdEnt]*task // set in flight -> first task holding it
	var reg *registrar
	for _, e := range s.all {
		if e.kind != kindEpoll || e.desc != e {
			continue
		}
		rt := e.t
		if rt == nil {
			if holder == nil {
				holder = map[*fdEnt]*task{}
				for _, x := range s.all {
					if x.t != nil && x.desc.t == nil && x.desc.kind == kindEpoll && holder[x.desc] == nil {
						holder[x.desc] = x.t
					}
				}
			}
			if rt = holder[e]; rt == nil {
				if reg == nil {
					reg = s.newRegistrar()
				}
				rt = reg.task(e)
			}
		}
		if rt == nil {
			refused = append(refused, e.inflightEpollRefusal("no task of the tree holds a socket of the queue's connection, so no fd table records its targets"))
			continue
		}
		epid, efd := e.kcmpRef()
		pid := rt.pid
		used := map[int]bool{}
		var stale []int
		for i := range e.anon.tfds {
			t := &e.anon.tfds[i]
			slot := &kcmpEpollSlot{efd: uint32(efd), tfd: uint32(t.tfd), toff: uint32(t.toff)}
			if r, err := kcmpEpollTarget(pid, t.tfd, epid, slot); err == nil && r == 0 && !used[t.tfd] {
				used[t.tfd] = true
			} else {
				stale = append(stale, i)
			}
		}
		for _, i := range stale {
			t := &e.anon.tfds[i]
			slot := &kcmpEpollSlot{efd: uint32(efd), tfd: uint32(t.tfd), toff: uint32(t.toff)}
			fds, ok := sorted[rt]
			if !ok {
				var err error
				if fds, err = sortByFile(rt); err != nil {
					return nil, err
				}
				sorted[rt] = fds
			}
			var kerr error
			cmp := func(j int) int {
				r, err := kcmpEpollTarget(pid, fds[j].fd, epid, slot)
				if err != nil && kerr == nil {
					kerr = err
				}
				return r
			}
			j := sort.Search(len(fds), func(j int) bool { return cmp(j) != 1 })
			found := -1
			for ; j < len(fds) && cmp(j) == 0; j++ {
				if !used[fds[j].fd] {
					found = fds[j].fd
					break
				}
			}
			if kerr != nil {
				return nil, fmt.Errorf("kcmp(KCMP_EPOLL_TFD) pid %d, epoll %s, target fd %d: %w", pid, e.where(), t.tfd, kerr)
			}
			if found >= 0 {
				s.log.WithFields(map[string]any{"pid": pid, "epoll": e.where()}).Debugf("epoll target fd %d was closed, reused or another task's: recorded as fd %d of pid %d, which refers to the registered file", t.tfd, found, pid)
				t.tfd = found
				used[found] = true
				continue
			}
			if e.t == nil {
				refused = append(refused, e.inflightEpollRefusal(fmt.Sprintf("its target registered as fd %d (inode %d, data %#x%s) is not open in pid %d, "+
					"the task that refills the queue and in whose fd table restore looks the set's targets up (or only at fds that other registrations of the same file use)",
					t.tfd, t.ino, t.data, s.nameTarget(epid, slot), pid)))
				continue
			}
			refused = append(refused, &UnsupportedError{Pid: pid, Fd: e.fd, Target: e.link,
				Type: fmt.Sprintf("an epoll set whose target registered as fd %d (inode %d, data %#x) is no longer open in this task (the first holding the set, whose fd numbers the images record), or only at fds that other registrations of the same file use,", t.tfd, t.ino, t.data)})
		}
	}
	return refused, nil
}

// nameTarget names, for a refusal, the dumped file that is the target of
// registration slot of the epoll set at fd slot.efd of epid (", the X at
// pid P fd N" or ", an X that is only in flight, in socket:[N]"), or ""
// if none is.
func (s *state) nameTarget(epid int, slot *kcmpEpollSlot) string {
	for _, x := range s.all {
		if x.desc != x {
			continue
		}
		pid, fd := x.kcmpRef()
		if r, err := kcmpEpollTarget(pid, fd, epid, slot); err == nil && r == 0 {
			if x.t == nil {
				return fmt.Sprintf(", an %s that is only in flight, in socket:[%d]", x.link, x.via)
			}
			return fmt.Sprintf(", the %s at pid %d fd %d", x.link, x.t.pid, x.fd)
		}
	}
	return ""
}

// inflightEpollRefusal refuses epoll set e, found in flight, naming the
// queue that carries it.
func (e *fdEnt) inflightEpollRefusal(why string) *UnsupportedError {
	return &UnsupportedError{Pid: e.carrier.t.pid, Fd: e.carrier.fd, Target: e.link,
		Type: fmt.Sprintf("an epoll set in flight (SCM_RIGHTS) in the queue of socket:[%d]", e.via), Why: why}
}

// registrar finds the task that restore makes hold a file found in
// flight (restore/spec_unix.go planUnixInflight): the creator of the
// connection component of the socket whose queue carries it, which is the
// lowest pid holding a socket of the component (sockets joined by their
// peers, and accepted connections with the listener of their name), or,
// for a component no task holds, the creator of the component carrying
// one of its sockets in turn.
type registrar struct {
	s      *state
	parent map[uint32]uint32 // union-find over socket inodes
	low    map[uint32]*task  // component root -> lowest-pid holder
	first  map[uint32]*fdEnt // component root -> a socket of it in flight
	memo   map[uint32]*task  // component root -> its creator (nil: none)
}

func (s *state) newRegistrar() *registrar {
	r := &registrar{s: s, parent: map[uint32]uint32{}, low: map[uint32]*task{}, first: map[uint32]*fdEnt{}, memo: map[uint32]*task{}}
	listeners := map[string]uint32{}
	for _, sk := range s.sockList {
		r.parent[sk.ino] = sk.ino
		if sk.diag.state == tcpListen && len(sk.diag.name) > 0 {
			listeners[string(rune(sk.typ))+string(sk.diag.name)] = sk.ino
		}
	}
	for _, sk := range s.sockList {
		if p := s.socks[sk.peer]; p != nil && sk.ext == nil {
			r.union(sk.ino, p.ino)
			if sk.typ != unix.SOCK_DGRAM && sk.diag.state != tcpListen && len(sk.diag.name) > 0 && p.peer == sk.ino {
				if l, ok := listeners[string(rune(sk.typ))+string(sk.diag.name)]; ok {
					r.union(sk.ino, l)
				}
			}
		}
	}
	for _, x := range s.all {
		if x.usk == nil {
			continue
		}
		root := r.find(x.usk.ino)
		if x.t != nil {
			if l := r.low[root]; l == nil || x.t.pid < l.pid {
				r.low[root] = x.t
			}
		} else if r.first[root] == nil {
			r.first[root] = x
		}
	}
	return r
}

func (r *registrar) find(ino uint32) uint32 {
	for r.parent[ino] != ino {
		r.parent[ino] = r.parent[r.parent[ino]]
		ino = r.parent[ino]
	}
	return ino
}

func (r *registrar) union(a, b uint32) {
	if ra, rb := r.find(a), r.find(b); ra != rb {
		r.parent[rb] = ra
	}
}

// task returns the task that will hold e, found in flight, or nil.
func (r *registrar) task(e *fdEnt) *task {
	via := e.via
	for depth := 0; depth <= maxInflightDepth+1; depth++ {
		if r.s.socks[via] == nil {
			return nil
		}
		root := r.find(via)
		if t, ok := r.memo[root]; ok {
			return t
		}
		if t := r.low[root]; t != nil {
			r.memo[root] = t
			return t
		}
		in := r.first[root]
		if in == nil {
			return nil
		}
		via = in.via
	}
	return nil
}

// sortByFile returns t's fds sorted by the kcmp order of their files.
func sortByFile(t *task) ([]*fdEnt, error) {
	fds := append([]*fdEnt(nil), t.fds...)
	var kerr error
	sort.SliceStable(fds, func(a, b int) bool {
		r, err := kcmp(t.pid, t.pid, kcmpFile, fds[a].fd, fds[b].fd)
		if err != nil && kerr == nil {
			kerr = fmt.Errorf("kcmp(KCMP_FILE) pid %d fd %d, fd %d: %w", t.pid, fds[a].fd, fds[b].fd, err)
		}
		return r == 1
	})
	return fds, kerr
}

// anonEntry returns the files.img entry of an anon-inode description.
func anonEntry(e *fdEnt, id uint32) *criupb.FileEntry {
	a := e.anon
	fown := fownEntry(e.fown)
	switch e.kind {
	case kindEpoll:
		ep := &criupb.EventpollFileEntry{Id: proto.Uint32(id), Flags: proto.Uint32(e.flags), Fown: fown}
		for _, t := range a.tfds {
			te := &criupb.EventpollTfdEntry{Id: proto.Uint32(id), Tfd: proto.Uint32(uint32(t.tfd)),
				Events: proto.Uint32(t.events), Data: proto.Uint64(t.data)}
			if t.ino != 0 || t.sdev != 0 {
				te.Dev, te.Inode, te.Pos = proto.Uint32(uint32(t.sdev)), proto.Uint64(t.ino), proto.Uint64(t.pos)
			}
			ep.Tfd = append(ep.Tfd, te)
		}
		return &criupb.FileEntry{Type: criupb.FdTypes_EVENTPOLL.Enum(), Id: proto.Uint32(id), Epfd: ep}
	case kindEventfd:
		ef := &criupb.EventfdFileEntry{Id: proto.Uint32(id), Flags: proto.Uint32(e.flags), Fown: fown, Counter: proto.Uint64(a.counter)}
		if a.semaphore {
			ef.Semaphore = proto.Bool(true)
		}
		return &criupb.FileEntry{Type: criupb.FdTypes_EVENTFD.Enum(), Id: proto.Uint32(id), Efd: ef}
	case kindSignalfd:
		return &criupb.FileEntry{Type: criupb.FdTypes_SIGNALFD.Enum(), Id: proto.Uint32(id),
			Sgfd: &criupb.SignalfdEntry{Id: proto.Uint32(id), Flags: proto.Uint32(e.flags), Fown: fown, Sigmask: proto.Uint64(a.sigmask)}}
	case kindTimerfd:
		return &criupb.FileEntry{Type: criupb.FdTypes_TIMERFD.Enum(), Id: proto.Uint32(id),
			Tfd: &criupb.TimerfdEntry{Id: proto.Uint32(id), Flags: proto.Uint32(e.flags), Fown: fown,
				Clockid: proto.Uint32(a.clockid), Ticks: proto.Uint64(a.ticks), SettimeFlags: proto.Uint32(a.settimeFlags),
				Vsec: proto.Uint64(a.value[0]), Vnsec: proto.Uint64(a.value[1]),
				Isec: proto.Uint64(a.interval[0]), Insec: proto.Uint64(a.interval[1])}}
	}
	return nil
}

// anonType is the fdinfo-N.img type of an anon-inode kind.
func anonType(k fdKind) (criupb.FdTypes, bool) {
	switch k {
	case kindEpoll:
		return criupb.FdTypes_EVENTPOLL, true
	case kindEventfd:
		return criupb.FdTypes_EVENTFD, true
	case kindSignalfd:
		return criupb.FdTypes_SIGNALFD, true
	case kindTimerfd:
		return criupb.FdTypes_TIMERFD, true
	}
	return 0, false
}
