package restore_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/restore"
	"github.com/sirupsen/logrus"
)

// TestStallDetectedPromptly takes a valid plan and removes the object that
// creates a pipe both tasks wait for: no task can ever finish. The
// coordinator must see that every task is idle and fail within about a
// second — long before the timeout — naming what each task waits for, and
// leave no process behind.
func TestStallDetectedPromptly(t *testing.T) {
	needRoot(t)
	b := newImgBuilder()
	root := b.task(10, 0, 10, 10)
	child := b.task(11, 10, 10, 10)
	null := b.devNull(0)
	r, w := b.pipe([]byte("stuck"), 0, 0, 0)
	root.fd(0, null, false).fd(3, w, false)
	child.fd(0, null, false).fd(4, r, false)
	set, err := images.Load(b.write(t))
	if err != nil {
		t.Fatal(err)
	}
	p, err := restore.NewPlan(set, restore.PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Sabotage: the root no longer creates the pipe.
	tp := p.TaskPlans[0]
	kept := tp.Opens[:0]
	for _, o := range tp.Opens {
		if o.Type != "pipe" {
			kept = append(kept, o)
		}
	}
	tp.Opens = kept

	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	start := time.Now()
	_, err = restore.Run(context.Background(), p, restore.Options{End: restore.EndStop, Timeout: 30 * time.Second, Log: log})
	took := time.Since(start)
	if err == nil {
		t.Fatal("sabotaged restore succeeded")
	}
	t.Logf("failed after %v: %v", took, err)
	if took > 3*time.Second {
		t.Errorf("stall reported after %v, want about a second", took)
	}
	msg := err.Error()
	for _, want := range []string{"stalled", "task 10 waits for file ids", "task 11 waits for file ids"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	var te *restore.TaskError
	if errors.As(err, &te) {
		t.Errorf("a global stall is not one task's fault, got TaskError %v", te)
	}
}
