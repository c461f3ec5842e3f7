package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// TCP scenarios. They run in a network namespace of their own (the ns
// flavor, or a fresh one without C/R) and bring lo up themselves; every
// address is on loopback.

var lo4 = [4]byte{127, 0, 0, 1}

func tcpLoUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	ifr.SetUint16(unix.IFF_UP | unix.IFF_LOOPBACK | unix.IFF_RUNNING)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	return nil
}

func sa4(port int) unix.Sockaddr { return &unix.SockaddrInet4{Port: port, Addr: lo4} }

func sa6(port int) unix.Sockaddr {
	a := &unix.SockaddrInet6{Port: port}
	a.Addr[15] = 1
	return a
}

// sockAt creates a socket in the service area (close-on-exec), optionally
// bound.
func (t *T) sockAt(family, typ int, bind unix.Sockaddr, reuse bool) (int, error) {
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if fd, err = t.hi(fd); err != nil {
		return -1, err
	}
	if reuse {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return -1, err
		}
	}
	if bind != nil {
		if err := unix.Bind(fd, bind); err != nil {
			return -1, fmt.Errorf("bind %s: %w", saString(bind), err)
		}
	}
	return fd, nil
}

// acceptHi accepts a connection within the I/O deadline.
func (t *T) acceptHi(l int) (int, error) {
	if err := pollIn(l, time.Now().Add(ioTimeout)); err != nil {
		return -1, fmt.Errorf("accept: %w", err)
	}
	fd, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("accept: %w", err)
	}
	return t.hi(fd)
}

// tcpListen listens on 127.0.0.1:port (SO_REUSEADDR) with backlog.
func (t *T) tcpListen(port, backlog int) (int, error) {
	l, err := t.sockAt(unix.AF_INET, unix.SOCK_STREAM, sa4(port), true)
	if err != nil {
		return -1, err
	}
	return l, unix.Listen(l, backlog)
}

// tcpDial connects a socket bound to bind (nil: any) to 127.0.0.1:port.
func (t *T) tcpDial(bind unix.Sockaddr, port int) (int, error) {
	c, err := t.sockAt(unix.AF_INET, unix.SOCK_STREAM, bind, false)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(c, sa4(port)); err != nil {
		return -1, fmt.Errorf("connect: %w", err)
	}
	return c, nil
}

// tcpSmallMSS: segments much smaller than the windows, so that a sender
// fills every window to zero instead of waiting for a full one.
const tcpSmallMSS = 1400

// tcpListenSmall listens on 127.0.0.1:port with backlog 1 and the small
// MSS.
func (t *T) tcpListenSmall(port int) (int, error) {
	l, err := t.sockAt(unix.AF_INET, unix.SOCK_STREAM, sa4(port), true)
	if err != nil {
		return -1, err
	}
	if err := unix.SetsockoptInt(l, unix.SOL_TCP, unix.TCP_MAXSEG, tcpSmallMSS); err != nil {
		return -1, err
	}
	return l, unix.Listen(l, 1)
}

// tcpDialSmall connects to 127.0.0.1:port with a 64 KiB receive buffer
// and the small MSS.
func (t *T) tcpDialSmall(port int) (int, error) {
	c, err := t.sockAt(unix.AF_INET, unix.SOCK_STREAM, nil, false)
	if err != nil {
		return -1, err
	}
	unix.SetsockoptInt(c, unix.SOL_SOCKET, unix.SO_RCVBUF, 64<<10)
	if err := unix.SetsockoptInt(c, unix.SOL_TCP, unix.TCP_MAXSEG, tcpSmallMSS); err != nil {
		return -1, err
	}
	if err := unix.Connect(c, sa4(port)); err != nil {
		return -1, fmt.Errorf("connect: %w", err)
	}
	return c, nil
}

// spawnExt starts role "launcher" and reaps it: the client it started
// (extRoles' ext, or tcp-veth's) is nobody's child in the tree.
func (t *T) spawnExt() error {
	p, err := t.Spawn("launcher", nil)
	if err != nil {
		return err
	}
	return waitExit(p.Pid)
}

