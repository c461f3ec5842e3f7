package restore_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/internal/fdcheck"
	"golang.org/x/sys/unix"
)

const unixStreamPath = fixtureRoot + "/unix-stream/listen.sock"

// unixFixtures are the CRIU 4.2 unix socket fixtures, each checked
// against its EXPECTED.md.
var unixFixtures = []fixture{
	{
		name: "unix-stream",
		setup: func(t *testing.T) {
			mkFixtureDir(t, "unix-stream")
			os.Remove(unixStreamPath) // a stale socket file is what restore removes itself
			t.Cleanup(func() { os.Remove(unixStreamPath) })
		},
		want: func() *wantTree {
			fds := stdio(2)
			for fd, obj := range map[int]string{3: "S1a", 4: "S1b", 5: "L1", 6: "A", 7: "C", 8: "L2", 9: "S2a", 10: "S2b"} {
				fds = append(fds, sockFD(2, fd, obj, 0, false))
			}
			return &wantTree{tasks: []wantTask{{2, 0, 2, 2}}, fds: fds}
		},
		beforeData: true,
		extra: func(c *checker) {
			t := c.t
			st := unix.SOCK_STREAM
			c.wantSock(ref{2, 3}, st, "", "", false)
			c.wantSock(ref{2, 4}, st, "", "", false)
			c.wantSock(ref{2, 5}, st, "@fdr-stream-listen", "-", true)
			c.wantSock(ref{2, 6}, st, "@fdr-stream-listen", "", false)
			c.wantSock(ref{2, 7}, st, "", "@fdr-stream-listen", false)
			c.wantSock(ref{2, 8}, st, unixStreamPath, "-", true)
			c.wantSock(ref{2, 9}, st, "", "", false)
			c.wantSock(ref{2, 10}, st, "", "", false)
			// The socket file: mode as recorded (0140755), owner root.
			var fst unix.Stat_t
			if err := unix.Lstat(unixStreamPath, &fst); err != nil {
				t.Errorf("%s: %v", unixStreamPath, err)
			} else if fst.Mode != 0o140755 || fst.Uid != 0 || fst.Gid != 0 {
				t.Errorf("%s: mode %#o uid %d gid %d, want 0140755 root", unixStreamPath, fst.Mode, fst.Uid, fst.Gid)
			}
			if n := c.sockOpt(ref{2, 5}, unix.SO_ACCEPTCONN); n != 1 {
				t.Errorf("fd 5 not listening")
			}
			// Queued data, exactly once.
			c.wantStream(ref{2, 3}, "ping#3")
			c.wantStream(ref{2, 4}, "pong-to-4")
			c.wantStream(ref{2, 6}, "acpt")
			c.wantStream(ref{2, 7}, "")
			c.wantStream(ref{2, 9}, "")
			// Peers.
			c.linked(ref{2, 3}, ref{2, 4})
			c.linked(ref{2, 4}, ref{2, 3})
			c.linked(ref{2, 7}, ref{2, 6})
			c.linked(ref{2, 6}, ref{2, 7})
			// Shutdown: fd 9 cannot write (EPIPE), fd 10 reads EOF and
			// can still write to fd 9.
			if err := c.send(ref{2, 9}, "x"); err != unix.EPIPE {
				t.Errorf("send on fd 9 (shut down for writing): %v, want EPIPE", err)
			}
			if n, err := unix.Read(c.getfd(ref{2, 10}), make([]byte, 8)); n != 0 || err != nil {
				t.Errorf("read on fd 10: %d, %v; want EOF", n, err)
			}
			c.linked(ref{2, 10}, ref{2, 9})
			// Both listeners accept new connections, and nothing was
			// pending.
			for _, l := range []struct {
				r    ref
				addr string
			}{{ref{2, 5}, "@fdr-stream-listen"}, {ref{2, 8}, unixStreamPath}} {
				lfd := c.getfd(l.r)
				if pending(lfd) {
					t.Errorf("%s: a connection is pending before any connect", l.r)
				}
				s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				if err := unix.Connect(s, &unix.SockaddrUnix{Name: l.addr}); err != nil {
					t.Errorf("connect to %s: %v", l.addr, err)
				} else if a, err := acceptWait(lfd); err != nil {
					t.Errorf("%s: accept: %v", l.r, err)
				} else {
					unix.Close(a)
				}
				unix.Close(s)
			}
			// The backlogs: a unix listener queues backlog+1 connections.
			if n := backlogOf(t, unixStreamPath); n != 5+1 {
				t.Errorf("fd 8 queued %d connections, want 6 (backlog 5)", n)
			}
			if n := backlogOf(t, "@fdr-stream-listen"); n != 16+1 {
				t.Errorf("fd 5 queued %d connections, want 17 (backlog 16)", n)
			}
		},
	},
	{
		name: "unix-dgram",
		want: func() *wantTree {
			fds := stdio(2)
			for fd, obj := range map[int]string{3: "Da", 4: "Db", 5: "Qa", 6: "Qb", 7: "Srv", 8: "Cl"} {
				fds = append(fds, sockFD(2, fd, obj, 0, false))
			}
			return &wantTree{tasks: []wantTask{{2, 0, 2, 2}}, fds: fds}
		},
		beforeData: true,
		extra: func(c *checker) {
			dg, sq := unix.SOCK_DGRAM, unix.SOCK_SEQPACKET
			c.wantSock(ref{2, 3}, dg, "", "", false)
			c.wantSock(ref{2, 4}, dg, "", "", false)
			c.wantSock(ref{2, 5}, sq, "", "", false)
			c.wantSock(ref{2, 6}, sq, "", "", false)
			c.wantSock(ref{2, 7}, dg, "@fdr-dgram-srv", "-", false)
			c.wantSock(ref{2, 8}, dg, "", "@fdr-dgram-srv", false)
			c.wantMessages(ref{2, 3}, "x", "dgram", "twelve bytes")
			c.wantMessages(ref{2, 4})
			c.wantMessages(ref{2, 5}, "rec-one", "record-two!")
			c.wantMessages(ref{2, 6})
			c.wantMessages(ref{2, 7}, "hello", "world!!")
			c.wantMessages(ref{2, 8})
			c.linked(ref{2, 3}, ref{2, 4})
			c.linked(ref{2, 4}, ref{2, 3})
			c.linked(ref{2, 5}, ref{2, 6})
			c.linked(ref{2, 6}, ref{2, 5})
			c.linked(ref{2, 8}, ref{2, 7})
		},
	},
	{
		name: "unix-tree",
		want: func() *wantTree {
			fds := stdio(2)
			fds = append(fds, sockFD(2, 3, "A", 0, false))
			fds = append(fds, stdio(3)...)
			fds = append(fds, sockFD(3, 3, "B", 0, false), sockFD(3, 9, "A", 0, false))
			fds = append(fds, stdio(4)...)
			fds = append(fds, sockFD(4, 20, "B", 0, false))
			return &wantTree{tasks: []wantTask{{2, 0, 2, 2}, {3, 2, 2, 2}, {4, 2, 2, 2}}, fds: fds}
		},
		beforeData: true,
		extra: func(c *checker) {
			if n := c.queued(ref{3, 9}); n != 8 {
				c.t.Errorf("A: %d bytes queued, want 8", n)
			}
			if n := c.queued(ref{4, 20}); n != 9 {
				c.t.Errorf("B: %d bytes queued, want 9", n)
			}
			c.wantStream(ref{2, 3}, "to-A:123")
			c.wantStream(ref{3, 9}, "")
			c.wantStream(ref{3, 3}, "to-B:4567")
			c.wantStream(ref{4, 20}, "")
			c.linked(ref{4, 20}, ref{2, 3})
			c.linked(ref{3, 9}, ref{3, 3})
		},
	},
	{
		name: "unix-scm",
		want: func() *wantTree {
			fds := append(stdio(2), sockFD(2, 3, "a", 0, false), sockFD(2, 4, "b", 0, false))
			return &wantTree{tasks: []wantTask{{2, 0, 2, 2}}, fds: fds}
		},
		beforeData: true,
		extra: func(c *checker) {
			t := c.t
			fd := c.getfd(ref{2, 3})
			buf := make([]byte, 64)
			oob := make([]byte, unix.CmsgSpace(4))
			n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
			if err != nil {
				t.Fatalf("recvmsg fd 3: %v", err)
			}
			if string(buf[:n]) != "FD:1" {
				t.Errorf("first message on fd 3: %q, want %q", buf[:n], "FD:1")
			}
			fds := parseRights(t, oob[:oobn])
			if len(fds) != 1 {
				t.Fatalf("first message carries %d fds, want 1", len(fds))
			}
			p := fds[0]
			defer unix.Close(p)
			if fl, err := unix.FcntlInt(uintptr(p), unix.F_GETFL, 0); err != nil || fl&unix.O_ACCMODE != unix.O_RDONLY {
				t.Errorf("fd in flight: flags %#o (%v), want O_RDONLY", fl, err)
			}
			if _, _, mode, err := fdcheck.Inode(p); err != nil || mode&unix.S_IFMT != unix.S_IFIFO {
				t.Errorf("fd in flight: mode %#o (%v), want a pipe", mode, err)
			}
			if sz, err := fdcheck.PipeSize(p); err != nil || sz != 65536 {
				t.Errorf("pipe in flight: size %d (%v), want 65536", sz, err)
			}
			if got := readAllFD(t, p); got != "P|\n" {
				t.Errorf("pipe in flight holds %q, want %q then EOF", got, "P|\n")
			}
			c.wantMessages(ref{2, 3}, "plain-after")
			c.wantStream(ref{2, 4}, "")
		},
	},
}

