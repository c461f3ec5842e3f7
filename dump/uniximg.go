package dump

import (
	"fmt"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// unixWriter writes unix socket entries in CRIU's order: a socket's queue
// (and the files in flight in it) when the socket gets its id, its
// unix_sk_entry at once unless its peer in the tree has not been dumped
// yet, in which case it follows the peer's entry (latest deferred first);
// sockets connected to an outside socket follow that socket's USK_EXTERN
// entry at the end of files.img.
type unixWriter struct {
	s       *state
	add     func(*criupb.FileEntry)
	netnsID func(ino uint64) *uint32

	ids     map[*unixSock]uint32
	dumped  map[uint32]bool                // socket inodes whose dump began
	waiting map[uint32][]*criupb.FileEntry // entries held until the peer (by inode) is dumped
	extList []*unixDiag                    // outside peers, in order of first use
	packets []*images.Entry                // sk-queues.img
	bytes   int64
}

// dump writes socket e (description id) and its queue; fileID numbers the
// files in flight.
func (w *unixWriter) dump(e *fdEnt, id uint32, fileID func(*fdEnt) uint32) {
	if w.ids == nil {
		w.ids, w.dumped, w.waiting = map[*unixSock]uint32{}, map[uint32]bool{}, map[uint32][]*criupb.FileEntry{}
	}
	sk := e.usk
	w.ids[sk] = id
	for _, p := range sk.packets {
		pe := &criupb.SkPacketEntry{IdFor: proto.Uint32(id), Length: proto.Uint32(uint32(len(p.data)))}
		if len(p.rights) > 0 {
			scm := &criupb.ScmEntry{Type: proto.Uint32(unix.SCM_RIGHTS)}
			for _, r := range p.rights {
				scm.Rights = append(scm.Rights, fileID(r))
			}
			pe.Scm = []*criupb.ScmEntry{scm}
		}
		w.packets = append(w.packets, &images.Entry{Msg: pe, Trailer: p.data})
		w.bytes += int64(len(p.data))
	}
	fe := &criupb.FileEntry{Type: criupb.FdTypes_UNIXSK.Enum(), Id: proto.Uint32(id), Usk: w.entry(e, id)}
	switch {
	case sk.ext != nil:
		if w.waiting[sk.peer] == nil {
			w.extList = append(w.extList, sk.ext)
		}
		w.waiting[sk.peer] = append(w.waiting[sk.peer], fe)
	case sk.peer != 0 && w.s.socks[sk.peer] != nil && !w.dumped[sk.peer] && sk.peer != sk.ino:
		w.waiting[sk.peer] = append(w.waiting[sk.peer], fe)
	default:
		w.add(fe)
	}
	w.dumped[sk.ino] = true
	w.flush(sk.ino)
}

// flush writes the entries that waited for socket ino.
func (w *unixWriter) flush(ino uint32) {
	l := w.waiting[ino]
	for i := len(l) - 1; i >= 0; i-- {
		w.add(l[i])
	}
	delete(w.waiting, ino)
}

// external writes the outside peers (USK_EXTERN) and the sockets
// connected to them; newID hands out file ids. Every entry must have been
// written by then.
func (w *unixWriter) external(newID func() uint32) error {
	for _, d := range w.extList {
		id := newID()
		w.add(&criupb.FileEntry{Type: criupb.FdTypes_UNIXSK.Enum(), Id: proto.Uint32(id), Usk: &criupb.UnixSkEntry{
			Id: proto.Uint32(id), Ino: proto.Uint32(d.ino), Type: proto.Uint32(unix.SOCK_DGRAM),
			State: proto.Uint32(tcpListen), Flags: proto.Uint32(0), Uflags: proto.Uint32(uskExtern),
			Backlog: proto.Uint32(0), Peer: proto.Uint32(0), Fown: fownEntry([5]uint32{}),
			Opts: &criupb.SkOptsEntry{SoSndbuf: proto.Uint32(0), SoRcvbuf: proto.Uint32(0),
				SoSndTmoSec: proto.Uint64(0), SoSndTmoUsec: proto.Uint64(0), SoRcvTmoSec: proto.Uint64(0), SoRcvTmoUsec: proto.Uint64(0)},
			Name: append([]byte{}, d.name...),
		}})
		w.flush(d.ino)
	}
	for ino, l := range w.waiting {
		return fmt.Errorf("dump: %d unix socket entries wait for socket:[%d], which was never dumped (first: file id %d)", len(l), ino, l[0].GetId())
	}
	return nil
}

// entry is socket e's unix_sk_entry.
func (w *unixWriter) entry(e *fdEnt, id uint32) *criupb.UnixSkEntry {
	sk := e.usk
	d := sk.diag
	u := &criupb.UnixSkEntry{
		Id: proto.Uint32(id), Ino: proto.Uint32(sk.ino), Type: proto.Uint32(uint32(d.typ)),
		State: proto.Uint32(uint32(d.state)), Flags: proto.Uint32(e.flags), Uflags: proto.Uint32(0),
		Backlog: proto.Uint32(d.wqlen), Peer: proto.Uint32(sk.peer), Fown: fownEntry(e.fown),
		Opts: skOptsEntry(&sk.opts), Name: append([]byte{}, d.name...),
		NsId: w.netnsID(sk.netns),
	}
	if d.shutdown&3 != 0 {
		u.Shutdown = criupb.SkShutdown(d.shutdown & 3).Enum()
	}
	if sk.perms != nil {
		u.FilePerms = &criupb.FilePermsEntry{Mode: proto.Uint32(sk.perms[0]), Uid: proto.Uint32(sk.perms[1]), Gid: proto.Uint32(sk.perms[2])}
	}
	if sk.deleted {
		u.Deleted = proto.Bool(true)
	}
	if sk.nameDir != "" {
		u.NameDir = proto.String(sk.nameDir)
	}
	return u
}

// skOptsEntry is o as CRIU 4.2 records it for a unix socket.
func skOptsEntry(o *skOpts) *criupb.SkOptsEntry {
	e := &criupb.SkOptsEntry{
		SoSndbuf: proto.Uint32(o.sndbuf), SoRcvbuf: proto.Uint32(o.rcvbuf),
		SoSndTmoSec: proto.Uint64(uint64(o.sndTmo.Sec)), SoSndTmoUsec: proto.Uint64(uint64(o.sndTmo.Usec)),
		SoRcvTmoSec: proto.Uint64(uint64(o.rcvTmo.Sec)), SoRcvTmoUsec: proto.Uint64(uint64(o.rcvTmo.Usec)),
		Reuseaddr: proto.Bool(o.reuseaddr), SoPriority: proto.Uint32(o.priority), SoRcvlowat: proto.Uint32(o.rcvlowat),
		SoPasscred: proto.Bool(o.passcred), SoPasssec: proto.Bool(o.passsec),
		SoDontroute: proto.Bool(o.dontroute), SoNoCheck: proto.Bool(o.noCheck),
		SoReuseport: proto.Bool(o.reuseport), SoBroadcast: proto.Bool(o.broadcast), SoKeepalive: proto.Bool(o.keepalive),
		SoOobinline: proto.Uint32(o.oobinline), SoBufLock: proto.Uint32(0), // 0 before Linux 5.14
		SoFilter: o.filter,
	}
	if o.bufLock != nil {
		e.SoBufLock = proto.Uint32(*o.bufLock)
	}
	if o.mark != 0 {
		e.SoMark = proto.Uint32(o.mark)
	}
	if o.boundDev != "" {
		e.SoBoundDev = proto.String(o.boundDev)
	}
	if o.linger != nil {
		e.SoLinger = proto.Uint32(*o.linger)
	}
	return e
}
