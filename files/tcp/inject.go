package tcp

import (
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// forgeMark marks the forged segments, so that a network lock can let
// them through (the value CRIU uses).
const forgeMark = 0xC114

// halfClose replays what the peer had sent that repair mode cannot
// record: its FIN (fin), or its acknowledgement of our FIN (ackFin). The
// segment is forged from the peer's address to the socket, which is in
// repair mode and processes it like any other; the socket then reaches
// the state that the segment leads to.
func (o *opener) halfClose(fd int, fin, ackFin bool) error {
	p := &o.p
	s := &p.Stream
	if err := SelectQueue(fd, RecvQueue); err != nil {
		return err
	}
	rcvNxt, err := QueueSeq(fd)
	if err != nil {
		return err
	}
	if err := SelectQueue(fd, NoQueue); err != nil {
		return err
	}
	outSeq := s.OutqSeq
	if FinOnSend(p.State) {
		outSeq--
	}
	ack := outSeq - uint32(len(s.OutQ)) // snd_una
	flags := byte(0x10)                 // ACK
	want := uint8(StateCloseWait)
	switch {
	case fin:
		flags |= 0x01 // FIN
		if p.State == StateClosing {
			want = StateClosing
		}
	case ackFin:
		ack = s.OutqSeq // everything, our FIN included
		want = StateFinWait2
	}
	win := uint32(65535)
	if s.HasWindow {
		win = s.Window.SndWnd
		if s.OptMask&OptWscale != 0 {
			win >>= s.SndWscale
		}
		win = min(win, 65535)
	}
	// No timestamp option: the socket may already hold a recent
	// timestamp from its peer (whose window probe can arrive first) that
	// any value forged here could fail, and Linux takes a segment without
	// the option on a connection that negotiated timestamps.
	seg := segment(p, rcvNxt, ack, flags, uint16(win), false)
	if err := sendForged(p, seg); err != nil {
		return err
	}
	// The peer, restored too, may move the connection on at once (its
	// own FIN retransmitted, an ACK of ours): a closed connection is then
	// as good as the wanted state.
	var past []uint8
	if want == StateClosing || want == StateFinWait2 {
		past = append(past, StateClose)
	}
	return waitState(fd, want, past, 2*time.Second)
}

// segment builds a TCP segment from the peer (Dst) to the socket (Src),
// checksum included.
func segment(p *Params, seq, ack uint32, flags byte, win uint16, ts bool) []byte {
	hl := 20
	if ts {
		hl += 12
	}
	b := make([]byte, hl)
	binary.BigEndian.PutUint16(b[0:], uint16(p.DstPort))
	binary.BigEndian.PutUint16(b[2:], uint16(p.SrcPort))
	binary.BigEndian.PutUint32(b[4:], seq)
	binary.BigEndian.PutUint32(b[8:], ack)
	b[12] = byte(hl/4) << 4
	b[13] = flags
	binary.BigEndian.PutUint16(b[14:], win)
	if ts {
		// NOP, NOP, timestamp: TSval 0 (the restored socket keeps no
		// recent timestamp to compare with), TSecr 0.
		copy(b[20:], []byte{1, 1, 8, 10})
	}
	// Pseudo-header: source, destination, protocol, length.
	var sum uint32
	add := func(x []byte) {
		for i := 0; i+1 < len(x); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(x[i:]))
		}
		if len(x)%2 == 1 {
			sum += uint32(x[len(x)-1]) << 8
		}
	}
	add(p.Dst)
	add(p.Src)
	sum += unix.IPPROTO_TCP + uint32(len(b))
	add(b)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(b[16:], ^uint16(sum))
	return b
}

// sendForged sends seg from the peer's address through a raw socket.
func sendForged(p *Params, seg []byte) error {
	raw, err := unix.Socket(int(p.Family), unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(raw)
	if p.Family == unix.AF_INET6 {
		unix.SetsockoptInt(raw, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1)
	} else {
		unix.SetsockoptInt(raw, unix.SOL_IP, unix.IP_FREEBIND, 1)
	}
	if err := unix.SetsockoptInt(raw, unix.SOL_SOCKET, unix.SO_MARK, forgeMark); err != nil {
		return fmt.Errorf("SO_MARK: %w", err)
	}
	from, err := sockaddr(p.Family, p.Dst, 0)
	if err != nil {
		return err
	}
	if err := unix.Bind(raw, from); err != nil {
		return fmt.Errorf("bind raw socket to %s: %w", Addr(p.Dst, 0), err)
	}
	to, err := sockaddr(p.Family, p.Src, 0)
	if err != nil {
		return err
	}
	if err := unix.Sendto(raw, seg, 0, to); err != nil {
		return fmt.Errorf("send forged segment to %s: %w", Addr(p.Src, p.SrcPort), err)
	}
	return nil
}

// waitState waits until the socket's TCP state is want, or one of past.
func waitState(fd int, want uint8, past []uint8, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		info, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO)
		if err != nil {
			return fmt.Errorf("TCP_INFO: %w", err)
		}
		if info.State == want || slices.Contains(past, info.State) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("state %s after the forged segment, want %s", StateName(uint32(info.State)), StateName(uint32(want)))
		}
		time.Sleep(time.Millisecond)
	}
}
