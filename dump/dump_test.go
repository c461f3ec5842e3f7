package dump

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit"
	critcli "github.com/checkpoint-restore/go-criu/v8/crit/cli"
	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"github.com/fdrestore/fdrestore/restore"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// oLargefile is the kernel's O_LARGEFILE on x86_64 (x/sys/unix defines
// O_LARGEFILE as 0 there, since the kernel adds it by itself).
const oLargefile = 0o100000

func TestMain(m *testing.M) {
	restore.MaybeHelper()
	if os.Getenv(envScenario) != "" {
		os.Exit(scenarioMain())
	}
	// Fds this test process inherited (from a shell, a CI runner) must not
	// leak into the scenario trees.
	unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	os.Exit(m.Run())
}

var (
	exeOnce sync.Once
	exePath string
	exeErr  error
)

// scenarioExe returns a path to run scenario processes from: a memfd copy
// of the test binary. Run from a file that cannot be reopened by name, the
// protobuf package's initialiser (detrand) cannot open the executable, and
// so does not start the Go netpoller (an epoll fd and an eventfd that the
// dumper would rightly refuse).
func scenarioExe(t *testing.T) string {
	exeOnce.Do(func() {
		b, err := os.ReadFile("/proc/self/exe")
		if err != nil {
			exeErr = err
			return
		}
		fd, err := unix.MemfdCreate("fdr-dump-scenario", unix.MFD_CLOEXEC)
		if err != nil {
			exeErr = err
			return
		}
		for off := 0; off < len(b); {
			n, err := unix.Write(fd, b[off:])
			if err != nil {
				exeErr = err
				return
			}
			off += n
		}
		exePath = fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), fd)
	})
	if exeErr != nil {
		t.Fatalf("scenario executable: %v", exeErr)
	}
	return exePath
}

// tree is a running scenario tree.
type tree struct {
	cmd *exec.Cmd
	pid int
	dir string
}

// startScenario starts scenario name in a new session and waits (with a
// deadline) until it says it is ready. The whole session is killed at the
// end of the test.
func startScenario(t *testing.T, name, dir string, extraEnv ...string) *tree {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (cgroup freezer, pidfd_getfd)")
		}
		t.Skip("needs root (cgroup freezer, pidfd_getfd)")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(scenarioExe(t), "-test.run=^$")
	cmd.Args[0] = os.Args[0]
	// No cgroup-aware GOMAXPROCS: the runtime would keep cgroup files
	// open in every scenario process.
	cmd.Env = append(os.Environ(), envScenario+"="+name, envRole+"=root", envDir+"="+dir,
		"GODEBUG=containermaxprocs=0,updatemaxprocs=0")
	cmd.Env = append(cmd.Env, extraEnv...)
	cmd.Dir = dir
	cmd.ExtraFiles = []*os.File{w}
	// stderr goes to a file: a pipe would add an fd to every task.
	errFile, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer errFile.Close()
	cmd.Stderr = errFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	tr := &tree{cmd: cmd, pid: cmd.Process.Pid, dir: dir}
	t.Cleanup(func() {
		syscall.Kill(-tr.pid, syscall.SIGKILL)
		syscall.Kill(tr.pid, syscall.SIGKILL)
		cmd.Wait()
	})
	r.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 1)
	if _, err := r.Read(buf); err != nil {
		b, _ := os.ReadFile(errFile.Name())
		t.Fatalf("scenario %s not ready: %v; stderr: %s", name, err, b)
	}
	r.Close()
	return tr
}

