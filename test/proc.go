package zdtm

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Reaper collects the exit status of every child of the process
// (wait4(-1)), including orphans that a subreaper or a namespace's init
// inherits. Nothing else in the process may wait for children.
type Reaper struct {
	mu     sync.Mutex
	status map[int]unix.WaitStatus
	wake   chan struct{}
}

// StartReaper starts the reaping goroutine.
func StartReaper() *Reaper {
	r := &Reaper{status: map[int]unix.WaitStatus{}, wake: make(chan struct{})}
	go r.loop()
	return r
}

func (r *Reaper) loop() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		switch {
		case err == unix.ECHILD:
			time.Sleep(2 * time.Millisecond)
		case err != nil:
		case pid > 0:
			r.mu.Lock()
			r.status[pid] = ws
			close(r.wake)
			r.wake = make(chan struct{})
			r.mu.Unlock()
		}
	}
}

// Wait returns the exit status of child pid, waiting until deadline.
func (r *Reaper) Wait(pid int, deadline time.Time) (unix.WaitStatus, error) {
	for {
		r.mu.Lock()
		ws, ok := r.status[pid]
		wake := r.wake
		r.mu.Unlock()
		if ok {
			return ws, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return 0, fmt.Errorf("process %d still running after the deadline", pid)
		}
		select {
		case <-wake:
		case <-time.After(min(left, 50*time.Millisecond)):
		}
	}
}

// Describe renders a wait status.
func Describe(ws unix.WaitStatus) string {
	switch {
	case ws.Exited():
		return "exit status " + strconv.Itoa(ws.ExitStatus())
	case ws.Signaled():
		return "killed by " + ws.Signal().String()
	}
	return fmt.Sprintf("status %#x", int(ws))
}

// CmdResult is the outcome of a command.
type CmdResult struct {
	Pid      int
	Status   unix.WaitStatus
	Stdout   string
	Stderr   string
	TimedOut bool
	Took     time.Duration
}

// OK reports whether the command exited 0.
func (c *CmdResult) OK() bool { return !c.TimedOut && c.Status.Exited() && c.Status.ExitStatus() == 0 }

// Brief describes how the command ended and its first stderr line.
func (c *CmdResult) Brief() string {
	how := Describe(c.Status)
	if c.TimedOut {
		how = "timed out"
	}
	msg := strings.TrimSpace(c.Stderr)
	if msg == "" {
		return how
	}
	lines := strings.Split(msg, "\n")
	// The error line of fdrestore is its last "fdrestore: " line.
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "fdrestore: ") {
			return how + ": " + lines[i]
		}
	}
	return how + ": " + lines[len(lines)-1]
}

// Run starts argv with env and collects its output, killing it at the
// deadline.
func (r *Reaper) Run(argv, env []string, dir string, deadline time.Time) (*CmdResult, error) {
	start := time.Now()
	devnull, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(devnull)
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); io.Copy(&stdout, outR) }()
	go func() { defer wg.Done(); io.Copy(&stderr, errR) }()
	attr := &syscall.ProcAttr{Dir: dir, Env: env, Files: []uintptr{uintptr(devnull), outW.Fd(), errW.Fd()}}
	pid, err := syscall.ForkExec(argv[0], argv, attr)
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	res := &CmdResult{Pid: pid}
	ws, err := r.Wait(pid, deadline)
	if err != nil {
		// SIGTERM first: fdrestore then undoes what it did (thaws and
		// removes its freezer cgroup, kills its helpers).
		res.TimedOut = true
		unix.Kill(pid, unix.SIGTERM)
		if ws, err = r.Wait(pid, time.Now().Add(3*time.Second)); err != nil {
			unix.Kill(pid, unix.SIGKILL)
			ws, _ = r.Wait(pid, time.Now().Add(5*time.Second))
		}
	}
	res.Status = ws
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second): // a descendant kept the pipes
	}
	outR.Close()
	errR.Close()
	<-done
	res.Stdout, res.Stderr = stdout.String(), stderr.String()
	res.Took = time.Since(start)
	return res, nil
}

// Exists reports whether pid is in /proc (a zombie included).
func Exists(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err == nil
}

// WaitGone waits until none of pids exists.
func WaitGone(pids []int, deadline time.Time) []int {
	for {
		var left []int
		for _, p := range pids {
			if Exists(p) {
				left = append(left, p)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TokenPids lists the processes (other than the caller) whose
// environment holds ZDTM_RUN=token.
func TokenPids(token string) []int {
	want := []byte(EnvRun + "=" + token + "\x00")
	me := os.Getpid()
	var out []int
	ents, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, e := range ents {
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(e)))
		if err != nil || pid == me {
			continue
		}
		b, err := os.ReadFile(e)
		if err != nil {
			continue
		}
		if bytes.Contains(append(b, 0), want) {
			out = append(out, pid)
		}
	}
	return out
}

// KillToken SIGKILLs every process marked with token until none is left
// or deadline passes; it returns those it found at first.
func KillToken(token string, deadline time.Time) (found []int, left []int) {
	seen := map[int]bool{}
	for {
		pids := TokenPids(token)
		for _, p := range pids {
			if !seen[p] {
				seen[p] = true
				found = append(found, p)
			}
			unix.Kill(p, unix.SIGKILL)
			var ws unix.WaitStatus
			unix.Wait4(p, &ws, unix.WNOHANG, nil) // if it is our child
		}
		if len(pids) == 0 || time.Now().After(deadline) {
			return found, pids
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Comm returns /proc/PID/comm.
func Comm(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return strings.TrimSpace(string(b))
}

// Cgroup2Mount returns where the cgroup2 filesystem is mounted ("" when
// it is not).
func Cgroup2Mount() string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		if !ok {
			continue
		}
		if f := strings.Fields(post); len(f) > 0 && f[0] == "cgroup2" {
			if g := strings.Fields(pre); len(g) > 4 {
				return g[4]
			}
		}
	}
	return ""
}

// DumpCgroups lists the freezer cgroups of `fdrestore dump` processes
// with pid (all of them for pid 0).
func DumpCgroups(pid int) []string {
	mnt := Cgroup2Mount()
	if mnt == "" {
		return nil
	}
	pat := "fdrestore-dump-*"
	if pid > 0 {
		pat = "fdrestore-dump-" + strconv.Itoa(pid) + "-*"
	}
	m, _ := filepath.Glob(filepath.Join(mnt, pat))
	return m
}
