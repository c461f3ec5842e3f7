package main

import (
	"bytes"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Pty helpers. Every tty fd is made with O_NOCTTY except where a
// scenario sets a controlling terminal on purpose (TIOCSCTTY).

// openPtmx opens a pty master above the state's fds and unlocks it.
func (t *T) openPtmx() (int, error) {
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if m, err = t.hi(m); err != nil {
		return -1, err
	}
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(m)
		return -1, err
	}
	return m, nil
}

// openPeer opens the slave of master m with TIOCGPTPEER, above the
// state's fds, with O_CLOEXEC so that only Place makes it inheritable.
func (t *T) openPeer(m, flags int) (int, error) {
	s, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(m), unix.TIOCGPTPEER, uintptr(flags|unix.O_NOCTTY))
	if errno != 0 {
		return -1, errno
	}
	unix.CloseOnExec(int(s))
	return t.hi(int(s))
}

// openPty opens a pty master and its slave (read-write), both above the
// state's fds.
func (t *T) openPty() (m, s int, err error) {
	if m, err = t.openPtmx(); err != nil {
		return -1, -1, err
	}
	if s, err = t.openPeer(m, unix.O_RDWR); err != nil {
		return -1, -1, err
	}
	return m, s, nil
}

// ptyAt opens a pty and places its master at mfd and its slave at sfd.
func (t *T) ptyAt(mfd, sfd int) error {
	m, s, err := t.openPty()
	if err != nil {
		return err
	}
	if err := t.Place(m, mfd); err != nil {
		return err
	}
	return t.Place(s, sfd)
}

// spawnOnSlave starts role with fd 5 (a pty slave) as its fds 0-2, then
// closes fd 5 here. The slave goes to the child from a low number:
// ForkExec puts its own error pipe just above the highest Stdio fd, where
// the child's report fd may sit.
func (t *T) spawnOnSlave(role string) error {
	unix.CloseOnExec(5)
	if _, err := t.Spawn(role, &SpawnOpts{Stdio: [3]int{5, 5, 5}}); err != nil {
		return err
	}
	unix.Close(5)
	return nil
}

func ptyIndex(m int) (int, error) {
	var n int32
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(m), unix.TIOCGPTN, uintptr(unsafe.Pointer(&n))); e != 0 {
		return -1, e
	}
	return int(n), nil
}

func ioctlGet(fd int, req uint) (int, error) {
	var v int32
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(&v))); e != 0 {
		return 0, e
	}
	return int(v), nil
}

// checkIoctl checks an int-valued ioctl.
func (t *T) checkIoctl(fd int, req uint, name string, want int) {
	v, err := ioctlGet(fd, req)
	if t.Check(err, fmt.Sprintf("fd %d: %s", fd, name)) && v != want {
		t.Fail("fd %d: %s is %d, want %d", fd, name, v, want)
	}
}

// readTTY reads exactly want's length from a tty fd (within the I/O
// timeout) and compares.
func (t *T) readTTY(fd int, what string, want string) {
	b, err := ReadFull(fd, len(want))
	if t.Check(err, what) && string(b) != want {
		t.Fail("%s: read %q, want %q", what, b, want)
	}
}

// checkNothingQueued checks that nothing more is readable on fd.
func (t *T) checkNothingQueued(fd int, what string) {
	sleep(20e6)
	if n, err := unix.IoctlGetInt(fd, unix.TIOCINQ); t.Check(err, what+": FIONREAD") && n != 0 {
		t.Fail("%s: %d more bytes queued, want none", what, n)
	}
}

// ctty returns tty_nr and tpgid from /proc/self/stat.
func ctty() (ttyNr, tpgid int, err error) {
	b, err := readFile("/proc/self/stat")
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 6 {
		return 0, 0, fmt.Errorf("/proc/self/stat: %q", b)
	}
	_, err = fmt.Sscan(f[4]+" "+f[5], &ttyNr, &tpgid)
	return ttyNr, tpgid, err
}

