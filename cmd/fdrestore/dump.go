package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/fdrestore/fdrestore/dump"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
)

func (a *app) dumpCmd() *cobra.Command {
	var (
		pid          int
		dir          string
		leaveRunning bool
		timeout      time.Duration
		ghostLimit   string
		shellJob     bool
		console      bool
		extUnixSk    bool
		tcpEst       bool
		networkLock  string
	)
	cmd := &cobra.Command{
		Use:   "dump -t PID -D DIR [--leave-running]",
		Short: "Checkpoint the fd state of the process tree rooted at PID into DIR",
		Long: `Freeze the process tree rooted at PID (cgroup v2 freezer), record the tree and
every task's fds (regular files, directories, device nodes, pipes and FIFOs
with their queued data, ptys with their settings, sessions and queued data,
/dev/tty; files unlinked while open are saved with their content, up to
--ghost-limit; unix sockets with their names, peers, options, pending
connections and queued data, including files in flight in the queues; epoll
sets, eventfds, signalfds and timerfds; TCP and UDP sockets, and with
--tcp-established TCP connections with their queues, read in TCP repair mode)
in CRIU 4.2-format images in DIR, plus each task's argv, environment and cwd in
fdrestore-exec.img, then kill the tree (the default, like CRIU) or thaw it
unchanged (--leave-running). A tree holding any other kind of fd (console,
netlink socket, ...), or a unix socket connected outside the tree (see
--ext-unix-sk), is refused and left running. Prints how long the tree was
frozen.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pid <= 0 {
				return usagef("dump needs -t PID")
			}
			if dir == "" {
				return usagef("dump needs -D DIR")
			}
			switch networkLock {
			case "", "nftables", "iptables", "skip":
			default:
				return usagef("--network-lock %q: want nftables, iptables or skip", networkLock)
			}
			limit, err := parseSize(ghostLimit)
			if err != nil || limit <= 0 {
				return usagef("--ghost-limit %q: want a positive size in bytes (suffix K, M or G allowed)", ghostLimit)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			st, err := dump.Dump(ctx, pid, dir, dump.Options{LeaveRunning: leaveRunning, Timeout: timeout, Log: logrus.StandardLogger(), GhostLimit: limit, ShellJob: shellJob, ExtUnixSk: extUnixSk, TCPEstablished: tcpEst, Console: console, NetworkLock: networkLock})
			if err != nil {
				return err
			}
			end := "killed"
			if leaveRunning {
				end = "left running"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "dumped %d tasks (%d threads), %d fds, %d files, %d pipes/FIFOs (%d bytes queued) into %s; tree %s\n",
				st.Tasks, st.Threads, st.Fds, st.Files, st.Pipes, st.PipeBytes, dir, end)
			if st.UnixSockets > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "%d unix sockets (%d bytes queued)\n", st.UnixSockets, st.SkQueueBytes)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "freezing took %s, frozen for %s, total %s\n", ms(st.Freezing), ms(st.Frozen), ms(st.Total))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVarP(&pid, "tree", "t", 0, "`PID` of the root of the tree to dump")
	fl.StringVarP(&dir, "images-dir", "D", "", "image `DIR`ectory (created if missing)")
	fl.BoolVar(&leaveRunning, "leave-running", false, "thaw the tree after the dump instead of killing it")
	fl.DurationVar(&timeout, "timeout", 30*time.Second, "give up (and thaw the tree) if freezing or dumping takes longer")
	fl.BoolVar(&console, "console", false, "the tree's terminal is a console from outside it (a pty whose master a runtime holds): restore it with --console-socket")
	fl.BoolVar(&shellJob, "shell-job", false, "dump a job of a shell: the root's session and its terminal (a pty whose master is outside the tree) belong to the shell; restore with --shell-job")
	fl.BoolVar(&extUnixSk, "ext-unix-sk", false, "allow unix datagram sockets connected to a named socket outside the tree (recorded as external, reconnected by name on restore)")
	fl.StringVar(&ghostLimit, "ghost-limit", "1M", "largest deleted file to save with its content (`SIZE` in bytes, or with suffix K, M, G); a larger one refuses the dump")
	fl.BoolVar(&tcpEst, "tcp-established", false, "dump established TCP connections (TCP repair on the frozen tree); without it a tree holding one is refused")
	fl.StringVar(&networkLock, "network-lock", "", "how the dumped TCP connections are kept from their peers until the restore (`MODE`): nftables (the default when nft is installed), iptables, or skip (the peers may get resets)")
	return cmd
}

// ms prints a duration in milliseconds with two decimals ("1.23 ms").
func ms(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

// parseSize parses a byte count with an optional K, M or G suffix (powers
// of 1024), like CRIU's --ghost-limit.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		}
		if mult > 1 {
			s = s[:n-1]
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, err
	}
	if v > math.MaxInt64/mult {
		return 0, fmt.Errorf("%s: too large", s)
	}
	return v * mult, nil
}
