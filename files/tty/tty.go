// Package tty restores pseudo-terminals, /dev/tty descriptions and
// controlling terminals.
//
// One task creates each pty (the task that holds its master, or for a
// slave whose master is not in the images, the task that holds the
// slave): it opens /dev/ptmx until it gets the recorded index, opens every
// slave description of the pty with TIOCGPTPEER and O_NOCTTY (so no slave
// becomes a controlling terminal by accident), puts the queued bytes back
// in both directions under a raw termios, then applies the recorded
// termios, locked termios, window size, packet mode, exclusive mode and
// lock, and publishes all the descriptions at once. A pty whose master was
// closed at dump (a hung-up slave) is made the same way, and its master is
// closed again before the slaves are published, which hangs them up.
//
// A session leader's controlling terminal is set by a ctty opener in the
// leader's task once every tty it holds is present (Needs): TIOCSCTTY on
// a slave description, then TIOCSPGRP to the recorded foreground group.
// The same opener then opens the session's /dev/tty descriptions, which
// only a task with that controlling terminal can open; the engine sends
// them to the tasks that hold them.
package tty

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"unsafe"

	"github.com/fdrestore/fdrestore/files"
	"golang.org/x/sys/unix"
)

// Opener type names.
const (
	PtyType  = "pty"
	CttyType = "ctty"
)

// Termios is a termios as restored: flags, line discipline and the 19
// control characters of the kernel's struct termios.
type Termios struct {
	Iflag, Oflag, Cflag, Lflag uint32
	Line                       uint8
	Cc                         [19]uint8
}

func (t *Termios) enc(e *files.Enc) {
	e.Uint(uint64(t.Iflag))
	e.Uint(uint64(t.Oflag))
	e.Uint(uint64(t.Cflag))
	e.Uint(uint64(t.Lflag))
	e.Uint(uint64(t.Line))
	e.Bytes(t.Cc[:])
}

func decTermios(d *files.Dec) *Termios {
	t := &Termios{Iflag: d.Uint32(), Oflag: d.Uint32(), Cflag: d.Uint32(), Lflag: d.Uint32(), Line: uint8(d.Uint32())}
	cc := d.Bytes()
	if d.Err == nil && len(cc) != len(t.Cc) {
		d.Err = fmt.Errorf("termios: %d control characters, want %d", len(cc), len(t.Cc))
	}
	copy(t.Cc[:], cc)
	return t
}

func (t *Termios) kernel() *unix.Termios {
	k := &unix.Termios{Iflag: t.Iflag, Oflag: t.Oflag, Cflag: t.Cflag, Lflag: t.Lflag, Line: t.Line}
	k.Cc = t.Cc
	return k
}

// Side is the recorded state of one side (master or slave) of a pty.
type Side struct {
	Present   bool     // a tty-info entry of this side exists
	Termios   *Termios // nil when not recorded (hung up)
	Locked    *Termios // locked termios, nil when not recorded
	Winsize   *unix.Winsize
	Packet    bool
	Lock      bool // master: TIOCSPTLCK
	Exclusive bool
	HasOwner  bool
	UID, GID  uint32
	Data      []byte // bytes readable on this side
}

func (s *Side) enc(e *files.Enc) {
	e.Bool(s.Present)
	e.Bool(s.Termios != nil)
	if s.Termios != nil {
		s.Termios.enc(e)
	}
	e.Bool(s.Locked != nil)
	if s.Locked != nil {
		s.Locked.enc(e)
	}
	e.Bool(s.Winsize != nil)
	if w := s.Winsize; w != nil {
		e.Uint(uint64(w.Row))
		e.Uint(uint64(w.Col))
		e.Uint(uint64(w.Xpixel))
		e.Uint(uint64(w.Ypixel))
	}
	e.Bool(s.Packet)
	e.Bool(s.Lock)
	e.Bool(s.Exclusive)
	e.Bool(s.HasOwner)
	e.Uint(uint64(s.UID))
	e.Uint(uint64(s.GID))
	e.Bytes(s.Data)
}

