package restore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/internal/fdcheck"
	"github.com/fdrestore/fdrestore/internal/synth"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"github.com/fdrestore/fdrestore/restore"
	"github.com/sirupsen/logrus"
)

func twoTasks() *synth.Builder {
	b := synth.New()
	root := b.Task(300)
	child := b.Child(root, 301)
	b.Stdio(root)
	b.Stdio(child)
	b.Pipe(root, 3, child, 4, []byte("x"), 0)
	return b
}

// TestHooks: every hook runs once, in order, with what is known then; a
// failing hook aborts the restore with a HookError and leaves no process.
func TestHooks(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	if err := twoTasks().Write(dir); err != nil {
		t.Fatal(err)
	}
	names := []string{"pre-restore", "setup-namespaces", "post-restore", "pre-resume", "post-resume"}
	for fail := -1; fail < len(names); fail++ {
		name := "all"
		if fail >= 0 {
			name = names[fail]
		}
		t.Run(name, func(t *testing.T) {
			var calls []string
			boom := errors.New("boom")
			hook := func(i int) func(context.Context, *restore.Result) error {
				return func(_ context.Context, res *restore.Result) error {
					calls = append(calls, names[i])
					switch {
					case i == 0 && res != nil:
						t.Errorf("pre-restore got a result")
					case i == 1 && (res == nil || !fdcheck.Exists(res.RootPid)):
						t.Errorf("setup-namespaces: no live root in %+v", res)
					case i >= 2 && (res == nil || len(res.PidMap) != 2):
						t.Errorf("%s: no pid map in %+v", names[i], res)
					}
					if i == fail {
						return boom
					}
					return nil
				}
			}
			h := restore.Hooks{PreRestore: hook(0), SetupNamespaces: hook(1), PostRestore: hook(2), PreResume: hook(3), PostResume: hook(4)}
			dirf, err := os.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer dirf.Close()
			res, err := restore.Restore(context.Background(), restore.Config{ImagesDirFile: dirf,
				Run: restore.Options{End: restore.EndStop, Timeout: 20 * time.Second, Log: testLogger(t), Hooks: h}})
			if fail < 0 {
				if err != nil {
					t.Fatal(err)
				}
				cleanupPids(t, res.PidMap)
				if res.PidFd == nil {
					t.Error("no pidfd")
				} else {
					defer res.PidFd.Close()
					if pid, err := pidfdPid(res.PidFd); err != nil || pid != res.RootPid {
						t.Errorf("pidfd is of pid %d (%v), want %d", pid, err, res.RootPid)
					}
				}
				if res.Timings.Tree <= 0 || res.Timings.Files <= 0 || res.Timings.Tree+res.Timings.Files+res.Timings.End > res.Took {
					t.Errorf("timings %+v, took %v", res.Timings, res.Took)
				}
			} else {
				var he *restore.HookError
				if err == nil || !errors.As(err, &he) || he.Hook != names[fail] || !errors.Is(err, boom) {
					t.Fatalf("got %v, want the %s hook's error", err, names[fail])
				}
				if left := restoreProcs(nil); len(left) > 0 {
					t.Errorf("processes left after the failed hook: %s", strings.Join(left, "; "))
				}
			}
			want := names
			if fail >= 0 {
				want = names[:fail+1]
			}
			if strings.Join(calls, ",") != strings.Join(want, ",") {
				t.Errorf("hooks called: %v, want %v", calls, want)
			}
		})
	}
}

// TestCancel: cancelling the context while the tree is being built stops
// the restore with context.Canceled and leaves no process.
func TestCancel(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	if err := twoTasks().Write(dir); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := restore.Restore(ctx, restore.Config{ImagesDir: dir, Run: restore.Options{End: restore.EndStop, Timeout: 20 * time.Second, Log: testLogger(t),
		Hooks: restore.Hooks{SetupNamespaces: func(context.Context, *restore.Result) error { cancel(); return nil }}}})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want context.Canceled", err)
	}
	if left := restoreProcs(nil); len(left) > 0 {
		t.Errorf("processes left after the cancelled restore: %s", strings.Join(left, "; "))
	}
}

