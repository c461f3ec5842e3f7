package dump

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"github.com/fdrestore/fdrestore/files/tcp"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// inetSock is what an inet socket's fd records: its inet_sk_entry and,
// for a TCP connection, its tcp-stream image.
type inetSock struct {
	entry  *criupb.InetSkEntry
	stream *criupb.TcpStreamEntry
	inq    []byte
	outq   []byte
	// pendingClient: the client end of a connection still in the accept
	// queue of a listener of the tree (inetpending.go); pendingOn is
	// that listener's fd, order its place in the queue, pendingData what
	// it had sent.
	pendingClient bool
	pendingCand   bool // other end in an accept queue, listener not yet known
	pendingOn     *fdEnt
	pendingOrder  uint32
	pendingData   []byte
}

// sockDomain returns SO_DOMAIN, SO_TYPE and SO_PROTOCOL of a socket fd.
func sockDomain(fd int) (dom, typ, proto int, err error) {
	if dom, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil {
		return 0, 0, 0, fmt.Errorf("SO_DOMAIN: %w", err)
	}
	if typ, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
		return 0, 0, 0, fmt.Errorf("SO_TYPE: %w", err)
	}
	if proto, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil {
		return 0, 0, 0, fmt.Errorf("SO_PROTOCOL: %w", err)
	}
	return dom, typ, proto, nil
}

// inetKind names an inet socket fdrestore cannot dump, or "" when it can
// be dumped (TCP stream and UDP datagram sockets); isInet says whether it
// is an inet socket at all.
func inetKind(dom, typ, proto int) (isInet bool, unsupported string) {
	if dom != unix.AF_INET && dom != unix.AF_INET6 {
		return false, ""
	}
	switch {
	case typ == unix.SOCK_STREAM && proto == unix.IPPROTO_TCP, typ == unix.SOCK_DGRAM && proto == unix.IPPROTO_UDP:
		return true, ""
	}
	return true, fmt.Sprintf("inet socket of type %d protocol %d", typ, proto)
}

// prescanSocket judges socket fd of a running task without changing it:
// "" for a socket that can be dumped (or one that closed meanwhile: the
// frozen walk decides), else what stops the dump.
func prescanSocket(pid, fd int, established, leaveRunning bool) string {
	local, err := takeFd(pid, fd)
	if err != nil {
		return ""
	}
	defer unix.Close(local)
	if typ := prescanInet(local, established, leaveRunning); typ != "socket" {
		return typ
	}
	return socketByFd(local)
}

// prescanInet judges socket local (the dumper's copy): "" for an inet
// socket that can be dumped, else what stops the dump ("socket" for
// sockets that are not inet).
func prescanInet(local int, established, leaveRunning bool) string {
	dom, typ, proto, err := sockDomain(local)
	if err != nil {
		return "socket"
	}
	isInet, bad := inetKind(dom, typ, proto)
	switch {
	case !isInet:
		return "socket"
	case bad != "":
		return bad
	case proto != unix.IPPROTO_TCP:
		return ""
	}
	info, err := unix.GetsockoptTCPInfo(local, unix.SOL_TCP, unix.TCP_INFO)
	if err != nil {
		return "TCP socket (TCP_INFO: " + err.Error() + ")"
	}
	if info.State == tcp.StateListen && info.Unacked > 0 {
		// For a listener tcpi_unacked is its accept queue.
		if leaveRunning {
			return pendingProblem(info.Unacked) + leaveRunningPending
		}
		return ""
	}
	return tcpStateProblem(uint32(info.State), established)
}

// pendingProblem: connections in a listener's accept queue have no fd to
// take and cannot be put back into a restored listener's queue.
func pendingProblem(n uint32) string {
	return fmt.Sprintf("TCP listener with connections not yet accepted (%d)", n)
}

// tcpStateProblem says why a TCP socket in state st cannot be dumped, or
// "".
func tcpStateProblem(st uint32, established bool) string {
	switch st {
	case tcp.StateListen, tcp.StateClose:
		return ""
	case tcp.StateEstablished, tcp.StateFinWait1, tcp.StateFinWait2, tcp.StateCloseWait, tcp.StateLastAck, tcp.StateClosing:
		if !established {
			return fmt.Sprintf("established TCP connection (%s; dump with --tcp-established)", tcp.StateName(st))
		}
		return ""
	}
	return fmt.Sprintf("TCP socket in state %s", tcp.StateName(st))
}

