package restore

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/files/inherit"
	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"github.com/fdrestore/fdrestore/restore/helper"
	"golang.org/x/sys/unix"
)

// Inherit hands one of the caller's fds to the restored tree in place of
// the descriptions that Key names. The key forms are CRIU's --inherit-fd
// resources, plus the fd a task had at dump:
//
//	pipe:[INO]        every description of the pipe with inode INO
//	socket:[INO]      the socket with inode INO
//	tty[RDEV:DEV]     a pty slave whose master was outside the tree, by its device numbers in hex
//	file[MNT:INO]     a file dumped as external (CRIU's --external file[...]: its recorded name)
//	/a/path           regular files and FIFOs opened at that path
//	fd[N]             what the root task had at fd N
//	fd[PID:N]         what task PID had at fd N
//
// A key that matches nothing is an error (an *UnresolvedError listing the
// keys the images offer), and so is an fd whose access mode (O_RDONLY,
// O_WRONLY, O_RDWR) differs from the one recorded for a description it
// replaces. The recorded status flags (O_NONBLOCK, O_APPEND) are set on
// the inherited description, which the caller shares.
//
// The fd must stay open until Run returns; the restored tasks get
// duplicates of it.
type Inherit struct {
	Key  string
	File *os.File
}

// ErrUnresolved is wrapped by errors about external resources the caller
// named or the images need that cannot be resolved: an inherit key that
// matches nothing, an inherited fd of the wrong access mode.
var ErrUnresolved = errors.New("unresolved external resource")

// UnresolvedError says which external resource could not be resolved and
// what the images offer instead. errors.Is(err, ErrUnresolved) holds.
type UnresolvedError struct {
	Key        string   // the caller's key
	Reason     string   // why it does not resolve
	Candidates []string // keys the images offer, sorted (bounded: see More)
	More       int      // candidates left out of the list
}

func (e *UnresolvedError) Error() string {
	s := fmt.Sprintf("inherit key %q: %s", e.Key, e.Reason)
	if len(e.Candidates) > 0 {
		s += "; the images offer: " + strings.Join(e.Candidates, ", ")
		if e.More > 0 {
			s += fmt.Sprintf(" (and %d more)", e.More)
		}
	}
	return s
}

// Is makes errors.Is(err, ErrUnresolved) true.
func (e *UnresolvedError) Is(target error) bool { return target == ErrUnresolved }

// maxCandidates bounds the keys an UnresolvedError lists.
const maxCandidates = 24

// inhMatch is one description the caller's fd replaces.
type inhMatch struct {
	key   string
	fd    int // the caller's fd
	file  *os.File
	flags uint32
	used  bool
}

// InheritedFd describes, for Plan.Print and callers, one description an
// inherited fd replaces.
type InheritedFd struct {
	Key  string
	File uint32 // file id
	Task uint32 // image pid of the task that receives the fd first
}

// FileKeys returns the inherit keys that name f (without the fd[...]
// forms), e.g. "pipe:[1234]" or "/dev/null".
func FileKeys(f *images.File) []string {
	switch f.Type {
	case criupb.FdTypes_PIPE:
		if f.Pipe != nil {
			return []string{"pipe:[" + strconv.FormatUint(uint64(f.Pipe.ID), 10) + "]"}
		}
	case criupb.FdTypes_FIFO:
		if f.Path != nil {
			return []string{f.Path.Entry.GetReg().GetName()}
		}
	case criupb.FdTypes_REG:
		if n := f.Entry.GetReg().GetName(); n != "" {
			return []string{n}
		}
	case criupb.FdTypes_UNIXSK:
		return []string{"socket:[" + strconv.FormatUint(uint64(f.Entry.GetUsk().GetIno()), 10) + "]"}
	case criupb.FdTypes_INETSK:
		return []string{"socket:[" + strconv.FormatUint(uint64(f.Entry.GetIsk().GetIno()), 10) + "]"}
	case criupb.FdTypes_TTY:
		if f.TTY != nil && f.TTY.Info != nil {
			return []string{fmt.Sprintf("tty[%x:%x]", f.TTY.Info.GetRdev(), f.TTY.Info.GetDev())}
		}
	}
	return nil
}

// fdOf returns the caller's fd number of f without touching its flags
// (os.File.Fd would make it blocking).
func fdOf(f *os.File) (int, error) {
	if f == nil {
		return -1, errors.New("no file")
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(u uintptr) { fd = int(u) }); err != nil {
		return -1, err
	}
	return fd, nil
}

