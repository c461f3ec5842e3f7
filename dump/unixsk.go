package dump

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Unix sockets: each socket is read once (through the first fd or
// in-flight copy met), with sock_diag for its state, name, peer, pending
// connections and queue sizes, getsockopt for its options, SIOCUNIXFILE
// for the file a path-bound socket is bound to, and its receive queue
// peeked without being consumed (SO_PEEK_OFF + MSG_PEEK). Files carried in
// the queue with SCM_RIGHTS become in-flight fdEnts of their own.

// Socket states (TCP_* codes, as sock_diag reports them).
const (
	tcpEstablished = 1
	tcpClose       = 7
	tcpListen      = 10
)

// uflags of unix_sk_entry.
const (
	uskExtern = 1
)

// Ioctls x/sys does not name.
const (
	siocUnixFile = 0x89e0 // SIOCPROTOPRIVATE: an O_PATH fd of the bound file
)

// maxInflightDepth bounds the nesting of sockets carried in the queues of
// sockets carried in queues ...
const maxInflightDepth = 8

// skOpts are the options recorded in sk_opts_entry.
type skOpts struct {
	sndbuf, rcvbuf       uint32
	sndTmo, rcvTmo       unix.Timeval
	reuseaddr            bool
	priority, rcvlowat   uint32
	mark                 uint32
	passcred, passsec    bool
	dontroute, noCheck   bool
	reuseport, broadcast bool
	keepalive            bool
	oobinline            uint32
	bufLock              *uint32 // nil before Linux 5.14
	linger               *uint32 // SO_LINGER when enabled
	boundDev             string
	filter               []uint64
}

// unixSock is one unix socket of the tree (held at an fd or in flight).
type unixSock struct {
	ino     uint32
	diag    *unixDiag
	netns   uint64 // inode of its network namespace
	typ     int    // SO_TYPE
	opts    skOpts
	perms   *[3]uint32 // mode, uid, gid of the bound file (path names)
	deleted bool       // bound to a path that was unlinked (or replaced)
	nameDir string     // for a relative name: the directory it was bound in
	packets []*skPacket
	peer    uint32    // the peer recorded (a pending connection's: the listener)
	first   *fdEnt    // the first fd (or in-flight copy) met
	ext     *unixDiag // the external peer written as USK_EXTERN (--ext-unix-sk)
}

// skPacket is one queued packet (a stream's queue is cut where SCM_RIGHTS
// data begins and ends, as recvmsg returns it).
type skPacket struct {
	data   []byte
	rights []*fdEnt // files carried with SCM_RIGHTS, in order
}

// socketFamily reads SO_DOMAIN.
func socketFamily(fd int) (int, error) {
	f, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return 0, fmt.Errorf("SO_DOMAIN: %w", err)
	}
	return f, nil
}

// socketByFd judges socket local (prescan, the dumper's copy): "" for a
// unix socket, and otherwise what it is.
func socketByFd(local int) string {
	fam, err := socketFamily(local)
	if err != nil {
		return "socket"
	}
	if fam == unix.AF_UNIX {
		return ""
	}
	return familyName(fam)
}

// familyName names a socket family in refusals.
func familyName(f int) string {
	switch f {
	case unix.AF_INET:
		return "inet socket"
	case unix.AF_INET6:
		return "inet6 socket"
	case unix.AF_NETLINK:
		return "netlink socket"
	case unix.AF_PACKET:
		return "packet socket"
	}
	return fmt.Sprintf("socket of family %d", f)
}

// socketNetns returns the inode of the network namespace of socket fd
// and, when it is not the dumper's own, an fd of it (else -1).
func (s *state) socketNetns(fd int) (uint64, int, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCGSKNS, 0)
	if e != 0 {
		return 0, -1, fmt.Errorf("SIOCGSKNS: %w", e)
	}
	nsfd := int(r)
	unix.CloseOnExec(nsfd)
	var st unix.Stat_t
	if err := unix.Fstat(nsfd, &st); err != nil {
		unix.Close(nsfd)
		return 0, -1, fmt.Errorf("fstat netns: %w", err)
	}
	if st.Ino == s.selfNS[1] {
		unix.Close(nsfd)
		return st.Ino, -1, nil
	}
	return st.Ino, nsfd, nil
}

