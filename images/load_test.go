package images

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/fdrestore/fdrestore/proto/criupb"
)

func TestLoadFixtures(t *testing.T) {
	dir := fixtureDir(t)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, de := range ents {
		if !de.IsDir() {
			continue
		}
		n++
		t.Run(de.Name(), func(t *testing.T) {
			s, err := Load(filepath.Join(dir, de.Name()))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if len(s.Tasks) == 0 || s.Tasks[0].Pid != 2 {
				t.Fatalf("root task: got %+v", s.Tasks)
			}
			for _, task := range s.Tasks {
				if task.Fds == nil {
					t.Fatalf("pid %d has no fd table", task.Pid)
				}
			}
		})
	}
	if n != 12 {
		t.Fatalf("found %d fixture directories, want 12", n)
	}
}

func TestLoadPipeBasic(t *testing.T) {
	s, err := Load(filepath.Join(fixtureDir(t), "pipe-basic"))
	if err != nil {
		t.Fatal(err)
	}
	tbl := s.Tasks[0].Fds
	var nums []uint32
	for _, fd := range tbl.Fds {
		nums = append(nums, fd.Num)
	}
	if got, want := len(nums), 8; got != want {
		t.Fatalf("fds %v, want 8 of them", nums)
	}
	r3, r12, w7 := tbl.Lookup(3), tbl.Lookup(12), tbl.Lookup(7)
	if r3.File != r12.File || r3.File == w7.File {
		t.Fatalf("fd 3 and 12 must share a description distinct from fd 7's")
	}
	if !r12.Cloexec() || r3.Cloexec() {
		t.Fatalf("FD_CLOEXEC: fd 12 %v, fd 3 %v", r12.Cloexec(), r3.Cloexec())
	}
	p := r3.File.Pipe
	if p == nil || p != w7.File.Pipe || string(p.Data) != "Hello, pipe!\n" || p.Size != 1<<20 {
		t.Fatalf("pipe P1: %+v", p)
	}
	if fl, _ := w7.File.Flags(); fl&0o4000 == 0 {
		t.Fatalf("fd 7 flags %#o lack O_NONBLOCK", fl)
	}
	if tbl.Lookup(10).File.Pipe.HasData && len(tbl.Lookup(10).File.Pipe.Data) != 0 {
		t.Fatalf("pipe P2 must be empty")
	}
	if tbl.Lookup(0).File.Type != criupb.FdTypes_REG || tbl.Lookup(1).File != tbl.Lookup(2).File {
		t.Fatalf("stdio: fd 1 and 2 must share one /dev/null description")
	}
}
