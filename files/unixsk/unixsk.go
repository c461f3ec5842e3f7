// Package unixsk restores unix sockets (stream, datagram, seqpacket) with
// their names, connections, queued data and files in flight.
//
// The planner groups the sockets into connected components: peers,
// socketpairs, a listener with its accepted connections and the
// connections still waiting in its queue, a datagram socket with every
// socket connected to it. One task creates a whole component, so no
// connect ever waits for another task; the other holders receive the
// sockets over SCM_RIGHTS as for any file. Inside a component the opener
// works in a fixed order, which is the component's part of the stage graph:
//
//  1. create: socketpair(2) for peers that point at each other (and for a
//     peerless socket, with a temporary end that refills its queue),
//     socket(2) for the rest;
//  2. bind the names (a stale socket file at a path is removed first; any
//     other file there is an error; file_perms is applied; a name deleted
//     after bind is bound, kept open O_PATH for connects through
//     /proc/self/fd, then unlinked) and listen with the recorded backlog;
//  3. accepted connections: the client connects to the listener and the
//     listener accepts, so that the accepted socket shares the listener's
//     name as it did at dump (when the listener is gone, a temporary
//     listener bound to the same name is used and closed);
//  4. AF_UNSPEC disconnects of socketpair ends that had no peer (before
//     any queue is refilled: a disconnect purges the queue);
//  5. connections not yet accepted at dump connect to their listener,
//     after every accepted one, so that they stay in its queue;
//  6. queues are refilled, each from the socket's peer, from a socket
//     connected to it, from its temporary pair end, or from a temporary
//     socket to its name; datagram sockets are refilled and then
//     connected to their peer by address, in an order where a socket
//     connects before its peer does (a connected datagram socket accepts
//     connects and datagrams from its peer only): one sendmsg per
//     packet, so datagram and seqpacket boundaries are kept, with the
//     carried files as SCM_RIGHTS (all of a packet's files in one
//     message, in order); buffers are raised only when a send would
//     block;
//  7. temporary ends are closed (a peerless stream socket then sees EOF
//     after its data, as at dump), socket options that differ from a
//     fresh socket's are set, then fown, the status flags (O_NONBLOCK)
//     and shutdown last, once both directions of every queue are
//     refilled.
//
// A component that is a plain socketpair (no name, option, flag, owner or
// shutdown beyond a fresh one's, data without files) gets the compact
// PairType opener: socketpair, refill, publish. Any other component whose
// packets carry no file gets one opener (Type) that does all of the above
// before publishing the sockets. Otherwise the component opener
// publishes the sockets after step 5 and the queue opener (QueueType),
// whose Needs are the carried files, does steps 6 and 7 once every one of
// them is present in the task: the carried files may themselves need the
// component's sockets (a socket in flight of the same component, an epoll
// watching one of them).
//
// Differences from CRIU 4.2: accepted sockets keep the listener's name
// (CRIU loses it), and data a client wrote before its connection was
// accepted is not restored (CRIU refuses to dump it; the images cannot
// hold it).
package unixsk

import (
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"unsafe"

	"github.com/fdrestore/fdrestore/files"
	"golang.org/x/sys/unix"
)

// Opener type names.
const (
	Type      = "unixsk"
	QueueType = "unixsk-queue"
)

// Shutdown values of unix_sk_entry.shutdown.
const (
	ShutNone  = 0
	ShutRead  = 1
	ShutWrite = 2
	ShutBoth  = 3
)

// state is what the component opener leaves to the queue opener: the
// temporary pair ends (moved above the target range).
type state struct {
	tmp, opath []int
	nb         []bool
}

var (
	statesMu sync.Mutex
	states   = map[string]*state{}
)

func stateKey(c *files.Context, first uint32) string {
	p := c.Plan()
	return p.RunID + "/" + strconv.FormatUint(uint64(p.Task), 10) + "/" + strconv.FormatUint(uint64(first), 10)
}

