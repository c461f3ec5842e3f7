package files

import (
	"bytes"
	"encoding/gob"
	"fmt"
	"sort"
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
	if !sort.SliceIsSorted(p.Fles, func(i, j int) bool { return p.Fles[i].Fd < p.Fles[j].Fd }) {
		return fmt.Errorf("task %d plan: fles not sorted by fd", p.Pid)
	}
	for i := range p.Fles {
		if p.Fles[i].Fd < 0 {
			return fmt.Errorf("task %d plan: negative fd %d", p.Pid, p.Fles[i].Fd)
		}
		if i > 0 && p.Fles[i].Fd == p.Fles[i-1].Fd {
			return fmt.Errorf("task %d plan: fd %d appears twice", p.Pid, p.Fles[i].Fd)
		}
	}
	published := map[uint32]bool{}
	for _, o := range p.Opens {
		if len(o.SendTo) != len(o.Files) {
			return fmt.Errorf("task %d plan: %s %s: %d routes for %d files", p.Pid, o.Type, o.Name, len(o.SendTo), len(o.Files))
		}
		for _, f := range o.Files {
			if published[f] {
				return fmt.Errorf("task %d plan: file id %d published twice", p.Pid, f)
			}
			published[f] = true
		}
	}
	return nil
}

// Encode serialises the plan.
func (p *TaskPlan) Encode() ([]byte, error) {
	var b bytes.Buffer
	if err := gob.NewEncoder(&b).Encode(p); err != nil {
		return nil, fmt.Errorf("encode plan of task %d: %w", p.Pid, err)
	}
	return b.Bytes(), nil
}

// DecodeTaskPlan parses a plan made by Encode and validates it.
func DecodeTaskPlan(data []byte) (*TaskPlan, error) {
	p := new(TaskPlan)
	if err := gob.NewDecoder(bytes.NewReader(data)).Decode(p); err != nil {
		return nil, fmt.Errorf("decode task plan: %w", err)
	}
	return p, p.Validate()
}

// EncodeData encodes a type's parameters for OpenSpec.Data: with the
// type's MarshalBinary when it has one, else as gob.
func EncodeData(v any) ([]byte, error) {
	if b, ok, err := encodeBinary(v); ok {
		return b, err
	}
	var b bytes.Buffer
	if err := gob.NewEncoder(&b).Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// DecodeData parses OpenSpec.Data made by EncodeData into v.
func DecodeData(data []byte, v any) error {
	if ok, err := decodeBinary(data, v); ok {
		return err
	}
	return gob.NewDecoder(bytes.NewReader(data)).Decode(v)
}
