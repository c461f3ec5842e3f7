// Package dump checkpoints the fd state of a live process tree into CRIU
// 4.2-format images, without injecting code into the tree: it freezes the
// tree with the cgroup v2 freezer, walks /proc, takes each fd with
// pidfd_getfd(2) to inspect it, identifies shared open file descriptions
// exactly with kcmp(2), peeks pipe and FIFO data with tee(2) (which does not
// consume it), writes the images, and then kills the tree or thaws it.
//
// Supported fd types: regular files, directories and device nodes other
// than terminals (CRIU's REG), pipes and FIFOs, ptys and /dev/tty (tty.go:
// settings, sessions and the data queued both ways, which is read and
// written back while the tree is frozen), unix sockets (unixsk.go: state
// from sock_diag, options, bound files, queues peeked with SO_PEEK_OFF,
// pending connections, files in flight in the queues), and epoll sets,
// eventfds, signalfds and timerfds (event.go). A regular file unlinked
// while open is saved with its content as a ghost (ghost.go), up to
// Options.GhostLimit. A tree that holds anything else, or a unix socket
// connected outside the tree (see Options.ExtUnixSk), is refused and left
// running.
package dump

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/internal/netlock"
	"github.com/fdrestore/fdrestore/restore"
	"os"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"
)

// Options control a dump.
type Options struct {
	// LeaveRunning thaws the tree after the dump instead of killing it.
	LeaveRunning bool
	// Timeout bounds the whole dump, freezing included (default 30s).
	// A tree that does not freeze in time is thawed and the dump fails.
	Timeout time.Duration
	// Log receives progress entries (default: logrus's standard logger).
	Log *logrus.Logger
	// GhostLimit is the largest deleted regular file saved with its
	// content (ghost-file images); a larger one refuses the dump. Zero
	// means DefaultGhostLimit (1 MiB).
	GhostLimit int64
	// ShellJob dumps a job of a shell: the root need not lead its
	// session, and a pty slave whose master is outside the tree (the
	// shell's terminal) is recorded for restore --shell-job.
	ShellJob bool
	// ExtUnixSk allows unix datagram sockets connected to a named socket
	// outside the tree (CRIU's --ext-unix-sk): the peer is recorded as an
	// external socket (USK_EXTERN) that restore reconnects to by name.
	ExtUnixSk bool
	// TCPEstablished dumps established TCP connections (with TCP
	// repair); without it a tree holding one is refused.
	TCPEstablished bool
	// NetworkLock is how the dumped TCP connections are kept from their
	// peers between the kill and the restore (netlock.go): "nftables",
	// "iptables", "skip" (the peers may get resets), or "" for nftables
	// when nft is installed, else iptables. A lock that cannot be set
	// refuses the dump; the tree keeps running.
	NetworkLock string
	// Console dumps a tree whose terminal is a console from outside it
	// (a pty slave whose master a container runtime holds), to be
	// restored with a new console (restore.Config.OnConsole,
	// --console-socket).
	Console bool
}

// Stats describes a finished dump.
type Stats struct {
	Tasks, Threads int
	Fds            int   // fds in all tasks' fd tables
	Files          int   // entries in files.img
	Pipes          int   // distinct pipes and FIFOs
	PipeBytes      int64 // queued bytes saved in pipes-data.img and fifo-data.img
	UnixSockets    int   // unix sockets of the tree (at fds or in flight)
	SkQueueBytes   int64 // queued bytes saved in sk-queues.img
	// Freezing is how long it took to freeze the tree; Frozen is how long
	// the first task stayed frozen (from the moment it was frozen until the
	// tree was thawed or killed); Total is the wall time of the dump.
	Freezing, Frozen, Total time.Duration
}

// ErrUnsupported is wrapped by the error of a dump refused because the tree
// holds an fd of a type fdrestore cannot dump (see UnsupportedError).
var ErrUnsupported = errors.New("unsupported file")

// UnsupportedError names one fd that stops a dump: the task, the fd
// number, its type and what /proc/PID/fd/N points to. A dump refused for
// such an fd leaves the tree running and unchanged.
type UnsupportedError struct {
	Pid, Fd int
	Type    string // "inet socket", "eventpoll", "tty", "deleted file", ...
	Target  string // readlink of /proc/PID/fd/N
	// Why, when set, says why this particular file cannot be dumped
	// although its type can (a unix socket connected outside the tree,
	// ...).
	Why string
}

