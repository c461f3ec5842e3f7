package dump

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unsafe"

	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// cttyIndex is CRIU's synthetic pty index of ctty (/dev/tty) entries.
const cttyIndex = 1006

// ttyKey names one side of one tty: a pty index (or cttyIndex) and the
// side, the way CRIU numbers tty-info ids ((index << 1) | master).
type ttyKey struct {
	index  uint32
	master bool
}

func (k ttyKey) id() uint32 {
	id := k.index << 1
	if k.master {
		id |= 1
	}
	return id
}

// ttySide is what the dump records of one side of a tty.
type ttySide struct {
	key    ttyKey
	info   *criupb.TtyInfoEntry
	fd     int  // a duplicate of a tree fd on this side, -1 once closed
	hungUp bool // the description is hung up (its ioctls fail with EIO)
	data   []byte
}

// ttys is the dump's tty state, in order of first appearance.
type ttys struct {
	sides map[ttyKey]*ttySide
	order []*ttySide
}

// encodeDev encodes a device number as the kernel's new_encode_dev, which
// is what CRIU records in tty_info_entry.rdev.
func encodeDev(dev uint64) uint32 {
	maj, min := unix.Major(dev), unix.Minor(dev)
	return (min & 0xff) | (maj << 8) | ((min &^ 0xff) << 12)
}

// isPtsLink reports whether an fd link names a pty slave, including one
// whose /dev/pts entry is gone (a hung-up slave shows as "(deleted)").
func isPtsLink(link string) bool { return strings.HasPrefix(link, "/dev/pts/") }

// ttyPath is the path to record for a tty fd.
func ttyPath(link string) string { return strings.TrimSuffix(link, " (deleted)") }

// ttyKind classifies a tty device: a pty master (ptmx or a legacy master
// major), a pty slave, /dev/tty, or "" for terminals fdrestore does not
// handle (consoles, virtual terminals, serial lines).
func ttyKind(rdev uint64) string {
	maj, min := unix.Major(rdev), unix.Minor(rdev)
	switch {
	case maj == 5 && min == 2, maj >= 128 && maj <= 135:
		return "master"
	case maj == 136:
		return "slave"
	case maj == 5 && min == 0:
		return "ctty"
	}
	return ""
}

func ioctlGetInt32(fd int, req uint) (int, error) {
	var v int32
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(&v)))
	if e != 0 {
		return 0, e
	}
	return int(v), nil
}

func termiosEntry(t *unix.Termios) *criupb.TermiosEntry {
	// c_cc as CRIU stores it: the control characters packed four to a
	// value, little endian, in 19 values (the tail zero).
	cc := make([]uint32, 19)
	for i, c := range t.Cc {
		cc[i/4] |= uint32(c) << (8 * (i % 4))
	}
	return &criupb.TermiosEntry{CIflag: proto.Uint32(t.Iflag), COflag: proto.Uint32(t.Oflag), CCflag: proto.Uint32(t.Cflag),
		CLflag: proto.Uint32(t.Lflag), CLine: proto.Uint32(uint32(t.Line)), CIspeed: proto.Uint32(0), COspeed: proto.Uint32(0), CCc: cc}
}

