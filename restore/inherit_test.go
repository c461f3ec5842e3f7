package restore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/internal/fdcheck"
	"github.com/fdrestore/fdrestore/internal/synth"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"github.com/fdrestore/fdrestore/restore"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// lonePipeEnd adds one end of a pipe whose other end was outside the tree
// (a runtime's stdio pipe) and installs it at fd of t.
func lonePipeEnd(b *synth.Builder, t *synth.Task, fd uint32, pipeID uint32, flags uint32) *synth.Desc {
	d := b.RawFile(criupb.FdTypes_PIPE, func(fe *criupb.FileEntry) {
		fe.Pipe = &criupb.PipeEntry{Id: proto.Uint32(fe.GetId()), PipeId: proto.Uint32(pipeID), Flags: proto.Uint32(flags),
			Fown: &criupb.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(0), PidType: proto.Uint32(0), Pid: proto.Uint32(0)}}
	})
	b.Share(d, t, fd)
	return d
}

// inheritImages is a root task 100 and a child 101:
//
//	100 fd 0  read end of a pipe whose write end 100 holds at fd 7
//	100 fd 1  write end of pipe:[200001], read end outside the tree
//	100 fd 2  LOG (a path that does not exist: it must not be reopened)
//	101 fd 3  datagram socket connected to a peer outside the tree
//	101 fd 4  the write end of pipe:[200001] too (shared with 100)
func inheritImages(t *testing.T, log string) (*synth.Builder, uint32) {
	b := synth.New()
	root := b.Task(100)
	child := b.Child(root, 101)
	b.Pipe(root, 0, root, 7, []byte("queued"), 0)
	out := lonePipeEnd(b, root, 1, 200001, unix.O_WRONLY)
	b.Share(out, child, 4)
	b.RegFile(root, 2, log, unix.O_WRONLY|unix.O_APPEND|unix.O_LARGEFILE, 0)
	name, _ := abstractName(t, "inh")
	s := b.UnixSocket(synth.Dgram, synth.Established, nil)
	e := b.UnixSocket(synth.Dgram, synth.Established, name)
	e.Usk().Uflags = proto.Uint32(1)
	b.Connect(s, e)
	b.Share(s, child, 3)
	return b, s.Usk().GetIno()
}