type opener struct {
	p     Params
	ids   []uint32
	queue bool // the queue opener of a split component

	fd     []int  // current fd of each socket (-1: none yet)
	tmp    []int  // temporary pair ends (-1: none)
	opath  []int  // O_PATH fds of sockets bound to a deleted name
	nb     []bool // created with O_NONBLOCK
	raise  []bool // buffers raised for the refill
	raised []int  // times the buffers of each receiving socket were raised
}

func newOpener(spec *files.OpenSpec, queue bool) (files.Opener, error) {
	o := &opener{ids: spec.Files, queue: queue}
	if err := files.DecodeData(spec.Data, &o.p); err != nil {
		return nil, fmt.Errorf("unix socket parameters: %w", err)
	}
	if len(o.p.Socks) == 0 {
		return nil, errors.New("unix socket parameters: no sockets")
	}
	if !queue {
		if len(spec.Files) != len(o.p.Socks) {
			return nil, fmt.Errorf("unix socket parameters name %d sockets for %d files", len(o.p.Socks), len(spec.Files))
		}
		for i, s := range o.p.Socks {
			if s.File != spec.Files[i] {
				return nil, fmt.Errorf("unix socket parameters name file id %d where the plan has %d", s.File, spec.Files[i])
			}
		}
	}
	return o, nil
}

func init() {
	files.Register(Type, func(spec *files.OpenSpec) (files.Opener, error) { return newOpener(spec, false) })
	files.Register(QueueType, func(spec *files.OpenSpec) (files.Opener, error) { return newOpener(spec, true) })
}

func (o *opener) sockName(i int) string {
	s := &o.p.Socks[i]
	return fmt.Sprintf("unix socket file id %d (ino %d)", s.File, s.Ino)
}

func (o *opener) closeAll() {
	for _, set := range [][]int{o.fd, o.tmp, o.opath} {
		for i, fd := range set {
			if fd >= 0 {
				unix.Close(fd)
				set[i] = -1
			}
		}
	}
}

// Open creates the component (and, unless split, finishes it), or, as the
// queue opener, refills the queues and sets the final state.
func (o *opener) Open(c *files.Context) (bool, error) {
	n := len(o.p.Socks)
	o.fd, o.tmp, o.opath = fill(n), fill(n), fill(n)
	o.nb, o.raise, o.raised = make([]bool, n), make([]bool, n), make([]int, n)
	if o.queue {
		return true, o.finishQueued(c)
	}
	// newOpener checked one file id per socket: there is at least one.
	ce, same := c.Cloexec(o.ids[0]), true
	for _, id := range o.ids[1:] {
		if c.Cloexec(id) != ce {
			ce, same = true, false
			break
		}
	}
	if err := o.create(ce); err != nil {
		o.closeAll()
		return false, err
	}
	if !o.p.Split {
		if err := o.finish(c); err != nil {
			o.closeAll()
			return false, err
		}
		closeFDs(o.opath)
		if same {
			return true, c.AdoptCloexec(o.ids, o.fd, ce)
		}
		return true, c.Adopt(o.ids, o.fd)
	}
	// Split: keep the temporary ends (and O_PATH fds) above the target
	// range, publish.
	st := &state{tmp: o.tmp, opath: o.opath, nb: o.nb}
	for _, set := range [][]int{o.tmp, o.opath} {
		for i, fd := range set {
			if fd < 0 {
				continue
			}
			nfd, err := c.Temp(fd)
			if err != nil {
				set[i] = -1
				o.closeAll()
				return false, fmt.Errorf("%s: move temporary fd: %w", o.sockName(i), err)
			}
			set[i] = nfd
		}
	}
	if err := c.Adopt(o.ids, o.fd); err != nil {
		closeFDs(o.tmp)
		closeFDs(o.opath)
		return false, err
	}
	statesMu.Lock()
	states[stateKey(c, o.p.Socks[0].File)] = st
	statesMu.Unlock()
	return true, nil
}

