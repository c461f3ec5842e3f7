// Package features probes the running kernel for the facilities fdrestore
// needs to dump and restore file descriptors, in the spirit of `criu check`.
//
// Every probe really exercises the feature (it calls the syscall, sets the
// socket option, creates the namespace, ...) instead of guessing from the
// kernel version. Probes clean up everything they create: when [Probe]
// returns, no file descriptor, child process, mount or cgroup made by a probe
// is left behind. Each probe is bounded in time (child processes and netlink
// replies are waited for with a deadline), so a full [Probe] takes well under
// a second on a normal machine.
//
// Probes that need privileges (TCP_REPAIR, namespaces, devpts, cgroup
// freezing) report the missing privilege in their error rather than failing
// silently; the errno is wrapped, so callers can use errors.Is with
// unix.EPERM and friends.
package features

import (
	"errors"
	"fmt"
	"strings"
)

// Names of the probed features, as reported in [Feature.Name] and accepted by
// [ProbeOne].
const (
	// PidfdOpen is pidfd_open(2) (Linux 5.3).
	PidfdOpen = "pidfd_open"
	// PidfdGetfd is pidfd_getfd(2) (Linux 5.6): duplicating another task's fd.
	PidfdGetfd = "pidfd_getfd"
	// PidfdSendSignal is pidfd_send_signal(2) (Linux 5.1).
	PidfdSendSignal = "pidfd_send_signal"
	// KcmpFile is kcmp(2) with KCMP_FILE: comparing open file descriptions.
	KcmpFile = "kcmp_file"
	// KcmpEpollTfd is kcmp(2) with KCMP_EPOLL_TFD (Linux 4.13).
	KcmpEpollTfd = "kcmp_epoll_tfd"
	// TCPRepair is the TCP_REPAIR socket option (needs CAP_NET_ADMIN).
	TCPRepair = "tcp_repair"
	// TCPRepairQueue is TCP_REPAIR_QUEUE together with TCP_QUEUE_SEQ.
	TCPRepairQueue = "tcp_repair_queue"
	// TCPRepairWindow is the TCP_REPAIR_WINDOW socket option (Linux 4.8).
	TCPRepairWindow = "tcp_repair_window"
	// Ptmx is opening /dev/ptmx and unlocking the slave (TIOCSPTLCK).
	Ptmx = "ptmx"
	// PtmxIndex is reading a pty's index with TIOCGPTN.
	PtmxIndex = "ptmx_index"
	// PtmxPeer is opening the pty slave with TIOCGPTPEER (Linux 4.13).
	PtmxPeer = "ptmx_peer"
	// DevptsNewinstance is mounting a private devpts instance in a private
	// mount namespace.
	DevptsNewinstance = "devpts_newinstance"
	// NSPid is creating a pid namespace (CLONE_NEWPID).
	NSPid = "ns_pid"
	// NSNet is creating a network namespace (CLONE_NEWNET).
	NSNet = "ns_net"
	// NSMnt is creating a mount namespace (CLONE_NEWNS).
	NSMnt = "ns_mnt"
	// NSIpc is creating an IPC namespace (CLONE_NEWIPC).
	NSIpc = "ns_ipc"
	// NSUts is creating a UTS namespace (CLONE_NEWUTS).
	NSUts = "ns_uts"
	// Tee is tee(2) between pipes: copying pipe data without consuming it.
	Tee = "tee"
	// PipeSize is F_SETPIPE_SZ / F_GETPIPE_SZ.
	PipeSize = "pipe_size"
	// SOPeekOff is SO_PEEK_OFF on unix sockets.
	SOPeekOff = "so_peek_off"
	// SockDiagUnix is NETLINK_SOCK_DIAG for AF_UNIX sockets (UNIX_DIAG).
	SockDiagUnix = "sock_diag_unix"
	// SockDiagInet is NETLINK_SOCK_DIAG for TCP sockets (INET_DIAG).
	SockDiagInet = "sock_diag_inet"
	// ChildSubreaper is prctl(PR_SET_CHILD_SUBREAPER).
	ChildSubreaper = "child_subreaper"
	// Cgroup2Freezer is the cgroup v2 freezer (cgroup.freeze, Linux 5.2).
	Cgroup2Freezer = "cgroup2_freezer"
)

// ErrUnknownFeature is returned (wrapped) by [ProbeOne] for a name that is
// not one of [Names].
var ErrUnknownFeature = errors.New("unknown feature")

// Feature is the result of probing one kernel feature.
type Feature struct {
	// Name identifies the feature; it is one of the constants of this
	// package (for example [PidfdGetfd]).
	Name string
	// Needed says what in fdrestore needs the feature, for example
	// "dump: take fds without code injection".
	Needed string
	// Detail is a short human note about a successful probe (for example
	// the pty index obtained or the cgroup used); it may be empty.
	Detail string
	// Err is nil when the feature is available. Otherwise it is a one-line
	// description of what failed and why, wrapping the errno when there is
	// one.
	Err error
}

