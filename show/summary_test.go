package show

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"google.golang.org/protobuf/proto"
)

func loadFixture(t *testing.T, name string) *Summary {
	t.Helper()
	set, err := images.Load(filepath.Join(fixtureDir(t), name))
	if err != nil {
		t.Fatal(err)
	}
	sum := Summarize(set)
	sum.Dir = name // stable across checkouts
	return sum
}

func task(t *testing.T, s *Summary, pid uint32) *TaskSummary {
	t.Helper()
	for _, ts := range s.Tasks {
		if ts.Pid == pid {
			return ts
		}
	}
	t.Fatalf("no task %d", pid)
	return nil
}

func fdOf(t *testing.T, ts *TaskSummary, n uint32) *FdSummary {
	t.Helper()
	for _, fd := range ts.Fds {
		if fd.Fd == n {
			return fd
		}
	}
	t.Fatalf("pid %d has no fd %d", ts.Pid, n)
	return nil
}

func text(t *testing.T, s *Summary) string {
	t.Helper()
	var b bytes.Buffer
	if err := s.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestSummaryGolden(t *testing.T) {
	for _, name := range []string{"pipe-tree", "mixed"} {
		t.Run(name, func(t *testing.T) {
			s := loadFixture(t, name)
			golden(t, name+"_summary.txt", []byte(text(t, s)))
			var b bytes.Buffer
			if err := s.WriteJSON(&b); err != nil {
				t.Fatal(err)
			}
			golden(t, name+"_summary.json", b.Bytes())
			var back Summary
			if err := json.Unmarshal(b.Bytes(), &back); err != nil || !reflect.DeepEqual(&back, s) {
				t.Errorf("JSON does not round-trip: %v", err)
			}
		})
	}
}

func TestSummaryPipeBasic(t *testing.T) {
	s := loadFixture(t, "pipe-basic")
	root := task(t, s, 2)
	if !root.SessionLeader || !root.GroupLeader || root.Depth != 0 {
		t.Errorf("root: %+v", root)
	}
	fd12 := fdOf(t, root, 12)
	if !fd12.Cloexec || fd12.Type != "PIPE" || fd12.Flags != "O_RDONLY" {
		t.Errorf("fd 12: %+v", fd12)
	}
	if want := []FdRef{{Pid: 2, Fd: 3, SameTable: true}}; !reflect.DeepEqual(fd12.Shares, want) {
		t.Errorf("fd 12 shares %v, want %v", fd12.Shares, want)
	}
	if p := fd12.Pipe; p == nil || p.Queued != 13 || p.BufSize != 1048576 || p.End != "read" {
		t.Errorf("fd 12 pipe: %+v", p)
	}
	fd7 := fdOf(t, root, 7)
	if fd7.Flags != "O_WRONLY|O_NONBLOCK" || fd7.Pipe.End != "write" || fd7.Pipe.Ino != fd12.Pipe.Ino || len(fd7.Shares) != 0 {
		t.Errorf("fd 7: %+v %+v", fd7, fd7.Pipe)
	}
	if fdOf(t, root, 3).Cloexec {
		t.Error("fd 3 has cloexec")
	}
	if fd0 := fdOf(t, root, 0); fd0.Flags != "O_RDONLY|O_LARGEFILE" || fd0.Reg.Path != "/dev/null" {
		t.Errorf("fd 0: %+v", fd0)
	}
	out := text(t, s)
	for _, want := range []string{
		"pid 2 (pipe-basic) ppid 0 pgid 2 sid 2 [session leader, group leader]",
		"O_WRONLY|O_NONBLOCK",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text lacks %q:\n%s", want, out)
		}
	}
	// The fd lines: "fd type flags cloexec id target... shares".
	lines := map[string][]string{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			lines[f[0]] = f
		}
	}
	l3, l12 := strings.Join(lines["3"], " "), strings.Join(lines["12"], " ")
	if !strings.HasPrefix(l3, "3 PIPE O_RDONLY - 6 pipe:[") || !strings.HasSuffix(l3, "read end, 13 B queued, buffer 1048576 fd 12") {
		t.Errorf("fd 3 line: %q", l3)
	}
	if !strings.HasPrefix(l12, "12 PIPE O_RDONLY cloexec 6 pipe:[") || !strings.HasSuffix(l12, "buffer 1048576 fd 3") {
		t.Errorf("fd 12 line: %q", l12)
	}
}

