// Package inherit restores descriptions the caller hands over instead of
// letting the tree create them: a runtime's new stdio pipes in place of the
// recorded ones, a socket whose peer lived outside the tree, a log file
// that must not be reopened. The planner (restore/inherit.go) matches the
// caller's keys to descriptions and turns each matched description into an
// OpenSpec of this type in the task that would have created it; the
// coordinator sends the caller's fds to that task's helper along with its
// plan (TaskPlan.Inherited), and this opener places a duplicate of the fd at
// every target and serves it to the other tasks like any other
// description.
//
// This is the opener only; it imports files, x/sys/unix and the standard
// library (the lean helper binary links it).
package inherit

import (
	"fmt"

	"github.com/fdrestore/fdrestore/files"
	"golang.org/x/sys/unix"
)

// Type is the opener type name.
const Type = "inherit"

// Params says which of the task's inherited fds stands in for which
// description.
type Params struct {
	// Index is the position of the fd in TaskPlan.Inherited.
	Index int
	// File is the description's id.
	File uint32
	// Flags are the status flags recorded for the description, applied
	// to the inherited description (O_NONBLOCK, O_APPEND, ...) so that
	// the task finds the description it had; SetFlags says whether to.
	Flags    uint32
	SetFlags bool
	// Key is the caller's key, for messages.
	Key string
}

// MarshalBinary encodes p for OpenSpec.Data.
func (p Params) MarshalBinary() ([]byte, error) {
	var e files.Enc
	e.Uint(uint64(p.Index))
	e.Uint(uint64(p.File))
	e.Uint(uint64(p.Flags))
	e.Bool(p.SetFlags)
	e.String(p.Key)
	return e.B, nil
}

// UnmarshalBinary decodes what MarshalBinary wrote.
func (p *Params) UnmarshalBinary(b []byte) error {
	d := files.Dec{B: b}
	idx := d.Uint()
	p.File, p.Flags, p.SetFlags, p.Key = d.Uint32(), d.Uint32(), d.Bool(), d.String()
	if idx > 1<<16 {
		return fmt.Errorf("inherit parameters: fd index %d out of range", idx)
	}
	p.Index = int(idx)
	return d.Done()
}

type opener struct{ p Params }

func init() {
	files.Register(Type, func(spec *files.OpenSpec) (files.Opener, error) {
		o := &opener{}
		if err := o.p.UnmarshalBinary(spec.Data); err != nil {
			return nil, err
		}
		if len(spec.Files) != 1 || spec.Files[0] != o.p.File {
			return nil, fmt.Errorf("inherit: spec publishes %v, parameters name file id %d", spec.Files, o.p.File)
		}
		return o, nil
	})
}

func (o *opener) Open(c *files.Context) (bool, error) {
	inh := c.Plan().Inherited
	if o.p.Index >= len(inh) || inh[o.p.Index] < 0 {
		return false, fmt.Errorf("inherited fd %d for %q was not received (the task got %d)", o.p.Index, o.p.Key, len(inh))
	}
	src := inh[o.p.Index]
	if o.p.SetFlags {
		if err := files.SetStatusFlags(src, o.p.Flags); err != nil {
			return false, fmt.Errorf("inherited fd for %q: set flags %#o: %w", o.p.Key, o.p.Flags, err)
		}
	}
	// The lowest free number, as openers must; the engine moves it.
	fd, err := unix.FcntlInt(uintptr(src), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("inherited fd for %q: dup: %w", o.p.Key, err)
	}
	return true, c.AdoptCloexec([]uint32{o.p.File}, []int{fd}, true)
}