// readTTY records a tty fd: its side and index, and at the first fd of
// each side that side's settings. local is the dumper's duplicate of the
// fd. It returns a non-empty type for a terminal fdrestore cannot dump.
func (s *state) readTTY(e *fdEnt, local int) (string, error) {
	kind := ttyKind(e.st.Rdev)
	var key ttyKey
	switch kind {
	case "master":
		n, err := ioctlGetInt32(local, unix.TIOCGPTN)
		if err != nil {
			return "", fmt.Errorf("TIOCGPTN on %s: %w", e.link, err)
		}
		key = ttyKey{uint32(n), true}
	case "slave":
		key = ttyKey{unix.Minor(e.st.Rdev), false}
	case "ctty":
		key = ttyKey{cttyIndex, true}
	default:
		return fmt.Sprintf("tty %d:%d", unix.Major(e.st.Rdev), unix.Minor(e.st.Rdev)), nil
	}
	e.kind, e.tty = kindTTY, key
	if s.ttys.sides == nil {
		s.ttys.sides = map[ttyKey]*ttySide{}
	}
	if s.ttys.sides[key] != nil {
		return "", nil
	}
	typ := criupb.TtyType_PTY
	if kind == "ctty" {
		typ = criupb.TtyType_CTTY
	}
	info := &criupb.TtyInfoEntry{Id: proto.Uint32(key.id()), Type: typ.Enum(), Locked: proto.Bool(false), Exclusive: proto.Bool(false),
		PacketMode: proto.Bool(false), Sid: proto.Uint32(0), Pgrp: proto.Uint32(0), Rdev: proto.Uint32(encodeDev(e.st.Rdev)),
		Dev: proto.Uint32(encodeDev(e.st.Dev)), Uid: proto.Uint32(e.st.Uid), Gid: proto.Uint32(e.st.Gid)}
	if kind != "ctty" {
		info.Pty = &criupb.TtyPtyEntry{Index: proto.Uint32(key.index)}
	}
	side := &ttySide{key: key, info: info, fd: -1}
	s.ttys.sides[key] = side
	s.ttys.order = append(s.ttys.order, side)
	if kind == "ctty" {
		// Its session is its holder's; the foreground group is that
		// of the session's terminal (finishTTYs).
		info.Sid = proto.Uint32(uint32(e.t.stat.sid))
		if e.t.stat.tpgid > 0 {
			info.Pgrp = proto.Uint32(uint32(e.t.stat.tpgid))
		}
		return "", nil
	}
	tio, err := unix.IoctlGetTermios(local, unix.TCGETS)
	if errors.Is(err, unix.EIO) {
		side.hungUp = true // the master was closed: no settings left
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("TCGETS on %s: %w", e.link, err)
	}
	info.Termios = termiosEntry(tio)
	if lt, err := unix.IoctlGetTermios(local, unix.TIOCGLCKTRMIOS); err == nil {
		info.TermiosLocked = termiosEntry(lt)
	}
	ws, err := unix.IoctlGetWinsize(local, unix.TIOCGWINSZ)
	if err != nil {
		return "", fmt.Errorf("TIOCGWINSZ on %s: %w", e.link, err)
	}
	info.Winsize = &criupb.WinsizeEntry{WsRow: proto.Uint32(uint32(ws.Row)), WsCol: proto.Uint32(uint32(ws.Col)),
		WsXpixel: proto.Uint32(uint32(ws.Xpixel)), WsYpixel: proto.Uint32(uint32(ws.Ypixel))}
	if v, err := ioctlGetInt32(local, unix.TIOCGEXCL); err == nil {
		info.Exclusive = proto.Bool(v != 0)
	}
	if key.master {
		if v, err := ioctlGetInt32(local, unix.TIOCGPKT); err == nil {
			info.PacketMode = proto.Bool(v != 0)
		}
		if v, err := ioctlGetInt32(local, unix.TIOCGPTLCK); err == nil {
			info.Locked = proto.Bool(v != 0)
		}
		// On the master, TIOCGSID and TIOCGPGRP answer any caller.
		if sid, err := ioctlGetInt32(local, unix.TIOCGSID); err == nil {
			info.Sid = proto.Uint32(uint32(sid))
			if pg, err := ioctlGetInt32(local, unix.TIOCGPGRP); err == nil {
				info.Pgrp = proto.Uint32(uint32(pg))
			}
		}
	}
	side.fd, err = unix.FcntlInt(uintptr(local), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("keep %s: %w", e.link, err)
	}
	return "", nil
}

// finishTTYs completes the tty records once every fd is read: the
// session of each pty that is a task's controlling terminal (from
// /proc/PID/stat, for slaves whose master the tree does not hold), the
// sessions recorded on both sides, and the queued data of every pty whose
// two sides the tree holds.
func (s *state) finishTTYs() error {
	if len(s.ttys.order) == 0 {
		return nil
	}
	ctty := map[uint32]*task{} // encoded tty device -> a task it is the ctty of
	for _, t := range s.tasks {
		if t.stat.ttyNr != 0 && ctty[uint32(t.stat.ttyNr)] == nil {
			ctty[uint32(t.stat.ttyNr)] = t
		}
	}
	for _, side := range s.ttys.order {
		if side.key.index == cttyIndex || side.hungUp {
			continue
		}
		slave := s.ttys.sides[ttyKey{side.key.index, false}]
		master := s.ttys.sides[ttyKey{side.key.index, true}]
		switch {
		case master != nil && master.info.GetSid() != 0:
			side.info.Sid, side.info.Pgrp = proto.Uint32(master.info.GetSid()), proto.Uint32(master.info.GetPgrp())
		case slave != nil:
			if t := ctty[slave.info.GetRdev()]; t != nil {
				side.info.Sid, side.info.Pgrp = proto.Uint32(uint32(t.stat.sid)), proto.Uint32(uint32(t.stat.tpgid))
			}
		}
	}
	// /dev/tty: the foreground group of the pty its session has as its
	// controlling terminal, when the tree holds that pty.
	if ct := s.ttys.sides[ttyKey{cttyIndex, true}]; ct != nil {
		for _, side := range s.ttys.order {
			if side.key.index != cttyIndex && side.info.GetSid() == ct.info.GetSid() && side.info.GetPgrp() != 0 {
				ct.info.Pgrp = proto.Uint32(side.info.GetPgrp())
				break
			}
		}
	}
	for _, side := range s.ttys.order {
		if !side.key.master || side.key.index == cttyIndex || side.fd < 0 {
			continue
		}
		slave := s.ttys.sides[ttyKey{side.key.index, false}]
		if slave == nil || slave.fd < 0 {
			continue
		}
		if err := peekPty(side, slave); err != nil {
			return fmt.Errorf("pty %d: queued data: %w", side.key.index, err)
		}
	}
	return nil
}