// TestEndFunc: the caller's function chooses each task's exec; the
// restored fds are there after it (the root reads the byte queued in the
// pipe it shares with its child).
func TestEndFunc(t *testing.T) {
	needRoot(t)
	dir, out := t.TempDir(), t.TempDir()
	if err := twoTasks().Write(dir); err != nil {
		t.Fatal(err)
	}
	var seen []uint32
	res, err := restore.Restore(context.Background(), restore.Config{ImagesDir: dir, Run: restore.Options{End: restore.EndFunc, Timeout: 20 * time.Second, Log: testLogger(t),
		EndFunc: func(te restore.TaskEnd) (restore.Exec, error) {
			seen = append(seen, te.ImagePid)
			if te.Recorded != nil || te.Pid <= 0 {
				t.Errorf("task %d: %+v", te.ImagePid, te)
			}
			script := `echo ok > "$0/out-$1"`
			if te.ImagePid == 300 {
				script = `head -c1 <&3 > "$0/out-$1"`
			}
			return restore.Exec{Argv: []string{"sh", "-c", script, out, strconv.Itoa(int(te.ImagePid))}, Env: []string{"PATH=/usr/bin:/bin"}}, nil
		}}})
	if err != nil {
		t.Fatal(err)
	}
	cleanupPids(t, res.PidMap)
	if res.PidFd != nil {
		res.PidFd.Close()
	}
	if len(seen) != 2 {
		t.Errorf("EndFunc called for %v", seen)
	}
	for pid, want := range map[int]string{300: "x", 301: "ok\n"} {
		p := fmt.Sprintf("%s/out-%d", out, pid)
		var got []byte
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if got, _ = os.ReadFile(p); string(got) == want {
				break
			}
		}
		if string(got) != want {
			t.Errorf("task %d wrote %q, want %q", pid, got, want)
		}
	}
}

// TestLogEntry: a caller's log entry carries its fields into the
// restore's log, helpers' entries included.
func TestLogEntry(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	if err := twoTasks().Write(dir); err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.DebugLevel)
	var buf strings.Builder
	log.SetOutput(&buf)
	res, err := restore.Restore(context.Background(), restore.Config{ImagesDir: dir, Run: restore.Options{End: restore.EndStop, Timeout: 20 * time.Second,
		LogEntry: log.WithField("container", "c1")}})
	if err != nil {
		t.Fatal(err)
	}
	cleanupPids(t, res.PidMap)
	res.PidFd.Close()
	var restored, helper bool
	for _, l := range strings.Split(buf.String(), "\n") {
		restored = restored || strings.Contains(l, "tree restored") && strings.Contains(l, "container=c1")
		helper = helper || strings.Contains(l, "proc=") && strings.Contains(l, "container=c1")
	}
	if !restored || !helper {
		t.Errorf("log lacks the caller's field (coordinator %v, helpers %v):\n%s", restored, helper, buf.String())
	}
}