// finishQueued is the queue opener: the sockets are published, every
// carried file is present.
func (o *opener) finishQueued(c *files.Context) error {
	key := stateKey(c, o.p.Socks[0].File)
	statesMu.Lock()
	st := states[key]
	delete(states, key)
	statesMu.Unlock()
	if st == nil {
		return errors.New("queue refill ran before its sockets were created")
	}
	o.tmp, o.opath, o.nb = st.tmp, st.opath, st.nb
	defer closeFDs(o.opath)
	defer closeFDs(o.tmp)
	for i, s := range o.p.Socks {
		if o.fd[i] = c.FD(s.File); o.fd[i] < 0 {
			return fmt.Errorf("%s: not present for the queue refill", o.sockName(i))
		}
	}
	return o.finish(c)
}

func fill(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = -1
	}
	return s
}

func closeFDs(fds []int) {
	for i, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
			fds[i] = -1
		}
	}
}

func sockType(t uint8) int {
	switch t {
	case TypeDgram:
		return unix.SOCK_DGRAM
	case TypeSeqpacket:
		return unix.SOCK_SEQPACKET
	}
	return unix.SOCK_STREAM
}

// create runs steps 1 to 5.
func (o *opener) create(cloexec bool) error {
	ss := o.p.Socks
	cf := 0
	if cloexec {
		cf = unix.SOCK_CLOEXEC
	}
	// 1. Sockets.
	for i := range ss {
		s := &ss[i]
		typ := sockType(s.Type) | cf
		switch s.Create {
		case CreatePlain:
			if s.Pending >= 0 {
				typ |= unix.SOCK_NONBLOCK // never block on a full backlog
				o.nb[i] = true
			} else if s.Flags&unix.O_NONBLOCK != 0 {
				typ |= unix.SOCK_NONBLOCK
				o.nb[i] = true
			}
			fd, err := unix.Socket(unix.AF_UNIX, typ, 0)
			if err != nil {
				return fmt.Errorf("%s: socket: %w", o.sockName(i), err)
			}
			o.fd[i] = fd
		case CreatePair, CreateTmpPair:
			fds, err := unix.Socketpair(unix.AF_UNIX, typ, 0)
			if err != nil {
				return fmt.Errorf("%s: socketpair: %w", o.sockName(i), err)
			}
			o.fd[i] = fds[0]
			if s.Create == CreatePair {
				o.fd[s.Partner] = fds[1]
			} else {
				o.tmp[i] = fds[1]
			}
		}
	}
	// 2. Names and listens (an accepted connection's client binds in 3).
	for i := range ss {
		s := &ss[i]
		if s.Bind && s.Create != CreateClient {
			if err := o.bind(i, o.fd[i], true); err != nil {
				return err
			}
		}
		if s.Listen {
			if err := unix.Listen(o.fd[i], int(s.Backlog)); err != nil {
				return fmt.Errorf("%s: listen %d: %w", o.sockName(i), s.Backlog, err)
			}
		}
	}
	// 3. Accepted connections.
	for i := range ss {
		if ss[i].Create == CreateAccepted {
			if err := o.accept(i, cf); err != nil {
				return err
			}
		}
	}
	// 4. Disconnects of the socketpair ends that had no peer (before
	// any refill: a disconnect purges the queue). Datagram connects come
	// with the refill, in Order.
	for i := range ss {
		if ss[i].Disconnect {
			if err := disconnect(o.fd[i]); err != nil {
				return fmt.Errorf("%s: drop the temporary peer (connect AF_UNSPEC): %w", o.sockName(i), err)
			}
		}
	}
	// 5. Connections still pending in a listener's queue.
	for i := range ss {
		if ss[i].Pending >= 0 {
			if err := o.connectTo(i, int(ss[i].Pending)); err != nil {
				return err
			}
		}
	}
	return nil
}