func TestSummaryRegFiles(t *testing.T) {
	s := loadFixture(t, "reg-files")
	root, child := task(t, s, 2), task(t, s, 3)
	fd := fdOf(t, root, 1000)
	if !fd.Cloexec || !strings.HasSuffix(fd.Reg.Path, "/high.bin") {
		t.Errorf("fd 1000: %+v", fd)
	}
	if a := fdOf(t, root, 4); a.Flags != "O_WRONLY|O_APPEND|O_LARGEFILE" || a.Reg.Pos != 14 {
		t.Errorf("fd 4: %+v %+v", a, a.Reg)
	}
	// One description shared across tasks at different fds; two opens of
	// rw.dat are two descriptions.
	if got := fdOf(t, child, 7).Shares; !reflect.DeepEqual(got, []FdRef{{Pid: 2, Fd: 5}}) {
		t.Errorf("pid 3 fd 7 shares %v", got)
	}
	if got := fdOf(t, root, 6).Shares; got != nil {
		t.Errorf("pid 2 fd 6 shares %v", got)
	}
	if child.Depth != 1 || child.SessionLeader || child.GroupLeader {
		t.Errorf("child: %+v", child)
	}
	if out := text(t, s); !strings.Contains(out, "\n    1000  REG ") || !strings.Contains(out, "pid 2 fd 5\n") {
		t.Errorf("text:\n%s", out)
	}
}

func TestSummaryPipeTree(t *testing.T) {
	s := loadFixture(t, "pipe-tree")
	if got := fdOf(t, task(t, s, 2), 5).Shares; !reflect.DeepEqual(got, []FdRef{{Pid: 4, Fd: 3}}) {
		t.Errorf("pid 2 fd 5 shares %v", got)
	}
	if got := fdOf(t, task(t, s, 4), 3).Shares; !reflect.DeepEqual(got, []FdRef{{Pid: 2, Fd: 5}}) {
		t.Errorf("pid 4 fd 3 shares %v", got)
	}
	if got := fdOf(t, task(t, s, 3), 100).Shares; !reflect.DeepEqual(got, []FdRef{{Pid: 3, Fd: 4, SameTable: true}}) {
		t.Errorf("pid 3 fd 100 shares %v", got)
	}
	if got := fdOf(t, task(t, s, 4), 8).Shares; got != nil {
		t.Errorf("private pipe shares %v", got)
	}
	// fds 1 and 2 are one description in all three tasks.
	if got := fdOf(t, task(t, s, 3), 1).Shares; len(got) != 5 || !got[0].SameTable || got[0].Fd != 2 {
		t.Errorf("pid 3 fd 1 shares %v", got)
	}
	if s.Counts != (Counts{Tasks: 3, FdTables: 3, Fds: 15, Files: 15}) {
		t.Errorf("counts %+v", s.Counts)
	}
}

func TestSummaryMixed(t *testing.T) {
	s := loadFixture(t, "mixed")
	var order []uint32
	for _, ts := range s.Tasks {
		order = append(order, ts.Pid)
	}
	if !reflect.DeepEqual(order, []uint32{2, 3, 4, 5, 6}) || task(t, s, 6).Depth != 2 {
		t.Errorf("tree order %v", order)
	}
	six := task(t, s, 6)
	if !six.SessionLeader || !six.GroupLeader || task(t, s, 4).GroupLeader || !task(t, s, 3).GroupLeader {
		t.Error("leader markers wrong")
	}
	if got := fdOf(t, six, 9).Shares; len(got) != 4 {
		t.Errorf("shared.log shares %v", got)
	}
	tty := fdOf(t, six, 0).TTY
	if tty == nil || tty.Side != "slave" || tty.Index != 0 || tty.Major != 136 || tty.Path != "/dev/pts/0" || tty.Sid != 6 {
		t.Errorf("pid 6 fd 0 tty %+v", tty)
	}
	master := fdOf(t, task(t, s, 2), 8).TTY
	if master == nil || master.Side != "master" || master.Major != 5 || master.Minor != 2 || master.Queued != 8 {
		t.Errorf("pid 2 fd 8 tty %+v", master)
	}
	ep := fdOf(t, task(t, s, 5), 6)
	if !ep.Cloexec || ep.Epoll == nil || len(ep.Epoll.Watches) != 1 {
		t.Fatalf("epoll %+v", ep)
	}
	if w := ep.Epoll.Watches[0]; w.Fd != 5 || w.Data != 0xc3c3 || w.Type != "UNIXSK" || w.Events != "EPOLLIN|EPOLLERR|EPOLLHUP|EPOLLRDHUP" {
		t.Errorf("watch %+v", w)
	}
	x, y := fdOf(t, task(t, s, 5), 5).Unix, fdOf(t, six, 7).Unix
	if x.Peer != y.Ino || y.Peer != x.Ino || x.QueuedBytes != 5 || y.QueuedBytes != 7 || x.SockType != "STREAM" || x.State != "ESTABLISHED" {
		t.Errorf("socketpair %+v %+v", x, y)
	}
}

