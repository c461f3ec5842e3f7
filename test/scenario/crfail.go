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