func (s *Side) dec(d *files.Dec) {
	s.Present = d.Bool()
	if d.Bool() {
		s.Termios = decTermios(d)
	}
	if d.Bool() {
		s.Locked = decTermios(d)
	}
	if d.Bool() {
		s.Winsize = &unix.Winsize{Row: uint16(d.Uint()), Col: uint16(d.Uint()), Xpixel: uint16(d.Uint()), Ypixel: uint16(d.Uint())}
	}
	s.Packet, s.Lock, s.Exclusive, s.HasOwner = d.Bool(), d.Bool(), d.Bool(), d.Bool()
	s.UID, s.GID = d.Uint32(), d.Uint32()
	s.Data = d.Bytes()
}

// Desc is one description of a tty to create.
type Desc struct {
	File  uint32
	Flags uint32 // open(2) flags as recorded
	Fown  files.Fown
	Mode  uint32 // slave device mode to restore (permission bits), 0: leave
}

func (x *Desc) enc(e *files.Enc) {
	e.Uint(uint64(x.File))
	e.Uint(uint64(x.Flags))
	e.Fown(x.Fown)
	e.Uint(uint64(x.Mode))
}

func decDesc(d *files.Dec) Desc {
	return Desc{File: d.Uint32(), Flags: d.Uint32(), Fown: d.Fown(), Mode: d.Uint32()}
}

// PtyParams describes one pty and the descriptions to make of it.
type PtyParams struct {
	Index  uint32
	Master Side
	Slave  Side
	// Masters are the master descriptions (none for a hung-up slave),
	// Slaves the slave descriptions, in the order of the OpenSpec's Files
	// (masters first).
	Masters []Desc
	Slaves  []Desc
	// HangUp: the master was closed at dump; it is opened only to make
	// the slaves and closed again, which hangs them up.
	HangUp bool
	// Ptmx is the ptmx device to open ("/dev/ptmx" when empty).
	Ptmx string
	// Reopen: the pty is the caller's terminal (a shell job's): its
	// slave descriptions are opened at Path, nothing else is restored.
	Reopen bool
	Path   string
}

// MarshalBinary encodes p for OpenSpec.Data.
func (p PtyParams) MarshalBinary() ([]byte, error) {
	var e files.Enc
	e.Uint(uint64(p.Index))
	p.Master.enc(&e)
	p.Slave.enc(&e)
	e.Uint(uint64(len(p.Masters)))
	for i := range p.Masters {
		p.Masters[i].enc(&e)
	}
	e.Uint(uint64(len(p.Slaves)))
	for i := range p.Slaves {
		p.Slaves[i].enc(&e)
	}
	e.Bool(p.HangUp)
	e.String(p.Ptmx)
	e.Bool(p.Reopen)
	e.String(p.Path)
	return e.B, nil
}

// UnmarshalBinary decodes what MarshalBinary wrote.
func (p *PtyParams) UnmarshalBinary(b []byte) error {
	d := files.Dec{B: b}
	p.Index = d.Uint32()
	p.Master.dec(&d)
	p.Slave.dec(&d)
	n := d.Uint()
	if n > uint64(len(d.B)) {
		return fmt.Errorf("pty parameters: %d masters in %d bytes", n, len(d.B))
	}
	for i := uint64(0); i < n && d.Err == nil; i++ {
		p.Masters = append(p.Masters, decDesc(&d))
	}
	n = d.Uint()
	if n > uint64(len(d.B)) {
		return fmt.Errorf("pty parameters: %d slaves in %d bytes", n, len(d.B))
	}
	for i := uint64(0); i < n && d.Err == nil; i++ {
		p.Slaves = append(p.Slaves, decDesc(&d))
	}
	p.HangUp = d.Bool()
	p.Ptmx = d.String()
	p.Reopen = d.Bool()
	p.Path = d.String()
	return d.Done()
}