// extRoles are a launcher that exits after starting ext, and ext: a
// client outside the tree that connects to 127.0.0.1:port, sends hello
// and answers "ping" with "pong" (extEcho).
func extRoles(port int, hello string) (launcher, ext *Role) {
	launcher = &Role{
		Fds:            std(),
		ExitAfterSetup: true,
		Setup: func(t *T) error {
			_, err := t.Spawn("ext", nil)
			return err
		},
	}
	ext = &Role{
		Fds: std(3),
		Setup: func(t *T) error {
			c, err := t.tcpDial(nil, port)
			if err != nil {
				return err
			}
			if err := WriteAll(c, []byte(hello)); err != nil {
				return err
			}
			if err := t.Place(c, 3); err != nil {
				return err
			}
			go extEcho(3)
			return nil
		},
	}
	return launcher, ext
}

func saString(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return fmt.Sprintf("%d.%d.%d.%d:%d", a.Addr[0], a.Addr[1], a.Addr[2], a.Addr[3], a.Port)
	case *unix.SockaddrInet6:
		var parts []string
		for i := 0; i < 16; i += 2 {
			parts = append(parts, strconv.FormatUint(uint64(a.Addr[i])<<8|uint64(a.Addr[i+1]), 16))
		}
		return "[" + strings.Join(parts, ":") + "]:" + itoa(a.Port)
	case *unix.SockaddrUnix:
		return ShowName(a.Name)
	case nil:
		return "none"
	}
	return "?"
}

// CheckAddrs checks an inet socket's local and peer addresses (peer nil:
// not connected).
func (t *T) CheckAddrs(fd int, local, peer unix.Sockaddr) {
	t.CheckType(fd, "socket:")
	if sa, err := unix.Getsockname(fd); err != nil || saString(sa) != saString(local) {
		t.Fail("fd %d: local address %s (%v), want %s", fd, saString(sa), err, saString(local))
	}
	sa, err := unix.Getpeername(fd)
	switch {
	case peer == nil && err != unix.ENOTCONN:
		t.Fail("fd %d: peer %s (%v), want not connected", fd, saString(sa), err)
	case peer != nil && (err != nil || saString(sa) != saString(peer)):
		t.Fail("fd %d: peer %s (%v), want %s", fd, saString(sa), err, saString(peer))
	}
}

// CheckSockopt checks an integer socket option.
func (t *T) CheckSockopt(fd, level, opt, want int, name string) {
	v, err := unix.GetsockoptInt(fd, level, opt)
	if err != nil || v != want {
		t.Fail("fd %d: %s %d (%v), want %d", fd, name, v, err, want)
	}
}

// CheckTCPState checks the TCP state (TCP_INFO).
func (t *T) CheckTCPState(fd int, want uint8) {
	info, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO)
	if err != nil || info.State != want {
		t.Fail("fd %d: TCP state %d (%v), want %d", fd, info.State, err, want)
	}
}

// exchange reads the recorded unread bytes, then sends mine and reads
// theirs: data both ways after the restore.
func (t *T) exchange(fd int, unread string, mine, theirs string) {
	if unread != "" {
		got, err := ReadFull(fd, len(unread))
		if t.Check(err, fmt.Sprintf("fd %d: recorded unread bytes", fd)) {
			t.CheckData(fmt.Sprintf("fd %d: recorded unread bytes", fd), got, []byte(unread))
		}
	}
	if !t.Check(WriteAll(fd, []byte(mine)), fmt.Sprintf("fd %d: send", fd)) {
		return
	}
	got, err := ReadFull(fd, len(theirs))
	if t.Check(err, fmt.Sprintf("fd %d: receive after restore", fd)) {
		t.CheckData(fmt.Sprintf("fd %d: data after restore", fd), got, []byte(theirs))
	}
}

// checkNewConn connects to the listener l at addr and accepts: it is
// live.
func (t *T) checkNewConn(l, family int, addr unix.Sockaddr) {
	c, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if !t.Check(err, "socket") {
		return
	}
	defer unix.Close(c)
	if !t.Check(unix.Connect(c, addr), "connect to the restored listener "+saString(addr)) {
		return
	}
	if err := pollIn(l, time.Now().Add(ioTimeout)); !t.Check(err, "accept on the restored listener") {
		return
	}
	a, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if t.Check(err, "accept on the restored listener") {
		unix.Close(a)
	}
}

// tcp-pair: a listener (fd 3, 127.0.0.1:7100, SO_REUSEADDR), the
// connection accepted from it (fd 4, TCP_NODELAY, keepalive 30s) and the
// client end in the child (fd 5, bound to 40100 before connecting), with
// unread bytes both ways. After restore the recorded bytes come first,
// then data flows both ways, and the listener takes a new connection.
const (
	tcpPairToSrv = "to-srv"
	tcpPairToCli = "hello-clnt\n"
)

