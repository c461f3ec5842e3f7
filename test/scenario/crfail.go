package main

import (
	"golang.org/x/sys/unix"
)

// Expected-failure scenarios: states the dumper must refuse, leaving the
// tree running and intact (the runner then verifies it without a
// restore).

// crfail-socketpair: a child holds a unix stream socketpair at fds 3 and
// 4 with 6 bytes queued at 4.
const skMsg = "hello\n"

func init() {
	register("crfail-socketpair", map[string]*Role{
		"root": {
			Fds:      std(),
			Children: children("holder"),
			Setup: func(t *T) error {
				_, err := t.Spawn("holder", nil)
				return err
			},
		},
		"holder": {
			Fds: std(3, 4),
			Setup: func(t *T) error {
				sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					return err
				}
				a, err := t.hi(sp[0])
				if err != nil {
					return err
				}
				b, err := t.hi(sp[1])
				if err != nil {
					return err
				}
				if err := t.Place(a, 3); err != nil {
					return err
				}
				if err := t.Place(b, 4); err != nil {
					return err
				}
				return WriteAll(3, []byte(skMsg))
			},
			Verify: func(t *T) {
				t.CheckType(3, "socket:")
				t.CheckType(4, "socket:")
				msg, err := ReadFull(4, len(skMsg))
				if t.Check(err, "queued data") {
					t.CheckData("queued data", msg, []byte(skMsg))
				}
				t.Check(WriteAll(4, []byte("back")), "write back")
				back, err := ReadFull(3, 4)
				if t.Check(err, "read back") {
					t.CheckData("read back", back, []byte("back"))
				}
			},
		},
	})
}

// crfail-epoll: the root holds an epoll instance (fd 3) watching the read
// end (4) of a pipe (4/5) with one byte queued.
func init() {
	register("crfail-epoll", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5),
			Setup: func(t *T) error {
				if err := t.PipeAt(4, 5, 0); err != nil {
					return err
				}
				ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
				if err != nil {
					return err
				}
				if ep, err = t.hi(ep); err != nil {
					return err
				}
				if err := t.Place(ep, 3); err != nil {
					return err
				}
				ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: 4}
				if err := unix.EpollCtl(3, unix.EPOLL_CTL_ADD, 4, &ev); err != nil {
					return err
				}
				return WriteAll(5, []byte("x"))
			},
			Verify: func(t *T) {
				t.CheckType(3, "anon_inode:[eventpoll]")
				evs := make([]unix.EpollEvent, 4)
				n, err := unix.EpollWait(3, evs, 1000)
				if t.Check(err, "epoll_wait") && (n != 1 || evs[0].Fd != 4 || evs[0].Events&unix.EPOLLIN == 0) {
					t.Fail("epoll_wait: %d events %+v, want EPOLLIN on fd 4", n, evs[:max(n, 0)])
				}
				b, err := ReadFull(4, 1)
				if t.Check(err, "read the queued byte") && string(b) != "x" {
					t.Fail("queued byte %q, want x", b)
				}
			},
		},
	})
}

// crfail-console: the root holds /dev/console (fd 3, O_NOCTTY). fdrestore
// dumps ptys and /dev/tty but not consoles, virtual terminals or serial
// lines: the dump refuses the tree, which keeps running unharmed.
func init() {
	register("crfail-console", map[string]*Role{
		"root": {
			Fds: std(3),
			Setup: func(t *T) error {
				return t.OpenAt("/dev/console", unix.O_RDWR|unix.O_NOCTTY, 0, 3)
			},
			Verify: func(t *T) {
				t.CheckType(3, "/dev/console")
			},
		},
	})
}
