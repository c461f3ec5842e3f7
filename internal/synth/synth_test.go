package synth_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/internal/synth"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"github.com/fdrestore/fdrestore/restore"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	restore.MaybeHelper() // restore helpers re-exec this test binary
	os.Exit(m.Run())
}

// sample builds a three-task tree: root 100 -> 101 -> 102.
//
//	100: stdio; fd 3 read end of P1 ("hello", 1 MiB buffer); fd 7 the same
//	     description, FD_CLOEXEC; fd 5 regFile O_RDWR at position 3
//	101: stdio; fd 4 write end of P1
//	102: fd 5 the write end of P1 (same description as 101's fd 4);
//	     fds 3/4 a private pipe P2, write end O_NONBLOCK
func sample(regFile string) (*synth.Builder, *synth.Pipe, *synth.Pipe) {
	b := synth.New()
	root := b.Task(100)
	c1 := b.Child(root, 101)
	c2 := b.Child(c1, 102)
	b.Stdio(root)
	b.Stdio(c1)
	p1 := b.Pipe(root, 3, c1, 4, []byte("hello"), 1<<20)
	b.ShareCloexec(p1.Read, root, 7)
	b.Share(p1.Write, c2, 5)
	p2 := b.Pipe(c2, 3, c2, 4, nil, 0)
	p2.Write.SetNonblock()
	b.RegFile(root, 5, regFile, unix.O_RDWR|unix.O_LARGEFILE, 3)
	return b, p1, p2
}

func TestWriteLoad(t *testing.T) {
	dir := t.TempDir()
	b, p1, p2 := sample("/etc/hostname")
	if err := b.Write(dir); err != nil {
		t.Fatal(err)
	}
	set, err := images.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Tasks) != 3 || set.Tasks[0].Pid != 100 || set.Tasks[1].Pid != 101 || set.Tasks[2].Pid != 102 {
		t.Fatalf("tasks: %+v", set.Tasks)
	}
	if set.Tasks[2].Parent != set.Tasks[1] || set.Tasks[1].Parent != set.Tasks[0] {
		t.Fatal("wrong parents")
	}
	for _, tk := range set.Tasks {
		if tk.Pgid != 100 || tk.Sid != 100 {
			t.Errorf("task %d: pgid %d sid %d, want 100/100", tk.Pid, tk.Pgid, tk.Sid)
		}
		if tk.FS == nil || set.Files[tk.FS.GetCwdId()].Entry.GetReg().GetName() != "/" {
			t.Errorf("task %d: no fs image with cwd /", tk.Pid)
		}
	}
	want := map[uint32]string{100: "0 1 2 3 5 7", 101: "0 1 2 4", 102: "3 4 5"}
	for _, tk := range set.Tasks {
		var got []string
		for _, fd := range tk.Fds.Fds {
			got = append(got, strconv.Itoa(int(fd.Num)))
		}
		if s := strings.Join(got, " "); s != want[tk.Pid] {
			t.Errorf("task %d fds %q, want %q", tk.Pid, s, want[tk.Pid])
		}
	}
	rootFds := set.Tasks[0].Fds
	if fd := rootFds.Lookup(7); fd == nil || !fd.Cloexec() || fd.File.ID != p1.Read.ID {
		t.Errorf("root fd 7: %+v", fd)
	}
	if rootFds.Lookup(1).File != rootFds.Lookup(2).File || rootFds.Lookup(0).File == rootFds.Lookup(1).File {
		t.Error("stdio descriptions: want fds 1 and 2 shared, fd 0 separate")
	}
	if reg := rootFds.Lookup(5).File.Entry.GetReg(); reg.GetPos() != 3 || reg.GetFlags()&unix.O_ACCMODE != unix.O_RDWR {
		t.Errorf("regular file: %v", reg)
	}
	pp := set.Pipes[p1.PipeID]
	if pp == nil || len(pp.Ends) != 2 || string(pp.Data) != "hello" || pp.Size != 1<<20 {
		t.Fatalf("pipe P1: %+v", pp)
	}
	if set.Pipes[p2.PipeID] == nil || set.Pipes[p2.PipeID].HasData {
		t.Errorf("pipe P2: %+v", set.Pipes[p2.PipeID])
	}
	if f := set.Files[p2.Write.ID]; f.Type != criupb.FdTypes_PIPE || f.Entry.GetPipe().GetFlags() != unix.O_WRONLY|unix.O_NONBLOCK {
		t.Errorf("P2 write end flags %#o", f.Entry.GetPipe().GetFlags())
	}
	plan, err := restore.NewPlan(set, restore.PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := plan.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestWriteErrors(t *testing.T) {
	b := synth.New()
	root := b.Task(1)
	b.Stdio(root)
	b.RegFile(root, 1, "/dev/null", 0, 0)
	b.Task(2)
	err := b.Write(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "fd 1 used twice") || !strings.Contains(err.Error(), "already has root") {
		t.Fatalf("got %v", err)
	}
}

// fdTable reads /proc/PID/fd: fd number -> link target.
func fdTable(t *testing.T, pid int) map[int]string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
	for _, e := range ents {
		n, _ := strconv.Atoi(e.Name())
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[n] = l
	}
	return out
}