func init() {
	register("tcp-pair", map[string]*Role{
		"root": {
			Fds:      std(3, 4),
			Children: children("client"),
			Setup: func(t *T) error {
				if err := tcpLoUp(); err != nil {
					return err
				}
				l, err := t.tcpListen(7100, 8)
				if err != nil {
					return err
				}
				if _, err := t.Spawn("client", nil); err != nil {
					return err
				}
				a, err := t.acceptHi(l)
				if err != nil {
					return err
				}
				unix.SetsockoptInt(a, unix.SOL_TCP, unix.TCP_NODELAY, 1)
				unix.SetsockoptInt(a, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
				unix.SetsockoptInt(a, unix.SOL_TCP, unix.TCP_KEEPIDLE, 30)
				if err := WriteAll(a, []byte(tcpPairToCli)); err != nil {
					return err
				}
				if err := t.Place(l, 3); err != nil {
					return err
				}
				return t.Place(a, 4)
			},
			Verify: func(t *T) {
				t.CheckAddrs(3, sa4(7100), nil)
				t.CheckSockopt(3, unix.SOL_SOCKET, unix.SO_ACCEPTCONN, 1, "SO_ACCEPTCONN")
				t.CheckSockopt(3, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, "SO_REUSEADDR")
				t.CheckAddrs(4, sa4(7100), sa4(40100))
				t.CheckTCPState(4, 1)
				t.CheckSockopt(4, unix.SOL_SOCKET, unix.SO_ACCEPTCONN, 0, "SO_ACCEPTCONN")
				t.CheckSockopt(4, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, "SO_REUSEADDR")
				t.CheckSockopt(4, unix.SOL_TCP, unix.TCP_NODELAY, 1, "TCP_NODELAY")
				t.CheckSockopt(4, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, "SO_KEEPALIVE")
				t.CheckSockopt(4, unix.SOL_TCP, unix.TCP_KEEPIDLE, 30, "TCP_KEEPIDLE")
				t.CheckSockopt(4, unix.SOL_TCP, unix.TCP_REPAIR, 0, "TCP_REPAIR")
				t.CheckFlags(4, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDWR)
				t.exchange(4, tcpPairToSrv, "s->c after", "c->s after")
				t.checkNewConn(3, unix.AF_INET, sa4(7100))
			},
		},
		"client": {
			Fds: std(5),
			Setup: func(t *T) error {
				c, err := t.tcpDial(sa4(40100), 7100)
				if err != nil {
					return err
				}
				if err := WriteAll(c, []byte(tcpPairToSrv)); err != nil {
					return err
				}
				return t.Place(c, 5)
			},
			Verify: func(t *T) {
				t.CheckAddrs(5, sa4(40100), sa4(7100))
				t.CheckTCPState(5, 1)
				t.CheckSockopt(5, unix.SOL_SOCKET, unix.SO_REUSEADDR, 0, "SO_REUSEADDR")
				t.CheckSockopt(5, unix.SOL_TCP, unix.TCP_NODELAY, 0, "TCP_NODELAY")
				t.exchange(5, tcpPairToCli, "c->s after", "s->c after")
			},
		},
	})
}

// tcp-ext: a server (listener fd 3 on 127.0.0.1:7500, connection fd 4)
// whose client lives outside the dumped tree (started through a launcher
// that exits, so the client is nobody's child in the tree). The client
// talks across every dump and restore: after restore the server reads
// the client's recorded greeting, sends "ping" and gets "pong" back, then
// shuts its side down and sees the client close. A reset anywhere fails
// it.
const tcpExtHello = "hi-from-ext"

func init() {
	launcher, ext := extRoles(7500, tcpExtHello)
	register("tcp-ext", map[string]*Role{
		"root": {
			Fds: std(3, 4),
			Setup: func(t *T) error {
				if err := tcpLoUp(); err != nil {
					return err
				}
				l, err := t.tcpListen(7500, 4)
				if err != nil {
					return err
				}
				// The launcher exits: its child, the client, leaves the
				// tree.
				if err := t.spawnExt(); err != nil {
					return err
				}
				a, err := t.acceptHi(l)
				if err != nil {
					return err
				}
				if err := t.Place(l, 3); err != nil {
					return err
				}
				return t.Place(a, 4)
			},
			Verify: func(t *T) {
				t.CheckAddrs(3, sa4(7500), nil)
				t.CheckTCPState(4, 1)
				t.CheckSockopt(4, unix.SOL_TCP, unix.TCP_REPAIR, 0, "TCP_REPAIR")
				t.exchange(4, tcpExtHello, "ping", "pong")
				if !t.Check(unix.Shutdown(4, unix.SHUT_WR), "shutdown") {
					return
				}
				rest, err := ReadToEOF(4)
				if t.Check(err, "EOF from the external client") && len(rest) > 0 {
					t.Fail("fd 4: %q before EOF", rest)
				}
			},
		},
		"launcher": launcher,
		"ext":      ext,
	})
}

// extEcho answers "ping" with "pong" until EOF, then exits; any error
// (a reset) exits with status 1 and a message in the log.
func extEcho(fd int) {
	buf := make([]byte, 64)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "tcp-ext/ext: read: %v\n", err)
			os.Exit(1)
		}
		if n == 0 {
			unix.Close(fd)
			os.Exit(0)
		}
		if bytes.Contains(buf[:n], []byte("ping")) {
			if err := WriteAll(fd, []byte("pong")); err != nil {
				fmt.Fprintf(os.Stderr, "tcp-ext/ext: write: %v\n", err)
				os.Exit(1)
			}
		}
	}
}