// diagFor returns the sock_diag table of the network namespace of socket
// fd, dumping it the first time that namespace is met.
func (s *state) diagFor(fd int) (uint64, unixDiagTable, error) {
	ns, nsfd, err := s.socketNetns(fd)
	if err != nil {
		return 0, nil, err
	}
	if nsfd >= 0 {
		defer unix.Close(nsfd)
	}
	if tab, ok := s.diags[ns]; ok {
		return ns, tab, nil
	}
	tab, err := unixDiagDump(nsfd)
	if err != nil {
		return 0, nil, err
	}
	if s.diags == nil {
		s.diags = map[uint64]unixDiagTable{}
	}
	s.diags[ns] = tab
	return ns, tab, nil
}

// readUnix reads the unix socket behind e (local is the dumper's copy of
// it). A socket met before (another fd, or in flight) is only linked.
func (s *state) readUnix(e *fdEnt, local int, depth int) (*UnsupportedError, error) {
	ino := uint32(e.st.Ino)
	if sk := s.socks[ino]; sk != nil {
		e.usk = sk
		return nil, nil
	}
	ns, tab, err := s.diagFor(local)
	if err != nil {
		return nil, err
	}
	d := tab[ino]
	if d == nil {
		return nil, fmt.Errorf("socket:[%d] is missing from sock_diag", ino)
	}
	sk := &unixSock{ino: ino, diag: d, netns: ns, first: e, peer: d.peer}
	if s.socks == nil {
		s.socks = map[uint32]*unixSock{}
	}
	s.socks[ino] = sk
	s.sockList = append(s.sockList, sk)
	e.usk = sk
	if sk.typ, err = unix.GetsockoptInt(local, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
		return nil, fmt.Errorf("SO_TYPE: %w", err)
	}
	if err := readSkOpts(local, true, &sk.opts); err != nil {
		return nil, err
	}
	if len(d.name) > 0 && d.name[0] != 0 {
		pid := e.ownerPid()
		if err := sk.readBoundFile(local, pid); err != nil {
			return nil, fmt.Errorf("socket:[%d] bound to %q: %w", ino, d.name, err)
		}
	}
	if d.state == tcpListen {
		return nil, nil // its queue holds pending connections (icons)
	}
	if sk.typ == unix.SOCK_STREAM {
		// Urgent data (MSG_OOB) would be peeked as ordinary bytes and
		// restored inline: refuse it. A peek does not consume it; EINVAL
		// means there is none.
		var b [1]byte
		if n, _, err := unix.Recvfrom(local, b[:], unix.MSG_OOB|unix.MSG_PEEK|unix.MSG_DONTWAIT); err == nil && n == 1 {
			return sk.refuse("it holds urgent data (MSG_OOB), which a restore would deliver inline"), nil
		}
	}
	raw, err := peekQueue(local, sk.typ, d.shutdown&1 != 0, &s.skBuf)
	if err != nil {
		return nil, fmt.Errorf("socket:[%d]: peek the queue: %w", ino, err)
	}
	var bad *UnsupportedError
	for i, p := range raw {
		pkt := &skPacket{data: p.data}
		sk.packets = append(sk.packets, pkt)
		for j, fd := range p.fds {
			if bad != nil || err != nil {
				unix.Close(fd)
				continue
			}
			var in *fdEnt
			in, bad, err = s.readInflight(fd, e, ino, depth+1)
			if err != nil {
				err = fmt.Errorf("socket:[%d]: packet %d, file %d in flight: %w", ino, i, j, err)
				continue
			}
			if in != nil {
				pkt.rights = append(pkt.rights, in)
			}
		}
	}
	return bad, err
}