// mainDir prepares the files of the main scenario.
func mainDir(t *testing.T) string {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"ro.txt": roText, "append.log": "log line one\n", "rw.dat": rwText, "high.bin": "0123456789abcdef",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mkfifo(filepath.Join(dir, "fifo0"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func doDump(t *testing.T, pid int, dir string, leave bool) *Stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	log := logrus.New()
	if testing.Verbose() {
		log.SetLevel(logrus.DebugLevel)
	}
	st, err := Dump(ctx, pid, dir, Options{LeaveRunning: leave, Log: log})
	if err != nil {
		t.Fatalf("dump pid %d: %v", pid, err)
	}
	t.Logf("dump pid %d: %d tasks, %d fds, %d files, %d pipes, %d bytes; freezing %v, frozen %v, total %v",
		pid, st.Tasks, st.Fds, st.Files, st.Pipes, st.PipeBytes, st.Freezing, st.Frozen, st.Total)
	return st
}

func waitGone(t *testing.T, pids ...int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for {
			st, err := readStat(pid)
			if err != nil || st.state == 'Z' {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("pid %d still alive (state %c) after the dump", pid, st.state)
			}
			time.Sleep(time.Millisecond)
		}
	}
}

func TestDumpRestoreRedump(t *testing.T) {
	dir := mainDir(t)
	tr := startScenario(t, "main", dir)
	img1 := filepath.Join(t.TempDir(), "img1")
	st := doDump(t, tr.pid, img1, false)
	if st.Tasks != 4 {
		t.Errorf("dumped %d tasks, want 4", st.Tasks)
	}
	if err := tr.cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("root after dump: %v, want killed", err)
	}

	critCheck(t, img1)
	set, err := images.Load(img1)
	if err != nil {
		t.Fatalf("images.Load: %v", err)
	}
	checkMainSet(t, set)

	// Restore (stopped), dump the restored tree, compare.
	plan, err := restore.NewPlan(set, restore.PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := restore.Run(ctx, plan, restore.Options{End: restore.EndStop, Timeout: 60 * time.Second})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	var pids []int
	for _, p := range res.PidMap {
		pids = append(pids, p)
	}
	t.Cleanup(func() {
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGKILL)
		}
		var ws syscall.WaitStatus
		syscall.Wait4(res.RootPid, &ws, 0, nil)
	})
	img2 := filepath.Join(t.TempDir(), "img2")
	doDump(t, res.RootPid, img2, false)
	waitGone(t, pids...)
	critCheck(t, img2)
	a, b := canon(t, img1), canon(t, img2)
	if a != b {
		t.Errorf("images of the restored tree differ from the original's:\n%s", diffLines(a, b))
	}
}

// checkMainSet checks a few facts of the main scenario's images.
func checkMainSet(t *testing.T, set *images.Set) {
	t.Helper()
	root := set.Tasks[0]
	if len(root.Children) != 3 {
		t.Fatalf("root has %d children, want 3", len(root.Children))
	}
	fd := func(tk *images.Task, n uint32) *images.Fd {
		f := tk.Fds.Lookup(n)
		if f == nil {
			t.Fatalf("pid %d has no fd %d", tk.Pid, n)
		}
		return f
	}
	s1, s2, s3 := root.Children[0], root.Children[1], root.Children[2]
	if fd(root, 50).File != fd(s1, 1).File {
		t.Error("root fd 50 and stage1 fd 1 should share a description")
	}
	if fd(root, 51).File != fd(s3, 0).File || fd(s3, 0).File != fd(s3, 100).File {
		t.Error("root fd 51, stage3 fds 0 and 100 should share a description")
	}
	if fd(s2, 0).File.Pipe != fd(s1, 1).File.Pipe {
		t.Error("stage2 fd 0 should be the read end of stage1's fd 1")
	}
	if fd(root, 12).File != fd(root, 13).File || fd(root, 12).File != fd(s1, 7).File || fd(root, 12).File == fd(root, 14).File {
		t.Error("rw.dat: fds 12, 13 and stage1 fd 7 share one description, fd 14 is another")
	}
	if r := fd(root, 12).File.Entry.GetReg(); r.GetPos() != 3 || r.GetSize() != 26 || r.GetFlags() != unix.O_RDWR|oLargefile {
		t.Errorf("rw.dat fd 12: %v", r)
	}
	if r := fd(root, 11).File.Entry.GetReg(); r.GetFlags() != unix.O_WRONLY|unix.O_APPEND|oLargefile || r.Size != nil || r.GetPos() != 14 {
		t.Errorf("append.log: %v", r)
	}
	for _, tk := range set.Tasks {
		for _, f := range tk.Fds.Fds {
			if f.Cloexec() != (tk == root && f.Num == 1000) {
				t.Errorf("pid %d fd %d: FD_CLOEXEC %v; want it on root fd 1000 only", tk.Pid, f.Num, f.Cloexec())
			}
		}
	}
	if f := fd(root, 51).File; f.Entry.GetPipe().GetFlags() != unix.O_RDONLY || string(f.Pipe.Data) != pipeBData {
		t.Errorf("pipe B: flags %#o data %q", f.Entry.GetPipe().GetFlags(), f.Pipe.Data)
	}
	if f := fd(root, 61).File; f.Entry.GetPipe().GetFlags() != unix.O_WRONLY|unix.O_NONBLOCK {
		t.Errorf("pipe C write end flags %#o, want O_WRONLY|O_NONBLOCK", f.Entry.GetPipe().GetFlags())
	}
	if p := fd(root, 60).File.Pipe; p.Size != 1<<20 || !bytes.Equal(p.Data, pipeCData()) {
		t.Errorf("pipe C: size %d, %d bytes", p.Size, len(p.Data))
	}
	if p := fd(s2, 0).File.Pipe; string(p.Data) != pipeAData || p.Size != 65536 {
		t.Errorf("pipe A: size %d data %q", p.Size, p.Data)
	}
	ff := fd(root, 20).File
	if ff.Type != criupb.FdTypes_FIFO || string(ff.Pipe.Data) != fifoData || ff.Path.Entry.GetReg().GetFlags() != unix.O_RDONLY|unix.O_NONBLOCK|oLargefile {
		t.Errorf("FIFO fd 20: %v data %q", ff.Path.Entry.GetReg(), ff.Pipe.Data)
	}
	if fd(s3, 5).File.Pipe != ff.Pipe || fd(s3, 5).File == ff {
		t.Error("stage3 fd 5 should be its own description of the FIFO")
	}
	if len(set.Fifos) != 1 || len(set.Pipes) != 3 {
		var desc []string
		for _, p := range set.Pipes {
			for _, e := range p.Ends {
				for _, f := range e.Fds {
					desc = append(desc, fmt.Sprintf("pipe %d: pid %d fd %d", p.ID, f.Table.Tasks[0].Pid, f.Num))
				}
			}
		}
		t.Errorf("%d FIFOs and %d pipes, want 1 and 3: %s", len(set.Fifos), len(set.Pipes), strings.Join(desc, "; "))
	}
}

