package main

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Unix socket scenarios (one per case of issue 6's unix part).

// unix-pairs: socketpairs of each type with data queued both ways.
// (No empty datagram or record: once a zero-length packet has been peeked
// at an offset, as the suite's first dump with --leave-running does, the
// kernel hides it from later peeks at an offset, so a second dump of the
// same tree cannot see it. The dump tests cover empty records on a first
// dump.)
// 3/4 stream ("s-to-3" in two writes at 3, "s-to-4" at 4), 5/6 dgram (two
// datagrams each way), 7/8 seqpacket (two records each way).
func init() {
	register("unix-pairs", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5, 6, 7, 8),
			Setup: func(t *T) error {
				for _, p := range [][3]int{{unix.SOCK_STREAM, 3, 4}, {unix.SOCK_DGRAM, 5, 6}, {unix.SOCK_SEQPACKET, 7, 8}} {
					if err := t.PairAt(p[0], p[1], p[2]); err != nil {
						return err
					}
				}
				for _, m := range [][2]any{{4, "s-to"}, {4, "-3"}, {3, "s-to-4"},
					{6, "d1-to-5"}, {6, "d2-to-5!"}, {5, "d1-to-6"}, {5, "d2"},
					{8, "r1-to-7"}, {8, "r2-to-7.."}, {7, "r1-to-8"}, {7, "r"}} {
					if err := Send(m[0].(int), m[1].(string)); err != nil {
						return err
					}
				}
				return nil
			},
			Verify: func(t *T) {
				for _, fd := range []int{3, 4} {
					t.CheckSock(fd, unix.SOCK_STREAM, false, "", "")
				}
				for _, fd := range []int{5, 6} {
					t.CheckSock(fd, unix.SOCK_DGRAM, false, "", "")
				}
				for _, fd := range []int{7, 8} {
					t.CheckSock(fd, unix.SOCK_SEQPACKET, false, "", "")
				}
				t.CheckStream(3, "s-to-3")
				t.CheckStream(4, "s-to-4")
				t.CheckRecv(5, "d1-to-5")
				t.CheckRecv(5, "d2-to-5!")
				t.CheckRecv(6, "d1-to-6")
				t.CheckRecv(6, "d2")
				t.CheckRecv(7, "r1-to-7")
				t.CheckRecv(7, "r2-to-7..")
				t.CheckRecv(8, "r1-to-8")
				t.CheckRecv(8, "r")
				for _, p := range [][2]int{{3, 4}, {5, 6}, {7, 8}} {
					t.CheckQueueEmpty(p[0])
					t.CheckQueueEmpty(p[1])
					t.CheckPingPong(p[0], p[1])
				}
			},
		},
	})
}

