package images

import (
	"math"

	"github.com/fdrestore/fdrestore/proto/criupb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// fastDec decodes the entries that come by the ten thousand — fdinfo
// entries, and files.img entries of pipes — without proto.Unmarshal's
// allocation per field: the messages and their optional scalars are carved
// from chunks. It takes only the plain encoding of the fields it knows,
// each once, all required ones present; on anything else (an unknown or
// repeated field, another payload, an unknown enum value, a value beyond
// 32 bits) it reports false and the caller uses proto.Unmarshal, so the
// message is always the one proto.Unmarshal would make, unknown fields
// included.
type fastDec struct {
	n       int // entries decoded, to size the chunks
	u32     []uint32
	types   []criupb.FdTypes
	fdinfos []criupb.FdinfoEntry
	files   []criupb.FileEntry
	pipes   []criupb.PipeEntry
	fowns   []criupb.FownEntry
}

// allocChunk returns how many items to allocate at once after n: few for
// the many images of one entry, up to 512 for the large ones.
func allocChunk(n int) int { return min(max(2*n, 8), 512) }

// decode returns the message of body for kind k, or nil when body is not
// one it takes.
func (d *fastDec) decode(k *Kind, body []byte) proto.Message {
	switch k.Magic {
	case MagicFdinfo:
		if m := d.fdinfo(body); m != nil {
			return m
		}
	case MagicFiles:
		if m := d.file(body); m != nil {
			return m
		}
	}
	return nil
}

// fields walks the varint and bytes fields of b, calling fn with the field
// number, the varint (for wire type varint) or the bytes. It stops with
// false at anything else, at a malformed field, and when fn returns false.
func fields(b []byte, fn func(num protowire.Number, v uint64, bs []byte) bool) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch typ {
		case protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 || v > math.MaxUint32 || !fn(num, v, nil) {
				return false
			}
			b = b[n:]
		case protowire.BytesType:
			bs, n := protowire.ConsumeBytes(b)
			if n < 0 || !fn(num, 0, bs) {
				return false
			}
			b = b[n:]
		default:
			return false
		}
	}
	return true
}

func (d *fastDec) uint32p(v uint64) *uint32 {
	if len(d.u32) == 0 {
		d.u32 = make([]uint32, 4*allocChunk(d.n))
	}
	p := &d.u32[0]
	*p = uint32(v)
	d.u32 = d.u32[1:]
	return p
}

func (d *fastDec) fdType(v uint64) (*criupb.FdTypes, bool) {
	if _, ok := criupb.FdTypes_name[int32(v)]; !ok || v > math.MaxInt32 {
		return nil, false // proto2 keeps unknown enum values as unknown fields
	}
	if len(d.types) == 0 {
		d.types = make([]criupb.FdTypes, allocChunk(d.n))
	}
	p := &d.types[0]
	*p = criupb.FdTypes(v)
	d.types = d.types[1:]
	return p, true
}

func (d *fastDec) fdinfo(body []byte) *criupb.FdinfoEntry {
	var id, flags, fd *uint32
	var typ *criupb.FdTypes
	ok := fields(body, func(num protowire.Number, v uint64, bs []byte) bool {
		if bs != nil {
			return false
		}
		switch {
		case num == 1 && id == nil:
			id = d.uint32p(v)
		case num == 2 && flags == nil:
			flags = d.uint32p(v)
		case num == 3 && typ == nil:
			var good bool
			typ, good = d.fdType(v)
			return good
		case num == 4 && fd == nil:
			fd = d.uint32p(v)
		default:
			return false
		}
		return true
	})
	if !ok || id == nil || flags == nil || typ == nil || fd == nil {
		return nil
	}
	if len(d.fdinfos) == 0 {
		d.fdinfos = make([]criupb.FdinfoEntry, allocChunk(d.n))
	}
	m := &d.fdinfos[0]
	d.fdinfos = d.fdinfos[1:]
	m.Id, m.Flags, m.Type, m.Fd = id, flags, typ, fd
	d.n++
	return m
}

func (d *fastDec) file(body []byte) *criupb.FileEntry {
	var id *uint32
	var typ *criupb.FdTypes
	var pipe *criupb.PipeEntry
	ok := fields(body, func(num protowire.Number, v uint64, bs []byte) bool {
		switch {
		case num == 1 && bs == nil && typ == nil:
			var good bool
			typ, good = d.fdType(v)
			return good
		case num == 2 && bs == nil && id == nil:
			id = d.uint32p(v)
		case num == 18 && bs != nil && pipe == nil:
			pipe = d.pipe(bs)
			return pipe != nil
		default:
			return false
		}
		return true
	})
	if !ok || id == nil || typ == nil {
		return nil
	}
	if len(d.files) == 0 {
		d.files = make([]criupb.FileEntry, allocChunk(d.n))
	}
	m := &d.files[0]
	d.files = d.files[1:]
	m.Type, m.Id, m.Pipe = typ, id, pipe
	d.n++
	return m
}

func (d *fastDec) pipe(body []byte) *criupb.PipeEntry {
	var id, pipeID, flags *uint32
	var fown *criupb.FownEntry
	ok := fields(body, func(num protowire.Number, v uint64, bs []byte) bool {
		switch {
		case num == 1 && bs == nil && id == nil:
			id = d.uint32p(v)
		case num == 2 && bs == nil && pipeID == nil:
			pipeID = d.uint32p(v)
		case num == 3 && bs == nil && flags == nil:
			flags = d.uint32p(v)
		case num == 4 && bs != nil && fown == nil:
			fown = d.fown(bs)
			return fown != nil
		default:
			return false
		}
		return true
	})
	if !ok || id == nil || pipeID == nil || flags == nil || fown == nil {
		return nil
	}
	if len(d.pipes) == 0 {
		d.pipes = make([]criupb.PipeEntry, allocChunk(d.n))
	}
	m := &d.pipes[0]
	d.pipes = d.pipes[1:]
	m.Id, m.PipeId, m.Flags, m.Fown = id, pipeID, flags, fown
	return m
}

func (d *fastDec) fown(body []byte) *criupb.FownEntry {
	var f [5]*uint32 // uid, euid, signum, pid_type, pid
	ok := fields(body, func(num protowire.Number, v uint64, bs []byte) bool {
		if bs != nil || num < 1 || num > 5 || f[num-1] != nil {
			return false
		}
		f[num-1] = d.uint32p(v)
		return true
	})
	if !ok || f[0] == nil || f[1] == nil || f[2] == nil || f[3] == nil || f[4] == nil {
		return nil
	}
	if len(d.fowns) == 0 {
		d.fowns = make([]criupb.FownEntry, allocChunk(d.n))
	}
	m := &d.fowns[0]
	d.fowns = d.fowns[1:]
	m.Uid, m.Euid, m.Signum, m.PidType, m.Pid = f[0], f[1], f[2], f[3], f[4]
	return m
}