func TestSummarySockets(t *testing.T) {
	s := loadFixture(t, "unix-stream")
	root := task(t, s, 2)
	if u := fdOf(t, root, 5).Unix; u.Name != "@fdr-stream-listen" || u.State != "LISTEN" {
		t.Errorf("abstract listener %+v", u)
	}
	if u := fdOf(t, root, 8).Unix; u.Name != "/tmp/fdr-fixtures/unix-stream/listen.sock" {
		t.Errorf("path listener %+v", u)
	}
	if u := fdOf(t, root, 9).Unix; u.Shutdown != "WRITE" {
		t.Errorf("shutdown %+v", u)
	}
	tcp := loadFixture(t, "tcp")
	in := fdOf(t, task(t, tcp, 2), 4).Inet
	if in == nil || in.Src != "127.0.0.1:7000" || in.Dst != "127.0.0.1:40001" || in.State != "ESTABLISHED" || in.Proto != "TCP" || in.Family != "AF_INET" || in.InQ != 6 {
		t.Errorf("tcp %+v", in)
	}
	if l := fdOf(t, task(t, tcp, 2), 3).Inet; l.State != "LISTEN" {
		t.Errorf("listener %+v", l)
	}
	scm := loadFixture(t, "unix-scm")
	if u := fdOf(t, task(t, scm, 2), 3).Unix; u.QueuedPackets != 2 || u.FdsInFlight != 1 {
		t.Errorf("scm %+v", u)
	}
	ep := loadFixture(t, "epoll")
	if e := fdOf(t, task(t, ep, 2), 6).Eventfd; e == nil || e.Counter != 5 {
		t.Errorf("eventfd %+v", e)
	}
	fifo := loadFixture(t, "fifo")
	if p := fdOf(t, task(t, fifo, 3), 5).Pipe; p.Path != "/tmp/fdr-fixtures/fifo/fifo0" || p.End != "read/write" || p.Queued != 5 {
		t.Errorf("fifo %+v", p)
	}
}

// TestEveryFixtureSummarizes renders every fixture directory both ways.
func TestEveryFixtureSummarizes(t *testing.T) {
	for _, d := range []string{"epoll", "fifo", "mixed", "pipe-basic", "pipe-tree", "pty", "reg-files", "tcp", "unix-dgram", "unix-scm", "unix-stream", "unix-tree"} {
		s := loadFixture(t, d)
		out := text(t, s)
		for _, ts := range s.Tasks {
			if !strings.Contains(out, fmt.Sprintf("pid %d ", ts.Pid)) {
				t.Errorf("%s: pid %d missing from text", d, ts.Pid)
			}
		}
		if err := s.WriteJSON(new(bytes.Buffer)); err != nil {
			t.Errorf("%s: %v", d, err)
		}
	}
}

