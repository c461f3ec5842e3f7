package scm

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrClosed is returned by operations on a closed Transport.
var ErrClosed = errors.New("scm: transport is closed")

// Options tune a Transport.
type Options struct {
	// FDFloor, if positive, makes the transport move every fd it creates
	// (its receive socket and its sender sockets) to a number >= FDFloor,
	// so they stay clear of the fd numbers being restored. Fds received
	// by Drain are not moved.
	FDFloor int
}

// Transport is one task's SCM_RIGHTS endpoint: its receive socket plus the
// sender sockets and outboxes for the tasks it sends to. It is not safe
// for concurrent use.
type Transport struct {
	runID string
	self  uint32
	fd    int
	floor int

	dests    map[uint32]*dest
	active   []*dest // destinations with packed, unsent messages
	batching []*dest // destinations with an open batch
	npackets int     // packed, unsent messages
	nbatched int     // fds in open batches

	rbuf, roob []byte
	pollbuf    []unix.PollFd
	closed     bool
}

// dest is the send state for one destination task.
type dest struct {
	id       uint32
	sock     int // connected sender socket, -1 until dialled
	keys     []uint32
	fds      []int
	out      []packet
	head     int   // out[head:] is unsent
	err      error // sticky failure
	active   bool
	batching bool
}

// packet is one encoded message waiting to be sent.
type packet struct {
	kind Kind
	body []byte
	oob  []byte
	nfds int
}

// SendError reports a failure to deliver to a destination task. Once a
// destination has failed, its outbox is dropped and later calls for it
// return the same error. errors.Is(err, unix.ECONNREFUSED) means the
// destination's endpoint is gone or was never bound.
type SendError struct {
	From, To uint32
	Op       string // "dial" or "send"
	Kind     Kind   // kind of the message being sent (for Op "send")
	FDs      int    // fds in that message
	Err      error  // underlying error, usually a unix.Errno
}

// Error implements error.
func (e *SendError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "scm: task %d -> task %d: ", e.From, e.To)
	if e.Op == "send" {
		fmt.Fprintf(&b, "send %s message with %d fds: ", e.Kind, e.FDs)
	} else {
		fmt.Fprintf(&b, "%s: ", e.Op)
	}
	switch {
	case errors.Is(e.Err, unix.ECONNREFUSED), errors.Is(e.Err, unix.ENOTCONN):
		b.WriteString("destination endpoint is gone (task exited, transport closed, never bound, or another network namespace): ")
	case errors.Is(e.Err, unix.ETOOMANYREFS):
		b.WriteString("too many fds in flight for this user (RLIMIT_NOFILE): ")
	case errors.Is(e.Err, unix.EBADF) && e.Op == "send":
		b.WriteString("a queued fd is not open (closed before the send completed?): ")
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

// Unwrap returns the underlying error.
func (e *SendError) Unwrap() error { return e.Err }

// Open creates the receive endpoint of task self in run runID: a SOCK_DGRAM
// unix socket (CLOEXEC, NONBLOCK) bound to Addr(runID, self).
func Open(runID string, self uint32, opts Options) (*Transport, error) {
	if err := CheckRunID(runID); err != nil {
		return nil, err
	}
	fd, err := newSocket(opts.FDFloor)
	if err != nil {
		return nil, fmt.Errorf("scm: task %d: receive socket: %w", self, err)
	}
	addr := Addr(runID, self)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("scm: task %d: bind %q: %w", self, addr, err)
	}
	return newTransport(runID, self, fd, opts), nil
}

