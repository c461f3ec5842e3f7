package dump

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/fdrestore/fdrestore/files/tcp"
	"github.com/fdrestore/fdrestore/internal/netlock"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// Connections not yet accepted. A connection in a listener's accept queue
// has no fd, and a repaired socket cannot be put back into a restored
// listener's queue. When its client end is a socket of the dumped tree,
// and the tree is killed, it can be rebuilt for real instead: the dump
// accepts it on its own dup of the listener (the tree is frozen and its
// connections locked), takes what the client had sent from the accepted
// socket's receive queue, and records on the client's inet_sk_entry the
// listener, the connection's place in the queue and those bytes
// (fdr_pending_* in proto/sockets.proto). The accepted socket is closed
// in repair mode, which sends nothing. The restore makes the client a
// plain socket on its recorded address that connect()s to the restored
// listener and writes the bytes again.

// leaveRunningPending says why a dump that leaves the tree running cannot
// take connections out of an accept queue.
const leaveRunningPending = ": with --leave-running they would have to be accepted " +
	"by the dump and could not be put back into the running listener's queue"

// connKey names a TCP connection by its local and peer address and port
// (addresses as 16 bytes; IPv4 in the first 4).
type connKey struct {
	local, peer         [16]byte
	localPort, peerPort uint16
}

// diagConn is a socket sock_diag lists without an inode: a connection in
// a listener's accept queue (or a request or TIME_WAIT socket).
type diagConn struct {
	key   connKey
	state uint8
}

// diagChild reads the socket id of an inet_diag_msg without an inode.
func diagChild(b []byte) diagConn {
	var c diagConn
	c.state = b[1]
	c.key.localPort = binary.BigEndian.Uint16(b[4:])
	c.key.peerPort = binary.BigEndian.Uint16(b[6:])
	copy(c.key.local[:], b[8:24])
	copy(c.key.peer[:], b[24:40])
	if b[0] == unix.AF_INET {
		clear(c.key.local[4:])
		clear(c.key.peer[4:])
	}
	return c
}

// entryKey is the key of the connection an inet_sk_entry records, seen
// from its peer (reverse) or from itself.
func entryKey(ie *criupb.InetSkEntry, reverse bool) connKey {
	var k connKey
	copy(k.local[:], wordBytes(ie.GetSrcAddr()))
	copy(k.peer[:], wordBytes(ie.GetDstAddr()))
	k.localPort, k.peerPort = uint16(ie.GetSrcPort()), uint16(ie.GetDstPort())
	if reverse {
		k.local, k.peer = k.peer, k.local
		k.localPort, k.peerPort = k.peerPort, k.localPort
	}
	return k
}

// saKey is the key of a connection from its two socket addresses.
func saKey(local, peer unix.Sockaddr) connKey {
	var k connKey
	lw, lp := addrWords(local)
	pw, pp := addrWords(peer)
	copy(k.local[:], wordBytes(lw))
	copy(k.peer[:], wordBytes(pw))
	k.localPort, k.peerPort = uint16(*lp), uint16(*pp)
	return k
}

// pendingListener is a listener of the tree with connections in its
// accept queue: its fd, a dup of the socket, the queue's length.
type pendingListener struct {
	e   *fdEnt
	fd  int
	n   uint32
	ino uint64
}

// addPendingListener keeps a dup of listener fd for acceptPending (once
// per socket).
func (s *state) addPendingListener(e *fdEnt, fd int, n uint32) {
	for _, l := range s.pendingListeners {
		if l.ino == e.st.Ino {
			return
		}
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		dup = -1
	}
	s.pendingListeners = append(s.pendingListeners, &pendingListener{e: e, fd: dup, n: n, ino: e.st.Ino})
}

// isPendingClient reports whether connection ie of task t is the client
// end of a connection that sits in an accept queue: sock_diag lists its
// other end without an inode.
func (s *state) isPendingClient(t *task, fam int, ie *criupb.InetSkEntry) bool {
	ch := s.diag.children[diagKey{t.ns[1], unix.IPPROTO_TCP, fam}]
	c, ok := ch[entryKey(ie, true)]
	return ok && c.state == tcp.StateEstablished
}

// pendingClientProblem: a pending client whose sent data is not all in
// the listener's child (not yet acknowledged) cannot be rebuilt.
func pendingClientProblem(sk *inetSock) string {
	if len(sk.outq) > 0 || len(sk.inq) > 0 {
		return fmt.Sprintf("TCP client of a connection not yet accepted, with %d bytes not yet acknowledged and %d received",
			len(sk.outq), len(sk.inq))
	}
	return ""
}

