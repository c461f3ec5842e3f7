package dump

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/restore"
	"golang.org/x/sys/unix"
)

// The ghost scenario: the root creates g.dat (mode 0640, owner
// 1234:5678, fixed times), opens it twice separately — O_RDWR at its fd 30
// (offset 5) and O_WRONLY for its child at fd 31 (offset 7) — and unlinks
// it; it also holds other.txt at fd 40. By default g.dat has data at
// 0..5000 and a tail after a hole; with FDR_DUMP_N=n it holds n bytes.

const ghostHole = 1 << 18

var (
	ghostAtime = unix.Timespec{Sec: 1_600_000_000, Nsec: 123_456_000}
	ghostMtime = unix.Timespec{Sec: 1_500_000_000, Nsec: 654_321_000}
)

func ghostContent(n int) []byte {
	if n > 0 {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*13 + 1)
		}
		return b
	}
	b := make([]byte, ghostHole+3000)
	for i := 0; i < 5000; i++ {
		b[i] = byte(i*7 + 3)
	}
	for i := ghostHole; i < len(b); i++ {
		b[i] = byte(i*11 + 5)
	}
	return b
}

func ghostRoot(dir string) {
	n, _ := strconv.Atoi(os.Getenv(envN))
	path := dir + "/g.dat"
	data := ghostContent(n)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	must(err, "create g.dat")
	runs := [][2]int{{0, len(data)}}
	if n == 0 {
		runs = [][2]int{{0, 5000}, {ghostHole, len(data)}}
	}
	for _, r := range runs {
		for off := r[0]; off < r[1]; {
			m, err := unix.Pwrite(fd, data[off:r[1]], int64(off))
			must(err, "pwrite g.dat")
			off += m
		}
	}
	must(unix.Fchown(fd, 1234, 5678), "chown g.dat")
	must(unix.Fchmod(fd, 0o640), "chmod g.dat")
	must(unix.UtimesNanoAt(unix.AT_FDCWD, path, []unix.Timespec{ghostAtime, ghostMtime}, 0), "utimes g.dat")
	moveFd(fd, 30, false)
	seek(30, 5)
	w, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	must(err, "open g.dat again")
	seek(w, 7)
	place(dir+"/other.txt", unix.O_RDONLY, 40, false)
	var ready [2]int
	must(unix.Pipe2(ready[:], unix.O_CLOEXEC), "ready pipe")
	files := make([]int, 32)
	for i := range files {
		files[i] = -1
	}
	files[0], files[1], files[2], files[3], files[31] = 0, 1, 2, ready[1], w
	spawn("child", files)
	unix.Close(ready[1])
	readN(ready[0], 1)
	unix.Close(ready[0])
	unix.Close(w)
	must(unix.Unlink(path), "unlink g.dat")
	signalReady(3)
}

