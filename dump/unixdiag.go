package dump

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// sock_diag for AF_UNIX (include/uapi/linux/unix_diag.h). x/sys has the
// netlink basics but not these.
const (
	udiagShowName    = 0x01
	udiagShowVFS     = 0x02
	udiagShowPeer    = 0x04
	udiagShowIcons   = 0x08
	udiagShowRqlen   = 0x10
	udiagShowMeminfo = 0x20
	udiagShowUID     = 0x40

	unixDiagName     = 0
	unixDiagVFS      = 1
	unixDiagPeer     = 2
	unixDiagIcons    = 3
	unixDiagRqlen    = 4
	unixDiagMeminfo  = 5
	unixDiagShutdown = 6
	unixDiagUID      = 7

	unixDiagReqLen = 24 // struct unix_diag_req
	unixDiagMsgLen = 16 // struct unix_diag_msg
)

// unixDiag is what sock_diag says about one unix socket.
type unixDiag struct {
	ino      uint32
	typ      uint8
	state    uint8
	name     []byte // raw: abstract names begin with NUL; path names end with one
	hasVFS   bool
	vfsIno   uint32 // the bound file's inode and device, for path names
	vfsDev   uint32
	peer     uint32   // the peer's inode, 0 when none (or an embryo)
	icons    []uint32 // for a listener: the client inodes of pending connections
	rqlen    uint32   // listener: pending connections; otherwise bytes queued to read
	wqlen    uint32   // listener: the backlog; otherwise bytes sent and not yet read
	shutdown uint8    // RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2
	hasUID   bool
	uid      uint32
}

// unixDiagTable is every unix socket of one network namespace, by inode.
type unixDiagTable map[uint32]*unixDiag

