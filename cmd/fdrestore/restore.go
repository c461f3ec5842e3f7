package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/fdrestore/fdrestore/files/tty"
	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/restore"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

func (a *app) planCmd() *cobra.Command {
	var dir string
	var pf planFlags
	cmd := &cobra.Command{
		Use:   "plan -D DIR",
		Short: "Print what a restore of DIR would do, without creating a process",
		Long: `Load and validate the image directory, then print the restore plan: the
tasks, the steps that build the process tree, every object with the task that
creates it and the tasks it is sent to, the stage-graph edges, warnings, and
what cannot be restored. The exit status is non-zero when the images cannot
be restored.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return usagef("plan needs -D DIR")
			}
			po, err := pf.options(dir)
			if err != nil {
				return err
			}
			po.Terminal = tty.CurrentTTY()
			if pf.ext.consoleSocket != "" {
				po.Console = "(a new console at restore)"
			}
			p, err := loadPlan(dir, po)
			if err != nil {
				return err
			}
			p.Print(cmd.OutOrStdout())
			return p.Err()
		},
	}
	cmd.Flags().StringVarP(&dir, "images-dir", "D", "", "image `DIR`ectory")
	pf.add(cmd, false, "plan the restore of a shell job into the caller's session and terminal")
	return cmd
}

// planFlags are the flags plan and restore share: those that make the
// PlanOptions.
type planFlags struct {
	skipFileCheck bool
	shellJob      bool
	extUnixSk     bool
	ext           externalFlags
	tcp           tcpFlags
}

func (f *planFlags) add(cmd *cobra.Command, restoring bool, shellJobHelp string) {
	fl := cmd.Flags()
	fl.BoolVar(&f.skipFileCheck, "skip-file-check", false, "do not check the size and mode of regular files")
	fl.BoolVar(&f.shellJob, "shell-job", false, shellJobHelp)
	fl.BoolVar(&f.extUnixSk, "ext-unix-sk", false, "connect unix sockets whose peer is outside the dumped tree to the peer's recorded name")
	f.ext.add(fl, restoring)
	f.tcp.add(cmd)
}

// options returns the PlanOptions of the flags, but Terminal and Console,
// which plan and restore set differently.
func (f *planFlags) options(dir string) (restore.PlanOptions, error) {
	po := restore.PlanOptions{SkipFileCheck: f.skipFileCheck, ShellJob: f.shellJob, ExtUnixSk: f.extUnixSk}
	f.tcp.set(&po)
	var err error
	if po.Inherit, err = f.ext.inherits(dir); err != nil {
		return po, err
	}
	return po, f.ext.extUnixPolicies(&po)
}

// tcpFlags are --tcp-established and --tcp-close.
type tcpFlags struct{ established, close bool }

func (f *tcpFlags) add(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.established, "tcp-established", false, "restore established TCP connections (TCP repair)")
	cmd.Flags().BoolVar(&f.close, "tcp-close", false, "restore established TCP connections as closed sockets")
}

func (f *tcpFlags) set(o *restore.PlanOptions) { o.TCPEstablished, o.TCPClose = f.established, f.close }

func loadPlan(dir string, opts restore.PlanOptions) (*restore.Plan, error) {
	set, err := images.Load(dir)
	if err != nil {
		return nil, err
	}
	return restore.NewPlan(set, opts)
}

type restoreFlags struct {
	dir          string
	leaveStopped bool
	exec         string
	execRecorded bool
	detach       bool
	pidfile      string
	pidMap       string
	timeout      time.Duration
	plan         planFlags
	networkLock  string
}

func (a *app) restoreCmd() *cobra.Command {
	var f restoreFlags
	cmd := &cobra.Command{
		Use:   "restore -D DIR (--leave-stopped | --exec CMD | --exec-recorded) [-d]",
		Short: "Restore the process tree and fds from an image directory",
		Long: `Restore the process tree in DIR: every task is recreated as a process with
its session and process group, and gets exactly the fds of its images. Once
the whole tree is restored, every task stops itself (--leave-stopped) or runs
a command (--exec CMD, through /bin/sh -c; {pid} is the task's pid in the
images), or runs again what it ran at dump time (--exec-recorded: the argv,
environment and cwd that fdrestore dump recorded, with FDRESTORE_RESTORED=1
added to the environment). Without -d, fdrestore then waits for the root task
and exits with its status. On any failure every process it created is killed.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runRestore(cmd, &f) },
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.dir, "images-dir", "D", "", "image `DIR`ectory")
	fl.BoolVar(&f.leaveStopped, "leave-stopped", false, "leave every task stopped (SIGSTOP) once the tree is restored")
	fl.BoolVar(&f.execRecorded, "exec-recorded", false, "every task execs the argv, environment (plus FDRESTORE_RESTORED=1) and cwd recorded by fdrestore dump")
	fl.StringVar(&f.exec, "exec", "", "every task runs `CMD` (via /bin/sh -c) once the tree is restored; {pid} is its image pid")
	fl.BoolVarP(&f.detach, "restore-detached", "d", false, "return once the tree is restored instead of waiting for the root task")
	fl.StringVar(&f.pidfile, "pidfile", "", "write the root task's new pid to `FILE`")
	fl.StringVar(&f.pidMap, "pid-map", "", `write {"<image pid>": <new pid>, ...} as JSON to `+"`FILE`")
	fl.DurationVar(&f.timeout, "timeout", 60*time.Second, "give up (and kill the tree) if the restore takes longer")
	f.plan.add(cmd, true, "restore a tree dumped with --shell-job as a job of the caller's shell: its session and its terminal (stdin, stdout or stderr) become the caller's, and its root joins the caller's process group")
	fl.StringVar(&f.networkLock, "network-lock", "", "`MODE` of the network lock the dump set on its TCP connections: nftables or iptables (remove the recorded lock once the tree is restored; the default), or skip (leave it in place)")
	return cmd
}

