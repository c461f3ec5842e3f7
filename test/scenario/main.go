// Command scenario holds the programs of the zdtm-style suite (see
// ../doc.go). One binary, many scenarios: `scenario NAME` starts the root
// task of scenario NAME; the root starts its children by re-executing the
// binary as `scenario NAME ROLE`.
//
// Life cycle of every task:
//
//  1. First start: build the state with raw syscalls at fixed fd numbers,
//     report "ok" (children, on the fd in ZDTM_SYNC_FD) or "ready" (the
//     root, on the fd in ZDTM_READY_FD, once every child is ready), close
//     that fd, set the task's comm to "zdtm-wait" and wait for SIGUSR2.
//  2. After `fdrestore restore --exec-recorded` the same argv and
//     environment come back with FDRESTORE_RESTORED=1 and the restored fds:
//     the task checks its fd table against what its role declares, sets
//     comm "zdtm-wait" and waits for SIGUSR2 again (the runner may dump it
//     once more).
//  3. On SIGUSR2 a task passes SIGUSR2 on to its children, verifies its own
//     fds (reads queued data, writes through pipes and checks the other
//     end, checks flags, offsets, owners, ...), appends "NAME/ROLE: PASS"
//     or "NAME/ROLE: FAIL: reasons" to the file named by ZDTM_RESULT, and
//     exits 0 or 1. The root also waits for its children and fails on any
//     child that did not exit 0.
//
// Rules that keep the checked state exact: every fd of the state is
// created with raw syscalls and placed at a fixed number; the program's
// own fds (sync/ready pipes) live at the top of the fd table and are
// closed before the task reports; GODEBUG turns off the runtime's cgroup
// files (which it would keep open at low numbers); no task has a
// non-blocking fd at 0-2 (package os would then start the netpoller, whose
// epoll and eventfd take the lowest free numbers); nothing uses os.File,
// os/exec or net for fds of the state.
package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
)

func init() {
	// No garbage collection: the scavenger's timer would start the
	// netpoller (see sleep).
	debug.SetGCPercent(-1)
	// The main goroutine stays on the main thread, so that PR_SET_NAME
	// names the process (/proc/PID/comm).
	runtime.LockOSThread()
}

const runtimeDebug = "containermaxprocs=0,updatemaxprocs=0"

func main() {
	ensureGodebug()
	args := os.Args[1:]
	if len(args) == 1 && args[0] == "--list" {
		names := make([]string, 0, len(registry))
		for n := range registry {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Println(n)
		}
		return
	}
	if len(args) < 1 || len(args) > 2 {
		fmt.Fprintln(os.Stderr, "usage: scenario NAME [ROLE] | scenario --list")
		os.Exit(2)
	}
	sc, ok := registry[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "scenario: unknown scenario %q\n", args[0])
		os.Exit(2)
	}
	role := "root"
	if len(args) == 2 {
		role = args[1]
	}
	os.Exit(run(sc, role))
}

// ensureGodebug re-executes the program with the runtime's cgroup
// GOMAXPROCS logic off: it keeps cgroup files open at the lowest free fd
// numbers, which would become part of the checkpointed state.
func ensureGodebug() {
	cur := os.Getenv("GODEBUG")
	if strings.Contains(cur, "containermaxprocs=0") && strings.Contains(cur, "updatemaxprocs=0") {
		return
	}
	v := runtimeDebug
	if cur != "" {
		v = cur + "," + runtimeDebug
	}
	env := append(os.Environ(), "GODEBUG="+v)
	exe, err := os.Executable()
	if err != nil {
		exe = "/proc/self/exe"
	}
	err = execve(exe, os.Args, env)
	fmt.Fprintf(os.Stderr, "scenario: re-exec with GODEBUG: %v\n", err)
	os.Exit(2)
}

// Scenario is one test program: its roles by name ("root" first).
type Scenario struct {
	Name  string
	Roles map[string]*Role
}

// Role is what one task of a scenario does.
type Role struct {
	// Fds returns the fd numbers the task holds once its state is built
	// (and, so, after a restore), without those with FD_CLOEXEC, which
	// exec closes (see Cloexec). Required.
	Fds func(t *T) []int
	// Setup builds the task's state on the first start; the root also
	// starts its children here (T.Spawn).
	Setup func(t *T) error
	// AfterExec runs in a restored task right after the fd table check,
	// for state the exec itself changed.
	AfterExec func(t *T) error
	// Cloexec are the fds with FD_CLOEXEC. --exec-recorded passes them
	// across its exec with the flag cleared and lists them in
	// FDRESTORE_CLOEXEC_FDS; the restored task checks the list and sets
	// the flag again.
	Cloexec []int
	// Verify checks the state after SIGUSR2 (T.Fail records problems).
	Verify func(t *T)
	// BeforeChildren runs after SIGUSR2, while the children are still
	// waiting (before they get their SIGUSR2): checks that need them
	// alive and unchanged.
	BeforeChildren func(t *T)
	// Children are the roles of the task's children, for the root's
	// check that the restored tree has them.
	Children func(t *T) []string
	// ExitAfterSetup: the task exits once it has reported (a launcher
	// of processes that live outside the tree).
	ExitAfterSetup bool
}

var registry = map[string]*Scenario{}

func register(name string, roles map[string]*Role) {
	if _, dup := registry[name]; dup {
		panic("scenario registered twice: " + name)
	}
	registry[name] = &Scenario{Name: name, Roles: roles}
}

// itoa is strconv.Itoa, short.
func itoa(i int) string { return strconv.Itoa(i) }