// Adopt takes over fd, an endpoint made by Open for task self of run
// runID (typically by the coordinator, and inherited across exec). It
// checks that fd is a unix datagram socket bound to Addr(runID, self),
// sets CLOEXEC and O_NONBLOCK on it (the latter on the shared open file
// description) and moves it above Options.FDFloor. On success the
// Transport owns fd; on failure the caller still does.
func Adopt(fd int, runID string, self uint32, opts Options) (*Transport, error) {
	if err := CheckRunID(runID); err != nil {
		return nil, err
	}
	fail := func(format string, args ...any) (*Transport, error) {
		return nil, fmt.Errorf("scm: task %d: adopt fd %d: %s", self, fd, fmt.Sprintf(format, args...))
	}
	if fd < 0 {
		return fail("not a valid fd")
	}
	if dom, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil {
		return fail("not a socket: %v", err)
	} else if dom != unix.AF_UNIX {
		return fail("socket domain %d, want AF_UNIX", dom)
	}
	if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
		return fail("SO_TYPE: %v", err)
	} else if typ != unix.SOCK_DGRAM {
		return fail("socket type %d, want SOCK_DGRAM", typ)
	}
	want := Addr(runID, self)
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname: %v", err)
	}
	if su, ok := sa.(*unix.SockaddrUnix); !ok || su.Name != want {
		return fail("bound to %s, want %q", describeAddr(sa), want)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return fail("set FD_CLOEXEC: %v", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return fail("set O_NONBLOCK: %v", err)
	}
	nfd, err := moveAbove(fd, opts.FDFloor)
	if err != nil {
		return fail("%v", err)
	}
	return newTransport(runID, self, nfd, opts), nil
}

func newTransport(runID string, self uint32, fd int, opts Options) *Transport {
	return &Transport{
		runID: runID,
		self:  self,
		fd:    fd,
		floor: opts.FDFloor,
		dests: make(map[uint32]*dest),
		rbuf:  make([]byte, maxDatagram),
		roob:  make([]byte, unix.CmsgSpace(4*MaxFDs)),
	}
}

// newSocket makes a CLOEXEC, NONBLOCK unix datagram socket at or above
// floor.
func newSocket(floor int) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	return moveAbove(fd, floor)
}

// moveAbove moves fd to the lowest free number >= floor (keeping it
// CLOEXEC) unless it already is at or above it. On failure fd is closed.
func moveAbove(fd, floor int) (int, error) {
	if floor <= 0 || fd >= floor {
		return fd, nil
	}
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, floor)
	unix.Close(fd)
	if err != nil {
		return -1, fmt.Errorf("move fd %d to >= %d: %w", fd, floor, err)
	}
	return nfd, nil
}

// FD returns the receive socket. It is readable (POLLIN) when messages
// have arrived. Do not close it; use Close.
func (t *Transport) FD() int { return t.fd }

// Self returns the task this endpoint belongs to.
func (t *Transport) Self() uint32 { return t.self }

// RunID returns the run this endpoint belongs to.
func (t *Transport) RunID() string { return t.runID }

// Close closes the receive socket and every sender socket and drops all
// unsent messages. It does not close queued fds (they belong to the
// caller). Closing twice is a no-op.
func (t *Transport) Close() error {
	if t.closed {
		return nil
	}
	t.closed = true
	var errs []error
	if err := unix.Close(t.fd); err != nil {
		errs = append(errs, fmt.Errorf("scm: task %d: close receive socket: %w", t.self, err))
	}
	for _, d := range t.dests {
		if d.sock >= 0 {
			if err := unix.Close(d.sock); err != nil {
				errs = append(errs, fmt.Errorf("scm: task %d: close sender socket for task %d: %w", t.self, d.id, err))
			}
			d.sock = -1
		}
	}
	t.fd = -1
	t.dests, t.active, t.batching = nil, nil, nil
	t.npackets, t.nbatched = 0, 0
	return errors.Join(errs...)
}

// dest returns the send state for dst, or the sticky error of dst.
func (t *Transport) dest(dst uint32) (*dest, error) {
	if t.closed {
		return nil, ErrClosed
	}
	d := t.dests[dst]
	if d == nil {
		d = &dest{id: dst, sock: -1}
		t.dests[dst] = d
	}
	return d, d.err
}