// diagInfo is what sock_diag tells of one inet socket.
type diagInfo struct {
	state    uint8
	rqueue   uint32 // listener: connections not yet accepted
	wqueue   uint32 // listener: backlog
	shutdown uint8
	hasShut  bool
	local    [16]byte // local address (IPv4 in the first 4 bytes)
	lport    uint16
}

type diagKey struct {
	netns uint64
	proto int
	fam   int
}

// inetDiag caches one sock_diag dump per network namespace, family and
// protocol, by socket inode.
type inetDiag struct {
	dumps map[diagKey]map[uint32]diagInfo
	// children: sockets without an inode (connections in a listener's
	// accept queue) of each dump, by their local and peer address.
	children map[diagKey]map[connKey]diagConn
}

// lookup returns the sock_diag record of socket ino of the given family
// and protocol in task t's network namespace.
func (d *inetDiag) lookup(t *task, selfNet uint64, fam, proto int, ino uint32) (diagInfo, bool, error) {
	k := diagKey{t.ns[1], proto, fam}
	m, ok := d.dumps[k]
	if !ok {
		var err error
		var ch map[connKey]diagConn
		nsfd := -1
		if t.ns[1] != selfNet && t.ns[1] != 0 {
			if nsfd, err = unix.Open(fmt.Sprintf("/proc/%d/ns/net", t.pid), unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
				return diagInfo{}, false, fmt.Errorf("open the network namespace of pid %d: %w", t.pid, err)
			}
		}
		m, ch, err = diagDump(nsfd, fam, proto)
		if nsfd >= 0 {
			unix.Close(nsfd)
		}
		if err != nil {
			return diagInfo{}, false, err
		}
		if d.dumps == nil {
			d.dumps = map[diagKey]map[uint32]diagInfo{}
			d.children = map[diagKey]map[connKey]diagConn{}
		}
		d.dumps[k], d.children[k] = m, ch
	}
	di, ok := m[ino]
	return di, ok, nil
}

// sock_diag constants (linux/sock_diag.h, linux/inet_diag.h).
const (
	inetDiagShutdown = 8
	inetDiagReqLen   = 56
	inetDiagMsgLen   = 72
)

// diagDump lists every socket of a family and protocol in the network
// namespace nsfd (-1: the dumper's own) through NETLINK_SOCK_DIAG.
func diagDump(nsfd, fam, proto int) (map[uint32]diagInfo, map[connKey]diagConn, error) {
	req := make([]byte, inetDiagReqLen)
	req[0], req[1] = byte(fam), byte(proto)
	binary.NativeEndian.PutUint32(req[4:], 0xffffffff) // every state
	out := map[uint32]diagInfo{}
	children := map[connKey]diagConn{}
	err := sockDiagDump(nsfd, req, func(b []byte) error {
		if len(b) < inetDiagMsgLen {
			return fmt.Errorf("sock_diag: short inet_diag_msg (%d bytes)", len(b))
		}
		di := diagInfo{state: b[1],
			rqueue: binary.NativeEndian.Uint32(b[56:]), wqueue: binary.NativeEndian.Uint32(b[60:]),
			lport: binary.BigEndian.Uint16(b[4:])}
		copy(di.local[:], b[8:24])
		if b[0] == unix.AF_INET {
			clear(di.local[4:])
		}
		ino := binary.NativeEndian.Uint32(b[68:])
		for a := b[inetDiagMsgLen:]; len(a) >= 4; {
			l := int(binary.NativeEndian.Uint16(a))
			typ := binary.NativeEndian.Uint16(a[2:])
			if l < 4 || l > len(a) {
				break
			}
			if typ == inetDiagShutdown && l >= 5 {
				di.shutdown, di.hasShut = a[4], true
			}
			a = a[min(len(a), (l+3)&^3):]
		}
		if ino == 0 {
			if c := diagChild(b); c.state != 0 {
				children[c.key] = c
			}
			return nil
		}
		out[ino] = di
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("family %d protocol %d: %w", fam, proto, err)
	}
	return out, children, nil
}

// tcpInfoWscale returns tcpi_snd_wscale and tcpi_rcv_wscale, bit fields
// that x/sys's TCPInfo leaves out.
func tcpInfoWscale(fd int) (snd, rcv uint32, err error) {
	var b [256]byte
	l := uint32(len(b))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_TCP, unix.TCP_INFO,
		uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return 0, 0, fmt.Errorf("TCP_INFO: %w", errno)
	}
	if l < 8 {
		return 0, 0, fmt.Errorf("TCP_INFO: %d bytes", l)
	}
	return uint32(b[6] & 0xf), uint32(b[6] >> 4), nil
}

