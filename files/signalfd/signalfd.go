// Package signalfd restores signalfd descriptions: the signal mask and
// the status flags.
package signalfd

import (
	"fmt"

	"github.com/fdrestore/fdrestore/files"
	"golang.org/x/sys/unix"
)

// Type is the opener type name.
const Type = "signalfd"

// Params describes one signalfd description.
type Params struct {
	File  uint32
	Flags uint32 // access mode and status flags (f_flags)
	Fown  files.Fown
	Mask  uint64 // bit n-1 stands for signal n
}

// MarshalBinary encodes p for OpenSpec.Data.
func (p Params) MarshalBinary() ([]byte, error) {
	var e files.Enc
	e.Uint(uint64(p.File))
	e.Uint(uint64(p.Flags))
	e.Fown(p.Fown)
	e.Uint(p.Mask)
	return e.B, nil
}

// UnmarshalBinary decodes what MarshalBinary wrote.
func (p *Params) UnmarshalBinary(b []byte) error {
	d := files.Dec{B: b}
	p.File, p.Flags, p.Fown, p.Mask = d.Uint32(), d.Uint32(), d.Fown(), d.Uint()
	return d.Done()
}

type opener struct{ p Params }

func (o *opener) Open(c *files.Context) (bool, error) {
	p := &o.p
	flags := 0
	ce := c.Cloexec(p.File)
	if ce {
		flags |= unix.SFD_CLOEXEC
	}
	if p.Flags&unix.O_NONBLOCK != 0 {
		flags |= unix.SFD_NONBLOCK
	}
	var set unix.Sigset_t
	set.Val[0] = p.Mask
	fd, err := unix.Signalfd(-1, &set, flags)
	if err != nil {
		return false, fmt.Errorf("signalfd mask %#x flags %#x: %w", p.Mask, flags, err)
	}
	if p.Flags&files.StatusFlagsMask&^unix.O_NONBLOCK != 0 {
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

func init() {
	files.Register(Type, func(spec *files.OpenSpec) (files.Opener, error) {
		o := &opener{}
		if err := files.DecodeData(spec.Data, &o.p); err != nil {
			return nil, fmt.Errorf("signalfd parameters: %w", err)
		}
		if len(spec.Files) != 1 || spec.Files[0] != o.p.File {
			return nil, fmt.Errorf("signalfd parameters name file id %d where the plan has %v", o.p.File, spec.Files)
		}
		return o, nil
	})
}
