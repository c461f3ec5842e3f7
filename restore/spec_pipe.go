package restore

import (
	"fmt"
	"strconv"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/files/pipe"
	"github.com/fdrestore/fdrestore/images"
)

// The planner half of pipes and FIFOs (files/pipe holds the openers):
// image entries to pipe.PipeParams and pipe.FifoParams.

// pipeSpec returns the OpenSpec that creates ends (descriptions of pipe p),
// with sendTo[i] the other tasks that need ends[i].
func pipeSpec(p *images.Pipe, ends []*images.File, sendTo [][]uint32) (files.OpenSpec, error) {
	var buf [2]pipe.End
	pp := pipe.PipeParams{PipeID: p.ID, Data: p.Data, Size: p.Size, Ends: buf[:0]}
	ids := make([]uint32, len(ends))
	for i, f := range ends {
		pe := f.Entry.GetPipe()
		pp.Ends = append(pp.Ends, pipe.End{File: f.ID, Flags: pe.GetFlags(), Fown: fownFrom(pe.GetFown())})
		ids[i] = f.ID
	}
	data, err := pp.MarshalBinary()
	if err != nil {
		return files.OpenSpec{}, err
	}
	return files.OpenSpec{Type: pipe.PipeType, Files: ids, SendTo: sendTo, Data: data, Name: pipeName(p.ID, ids)}, nil
}

// pipeName is fmt.Sprintf("pipe:[%d] (file ids %v)", id, ids), for a
// fraction of the cost: a plan names every pipe.
func pipeName(id uint32, ids []uint32) string {
	b := make([]byte, 0, 32+len(ids)*8)
	b = append(b, "pipe:["...)
	b = strconv.AppendUint(b, uint64(id), 10)
	b = append(b, "] (file ids ["...)
	for i, f := range ids {
		if i > 0 {
			b = append(b, ' ')
		}
		b = strconv.AppendUint(b, uint64(f), 10)
	}
	b = append(b, "])"...)
	return string(b)
}

// fifoSpec returns the OpenSpec that opens FIFO description f; writeData
// says whether it also restores the FIFO's queued data.
func fifoSpec(f *images.File, writeData bool, sendTo []uint32) (files.OpenSpec, error) {
	r := f.Path.Entry.GetReg()
	fp := pipe.FifoParams{Path: r.GetName(), Flags: r.GetFlags(), Fown: fownFrom(r.GetFown()), WriteData: writeData}
	if writeData && f.Pipe != nil {
		fp.Data, fp.Size = f.Pipe.Data, f.Pipe.Size
	}
	data, err := files.EncodeData(fp)
	if err != nil {
		return files.OpenSpec{}, err
	}
	return files.OpenSpec{Type: pipe.FifoType, Files: []uint32{f.ID}, SendTo: [][]uint32{sendTo}, Data: data,
		Name: fmt.Sprintf("fifo %q (file id %d)", fp.Path, f.ID)}, nil
}
