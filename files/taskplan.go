package files

import (
	"encoding"
	"errors"
	"fmt"
	"unsafe"
)

// TaskPlan is everything one restore helper needs to rebuild its task's fd
// table: the fds to place, the objects it creates itself, and where each
// created description must be sent. The coordinator builds one per task and
// hands it to the task's helper.
type TaskPlan struct {
	Task  uint32 // task index in the restore (transport address)
	Pid   uint32 // the task's pid in the images, for messages
	RunID string // transport run id

	// Fles are the task's fds, sorted by fd number.
	Fles []Fle
	// Opens are the objects this task creates, in the order to try them.
	Opens []OpenSpec
	// Hold lists descriptions the task must hold without an fd of its own
	// (files in flight, queue refills): they arrive like any other and are
	// closed when the task is done.
	Hold []uint32
	// PidMap maps image pids to restored pids, for fown and the like.
	PidMap map[uint32]uint32
	// SkipFileCheck turns off the size and mode checks of regular files.
	SkipFileCheck bool
	// Inherited are the fds the caller handed over for this task (see
	// files/inherit), as the helper received them with the plan. Not
	// encoded: they travel as SCM_RIGHTS beside it.
	Inherited []int
}

// Fle is one fd of the task: its number, the description it refers to and
// its fd flags.
type Fle struct {
	Fd      int32
	File    uint32 // file id (files.img) of the description
	Cloexec bool
}

// OpenSpec says how to create one object of a registered type.
type OpenSpec struct {
	Type string // registered opener type, e.g. "pipe"
	// Files are the descriptions the opener publishes.
	Files []uint32
	// SendTo lists, for each of Files, the other tasks that need it.
	SendTo [][]uint32
	// Needs lists descriptions that must be present in this task (placed
	// or held) before the opener runs.
	Needs []uint32
	// Data holds the type's parameters, encoded by the type's planner.
	Data []byte
	// Name describes the object in messages, e.g. "pipe:[1302207]".
	Name string
}

// MaxFd returns the task's highest target fd, or -1 when it has none.
func (p *TaskPlan) MaxFd() int {
	if len(p.Fles) == 0 {
		return -1
	}
	return int(p.Fles[len(p.Fles)-1].Fd)
}

// Validate checks the plan's own consistency: fles sorted with unique fd
// numbers, every published description routed, no description published
// twice.
func (p *TaskPlan) Validate() error {
	for i := range p.Fles {
		if p.Fles[i].Fd < 0 {
			return fmt.Errorf("task %d plan: negative fd %d", p.Pid, p.Fles[i].Fd)
		}
		if i > 0 && p.Fles[i].Fd < p.Fles[i-1].Fd {
			return fmt.Errorf("task %d plan: fles not sorted by fd", p.Pid)
		}
		if i > 0 && p.Fles[i].Fd == p.Fles[i-1].Fd {
			return fmt.Errorf("task %d plan: fd %d appears twice", p.Pid, p.Fles[i].Fd)
		}
	}
	n, maxID := 0, uint32(0)
	for i := range p.Opens {
		o := &p.Opens[i]
		if len(o.SendTo) != len(o.Files) {
			return fmt.Errorf("task %d plan: %s %s: %d routes for %d files", p.Pid, o.Type, o.Name, len(o.SendTo), len(o.Files))
		}
		n += len(o.Files)
		for _, f := range o.Files {
			maxID = max(maxID, f)
		}
	}
	// File ids are dense in practice: a bitmap then beats a map.
	var seen func(uint32) bool
	if uint64(maxID) < 8*uint64(n)+4096 {
		bits := make([]uint64, maxID/64+1)
		seen = func(f uint32) bool {
			w, b := f/64, uint64(1)<<(f%64)
			had := bits[w]&b != 0
			bits[w] |= b
			return had
		}
	} else {
		m := make(map[uint32]bool, n)
		seen = func(f uint32) bool {
			had := m[f]
			m[f] = true
			return had
		}
	}
	for i := range p.Opens {
		for _, f := range p.Opens[i].Files {
			if seen(f) {
				return fmt.Errorf("task %d plan: file id %d published twice", p.Pid, f)
			}
		}
	}
	return nil
}

// taskPlanMagic starts an encoded TaskPlan; its last byte is the version
// of the layout.
const taskPlanMagic = "fdrTP\x01"

// Encode serialises the plan in a compact binary form (see Enc): a plan
// holds one Fle per fd and one OpenSpec per object, tens of thousands of
// them in large trees, and gob costs several times more to encode and
// decode them.
func (p *TaskPlan) Encode() ([]byte, error) {
	e := Enc{B: make([]byte, 0, 64+len(p.Fles)*6+len(p.Opens)*64)}
	e.B = append(e.B, taskPlanMagic...)
	e.Uint(uint64(p.Task))
	e.Uint(uint64(p.Pid))
	e.String(p.RunID)
	e.Bool(p.SkipFileCheck)
	e.Uint(uint64(len(p.Fles)))
	for _, f := range p.Fles {
		if f.Fd < 0 {
			return nil, fmt.Errorf("encode plan of task %d: negative fd %d", p.Pid, f.Fd)
		}
		v := uint64(f.Fd) << 1
		if f.Cloexec {
			v |= 1
		}
		e.Uint(v)
		e.Uint(uint64(f.File))
	}
	e.Uint(uint64(len(p.Opens)))
	for i := range p.Opens {
		o := &p.Opens[i]
		e.String(o.Type)
		e.String(o.Name)
		e.Bytes(o.Data)
		e.ids(o.Files)
		e.Uint(uint64(len(o.SendTo)))
		for _, to := range o.SendTo {
			e.ids(to)
		}
		e.ids(o.Needs)
	}
	e.ids(p.Hold)
	e.Uint(uint64(len(p.PidMap)))
	for k, v := range p.PidMap {
		e.Uint(uint64(k))
		e.Uint(uint64(v))
	}
	return e.B, nil
}