// waitExit reaps child pid within the I/O deadline.
func waitExit(pid int) error {
	deadline := time.Now().Add(ioTimeout)
	for {
		var ws unix.WaitStatus
		p, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if err != nil && err != unix.EINTR {
			return fmt.Errorf("wait for %d: %w", pid, err)
		}
		if p == pid {
			if !ws.Exited() || ws.ExitStatus() != 0 {
				return fmt.Errorf("process %d ended with %v", pid, ws)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d still running", pid)
		}
		sleep(time.Millisecond)
	}
}

// tcp-bufs: both directions full. The server (fd 4) and the client (fd 5,
// in the child) each write Datagen data until their socket would block,
// with the peer reading nothing: receive queues full, send queues holding
// sent-but-unacknowledged and never-sent bytes. The byte counts go to
// files in the work directory. After restore each side reads every byte
// the other wrote, in order.
// tcpFill writes Datagen(seed) data on fd until the socket would block
// and nothing moves any more, and writes the count to the file name.
func tcpFill(t *T, fd int, seed uint32, name string) error {
	if err := unix.SetNonblock(fd, true); err != nil {
		return err
	}
	total := 0
	block := Datagen(seed, 2<<20)
	for total < len(block) {
		n, err := unix.Write(fd, block[total:min(total+65536, len(block))])
		if err == unix.EAGAIN {
			// Let the kernel settle, then try once more.
			sleep(20 * time.Millisecond)
			n, err = unix.Write(fd, block[total:min(total+65536, len(block))])
			if err == unix.EAGAIN {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("fill: %w", err)
		}
		total += n
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		return err
	}
	// Settled: nothing moves any more (the peer's window is shut),
	// so that every dump sees the same queues.
	last, same := -1, 0
	for i := 0; i < 100 && same < 4; i++ {
		n, err := unix.IoctlGetInt(fd, unix.SIOCOUTQNSD)
		if err != nil {
			return err
		}
		if n == last {
			same++
		} else {
			last, same = n, 0
		}
		sleep(50 * time.Millisecond)
	}
	if same < 4 {
		return fmt.Errorf("fill: the send queue does not settle")
	}
	return writeFileRaw(t.Path(name), []byte(itoa(total)))
}

// tcpDrain reads the count of bytes tcpFill wrote to the peer and checks
// them.
func tcpDrain(t *T, fd int, seed uint32, name string) {
	b, err := readFile(t.Path(name))
	if !t.Check(err, "byte count") {
		return
	}
	n, err := strconv.Atoi(string(b))
	if !t.Check(err, "byte count") {
		return
	}
	got, err := ReadFull(fd, n)
	if t.Check(err, fmt.Sprintf("fd %d: read %d queued bytes", fd, n)) {
		t.CheckData(fmt.Sprintf("fd %d: %d queued bytes", fd, n), got, Datagen(seed, 2<<20)[:n])
	}
}

func init() {
	register("tcp-bufs", map[string]*Role{
		"root": {
			Fds:      std(4),
			Children: children("client"),
			Setup: func(t *T) error {
				if err := tcpLoUp(); err != nil {
					return err
				}
				l, err := t.tcpListenSmall(7300)
				if err != nil {
					return err
				}
				defer unix.Close(l)
				p, err := t.Start("client", nil)
				if err != nil {
					return err
				}
				a, err := t.acceptHi(l)
				if err != nil {
					return err
				}
				unix.SetsockoptInt(a, unix.SOL_SOCKET, unix.SO_SNDBUF, 128<<10)
				if err := tcpFill(t, a, 11, "s2c"); err != nil {
					return err
				}
				if err := p.Ready(); err != nil {
					return err
				}
				return t.Place(a, 4)
			},
			Verify: func(t *T) {
				t.CheckTCPState(4, 1)
				t.CheckSockopt(4, unix.SOL_SOCKET, unix.SO_SNDBUF, 256<<10, "SO_SNDBUF")
				// The client drains s2c meanwhile.
				tcpDrain(t, 4, 22, "c2s")
			},
		},
		"client": {
			Fds: std(5),
			Setup: func(t *T) error {
				c, err := t.tcpDialSmall(7300)
				if err != nil {
					return err
				}
				// Give the server time to fill this side first.
				sleep(200 * time.Millisecond)
				if err := tcpFill(t, c, 22, "c2s"); err != nil {
					return err
				}
				return t.Place(c, 5)
			},
			Verify: func(t *T) {
				t.CheckTCPState(5, 1)
				tcpDrain(t, 5, 11, "s2c")
			},
		},
	})
}

// tcp-halfclosed: the client (child, fd 5) sent "bye" and shut its side
// down (FIN_WAIT2); the server (fd 4) has "bye" and the FIN unread
// (CLOSE_WAIT) and sent "late" that the client has not read. After
// restore the server reads "bye" then EOF, sends "more" and closes; the
// client reads "late", "more", then EOF.
func init() {
	register("tcp-halfclosed", map[string]*Role{
		"root": {
			Fds:      std(4),
			Children: children("client"),
			Setup: func(t *T) error {
				if err := tcpLoUp(); err != nil {
					return err
				}
				l, err := t.tcpListenSmall(7400)
				if err != nil {
					return err
				}
				defer unix.Close(l)
				p, err := t.Start("client", nil)
				if err != nil {
					return err
				}
				a, err := t.acceptHi(l)
				if err != nil {
					return err
				}
				if err := p.Ready(); err != nil {
					return err
				}
				if err := WriteAll(a, []byte("late")); err != nil {
					return err
				}
				if err := waitState(a, 8); err != nil {
					return err
				}
				return t.Place(a, 4)
			},
			Verify: func(t *T) {
				t.CheckTCPState(4, 8) // CLOSE_WAIT
				// The client checks its state before this side closes.
				if !t.WaitKick("the client's state check") {
					return
				}
				got, err := ReadFull(4, 3)
				if t.Check(err, "read bye") {
					t.CheckData("bye", got, []byte("bye"))
				}
				rest, err := ReadToEOF(4)
				if t.Check(err, "EOF after bye") && len(rest) > 0 {
					t.Fail("fd 4: %q before EOF", rest)
				}
				t.Check(WriteAll(4, []byte("more")), "send more")
				unix.Close(4)
			},
		},
		"client": {
			Fds: std(5),
			Setup: func(t *T) error {
				c, err := t.tcpDial(nil, 7400)
				if err != nil {
					return err
				}
				if err := WriteAll(c, []byte("bye")); err != nil {
					return err
				}
				if err := unix.Shutdown(c, unix.SHUT_WR); err != nil {
					return err
				}
				if err := waitState(c, 5); err != nil {
					return err
				}
				return t.Place(c, 5)
			},
			Verify: func(t *T) {
				t.CheckTCPState(5, 5) // FIN_WAIT2
				t.Kick(os.Getppid())
				got, err := ReadToEOF(5)
				if t.Check(err, "read to EOF") {
					t.CheckData("late+more", got, []byte("latemore"))
				}
			},
		},
	})
}

// waitState waits until a TCP socket reaches state st.
func waitState(fd int, st uint8) error {
	deadline := time.Now().Add(ioTimeout)
	for {
		info, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO)
		if err != nil {
			return err
		}
		if info.State == st {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("TCP state %d, want %d", info.State, st)
		}
		sleep(time.Millisecond)
	}
}

// tcp6-udp: one task with an IPv6 listener ([::1]:7600, v6only, fd 3),
// an IPv6 connection and its peer (fds 4 and 5, unread bytes both ways),
// a bound-only TCP socket (fd 6, 127.0.0.1:7602, SO_REUSEADDR,
// SO_REUSEPORT, TCP_CORK), an unbound one (fd 7),
// and two UDP sockets connected to each other (fds 8 and 9,
// 127.0.0.1:5600 <-> 5601, SO_BROADCAST on 8) and a bound UDP socket
// (fd 10, 127.0.0.1:5602, owned by the task). The listener is
// non-blocking; fd 5 has SO_LINGER 5s, SO_RCVTIMEO 2.5s and SO_PRIORITY 3.
func init() {
	register("tcp6-udp", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5, 6, 7, 8, 9, 10),
			Setup: func(t *T) error {
				if err := tcpLoUp(); err != nil {
					return err
				}
				l, err := t.sockAt(unix.AF_INET6, unix.SOCK_STREAM, nil, false)
				if err != nil {
					return err
				}
				if err := unix.SetsockoptInt(l, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
					return err
				}
				if err := unix.Bind(l, sa6(7600)); err != nil {
					return fmt.Errorf("bind [::1]:7600: %w", err)
				}
				if err := unix.Listen(l, 5); err != nil {
					return err
				}
				c, err := t.sockAt(unix.AF_INET6, unix.SOCK_STREAM, sa6(7601), false)
				if err != nil {
					return err
				}
				if err := unix.Connect(c, sa6(7600)); err != nil {
					return fmt.Errorf("connect [::1]:7600: %w", err)
				}
				a, err := t.acceptHi(l)
				if err != nil {
					return err
				}
				if err := WriteAll(c, []byte("v6-to-srv")); err != nil {
					return err
				}
				if err := WriteAll(a, []byte("v6-to-cli")); err != nil {
					return err
				}
				b, err := t.sockAt(unix.AF_INET, unix.SOCK_STREAM, nil, true)
				if err != nil {
					return err
				}
				if err := unix.SetsockoptInt(b, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
					return err
				}
				if err := unix.Bind(b, sa4(7602)); err != nil {
					return err
				}
				if err := unix.SetsockoptInt(b, unix.SOL_TCP, unix.TCP_CORK, 1); err != nil {
					return err
				}
				u, err := t.sockAt(unix.AF_INET, unix.SOCK_STREAM, nil, false)
				if err != nil {
					return err
				}
				u1, err := t.sockAt(unix.AF_INET, unix.SOCK_DGRAM, sa4(5600), false)
				if err != nil {
					return err
				}
				u2, err := t.sockAt(unix.AF_INET, unix.SOCK_DGRAM, sa4(5601), false)
				if err != nil {
					return err
				}
				if err := unix.Connect(u1, sa4(5601)); err != nil {
					return err
				}
				if err := unix.Connect(u2, sa4(5600)); err != nil {
					return err
				}
				unix.SetsockoptInt(u1, unix.SOL_SOCKET, unix.SO_BROADCAST, 1)
				u3, err := t.sockAt(unix.AF_INET, unix.SOCK_DGRAM, sa4(5602), false)
				if err != nil {
					return err
				}
				// Status flags, owner and socket options come back too.
				if err := unix.SetNonblock(l, true); err != nil {
					return err
				}
				if _, err := unix.FcntlInt(uintptr(u3), unix.F_SETOWN, os.Getpid()); err != nil {
					return err
				}
				if err := unix.SetsockoptLinger(c, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 5}); err != nil {
					return err
				}
				if err := unix.SetsockoptTimeval(c, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2, Usec: 500000}); err != nil {
					return err
				}
				if err := unix.SetsockoptInt(c, unix.SOL_SOCKET, unix.SO_PRIORITY, 3); err != nil {
					return err
				}
				for i, fd := range []int{l, a, c, b, u, u1, u2, u3} {
					if err := t.Place(fd, 3+i); err != nil {
						return err
					}
				}
				return nil
			},
			Verify: func(t *T) {
				t.CheckAddrs(3, sa6(7600), nil)
				t.CheckSockopt(3, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1, "IPV6_V6ONLY")
				t.CheckSockopt(3, unix.SOL_SOCKET, unix.SO_ACCEPTCONN, 1, "SO_ACCEPTCONN")
				t.CheckFlags(3, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDWR|unix.O_NONBLOCK)
				if own, err := unix.FcntlInt(10, unix.F_GETOWN, 0); err != nil || own != os.Getpid() {
					t.Fail("fd 10: owner %d (%v), want %d", own, err, os.Getpid())
				}
				if l, err := unix.GetsockoptLinger(5, unix.SOL_SOCKET, unix.SO_LINGER); err != nil || l.Onoff == 0 || l.Linger != 5 {
					t.Fail("fd 5: SO_LINGER %+v (%v), want on, 5s", l, err)
				}
				if tv, err := unix.GetsockoptTimeval(5, unix.SOL_SOCKET, unix.SO_RCVTIMEO); err != nil || tv.Sec != 2 || tv.Usec != 500000 {
					t.Fail("fd 5: SO_RCVTIMEO %+v (%v), want 2.5s", tv, err)
				}
				t.CheckSockopt(5, unix.SOL_SOCKET, unix.SO_PRIORITY, 3, "SO_PRIORITY")
				t.CheckAddrs(4, sa6(7600), sa6(7601))
				t.CheckAddrs(5, sa6(7601), sa6(7600))
				t.CheckAddrs(6, sa4(7602), nil)
				t.CheckSockopt(6, unix.SOL_SOCKET, unix.SO_ACCEPTCONN, 0, "SO_ACCEPTCONN")
				t.CheckSockopt(6, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, "SO_REUSEADDR")
				t.CheckSockopt(6, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1, "SO_REUSEPORT")
				t.CheckSockopt(6, unix.SOL_TCP, unix.TCP_CORK, 1, "TCP_CORK")
				t.CheckTCPState(6, 7)
				t.CheckAddrs(7, &unix.SockaddrInet4{}, nil)
				t.CheckAddrs(8, sa4(5600), sa4(5601))
				t.CheckAddrs(9, sa4(5601), sa4(5600))
				t.CheckAddrs(10, sa4(5602), nil)
				t.CheckSockopt(8, unix.SOL_SOCKET, unix.SO_BROADCAST, 1, "SO_BROADCAST")
				t.CheckSockopt(9, unix.SOL_SOCKET, unix.SO_BROADCAST, 0, "SO_BROADCAST")
				// v6 data both ways (small: no deadlock in one task).
				t.exchange(4, "v6-to-srv", "s", "")
				t.exchange(5, "v6-to-cli", "c", "s")
				got, err := ReadFull(4, 1)
				if t.Check(err, "fd 4: read") {
					t.CheckData("fd 4", got, []byte("c"))
				}
				t.checkNewConn(3, unix.AF_INET6, sa6(7600))
				// UDP both ways.
				for _, p := range [][2]int{{8, 9}, {9, 8}} {
					msg := []byte("udp-" + itoa(p[0]))
					if !t.Check(WriteAll(p[0], msg), "udp send") {
						continue
					}
					got, err := ReadFull(p[1], len(msg))
					if t.Check(err, "udp receive") {
						t.CheckData("udp datagram", got, msg)
					}
				}
			},
		},
	})
}

