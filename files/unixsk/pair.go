package unixsk

import (
	"fmt"

	"github.com/fdrestore/fdrestore/files"
	"golang.org/x/sys/unix"
)

// PairType is the opener of a plain socketpair: two unnamed sockets that
// are each other's peer, with no option, flag, owner or shutdown beyond a
// fresh socketpair's (buffer sizes aside), and data without files queued
// on either side. It is most unix sockets of a real tree, and its
// parameters and work are a fraction of a component's.
const PairType = "unixsk-pair"

// PairParams describe a plain socketpair.
type PairParams struct {
	Type    uint8
	Sndbuf  [2]uint32 // as recorded (doubled); 0: not recorded
	Rcvbuf  [2]uint32
	Packets [2][][]byte // queued on each end, sent from the other
}

// PairOf returns the PairParams of a component that is a plain socketpair,
// and false for any other.
func PairOf(p *Params) (PairParams, bool) {
	var pp PairParams
	if len(p.Socks) != 2 || p.Split {
		return pp, false
	}
	for i := range p.Socks {
		s := &p.Socks[i]
		if s.Create != CreatePair && s.Create != CreatePairEnd || s.Partner != int32(1-i) ||
			len(s.Name) > 0 || s.Bind || s.Listen || s.ConnectTo >= 0 || s.Pending >= 0 || len(s.ExtName) > 0 || s.Disconnect ||
			s.Flags&files.StatusFlagsMask != 0 || s.Fown != (files.Fown{}) || s.Shutdown != ShutNone || !s.Opts.plain() {
			return pp, false
		}
		if s.Sender != SendNone && s.Sender != int32(1-i) {
			return pp, false
		}
		for _, pk := range s.Packets {
			if len(pk.Fds) > 0 {
				return pp, false
			}
			pp.Packets[i] = append(pp.Packets[i], pk.Data)
		}
		pp.Sndbuf[i], pp.Rcvbuf[i] = s.Opts.Sndbuf, s.Opts.Rcvbuf
	}
	pp.Type = p.Socks[0].Type
	return pp, true
}

// MarshalBinary encodes p for OpenSpec.Data.
func (p *PairParams) MarshalBinary() ([]byte, error) {
	e := files.Enc{B: make([]byte, 0, 24)}
	e.Uint(uint64(p.Type))
	for i := range 2 {
		e.Uint(uint64(p.Sndbuf[i]))
		e.Uint(uint64(p.Rcvbuf[i]))
		e.Uint(uint64(len(p.Packets[i])))
		for _, d := range p.Packets[i] {
			e.Bytes(d)
		}
	}
	return e.B, nil
}

// UnmarshalBinary decodes what MarshalBinary wrote.
func (p *PairParams) UnmarshalBinary(b []byte) error {
	d := files.Dec{B: b}
	p.Type = uint8(d.Uint())
	for i := range 2 {
		p.Sndbuf[i], p.Rcvbuf[i] = d.Uint32(), d.Uint32()
		n := d.Uint()
		if n > uint64(len(d.B)) {
			return fmt.Errorf("socketpair parameters: %d packets in %d bytes", n, len(d.B))
		}
		p.Packets[i] = nil
		for j := uint64(0); j < n && d.Err == nil; j++ {
			p.Packets[i] = append(p.Packets[i], d.Bytes())
		}
	}
	if err := d.Done(); err != nil {
		return err
	}
	switch p.Type {
	case TypeStream, TypeDgram, TypeSeqpacket:
		return nil
	}
	return fmt.Errorf("socketpair parameters: socket type %d", p.Type)
}

type pairOpener struct {
	p   PairParams
	ids []uint32
}

