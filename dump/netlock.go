package dump

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/fdrestore/fdrestore/internal/netlock"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// The network lock (internal/netlock): before a tree with TCP connections
// is killed, their packets are dropped in the tree's network namespace,
// so that a peer that keeps sending gets no reset while no socket owns
// the connection; restore removes the lock once the connections are back.

// NetLockRecord is the file in the image directory that records the
// network lock a dump set (see Options.NetworkLock).
const NetLockRecord = netlock.RecordFile

// ErrNetworkLock is wrapped when a dump is refused because the network
// lock cannot be set; the tree keeps running.
var ErrNetworkLock = errors.New("cannot set the network lock")

// resolveNetLock checks Options.NetworkLock before the tree is touched.
// A method that is unknown fails at once; a missing tool only matters if
// the tree turns out to hold TCP connections (the returned error is kept
// for then).
func resolveNetLock(opts Options) (method string, later error, err error) {
	if !opts.TCPEstablished || opts.LeaveRunning {
		return netlock.Skip, nil, nil
	}
	m, err := netlock.Resolve(opts.NetworkLock)
	if errors.Is(err, netlock.ErrUnavailable) {
		return "", err, nil
	}
	if err != nil {
		return "", nil, fmt.Errorf("dump: %w", err)
	}
	return m, nil, nil
}

// lockCode is inventory's network_lock_method (CRIU: 0 iptables, 1
// nftables, 2 skip).
func lockCode(method string) uint32 {
	switch method {
	case netlock.NFTables:
		return 1
	case netlock.Skip:
		return 2
	}
	return 0
}

// recordLockMethod puts the method into the inventory about to be
// written, as CRIU does.
func (is *imageSet) recordLockMethod(method string) {
	for _, f := range is.files {
		if f.name != "inventory.img" || len(f.entries) == 0 {
			continue
		}
		if inv, ok := f.entries[0].Msg.(*criupb.InventoryEntry); ok {
			inv.NetworkLockMethod = proto.Uint32(lockCode(method))
		}
	}
}

// frozenConns lists the connected TCP sockets (pid, fd) of the frozen
// tree, each once, but for the clients of connections not yet accepted
// (inetpending.go).
func frozenConns(tasks []*task) ([][2]int, error) {
	var out [][2]int
	seen := map[uint64]bool{}
	self, err := netlock.NetnsInode(0)
	if err != nil {
		return nil, fmt.Errorf("dump: %w", err)
	}
	pf := &pendingConnFilter{selfNet: self, treeSocks: seen}
	var socks [][2]int
	for _, t := range tasks {
		fds, err := listFds(t.pid)
		if err != nil {
			return nil, fmt.Errorf("dump: pid %d: list fds: %w", t.pid, err)
		}
		for _, fd := range fds {
			var st unix.Stat_t
			if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/%d", t.pid, fd), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK || seen[st.Ino] {
				continue
			}
			seen[st.Ino] = true
			socks = append(socks, [2]int{t.pid, fd})
		}
	}
	for _, sk := range socks {
		if c, ns, err := connTuple(sk[0], sk[1]); err == nil {
			pending, err := pf.isPending(sk[0], ns, c)
			if err != nil {
				return nil, fmt.Errorf("dump: pid %d fd %d: %w", sk[0], sk[1], err)
			}
			if !pending {
				out = append(out, sk)
			}
		}
	}
	return out, nil
}

