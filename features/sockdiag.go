package features

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// sock_diag constants not in x/sys/unix (<linux/unix_diag.h>,
// <linux/inet_diag.h>).
const (
	udiagShowName = 0x01
	udiagShowPeer = 0x04

	unixDiagPeer = 2 // UNIX_DIAG_PEER (the enum starts at UNIX_DIAG_NAME = 0)

	unixDiagReqLen   = 24 // struct unix_diag_req
	unixDiagMsgLen   = 16 // struct unix_diag_msg
	inetDiagReqLen   = 56 // struct inet_diag_req_v2
	inetDiagMsgLen   = 72 // struct inet_diag_msg
	inetDiagNoCookie = ^uint32(0)

	tcpListen = 10 // TCP_LISTEN

	nlmsgHdrLen = unix.SizeofNlMsghdr
	nlmsgSeq    = 1
)

// diagRecvTimeout bounds each recv on the netlink socket.
var diagRecvTimeout = unix.Timeval{Sec: 1}

// sockIno returns the inode number of a socket fd.
func sockIno(fd int) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, opErr("fstat(socket)", err)
	}
	return uint32(st.Ino), nil
}

// diagQuery sends one SOCK_DIAG_BY_FAMILY request (payload is the
// family-specific request struct) and returns the payload of the first
// SOCK_DIAG_BY_FAMILY reply. Every recv is bounded by diagRecvTimeout.
func diagQuery(payload []byte) ([]byte, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, opErr("socket(AF_NETLINK, NETLINK_SOCK_DIAG)", err)
	}
	defer closeAll(fd)
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &diagRecvTimeout); err != nil {
		return nil, opErr("setsockopt(SO_RCVTIMEO) on the netlink socket", err)
	}

	msg := make([]byte, nlmsgHdrLen+len(payload))
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(msg[8:], nlmsgSeq)
	copy(msg[nlmsgHdrLen:], payload)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, opErr("send SOCK_DIAG_BY_FAMILY request", err)
	}

	buf := make([]byte, 32<<10)
	for range 16 {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			return nil, fmt.Errorf("no sock_diag reply within %ds", diagRecvTimeout.Sec)
		}
		if err != nil {
			return nil, opErr("recv sock_diag reply", err)
		}
		msgs, err := parseNetlink(buf[:n])
		if err != nil {
			return nil, fmt.Errorf("parse sock_diag reply: %w", err)
		}
		for _, m := range msgs {
			if m.seq != nlmsgSeq {
				continue
			}
			switch m.typ {
			case unix.NLMSG_ERROR:
				if len(m.data) < 4 {
					return nil, errors.New("truncated NLMSG_ERROR in sock_diag reply")
				}
				if e := int32(ne.Uint32(m.data)); e != 0 {
					errno := unix.Errno(-e)
					if errors.Is(errno, unix.ENOENT) {
						return nil, opErr("sock_diag request", fmt.Errorf("%w (socket not found, or diag module for this family missing)", errno))
					}
					return nil, opErr("sock_diag request", errno)
				}
			case unix.NLMSG_DONE:
				return nil, errors.New("sock_diag reply ended without describing the socket")
			case unix.SOCK_DIAG_BY_FAMILY:
				return m.data, nil
			}
		}
	}
	return nil, errors.New("too many unrelated netlink messages while waiting for the sock_diag reply")
}

// nlMsg is one parsed netlink message.
type nlMsg struct {
	typ  uint16
	seq  uint32
	data []byte
}

// parseNetlink splits a netlink datagram into messages.
func parseNetlink(b []byte) ([]nlMsg, error) {
	var out []nlMsg
	ne := binary.NativeEndian
	for len(b) >= nlmsgHdrLen {
		l := int(ne.Uint32(b[0:]))
		if l < nlmsgHdrLen || l > len(b) {
			return nil, fmt.Errorf("bad netlink message length %d (%d bytes left)", l, len(b))
		}
		out = append(out, nlMsg{typ: ne.Uint16(b[4:]), seq: ne.Uint32(b[8:]), data: b[nlmsgHdrLen:l]})
		al := (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if al >= len(b) {
			break
		}
		b = b[al:]
	}
	return out, nil
}

// rtattrs parses netlink attributes (struct rtattr / nlattr) into a map from
// type to value.
func rtattrs(b []byte) map[uint16][]byte {
	out := make(map[uint16][]byte)
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:]))
		typ := binary.NativeEndian.Uint16(b[2:])
		if l < 4 || l > len(b) {
			break
		}
		out[typ&^unix.NLA_F_NESTED&^unix.NLA_F_NET_BYTEORDER] = b[4:l]
		al := (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if al > len(b) {
			break
		}
		b = b[al:]
	}
	return out
}