// unix-listen-path: a stream listener (3, backlog 7) bound to a file in
// the work directory with mode 0751 and owner 4321:4322, a dgram socket
// (4) bound to another path with mode 0600, and a dgram socket (5) bound
// to a name relative to the working directory (the work directory).
func init() {
	register("unix-listen-path", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5),
			Setup: func(t *T) error {
				path, dpath := t.Path("listen.sock"), t.Path("dgram.sock")
				unix.Unlink(path)
				unix.Unlink(dpath)
				if err := t.ListenAt(path, 7, 3); err != nil {
					return err
				}
				if err := unix.Chmod(path, 0o751); err != nil {
					return err
				}
				if err := unix.Chown(path, 4321, 4322); err != nil {
					return err
				}
				if err := t.SocketAt(unix.SOCK_DGRAM, 4); err != nil {
					return err
				}
				if err := unix.Bind(4, SockAddr(dpath)); err != nil {
					return fmt.Errorf("bind %s: %w", dpath, err)
				}
				if err := unix.Chmod(dpath, 0o600); err != nil {
					return err
				}
				rel := t.Sc.Name + ".rel.sock"
				unix.Unlink(rel)
				if err := t.SocketAt(unix.SOCK_DGRAM, 5); err != nil {
					return err
				}
				if err := unix.Bind(5, SockAddr(rel)); err != nil {
					return fmt.Errorf("bind %s: %w", rel, err)
				}
				return nil
			},
			Verify: func(t *T) {
				path, dpath := t.Path("listen.sock"), t.Path("dgram.sock")
				t.CheckSock(3, unix.SOCK_STREAM, true, path, "-")
				t.CheckSock(4, unix.SOCK_DGRAM, false, dpath, "-")
				for _, c := range []struct {
					path     string
					mode     uint32
					uid, gid uint32
				}{{path, unix.S_IFSOCK | 0o751, 4321, 4322}, {dpath, unix.S_IFSOCK | 0o600, 0, 0}} {
					var st unix.Stat_t
					if !t.Check(unix.Stat(c.path, &st), "stat "+c.path) {
						continue
					}
					if st.Mode != c.mode || st.Uid != c.uid || st.Gid != c.gid {
						t.Fail("%s: mode %#o owner %d:%d, want %#o %d:%d", c.path, st.Mode, st.Uid, st.Gid, c.mode, c.uid, c.gid)
					}
				}
				// The listener accepts a new connection through its path.
				c, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if !t.Check(err, "socket") {
					return
				}
				defer unix.Close(c)
				if !t.Check(unix.Connect(c, SockAddr(path)), "connect to "+path) {
					return
				}
				if !t.Check(pollIn(3, deadline()), "accept") {
					return
				}
				a, _, err := unix.Accept4(3, unix.SOCK_CLOEXEC)
				if !t.Check(err, "accept") {
					return
				}
				defer unix.Close(a)
				t.CheckPingPong(a, c)
				// The dgram sockets receive at their paths.
				t.CheckSock(5, unix.SOCK_DGRAM, false, t.Sc.Name+".rel.sock", "-")
				d, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
				if t.Check(err, "socket") {
					defer unix.Close(d)
					if t.Check(unix.Sendto(d, []byte("to-path"), 0, SockAddr(dpath)), "sendto "+dpath) {
						t.CheckRecv(4, "to-path")
					}
					if t.Check(unix.Sendto(d, []byte("to-rel"), 0, SockAddr(t.Path("rel.sock"))), "sendto "+t.Path("rel.sock")) {
						t.CheckRecv(5, "to-rel")
					}
				}
			},
		},
	})
}

// unix-listen-abstract: an abstract stream listener (3, backlog 8), a
// connection accepted from it (4, "acpt" queued) and its client (5,
// "to-client" queued), and a client whose connection is pending (6, no
// data, never accepted before the dump).
func init() {
	register("unix-listen-abstract", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5, 6),
			Setup: func(t *T) error {
				name := t.Abstract("l")
				if err := t.ListenAt(name, 8, 3); err != nil {
					return err
				}
				if err := t.ConnectAt(name, 5); err != nil {
					return err
				}
				if err := t.AcceptAt(3, 4); err != nil {
					return err
				}
				if err := t.ConnectAt(name, 6); err != nil {
					return err
				}
				if err := Send(5, "acpt"); err != nil {
					return err
				}
				return Send(4, "to-client")
			},
			Verify: func(t *T) {
				name := t.Abstract("l")
				t.CheckSock(3, unix.SOCK_STREAM, true, name, "-")
				t.CheckSock(4, unix.SOCK_STREAM, false, name, "")
				t.CheckSock(5, unix.SOCK_STREAM, false, "", name)
				t.CheckSock(6, unix.SOCK_STREAM, false, "", name)
				t.CheckStream(4, "acpt")
				t.CheckStream(5, "to-client")
				t.CheckPingPong(4, 5)
				// The pending connection is accepted now, and data sent
				// before the accept arrives.
				if !t.Check(Send(6, "late"), "send on the pending connection") {
					return
				}
				if !t.Check(pollIn(3, deadline()), "pending connection") {
					return
				}
				a, _, err := unix.Accept4(3, unix.SOCK_CLOEXEC)
				if !t.Check(err, "accept the pending connection") {
					return
				}
				defer unix.Close(a)
				t.CheckStream(a, "late")
				t.CheckPingPong(a, 6)
				// Nothing else was pending.
				if pfd := []unix.PollFd{{Fd: 3, Events: unix.POLLIN}}; func() bool { n, _ := unix.Poll(pfd, 0); return n > 0 }() {
					t.Fail("fd 3: a second pending connection")
				}
			},
		},
	})
}

