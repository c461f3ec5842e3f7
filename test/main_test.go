package zdtm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var (
	flagRun      = flag.String("zdtm.run", "", "run only the scenarios whose name matches this regexp")
	flagFlavors  = flag.String("zdtm.flavors", "h,ns", "comma-separated flavors: h, ns (and nocr: no checkpoint, the scenario checks itself)")
	flagIters    = flag.Int("zdtm.iters", 2, "dump/restore iterations per scenario and flavor")
	flagTimeout  = flag.Duration("zdtm.timeout", 2*time.Minute, "deadline of one scenario in one flavor")
	flagReport   = flag.String("zdtm.report", "", "also write the report to this file")
	flagVerbose  = flag.Bool("zdtm.v", false, "log every step of every run, not only of failures")
	flagParallel = 4 // default -test.parallel: the runs mostly wait
)

// binaries built once per test process.
var (
	binDir   string
	buildMu  sync.Mutex
	built    map[string]string
	buildErr = map[string]error{}
)

func TestMain(m *testing.M) {
	if os.Getenv(EnvDriver) != "" {
		os.Exit(DriverMain())
	}
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		flag.Set("test.parallel", fmt.Sprint(flagParallel))
	}
	// Orphans of driver processes come back here, to be reaped.
	unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	var err error
	binDir, err = os.MkdirTemp("", "fdrestore-zdtm-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(binDir)
	os.Exit(code)
}

// needRoot skips a test that needs root, or fails it under CI=true.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("the zdtm suite needs root (namespaces, pidfd_getfd, kcmp of other processes); CI=true makes this skip a failure")
	}
	t.Skip("the zdtm suite needs root (namespaces, pidfd_getfd, kcmp of other processes)")
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// binary builds a package of the module once and returns the binary.
func binary(t *testing.T, pkg string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[pkg]; ok {
		return p
	}
	if err, ok := buildErr[pkg]; ok {
		t.Fatal(err)
	}
	out := filepath.Join(binDir, filepath.Base(pkg))
	cmd := exec.Command(goTool(), "build", "-o", out, "github.com/fdrestore/fdrestore/"+pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		buildErr[pkg] = fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
		t.Fatal(buildErr[pkg])
	}
	if built == nil {
		built = map[string]string{}
	}
	built[pkg] = out
	return out
}

func newToken() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// runDriver runs one scenario in one flavor in a driver process and
// returns its result. It guarantees that nothing of the run survives:
// the driver kills what it started, and whatever remains (the driver
// timed out or crashed) is killed here and reported.
func runDriver(t *testing.T, cfg Config) *Result {
	t.Helper()
	cfg.Scenarios = binary(t, "test/scenario")
	cfg.Fdrestore = binary(t, "cmd/fdrestore")
	binary(t, "cmd/fdrestore-helper") // beside fdrestore, which runs its helpers from it
	cfg.WorkDir = t.TempDir()
	cfg.Token = newToken()
	if cfg.Iters == 0 {
		cfg.Iters = *flagIters
	}
	cfg.Deadline = time.Now().Add(*flagTimeout)
	js, _ := json.Marshal(cfg)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithDeadline(context.Background(), cfg.Deadline.Add(15*time.Second))
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), EnvDriver+"="+string(js))
	cmd.Dir = cfg.WorkDir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if cfg.Flavor == FlavorNS {
		cmd.SysProcAttr.Cloneflags = NSCloneFlags
	}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	runErr := cmd.Run()
	res := &Result{}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), res); err != nil {
		res.Status = "fail"
		res.Reason = fmt.Sprintf("driver: %v (no result; %v)", runErr, strings.TrimSpace(lastLines(stderr.String(), 20)))
		if ctx.Err() != nil {
			res.Reason = fmt.Sprintf("timed out after %v; %s", *flagTimeout, res.Reason)
		}
	}
	if found, left := KillToken(cfg.Token, time.Now().Add(10*time.Second)); len(found) > 0 {
		msg := fmt.Sprintf("processes left behind after the run: %v", found)
		if len(left) > 0 {
			msg += fmt.Sprintf(" (%v survive SIGKILL)", left)
		}
		res.Steps = append(res.Steps, msg)
		if res.Status != "fail" {
			res.Status, res.Reason = "fail", msg
		}
	}
	if res.Status == "fail" || *flagVerbose || testing.Verbose() && res.Status != "pass" {
		t.Logf("steps of %s/%s:\n%s", cfg.Scenario, cfg.Flavor, strings.Join(res.Steps, "\n"))
		if s := strings.TrimSpace(stderr.String()); s != "" {
			t.Logf("driver stderr:\n%s", lastLines(s, 40))
		}
	}
	return res
}

func lastLines(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