// myTermios is what pty00 sets: raw-ish input and output, a few
// distinctive control characters.
func myTermios(tio *unix.Termios) {
	tio.Iflag = unix.IGNBRK | unix.IXANY
	tio.Oflag = unix.ONLCR // without OPOST: no output processing
	tio.Lflag = unix.ECHOE | unix.ECHOK | unix.ECHOKE
	tio.Cc[unix.VMIN], tio.Cc[unix.VTIME] = 1, 0
	tio.Cc[unix.VINTR], tio.Cc[unix.VEOF], tio.Cc[unix.VERASE] = 0x05, 0x06, 0x08
}

func (t *T) checkTermios(fd int, set func(*unix.Termios)) {
	got, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if !t.Check(err, fmt.Sprintf("fd %d: TCGETS", fd)) {
		return
	}
	want := *got
	set(&want)
	if *got != want {
		t.Fail("fd %d: termios %+v, want %+v", fd, *got, want)
	}
}

// pty00: one pty, both ends in the root. fd 3 = master, fd 4 = a slave
// description (O_RDWR), fd 5 = a second slave description (O_RDONLY,
// opened by path), fd 6 = fd 4 duplicated. Custom termios, a 33x99
// window, the slave device owned by 1234:5 with mode 0640; "to-slave!" queued toward the slave and "to-master" toward the
// master, both unread. After restore the root reads both, then writes
// through each end and reads at the other.
func init() {
	const toSlave, toMaster = "to-slave!", "to-master"
	register("pty00", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5, 6),
			Setup: func(t *T) error {
				m, s, err := t.openPty()
				if err != nil {
					return err
				}
				n, err := ptyIndex(m)
				if err != nil {
					return err
				}
				s2, err := unix.Open(fmt.Sprintf("/dev/pts/%d", n), unix.O_RDONLY|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
				if err != nil {
					return err
				}
				if s2, err = t.hi(s2); err != nil {
					return err
				}
				tio, err := unix.IoctlGetTermios(s, unix.TCGETS)
				if err != nil {
					return err
				}
				myTermios(tio)
				if err := unix.IoctlSetTermios(s, unix.TCSETS, tio); err != nil {
					return err
				}
				if err := unix.IoctlSetWinsize(m, unix.TIOCSWINSZ, &unix.Winsize{Row: 33, Col: 99, Xpixel: 7, Ypixel: 11}); err != nil {
					return err
				}
				// The slave device's owner and mode.
				if err := unix.Fchown(s, 1234, 5); err != nil {
					return err
				}
				if err := unix.Fchmod(s, 0o640); err != nil {
					return err
				}
				for _, p := range [][2]int{{m, 3}, {s, 4}, {s2, 5}} {
					if err := t.Place(p[0], p[1]); err != nil {
						return err
					}
				}
				if err := t.DupAt(4, 6); err != nil {
					return err
				}
				if err := WriteAll(3, []byte(toSlave)); err != nil {
					return err
				}
				if err := WriteAll(4, []byte(toMaster)); err != nil {
					return err
				}
				sleep(20e6) // let the bytes cross
				return nil
			},
			Verify: func(t *T) {
				t.CheckType(3, "/dev/")
				t.CheckType(4, "/dev/pts/")
				t.CheckType(5, "/dev/pts/")
				t.CheckFlags(4, unix.O_ACCMODE, unix.O_RDWR)
				t.CheckFlags(5, unix.O_ACCMODE, unix.O_RDONLY)
				if nr, _, err := ctty(); t.Check(err, "stat") && nr != 0 {
					t.Fail("the root has a controlling tty (tty_nr %#x); it must have none", nr)
				}
				t.checkTermios(4, myTermios)
				var st unix.Stat_t
				if t.Check(unix.Fstat(4, &st), "fstat 4") && (st.Uid != 1234 || st.Gid != 5 || st.Mode&0o7777 != 0o640) {
					t.Fail("slave device: owner %d:%d mode %#o, want 1234:5 and 0640", st.Uid, st.Gid, st.Mode&0o7777)
				}
				if ws, err := unix.IoctlGetWinsize(5, unix.TIOCGWINSZ); t.Check(err, "TIOCGWINSZ") && *ws != (unix.Winsize{Row: 33, Col: 99, Xpixel: 7, Ypixel: 11}) {
					t.Fail("winsize %+v, want 33x99 (7x11 pixels)", *ws)
				}
				t.checkIoctl(3, unix.TIOCGPKT, "TIOCGPKT", 0)
				t.checkIoctl(3, unix.TIOCGPTLCK, "TIOCGPTLCK", 0)
				t.checkIoctl(4, unix.TIOCGEXCL, "TIOCGEXCL", 0)
				t.readTTY(5, "queued toward the slave", toSlave)
				t.checkNothingQueued(4, "slave")
				t.readTTY(3, "queued toward the master", toMaster)
				t.checkNothingQueued(3, "master")
				// One pty: the master feeds both slave descriptions,
				// every slave description feeds the master.
				if t.Check(WriteAll(3, []byte("ping")), "write the master") {
					t.readTTY(4, "master -> slave", "ping")
				}
				if t.Check(WriteAll(6, []byte("pong")), "write the slave") {
					t.readTTY(3, "slave -> master", "pong")
				}
			},
		},
	})
}

