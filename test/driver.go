package zdtm

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Environment shared by the runner, the driver and the scenarios.
const (
	EnvDriver = "ZDTM_DRIVER_CONFIG" // the test binary runs as a driver with this JSON config
	EnvRun    = "ZDTM_RUN"           // marks every process of one run, for cleanup
)

// Flavors.
const (
	FlavorHost = "h"    // the scenario in the runner's namespaces
	FlavorNS   = "ns"   // fresh pid, mount, net, IPC and UTS namespaces
	FlavorNoCR = "nocr" // no checkpoint: the scenario checks itself (sanity check of a scenario)
)

// Config tells a driver what to run.
type Config struct {
	Scenario  string
	Flavor    string
	Iters     int
	Scenarios string // the scenario binary
	Fdrestore string // the fdrestore binary
	WorkDir   string
	Token     string
	Deadline  time.Time
	// CRFail: the dump must fail with an error matching CRFailError, in
	// which "{pid:ROLE}" stands for the pid of the task running ROLE.
	CRFail      bool
	CRFailError string
	// LeaveRunningError: the dump with --leave-running must be refused
	// with an error matching it ({pid:ROLE} as in CRFailError), the tree
	// left running unchanged; the dumps that kill the tree then go on.
	LeaveRunningError string
	// Mutate names an image mutation applied after the first dump.
	Mutate string
	// IOTimeout bounds each read, write and wait of the scenario tasks
	// (default 10s).
	IOTimeout time.Duration
	// SkipExec stops after the outside comparison of each restore (no
	// self-verification), for runs that only test the comparison.
	SkipExec bool
	// ExtPeer: the driver binds a datagram socket at
	// WORKDIR/SCENARIO.ext.sock, outside the tree, for the scenario to
	// connect to; ExtUnixSk passes --ext-unix-sk to dumps and restores.
	ExtPeer, ExtUnixSk bool
	// TCP: the scenario holds TCP connections: dumps and restores get
	// --tcp-established, and without C/R it runs in a network namespace
	// of its own (it brings lo up itself).
	TCP bool
	// NetworkLock, when set, is passed as --network-lock to the dumps and
	// the final restores ("skip": the peers of the connections may get
	// resets while the tree is away).
	NetworkLock string
	// Gap is how long the driver waits after each dump before restoring:
	// with TCP peers outside the tree, their segments then certainly meet
	// no socket (or the network lock) for that long.
	Gap time.Duration
}

// Result is a driver's report, printed as one JSON line on stdout.
type Result struct {
	Status   string   // pass, fail, skip
	Reason   string   // why it failed or was skipped
	Diffs    []string // differences found by the outside comparison
	Verdicts []string // the tasks' own verdict lines
	DumpErr  string   // the dump's error (expected-failure scenarios)
	Steps    []string // what happened, with timings
}

type driver struct {
	cfg    Config
	reaper *Reaper
	res    Result
	start  time.Time
	rec    *State
	env    []string // the scenario's environment
}

// DriverMain runs a driver process (the test binary started with
// EnvDriver set) and returns its exit status. The result goes to stdout.
func DriverMain() int {
	var cfg Config
	if err := json.Unmarshal([]byte(os.Getenv(EnvDriver)), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "driver: bad config: %v\n", err)
		return 2
	}
	d := &driver{cfg: cfg, start: time.Now()}
	d.run()
	b, _ := json.Marshal(&d.res)
	os.Stdout.Write(append(b, '\n'))
	return 0
}

func (d *driver) step(format string, args ...any) {
	d.res.Steps = append(d.res.Steps, fmt.Sprintf("%6.3fs ", time.Since(d.start).Seconds())+fmt.Sprintf(format, args...))
}

// failf ends the run as failed (the first reason wins).
func (d *driver) failf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	d.step("FAIL: %s", msg)
	if d.res.Status != "fail" {
		d.res.Status, d.res.Reason = "fail", msg
	}
}

func (d *driver) deadline(limit time.Duration) time.Time {
	t := time.Now().Add(limit)
	if t.After(d.cfg.Deadline) {
		return d.cfg.Deadline
	}
	return t
}

