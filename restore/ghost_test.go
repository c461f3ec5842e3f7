package restore_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"github.com/fdrestore/fdrestore/restore"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// addGhosts writes remap-fpath.img (each REG file id in remaps to its
// remap) and the ghost images into dir.
func addGhosts(t *testing.T, dir string, remaps map[uint32]*criupb.RemapFilePathEntry, gs ...*images.Ghost) {
	t.Helper()
	var es []*images.Entry
	for id, r := range remaps {
		r.OrigId = proto.Uint32(id)
		es = append(es, &images.Entry{Msg: r})
	}
	if err := images.WriteFile(filepath.Join(dir, "remap-fpath.img"), images.KindNamed("REMAP_FPATH"), es); err != nil {
		t.Fatal(err)
	}
	for _, g := range gs {
		b, err := images.EncodeGhost(g)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, images.GhostFileName(g.ID)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func remapTo(typ criupb.RemapType, id uint32) *criupb.RemapFilePathEntry {
	return &criupb.RemapFilePathEntry{RemapId: proto.Uint32(id), RemapType: typ.Enum()}
}

func ghostEntry(mode uint32, size uint64, chunks bool) *criupb.GhostFileEntry {
	return &criupb.GhostFileEntry{Uid: proto.Uint32(0), Gid: proto.Uint32(0), Mode: proto.Uint32(mode),
		Mtim:   &criupb.Timeval{TvSec: proto.Uint64(1_400_000_000), TvUsec: proto.Uint64(5)},
		Chunks: proto.Bool(chunks), Size: proto.Uint64(size)}
}

// TestGhostPlanUnsupported: remaps fdrestore does not restore are named
// in the plan, not ignored.
func TestGhostPlanUnsupported(t *testing.T) {
	for _, c := range []struct {
		name  string
		remap *criupb.RemapFilePathEntry
		ghost *images.Ghost
		want  string
	}{
		{"linked", remapTo(criupb.RemapType_LINKED, 99), nil, "LINKED remap"},
		{"procfs", remapTo(criupb.RemapType_PROCFS, 0), nil, "PROCFS remap"},
		{"ghost dir", remapTo(criupb.RemapType_GHOST, 1), &images.Ghost{ID: 1, Entry: ghostEntry(unix.S_IFDIR|0o755, 0, false)}, "only deleted regular files"},
		{"ghost ok", remapTo(criupb.RemapType_GHOST, 1), &images.Ghost{ID: 1, Entry: ghostEntry(unix.S_IFREG|0o644, 3, false), Data: []byte("abc")}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := newImgBuilder()
			mode := uint32(unix.S_IFREG | 0o644)
			size := int64(3)
			if c.ghost != nil {
				mode, size = c.ghost.Entry.GetMode(), int64(c.ghost.Entry.GetSize())
			}
			f := b.reg("/nonexistent/gone", unix.O_RDONLY, 0, size, mode)
			b.task(10, 0, 10, 10).fd(3, f, false)
			dir := b.write(t)
			var gs []*images.Ghost
			if c.ghost != nil {
				gs = append(gs, c.ghost)
			}
			addGhosts(t, dir, map[uint32]*criupb.RemapFilePathEntry{f: c.remap}, gs...)
			set, err := images.Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			p, err := restore.NewPlan(set, restore.PlanOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			p.Print(&out)
			err = p.Err()
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("plan: %v", err)
			case c.want == "":
				if !strings.Contains(out.String(), "from ghost-file-1.img, 3 bytes") {
					t.Errorf("plan does not show the ghost:\n%s", out.String())
				}
			case err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "task 10 fd 3"):
				t.Errorf("plan error %v, want one naming task 10 fd 3 and %q", err, c.want)
			}
		})
	}
}