// Available reports whether the probe succeeded.
func (f Feature) Available() bool { return f.Err == nil }

// String formats the feature as one line, for example
// "tcp_repair: ok (dump/restore: established TCP connections)".
func (f Feature) String() string {
	var b strings.Builder
	b.WriteString(f.Name)
	b.WriteString(": ")
	if f.Err == nil {
		b.WriteString("ok")
		if f.Detail != "" {
			b.WriteString(" [")
			b.WriteString(f.Detail)
			b.WriteString("]")
		}
	} else {
		b.WriteString("MISSING: ")
		b.WriteString(f.Err.Error())
	}
	if f.Needed != "" {
		b.WriteString(" (")
		b.WriteString(f.Needed)
		b.WriteString(")")
	}
	return b.String()
}

// probe describes one feature check. run returns a Detail on success.
type probe struct {
	name   string
	needed string
	run    func() (string, error)
}

// probes is the ordered list of all checks run by Probe.
var probes = []probe{
	{PidfdOpen, "dump: refer to tasks race-free against pid reuse", probePidfdOpen},
	{PidfdGetfd, "dump: take fds without code injection", probePidfdGetfd},
	{PidfdSendSignal, "dump: stop and resume tasks through pidfds", probePidfdSendSignal},
	{KcmpFile, "dump: detect shared open file descriptions", probeKcmpFile},
	{KcmpEpollTfd, "dump: resolve epoll targets exactly", probeKcmpEpollTfd},
	{TCPRepair, "dump/restore: established TCP connections", probeTCPRepair},
	{TCPRepairQueue, "dump/restore: TCP queues and sequence numbers", probeTCPRepairQueue},
	{TCPRepairWindow, "dump/restore: TCP window state", probeTCPRepairWindow},
	{Ptmx, "restore: create ptys", probePtmx},
	{PtmxIndex, "dump/restore: pty indexes", probePtmxIndex},
	{PtmxPeer, "restore: open pty slaves without a path lookup", probePtmxPeer},
	{DevptsNewinstance, "restore: private devpts so pty indexes can be reproduced", probeDevptsNewinstance},
	{NSPid, "restore: recreate pid namespaces", nsProbe(NSPid)},
	{NSNet, "restore: recreate network namespaces", nsProbe(NSNet)},
	{NSMnt, "restore: recreate mount namespaces", nsProbe(NSMnt)},
	{NSIpc, "restore: recreate IPC namespaces", nsProbe(NSIpc)},
	{NSUts, "restore: recreate UTS namespaces", nsProbe(NSUts)},
	{Tee, "dump: read pipe/FIFO data without consuming it", probeTee},
	{PipeSize, "dump/restore: pipe buffer sizes", probePipeSize},
	{SOPeekOff, "dump: read unix socket queues without consuming them", probeSOPeekOff},
	{SockDiagUnix, "dump: unix socket peers, names and queues", probeSockDiagUnix},
	{SockDiagInet, "dump: TCP socket state", probeSockDiagInet},
	{ChildSubreaper, "restore: reap orphans of the restored tree", probeChildSubreaper},
	{Cgroup2Freezer, "dump: freeze the process tree", probeCgroup2Freezer},
}

// Names returns the names of all features, in the order [Probe] reports
// them.
func Names() []string {
	names := make([]string, len(probes))
	for i, p := range probes {
		names[i] = p.name
	}
	return names
}

// Probe runs every feature probe and returns one [Feature] per probe, in the
// order of [Names]. It never fails as a whole: a probe that fails sets its
// Feature.Err.
func Probe() []Feature {
	out := make([]Feature, len(probes))
	for i, p := range probes {
		out[i] = run(p)
	}
	return out
}

// ProbeOne runs the probe for the named feature. The returned error is only
// about the name (it wraps [ErrUnknownFeature]); the probe's own outcome is
// in Feature.Err.
func ProbeOne(name string) (Feature, error) {
	for _, p := range probes {
		if p.name == name {
			return run(p), nil
		}
	}
	return Feature{Name: name}, fmt.Errorf("%w %q (known: %s)", ErrUnknownFeature, name, strings.Join(Names(), ", "))
}

// Missing returns the features in fs that are not available, in order.
func Missing(fs []Feature) []Feature {
	var out []Feature
	for _, f := range fs {
		if f.Err != nil {
			out = append(out, f)
		}
	}
	return out
}

func run(p probe) Feature {
	detail, err := p.run()
	return Feature{Name: p.name, Needed: p.needed, Detail: detail, Err: err}
}

// opErr wraps err (usually a unix.Errno) with the operation that failed.
func opErr(op string, err error) error {
	return fmt.Errorf("%s: %w", op, err)
}

// permErr is like opErr but appends hint when err is EPERM or EACCES, for
// example "needs CAP_NET_ADMIN".
func permErr(op string, err error, hint string) error {
	if isPerm(err) {
		return fmt.Errorf("%s: %w (%s)", op, err, hint)
	}
	return opErr(op, err)
}