// resolveInherit matches the caller's keys to descriptions before any
// type is planned (the unix planner must know which sockets are handed
// over).
func (pl *planner) resolveInherit() error {
	if len(pl.opts.Inherit) == 0 {
		return nil
	}
	set := pl.set
	byKey := map[string][]*images.File{}
	for _, f := range set.FileOrder {
		if len(f.Fds) == 0 {
			continue // cwd, root, path entries, files in flight
		}
		for _, k := range FileKeys(f) {
			byKey[k] = append(byKey[k], f)
		}
	}
	fdKeys := map[string]*images.File{}
	for ti, t := range set.Tasks {
		for _, fd := range t.Fds.Fds {
			if ti == 0 {
				fdKeys["fd["+strconv.Itoa(int(fd.Num))+"]"] = fd.File
			}
			fdKeys["fd["+strconv.FormatUint(uint64(t.Pid), 10)+":"+strconv.Itoa(int(fd.Num))+"]"] = fd.File
		}
	}
	pl.inh = map[uint32]*inhMatch{}
	for _, in := range pl.opts.Inherit {
		fd, err := fdOf(in.File)
		if err != nil {
			return fmt.Errorf("inherit key %q: %w", in.Key, err)
		}
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil {
			return fmt.Errorf("inherit key %q: fd %d: F_GETFL: %w", in.Key, fd, err)
		}
		matched := byKey[in.Key]
		if f := fdKeys[in.Key]; f != nil {
			matched = []*images.File{f}
		}
		if len(matched) == 0 {
			return pl.unresolved(in.Key, "matches nothing in the images", byKey, fdKeys)
		}
		for _, f := range matched {
			if prev := pl.inh[f.ID]; prev != nil {
				return &UnresolvedError{Key: in.Key, Reason: fmt.Sprintf("%s is already inherited through key %q", f.Name(), prev.key)}
			}
			m := &inhMatch{key: in.Key, fd: fd, file: in.File}
			if want, ok := f.Flags(); ok {
				m.flags = want
				if want&unix.O_ACCMODE != uint32(fl)&unix.O_ACCMODE {
					return &UnresolvedError{Key: in.Key, Reason: fmt.Sprintf("fd %d is open %s, but %s was open %s", fd, accName(uint32(fl)), f.Name(), accName(want))}
				}
			}
			pl.inh[f.ID] = m
		}
	}
	return nil
}

func accName(fl uint32) string {
	switch fl & unix.O_ACCMODE {
	case unix.O_RDONLY:
		return "read-only"
	case unix.O_WRONLY:
		return "write-only"
	case unix.O_RDWR:
		return "read-write"
	}
	return fmt.Sprintf("with access mode %d", fl&unix.O_ACCMODE)
}

// unresolved builds the error for a key that matches nothing: the
// resource keys of the images first, then the fd[...] keys, each sorted.
func (pl *planner) unresolved(key, reason string, byKey map[string][]*images.File, fdKeys map[string]*images.File) error {
	var res, fds []string
	for k := range byKey {
		res = append(res, k)
	}
	for k := range fdKeys {
		fds = append(fds, k)
	}
	sort.Strings(res)
	sort.Slice(fds, func(i, j int) bool { return fdKeyLess(fds[i], fds[j]) })
	all := append(res, fds...)
	e := &UnresolvedError{Key: key, Reason: reason}
	if len(all) > maxCandidates {
		e.More = len(all) - maxCandidates
		all = all[:maxCandidates]
	}
	e.Candidates = all
	return e
}

// fdKeyLess orders fd[N] before fd[PID:N], numerically.
func fdKeyLess(a, b string) bool {
	pa, na := fdKeyNums(a)
	pb, nb := fdKeyNums(b)
	if pa != pb {
		return pa < pb
	}
	return na < nb
}

func fdKeyNums(k string) (int, int) {
	s := strings.TrimSuffix(strings.TrimPrefix(k, "fd["), "]")
	p, n, ok := strings.Cut(s, ":")
	if !ok {
		v, _ := strconv.Atoi(p)
		return -1, v
	}
	a, _ := strconv.Atoi(p)
	b, _ := strconv.Atoi(n)
	return a, b
}

// inherited returns the caller's fd replacing file id, or nil.
func (pl *planner) inherited(id uint32) *inhMatch {
	if pl.inh == nil {
		return nil
	}
	return pl.inh[id]
}