// readInet reads an inet socket of a frozen task through its taken fd:
// addresses, state and options, and for a TCP connection its queues and
// sequence numbers in repair mode (turned off again, and SO_REUSEADDR put
// back, before it returns, so the connection goes on once thawed). bad
// names what cannot be dumped.
func (s *state) readInet(e *fdEnt, fd int, established bool) (sk *inetSock, bad string, err error) {
	dom, typ, prot, err := sockDomain(fd)
	if err != nil {
		return nil, "", err
	}
	isInet, bad := inetKind(dom, typ, prot)
	if !isInet {
		return nil, "socket", nil
	}
	if bad != "" {
		return nil, bad, nil
	}
	ino := uint32(e.st.Ino)
	di, found, err := s.diag.lookup(e.t, s.selfNS[1], dom, prot, ino)
	if err != nil {
		return nil, "", err
	}
	if !found {
		// Sockets without a port are in no hash table, so sock_diag
		// does not list them: unbound and unconnected, in state CLOSE.
		sa, err := unix.Getsockname(fd)
		if err != nil {
			return nil, "", fmt.Errorf("getsockname: %w", err)
		}
		if _, port := addrWords(sa); *port != 0 {
			return nil, "", fmt.Errorf("socket:[%d] is not in sock_diag's list of the task's network namespace", ino)
		}
		di = diagInfo{state: tcp.StateClose}
	}
	ie := &criupb.InetSkEntry{Id: proto.Uint32(0), Ino: proto.Uint32(ino), Family: proto.Uint32(uint32(dom)),
		Type: proto.Uint32(uint32(typ)), Proto: proto.Uint32(uint32(prot)), State: proto.Uint32(uint32(di.state)),
		Flags: proto.Uint32(e.flags), Backlog: proto.Uint32(0), Fown: fownEntry(e.fown)}
	if sa, err := unix.Getsockname(fd); err == nil {
		ie.SrcAddr, ie.SrcPort = addrWords(sa)
	} else {
		return nil, "", fmt.Errorf("getsockname: %w", err)
	}
	if sa, err := unix.Getpeername(fd); err == nil {
		ie.DstAddr, ie.DstPort = addrWords(sa)
	} else if err != unix.ENOTCONN {
		return nil, "", fmt.Errorf("getpeername: %w", err)
	} else {
		ie.DstAddr, ie.DstPort = addrWords(nil)
		if dom == unix.AF_INET6 {
			ie.DstAddr = make([]uint32, 4)
		} else {
			ie.DstAddr = make([]uint32, 1)
		}
		ie.DstPort = proto.Uint32(0)
	}
	if di.hasShut {
		ie.Shutdown = criupb.SkShutdown(di.shutdown & 3).Enum()
	}
	if dom == unix.AF_INET6 {
		v, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		if err != nil {
			return nil, "", fmt.Errorf("IPV6_V6ONLY: %w", err)
		}
		ie.V6Only = proto.Bool(v != 0)
	}
	if ie.Opts, err = readInetSkOpts(fd, prot == unix.IPPROTO_TCP); err != nil {
		return nil, "", err
	}
	if ip, err := readIPOpts(fd, dom); err != nil {
		return nil, "", err
	} else {
		ie.IpOpts = ip
	}
	sk = &inetSock{entry: ie}
	if prot != unix.IPPROTO_TCP {
		return sk, "", nil
	}
	to := &criupb.TcpOptsEntry{}
	for _, o := range []struct {
		opt int
		dst **bool
	}{{unix.TCP_NODELAY, &to.Nodelay}, {unix.TCP_CORK, &to.Cork}} {
		v, err := unix.GetsockoptInt(fd, unix.SOL_TCP, o.opt)
		if err != nil {
			return nil, "", fmt.Errorf("getsockopt TCP %d: %w", o.opt, err)
		}
		if v != 0 {
			*o.dst = proto.Bool(true)
		}
	}
	ie.TcpOpts = to
	st := uint32(di.state)
	if p := tcpStateProblem(st, established); p != "" {
		return nil, p, nil
	}
	switch st {
	case tcp.StateListen:
		ie.Backlog = proto.Uint32(di.wqueue)
		if di.rqueue > 0 {
			if s.leaveRunning {
				return nil, pendingProblem(di.rqueue) + leaveRunningPending, nil
			}
			s.addPendingListener(e, fd, di.rqueue)
		}
		return sk, "", nil
	case tcp.StateClose:
		if ie.GetDstPort() != 0 {
			return nil, "closed TCP connection", nil
		}
		return sk, "", nil
	}
	if err := readStream(sk, fd, st); err != nil {
		return nil, "", fmt.Errorf("TCP repair read of %s: %w", describeInet(ie), err)
	}
	// Its other end in an accept queue: a pending client if that queue's
	// listener is in the tree (resolvePending).
	sk.pendingCand = s.isPendingClient(e.t, dom, ie)
	return sk, "", nil
}