func ghostDir(t *testing.T) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "other.txt"), []byte("other"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// ghostLeft returns what a restore may have left of the ghost in dir.
func ghostLeft(t *testing.T, dir string) []string {
	t.Helper()
	left, err := filepath.Glob(filepath.Join(dir, "*fdrestore-ghost*"))
	if err != nil {
		t.Fatal(err)
	}
	return left
}

func TestDumpRestoreGhost(t *testing.T) {
	dir := ghostDir(t)
	tr := startScenario(t, "ghost", dir)
	img := filepath.Join(t.TempDir(), "img")
	doDump(t, tr.pid, img, false)
	tr.cmd.Wait()
	critCheck(t, img)

	set, err := images.Load(img)
	if err != nil {
		t.Fatalf("images.Load: %v", err)
	}
	want := ghostContent(0)
	path := filepath.Join(dir, "g.dat")
	if len(set.Ghosts) != 1 || set.Ghosts[1] == nil {
		t.Fatalf("ghosts %v, want one with remap id 1", set.Ghosts)
	}
	g := set.Ghosts[1]
	e := g.Entry
	switch {
	case g.Path != path:
		t.Errorf("ghost path %q, want %q", g.Path, path)
	case len(g.Files) != 2:
		t.Errorf("ghost of %d descriptions, want 2 (two separate opens)", len(g.Files))
	case e.GetMode() != unix.S_IFREG|0o640 || e.GetUid() != 1234 || e.GetGid() != 5678:
		t.Errorf("ghost mode %#o owner %d:%d, want %#o 1234:5678", e.GetMode(), e.GetUid(), e.GetGid(), unix.S_IFREG|0o640)
	case !g.Chunked() || g.Size() != uint64(len(want)):
		t.Errorf("ghost chunked %v size %d, want chunked, %d", g.Chunked(), g.Size(), len(want))
	case e.GetMtim().GetTvSec() != uint64(ghostMtime.Sec) || e.GetMtim().GetTvUsec() != uint64(ghostMtime.Nsec/1000):
		t.Errorf("ghost mtime %v, want %v", e.GetMtim(), ghostMtime)
	}
	for _, f := range g.Files {
		if n := f.Entry.GetReg().GetName(); n != path {
			t.Errorf("%s named %q, want %q", f.Name(), n, path)
		}
	}
	got := make([]byte, g.Size())
	for _, r := range g.Runs() {
		copy(got[r.Off:], r.Data)
	}
	if !bytes.Equal(got, want) {
		t.Error("ghost content differs from the file's")
	}
	t.Logf("ghost: %d bytes in %d chunks", g.Size(), len(g.Chunks))

	// Byte-identical round trips: the dedicated API and the generic one.
	raw, err := os.ReadFile(filepath.Join(img, images.GhostFileName(1)))
	if err != nil {
		t.Fatal(err)
	}
	if enc, err := images.EncodeGhost(g); err != nil || !bytes.Equal(enc, raw) {
		t.Errorf("EncodeGhost(ReadGhost(image)) differs from the image (%v)", err)
	}
	k, entries, err := images.DecodeBytes(raw, "ghost", nil)
	if err != nil {
		t.Fatal(err)
	}
	if enc, err := images.EncodeBytes(k, entries); err != nil || !bytes.Equal(enc, raw) {
		t.Errorf("generic re-encoding of the ghost image differs (%v)", err)
	}

	t.Run("restore", func(t *testing.T) {
		restoreGhost(t, set, dir, path+" (deleted)")
		if _, err := os.Lstat(path); err == nil {
			t.Errorf("%s exists after restore", path)
		}
	})
	t.Run("name-taken", func(t *testing.T) {
		// The original name is taken again: the ghost keeps its own name.
		if err := os.WriteFile(path, []byte("new"), 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(path)
		restoreGhost(t, set, dir, "")
		if b, err := os.ReadFile(path); err != nil || string(b) != "new" {
			t.Errorf("the file now at %s: %q, %v; want it untouched", path, b, err)
		}
	})
	t.Run("failed-restore", func(t *testing.T) {
		// other.txt is gone: the restore fails after the ghost was made.
		if err := os.Rename(filepath.Join(dir, "other.txt"), filepath.Join(dir, "other.moved")); err != nil {
			t.Fatal(err)
		}
		defer os.Rename(filepath.Join(dir, "other.moved"), filepath.Join(dir, "other.txt"))
		plan, err := restore.NewPlan(set, restore.PlanOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = restore.Run(context.Background(), plan, restore.Options{End: restore.EndStop, Timeout: 30 * time.Second})
		if err == nil || !strings.Contains(err.Error(), "other.txt") {
			t.Fatalf("restore without other.txt: %v, want an error naming it", err)
		}
		if left := ghostLeft(t, dir); len(left) > 0 {
			t.Errorf("failed restore left %v", left)
		}
		if _, err := os.Lstat(path); err == nil {
			t.Errorf("failed restore left %s", path)
		}
	})
}

// restoreGhost restores the ghost scenario stopped and checks the deleted
// file in both tasks. link is what /proc shows for the fds, or "" for a
// ghost name.
func restoreGhost(t *testing.T, set *images.Set, dir, link string) {
	t.Helper()
	plan, err := restore.NewPlan(set, restore.PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := plan.Err(); err != nil {
		t.Fatal(err)
	}
	res, err := restore.Run(context.Background(), plan, restore.Options{End: restore.EndStop, Timeout: 60 * time.Second})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	defer func() {
		for _, p := range res.PidMap {
			syscall.Kill(p, syscall.SIGKILL)
		}
		var ws syscall.WaitStatus
		syscall.Wait4(res.RootPid, &ws, 0, nil)
	}()
	// No name of the ghost is left once the fds are restored.
	if left := ghostLeft(t, dir); len(left) > 0 {
		t.Errorf("restore left %v", left)
	}
	root, child := res.PidMap[set.Tasks[0].Pid], res.PidMap[set.Tasks[1].Pid]
	a, b := getFd(t, root, 30), getFd(t, child, 31)
	defer unix.Close(a)
	defer unix.Close(b)
	var sa, sb unix.Stat_t
	if err := unix.Fstat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(b, &sb); err != nil {
		t.Fatal(err)
	}
	want := ghostContent(0)
	switch {
	case sa.Dev != sb.Dev || sa.Ino != sb.Ino:
		t.Errorf("root fd 30 is %d:%d, child fd 31 %d:%d: want one inode", sa.Dev, sa.Ino, sb.Dev, sb.Ino)
	case sa.Nlink != 0:
		t.Errorf("restored file has %d links, want 0", sa.Nlink)
	case sa.Size != int64(len(want)) || sa.Mode != unix.S_IFREG|0o640 || sa.Uid != 1234 || sa.Gid != 5678:
		t.Errorf("restored file: size %d mode %#o owner %d:%d", sa.Size, sa.Mode, sa.Uid, sa.Gid)
	case sa.Mtim != ghostMtime || sa.Atim != ghostAtime:
		t.Errorf("restored file times: atime %v mtime %v, want %v %v", sa.Atim, sa.Mtim, ghostAtime, ghostMtime)
	}
	if r, err := kcmp(root, child, kcmpFile, 30, 31); err != nil || r == 0 {
		t.Errorf("root fd 30 and child fd 31: kcmp %d, %v; want two descriptions", r, err)
	}
	for _, c := range []struct {
		fd, acc int
		pos     int64
	}{{a, unix.O_RDWR, 5}, {b, unix.O_WRONLY, 7}} {
		if pos, _ := unix.Seek(c.fd, 0, unix.SEEK_CUR); pos != c.pos {
			t.Errorf("offset %d, want %d", pos, c.pos)
		}
		if fl, _ := unix.FcntlInt(uintptr(c.fd), unix.F_GETFL, 0); fl&unix.O_ACCMODE != c.acc {
			t.Errorf("access mode %#o, want %#o", fl&unix.O_ACCMODE, c.acc)
		}
	}
	got := make([]byte, len(want)+1)
	n, err := unix.Pread(a, got, 0)
	if err != nil || !bytes.Equal(got[:n], want) {
		t.Errorf("content: %d bytes (%v), equal %v", n, err, bytes.Equal(got[:n], want))
	}
	for _, f := range [][2]int{{root, 30}, {child, 31}} {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", f[0], f[1]))
		switch {
		case err != nil:
			t.Error(err)
		case link != "" && l != link:
			t.Errorf("pid %d fd %d -> %q, want %q", f[0], f[1], l, link)
		case link == "" && (!strings.Contains(l, ".fdrestore-ghost.") || !strings.HasSuffix(l, " (deleted)")):
			t.Errorf("pid %d fd %d -> %q, want a deleted ghost name", f[0], f[1], l)
		}
	}
}

func getFd(t *testing.T, pid, fd int) int {
	t.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	local, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		t.Fatalf("pid %d fd %d: %v", pid, fd, err)
	}
	return local
}

// TestDumpGhostLimit: a deleted file over the ghost limit refuses the
// dump before anything is touched, naming pid, fd, path and size; a
// higher limit takes it.
func TestDumpGhostLimit(t *testing.T) {
	const size = 2<<20 + 1
	dir := ghostDir(t)
	tr := startScenario(t, "ghost", dir, fmt.Sprintf("%s=%d", envN, size))
	img := filepath.Join(t.TempDir(), "img")
	_, err := Dump(context.Background(), tr.pid, img, Options{Timeout: 20 * time.Second})
	var ue *UnsupportedError
	if !errors.As(err, &ue) {
		t.Fatalf("dump of a %d-byte deleted file: %v, want UnsupportedError", size, err)
	}
	msg := err.Error()
	for _, want := range []string{
		fmt.Sprintf("pid %d fd 30: deleted file of %d bytes, over the ghost limit of %d bytes", tr.pid, size, DefaultGhostLimit),
		filepath.Join(dir, "g.dat") + " (deleted)", "left running unchanged",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	t.Logf("refused: %v", err)
	if _, err := os.Stat(filepath.Join(img, "inventory.img")); err == nil {
		t.Error("a refused dump wrote images")
	}
	if st, err := readStat(tr.pid); err != nil || st.state == 'Z' {
		t.Fatalf("tree gone after a refused dump: %v", err)
	}

	st, err := Dump(context.Background(), tr.pid, img, Options{Timeout: 20 * time.Second, LeaveRunning: true, GhostLimit: 4 << 20})
	if err != nil {
		t.Fatalf("dump with --ghost-limit 4M: %v", err)
	}
	t.Logf("dumped %d fds", st.Fds)
	set, err := images.Load(img)
	if err != nil {
		t.Fatal(err)
	}
	g := set.Ghosts[1]
	if g == nil || g.Size() != size || len(g.Files) != 2 {
		t.Fatalf("ghost %+v, want %d bytes for 2 descriptions", g, size)
	}
	got := make([]byte, g.Size())
	for _, r := range g.Runs() {
		copy(got[r.Off:], r.Data)
	}
	if !bytes.Equal(got, ghostContent(size)) {
		t.Error("ghost content differs")
	}
}