// TestInheritKeys: the key forms hand the caller's fd to the task (here
// fd[N], pipe:[INO], a path and fd[PID:N]; socket:[INO] in
// TestExtUnixPolicies, tty[...] and file[...] in
// TestInheritTTYAndExternalFile), and
// the restored fd is the caller's description (kcmp); the rest of the
// tree is restored as usual.
func TestInheritKeys(t *testing.T) {
	needRoot(t)
	log := filepath.Join(t.TempDir(), "gone", "log")
	b, sockIno := inheritImages(t, log)

	var stdin, stdout [2]int
	if err := unix.Pipe2(stdin[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	if err := unix.Pipe2(stdout[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	logF, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		t.Fatal(err)
	}
	logFd, err := unix.Open(logF.Name(), unix.O_WRONLY|unix.O_APPEND|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	logF.Close()
	files := map[string]*os.File{}
	own := func(key string, fd int) *os.File {
		f := os.NewFile(uintptr(fd), key)
		files[key] = f
		t.Cleanup(func() { f.Close() })
		return f
	}
	rd := own("fd[0]", stdin[0])
	own("w0", stdin[1])
	own("r1", stdout[0])
	wr := own("pipe:[200001]", stdout[1])
	sk := own(fmt.Sprintf("socket:[%d]", sockIno), sp[0]) // by fd[101:3] (socket:[INO]: TestExtUnixPolicies)
	own("peer", sp[1])
	lg := own(log, logFd)

	inh := []restore.Inherit{{Key: "fd[0]", File: rd}, {Key: "pipe:[200001]", File: wr},
		{Key: log, File: lg}, {Key: "fd[101:3]", File: sk}}
	_, p, err := planSynth(t, b, restore.PlanOptions{Inherit: inh})
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	if err := p.Err(); err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	p.Print(&sb)
	if !strings.Contains(sb.String(), "Inherited (4):") {
		t.Errorf("plan does not list the 4 inherited descriptions:\n%s", sb.String())
	}
	res, err := restore.Run(context.Background(), p, restore.Options{End: restore.EndStop, Timeout: 20 * time.Second, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	cleanupPids(t, res.PidMap)
	self := os.Getpid()
	for _, c := range []struct {
		task uint32
		fd   int
		mine int
	}{{100, 0, stdin[0]}, {100, 1, stdout[1]}, {101, 4, stdout[1]}, {100, 2, logFd}, {101, 3, sp[0]}} {
		same, err := fdcheck.SameDescription(res.PidMap[c.task], c.fd, self, c.mine)
		if err != nil || !same {
			t.Errorf("task %d fd %d: not the caller's fd %d (%v)", c.task, c.fd, c.mine, err)
		}
	}
	// fd 7 is a fresh pipe with the queued data, not the caller's.
	if same, _ := fdcheck.SameDescription(res.PidMap[100], 7, self, stdin[1]); same {
		t.Errorf("task 100 fd 7 is the caller's write end; it should be a pipe of its own")
	}
	if fl, err := fdcheck.Info(res.PidMap[100], 2); err != nil || fl.Flags&unix.O_APPEND == 0 {
		t.Errorf("task 100 fd 2: flags %#o (%v), want O_APPEND as recorded", fl.Flags, err)
	}
	// The restored socket is the caller's: what the caller's peer sends
	// arrives there.
	if _, err := unix.Write(sp[1], []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if n, err := fdcheck.Queued(sp[0]); err != nil || n != 4 {
		t.Errorf("socket queue %d, %v", n, err)
	}
}

// TestInheritErrors: a key that matches nothing names the key and lists
// the images' keys; an fd of the wrong access mode is refused.
func TestInheritErrors(t *testing.T) {
	log := "/nonexistent/fdr-inherit-log"
	b, _ := inheritImages(t, log)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for _, c := range []struct {
		key  string
		file *os.File
		want []string
	}{
		{"pipe[200001]", w, []string{`inherit key "pipe[200001]": matches nothing`, "pipe:[200001]", log, "fd[0]", "fd[101:3]"}},
		{"fd[9]", w, []string{`"fd[9]"`, "fd[2]"}},
		{"pipe:[200001]", r, []string{"read-only", "write-only"}},
		{"fd[7]", r, []string{"read-only", "write-only"}},
	} {
		_, _, err := planSynth(t, b, restore.PlanOptions{Inherit: []restore.Inherit{{Key: c.key, File: c.file}}})
		var ue *restore.UnresolvedError
		if err == nil || !errors.Is(err, restore.ErrUnresolved) || !errors.As(err, &ue) || ue.Key != c.key {
			t.Errorf("key %q: got %v, want an UnresolvedError", c.key, err)
			continue
		}
		for _, s := range c.want {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("key %q: error %q does not mention %q", c.key, err, s)
			}
		}
	}
}

// TestInheritCLI: fdrestore plan takes --inherit-fd fd[N]:KEY, lists
// what each fd replaces, and fails on a key that matches nothing.
func TestInheritCLI(t *testing.T) {
	b, _ := inheritImages(t, "/nonexistent/fdr-inherit-log")
	dir, _, _ := planSynth(t, b, restore.PlanOptions{ExtUnixSk: true})
	// fd 1 of the CLI is the pipe CombinedOutput reads: write-only, as
	// pipe:[200001] was.
	out, err := exec.Command(cliBinary(t), "plan", "-D", dir, "--ext-unix-sk", "--inherit-fd", "fd[1]:pipe:[200001]").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Inherited (1):") || !strings.Contains(string(out), `the caller's fd for "pipe:[200001]"`) {
		t.Errorf("plan --inherit-fd: %v\n%s", err, out)
	}
	out, err = exec.Command(cliBinary(t), "plan", "-D", dir, "--ext-unix-sk", "--inherit-fd", "fd[1]:pipe[200001]").CombinedOutput()
	if err == nil || !strings.Contains(string(out), `inherit key "pipe[200001]": matches nothing`) || !strings.Contains(string(out), "pipe:[200001]") {
		t.Errorf("plan with a wrong key: %v\n%s", err, out)
	}
	out, err = exec.Command(cliBinary(t), "plan", "-D", dir, "--inherit-fd", "3:pipe:[200001]").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "want fd[N]:KEY") {
		t.Errorf("plan with a malformed --inherit-fd: %v\n%s", err, out)
	}
}

// TestInheritTTYAndExternalFile: tty[RDEV:DEV] hands the caller's
// terminal to a task whose terminal was outside the tree (its pty's master
// is not in the images); file[MNT:INO] stands for a file dumped as external (CRIU's
// --external file[...]), which without an fd is an error naming the key.
func TestInheritTTYAndExternalFile(t *testing.T) {
	needRoot(t)
	build := func() (*ttyImages, uint32) {
		b := newImgBuilder()
		ti := &ttyImages{b: b}
		outside := ti.file(ti.pty(7, false, 400, 400, false), "/dev/pts/7", unix.O_RDWR|unix.O_LARGEFILE)
		ext := b.reg("file[1f:abc]", unix.O_WRONLY|unix.O_LARGEFILE, 0, -1, 0)
		b.files[len(b.files)-1].Reg.Ext = proto.Bool(true)
		b.task(400, 0, 400, 400).fd(0, outside, false).fd(1, outside, false).fd(2, outside, false).fd(3, ext, false)
		return ti, ext
	}
	ti, _ := build()
	dir := ti.write(t)
	set, err := images.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	master, slavePath, err := restore.NewConsole()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	slave, err := os.OpenFile(slavePath, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer slave.Close()
	extFile, err := os.OpenFile(filepath.Join(t.TempDir(), "ext"), os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer extFile.Close()
	rdev := fmt.Sprintf("tty[%x:0]", 136<<8|7)

	// Without the external file's fd: an error naming it.
	_, err = restore.NewPlan(set, restore.PlanOptions{Inherit: []restore.Inherit{{Key: rdev, File: slave}}})
	if !errors.Is(err, restore.ErrUnresolved) || !strings.Contains(err.Error(), "file[1f:abc]") {
		t.Errorf("external file without an fd: %v", err)
	}
	// A wrong tty key lists the right one.
	_, err = restore.NewPlan(set, restore.PlanOptions{Inherit: []restore.Inherit{{Key: "tty[88:7]", File: slave}}})
	if err == nil || !strings.Contains(err.Error(), rdev) {
		t.Errorf("wrong tty key: %v, want %s among the candidates", err, rdev)
	}
	p, err := restore.NewPlan(set, restore.PlanOptions{Inherit: []restore.Inherit{{Key: rdev, File: slave}, {Key: "file[1f:abc]", File: extFile}}})
	if err == nil {
		err = p.Err()
	}
	if err != nil {
		t.Fatal(err)
	}
	res, err := restore.Run(context.Background(), p, restore.Options{End: restore.EndStop, Timeout: 20 * time.Second, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	cleanupPids(t, res.PidMap)
	pid := res.PidMap[400]
	for fd, mine := range map[int]*os.File{0: slave, 1: slave, 2: slave, 3: extFile} {
		same, err := fdcheck.SameDescription(pid, fd, os.Getpid(), int(mine.Fd()))
		if err != nil || !same {
			t.Errorf("fd %d is not the caller's %s (%v)", fd, mine.Name(), err)
		}
	}
}
