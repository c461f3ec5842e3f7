package restore

import (
	"fmt"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/files/reg"
	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
)

// The planner half of regular files (files/reg holds the opener): image
// entries to reg.Params.

// fownFrom converts an image fown_entry.
func fownFrom(e *criupb.FownEntry) files.Fown {
	return files.Fown{PidType: e.GetPidType(), Pid: e.GetPid(), Signum: e.GetSignum()}
}

// regParams extracts the parameters of a REG description.
func regParams(e *criupb.RegFileEntry) reg.Params {
	return reg.Params{
		Path: e.GetName(), Flags: e.GetFlags(), Pos: e.GetPos(),
		Size: e.GetSize(), HasSize: e.Size != nil,
		Mode: e.GetMode(), HasMode: e.Mode != nil,
		Fown: fownFrom(e.GetFown()),
	}
}

// regSpec returns the OpenSpec that recreates REG description f.
func regSpec(f *images.File, sendTo []uint32) (files.OpenSpec, error) {
	data, err := files.EncodeData(regParams(f.Entry.GetReg()))
	if err != nil {
		return files.OpenSpec{}, err
	}
	return files.OpenSpec{
		Type: reg.Type, Files: []uint32{f.ID}, SendTo: [][]uint32{sendTo}, Data: data,
		Name: fmt.Sprintf("%q (file id %d)", f.Entry.GetReg().GetName(), f.ID),
	}, nil
}
