package dump

import (
	"errors"
	"fmt"
	"strings"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// DefaultGhostLimit is the largest deleted file saved in a ghost image
// unless Options.GhostLimit says otherwise (CRIU's --ghost-limit default).
const DefaultGhostLimit = 1 << 20

const deletedSuffix = " (deleted)"

// ghostFile is a regular file unlinked while open: one per inode, however
// many descriptions, fds and tasks hold it.
type ghostFile struct {
	id   uint32 // remap id: ghost-file-<id hex>.img
	path string // its name before it was unlinked
	st   unix.Stat_t
	runs []images.GhostChunk
}

func (o *Options) ghostLimit() int64 {
	if o.GhostLimit > 0 {
		return o.GhostLimit
	}
	return DefaultGhostLimit
}

// overGhostLimit is the type of an UnsupportedError for a deleted file too
// large to save.
func overGhostLimit(size, limit int64) string {
	return fmt.Sprintf("deleted file of %d bytes, over the ghost limit of %d bytes (--ghost-limit),", size, limit)
}

// deletedByStat judges a "... (deleted)" fd of a running task (prescan):
// "" when it is a regular file with no links left that fits the ghost
// limit, and otherwise why it cannot be dumped.
func deletedByStat(pid, fd int, limit int64) string {
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/%d", pid, fd), &st); err != nil {
		return "" // closed meanwhile; the frozen walk decides
	}
	return deletedKind(&st, limit)
}

// deletedKind says why a deleted file cannot be dumped, or "".
func deletedKind(st *unix.Stat_t, limit int64) string {
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return "deleted file"
	case st.Nlink != 0:
		return "deleted file with other links"
	case st.Size > limit:
		return overGhostLimit(st.Size, limit)
	}
	return ""
}

// readGhost records the deleted regular file behind e (local is the
// dumper's copy of the fd): the first description of an inode reads its
// content, later ones share it. It returns an UnsupportedError when the
// file is over the ghost limit.
func (s *state) readGhost(e *fdEnt, local int) (*UnsupportedError, error) {
	key := [2]uint64{e.st.Dev, e.st.Ino}
	if g := s.ghosts[key]; g != nil {
		e.ghost = g
		return nil, nil
	}
	if why := deletedKind(&e.st, s.ghostLimit); why != "" {
		return e.unsupported(why), nil
	}
	runs, err := readGhostData(local, e.st.Size)
	if err != nil {
		return nil, fmt.Errorf("save deleted file %s: %w", e.link, err)
	}
	if s.ghosts == nil {
		s.ghosts = map[[2]uint64]*ghostFile{}
	}
	g := &ghostFile{id: uint32(len(s.ghostList) + 1), path: strings.TrimSuffix(e.link, deletedSuffix), st: e.st, runs: runs}
	s.ghosts[key] = g
	s.ghostList = append(s.ghostList, g)
	e.ghost = g
	return nil, nil
}

// readGhostData reads the data runs of a file of size bytes through a
// description of its own (the task's may be write-only, and its offset and
// atime must not move), skipping holes where the filesystem reports them.
func readGhostData(local int, size int64) ([]images.GhostChunk, error) {
	p := fmt.Sprintf("/proc/self/fd/%d", local)
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOATIME|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("reopen for reading: %w", err)
	}
	defer unix.Close(fd)
	var runs []images.GhostChunk
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO):
			return runs, nil // only a hole is left
		case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP):
			start = off // no hole support: all data
		case err != nil:
			return nil, fmt.Errorf("SEEK_DATA at %d: %w", off, err)
		}
		if start >= size {
			break
		}
		end := size
		if err == nil {
			if h, herr := unix.Seek(fd, start, unix.SEEK_HOLE); herr == nil && h < size {
				end = h
			}
		}
		buf := make([]byte, end-start)
		for n := 0; n < len(buf); {
			m, err := unix.Pread(fd, buf[n:], start+int64(n))
			if err != nil {
				return nil, fmt.Errorf("pread at %d: %w", start+int64(n), err)
			}
			if m == 0 {
				return nil, fmt.Errorf("the file shrank to %d bytes while frozen (%d expected)", start+int64(n), size)
			}
			n += m
		}
		runs = append(runs, images.GhostChunk{Off: uint64(start), Data: buf})
		off = end
	}
	return runs, nil
}

// kdev encodes a device number the kernel's way (major << 20 | minor), as
// ghost_file_entry.dev holds it.
func kdev(dev uint64) uint32 {
	return unix.Major(dev)<<20 | unix.Minor(dev)&(1<<20-1)
}

// ghostImage returns g's ghost image, chunked like CRIU's.
func (g *ghostFile) image() *images.Ghost {
	st := &g.st
	tv := func(ts unix.Timespec) *criupb.Timeval {
		return &criupb.Timeval{TvSec: proto.Uint64(uint64(ts.Sec)), TvUsec: proto.Uint64(uint64(ts.Nsec / 1000))}
	}
	return &images.Ghost{ID: g.id, Path: g.path, Chunks: g.runs, Entry: &criupb.GhostFileEntry{
		Uid: proto.Uint32(st.Uid), Gid: proto.Uint32(st.Gid), Mode: proto.Uint32(st.Mode),
		Dev: proto.Uint32(kdev(st.Dev)), Ino: proto.Uint64(st.Ino),
		Atim: tv(st.Atim), Mtim: tv(st.Mtim),
		Chunks: proto.Bool(true), Size: proto.Uint64(uint64(st.Size)),
	}}
}

// addGhosts adds remap-fpath.img (remaps: REG file id → ghost) and one
// ghost-file image per ghost.
func (is *imageSet) addGhosts(s *state, remaps []proto.Message) {
	if len(remaps) == 0 {
		return
	}
	is.add("remap-fpath.img", "REMAP_FPATH", remaps...)
	for _, g := range s.ghostList {
		f := is.add(images.GhostFileName(g.id), "GHOST_FILE")
		f.entries = images.GhostEntries(g.image())
	}
}

// ghostRemap is the remap-fpath entry of REG description id of ghost g.
func ghostRemap(id uint32, g *ghostFile) proto.Message {
	return &criupb.RemapFilePathEntry{OrigId: proto.Uint32(id), RemapId: proto.Uint32(g.id), RemapType: criupb.RemapType_GHOST.Enum()}
}

// isDeletedLink reports whether a /proc/PID/fd/N target names an unlinked
// file.
func isDeletedLink(link string) bool {
	return strings.HasSuffix(link, deletedSuffix) && strings.HasPrefix(link, "/")
}