// readInflight takes over fd, received with MSG_PEEK from the queue of
// socket:[via] (found through carrier), as a file that may exist only in
// flight. It stays open until the dump ends (kcmp and data peeks need it).
func (s *state) readInflight(fd int, carrier *fdEnt, via uint32, depth int) (*fdEnt, *UnsupportedError, error) {
	s.inflight = append(s.inflight, fd)
	top := carrier
	for top.carrier != nil {
		top = top.carrier
	}
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return nil, nil, err
	}
	e := &fdEnt{fd: -1, local: fd, link: link, carrier: top, via: via}
	if depth > maxInflightDepth {
		return nil, e.unsupported(fmt.Sprintf("file nested more than %d sockets deep", maxInflightDepth)), nil
	}
	if typ := unsupportedByLink(link); typ != "" && !strings.HasPrefix(link, "socket:") {
		return nil, e.unsupported(typ), nil
	}
	fi, err := readFdInfo(os.Getpid(), fd)
	if err != nil {
		return nil, nil, err
	}
	e.pos, e.mntID, e.flags = fi.pos, fi.mntID, fi.flags&^unix.O_CLOEXEC
	if err := unix.Fstat(fd, &e.st); err != nil {
		return nil, nil, fmt.Errorf("fstat: %w", err)
	}
	bad, err := s.inspect(e, fd, depth)
	if bad != nil || err != nil {
		return nil, bad, err
	}
	s.all = append(s.all, e)
	return e, nil, nil
}

// readBoundFile records the owner, mode and state of the file a path-bound
// socket is bound to, as seen through SIOCUNIXFILE. The file counts as
// deleted when it was unlinked, or when the name no longer leads to it
// from the root of task pid (it was renamed, or replaced).
func (sk *unixSock) readBoundFile(local, pid int) error {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(local), siocUnixFile, 0)
	if e != 0 {
		return fmt.Errorf("SIOCUNIXFILE: %w", e)
	}
	fd := int(r)
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("fstat the bound file: %w", err)
	}
	sk.perms = &[3]uint32{st.Mode, st.Uid, st.Gid}
	path, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return err
	}
	if strings.HasSuffix(path, deletedSuffix) {
		sk.deleted = true
		path = strings.TrimSuffix(path, deletedSuffix)
	}
	name := strings.TrimRight(string(sk.diag.name), "\x00")
	if strings.HasPrefix(name, "/") && !sk.deleted {
		var at unix.Stat_t
		err := unix.Stat(fmt.Sprintf("/proc/%d/root%s", pid, name), &at)
		if err != nil || at.Dev != st.Dev || at.Ino != st.Ino {
			sk.deleted = true
		}
	}
	if !strings.HasPrefix(name, "/") {
		dir, ok := strings.CutSuffix(path, "/"+strings.TrimPrefix(name, "./"))
		if !ok {
			return fmt.Errorf("relative name %q does not end the bound file's path %q", name, path)
		}
		if dir == "" {
			dir = "/"
		}
		sk.nameDir = dir
	}
	return nil
}

