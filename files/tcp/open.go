package tcp

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/scm"
	"golang.org/x/sys/unix"
)

// Addr formats an address and port for messages: 127.0.0.1:7000 or
// [::1]:7000. (Package net stays out of the lean helper binary.)
func Addr(ip []byte, port uint32) string {
	p := strconv.FormatUint(uint64(port), 10)
	switch len(ip) {
	case 4:
		return fmt.Sprintf("%d.%d.%d.%d:%s", ip[0], ip[1], ip[2], ip[3], p)
	case 16:
		return "[" + ip6String(ip) + "]:" + p
	}
	return fmt.Sprintf("%x:%s", ip, p)
}

// ip6String writes an IPv6 address in its RFC 5952 form: lowercase hex
// groups, the longest run of two or more zero groups as "::".
func ip6String(ip []byte) string {
	var g [8]uint16
	for i := range g {
		g[i] = uint16(ip[2*i])<<8 | uint16(ip[2*i+1])
	}
	best, bestLen := -1, 1
	for i := 0; i < 8; {
		if g[i] != 0 {
			i++
			continue
		}
		j := i
		for j < 8 && g[j] == 0 {
			j++
		}
		if j-i > bestLen {
			best, bestLen = i, j-i
		}
		i = j
	}
	var b strings.Builder
	for i := 0; i < 8; i++ {
		if i == best {
			b.WriteString("::")
			i += bestLen - 1
			continue
		}
		if i > 0 && i != best+bestLen {
			b.WriteByte(':')
		}
		b.WriteString(strconv.FormatUint(uint64(g[i]), 16))
	}
	return b.String()
}

// Describe names the socket for messages.
func (p *Params) Describe() string {
	proto := "tcp"
	if p.Proto == unix.IPPROTO_UDP {
		proto = "udp"
	}
	if p.Family == unix.AF_INET6 {
		proto += "6"
	}
	s := proto + " " + Addr(p.Src, p.SrcPort)
	if p.DstPort != 0 {
		s += " -> " + Addr(p.Dst, p.DstPort)
	}
	if p.Proto == unix.IPPROTO_TCP {
		s += " " + StateName(p.State)
	}
	return s
}

func sockaddr(family uint32, ip []byte, port uint32) (unix.Sockaddr, error) {
	switch family {
	case unix.AF_INET:
		if len(ip) != 4 {
			return nil, fmt.Errorf("IPv4 address of %d bytes", len(ip))
		}
		sa := &unix.SockaddrInet4{Port: int(port)}
		copy(sa.Addr[:], ip)
		return sa, nil
	case unix.AF_INET6:
		if len(ip) != 16 {
			return nil, fmt.Errorf("IPv6 address of %d bytes", len(ip))
		}
		sa := &unix.SockaddrInet6{Port: int(port)}
		copy(sa.Addr[:], ip)
		return sa, nil
	}
	return nil, fmt.Errorf("address family %d is not inet", family)
}

type opener struct {
	p Params
}

func (o *opener) Open(c *files.Context) (bool, error) {
	p := &o.p
	ce := c.Cloexec(p.File)
	typ := int(p.SkType)
	if ce {
		typ |= unix.SOCK_CLOEXEC
	}
	fd, err := unix.Socket(int(p.Family), typ, int(p.Proto))
	if err != nil {
		return false, fmt.Errorf("socket(%d, %d, %d): %w", p.Family, p.SkType, p.Proto, err)
	}
	// Closing a socket still in repair mode sends nothing to its peer and
	// leaves no port behind.
	if err := o.build(fd); err != nil {
		unix.Close(fd)
		return false, err
	}
	if err := o.finalOpts(fd); err != nil {
		unix.Close(fd)
		return false, err
	}
	if p.Flags&files.StatusFlagsMask != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, int(p.Flags)&files.StatusFlagsMask); err != nil {
			unix.Close(fd)
			return false, fmt.Errorf("set status flags %#o: %w", p.Flags, err)
		}
	}
	if err := p.Fown.Apply(c, fd); err != nil {
		unix.Close(fd)
		return false, err
	}
	if err := c.AdoptCloexec([]uint32{p.File}, []int{fd}, ce); err != nil {
		return false, err
	}
	if p.Mode == ModeRepair || (p.Mode != ModePlain && !p.Opts.ReuseAddr) {
		fd, own := c.FD(p.File), false
		if fd >= c.TempBase() {
			// No fd of this task refers to the socket (it only travels,
			// in flight): keep a reference for the after-tree step.
			nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, c.TempBase())
			if err != nil {
				return false, fmt.Errorf("keep the socket for after the tree: %w", err)
			}
			fd, own = nfd, true
		}
		c.AfterTree(func() error {
			err := o.afterTree(fd)
			if own {
				unix.Close(fd)
			}
			return err
		})
	}
	return true, nil
}

