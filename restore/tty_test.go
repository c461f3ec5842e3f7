package restore_test

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit"
	critcli "github.com/checkpoint-restore/go-criu/v8/crit/cli"
	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/internal/fdcheck"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"github.com/fdrestore/fdrestore/restore"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"
)

// runCLIStopPts restores dir like runCLIStop, but in a new mount
// namespace with a fresh devpts instance on /dev/pts (as the fixtures
// were dumped), so that the recorded pty indices are free and the host's
// /dev/pts is left alone. The namespace goes away with the restored
// tasks.
func runCLIStopPts(t testing.TB, dir string, extra ...string) map[uint32]int {
	t.Helper()
	bin := cliBinary(t)
	pm := filepath.Join(t.TempDir(), "pidmap.json")
	args := append([]string{"--mount", "--propagation", "private", "--", "sh", "-c",
		`mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts && exec "$0" "$@"`,
		bin, "restore", "-D", dir, "--leave-stopped", "-d", "--pid-map", pm}, extra...)
	out, err := exec.Command("unshare", args...).CombinedOutput()
	m := map[uint32]int{}
	if b, rerr := os.ReadFile(pm); rerr == nil {
		var raw map[string]int
		if jerr := json.Unmarshal(b, &raw); jerr != nil {
			t.Fatalf("pid map %s: %v", b, jerr)
		}
		for k, v := range raw {
			n, _ := strconv.ParseUint(k, 10, 32)
			m[uint32(n)] = v
		}
		cleanupPids(t, m)
	} else if err == nil {
		t.Fatalf("pid map: %v", rerr)
	}
	if err != nil {
		t.Fatalf("unshare -m fdrestore restore -D %s: %v\n%s", dir, err, out)
	}
	return m
}

// ttyStat is the terminal part of /proc/PID/stat: tty_nr and tpgid.
func ttyStat(t testing.TB, pid int) (ttyNr uint64, tpgid int) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	nr, err1 := strconv.ParseInt(f[4], 10, 64)
	tp, err2 := strconv.Atoi(f[5])
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	return uint64(nr), tp
}

// ttyNr encodes a device as /proc/PID/stat's tty_nr does.
func ttyNr(major, minor uint32) uint64 {
	return uint64(minor&0xff) | uint64(major)<<8 | uint64(minor&^0xff)<<12
}

// wantTermios is a termios to compare: flags and c_cc[0..18] in hex.
type wantTermios struct {
	iflag, oflag, cflag, lflag uint32
	cc                         string
}

func (c *checker) termios(r ref, w wantTermios) {
	c.t.Helper()
	tm, err := unix.IoctlGetTermios(c.getfd(r), unix.TCGETS)
	if err != nil {
		c.t.Fatalf("%s: TCGETS: %v", r, err)
	}
	cc := hex.EncodeToString(tm.Cc[:])
	if tm.Iflag != w.iflag || tm.Oflag != w.oflag || tm.Cflag != w.cflag || tm.Lflag != w.lflag || cc != w.cc {
		c.t.Errorf("%s: termios iflag %#o oflag %#o cflag %#o lflag %#o cc %s, want %#o %#o %#o %#o %s",
			r, tm.Iflag, tm.Oflag, tm.Cflag, tm.Lflag, cc, w.iflag, w.oflag, w.cflag, w.lflag, w.cc)
	}
}

func (c *checker) ioctlInt(r ref, req uint) (int, error) {
	c.t.Helper()
	return unix.IoctlGetInt(c.getfd(r), req)
}

func (c *checker) winsize(r ref, rows, cols uint16) {
	c.t.Helper()
	ws, err := unix.IoctlGetWinsize(c.getfd(r), unix.TIOCGWINSZ)
	if err != nil || ws.Row != rows || ws.Col != cols {
		c.t.Errorf("%s: winsize %+v (%v), want %dx%d", r, ws, err, rows, cols)
	}
}