// backlogOf connects to the listener at addr until a connect would
// block, and returns how many connections it queued.
func backlogOf(t testing.TB, addr string) int {
	t.Helper()
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for len(fds) < 200 {
		s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, s)
		if err := unix.Connect(s, &unix.SockaddrUnix{Name: addr}); err == unix.EAGAIN {
			return len(fds) - 1
		} else if err != nil {
			t.Fatalf("connect to %s: %v", addr, err)
		}
	}
	return len(fds)
}

// pending reports whether listener lfd has a connection to accept.
func pending(lfd int) bool {
	pfd := []unix.PollFd{{Fd: int32(lfd), Events: unix.POLLIN}}
	n, _ := unix.Poll(pfd, 0)
	return n > 0 && pfd[0].Revents&unix.POLLIN != 0
}

// acceptWait accepts a connection on lfd, waiting up to a second.
func acceptWait(lfd int) (int, error) {
	pfd := []unix.PollFd{{Fd: int32(lfd), Events: unix.POLLIN}}
	if n, _ := unix.Poll(pfd, 1000); n == 0 {
		return -1, unix.ETIMEDOUT
	}
	a, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	return a, err
}

// parseRights returns the fds of SCM_RIGHTS control messages.
func parseRights(t testing.TB, oob []byte) []int {
	t.Helper()
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		t.Fatalf("parse control messages: %v", err)
	}
	var fds []int
	for _, m := range msgs {
		r, err := unix.ParseUnixRights(&m)
		if err != nil {
			t.Fatalf("parse SCM_RIGHTS: %v", err)
		}
		fds = append(fds, r...)
	}
	return fds
}

