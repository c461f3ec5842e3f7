package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/fdrestore/fdrestore/restore"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"
)

// externalFlags are the restore and plan flags for external resources.
type externalFlags struct {
	inheritFd     []string
	inheritStdio  bool
	consoleSocket string
	extUnix       string
	extUnixSocket []string
	actionScripts []string
}

func (e *externalFlags) add(fl *pflag.FlagSet, restoring bool) {
	if restoring {
		fl.StringArrayVar(&e.actionScripts, "action-script", nil, "run `SCRIPT` (via /bin/sh -c) at each hook of the restore, as CRIU does: CRTOOLS_SCRIPT_ACTION is pre-restore, setup-namespaces, post-restore, pre-resume or post-resume, CRTOOLS_INIT_PID the root's pid once it exists; a failing script aborts the restore; repeatable")
	}
	fl.StringArrayVar(&e.inheritFd, "inherit-fd", nil, "fdrestore's fd N replaces what KEY names in the images (`fd[N]:KEY`): pipe:[INO], socket:[INO], tty[RDEV:DEV], file[MNT:INO], a path, fd[M] (what the root task had at fd M) or fd[PID:M]; repeatable. A key that matches nothing is an error that lists the images' keys")
	fl.BoolVar(&e.inheritStdio, "inherit-stdio", false, "replace the pipes and sockets the root task had as fds 0-2 at dump (descriptors.json of the images) with fdrestore's own fds 0-2, as runc does")
	fl.StringVar(&e.extUnix, "ext-unix", "", "`POLICY` for unix sockets whose peer is outside the tree: reconnect (to the peer's recorded name, as --ext-unix-sk), inherit (an --inherit-fd for socket:[INO] must be given) or disconnect (no peer: EOF, or unconnected)")
	fl.StringArrayVar(&e.extUnixSocket, "ext-unix-socket", nil, "the policy of one socket with an outside peer (`socket:[INO]=POLICY`), before --ext-unix; repeatable")
	fl.StringVar(&e.consoleSocket, "console-socket", "", "give the tree a new console in place of the terminal it had from outside, and send the console's master to the unix socket at `PATH` (runc's --console-socket protocol)")
}

// extUnixPolicies sets the plan's external unix socket policies.
func (e *externalFlags) extUnixPolicies(po *restore.PlanOptions) error {
	if e.extUnix != "" {
		pol, err := restore.ParseExtUnixPolicy(e.extUnix)
		if err != nil {
			return usagef("--ext-unix: %v", err)
		}
		po.ExtUnix = pol
	}
	for _, s := range e.extUnixSocket {
		key, name, ok := strings.Cut(s, "=")
		ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(key, "socket:["), "]"), 10, 32)
		if !ok || err != nil || !strings.HasPrefix(key, "socket:[") {
			return usagef("--ext-unix-socket %q: want socket:[INO]=POLICY", s)
		}
		pol, err := restore.ParseExtUnixPolicy(name)
		if err != nil {
			return usagef("--ext-unix-socket %q: %v", s, err)
		}
		if po.ExtUnixSockets == nil {
			po.ExtUnixSockets = map[uint32]restore.ExtUnixPolicy{}
		}
		po.ExtUnixSockets[uint32(ino)] = pol
	}
	return nil
}

// parseInheritFd parses "fd[N]:KEY".
func parseInheritFd(s string) (int, string, error) {
	rest, ok := strings.CutPrefix(s, "fd[")
	i := strings.Index(rest, "]:")
	if !ok || i <= 0 {
		return 0, "", usagef("--inherit-fd %q: want fd[N]:KEY", s)
	}
	n, err := strconv.Atoi(rest[:i])
	if err != nil || n < 0 {
		return 0, "", usagef("--inherit-fd %q: fd number %q", s, rest[:i])
	}
	key := rest[i+2:]
	if key == "" {
		return 0, "", usagef("--inherit-fd %q: no key", s)
	}
	return n, key, nil
}

// inherits builds the plan's inherited fds from the flags.
func (e *externalFlags) inherits(dir string) ([]restore.Inherit, error) {
	var out []restore.Inherit
	for _, s := range e.inheritFd {
		n, key, err := parseInheritFd(s)
		if err != nil {
			return nil, err
		}
		if _, err := unix.FcntlInt(uintptr(n), unix.F_GETFD, 0); err != nil {
			return nil, usagef("--inherit-fd %q: fdrestore has no fd %d: %v", s, n, err)
		}
		out = append(out, restore.Inherit{Key: key, File: os.NewFile(uintptr(n), fmt.Sprintf("fd %d", n))})
	}
	if e.inheritStdio {
		descs, err := restore.ReadDescriptors(dir)
		if err != nil {
			return nil, err
		}
		out = append(out, restore.InheritStdio(descs, os.Stdin, os.Stdout, os.Stderr)...)
	}
	return out, nil
}

// hooks runs the --action-script scripts at every hook of the restore.
func (e *externalFlags) hooks() restore.Hooks {
	if len(e.actionScripts) == 0 {
		return restore.Hooks{}
	}
	run := func(action string) func(context.Context, *restore.Result) error {
		return func(ctx context.Context, res *restore.Result) error {
			for _, script := range e.actionScripts {
				cmd := exec.CommandContext(ctx, "/bin/sh", "-c", script)
				cmd.Env = append(os.Environ(), "CRTOOLS_SCRIPT_ACTION="+action)
				if res != nil && res.RootPid > 0 {
					cmd.Env = append(cmd.Env, "CRTOOLS_INIT_PID="+strconv.Itoa(res.RootPid))
				}
				cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
				if err := cmd.Run(); err != nil {
					return fmt.Errorf("action script %q: %w", script, err)
				}
			}
			return nil
		}
	}
	return restore.Hooks{PreRestore: run("pre-restore"), SetupNamespaces: run("setup-namespaces"),
		PostRestore: run("post-restore"), PreResume: run("pre-resume"), PostResume: run("post-resume")}
}