func (d *driver) run() {
	d.res.Status = "pass"
	if d.cfg.Flavor == FlavorNS {
		if err := setupNS(); err != nil {
			d.failf("namespace setup: %v", err)
			return
		}
		d.step("namespaces ready (pid %d)", os.Getpid())
	} else if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		d.failf("PR_SET_CHILD_SUBREAPER: %v", err)
		return
	}
	d.reaper = StartReaper()
	defer d.cleanup()
	if d.cfg.ExtPeer {
		fd, err := d.extPeer()
		if err != nil {
			d.failf("outside peer: %v", err)
			return
		}
		defer unix.Close(fd)
	}
	if err := d.cycle(); err != nil {
		d.failf("%v", err)
	}
}

// extPeer binds the datagram socket outside the tree that ExtPeer
// scenarios connect to.
func (d *driver) extPeer() (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	path := filepath.Join(d.cfg.WorkDir, d.cfg.Scenario+".ext.sock")
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %s: %w", path, err)
	}
	return fd, nil
}

// extArgs are the extra options of dumps and restores.
func (d *driver) extArgs(args ...string) []string {
	if d.cfg.ExtUnixSk {
		args = append(args, "--ext-unix-sk")
	}
	return args
}

// cleanup kills everything the run started and waits until it is gone.
func (d *driver) cleanup() {
	deadline := time.Now().Add(10 * time.Second)
	if d.cfg.Flavor == FlavorNS {
		// As the namespace's init: every other process in it.
		unix.Kill(-1, unix.SIGKILL)
		for time.Now().Before(deadline) {
			ents, _ := filepath.Glob("/proc/[0-9]*")
			if len(ents) <= 1 {
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
		return
	}
	found, left := KillToken(d.cfg.Token, deadline)
	if len(found) > 0 {
		d.step("cleanup killed %v", found)
	}
	if len(left) > 0 {
		d.failf("processes %v survive SIGKILL", left)
	}
}

func (d *driver) resultPath() string { return filepath.Join(d.cfg.WorkDir, "result") }
func (d *driver) logPath() string    { return filepath.Join(d.cfg.WorkDir, d.cfg.Scenario+".log") }

// cycle: start, record, then dump and restore Iters times, then verify.
func (d *driver) cycle() error {
	root, err := d.startScenario()
	if err != nil {
		return err
	}
	rec, keys, err := Capture(root, nil)
	if err != nil {
		return fmt.Errorf("record the state: %w", err)
	}
	d.rec = rec
	for _, ts := range rec.Tasks {
		for _, f := range ts.Fds {
			if f.Kind == "anon" && f.Cloexec && (f.Target == "anon_inode:[eventpoll]" || f.Target == "anon_inode:[eventfd]") {
				return fmt.Errorf("scenario bug: task %s fd %d is %s, most likely the Go runtime's netpoller", ts.Key, f.Num, f.Target)
			}
		}
	}
	d.step("recorded %d tasks:\n%s", len(rec.Tasks), rec.Summary())

	switch {
	case d.cfg.Flavor == FlavorNoCR:
		return d.verify(root, keys)
	case d.cfg.CRFail:
		return d.crfail(root, keys)
	}
	if err := d.dumpLeaveRunning(root, keys); err != nil {
		return err
	}
	iters := max(d.cfg.Iters, 1)
	for it := 0; it < iters; it++ {
		img := filepath.Join(d.cfg.WorkDir, "img-"+strconv.Itoa(it))
		if err := d.dump(it, img, root, keys); err != nil {
			return err
		}
		if d.cfg.Gap > 0 {
			time.Sleep(d.cfg.Gap)
			d.step("waited %v after the dump", d.cfg.Gap)
		}
		if it == 0 && d.cfg.Mutate != "" {
			if err := Mutate(d.cfg.Mutate, img); err != nil {
				return fmt.Errorf("mutation %s: %w", d.cfg.Mutate, err)
			}
			d.step("images mutated: %s", d.cfg.Mutate)
		}
		// Restore stopped, compare from outside, kill.
		if err := d.restoreStopped(it, img, keys); err != nil {
			return err
		}
		if d.cfg.SkipExec {
			return nil
		}
		// Restore again and let the tasks run.
		root, keys, err = d.restoreExec(it, img, keys)
		if err != nil {
			return err
		}
		if it < iters-1 {
			live, _, err := Capture(root, keys)
			if err != nil {
				return fmt.Errorf("record the restored tree: %w", err)
			}
			d.diff("running tree after restore "+strconv.Itoa(it+1), live)
		}
	}
	return d.verify(root, keys)
}

func (d *driver) diff(what string, got *State) {
	diffs := Compare(d.rec, got)
	if len(diffs) == 0 {
		d.step("%s: same state as recorded", what)
		return
	}
	d.step("%s differs from the recorded state:\n%s\nrestored state:\n%s", what, strings.Join(diffs, "\n"), got.Summary())
	for _, x := range diffs {
		d.res.Diffs = append(d.res.Diffs, what+": "+x)
	}
	d.failf("%s: %s", what, strings.Join(diffs, "; "))
}

func (d *driver) startScenario() (int, error) {
	devnull, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(devnull)
	logfd, err := unix.Open(d.logPath(), unix.O_WRONLY|unix.O_CREAT|unix.O_APPEND|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return 0, err
	}
	defer unix.Close(logfd)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return 0, err
	}
	defer unix.Close(p[0])
	d.env = []string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"ZDTM_DIR=" + d.cfg.WorkDir,
		"ZDTM_RESULT=" + d.resultPath(),
		"ZDTM_READY_FD=3",
		EnvRun + "=" + d.cfg.Token,
		"GODEBUG=containermaxprocs=0,updatemaxprocs=0",
		"ZDTM_IO_TIMEOUT=" + cmp.Or(d.cfg.IOTimeout, 10*time.Second).String(),
	}
	argv := []string{d.cfg.Scenarios, d.cfg.Scenario}
	pid, err := syscall.ForkExec(argv[0], argv, &syscall.ProcAttr{
		Dir: d.cfg.WorkDir, Env: d.env,
		Files: []uintptr{uintptr(devnull), uintptr(logfd), uintptr(logfd), uintptr(p[1])},
		Sys:   &syscall.SysProcAttr{Setsid: true, Cloneflags: d.scenarioClone()},
	})
	unix.Close(p[1])
	if err != nil {
		return 0, fmt.Errorf("start scenario: %w", err)
	}
	msg, err := readAllDeadline(p[0], d.deadline(30*time.Second))
	msg = strings.TrimSpace(msg)
	switch {
	case err != nil:
		return 0, fmt.Errorf("scenario start: %v%s", err, d.logTail())
	case msg == "ready":
		d.step("scenario %s started: root pid %d", d.cfg.Scenario, pid)
		return pid, nil
	case msg == "":
		ws, _ := d.reaper.Wait(pid, time.Now().Add(time.Second))
		return 0, fmt.Errorf("scenario exited during setup (%s)%s", Describe(ws), d.logTail())
	}
	return 0, fmt.Errorf("scenario setup: %s", strings.TrimPrefix(msg, "error: "))
}