// pty01: a session with its controlling terminal. The root (session
// leader, no controlling tty) holds the master at fd 3. Child "sh" calls
// setsid, takes the slave (fds 0, 1, 2, one description) as its
// controlling terminal and opens /dev/tty at fd 3. The terminal is in
// canonical mode with echo: the root typed "ls -l\npart" (a line and the
// start of the next), which waits for sh and was echoed; sh printed "$ "
// and "hi\n". After restore: sh's session, foreground group and ctty are
// back (tcgetsid, tcgetpgrp, /proc/self/stat); the root types "ial\n" and
// sh reads "ls -l\n" and "partial\n"; what sh writes on /dev/tty reaches
// the root's master.
func init() {
	const typed, echo, out = "ls -l\npart", "ls -l\r\npart", "$ hi\r\n"
	register("pty01", map[string]*Role{
		"root": {
			Fds:      std(3),
			Children: children("sh"),
			Setup: func(t *T) error {
				if err := t.ptyAt(3, 5); err != nil {
					return err
				}
				if err := t.spawnOnSlave("sh"); err != nil {
					return err
				}
				if err := WriteAll(3, []byte(typed)); err != nil {
					return err
				}
				sleep(50e6)
				return nil
			},
			BeforeChildren: func(t *T) {
				t.readTTY(3, "output and echo queued at the master", out+echo)
				t.Check(WriteAll(3, []byte("ial\n")), "type the end of the line")
			},
			Verify: func(t *T) {
				if nr, _, err := ctty(); t.Check(err, "stat") && nr != 0 {
					t.Fail("the root has a controlling tty (tty_nr %#x); it must have none", nr)
				}
				t.readTTY(3, "the echo, then what sh wrote after restore", "ial\r\nafter\r\n")
			},
		},
		"sh": {
			Fds: std(3),
			Setup: func(t *T) error {
				if _, err := unix.Setsid(); err != nil {
					return err
				}
				if err := unix.IoctlSetInt(0, unix.TIOCSCTTY, 0); err != nil {
					return fmt.Errorf("TIOCSCTTY: %w", err)
				}
				if err := t.OpenAt("/dev/tty", unix.O_RDWR|unix.O_NOCTTY, 0, 3); err != nil {
					return err
				}
				return WriteAll(1, []byte("$ hi\n"))
			},
			Verify: func(t *T) {
				sid, _ := unix.Getsid(0)
				if sid != os.Getpid() {
					t.Fail("getsid %d, want %d (a session leader)", sid, os.Getpid())
				}
				for _, fd := range []int{0, 3} {
					if v, err := ioctlGet(fd, unix.TIOCGSID); t.Check(err, fmt.Sprintf("fd %d: tcgetsid", fd)) && v != sid {
						t.Fail("fd %d: tcgetsid %d, want %d", fd, v, sid)
					}
					if v, err := ioctlGet(fd, unix.TIOCGPGRP); t.Check(err, fmt.Sprintf("fd %d: tcgetpgrp", fd)) && v != unix.Getpgrp() {
						t.Fail("fd %d: tcgetpgrp %d, want %d", fd, v, unix.Getpgrp())
					}
				}
				var st0, st3 unix.Stat_t
				if t.Check(unix.Fstat(0, &st0), "fstat 0") && t.Check(unix.Fstat(3, &st3), "fstat 3") {
					if nr, tp, err := ctty(); t.Check(err, "stat") && (uint64(nr) != uint64(unix.Minor(st0.Rdev))|uint64(unix.Major(st0.Rdev))<<8 || tp != unix.Getpgrp()) {
						t.Fail("/proc/self/stat: tty_nr %#x tpgid %d, want the slave %d:%d and group %d", nr, tp, unix.Major(st0.Rdev), unix.Minor(st0.Rdev), unix.Getpgrp())
					}
					if unix.Major(st3.Rdev) != 5 || unix.Minor(st3.Rdev) != 0 {
						t.Fail("fd 3 is device %d:%d, want /dev/tty (5:0)", unix.Major(st3.Rdev), unix.Minor(st3.Rdev))
					}
				}
				tio, err := unix.IoctlGetTermios(0, unix.TCGETS)
				if t.Check(err, "TCGETS") && (tio.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) != unix.ICANON|unix.ECHO|unix.ISIG || tio.Oflag&(unix.OPOST|unix.ONLCR) != unix.OPOST|unix.ONLCR) {
					t.Fail("termios lflag %#o oflag %#o, want canonical mode with echo and output processing", tio.Lflag, tio.Oflag)
				}
				t.readTTY(0, "the typed line", "ls -l\n")
				t.readTTY(0, "the line completed after restore", "partial\n")
				t.Check(WriteAll(3, []byte("after\n")), "write /dev/tty")
			},
		},
	})
}

