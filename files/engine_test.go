package files_test

import (
	"errors"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/files/pipe"
	"github.com/fdrestore/fdrestore/internal/fdcheck"
	"github.com/fdrestore/fdrestore/scm"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root")
	}
	t.Skip("this test needs root")
}

func quietLog() logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return l
}

// openTransport opens task's endpoint above floor and closes it at the
// end of the test.
func openTransport(t *testing.T, runID string, task uint32, floor int) *scm.Transport {
	t.Helper()
	tr, err := scm.Open(runID, task, scm.Options{FDFloor: floor})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// The test's own fds are low numbers; target fds from 1000 up are free in
// the test process, so engines can run in it.
const base = 1000

func init() {
	// An opener that waits forever for a description that never comes.
	files.Register("test-waits", func(spec *files.OpenSpec) (files.Opener, error) {
		return files.OpenerFunc(func(c *files.Context) (bool, error) { return false, nil }), nil
	})
}

// TestEngineStall: a task that waits for fds another task never sends
// fails at its deadline with an error that lists the missing file ids and
// the unfinished objects; with an Idle hook it reports itself idle, with
// the same list, long before.
func TestEngineStall(t *testing.T) {
	runID := scm.NewRunID()
	plan := &files.TaskPlan{Task: 0, Pid: 42, RunID: runID,
		Fles:  []files.Fle{{Fd: base, File: 7}, {Fd: base + 1, File: 9}, {Fd: base + 2, File: 7, Cloexec: true}},
		Opens: []files.OpenSpec{{Type: "test-waits", Files: []uint32{11}, SendTo: [][]uint32{{1}}, Needs: []uint32{9}, Name: "thing 11"}},
	}
	tr := openTransport(t, runID, 0, files.TempBase(plan))
	openTransport(t, runID, 1, files.TempBase(plan)) // the peer that should send 7 and 9, and never does
	e, err := files.NewEngine(plan, tr, -1, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var idle []string
	e.IdleAfter = 20 * time.Millisecond
	e.Idle = func(on bool, waits string) {
		mu.Lock()
		defer mu.Unlock()
		if on {
			idle = append(idle, waits)
		}
	}
	const wait = 300 * time.Millisecond
	start := time.Now()
	err = e.Run(start.Add(wait))
	took := time.Since(start)
	if err == nil {
		t.Fatal("engine finished without its fds")
	}
	t.Logf("after %v: %v", took, err)
	if took < wait || took > wait+500*time.Millisecond {
		t.Errorf("engine gave up after %v, want just after its %v deadline", took, wait)
	}
	var ee *files.EngineError
	if !errors.As(err, &ee) || ee.Task != 42 || ee.Stage != "wait" {
		t.Errorf("error %#v is not an EngineError of task 42 at stage wait", err)
	}
	if !errors.Is(err, scm.ErrTimeout) {
		t.Errorf("error does not wrap scm.ErrTimeout: %v", err)
	}
	for _, want := range []string{"task 42", "waits for file ids [7 9 11]", "test-waits thing 11 not finished (1 needs missing)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q: %v", want, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(idle) != 1 || !strings.Contains(idle[0], "waits for file ids [7 9 11]") {
		t.Errorf("Idle reports %q, want one naming file ids [7 9 11]", idle)
	}
}

// TestEngineTwoTasks runs two engines in the test process (their target
// fds do not overlap): task 0 creates a pipe with queued data and a 1 MiB
// buffer, keeps the write end and two fds of the read end, and serves the
// read end to task 1.
func TestEngineTwoTasks(t *testing.T) {
	needRoot(t) // F_SETPIPE_SZ above pipe-max-size for users
	runID := scm.NewRunID()
	pp := pipe.PipeParams{PipeID: 77, Data: []byte("xyz"), Size: 1 << 20,
		Ends: []pipe.End{{File: 1, Flags: unix.O_RDONLY}, {File: 2, Flags: unix.O_WRONLY | unix.O_NONBLOCK}}}
	data, err := pp.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	spec := files.OpenSpec{Type: pipe.PipeType, Files: []uint32{1, 2}, SendTo: [][]uint32{{1}, nil}, Data: data, Name: "pipe:[77]"}
	p0 := &files.TaskPlan{Task: 0, Pid: 10, RunID: runID,
		Fles:  []files.Fle{{Fd: base, File: 2}, {Fd: base + 1, File: 1}, {Fd: base + 5, File: 1, Cloexec: true}},
		Opens: []files.OpenSpec{spec}}
	p1 := &files.TaskPlan{Task: 1, Pid: 11, RunID: runID, Fles: []files.Fle{{Fd: base + 100, File: 1}}}
	targets := []int{base, base + 1, base + 5, base + 100}
	t.Cleanup(func() {
		for _, fd := range targets {
			unix.Close(fd)
		}
	})
	tr0 := openTransport(t, runID, 0, files.TempBase(p1)+10)
	tr1 := openTransport(t, runID, 1, files.TempBase(p1)+10)
	e0, err := files.NewEngine(p0, tr0, -1, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	e1, err := files.NewEngine(p1, tr1, -1, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	errs := make(chan error, 2)
	go func() { errs <- e0.Run(deadline) }()
	go func() { errs <- e1.Run(deadline) }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	self := unix.Getpid()
	for _, c := range []struct {
		a, b int
		same bool
	}{{base + 1, base + 100, true}, {base + 1, base + 5, true}, {base, base + 1, false}} {
		if same, err := fdcheck.SameDescription(self, c.a, self, c.b); err != nil || same != c.same {
			t.Errorf("fds %d and %d: same description %v (%v), want %v", c.a, c.b, same, err, c.same)
		}
	}
	for fd, want := range map[int]int{base: unix.O_WRONLY | unix.O_NONBLOCK, base + 1: unix.O_RDONLY, base + 100: unix.O_RDONLY} {
		fi, err := fdcheck.Info(self, fd)
		if err != nil || fi.Status() != want || fi.Cloexec() {
			t.Errorf("fd %d: flags %#o (%v), want %#o without FD_CLOEXEC", fd, fi.Flags, err, want)
		}
	}
	if fi, err := fdcheck.Info(self, base+5); err != nil || !fi.Cloexec() {
		t.Errorf("fd %d: FD_CLOEXEC not set (%v)", base+5, err)
	}
	if sz, err := fdcheck.PipeSize(base + 100); err != nil || sz != 1<<20 {
		t.Errorf("F_GETPIPE_SZ %d (%v), want 1 MiB", sz, err)
	}
	if got, err := fdcheck.ReadQueued(base+100, 3); err != nil || string(got) != "xyz" {
		t.Errorf("queued %q (%v), want %q", got, err, "xyz")
	}
	if n, _ := fdcheck.Queued(base + 1); n != 0 {
		t.Errorf("%d bytes left: data written twice", n)
	}
}

// TestCycleNamesObjects: a cycle across tasks, built the way a restore
// plan records its rules (nested epolls whose registrations wait for their
// targets, next to the plan's created/served edges), is rejected by Check
// with every object, stage, task and reason on it.
func TestCycleNamesObjects(t *testing.T) {
	g := files.NewGraph()
	pipeObj := files.Object{ID: files.ObjectID{Kind: "file", ID: 6}, Name: "pipe:[1302207] (file ids [6 7])", Owner: 2}
	served := files.Object{ID: files.ObjectID{Kind: "fds of file", ID: 3<<32 | 6}, Name: "file id 6 in task 3", Owner: 3}
	g.Need(g.Node(served, files.StageServed), g.Node(pipeObj, files.StageCreated), "received over SCM_RIGHTS")
	e1 := files.Object{ID: files.ObjectID{Kind: "epoll", ID: 10}, Name: "eventpoll file id 10", Owner: 2}
	e2 := files.Object{ID: files.ObjectID{Kind: "epoll", ID: 11}, Name: "eventpoll file id 11", Owner: 3}
	n1 := g.Chain(e1, files.StageCreated, files.StageRestored)
	n2 := g.Chain(e2, files.StageCreated, files.StageRestored)
	g.Need(n1[1], n2[1], "registers target fd 7")
	g.Need(n2[1], n1[1], "registers target fd 3")
	g.Need(n1[1], g.Node(pipeObj, files.StageCreated), "registers target fd 4")
	err := g.Check()
	var ce *files.CycleError
	if !errors.As(err, &ce) {
		t.Fatalf("Check = %v, want a *CycleError", err)
	}
	t.Log(err)
	for _, want := range []string{
		"eventpoll file id 10 Restored in task 2 needs eventpoll file id 11 Restored in task 3 (registers target fd 7)",
		"eventpoll file id 11 Restored in task 3 needs eventpoll file id 10 Restored in task 2 (registers target fd 3)",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("cycle error does not say %q: %v", want, err)
		}
	}
	if strings.Contains(err.Error(), "pipe") || len(ce.Steps) != 2 {
		t.Errorf("cycle error names nodes off the cycle, or not 2 steps: %v", err)
	}
}