// silenceTCP turns TCP repair on for every TCP socket of the tasks, so
// that killing them sends no FIN or reset to their peers. The dups taken
// are closed at once: the tasks still hold the sockets.
func silenceTCP(pids []int) {
	for _, pid := range pids {
		pidfd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue
		}
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, e := range ents {
			n, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, n)); !strings.HasPrefix(l, "socket:") {
				continue
			}
			fd, err := unix.PidfdGetfd(pidfd, n, 0)
			if err != nil {
				continue
			}
			if p, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err == nil && p == unix.IPPROTO_TCP {
				unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR, 1) // fails harmlessly on listeners
			}
			unix.Close(fd)
		}
		unix.Close(pidfd)
	}
}

// scenarioClone gives a TCP scenario run without C/R a network namespace
// of its own: it binds ports.
func (d *driver) scenarioClone() uintptr {
	if d.cfg.TCP && d.cfg.Flavor == FlavorNoCR {
		return unix.CLONE_NEWNET
	}
	return 0
}

func (d *driver) logTail() string {
	b, _ := os.ReadFile(d.logPath())
	s := strings.TrimSpace(string(b))
	if s == "" {
		return ""
	}
	if len(s) > 2000 {
		s = "..." + s[len(s)-2000:]
	}
	return "; scenario output: " + s
}