// build creates the socket's state: address, listen, connection.
func (o *opener) build(fd int) error {
	p := &o.p
	if p.Family == unix.AF_INET6 && p.Opts.V6Only {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fmt.Errorf("IPV6_V6ONLY: %w", err)
		}
	}
	if p.Opts.BoundDev != "" {
		if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, p.Opts.BoundDev); err != nil {
			return fmt.Errorf("SO_BINDTODEVICE %q: %w", p.Opts.BoundDev, err)
		}
	}
	if p.Opts.FreeBind {
		if err := setBool(fd, unix.SOL_IP, unix.IP_FREEBIND, true); err != nil {
			return fmt.Errorf("IP_FREEBIND: %w", err)
		}
	}
	if p.Mode == ModeRepair {
		return o.repair(fd)
	}
	if p.Mode == ModePlain || (p.Mode == ModePending && p.SrcPort == 0) {
		return nil
	}
	// Every socket on a port exists before any gets its recorded
	// SO_REUSEADDR back (after the tree is restored).
	if err := setBool(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, true); err != nil {
		return fmt.Errorf("SO_REUSEADDR: %w", err)
	}
	if p.Opts.ReusePort {
		if err := setBool(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, true); err != nil {
			return fmt.Errorf("SO_REUSEPORT: %w", err)
		}
	}
	if p.SrcPort != 0 || (p.Mode != ModeConnect && p.Mode != ModePending) {
		sa, err := sockaddr(p.Family, p.Src, p.SrcPort)
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, sa); err != nil {
			return fmt.Errorf("bind %s: %w", Addr(p.Src, p.SrcPort), err)
		}
	}
	switch p.Mode {
	case ModeListen:
		if err := unix.Listen(fd, int(p.Backlog)); err != nil {
			return fmt.Errorf("listen %s backlog %d: %w", Addr(p.Src, p.SrcPort), p.Backlog, err)
		}
	case ModeConnect:
		sa, err := sockaddr(p.Family, p.Dst, p.DstPort)
		if err != nil {
			return err
		}
		if err := unix.Connect(fd, sa); err != nil {
			return fmt.Errorf("connect %s: %w", Addr(p.Dst, p.DstPort), err)
		}
	case ModePending:
		if err := o.connectPending(fd); err != nil {
			return err
		}
	}
	if p.Opts.ShutdownRecorded && p.Opts.Shutdown != 0 {
		if err := unix.Shutdown(fd, int(p.Opts.Shutdown)-1); err != nil && err != unix.ENOTCONN {
			return fmt.Errorf("shutdown %d: %w", p.Opts.Shutdown, err)
		}
	}
	return nil
}

