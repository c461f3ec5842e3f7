package restore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/internal/fdcheck"
	"github.com/fdrestore/fdrestore/restore"
	"golang.org/x/sys/unix"
)

// TestRunKeepsSubreaper: Run makes the caller a child subreaper only for
// its duration and gives it back the setting it had.
func TestRunKeepsSubreaper(t *testing.T) {
	needRoot(t)
	if !childSubreaper() {
		t.Fatal("TestMain should have made the test a child subreaper")
	}
	runStop(t, fixtureDir(t, "pipe-basic"))
	if !childSubreaper() {
		t.Fatal("restore.Run cleared the caller's child-subreaper flag")
	}
}

// TestPlacementCollisions restores a task whose fresh fds land on each
// other's targets and on other objects' targets: pipe A's read end comes
// back from pipe2 on A's write target and vice versa, pipe B's write end
// lands on the target of a regular file opened after it, and pipe C (two
// fds per description in each task, shared by both tasks at different
// numbers) lands on untargeted numbers. The child receives everything at
// the lowest free numbers, which are targets of other descriptions.
func TestPlacementCollisions(t *testing.T) {
	needRoot(t)
	tmp := t.TempDir()
	regPath := filepath.Join(tmp, "data.bin")
	content := []byte("0123456789")
	if err := os.WriteFile(regPath, content, 0o644); err != nil {
		t.Fatal(err)
	}
	b := newImgBuilder()
	nullR, nullW := b.devNull(unix.O_RDONLY), b.devNull(unix.O_WRONLY)
	aR, aW := b.pipe([]byte("aaa"), 0, 0, unix.O_NONBLOCK)
	bR, bW := b.pipe(nil, 1<<20, 0, 0)
	reg := b.reg(regPath, unix.O_RDWR|unix.O_LARGEFILE, 5, int64(len(content)), unix.S_IFREG|0o644)
	cR, cW := b.pipe([]byte("ccc"), 0, 0, 0)
	b.task(10, 0, 10, 10).
		fd(0, nullR, false).fd(1, nullW, false).fd(2, nullW, false).
		fd(3, aW, false).fd(4, aR, false).
		fd(5, bR, false).fd(6, reg, false).fd(7, cR, false).fd(8, bW, false).
		fd(12, cR, true).fd(14, cW, false)
	b.task(11, 10, 11, 10).
		fd(0, nullR, false).fd(1, nullW, false).fd(2, nullW, false).
		fd(3, aR, false).fd(4, cW, false).fd(30, cR, false).fd(31, cR, true)
	dir := b.write(t)

	res := runStop(t, dir)
	w := &wantTree{
		tasks: []wantTask{{10, 0, 10, 10}, {11, 10, 11, 10}},
		fds: append(stdio(10),
			wantFD{ref{10, 3}, wronly | nonblk, false, 0, "Aw", "A", "pipe:[*"},
			wantFD{ref{10, 4}, rdonly, false, 0, "Ar", "A", "pipe:[*"},
			wantFD{ref{10, 5}, rdonly, false, 0, "Br", "B", "pipe:[*"},
			wantFD{ref{10, 6}, rdwr, false, 5, "reg", "reg", regPath},
			wantFD{ref{10, 7}, rdonly, false, 0, "Cr", "C", "pipe:[*"},
			wantFD{ref{10, 8}, wronly, false, 0, "Bw", "B", "pipe:[*"},
			wantFD{ref{10, 12}, rdonly, true, 0, "Cr", "C", "pipe:[*"},
			wantFD{ref{10, 14}, wronly, false, 0, "Cw", "C", "pipe:[*"},
			wantFD{ref{11, 0}, rdonly, false, 0, "null-r", "null", "/dev/null"},
			wantFD{ref{11, 1}, wronly, false, 0, "null-w", "null", "/dev/null"},
			wantFD{ref{11, 2}, wronly, false, 0, "null-w", "null", "/dev/null"},
			wantFD{ref{11, 3}, rdonly, false, 0, "Ar", "A", "pipe:[*"},
			wantFD{ref{11, 4}, wronly, false, 0, "Cw", "C", "pipe:[*"},
			wantFD{ref{11, 30}, rdonly, false, 0, "Cr", "C", "pipe:[*"},
			wantFD{ref{11, 31}, rdonly, true, 0, "Cr", "C", "pipe:[*"},
		),
		pipes: []wantPipe{
			{obj: "A", read: ref{11, 3}, size: 65536, data: []byte("aaa")},
			{obj: "B", read: ref{10, 5}, size: 1 << 20, data: []byte{}},
			{obj: "C", read: ref{10, 7}, size: 65536, data: []byte("ccc")},
		},
	}
	c := &checker{t: t, pids: res.PidMap}
	c.check(w)
	c.checkData(w)
	// Directions: each write end feeds its own pipe's read ends.
	c.write(ref{10, 3}, "A")
	c.write(ref{10, 8}, "B")
	c.write(ref{11, 4}, "C")
	for _, x := range []struct {
		r    ref
		want string
	}{{ref{10, 4}, "A"}, {ref{10, 5}, "B"}, {ref{11, 31}, "C"}} {
		if got := c.read(x.r, 8); got != x.want {
			t.Errorf("%s: read %q, want %q", x.r, got, x.want)
		}
	}
	if got := c.read(ref{10, 6}, 8); got != "56789" {
		t.Errorf("regular file at offset 5: read %q, want %q", got, "56789")
	}
}

