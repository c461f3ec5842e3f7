package restore_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/internal/fdcheck"
	"github.com/fdrestore/fdrestore/restore"
	"golang.org/x/sys/unix"
)

// tmuxPane is one tmux pane running an interactive bash, on a pty of a
// devpts instance of its own (the tmux server runs in a mount namespace
// of its own), so that the host's /dev/pts is never touched.
type tmuxPane struct {
	t    *testing.T
	sock string
}

func (p *tmuxPane) tmux(args ...string) string {
	p.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-S", p.sock}, args...)...).CombinedOutput()
	if err != nil {
		p.t.Fatalf("tmux %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func (p *tmuxPane) keys(keys ...string) { p.tmux(append([]string{"send-keys", "-t", "0"}, keys...)...) }

func (p *tmuxPane) screen() string { return p.tmux("capture-pane", "-p", "-t", "0") }

// waitFor waits until cond holds (up to 10 s), or fails with what the
// pane shows.
func (p *tmuxPane) waitFor(what string, cond func() bool) {
	p.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	p.t.Fatalf("timed out waiting for %s; the pane shows:\n%s", what, p.screen())
}

func (p *tmuxPane) waitScreen(substr string, n int) {
	p.t.Helper()
	p.waitFor(strconv.Itoa(n)+" times "+strconv.Quote(substr)+" on the pane", func() bool { return strings.Count(p.screen(), substr) >= n })
}

func startTmux(t *testing.T) (*tmuxPane, int) {
	t.Helper()
	for _, tool := range []string{"tmux", "unshare", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found: %v", tool, err)
			}
			t.Skipf("%s not found: %v", tool, err)
		}
	}
	p := &tmuxPane{t: t, sock: filepath.Join(t.TempDir(), "tmux.sock")}
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
		`mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts && mount --bind /dev/pts/ptmx /dev/ptmx && `+
			`exec tmux -S "$0" -f /dev/null new-session -d -x 150 -y 40 "env -i PATH=$PATH HOME=/ TERM=screen PS1='fdr$ ' bash --norc --noprofile -i"`, p.sock)
	cmd.Env = append(os.Environ(), "PATH=/usr/local/bin:/usr/bin:/bin")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("start tmux: %v\n%s", err, out)
	}
	server, _ := strconv.Atoi(strings.TrimSpace(p.tmux("display-message", "-p", "#{pid}")))
	t.Cleanup(func() {
		exec.Command("tmux", "-S", p.sock, "kill-server").Run()
		pids := append([]int{server}, fdcheck.Descendants(server)...)
		if err := fdcheck.KillAndReap(pids, 10*time.Second); err != nil {
			t.Errorf("clean-up of tmux: %v", err)
		}
	})
	pane, err := strconv.Atoi(strings.TrimSpace(p.tmux("display-message", "-p", "-t", "0", "#{pane_pid}")))
	if err != nil {
		t.Fatal(err)
	}
	p.waitScreen("fdr$", 1)
	return p, pane
}

// childOf returns the only child of pid whose comm is comm, waiting for it.
func childOf(t *testing.T, p *tmuxPane, pid int, comm string) int {
	t.Helper()
	var found int
	p.waitFor(comm+" under pid "+strconv.Itoa(pid), func() bool {
		for _, c := range fdcheck.Descendants(pid) {
			if st, err := fdcheck.ReadStat(c); err == nil && st.Comm == comm && st.PPid == pid {
				found = c
				return true
			}
		}
		return false
	})
	return found
}