// Queue adds fd, for the receiver's key, to the open batch for task dst.
// Every MaxFDs queued fds become one KindFDs message; Flush packs the rest.
// The fd is not duplicated: keep it open until Pending reports false.
func (t *Transport) Queue(dst uint32, key uint32, fd int) error {
	d, err := t.dest(dst)
	if err != nil {
		return err
	}
	if fd < 0 {
		return fmt.Errorf("scm: task %d -> task %d: queue key %d: invalid fd %d", t.self, dst, key, fd)
	}
	d.keys = append(d.keys, key)
	d.fds = append(d.fds, fd)
	t.nbatched++
	if !d.batching {
		d.batching = true
		t.batching = append(t.batching, d)
	}
	if len(d.fds) == MaxFDs {
		t.closeBatch(d)
	}
	return nil
}

// closeBatch turns the open batch of d into a packet.
func (t *Transport) closeBatch(d *dest) {
	if len(d.fds) == 0 {
		return
	}
	t.push(d, packet{
		kind: KindFDs,
		body: encodeMessage(KindFDs, t.self, d.keys, nil),
		oob:  unix.UnixRights(d.fds...),
		nfds: len(d.fds),
	})
	t.nbatched -= len(d.fds)
	d.keys, d.fds = d.keys[:0], d.fds[:0]
}

func (t *Transport) push(d *dest, p packet) {
	d.out = append(d.out, p)
	t.npackets++
	if !d.active {
		d.active = true
		t.active = append(t.active, d)
	}
}

// Post appends an fd-less message of the given kind and data to the
// outbox of task dst, after everything queued for dst so far. It is sent
// by the next Flush or TrySend.
func (t *Transport) Post(dst uint32, kind Kind, data []byte) error {
	return t.PostMessage(dst, Message{Kind: kind, Data: data})
}

// PostMessage appends m to the outbox of task dst, after everything queued
// for dst so far (it closes dst's open batch first). m.From is ignored.
// m's fds, like queued ones, must stay open until Pending reports false.
// m is copied; the caller may reuse its slices.
func (t *Transport) PostMessage(dst uint32, m Message) error {
	if err := m.check(); err != nil {
		return fmt.Errorf("scm: task %d -> task %d: post: %w", t.self, dst, err)
	}
	d, err := t.dest(dst)
	if err != nil {
		return err
	}
	t.closeBatch(d)
	p := packet{kind: m.Kind, body: encodeMessage(m.Kind, t.self, m.Keys, m.Data), nfds: len(m.FDs)}
	if len(m.FDs) > 0 {
		p.oob = unix.UnixRights(m.FDs...)
	}
	t.push(d, p)
	return nil
}

// Pending reports whether anything queued or posted has not been handed
// to the kernel yet (including fds queued since the last Flush).
func (t *Transport) Pending() bool { return t.npackets+t.nbatched > 0 }

// Flush closes the open batch of every destination and then sends as much
// as the receivers accept, like TrySend. It never blocks.
func (t *Transport) Flush() error {
	if t.closed {
		return ErrClosed
	}
	for _, d := range t.batching {
		d.batching = false
		t.closeBatch(d)
	}
	t.batching = t.batching[:0]
	return t.TrySend()
}

// TrySend sends packed messages, in order per destination, until every
// outbox is empty or its receiver's queue is full (EAGAIN). It never
// blocks. It does not pack open batches (Flush does). The errors of all
// destinations that failed are joined; each is a *SendError, and a failed
// destination's outbox is dropped.
func (t *Transport) TrySend() error {
	if t.closed {
		return ErrClosed
	}
	var errs []error
	keep := t.active[:0]
	for _, d := range t.active {
		if err := t.sendDest(d); err != nil {
			errs = append(errs, err)
		}
		if d.head < len(d.out) {
			keep = append(keep, d)
		} else {
			d.active = false
		}
	}
	clear(t.active[len(keep):])
	t.active = keep
	return errors.Join(errs...)
}

