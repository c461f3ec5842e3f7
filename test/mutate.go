package zdtm

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// Mutations break a dump on purpose, to prove the suite notices.
const (
	// MutDropByte drops the last queued byte of the first pipe with data.
	MutDropByte = "drop-pipe-byte"
	// MutSplitShared gives one fd of a description shared by several fds
	// a copy of the description under a new file id.
	MutSplitShared = "split-shared-file"
	// MutFlipNonblock flips O_NONBLOCK in the first pipe_entry.
	MutFlipNonblock = "flip-pipe-nonblock"
	// MutExtraFd adds fd 100 to the root task, a dup of its highest fd.
	MutExtraFd = "extra-fd"
)

// Mutate applies the named mutation to the image directory dir.
func Mutate(name, dir string) error {
	switch name {
	case MutDropByte:
		return mutateDropByte(dir)
	case MutSplitShared:
		return mutateSplit(dir)
	case MutFlipNonblock:
		return mutateFlags(dir)
	case MutExtraFd:
		return mutateExtraFd(dir)
	}
	return fmt.Errorf("unknown mutation %q", name)
}

func rewrite(dir, base string, edit func([]*images.Entry) ([]*images.Entry, error)) error {
	path := filepath.Join(dir, base)
	k, entries, err := images.ReadFile(path, images.KindForFile(base))
	if err != nil {
		return err
	}
	entries, err = edit(entries)
	if err != nil {
		return fmt.Errorf("%s: %w", base, err)
	}
	return images.WriteFile(path, k, entries)
}

func mutateDropByte(dir string) error {
	return rewrite(dir, "pipes-data.img", func(es []*images.Entry) ([]*images.Entry, error) {
		for _, e := range es {
			pd := e.Msg.(*criupb.PipeDataEntry)
			if pd.GetBytes() > 0 {
				pd.Bytes = proto.Uint32(pd.GetBytes() - 1)
				e.Trailer = e.Trailer[:len(e.Trailer)-1]
				return es, nil
			}
		}
		return nil, fmt.Errorf("no pipe with queued data")
	})
}

func mutateFlags(dir string) error {
	return rewrite(dir, "files.img", func(es []*images.Entry) ([]*images.Entry, error) {
		for _, e := range es {
			fe := e.Msg.(*criupb.FileEntry)
			if p := fe.GetPipe(); p != nil {
				p.Flags = proto.Uint32(p.GetFlags() ^ unix.O_NONBLOCK)
				return es, nil
			}
		}
		return nil, fmt.Errorf("no pipe")
	})
}

func fdinfoFiles(dir string) ([]string, error) {
	m, err := filepath.Glob(filepath.Join(dir, "fdinfo-*.img"))
	sort.Strings(m)
	return m, err
}

func mutateSplit(dir string) error {
	tables, err := fdinfoFiles(dir)
	if err != nil {
		return err
	}
	// Find a file id used by more than one fd, not counting fds 0-2 (the
	// log file every scenario task shares).
	uses := map[uint32]int{}
	for _, t := range tables {
		_, es, err := images.ReadFile(t, images.KindNamed("FDINFO"))
		if err != nil {
			return err
		}
		for _, e := range es {
			if fi := e.Msg.(*criupb.FdinfoEntry); fi.GetFd() > 2 {
				uses[fi.GetId()]++
			}
		}
	}
	var shared, maxID uint32
	for id, n := range uses {
		if n > 1 && (shared == 0 || id < shared) {
			shared = id
		}
	}
	if shared == 0 {
		return fmt.Errorf("no file id shared by two fds")
	}
	// Copy its files.img entry under a new id.
	err = rewrite(dir, "files.img", func(es []*images.Entry) ([]*images.Entry, error) {
		var orig *images.Entry
		for _, e := range es {
			fe := e.Msg.(*criupb.FileEntry)
			maxID = max(maxID, fe.GetId())
			if fe.GetId() == shared {
				orig = e
			}
		}
		if orig == nil {
			return nil, fmt.Errorf("file id %d not found", shared)
		}
		c := proto.Clone(orig.Msg).(*criupb.FileEntry)
		c.Id = proto.Uint32(maxID + 1)
		switch {
		case c.Pipe != nil:
			c.Pipe.Id = c.Id
		case c.Reg != nil:
			c.Reg.Id = c.Id
		default:
			return nil, fmt.Errorf("file id %d is a %v, only pipes and regular files are split", shared, c.GetType())
		}
		return append(es, &images.Entry{Msg: c}), nil
	})
	if err != nil {
		return err
	}
	// Point the last fd that uses it at the copy.
	for i := len(tables) - 1; i >= 0; i-- {
		done := false
		err := rewrite(dir, filepath.Base(tables[i]), func(es []*images.Entry) ([]*images.Entry, error) {
			for j := len(es) - 1; j >= 0; j-- {
				fi := es[j].Msg.(*criupb.FdinfoEntry)
				if fi.GetId() == shared && fi.GetFd() > 2 {
					fi.Id = proto.Uint32(maxID + 1)
					done = true
					break
				}
			}
			return es, nil
		})
		if err != nil || done {
			return err
		}
	}
	return fmt.Errorf("file id %d: no fd to repoint", shared)
}

func mutateExtraFd(dir string) error {
	set, err := images.Load(dir)
	if err != nil {
		return err
	}
	table := set.Tasks[0].Fds
	if table == nil || len(table.Fds) == 0 {
		return fmt.Errorf("root task has no fds to copy")
	}
	base := fmt.Sprintf("fdinfo-%d.img", table.ID)
	return rewrite(dir, base, func(es []*images.Entry) ([]*images.Entry, error) {
		last := es[len(es)-1].Msg.(*criupb.FdinfoEntry)
		if last.GetFd() >= 100 {
			return nil, fmt.Errorf("root already uses fd %d", last.GetFd())
		}
		c := proto.Clone(last).(*criupb.FdinfoEntry)
		c.Fd = proto.Uint32(100)
		return append(es, &images.Entry{Msg: c}), nil
	})
}

// MutationNames lists the mutations.
func MutationNames() string {
	return strings.Join([]string{MutDropByte, MutSplitShared, MutFlipNonblock, MutExtraFd}, ", ")
}
