package restore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/files/reg"
	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Ghosts: a regular file that was unlinked while open comes back from its
// ghost-file image. Before the files phase the coordinator recreates each
// ghost once: it writes the file under a temporary name next to the
// original path (O_EXCL), links it to the original name, takes an O_PATH
// fd on it there and removes both names again. Every REG description of
// that inode then opens /proc/<coordinator>/fd/<that fd>: a new open file
// description of the one inode, named like the original ("PATH
// (deleted)"), however many tasks open it separately. The O_PATH fds are
// closed once every task has restored its fds, or when the restore fails;
// no name of a ghost outlives makeGhosts.

// planRemaps checks the remaps of the planned files: GHOST remaps of
// regular files held by fds are restored (their objects are named as
// such); anything else is listed as unsupported.
func (p *Plan) planRemaps() {
	set := p.Set
	var ids []uint32
	for id := range set.Remaps {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		f := set.Files[id]
		typ, rid := images.RemapOf(set.Remaps[id])
		what := fmt.Sprintf("%s %q", f.Name(), f.Entry.GetReg().GetName())
		if len(f.Fds) > 0 {
			what = fdName(f.Fds[0]) + ": " + what
		}
		switch typ {
		case criupb.RemapType_GHOST:
			g := set.Ghosts[rid]
			switch {
			case g == nil:
				p.Unsupported = append(p.Unsupported, fmt.Sprintf("%s: ghost %#x was not loaded", what, rid))
			case g.Entry.GetMode()&unix.S_IFMT != unix.S_IFREG:
				p.Unsupported = append(p.Unsupported, fmt.Sprintf("%s: deleted file of mode %#o (%s): only deleted regular files are restored", what, g.Entry.GetMode(), images.GhostFileName(rid)))
			case len(f.Fds) == 0:
				p.Unsupported = append(p.Unsupported, fmt.Sprintf("%s: a deleted file used as a cwd, root or FIFO/tty path is not supported", what))
			}
		case criupb.RemapType_LINKED:
			p.Unsupported = append(p.Unsupported, fmt.Sprintf("%s: deleted file saved as a link (LINKED remap to file id %d) is not supported yet", what, rid))
		case criupb.RemapType_PROCFS:
			p.Unsupported = append(p.Unsupported, fmt.Sprintf("%s: /proc entry of a dead task (PROCFS remap) is not supported", what))
		default:
			p.Unsupported = append(p.Unsupported, fmt.Sprintf("%s: remap type %d is not supported", what, typ))
		}
	}
	byFile := ghostsByFile(set)
	for _, tp := range p.TaskPlans {
		for j := range tp.Opens {
			o := &tp.Opens[j]
			if g := ghostOf(byFile, o); g != nil {
				o.Name += fmt.Sprintf(" (deleted; from %s, %d bytes)", images.GhostFileName(g.ID), g.Size())
			}
		}
	}
}

// ghostsByFile maps REG file ids to the ghost they are remapped to.
func ghostsByFile(set *images.Set) map[uint32]*images.Ghost {
	out := map[uint32]*images.Ghost{}
	for _, g := range set.Ghosts {
		for _, f := range g.Files {
			out[f.ID] = g
		}
	}
	return out
}

func ghostOf(byFile map[uint32]*images.Ghost, o *files.OpenSpec) *images.Ghost {
	if o.Type != reg.Type || len(o.Files) != 1 {
		return nil
	}
	return byFile[o.Files[0]]
}

// liveGhost is a ghost recreated for one run.
type liveGhost struct {
	g        *images.Ghost
	fd       int    // O_PATH fd on it, -1 once closed
	tmp      string // its temporary name while that exists
	linked   string // its original name while linked there
	dev, ino uint64
}