// ctty checks the controlling terminal of a task from /proc/PID/stat:
// the device (0: none) and, with one, the foreground group.
func (c *checker) ctty(task uint32, dev uint64, fg uint32) {
	c.t.Helper()
	nr, tpgid := ttyStat(c.t, c.pid(task))
	if nr != dev {
		c.t.Errorf("task %d: tty_nr %#x, want %#x", task, nr, dev)
	}
	if dev != 0 && tpgid != c.pid(fg) {
		c.t.Errorf("task %d: foreground group (tpgid) %d, want %d (image group %d)", task, tpgid, c.pid(fg), fg)
	}
}

// ttyData reads the bytes queued on a tty fd (consuming them).
func (c *checker) ttyData(r ref, want string) {
	c.t.Helper()
	fd := c.getfd(r)
	// pty writes reach the other side from a kernel work item.
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if n, err := fdcheck.Queued(fd); err != nil || n >= len(want) {
			break
		}
	}
	if n, err := fdcheck.Queued(fd); err != nil || n != len(want) {
		c.t.Errorf("%s: FIONREAD %d (%v), want %d", r, n, err, len(want))
	}
	got, err := fdcheck.ReadQueued(fd, len(want))
	if err != nil || string(got) != want {
		c.t.Errorf("%s: read %q (%v), want %q", r, got, err, want)
	}
}

const rawCC = "031c7f150400010011131a00120f1716000000"

// TestPtyFixture restores the CRIU fixture pty in a mount namespace with
// a fresh devpts and checks every fact of its EXPECTED.md from outside.
func TestPtyFixture(t *testing.T) {
	needRoot(t)
	dir := fixtureDir(t, "pty") // needs no file of /tmp/fdr-fixtures: no lock
	pids := runCLIStopPts(t, dir)
	c := &checker{t: t, pids: pids}
	fds := append(stdio(2),
		wantFD{ref{2, 3}, rdwr, false, -1, "M0", "ptmx", "/dev/ptmx"},
		wantFD{ref{2, 5}, rdwr, false, -1, "M1", "ptmx", "/dev/ptmx"},
		wantFD{ref{2, 6}, rdwr, false, -1, "S1", "pts1", "/dev/pts/1"},
		wantFD{ref{3, 0}, rdwr, false, -1, "S0", "pts0", "/dev/pts/0"},
		wantFD{ref{3, 1}, rdwr, false, -1, "S0", "pts0", "/dev/pts/0"},
		wantFD{ref{3, 2}, rdwr, false, -1, "S0", "pts0", "/dev/pts/0"})
	c.check(&wantTree{tasks: []wantTask{{2, 0, 2, 2}, {3, 2, 3, 3}}, fds: fds})

	// Indices.
	for _, x := range []struct {
		r   ref
		idx int
	}{{ref{2, 3}, 0}, {ref{2, 5}, 1}} {
		if n, err := c.ioctlInt(x.r, unix.TIOCGPTN); err != nil || n != x.idx {
			t.Errorf("%s: TIOCGPTN %d (%v), want %d", x.r, n, err, x.idx)
		}
	}
	if _, err := c.ioctlInt(ref{3, 0}, unix.TIOCGPTN); err == nil {
		t.Errorf("task 3 fd 0: TIOCGPTN works: it is a master, want a slave")
	}
	// Controlling terminals: C has pts/0 with itself in the foreground;
	// the root has none (its pts/1 slave must not have become one).
	c.ctty(3, ttyNr(136, 0), 3)
	c.ctty(2, 0, 0)
	if sid, err := c.ioctlInt(ref{2, 3}, unix.TIOCGSID); err != nil || sid != c.pid(3) {
		t.Errorf("pty 0: TIOCGSID on the master %d (%v), want %d", sid, err, c.pid(3))
	}
	if pg, err := c.ioctlInt(ref{2, 3}, unix.TIOCGPGRP); err != nil || pg != c.pid(3) {
		t.Errorf("pty 0: TIOCGPGRP on the master %d (%v), want %d", pg, err, c.pid(3))
	}
	if _, err := c.ioctlInt(ref{2, 5}, unix.TIOCGSID); err == nil {
		t.Errorf("pty 1: TIOCGSID works: it has a session, want none")
	}
	// pty 0: raw mode, 40x132, unlocked, no packet mode.
	c.termios(ref{3, 0}, wantTermios{0, 0o4, 0o277, 0o5060, rawCC})
	c.winsize(ref{3, 0}, 40, 132)
	c.winsize(ref{2, 3}, 40, 132)
	for _, x := range []struct {
		r    ref
		req  uint
		name string
		want int
	}{
		{ref{2, 3}, unix.TIOCGPTLCK, "TIOCGPTLCK", 0},
		{ref{2, 3}, unix.TIOCGPKT, "TIOCGPKT", 0},
		{ref{2, 5}, unix.TIOCGPTLCK, "TIOCGPTLCK", 1},
		{ref{2, 5}, unix.TIOCGPKT, "TIOCGPKT", 1},
		{ref{3, 0}, unix.TIOCGEXCL, "TIOCGEXCL", 0},
		{ref{2, 6}, unix.TIOCGEXCL, "TIOCGEXCL", 0},
	} {
		if v, err := c.ioctlInt(x.r, x.req); err != nil || v != x.want {
			t.Errorf("%s: %s %d (%v), want %d", x.r, x.name, v, err, x.want)
		}
	}
	// pty 1: default termios, 0x0, nothing queued.
	c.termios(ref{2, 6}, wantTermios{0o2400, 0o5, 0o277, 0o105073, rawCC})
	c.winsize(ref{2, 6}, 0, 0)
	for _, r := range []ref{{2, 5}, {2, 6}} {
		if n, err := fdcheck.Queued(c.getfd(r)); err != nil || n != 0 {
			t.Errorf("%s: FIONREAD %d (%v), want 0", r, n, err)
		}
	}
	// Queued data, byte-exact, in both directions.
	c.ttyData(ref{3, 0}, "keys:42")
	c.ttyData(ref{2, 3}, "out:5")
	// The pair is live: what the master writes, the slave reads, and back.
	c.write(ref{2, 3}, "ping")
	c.ttyData(ref{3, 1}, "ping")
	c.write(ref{3, 2}, "pong")
	c.ttyData(ref{2, 3}, "pong")
}

