// Package pipe restores pipes and FIFOs with their queued data.
//
// One task creates each pipe: it makes the pipe, sets its buffer size,
// writes the queued bytes, and makes every description of the pipe — the
// two ends pipe2 returned for the descriptions that were made by pipe(2)
// (no O_LARGEFILE), and a reopen through /proc/self/fd for any other — then
// publishes them all. FIFO descriptions are opened by path in the task that
// holds them, behind a temporary O_RDWR open so no open blocks; the first
// description of a FIFO writes its data.
//
// This is the opener only: the planner half, which reads the images into
// PipeParams and FifoParams, is restore/spec_pipe.go, so that the helper
// binary links no image model or protobuf.
package pipe

import (
	"fmt"
	"strconv"

	"github.com/fdrestore/fdrestore/files"
	"golang.org/x/sys/unix"
)

// Opener type names.
const (
	PipeType = "pipe"
	FifoType = "fifo"
)

// End is one description of a pipe.
type End struct {
	File  uint32
	Flags uint32 // access mode and status flags
	Fown  files.Fown
}

// PipeParams describes one pipe and the descriptions to make of it.
type PipeParams struct {
	PipeID uint32
	Ends   []End
	Data   []byte
	Size   uint32 // buffer size, 0 when not recorded
}

// MarshalBinary encodes p for OpenSpec.Data.
func (p PipeParams) MarshalBinary() ([]byte, error) {
	e := files.Enc{B: make([]byte, 0, 16+len(p.Data)+len(p.Ends)*16)}
	e.Uint(uint64(p.PipeID))
	e.Uint(uint64(p.Size))
	e.Bytes(p.Data)
	e.Uint(uint64(len(p.Ends)))
	for _, end := range p.Ends {
		e.Uint(uint64(end.File))
		e.Uint(uint64(end.Flags))
		e.Fown(end.Fown)
	}
	return e.B, nil
}

// UnmarshalBinary decodes what MarshalBinary wrote.
func (p *PipeParams) UnmarshalBinary(b []byte) error {
	d := files.Dec{B: b}
	p.PipeID, p.Size, p.Data = d.Uint32(), d.Uint32(), d.Bytes()
	n := d.Uint()
	if n > uint64(len(d.B)) {
		return fmt.Errorf("pipe parameters: %d ends in %d bytes", n, len(d.B))
	}
	if uint64(cap(p.Ends)) >= n {
		p.Ends = p.Ends[:0] // the caller's room
	} else {
		p.Ends = make([]End, 0, n)
	}
	for i := uint64(0); i < n && d.Err == nil; i++ {
		p.Ends = append(p.Ends, End{File: d.Uint32(), Flags: d.Uint32(), Fown: d.Fown()})
	}
	return d.Done()
}

// MarshalBinary encodes p for OpenSpec.Data.
func (p FifoParams) MarshalBinary() ([]byte, error) {
	var e files.Enc
	e.String(p.Path)
	e.Uint(uint64(p.Flags))
	e.Fown(p.Fown)
	e.Bool(p.WriteData)
	e.Bytes(p.Data)
	e.Uint(uint64(p.Size))
	return e.B, nil
}

// UnmarshalBinary decodes what MarshalBinary wrote.
func (p *FifoParams) UnmarshalBinary(b []byte) error {
	d := files.Dec{B: b}
	p.Path, p.Flags, p.Fown = d.String(), d.Uint32(), d.Fown()
	p.WriteData, p.Data, p.Size = d.Bool(), d.Bytes(), d.Uint32()
	return d.Done()
}

// Fill sets the buffer size of the pipe behind w (first, so data larger
// than the default fits) and writes data into it.
func Fill(w int, size uint32, data []byte) error {
	if size != 0 {
		// Most pipes keep the default size: asking costs half of
		// setting.
		if cur, err := unix.FcntlInt(uintptr(w), unix.F_GETPIPE_SZ, 0); err != nil || cur != int(size) {
			if _, err := unix.FcntlInt(uintptr(w), unix.F_SETPIPE_SZ, int(size)); err != nil {
				return fmt.Errorf("F_SETPIPE_SZ %d: %w", size, err)
			}
		}
	}
	for len(data) > 0 {
		n, err := unix.Write(w, data)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("write %d queued bytes: %w", len(data), err)
		}
		data = data[n:]
	}
	return nil
}

