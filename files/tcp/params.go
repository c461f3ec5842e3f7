// Package tcp restores inet sockets: TCP listeners, bound and unconnected
// sockets, established connections through TCP_REPAIR (sequence numbers,
// options, window, and both queues byte-exact), and UDP sockets bound or
// connected.
//
// Every socket is made by the task that holds it, in one call. Sockets
// other than connections are created with SO_REUSEADDR on, so that a
// listener and the connections accepted from it (which share its port) can
// all be bound whatever order they come in; a repaired socket binds with
// the kernel's forced reuse. Connections stay in repair mode until the
// whole tree is restored: the opener registers an after-tree step
// (files.Context.AfterTree) that turns repair off, writes the part of the
// send queue that had never been sent, and puts SO_REUSEADDR back to the
// recorded value. A restore that fails before then closes its repaired
// sockets in repair mode, which releases their ports without sending a
// reset to the peer.
package tcp

import (
	"fmt"

	"github.com/fdrestore/fdrestore/files"
)

// Type is the opener type name of inet sockets.
const Type = "inet"

// Mode says how a socket is restored.
type Mode uint8

// The restore modes.
const (
	// ModePlain: socket and options only (an unbound, unconnected socket,
	// or a connection restored closed with --tcp-close).
	ModePlain Mode = iota
	// ModeBound: bound to its address, nothing more.
	ModeBound
	// ModeListen: bound, then listen(backlog).
	ModeListen
	// ModeConnect: bound when it had a port, then connect() (UDP).
	ModeConnect
	// ModeRepair: a TCP connection rebuilt in repair mode from its stream.
	ModeRepair
	// ModePending: the client of a connection that was in the accept
	// queue of a listener of the tree: bound to its address, it connects
	// for real to the restored listener (Params.Listener, which the
	// spec Needs) and writes again what it had sent (Params.Sent).
	ModePending
)

var modeNames = [...]string{"plain", "bound", "listen", "connect", "repair", "pending"}

func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("Mode(%d)", m)
}

// TCP states as the kernel numbers them (include/net/tcp_states.h).
const (
	StateEstablished = 1
	StateSynSent     = 2
	StateSynRecv     = 3
	StateFinWait1    = 4
	StateFinWait2    = 5
	StateTimeWait    = 6
	StateClose       = 7
	StateCloseWait   = 8
	StateLastAck     = 9
	StateListen      = 10
	StateClosing     = 11
)

