package files_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/scm"
	"golang.org/x/sys/unix"
)

// afterLog records the after-tree steps of the test openers, in order.
var afterLog []string

func init() {
	// An opener that makes a pipe read end and registers two after-tree
	// steps; the second fails when the spec's name says so.
	files.Register("test-after", func(spec *files.OpenSpec) (files.Opener, error) {
		return files.OpenerFunc(func(c *files.Context) (bool, error) {
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
				return false, err
			}
			unix.Close(p[1])
			name := c.Spec().Name
			c.AfterTree(func() error { afterLog = append(afterLog, name+" first"); return nil })
			c.AfterTree(func() error {
				afterLog = append(afterLog, name+" second")
				if strings.Contains(name, "fail") {
					return errors.New("refused")
				}
				return nil
			})
			return true, c.Adopt(spec.Files, []int{p[0]})
		}), nil
	})
}

// TestAfterTree: steps registered with Context.AfterTree run only when
// RunAfterTree is called (after Run), in registration order, once; an
// error stops them and names the task and the stage.
func TestAfterTree(t *testing.T) {
	for _, fail := range []bool{false, true} {
		afterLog = nil
		name := "obj"
		if fail {
			name = "obj-fail"
		}
		runID := scm.NewRunID()
		plan := &files.TaskPlan{Task: 0, Pid: 7, RunID: runID,
			Fles:  []files.Fle{{Fd: base + 10, File: 3, Cloexec: true}},
			Opens: []files.OpenSpec{{Type: "test-after", Files: []uint32{3}, SendTo: [][]uint32{nil}, Name: name}},
		}
		tr := openTransport(t, runID, 0, files.TempBase(plan))
		e, err := files.NewEngine(plan, tr, -1, quietLog())
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Run(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		unix.Close(base + 10)
		if len(afterLog) != 0 {
			t.Fatalf("after-tree steps ran during Run: %v", afterLog)
		}
		err = e.RunAfterTree()
		want := []string{name + " first", name + " second"}
		if strings.Join(afterLog, ",") != strings.Join(want, ",") {
			t.Errorf("steps %v, want %v", afterLog, want)
		}
		switch {
		case fail && (err == nil || !strings.Contains(err.Error(), "task 7: after tree: refused")):
			t.Errorf("failing step: %v", err)
		case !fail && err != nil:
			t.Errorf("RunAfterTree: %v", err)
		}
		if err := e.RunAfterTree(); err != nil || len(afterLog) != 2 {
			t.Errorf("second RunAfterTree: %v, steps %v (want nothing more)", err, afterLog)
		}
	}
}