// repair rebuilds a TCP connection: sequence numbers, connect without a
// handshake, negotiated options, timestamp, the receive queue and the
// sent part of the send queue, and the window. Repair stays on.
func (o *opener) repair(fd int) error {
	p := &o.p
	s := &p.Stream
	if err := SetRepair(fd, true); err != nil {
		return err
	}
	// Room for the queues whatever the recorded buffer sizes; the
	// recorded ones are set afterwards.
	room := 2*(len(s.InQ)+len(s.OutQ)) + 4<<20
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, room/2); err != nil {
		return fmt.Errorf("SO_SNDBUFFORCE: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, room/2); err != nil {
		return fmt.Errorf("SO_RCVBUFFORCE: %w", err)
	}
	src, err := sockaddr(p.Family, p.Src, p.SrcPort)
	if err != nil {
		return err
	}
	if err := unix.Bind(fd, src); err != nil {
		return fmt.Errorf("bind %s: %w", Addr(p.Src, p.SrcPort), err)
	}
	inSeq, outSeq := s.InqSeq, s.OutqSeq
	if FinOnRecv(p.State) {
		inSeq--
	}
	if FinOnSend(p.State) {
		outSeq--
	}
	if err := SelectQueue(fd, RecvQueue); err != nil {
		return err
	}
	if err := SetQueueSeq(fd, inSeq-uint32(len(s.InQ))); err != nil {
		return err
	}
	if err := SelectQueue(fd, SendQueue); err != nil {
		return err
	}
	if err := SetQueueSeq(fd, outSeq-uint32(len(s.OutQ))); err != nil {
		return err
	}
	dst, err := sockaddr(p.Family, p.Dst, p.DstPort)
	if err != nil {
		return err
	}
	if err := unix.Connect(fd, dst); err != nil {
		return fmt.Errorf("repair connect %s: %w", Addr(p.Dst, p.DstPort), err)
	}
	// Options before any byte is queued: the kernel takes them only on a
	// connection that has sent nothing.
	opts := []unix.TCPRepairOpt{{Code: unix.TCPOPT_MAXSEG, Val: s.MssClamp}}
	if s.OptMask&OptWscale != 0 {
		opts = append(opts, unix.TCPRepairOpt{Code: unix.TCPOPT_WINDOW, Val: s.SndWscale | s.RcvWscale<<16})
	}
	if s.OptMask&OptSack != 0 {
		opts = append(opts, unix.TCPRepairOpt{Code: unix.TCPOPT_SACK_PERMITTED})
	}
	if s.OptMask&OptTimestamps != 0 {
		opts = append(opts, unix.TCPRepairOpt{Code: unix.TCPOPT_TIMESTAMP})
	}
	if err := unix.SetsockoptTCPRepairOpt(fd, unix.SOL_TCP, unix.TCP_REPAIR_OPTIONS, opts); err != nil {
		return fmt.Errorf("TCP_REPAIR_OPTIONS %+v: %w", opts, err)
	}
	if s.OptMask&OptTimestamps != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_TIMESTAMP, int(int32(s.Timestamp))); err != nil {
			return fmt.Errorf("TCP_TIMESTAMP %d: %w", s.Timestamp, err)
		}
	}
	if err := SelectQueue(fd, RecvQueue); err != nil {
		return err
	}
	if err := fillQueue(fd, s.InQ); err != nil {
		return fmt.Errorf("receive queue: %w", err)
	}
	if err := SelectQueue(fd, SendQueue); err != nil {
		return err
	}
	if err := fillQueue(fd, s.OutQ[:len(s.OutQ)-int(o.unsent())]); err != nil {
		return fmt.Errorf("send queue: %w", err)
	}
	if err := SelectQueue(fd, NoQueue); err != nil {
		return err
	}
	if s.HasWindow {
		w := s.Window
		if FinOnRecv(p.State) {
			// The peer's FIN is replayed later (halfClose).
			w.RcvWup--
			w.RcvWnd++
		}
		if err := SetWindow(fd, w); err != nil {
			return err
		}
	}
	return nil
}

// halfClosed finishes a half-closed connection, in repair mode, once
// every socket of the tree exists (the segments it provokes reach a live
// peer): our FIN goes in as sent (repair mode transmits nothing), the
// peer's FIN or its acknowledgement of ours is replayed from its address.
// LAST_ACK had the peer's FIN before sending its own; CLOSING the
// reverse.
func (o *opener) halfClosed(fd int) error {
	p := &o.p
	if p.State == StateLastAck {
		if err := o.halfClose(fd, true, false); err != nil {
			return err
		}
	}
	if FinOnSend(p.State) && !o.finUnsent() {
		if err := SelectQueue(fd, SendQueue); err != nil {
			return err
		}
		if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
			return fmt.Errorf("shutdown(SHUT_WR) for the recorded FIN: %w", err)
		}
		if err := SelectQueue(fd, NoQueue); err != nil {
			return err
		}
	}
	switch p.State {
	case StateCloseWait, StateClosing:
		return o.halfClose(fd, true, false)
	case StateFinWait2:
		return o.halfClose(fd, false, true)
	}
	return nil
}

// fillQueue queues data on the selected repair queue. The kernel wants
// one linear buffer per call; a chunk too large for it is halved.
func fillQueue(fd int, data []byte) error {
	chunk := 64 << 10
	for len(data) > 0 {
		n := min(chunk, len(data))
		w, err := unix.SendmsgN(fd, data[:n], nil, nil, unix.MSG_DONTWAIT)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.ENOMEM && chunk > 1024:
			chunk /= 2
			continue
		case err != nil:
			return fmt.Errorf("queue %d bytes: %w", len(data), err)
		}
		data = data[w:]
	}
	return nil
}