// connect connects datagram socket i to its peer, in the tree or outside.
func (o *opener) connect(i int) error {
	s := &o.p.Socks[i]
	if s.ConnectTo >= 0 {
		return o.connectTo(i, int(s.ConnectTo))
	}
	if err := withDir(s.ExtDir, s.ExtName, func(name []byte) error { return connectRaw(o.fd[i], name) }); err != nil {
		return fmt.Errorf("%s: connect to the external peer %s: %w", o.sockName(i), printable(s.ExtName), err)
	}
	return nil
}

// addr returns the address socket j is reached at, and its directory.
func (o *opener) addr(j int) (name []byte, dir string) {
	if o.opath[j] >= 0 {
		return []byte("/proc/self/fd/" + strconv.Itoa(o.opath[j])), ""
	}
	return o.p.Socks[j].Name, o.p.Socks[j].NameDir
}

func (o *opener) connectTo(i, j int) error {
	name, dir := o.addr(j)
	if len(name) == 0 {
		return fmt.Errorf("%s: connect: its peer %s has no name to connect to", o.sockName(i), o.sockName(j))
	}
	if err := withDir(dir, name, func(n []byte) error { return connectRaw(o.fd[i], n) }); err != nil {
		return fmt.Errorf("%s: connect to %s at %s: %w", o.sockName(i), o.sockName(j), printable(o.p.Socks[j].Name), err)
	}
	return nil
}

// accept makes accepted connection i and its client.
func (o *opener) accept(i, cf int) error {
	s := &o.p.Socks[i]
	j := int(s.Partner)
	cl := &o.p.Socks[j]
	fd, err := unix.Socket(unix.AF_UNIX, sockType(cl.Type)|cf|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("%s: socket: %w", o.sockName(j), err)
	}
	o.fd[j], o.nb[j] = fd, true
	if cl.Bind {
		if err := o.bind(j, fd, true); err != nil {
			return err
		}
	}
	lfd := -1
	if s.Listener >= 0 {
		lfd = o.fd[s.Listener]
		if err := o.connectTo(j, int(s.Listener)); err != nil {
			return err
		}
	} else {
		// The listener is gone: a temporary one gives the accepted
		// socket its name.
		if lfd, err = unix.Socket(unix.AF_UNIX, sockType(s.Type)|unix.SOCK_CLOEXEC, 0); err != nil {
			return fmt.Errorf("%s: temporary listener: %w", o.sockName(i), err)
		}
		defer unix.Close(lfd)
		if err := o.bind(i, lfd, false); err != nil {
			return err
		}
		if err := unix.Listen(lfd, 1); err != nil {
			return fmt.Errorf("%s: temporary listener: listen: %w", o.sockName(i), err)
		}
		err := withDir(s.NameDir, s.Name, func(n []byte) error { return connectRaw(fd, n) })
		if len(s.Name) > 0 && s.Name[0] != 0 {
			// The listener's socket file went with it.
			withDir(s.NameDir, s.Name, func(n []byte) error { return unix.Unlink(string(n)) })
		}
		if err != nil {
			return fmt.Errorf("%s: connect to the temporary listener at %s: %w", o.sockName(j), printable(s.Name), err)
		}
	}
	nfd, _, err := unix.Accept4(lfd, cf)
	if err != nil {
		return fmt.Errorf("%s: accept: %w", o.sockName(i), err)
	}
	o.fd[i] = nfd
	return nil
}