func readAllDeadline(fd int, deadline time.Time) (string, error) {
	var out []byte
	buf := make([]byte, 4096)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return string(out), errors.New("timed out waiting for the scenario to get ready")
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, int(left/time.Millisecond)+1); err != nil && err != unix.EINTR {
			return string(out), err
		}
		if pfd[0].Revents == 0 {
			continue
		}
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return string(out), err
		}
		if n == 0 {
			return string(out), nil
		}
		out = append(out, buf[:n]...)
	}
}

// checkCgroups fails the run when the dump left its freezer cgroup
// behind (one that was not there before and is still there 2s after the
// dump ended: a concurrent dump with the same pid in another namespace
// finishes well within that).
func (d *driver) checkCgroups(what string, pid int, before []string) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		var left []string
		for _, c := range DumpCgroups(pid) {
			if !slices.Contains(before, c) {
				left = append(left, c)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			d.failf("%s left its freezer cgroup behind: %s", what, strings.Join(left, " "))
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logIssues adds the warning and error lines of an fdrestore log to the
// steps (like zdtm printing the Error/Warn lines of CRIU's logs).
func (d *driver) logIssues(what, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "level=warning") || strings.Contains(l, "level=error") || strings.Contains(l, "level=fatal") {
			if n++; n <= 5 {
				d.step("%s log: %s", what, l)
			}
		}
	}
	if n > 5 {
		d.step("%s log: ... %d more warnings/errors in %s", what, n-5, path)
	}
}

// streamingPeer lists the scenarios whose connections have a peer outside
// the tree that keeps sending: their receive queues grow between dumps,
// so consecutive dumps are not compared.
var streamingPeer = map[string]bool{"tcp-veth": true}

func (d *driver) fdrestore(args ...string) []string {
	out := append([]string{d.cfg.Fdrestore}, args...)
	if d.cfg.TCP && (slices.Contains(args, "dump") || slices.Contains(args, "restore")) {
		out = append(out, "--tcp-established")
		switch {
		case slices.Contains(args, "--leave-stopped"):
			// The stopped copy is not the last restore: the dump's
			// network lock stays for the next one.
			out = append(out, "--network-lock", "skip")
		case d.cfg.NetworkLock != "":
			out = append(out, "--network-lock", d.cfg.NetworkLock)
		}
	}
	return out
}

func (d *driver) runEnv() []string {
	return []string{"PATH=/usr/local/bin:/usr/bin:/bin", EnvRun + "=" + d.cfg.Token}
}