// closeTTYs closes the duplicates kept for finishTTYs.
func (s *state) closeTTYs() {
	for _, side := range s.ttys.order {
		if side.fd >= 0 {
			unix.Close(side.fd)
			side.fd = -1
		}
	}
}

// peekPty saves the bytes queued in both directions of a pty without
// losing them. A tty cannot be peeked, so with the tree frozen they are
// read and written straight back: under a raw termios (no echo, no input
// or output processing, reads that never wait) the bytes readable on the
// master and on the slave are read, written back into the other side,
// and the recorded termios, locked termios and packet mode are put back
// once they have arrived. What differs afterwards for a tree that goes on
// running: a partial line of a canonical-mode slave becomes readable as
// it stands, and a pending packet-mode status byte is dropped.
func peekPty(master, slave *ttySide) error {
	m, sl := master.fd, slave.fd
	saved, err := unix.IoctlGetTermios(sl, unix.TCGETS)
	if err != nil {
		return fmt.Errorf("TCGETS: %w", err)
	}
	var zero unix.Termios
	locked, lerr := unix.IoctlGetTermios(sl, unix.TIOCGLCKTRMIOS)
	if lerr == nil && *locked != zero {
		if err := unix.IoctlSetTermios(sl, unix.TIOCSLCKTRMIOS, &zero); err != nil {
			return fmt.Errorf("unlock termios: %w", err)
		}
		defer unix.IoctlSetTermios(sl, unix.TIOCSLCKTRMIOS, locked)
	}
	pkt := master.info.GetPacketMode()
	if pkt {
		if err := unix.IoctlSetPointerInt(m, unix.TIOCPKT, 0); err != nil {
			return fmt.Errorf("TIOCPKT 0: %w", err)
		}
		defer unix.IoctlSetPointerInt(m, unix.TIOCPKT, 1)
	}
	raw := unix.Termios{Cflag: saved.Cflag&^(unix.CSIZE|unix.PARENB) | unix.CS8 | unix.CREAD}
	if err := unix.IoctlSetTermios(sl, unix.TCSETS, &raw); err != nil {
		return fmt.Errorf("raw termios: %w", err)
	}
	defer unix.IoctlSetTermios(sl, unix.TCSETS, saved)
	toMaster, err := drain(m)
	if err != nil {
		return fmt.Errorf("read the master: %w", err)
	}
	toSlave, err := drain(sl)
	if err != nil {
		return fmt.Errorf("read the slave: %w", err)
	}
	// Written back first, so that a failure below loses nothing.
	if err := writeBack(sl, toMaster); err != nil {
		return fmt.Errorf("put %d bytes back toward the master: %w", len(toMaster), err)
	}
	if err := writeBack(m, toSlave); err != nil {
		return fmt.Errorf("put %d bytes back toward the slave: %w", len(toSlave), err)
	}
	if err := waitInq(m, len(toMaster)); err != nil {
		return err
	}
	if err := waitInq(sl, len(toSlave)); err != nil {
		return err
	}
	master.data, slave.data = toMaster, toSlave
	return nil
}

// drain reads everything readable on fd without ever blocking; bytes
// still in the tty's flip buffer (pushed to the line discipline by a
// kernel work item, which runs while the tree is frozen) get a grace
// period of 2 ms to arrive.
func drain(fd int) ([]byte, error) {
	var out []byte
	buf := make([]byte, 4096)
	grace := false
	for {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		timeout := 0
		if grace {
			timeout = 2
		}
		n, err := unix.Poll(pfd, timeout)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return out, err
		}
		if n == 0 || pfd[0].Revents&unix.POLLIN == 0 {
			if grace {
				return out, nil
			}
			grace = true
			continue
		}
		r, err := unix.Read(fd, buf)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err == unix.EIO || r == 0 {
			return out, nil // the other side is closed
		}
		if err != nil {
			return out, err
		}
		out = append(out, buf[:r]...)
		grace = false
	}
}

func writeBack(fd int, b []byte) error {
	for tries := 0; len(b) > 0; tries++ {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN && tries < 1000 {
			time.Sleep(time.Millisecond)
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// waitInq waits up to 2 s until fd has want bytes to read (at most what a
// line discipline buffers).
func waitInq(fd, want int) error {
	want = min(want, 4095)
	if want == 0 {
		return nil
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		n, err := unix.IoctlGetInt(fd, unix.TIOCINQ)
		if err != nil {
			return fmt.Errorf("TIOCINQ: %w", err)
		}
		if n >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d bytes put back arrived", n, want)
		}
		time.Sleep(time.Millisecond)
	}
}

// ttyImages returns tty-info.img's and tty-data.img's entries.
func (s *state) ttyImages() (infos, data []proto.Message) {
	for _, side := range s.ttys.order {
		infos = append(infos, side.info)
		if len(side.data) > 0 {
			data = append(data, &criupb.TtyDataEntry{TtyId: proto.Uint32(side.key.id()), Data: side.data})
		}
	}
	return infos, data
}