// ErrIndexTaken is wrapped by the error of a pty whose recorded index is
// in use in the devpts instance the restore runs on.
var ErrIndexTaken = errors.New("pty index in use")

func ioctlInt(fd int, req uint, arg int) error {
	v := int32(arg)
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(&v)))
	if e != 0 {
		return e
	}
	return nil
}

func ioctlGetInt(fd int, req uint) (int, error) {
	var v int32
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(&v)))
	if e != 0 {
		return 0, e
	}
	return int(v), nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// OpenPtmxIndex opens a pty master with the given index from ptmx: it
// opens ptmx until devpts, which hands out the lowest free index, gives
// that index, holding the lower ones it got meanwhile, then closes them.
// The devpts directory next to ptmx is locked (flock) meanwhile, so that
// helpers of one restore do not take each other's indices. flags are the
// open flags (the access mode and O_NONBLOCK are kept).
func OpenPtmxIndex(ptmx string, index uint32, flags int) (int, error) {
	if ptmx == "" {
		ptmx = "/dev/ptmx"
	}
	pts := "/dev/pts"
	if ptmx != "/dev/ptmx" {
		pts = ptmx[:len(ptmx)-len("/ptmx")]
	}
	if lk, err := unix.Open(pts, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
		for {
			if err := unix.Flock(lk, unix.LOCK_EX); err != unix.EINTR {
				break
			}
		}
		defer unix.Close(lk) // releases the lock
	}
	oflags := flags&(unix.O_ACCMODE|unix.O_NONBLOCK) | unix.O_NOCTTY | unix.O_CLOEXEC
	var extra []int
	defer func() { closeFDs(extra) }()
	const maxTries = 1024 // indices are at most a few thousand
	for range maxTries {
		fd, err := unix.Open(ptmx, oflags, 0)
		if err != nil {
			return -1, fmt.Errorf("open %s: %w", ptmx, err)
		}
		n, err := ioctlGetInt(fd, unix.TIOCGPTN)
		if err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("%s: TIOCGPTN: %w", ptmx, err)
		}
		switch {
		case uint32(n) == index:
			return fd, nil
		case uint32(n) > index:
			unix.Close(fd)
			return -1, fmt.Errorf("%w: %s gave index %d, so index %d (%s/%d) is held by another pty: restore in a mount namespace with a fresh devpts instance (mount -t devpts -o newinstance) or free that index",
				ErrIndexTaken, ptmx, n, index, pts, index)
		}
		extra = append(extra, fd)
	}
	return -1, fmt.Errorf("%s: index %d not reached after %d opens", ptmx, index, maxTries)
}

// openPeer opens the slave of master with TIOCGPTPEER (or, on kernels
// without it, by path) with the given flags and O_NOCTTY.
func openPeer(master int, index uint32, flags uint32) (int, error) {
	// No O_CLOEXEC: TIOCGPTPEER keeps every flag it is given in the
	// description's flags, where fdinfo would show it for good. The
	// engine sets each fd's FD_CLOEXEC when it places it.
	fl := int(flags)&^(unix.O_CREAT|unix.O_EXCL|unix.O_TRUNC|unix.O_CLOEXEC) | unix.O_NOCTTY
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(master), unix.TIOCGPTPEER, uintptr(fl))
	if e == 0 {
		return int(r), nil
	}
	if e != unix.EINVAL && e != unix.ENOTTY {
		return -1, fmt.Errorf("TIOCGPTPEER flags %#o: %w", fl, e)
	}
	p := "/dev/pts/" + strconv.FormatUint(uint64(index), 10)
	fd, err := unix.Open(p, fl|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", p, err)
	}
	return fd, nil
}

// raw is the termios the queued bytes are written under: no input or
// output processing, no echo, no signals, reads return at once.
var raw = unix.Termios{Cflag: unix.CS8 | unix.CREAD | unix.B38400}

type ptyOpener struct {
	p   PtyParams
	ids []uint32
}

