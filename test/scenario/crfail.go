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
				if err := t.SocketAt(unix.SOCK_STREAM, 3); err != nil {
					return err
				}
				if err := unix.Bind(3, SockAddr(name)); err != nil {
					return err
				}
				if err := unix.Listen(3, 4); err != nil {
					return err
				}
				if err := t.SocketAt(unix.SOCK_STREAM, 4); err != nil {
					return err
				}
				if err := unix.Connect(4, SockAddr(name)); err != nil {
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

// crfail-pty: the root holds a pty master (fd 3, opened through ptmx) and
// its slave (fd 4, opened with TIOCGPTPEER, not as a controlling tty),
// with 3 bytes written to the master waiting at the slave.
func init() {
	register("crfail-pty", map[string]*Role{
		"root": {
			Fds: std(3, 4),
			Setup: func(t *T) error {
				m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
				if err != nil {
					return err
				}
				if m, err = t.hi(m); err != nil {
					return err
				}
				if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
					unix.Close(m)
					return err
				}
				s, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(m), unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
				if errno != 0 {
					unix.Close(m)
					return errno
				}
				sfd, err := t.hi(int(s))
				if err != nil {
					unix.Close(m)
					return err
				}
				if err := t.Place(m, 3); err != nil {
					return err
				}
				if err := t.Place(sfd, 4); err != nil {
					return err
				}
				// Raw mode, so the bytes reach the slave as written.
				tio, err := unix.IoctlGetTermios(4, unix.TCGETS)
				if err != nil {
					return err
				}
				tio.Lflag &^= unix.ICANON | unix.ECHO
				if err := unix.IoctlSetTermios(4, unix.TCSETS, tio); err != nil {
					return err
				}
				return WriteAll(3, []byte("pty"))
			},
			Verify: func(t *T) {
				t.CheckType(3, "/dev/")
				t.CheckType(4, "/dev/pts/")
				b, err := ReadFull(4, 3)
				if t.Check(err, "read the queued bytes at the slave") {
					t.CheckData("queued bytes", b, []byte("pty"))
				}
			},
		},
	})
}