// makeGhosts recreates every ghost that planned opens use and points those
// opens at it.
func (c *coordinator) makeGhosts() error {
	set := c.plan.Set
	byFile := ghostsByFile(set)
	used := map[*images.Ghost]bool{}
	for _, tp := range c.plan.TaskPlans {
		for j := range tp.Opens {
			if g := ghostOf(byFile, &tp.Opens[j]); g != nil {
				used[g] = true
			}
		}
	}
	if len(used) == 0 {
		return nil
	}
	var list []*images.Ghost
	for g := range used {
		list = append(list, g)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	via := map[*images.Ghost]string{}
	for _, g := range list {
		lg := &liveGhost{g: g, fd: -1}
		c.ghosts = append(c.ghosts, lg)
		if err := lg.make(c.runID, c.log); err != nil {
			return fmt.Errorf("restore deleted file %s from %s: %w", g.Path, images.GhostFileName(g.ID), err)
		}
		via[g] = "/proc/" + strconv.Itoa(os.Getpid()) + "/fd/" + strconv.Itoa(lg.fd)
	}
	for _, tp := range c.plan.TaskPlans {
		for j := range tp.Opens {
			o := &tp.Opens[j]
			g := ghostOf(byFile, o)
			if g == nil {
				continue
			}
			var p reg.Params
			if err := files.DecodeData(o.Data, &p); err != nil {
				return fmt.Errorf("plan %s: %w", o.Name, err)
			}
			p.Via = via[g]
			data, err := files.EncodeData(p)
			if err != nil {
				return fmt.Errorf("plan %s: %w", o.Name, err)
			}
			o.Data = data
		}
	}
	return nil
}

// ghostTempName is where a ghost is written before it is linked to its
// original name: next to it, unique to the run.
func ghostTempName(path, runID string, id uint32) string {
	name := fmt.Sprintf("%s.fdrestore-ghost.%s.%x", filepath.Base(path), runID, id)
	if len(name) > 255 {
		name = fmt.Sprintf(".fdrestore-ghost.%s.%x", runID, id)
	}
	return filepath.Join(filepath.Dir(path), name)
}

// make writes the ghost under a temporary name, links it to the original
// name (when that is free), takes the O_PATH fd and removes both names.
func (lg *liveGhost) make(runID string, log logrus.FieldLogger) error {
	g := lg.g
	e := g.Entry
	tmp := ghostTempName(g.Path, runID, g.ID)
	fd, err := unix.Open(tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	lg.tmp = tmp
	err = fillGhost(fd, g)
	var st unix.Stat_t
	if err == nil {
		err = unix.Fstat(fd, &st)
	}
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("%s: %w", tmp, err)
	}
	lg.dev, lg.ino = st.Dev, st.Ino
	// Times last: writing the content sets mtime.
	var ts [2]unix.Timespec
	for i, tv := range []*criupb.Timeval{e.GetAtim(), e.GetMtim()} {
		ts[i] = unix.Timespec{Nsec: unix.UTIME_OMIT}
		if tv != nil {
			ts[i] = unix.NsecToTimespec(int64(tv.GetTvSec())*1e9 + int64(tv.GetTvUsec())*1e3)
		}
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, tmp, ts[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set the times of %s: %w", tmp, err)
	}
	open := tmp
	switch err := unix.Linkat(unix.AT_FDCWD, tmp, unix.AT_FDCWD, g.Path, 0); {
	case err == nil:
		lg.linked, open = g.Path, g.Path
	case errors.Is(err, unix.EEXIST):
		log.WithFields(logrus.Fields{"path": g.Path, "ghost": tmp}).Warn("the name of a deleted file is taken again; its fds will show the ghost's name")
	default:
		return fmt.Errorf("link %s to %s: %w", tmp, g.Path, err)
	}
	lg.fd, err = unix.Open(open, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == nil {
		if err = unix.Fstat(lg.fd, &st); err == nil && (st.Dev != lg.dev || st.Ino != lg.ino) {
			err = fmt.Errorf("%s was replaced meanwhile", open)
		}
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", open, err)
	}
	return lg.unname()
}

// fillGhost gives the new file fd the ghost's size, content, owner and
// mode.
func fillGhost(fd int, g *images.Ghost) error {
	if err := unix.Ftruncate(fd, int64(g.Size())); err != nil {
		return fmt.Errorf("truncate to %d bytes: %w", g.Size(), err)
	}
	for _, r := range g.Runs() {
		for n := 0; n < len(r.Data); {
			m, err := unix.Pwrite(fd, r.Data[n:], int64(r.Off)+int64(n))
			if err != nil {
				return fmt.Errorf("write at %d: %w", int64(r.Off)+int64(n), err)
			}
			n += m
		}
	}
	e := g.Entry
	// Owner before mode: chown clears set-id bits.
	if err := unix.Fchown(fd, int(e.GetUid()), int(e.GetGid())); err != nil {
		return fmt.Errorf("chown %d:%d: %w", e.GetUid(), e.GetGid(), err)
	}
	if err := unix.Fchmod(fd, e.GetMode()&0o7777); err != nil {
		return fmt.Errorf("chmod %#o: %w", e.GetMode()&0o7777, err)
	}
	return nil
}

// unname removes the ghost's names, each only while it is still the
// ghost's.
func (lg *liveGhost) unname() error {
	var errs []error
	for _, p := range []*string{&lg.linked, &lg.tmp} {
		if *p == "" {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(*p, &st); err != nil {
			if !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("stat ghost %s: %w", *p, err))
			}
			*p = ""
			continue
		}
		if st.Dev != lg.dev || st.Ino != lg.ino {
			*p = "" // not ours (any more)
			continue
		}
		if err := unix.Unlink(*p); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove ghost %s: %w", *p, err))
			continue
		}
		*p = ""
	}
	return errors.Join(errs...)
}

// dropGhosts closes the ghosts' fds (and removes any name of one a failed
// makeGhosts left): the restored tasks hold the only references after
// this.
func (c *coordinator) dropGhosts() {
	for _, lg := range c.ghosts {
		if lg.dev != 0 || lg.ino != 0 {
			if err := lg.unname(); err != nil {
				c.log.WithError(err).Error("remove ghost file")
			}
		} else if lg.tmp != "" {
			// Created but not yet stat'ed: the name is ours (O_EXCL).
			unix.Unlink(lg.tmp)
			lg.tmp = ""
		}
		if lg.fd >= 0 {
			unix.Close(lg.fd)
			lg.fd = -1
		}
	}
	c.ghosts = nil
}