// pty02: a locked pty in packet mode with an exclusive slave. Root: fd 3
// = master (TIOCPKT 1, locked again after the slave was opened), fd 4 =
// slave (TIOCEXCL). Nothing queued.
func init() {
	register("pty02", map[string]*Role{
		"root": {
			Fds: std(3, 4),
			Setup: func(t *T) error {
				if err := t.ptyAt(3, 4); err != nil {
					return err
				}
				if err := unix.IoctlSetPointerInt(3, unix.TIOCPKT, 1); err != nil {
					return err
				}
				if err := unix.IoctlSetInt(4, unix.TIOCEXCL, 0); err != nil {
					return err
				}
				return unix.IoctlSetPointerInt(3, unix.TIOCSPTLCK, 1)
			},
			Verify: func(t *T) {
				t.checkIoctl(3, unix.TIOCGPKT, "TIOCGPKT", 1)
				t.checkIoctl(3, unix.TIOCGPTLCK, "TIOCGPTLCK", 1)
				t.checkIoctl(4, unix.TIOCGEXCL, "TIOCGEXCL", 1)
				t.checkIoctl(3, unix.TIOCGEXCL, "TIOCGEXCL", 0)
				// Packet mode: a status byte before the data.
				tio, err := unix.IoctlGetTermios(4, unix.TCGETS)
				if t.Check(err, "TCGETS") {
					tio.Lflag &^= unix.ICANON | unix.ECHO
					tio.Oflag &^= unix.OPOST
					t.Check(unix.IoctlSetTermios(4, unix.TCSETS, tio), "TCSETS")
				}
				if t.Check(WriteAll(4, []byte("x")), "write the slave") {
					t.readTTY(3, "packet from the slave", "\x00x")
				}
				// Locked: no new slave opens. (Last: the failed open
				// marks the slave with an I/O error.)
				if s, _, e := unix.Syscall(unix.SYS_IOCTL, 3, unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC)); e == 0 {
					unix.Close(int(s))
					t.Fail("TIOCGPTPEER works on a locked pty")
				}
			},
		},
	})
}

