package unixsk

import (
	"fmt"

	"github.com/fdrestore/fdrestore/files"
)

// How a socket comes into being (Sock.Create).
const (
	// CreatePlain: socket(2).
	CreatePlain uint8 = iota
	// CreatePair: socketpair(2) with socket Partner, which is CreatePairEnd.
	CreatePair
	// CreatePairEnd: made by its partner's socketpair.
	CreatePairEnd
	// CreateAccepted: accept(2) of a connection from socket Partner
	// (CreateClient) to the listener Listener, or, when Listener is -1,
	// to a temporary listener bound to the socket's own name, closed at
	// once (the dumped listener is gone, the name stays the socket's).
	CreateAccepted
	// CreateClient: the connecting end of an accepted connection, made by
	// its partner (CreateAccepted).
	CreateClient
	// CreateTmpPair: socketpair(2) with a temporary socket that refills
	// this socket's queue and is closed afterwards (a peerless socket:
	// a stream socket whose peer was closed, or a datagram socket nobody
	// else can send to).
	CreateTmpPair
)

// Stream, datagram and seqpacket, as in unix_sk_entry.type.
const (
	TypeStream    = 1
	TypeDgram     = 2
	TypeSeqpacket = 5
)

// Sender values other than a socket index.
const (
	SendNone = -1 // nothing queued
	SendTmp  = -2 // the socket's temporary pair end
	SendName = -3 // a temporary unconnected socket, to the socket's name
)

// Opts are the socket options of sk_opts_entry that apply to unix sockets.
type Opts struct {
	Sndbuf, Rcvbuf           uint32 // as getsockopt reports them (doubled)
	SndTmoSec, SndTmoUsec    uint64
	RcvTmoSec, RcvTmoUsec    uint64
	Priority, Rcvlowat, Mark uint32
	Passcred, Passsec        bool
	Reuseaddr, Reuseport     bool
	Dontroute, Broadcast     bool
	Keepalive                bool
	Oobinline, Linger        uint32
	BufLock                  uint32
	BoundDev                 string
	Filter                   []uint64 // classic BPF, code<<48 | jt<<40 | jf<<32 | k
}

// Packet is one queued packet: its bytes and the files it carries with
// SCM_RIGHTS, in order.
type Packet struct {
	Data []byte
	Fds  []uint32
}

// Sock is one socket of a component.
type Sock struct {
	File     uint32 // file id
	Ino      uint32 // socket inode at dump, for messages
	Type     uint8  // TypeStream, TypeDgram, TypeSeqpacket
	Flags    uint32 // open(2) status flags of the description
	Fown     files.Fown
	Backlog  uint32
	Name     []byte // bound name; abstract names start with a NUL byte
	NameDir  string // directory a relative path name is relative to
	Deleted  bool   // the path was unlinked after bind
	HasPerms bool
	Mode     uint32 // socket file mode, uid and gid (HasPerms)
	UID, GID uint32
	Shutdown uint8 // 0 none, 1 read, 2 write, 3 both
	Opts     Opts

	Create   uint8
	Partner  int32 // CreatePair, CreatePairEnd, CreateAccepted, CreateClient
	Listener int32 // CreateAccepted: the listener's index, or -1
	Bind     bool  // bind Name
	Listen   bool
	// ConnectTo is the index of the socket this one connects to by
	// address (a datagram peer), or -1. Pending is the index of the
	// listener this one connects to after every accepted connection is
	// made (a connection not yet accepted at dump), or -1.
	ConnectTo, Pending int32
	// ExtName, when set, is the address of a peer outside the tree to
	// connect to (--ext-unix-sk), relative to ExtDir if relative.
	ExtName []byte
	ExtDir  string
	// Disconnect drops the peer the socketpair gave (connect AF_UNSPEC):
	// the socket had no peer at dump.
	Disconnect bool
	// Sender is the index of the socket that refills this socket's
	// receive queue, SendTmp or SendNone.
	Sender  int32
	Packets []Packet
}

// Params describe one connected component of unix sockets: sockets that
// are peers, a listener with its accepted and pending connections, a
// datagram server with its clients. One task creates a whole component.
type Params struct {
	Socks []Sock
	// Order lists the component's datagram sockets in the order they are
	// refilled and connected (ConnectTo, ExtName): a socket that connects
	// to another comes before it, since a connected datagram socket
	// accepts connects and datagrams from its peer only. Each one's queue
	// is refilled right before its own connect (right after, when it is
	// connected to itself).
	Order []int32
	// Split says the component's queues carry files: the component
	// opener creates and publishes the sockets, and the queue opener
	// (QueueType), run once every carried file is present, refills the
	// queues and sets the final state. Otherwise one opener does it all.
	Split bool
}

