package images_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
)

// Load a CRIU image directory and list the fd table of the root task:
// fds 3 and 12 share one pipe description (file id 6), fds 1 and 2 one
// /dev/null description.
func ExampleLoad() {
	s, err := images.Load(fixture("pipe-basic"))
	if err != nil {
		log.Fatal(err)
	}
	root := s.Tasks[0]
	fmt.Printf("pid %d, %d tasks\n", root.Pid, len(s.Tasks))
	for _, fd := range root.Fds.Fds {
		fmt.Printf("fd %d: %s file id %d", fd.Num, fd.File.Type, fd.File.ID)
		if fd.Cloexec() {
			fmt.Print(" FD_CLOEXEC")
		}
		if p := fd.File.Pipe; p != nil {
			fmt.Printf(" (%d bytes queued)", len(p.Data))
		}
		fmt.Println()
	}
	// Output:
	// pid 2, 1 tasks
	// fd 0: REG file id 4
	// fd 1: REG file id 5
	// fd 2: REG file id 5
	// fd 3: PIPE file id 6 (13 bytes queued)
	// fd 7: PIPE file id 7 (13 bytes queued)
	// fd 10: PIPE file id 8 (0 bytes queued)
	// fd 11: PIPE file id 9 (0 bytes queued)
	// fd 12: PIPE file id 6 FD_CLOEXEC (13 bytes queued)
}

// Decode one image file entry by entry. pipes-data.img holds one entry per
// pipe, followed by the bytes queued in it.
func ExampleReadFile() {
	kind, entries, err := images.ReadFile(fixture("pipe-basic/pipes-data.img"), images.KindNamed("PIPES_DATA"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(kind, len(entries), "entries")
	for _, e := range entries {
		pd := e.Msg.(*criupb.PipeDataEntry)
		fmt.Printf("entry %d at offset %d: pipe_id %d, buffer %d bytes, %d queued: %q\n",
			e.Index, e.Offset, pd.GetPipeId(), pd.GetSize(), pd.GetBytes(), e.Trailer)
	}
	// Output:
	// PIPES_DATA 2 entries
	// entry 0 at offset 8: pipe_id 1302207, buffer 1048576 bytes, 13 queued: "Hello, pipe!\n"
	// entry 1 at offset 35: pipe_id 1302208, buffer 65536 bytes, 0 queued: ""
}

// fixture returns the path of a shared CRIU fixture: under
// $FDRESTORE_FIXTURES when set, else ../../shared/criu-images (a checkout
// next to the shared folder).
func fixture(name string) string {
	dir := os.Getenv("FDRESTORE_FIXTURES")
	if dir == "" {
		dir = "../../shared/criu-images"
	}
	return filepath.Join(dir, name)
}