// pty03: a hung-up slave. The root opened a pty, kept the slave (fd 4)
// and closed the master: reads give EOF at once, writes fail with EIO.
func init() {
	register("pty03", map[string]*Role{
		"root": {
			Fds: std(4),
			Setup: func(t *T) error {
				m, s, err := t.openPty()
				if err != nil {
					return err
				}
				unix.Close(m)
				return t.Place(s, 4)
			},
			Verify: func(t *T) {
				t.CheckType(4, "/dev/pts/")
				var b [4]byte
				if n, err := unix.Read(4, b[:]); n != 0 || err != nil {
					t.Fail("read on the hung-up slave: %d, %v; want EOF", n, err)
				}
				if _, err := unix.Write(4, []byte("x")); err != unix.EIO {
					t.Fail("write on the hung-up slave: %v, want EIO", err)
				}
				if _, err := unix.IoctlGetTermios(4, unix.TCGETS); err != unix.EIO {
					t.Fail("TCGETS on the hung-up slave: %v, want EIO", err)
				}
			},
		},
	})
}

// pty04: a controlling terminal that its session leader holds no fd of,
// held open only by a task of another session, with a foreground group
// other than the leader's. Root (session R): fd 3 = master, fd 4 = slave
// (O_NOCTTY: not R's ctty). Child "lead" calls setsid and opens the slave
// (without O_NOCTTY: it becomes lead's ctty), starts "job" in a new
// process group of its session, makes that group the foreground, then
// closes the slave. After restore lead reaches its terminal through
// /dev/tty and finds job's group in the foreground; the root's slave is
// still nobody else's ctty.
func init() {
	register("pty04", map[string]*Role{
		"root": {
			Fds:      std(3, 4),
			Children: children("lead"),
			Setup: func(t *T) error {
				if err := t.ptyAt(3, 4); err != nil {
					return err
				}
				_, err := t.Spawn("lead", nil)
				return err
			},
			Verify: func(t *T) {
				if nr, _, err := ctty(); t.Check(err, "stat") && nr != 0 {
					t.Fail("the root has a controlling tty (tty_nr %#x); it must have none", nr)
				}
				t.readTTY(3, "what lead wrote through /dev/tty", "lead\r\n")
			},
		},
		"lead": {
			Fds:      std(),
			Children: children("job"),
			Setup: func(t *T) error {
				if _, err := unix.Setsid(); err != nil {
					return err
				}
				n, err := ptyIndex(3)
				if err != nil {
					return err
				}
				s, err := unix.Open(fmt.Sprintf("/dev/pts/%d", n), unix.O_RDWR|unix.O_CLOEXEC, 0)
				if err != nil {
					return err
				}
				unix.Close(3)
				unix.Close(4)
				p, err := t.Spawn("job", &SpawnOpts{Setpgid: true})
				if err != nil {
					unix.Close(s)
					return err
				}
				err = unix.IoctlSetPointerInt(s, unix.TIOCSPGRP, p.Pid)
				unix.Close(s)
				return err
			},
			Verify: func(t *T) {
				fd, err := unix.Open("/dev/tty", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
				if !t.Check(err, "open /dev/tty (the controlling terminal)") {
					return
				}
				defer unix.Close(fd)
				job := t.Child("job")
				if v, err := ioctlGet(fd, unix.TIOCGPGRP); t.Check(err, "tcgetpgrp") && v != job {
					t.Fail("foreground group %d, want job's %d", v, job)
				}
				if v, err := ioctlGet(fd, unix.TIOCGSID); t.Check(err, "tcgetsid") && v != os.Getpid() {
					t.Fail("tcgetsid %d, want %d", v, os.Getpid())
				}
				t.Check(WriteAll(fd, []byte("lead\n")), "write /dev/tty")
			},
		},
		"job": {
			Fds: std(),
		},
	})
}

// readUntil reads from a tty fd until what it read ends with suffix (within
// the I/O timeout).
func readUntil(fd int, suffix string) (string, error) {
	var got []byte
	buf := make([]byte, 256)
	deadline := time.Now().Add(ioTimeout)
	for !strings.HasSuffix(string(got), suffix) {
		if err := pollIn(fd, deadline); err != nil {
			return string(got), err
		}
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return string(got), err
		}
		got = append(got, buf[:n]...)
	}
	return string(got), nil
}

