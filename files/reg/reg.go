// Package reg restores regular files, directories and device nodes opened
// by path (CRIU's REG file type). It is the opener only: the planner half,
// which reads the images into Params, is restore/spec_reg.go, so that the
// helper binary links no image model or protobuf.
package reg

import (
	"errors"
	"fmt"

	"github.com/fdrestore/fdrestore/files"
	"golang.org/x/sys/unix"
)

// Type is the opener type name of regular files.
const Type = "reg"

// ErrChanged is wrapped when a file's size or mode differs from the dump.
var ErrChanged = errors.New("file changed since the dump")

// Params describes one path-opened description.
type Params struct {
	Path    string
	Flags   uint32 // open(2) flags as recorded (access mode and status)
	Pos     uint64 // file position; ^0 means "do not seek"
	Size    uint64
	HasSize bool
	Mode    uint32
	HasMode bool
	Fown    files.Fown
	// Via, when set, is the path actually opened: a /proc/PID/fd/N link
	// to the restored copy of a file that was unlinked while open (a
	// ghost), so that every open makes a new description of that one
	// inode under its original name. Path stays the name for messages.
	Via string
}

// MarshalBinary encodes p for OpenSpec.Data.
func (p Params) MarshalBinary() ([]byte, error) {
	var e files.Enc
	e.String(p.Path)
	e.Uint(uint64(p.Flags))
	e.Uint(p.Pos)
	e.Uint(p.Size)
	e.Bool(p.HasSize)
	e.Uint(uint64(p.Mode))
	e.Bool(p.HasMode)
	e.Fown(p.Fown)
	e.String(p.Via)
	return e.B, nil
}

// UnmarshalBinary decodes what MarshalBinary wrote.
func (p *Params) UnmarshalBinary(b []byte) error {
	d := files.Dec{B: b}
	p.Path, p.Flags, p.Pos = d.String(), d.Uint32(), d.Uint()
	p.Size, p.HasSize = d.Uint(), d.Bool()
	p.Mode, p.HasMode = d.Uint32(), d.Bool()
	p.Fown = d.Fown()
	p.Via = d.String()
	return d.Done()
}

// Open opens p without creating, truncating or acquiring a controlling
// terminal, checks it against the dump unless skipCheck, and seeks to the
// recorded position. The fd is CLOEXEC.
func Open(p *Params, skipCheck bool) (int, error) {
	flags := int(p.Flags)&^(unix.O_CREAT|unix.O_EXCL|unix.O_TRUNC|files.OTmpfileOnly) | unix.O_NOCTTY | unix.O_CLOEXEC
	path := p.Path
	if p.Via != "" {
		// A magic link: following it is the point.
		path, flags = p.Via, flags&^unix.O_NOFOLLOW
	}
	fd, err := unix.Open(path, flags, 0)
	if err != nil {
		if p.Via != "" {
			return -1, fmt.Errorf("open deleted file %s (its restored ghost, through %s) flags %#o: %w", p.Path, p.Via, p.Flags, err)
		}
		return -1, fmt.Errorf("open %s flags %#o: %w", p.Path, p.Flags, err)
	}
	if !skipCheck {
		if err := check(fd, p); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	if p.Pos != ^uint64(0) && p.Flags&unix.O_PATH == 0 {
		if _, err := unix.Seek(fd, int64(p.Pos), 0); err != nil && !errors.Is(err, unix.ESPIPE) {
			unix.Close(fd)
			return -1, fmt.Errorf("seek %s to %d: %w", p.Path, p.Pos, err)
		}
	}
	return fd, nil
}

func check(fd int, p *Params) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", p.Path, err)
	}
	if p.HasMode && st.Mode != p.Mode {
		return fmt.Errorf("%w: %s mode is %#o, was %#o at dump (--skip-file-check to ignore)", ErrChanged, p.Path, st.Mode, p.Mode)
	}
	if p.HasSize && st.Mode&unix.S_IFMT == unix.S_IFREG && uint64(st.Size) != p.Size {
		return fmt.Errorf("%w: %s size is %d, was %d at dump (--skip-file-check to ignore)", ErrChanged, p.Path, st.Size, p.Size)
	}
	return nil
}

type opener struct {
	id uint32
	p  Params
}

func (o *opener) Open(c *files.Context) (bool, error) {
	fd, err := Open(&o.p, c.Plan().SkipFileCheck)
	if err != nil {
		return false, err
	}
	if err := o.p.Fown.Apply(c, fd); err != nil {
		unix.Close(fd)
		return false, err
	}
	return true, c.Adopt([]uint32{o.id}, []int{fd})
}

func init() {
	files.Register(Type, func(spec *files.OpenSpec) (files.Opener, error) {
		if len(spec.Files) != 1 {
			return nil, fmt.Errorf("reg spec publishes %d files, want 1", len(spec.Files))
		}
		o := &opener{id: spec.Files[0]}
		if err := files.DecodeData(spec.Data, &o.p); err != nil {
			return nil, fmt.Errorf("reg parameters: %w", err)
		}
		return o, nil
	})
}