// synthetic builds a set by hand: tasks 2 and 3 share one fd table, task
// 4 has its own; one REG description is held by fds 0..n-1 of the shared
// table and fd 0 of task 4.
func synthetic(n int) *images.Set {
	s := &images.Set{Dir: "synthetic", Files: map[uint32]*images.File{}, FdTables: map[uint32]*images.FdTable{}}
	f := &images.File{ID: 1, Type: criupb.FdTypes_REG, Entry: &criupb.FileEntry{
		Type: criupb.FdTypes_REG.Enum(), Id: proto.Uint32(1),
		Reg: &criupb.RegFileEntry{Id: proto.Uint32(1), Flags: proto.Uint32(2), Pos: proto.Uint64(0), Name: proto.String("/x")},
	}}
	s.Files[1], s.FileOrder = f, []*images.File{f}
	shared, own := &images.FdTable{ID: 10}, &images.FdTable{ID: 11}
	t2 := &images.Task{Pid: 2, PPid: 1, Pgid: 2, Sid: 2, Fds: shared}
	t3 := &images.Task{Pid: 3, PPid: 2, Pgid: 2, Sid: 2, Fds: shared, Parent: t2}
	t4 := &images.Task{Pid: 4, PPid: 2, Pgid: 2, Sid: 2, Fds: own, Parent: t2}
	t2.Children = []*images.Task{t3, t4}
	shared.Tasks, own.Tasks = []*images.Task{t2, t3}, []*images.Task{t4}
	for i := 0; i < n; i++ {
		fd := &images.Fd{Num: uint32(i), Table: shared, File: f}
		shared.Fds = append(shared.Fds, fd)
		f.Fds = append(f.Fds, fd)
	}
	fd := &images.Fd{Num: 0, Table: own, File: f}
	own.Fds = []*images.Fd{fd}
	f.Fds = append(f.Fds, fd)
	s.Tasks = []*images.Task{t2, t3, t4}
	s.FdTables[10], s.FdTables[11] = shared, own
	return s
}

func TestSummarySharedTable(t *testing.T) {
	s := Summarize(synthetic(2))
	two, three, four := s.Tasks[0], s.Tasks[1], s.Tasks[2]
	if len(two.Fds) != 2 || !reflect.DeepEqual(two.TableSharedWith, []uint32{3}) {
		t.Errorf("pid 2: %+v", two)
	}
	if three.FdsListedAt != 2 || len(three.Fds) != 0 || !reflect.DeepEqual(three.TableSharedWith, []uint32{2}) {
		t.Errorf("pid 3: %+v", three)
	}
	// pid 2 fd 0: fd 1 of the same table, and pid 4's fd 0.
	if got := two.Fds[0].Shares; !reflect.DeepEqual(got, []FdRef{{Pid: 2, Fd: 1, SameTable: true}, {Pid: 4, Fd: 0}}) {
		t.Errorf("pid 2 fd 0 shares %v", got)
	}
	// pid 4 fd 0: fds 0 and 1 of the shared table, in both its tasks.
	if got := four.Fds[0].Shares; !reflect.DeepEqual(got, []FdRef{{2, 0, false}, {3, 0, false}, {2, 1, false}, {3, 1, false}}) || four.Fds[0].SharesOmitted != 0 {
		t.Errorf("pid 4 fd 0 shares %v", got)
	}
	if s.Counts.FdTables != 2 || s.Counts.Fds != 3 {
		t.Errorf("counts %+v", s.Counts)
	}
	out := text(t, s)
	for _, want := range []string{"fd table 10, shared with pid 3:", "fd table 10 shared with pid 2: listed at pid 2", "pid 2 fd 0, pid 3 fd 0, pid 2 fd 1, pid 3 fd 1"} {
		if !strings.Contains(out, want) {
			t.Errorf("text lacks %q:\n%s", want, out)
		}
	}
}

func TestSummarySharesCapped(t *testing.T) {
	const n = 5000
	s := Summarize(synthetic(n))
	for _, fd := range s.Tasks[0].Fds {
		// n-1 other fds of the table, and pid 4's fd.
		if len(fd.Shares) != MaxShares || len(fd.Shares)+fd.SharesOmitted != n {
			t.Fatalf("fd %d: %d shares listed, %d omitted", fd.Fd, len(fd.Shares), fd.SharesOmitted)
		}
	}
	four := s.Tasks[2].Fds[0]
	if len(four.Shares) != MaxShares || four.SharesOmitted != 2*n-MaxShares {
		t.Errorf("pid 4 fd 0: %d listed, %d omitted", len(four.Shares), four.SharesOmitted)
	}
	if out := text(t, s); !strings.Contains(out, fmt.Sprintf("+%d more", n-MaxShares)) {
		t.Error("text does not say how many shares were left out")
	}
}