// TestShellJob runs `cat </dev/tty` as a job of an interactive bash in a
// tmux pane (fd 0 is /dev/tty, fds 1 and 2 the pane's pty slave),
// dumps it with `fdrestore dump --shell-job` (bash and its terminal stay
// outside the tree), then runs `fdrestore restore --shell-job
// --exec-recorded` in the same pane: the restored cat has the pane's
// terminal as its controlling tty, sits in the foreground group, reads
// what is typed, and job control works (Ctrl-Z stops the job, fg resumes
// it, EOF ends it and the shell gets its prompt back).
func TestShellJob(t *testing.T) {
	needRoot(t)
	bin := cliBinary(t)
	p, bash := startTmux(t)
	p.keys("cat </dev/tty", "Enter")
	cat := childOf(t, p, bash, "cat")
	p.keys("before", "Enter")
	p.waitScreen("before", 2)
	var st0 unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(cat)+"/fd/1", &st0); err != nil {
		t.Fatal(err)
	}
	nr0, tp0 := ttyStat(t, cat)
	if nr0 == 0 || tp0 != cat {
		t.Fatalf("cat before the dump: tty_nr %#x tpgid %d, want the pane's tty and its own group %d", nr0, tp0, cat)
	}
	img := t.TempDir()
	// Without --shell-job the dump refuses the job and leaves it running.
	out, err := exec.Command(bin, "dump", "-t", strconv.Itoa(cat), "-D", img).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--shell-job") {
		t.Fatalf("fdrestore dump of a shell job without --shell-job: %v, want a refusal that points to --shell-job:\n%s", err, out)
	}
	if s := procState(cat); s == '?' || s == 'Z' || s == 'T' {
		t.Fatalf("cat after the refused dump: state %c, want running", s)
	}
	out, err = exec.Command(bin, "dump", "--shell-job", "-t", strconv.Itoa(cat), "-D", img).CombinedOutput()
	if err != nil {
		t.Fatalf("fdrestore dump --shell-job: %v\n%s", err, out)
	}
	p.waitFor("cat to be gone", func() bool { return !fdcheck.Exists(cat) || procState(cat) == 'Z' })
	p.keys("clear", "Enter")
	p.waitFor("a clear pane", func() bool { return !strings.Contains(p.screen(), "before") })

	p.keys(bin+" restore --shell-job -D "+img+" --exec-recorded", "Enter")
	fdr := childOf(t, p, bash, "fdrestore")
	rcat := childOf(t, p, fdr, "cat")
	p.keys("after", "Enter")
	p.waitScreen("after", 2) // the echo, then cat's copy
	nr, tp := ttyStat(t, rcat)
	st, err := fdcheck.ReadStat(rcat)
	if err != nil {
		t.Fatal(err)
	}
	if nr != nr0 {
		t.Errorf("restored cat: tty_nr %#x, want the pane's %#x", nr, nr0)
	}
	if tp != st.Pgrp || st.Pgrp != fdr {
		t.Errorf("restored cat: group %d, foreground group %d; want both fdrestore's job group %d", st.Pgrp, tp, fdr)
	}
	for fd := 0; fd < 3; fd++ {
		want := st0.Rdev // the pane's terminal
		if fd == 0 {
			want = unix.Mkdev(5, 0) // /dev/tty
		}
		var s unix.Stat_t
		if err := unix.Stat("/proc/"+strconv.Itoa(rcat)+"/fd/"+strconv.Itoa(fd), &s); err != nil || s.Rdev != want {
			t.Errorf("restored cat fd %d: device %#x (%v), want %#x", fd, s.Rdev, err, want)
		}
	}
	// Job control: Ctrl-Z stops the job, fg brings it back.
	p.keys("C-z")
	p.waitScreen("Stopped", 1)
	p.waitFor("cat stopped", func() bool { return procState(rcat) == 'T' })
	p.keys("fg", "Enter")
	p.waitFor("cat running", func() bool { return procState(rcat) != 'T' })
	p.keys("again", "Enter")
	p.waitScreen("again", 2)
	// EOF: cat exits, fdrestore exits with its status, bash prompts.
	p.keys("C-d")
	p.waitFor("fdrestore to exit", func() bool { return !fdcheck.Exists(fdr) || procState(fdr) == 'Z' })
	p.keys("echo status=$?", "Enter")
	p.waitScreen("status=0", 1)
	t.Logf("the pane at the end:\n%s", strings.TrimRight(p.screen(), "\n"))
}

// procState returns the state letter of pid ('?' when it cannot be read).
func procState(pid int) byte {
	st, err := fdcheck.ReadStat(pid)
	if err != nil {
		return '?'
	}
	return st.State
}

// TestShellJobTree plans a shell job that was a pipeline: the root (30)
// and 31 in group 29 (its leader, the shell's other child, not dumped),
// 32 in a group of its own, all in the shell's session 28. With
// ShellJob the root and 31 stay in the caller's job group (no stand-in,
// no setpgid), 32 gets its own group; without it the plan is refused
// and points to --shell-job.
func TestShellJobTree(t *testing.T) {
	b := newImgBuilder()
	null := b.devNull(0)
	b.task(30, 0, 29, 28).fd(0, null, false)
	b.task(31, 30, 29, 28).fd(0, null, false)
	b.task(32, 30, 32, 28).fd(0, null, false)
	set, err := images.Load(b.write(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := restore.NewPlan(set, restore.PlanOptions{}); err == nil || !strings.Contains(err.Error(), "--shell-job") {
		t.Errorf("plan without ShellJob: %v, want a refusal that points to --shell-job", err)
	}
	p, err := restore.NewPlan(set, restore.PlanOptions{ShellJob: true})
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	for _, op := range p.TreeOps {
		steps = append(steps, op.Describe(p.Procs))
	}
	want := []string{"spawn task 30 from the coordinator", "spawn task 31 from task 30", "spawn task 32 from task 30", "task 32 leads a new process group"}
	if strings.Join(steps, "; ") != strings.Join(want, "; ") {
		t.Errorf("tree steps:\n  %s\nwant\n  %s", strings.Join(steps, "\n  "), strings.Join(want, "\n  "))
	}
}