// readStream reads a connection in repair mode: sequence numbers, both
// queues (peeked, not consumed), negotiated options, timestamp and window.
// Repair is turned off again without a window probe, and SO_REUSEADDR,
// which repair-off resets, is put back.
func readStream(sk *inetSock, fd int, st uint32) (err error) {
	reuse, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR)
	if err != nil {
		return fmt.Errorf("SO_REUSEADDR: %w", err)
	}
	inqLen, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	if err != nil {
		return fmt.Errorf("SIOCINQ: %w", err)
	}
	outqLen, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
	if err != nil {
		return fmt.Errorf("SIOCOUTQ: %w", err)
	}
	unsq, err := unix.IoctlGetInt(fd, unix.SIOCOUTQNSD)
	if err != nil {
		return fmt.Errorf("SIOCOUTQNSD: %w", err)
	}
	// Both counts include our FIN while it is not acknowledged (it takes
	// the last sequence number); the never-sent count while it is not
	// sent, which is so whenever anything is unsent.
	if st == tcp.StateFinWait1 || st == tcp.StateClosing || st == tcp.StateLastAck {
		if outqLen > 0 {
			outqLen--
		}
		if unsq > 0 {
			unsq--
		}
	}
	if err := tcp.SetRepair(fd, true); err != nil {
		return err
	}
	defer func() {
		if e := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF_NO_WP); e != nil {
			err = errors.Join(err, fmt.Errorf("turn repair off: %w", e))
		}
		if e := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, reuse); e != nil {
			err = errors.Join(err, fmt.Errorf("put SO_REUSEADDR back: %w", e))
		}
	}()
	info, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO)
	if err != nil {
		return fmt.Errorf("TCP_INFO: %w", err)
	}
	if uint32(info.State) != st {
		return fmt.Errorf("state %s, sock_diag said %s", tcp.StateName(uint32(info.State)), tcp.StateName(st))
	}
	if err := tcp.SelectQueue(fd, tcp.RecvQueue); err != nil {
		return err
	}
	inSeq, err := tcp.QueueSeq(fd)
	if err != nil {
		return err
	}
	if sk.inq, err = tcp.PeekQueue(fd, inqLen); err != nil {
		return fmt.Errorf("receive queue: %w", err)
	}
	if err := tcp.SelectQueue(fd, tcp.SendQueue); err != nil {
		return err
	}
	outSeq, err := tcp.QueueSeq(fd)
	if err != nil {
		return err
	}
	if sk.outq, err = tcp.PeekQueue(fd, outqLen); err != nil {
		return fmt.Errorf("send queue: %w", err)
	}
	if err := tcp.SelectQueue(fd, tcp.NoQueue); err != nil {
		return err
	}
	mss, err := unix.GetsockoptInt(fd, unix.SOL_TCP, unix.TCP_MAXSEG)
	if err != nil {
		return fmt.Errorf("TCP_MAXSEG: %w", err)
	}
	ts, err := unix.GetsockoptInt(fd, unix.SOL_TCP, unix.TCP_TIMESTAMP)
	if err != nil {
		return fmt.Errorf("TCP_TIMESTAMP: %w", err)
	}
	w, err := tcp.GetWindow(fd)
	if err != nil {
		return err
	}
	sndWscale, rcvWscale, err := tcpInfoWscale(fd)
	if err != nil {
		return err
	}
	e := &criupb.TcpStreamEntry{
		InqLen: proto.Uint32(uint32(len(sk.inq))), InqSeq: proto.Uint32(inSeq),
		OutqLen: proto.Uint32(uint32(len(sk.outq))), OutqSeq: proto.Uint32(outSeq),
		OptMask: proto.Uint32(uint32(info.Options)), SndWscale: proto.Uint32(sndWscale),
		RcvWscale: proto.Uint32(rcvWscale), MssClamp: proto.Uint32(uint32(mss)),
		UnsqLen: proto.Uint32(uint32(unsq)),
		SndWl1:  proto.Uint32(w.SndWl1), SndWnd: proto.Uint32(w.SndWnd), MaxWindow: proto.Uint32(w.MaxWindow),
		RcvWnd: proto.Uint32(w.RcvWnd), RcvWup: proto.Uint32(w.RcvWup),
	}
	if info.Options&tcp.OptTimestamps != 0 {
		e.Timestamp = proto.Uint32(uint32(ts))
	}
	if to := sk.entry.GetTcpOpts(); to != nil {
		e.Nodelay, e.Cork = proto.Bool(to.GetNodelay()), proto.Bool(to.GetCork())
	}
	sk.stream = e
	return nil
}

