package restore

import (
	"errors"
	"fmt"
)

// TaskEnd is what Options.EndFunc learns about one restored task.
type TaskEnd struct {
	ImagePid uint32 // its pid in the images
	Pid      int    // its pid now
	Cwd      string // its working directory at dump ("" when not recorded)
	// Recorded is what fdrestore dump recorded for it (argv, environment
	// with FDRESTORE_RESTORED=1 added, cwd, executable), or nil.
	Recorded *Exec
}

// Exec is the program a restored task runs at the end of the restore.
type Exec struct {
	Path string   // the file to run (default: Argv[0])
	Argv []string // must not be empty
	Env  []string
	Dir  string // working directory ("": the recorded cwd)
	// KeepCloexec keeps the task's FD_CLOEXEC fds open across the exec
	// and lists them in CloexecEnv (as EndExecRecorded does).
	KeepCloexec bool
}

// endFunc fills the end message of task st from Options.EndFunc.
func (c *coordinator) endFunc(m *ctlMsg, st *procState) error {
	te := TaskEnd{ImagePid: st.p.Task.Pid, Pid: st.pid, Cwd: m.Dir}
	if r := c.recorded[st.p.Task.Pid]; r != nil {
		var rm ctlMsg
		execRecorded(&rm, r)
		te.Recorded = &Exec{Path: rm.Path, Argv: rm.Argv, Env: rm.Env, Dir: rm.Dir, KeepCloexec: rm.KeepCloexec}
	}
	x, err := c.opts.EndFunc(te)
	if err == nil && len(x.Argv) == 0 {
		err = errors.New("no argv")
	}
	if err != nil {
		return fmt.Errorf("EndFunc for task %d: %w", te.ImagePid, err)
	}
	if x.Path == "" {
		x.Path = lookPath(x.Argv[0], x.Env)
	}
	m.Mode, m.Path, m.Argv, m.Env, m.KeepCloexec = modeExec, x.Path, x.Argv, x.Env, x.KeepCloexec
	if x.Dir != "" {
		m.Dir = x.Dir
	}
	return nil
}