// unixDiagReq encodes a struct unix_diag_req for one inode.
func unixDiagReq(ino, show uint32) []byte {
	b := make([]byte, unixDiagReqLen)
	ne := binary.NativeEndian
	b[0] = unix.AF_UNIX
	ne.PutUint32(b[4:], ^uint32(0)) // udiag_states: all
	ne.PutUint32(b[8:], ino)
	ne.PutUint32(b[12:], show)
	ne.PutUint32(b[16:], inetDiagNoCookie)
	ne.PutUint32(b[20:], inetDiagNoCookie)
	return b
}

func probeSockDiagUnix() (string, error) {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", opErr("socketpair(AF_UNIX)", err)
	}
	defer closeAll(sp[0], sp[1])
	ino, err := sockIno(sp[0])
	if err != nil {
		return "", err
	}
	peer, err := sockIno(sp[1])
	if err != nil {
		return "", err
	}
	reply, err := diagQuery(unixDiagReq(ino, udiagShowName|udiagShowPeer))
	if err != nil {
		return "", fmt.Errorf("UNIX_DIAG: %w", err)
	}
	if len(reply) < unixDiagMsgLen {
		return "", fmt.Errorf("UNIX_DIAG: reply of %d bytes is shorter than unix_diag_msg", len(reply))
	}
	if reply[0] != unix.AF_UNIX {
		return "", fmt.Errorf("UNIX_DIAG: reply for family %d, want AF_UNIX", reply[0])
	}
	if got := binary.NativeEndian.Uint32(reply[4:]); got != ino {
		return "", fmt.Errorf("UNIX_DIAG: reply names inode %d, want %d", got, ino)
	}
	attrs := rtattrs(reply[unixDiagMsgLen:])
	p, ok := attrs[unixDiagPeer]
	if !ok || len(p) < 4 {
		return "", errors.New("UNIX_DIAG: reply has no UNIX_DIAG_PEER attribute")
	}
	if got := binary.NativeEndian.Uint32(p); got != peer {
		return "", fmt.Errorf("UNIX_DIAG: peer inode %d, want %d", got, peer)
	}
	return fmt.Sprintf("socket %d -> peer %d", ino, peer), nil
}

// inetDiagReq encodes a struct inet_diag_req_v2 for one IPv4 TCP socket
// bound to addr:port with no remote end (a listener).
func inetDiagReq(addr [4]byte, port uint16) []byte {
	b := make([]byte, inetDiagReqLen)
	ne := binary.NativeEndian
	b[0] = unix.AF_INET
	b[1] = unix.IPPROTO_TCP
	ne.PutUint32(b[4:], ^uint32(0)) // idiag_states: all
	// struct inet_diag_sockid at offset 8: ports and addresses are big-endian.
	binary.BigEndian.PutUint16(b[8:], port) // idiag_sport
	copy(b[12:16], addr[:])                 // idiag_src[0]
	// idiag_dport, idiag_dst and idiag_if stay zero.
	ne.PutUint32(b[48:], inetDiagNoCookie)
	ne.PutUint32(b[52:], inetDiagNoCookie)
	return b
}

func probeSockDiagInet() (string, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return "", opErr("socket(AF_INET, SOCK_STREAM)", err)
	}
	defer closeAll(fd)
	loopback := [4]byte{127, 0, 0, 1}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: loopback}); err != nil {
		return "", opErr("bind 127.0.0.1:0", err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		return "", opErr("listen", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return "", opErr("getsockname", err)
	}
	sa4, ok := sa.(*unix.SockaddrInet4)
	if !ok {
		return "", fmt.Errorf("getsockname returned %T, want IPv4", sa)
	}
	ino, err := sockIno(fd)
	if err != nil {
		return "", err
	}
	reply, err := diagQuery(inetDiagReq(loopback, uint16(sa4.Port)))
	if err != nil {
		return "", fmt.Errorf("INET_DIAG: %w", err)
	}
	if len(reply) < inetDiagMsgLen {
		return "", fmt.Errorf("INET_DIAG: reply of %d bytes is shorter than inet_diag_msg", len(reply))
	}
	ne := binary.NativeEndian
	if reply[0] != unix.AF_INET {
		return "", fmt.Errorf("INET_DIAG: reply for family %d, want AF_INET", reply[0])
	}
	if reply[1] != tcpListen {
		return "", fmt.Errorf("INET_DIAG: reply has TCP state %d, want LISTEN (%d)", reply[1], tcpListen)
	}
	if got := binary.BigEndian.Uint16(reply[4:]); got != uint16(sa4.Port) {
		return "", fmt.Errorf("INET_DIAG: reply has port %d, want %d", got, sa4.Port)
	}
	if got := ne.Uint32(reply[68:]); got != ino {
		return "", fmt.Errorf("INET_DIAG: reply names inode %d, want %d", got, ino)
	}
	return fmt.Sprintf("listener 127.0.0.1:%d inode %d", sa4.Port, ino), nil
}