// fdinfo returns the flags (octal in /proc) and pos of one fd.
func fdinfo(t *testing.T, pid, fd int) (flags int, pos int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimSpace(v)
		switch k {
		case "flags":
			f, _ := strconv.ParseInt(v, 8, 64)
			flags = int(f)
		case "pos":
			pos, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	return flags, pos
}

func sameFile(t *testing.T, pid1, fd1, pid2, fd2 int) bool {
	t.Helper()
	const kcmpFile = 0
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, uintptr(pid1), uintptr(pid2), kcmpFile, uintptr(fd1), uintptr(fd2), 0)
	if errno != 0 {
		t.Fatalf("kcmp %d/%d %d/%d: %v", pid1, fd1, pid2, fd2, errno)
	}
	return r == 0
}

func ppid(t *testing.T, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	n, _ := strconv.Atoi(f[1])
	return n
}

// killAll kills the restored tasks and waits until they are gone (reaped
// by us, as their subreaper, or by init).
func killAll(pids map[uint32]int) {
	for _, pid := range pids {
		unix.Kill(pid, unix.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for time.Now().Before(deadline) {
			var ws unix.WaitStatus
			if wp, _ := unix.Wait4(pid, &ws, unix.WNOHANG, nil); wp == pid {
				break
			}
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
}

func TestRestore(t *testing.T) {
	unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	dir := t.TempDir()
	reg := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(reg, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, _, _ := sample(reg)
	if err := b.Write(dir); err != nil {
		t.Fatal(err)
	}
	set, err := images.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := restore.NewPlan(set, restore.PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := restore.Run(ctx, plan, restore.Options{End: restore.EndStop, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer killAll(res.PidMap)
	r, c1, c2 := res.PidMap[100], res.PidMap[101], res.PidMap[102]
	if ppid(t, c1) != r || ppid(t, c2) != c1 {
		t.Errorf("tree: ppid(101)=%d want %d, ppid(102)=%d want %d", ppid(t, c1), r, ppid(t, c2), c1)
	}

	tr, t1, t2 := fdTable(t, r), fdTable(t, c1), fdTable(t, c2)
	keys := func(m map[int]string) string {
		var s []string
		for fd := 0; fd < 64; fd++ {
			if _, ok := m[fd]; ok {
				s = append(s, strconv.Itoa(fd))
			}
		}
		return strings.Join(s, " ")
	}
	for _, c := range []struct {
		name string
		tbl  map[int]string
		want string
	}{{"100", tr, "0 1 2 3 5 7"}, {"101", t1, "0 1 2 4"}, {"102", t2, "3 4 5"}} {
		if got := keys(c.tbl); got != c.want || len(c.tbl) != len(strings.Fields(c.want)) {
			t.Errorf("task %s: fds %q (%d), want %q", c.name, got, len(c.tbl), c.want)
		}
	}
	for _, fd := range []int{0, 1, 2} {
		if tr[fd] != "/dev/null" || t1[fd] != "/dev/null" {
			t.Errorf("fd %d: %q / %q, want /dev/null", fd, tr[fd], t1[fd])
		}
	}
	if tr[5] != reg {
		t.Errorf("root fd 5 -> %q, want %q", tr[5], reg)
	}
	p1 := tr[3]
	if !strings.HasPrefix(p1, "pipe:[") || tr[7] != p1 || t1[4] != p1 || t2[5] != p1 {
		t.Errorf("P1 ends: %q %q %q %q", tr[3], tr[7], t1[4], t2[5])
	}
	if !strings.HasPrefix(t2[3], "pipe:[") || t2[3] == p1 || t2[4] != t2[3] {
		t.Errorf("P2 ends: %q %q (P1 %q)", t2[3], t2[4], p1)
	}

	// Descriptions.
	if !sameFile(t, r, 1, r, 2) || sameFile(t, r, 0, r, 1) {
		t.Error("root stdio: want fds 1 and 2 one description, fd 0 another")
	}
	if !sameFile(t, r, 3, r, 7) || !sameFile(t, c1, 4, c2, 5) || sameFile(t, r, 3, c1, 4) {
		t.Error("P1 descriptions are not shared as in the images")
	}
	if sameFile(t, r, 0, c1, 0) {
		t.Error("root and 101 share a stdin description; each Stdio makes its own")
	}

	// Flags and positions.
	if fl, _ := fdinfo(t, r, 7); fl&unix.O_CLOEXEC == 0 {
		t.Errorf("root fd 7 flags %#o: want O_CLOEXEC", fl)
	}
	if fl, _ := fdinfo(t, r, 3); fl&unix.O_CLOEXEC != 0 || fl&unix.O_ACCMODE != unix.O_RDONLY {
		t.Errorf("root fd 3 flags %#o", fl)
	}
	if fl, _ := fdinfo(t, c2, 4); fl&unix.O_NONBLOCK == 0 || fl&unix.O_ACCMODE != unix.O_WRONLY {
		t.Errorf("102 fd 4 flags %#o: want O_WRONLY|O_NONBLOCK", fl)
	}
	if fl, pos := fdinfo(t, r, 5); pos != 3 || fl&unix.O_ACCMODE != unix.O_RDWR {
		t.Errorf("root fd 5: flags %#o pos %d, want O_RDWR at 3", fl, pos)
	}

	// Queued data and buffer size of P1.
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/fd/3", r), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if sz, err := unix.FcntlInt(uintptr(fd), unix.F_GETPIPE_SZ, 0); err != nil || sz != 1<<20 {
		t.Errorf("P1 size %d (%v), want 1 MiB", sz, err)
	}
	buf := make([]byte, 64)
	n, err := unix.Read(fd, buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Errorf("P1 data %q (%v), want hello", buf[:n], err)
	}
}