// critCheck decodes every CRIU image of dir with go-criu's crit and
// compares the entry counts and a few fields with our decoder.
func critCheck(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == ExecImage || e.Name() == DescriptorsFile || e.Name() == NetLockRecord {
			continue // ours (runc's for descriptors.json): not images
		}
		p := filepath.Join(dir, e.Name())
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		typ, err := critcli.GetEntryTypeFromImg(f)
		if err != nil {
			f.Close()
			t.Errorf("crit: %s: %v", e.Name(), err)
			continue
		}
		img, err := crit.New(f, nil, "", false, false).Decode(typ)
		f.Close()
		if err != nil {
			t.Errorf("crit: decode %s: %v", e.Name(), err)
			continue
		}
		_, ours, err := images.ReadFile(p, nil)
		if err != nil {
			t.Errorf("images.ReadFile %s: %v", e.Name(), err)
			continue
		}
		if len(img.Entries) != len(ours) {
			t.Errorf("%s: crit decodes %d entries, we %d", e.Name(), len(img.Entries), len(ours))
			continue
		}
		for i, ce := range img.Entries {
			if strings.HasPrefix(e.Name(), "ghost-file-") && i < len(img.Entries)-1 {
				// go-criu v8.3.0's decodeGhostFile appends &entry of one
				// reused variable: every entry reads as the last one.
				continue
			}
			// Same field values: compare the JSON of both decodings with
			// names normalised away (different schemas, same numbers).
			cj, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(ce.Message)
			om := ours[i].Msg
			if fe, ok := om.(*criupb.FileEntry); ok && fe.GetEfd() != nil && fe.Efd.Semaphore != nil {
				// eventfd semaphore mode: fdrestore's own field, which
				// CRIU's schema does not have.
				fe = proto.Clone(fe).(*criupb.FileEntry)
				fe.Efd.Semaphore = nil
				om = fe
			}
			if fe, ok := om.(*criupb.FileEntry); ok && fe.GetIsk().GetFdrPendingListener() != 0 {
				// A connection not yet accepted: fdrestore's own fields
				// (inetpending.go), which CRIU's schema does not have.
				fe = proto.Clone(fe).(*criupb.FileEntry)
				fe.Isk.FdrPendingListener, fe.Isk.FdrPendingOrder, fe.Isk.FdrPendingData = nil, nil, nil
				om = fe
			}
			oj, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(om)
			if !strings.HasPrefix(e.Name(), "core-") && !jsonSame(cj, oj) {
				t.Errorf("%s entry %d: crit %s, ours %s", e.Name(), i, cj, oj)
			}
		}
	}
}