// unix-peerless: sockets whose peer was closed but that still hold data:
// a stream socket (3, "orphan-data") and a seqpacket socket (4, two
// records).
func init() {
	register("unix-peerless", map[string]*Role{
		"root": {
			Fds: std(3, 4),
			Setup: func(t *T) error {
				for _, c := range []struct {
					typ, at int
					msgs    []string
				}{{unix.SOCK_STREAM, 3, []string{"orphan-", "data"}}, {unix.SOCK_SEQPACKET, 4, []string{"rec-1", "rec-two"}}} {
					a, b, err := t.Pair(c.typ)
					if err != nil {
						return err
					}
					for _, m := range c.msgs {
						if err := Send(b, m); err != nil {
							return err
						}
					}
					unix.Close(b)
					if err := t.Place(a, c.at); err != nil {
						return err
					}
				}
				return nil
			},
			Verify: func(t *T) {
				// getpeername still names the closed peer (unnamed).
				t.CheckSock(3, unix.SOCK_STREAM, false, "", "")
				t.CheckSock(4, unix.SOCK_SEQPACKET, false, "", "")
				t.CheckStream(3, "orphan-data")
				t.CheckEOF(3)
				t.CheckRecv(4, "rec-1")
				t.CheckRecv(4, "rec-two")
				t.CheckEOF(4)
				t.CheckEPIPE(3)
				t.CheckEPIPE(4)
			},
		},
	})
}

// unix-dgram-server: an abstract dgram server (3) with three clients:
// 4 connected and unnamed, 5 connected and bound to an abstract name, 6
// not connected (sendto). Queued at the server, in order: c4-a, c5-a,
// c4-b, c6-a. Queued at 5: "reply".
func init() {
	register("unix-dgram-server", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5, 6),
			Setup: func(t *T) error {
				srv, c5 := t.Abstract("srv"), t.Abstract("c5")
				for fd := 3; fd <= 6; fd++ {
					if err := t.SocketAt(unix.SOCK_DGRAM, fd); err != nil {
						return err
					}
				}
				if err := unix.Bind(3, SockAddr(srv)); err != nil {
					return err
				}
				if err := unix.Bind(5, SockAddr(c5)); err != nil {
					return err
				}
				for _, fd := range []int{4, 5} {
					if err := unix.Connect(fd, SockAddr(srv)); err != nil {
						return err
					}
				}
				if err := Send(4, "c4-a"); err != nil {
					return err
				}
				if err := Send(5, "c5-a"); err != nil {
					return err
				}
				if err := Send(4, "c4-b"); err != nil {
					return err
				}
				if err := unix.Sendto(6, []byte("c6-a"), 0, SockAddr(srv)); err != nil {
					return err
				}
				return unix.Sendto(3, []byte("reply"), 0, SockAddr(c5))
			},
			Verify: func(t *T) {
				srv, c5 := t.Abstract("srv"), t.Abstract("c5")
				t.CheckSock(3, unix.SOCK_DGRAM, false, srv, "-")
				t.CheckSock(4, unix.SOCK_DGRAM, false, "", srv)
				t.CheckSock(5, unix.SOCK_DGRAM, false, c5, srv)
				t.CheckSock(6, unix.SOCK_DGRAM, false, "", "-")
				for _, m := range []string{"c4-a", "c5-a", "c4-b", "c6-a"} {
					t.CheckRecv(3, m)
				}
				t.CheckRecv(5, "reply")
				t.CheckQueueEmpty(3)
				for _, fd := range []int{4, 5} {
					msg := fmt.Sprintf("again from %d", fd)
					if t.Check(Send(fd, msg), "send") {
						t.CheckRecv(3, msg)
					}
				}
				if t.Check(unix.Sendto(6, []byte("c6-b"), 0, SockAddr(srv)), "sendto the server") {
					t.CheckRecv(3, "c6-b")
				}
				if t.Check(unix.Sendto(3, []byte("reply-2"), 0, SockAddr(c5)), "sendto c5") {
					t.CheckRecv(5, "reply-2")
				}
			},
		},
	})
}