// TestMixedTTY checks the tty part of the CRIU fixture mixed: the plan
// creates pty 0 in the root, sends its slave to task 6 and sets it as the
// controlling terminal of session 6 there. The fixture also holds unix
// sockets and an epoll; once those types are restorable, the tree is
// restored and the tty facts of EXPECTED.md are checked from outside.
func TestMixedTTY(t *testing.T) {
	needRoot(t)
	dir := fixtureDir(t, "mixed")
	set, err := images.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := restore.NewPlan(set, restore.PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var pty, ctty bool
	for _, o := range p.Objects {
		switch o.Spec.Type {
		case "pty":
			pty = true
			if !slices.Equal(o.Spec.Files, []uint32{6, 23}) || set.Tasks[o.Creator].Pid != 2 ||
				len(o.Spec.SendTo[1]) != 1 || set.Tasks[o.Spec.SendTo[1][0]].Pid != 6 {
				t.Errorf("pty object %s: files %v created by task %d, sends %v; want master 6 and slave 23 made by task 2, the slave sent to task 6", o.Spec.Name, o.Spec.Files, set.Tasks[o.Creator].Pid, o.Spec.SendTo)
			}
		case "ctty":
			ctty = true
			if set.Tasks[o.Creator].Pid != 6 || !slices.Contains(o.Spec.Needs, 23) {
				t.Errorf("ctty object %s: in task %d needing %v, want task 6 needing file id 23", o.Spec.Name, set.Tasks[o.Creator].Pid, o.Spec.Needs)
			}
		}
	}
	if !pty || !ctty {
		t.Errorf("plan has pty %v, ctty %v; want both", pty, ctty)
	}
	for _, u := range p.Unsupported {
		if strings.Contains(u, "TTY") || strings.Contains(u, "pty") {
			t.Errorf("unsupported: %s", u)
		}
	}
	if p.Err() != nil {
		t.Logf("the full restore of mixed waits for the other types: %v", p.Err())
		return
	}
	checkMixedTTY(t, dir)
}

// ttyFacts is what a dump records of one tty fd, with pids mapped to
// image pids, for comparing a dump with another.
func ttyFacts(t *testing.T, set *images.Set, f *images.File, unmap map[int]uint32) string {
	info := f.TTY.Info
	tm := info.GetTermios()
	var cc []byte
	for i := 0; i < 19 && tm != nil; i++ {
		cc = append(cc, byte(tm.GetCCc()[i/4]>>(8*(i%4))))
	}
	ws := info.GetWinsize()
	mapPid := func(p uint32) uint32 {
		if p == 0 {
			return 0
		}
		if unmap == nil {
			return p
		}
		if ip, ok := unmap[int(p)]; ok {
			return ip
		}
		return 1<<32 - 1
	}
	return fmt.Sprintf("flags %#o type %s index %d locked %v excl %v pkt %v sid %d pgrp %d rdev %#x termios %#o/%#o/%#o/%#o/%d cc %x winsize %dx%d/%dx%d data %q",
		f.Entry.GetTty().GetFlags()&^0o100000 /* O_LARGEFILE */, info.GetType(), info.GetPty().GetIndex(), info.GetLocked(), info.GetExclusive(), info.GetPacketMode(),
		mapPid(info.GetSid()), mapPid(info.GetPgrp()), info.GetRdev(),
		tm.GetCIflag(), tm.GetCOflag(), tm.GetCCflag(), tm.GetCLflag(), tm.GetCLine(), cc,
		ws.GetWsRow(), ws.GetWsCol(), ws.GetWsXpixel(), ws.GetWsYpixel(), f.TTY.Data)
}

// TestPtyFixtureRedump restores the CRIU fixture pty, dumps the restored
// tree with `fdrestore dump --leave-running`, and checks that every tty
// fact of the new images equals CRIU's (index, termios, window size,
// packet mode, lock, exclusive mode, session, foreground group, queued
// data both ways), and that the dump left the queued data in place.
func TestPtyFixtureRedump(t *testing.T) {
	needRoot(t)
	dir := fixtureDir(t, "pty") // needs no file of /tmp/fdr-fixtures: no lock
	pids := runCLIStopPts(t, dir)
	img := t.TempDir()
	out, err := exec.Command(cliBinary(t), "dump", "--leave-running", "-t", strconv.Itoa(pids[2]), "-D", img).CombinedOutput()
	if err != nil {
		t.Fatalf("fdrestore dump: %v\n%s", err, out)
	}
	compareTTYImages(t, dir, img, pids, 6)
	// --leave-running: the queued bytes are still there.
	c := &checker{t: t, pids: pids}
	c.ttyData(ref{3, 0}, "keys:42")
	c.ttyData(ref{2, 3}, "out:5")
}

// TestPtyIndexTaken restores the fixture pty where pty index 0 is held by
// another process: the restore fails, names the index and how to get a
// free one, and leaves no process behind.
func TestPtyIndexTaken(t *testing.T) {
	needRoot(t)
	dir := fixtureDir(t, "pty")
	pm := filepath.Join(t.TempDir(), "pidmap.json")
	before := map[int]bool{}
	for _, p := range fdcheck.Descendants(os.Getpid()) {
		before[p] = true
	}
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
		`mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts && exec 9<>/dev/ptmx && exec "$0" "$@"`,
		cliBinary(t), "restore", "-D", dir, "--leave-stopped", "-d", "--pid-map", pm)
	out, err := cmd.CombinedOutput()
	if err == nil {
		m := map[string]int{}
		if b, rerr := os.ReadFile(pm); rerr == nil && json.Unmarshal(b, &m) == nil {
			var pids []int
			for _, p := range m {
				pids = append(pids, p)
			}
			fdcheck.KillAndReap(pids, 10*time.Second)
		}
		t.Fatalf("restore with pty index 0 taken succeeded:\n%s", out)
	}
	for _, want := range []string{"pty index in use", "index 0 (/dev/pts/0) is held by another pty", "newinstance"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("error does not say %q:\n%s", want, out)
		}
	}
	for _, p := range fdcheck.Descendants(os.Getpid()) {
		if !before[p] {
			t.Errorf("process %d left behind (%s)", p, fdcheck.Exe(p))
		}
	}
}

