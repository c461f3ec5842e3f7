package main

import (
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Unix socket helpers for the unix scenarios.

// Abstract returns an abstract socket name (leading NUL) unique to this
// run of the scenario: it is derived from the work directory, which stays
// the same across dumps and restores, so parallel runs never collide.
func (t *T) Abstract(suffix string) string {
	h := fnv.New64a()
	h.Write([]byte(t.Dir))
	return fmt.Sprintf("\x00zdtm-%x-%s-%s", h.Sum64(), t.Sc.Name, suffix)
}

// SockAddr is a unix address of name (abstract names begin with NUL).
func SockAddr(name string) *unix.SockaddrUnix { return &unix.SockaddrUnix{Name: name} }

// SocketAt creates a unix socket of type typ at fd target.
func (t *T) SocketAt(typ, target int) error {
	s, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	if s, err = t.hi(s); err != nil {
		return err
	}
	return t.Place(s, target)
}

// ListenAt makes fd target a unix stream socket listening at name.
func (t *T) ListenAt(name string, backlog, target int) error {
	if err := t.SocketAt(unix.SOCK_STREAM, target); err != nil {
		return err
	}
	if err := unix.Bind(target, SockAddr(name)); err != nil {
		return fmt.Errorf("bind %s: %w", ShowName(name), err)
	}
	return unix.Listen(target, backlog)
}

// ConnectAt makes fd target a unix stream socket connected to name.
func (t *T) ConnectAt(name string, target int) error {
	if err := t.SocketAt(unix.SOCK_STREAM, target); err != nil {
		return err
	}
	return unix.Connect(target, SockAddr(name))
}

// AcceptAt accepts a connection on listener l at fd target.
func (t *T) AcceptAt(l, target int) error {
	a, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		return err
	}
	if a, err = t.hi(a); err != nil {
		return err
	}
	return t.Place(a, target)
}

// PairAt creates a socketpair of type typ with its ends at a and b.
func (t *T) PairAt(typ, a, b int) error {
	ha, hb, err := t.Pair(typ)
	if err != nil {
		return err
	}
	if err := t.Place(ha, a); err != nil {
		return err
	}
	return t.Place(hb, b)
}

// Pair returns a socketpair above the service floor (close-on-exec), for
// sockets that are not part of the fd table (in flight, peers closed).
func (t *T) Pair(typ int) (int, int, error) {
	sp, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, -1, fmt.Errorf("socketpair: %w", err)
	}
	a, err := t.hi(sp[0])
	if err != nil {
		return -1, -1, err
	}
	b, err := t.hi(sp[1])
	return a, b, err
}

// Send sends one message (one datagram or record) without SIGPIPE.
func Send(fd int, msg string) error {
	deadline := time.Now().Add(ioTimeout)
	for {
		err := unix.Sendto(fd, []byte(msg), unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT, nil)
		if errors.Is(err, unix.EAGAIN) {
			if err := pollFd(fd, unix.POLLOUT, deadline); err != nil {
				return err
			}
			continue
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("send on fd %d: %w", fd, err)
		}
		return nil
	}
}

// Recv receives one message (up to 64 KiB) and the fds it carries.
func Recv(fd int) ([]byte, []int, error) {
	deadline := time.Now().Add(ioTimeout)
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(64*4))
	for {
		if err := pollIn(fd, deadline); err != nil {
			return nil, nil, err
		}
		n, oobn, fl, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("recvmsg fd %d: %w", fd, err)
		}
		var fds []int
		if oobn > 0 {
			msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil {
				return nil, nil, fmt.Errorf("fd %d: control data: %w", fd, err)
			}
			for _, m := range msgs {
				if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_RIGHTS {
					f, err := unix.ParseUnixRights(&m)
					if err != nil {
						return nil, nil, err
					}
					fds = append(fds, f...)
				}
			}
		}
		if fl&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
			return buf[:n], fds, fmt.Errorf("fd %d: message truncated (flags %#x)", fd, fl)
		}
		return buf[:n], fds, nil
	}
}

// CheckRecv receives one message on fd and checks it is want, with no
// fds.
func (t *T) CheckRecv(fd int, want string) {
	got, fds, err := Recv(fd)
	for _, f := range fds {
		unix.Close(f)
	}
	if !t.Check(err, fmt.Sprintf("fd %d: receive %q", fd, want)) {
		return
	}
	if string(got) != want {
		t.Fail("fd %d: received %q, want %q", fd, got, want)
	}
	if len(fds) > 0 {
		t.Fail("fd %d: %q came with %d unexpected fds", fd, want, len(fds))
	}
}