// readAllFD reads fd until EOF (failing on EAGAIN: a writer still open).
func readAllFD(t testing.TB, fd int) string {
	t.Helper()
	var out []byte
	buf := make([]byte, 4096)
	for {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		unix.Poll(pfd, 1000)
		n, err := unix.Read(fd, buf)
		if err != nil {
			t.Errorf("read fd %d: %v (no EOF)", fd, err)
			return string(out)
		}
		if n == 0 {
			return string(out)
		}
		out = append(out, buf[:n]...)
	}
}

// TestUnixFixtures restores the CRIU 4.2 unix socket fixtures with
// restore.Run and with the CLI, and checks every fact of their
// EXPECTED.md from outside the stopped tasks.
func TestUnixFixtures(t *testing.T) {
	needRoot(t)
	unlock, err := fdcheck.LockFixtures(filepath.Dir(fixtureDir(t, "unix-stream")), 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
	for _, fx := range unixFixtures {
		t.Run(fx.name, func(t *testing.T) {
			dir := fixtureDir(t, fx.name)
			for _, how := range []string{"api", "cli"} {
				t.Run(how, func(t *testing.T) {
					if fx.setup != nil {
						fx.setup(t)
					}
					var pids map[uint32]int
					switch how {
					case "api":
						pids = runStop(t, dir).PidMap
					case "cli":
						pids, _ = runCLIStop(t, dir)
					}
					w := fx.want()
					c := &checker{t: t, pids: pids}
					c.check(w)
					fx.extra(c)
				})
			}
		})
	}
}