func pidsOf(keys PidKeys) []int {
	var out []int
	for p := range keys {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}

func (d *driver) dump(it int, img string, root int, keys PidKeys) error {
	if err := os.MkdirAll(img, 0o755); err != nil {
		return err
	}
	log := filepath.Join(d.cfg.WorkDir, fmt.Sprintf("dump-%d.log", it))
	before := DumpCgroups(0)
	res, err := d.reaper.Run(d.fdrestore(d.extArgs("-vv", "-o", log, "dump", "-t", strconv.Itoa(root), "-D", img)...), d.runEnv(), d.cfg.WorkDir, d.deadline(60*time.Second))
	if err != nil {
		return err
	}
	d.logIssues(fmt.Sprintf("dump %d", it+1), log)
	d.checkCgroups(fmt.Sprintf("dump %d", it+1), res.Pid, before)
	if !res.OK() {
		return fmt.Errorf("dump %d: %s", it+1, res.Brief())
	}
	d.step("dump %d: %d tasks in %v", it+1, len(keys), res.Took.Round(time.Millisecond))
	if d.cfg.TCP && !streamingPeer[d.cfg.Scenario] && (it > 0 || d.cfg.LeaveRunningError == "") {
		// The restored tree's connections are the dumped ones (a
		// refused dump --leave-running wrote nothing to compare with).
		prev := filepath.Join(d.cfg.WorkDir, "img-leave-running")
		if it > 0 {
			prev = filepath.Join(d.cfg.WorkDir, "img-"+strconv.Itoa(it-1))
		}
		d.compareInet(fmt.Sprintf("dump %d vs the dump before", it+1), prev, img)
	}
	if left := WaitGone(pidsOf(keys), d.deadline(10*time.Second)); len(left) > 0 {
		var desc []string
		for _, p := range left {
			desc = append(desc, fmt.Sprintf("task %s (pid %d, state %s)", keys[p], p, ProcState(p)))
		}
		return fmt.Errorf("dump %d: the tree is still alive: %s", it+1, strings.Join(desc, ", "))
	}
	return nil
}

// dumpLeaveRunning dumps with --leave-running: the tree must go on
// exactly as it was (same fds, same queued data, same cgroups, not
// stopped).
func (d *driver) dumpLeaveRunning(root int, keys PidKeys) error {
	img := filepath.Join(d.cfg.WorkDir, "img-leave-running")
	if err := os.MkdirAll(img, 0o755); err != nil {
		return err
	}
	cgroups := map[int]string{}
	for p := range keys {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(p) + "/cgroup")
		cgroups[p] = string(b)
	}
	log := filepath.Join(d.cfg.WorkDir, "dump-leave-running.log")
	before := DumpCgroups(0)
	res, err := d.reaper.Run(d.fdrestore(d.extArgs("-vv", "-o", log, "dump", "--leave-running", "-t", strconv.Itoa(root), "-D", img)...), d.runEnv(), d.cfg.WorkDir, d.deadline(60*time.Second))
	if err != nil {
		return err
	}
	d.logIssues("dump --leave-running", log)
	d.checkCgroups("dump --leave-running", res.Pid, before)
	if d.cfg.LeaveRunningError != "" {
		errText := strings.TrimSpace(res.Stderr)
		if res.OK() || !res.Status.Exited() {
			return fmt.Errorf("dump --leave-running: %s, want a refusal", res.Brief())
		}
		if want := d.pidPattern(d.cfg.LeaveRunningError, keys); !regexp.MustCompile(want).MatchString(errText) {
			return fmt.Errorf("dump --leave-running failed with %q, want an error matching %q", errText, want)
		}
		d.step("dump --leave-running refused as expected: %s", errText)
	} else if !res.OK() {
		return fmt.Errorf("dump --leave-running: %s", res.Brief())
	}
	for _, p := range pidsOf(keys) {
		if s := ProcState(p); s == "" || s == "T" || s == "t" || s == "Z" || s == "X" {
			return fmt.Errorf("dump --leave-running: task %s (pid %d) is in state %q, want running", keys[p], p, s)
		}
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(p) + "/cgroup")
		if string(b) != cgroups[p] {
			d.failf("dump --leave-running: task %s (pid %d) was in cgroups %q, is in %q", keys[p], p, cgroups[p], b)
		}
	}
	got, _, err := Capture(root, keys)
	if err != nil {
		return fmt.Errorf("dump --leave-running: record the tree: %w", err)
	}
	d.step("dump --leave-running in %v", res.Took.Round(time.Millisecond))
	d.diff("tree after dump --leave-running", got)
	return nil
}

// readPidMap turns fdrestore's --pid-map into new pid -> task key.
func readPidMap(path string, keys PidKeys) (PidKeys, int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	var m map[string]int
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, 0, fmt.Errorf("pid map: %w", err)
	}
	out := PidKeys{}
	root := 0
	for old, nw := range m {
		o, _ := strconv.Atoi(old)
		k, ok := keys[o]
		if !ok {
			return nil, 0, fmt.Errorf("pid map: image pid %d was not a task of the dumped tree", o)
		}
		out[nw] = k
		if k == "0" {
			root = nw
		}
	}
	if len(out) != len(keys) {
		return nil, 0, fmt.Errorf("pid map: %d tasks restored, %d dumped", len(out), len(keys))
	}
	return out, root, nil
}