func (e *UnsupportedError) Error() string {
	if e.Why != "" {
		return fmt.Sprintf("pid %d fd %d: %s cannot be dumped: %s", e.Pid, e.Fd, e.Type, e.Why)
	}
	return fmt.Sprintf("pid %d fd %d: %s is not supported (%s)", e.Pid, e.Fd, e.Type, e.Target)
}

// Unwrap makes errors.Is(err, ErrUnsupported) true.
func (e *UnsupportedError) Unwrap() error { return ErrUnsupported }

// Dump checkpoints the process tree rooted at pid into the image directory
// dir (created if missing; image files of an earlier dump there are
// replaced). The tree is frozen while it is read; afterwards it is killed
// with SIGKILL, or with opts.LeaveRunning thawed unchanged. On any error
// the tree is thawed, left running and back in its own cgroups, and no
// image is left half-written.
func Dump(ctx context.Context, pid int, dir string, opts Options) (*Stats, error) {
	start := time.Now()
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.Log == nil {
		opts.Log = logrus.StandardLogger()
	}
	deadline := start.Add(opts.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if pid <= 0 {
		return nil, fmt.Errorf("dump: invalid pid %d", pid)
	}
	if pid == os.Getpid() {
		return nil, fmt.Errorf("dump: pid %d is fdrestore itself", pid)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("dump: image directory: %w", err)
	}
	d := &dumper{root: pid, dir: dir, opts: opts, log: opts.Log, deadline: deadline}
	lockMethod, lockErr, err := resolveNetLock(opts)
	if err != nil {
		return nil, err
	}

	// Look for unsupported fds before touching anything.
	if err := d.prescan(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	freezeStart := time.Now()
	fz, tasks, err := d.freeze()
	if err != nil {
		return nil, err
	}
	frozenAt := time.Now()
	st := &Stats{Freezing: frozenAt.Sub(freezeStart)}
	d.log.WithFields(logrus.Fields{"tasks": len(tasks), "took": st.Freezing}).Debug("tree frozen")

	abort := func(err error) (*Stats, error) {
		if terr := fz.thaw(); terr != nil {
			d.log.WithError(terr).Error("thaw after a failed dump")
			err = errors.Join(err, terr)
		}
		return nil, err
	}
	// The network lock goes on before the connections are read, so that
	// their queues hold still (netlock.go).
	var nl *setLock
	switch {
	case opts.LeaveRunning:
	case lockMethod == netlock.Skip && lockErr == nil:
		if err := netlock.RemoveRecord(dir); err != nil { // an earlier dump's
			return abort(err)
		}
	default:
		conns, err := frozenConns(tasks)
		if err == nil && len(conns) > 0 && lockErr != nil {
			err = fmt.Errorf("dump: %w, the tree was left running: %v", ErrNetworkLock, lockErr)
		}
		if err == nil {
			nl, err = setNetLock(dir, lockMethod, conns)
		}
		if err != nil {
			return abort(err)
		}
	}
	abortLocked := func(err error) (*Stats, error) {
		return abort(errors.Join(err, unsetNetLock(dir, nl)))
	}
	img, err := d.collect(tasks)
	if err == nil {
		err = ctx.Err()
	}
	d.log.WithField("took", time.Since(frozenAt)).Debug("tree read")
	if err == nil {
		err = nl.covers(img.tcpConns)
	}
	if err != nil {
		return abortLocked(err)
	}
	img.recordLockMethod(lockMethod)
	// What the root's stdio was, as runc records it (the tree is frozen:
	// the links are those the images hold).
	stdio, err := json.Marshal(stdioLinks(pid))
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, DescriptorsFile), append(stdio, '\n'), 0o644)
	}
	if err != nil {
		return abortLocked(fmt.Errorf("dump: %s: %w", DescriptorsFile, err))
	}

	if opts.LeaveRunning {
		err = fz.thaw()
		st.Frozen = time.Since(frozenAt)
		if err != nil {
			return nil, fmt.Errorf("dump: thaw: %w", err)
		}
		if err := img.write(dir); err != nil {
			return nil, err
		}
		if err := removeNetLockRecord(dir); err != nil {
			return nil, err
		}
	} else {
		// Kill only once the images are safely written, and only if
		// fdrestore can restore them: a tree restore would refuse is
		// left running.
		if err := img.write(dir); err != nil {
			return abortLocked(err)
		}
		if err := checkRestorable(dir, opts); err != nil {
			return abortLocked(err)
		}
		// Connections die silently: in repair mode when their last
		// reference (the lock's dup) goes after the kill.
		lock, err := lockConns(append(img.tcpConns[:len(img.tcpConns):len(img.tcpConns)], img.pendingConns...))
		if err != nil {
			return abortLocked(fmt.Errorf("dump: lock TCP connections: %w", err))
		}
		err = fz.kill(func() { st.Frozen = time.Since(frozenAt) })
		lock.release()
		if err != nil {
			if nl != nil {
				err = fmt.Errorf("%w (the network lock %s stays until a restore removes it)", err, nl.l.Name)
			}
			return nil, fmt.Errorf("dump: kill the tree: %w", err)
		}
	}
	img.fillStats(st)
	st.Total = time.Since(start)
	if err := img.writeStats(dir, st); err != nil {
		return nil, err
	}
	d.log.WithFields(logrus.Fields{
		"tasks": st.Tasks, "fds": st.Fds, "files": st.Files,
		"freezing": st.Freezing, "frozen": st.Frozen, "total": st.Total,
	}).Info("dump done")
	return st, nil
}