// bind binds socket i's name on fd: a stale socket file at a path is
// removed first, file_perms applied, and a deleted name unlinked again
// (keeping an O_PATH fd for connects) when keep is set.
func (o *opener) bind(i, fd int, keep bool) error {
	s := &o.p.Socks[i]
	if len(s.Name) == 0 {
		return nil
	}
	err := withDir(s.NameDir, s.Name, func(name []byte) error {
		if name[0] == 0 {
			if err := bindRaw(fd, name); err != nil {
				return fmt.Errorf("bind: %w", err)
			}
			return nil
		}
		path := string(name)
		if s.Deleted {
			// The directories of a deleted name may be gone too:
			// make them for the bind, remove them after.
			made, err := mkParents(path)
			defer rmDirs(made)
			if err != nil {
				return err
			}
		}
		var st unix.Stat_t
		switch err := unix.Lstat(path, &st); {
		case err == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK:
			if err := unix.Unlink(path); err != nil && err != unix.ENOENT {
				return fmt.Errorf("remove the stale socket file: %w", err)
			}
		case err == nil && !s.Deleted:
			return fmt.Errorf("the path is taken by a file that is not a socket (mode %#o)", st.Mode)
		case err == nil:
			// A deleted name now used by another file: park it.
			aside := path + ".fdrestore-sk-ghost"
			if err := unix.Rename(path, aside); err != nil {
				return fmt.Errorf("move the file now at the deleted name aside: %w", err)
			}
			defer unix.Rename(aside, path)
		case err != unix.ENOENT:
			return err
		}
		if err := bindRaw(fd, name); err != nil {
			return fmt.Errorf("bind: %w", err)
		}
		if s.HasPerms {
			if err := unix.Fchmodat(unix.AT_FDCWD, path, s.Mode&0o7777, 0); err != nil {
				return fmt.Errorf("chmod %#o: %w", s.Mode&0o7777, err)
			}
			if err := unix.Lchown(path, int(s.UID), int(s.GID)); err != nil {
				return fmt.Errorf("chown %d:%d: %w", s.UID, s.GID, err)
			}
		}
		if s.Deleted && keep {
			op, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("open the socket file O_PATH: %w", err)
			}
			o.opath[i] = op
		}
		if s.Deleted {
			if err := unix.Unlink(path); err != nil {
				return fmt.Errorf("unlink the deleted name: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: bind to %s: %w", o.sockName(i), printable(s.Name), err)
	}
	return nil
}

// mkParents creates the missing directories above path and returns them,
// deepest last.
func mkParents(path string) ([]string, error) {
	var missing []string
	for dir := parentDir(path); dir != "" && dir != "/" && dir != "."; dir = parentDir(dir) {
		if err := unix.Access(dir, unix.F_OK); err == nil {
			break
		}
		missing = append(missing, dir)
	}
	var made []string
	for i := len(missing) - 1; i >= 0; i-- {
		if err := unix.Mkdir(missing[i], 0o755); err != nil && err != unix.EEXIST {
			return made, fmt.Errorf("create directory %s for the deleted name: %w", missing[i], err)
		}
		made = append(made, missing[i])
	}
	return made, nil
}

func rmDirs(made []string) {
	for i := len(made) - 1; i >= 0; i-- {
		unix.Rmdir(made[i])
	}
}

func parentDir(p string) string {
	for len(p) > 1 && p[len(p)-1] == '/' {
		p = p[:len(p)-1]
	}
	i := len(p) - 1
	for i >= 0 && p[i] != '/' {
		i--
	}
	switch {
	case i < 0:
		return "."
	case i == 0:
		return "/"
	}
	return p[:i]
}

// withDir calls fn with name, from inside dir when name is a relative
// path and dir is set, so that the bound name is the recorded one.
func withDir(dir string, name []byte, fn func([]byte) error) error {
	if dir == "" || len(name) == 0 || name[0] == 0 || name[0] == '/' {
		return fn(name)
	}
	cwd, err := unix.Open(".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("save the working directory: %w", err)
	}
	defer unix.Close(cwd)
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("chdir %s: %w", dir, err)
	}
	err = fn(name)
	if e := unix.Fchdir(cwd); e != nil && err == nil {
		err = fmt.Errorf("return to the working directory: %w", e)
	}
	return err
}

// printable shows a socket name: abstract names with a leading '@'.
func printable(name []byte) string {
	if len(name) == 0 {
		return "(unnamed)"
	}
	if name[0] == 0 {
		return strconv.Quote("@" + string(name[1:]))
	}
	return strconv.Quote(string(name))
}

// rawAddr builds a sockaddr_un for name exactly (abstract names may hold
// any byte, a path gets its terminating NUL).
func rawAddr(name []byte) (*unix.RawSockaddrUnix, uintptr, error) {
	var sa unix.RawSockaddrUnix
	if len(name) > len(sa.Path) || len(name) == len(sa.Path) && name[0] != 0 {
		return nil, 0, fmt.Errorf("name of %d bytes does not fit a sockaddr_un", len(name))
	}
	sa.Family = unix.AF_UNIX
	for i, b := range name {
		sa.Path[i] = int8(b)
	}
	l := uintptr(2 + len(name))
	if name[0] != 0 {
		l++
	}
	return &sa, l, nil
}

func bindRaw(fd int, name []byte) error { return sockaddrCall(unix.SYS_BIND, fd, name) }

func connectRaw(fd int, name []byte) error {
	for {
		err := sockaddrCall(unix.SYS_CONNECT, fd, name)
		if err != unix.EINTR {
			return err
		}
	}
}

func sockaddrCall(nr uintptr, fd int, name []byte) error {
	sa, l, err := rawAddr(name)
	if err != nil {
		return err
	}
	_, _, errno := unix.Syscall(nr, uintptr(fd), uintptr(unsafe.Pointer(sa)), l)
	runtime.KeepAlive(sa)
	if errno != 0 {
		return errno
	}
	return nil
}

func disconnect(fd int) error {
	sa := unix.RawSockaddr{Family: unix.AF_UNSPEC}
	_, _, errno := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	runtime.KeepAlive(&sa)
	if errno != 0 {
		return errno
	}
	return nil
}

// finish runs steps 6 and 7 on o.fd (and o.tmp): the queues of stream
// and seqpacket sockets, then the datagram sockets in Order, each refilled
// and connected, then the final state.
func (o *opener) finish(c *files.Context) error {
	ss := o.p.Socks
	for i := range ss {
		if ss[i].Type != TypeDgram {
			if err := o.refill(c, i); err != nil {
				return err
			}
		}
	}
	done := make([]bool, len(ss))
	for _, i := range o.p.Order {
		s := &ss[i]
		self := s.ConnectTo == i
		if j := s.ConnectTo; j >= 0 && !self && ss[j].ConnectTo == i {
			// A pair connected by name: both connect, at the later of
			// the two, then both are refilled from each other.
			done[i] = true
			if !done[j] {
				continue
			}
			for _, k := range []int{int(i), int(j)} {
				if err := o.connect(k); err != nil {
					return err
				}
			}
			for _, k := range []int{int(i), int(j)} {
				if err := o.refill(c, k); err != nil {
					return err
				}
			}
			continue
		}
		done[i] = true
		if self {
			if err := o.connect(int(i)); err != nil {
				return err
			}
		}
		if err := o.refill(c, int(i)); err != nil {
			return err
		}
		if !self && (s.ConnectTo >= 0 || len(s.ExtName) > 0) {
			if err := o.connect(int(i)); err != nil {
				return err
			}
		}
	}
	closeFDs(o.tmp)
	for i := range ss {
		if err := o.final(c, i); err != nil {
			return fmt.Errorf("%s: %w", o.sockName(i), err)
		}
	}
	return nil
}

// refill queues socket i's packets.
func (o *opener) refill(c *files.Context, i int) error {
	s := &o.p.Socks[i]
	if len(s.Packets) == 0 {
		return nil
	}
	from := o.tmp[i]
	var to []byte
	var dir string
	switch {
	case s.Sender >= 0:
		from = o.fd[s.Sender]
	case s.Sender == SendName:
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("%s: temporary sender: %w", o.sockName(i), err)
		}
		// Closed before the opener returns: it never meets a target.
		defer unix.Close(fd)
		from = fd
		to, dir = o.addr(i)
	}
	if from < 0 {
		return fmt.Errorf("%s: %d packets queued and no socket to send them from", o.sockName(i), len(s.Packets))
	}
	// One chdir for the whole queue, not one per packet.
	k := 0
	err := withDir(dir, to, func(to []byte) error {
		var sa unix.Sockaddr
		if len(to) > 0 {
			sa = &unix.SockaddrUnix{Name: string(to)}
		}
		queue := 0
		for _, pk := range s.Packets {
			queue += len(pk.Data) + 1024 // as queueSize counts
		}
		for k = range s.Packets {
			if err := o.send(c, i, int(s.Sender), from, sa, &s.Packets[k], queue); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: refill packet %d of %d (%d bytes): %w", o.sockName(i), k+1, len(s.Packets), len(s.Packets[k].Data), err)
	}
	return nil
}

// send queues one packet on socket i, sent from fd from (socket sender, or
// a temporary socket when sender < 0) to address sa when set. queue is the
// size of socket i's whole queue, counted as queueSize counts.
func (o *opener) send(c *files.Context, i, sender, from int, sa unix.Sockaddr, pk *Packet, queue int) error {
	var oob []byte
	if len(pk.Fds) > 0 {
		fds := make([]int, len(pk.Fds))
		for k, id := range pk.Fds {
			if fds[k] = c.FD(id); fds[k] < 0 {
				return fmt.Errorf("file id %d in flight is not present", id)
			}
		}
		oob = unix.UnixRights(fds...)
	}
	s := &o.p.Socks[i]
	stream := s.Type == TypeStream
	before := o.raised[i]
	err := sendQueued(from, o.fd[i], pk.Data, oob, sa, !stream, &o.raised[i], queue)
	if o.raised[i] != before {
		o.raise[i] = true
		if sender >= 0 {
			o.raise[sender] = true
		}
	}
	if err == unix.EAGAIN && !stream && sender != int(s.Partner) {
		return fmt.Errorf("%w (a datagram queue filled by other sockets than the receiver's peer is limited by net.unix.max_dgram_qlen)", err)
	}
	return err
}

func setBuf(fd, force, plain, v int) {
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, v) != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, plain, v)
	}
}