// unix-dgram-self: a dgram socket (3) bound to an abstract name and
// connected to itself, with two datagrams queued.
func init() {
	register("unix-dgram-self", map[string]*Role{
		"root": {
			Fds: std(3),
			Setup: func(t *T) error {
				name := t.Abstract("self")
				if err := t.SocketAt(unix.SOCK_DGRAM, 3); err != nil {
					return err
				}
				if err := unix.Bind(3, SockAddr(name)); err != nil {
					return err
				}
				if err := unix.Connect(3, SockAddr(name)); err != nil {
					return err
				}
				if err := Send(3, "to-myself"); err != nil {
					return err
				}
				return Send(3, "twice")
			},
			Verify: func(t *T) {
				name := t.Abstract("self")
				t.CheckSock(3, unix.SOCK_DGRAM, false, name, name)
				t.CheckRecv(3, "to-myself")
				t.CheckRecv(3, "twice")
				if t.Check(Send(3, "after"), "send to myself") {
					t.CheckRecv(3, "after")
				}
			},
		},
	})
}

// unix-shutdown: stream pairs with one end shut down: 3 SHUT_RD (peer
// 4), 5 SHUT_WR (peer 6, "before-wr" queued at 6 first), 7 SHUT_RDWR
// (peer 8, "before-rdwr" queued at 8 first); and a seqpacket pair 9/10
// with 9 SHUT_WR.
func init() {
	register("unix-shutdown", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5, 6, 7, 8, 9, 10),
			Setup: func(t *T) error {
				for _, p := range [][3]int{{unix.SOCK_STREAM, 3, 4}, {unix.SOCK_STREAM, 5, 6}, {unix.SOCK_STREAM, 7, 8}, {unix.SOCK_SEQPACKET, 9, 10}} {
					if err := t.PairAt(p[0], p[1], p[2]); err != nil {
						return err
					}
				}
				if err := Send(5, "before-wr"); err != nil {
					return err
				}
				if err := Send(7, "before-rdwr"); err != nil {
					return err
				}
				for _, s := range [][2]int{{3, unix.SHUT_RD}, {5, unix.SHUT_WR}, {7, unix.SHUT_RDWR}, {9, unix.SHUT_WR}} {
					if err := unix.Shutdown(s[0], s[1]); err != nil {
						return fmt.Errorf("shutdown fd %d: %w", s[0], err)
					}
				}
				return nil
			},
			Verify: func(t *T) {
				// SHUT_RD on 3: 3 reads EOF and can still send; 4 cannot.
				t.CheckEOF(3)
				if t.Check(Send(3, "rd-still-writes"), "send on 3") {
					t.CheckStream(4, "rd-still-writes")
				}
				t.CheckEPIPE(4)
				// SHUT_WR on 5: 6 reads the data, then EOF; 5 cannot send.
				t.CheckStream(6, "before-wr")
				t.CheckEOF(6)
				t.CheckEPIPE(5)
				if t.Check(Send(6, "wr-peer-writes"), "send on 6") {
					t.CheckStream(5, "wr-peer-writes")
				}
				// SHUT_RDWR on 7.
				t.CheckStream(8, "before-rdwr")
				t.CheckEOF(8)
				t.CheckEOF(7)
				t.CheckEPIPE(7)
				t.CheckEPIPE(8)
				// Seqpacket SHUT_WR on 9.
				t.CheckEOF(10)
				t.CheckEPIPE(9)
				if t.Check(Send(10, "seq-back"), "send on 10") {
					t.CheckRecv(9, "seq-back")
				}
			},
		},
	})
}