// MarshalBinary encodes p for OpenSpec.Data.
func (p *Params) MarshalBinary() ([]byte, error) {
	e := files.Enc{B: make([]byte, 0, 32+len(p.Socks)*48)}
	e.Bool(p.Split)
	e.Uint(uint64(len(p.Order)))
	for _, i := range p.Order {
		e.Uint(uint64(i))
	}
	e.Uint(uint64(len(p.Socks)))
	for i := range p.Socks {
		s := &p.Socks[i]
		e.Uint(uint64(s.File))
		e.Uint(uint64(s.Ino))
		e.Uint(uint64(s.Type))
		e.Uint(uint64(s.Flags))
		e.Fown(s.Fown)
		e.Uint(uint64(s.Backlog))
		e.Bytes(s.Name)
		e.String(s.NameDir)
		e.Bool(s.Deleted)
		e.Bool(s.HasPerms)
		e.Uint(uint64(s.Mode))
		e.Uint(uint64(s.UID))
		e.Uint(uint64(s.GID))
		e.Uint(uint64(s.Shutdown))
		o := &s.Opts
		for _, v := range []uint64{uint64(o.Sndbuf), uint64(o.Rcvbuf), o.SndTmoSec, o.SndTmoUsec, o.RcvTmoSec, o.RcvTmoUsec,
			uint64(o.Priority), uint64(o.Rcvlowat), uint64(o.Mark), uint64(o.Oobinline), uint64(o.Linger), uint64(o.BufLock)} {
			e.Uint(v)
		}
		for _, b := range []bool{o.Passcred, o.Passsec, o.Reuseaddr, o.Reuseport, o.Dontroute, o.Broadcast, o.Keepalive} {
			e.Bool(b)
		}
		e.String(o.BoundDev)
		e.Uint(uint64(len(o.Filter)))
		for _, w := range o.Filter {
			e.Uint(w)
		}
		e.Uint(uint64(s.Create))
		e.Uint(uint64(s.Partner + 2))
		e.Uint(uint64(s.Listener + 2))
		e.Bool(s.Bind)
		e.Bool(s.Listen)
		e.Uint(uint64(s.ConnectTo + 2))
		e.Uint(uint64(s.Pending + 2))
		e.Bytes(s.ExtName)
		e.String(s.ExtDir)
		e.Bool(s.Disconnect)
		e.Uint(uint64(s.Sender + 3))
		e.Uint(uint64(len(s.Packets)))
		for _, pk := range s.Packets {
			e.Bytes(pk.Data)
			e.Uint(uint64(len(pk.Fds)))
			for _, id := range pk.Fds {
				e.Uint(uint64(id))
			}
		}
	}
	return e.B, nil
}

// UnmarshalBinary decodes what MarshalBinary wrote and checks that every
// index it holds is in range.
func (p *Params) UnmarshalBinary(b []byte) error {
	d := files.Dec{B: b}
	count := func() int {
		n := d.Uint()
		if n > uint64(len(d.B)) {
			if d.Err == nil {
				d.Err = fmt.Errorf("unix socket parameters: count %d exceeds the %d bytes left", n, len(d.B))
			}
			return 0
		}
		return int(n)
	}
	idx := func() int32 { return int32(d.Uint32()) - 2 }
	p.Split = d.Bool()
	if n := count(); n > 0 {
		p.Order = make([]int32, n)
		for i := range p.Order {
			p.Order[i] = int32(d.Uint32())
		}
	}
	p.Socks = make([]Sock, count())
	for i := range p.Socks {
		s := &p.Socks[i]
		s.File, s.Ino, s.Type, s.Flags = d.Uint32(), d.Uint32(), uint8(d.Uint()), d.Uint32()
		s.Fown = d.Fown()
		s.Backlog = d.Uint32()
		s.Name, s.NameDir, s.Deleted = d.Bytes(), d.String(), d.Bool()
		s.HasPerms, s.Mode, s.UID, s.GID = d.Bool(), d.Uint32(), d.Uint32(), d.Uint32()
		s.Shutdown = uint8(d.Uint())
		o := &s.Opts
		o.Sndbuf, o.Rcvbuf = d.Uint32(), d.Uint32()
		o.SndTmoSec, o.SndTmoUsec, o.RcvTmoSec, o.RcvTmoUsec = d.Uint(), d.Uint(), d.Uint(), d.Uint()
		o.Priority, o.Rcvlowat, o.Mark, o.Oobinline, o.Linger, o.BufLock = d.Uint32(), d.Uint32(), d.Uint32(), d.Uint32(), d.Uint32(), d.Uint32()
		o.Passcred, o.Passsec, o.Reuseaddr, o.Reuseport, o.Dontroute, o.Broadcast, o.Keepalive = d.Bool(), d.Bool(), d.Bool(), d.Bool(), d.Bool(), d.Bool(), d.Bool()
		o.BoundDev = d.String()
		if n := count(); n > 0 {
			o.Filter = make([]uint64, n)
			for j := range o.Filter {
				o.Filter[j] = d.Uint()
			}
		}
		s.Create = uint8(d.Uint())
		s.Partner, s.Listener = idx(), idx()
		s.Bind, s.Listen = d.Bool(), d.Bool()
		s.ConnectTo, s.Pending = idx(), idx()
		s.ExtName, s.ExtDir = d.Bytes(), d.String()
		s.Disconnect = d.Bool()
		s.Sender = int32(d.Uint32()) - 3
		if n := count(); n > 0 {
			s.Packets = make([]Packet, n)
			for j := range s.Packets {
				pk := &s.Packets[j]
				pk.Data = d.Bytes()
				if m := count(); m > 0 {
					pk.Fds = make([]uint32, m)
					for k := range pk.Fds {
						pk.Fds[k] = d.Uint32()
					}
				}
			}
		}
		if d.Err != nil {
			break
		}
	}
	if err := d.Done(); err != nil {
		return err
	}
	return p.check()
}