func (e *Enc) ids(v []uint32) {
	e.Uint(uint64(len(v)))
	for _, x := range v {
		e.Uint(uint64(x))
	}
}

// planDec decodes a TaskPlan. Its slices of ids come from one shared
// backing array (each capped, so that an append never runs into its
// neighbour), and its strings share the input's bytes.
type planDec struct {
	Dec
	ids  []uint32
	sets [][]uint32
}

// count reads a length that must not exceed the bytes left (every element
// takes at least one byte).
func (d *planDec) count() int {
	n := d.Uint()
	if d.Err == nil && n > uint64(len(d.B)) {
		d.Err = errShort
	}
	if d.Err != nil {
		return 0
	}
	return int(n)
}

func (d *planDec) idList() []uint32 {
	n := d.count()
	if n == 0 {
		return nil
	}
	if len(d.ids) < n {
		d.ids = make([]uint32, max(n, 4096))
	}
	out := d.ids[:n:n]
	d.ids = d.ids[n:]
	for i := range out {
		out[i] = d.Uint32()
	}
	return out
}

// string reads a length-prefixed string, sharing the input's bytes.
func (d *planDec) string() string {
	b := d.Bytes()
	if d.Err != nil || len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// idSets returns n empty id lists from a shared backing array.
func (d *planDec) idSets(n int) [][]uint32 {
	if len(d.sets) < n {
		d.sets = make([][]uint32, max(n, 1024))
	}
	out := d.sets[:n:n]
	d.sets = d.sets[n:]
	return out
}

// DecodeTaskPlan parses a plan made by Encode and validates it. The plan
// shares data's bytes (its strings and OpenSpec.Data point into it):
// data must not change afterwards.
func DecodeTaskPlan(data []byte) (*TaskPlan, error) {
	if len(data) < len(taskPlanMagic) || string(data[:len(taskPlanMagic)]) != taskPlanMagic {
		return nil, fmt.Errorf("decode task plan: not an encoded task plan")
	}
	d := &planDec{Dec: Dec{B: data[len(taskPlanMagic):]}}
	p := new(TaskPlan)
	p.Task, p.Pid = d.Uint32(), d.Uint32()
	p.RunID = d.string()
	p.SkipFileCheck = d.Bool()
	if n := d.count(); n > 0 {
		p.Fles = make([]Fle, n)
		for i := range p.Fles {
			v := d.Uint()
			if v>>1 > 1<<31-1 && d.Err == nil {
				d.Err = errShort
			}
			p.Fles[i] = Fle{Fd: int32(v >> 1), Cloexec: v&1 != 0, File: d.Uint32()}
		}
	}
	if n := d.count(); n > 0 {
		p.Opens = make([]OpenSpec, n)
		for i := range p.Opens {
			o := &p.Opens[i]
			o.Type = d.string()
			o.Name = d.string()
			if o.Data = d.Bytes(); len(o.Data) == 0 {
				o.Data = nil // as Encode got it: gob-made plans had nil too
			}
			o.Files = d.idList()
			if m := d.count(); m > 0 {
				o.SendTo = d.idSets(m)
				for j := range o.SendTo {
					o.SendTo[j] = d.idList()
				}
			}
			o.Needs = d.idList()
			if d.Err != nil {
				break
			}
		}
	}
	p.Hold = d.idList()
	if n := d.count(); n > 0 {
		p.PidMap = make(map[uint32]uint32, n)
		for i := 0; i < n && d.Err == nil; i++ {
			k := d.Uint32()
			p.PidMap[k] = d.Uint32()
		}
	}
	if err := d.Done(); err != nil {
		return nil, fmt.Errorf("decode task plan: %w", err)
	}
	return p, p.Validate()
}

// ErrNoCodec is returned by EncodeData and DecodeData for a parameter type
// without MarshalBinary / UnmarshalBinary.
var ErrNoCodec = errors.New("opener parameters have no binary encoding (implement MarshalBinary and UnmarshalBinary with Enc and Dec)")

// EncodeData encodes a type's parameters for OpenSpec.Data with the type's
// MarshalBinary (written with Enc). There is no reflection-based fallback:
// the helper binary links no gob (whose code and initialisation every
// helper process would page in).
func EncodeData(v any) ([]byte, error) {
	m, ok := v.(encoding.BinaryMarshaler)
	if !ok {
		return nil, fmt.Errorf("encode %T: %w", v, ErrNoCodec)
	}
	return m.MarshalBinary()
}

// DecodeData parses OpenSpec.Data made by EncodeData into v, with v's
// UnmarshalBinary.
func DecodeData(data []byte, v any) error {
	u, ok := v.(encoding.BinaryUnmarshaler)
	if !ok {
		return fmt.Errorf("decode %T: %w", v, ErrNoCodec)
	}
	return u.UnmarshalBinary(data)
}