// unix-sockopts: a stream pair 3/4 with options set on 3 (SO_SNDBUF,
// SO_RCVBUF, SO_PASSCRED, SO_RCVTIMEO, SO_SNDTIMEO, SO_PRIORITY,
// SO_RCVLOWAT, SO_MARK) and O_NONBLOCK, "opts" queued at 3; a dgram
// socket 5 with O_NONBLOCK and SO_PASSCRED only.
func init() {
	register("unix-sockopts", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5),
			Setup: func(t *T) error {
				if err := t.PairAt(unix.SOCK_STREAM, 3, 4); err != nil {
					return err
				}
				if err := t.SocketAt(unix.SOCK_DGRAM, 5); err != nil {
					return err
				}
				for _, o := range [][3]int{
					{3, unix.SO_SNDBUF, 65536}, {3, unix.SO_RCVBUF, 40000}, {3, unix.SO_PASSCRED, 1},
					{3, unix.SO_PRIORITY, 5}, {3, unix.SO_RCVLOWAT, 3}, {3, unix.SO_MARK, 42},
					{5, unix.SO_PASSCRED, 1},
				} {
					if err := unix.SetsockoptInt(o[0], unix.SOL_SOCKET, o[1], o[2]); err != nil {
						return fmt.Errorf("fd %d: setsockopt %d: %w", o[0], o[1], err)
					}
				}
				if err := unix.SetsockoptTimeval(3, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2, Usec: 500000}); err != nil {
					return err
				}
				if err := unix.SetsockoptTimeval(3, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &unix.Timeval{Sec: 1}); err != nil {
					return err
				}
				for _, fd := range []int{3, 5} {
					if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, unix.O_RDWR|unix.O_NONBLOCK); err != nil {
						return err
					}
				}
				return Send(4, "opts")
			},
			Verify: func(t *T) {
				t.CheckFlags(3, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDWR|unix.O_NONBLOCK)
				t.CheckFlags(4, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDWR)
				t.CheckFlags(5, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDWR|unix.O_NONBLOCK)
				for _, o := range []struct {
					fd, opt, want int
					name          string
				}{
					{3, unix.SO_SNDBUF, 131072, "SO_SNDBUF"}, {3, unix.SO_RCVBUF, 80000, "SO_RCVBUF"},
					{3, unix.SO_PASSCRED, 1, "SO_PASSCRED"}, {3, unix.SO_PRIORITY, 5, "SO_PRIORITY"},
					{3, unix.SO_RCVLOWAT, 3, "SO_RCVLOWAT"}, {3, unix.SO_MARK, 42, "SO_MARK"},
					{3, unix.SO_BUF_LOCK, 3, "SO_BUF_LOCK"},
					{4, unix.SO_PASSCRED, 0, "SO_PASSCRED"}, {4, unix.SO_MARK, 0, "SO_MARK"}, {4, unix.SO_RCVLOWAT, 1, "SO_RCVLOWAT"},
					{4, unix.SO_BUF_LOCK, 0, "SO_BUF_LOCK"},
					{5, unix.SO_PASSCRED, 1, "SO_PASSCRED"}, {5, unix.SO_PRIORITY, 0, "SO_PRIORITY"},
				} {
					if v, err := unix.GetsockoptInt(o.fd, unix.SOL_SOCKET, o.opt); err != nil || v != o.want {
						t.Fail("fd %d: %s %d (%v), want %d", o.fd, o.name, v, err, o.want)
					}
				}
				for _, o := range []struct {
					opt  int
					want unix.Timeval
					name string
				}{{unix.SO_RCVTIMEO, unix.Timeval{Sec: 2, Usec: 500000}, "SO_RCVTIMEO"}, {unix.SO_SNDTIMEO, unix.Timeval{Sec: 1}, "SO_SNDTIMEO"}} {
					if tv, err := unix.GetsockoptTimeval(3, unix.SOL_SOCKET, o.opt); err != nil || *tv != o.want {
						t.Fail("fd 3: %s %v (%v), want %v", o.name, tv, err, o.want)
					}
				}
				t.CheckRecv(3, "opts")
				t.CheckPingPong(3, 4)
			},
		},
	})
}

// deadline is the I/O deadline from now.
func deadline() time.Time { return time.Now().Add(ioTimeout) }