// ErrNotRestorable is wrapped when a dump is refused because fdrestore
// could not restore the images it would leave; the tree keeps running.
var ErrNotRestorable = errors.New("fdrestore cannot restore this tree")

// checkRestorable loads the images just written and plans their restore
// (with --shell-job, --ext-unix-sk and --tcp-established when the dump
// had them), so that a tree is never killed for images its own restore
// refuses.
func checkRestorable(dir string, opts Options) error {
	set, err := images.Load(dir)
	if err != nil {
		return fmt.Errorf("dump: %w: the images do not load: %v", ErrNotRestorable, err)
	}
	po := restore.PlanOptions{ShellJob: opts.ShellJob, ExtUnixSk: opts.ExtUnixSk, TCPEstablished: opts.TCPEstablished}
	if opts.Console {
		po.Console = "/dev/console" // a stand-in: planning opens nothing
	}
	p, err := restore.NewPlan(set, po)
	if err == nil {
		err = p.Err()
	}
	if err != nil {
		return fmt.Errorf("dump: %w (the tree was left running; dump with --leave-running to keep the images anyway): %v", ErrNotRestorable, err)
	}
	return nil
}

// dumper holds the state of one Dump.
type dumper struct {
	root     int
	dir      string
	opts     Options
	log      *logrus.Logger
	deadline time.Time
}