// pty05: a shell session with a foreground job. The root holds the
// master (fd 3). "sh" leads a session with the pty as its controlling
// terminal (fds 0-2) and runs "job" in a process group of its own, which
// it puts in the foreground; job's fds 0-2 are the slave too. The root
// typed "typed\n" (canonical mode, echo on), which waits for job. After
// restore: job reads the line and answers; the root then types ^C, which
// the line discipline turns into SIGINT for the foreground group: job
// gets it (the job's group is the terminal's foreground group again) and
// says so; sh sees job's group in the foreground.
func init() {
	intr := make(chan os.Signal, 4)
	catchIntr := func(*T) error { signal.Notify(intr, unix.SIGINT); return nil }
	register("pty05", map[string]*Role{
		"root": {
			Fds:      std(3),
			Children: children("sh"),
			Setup: func(t *T) error {
				if err := t.ptyAt(3, 5); err != nil {
					return err
				}
				if err := t.spawnOnSlave("sh"); err != nil {
					return err
				}
				if err := WriteAll(3, []byte("typed\n")); err != nil {
					return err
				}
				_, err := readUntil(3, "typed\r\n") // the echo
				return err
			},
			Verify: func(t *T) {
				got, err := readUntil(3, "job-read\r\n")
				if !t.Check(err, "wait for job's answer") {
					return
				}
				if got != "job-read\r\n" {
					t.Fail("before job's answer the master had %q", got)
				}
				if t.Check(WriteAll(3, []byte{0x03}), "type ^C") {
					_, err := readUntil(3, "got-int\r\n")
					t.Check(err, "wait for job's SIGINT report")
				}
			},
		},
		"sh": {
			Fds:      std(),
			Children: children("job"),
			Setup: func(t *T) error {
				unix.Close(3) // the root's master, inherited
				if _, err := unix.Setsid(); err != nil {
					return err
				}
				if err := unix.IoctlSetInt(0, unix.TIOCSCTTY, 0); err != nil {
					return fmt.Errorf("TIOCSCTTY: %w", err)
				}
				p, err := t.Spawn("job", &SpawnOpts{Setpgid: true})
				if err != nil {
					return err
				}
				return unix.IoctlSetPointerInt(0, unix.TIOCSPGRP, p.Pid)
			},
			BeforeChildren: func(t *T) {
				job := t.Child("job")
				if v, err := ioctlGet(0, unix.TIOCGPGRP); t.Check(err, "tcgetpgrp") && v != job {
					t.Fail("foreground group %d, want job's %d", v, job)
				}
				if nr, tp, err := ctty(); t.Check(err, "stat") && (nr == 0 || tp != job) {
					t.Fail("/proc/self/stat: tty_nr %#x tpgid %d, want the pty and job's group %d", nr, tp, job)
				}
			},
		},
		"job": {
			Fds:       std(),
			Setup:     catchIntr,
			AfterExec: catchIntr,
			Verify: func(t *T) {
				t.readTTY(0, "the typed line", "typed\n")
				if !t.Check(WriteAll(1, []byte("job-read\n")), "answer") {
					return
				}
				select {
				case <-intr:
					t.Check(WriteAll(1, []byte("got-int\n")), "report SIGINT")
				case <-after(ioTimeout):
					t.Fail("no SIGINT from ^C on the terminal")
				}
			},
		},
	})
}