// unix-scm: files that exist only in flight. Stream pair 3/4 and a pipe
// 5/6 whose write end (6) is ours. Queued at 3, in order:
//
//	"two" carrying [read end of pipe P (holds "pipe-data", no writer
//	left), end y of a socketpair x/y (y holds "inner-y")]
//	"more" carrying [x, the write end of P2 (5 is P2's read end), a
//	dup of our own fd 4]
//	"tail" with no fds
func init() {
	register("unix-scm", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5),
			Setup: func(t *T) error {
				if err := t.PairAt(unix.SOCK_STREAM, 3, 4); err != nil {
					return err
				}
				var p, p2 [2]int
				if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
					return err
				}
				if err := unix.Pipe2(p2[:], unix.O_CLOEXEC); err != nil {
					return err
				}
				for _, fd := range []*int{&p[0], &p[1], &p2[0], &p2[1]} {
					var err error
					if *fd, err = t.hi(*fd); err != nil {
						return err
					}
				}
				if err := WriteAll(p[1], []byte("pipe-data")); err != nil {
					return err
				}
				unix.Close(p[1])
				if err := t.Place(p2[0], 5); err != nil {
					return err
				}
				x, y, err := t.Pair(unix.SOCK_STREAM)
				if err != nil {
					return err
				}
				if err := Send(x, "inner-y"); err != nil {
					return err
				}
				if err := unix.Sendmsg(4, []byte("two"), unix.UnixRights(p[0], y), nil, 0); err != nil {
					return err
				}
				if err := unix.Sendmsg(4, []byte("more"), unix.UnixRights(x, p2[1], 4), nil, 0); err != nil {
					return err
				}
				for _, fd := range []int{p[0], y, x, p2[1]} {
					unix.Close(fd)
				}
				return Send(4, "tail")
			},
			Verify: func(t *T) {
				t.CheckType(5, "pipe:")
				got, fds, err := Recv(3)
				if !t.Check(err, "first message") {
					return
				}
				defer closeAll(fds)
				if string(got) != "two" || len(fds) != 2 {
					t.Fail("first message %q with %d fds, want \"two\" with 2", got, len(fds))
					return
				}
				t.CheckFlags(fds[0], unix.O_ACCMODE, unix.O_RDONLY)
				t.CheckType(fds[0], "pipe:")
				data, err := ReadToEOF(fds[0])
				if t.Check(err, "pipe in flight") {
					t.CheckBytes("pipe in flight", data, "pipe-data")
				}
				t.CheckType(fds[1], "socket:")
				t.CheckStream(fds[1], "inner-y")

				got, fds2, err := Recv(3)
				if !t.Check(err, "second message") {
					return
				}
				defer closeAll(fds2)
				if string(got) != "more" || len(fds2) != 3 {
					t.Fail("second message %q with %d fds, want \"more\" with 3", got, len(fds2))
					return
				}
				// x and y are still connected.
				t.CheckPingPong(fds2[0], fds[1])
				// The write end of P2 writes into our fd 5.
				if t.Check(WriteAll(fds2[1], []byte("p2")), "write P2") {
					t.CheckStream(5, "p2")
				}
				// The third file is our own fd 4's description.
				if same, err := SameFile(unix.Getpid(), fds2[2], unix.Getpid(), 4); err != nil || !same {
					t.Fail("third file of the second message is not fd 4's description (%v)", err)
				}
				t.CheckRecv(3, "tail")
				t.CheckQueueEmpty(3)
				t.CheckPingPong(3, 4)
			},
		},
	})
}

func closeAll(fds []int) {
	for _, f := range fds {
		unix.Close(f)
	}
}

// unix-deleted: sockets bound to paths that were unlinked while bound:
// a dgram socket 3 (gone-dgram.sock) with a client 4 connected to it
// before the unlink ("hi" queued at 3), and a stream listener 5
// (gone-listen.sock) with an accepted connection 6 and its client 7.
func init() {
	register("unix-deleted", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5, 6, 7),
			Setup: func(t *T) error {
				dg, ls := t.Path("gone-dgram.sock"), t.Path("gone-listen.sock")
				unix.Unlink(dg)
				unix.Unlink(ls)
				for _, c := range [][2]int{{unix.SOCK_DGRAM, 3}, {unix.SOCK_DGRAM, 4}, {unix.SOCK_STREAM, 5}, {unix.SOCK_STREAM, 7}} {
					if err := t.SocketAt(c[0], c[1]); err != nil {
						return err
					}
				}
				if err := unix.Bind(3, SockAddr(dg)); err != nil {
					return err
				}
				if err := unix.Connect(4, SockAddr(dg)); err != nil {
					return err
				}
				if err := unix.Bind(5, SockAddr(ls)); err != nil {
					return err
				}
				if err := unix.Listen(5, 4); err != nil {
					return err
				}
				if err := unix.Connect(7, SockAddr(ls)); err != nil {
					return err
				}
				if err := t.AcceptAt(5, 6); err != nil {
					return err
				}
				if err := Send(4, "hi"); err != nil {
					return err
				}
				if err := unix.Unlink(dg); err != nil {
					return err
				}
				return unix.Unlink(ls)
			},
			Verify: func(t *T) {
				dg, ls := t.Path("gone-dgram.sock"), t.Path("gone-listen.sock")
				for _, p := range []string{dg, ls} {
					var st unix.Stat_t
					if err := unix.Stat(p, &st); err == nil {
						t.Fail("%s exists (mode %#o), want it unlinked", p, st.Mode)
					}
				}
				t.CheckSock(3, unix.SOCK_DGRAM, false, dg, "-")
				t.CheckSock(4, unix.SOCK_DGRAM, false, "", dg)
				t.CheckSock(5, unix.SOCK_STREAM, true, ls, "-")
				t.CheckSock(6, unix.SOCK_STREAM, false, ls, "")
				t.CheckSock(7, unix.SOCK_STREAM, false, "", ls)
				t.CheckRecv(3, "hi")
				if t.Check(Send(4, "again"), "send on 4") {
					t.CheckRecv(3, "again")
				}
				t.CheckPingPong(6, 7)
			},
		},
	})
}

