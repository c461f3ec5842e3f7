// Package eventfd restores eventfd descriptions: the counter, the status
// flags (O_NONBLOCK) and semaphore mode.
package eventfd

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/fdrestore/fdrestore/files"
	"golang.org/x/sys/unix"
)

// Type is the opener type name.
const Type = "eventfd"

// Params describes one eventfd description.
type Params struct {
	File      uint32
	Flags     uint32 // access mode and status flags (f_flags)
	Fown      files.Fown
	Counter   uint64
	Semaphore bool // EFD_SEMAPHORE
}

// MarshalBinary encodes p for OpenSpec.Data.
func (p Params) MarshalBinary() ([]byte, error) {
	var e files.Enc
	e.Uint(uint64(p.File))
	e.Uint(uint64(p.Flags))
	e.Fown(p.Fown)
	e.Uint(p.Counter)
	e.Bool(p.Semaphore)
	return e.B, nil
}

// UnmarshalBinary decodes what MarshalBinary wrote.
func (p *Params) UnmarshalBinary(b []byte) error {
	d := files.Dec{B: b}
	p.File, p.Flags, p.Fown = d.Uint32(), d.Uint32(), d.Fown()
	p.Counter, p.Semaphore = d.Uint(), d.Bool()
	return d.Done()
}

// MaxCounter is the largest value an eventfd counter can hold.
const MaxCounter = math.MaxUint64 - 1

type opener struct{ p Params }

func (o *opener) Open(c *files.Context) (bool, error) {
	p := &o.p
	if p.Counter > MaxCounter {
		return false, fmt.Errorf("eventfd counter %#x exceeds the maximum %#x", p.Counter, uint64(MaxCounter))
	}
	flags := 0
	if c.Cloexec(p.File) {
		flags |= unix.EFD_CLOEXEC
	}
	if p.Flags&unix.O_NONBLOCK != 0 {
		flags |= unix.EFD_NONBLOCK
	}
	if p.Semaphore {
		flags |= unix.EFD_SEMAPHORE
	}
	// eventfd2 takes a 32-bit initial value; a larger counter is written.
	init := uint(0)
	if p.Counter <= math.MaxUint32 {
		init = uint(p.Counter)
	}
	fd, err := unix.Eventfd(init, flags)
	if err != nil {
		return false, fmt.Errorf("eventfd2 flags %#x: %w", flags, err)
	}
	if p.Counter > math.MaxUint32 {
		var b [8]byte
		binary.NativeEndian.PutUint64(b[:], p.Counter)
		if n, err := unix.Write(fd, b[:]); err != nil || n != 8 {
			unix.Close(fd)
			return false, fmt.Errorf("write counter %d: %d bytes, %v", p.Counter, n, err)
		}
	}
	// eventfd2 set O_NONBLOCK already; other status flags are rare.
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
	return true, c.AdoptCloexec([]uint32{p.File}, []int{fd}, flags&unix.EFD_CLOEXEC != 0)
}

func init() {
	files.Register(Type, func(spec *files.OpenSpec) (files.Opener, error) {
		o := &opener{}
		if err := files.DecodeData(spec.Data, &o.p); err != nil {
			return nil, fmt.Errorf("eventfd parameters: %w", err)
		}
		if len(spec.Files) != 1 || spec.Files[0] != o.p.File {
			return nil, fmt.Errorf("eventfd parameters name file id %d where the plan has %v", o.p.File, spec.Files)
		}
		return o, nil
	})
}