// readSkOpts reads the SOL_SOCKET options CRIU records in sk_opts_entry,
// of a unix or an inet socket (skOptsEntry and readInetSkOpts pick the
// fields each family records). SO_PASSCRED, SO_PASSSEC, SO_NO_CHECK and
// the filter are read for unix sockets only (isUnix): inet's entry does
// not record them (and a TCP socket refuses SO_PASSCRED).
func readSkOpts(fd int, isUnix bool, o *skOpts) error {
	geti := func(opt int, name string) (uint32, error) {
		v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, opt)
		if err != nil {
			return 0, fmt.Errorf("getsockopt %s: %w", name, err)
		}
		return uint32(v), nil
	}
	getb := func(opt int, name string) (bool, error) {
		v, err := geti(opt, name)
		return v != 0, err
	}
	var err error
	var errs []error
	add := func(e error) {
		if e != nil {
			errs = append(errs, e)
		}
	}
	o.sndbuf, err = geti(unix.SO_SNDBUF, "SO_SNDBUF")
	add(err)
	o.rcvbuf, err = geti(unix.SO_RCVBUF, "SO_RCVBUF")
	add(err)
	o.priority, err = geti(unix.SO_PRIORITY, "SO_PRIORITY")
	add(err)
	o.rcvlowat, err = geti(unix.SO_RCVLOWAT, "SO_RCVLOWAT")
	add(err)
	o.mark, err = geti(unix.SO_MARK, "SO_MARK")
	add(err)
	for _, t := range []struct {
		opt  int
		tv   *unix.Timeval
		name string
	}{{unix.SO_SNDTIMEO, &o.sndTmo, "SO_SNDTIMEO"}, {unix.SO_RCVTIMEO, &o.rcvTmo, "SO_RCVTIMEO"}} {
		tv, err := unix.GetsockoptTimeval(fd, unix.SOL_SOCKET, t.opt)
		if err != nil {
			add(fmt.Errorf("getsockopt %s: %w", t.name, err))
			continue
		}
		*t.tv = *tv
	}
	type boolOpt struct {
		opt  int
		v    *bool
		name string
	}
	bools := []boolOpt{
		{unix.SO_REUSEADDR, &o.reuseaddr, "SO_REUSEADDR"},
		{unix.SO_DONTROUTE, &o.dontroute, "SO_DONTROUTE"},
		{unix.SO_REUSEPORT, &o.reuseport, "SO_REUSEPORT"},
		{unix.SO_BROADCAST, &o.broadcast, "SO_BROADCAST"},
		{unix.SO_KEEPALIVE, &o.keepalive, "SO_KEEPALIVE"},
	}
	if isUnix {
		bools = append(bools,
			boolOpt{unix.SO_PASSCRED, &o.passcred, "SO_PASSCRED"},
			boolOpt{unix.SO_PASSSEC, &o.passsec, "SO_PASSSEC"},
			boolOpt{unix.SO_NO_CHECK, &o.noCheck, "SO_NO_CHECK"})
	}
	for _, b := range bools {
		*b.v, err = getb(b.opt, b.name)
		add(err)
	}
	o.oobinline, err = geti(unix.SO_OOBINLINE, "SO_OOBINLINE")
	add(err)
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BUF_LOCK); err == nil {
		bl := uint32(v)
		o.bufLock = &bl
	} else if !errors.Is(err, unix.ENOPROTOOPT) { // before Linux 5.14
		add(fmt.Errorf("getsockopt SO_BUF_LOCK: %w", err))
	}
	if l, err := unix.GetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER); err != nil {
		add(fmt.Errorf("getsockopt SO_LINGER: %w", err))
	} else if l.Onoff != 0 {
		v := uint32(l.Linger)
		o.linger = &v
	}
	if dev, err := unix.GetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE); err == nil {
		o.boundDev = dev
	} else if !errors.Is(err, unix.ENOPROTOOPT) {
		add(fmt.Errorf("getsockopt SO_BINDTODEVICE: %w", err))
	}
	if isUnix {
		o.filter, err = socketFilter(fd)
		add(err)
	}
	return errors.Join(errs...)
}

// socketFilter reads an attached classic BPF filter (SO_GET_FILTER), each
// instruction encoded the way sk_opts_entry.so_filter holds it, the same
// on every architecture: code << 48 | jt << 40 | jf << 32 | k.
func socketFilter(fd int) ([]uint64, error) {
	var n uint32 // 0: ask for the number of instructions
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_GET_FILTER, 0, uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 {
		return nil, fmt.Errorf("getsockopt SO_GET_FILTER: %w", e)
	}
	if n == 0 {
		return nil, nil
	}
	prog := make([]unix.SockFilter, n)
	ln := n // in instructions, not bytes
	_, _, e = unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_GET_FILTER, uintptr(unsafe.Pointer(&prog[0])), uintptr(unsafe.Pointer(&ln)), 0)
	if e != 0 {
		return nil, fmt.Errorf("getsockopt SO_GET_FILTER: %w", e)
	}
	out := make([]uint64, min(ln, n))
	for i := range out {
		f := prog[i]
		out[i] = uint64(f.Code)<<48 | uint64(f.Jt)<<40 | uint64(f.Jf)<<32 | uint64(f.K)
	}
	return out, nil
}

// rawPacket is one peeked packet with the fds it carries (new fds of the
// dumper, close-on-exec).
type rawPacket struct {
	data []byte
	fds  []int
}