type pipeOpener struct {
	p    PipeParams
	ids  []uint32 // spec.Files: the ends' file ids, in Ends order
	ends [2]End   // room for p.Ends of the usual pipe
}

// simple reports whether the ends are exactly pipe2's two fds (the usual
// case), and which end is the read end.
func (p *PipeParams) simple() (ok bool, rd int) {
	if len(p.Ends) != 2 {
		return false, 0
	}
	a, b := p.Ends[0].Flags, p.Ends[1].Flags
	if (a|b)&files.OLargefile != 0 {
		return false, 0
	}
	switch {
	case a&unix.O_ACCMODE == unix.O_RDONLY && b&unix.O_ACCMODE == unix.O_WRONLY:
		return true, 0
	case a&unix.O_ACCMODE == unix.O_WRONLY && b&unix.O_ACCMODE == unix.O_RDONLY:
		return true, 1
	}
	return false, 0
}

func (o *pipeOpener) Open(c *files.Context) (bool, error) {
	simple, rd := o.p.simple()
	if !simple {
		return o.openGeneral(c)
	}
	// Both ends are pipe2's fds: create them with the FD_CLOEXEC their
	// targets want, so that they need no fcntl once placed, and skip
	// F_GETFL/F_SETFL when no status flag is recorded (pipe2 sets none).
	ce := c.Cloexec(o.ids[0]) || c.Cloexec(o.ids[1])
	flags := 0
	if ce {
		flags = unix.O_CLOEXEC
	}
	var pfd [2]int
	if err := unix.Pipe2(pfd[:], flags); err != nil {
		return false, fmt.Errorf("pipe2: %w", err)
	}
	fds := []int{pfd[0], pfd[0]}
	fds[1-rd] = pfd[1]
	if err := Fill(pfd[1], o.p.Size, o.p.Data); err != nil {
		closeFDs(pfd[:])
		return false, err
	}
	for i, end := range o.p.Ends {
		if end.Flags&files.StatusFlagsMask != 0 {
			if err := files.SetStatusFlags(fds[i], end.Flags); err != nil {
				closeFDs(pfd[:])
				return false, fmt.Errorf("file id %d: set flags %#o: %w", end.File, end.Flags, err)
			}
		}
		if err := end.Fown.Apply(c, fds[i]); err != nil {
			closeFDs(pfd[:])
			return false, fmt.Errorf("file id %d: %w", end.File, err)
		}
	}
	return true, c.AdoptCloexec(o.ids, fds, ce)
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// openGeneral makes pipes whose descriptions are not just pipe2's two:
// the extra ones (and any with O_LARGEFILE) are reopened through
// /proc/self/fd.
func (o *pipeOpener) openGeneral(c *files.Context) (bool, error) {
	var pfd [2]int
	if err := unix.Pipe2(pfd[:], unix.O_CLOEXEC); err != nil {
		return false, fmt.Errorf("pipe2: %w", err)
	}
	r, w := pfd[0], pfd[1]
	fds := make([]int, 0, len(o.p.Ends))
	fail := func(err error) (bool, error) {
		// fds may hold r and w themselves: close each number once.
		for _, fd := range fds {
			if fd != r && fd != w {
				unix.Close(fd)
			}
		}
		unix.Close(r)
		unix.Close(w)
		return false, err
	}
	if err := Fill(w, o.p.Size, o.p.Data); err != nil {
		return fail(err)
	}
	usedR, usedW := false, false
	for _, end := range o.p.Ends {
		acc := end.Flags & unix.O_ACCMODE
		var fd int
		switch {
		case acc == unix.O_RDONLY && !usedR && end.Flags&files.OLargefile == 0:
			fd, usedR = r, true
		case acc == unix.O_WRONLY && !usedW && end.Flags&files.OLargefile == 0:
			fd, usedW = w, true
		default:
			src := r
			if acc != unix.O_RDONLY {
				src = w
			}
			flags := int(end.Flags)&^(unix.O_CREAT|unix.O_EXCL|unix.O_TRUNC) | unix.O_CLOEXEC
			nfd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(src), flags, 0)
			if err != nil {
				return fail(fmt.Errorf("reopen pipe end for file id %d with flags %#o: %w", end.File, end.Flags, err))
			}
			fd = nfd
		}
		fds = append(fds, fd)
		if err := files.SetStatusFlags(fd, end.Flags); err != nil {
			return fail(fmt.Errorf("file id %d: set flags %#o: %w", end.File, end.Flags, err))
		}
		if err := end.Fown.Apply(c, fd); err != nil {
			return fail(fmt.Errorf("file id %d: %w", end.File, err))
		}
	}
	if !usedR {
		unix.Close(r)
	}
	if !usedW {
		unix.Close(w)
	}
	// init checked that the ends' file ids are spec.Files, in order.
	return true, c.Adopt(o.ids, fds)
}