// defaults are a fresh unix socket's buffer sizes in this process.
var (
	defOnce        sync.Once
	defSnd, defRcv int
)

func bufDefaults() (int, int) {
	defOnce.Do(func() {
		defSnd, defRcv = -1, -1
		s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return
		}
		// Created and closed at once: it never outlives this call.
		if v, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUF); err == nil {
			defSnd = v
		}
		if v, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUF); err == nil {
			defRcv = v
		}
		unix.Close(s)
	})
	return defSnd, defRcv
}

// final applies socket options, fown, status flags and shutdown.
func (o *opener) final(c *files.Context, i int) error {
	s := &o.p.Socks[i]
	fd := o.fd[i]
	op := &s.Opts
	snd, rcv := bufDefaults()
	if op.Sndbuf != 0 && (o.raise[i] || int(op.Sndbuf) != snd) {
		if err := setBufExact(fd, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, int(op.Sndbuf)); err != nil {
			return fmt.Errorf("SO_SNDBUF %d: %w", op.Sndbuf, err)
		}
	}
	if op.Rcvbuf != 0 && (o.raise[i] || int(op.Rcvbuf) != rcv) {
		if err := setBufExact(fd, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, int(op.Rcvbuf)); err != nil {
			return fmt.Errorf("SO_RCVBUF %d: %w", op.Rcvbuf, err)
		}
	}
	if op.SndTmoSec != 0 || op.SndTmoUsec != 0 {
		tv := unix.Timeval{Sec: int64(op.SndTmoSec), Usec: int64(op.SndTmoUsec)}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
			return fmt.Errorf("SO_SNDTIMEO: %w", err)
		}
	}
	if op.RcvTmoSec != 0 || op.RcvTmoUsec != 0 {
		tv := unix.Timeval{Sec: int64(op.RcvTmoSec), Usec: int64(op.RcvTmoUsec)}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return fmt.Errorf("SO_RCVTIMEO: %w", err)
		}
	}
	type intOpt struct {
		name string
		opt  int
		v    uint32
		set  bool
	}
	for _, io := range []intOpt{
		{"SO_PASSCRED", unix.SO_PASSCRED, 1, op.Passcred},
		{"SO_PASSSEC", unix.SO_PASSSEC, 1, op.Passsec},
		{"SO_REUSEADDR", unix.SO_REUSEADDR, 1, op.Reuseaddr},
		{"SO_REUSEPORT", unix.SO_REUSEPORT, 1, op.Reuseport},
		{"SO_DONTROUTE", unix.SO_DONTROUTE, 1, op.Dontroute},
		{"SO_BROADCAST", unix.SO_BROADCAST, 1, op.Broadcast},
		{"SO_KEEPALIVE", unix.SO_KEEPALIVE, 1, op.Keepalive},
		{"SO_OOBINLINE", unix.SO_OOBINLINE, 1, op.Oobinline != 0},
		{"SO_PRIORITY", unix.SO_PRIORITY, op.Priority, op.Priority != 0},
		{"SO_RCVLOWAT", unix.SO_RCVLOWAT, op.Rcvlowat, op.Rcvlowat > 1},
		{"SO_MARK", unix.SO_MARK, op.Mark, op.Mark != 0},
		{"SO_BUF_LOCK", unix.SO_BUF_LOCK, op.BufLock, op.BufLock != 0},
	} {
		if io.set {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, io.opt, int(io.v)); err != nil {
				return fmt.Errorf("%s %d: %w", io.name, io.v, err)
			}
		}
	}
	if op.Linger != 0 {
		l := unix.Linger{Onoff: 1, Linger: int32(op.Linger)}
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &l); err != nil {
			return fmt.Errorf("SO_LINGER %d: %w", op.Linger, err)
		}
	}
	if op.BoundDev != "" {
		if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, op.BoundDev); err != nil {
			return fmt.Errorf("SO_BINDTODEVICE %q: %w", op.BoundDev, err)
		}
	}
	if len(op.Filter) > 0 {
		prog := make([]unix.SockFilter, len(op.Filter))
		for k, w := range op.Filter {
			prog[k] = unix.SockFilter{Code: uint16(w >> 48), Jt: uint8(w >> 40), Jf: uint8(w >> 32), K: uint32(w)}
		}
		fp := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
		if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fp); err != nil {
			return fmt.Errorf("SO_ATTACH_FILTER (%d instructions): %w", len(prog), err)
		}
	}
	if err := s.Fown.Apply(c, fd); err != nil {
		return err
	}
	want := int(s.Flags) & files.StatusFlagsMask
	have := 0
	if o.nb[i] {
		have = unix.O_NONBLOCK
	}
	if want != have {
		if err := files.SetStatusFlags(fd, s.Flags); err != nil {
			return fmt.Errorf("set status flags %#o: %w", want, err)
		}
	}
	how := -1
	switch s.Shutdown {
	case ShutRead:
		how = unix.SHUT_RD
	case ShutWrite:
		how = unix.SHUT_WR
	case ShutBoth:
		how = unix.SHUT_RDWR
	}
	if how >= 0 {
		if err := unix.Shutdown(fd, how); err != nil && err != unix.ENOTCONN {
			return fmt.Errorf("shutdown %d: %w", how, err)
		}
	}
	return nil
}

// setBufExact sets a buffer so that getsockopt reports v again: the kernel
// doubles what it is given.
func setBufExact(fd, force, plain, v int) error {
	half := v / 2
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, half); err != nil {
		return unix.SetsockoptInt(fd, unix.SOL_SOCKET, plain, half)
	}
	return nil
}