// planInherit has the creator of f take the caller's fd for it. A tty
// cannot be handed over yet (the tty planner plans every tty of a session
// at once), nor a unix socket whose peer is in the tree.
func (pl *planner) planInherit(f *images.File, m *inhMatch) error {
	p := pl.p
	switch f.Type {
	case criupb.FdTypes_TTY:
		// The tty planner plans every pty at once, at the first tty
		// of files.img: it must run even when that one is the
		// caller's. It leaves out a pty whose master is outside the
		// tree and whose every slave description is inherited.
		if info := f.TTY.Info; info.GetType() != criupb.TtyType_PTY || isPtyMaster(info) {
			p.Unsupported = append(p.Unsupported, fmt.Sprintf("%s: inheriting a pty master or /dev/tty (key %q) is not supported; inherit the slave of a terminal outside the tree", f.Name(), m.key))
			return nil
		}
		idx := f.TTY.Info.GetPty().GetIndex()
		for _, o := range pl.set.FileOrder {
			if o.Type == criupb.FdTypes_TTY && len(o.Fds) > 0 && isPtyMaster(o.TTY.Info) && o.TTY.Info.GetPty().GetIndex() == idx {
				p.Unsupported = append(p.Unsupported, fmt.Sprintf("%s: inheriting a slave of pty %d (key %q), whose master the tree holds too, is not supported", f.Name(), idx, m.key))
				return nil
			}
		}
		if err := pl.planTTYs(); err != nil {
			return err
		}
	case criupb.FdTypes_UNIXSK:
		if n := pl.usk.byID[f.ID]; n != nil && n.comp != nil && len(n.comp.socks) > 1 {
			p.Unsupported = append(p.Unsupported, fmt.Sprintf("%s: inheriting a unix socket (key %q) whose peer or listener is in the tree is not supported", uskName(n), m.key))
			return nil
		}
	}
	hs := pl.holders(f)
	if len(hs) == 0 {
		return nil
	}
	c := pl.creator(hs)
	if p.inherited == nil {
		p.inherited = make([][]*inhMatch, len(p.TaskPlans))
	}
	if len(p.inherited[c]) >= maxInheritedPerTask {
		return fmt.Errorf("plan: task %d would receive more than %d inherited fds", pl.set.Tasks[c].Pid, maxInheritedPerTask)
	}
	params := inherit.Params{Index: len(p.inherited[c]), File: f.ID, Flags: m.flags, SetFlags: true, Key: m.key}
	p.inherited[c] = append(p.inherited[c], m)
	m.used = true
	p.Inherited = append(p.Inherited, InheritedFd{Key: m.key, File: f.ID, Task: pl.set.Tasks[c].Pid})
	data, err := params.MarshalBinary()
	spec := files.OpenSpec{Type: inherit.Type, Files: []uint32{f.ID}, SendTo: [][]uint32{pl.others(hs, c)}, Data: data,
		Name: fmt.Sprintf("%s inherited as %q", f.Name(), m.key)}
	return pl.add(c, spec, err)
}

// taskInherited returns the caller's fds to send to task ti with its plan.
func (p *Plan) taskInherited(ti int) ([]int, error) {
	if p.inherited == nil {
		return nil, nil
	}
	out := make([]int, 0, len(p.inherited[ti]))
	for _, m := range p.inherited[ti] {
		fd, err := fdOf(m.file)
		if err != nil || fd != m.fd {
			return nil, fmt.Errorf("inherited fd for %q was closed or replaced since planning", m.key)
		}
		out = append(out, fd)
	}
	return out, nil
}

// maxInheritedPerTask is what one plan message carries.
const maxInheritedPerTask = helper.MaxInherited

// externalFile plans a regular file that was dumped as external (CRIU's
// --external file[MNT:INO]; its name is that key): only the caller's fd
// can stand for it.
func (pl *planner) externalFile(f *images.File) error {
	key := f.Entry.GetReg().GetName()
	return &UnresolvedError{Key: key, Reason: fmt.Sprintf("%s was dumped as an external file: give an fd for it (--inherit-fd fd[N]:%s)", f.Name(), key)}
}

// ttyInherited reports whether every slave description of an outside
// terminal is the caller's, so that the tty planner leaves it out.
func (pl *planner) ttyInherited(slaves []*images.File) bool {
	if pl.inh == nil || len(slaves) == 0 {
		return false
	}
	for _, f := range slaves {
		if pl.inh[f.ID] == nil && len(f.Fds) > 0 {
			return false
		}
	}
	return true
}