// pendingClients indexes the pending clients of the tree by connection.
func (s *state) pendingClients() map[connKey]*inetSock {
	clients := map[connKey]*inetSock{}
	for _, t := range s.tasks {
		for _, e := range t.fds {
			if e.kind == kindInet && e.inet.pendingClient {
				clients[entryKey(e.inet.entry, false)] = e.inet
			}
		}
	}
	return clients
}

// resolvePending decides, once every fd of the tree is read, which
// connections whose other end is in an accept queue are pending clients:
// those whose listener is in the tree (the others, whose listener is
// outside, are ordinary connections, restored in repair mode). A pending
// client is rebuilt by a real connect: it has no tcp-stream image, and
// moves from tcpConns to pendingConns (frozenConns left it out of the
// network lock for the same reason, see pendingConnFilter).
func (s *state) resolvePending() []error {
	var refused []error
	moved := map[[2]int]bool{}
	for _, t := range s.tasks {
		for _, e := range t.fds {
			if e.kind != kindInet || !e.inet.pendingCand {
				continue
			}
			sk := e.inet
			if !s.listenerInTree(e.t, sk.entry) {
				continue
			}
			if bad := pendingClientProblem(sk); bad != "" {
				refused = append(refused, e.unsupported(bad))
				continue
			}
			sk.pendingClient, sk.stream = true, nil
			moved[[2]int{e.t.pid, e.fd}] = true
			s.pendingConns = append(s.pendingConns, [2]int{e.t.pid, e.fd})
		}
	}
	if len(moved) > 0 {
		s.tcpConns = slices.DeleteFunc(s.tcpConns, func(c [2]int) bool { return moved[c] })
	}
	return refused
}

// listenerInTree reports whether a listener of the tree, in t's network
// namespace, listens on the peer address of connection ie.
func (s *state) listenerInTree(t *task, ie *criupb.InetSkEntry) bool {
	k := entryKey(ie, false)
	for _, l := range s.pendingListeners {
		lk := entryKey(l.e.inet.entry, false)
		if l.e.t.ns[1] == t.ns[1] && l.e.inet.entry.GetFamily() == ie.GetFamily() && lk.localPort == k.peerPort &&
			(lk.local == [16]byte{} || lk.local == k.peer) {
			return true
		}
	}
	return false
}

// checkPending refuses, once every fd of the tree is read, the listeners
// with a connection not yet accepted whose client is not in the tree:
// nothing is accepted unless every connection of every queue can be
// rebuilt.
func (s *state) checkPending() ([]error, error) {
	if len(s.pendingListeners) == 0 {
		return nil, nil
	}
	if refused := s.resolvePending(); len(refused) > 0 {
		return refused, nil
	}
	clients := s.pendingClients()
	var refused []error
	for _, l := range s.pendingListeners {
		ie := l.e.inet.entry
		if l.fd < 0 {
			return nil, fmt.Errorf("%s: dup of the listener failed", describeInet(ie))
		}
		ch := s.diag.children[diagKey{l.e.t.ns[1], unix.IPPROTO_TCP, int(ie.GetFamily())}]
		lk := entryKey(ie, false)
		found := uint32(0)
		for k, c := range ch {
			if k.localPort != lk.localPort || (lk.local != [16]byte{} && k.local != lk.local) {
				continue
			}
			if c.state != tcp.StateEstablished {
				continue // a request or TIME_WAIT socket: not in the queue
			}
			found++
			if clients[reverseKey(k)] == nil {
				refused = append(refused, l.e.unsupported(fmt.Sprintf("%s (the client of the one from %s is not in the dumped tree; "+
					"only connections with both ends in the tree can be taken out of an accept queue)",
					pendingProblem(l.n), tcp.Addr(k.peer[:len(wordBytes(ie.GetSrcAddr()))], uint32(k.peerPort)))))
				break
			}
		}
		if found != l.n && len(refused) == 0 {
			refused = append(refused, l.e.unsupported(fmt.Sprintf("%s (sock_diag lists %d established ones: "+
				"a connection closed or reset by its client before it was accepted cannot be rebuilt)", pendingProblem(l.n), found)))
		}
	}
	return refused, nil
}

// acceptPending takes the connections out of the accept queues of the
// tree's listeners (checkPending found every client in the tree). It runs
// on the frozen, locked tree that is killed after the dump; a dump that
// fails from here on has lost these connections.
func (s *state) acceptPending() error {
	if len(s.pendingListeners) == 0 {
		return nil
	}
	clients := s.pendingClients()
	for _, l := range s.pendingListeners {
		if err := s.acceptQueue(l, clients); err != nil {
			return fmt.Errorf("%s (pid %d fd %d): %w", describeInet(l.e.inet.entry), l.e.t.pid, l.e.fd, err)
		}
	}
	return nil
}

