// Package epoll restores epoll sets and their registrations.
//
// Two openers make one epoll set. The "epoll" opener creates the set and
// publishes it at once, so that tasks sharing it and other epoll sets
// watching it get it without waiting. The "epoll-reg" opener runs in the
// task whose fd numbers the images record (the first holder of the set,
// which may not be its creator) once the set and every target are present
// there (its OpenSpec.Needs), and registers each target with the recorded
// events and data.
//
// A registration is keyed by the target's file and the fd number it was
// registered with, and /proc/PID/fdinfo shows that number as tfd. Each one
// is made with the recorded number: through the target's own fd when it
// sits there, through a temporary duplicate at that number when the number
// is free, and otherwise (the number holds another file) through whatever
// fd of the target the task has, with a warning.
package epoll

import (
	"fmt"

	"github.com/fdrestore/fdrestore/files"
	"golang.org/x/sys/unix"
)

// Opener type names.
const (
	Type    = "epoll"
	RegType = "epoll-reg"
)

// Params describes one epoll description.
type Params struct {
	File  uint32
	Flags uint32 // access mode and status flags (f_flags)
	Fown  files.Fown
}

// MarshalBinary encodes p for OpenSpec.Data.
func (p Params) MarshalBinary() ([]byte, error) {
	var e files.Enc
	e.Uint(uint64(p.File))
	e.Uint(uint64(p.Flags))
	e.Fown(p.Fown)
	return e.B, nil
}

// UnmarshalBinary decodes what MarshalBinary wrote.
func (p *Params) UnmarshalBinary(b []byte) error {
	d := files.Dec{B: b}
	p.File, p.Flags, p.Fown = d.Uint32(), d.Uint32(), d.Fown()
	return d.Done()
}

// Mode says how a registration gets its recorded fd number.
type Mode uint8

const (
	// ModeAt: the target is placed at the recorded number in this task.
	ModeAt Mode = iota
	// ModeFree: no fd of the task is planned at the number; a temporary
	// duplicate of the target is put there if it is free when the
	// registration is made.
	ModeFree
	// ModeOther: another file is planned at the number; the target is
	// registered through an fd it has, and fdinfo shows that number.
	ModeOther
)

// Reg is one registration.
type Reg struct {
	Target uint32 // file id of the target
	Tfd    uint32 // fd number it was registered with
	Events uint32
	Data   uint64
	Mode   Mode
}

// RegParams are the registrations of one epoll set.
type RegParams struct {
	Epoll uint32 // file id of the epoll set
	Regs  []Reg
}

// MarshalBinary encodes p for OpenSpec.Data.
func (p RegParams) MarshalBinary() ([]byte, error) {
	e := files.Enc{B: make([]byte, 0, 8+len(p.Regs)*16)}
	e.Uint(uint64(p.Epoll))
	e.Uint(uint64(len(p.Regs)))
	for _, r := range p.Regs {
		e.Uint(uint64(r.Target))
		e.Uint(uint64(r.Tfd))
		e.Uint(uint64(r.Events))
		e.Uint(r.Data)
		e.Uint(uint64(r.Mode))
	}
	return e.B, nil
}

// UnmarshalBinary decodes what MarshalBinary wrote.
func (p *RegParams) UnmarshalBinary(b []byte) error {
	d := files.Dec{B: b}
	p.Epoll = d.Uint32()
	n := d.Uint()
	if n > uint64(len(d.B)) {
		return fmt.Errorf("epoll registrations: %d entries in %d bytes", n, len(d.B))
	}
	p.Regs = make([]Reg, 0, n)
	for i := uint64(0); i < n && d.Err == nil; i++ {
		r := Reg{Target: d.Uint32(), Tfd: d.Uint32(), Events: d.Uint32(), Data: d.Uint()}
		m := d.Uint()
		if m > uint64(ModeOther) && d.Err == nil {
			return fmt.Errorf("epoll registration %d: unknown mode %d", i, m)
		}
		r.Mode = Mode(m)
		p.Regs = append(p.Regs, r)
	}
	return d.Done()
}