func jsonSame(a, b []byte) bool {
	norm := func(b []byte) string {
		s := string(b)
		s = strings.ReplaceAll(s, " ", "")
		return s
	}
	return norm(a) == norm(b)
}

// canon renders an image directory with pids, pipe inodes and run ids
// normalised, leaving out what legitimately differs between a tree and its
// restored copy (threads, core images, argv/env, stats).
func canon(t *testing.T, dir string) string {
	t.Helper()
	pids := map[uint32]uint32{}
	pipeIDs := map[uint32]uint32{}
	_, pst, err := images.ReadFile(filepath.Join(dir, "pstree.img"), images.KindNamed("PSTREE"))
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range pst {
		pids[e.Msg.(*criupb.PstreeEntry).GetPid()] = uint32(i + 1)
	}
	mp := func(p *uint32) {
		if p == nil {
			return
		}
		if v, ok := pids[*p]; ok {
			*p = v
		} else if *p != 0 {
			*p = 1 << 30
		}
	}
	pipe := func(p *uint32) {
		if p == nil {
			return
		}
		if _, ok := pipeIDs[*p]; !ok {
			pipeIDs[*p] = uint32(len(pipeIDs) + 1)
		}
		*p = pipeIDs[*p]
	}
	inos := map[uint32]uint32{}
	ino := func(p *uint32) {
		if p == nil || *p == 0 {
			return
		}
		if _, ok := inos[*p]; !ok {
			inos[*p] = uint32(len(inos) + 1)
		}
		*p = inos[*p]
	}
	names := []string{"inventory.img", "pstree.img", "files.img", "pipes-data.img", "fifo-data.img", "sk-queues.img"}
	ents, _ := os.ReadDir(dir)
	var per []string
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, "fdinfo-") || strings.HasPrefix(n, "ids-") || strings.HasPrefix(n, "fs-") {
			per = append(per, n)
		}
	}
	sort.Strings(per)
	names = append(names, per...)
	// Blocks by file name after pids are mapped: the raw names sort by
	// pid digits, which differ between the original and restored trees.
	blocks := map[string]*strings.Builder{}
	var order []string
	for _, n := range names {
		_, entries, err := images.ReadFile(filepath.Join(dir, n), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		name := n
		for _, pfx := range []string{"ids-", "fs-"} {
			if strings.HasPrefix(n, pfx) {
				var pid uint32
				fmt.Sscanf(strings.TrimPrefix(n, pfx), "%d.img", &pid)
				mp(&pid)
				name = fmt.Sprintf("%sP%d.img", pfx, pid)
			}
		}
		out := &strings.Builder{}
		if _, ok := blocks[name]; !ok {
			order = append(order, name)
		}
		blocks[name] = out
		for _, e := range entries {
			m := proto.Clone(e.Msg)
			switch m := m.(type) {
			case *criupb.InventoryEntry:
				m.DumpCriuRunId = nil
			case *criupb.PstreeEntry:
				mp(m.Pid)
				mp(m.Ppid)
				mp(m.Pgid)
				mp(m.Sid)
				m.Threads = nil
			case *criupb.FileEntry:
				if m.Pipe != nil {
					pipe(m.Pipe.PipeId)
				}
				if m.Fifo != nil {
					pipe(m.Fifo.PipeId)
				}
				if u := m.Usk; u != nil {
					ino(u.Ino)
					ino(u.Peer)
					mp(u.Fown.Pid)
					// What a socket sent and is not read yet depends on
					// who sent it: the restore refills queues from other
					// sockets at times.
					if u.GetState() != 10 && u.Backlog != nil {
						*u.Backlog = min(*u.Backlog, 1)
					}
				}
			case *criupb.PipeDataEntry:
				pipe(m.PipeId)
			}
			j, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
			fmt.Fprintf(out, "%s %s", name, j)
			if e.Trailer != nil {
				fmt.Fprintf(out, " data sha256 %x", sha256.Sum256(e.Trailer))
			}
			out.WriteString("\n")
		}
	}
	// The shared images first, in their fixed order, then the per-task
	// ones by mapped name.
	shared := order[:0:0]
	var per2 []string
	for _, n := range order {
		if strings.HasPrefix(n, "fdinfo-") || strings.HasPrefix(n, "ids-") || strings.HasPrefix(n, "fs-") {
			per2 = append(per2, n)
		} else {
			shared = append(shared, n)
		}
	}
	sort.Strings(per2)
	var all strings.Builder
	for _, n := range append(shared, per2...) {
		all.WriteString(blocks[n].String())
	}
	return all.String()
}