// acceptQueue accepts the l.n connections of l's queue in their order.
func (s *state) acceptQueue(l *pendingListener, clients map[connKey]*inetSock) error {
	for i := uint32(0); i < l.n; i++ {
		pfd := []unix.PollFd{{Fd: int32(l.fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(pfd, 0); err != nil || n == 0 {
			return fmt.Errorf("accept queue holds %d connections, not %d", i, l.n)
		}
		c, peer, err := unix.Accept4(l.fd, unix.SOCK_CLOEXEC)
		if err != nil {
			return fmt.Errorf("accept connection %d: %w", i, err)
		}
		err = func() error {
			defer unix.Close(c)
			local, err := unix.Getsockname(c)
			if err != nil {
				return fmt.Errorf("getsockname: %w", err)
			}
			sk := clients[reverseKey(saKey(local, peer))]
			if sk == nil {
				return fmt.Errorf("connection %d from %v: no client in the tree", i, peer)
			}
			// Repair mode: closing sends nothing to the client, and the
			// receive queue is read without acknowledging anything.
			if err := tcp.SetRepair(c, true); err != nil {
				return err
			}
			n, err := unix.IoctlGetInt(c, unix.SIOCINQ)
			if err != nil {
				return fmt.Errorf("SIOCINQ: %w", err)
			}
			if err := tcp.SelectQueue(c, tcp.RecvQueue); err != nil {
				return err
			}
			data, err := tcp.PeekQueue(c, n)
			if err != nil {
				return fmt.Errorf("receive queue of connection %d: %w", i, err)
			}
			sk.pendingOn, sk.pendingOrder, sk.pendingData = l.e, i, data
			return nil
		}()
		if err != nil {
			return err
		}
	}
	return nil
}

func reverseKey(k connKey) connKey {
	return connKey{local: k.peer, peer: k.local, localPort: k.peerPort, peerPort: k.localPort}
}

// closePendingListeners closes the dups of the listeners.
func (s *state) closePendingListeners() {
	for _, l := range s.pendingListeners {
		if l.fd >= 0 {
			unix.Close(l.fd)
		}
	}
	s.pendingListeners = nil
}

// pendingFields records sk's pending connection on its entry: listener is
// the listener's file id.
func pendingFields(ie *criupb.InetSkEntry, sk *inetSock, listener uint32) {
	ie.FdrPendingListener = proto.Uint32(listener)
	ie.FdrPendingOrder = proto.Uint32(sk.pendingOrder)
	if len(sk.pendingData) > 0 {
		ie.FdrPendingData = sk.pendingData
	}
}

// pendingConnFilter says which connections of the frozen tree are clients
// of connections not yet accepted by a listener of the tree: both ends
// are in the tree and frozen, and the restore connects them again for
// real, so the network lock leaves them out (a lock on them would hold
// the restored connect back). It decides as resolvePending does.
type pendingConnFilter struct {
	diag    inetDiag
	selfNet uint64
	// treeSocks holds the inodes of the tree's sockets; listeners
	// indexes each sock_diag dump's listeners by port.
	treeSocks map[uint64]bool
	listeners map[diagKey]map[uint16][]diagInfo
}

// isPending reports whether connection c of pid (in network namespace
// netns) has its other end in the accept queue of a listener of the tree.
func (f *pendingConnFilter) isPending(pid int, netns uint64, c netlock.Conn) (bool, error) {
	fam := unix.AF_INET6
	if c.Src.Is4() {
		fam = unix.AF_INET
	}
	t := &task{pid: pid}
	t.ns[1] = netns
	if _, _, err := f.diag.lookup(t, f.selfNet, fam, unix.IPPROTO_TCP, 0); err != nil {
		return false, err
	}
	var k connKey
	a, b := c.Dst.As16(), c.Src.As16()
	if fam == unix.AF_INET {
		a4, b4 := c.Dst.As4(), c.Src.As4()
		a, b = [16]byte{}, [16]byte{}
		copy(a[:], a4[:])
		copy(b[:], b4[:])
	}
	k.local, k.peer, k.localPort, k.peerPort = a, b, c.DstPort, c.SrcPort
	dk := diagKey{netns, unix.IPPROTO_TCP, fam}
	if ch, ok := f.diag.children[dk][k]; !ok || ch.state != tcp.StateEstablished {
		return false, nil
	}
	if f.listeners == nil {
		f.listeners = map[diagKey]map[uint16][]diagInfo{}
	}
	ls, ok := f.listeners[dk]
	if !ok {
		ls = map[uint16][]diagInfo{}
		for ino, di := range f.diag.dumps[dk] {
			if di.state == tcp.StateListen && f.treeSocks[uint64(ino)] {
				ls[di.lport] = append(ls[di.lport], di)
			}
		}
		f.listeners[dk] = ls
	}
	for _, di := range ls[k.localPort] {
		if di.local == [16]byte{} || di.local == k.local {
			return true, nil
		}
	}
	return false, nil
}
