package restore_test

import (
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// ttyImages adds tty-info entries to an imgBuilder's directory.
type ttyImages struct {
	b     *imgBuilder
	infos []*images.Entry
}

// cooked is the kernel's default termios, as CRIU stores it.
func cookedTermios() *criupb.TermiosEntry {
	cc := []byte{3, 0x1c, 0x7f, 0x15, 4, 0, 1, 0, 0x11, 0x13, 0x1a, 0, 0x12, 0x0f, 0x17, 0x16, 0, 0, 0}
	vals := make([]uint32, 19)
	for i, c := range cc {
		vals[i/4] |= uint32(c) << (8 * (i % 4))
	}
	return &criupb.TermiosEntry{CIflag: proto.Uint32(0o2400), COflag: proto.Uint32(0o5), CCflag: proto.Uint32(0o277), CLflag: proto.Uint32(0o105073),
		CLine: proto.Uint32(0), CIspeed: proto.Uint32(0), COspeed: proto.Uint32(0), CCc: vals}
}

// pty adds the tty-info entry of one side of pty index; hungUp records no
// termios (a slave whose master was closed).
func (ti *ttyImages) pty(index uint32, master bool, sid, pgrp uint32, hungUp bool) uint32 {
	id := index << 1
	rdev := uint32(136<<8) | index
	if master {
		id |= 1
		rdev = 5<<8 | 2
	}
	e := &criupb.TtyInfoEntry{Id: proto.Uint32(id), Type: criupb.TtyType_PTY.Enum(), Locked: proto.Bool(false), Exclusive: proto.Bool(false),
		PacketMode: proto.Bool(false), Sid: proto.Uint32(sid), Pgrp: proto.Uint32(pgrp), Rdev: proto.Uint32(rdev),
		Pty: &criupb.TtyPtyEntry{Index: proto.Uint32(index)}}
	if !hungUp {
		e.Termios = cookedTermios()
		e.Winsize = &criupb.WinsizeEntry{WsRow: proto.Uint32(24), WsCol: proto.Uint32(80), WsXpixel: proto.Uint32(0), WsYpixel: proto.Uint32(0)}
	}
	ti.infos = append(ti.infos, &images.Entry{Msg: e})
	return id
}

// ctty adds the tty-info entry of /dev/tty for session sid.
func (ti *ttyImages) ctty(sid, pgrp uint32) uint32 {
	id := uint32(1006<<1 | 1)
	ti.infos = append(ti.infos, &images.Entry{Msg: &criupb.TtyInfoEntry{Id: proto.Uint32(id), Type: criupb.TtyType_CTTY.Enum(),
		Locked: proto.Bool(false), Exclusive: proto.Bool(false), PacketMode: proto.Bool(false), Sid: proto.Uint32(sid), Pgrp: proto.Uint32(pgrp),
		Rdev: proto.Uint32(5 << 8)}})
	return id
}

// file adds a TTY description of info at path.
func (ti *ttyImages) file(info uint32, path string, flags uint32) uint32 {
	b := ti.b
	regID := b.reg(path, flags, 0, -1, 0)
	id := b.nextID
	b.nextID++
	b.files = append(b.files, &criupb.FileEntry{Type: criupb.FdTypes_TTY.Enum(), Id: proto.Uint32(id),
		Tty: &criupb.TtyFileEntry{Id: proto.Uint32(id), TtyInfoId: proto.Uint32(info), Flags: proto.Uint32(flags), Fown: noFown(), RegfId: proto.Uint32(regID)}})
	b.types[id] = criupb.FdTypes_TTY
	return id
}

func (ti *ttyImages) write(t *testing.T) string {
	dir := ti.b.write(t)
	if err := images.WriteFile(filepath.Join(dir, "tty-info.img"), images.KindNamed("TTY_INFO"), ti.infos); err != nil {
		t.Fatal(err)
	}
	return dir
}

const rw = unix.O_RDWR | 0o100000 // O_LARGEFILE (0 in x/sys on amd64)

// sessionsImages: root 10 (session 10) holds pty 0's master (fd 3) and a
// slave (fd 4, not its ctty), a hung-up slave of pty 1 (fd 6), and the
// master of pty 2 (fd 7), whose slave nobody holds. Task
// 11 leads session 11, whose ctty is pty 0, without any fd of it; task
// 12 (group 12, the foreground group, in session 11) holds /dev/tty at
// fd 5.
func sessionsImages(t *testing.T) string {
	b := newImgBuilder()
	ti := &ttyImages{b: b}
	null := b.devNull(unix.O_RDWR)
	m := ti.file(ti.pty(0, true, 11, 12, false), "/dev/ptmx", rw)
	s := ti.file(ti.pty(0, false, 11, 12, false), "/dev/pts/0", rw)
	hup := ti.file(ti.pty(1, false, 0, 0, true), "/dev/pts/1", rw)
	dev := ti.file(ti.ctty(11, 12), "/dev/tty", rw)
	m2 := ti.file(ti.pty(2, true, 0, 0, false), "/dev/ptmx", rw)
	b.task(10, 0, 10, 10).fd(0, null, false).fd(3, m, false).fd(4, s, false).fd(6, hup, false).fd(7, m2, false)
	b.task(11, 10, 11, 11).fd(0, null, false)
	b.task(12, 11, 12, 11).fd(0, null, false).fd(5, dev, false)
	return ti.write(t)
}

// TestTTYSessions restores sessionsImages in a fresh devpts and checks
// from outside: session 11's leader has pty 0 as its controlling terminal
// (held open only by the root, of another session) with group 12 in the
// foreground; the root's slave did not become the root's ctty; task 12's
// /dev/tty reaches pty 0; the slave of pty 1 is hung up. The plan prints
// the /dev/tty edge.
func TestTTYSessions(t *testing.T) {
	needRoot(t)
	dir := sessionsImages(t)
	out, err := exec.Command(cliBinary(t), "plan", "-D", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("fdrestore plan: %v\n%s", err, out)
	}
	for _, want := range []string{
		"ctty controlling tty of session 11 (pty 0): created by task 11; sends file id 9 to task 12",
		"hung-up pty",
		"session 11: only its leader gets pty 0 back as its controlling terminal; tasks 12 of the session have none",
		"Created in task 11 needs controlling tty of session 11 (pty 0) Restored in task 11 (/dev/tty after the controlling tty is set)",
		"Restorable: yes",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("plan does not print %q:\n%s", want, out)
		}
	}
	c := &checker{t: t, pids: runCLIStopPts(t, dir)}
	c.check(&wantTree{
		tasks: []wantTask{{10, 0, 10, 10}, {11, 10, 11, 11}, {12, 11, 12, 11}},
		fds: []wantFD{
			{ref{10, 0}, rdwr, false, 0, "null", "null", "/dev/null"},
			{ref{10, 3}, rdwr, false, -1, "M0", "ptmx", "/dev/ptmx"},
			{ref{10, 4}, rdwr, false, -1, "S0", "pts0", "/dev/pts/0"},
			{ref{10, 6}, rdwr, false, -1, "S1", "pts1", "/dev/pts/1 (deleted)"},
			{ref{10, 7}, rdwr, false, -1, "M2", "ptmx", "/dev/ptmx"},
			{ref{11, 0}, rdwr, false, 0, "null", "null", "/dev/null"},
			{ref{12, 0}, rdwr, false, 0, "null", "null", "/dev/null"},
			{ref{12, 5}, rdwr, false, -1, "tty", "tty", "/dev/tty"},
		},
	})
	c.ctty(11, ttyNr(136, 0), 12)
	c.ctty(10, 0, 0)
	if sid, err := c.ioctlInt(ref{10, 3}, unix.TIOCGSID); err != nil || sid != c.pid(11) {
		t.Errorf("pty 0: session %d (%v), want %d", sid, err, c.pid(11))
	}
	// pty 2: index and window size, set through a temporary slave.
	if n, err := c.ioctlInt(ref{10, 7}, unix.TIOCGPTN); err != nil || n != 2 {
		t.Errorf("task 10 fd 7: TIOCGPTN %d (%v), want 2", n, err)
	}
	c.winsize(ref{10, 7}, 24, 80)
	// Task 12's /dev/tty is pty 0.
	c.write(ref{12, 5}, "via-tty")
	c.ttyData(ref{10, 3}, "via-tty")
	// pty 1's slave is hung up: EOF on read, EIO on write.
	fd := c.getfd(ref{10, 6})
	var buf [4]byte
	if n, err := unix.Read(fd, buf[:]); n != 0 || err != nil {
		t.Errorf("hung-up slave: read %d, %v; want EOF", n, err)
	}
	if _, err := unix.Write(fd, []byte("x")); err != unix.EIO {
		t.Errorf("hung-up slave: write: %v, want EIO", err)
	}
}