func (o *ptyOpener) Open(c *files.Context) (bool, error) {
	p := &o.p
	if p.Reopen {
		return o.reopen(c)
	}
	mflags := uint32(unix.O_RDWR)
	if len(p.Masters) > 0 {
		mflags = p.Masters[0].Flags
	}
	master, err := OpenPtmxIndex(p.Ptmx, p.Index, int(mflags&unix.O_ACCMODE))
	if err != nil {
		return false, err
	}
	fds := []int{}
	fail := func(err error) (bool, error) {
		closeFDs(fds)
		unix.Close(master)
		return false, err
	}
	if err := ioctlInt(master, unix.TIOCSPTLCK, 0); err != nil {
		return fail(fmt.Errorf("unlock pty %d: %w", p.Index, err))
	}
	for _, s := range p.Slaves {
		fd, err := openPeer(master, p.Index, s.Flags)
		if err != nil {
			return fail(fmt.Errorf("pty %d: open slave for file id %d: %w", p.Index, s.File, err))
		}
		fds = append(fds, fd)
	}
	// A slave to restore the queued data and the slave's settings
	// through: the first slave description, or a temporary one.
	slave, tmp := -1, -1
	if len(fds) > 0 {
		slave = fds[0]
	} else if !p.HangUp {
		if tmp, err = openPeer(master, p.Index, unix.O_RDWR|unix.O_NONBLOCK); err != nil {
			return fail(fmt.Errorf("pty %d: open a slave: %w", p.Index, err))
		}
		slave = tmp
	}
	// The temporary slave must be gone before Adopt, which may place a
	// description on its number.
	closeTmp := func() {
		if tmp >= 0 {
			unix.Close(tmp)
			tmp = -1
		}
	}
	defer closeTmp()
	if !p.HangUp {
		if err := o.restoreState(master, slave); err != nil {
			return fail(fmt.Errorf("pty %d: %w", p.Index, err))
		}
	}
	if p.Slave.HasOwner && slave >= 0 {
		if err := unix.Fchown(slave, int(p.Slave.UID), int(p.Slave.GID)); err != nil {
			return fail(fmt.Errorf("pty %d: chown slave to %d:%d: %w", p.Index, p.Slave.UID, p.Slave.GID, err))
		}
	}
	for i, s := range p.Slaves {
		if s.Mode&0o7777 != 0 {
			if err := unix.Fchmod(fds[i], s.Mode&0o7777); err != nil {
				return fail(fmt.Errorf("pty %d: chmod slave %#o: %w", p.Index, s.Mode&0o7777, err))
			}
		}
	}
	// Exclusive mode and the lock last: both refuse further slave opens.
	if !p.HangUp {
		if p.Slave.Exclusive && slave >= 0 {
			if err := unix.IoctlSetInt(slave, unix.TIOCEXCL, 0); err != nil {
				return fail(fmt.Errorf("pty %d: TIOCEXCL on the slave: %w", p.Index, err))
			}
		}
		if p.Master.Exclusive {
			if err := unix.IoctlSetInt(master, unix.TIOCEXCL, 0); err != nil {
				return fail(fmt.Errorf("pty %d: TIOCEXCL on the master: %w", p.Index, err))
			}
		}
		if p.Master.Lock {
			if err := ioctlInt(master, unix.TIOCSPTLCK, 1); err != nil {
				return fail(fmt.Errorf("pty %d: lock: %w", p.Index, err))
			}
		}
	}
	closeTmp()
	if p.HangUp {
		unix.Close(master) // hangs the slaves up
		master = -1
	} else {
		fds = append([]int{master}, fds...)
	}
	descs := append(append([]Desc{}, p.Masters...), p.Slaves...)
	for i, d := range descs {
		if err := files.SetStatusFlags(fds[i], d.Flags); err != nil && !p.HangUp {
			closeFDs(fds)
			return false, fmt.Errorf("pty %d: file id %d: set flags %#o: %w", p.Index, d.File, d.Flags, err)
		}
		if err := d.Fown.Apply(c, fds[i]); err != nil && !p.HangUp {
			closeFDs(fds)
			return false, fmt.Errorf("pty %d: file id %d: %w", p.Index, d.File, err)
		}
	}
	return true, c.Adopt(o.ids, fds)
}

