package files_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/fdrestore/fdrestore/files"
)

func TestTaskPlanRoundTrip(t *testing.T) {
	// Encode writes every field by hand: a field added to the structs
	// must be added to Encode and DecodeTaskPlan too (Inherited is not
	// encoded: those fds travel beside the plan).
	if n := reflect.TypeOf(files.TaskPlan{}).NumField(); n != 9 {
		t.Fatalf("TaskPlan has %d fields; teach Encode/DecodeTaskPlan the new ones and update this test", n)
	}
	if n := reflect.TypeOf(files.OpenSpec{}).NumField(); n != 6 {
		t.Fatalf("OpenSpec has %d fields; teach Encode/DecodeTaskPlan the new ones and update this test", n)
	}
	if n := reflect.TypeOf(files.Fle{}).NumField(); n != 3 {
		t.Fatalf("Fle has %d fields; teach Encode/DecodeTaskPlan the new ones and update this test", n)
	}
	p := &files.TaskPlan{
		Task: 3, Pid: 4242, RunID: "0123456789abcdef",
		Fles: []files.Fle{{Fd: 0, File: 1}, {Fd: 1, File: 1, Cloexec: true}, {Fd: 7, File: 1 << 31}, {Fd: 1<<30 - 1, File: 9, Cloexec: true}},
		Opens: []files.OpenSpec{
			{Type: "pipe", Files: []uint32{1, 1 << 31}, SendTo: [][]uint32{{0, 2}, nil}, Data: []byte{0, 1, 2, 255}, Name: "pipe:[12] (file ids [1 2147483648])"},
			{Type: "reg", Files: []uint32{9}, SendTo: [][]uint32{nil}, Needs: []uint32{1, 5}, Name: "\"/tmp/ä\" (file id 9)"},
		},
		Hold:          []uint32{5},
		PidMap:        map[uint32]uint32{4242: 100, 1: 1 << 31},
		SkipFileCheck: true,
	}
	data, err := p.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := files.DecodeTaskPlan(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, p) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, p)
	}
	// Appending to a decoded id list must not change its neighbour.
	got.Opens[0].Files = append(got.Opens[0].Files, 77)
	if !reflect.DeepEqual(got.Opens[1].Files, []uint32{9}) || !reflect.DeepEqual(got.Opens[0].SendTo[0], []uint32{0, 2}) {
		t.Fatalf("decoded slices share room: %+v", got.Opens)
	}

	empty, err := (&files.TaskPlan{Pid: 1}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := files.DecodeTaskPlan(empty); err != nil || !reflect.DeepEqual(got, &files.TaskPlan{Pid: 1}) {
		t.Fatalf("empty plan: %+v, %v", got, err)
	}

	// Every truncation and a trailing byte are errors, never a panic.
	for i := 0; i < len(data); i++ {
		if _, err := files.DecodeTaskPlan(data[:i]); err == nil {
			t.Fatalf("plan truncated to %d of %d bytes decoded", i, len(data))
		}
	}
	if _, err := files.DecodeTaskPlan(append(data[:len(data):len(data)], 0)); err == nil || !strings.Contains(err.Error(), "decode task plan") {
		t.Fatalf("trailing byte: %v", err)
	}
	// A huge count is refused before anything is allocated for it.
	huge := append([]byte(nil), data[:6]...)
	huge = append(huge, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f)
	if _, err := files.DecodeTaskPlan(huge); err == nil {
		t.Fatal("huge fle count decoded")
	}
}

func FuzzDecodeTaskPlan(f *testing.F) {
	p := &files.TaskPlan{Pid: 7, Fles: []files.Fle{{Fd: 3, File: 1}}, Opens: []files.OpenSpec{{Type: "pipe", Files: []uint32{1}, SendTo: [][]uint32{{1}}}}}
	data, _ := p.Encode()
	f.Add(data)
	f.Fuzz(func(t *testing.T, b []byte) {
		files.DecodeTaskPlan(b) // must not panic
	})
}