func (o *pairOpener) Open(c *files.Context) (bool, error) {
	ce := c.Cloexec(o.ids[0])
	same := c.Cloexec(o.ids[1]) == ce
	if !same {
		ce = true
	}
	flags := sockType(o.p.Type)
	if ce {
		flags |= unix.SOCK_CLOEXEC
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, flags, 0)
	if err != nil {
		return false, fmt.Errorf("socketpair: %w", err)
	}
	fail := func(err error) (bool, error) {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return false, err
	}
	snd, rcv := bufDefaults()
	var raised [2]int // times the receiving end i and its sender were raised
	for i := range 2 {
		queue := queueSize(o.p.Packets[i])
		for k, data := range o.p.Packets[i] {
			if err := sendQueued(fds[1-i], fds[i], data, nil, nil, o.p.Type != TypeStream, &raised[i], queue); err != nil {
				return fail(fmt.Errorf("file id %d: refill packet %d of %d (%d bytes): %w", o.ids[i], k+1, len(o.p.Packets[i]), len(data), err))
			}
		}
	}
	for i := range 2 {
		if v := orDefault(o.p.Sndbuf[i], snd); v != 0 && (int(v) != snd || raised[1-i] > 0) {
			if err := setBufExact(fds[i], unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, int(v)); err != nil {
				return fail(fmt.Errorf("file id %d: SO_SNDBUF %d: %w", o.ids[i], v, err))
			}
		}
		if v := orDefault(o.p.Rcvbuf[i], rcv); v != 0 && (int(v) != rcv || raised[i] > 0) {
			if err := setBufExact(fds[i], unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, int(v)); err != nil {
				return fail(fmt.Errorf("file id %d: SO_RCVBUF %d: %w", o.ids[i], v, err))
			}
		}
	}
	if same {
		return true, c.AdoptCloexec(o.ids, fds[:], ce)
	}
	return true, c.Adopt(o.ids, fds[:])
}

func orDefault(v uint32, def int) uint32 {
	if v == 0 && def > 0 {
		return uint32(def)
	}
	return v
}

// queueSize is what a queue of packets costs in socket buffers, with room
// for the kernel's per-packet overhead.
func queueSize(pks [][]byte) int {
	n := 0
	for _, d := range pks {
		n += len(d) + 1024
	}
	return n
}

// raise raises the sender's send buffer and the receiver's receive buffer
// for a refill of queue bytes (the raised-th time: each time doubles), and
// reports false once raising cannot help any more.
func raise(from, to, queue int, raised *int) bool {
	if *raised >= 6 {
		return false
	}
	*raised++
	v := min((2*queue+1<<20)<<(*raised-1), 1<<30)
	setBuf(from, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, v)
	setBuf(to, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, v)
	return true
}

// sendQueued queues data (with the fds of oob) on socket to by sending it
// from from (to address sa when set), raising both buffers for a queue of
// queue bytes when the send would block. msg is set for datagram and
// seqpacket sockets, whose packets go whole.
func sendQueued(from, to int, data, oob []byte, sa unix.Sockaddr, msg bool, raised *int, queue int) error {
	rest := data
	for {
		n, err := unix.SendmsgN(from, rest, oob, sa, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN || err == unix.ENOBUFS || err == unix.EMSGSIZE:
			if !raise(from, to, queue, raised) {
				return err
			}
			continue
		case err != nil:
			return err
		}
		if msg {
			if n != len(data) {
				return fmt.Errorf("short datagram: %d of %d bytes", n, len(data))
			}
			return nil
		}
		oob = nil // the fds went with the first bytes
		if rest = rest[n:]; len(rest) == 0 {
			return nil
		}
	}
}

func init() {
	files.Register(PairType, func(spec *files.OpenSpec) (files.Opener, error) {
		o := &pairOpener{ids: spec.Files}
		if len(spec.Files) != 2 {
			return nil, fmt.Errorf("socketpair opener for %d files", len(spec.Files))
		}
		if err := files.DecodeData(spec.Data, &o.p); err != nil {
			return nil, fmt.Errorf("socketpair parameters: %w", err)
		}
		return o, nil
	})
}