// CheckStream reads exactly len(want) bytes of stream fd and compares.
func (t *T) CheckStream(fd int, want string) {
	got, err := ReadFull(fd, len(want))
	if t.Check(err, fmt.Sprintf("fd %d: read %q", fd, want)) && string(got) != want {
		t.Fail("fd %d: read %q, want %q", fd, got, want)
	}
}

// CheckEOF checks that a read on fd returns 0 at once (or after the
// deadline's poll).
func (t *T) CheckEOF(fd int) {
	if err := pollIn(fd, time.Now().Add(ioTimeout)); err != nil {
		t.Fail("fd %d: want EOF: %v", fd, err)
		return
	}
	b := make([]byte, 64)
	n, err := unix.Read(fd, b)
	if err != nil || n != 0 {
		t.Fail("fd %d: read %q (%v), want EOF", fd, b[:max(n, 0)], err)
	}
}

// CheckEPIPE checks that sending on fd fails with EPIPE.
func (t *T) CheckEPIPE(fd int) {
	err := unix.Sendto(fd, []byte("x"), unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT, nil)
	if !errors.Is(err, unix.EPIPE) {
		t.Fail("fd %d: send gave %v, want EPIPE", fd, err)
	}
}

// CheckPingPong sends a message each way between a and b (connected
// sockets of the same task) and checks both arrive.
func (t *T) CheckPingPong(a, b int) {
	for _, p := range [][2]int{{a, b}, {b, a}} {
		msg := fmt.Sprintf("ping %d->%d", p[0], p[1])
		if t.Check(Send(p[0], msg), "ping") {
			t.CheckRecv(p[1], msg)
		}
	}
}

// SockName returns fd's own name (or its peer's) exactly, shown the way
// ss does: "" for unnamed, @name for abstract names (x/sys's Getsockname
// cannot tell unnamed sockets from abstract names).
func SockName(fd int, peer bool) (string, error) {
	var sa unix.RawSockaddrUnix
	l := uint32(unsafe.Sizeof(sa))
	call := uintptr(unix.SYS_GETSOCKNAME)
	if peer {
		call = unix.SYS_GETPEERNAME
	}
	_, _, e := unix.Syscall(call, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)))
	if e != 0 {
		return "", e
	}
	if sa.Family != unix.AF_UNIX {
		return "", fmt.Errorf("fd %d: family %d, not AF_UNIX", fd, sa.Family)
	}
	n := int(l) - 2
	if n <= 0 {
		return "", nil
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(sa.Path[i])
	}
	if b[0] != 0 {
		return strings.TrimRight(string(b), "\x00"), nil
	}
	return ShowName(string(b)), nil
}

// ShowName shows a socket name the way ss does.
func ShowName(name string) string {
	if strings.HasPrefix(name, "\x00") {
		return "@" + name[1:]
	}
	return name
}

// CheckSock checks fd's type, listening state, own name and peer name
// ("-" for no peer, ENOTCONN).
func (t *T) CheckSock(fd, typ int, listening bool, name, peer string) {
	t.CheckType(fd, "socket:")
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || v != typ {
		t.Fail("fd %d: SO_TYPE %d (%v), want %d", fd, v, err, typ)
	}
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || (v != 0) != listening {
		t.Fail("fd %d: SO_ACCEPTCONN %d (%v), want %v", fd, v, err, listening)
	}
	if got, err := SockName(fd, false); err != nil || got != ShowName(name) {
		t.Fail("fd %d: name %q (%v), want %q", fd, got, err, ShowName(name))
	}
	got, perr := SockName(fd, true)
	if peer == "-" {
		if !errors.Is(perr, unix.ENOTCONN) {
			t.Fail("fd %d: peer %q (%v), want none (ENOTCONN)", fd, got, perr)
		}
	} else if perr != nil || got != ShowName(peer) {
		t.Fail("fd %d: peer %q (%v), want %q", fd, got, perr, ShowName(peer))
	}
}

// CheckPeers checks that a and b (fds of this task) are each other's
// peer: a message from a arrives at b and the other way round, and
// nothing else was queued before it.
func (t *T) CheckPeers(a, b int) { t.CheckPingPong(a, b) }

// CheckQueueEmpty checks that nothing is queued on fd.
func (t *T) CheckQueueEmpty(fd int) {
	b := make([]byte, 1)
	n, _, err := unix.Recvfrom(fd, b, unix.MSG_PEEK|unix.MSG_DONTWAIT)
	if err == nil && n > 0 {
		t.Fail("fd %d: unexpected data queued", fd)
	}
}

// CheckBytes compares received bytes.
func (t *T) CheckBytes(what string, got []byte, want string) {
	if !bytes.Equal(got, []byte(want)) {
		t.Fail("%s: %q, want %q", what, got, want)
	}
}
