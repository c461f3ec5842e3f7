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
