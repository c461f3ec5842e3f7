package restore

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Hooks are the caller's functions called at fixed points of Run, so that
// a container runtime can set up cgroups and networking around the
// restore. Each gets the run's context and what is known at that point;
// an error from a hook aborts the restore: every process it created is
// killed and reaped, and Run returns a *HookError wrapping the hook's
// error.
type Hooks struct {
	// PreRestore runs before any process exists (res is nil).
	PreRestore func(ctx context.Context, res *Result) error
	// SetupNamespaces runs once the root task's process exists and
	// before any other process of the tree does: res.RootPid is set.
	// Every process spawned later starts in the root's cgroup and
	// namespaces.
	SetupNamespaces func(ctx context.Context, res *Result) error
	// PostRestore runs when every task's fds are in place (res has the
	// pid map), before any task runs again.
	PostRestore func(ctx context.Context, res *Result) error
	// PreResume runs last before the tasks are released to their end
	// state (exec or stop).
	PreResume func(ctx context.Context, res *Result) error
	// PostResume runs once every task reached its end state.
	PostResume func(ctx context.Context, res *Result) error
}

// HookError is returned when a hook failed; Unwrap gives its error.
type HookError struct {
	Hook string // "pre-restore", "setup-namespaces", ...
	Err  error
}

func (e *HookError) Error() string { return fmt.Sprintf("%s hook: %v", e.Hook, e.Err) }
func (e *HookError) Unwrap() error { return e.Err }

// ErrHookPanicked is wrapped by the HookError of a hook that panicked.
var ErrHookPanicked = errors.New("hook panicked")

// hook calls fn, when set, timing it and turning its failure or panic into
// a HookError.
func (c *coordinator) hook(ctx context.Context, name string, fn func(context.Context, *Result) error, res *Result) (err error) {
	if fn == nil {
		return nil
	}
	start := time.Now()
	defer func() {
		c.hookTime += time.Since(start)
		if r := recover(); r != nil {
			err = &HookError{Hook: name, Err: fmt.Errorf("%w: %v", ErrHookPanicked, r)}
		}
	}()
	c.log.WithField("hook", name).Debug("calling hook")
	if err := fn(ctx, res); err != nil {
		return &HookError{Hook: name, Err: err}
	}
	return ctx.Err()
}