// StateName returns the kernel's name of a TCP state.
func StateName(s uint32) string {
	names := [...]string{"", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING"}
	if s > 0 && int(s) < len(names) {
		return names[s]
	}
	return fmt.Sprintf("state %d", s)
}

// Opts are the socket-level and TCP options restored on every socket.
type Opts struct {
	SndBuf, RcvBuf   uint32 // as getsockopt reported them
	BufLock          uint32 // SOCK_SNDBUF_LOCK | SOCK_RCVBUF_LOCK
	HasBufLock       bool
	SndTmo, RcvTmo   [2]uint64 // seconds, microseconds
	ReuseAddr        bool
	ReusePort        bool
	Priority         uint32
	RcvLowat         uint32
	Mark             uint32
	Broadcast        bool
	Keepalive        bool
	DontRoute        bool
	OOBInline        bool
	KeepCnt          uint32 // 0: not recorded
	KeepIdle         uint32
	KeepIntvl        uint32
	Linger           uint32
	HasLinger        bool // SO_LINGER on, with Linger seconds
	Nodelay, Cork    bool
	BoundDev         string
	FreeBind         bool
	TOS, TTL         uint32 // 0: not recorded
	HasTOS, HasTTL   bool
	V6Only           bool
	Shutdown         uint32 // 1 read, 2 write, 3 both
	ShutdownRecorded bool
}

// Stream is a connection's tcp-stream image.
type Stream struct {
	InqSeq, OutqSeq uint32
	OptMask         uint32 // TCPI_OPT_TIMESTAMPS 1, SACK 2, WSCALE 4
	SndWscale       uint32
	RcvWscale       uint32
	MssClamp        uint32
	Timestamp       uint32
	InQ, OutQ       []byte
	UnsqLen         uint32 // never-sent tail of OutQ
	HasWindow       bool
	Window          RepairWindow
}

// RepairWindow is struct tcp_repair_window.
type RepairWindow struct {
	SndWl1, SndWnd, MaxWindow, RcvWnd, RcvWup uint32
}

// Params describes one inet socket description.
type Params struct {
	File    uint32
	Ino     uint32
	Family  uint32 // AF_INET or AF_INET6
	SkType  uint32 // SOCK_STREAM or SOCK_DGRAM
	Proto   uint32 // IPPROTO_TCP or IPPROTO_UDP
	State   uint32 // TCP state as recorded
	Flags   uint32 // status flags (O_NONBLOCK, ...)
	Fown    files.Fown
	Src     []byte // 4 or 16 bytes, network order
	SrcPort uint32
	Dst     []byte
	DstPort uint32
	Backlog uint32
	Mode    Mode
	Opts    Opts
	Stream  Stream // ModeRepair only
	// ModePending only: the listener's file id, and the bytes sent that
	// the listener's side had received.
	Listener uint32
	Sent     []byte
}

// MarshalBinary encodes p for OpenSpec.Data.
func (p Params) MarshalBinary() ([]byte, error) {
	e := files.Enc{B: make([]byte, 0, 128+len(p.Stream.InQ)+len(p.Stream.OutQ))}
	for _, v := range []uint32{p.File, p.Ino, p.Family, p.SkType, p.Proto, p.State, p.Flags, p.SrcPort, p.DstPort, p.Backlog, uint32(p.Mode)} {
		e.Uint(uint64(v))
	}
	e.Fown(p.Fown)
	e.Bytes(p.Src)
	e.Bytes(p.Dst)
	o := &p.Opts
	for _, v := range []uint32{o.SndBuf, o.RcvBuf, o.BufLock, o.Priority, o.RcvLowat, o.Mark, o.KeepCnt, o.KeepIdle, o.KeepIntvl, o.Linger, o.TOS, o.TTL, o.Shutdown} {
		e.Uint(uint64(v))
	}
	for _, v := range o.SndTmo {
		e.Uint(v)
	}
	for _, v := range o.RcvTmo {
		e.Uint(v)
	}
	for _, b := range []bool{o.HasBufLock, o.ReuseAddr, o.ReusePort, o.Broadcast, o.Keepalive, o.DontRoute, o.OOBInline, o.HasLinger, o.Nodelay, o.Cork, o.FreeBind, o.HasTOS, o.HasTTL, o.V6Only, o.ShutdownRecorded} {
		e.Bool(b)
	}
	e.String(o.BoundDev)
	if p.Mode == ModeRepair {
		s := &p.Stream
		w := &s.Window
		for _, v := range []uint32{s.InqSeq, s.OutqSeq, s.OptMask, s.SndWscale, s.RcvWscale, s.MssClamp, s.Timestamp, s.UnsqLen, w.SndWl1, w.SndWnd, w.MaxWindow, w.RcvWnd, w.RcvWup} {
			e.Uint(uint64(v))
		}
		e.Bool(s.HasWindow)
		e.Bytes(s.InQ)
		e.Bytes(s.OutQ)
	}
	if p.Mode == ModePending {
		e.Uint(uint64(p.Listener))
		e.Bytes(p.Sent)
	}
	return e.B, nil
}

// UnmarshalBinary decodes what MarshalBinary wrote.
func (p *Params) UnmarshalBinary(b []byte) error {
	d := files.Dec{B: b}
	var mode uint32
	for _, v := range []*uint32{&p.File, &p.Ino, &p.Family, &p.SkType, &p.Proto, &p.State, &p.Flags, &p.SrcPort, &p.DstPort, &p.Backlog, &mode} {
		*v = d.Uint32()
	}
	p.Mode = Mode(mode)
	p.Fown = d.Fown()
	p.Src, p.Dst = d.Bytes(), d.Bytes()
	o := &p.Opts
	for _, v := range []*uint32{&o.SndBuf, &o.RcvBuf, &o.BufLock, &o.Priority, &o.RcvLowat, &o.Mark, &o.KeepCnt, &o.KeepIdle, &o.KeepIntvl, &o.Linger, &o.TOS, &o.TTL, &o.Shutdown} {
		*v = d.Uint32()
	}
	for i := range o.SndTmo {
		o.SndTmo[i] = d.Uint()
	}
	for i := range o.RcvTmo {
		o.RcvTmo[i] = d.Uint()
	}
	for _, v := range []*bool{&o.HasBufLock, &o.ReuseAddr, &o.ReusePort, &o.Broadcast, &o.Keepalive, &o.DontRoute, &o.OOBInline, &o.HasLinger, &o.Nodelay, &o.Cork, &o.FreeBind, &o.HasTOS, &o.HasTTL, &o.V6Only, &o.ShutdownRecorded} {
		*v = d.Bool()
	}
	o.BoundDev = d.String()
	if p.Mode == ModeRepair {
		s := &p.Stream
		w := &s.Window
		for _, v := range []*uint32{&s.InqSeq, &s.OutqSeq, &s.OptMask, &s.SndWscale, &s.RcvWscale, &s.MssClamp, &s.Timestamp, &s.UnsqLen, &w.SndWl1, &w.SndWnd, &w.MaxWindow, &w.RcvWnd, &w.RcvWup} {
			*v = d.Uint32()
		}
		s.HasWindow = d.Bool()
		s.InQ, s.OutQ = d.Bytes(), d.Bytes()
	}
	if p.Mode == ModePending {
		p.Listener = d.Uint32()
		p.Sent = d.Bytes()
	}
	if err := d.Done(); err != nil {
		return err
	}
	if p.Mode > ModePending {
		return fmt.Errorf("inet parameters: unknown mode %d", p.Mode)
	}
	if p.Mode == ModeRepair && p.Stream.UnsqLen > uint32(len(p.Stream.OutQ)) {
		return fmt.Errorf("inet parameters: %d never-sent bytes in a send queue of %d", p.Stream.UnsqLen, len(p.Stream.OutQ))
	}
	return nil
}