// sendDest sends d's outbox until it is empty or EAGAIN.
func (t *Transport) sendDest(d *dest) error {
	if d.err != nil {
		return d.err
	}
	if d.sock < 0 {
		if err := t.dial(d); err != nil {
			t.fail(d, &SendError{From: t.self, To: d.id, Op: "dial", Err: err})
			return d.err
		}
	}
	for d.head < len(d.out) {
		p := &d.out[d.head]
		_, err := unix.SendmsgN(d.sock, p.body, p.oob, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			t.fail(d, &SendError{From: t.self, To: d.id, Op: "send", Kind: p.kind, FDs: p.nfds, Err: err})
			return d.err
		}
		*p = packet{}
		d.head++
		t.npackets--
	}
	if d.head == len(d.out) {
		d.out, d.head = d.out[:0], 0
	} else if d.head >= 64 && 2*d.head >= len(d.out) {
		n := copy(d.out, d.out[d.head:])
		clear(d.out[n:])
		d.out, d.head = d.out[:n], 0
	}
	return nil
}

// dial creates d's sender socket: bound to its sender name and connected
// to the destination's receive address.
func (t *Transport) dial(d *dest) error {
	fd, err := newSocket(t.floor)
	if err != nil {
		return err
	}
	name := senderAddr(t.runID, t.self, d.id)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: name}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("bind sender socket %q: %w", name, err)
	}
	to := Addr(t.runID, d.id)
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: to}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("connect to %q: %w", to, err)
	}
	d.sock = fd
	return nil
}

// fail records a permanent failure of d and drops its outbox.
func (t *Transport) fail(d *dest, err error) {
	d.err = err
	t.npackets -= len(d.out) - d.head
	t.nbatched -= len(d.fds)
	d.out, d.head = nil, 0
	d.keys, d.fds = nil, nil
	if d.sock >= 0 {
		unix.Close(d.sock)
		d.sock = -1
	}
}

// PollFDs appends to buf the fds to poll for progress: the receive socket
// for POLLIN, and for POLLOUT the sender socket of every destination with
// unsent messages. After a poll, call Drain and TrySend.
func (t *Transport) PollFDs(buf []unix.PollFd) []unix.PollFd {
	if t.closed {
		return buf
	}
	buf = append(buf, unix.PollFd{Fd: int32(t.fd), Events: unix.POLLIN})
	for _, d := range t.active {
		if d.sock >= 0 && d.head < len(d.out) {
			buf = append(buf, unix.PollFd{Fd: int32(d.sock), Events: unix.POLLOUT})
		}
	}
	return buf
}

// Wait sleeps until messages have arrived, a destination with unsent
// messages can take more, one of extra is ready (its Revents are set in
// place), or the deadline passes (an error wrapping ErrTimeout). It does
// not flush open batches. It returns at once if an outbox has not been
// tried yet. After it returns, call Drain and TrySend.
func (t *Transport) Wait(deadline time.Time, extra ...unix.PollFd) error {
	if t.closed {
		return ErrClosed
	}
	for _, d := range t.active {
		if d.sock < 0 && d.err == nil && d.head < len(d.out) {
			return nil // never tried: TrySend can make progress now
		}
	}
	pfds := t.PollFDs(t.pollbuf[:0])
	nown := len(pfds)
	pfds = append(pfds, extra...)
	t.pollbuf = pfds[:0]
	_, err := wait(deadline, func() string { return t.describeWait(len(extra)) }, pfds)
	copy(extra, pfds[nown:])
	return err
}

func (t *Transport) describeWait(nextra int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "messages to task %d", t.self)
	var blocked []string
	for _, d := range t.active {
		if d.head < len(d.out) {
			blocked = append(blocked, fmt.Sprintf("task %d (%d messages)", d.id, len(d.out)-d.head))
		}
	}
	if len(blocked) > 0 {
		fmt.Fprintf(&b, " or room to send to %s", strings.Join(blocked, ", "))
	}
	if nextra > 0 {
		fmt.Fprintf(&b, " or %d other fds", nextra)
	}
	return b.String()
}