func (a *app) runRestore(cmd *cobra.Command, f *restoreFlags) error {
	if f.dir == "" {
		return usagef("restore needs -D DIR")
	}
	switch f.networkLock {
	case "", "nftables", "iptables", "skip":
	default:
		return usagef("--network-lock %q: want nftables, iptables or skip", f.networkLock)
	}
	opts := restore.Options{Timeout: f.timeout, Log: logrus.StandardLogger(), NetworkLock: f.networkLock}
	ends := 0
	for _, on := range []bool{f.leaveStopped, f.exec != "", f.execRecorded} {
		if on {
			ends++
		}
	}
	switch {
	case ends > 1:
		return usagef("--leave-stopped, --exec and --exec-recorded exclude each other")
	case f.execRecorded:
		opts.End = restore.EndExecRecorded
	case f.leaveStopped:
		opts.End = restore.EndStop
	case f.exec != "":
		opts.End, opts.Exec = restore.EndExec, f.exec
	default:
		return usagef("say what the restored tasks do: --leave-stopped, --exec CMD or --exec-recorded")
	}
	if f.leaveStopped && !f.detach {
		return usagef("--leave-stopped needs -d: stopped tasks never exit")
	}
	var term string
	if f.plan.shellJob {
		if term = tty.CurrentTTY(); term == "" {
			return usagef("--shell-job needs a terminal on stdin, stdout or stderr")
		}
	}
	po, err := f.plan.options(f.dir)
	if err != nil {
		return err
	}
	po.Terminal = term
	opts.Hooks = f.plan.ext.hooks()
	cfg := restore.Config{ImagesDir: f.dir, Plan: po, Run: opts}
	if sock := f.plan.ext.consoleSocket; sock != "" {
		cfg.OnConsole = func(master *os.File) error {
			defer master.Close()
			return restore.SendConsole(sock, master)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := restore.Restore(ctx, cfg)
	if err != nil {
		return err
	}
	if res.PidFd != nil {
		defer res.PidFd.Close()
	}
	logrus.WithFields(logrus.Fields{"root": res.RootPid, "took": res.Took}).Info("restored")
	if f.pidfile != "" {
		if err := os.WriteFile(f.pidfile, []byte(strconv.Itoa(res.RootPid)+"\n"), 0o644); err != nil {
			return fmt.Errorf("pidfile: %w", err)
		}
	}
	if f.pidMap != "" {
		m := map[string]int{}
		for k, v := range res.PidMap {
			m[strconv.Itoa(int(k))] = v
		}
		b, _ := json.Marshal(m)
		if err := os.WriteFile(f.pidMap, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("pid map: %w", err)
		}
	}
	if f.detach {
		return nil
	}
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(res.RootPid, &ws, 0, nil)
		if err != unix.EINTR {
			if err != nil {
				return fmt.Errorf("wait for root task %d: %w", res.RootPid, err)
			}
			break
		}
	}
	switch {
	case ws.Exited() && ws.ExitStatus() == 0:
		return nil
	case ws.Exited():
		return exitCodeError{code: ws.ExitStatus(), msg: fmt.Sprintf("root task exited with status %d", ws.ExitStatus())}
	default:
		return exitCodeError{code: 128 + int(ws.Signal()), msg: fmt.Sprintf("root task killed by %v", ws.Signal())}
	}
}

// exitCodeError makes fdrestore exit with the root task's status.
type exitCodeError struct {
	code int
	msg  string
}

func (e exitCodeError) Error() string { return e.msg }