// fanOut builds a tree of a root (pid 1) and n children (pids 2..n+1),
// each child sharing the root's /dev/null descriptions at fds 0-2 and
// holding at fd 5 the write end of a pipe whose read end the root holds at
// fd 3+k, with "msg-k" queued.
func fanOut(t testing.TB, n int) string {
	b := newImgBuilder()
	nullR, nullW := b.devNull(unix.O_RDONLY), b.devNull(unix.O_WRONLY)
	root := b.task(1, 0, 1, 1)
	root.fd(0, nullR, false).fd(1, nullW, false).fd(2, nullW, false)
	for k := 0; k < n; k++ {
		r, w := b.pipe([]byte(fmt.Sprintf("msg-%d", k)), 0, 0, 0)
		root.fd(uint32(3+k), r, false)
		b.task(uint32(2+k), 1, 1, 1).fd(0, nullR, false).fd(1, nullW, false).fd(2, nullW, false).fd(5, w, false)
	}
	return b.write(t)
}

// TestThousandTasks restores a root with 1,000 children and spot-checks
// 20 of them from outside. Under the race detector (15 GB for 1,000
// race-enabled processes) it restores 200.
func TestThousandTasks(t *testing.T) {
	needRoot(t)
	if testing.Short() {
		t.Skip("1,000 processes; skipped with -short")
	}
	n := 1000
	if raceEnabled {
		n = 200
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Max < uint64(2*n+64) {
		t.Skipf("RLIMIT_NOFILE hard limit %d is too low for a task with %d fds", lim.Max, n+3)
	}
	dir := fanOut(t, n)
	p := loadPlan(t, dir)
	start := time.Now()
	res, err := restore.Run(context.Background(), p, restore.Options{End: restore.EndStop, Timeout: 120 * time.Second, Log: testLogger(t)})
	took := time.Since(start)
	if res != nil {
		cleanupPids(t, res.PidMap)
	}
	if err != nil {
		t.Fatalf("restore of %d tasks: %v", n+1, err)
	}
	t.Logf("restore of 1 + %d tasks (%d fds) with EndStop took %v (Result.Took %v)", n, 3+n+4*n, took, res.Took)
	if len(res.PidMap) != n+1 {
		t.Fatalf("pid map has %d tasks, want %d", len(res.PidMap), n+1)
	}
	c := &checker{t: t, pids: res.PidMap}
	rootPid := c.pid(1)
	fds, err := fdcheck.FDs(rootPid)
	if err != nil {
		t.Fatal(err)
	}
	if len(fds) != n+3 || fds[0] != 0 || fds[len(fds)-1] != n+2 {
		t.Errorf("root has %d fds (%v...%v), want 0..%d", len(fds), fds[:min(3, len(fds))], fds[max(0, len(fds)-3):], n+2)
	}
	if st, err := fdcheck.ReadStat(rootPid); err != nil || st.State != 'T' || st.PPid != os.Getpid() || st.Session != rootPid || st.Pgrp != rootPid {
		t.Errorf("root: %+v (%v), want stopped, child of the test, leading its session and group", st, err)
	}
	var sample []int
	for k := 0; k < n; k += n / 19 {
		sample = append(sample, k)
	}
	sample = append(sample[:19], n-1)
	for _, k := range sample {
		task := uint32(2 + k)
		pid := c.pid(task)
		st, err := fdcheck.ReadStat(pid)
		if err != nil || st.State != 'T' || st.PPid != rootPid || st.Pgrp != rootPid || st.Session != rootPid {
			t.Errorf("task %d (pid %d): %+v (%v), want stopped child of %d in its group and session", task, pid, st, err, rootPid)
		}
		if got, err := fdcheck.FDs(pid); err != nil || !slices.Equal(got, []int{0, 1, 2, 5}) {
			t.Errorf("task %d: fds %v (%v), want [0 1 2 5]", task, got, err)
		}
		for fd := 0; fd <= 2; fd++ {
			if !c.same(ref{task, fd}, ref{1, fd}) {
				t.Errorf("task %d fd %d does not share the root's description", task, fd)
			}
		}
		if c.same(ref{task, 5}, ref{1, 3 + k}) {
			t.Errorf("task %d fd 5 shares the root's read end's description", task)
		}
		if fi := c.info(ref{task, 5}); fi.Status() != unix.O_WRONLY || fi.Cloexec() {
			t.Errorf("task %d fd 5: flags %#o", task, fi.Flags)
		}
		_, wino, _, _ := fdcheck.Inode(c.getfd(ref{task, 5}))
		rfd := c.getfd(ref{1, 3 + k})
		_, rino, _, _ := fdcheck.Inode(rfd)
		if wino != rino {
			t.Errorf("task %d fd 5 (inode %d) and root fd %d (inode %d) are not one pipe", task, wino, 3+k, rino)
		}
		want := fmt.Sprintf("msg-%d", k)
		if got, err := fdcheck.ReadQueued(rfd, len(want)); err != nil || string(got) != want {
			t.Errorf("root fd %d: queued %q (%v), want %q", 3+k, got, err, want)
		}
	}
}

// helperTaskIx returns the task index a restore helper works for, from its
// command line, or -1.
func helperTaskIx(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return -1
	}
	args := strings.Split(string(b), "\x00")
	if len(args) < 5 || args[1] != restore.HelperArg {
		return -1
	}
	ix, err := strconv.Atoi(args[4])
	if err != nil {
		return -1
	}
	return ix
}