// check verifies the indexes and roles.
func (p *Params) check() error {
	n := int32(len(p.Socks))
	in := func(i int32) bool { return i >= 0 && i < n }
	ordered := make([]bool, n)
	for _, i := range p.Order {
		if !in(i) || ordered[i] || p.Socks[i].Type != TypeDgram {
			return fmt.Errorf("unix socket parameters: order names socket %d twice, out of range or not a datagram socket", i)
		}
		ordered[i] = true
	}
	opt := func(i int32) bool { return i == -1 || in(i) }
	for i := range p.Socks {
		s := &p.Socks[i]
		bad := func(what string) error {
			return fmt.Errorf("unix socket parameters: socket %d (file id %d): %s", i, s.File, what)
		}
		switch s.Create {
		case CreatePlain, CreateTmpPair:
		case CreatePair, CreatePairEnd, CreateClient:
			if !in(s.Partner) || s.Partner == int32(i) {
				return bad("partner out of range")
			}
		case CreateAccepted:
			if !in(s.Partner) || s.Partner == int32(i) || !opt(s.Listener) {
				return bad("partner or listener out of range")
			}
			if p.Socks[s.Partner].Create != CreateClient {
				return bad("accepted connection's partner is not its client")
			}
		default:
			return bad(fmt.Sprintf("unknown creation %d", s.Create))
		}
		if s.Create == CreatePair && p.Socks[s.Partner].Create != CreatePairEnd {
			return bad("socketpair partner is not a pair end")
		}
		if !opt(s.ConnectTo) || !opt(s.Pending) || !(s.Sender == SendNone || s.Sender == SendTmp || s.Sender == SendName || in(s.Sender)) {
			return bad("connect, pending or sender index out of range")
		}
		if s.Sender == SendName && len(s.Name) == 0 {
			return bad("refilled through its name, but it has none")
		}
		if s.Type == TypeDgram && !ordered[i] {
			return bad("datagram socket missing from the order")
		}
		if s.Sender == SendTmp && s.Create != CreateTmpPair {
			return bad("refilled by a temporary socket it does not have")
		}
		switch s.Type {
		case TypeStream, TypeDgram, TypeSeqpacket:
		default:
			return bad(fmt.Sprintf("socket type %d", s.Type))
		}
	}
	return nil
}

// plain reports whether every option but the buffer sizes is a fresh
// socket's.
func (o *Opts) plain() bool {
	return o.SndTmoSec == 0 && o.SndTmoUsec == 0 && o.RcvTmoSec == 0 && o.RcvTmoUsec == 0 &&
		o.Priority == 0 && o.Rcvlowat <= 1 && o.Mark == 0 && !o.Passcred && !o.Passsec &&
		!o.Reuseaddr && !o.Reuseport && !o.Dontroute && !o.Broadcast && !o.Keepalive &&
		o.Oobinline == 0 && o.Linger == 0 && o.BufLock == 0 && o.BoundDev == "" && len(o.Filter) == 0
}