// TestTTYOrphanSlave: a pty slave whose master is not in the images is
// reported by the plan (unless --shell-job takes it for the caller's
// terminal), and so is a /dev/tty of a session without a terminal in the
// images.
func TestTTYOrphanSlave(t *testing.T) {
	b := newImgBuilder()
	ti := &ttyImages{b: b}
	s := ti.file(ti.pty(3, false, 0, 0, false), "/dev/pts/3", rw)
	dev := ti.file(ti.ctty(20, 20), "/dev/tty", rw)
	b.task(20, 0, 20, 20).fd(0, s, false).fd(1, dev, false)
	dir := ti.write(t)
	out, err := exec.Command(cliBinary(t), "plan", "-D", dir).CombinedOutput()
	if err == nil {
		t.Fatalf("fdrestore plan succeeded:\n%s", out)
	}
	for _, want := range []string{
		"task 20 fd 0: file id 2 (TTY): pty slave /dev/pts/3 whose master is not in the images",
		"task 20 fd 1: file id 4 (TTY): /dev/tty of session 20, which has no controlling terminal in the images",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("plan does not say %q:\n%s", want, out)
		}
	}
}

// TestTTYSessionsRedump restores sessionsImages, dumps the restored tree
// with `fdrestore dump --leave-running` and checks that every tty fact of
// the new images equals the original's.
func TestTTYSessionsRedump(t *testing.T) {
	needRoot(t)
	dir := sessionsImages(t)
	pids := runCLIStopPts(t, dir)
	img := t.TempDir()
	if out, err := exec.Command(cliBinary(t), "dump", "--leave-running", "-t", strconv.Itoa(pids[10]), "-D", img).CombinedOutput(); err != nil {
		t.Fatalf("fdrestore dump: %v\n%s", err, out)
	}
	compareTTYImages(t, dir, img, pids, 5)
}