// finalOpts sets the recorded options. SO_REUSEADDR comes back after the
// tree is restored.
func (o *opener) finalOpts(fd int) error {
	p := &o.p
	op := &p.Opts
	type opt struct {
		level, name int
		v           int
		set         bool
		what        string
	}
	opts := []opt{
		{unix.SOL_SOCKET, unix.SO_PRIORITY, int(op.Priority), op.Priority != 0, "SO_PRIORITY"},
		{unix.SOL_SOCKET, unix.SO_RCVLOWAT, int(op.RcvLowat), op.RcvLowat > 1, "SO_RCVLOWAT"},
		{unix.SOL_SOCKET, unix.SO_MARK, int(op.Mark), op.Mark != 0, "SO_MARK"},
		{unix.SOL_SOCKET, unix.SO_BROADCAST, 1, op.Broadcast, "SO_BROADCAST"},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, op.Keepalive, "SO_KEEPALIVE"},
		{unix.SOL_SOCKET, unix.SO_DONTROUTE, 1, op.DontRoute, "SO_DONTROUTE"},
		{unix.SOL_SOCKET, unix.SO_OOBINLINE, 1, op.OOBInline, "SO_OOBINLINE"},
	}
	if p.Mode == ModePlain && op.ReuseAddr {
		opts = append(opts, opt{unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, true, "SO_REUSEADDR"})
	}
	if p.Mode == ModePlain && op.ReusePort {
		opts = append(opts, opt{unix.SOL_SOCKET, unix.SO_REUSEPORT, 1, true, "SO_REUSEPORT"})
	}
	if p.Proto == unix.IPPROTO_TCP {
		opts = append(opts,
			opt{unix.SOL_TCP, unix.TCP_KEEPCNT, int(op.KeepCnt), op.KeepCnt != 0, "TCP_KEEPCNT"},
			opt{unix.SOL_TCP, unix.TCP_KEEPIDLE, int(op.KeepIdle), op.KeepIdle != 0, "TCP_KEEPIDLE"},
			opt{unix.SOL_TCP, unix.TCP_KEEPINTVL, int(op.KeepIntvl), op.KeepIntvl != 0, "TCP_KEEPINTVL"},
			opt{unix.SOL_TCP, unix.TCP_NODELAY, 1, op.Nodelay, "TCP_NODELAY"},
			opt{unix.SOL_TCP, unix.TCP_CORK, 1, op.Cork, "TCP_CORK"})
	}
	if op.HasTOS {
		if p.Family == unix.AF_INET6 {
			opts = append(opts, opt{unix.IPPROTO_IPV6, unix.IPV6_TCLASS, int(op.TOS), true, "IPV6_TCLASS"})
		} else {
			opts = append(opts, opt{unix.SOL_IP, unix.IP_TOS, int(op.TOS), true, "IP_TOS"})
		}
	}
	if op.HasTTL {
		if p.Family == unix.AF_INET6 {
			opts = append(opts, opt{unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, int(op.TTL), true, "IPV6_UNICAST_HOPS"})
		} else {
			opts = append(opts, opt{unix.SOL_IP, unix.IP_TTL, int(op.TTL), true, "IP_TTL"})
		}
	}
	for _, x := range opts {
		if !x.set {
			continue
		}
		if err := unix.SetsockoptInt(fd, x.level, x.name, x.v); err != nil {
			return fmt.Errorf("%s %d: %w", x.what, x.v, err)
		}
	}
	if op.HasLinger {
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: int32(op.Linger)}); err != nil {
			return fmt.Errorf("SO_LINGER %d: %w", op.Linger, err)
		}
	}
	for _, t := range []struct {
		name int
		v    [2]uint64
		what string
	}{{unix.SO_SNDTIMEO, op.SndTmo, "SO_SNDTIMEO"}, {unix.SO_RCVTIMEO, op.RcvTmo, "SO_RCVTIMEO"}} {
		if t.v == [2]uint64{} {
			continue
		}
		tv := unix.Timeval{Sec: int64(t.v[0]), Usec: int64(t.v[1])}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, t.name, &tv); err != nil {
			return fmt.Errorf("%s %v: %w", t.what, t.v, err)
		}
	}
	// Buffer sizes: getsockopt reports what the kernel keeps, twice what
	// was asked, so half of the record restores it; then the lock bits
	// as recorded (an unlocked buffer keeps auto-tuning).
	if op.SndBuf != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, int(op.SndBuf/2)); err != nil {
			return fmt.Errorf("SO_SNDBUFFORCE %d: %w", op.SndBuf/2, err)
		}
	}
	if op.RcvBuf != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, int(op.RcvBuf/2)); err != nil {
			return fmt.Errorf("SO_RCVBUFFORCE %d: %w", op.RcvBuf/2, err)
		}
	}
	lock := op.BufLock
	if !op.HasBufLock {
		lock = 0
	}
	// Kernels before 5.14 have no SO_BUF_LOCK: the buffers then stay
	// locked at their recorded sizes.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BUF_LOCK, int(lock)); err != nil && !errors.Is(err, unix.ENOPROTOOPT) {
		return fmt.Errorf("SO_BUF_LOCK %d: %w", lock, err)
	}
	return nil
}