func (d *driver) restoreStopped(it int, img string, keys PidKeys) error {
	mapFile := filepath.Join(d.cfg.WorkDir, fmt.Sprintf("pids-%d-stopped.json", it))
	log := filepath.Join(d.cfg.WorkDir, fmt.Sprintf("restore-%d-stopped.log", it))
	res, err := d.reaper.Run(d.fdrestore(d.extArgs("-vv", "-o", log, "restore", "-D", img, "--leave-stopped", "-d", "--pid-map", mapFile)...), d.runEnv(), d.cfg.WorkDir, d.deadline(60*time.Second))
	if err != nil {
		return err
	}
	d.logIssues(fmt.Sprintf("restore %d (--leave-stopped)", it+1), log)
	if !res.OK() {
		return fmt.Errorf("restore %d (--leave-stopped): %s", it+1, res.Brief())
	}
	nkeys, root, err := readPidMap(mapFile, keys)
	if err != nil {
		return fmt.Errorf("restore %d (--leave-stopped): %w", it+1, err)
	}
	pids := pidsOf(nkeys)
	defer func() {
		if d.cfg.TCP {
			// This copy of the tree goes away without a word to the
			// peers of its connections, for the next restore.
			silenceTCP(pids)
		}
		for _, p := range pids {
			unix.Kill(p, unix.SIGKILL)
		}
		WaitGone(pids, d.deadline(10*time.Second))
	}()
	for _, p := range pids {
		if s := ProcState(p); s != "T" && s != "t" {
			return fmt.Errorf("restore %d (--leave-stopped): task %s (pid %d) is in state %q, not stopped", it+1, nkeys[p], p, s)
		}
	}
	got, _, err := Capture(root, nkeys)
	if err != nil {
		return fmt.Errorf("restore %d (--leave-stopped): record the restored tree: %w", it+1, err)
	}
	d.step("restore %d (--leave-stopped) in %v", it+1, res.Took.Round(time.Millisecond))
	d.diff(fmt.Sprintf("restore %d (stopped)", it+1), got)
	return nil
}

func (d *driver) restoreExec(it int, img string, keys PidKeys) (int, PidKeys, error) {
	mapFile := filepath.Join(d.cfg.WorkDir, fmt.Sprintf("pids-%d.json", it))
	log := filepath.Join(d.cfg.WorkDir, fmt.Sprintf("restore-%d.log", it))
	res, err := d.reaper.Run(d.fdrestore(d.extArgs("-vv", "-o", log, "restore", "-D", img, "--exec-recorded", "-d", "--pid-map", mapFile)...), d.runEnv(), d.cfg.WorkDir, d.deadline(60*time.Second))
	if err != nil {
		return 0, nil, err
	}
	d.logIssues(fmt.Sprintf("restore %d (--exec-recorded)", it+1), log)
	if !res.OK() {
		return 0, nil, fmt.Errorf("restore %d (--exec-recorded): %s", it+1, res.Brief())
	}
	nkeys, root, err := readPidMap(mapFile, keys)
	if err != nil {
		return 0, nil, fmt.Errorf("restore %d (--exec-recorded): %w", it+1, err)
	}
	if err := d.waitReady(nkeys); err != nil {
		return 0, nil, fmt.Errorf("restore %d (--exec-recorded): %w", it+1, err)
	}
	d.step("restore %d (--exec-recorded) in %v; every task is waiting", it+1, res.Took.Round(time.Millisecond))
	return root, nkeys, nil
}