// unix-shared: one stream socketpair (A, B) shared by three tasks at
// different fds, with data queued both ways, plus an abstract listener
// in the root (8) whose accepted connection is in child c1 (4) and client
// in child c2 (21):
//
//	root: 3 = A, 8 = listener
//	c1:   3 = B, 9 = A, 4 = accepted
//	c2:   20 = B, 21 = client ("to-c1" queued at c1's 4)
//
// Queued toward A: "to-A:123"; toward B: "to-B:4567".
func init() {
	register("unix-shared", map[string]*Role{
		"root": {
			Fds:      std(3, 8),
			Children: children("c1", "c2"),
			Setup: func(t *T) error {
				name := t.Abstract("l")
				a, b, err := t.Pair(unix.SOCK_STREAM)
				if err != nil {
					return err
				}
				// The listener stays close-on-exec until the children
				// are started, so that they do not inherit it.
				l, err := t.sockAt(unix.AF_UNIX, unix.SOCK_STREAM, SockAddr(name), false)
				if err != nil {
					return err
				}
				if err := unix.Listen(l, 4); err != nil {
					return err
				}
				cl, err := t.sockAt(unix.AF_UNIX, unix.SOCK_STREAM, nil, false)
				if err != nil {
					return err
				}
				if err := unix.Connect(cl, SockAddr(name)); err != nil {
					return err
				}
				acc, err := t.acceptHi(l)
				if err != nil {
					return err
				}
				if err := Send(b, "to-A:123"); err != nil {
					return err
				}
				if err := Send(a, "to-B:4567"); err != nil {
					return err
				}
				if err := Send(cl, "to-c1"); err != nil {
					return err
				}
				// c1 gets B at 3, A at 9 and the accepted socket at 4.
				for _, d := range [][2]int{{b, 3}, {a, 9}, {acc, 4}} {
					if err := t.DupAt(d[0], d[1]); err != nil {
						return err
					}
				}
				if _, err := t.Spawn("c1", nil); err != nil {
					return err
				}
				for _, fd := range []int{3, 4, 9} {
					unix.Close(fd)
				}
				if err := t.DupAt(b, 20); err != nil {
					return err
				}
				if err := t.DupAt(cl, 21); err != nil {
					return err
				}
				if _, err := t.Spawn("c2", nil); err != nil {
					return err
				}
				unix.Close(20)
				unix.Close(21)
				for _, fd := range []int{b, acc, cl} {
					unix.Close(fd)
				}
				if err := t.Place(l, 8); err != nil {
					return err
				}
				return t.Place(a, 3)
			},
			BeforeChildren: func(t *T) {
				c1, c2 := t.Child("c1"), t.Child("c2")
				for _, s := range [][4]int{{unix.Getpid(), 3, c1, 9}, {c1, 3, c2, 20}} {
					if same, err := SameFile(s[0], s[1], s[2], s[3]); err != nil || !same {
						t.Fail("pid %d fd %d and pid %d fd %d are not one description (%v)", s[0], s[1], s[2], s[3], err)
					}
				}
			},
			Verify: func(t *T) {
				t.CheckSock(3, unix.SOCK_STREAM, false, "", "")
				t.CheckSock(8, unix.SOCK_STREAM, true, t.Abstract("l"), "-")
				// c1 reads B's queue; we read A's, then ping c2 through
				// the pair (c2 answers on B).
				t.CheckStream(3, "to-A:123")
				if t.Check(Send(3, "root->c2"), "send to c2") {
					t.CheckStream(3, "c2->root")
				}
			},
		},
		"c1": {
			Fds: std(3, 4, 9),
			Verify: func(t *T) {
				t.CheckSock(4, unix.SOCK_STREAM, false, t.Abstract("l"), "")
				t.CheckStream(3, "to-B:4567")
				t.CheckStream(4, "to-c1")
				t.Check(Send(4, "c1->c2"), "send to c2")
			},
		},
		"c2": {
			Fds: std(20, 21),
			Verify: func(t *T) {
				t.CheckSock(21, unix.SOCK_STREAM, false, "", t.Abstract("l"))
				t.CheckStream(21, "c1->c2")
				// c1 sends on the accepted connection only once it has
				// read B's queued bytes, so B holds only the root's
				// message now.
				t.CheckStream(20, "root->c2")
				t.Check(Send(20, "c2->root"), "answer the root")
			},
		},
	})
}

