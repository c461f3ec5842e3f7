package restore

// The --exec-recorded end state: every task execs what it was running at
// dump time, as recorded by `fdrestore dump` in fdrestore-exec.img.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"github.com/fdrestore/fdrestore/restore/helper"
)

// ExecImage is fdrestore's side image with each task's recorded argv,
// environment and cwd (written by package dump; CRIU ignores it).
const ExecImage = "fdrestore-exec.img"

// RestoredEnv is added to the environment of every task restored with
// EndExecRecorded.
const RestoredEnv = "FDRESTORE_RESTORED=1"

// LoadExecRecords reads dir/fdrestore-exec.img and returns its entries by
// image pid.
func LoadExecRecords(dir string) (map[uint32]*criupb.FdrestoreExecEntry, error) {
	_, entries, err := images.ReadFile(filepath.Join(dir, ExecImage), images.KindNamed("FDRESTORE_EXEC"))
	if err != nil {
		return nil, fmt.Errorf("exec-recorded: %w (the images were not made by fdrestore dump?)", err)
	}
	out := map[uint32]*criupb.FdrestoreExecEntry{}
	for i, e := range entries {
		r := e.Msg.(*criupb.FdrestoreExecEntry)
		if _, dup := out[r.GetPid()]; dup {
			return nil, fmt.Errorf("%s entry %d: pid %d appears twice", ExecImage, i, r.GetPid())
		}
		out[r.GetPid()] = r
	}
	return out, nil
}

// checkExecRecords makes sure every task of the plan has a usable record,
// before any process is created.
func checkExecRecords(plan *Plan, recs map[uint32]*criupb.FdrestoreExecEntry) error {
	for _, t := range plan.Set.Tasks {
		r := recs[t.Pid]
		if r == nil {
			return fmt.Errorf("exec-recorded: %s has no entry for task %d", ExecImage, t.Pid)
		}
		if len(r.GetArgv()) == 0 {
			return fmt.Errorf("exec-recorded: %s: task %d has an empty argv (a kernel thread?)", ExecImage, t.Pid)
		}
	}
	return nil
}

// CloexecEnv names the environment variable through which a task restarted
// with --exec-recorded learns which of its fds had FD_CLOEXEC at dump: exec
// would have closed them, so they are passed open and listed here, as
// comma-separated fds and ranges ("12,20-23"). A program that adopts its
// fds should set FD_CLOEXEC on them again.
const CloexecEnv = helper.CloexecEnv

// execRecorded fills an end message with the task's recorded command:
// argv, environment plus FDRESTORE_RESTORED=1, cwd, and the file to exec
// (the recorded executable, else argv[0], searched in the recorded PATH).
func execRecorded(m *ctlMsg, r *criupb.FdrestoreExecEntry) {
	m.Mode = modeExec
	m.KeepCloexec = true
	m.Argv = r.GetArgv()
	m.Env = append(append([]string(nil), r.GetEnv()...), RestoredEnv)
	if r.Cwd != nil {
		m.Dir = r.GetCwd()
	}
	m.Path = r.GetExe()
	if m.Path == "" {
		m.Path = lookPath(m.Argv[0], r.GetEnv())
	}
}

func lookPath(name string, env []string) string {
	if strings.Contains(name, "/") {
		return name
	}
	path := "/usr/local/bin:/usr/bin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return name
}