// reopen opens the slave descriptions of a shell job's terminal at the
// caller's terminal, with O_NOCTTY: the caller's session already has it
// as its controlling tty.
func (o *ptyOpener) reopen(c *files.Context) (bool, error) {
	p := &o.p
	if p.Path == "" {
		return false, fmt.Errorf("pty %d is the terminal of a shell job, and the restore has no terminal to give it (run it on a terminal)", p.Index)
	}
	fds := make([]int, 0, len(p.Slaves))
	for _, d := range p.Slaves {
		fl := int(d.Flags)&^(unix.O_CREAT|unix.O_EXCL|unix.O_TRUNC) | unix.O_NOCTTY | unix.O_CLOEXEC
		fd, err := unix.Open(p.Path, fl, 0)
		if err == nil {
			if err = files.SetStatusFlags(fd, d.Flags); err == nil {
				err = d.Fown.Apply(c, fd)
			}
			if err != nil {
				unix.Close(fd)
			}
		}
		if err != nil {
			closeFDs(fds)
			return false, fmt.Errorf("open the caller's terminal %s for file id %d: %w", p.Path, d.File, err)
		}
		fds = append(fds, fd)
	}
	return true, c.Adopt(o.ids, fds)
}

// restoreState puts the queued bytes back and applies the recorded
// settings. The bytes go in under a raw termios, so that the line
// discipline neither edits, echoes nor translates them; the recorded
// termios follows once they have reached the other side's read buffer.
func (o *ptyOpener) restoreState(master, slave int) error {
	p := &o.p
	toMaster, toSlave := p.Slave.Data, p.Master.Data // readable on slave, on master
	if len(toMaster)+len(toSlave) > 0 {
		r := raw
		r.Cc[unix.VMIN], r.Cc[unix.VTIME] = 1, 0
		if err := unix.IoctlSetTermios(slave, unix.TCSETS, &r); err != nil {
			return fmt.Errorf("raw termios for the queued bytes: %w", err)
		}
		if err := writeAll(slave, toSlave); err != nil {
			return fmt.Errorf("queue %d bytes toward the master: %w", len(toSlave), err)
		}
		if err := writeAll(master, toMaster); err != nil {
			return fmt.Errorf("queue %d bytes toward the slave: %w", len(toMaster), err)
		}
		// pty writes reach the other side's line discipline from a
		// kernel work item: wait until they are there.
		if err := waitQueued(master, len(toSlave)); err != nil {
			return fmt.Errorf("bytes toward the master: %w", err)
		}
		if err := waitQueued(slave, len(toMaster)); err != nil {
			return fmt.Errorf("bytes toward the slave: %w", err)
		}
	}
	t := p.Slave.Termios
	if t == nil {
		t = p.Master.Termios
	}
	if t != nil {
		if err := unix.IoctlSetTermios(slave, unix.TCSETS, t.kernel()); err != nil {
			return fmt.Errorf("TCSETS: %w", err)
		}
	}
	lt := p.Slave.Locked
	if lt == nil {
		lt = p.Master.Locked
	}
	if lt != nil && *lt != (Termios{}) {
		if err := unix.IoctlSetTermios(slave, unix.TIOCSLCKTRMIOS, lt.kernel()); err != nil {
			cur, gerr := unix.IoctlGetTermios(slave, unix.TIOCGLCKTRMIOS)
			if gerr != nil || *cur != *lt.kernel() {
				return fmt.Errorf("TIOCSLCKTRMIOS: %w", err)
			}
		}
	}
	ws := p.Slave.Winsize
	if ws == nil {
		ws = p.Master.Winsize
	}
	if ws != nil {
		if err := unix.IoctlSetWinsize(slave, unix.TIOCSWINSZ, ws); err != nil {
			return fmt.Errorf("TIOCSWINSZ: %w", err)
		}
	}
	if p.Master.Packet {
		if err := ioctlInt(master, unix.TIOCPKT, 1); err != nil {
			return fmt.Errorf("TIOCPKT: %w", err)
		}
	}
	return nil
}