// maxPackets bounds one queue peek, so that a kernel that keeps returning
// the same packet cannot make the dump loop.
const maxPackets = 1 << 22

// peekQueue copies the receive queue of unix socket fd without consuming
// it: the peek offset is set to 0 and every packet is read with MSG_PEEK,
// which advances it; afterwards the socket's own peek offset is put back.
// Datagram and seqpacket boundaries are kept. shutRcv says the socket
// cannot receive any more (then an empty read means the end). scratch is
// a buffer kept from one call to the next (grown as needed).
func peekQueue(fd, typ int, shutRcv bool, scratch *[]byte) (pkts []rawPacket, err error) {
	orig, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF)
	if err != nil {
		return nil, fmt.Errorf("getsockopt SO_PEEK_OFF: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0); err != nil {
		return nil, fmt.Errorf("setsockopt SO_PEEK_OFF 0: %w", err)
	}
	defer func() {
		if rerr := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, orig); rerr != nil {
			err = errors.Join(err, fmt.Errorf("put back SO_PEEK_OFF %d: %w", orig, rerr))
		}
		if err != nil {
			for _, p := range pkts {
				for _, f := range p.fds {
					unix.Close(f)
				}
			}
			pkts = nil
		}
	}()
	stream := typ == unix.SOCK_STREAM
	size := 1 << 16
	if inq, err := unix.IoctlGetInt(fd, unix.SIOCINQ); err == nil && inq > size {
		size = inq
	}
	if len(*scratch) < size {
		*scratch = make([]byte, size)
	}
	buf := *scratch
	var oobArr [1536]byte // room for 253 fds, credentials and more
	oob := oobArr[:]
	flags := unix.MSG_PEEK | unix.MSG_DONTWAIT | unix.MSG_CMSG_CLOEXEC
	if !stream {
		flags |= unix.MSG_TRUNC // return a datagram's real length
	}
	off := 0
	for range maxPackets {
		n, oobn, rflags, _, err := unix.Recvmsg(fd, buf, oob, flags)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			return pkts, nil
		}
		if err != nil {
			return pkts, fmt.Errorf("recvmsg MSG_PEEK at offset %d: %w", off, err)
		}
		fds, cerr := rightsOf(oob[:oobn])
		closeFds := func() {
			for _, f := range fds {
				unix.Close(f)
			}
		}
		if cerr != nil {
			closeFds() // those of the messages parsed before the bad one
			return pkts, cerr
		}
		if rflags&unix.MSG_CTRUNC != 0 {
			closeFds()
			return pkts, fmt.Errorf("control data truncated at offset %d", off)
		}
		if !stream && n > len(buf) {
			// Too long for the buffer: peek it again, whole.
			closeFds()
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, off); err != nil {
				return pkts, fmt.Errorf("setsockopt SO_PEEK_OFF %d: %w", off, err)
			}
			*scratch = make([]byte, n)
			buf = *scratch
			continue
		}
		if n == 0 && len(fds) == 0 && (stream || shutRcv) {
			return pkts, nil // end of stream, or nothing more to receive
		}
		pkts = append(pkts, rawPacket{data: append([]byte(nil), buf[:n]...), fds: fds})
		off += n
	}
	return pkts, fmt.Errorf("more than %d packets queued", maxPackets)
}

// rightsOf returns the fds of the SCM_RIGHTS messages in oob (other
// control messages, such as credentials, are ignored).
func rightsOf(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("control data: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET {
			continue
		}
		switch m.Header.Type {
		case unix.SCM_RIGHTS:
			f, err := unix.ParseUnixRights(&m)
			if err != nil {
				return fds, fmt.Errorf("SCM_RIGHTS: %w", err)
			}
			fds = append(fds, f...)
		case unix.SCM_PIDFD:
			// SO_PASSPIDFD hands the dumper a pidfd of the sender
			// with every packet: not part of the queue, close it.
			if len(m.Data) >= 4 {
				unix.Close(int(int32(binary.NativeEndian.Uint32(m.Data))))
			}
		}
	}
	return fds, nil
}

