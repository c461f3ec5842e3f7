package restore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/internal/fdcheck"
	"github.com/fdrestore/fdrestore/restore"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// TestMain makes the test binary a restore helper when restore.Run
// re-executes it (helpers run /proc/self/exe, copied to a memfd), and
// otherwise runs the tests as a child subreaper: the restored trees (and
// the trees the CLI leaves behind when it exits) are reparented to the
// test process when their parents die, so the tests can reap every
// process they caused, even where pid 1 does not reap orphans.
func TestMain(m *testing.M) {
	restore.MaybeHelper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "PR_SET_CHILD_SUBREAPER: %v\n", err)
		os.Exit(2)
	}
	code := m.Run()
	for _, dir := range []string{cliDir, leanDir} {
		if dir != "" {
			os.RemoveAll(dir)
		}
	}
	os.Exit(code)
}

// needRoot skips a test that needs root, or fails it under CI=true.
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("restore tests need root (pidfd_getfd, kcmp, F_SETPIPE_SZ above the user limit, files in /tmp/fdr-fixtures)")
	}
	t.Skip("restore tests need root")
}

// fixtureDir returns the directory of one shared CRIU 4.2 fixture.
func fixtureDir(t testing.TB, name string) string {
	t.Helper()
	base := os.Getenv("FDRESTORE_FIXTURES")
	if base == "" {
		var err error
		if base, err = filepath.Abs("../../shared/criu-images"); err != nil {
			t.Fatal(err)
		}
	}
	d := filepath.Join(base, name)
	if _, err := os.Stat(filepath.Join(d, "pstree.img")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CRIU fixture %s not found (set FDRESTORE_FIXTURES): %v", d, err)
		}
		t.Skipf("CRIU fixture %s not found (set FDRESTORE_FIXTURES)", d)
	}
	return d
}

// testLogger sends restore logs at warning level and above to the test log.
func testLogger(t testing.TB) *logrus.Logger {
	l := logrus.New()
	l.SetLevel(logrus.WarnLevel)
	l.SetOutput(tlogWriter{t})
	return l
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// loadPlan loads and plans an image directory.
func loadPlan(t testing.TB, dir string) *restore.Plan {
	t.Helper()
	set, err := images.Load(dir)
	if err != nil {
		t.Fatalf("load %s: %v", dir, err)
	}
	p, err := restore.NewPlan(set, restore.PlanOptions{})
	if err != nil {
		t.Fatalf("plan %s: %v", dir, err)
	}
	if err := p.Err(); err != nil {
		t.Fatalf("plan %s: %v", dir, err)
	}
	return p
}

// runStop restores dir with restore.Run and EndStop, registering the
// clean-up of every restored task.
func runStop(t testing.TB, dir string) *restore.Result {
	t.Helper()
	p := loadPlan(t, dir)
	res, err := restore.Run(context.Background(), p, restore.Options{End: restore.EndStop, Timeout: 30 * time.Second, Log: testLogger(t)})
	if err != nil {
		t.Fatalf("restore %s: %v", dir, err)
	}
	cleanupPids(t, res.PidMap)
	return res
}

// cleanupPids kills and reaps the restored tasks when the test ends.
func cleanupPids(t testing.TB, m map[uint32]int) {
	pids := make([]int, 0, len(m))
	for _, p := range m {
		pids = append(pids, p)
	}
	t.Cleanup(func() {
		if err := fdcheck.KillAndReap(pids, 10*time.Second); err != nil {
			t.Errorf("clean-up of the restored tasks: %v", err)
		}
	})
}

var (
	cliOnce sync.Once
	cliDir  string
	cliPath string
	cliErr  error
)

// cliBinary builds cmd/fdrestore once per test run.
func cliBinary(t testing.TB) string {
	t.Helper()
	cliOnce.Do(func() {
		cliDir, cliErr = os.MkdirTemp("", "fdrestore-cli-test")
		if cliErr != nil {
			return
		}
		cliPath = filepath.Join(cliDir, "fdrestore")
		cmd := exec.Command("go", "build", "-o", cliPath, "github.com/fdrestore/fdrestore/cmd/fdrestore")
		out, err := cmd.CombinedOutput()
		if err != nil {
			cliErr = fmt.Errorf("go build cmd/fdrestore: %v\n%s", err, out)
		}
	})
	if cliErr != nil {
		t.Fatal(cliErr)
	}
	return cliPath
}

// runCLIStop restores dir with `fdrestore restore --leave-stopped -d
// --pid-map` and returns the pid map and the wall time of the command.
func runCLIStop(t testing.TB, dir string) (map[uint32]int, time.Duration) {
	t.Helper()
	bin := cliBinary(t)
	pm := filepath.Join(t.TempDir(), "pidmap.json")
	start := time.Now()
	cmd := exec.Command(bin, "restore", "-D", dir, "--leave-stopped", "-d", "--pid-map", pm)
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	b, rerr := os.ReadFile(pm)
	m := map[uint32]int{}
	if rerr == nil {
		var raw map[string]int
		if jerr := json.Unmarshal(b, &raw); jerr != nil {
			t.Fatalf("pid map %s: %v", b, jerr)
		}
		for k, v := range raw {
			n, perr := strconv.ParseUint(k, 10, 32)
			if perr != nil {
				t.Fatalf("pid map key %q: %v", k, perr)
			}
			m[uint32(n)] = v
		}
		cleanupPids(t, m)
	}
	if err != nil {
		t.Fatalf("fdrestore restore -D %s: %v\n%s", dir, err, out)
	}
	if rerr != nil {
		t.Fatalf("pid map: %v", rerr)
	}
	return m, took
}

// restoreProcs lists the processes of restores still around: descendants
// of the test process (orphans come to it, see TestMain) and anything
// running the helper memfd whose pid is in seen.
func restoreProcs(seen map[int]bool) []string {
	var out []string
	self := os.Getpid()
	for _, pid := range fdcheck.Descendants(self) {
		st, _ := fdcheck.ReadStat(pid)
		out = append(out, fmt.Sprintf("%d (%s, state %c, ppid %d, exe %q)", pid, st.Comm, st.State, st.PPid, fdcheck.Exe(pid)))
	}
	for pid := range seen {
		if fdcheck.Exists(pid) && fdcheck.Exe(pid) == fdcheck.HelperExe {
			out = append(out, fmt.Sprintf("%d (helper memfd)", pid))
		}
	}
	return out
}

// childSubreaper reports whether the calling process is a child
// subreaper.
func childSubreaper() bool {
	var v int32
	if err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&v)), 0, 0, 0); err != nil {
		return false
	}
	return v != 0
}