// TestGhostRestore restores two deleted files: a chunked one opened
// separately by two tasks, and a CRIU-style unchunked one; then a restore
// that fails after the first ghost was made leaves nothing behind.
func TestGhostRestore(t *testing.T) {
	needRoot(t)
	work := t.TempDir()
	pa, pb := filepath.Join(work, "a.dat"), filepath.Join(work, "b.dat")
	ca := images.GhostChunk{Off: 8192, Data: bytes.Repeat([]byte("A"), 100)}
	ga := &images.Ghost{ID: 1, Entry: ghostEntry(unix.S_IFREG|0o600, 10000, true), Chunks: []images.GhostChunk{{Off: 0, Data: []byte("head")}, ca}}
	gb := &images.Ghost{ID: 2, Entry: ghostEntry(unix.S_IFREG|0o444, 5, false), Data: []byte("bbbbb")}

	build := func(pathB string) string {
		b := newImgBuilder()
		nullR, nullW := b.devNull(unix.O_RDONLY), b.devNull(unix.O_WRONLY)
		a1 := b.reg(pa, unix.O_RDWR|unix.O_LARGEFILE, 2, 10000, unix.S_IFREG|0o600)
		a2 := b.reg(pa, unix.O_RDONLY|unix.O_LARGEFILE, 8192, 10000, unix.S_IFREG|0o600)
		b1 := b.reg(pathB, unix.O_RDONLY|unix.O_LARGEFILE, 1, 5, unix.S_IFREG|0o444)
		b.task(10, 0, 10, 10).fd(0, nullR, false).fd(1, nullW, false).fd(2, nullW, false).fd(5, a1, false).fd(6, b1, false)
		b.task(11, 10, 10, 10).fd(0, nullR, false).fd(7, a2, false)
		dir := b.write(t)
		addGhosts(t, dir, map[uint32]*criupb.RemapFilePathEntry{
			a1: remapTo(criupb.RemapType_GHOST, 1), a2: remapTo(criupb.RemapType_GHOST, 1), b1: remapTo(criupb.RemapType_GHOST, 2),
		}, ga, gb)
		return dir
	}

	res := runStop(t, build(pb))
	if ents, _ := os.ReadDir(work); len(ents) != 0 {
		t.Errorf("restore left %v in the ghosts' directory", ents)
	}
	root, child := res.PidMap[10], res.PidMap[11]
	var st [3]unix.Stat_t
	for i, f := range [][2]int{{root, 5}, {child, 7}, {root, 6}} {
		p := fmt.Sprintf("/proc/%d/fd/%d", f[0], f[1])
		if err := unix.Stat(p, &st[i]); err != nil {
			t.Fatal(err)
		}
		want := pa + " (deleted)"
		if i == 2 {
			want = pb + " (deleted)"
		}
		if l, _ := os.Readlink(p); l != want {
			t.Errorf("%s -> %q, want %q", p, l, want)
		}
	}
	if st[0].Ino != st[1].Ino || st[0].Dev != st[1].Dev || st[0].Nlink != 0 {
		t.Errorf("root fd 5 and child fd 7: inodes %d and %d (nlink %d), want one deleted inode", st[0].Ino, st[1].Ino, st[0].Nlink)
	}
	if st[0].Size != 10000 || st[2].Size != 5 || st[2].Mode != unix.S_IFREG|0o444 || st[0].Mtim.Sec != 1_400_000_000 || st[0].Mtim.Nsec != 5000 {
		t.Errorf("ghost a: size %d mtime %v; b: size %d mode %#o", st[0].Size, st[0].Mtim, st[2].Size, st[2].Mode)
	}
	// Content through the child's description (offset 8192).
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/fd/7", child), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	all := make([]byte, 10001)
	n, _ := unix.Pread(fd, all, 0)
	unix.Close(fd)
	want := make([]byte, 10000)
	copy(want, "head")
	copy(want[8192:], ca.Data)
	if !bytes.Equal(all[:n], want) {
		t.Errorf("ghost a content differs (%d bytes)", n)
	}

	// b.dat's directory does not exist: the restore fails once a.dat's
	// ghost is made, and removes it.
	dir := build(filepath.Join(work, "missing", "b.dat"))
	set, err := images.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := restore.NewPlan(set, restore.PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = restore.Run(context.Background(), p, restore.Options{End: restore.EndStop, Timeout: 30 * time.Second, Log: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "missing/b.dat") {
		t.Fatalf("restore with b.dat's directory missing: %v", err)
	}
	t.Logf("failed as expected: %v", err)
	if ents, _ := os.ReadDir(work); len(ents) != 0 {
		t.Errorf("failed restore left %v", ents)
	}
}