// unsent is how much of the send queue is written as ordinary data after
// repair is off: the never-sent tail.
func (o *opener) unsent() uint32 { return o.p.Stream.UnsqLen }

// finUnsent reports whether our FIN had not been sent: it follows
// never-sent data. It is then queued by an ordinary shutdown after that
// data, once repair is off, and stays unsent as it was.
func (o *opener) finUnsent() bool { return FinOnSend(o.p.State) && o.p.Stream.UnsqLen > 0 }

// afterTree runs once every task of the tree is restored: the half-close
// replay, repair off, the never-sent tail of the send queue, and the
// recorded SO_REUSEADDR.
func (o *opener) afterTree(fd int) error {
	p := &o.p
	if p.Mode == ModeRepair {
		if err := o.halfClosed(fd); err != nil {
			return fmt.Errorf("%s at fd %d: %w", p.Describe(), fd, err)
		}
		if err := SetRepair(fd, false); err != nil {
			return fmt.Errorf("%s at fd %d: %w", p.Describe(), fd, err)
		}
		if tail := p.Stream.OutQ[len(p.Stream.OutQ)-int(o.unsent()):]; len(tail) > 0 {
			if err := o.sendTail(fd, tail); err != nil {
				return fmt.Errorf("%s at fd %d: never-sent data: %w", p.Describe(), fd, err)
			}
		}
		if o.finUnsent() {
			if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
				return fmt.Errorf("%s at fd %d: shutdown(SHUT_WR) after the never-sent data: %w", p.Describe(), fd, err)
			}
		}
	}
	// Repair off resets the socket's reuse flag; everything else had it
	// forced on.
	if err := setBool(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, p.Opts.ReuseAddr); err != nil {
		return fmt.Errorf("%s at fd %d: SO_REUSEADDR: %w", p.Describe(), fd, err)
	}
	return nil
}

// sendTail writes the never-sent bytes as ordinary data, with room made
// for them in the send buffer, then puts the recorded buffer size and
// lock back.
func (o *opener) sendTail(fd int, tail []byte) error {
	room := 2*len(tail) + 4<<20
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, room/2); err != nil {
		return fmt.Errorf("SO_SNDBUFFORCE: %w", err)
	}
	if err := sendAll(fd, tail, 10*time.Second); err != nil {
		return err
	}
	op := &o.p.Opts
	if op.SndBuf != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, int(op.SndBuf/2)); err != nil {
			return fmt.Errorf("SO_SNDBUFFORCE %d: %w", op.SndBuf/2, err)
		}
	}
	lock := op.BufLock
	if !op.HasBufLock {
		lock = 0
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BUF_LOCK, int(lock)); err != nil && !errors.Is(err, unix.ENOPROTOOPT) {
		return fmt.Errorf("SO_BUF_LOCK %d: %w", lock, err)
	}
	return nil
}

// sendAll writes data as ordinary sends, waiting for room at most d.
func sendAll(fd int, data []byte, d time.Duration) error {
	deadline := time.Now().Add(d)
	for len(data) > 0 {
		n, err := unix.SendmsgN(fd, data, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if _, err := scm.Wait(deadline, "room in the send buffer", unix.PollFd{Fd: int32(fd), Events: unix.POLLOUT}); err != nil {
				return fmt.Errorf("%d bytes left: %w", len(data), err)
			}
			continue
		case err != nil:
			return err
		}
		data = data[n:]
	}
	return nil
}

func setBool(fd, level, name int, on bool) error {
	v := 0
	if on {
		v = 1
	}
	return unix.SetsockoptInt(fd, level, name, v)
}

func init() {
	files.Register(Type, func(spec *files.OpenSpec) (files.Opener, error) {
		if len(spec.Files) != 1 {
			return nil, fmt.Errorf("inet socket spec publishes %d files, want 1", len(spec.Files))
		}
		o := &opener{}
		if err := files.DecodeData(spec.Data, &o.p); err != nil {
			return nil, fmt.Errorf("inet parameters: %w", err)
		}
		if o.p.File != spec.Files[0] {
			return nil, fmt.Errorf("inet parameters name file id %d where the plan has %d", o.p.File, spec.Files[0])
		}
		return o, nil
	})
}