// resolveUnix checks every socket's peer once all of the tree has been
// read: a pending connection's client gets the listener as its peer,
// peers outside the tree are refused (or, with ExtUnixSk, recorded as
// external), and states restore cannot rebuild are refused like CRIU
// refuses them.
func (s *state) resolveUnix() []error {
	var errs []error
	// Pending connections, by client inode: to the tree's listeners, and
	// to any other listener of the namespaces seen (a client of one is
	// connected outside the tree).
	icons := map[uint32]*unixSock{}
	outIcons := map[uint32]*unixDiag{}
	for _, sk := range s.sockList {
		for _, c := range sk.diag.icons {
			if c == 0 {
				errs = append(errs, sk.refuse("a pending connection to this listener was closed by its client, which may have sent data: it cannot be dumped"))
				continue
			}
			icons[c] = sk
		}
	}
	for _, tab := range s.diags {
		for _, d := range tab {
			if s.socks[d.ino] != nil {
				continue
			}
			for _, c := range d.icons {
				if s.socks[c] != nil {
					outIcons[c] = d
				}
			}
		}
	}
	ext := map[uint32]*unixDiag{}
	for _, sk := range s.sockList {
		d := sk.diag
		switch {
		case sk.peer != 0:
			peerSk := s.socks[sk.peer]
			var pd *unixDiag
			if peerSk != nil {
				pd = peerSk.diag
			} else {
				pd = s.diags[sk.netns][sk.peer]
			}
			if pd == nil {
				errs = append(errs, sk.refuse(fmt.Sprintf("its peer socket:[%d] is not in the socket's network namespace", sk.peer)))
				continue
			}
			if pd.peer != sk.ino && len(pd.name) == 0 {
				errs = append(errs, sk.refuse(fmt.Sprintf("its peer socket:[%d] is connected elsewhere and has no name to reconnect to", sk.peer)))
				continue
			}
			if peerSk != nil {
				continue
			}
			what := fmt.Sprintf("its peer socket:[%d] %s is outside the dumped tree", sk.peer, describeName(pd.name))
			switch {
			case pd.typ != unix.SOCK_DGRAM:
				errs = append(errs, sk.refuse(what+": half of a stream or seqpacket connection cannot be dumped"))
			case !s.extUnix && len(pd.name) > 0:
				errs = append(errs, sk.refuse(what+" (dump with --ext-unix-sk to record it as external and reconnect to it by name)"))
			case len(pd.name) == 0:
				errs = append(errs, sk.refuse(what+" and has no name to reconnect to"))
			default:
				ext[sk.peer] = pd
				sk.ext = pd
			}
		case d.state == tcpEstablished && sk.typ != unix.SOCK_DGRAM:
			l := icons[sk.ino]
			if l == nil {
				if od := outIcons[sk.ino]; od != nil {
					errs = append(errs, sk.refuse(fmt.Sprintf("it is a pending connection to socket:[%d] %s outside the dumped tree", od.ino, describeName(od.name))))
					continue
				}
				if d.shutdown != 3 {
					errs = append(errs, sk.refuse("a connected socket without a peer that is not shut down both ways (a dangling connection)"))
				}
				continue
			}
			if d.wqlen != 0 {
				errs = append(errs, sk.refuse(fmt.Sprintf("it sent data (%d bytes of buffers) into its connection to socket:[%d] %s, which was not accepted yet; "+
					"that data cannot be read without accepting the connection", d.wqlen, l.ino, describeName(l.diag.name))))
				continue
			}
			sk.peer = l.ino
		}
	}
	return errs
}

// refuse is the refusal of socket sk, naming the fd it was found at.
func (sk *unixSock) refuse(why string) *UnsupportedError {
	e := sk.first.unsupported(fmt.Sprintf("unix socket:[%d] %s", sk.ino, describeName(sk.diag.name)))
	e.Why = why
	return e
}

// describeName shows a socket name the way ss does: @ for abstract names.
func describeName(name []byte) string {
	switch {
	case len(name) == 0:
		return "(unnamed)"
	case name[0] == 0:
		return fmt.Sprintf("%q", "@"+string(name[1:]))
	}
	return fmt.Sprintf("%q", strings.TrimRight(string(name), "\x00"))
}