// addrWords converts a socket address to the image's form: the address
// as 32-bit words in network order as they lie in memory, and the port.
func addrWords(sa unix.Sockaddr) ([]uint32, *uint32) {
	var b []byte
	port := 0
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		b, port = a.Addr[:], a.Port
	case *unix.SockaddrInet6:
		b, port = a.Addr[:], a.Port
	default:
		return nil, proto.Uint32(0)
	}
	w := make([]uint32, len(b)/4)
	for i := range w {
		w[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
	return w, proto.Uint32(uint32(port))
}

func wordBytes(w []uint32) []byte {
	b := make([]byte, 4*len(w))
	for i, x := range w {
		binary.LittleEndian.PutUint32(b[4*i:], x)
	}
	return b
}

// describeInet names a socket for messages.
func describeInet(ie *criupb.InetSkEntry) string {
	p := tcp.Params{Family: ie.GetFamily(), Proto: ie.GetProto(), State: ie.GetState(),
		Src: wordBytes(ie.GetSrcAddr()), SrcPort: ie.GetSrcPort(), Dst: wordBytes(ie.GetDstAddr()), DstPort: ie.GetDstPort()}
	return p.Describe()
}

// readInetSkOpts reads sk_opts_entry of an inet socket: the SOL_SOCKET
// options of readSkOpts as recorded for inet (none of the unix-only
// SO_PASSCRED, SO_PASSSEC, SO_NO_CHECK and filter; SO_MARK even when 0;
// no SO_BUF_LOCK before Linux 5.14), and for TCP the keepalive settings.
func readInetSkOpts(fd int, isTCP bool) (*criupb.SkOptsEntry, error) {
	var so skOpts
	if err := readSkOpts(fd, false, &so); err != nil {
		return nil, err
	}
	o := &criupb.SkOptsEntry{
		SoSndbuf: proto.Uint32(so.sndbuf), SoRcvbuf: proto.Uint32(so.rcvbuf),
		SoSndTmoSec: proto.Uint64(uint64(so.sndTmo.Sec)), SoSndTmoUsec: proto.Uint64(uint64(so.sndTmo.Usec)),
		SoRcvTmoSec: proto.Uint64(uint64(so.rcvTmo.Sec)), SoRcvTmoUsec: proto.Uint64(uint64(so.rcvTmo.Usec)),
		Reuseaddr: proto.Bool(so.reuseaddr), SoReuseport: proto.Bool(so.reuseport), SoBroadcast: proto.Bool(so.broadcast),
		SoKeepalive: proto.Bool(so.keepalive), SoDontroute: proto.Bool(so.dontroute),
		SoPriority: proto.Uint32(so.priority), SoRcvlowat: proto.Uint32(so.rcvlowat), SoMark: proto.Uint32(so.mark),
		SoOobinline: proto.Uint32(so.oobinline),
	}
	if so.bufLock != nil {
		o.SoBufLock = proto.Uint32(*so.bufLock)
	}
	if so.linger != nil {
		o.SoLinger = proto.Uint32(*so.linger)
	}
	if so.boundDev != "" {
		o.SoBoundDev = proto.String(so.boundDev)
	}
	if !isTCP {
		return o, nil
	}
	for _, k := range []struct {
		opt  int
		dst  **uint32
		name string
	}{
		{unix.TCP_KEEPCNT, &o.TcpKeepcnt, "TCP_KEEPCNT"}, {unix.TCP_KEEPIDLE, &o.TcpKeepidle, "TCP_KEEPIDLE"},
		{unix.TCP_KEEPINTVL, &o.TcpKeepintvl, "TCP_KEEPINTVL"},
	} {
		v, err := unix.GetsockoptInt(fd, unix.SOL_TCP, k.opt)
		if err != nil {
			return nil, fmt.Errorf("getsockopt %s: %w", k.name, err)
		}
		*k.dst = proto.Uint32(uint32(v))
	}
	return o, nil
}

// readIPOpts reads ip_opts_entry: IP_FREEBIND and a non-zero TOS.
func readIPOpts(fd, dom int) (*criupb.IpOptsEntry, error) {
	o := &criupb.IpOptsEntry{}
	fb, err := unix.GetsockoptInt(fd, unix.SOL_IP, unix.IP_FREEBIND)
	if err != nil {
		return nil, fmt.Errorf("IP_FREEBIND: %w", err)
	}
	if fb != 0 {
		o.Freebind = proto.Bool(true)
	}
	level, opt := unix.SOL_IP, unix.IP_TOS
	if dom == unix.AF_INET6 {
		level, opt = unix.IPPROTO_IPV6, unix.IPV6_TCLASS
	}
	if tos, err := unix.GetsockoptInt(fd, level, opt); err == nil && tos != 0 {
		o.Tos = proto.Uint32(uint32(tos))
	}
	return o, nil
}

// tcpLock holds dups of a killed tree's TCP connections in repair mode:
// a socket closed in repair mode sends nothing to its peer, so a peer
// outside the tree sees neither a FIN nor a reset while the tree is away.
type tcpLock struct{ fds []int }

// lockConns turns repair on for every connection (pid, fd).
func lockConns(conns [][2]int) (*tcpLock, error) {
	l := &tcpLock{}
	for _, c := range conns {
		fd, err := takeFd(c[0], c[1])
		if err != nil {
			l.unlock()
			return nil, fmt.Errorf("pid %d fd %d: %w", c[0], c[1], err)
		}
		if err := tcp.SetRepair(fd, true); err != nil {
			unix.Close(fd)
			l.unlock()
			return nil, fmt.Errorf("pid %d fd %d: %w", c[0], c[1], err)
		}
		l.fds = append(l.fds, fd)
	}
	return l, nil
}

// unlock turns repair off again (the tree goes on running) and closes
// the dups.
func (l *tcpLock) unlock() {
	for _, fd := range l.fds {
		unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF_NO_WP)
		unix.Close(fd)
	}
	l.fds = nil
}

// release closes the dups once the tree is dead: the last reference of
// each socket goes, in repair mode.
func (l *tcpLock) release() {
	for _, fd := range l.fds {
		unix.Close(fd)
	}
	l.fds = nil
}