// walkTree lists the tree rooted at d.root: pids in depth-first pre-order
// with children in creation order (CRIU's pstree order), and their
// threads.
func (d *dumper) walkTree() ([]*task, error) {
	var out []*task
	seen := map[int]bool{}
	var walk func(pid int, parent *task) error
	walk = func(pid int, parent *task) error {
		if seen[pid] {
			return nil
		}
		seen[pid] = true
		t := &task{pid: pid, parent: parent}
		st, err := readStat(pid)
		if err != nil {
			if parent != nil && errors.Is(err, os.ErrNotExist) {
				return nil // the child exited meanwhile
			}
			return fmt.Errorf("pid %d: %w", pid, err)
		}
		if st.state == 'Z' || st.state == 'X' {
			return fmt.Errorf("pid %d is a zombie: dead tasks are not supported", pid)
		}
		t.stat = st
		if t.threads, err = threadsOf(pid); err != nil {
			return fmt.Errorf("pid %d: threads: %w", pid, err)
		}
		out = append(out, t)
		kids, err := childrenOf(pid, t.threads)
		if err != nil {
			return fmt.Errorf("pid %d: children: %w", pid, err)
		}
		for _, c := range kids {
			if c == os.Getpid() {
				return fmt.Errorf("pid %d: the tree holds fdrestore itself (pid %d)", pid, c)
			}
			if err := walk(c, t); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(d.root, nil); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("pid %d does not exist", d.root)
	}
	return out, nil
}

// prescan walks the running tree and refuses it if any fd is of a type
// that cannot be dumped, judging by /proc/PID/fd/N alone. It changes
// nothing. (The frozen walk checks again, exactly.)
func (d *dumper) prescan() error {
	tasks, err := d.walkTree()
	if err != nil {
		return fmt.Errorf("dump: %w", err)
	}
	if !d.opts.ShellJob {
		if err := checkRootSession(d.root); err != nil {
			return err
		}
	}
	var errs []error
	for _, t := range tasks {
		fds, err := listFds(t.pid)
		if err != nil {
			return fmt.Errorf("dump: pid %d: list fds: %w", t.pid, err)
		}
		for _, fd := range fds {
			link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", t.pid, fd))
			if err != nil {
				continue // closed meanwhile; the frozen walk decides
			}
			typ := unsupportedByLink(link)
			if typ == "socket" {
				typ = prescanSocket(t.pid, fd, d.opts.TCPEstablished, d.opts.LeaveRunning)
			}
			if typ == "" && isDeletedLink(link) && !isPtsLink(link) {
				typ = deletedByStat(t.pid, fd, d.opts.ghostLimit())
			}
			if typ != "" {
				errs = append(errs, &UnsupportedError{Pid: t.pid, Fd: fd, Type: typ, Target: link})
			}
		}
	}
	return refusal(errs)
}

// checkRootSession refuses a tree whose root does not lead its own
// session: restore recreates sessions from inside the tree, so the root's
// session would lie outside it. A sid of 0 means the session leader is in
// an ancestor pid namespace, which is the same case.
func checkRootSession(root int) error {
	st, err := readStat(root)
	if err != nil {
		return fmt.Errorf("dump: pid %d: %w", root, err)
	}
	if st.sid == root {
		return nil
	}
	where := fmt.Sprintf("its session is led by pid %d", st.sid)
	if st.sid == 0 {
		where = "its session leader is outside this pid namespace"
	}
	return fmt.Errorf("dump: %w, the tree was left running unchanged: root task %d is not a session leader (%s); "+
		"start it with setsid, or dump it with --shell-job as a job of the caller's shell",
		ErrNotRestorable, root, where)
}

// refusal joins the UnsupportedErrors of a refused dump (the first few).
func refusal(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	const show = 10
	more := len(errs) - show
	if more > 0 {
		errs = append(errs[:show:show], fmt.Errorf("and %d more unsupported fds", more))
	}
	return fmt.Errorf("dump refused, the tree was left running unchanged: %w", errors.Join(errs...))
}

// freeze freezes the tree and returns its tasks once a walk of the frozen
// tree finds no task outside the freezer: anything forked before its
// parent was frozen is caught by the next round.
func (d *dumper) freeze() (*freezer, []*task, error) {
	fz, err := newFreezer(d.deadline)
	if err != nil {
		return nil, nil, fmt.Errorf("dump: %w", err)
	}
	fail := func(err error) (*freezer, []*task, error) {
		if terr := fz.thaw(); terr != nil {
			err = errors.Join(err, terr)
		}
		return nil, nil, fmt.Errorf("dump: %w", err)
	}
	for round := 1; ; round++ {
		tasks, err := d.walkTree()
		if err != nil {
			return fail(err)
		}
		moved := 0
		for _, t := range tasks {
			if fz.has(t.pid) {
				continue
			}
			ok, err := fz.add(t.pid)
			if err != nil {
				return fail(err)
			}
			if ok {
				moved++
			}
		}
		if err := fz.wait(); err != nil {
			return fail(err)
		}
		if moved == 0 {
			// Every task of this walk was frozen before it began, so
			// the walk saw the final tree. Re-read each task's stat now
			// that nothing runs.
			for _, t := range tasks {
				if t.stat, err = readStat(t.pid); err != nil {
					return fail(fmt.Errorf("pid %d: %w", t.pid, err))
				}
			}
			return fz, tasks, nil
		}
		if time.Now().After(d.deadline) {
			return fail(fmt.Errorf("the tree kept changing for %d rounds; gave up at the deadline", round))
		}
	}
}