// children lists the children of pid: the union of its threads'
// /proc/PID/task/TID/children (a child is listed under the thread that
// forked it).
func children(pid int) []int {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, tk := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, tk.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	slices.Sort(out)
	return out
}

// TestHelperKilled kills one helper while the tree is being built: Run
// fails within a second, naming the task, and leaves no process behind.
func TestHelperKilled(t *testing.T) {
	needRoot(t)
	dir := fanOut(t, 49)
	set, err := images.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, victim := range []string{"child", "root"} {
		t.Run(victim, func(t *testing.T) {
			p, err := restore.NewPlan(set, restore.PlanOptions{})
			if err != nil {
				t.Fatal(err)
			}
			type result struct {
				res *restore.Result
				err error
				at  time.Time
			}
			done := make(chan result, 1)
			go func() {
				res, err := restore.Run(context.Background(), p, restore.Options{End: restore.EndStop, Timeout: 30 * time.Second, Log: testLogger(t)})
				done <- result{res, err, time.Now()}
			}()
			seen := map[int]bool{}
			self := os.Getpid()
			var killed, killedIx int
			var killedAt time.Time
			var r result
		wait:
			for {
				select {
				case r = <-done:
					break wait
				default:
				}
				for _, root := range children(self) {
					if fdcheck.Exe(root) != fdcheck.HelperExe {
						continue
					}
					seen[root] = true
					kids := children(root)
					for _, k := range kids {
						seen[k] = true
					}
					if killed != 0 {
						continue
					}
					target := root
					if victim == "child" {
						// The third child: the tree is half built.
						if len(kids) < 3 {
							continue
						}
						target = kids[2]
					} else if len(kids) < 3 {
						continue
					}
					killedIx = helperTaskIx(target)
					if killedIx < 0 || target != root && killedIx == helperTaskIx(root) {
						continue // not a helper (yet: a fork child shows its parent's command line; or any more)
					}
					if err := unix.Kill(target, unix.SIGKILL); err != nil {
						t.Fatal(err)
					}
					killed, killedAt = target, time.Now()
				}
				time.Sleep(200 * time.Microsecond)
			}
			if r.res != nil {
				cleanupPids(t, r.res.PidMap)
			}
			if killed == 0 {
				t.Fatalf("restore finished (err %v) before a helper could be killed", r.err)
			}
			if r.err == nil {
				t.Fatalf("restore succeeded although helper %d was killed", killed)
			}
			name := fmt.Sprintf("task %d", set.Tasks[killedIx].Pid)
			lag := r.at.Sub(killedAt)
			t.Logf("killed %s (pid %d); Run returned %v later: %v", name, killed, lag, r.err)
			if lag > time.Second {
				t.Errorf("Run returned %v after the kill, want within 1s", lag)
			}
			if !strings.Contains(r.err.Error(), name+":") {
				t.Errorf("error does not name %s: %v", name, r.err)
			}
			if !errors.Is(r.err, restore.ErrTaskDied) {
				t.Errorf("error does not wrap ErrTaskDied: %v", r.err)
			}
			var te *restore.TaskError
			if !errors.As(r.err, &te) || te.Proc != name {
				t.Errorf("error is not a TaskError for %s: %#v", name, r.err)
			}
			if left := restoreProcs(seen); len(left) > 0 {
				t.Errorf("processes left after the failed restore: %s", strings.Join(left, "; "))
			}
		})
	}
}