func diffLines(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for i := 0; i < max(len(al), len(bl)); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			out = append(out, "- "+x, "+ "+y)
		}
	}
	return strings.Join(out, "\n")
}

func TestDumpLeaveRunning(t *testing.T) {
	dir := mainDir(t)
	tr := startScenario(t, "main", dir)
	cgBefore, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", tr.pid))
	img := filepath.Join(t.TempDir(), "img")
	doDump(t, tr.pid, img, true)
	if _, err := images.Load(img); err != nil {
		t.Fatal(err)
	}
	cgAfter, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", tr.pid))
	if !bytes.Equal(cgBefore, cgAfter) {
		t.Errorf("cgroup after dump %q, before %q", cgAfter, cgBefore)
	}
	// The pipes still hold their data: read it through stolen fds.
	pidfd, err := unix.PidfdOpen(tr.pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	read := func(fd, n int) []byte {
		l, err := unix.PidfdGetfd(pidfd, fd, 0)
		if err != nil {
			t.Fatalf("pidfd_getfd %d: %v", fd, err)
		}
		defer unix.Close(l)
		unix.SetNonblock(l, true) // shared description: the tree is killed afterwards anyway
		buf := make([]byte, n+1)
		got := 0
		for got < len(buf) {
			m, err := unix.Read(l, buf[got:])
			if m <= 0 || err != nil {
				break
			}
			got += m
		}
		return buf[:got]
	}
	if got := read(51, len(pipeBData)); string(got) != pipeBData {
		t.Errorf("pipe B after dump: %q, want %q", got, pipeBData)
	}
	if got := read(60, pipeCLen); !bytes.Equal(got, pipeCData()) {
		t.Errorf("pipe C after dump: %d bytes, want %d", len(got), pipeCLen)
	}
	if got := read(20, len(fifoData)); string(got) != fifoData {
		t.Errorf("FIFO after dump: %q, want %q", got, fifoData)
	}
	if st, err := readStat(tr.pid); err != nil || st.state == 'Z' {
		t.Errorf("root after --leave-running: %v %v", st, err)
	}
	// No temporary cgroup is left behind.
	mnt, _ := cgroup2Mount()
	left, _ := filepath.Glob(filepath.Join(mnt, fmt.Sprintf("fdrestore-dump-%d-*", os.Getpid())))
	if len(left) > 0 {
		t.Errorf("temporary cgroups left: %v", left)
	}
}

func TestDumpRefusesSocket(t *testing.T) {
	tr := startScenario(t, "sock", t.TempDir())
	img := filepath.Join(t.TempDir(), "img")
	_, err := Dump(context.Background(), tr.pid, img, Options{Timeout: 20 * time.Second})
	var ue *UnsupportedError
	if !errors.As(err, &ue) || !errors.Is(err, ErrUnsupported) {
		t.Fatalf("dump of a tree with a netlink socket: %v, want UnsupportedError", err)
	}
	msg := err.Error()
	if want := fmt.Sprintf("pid %d fd 12: netlink socket is not supported", tr.pid); !strings.Contains(msg, want) {
		t.Errorf("error %q does not name %q", msg, want)
	}
	if strings.Contains(msg, "fd 10") || strings.Contains(msg, "fd 11") {
		t.Errorf("error %q refuses the unix socketpair", msg)
	}
	t.Logf("refused: %v", err)
	if _, err := os.Stat(filepath.Join(img, "inventory.img")); err == nil {
		t.Error("a refused dump wrote images")
	}
	// The tree still runs: it echoes on its socket.
	pidfd, err := unix.PidfdOpen(tr.pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	s, err := unix.PidfdGetfd(pidfd, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	if _, err := unix.Write(s, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	pfd := []unix.PollFd{{Fd: int32(s), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 5000); n != 1 || err != nil {
		t.Fatalf("no echo from the tree after the refused dump (poll %d, %v)", n, err)
	}
	buf := make([]byte, 16)
	n, _ := unix.Read(s, buf)
	if string(buf[:n]) != "ping" {
		t.Errorf("echo %q, want ping", buf[:n])
	}
}

func TestDumpExecRecorded(t *testing.T) {
	dir := mainDir(t)
	tr := startScenario(t, "main", dir)
	img := filepath.Join(t.TempDir(), "img")
	doDump(t, tr.pid, img, false)
	tr.cmd.Wait()
	set0, err := images.Load(img)
	if err != nil {
		t.Fatal(err)
	}
	checkMainSet(t, set0)
	recs, err := restore.LoadExecRecords(img)
	if err != nil {
		t.Fatal(err)
	}
	if r := recs[uint32(tr.pid)]; r == nil || r.GetCwd() != dir || len(r.GetArgv()) == 0 {
		t.Fatalf("exec record of the root: %v", r)
	}
	set, err := images.Load(img)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := restore.NewPlan(set, restore.PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := restore.Run(context.Background(), plan, restore.Options{End: restore.EndExecRecorded, Timeout: 60 * time.Second})
	if err != nil {
		t.Fatalf("restore --exec-recorded: %v", err)
	}
	t.Cleanup(func() {
		for _, p := range res.PidMap {
			syscall.Kill(p, syscall.SIGKILL)
		}
		var ws syscall.WaitStatus
		syscall.Wait4(res.RootPid, &ws, 0, nil)
	})
	deadline := time.Now().Add(30 * time.Second)
	for _, role := range []string{"root", "stage1", "stage2", "stage3"} {
		p := filepath.Join(dir, "restored-"+role)
		for {
			b, err := os.ReadFile(p)
			if err == nil {
				rep := string(b)
				t.Logf("%s: %q", role, rep)
				switch role {
				case "root":
					for _, want := range []string{"12 /", "50 pipe", "60 pipe", "fifo " + fifoData} {
						if !strings.Contains(rep, want) {
							t.Errorf("restored root report lacks %q", want)
						}
					}
					// FD_CLOEXEC fds are kept across the exec and listed in
					// FDRESTORE_CLOEXEC_FDS for the program to re-mark.
					if !strings.Contains(rep, "\n1000 ") {
						t.Error("fd 1000 (FD_CLOEXEC) did not survive --exec-recorded")
					}
				case "stage3":
					if !strings.Contains(rep, "100 pipe") || !strings.Contains(rep, "5 /") {
						t.Errorf("restored stage3 report: %q", rep)
					}
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no report from restored %s", role)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// TestDumpScale measures dumps of a 1-task tree with 9,000 pipes and of a
// 100-task tree.
func TestDumpScale(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	for _, c := range []struct {
		name, scenario string
		n              int
	}{{"9000-pipes", "pipes", 9000}, {"100-tasks", "fanout", 100}} {
		t.Run(c.name, func(t *testing.T) {
			tr := startScenario(t, c.scenario, t.TempDir(), fmt.Sprintf("%s=%d", envN, c.n))
			img := filepath.Join(t.TempDir(), "img")
			st := doDump(t, tr.pid, img, false)
			t.Logf("%s: %d tasks, %d fds, %d files: freezing %.2f ms, frozen %.2f ms, total %.2f ms",
				c.name, st.Tasks, st.Fds, st.Files, ms(st.Freezing), ms(st.Frozen), ms(st.Total))
			if _, err := images.Load(img); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// TestDumpRefusesUnrestorableTree dumps a tree whose root is not a session
// leader: the images would be refused by restore, so dump must refuse
// too, name the reason, and leave the tree running.
func TestDumpRefusesUnrestorableTree(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("dump tests need root")
		}
		t.Skip("dump tests need root")
	}
	cmd := exec.Command("/bin/sleep", "30") // same session as the test: not a session leader
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	_, err := Dump(context.Background(), cmd.Process.Pid, t.TempDir(), Options{})
	if !errors.Is(err, ErrNotRestorable) {
		t.Fatalf("dump of a non-session-leader root: got %v, want ErrNotRestorable", err)
	}
	if !strings.Contains(err.Error(), "not a session leader") {
		t.Errorf("error %q does not say why", err)
	}
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the tree was not left running: %v", err)
	}
}
