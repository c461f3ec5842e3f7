package main

import (
	"golang.org/x/sys/unix"
)

// Expected-failure scenarios: states the dumper must refuse, leaving the
// tree running and intact (the runner then verifies it without a
// restore).

// crfail-unix-pending-data: the root holds an abstract stream listener
// (3) and a client (4) whose connection was not accepted yet but already
// carries 6 bytes: they cannot be read without accepting the connection,
// so the dump must refuse.
const skMsg = "hello\n"

func init() {
	register("crfail-unix-pending-data", map[string]*Role{
		"root": {
			Fds: std(3, 4),
			Setup: func(t *T) error {
				name := t.Abstract("l")
				if err := t.ListenAt(name, 4, 3); err != nil {
					return err
				}
				if err := t.ConnectAt(name, 4); err != nil {
					return err
				}
				return Send(4, skMsg)
			},
			Verify: func(t *T) {
				t.CheckSock(3, unix.SOCK_STREAM, true, t.Abstract("l"), "-")
				if !t.Check(pollIn(3, deadline()), "pending connection") {
					return
				}
				a, _, err := unix.Accept4(3, unix.SOCK_CLOEXEC)
				if !t.Check(err, "accept") {
					return
				}
				defer unix.Close(a)
				t.CheckStream(a, skMsg)
				t.CheckPingPong(a, 4)
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