// Drain receives every message that has arrived, without blocking, and
// calls fn for each valid one in arrival order. The received fds are
// CLOEXEC raw descriptors owned by fn from the moment it is called (also
// if it returns an error). Drain stops at the first error: an error from
// fn (wrapped), a failed recvmsg, or an invalid datagram (an error wrapping
// ErrProtocol; the fds that came with it are closed). Messages behind the
// one that failed stay queued.
func (t *Transport) Drain(fn func(Message) error) error {
	for {
		if t.closed {
			return ErrClosed
		}
		n, oobn, rflags, from, err := unix.Recvmsg(t.fd, t.rbuf, t.roob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return nil
		}
		if err != nil {
			return fmt.Errorf("scm: task %d: recvmsg: %w", t.self, err)
		}
		m, err := t.accept(t.rbuf[:n], t.roob[:oobn], rflags, from)
		if err != nil {
			return err
		}
		if err := fn(m); err != nil {
			return fmt.Errorf("scm: task %d: handling %s message from task %d (%d fds): %w", t.self, m.Kind, m.From, len(m.FDs), err)
		}
	}
}

// accept validates one received datagram. On failure it closes the fds
// that came with it.
func (t *Transport) accept(body, oob []byte, rflags int, from unix.Sockaddr) (Message, error) {
	fds, cerr := parseRights(oob)
	m, err := func() (Message, error) {
		if rflags&unix.MSG_CTRUNC != 0 {
			return Message{}, errors.New("control data truncated (fds were lost)")
		}
		if rflags&unix.MSG_TRUNC != 0 {
			return Message{}, fmt.Errorf("datagram longer than %d bytes", len(t.rbuf))
		}
		if cerr != nil {
			return Message{}, cerr
		}
		m, err := decodeMessage(body, len(fds))
		if err != nil {
			return Message{}, err
		}
		want := senderAddr(t.runID, m.From, t.self)
		if su, ok := from.(*unix.SockaddrUnix); !ok || su.Name != want {
			return Message{}, fmt.Errorf("claims to be from task %d, whose sender socket is %q", m.From, want)
		}
		return m, nil
	}()
	if err != nil {
		closeFDs(fds)
		return Message{}, fmt.Errorf("scm: task %d: rejected datagram from %s (%d bytes, %d fds closed): %v: %w",
			t.self, describeAddr(from), len(body), len(fds), err, ErrProtocol)
	}
	if len(fds) > 0 {
		m.FDs = fds
	}
	return m, nil
}

// parseRights returns every fd in the SCM_RIGHTS messages of oob, and an
// error if oob holds anything else. It collects the fds of every
// well-formed SCM_RIGHTS message even when another part is bad, so that the
// caller can close them.
func parseRights(oob []byte) ([]int, error) {
	var fds []int
	var bad error
	nmsgs := 0
	for len(oob) > 0 {
		hdr, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return fds, fmt.Errorf("unparsable control data: %v", err)
		}
		oob = rest
		nmsgs++
		if hdr.Level != unix.SOL_SOCKET || hdr.Type != unix.SCM_RIGHTS {
			bad = fmt.Errorf("unexpected control message level %d type %d", hdr.Level, hdr.Type)
			continue
		}
		got, err := unix.ParseUnixRights(&unix.SocketControlMessage{Header: hdr, Data: data})
		if err != nil {
			bad = fmt.Errorf("bad SCM_RIGHTS message: %v", err)
			continue
		}
		fds = append(fds, got...)
	}
	if nmsgs > 1 && bad == nil {
		bad = fmt.Errorf("%d control messages, want one", nmsgs)
	}
	return fds, bad
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

func describeAddr(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case nil:
		return "an unnamed socket"
	case *unix.SockaddrUnix:
		if a.Name == "" {
			return "an unnamed socket"
		}
		return fmt.Sprintf("%q", a.Name)
	default:
		return fmt.Sprintf("%T", sa)
	}
}