// FifoParams describes one FIFO description.
type FifoParams struct {
	Path      string
	Flags     uint32
	Fown      files.Fown
	WriteData bool // this description restores the FIFO's queued data
	Data      []byte
	Size      uint32
}

type fifoOpener struct {
	id uint32
	p  FifoParams
}

func (o *fifoOpener) Open(c *files.Context) (bool, error) {
	// An O_RDWR open of a FIFO never blocks and provides both a reader
	// and a writer, so the real open below cannot block or fail with
	// ENXIO.
	fake, err := unix.Open(o.p.Path, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return false, fmt.Errorf("open fifo %s: %w", o.p.Path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fake, &st); err != nil {
		unix.Close(fake)
		return false, fmt.Errorf("stat fifo %s: %w", o.p.Path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFIFO {
		unix.Close(fake)
		return false, fmt.Errorf("%s is not a FIFO (mode %#o)", o.p.Path, st.Mode)
	}
	if o.p.WriteData {
		if err := Fill(fake, o.p.Size, o.p.Data); err != nil {
			unix.Close(fake)
			return false, fmt.Errorf("fifo %s: %w", o.p.Path, err)
		}
	}
	flags := int(o.p.Flags)&^(unix.O_CREAT|unix.O_EXCL|unix.O_TRUNC) | unix.O_CLOEXEC | unix.O_NOCTTY
	fd, err := unix.Open(o.p.Path, flags, 0)
	// The real description now keeps the FIFO (and its data) alive; the
	// temporary must go before Adopt, which may place an fd on its number.
	unix.Close(fake)
	if err != nil {
		return false, fmt.Errorf("open fifo %s flags %#o: %w", o.p.Path, o.p.Flags, err)
	}
	if err := o.p.Fown.Apply(c, fd); err != nil {
		unix.Close(fd)
		return false, err
	}
	return true, c.Adopt([]uint32{o.id}, []int{fd})
}

func init() {
	files.Register(PipeType, func(spec *files.OpenSpec) (files.Opener, error) {
		o := &pipeOpener{ids: spec.Files}
		o.p.Ends = o.ends[:0]
		if err := files.DecodeData(spec.Data, &o.p); err != nil {
			return nil, fmt.Errorf("pipe parameters: %w", err)
		}
		if len(o.p.Ends) != len(spec.Files) {
			return nil, fmt.Errorf("pipe parameters name %d ends for %d files", len(o.p.Ends), len(spec.Files))
		}
		for i, end := range o.p.Ends {
			if end.File != spec.Files[i] {
				return nil, fmt.Errorf("pipe parameters name file id %d where the plan has %d", end.File, spec.Files[i])
			}
		}
		return o, nil
	})
	files.Register(FifoType, func(spec *files.OpenSpec) (files.Opener, error) {
		if len(spec.Files) != 1 {
			return nil, fmt.Errorf("fifo spec publishes %d files, want 1", len(spec.Files))
		}
		o := &fifoOpener{id: spec.Files[0]}
		if err := files.DecodeData(spec.Data, &o.p); err != nil {
			return nil, fmt.Errorf("fifo parameters: %w", err)
		}
		return o, nil
	})
}