// waitReady waits until every task has set its comm to "zdtm-wait".
func (d *driver) waitReady(keys PidKeys) error {
	deadline := d.deadline(20 * time.Second)
	for {
		var notReady []string
		for _, p := range pidsOf(keys) {
			if c := Comm(p); c != "zdtm-wait" {
				notReady = append(notReady, fmt.Sprintf("task %s (pid %d, comm %q, state %q)", keys[p], p, c, ProcState(p)))
			}
		}
		if len(notReady) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("restored tasks did not get back to waiting: %s%s", strings.Join(notReady, ", "), d.logTail())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// verify has the tree check itself: SIGUSR2 to the root, which passes it
// down; every task appends its verdict; the root exits with the overall
// one.
func (d *driver) verify(root int, keys PidKeys) error {
	os.Remove(d.resultPath())
	if err := unix.Kill(root, unix.SIGUSR2); err != nil {
		return fmt.Errorf("signal the root: %w", err)
	}
	ws, err := d.reaper.Wait(root, d.deadline(45*time.Second))
	if err != nil {
		return fmt.Errorf("verification: root task did not finish: %v", err)
	}
	b, _ := os.ReadFile(d.resultPath())
	var bad []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l == "" {
			continue
		}
		d.res.Verdicts = append(d.res.Verdicts, l)
		if !strings.HasSuffix(l, ": PASS") {
			bad = append(bad, l)
		}
	}
	d.step("verification: root %s, %d verdicts", Describe(ws), len(d.res.Verdicts))
	if left := WaitGone(pidsOf(keys), d.deadline(10*time.Second)); len(left) > 0 {
		d.failf("tasks still alive after verification: %v", left)
	}
	switch {
	case len(bad) > 0:
		d.failf("verification: %s", strings.Join(bad, "; "))
	case !ws.Exited() || ws.ExitStatus() != 0:
		d.failf("verification: root task %s%s", Describe(ws), d.logTail())
	case len(d.res.Verdicts) != len(keys):
		d.failf("verification: %d verdicts for %d tasks", len(d.res.Verdicts), len(keys))
	}
	return nil
}

// pidPattern replaces "{pid:ROLE}" in an error pattern by the pid of the
// task running ROLE.
func (d *driver) pidPattern(want string, keys PidKeys) string {
	for p, k := range keys {
		role := "root"
		if k != "0" {
			if f := strings.Fields(cmdline(p)); len(f) > 1 {
				role = f[len(f)-1]
			}
		}
		want = strings.ReplaceAll(want, "{pid:"+role+"}", strconv.Itoa(p))
	}
	return want
}

// crfail: the dump must fail with the expected error, and the tree must
// go on running unharmed.
func (d *driver) crfail(root int, keys PidKeys) error {
	img := filepath.Join(d.cfg.WorkDir, "img-0")
	os.MkdirAll(img, 0o755)
	before := DumpCgroups(0)
	res, err := d.reaper.Run(d.fdrestore(d.extArgs("dump", "-t", strconv.Itoa(root), "-D", img)...), d.runEnv(), d.cfg.WorkDir, d.deadline(60*time.Second))
	if err != nil {
		return err
	}
	d.checkCgroups("refused dump", res.Pid, before)
	d.res.DumpErr = strings.TrimSpace(res.Stderr)
	if res.OK() {
		return fmt.Errorf("unexpected success: the dump of a tree it must refuse exited 0")
	}
	if !res.Status.Exited() {
		return fmt.Errorf("dump failed, but by %s (want an error exit)", Describe(res.Status))
	}
	want := d.pidPattern(d.cfg.CRFailError, keys)
	if ok, _ := regexp.MatchString(want, d.res.DumpErr); !ok {
		return fmt.Errorf("dump failed with %q, want an error matching %q", d.res.DumpErr, want)
	}
	d.step("dump refused as expected: %s", d.res.DumpErr)
	for _, p := range pidsOf(keys) {
		if s := ProcState(p); s == "" || s == "T" || s == "t" || s == "Z" {
			return fmt.Errorf("after the refused dump task %s (pid %d) is in state %q, want running", keys[p], p, s)
		}
	}
	if got, _, err := Capture(root, keys); err != nil {
		return fmt.Errorf("record the tree after the refused dump: %w", err)
	} else {
		d.diff("after the refused dump", got)
	}
	return d.verify(root, keys)
}