// writeFileRaw writes a small file without package os (see readFile).
func writeFileRaw(path string, data []byte) error {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := WriteAll(fd, data); err != nil {
		return err
	}
	return nil
}

// tcp-crfail-pending: a listener (fd 3, 127.0.0.1:7700) with a connection
// not yet accepted whose client lives outside the tree (started through a
// launcher that exits), having sent "early". The dump is refused: the
// connection could be taken out of the queue but not rebuilt without its
// client. After the refusal the listener still has it queued: accepted,
// it carries "early", then "ping" and "pong".
func init() {
	launcher, ext := extRoles(7700, "early")
	register("tcp-crfail-pending", map[string]*Role{
		"root": {
			Fds: std(3),
			Setup: func(t *T) error {
				if err := tcpLoUp(); err != nil {
					return err
				}
				l, err := t.tcpListen(7700, 4)
				if err != nil {
					return err
				}
				if err := t.spawnExt(); err != nil {
					return err
				}
				return t.Place(l, 3)
			},
			Verify: func(t *T) {
				if err := pollIn(3, time.Now().Add(ioTimeout)); !t.Check(err, "pending connection") {
					return
				}
				a, _, err := unix.Accept4(3, unix.SOCK_CLOEXEC)
				if !t.Check(err, "accept the pending connection") {
					return
				}
				defer unix.Close(a)
				t.exchange(a, "early", "ping", "pong")
			},
		},
		"launcher": launcher,
		"ext":      ext,
	})
}