// TestPtyPlanEdges checks that `fdrestore plan` prints the tty rules of
// the fixture pty as stage-graph edges.
func TestPtyPlanEdges(t *testing.T) {
	dir := fixtureDir(t, "pty")
	out, err := exec.Command(cliBinary(t), "plan", "-D", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("fdrestore plan: %v\n%s", err, out)
	}
	for _, want := range []string{
		"pty /dev/pts/0 (pty, file ids [6 14]) at fd 3: created by task 2; sends file id 14 to task 3",
		"pty /dev/pts/1 (pty, file ids [8 10]) at fds 5,6: created by task 2",
		"ctty controlling tty of session 3 (pty 0): created by task 3",
		"pty 1 slave Created in task 2 needs pty 1 master Restored in task 2 (pty slave after its master is restored)",
		"controlling tty of session 3 (pty 0) Restored in task 3 needs session id 3 Created in task 3 (controlling tty after the session exists)",
		"controlling tty of session 3 (pty 0) Restored in task 3 needs pty 0 master Restored in task 2 (controlling tty after every tty of its session leader is restored)",
		"Restorable: yes",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("plan does not print %q:\n%s", want, out)
		}
	}
}

// compareTTYImages compares the tty facts of every tty fd of the images
// in dir with those of the same fd of the same task in img (a dump of
// dir's restore, with pid map pids); want is the number of tty fds.
func compareTTYImages(t *testing.T, dir, img string, pids map[uint32]int, want int) {
	t.Helper()
	critCheckTTY(t, img)
	a, err := images.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := images.Load(img)
	if err != nil {
		t.Fatal(err)
	}
	unmap := map[int]uint32{}
	for ip, p := range pids {
		unmap[p] = ip
	}
	n := 0
	for _, ta := range a.Tasks {
		tb := b.TaskByPid[uint32(pids[ta.Pid])]
		if tb == nil {
			t.Fatalf("task %d (pid %d) is not in the new images", ta.Pid, pids[ta.Pid])
		}
		for _, fa := range ta.Fds.Fds {
			fb := tb.Fds.Lookup(fa.Num)
			if fb == nil {
				t.Errorf("task %d fd %d: missing in the new images", ta.Pid, fa.Num)
				continue
			}
			if fa.File.Type != fb.File.Type {
				t.Errorf("task %d fd %d: type %s, CRIU's %s", ta.Pid, fa.Num, fb.File.Type, fa.File.Type)
				continue
			}
			if fa.File.TTY == nil {
				continue
			}
			n++
			if x, y := ttyFacts(t, a, fa.File, nil), ttyFacts(t, b, fb.File, unmap); x != y {
				t.Errorf("task %d fd %d:\n fdrestore: %s\n CRIU:      %s", ta.Pid, fa.Num, y, x)
			}
		}
	}
	if n != want {
		t.Errorf("compared %d tty fds, want %d", n, want)
	}
}