// unixDiagDump lists every unix socket of the network namespace that the
// netns fd nsfd refers to (-1: the dumper's own), in one netlink dump.
func unixDiagDump(nsfd int) (unixDiagTable, error) {
	req := make([]byte, unixDiagReqLen)
	req[0] = unix.AF_UNIX
	binary.NativeEndian.PutUint32(req[4:], 0xffffffff) // every state
	binary.NativeEndian.PutUint32(req[12:], udiagShowName|udiagShowVFS|udiagShowPeer|udiagShowIcons|udiagShowRqlen|udiagShowUID)
	tab := unixDiagTable{}
	err := sockDiagDump(nsfd, req, func(b []byte) error {
		d, err := parseUnixDiag(b)
		if err != nil {
			return err
		}
		if d.ino != 0 { // embryos of pending connections have no inode
			tab[d.ino] = d
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return tab, nil
}

// sockDiagDump sends the SOCK_DIAG_BY_FAMILY dump request req (what follows
// the netlink header) in the network namespace nsfd (-1: the dumper's own)
// and passes each record of the reply to each.
func sockDiagDump(nsfd int, req []byte, each func([]byte) error) error {
	nl, err := diagSocket(nsfd)
	if err != nil {
		return err
	}
	defer unix.Close(nl)
	// A receive timeout, so that a kernel that never answers cannot hang
	// the dump.
	tv := unix.Timeval{Sec: 10}
	if err := unix.SetsockoptTimeval(nl, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("sock_diag: SO_RCVTIMEO: %w", err)
	}

	msg := make([]byte, unix.NLMSG_HDRLEN+len(req))
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	const seq = 0x66647273
	ne.PutUint32(msg[8:], seq)
	copy(msg[unix.NLMSG_HDRLEN:], req)
	if err := unix.Sendto(nl, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sock_diag: send: %w", err)
	}

	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(nl, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if errors.Is(err, unix.EAGAIN) {
				return fmt.Errorf("sock_diag: no reply within %ds", tv.Sec)
			}
			return fmt.Errorf("sock_diag: receive: %w", err)
		}
		msgs, err := parseNetlink(buf[:n])
		if err != nil {
			return fmt.Errorf("sock_diag: %w", err)
		}
		for _, m := range msgs {
			if m.seq != seq {
				continue
			}
			switch m.typ {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.data) < 4 {
					return fmt.Errorf("sock_diag: short error message")
				}
				if e := int32(ne.Uint32(m.data)); e < 0 {
					return fmt.Errorf("sock_diag: %w", unix.Errno(-e))
				}
			case unix.SOCK_DIAG_BY_FAMILY:
				if err := each(m.data); err != nil {
					return err
				}
			}
		}
	}
}

// diagSocket opens a NETLINK_SOCK_DIAG socket, inside the network
// namespace nsfd when it is not -1 (a netlink socket answers for the
// namespace it was created in).
func diagSocket(nsfd int) (int, error) {
	open := func() (int, error) {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		if err != nil {
			return -1, fmt.Errorf("sock_diag socket: %w", err)
		}
		return fd, nil
	}
	if nsfd < 0 {
		return open()
	}
	type res struct {
		fd  int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		fd, err := openInNetns(nsfd, open)
		ch <- res{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

// openInNetns runs open on a thread that enters netns nsfd and comes
// back; a thread that cannot come back is left locked, so that it ends
// with its goroutine instead of serving others from the wrong namespace.
func openInNetns(nsfd int, open func() (int, error)) (int, error) {
	runtime.LockOSThread()
	self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return -1, fmt.Errorf("sock_diag: own netns: %w", err)
	}
	defer unix.Close(self)
	if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return -1, fmt.Errorf("sock_diag: enter the sockets' netns: %w", err)
	}
	fd, oerr := open()
	if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("sock_diag: return to own netns: %w", err)
	}
	runtime.UnlockOSThread()
	return fd, oerr
}

// nlMsg is one netlink message of a datagram.
type nlMsg struct {
	typ  uint16
	seq  uint32
	data []byte
}

// parseNetlink splits a netlink datagram into its messages.
func parseNetlink(b []byte) ([]nlMsg, error) {
	var out []nlMsg
	ne := binary.NativeEndian
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(ne.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return nil, fmt.Errorf("bad netlink message length %d (%d bytes left)", l, len(b))
		}
		out = append(out, nlMsg{typ: ne.Uint16(b[4:]), seq: ne.Uint32(b[8:]), data: b[unix.NLMSG_HDRLEN:l]})
		al := (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if al >= len(b) {
			break
		}
		b = b[al:]
	}
	return out, nil
}

func parseUnixDiag(b []byte) (*unixDiag, error) {
	if len(b) < unixDiagMsgLen {
		return nil, fmt.Errorf("sock_diag: short unix_diag_msg (%d bytes)", len(b))
	}
	ne := binary.NativeEndian
	d := &unixDiag{typ: b[1], state: b[2], ino: ne.Uint32(b[4:])}
	attrs := b[unixDiagMsgLen:]
	for len(attrs) >= unix.SizeofRtAttr {
		l := int(ne.Uint16(attrs[0:]))
		typ := ne.Uint16(attrs[2:]) & 0x3fff // without NLA_F_NESTED / NET_BYTEORDER
		if l < unix.SizeofRtAttr || l > len(attrs) {
			return nil, fmt.Errorf("sock_diag: socket %d: bad attribute length %d", d.ino, l)
		}
		v := attrs[unix.SizeofRtAttr:l]
		switch typ {
		case unixDiagName:
			d.name = append([]byte(nil), v...)
		case unixDiagVFS:
			if len(v) >= 8 {
				d.hasVFS, d.vfsIno, d.vfsDev = true, ne.Uint32(v), ne.Uint32(v[4:])
			}
		case unixDiagPeer:
			if len(v) >= 4 {
				d.peer = ne.Uint32(v)
			}
		case unixDiagIcons:
			for i := 0; i+4 <= len(v); i += 4 {
				d.icons = append(d.icons, ne.Uint32(v[i:]))
			}
		case unixDiagRqlen:
			if len(v) >= 8 {
				d.rqlen, d.wqlen = ne.Uint32(v), ne.Uint32(v[4:])
			}
		case unixDiagShutdown:
			if len(v) >= 1 {
				d.shutdown = v[0]
			}
		case unixDiagUID:
			if len(v) >= 4 {
				d.hasUID, d.uid = true, ne.Uint32(v)
			}
		}
		al := (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if al > len(attrs) {
			break
		}
		attrs = attrs[al:]
	}
	return d, nil
}

// UnixPeers returns, for every unix socket of the network namespace of
// task pid, the inode of its peer (0 when it has none or its peer is the
// embryo of a pending connection), from one sock_diag dump. The test
// suite uses it to check connections from outside.
func UnixPeers(pid int) (map[uint64]uint64, error) {
	ns, err := unix.Open(fmt.Sprintf("/proc/%d/ns/net", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("netns of pid %d: %w", pid, err)
	}
	defer unix.Close(ns)
	tab, err := unixDiagDump(ns)
	if err != nil {
		return nil, err
	}
	out := make(map[uint64]uint64, len(tab))
	for ino, d := range tab {
		out[uint64(ino)] = uint64(d.peer)
	}
	return out, nil
}
