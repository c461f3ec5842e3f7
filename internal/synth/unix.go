package synth

import (
	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// Unix socket types and states as unix_sk_entry records them.
const (
	Stream    = 1
	Dgram     = 2
	Seqpacket = 5

	Established = 1
	Closed      = 7
	Listening   = 10

	// DefaultBuf is SO_SNDBUF and SO_RCVBUF of a fresh socket with the
	// usual sysctl defaults.
	DefaultBuf = 212992
)

type packet struct {
	to   *Desc
	data []byte
	fds  []*Desc
}

// UnixSocket adds a unix socket description: its type, state and bound
// name (nil: unnamed; abstract names start with a NUL byte; path names
// are recorded with their terminating NUL, as CRIU does). It has no peer
// and default options; change them through Usk. Socket inodes are
// assigned from 0x20000.
func (b *Builder) UnixSocket(typ, state uint32, name []byte) *Desc {
	d := b.newDesc(criupb.FdTypes_UNIXSK)
	ino := b.nextSkIno()
	if name == nil {
		name = []byte{}
	} else if len(name) > 0 && name[0] != 0 {
		name = append(append([]byte(nil), name...), 0)
	}
	d.entry.Usk = &criupb.UnixSkEntry{
		Id: proto.Uint32(d.ID), Ino: proto.Uint32(ino), Type: proto.Uint32(typ), State: proto.Uint32(state),
		Flags: proto.Uint32(unix.O_RDWR), Uflags: proto.Uint32(0), Backlog: proto.Uint32(0), Peer: proto.Uint32(0),
		Fown: fown(), Name: name,
		Opts: &criupb.SkOptsEntry{SoSndbuf: proto.Uint32(DefaultBuf), SoRcvbuf: proto.Uint32(DefaultBuf),
			SoSndTmoSec: proto.Uint64(0), SoSndTmoUsec: proto.Uint64(0), SoRcvTmoSec: proto.Uint64(0), SoRcvTmoUsec: proto.Uint64(0)},
	}
	return d
}

func (b *Builder) nextSkIno() uint32 {
	if b.skIno == 0 {
		b.skIno = 0x20000
	}
	b.skIno++
	return b.skIno
}

// Usk returns the unix_sk_entry of a unix socket description, to adjust.
func (d *Desc) Usk() *criupb.UnixSkEntry { return d.entry.Usk }

// Connect records p as a's peer (a one-way link: a dgram client, a
// connection waiting in a listener's queue).
func (b *Builder) Connect(a, p *Desc) {
	if a.entry.Usk == nil || p.entry.Usk == nil {
		b.errorf("Connect: file ids %d and %d must both be unix sockets", a.ID, p.ID)
		return
	}
	a.entry.Usk.Peer = proto.Uint32(p.entry.Usk.GetIno())
}

// UnixPair adds two connected sockets of type typ, each the other's peer
// (a socketpair), unnamed.
func (b *Builder) UnixPair(typ uint32) (x, y *Desc) {
	x = b.UnixSocket(typ, Established, nil)
	y = b.UnixSocket(typ, Established, nil)
	b.Connect(x, y)
	b.Connect(y, x)
	return x, y
}

// Packet queues data on socket to's receive queue, carrying files with
// SCM_RIGHTS.
func (b *Builder) Packet(to *Desc, data []byte, fds ...*Desc) {
	if to.entry.Usk == nil {
		b.errorf("Packet: file id %d is not a unix socket", to.ID)
		return
	}
	b.packets = append(b.packets, packet{to, data, fds})
}

// NewPipe adds a pipe whose ends are not installed anywhere yet (install
// them with Share, or leave them in flight).
func (b *Builder) NewPipe(data []byte, size uint32) *Pipe {
	p := &Pipe{PipeID: b.nextPI, Data: data, Size: size}
	b.nextPI++
	mk := func(flags uint32) *Desc {
		d := b.newDesc(criupb.FdTypes_PIPE)
		d.entry.Pipe = &criupb.PipeEntry{Id: proto.Uint32(d.ID), PipeId: proto.Uint32(p.PipeID), Flags: proto.Uint32(flags), Fown: fown()}
		return d
	}
	p.Read, p.Write = mk(unix.O_RDONLY), mk(unix.O_WRONLY)
	b.pipes = append(b.pipes, p)
	return p
}

// DevNull adds a /dev/null description with the given flags, not
// installed anywhere.
func (b *Builder) DevNull(flags uint32) *Desc {
	return b.regDesc("/dev/null", flags|unix.O_LARGEFILE, 0)
}

func (b *Builder) skQueues() []*images.Entry {
	var out []*images.Entry
	for _, p := range b.packets {
		pe := &criupb.SkPacketEntry{IdFor: proto.Uint32(p.to.ID), Length: proto.Uint32(uint32(len(p.data)))}
		if len(p.fds) > 0 {
			ids := make([]uint32, len(p.fds))
			for i, d := range p.fds {
				ids[i] = d.ID
			}
			pe.Scm = []*criupb.ScmEntry{{Type: proto.Uint32(1), Rights: ids}}
		}
		out = append(out, &images.Entry{Msg: pe, Trailer: p.data})
	}
	return out
}

// RawFile adds a description of any type, filled in by fill (the type's
// entry of files.img, with id already set), not installed anywhere.
func (b *Builder) RawFile(typ criupb.FdTypes, fill func(fe *criupb.FileEntry)) *Desc {
	d := b.newDesc(typ)
	fill(d.entry)
	return d
}