// TestFailedOpenLeavesNothing: a restore that cannot open a regular file
// fails with an error naming the task, the file id and the stage, and
// kills every process it made.
func TestFailedOpenLeavesNothing(t *testing.T) {
	needRoot(t)
	tmp := t.TempDir()
	changed := filepath.Join(tmp, "changed.txt")
	if err := os.WriteFile(changed, []byte("longer than at dump"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path, cause string
	}{
		{"missing", filepath.Join(tmp, "missing.txt"), "no such file or directory"},
		{"changed", changed, "file changed since the dump"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newImgBuilder()
			nullR, nullW := b.devNull(unix.O_RDONLY), b.devNull(unix.O_WRONLY)
			r, w := b.pipe([]byte("x"), 0, 0, 0)
			reg := b.reg(tc.path, unix.O_RDONLY|unix.O_LARGEFILE, 0, 4, unix.S_IFREG|0o644)
			b.task(20, 0, 20, 20).fd(0, nullR, false).fd(1, nullW, false).fd(2, nullW, false).fd(3, r, false)
			b.task(21, 20, 20, 20).fd(0, nullR, false).fd(4, w, false)
			b.task(22, 20, 20, 20).fd(0, nullR, false).fd(1, nullW, false).fd(7, reg, false)
			p := loadPlan(t, b.write(t))
			res, err := restore.Run(context.Background(), p, restore.Options{End: restore.EndStop, Timeout: 10 * time.Second, Log: testLogger(t)})
			if res != nil {
				cleanupPids(t, res.PidMap)
				t.Fatal("restore succeeded")
			}
			t.Logf("error: %v", err)
			for _, want := range []string{"task 22", fmt.Sprintf("file id %d", reg), ": open: ", tc.path, tc.cause} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not say %q: %v", want, err)
				}
			}
			var te *restore.TaskError
			if !errors.As(err, &te) || te.Proc != "task 22" {
				t.Errorf("error is not a TaskError for task 22: %#v", err)
			}
			if left := restoreProcs(nil); len(left) > 0 {
				t.Errorf("processes left after the failed restore: %s", strings.Join(left, "; "))
			}
		})
	}
}