// unix-ext-dgram: a dgram socket (3) connected to a socket outside the
// tree (the runner binds WORKDIR/unix-ext-dgram.ext.sock and keeps it), one
// datagram sent to it; and a dgram pair 4/5 with "in-tree" queued at 4.
// Dumped and restored with --ext-unix-sk; crfail-unix-ext is the same
// state dumped without it, which must refuse.
func init() {
	register("unix-ext-dgram", extDgramRoles())
	register("crfail-unix-ext", extDgramRoles())
}

func extDgramRoles() map[string]*Role {
	return map[string]*Role{
		"root": {
			Fds: std(3, 4, 5),
			Setup: func(t *T) error {
				if err := t.SocketAt(unix.SOCK_DGRAM, 3); err != nil {
					return err
				}
				if err := unix.Connect(3, SockAddr(t.Path("ext.sock"))); err != nil {
					return fmt.Errorf("connect to the runner's socket: %w", err)
				}
				if err := Send(3, "to-outside"); err != nil {
					return err
				}
				if err := t.PairAt(unix.SOCK_DGRAM, 4, 5); err != nil {
					return err
				}
				return Send(5, "in-tree")
			},
			Verify: func(t *T) {
				t.CheckSock(3, unix.SOCK_DGRAM, false, "", t.Path("ext.sock"))
				t.Check(Send(3, "again-to-outside"), "send to the outside socket")
				t.CheckRecv(4, "in-tree")
				t.CheckPingPong(4, 5)
			},
		},
	}
}

// unix-epoll: an epoll set (3) watching a unix stream socket (4, "ready"
// queued, EPOLLIN) and a listener (6, EPOLLIN|EPOLLET, no pending
// connection); 5 is 4's peer.
func init() {
	register("unix-epoll", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5, 6),
			Setup: func(t *T) error {
				if err := t.epollAt(3); err != nil {
					return err
				}
				if err := t.PairAt(unix.SOCK_STREAM, 4, 5); err != nil {
					return err
				}
				if err := t.ListenAt(t.Abstract("l"), 2, 6); err != nil {
					return err
				}
				for _, r := range []struct {
					fd     int
					events uint32
				}{{4, unix.EPOLLIN}, {6, unix.EPOLLIN | unix.EPOLLET}} {
					ev := unix.EpollEvent{Events: r.events, Fd: int32(r.fd)}
					if err := unix.EpollCtl(3, unix.EPOLL_CTL_ADD, r.fd, &ev); err != nil {
						return fmt.Errorf("EPOLL_CTL_ADD %d: %w", r.fd, err)
					}
				}
				return Send(5, "ready")
			},
			Verify: func(t *T) {
				t.CheckType(3, "anon_inode:[eventpoll]")
				evs := make([]unix.EpollEvent, 4)
				n, err := unix.EpollWait(3, evs, 5000)
				if t.Check(err, "epoll_wait") && (n != 1 || evs[0].Fd != 4 || evs[0].Events&unix.EPOLLIN == 0) {
					t.Fail("epoll_wait: %d events %+v, want EPOLLIN on fd 4 only", n, evs[:max(n, 0)])
				}
				t.CheckStream(4, "ready")
				// A new connection wakes the listener's registration.
				c, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if !t.Check(err, "socket") {
					return
				}
				defer unix.Close(c)
				if !t.Check(unix.Connect(c, SockAddr(t.Abstract("l"))), "connect") {
					return
				}
				n, err = unix.EpollWait(3, evs, 5000)
				if t.Check(err, "epoll_wait") && (n != 1 || evs[0].Fd != 6) {
					t.Fail("epoll_wait after connect: %d events %+v, want fd 6", n, evs[:max(n, 0)])
				}
				t.CheckPingPong(4, 5)
			},
		},
	})
}
