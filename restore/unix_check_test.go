package restore_test

import (
	"bytes"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Checks of restored unix sockets from outside, on fds duplicated into the
// test with pidfd_getfd.

func (c *checker) sockType(r ref) int {
	c.t.Helper()
	v, err := unix.GetsockoptInt(c.getfd(r), unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		c.t.Fatalf("%s: SO_TYPE: %v", r, err)
	}
	return v
}

func (c *checker) sockOpt(r ref, opt int) int {
	c.t.Helper()
	v, err := unix.GetsockoptInt(c.getfd(r), unix.SOL_SOCKET, opt)
	if err != nil {
		c.t.Fatalf("%s: getsockopt %d: %v", r, opt, err)
	}
	return v
}

// sockName returns getsockname (abstract names with a leading '@'), or
// "" for an unnamed socket.
func (c *checker) sockName(r ref) string {
	c.t.Helper()
	name, err := rawName(unix.SYS_GETSOCKNAME, c.getfd(r))
	if err != nil {
		c.t.Fatalf("%s: getsockname: %v", r, err)
	}
	return name
}

// rawName calls getsockname or getpeername and returns the name exactly:
// "" for an unnamed socket, a leading '@' for an abstract one.
func rawName(nr uintptr, fd int) (string, error) {
	var sa unix.RawSockaddrUnix
	l := uint32(unsafe.Sizeof(sa))
	_, _, errno := unix.Syscall(nr, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)))
	if errno != 0 {
		return "", errno
	}
	n := int(l) - 2
	if n <= 0 {
		return "", nil
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(sa.Path[i])
	}
	if b[0] == 0 {
		return "@" + string(b[1:]), nil
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b), nil
}

// peerName returns getpeername's name, or the error.
func (c *checker) peerName(r ref) (string, error) {
	c.t.Helper()
	return rawName(unix.SYS_GETPEERNAME, c.getfd(r))
}

// wantSock checks type, names and SO_ACCEPTCONN of one socket. peer "-"
// means not connected (ENOTCONN).
func (c *checker) wantSock(r ref, typ int, name, peer string, listening bool) {
	c.t.Helper()
	if got := c.sockType(r); got != typ {
		c.t.Errorf("%s: SO_TYPE %d, want %d", r, got, typ)
	}
	if got := c.sockName(r); got != name {
		c.t.Errorf("%s: getsockname %q, want %q", r, got, name)
	}
	got, err := c.peerName(r)
	switch {
	case peer == "-" && err != unix.ENOTCONN:
		c.t.Errorf("%s: getpeername %q, %v; want ENOTCONN", r, got, err)
	case peer != "-" && (err != nil || got != peer):
		c.t.Errorf("%s: getpeername %q, %v; want %q", r, got, err, peer)
	}
	acc := c.sockOpt(r, unix.SO_ACCEPTCONN) != 0
	if acc != listening {
		c.t.Errorf("%s: SO_ACCEPTCONN %v, want %v", r, acc, listening)
	}
}

// recvAll reads what is queued on r without blocking: one message per
// recvmsg. It fails the test on control data.
func (c *checker) recvAll(r ref) [][]byte {
	c.t.Helper()
	fd := c.getfd(r)
	var out [][]byte
	buf := make([]byte, 1<<20)
	oob := make([]byte, 256)
	for {
		n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_DONTWAIT)
		if err == unix.EAGAIN {
			return out
		}
		if err != nil {
			c.t.Fatalf("%s: recvmsg: %v", r, err)
		}
		if oobn != 0 {
			c.t.Errorf("%s: unexpected control data (%d bytes)", r, oobn)
		}
		if n == 0 && c.sockType(r) == unix.SOCK_STREAM {
			return out // EOF
		}
		out = append(out, append([]byte(nil), buf[:n]...))
	}
}

// wantMessages checks the queue of r message by message (datagram and
// seqpacket), and that nothing follows.
func (c *checker) wantMessages(r ref, want ...string) {
	c.t.Helper()
	got := c.recvAll(r)
	var gs []string
	for _, g := range got {
		gs = append(gs, string(g))
	}
	if strings.Join(gs, "|") != strings.Join(want, "|") || len(gs) != len(want) {
		c.t.Errorf("%s: queued messages %q, want %q", r, gs, want)
	}
}

// wantStream checks the bytes queued on stream socket r.
func (c *checker) wantStream(r ref, want string) {
	c.t.Helper()
	got := bytes.Join(c.recvAll(r), nil)
	if string(got) != want {
		c.t.Errorf("%s: queued %q, want %q", r, got, want)
	}
}

// send writes data on r (MSG_NOSIGNAL) and returns the error.
func (c *checker) send(r ref, data string) error {
	c.t.Helper()
	_, err := unix.SendmsgN(c.getfd(r), []byte(data), nil, nil, unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
	return err
}

// linked checks that data sent on a arrives on b.
func (c *checker) linked(a, b ref) {
	c.t.Helper()
	msg := "probe-" + a.String()
	if err := c.send(a, msg); err != nil {
		c.t.Errorf("send on %s: %v", a, err)
		return
	}
	got := c.recvWait(b)
	if got != msg {
		c.t.Errorf("sent %q on %s, got %q on %s", msg, a, got, b)
	}
}

// recvWait receives one message on r, waiting up to a second.
func (c *checker) recvWait(r ref) string {
	c.t.Helper()
	fd := c.getfd(r)
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	unix.Poll(pfd, int(time.Second/time.Millisecond))
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
	if err != nil {
		c.t.Errorf("%s: recv: %v", r, err)
		return ""
	}
	return string(buf[:n])
}

// sockFD is a wantFD for a socket of its own description: O_RDWR (plus
// extra status flags), no FD_CLOEXEC unless ce.
func sockFD(task uint32, fd int, obj string, extra int, ce bool) wantFD {
	return wantFD{ref{task, fd}, rdwr | extra, ce, -1, obj, obj, "socket:[*"}
}