type opener struct{ p Params }

func (o *opener) Open(c *files.Context) (bool, error) {
	p := &o.p
	ce := c.Cloexec(p.File)
	flags := 0
	if ce {
		flags = unix.EPOLL_CLOEXEC
	}
	fd, err := unix.EpollCreate1(flags)
	if err != nil {
		return false, fmt.Errorf("epoll_create1: %w", err)
	}
	if p.Flags&files.StatusFlagsMask != 0 {
		if err := files.SetStatusFlags(fd, p.Flags); err != nil {
			unix.Close(fd)
			return false, fmt.Errorf("set flags %#o: %w", p.Flags, err)
		}
	}
	if err := p.Fown.Apply(c, fd); err != nil {
		unix.Close(fd)
		return false, err
	}
	return true, c.AdoptCloexec([]uint32{p.File}, []int{fd}, ce)
}

type regOpener struct{ p RegParams }

func (o *regOpener) Open(c *files.Context) (bool, error) {
	ep := c.FD(o.p.Epoll)
	if ep < 0 {
		return false, nil // Needs should have kept us from running
	}
	for i := range o.p.Regs {
		r := &o.p.Regs[i]
		fd := c.FD(r.Target)
		if fd < 0 {
			return false, nil
		}
		if err := Register(c, ep, fd, r); err != nil {
			return false, fmt.Errorf("register target file id %d (fd %d) events %#x data %#x: %w", r.Target, r.Tfd, r.Events, r.Data, err)
		}
	}
	return true, nil
}

// Register adds target (present as fd) to epoll set ep as r records it,
// under r.Tfd when it can.
func Register(c *files.Context, ep, fd int, r *Reg) error {
	ev := unix.EpollEvent{Events: r.Events, Fd: int32(uint32(r.Data)), Pad: int32(uint32(r.Data >> 32))}
	switch r.Mode {
	case ModeAt:
		return unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, int(r.Tfd), &ev)
	case ModeFree:
		// F_DUPFD takes the lowest free number from Tfd up: it is Tfd
		// exactly when that number is free, and clobbers nothing.
		tmp, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, int(r.Tfd))
		if err != nil {
			return fmt.Errorf("duplicate to fd %d: %w", r.Tfd, err)
		}
		if tmp == int(r.Tfd) {
			err = unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, tmp, &ev)
			unix.Close(tmp)
			return err
		}
		unix.Close(tmp)
	}
	if c != nil {
		c.Log().WithField("file", r.Target).Warnf("epoll target fd %d is taken by another file: registered through fd %d, which fdinfo will show as its tfd", r.Tfd, fd)
	}
	return unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev)
}

func init() {
	files.Register(Type, func(spec *files.OpenSpec) (files.Opener, error) {
		o := &opener{}
		if err := files.DecodeData(spec.Data, &o.p); err != nil {
			return nil, fmt.Errorf("epoll parameters: %w", err)
		}
		if len(spec.Files) != 1 || spec.Files[0] != o.p.File {
			return nil, fmt.Errorf("epoll parameters name file id %d where the plan has %v", o.p.File, spec.Files)
		}
		return o, nil
	})
	files.Register(RegType, func(spec *files.OpenSpec) (files.Opener, error) {
		o := &regOpener{}
		if err := files.DecodeData(spec.Data, &o.p); err != nil {
			return nil, fmt.Errorf("epoll registration parameters: %w", err)
		}
		if len(spec.Files) != 0 {
			return nil, fmt.Errorf("epoll registrations publish no file, the plan names %v", spec.Files)
		}
		needs := make(map[uint32]bool, len(spec.Needs))
		for _, id := range spec.Needs {
			needs[id] = true
		}
		if !needs[o.p.Epoll] {
			return nil, fmt.Errorf("epoll registrations of file id %d do not wait for the epoll set", o.p.Epoll)
		}
		for _, r := range o.p.Regs {
			if !needs[r.Target] {
				return nil, fmt.Errorf("epoll registration of file id %d does not wait for its target", r.Target)
			}
		}
		return o, nil
	})
}