func writeAll(fd int, b []byte) error {
	deadline := 0
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if deadline++; deadline > 5000 {
				return fmt.Errorf("%d bytes left: the tty stays full", len(b))
			}
			pause()
			continue
		case err != nil:
			return err
		}
		b = b[n:]
	}
	return nil
}

// maxLdisc is what a tty's line discipline buffers; more waits in the
// tty's flip buffer until a reader makes room.
const maxLdisc = 4095

// waitQueued waits (up to 5 s) until fd has at least want bytes to read
// (or the line discipline's buffer is full).
func waitQueued(fd int, want int) error {
	want = min(want, maxLdisc)
	if want == 0 {
		return nil
	}
	var n int
	for range 5000 {
		var err error
		if n, err = unix.IoctlGetInt(fd, unix.TIOCINQ); err != nil {
			return fmt.Errorf("TIOCINQ: %w", err)
		}
		if n >= want {
			return nil
		}
		pause()
	}
	return fmt.Errorf("only %d of %d bytes arrived", n, want)
}

func pause() {
	ts := unix.Timespec{Nsec: 1000000}
	unix.Nanosleep(&ts, nil)
}

// CttyParams describes a session leader's controlling terminal and the
// session's /dev/tty descriptions the leader opens.
type CttyParams struct {
	Slave     uint32 // file id of a slave description present in the task
	Index     uint32 // pty index, for messages
	Pgrp      uint32 // foreground process group (image pgid)
	PgrpTask  uint32 // an image pid in that group, 0 when none
	DevTTY    []Desc // /dev/tty descriptions to open once the ctty is set
	DevTTYDev string // the path to open for them ("/dev/tty" when empty)
}

// MarshalBinary encodes p for OpenSpec.Data.
func (p CttyParams) MarshalBinary() ([]byte, error) {
	var e files.Enc
	e.Uint(uint64(p.Slave))
	e.Uint(uint64(p.Index))
	e.Uint(uint64(p.Pgrp))
	e.Uint(uint64(p.PgrpTask))
	e.Uint(uint64(len(p.DevTTY)))
	for i := range p.DevTTY {
		p.DevTTY[i].enc(&e)
	}
	e.String(p.DevTTYDev)
	return e.B, nil
}

// UnmarshalBinary decodes what MarshalBinary wrote.
func (p *CttyParams) UnmarshalBinary(b []byte) error {
	d := files.Dec{B: b}
	p.Slave, p.Index, p.Pgrp, p.PgrpTask = d.Uint32(), d.Uint32(), d.Uint32(), d.Uint32()
	n := d.Uint()
	if n > uint64(len(d.B)) {
		return fmt.Errorf("ctty parameters: %d /dev/tty descriptions in %d bytes", n, len(d.B))
	}
	for i := uint64(0); i < n && d.Err == nil; i++ {
		p.DevTTY = append(p.DevTTY, decDesc(&d))
	}
	p.DevTTYDev = d.String()
	return d.Done()
}

type cttyOpener struct {
	p   CttyParams
	ids []uint32
}

