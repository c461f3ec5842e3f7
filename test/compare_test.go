package zdtm

import (
	"encoding/json"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// baseState is pipe00's recorded state: two tasks with crossed pipes and
// 12 bytes queued in one of them.
func baseState() *State {
	std := func() []*FdState {
		return []*FdState{
			{Num: 0, Kind: "chr", Target: "/dev/null", Object: "obj1", Desc: "desc1", Flags: unix.O_RDWR},
			{Num: 1, Kind: "file", Target: "/w/pipe00.log", Object: "obj2", Desc: "desc2", Flags: unix.O_WRONLY | unix.O_APPEND},
			{Num: 2, Kind: "file", Target: "/w/pipe00.log", Object: "obj2", Desc: "desc2", Flags: unix.O_WRONLY | unix.O_APPEND},
		}
	}
	root := &TaskState{Key: "0", Name: "pipe00", Pgid: "0", Sid: "0", Fds: append(std(),
		&FdState{Num: 11, Kind: "pipe", Target: "pipe", Object: "obj3", Desc: "desc3", Flags: unix.O_WRONLY, PipeSize: 65536, DataSum: "empty"},
		&FdState{Num: 12, Kind: "pipe", Target: "pipe", Object: "obj4", Desc: "desc4", Flags: unix.O_RDONLY, PipeSize: 65536, Queued: 12, DataSum: "aec705f5963921f8"},
	)}
	child := &TaskState{Key: "0.1", Name: "pipe00 child", Parent: "0", Pgid: "0", Sid: "0", Fds: append(std(),
		&FdState{Num: 11, Kind: "pipe", Target: "pipe", Object: "obj4", Desc: "desc5", Flags: unix.O_WRONLY, PipeSize: 65536, Queued: 12, DataSum: "aec705f5963921f8"},
		&FdState{Num: 12, Kind: "pipe", Target: "pipe", Object: "obj3", Desc: "desc6", Flags: unix.O_RDONLY, PipeSize: 65536, DataSum: "empty"},
	)}
	return &State{Tasks: []*TaskState{root, child}}
}

// clone deep-copies a state (through JSON, which drops the unexported
// links; Compare restores them).
func clone(s *State) *State {
	b, _ := json.Marshal(s)
	var out State
	json.Unmarshal(b, &out)
	return &out
}

func fd(s *State, key string, n int) *FdState {
	for _, t := range s.Tasks {
		if t.Key == key {
			for _, f := range t.Fds {
				if f.Num == n {
					return f
				}
			}
		}
	}
	panic("no such fd")
}

// TestCompare feeds the comparison doctored states, one defect at a time,
// and requires a message that says what differs and where.
func TestCompare(t *testing.T) {
	if d := Compare(baseState(), baseState()); len(d) != 0 {
		t.Fatalf("identical states differ: %q", d)
	}
	cases := []struct {
		name   string
		doctor func(s *State)
		want   []string
	}{
		{"pipe missing one byte", func(s *State) {
			for _, f := range []*FdState{fd(s, "0", 12), fd(s, "0.1", 11)} {
				f.Queued, f.DataSum = 11, "0123456789abcdef"
			}
		}, []string{"task 0 fd 12: 12 bytes queued before the dump, 11 after restore", "task 0.1 fd 11: 12 bytes queued before the dump, 11 after restore"}},
		{"same length, other bytes", func(s *State) {
			fd(s, "0", 12).DataSum = "0123456789abcdef"
		}, []string{"task 0 fd 12: queued data differs (sha256 aec705f5963921f8 before the dump, 0123456789abcdef after restore)"}},
		{"shared description restored as two", func(s *State) {
			fd(s, "0.1", 2).Desc = "desc7"
		}, []string{"task 0 fd 1, task 0 fd 2, task 0.1 fd 1, task 0.1 fd 2 share one open file description before the dump, but 2 after restore: {task 0 fd 1, task 0 fd 2, task 0.1 fd 1} {task 0.1 fd 2}"}},
		{"two descriptions restored as one", func(s *State) {
			fd(s, "0.1", 11).Desc = "desc4"
		}, []string{"task 0 fd 12, task 0.1 fd 11 are 2 separate open file descriptions before the dump, but one after restore"}},
		{"two pipes restored as one", func(s *State) {
			fd(s, "0.1", 12).Object = "obj4"
			fd(s, "0", 11).Object = "obj4"
		}, []string{"are 2 separate object (inode)s before the dump, but one after restore"}},
		{"wrong fd flag", func(s *State) {
			fd(s, "0", 11).Flags |= unix.O_NONBLOCK
		}, []string{"task 0 fd 11: flags O_WRONLY before the dump, O_WRONLY|O_NONBLOCK after restore"}},
		{"wrong FD_CLOEXEC", func(s *State) {
			fd(s, "0.1", 12).Cloexec = true
		}, []string{"task 0.1 fd 12: FD_CLOEXEC false before the dump, true after restore"}},
		{"wrong offset", func(s *State) {
			fd(s, "0", 1).Pos = 7
		}, []string{"task 0 fd 1: offset 0 before the dump, 7 after restore"}},
		{"wrong pipe size", func(s *State) {
			fd(s, "0", 11).PipeSize = 4096
		}, []string{"task 0 fd 11: pipe buffer 65536 bytes before the dump, 4096 after restore"}},
		{"wrong owner", func(s *State) {
			fd(s, "0", 11).Owner = "pid:0.1"
		}, []string{`task 0 fd 11: owner "" before the dump, "pid:0.1" after restore`}},
		{"extra fd", func(s *State) {
			s.Tasks[0].Fds = append(s.Tasks[0].Fds, &FdState{Num: 100, Kind: "pipe", Target: "pipe", Object: "obj3", Desc: "desc8"})
		}, []string{"task 0: extra fd 100 (pipe) after restore"}},
		{"missing fd", func(s *State) {
			s.Tasks[1].Fds = s.Tasks[1].Fds[:4]
		}, []string{"task 0.1: fd 12 (pipe) missing after restore"}},
		{"wrong type", func(s *State) {
			*fd(s, "0", 12) = FdState{Num: 12, Kind: "fifo", Target: "/w/f", Object: "obj4", Desc: "desc4"}
		}, []string{"task 0 fd 12: pipe pipe before the dump, fifo /w/f after restore"}},
		{"missing task", func(s *State) {
			s.Tasks = s.Tasks[:1]
		}, []string{"task 0.1 (pipe00 child) missing after restore"}},
		{"wrong process group", func(s *State) {
			s.Tasks[1].Pgid = "0.1"
		}, []string{"task 0.1: process group is task 0 before the dump, task 0.1 after restore"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := clone(baseState())
			c.doctor(got)
			diffs := Compare(baseState(), got)
			all := strings.Join(diffs, "\n")
			for _, w := range c.want {
				if !strings.Contains(all, w) {
					t.Errorf("want a difference saying %q, got:\n%s", w, all)
				}
			}
		})
	}
}

// TestCompareSockets: unix socket defects are reported.
func TestCompareSockets(t *testing.T) {
	base := func() *State {
		s := baseState()
		s.Tasks[0].Fds = append(s.Tasks[0].Fds,
			&FdState{Num: 20, Kind: "socket", Target: "socket", Object: "obj5", Desc: "desc9", Flags: unix.O_RDWR,
				SockType: unix.SOCK_STREAM, SockName: "@srv", PeerName: "", InQ: 4, Peer: "obj6"},
			&FdState{Num: 21, Kind: "socket", Target: "socket", Object: "obj6", Desc: "desc10", Flags: unix.O_RDWR,
				SockType: unix.SOCK_STREAM, SockName: "", PeerName: "@srv", Peer: "obj5"})
		return s
	}
	if d := Compare(base(), base()); len(d) != 0 {
		t.Fatalf("identical states differ: %q", d)
	}
	for _, c := range []struct {
		name   string
		doctor func(s *State)
		want   string
	}{
		{"wrong type", func(s *State) { fd(s, "0", 20).SockType = unix.SOCK_DGRAM }, "task 0 fd 20: socket type 1 listening false before the dump, type 2 listening false after restore"},
		{"not listening", func(s *State) { fd(s, "0", 20).Listening = true }, "listening true after restore"},
		{"name lost", func(s *State) { fd(s, "0", 20).SockName = "" }, `task 0 fd 20: socket name "@srv" peer name "" before the dump, "" and "" after restore`},
		{"data lost", func(s *State) { fd(s, "0", 20).InQ = 0 }, "task 0 fd 20: 4 bytes to read on the socket before the dump, 0 after restore"},
		{"wrong peer", func(s *State) { fd(s, "0", 21).Peer = "none" }, "task 0 fd 21: peer socket obj5 before the dump, none after restore"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := clone(base())
			c.doctor(got)
			all := strings.Join(Compare(base(), got), "\n")
			if !strings.Contains(all, c.want) {
				t.Errorf("want a difference saying %q, got:\n%s", c.want, all)
			}
		})
	}
}

func TestLessKey(t *testing.T) {
	for _, c := range [][2]string{{"0", "0.1"}, {"0.2", "0.10"}, {"0.1", "0.1.1"}, {"0.1.5", "0.2"}} {
		if !lessKey(c[0], c[1]) || lessKey(c[1], c[0]) {
			t.Errorf("order of %s and %s", c[0], c[1])
		}
	}
}