// TestTypedErrors: the errors a caller branches on are reachable with
// errors.Is / errors.As from what Restore returns.
func TestTypedErrors(t *testing.T) {
	// A corrupt image.
	dir := t.TempDir()
	if err := twoTasks().Write(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/files.img", []byte("garbage!garbage!"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := restore.Restore(context.Background(), restore.Config{ImagesDir: dir, Run: restore.Options{End: restore.EndStop}})
	var fe *images.FormatError
	if !errors.As(err, &fe) {
		t.Errorf("corrupt files.img: got %v, want an images.FormatError", err)
	}
	// Unsupported objects.
	b := synth.New()
	tk := b.Task(310)
	b.Stdio(tk)
	b.Share(b.RawFile(criupb.FdTypes_INOTIFY, func(fe *criupb.FileEntry) { fe.Ify = []byte{8, 1} }), tk, 3)
	dir = t.TempDir()
	if err := b.Write(dir); err == nil {
		_, err = restore.Restore(context.Background(), restore.Config{ImagesDir: dir, Run: restore.Options{End: restore.EndStop}})
		if !errors.Is(err, restore.ErrUnsupported) {
			t.Errorf("inotify: got %v, want ErrUnsupported", err)
		}
	} else {
		t.Errorf("write images: %v", err)
	}
}

// TestCycleErrors: a plan's dependency cycle is ErrDependencyCycle.
func TestCycleErrors(t *testing.T) {
	b := synth.New()
	tk := b.Task(320)
	b.Stdio(tk)
	var ds []*synth.Desc
	for i := range 3 {
		name, _ := abstractName(t, fmt.Sprintf("cyc%d", i))
		ds = append(ds, b.UnixSocket(synth.Dgram, synth.Established, name))
	}
	for i, d := range ds {
		b.Connect(d, ds[(i+1)%3])
		b.Share(d, tk, uint32(3+i))
	}
	_, _, err := planSynth(t, b, restore.PlanOptions{})
	if !errors.Is(err, restore.ErrDependencyCycle) || !strings.Contains(err.Error(), "connected in a cycle") {
		t.Errorf("datagram connect cycle: got %v, want ErrDependencyCycle", err)
	}
}

// Example of a runtime's restore: inherit new stdio from the
// descriptors.json of the dump and run the recorded commands again.
func ExampleRestore() {
	dir := "/var/lib/myruntime/checkpoints/c1"
	descs, err := restore.ReadDescriptors(dir)
	if err != nil {
		fmt.Println(err)
		return
	}
	stdinR, _, _ := os.Pipe()
	_, stdoutW, _ := os.Pipe()
	res, err := restore.Restore(context.Background(), restore.Config{
		ImagesDir: dir,
		Plan:      restore.PlanOptions{Inherit: restore.InheritStdio(descs, stdinR, stdoutW, stdoutW)},
		Run: restore.Options{End: restore.EndExecRecorded, Timeout: 10 * time.Second,
			Hooks: restore.Hooks{SetupNamespaces: func(_ context.Context, res *restore.Result) error {
				// Move res.RootPid into the container's cgroup here.
				return nil
			}}},
	})
	var unresolved *restore.UnresolvedError
	switch {
	case errors.As(err, &unresolved):
		fmt.Println("fix the key", unresolved.Key, "; the images offer", unresolved.Candidates)
	case errors.Is(err, restore.ErrUnsupported):
		fmt.Println("cannot restore these images:", err)
	case errors.Is(err, restore.ErrTaskDied):
		fmt.Println("a process died during the restore:", err)
	case err != nil:
		fmt.Println(err)
	default:
		defer res.PidFd.Close()
		fmt.Println("root is pid", res.RootPid)
	}
}

// ExampleUnresolvedError shows the error of an inherit key that matches
// nothing: it names the key and lists the keys the images hold.
func ExampleUnresolvedError() {
	b := synth.New()
	tk := b.Task(100)
	b.Stdio(tk)
	b.Pipe(tk, 3, tk, 4, nil, 0)
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	b.Write(dir)
	set, _ := images.Load(dir)
	r, _, _ := os.Pipe()
	_, err := restore.NewPlan(set, restore.PlanOptions{Inherit: []restore.Inherit{{Key: "pipe[65536]", File: r}}})
	fmt.Println(errors.Is(err, restore.ErrUnresolved))
	fmt.Println(err)
	// Output:
	// true
	// inherit key "pipe[65536]": matches nothing in the images; the images offer: /dev/null, pipe:[65536], fd[0], fd[1], fd[2], fd[3], fd[4], fd[100:0], fd[100:1], fd[100:2], fd[100:3], fd[100:4]
}

// pidfdPid reads the pid of a pidfd from its fdinfo.
func pidfdPid(f *os.File) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", f.Fd()))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Pid:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("no Pid in the pidfd's fdinfo")
}

// TestActionScripts: fdrestore restore --action-script runs the script at
// every hook with CRIU's variables; a failing one aborts the restore and
// leaves no process.
func TestActionScripts(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	if err := twoTasks().Write(dir); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(cliBinary(t), "restore", "-D", dir, "--leave-stopped", "-d", "--action-script", `[ "$CRTOOLS_SCRIPT_ACTION" != post-restore ]`).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "post-restore hook") {
		t.Errorf("failing action script: %v\n%s", err, out)
	}
	if left := restoreProcs(nil); len(left) > 0 {
		t.Errorf("processes left after the failed action script: %s", strings.Join(left, "; "))
	}

	log := dir + "/actions"
	pidfile := dir + "/pid"
	script := `echo "$CRTOOLS_SCRIPT_ACTION $CRTOOLS_INIT_PID" >> ` + log
	out, err = exec.Command(cliBinary(t), "restore", "-D", dir, "--leave-stopped", "-d", "--pidfile", pidfile, "--action-script", script).CombinedOutput()
	if b, rerr := os.ReadFile(pidfile); rerr == nil {
		if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); pid > 0 {
			all := map[uint32]int{0: pid}
			for i, d := range fdcheck.Descendants(pid) {
				all[uint32(i+1)] = d
			}
			cleanupPids(t, all)
		}
	}
	if err != nil {
		t.Fatalf("restore --action-script: %v\n%s", err, out)
	}
	pid, _ := os.ReadFile(pidfile)
	p := strings.TrimSpace(string(pid))
	got, _ := os.ReadFile(log)
	want := "pre-restore \nsetup-namespaces " + p + "\npost-restore " + p + "\npre-resume " + p + "\npost-resume " + p + "\n"
	if string(got) != want {
		t.Errorf("action scripts ran as\n%s\nwant\n%s", got, want)
	}
}
