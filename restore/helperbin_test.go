package restore_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/internal/fdcheck"
	"github.com/fdrestore/fdrestore/restore"
)

var (
	leanOnce sync.Once
	leanPath string
	leanDir  string // removed by TestMain
	leanErr  error
)

// leanHelper returns the lean helper binary: $FDRESTORE_HELPER when set
// (make test builds it), else cmd/fdrestore-helper built once into a
// temporary directory.
func leanHelper(t testing.TB) string {
	t.Helper()
	leanOnce.Do(func() {
		if p := os.Getenv(restore.HelperEnv); p != "" {
			leanPath = p
			return
		}
		dir, err := os.MkdirTemp("", "fdrestore-helper-test")
		if err != nil {
			leanErr = err
			return
		}
		leanDir = dir
		leanPath = filepath.Join(dir, restore.HelperName)
		gotool, err := exec.LookPath("go")
		if err != nil {
			gotool = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		cmd := exec.Command(gotool, "build", "-o", leanPath, "github.com/fdrestore/fdrestore/cmd/fdrestore-helper")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			leanErr = errors.New("go build cmd/fdrestore-helper: " + err.Error() + "\n" + string(out))
		}
	})
	if leanErr != nil {
		t.Fatal(leanErr)
	}
	return leanPath
}

// pipeTree writes a two-task tree whose tasks share a pipe.
func pipeTree(t *testing.T) string {
	b := newImgBuilder()
	r, w := b.pipe([]byte("lean"), 0, 0, 0)
	b.task(10, 0, 10, 10).fd(3, r, false).fd(4, w, true)
	b.task(11, 10, 10, 10).fd(5, r, false)
	return b.write(t)
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// TestHelperBinary: the restored tasks run the helper binary chosen by
// Options.Helper, else $FDRESTORE_HELPER, else the running executable (the
// test binary has no fdrestore-helper next to it), each from a memfd copy:
// /proc/PID/exe of every stopped task is the memfd, and its size is the
// chosen binary's.
func TestHelperBinary(t *testing.T) {
	needRoot(t)
	lean := leanHelper(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(self), restore.HelperName)); err == nil {
		t.Fatalf("%s has a %s next to it: the fallback cannot be tested", self, restore.HelperName)
	}
	dir := pipeTree(t)
	for _, tc := range []struct {
		name, opt, env, want string
	}{
		{"option", lean, "/nonexistent/ignored", lean},
		{"env", "", lean, lean},
		{"self", "", "", self},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(restore.HelperEnv, tc.env)
			p := loadPlan(t, dir)
			res, err := restore.Run(context.Background(), p, restore.Options{End: restore.EndStop, Timeout: 30 * time.Second, Log: testLogger(t), Helper: tc.opt})
			if err != nil {
				t.Fatal(err)
			}
			cleanupPids(t, res.PidMap)
			want := fileSize(t, tc.want)
			for img, pid := range res.PidMap {
				if exe := fdcheck.Exe(pid); exe != fdcheck.HelperExe {
					t.Errorf("task %d (pid %d): exe %q, want %q", img, pid, exe, fdcheck.HelperExe)
				}
				if got := fileSize(t, "/proc/"+strconv.Itoa(pid)+"/exe"); got != want {
					t.Errorf("task %d (pid %d) runs a %d-byte binary, want %s (%d bytes)", img, pid, got, tc.want, want)
				}
			}
		})
	}
}

// TestHelperBinaryBad: a helper binary that cannot be read fails the
// restore before any process exists, naming the path and where it came
// from; one that is not a helper (here env(1), which complains about its
// arguments and exits, as a helper of another version does) fails it
// promptly with what it said, and nothing is left behind.
func TestHelperBinaryBad(t *testing.T) {
	needRoot(t)
	dir := pipeTree(t)
	t.Run("missing", func(t *testing.T) {
		t.Setenv(restore.HelperEnv, "/nonexistent/fdrestore-helper")
		p := loadPlan(t, dir)
		_, err := restore.Run(context.Background(), p, restore.Options{End: restore.EndStop, Timeout: 10 * time.Second, Log: testLogger(t)})
		if err == nil || !strings.Contains(err.Error(), "/nonexistent/fdrestore-helper") || !strings.Contains(err.Error(), "$"+restore.HelperEnv) {
			t.Fatalf("restore with a missing helper binary: %v, want an error naming it and $%s", err, restore.HelperEnv)
		}
	})
	t.Run("not-a-helper", func(t *testing.T) {
		env, err := exec.LookPath("env")
		if err != nil {
			t.Skip("no env(1)")
		}
		p := loadPlan(t, dir)
		start := time.Now()
		_, err = restore.Run(context.Background(), p, restore.Options{End: restore.EndStop, Timeout: 20 * time.Second, Log: testLogger(t), Helper: env})
		// env(1) names itself by argv[0] and complains about argv[1]. The
		// coordinator reads it as a crash report, or, when the helper
		// died before the coordinator listened, as its last words.
		if err == nil || !strings.Contains(err.Error(), "fdrestore-helper: ") || !strings.Contains(err.Error(), restore.HelperArg) ||
			!strings.Contains(err.Error(), "crashed") && !strings.Contains(err.Error(), "it wrote") {
			t.Fatalf("restore with a helper of another version: %v, want the helper's complaint", err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("the restore took %v to fail", took)
		}
		if left := restoreProcs(nil); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})
}

// TestHelperProtocolMismatch: the lean helper run with arguments of
// another protocol version refuses, saying which version it speaks.
func TestHelperProtocolMismatch(t *testing.T) {
	lean := leanHelper(t)
	for _, args := range [][]string{
		{restore.HelperArg, "0", "run", "-1", "3", "0", "4"},            // an older layout
		{restore.HelperArg, "0", "run", "-1", "3", "0", "4", "fdrp999"}, // another version
	} {
		cmd := exec.Command(lean, args...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 125 || !strings.Contains(string(out), "protocol") {
			t.Errorf("%s %q: %v, output %q; want exit status 125 and a message about the protocol", lean, args, err, out)
		}
	}
	// Run by hand, it says what it is.
	out, err := exec.Command(lean).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not run by hand") {
		t.Errorf("%s without arguments: %v, %q", lean, err, out)
	}
}