func (o *cttyOpener) Open(c *files.Context) (bool, error) {
	p := &o.p
	if p.Slave != 0 {
		if err := o.setCtty(c); err != nil {
			return false, err
		}
	}
	dev := p.DevTTYDev
	if dev == "" {
		dev = "/dev/tty"
	}
	fds := make([]int, 0, len(p.DevTTY))
	for _, d := range p.DevTTY {
		fl := int(d.Flags)&^(unix.O_CREAT|unix.O_EXCL|unix.O_TRUNC) | unix.O_NOCTTY | unix.O_CLOEXEC
		nfd, err := unix.Open(dev, fl, 0)
		if err == nil {
			err = files.SetStatusFlags(nfd, d.Flags)
			if err == nil {
				err = d.Fown.Apply(c, nfd)
			}
			if err != nil {
				unix.Close(nfd)
			}
		}
		if err != nil {
			closeFDs(fds)
			return false, fmt.Errorf("open %s for file id %d: %w", dev, d.File, err)
		}
		fds = append(fds, nfd)
	}
	return true, c.Adopt(o.ids, fds)
}

// setCtty makes the pty the controlling terminal of the task (a session
// leader) and puts the recorded group in the foreground.
func (o *cttyOpener) setCtty(c *files.Context) error {
	p := &o.p
	fd := c.FD(p.Slave)
	if fd < 0 {
		return fmt.Errorf("controlling tty: slave file id %d of pty %d is not present", p.Slave, p.Index)
	}
	if err := unix.IoctlSetInt(fd, unix.TIOCSCTTY, 0); err != nil {
		return fmt.Errorf("TIOCSCTTY pty %d (file id %d): %w", p.Index, p.Slave, err)
	}
	if p.PgrpTask != 0 {
		pid := c.MapPid(p.PgrpTask)
		if pid == 0 {
			return fmt.Errorf("foreground group %d of pty %d: task %d is not in the restored tree", p.Pgrp, p.Index, p.PgrpTask)
		}
		pgid, err := unix.Getpgid(int(pid))
		if err != nil {
			return fmt.Errorf("foreground group %d of pty %d: getpgid %d: %w", p.Pgrp, p.Index, pid, err)
		}
		if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPGRP, pgid); err != nil {
			return fmt.Errorf("TIOCSPGRP %d (image group %d) on pty %d: %w", pgid, p.Pgrp, p.Index, err)
		}
	}
	return nil
}

// CurrentTTY returns the path of the calling process's controlling
// terminal as seen in /proc/self/fd of its stdin, stdout or stderr, or ""
// when none of them is a terminal.
func CurrentTTY() string {
	for fd := 0; fd < 3; fd++ {
		if _, err := unix.IoctlGetTermios(fd, unix.TCGETS); err != nil {
			continue
		}
		if p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); err == nil {
			return p
		}
	}
	return ""
}

func init() {
	files.Register(PtyType, func(spec *files.OpenSpec) (files.Opener, error) {
		o := &ptyOpener{ids: spec.Files}
		if err := files.DecodeData(spec.Data, &o.p); err != nil {
			return nil, fmt.Errorf("pty parameters: %w", err)
		}
		n := len(o.p.Slaves)
		if o.p.Reopen {
			if len(o.p.Masters) != 0 {
				return nil, fmt.Errorf("pty parameters: the caller's terminal with master descriptions")
			}
		} else if !o.p.HangUp {
			n += len(o.p.Masters)
			if len(o.p.Masters) != 1 {
				return nil, fmt.Errorf("pty parameters: %d master descriptions, want 1", len(o.p.Masters))
			}
		} else if len(o.p.Masters) != 0 {
			return nil, fmt.Errorf("pty parameters: a hung-up pty with master descriptions")
		}
		if n != len(spec.Files) {
			return nil, fmt.Errorf("pty parameters name %d descriptions for %d files", n, len(spec.Files))
		}
		return o, nil
	})
	files.Register(CttyType, func(spec *files.OpenSpec) (files.Opener, error) {
		o := &cttyOpener{ids: spec.Files}
		if err := files.DecodeData(spec.Data, &o.p); err != nil {
			return nil, fmt.Errorf("ctty parameters: %w", err)
		}
		if len(o.p.DevTTY) != len(spec.Files) {
			return nil, fmt.Errorf("ctty parameters name %d /dev/tty descriptions for %d files", len(o.p.DevTTY), len(spec.Files))
		}
		return o, nil
	})
}
