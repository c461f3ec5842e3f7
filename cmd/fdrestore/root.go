package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the command ran and failed
	exitUsage = 2 // bad command line
)

// globalOptions are the flags every command accepts, like CRIU's.
type globalOptions struct {
	verbosity int
	logFile   string
}

// app is one invocation of the command tree: its options, streams and
// whether a command got as far as running (to tell usage errors from
// failures).
type app struct {
	opts    globalOptions
	stdout  io.Writer
	stderr  io.Writer
	started bool
	logOut  io.Closer
}

// run executes the fdrestore command line args and returns the exit code.
// Errors are printed to stderr as "fdrestore: <msg>".
func run(args []string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr}
	root := a.rootCmd()
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	if a.logOut != nil {
		logrus.SetOutput(stderr) // nothing may log into the closed file
		a.logOut.Close()
	}
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "fdrestore: %v\n", err)
	var ec exitCodeError
	if errors.As(err, &ec) {
		return ec.code
	}
	var ue usageError
	if !a.started || errors.As(err, &ue) {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		return exitUsage
	}
	return exitError
}

// usageError marks an error in the command line found by a command itself.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "fdrestore",
		Short: "Checkpoint and restore the fd state of Linux process trees (CRIU image format)",
		Long: `fdrestore checkpoints and restores the file-descriptor state of a Linux
process tree: the tree itself, and every task's fds (files, pipes, FIFOs,
unix and TCP sockets, ptys, epoll, eventfd, signalfd, timerfd), in CRIU's
image format.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		// Runs after flags and arguments were accepted: from here on an
		// error is a failure, not a usage error.
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			a.started = true
			closer, err := setupLogging(a.opts.verbosity, a.opts.logFile, a.stderr)
			if err != nil {
				return err
			}
			a.logOut = closer
			logrus.WithField("command", cmd.CommandPath()).Debug("starting")
			return nil
		},
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.CountVarP(&a.opts.verbosity, "verbose", "v", "more log output: -v info, -vv debug, -vvv trace (default: warnings)")
	pf.StringVarP(&a.opts.logFile, "log-file", "o", "", "write logs to `FILE` instead of stderr")
	root.AddCommand(a.showCmd(), a.planCmd(), a.restoreCmd(), a.dumpCmd(), a.checkCmd(), a.versionCmd())
	return root
}

// logLevel maps the -v count to a logrus level: warnings by default, then
// info, debug and trace.
func logLevel(verbosity int) logrus.Level {
	switch {
	case verbosity <= 0:
		return logrus.WarnLevel
	case verbosity == 1:
		return logrus.InfoLevel
	case verbosity == 2:
		return logrus.DebugLevel
	}
	return logrus.TraceLevel
}

// setupLogging configures the standard logrus logger, which every package
// of fdrestore logs through: the level from the -v count, and the output:
// the file at path (created or truncated, like CRIU's -o) or stderr. The
// returned Closer, when not nil, closes the log file.
func setupLogging(verbosity int, path string, stderr io.Writer) (io.Closer, error) {
	log := logrus.StandardLogger()
	log.SetLevel(logLevel(verbosity))
	f := &logrus.TextFormatter{DisableColors: true, FullTimestamp: true}
	log.SetFormatter(f)
	if path == "" {
		log.SetOutput(stderr)
		return nil, nil
	}
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	log.SetOutput(out)
	return out, nil
}

// noArgs is cobra.NoArgs with the error marked as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}