// setNetLock locks the connections (pid, fd) of the frozen tree with
// method and records the lock in dir; nil when there is nothing to lock
// (then any record of an earlier dump in dir is removed). It runs before
// the connections are read: from then on nothing arrives in their queues
// (a peer's data received and acknowledged after the queues were read
// would be lost).
func setNetLock(dir, method string, conns [][2]int) (*setLock, error) {
	if len(conns) == 0 || method == netlock.Skip {
		return nil, netlock.RemoveRecord(dir)
	}
	var lc []netlock.Conn
	nsPid := 0
	var netns uint64
	for _, c := range conns {
		conn, ns, err := connTuple(c[0], c[1])
		if err != nil {
			return nil, fmt.Errorf("dump: %w: pid %d fd %d: %v", ErrNetworkLock, c[0], c[1], err)
		}
		if nsPid == 0 {
			nsPid, netns = c[0], ns
		} else if ns != netns {
			return nil, fmt.Errorf("dump: %w: the TCP connections are in more than one network namespace (pid %d and pid %d); "+
				"fdrestore locks one (dump with --network-lock=skip to go without)", ErrNetworkLock, nsPid, c[0])
		}
		lc = append(lc, conn)
	}
	l := netlock.New(method, lc)
	if err := l.Set(nsPid); err != nil {
		return nil, fmt.Errorf("dump: %w, the tree was left running (dump with --network-lock=skip to go without): %v", ErrNetworkLock, err)
	}
	if err := netlock.WriteRecord(dir, l); err != nil {
		return nil, errors.Join(fmt.Errorf("dump: %w", err), l.Remove(nsPid))
	}
	return &setLock{l, nsPid}, nil
}

// setLock is a lock set in the network namespace of pid.
type setLock struct {
	l   *netlock.Lock
	pid int
}

// connTuple reads the addresses of connection fd of pid, and the inode of
// pid's network namespace.
func connTuple(pid, fd int) (netlock.Conn, uint64, error) {
	ns, err := netlock.NetnsInode(pid)
	if err != nil {
		return netlock.Conn{}, 0, err
	}
	local, err := takeFd(pid, fd)
	if err != nil {
		return netlock.Conn{}, 0, err
	}
	defer unix.Close(local)
	sa, err := unix.Getsockname(local)
	if err != nil {
		return netlock.Conn{}, 0, fmt.Errorf("getsockname: %w", err)
	}
	pa, err := unix.Getpeername(local)
	if err != nil {
		return netlock.Conn{}, 0, fmt.Errorf("getpeername: %w", err)
	}
	var c netlock.Conn
	var ok1, ok2 bool
	c.Src, c.SrcPort, ok1 = sockAddrPort(sa)
	c.Dst, c.DstPort, ok2 = sockAddrPort(pa)
	if !ok1 || !ok2 {
		return netlock.Conn{}, 0, fmt.Errorf("not an inet connection")
	}
	if p, err := unix.GetsockoptInt(local, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil || p != unix.IPPROTO_TCP {
		return netlock.Conn{}, 0, fmt.Errorf("not a TCP connection")
	}
	return c, ns, nil
}

func sockAddrPort(sa unix.Sockaddr) (netip.Addr, uint16, bool) {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(a.Addr), uint16(a.Port), true
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(a.Addr), uint16(a.Port), true
	}
	return netip.Addr{}, 0, false
}

// unsetNetLock takes the lock of a dump that failed before the kill away
// again, with its record (the tree goes on running).
func unsetNetLock(dir string, l *setLock) error {
	if l == nil {
		return nil
	}
	return errors.Join(l.l.Remove(l.pid), netlock.RemoveRecord(dir))
}

// removeNetLockRecord removes the record of an earlier dump (a dump that
// leaves the tree running sets no lock).
func removeNetLockRecord(dir string) error { return netlock.RemoveRecord(dir) }

// covers checks that every connection the dump read is one the lock
// holds (the tree was frozen in between, so they are the same).
func (l *setLock) covers(conns [][2]int) error {
	if l == nil {
		return nil
	}
	have := map[netlock.Conn]bool{}
	for _, c := range l.l.Conns {
		have[c] = true
	}
	for _, c := range conns {
		t, _, err := connTuple(c[0], c[1])
		if err != nil {
			return fmt.Errorf("dump: %w: pid %d fd %d: %v", ErrNetworkLock, c[0], c[1], err)
		}
		if !have[t] {
			return fmt.Errorf("dump: %w: pid %d fd %d: connection %s is not under the lock", ErrNetworkLock, c[0], c[1], t)
		}
	}
	return nil
}