// TestEndExec restores pipe-basic and has the task exec a shell that
// stops itself, so that its fd table can be checked from outside after the
// exec (exactly the image's fds minus the close-on-exec fd 12), and then
// drains the pipe: the fds work, and "{pid}" expands to the image pid.
func TestEndExec(t *testing.T) {
	needRoot(t)
	dir := fixtureDir(t, "pipe-basic")
	out := t.TempDir()
	p := loadPlan(t, dir)
	cmd := fmt.Sprintf("kill -STOP $$; exec 7>&-; cat <&3 > %[1]s/data.{pid}; echo $? > %[1]s/done.{pid}", out)
	res, err := restore.Run(context.Background(), p, restore.Options{End: restore.EndExec, Exec: cmd, Timeout: 20 * time.Second, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	root := res.RootPid
	reaped := false
	t.Cleanup(func() {
		if !reaped {
			fdcheck.KillAndReap([]int{root}, 5*time.Second)
		}
	})
	var ws unix.WaitStatus
	if wpid, err := unix.Wait4(root, &ws, unix.WUNTRACED, nil); err != nil || wpid != root || !ws.Stopped() {
		t.Fatalf("wait for the exec'd shell to stop: %d %v %v", wpid, ws, err)
	}
	if exe := fdcheck.Exe(root); !strings.HasSuffix(exe, "sh") && !strings.Contains(exe, "dash") && !strings.Contains(exe, "bash") {
		t.Errorf("root runs %q, want the shell", exe)
	}
	c := &checker{t: t, pids: res.PidMap}
	if got, err := fdcheck.FDs(root); err != nil || !slices.Equal(got, []int{0, 1, 2, 3, 7, 10, 11}) {
		t.Errorf("fds of the exec'd shell: %v (%v), want 0 1 2 3 7 10 11 (12 is close-on-exec)", got, err)
	}
	if !c.same(ref{2, 1}, ref{2, 2}) || c.same(ref{2, 0}, ref{2, 1}) {
		t.Errorf("fds 1 and 2 must share a description, fd 0 not")
	}
	if fl := c.info(ref{2, 7}).Status(); fl != wronly|nonblk {
		t.Errorf("fd 7 flags %#o after exec, want O_WRONLY|O_NONBLOCK", fl)
	}
	for _, fd := range []int{0, 1, 2, 3, 7, 10, 11} {
		if c.info(ref{2, fd}).Cloexec() {
			t.Errorf("fd %d is close-on-exec after exec", fd)
		}
	}
	if err := unix.Kill(root, unix.SIGCONT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := unix.Wait4(root, &ws, 0, nil)
		done <- err
	}()
	select {
	case err := <-done:
		reaped = err == nil
		if err != nil {
			t.Fatalf("wait for root %d: %v", root, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("exec'd root %d did not exit", root)
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("root exited with %v", ws)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := read("data.2"); got != "Hello, pipe!\n" {
		t.Errorf("cat <&3 read %q, want %q", got, "Hello, pipe!\n")
	}
	if got := read("done.2"); got != "0\n" {
		t.Errorf("cat exited %q", got)
	}
}

// TestCLIExitStatus: without -d, fdrestore waits for the root task and
// exits with its status.
func TestCLIExitStatus(t *testing.T) {
	needRoot(t)
	dir := fixtureDir(t, "pipe-basic")
	bin := cliBinary(t)
	cmd := exec.Command(bin, "restore", "-D", dir, "--exec", "exit 7")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("fdrestore restore --exec 'exit 7': %v, want exit status 7\n%s", err, stderr.String())
	}
	t.Logf("fdrestore restore --exec 'exit 7' took %v", time.Since(start))
	// --leave-stopped without -d would wait forever: refused.
	out, err := exec.Command(bin, "restore", "-D", dir, "--leave-stopped").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "-d") {
		t.Errorf("--leave-stopped without -d: %v\n%s", err, out)
	}
	if left := restoreProcs(nil); len(left) > 0 {
		t.Errorf("processes left: %s", strings.Join(left, "; "))
	}
}