// tcp-halfclosed-full: half-closed connections whose FIN waits behind
// data the peer has no room for. Pair A (port 7800): the client (child,
// fd 5) filled the server's window and shut its side down: FIN_WAIT1 with
// never-sent data before the FIN; the server (fd 4) has a full receive
// queue. Pair B (port 7801): the client (fd 7) shut down first
// (FIN_WAIT2), the server (fd 6, CLOSE_WAIT) then filled the client's
// window and shut down: LAST_ACK with never-sent data. After restore each
// side reads every byte and then EOF.
func init() {
	register("tcp-halfclosed-full", map[string]*Role{
		"root": {
			Fds:      std(4, 6),
			Children: children("client"),
			Setup: func(t *T) error {
				if err := tcpLoUp(); err != nil {
					return err
				}
				la, err := t.tcpListenSmall(7800)
				if err != nil {
					return err
				}
				defer unix.Close(la)
				lb, err := t.tcpListenSmall(7801)
				if err != nil {
					return err
				}
				defer unix.Close(lb)
				p, err := t.Start("client", nil)
				if err != nil {
					return err
				}
				a1, err := t.acceptHi(la)
				if err != nil {
					return err
				}
				a2, err := t.acceptHi(lb)
				if err != nil {
					return err
				}
				unix.SetsockoptInt(a2, unix.SOL_SOCKET, unix.SO_SNDBUF, 128<<10)
				if err := waitState(a2, 8); err != nil {
					return fmt.Errorf("pair B server: %w", err)
				}
				if err := tcpFill(t, a2, 41, "b-s2c"); err != nil {
					return err
				}
				if err := unix.Shutdown(a2, unix.SHUT_WR); err != nil {
					return err
				}
				if err := waitState(a2, 9); err != nil {
					return fmt.Errorf("pair B server: %w", err)
				}
				if err := p.Ready(); err != nil {
					return err
				}
				if err := t.Place(a1, 4); err != nil {
					return err
				}
				return t.Place(a2, 6)
			},
			// States first: once the client reads, they move on.
			BeforeChildren: func(t *T) {
				t.CheckTCPState(4, 1)
				t.CheckTCPState(6, 9) // LAST_ACK
			},
			Verify: func(t *T) {
				if !t.WaitKick("the client's state check") {
					return
				}
				tcpDrain(t, 4, 31, "a-c2s")
				rest, err := ReadToEOF(4)
				if t.Check(err, "pair A: EOF after the data") && len(rest) > 0 {
					t.Fail("pair A: %d bytes more before EOF", len(rest))
				}
				rest, err = ReadToEOF(6)
				if t.Check(err, "pair B: EOF") && len(rest) > 0 {
					t.Fail("pair B: %d bytes before EOF", len(rest))
				}
				unix.Close(4)
				unix.Close(6)
			},
		},
		"client": {
			Fds: std(5, 7),
			Setup: func(t *T) error {
				c1, err := t.tcpDialSmall(7800)
				if err != nil {
					return err
				}
				c2, err := t.tcpDialSmall(7801)
				if err != nil {
					return err
				}
				if err := unix.Shutdown(c2, unix.SHUT_WR); err != nil {
					return err
				}
				if err := tcpFill(t, c1, 31, "a-c2s"); err != nil {
					return err
				}
				if err := unix.Shutdown(c1, unix.SHUT_WR); err != nil {
					return err
				}
				if err := waitState(c1, 4); err != nil {
					return fmt.Errorf("pair A client: %w", err)
				}
				if err := t.Place(c1, 5); err != nil {
					return err
				}
				return t.Place(c2, 7)
			},
			Verify: func(t *T) {
				t.CheckTCPState(5, 4) // FIN_WAIT1
				t.CheckTCPState(7, 5) // FIN_WAIT2
				t.Kick(os.Getppid())
				tcpDrain(t, 7, 41, "b-s2c")
				rest, err := ReadToEOF(7)
				if t.Check(err, "pair B: EOF after the data") && len(rest) > 0 {
					t.Fail("pair B: %d bytes more before EOF", len(rest))
				}
				rest, err = ReadToEOF(5)
				if t.Check(err, "pair A: EOF") && len(rest) > 0 {
					t.Fail("pair A: %d bytes before EOF", len(rest))
				}
			},
		},
	})
}