// checkMixedTTY restores the mixed fixture (or a copy of it) in a fresh
// devpts and checks the tty facts of its EXPECTED.md from outside.
func checkMixedTTY(t *testing.T, dir string) {
	fixtures := filepath.Dir(fixtureDir(t, "mixed"))
	unlock, err := fdcheck.LockFixtures(fixtures, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
	d := mkFixtureDir(t, "mixed")
	if err := os.WriteFile(filepath.Join(d, "shared.log"), []byte("mixed:root\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(d, "shared.log"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := &checker{t: t, pids: runCLIStopPts(t, dir)}
	for _, task := range []uint32{2, 3, 4, 5} {
		c.ctty(task, 0, 0)
	}
	c.ctty(6, ttyNr(136, 0), 6)
	c.termios(ref{6, 0}, wantTermios{0o2400, 0o5, 0o277, 0o105073, rawCC})
	c.winsize(ref{6, 0}, 24, 80)
	for _, x := range []struct {
		r    ref
		req  uint
		want int
	}{{ref{2, 8}, unix.TIOCGPTN, 0}, {ref{2, 8}, unix.TIOCGPTLCK, 0}, {ref{2, 8}, unix.TIOCGPKT, 0}, {ref{2, 8}, unix.TIOCGSID, c.pid(6)}, {ref{2, 8}, unix.TIOCGPGRP, c.pid(6)}} {
		if v, err := c.ioctlInt(x.r, x.req); err != nil || v != x.want {
			t.Errorf("%s: ioctl %#x: %d (%v), want %d", x.r, x.req, v, err, x.want)
		}
	}
	if n := c.queued(ref{6, 0}); n != 0 {
		t.Errorf("task 6 fd 0: %d bytes queued, want none", n)
	}
	c.ttyData(ref{2, 8}, "prompt$ ")
}

// TestMixedTTYOnly restores the mixed fixture without its unix sockets and
// epoll (removed from a copy of the images), so that its tty part is
// checked before those types are restorable.
func TestMixedTTYOnly(t *testing.T) {
	needRoot(t)
	src := fixtureDir(t, "mixed")
	dir := t.TempDir()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	drop := map[uint32]bool{}
	_, files, err := images.ReadFile(filepath.Join(src, "files.img"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var keep []*images.Entry
	for _, e := range files {
		fe := e.Msg.(*criupb.FileEntry)
		if fe.GetType() == criupb.FdTypes_UNIXSK || fe.GetType() == criupb.FdTypes_EVENTPOLL {
			drop[fe.GetId()] = true
			continue
		}
		keep = append(keep, e)
	}
	if len(drop) != 3 {
		t.Fatalf("dropped %d sockets and epolls, want 3", len(drop))
	}
	for _, de := range ents {
		name := de.Name()
		if !strings.HasSuffix(name, ".img") || name == "sk-queues.img" {
			continue
		}
		k, es, err := images.ReadFile(filepath.Join(src, name), nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		switch {
		case name == "files.img":
			es = keep
		case strings.HasPrefix(name, "fdinfo-"):
			var kept []*images.Entry
			for _, e := range es {
				if !drop[e.Msg.(*criupb.FdinfoEntry).GetId()] {
					kept = append(kept, e)
				}
			}
			es = kept
		}
		if err := images.WriteFile(filepath.Join(dir, name), k, es); err != nil {
			t.Fatal(err)
		}
	}
	checkMixedTTY(t, dir)
}

// critCheckTTY decodes the tty images and files.img of a dump with
// go-criu's crit (an independent decoder) and compares every entry with
// ours.
func critCheckTTY(t *testing.T, dir string) {
	t.Helper()
	for _, name := range []string{"files.img", "tty-info.img", "tty-data.img"} {
		p := filepath.Join(dir, name)
		f, err := os.Open(p)
		if err != nil {
			if name == "tty-data.img" && os.IsNotExist(err) {
				continue
			}
			t.Fatal(err)
		}
		typ, err := critcli.GetEntryTypeFromImg(f)
		if err != nil {
			f.Close()
			t.Fatalf("crit: %s: %v", name, err)
		}
		img, err := crit.New(f, nil, "", false, false).Decode(typ)
		f.Close()
		if err != nil {
			t.Fatalf("crit: decode %s: %v", name, err)
		}
		_, ours, err := images.ReadFile(p, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(img.Entries) != len(ours) {
			t.Fatalf("%s: crit decodes %d entries, we %d", name, len(img.Entries), len(ours))
		}
		for i, ce := range img.Entries {
			cj, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(ce.Message)
			oj, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(ours[i].Msg)
			if strings.ReplaceAll(string(cj), " ", "") != strings.ReplaceAll(string(oj), " ", "") {
				t.Errorf("%s entry %d: crit %s, ours %s", name, i, cj, oj)
			}
		}
	}
}
