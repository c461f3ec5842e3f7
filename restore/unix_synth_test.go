package restore_test

import (
	"bytes"
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
	"github.com/fdrestore/fdrestore/internal/synth"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"github.com/fdrestore/fdrestore/restore"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// Synthetic images for what the CRIU fixtures do not cover. Each test
// builds the images with internal/synth, restores them with restore.Run
// (EndStop) and checks the sockets from outside.

// abstractName returns a unique abstract socket name (with the leading
// NUL) and its getsockname form.
func abstractName(t testing.TB, tag string) ([]byte, string) {
	s := fmt.Sprintf("fdr-test-%d-%s-%d", os.Getpid(), tag, time.Now().UnixNano()%1e9)
	return append([]byte{0}, s...), "@" + s
}

// ownStdio is stdio of a task that has descriptions of its own.
func ownStdio(task uint32) []wantFD {
	fds := stdio(task)
	for i := range fds {
		fds[i].desc += fmt.Sprint(task)
	}
	return fds
}

// restoreSynth writes b's images and restores them.
func restoreSynth(t *testing.T, b *synth.Builder) *checker {
	t.Helper()
	needRoot(t)
	dir := t.TempDir()
	if err := b.Write(dir); err != nil {
		t.Fatal(err)
	}
	res := runStop(t, dir)
	return &checker{t: t, pids: res.PidMap}
}

// planSynth writes b's images and plans them with opts.
func planSynth(t *testing.T, b *synth.Builder, opts restore.PlanOptions) (string, *restore.Plan, error) {
	t.Helper()
	dir := t.TempDir()
	if err := b.Write(dir); err != nil {
		t.Fatal(err)
	}
	set, err := images.Load(dir)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	p, err := restore.NewPlan(set, opts)
	return dir, p, err
}

// TestUnixListenerQueue: a listener with an accepted connection and two
// connections still waiting in its queue; an accepted connection whose
// listener is gone keeps the name without holding it.
func TestUnixListenerQueue(t *testing.T) {
	lname, lstr := abstractName(t, "lq")
	gname, gstr := abstractName(t, "gone")
	b := synth.New()
	tk := b.Task(100)
	b.Stdio(tk)
	l := b.UnixSocket(synth.Stream, synth.Listening, lname)
	l.Usk().Backlog = proto.Uint32(8)
	acc := b.UnixSocket(synth.Stream, synth.Established, lname)
	cl := b.UnixSocket(synth.Stream, synth.Established, nil)
	b.Connect(acc, cl)
	b.Connect(cl, acc)
	p1 := b.UnixSocket(synth.Stream, synth.Established, nil)
	p2 := b.UnixSocket(synth.Stream, synth.Established, nil)
	b.Connect(p1, l)
	b.Connect(p2, l)
	b.Packet(acc, []byte("to-acc"))
	b.Packet(cl, []byte("to-cl"))
	gacc := b.UnixSocket(synth.Stream, synth.Established, gname)
	gcl := b.UnixSocket(synth.Stream, synth.Established, nil)
	b.Connect(gacc, gcl)
	b.Connect(gcl, gacc)
	for i, d := range []*synth.Desc{l, acc, cl, p1, p2, gacc, gcl} {
		b.Share(d, tk, uint32(3+i))
	}
	c := restoreSynth(t, b)
	st := unix.SOCK_STREAM
	c.wantSock(ref{100, 3}, st, lstr, "-", true)
	c.wantSock(ref{100, 4}, st, lstr, "", false)
	c.wantSock(ref{100, 5}, st, "", lstr, false)
	c.wantSock(ref{100, 6}, st, "", lstr, false)
	c.wantSock(ref{100, 7}, st, "", lstr, false)
	c.wantSock(ref{100, 8}, st, gstr, "", false)
	c.wantSock(ref{100, 9}, st, "", gstr, false)
	c.wantStream(ref{100, 4}, "to-acc")
	c.wantStream(ref{100, 5}, "to-cl")
	c.linked(ref{100, 5}, ref{100, 4})
	c.linked(ref{100, 8}, ref{100, 9})
	// The two pending connections are in the listener's queue, in order.
	lfd := c.getfd(ref{100, 3})
	for _, r := range []ref{{100, 6}, {100, 7}} {
		if err := c.send(r, "from-"+r.String()); err != nil {
			t.Errorf("send on pending %s: %v", r, err)
		}
	}
	for _, r := range []ref{{100, 6}, {100, 7}} {
		a, err := acceptWait(lfd)
		if err != nil {
			t.Fatalf("accept the pending connection of %s: %v", r, err)
		}
		buf := make([]byte, 64)
		n, _ := unix.Read(a, buf)
		if string(buf[:n]) != "from-"+r.String() {
			t.Errorf("accepted connection holds %q, want %q", buf[:n], "from-"+r.String())
		}
		unix.Close(a)
	}
	if pending(lfd) {
		t.Errorf("more than the two recorded connections pending")
	}
	// The gone listener's name is not held by anything.
	s, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	defer unix.Close(s)
	if err := unix.Bind(s, &unix.SockaddrUnix{Name: gstr}); err != nil {
		t.Errorf("bind %s (the accepted socket's name, whose listener is gone): %v", gstr, err)
	}
}

// TestUnixPeerless: a stream socket whose peer was closed keeps its data
// then reads EOF; datagram clients and a server; a self-connected
// datagram socket; a datagram socket nobody can send to with data.
func TestUnixPeerless(t *testing.T) {
	sname, sstr := abstractName(t, "srv")
	self, selfstr := abstractName(t, "self")
	b := synth.New()
	tk := b.Task(100)
	b.Stdio(tk)
	orphan := b.UnixSocket(synth.Stream, synth.Established, nil)
	orphan.Usk().Shutdown = criupb.SkShutdown_BOTH.Enum()
	b.Packet(orphan, []byte("left-behind"))
	srv := b.UnixSocket(synth.Dgram, synth.Established, sname)
	var cls []*synth.Desc
	for range 3 {
		c := b.UnixSocket(synth.Dgram, synth.Established, nil)
		b.Connect(c, srv)
		cls = append(cls, c)
	}
	b.Packet(srv, []byte("a"))
	b.Packet(srv, []byte("bb"))
	b.Packet(srv, []byte("ccc"))
	me := b.UnixSocket(synth.Dgram, synth.Established, self)
	b.Connect(me, me)
	b.Packet(me, []byte("self1"))
	b.Packet(me, []byte("self-22"))
	lone := b.UnixSocket(synth.Dgram, synth.Established, nil)
	b.Packet(lone, []byte("lone"))
	// Datagram sockets that received data, then connected elsewhere: one
	// has a client connected to it, the other none.
	fname, fstr := abstractName(t, "fwd")
	far := b.UnixSocket(synth.Dgram, synth.Established, fname)
	r1name, r1str := abstractName(t, "r1")
	r1 := b.UnixSocket(synth.Dgram, synth.Established, r1name)
	b.Connect(r1, far)
	r1cl := b.UnixSocket(synth.Dgram, synth.Established, nil)
	b.Connect(r1cl, r1)
	b.Packet(r1, []byte("r1-from-client"))
	r2name, r2str := abstractName(t, "r2")
	r2 := b.UnixSocket(synth.Dgram, synth.Established, r2name)
	b.Connect(r2, far)
	b.Packet(r2, []byte("r2-a"))
	b.Packet(r2, []byte("r2-bb"))
	for i, d := range append([]*synth.Desc{orphan, srv, me, lone}, cls...) {
		b.Share(d, tk, uint32(3+i))
	}
	for i, d := range []*synth.Desc{far, r1, r1cl, r2} {
		b.Share(d, tk, uint32(20+i))
	}
	c := restoreSynth(t, b)
	dg := unix.SOCK_DGRAM
	// The peer was closed: getpeername names the dead peer (unnamed).
	c.wantSock(ref{100, 3}, unix.SOCK_STREAM, "", "", false)
	c.wantSock(ref{100, 4}, dg, sstr, "-", false)
	c.wantSock(ref{100, 5}, dg, selfstr, selfstr, false)
	c.wantSock(ref{100, 6}, dg, "", "-", false)
	for fd := 7; fd <= 9; fd++ {
		c.wantSock(ref{100, fd}, dg, "", sstr, false)
	}
	c.wantStream(ref{100, 3}, "left-behind") // and EOF
	if err := c.send(ref{100, 3}, "x"); err != unix.EPIPE {
		t.Errorf("send on the peerless stream socket: %v, want EPIPE", err)
	}
	c.wantMessages(ref{100, 4}, "a", "bb", "ccc")
	c.wantMessages(ref{100, 5}, "self1", "self-22")
	c.wantMessages(ref{100, 6}, "lone")
	for fd := 7; fd <= 9; fd++ {
		c.linked(ref{100, fd}, ref{100, 4})
		c.wantMessages(ref{100, fd})
	}
	c.linked(ref{100, 5}, ref{100, 5})
	c.wantSock(ref{100, 21}, dg, r1str, fstr, false)
	c.wantSock(ref{100, 22}, dg, "", r1str, false)
	c.wantSock(ref{100, 23}, dg, r2str, fstr, false)
	c.wantMessages(ref{100, 21}, "r1-from-client")
	c.wantMessages(ref{100, 23}, "r2-a", "r2-bb")
	c.linked(ref{100, 21}, ref{100, 20})
	c.linked(ref{100, 23}, ref{100, 20})
	// r1 is connected to far now: its client's datagrams are refused.
	if err := c.send(ref{100, 22}, "x"); err != unix.EPERM {
		t.Errorf("send from r1's client after r1 connected elsewhere: %v, want EPERM", err)
	}
}

// TestUnixDeletedPath: a datagram server bound to a path that was then
// unlinked, with a client connected to it and data queued.
func TestUnixDeletedPath(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "gone-dir", "sub", "gone.sock") // its directories went too
	b := synth.New()
	tk := b.Task(100)
	b.Stdio(tk)
	srv := b.UnixSocket(synth.Dgram, synth.Established, []byte(path))
	srv.Usk().Deleted = proto.Bool(true)
	cl := b.UnixSocket(synth.Dgram, synth.Established, nil)
	b.Connect(cl, srv)
	b.Packet(srv, []byte("before"))
	// A listener at a live path whose stale socket file is still there.
	live := filepath.Join(dir, "live.sock")
	l := b.UnixSocket(synth.Stream, synth.Listening, []byte(live))
	l.Usk().Backlog = proto.Uint32(4)
	l.Usk().FilePerms = &criupb.FilePermsEntry{Mode: proto.Uint32(0o140600), Uid: proto.Uint32(0), Gid: proto.Uint32(0)}
	// A relative name, bound from its recorded directory.
	rel := b.UnixSocket(synth.Dgram, synth.Established, []byte("rel.sock"))
	rel.Usk().NameDir = proto.String(dir)
	// A deleted name now taken by a regular file, which stays.
	reused := filepath.Join(dir, "reused")
	if err := os.WriteFile(reused, []byte("other"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv2 := b.UnixSocket(synth.Dgram, synth.Established, []byte(reused))
	srv2.Usk().Deleted = proto.Bool(true)
	cl2 := b.UnixSocket(synth.Dgram, synth.Established, nil)
	b.Connect(cl2, srv2)
	b.Share(srv, tk, 3)
	b.Share(cl, tk, 4)
	b.Share(l, tk, 5)
	b.Share(rel, tk, 6)
	b.Share(srv2, tk, 7)
	b.Share(cl2, tk, 8)
	stale, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := unix.Bind(stale, &unix.SockaddrUnix{Name: live}); err != nil {
		t.Fatal(err)
	}
	unix.Close(stale)
	c := restoreSynth(t, b)
	if _, err := os.Lstat(filepath.Join(dir, "gone-dir")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists after restore (%v), want it and its directories deleted", path, err)
	}
	c.wantSock(ref{100, 3}, unix.SOCK_DGRAM, path, "-", false)
	c.wantSock(ref{100, 4}, unix.SOCK_DGRAM, "", path, false)
	c.wantSock(ref{100, 5}, unix.SOCK_STREAM, live, "-", true)
	c.wantSock(ref{100, 6}, unix.SOCK_DGRAM, "rel.sock", "-", false)
	c.wantSock(ref{100, 8}, unix.SOCK_DGRAM, "", reused, false)
	c.linked(ref{100, 8}, ref{100, 7})
	if b, err := os.ReadFile(reused); err != nil || string(b) != "other" {
		t.Errorf("%s after restore: %q, %v; want the regular file back", reused, b, err)
	}
	if err := unix.Lstat(filepath.Join(dir, "rel.sock"), new(unix.Stat_t)); err != nil {
		t.Errorf("relative name: %v", err)
	}
	c.wantMessages(ref{100, 3}, "before")
	c.linked(ref{100, 4}, ref{100, 3})
	var st unix.Stat_t
	if err := unix.Lstat(live, &st); err != nil || st.Mode != 0o140600 {
		t.Errorf("%s: mode %#o (%v), want 0140600", live, st.Mode, err)
	}
	s, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	defer unix.Close(s)
	if err := unix.Connect(s, &unix.SockaddrUnix{Name: live}); err != nil {
		t.Errorf("connect to %s: %v", live, err)
	}
}

// TestUnixPathTaken: a socket's path now holds a regular file: the
// restore fails naming the socket and the path, and leaves the file and
// no process behind.
func TestUnixPathTaken(t *testing.T) {
	needRoot(t)
	path := filepath.Join(t.TempDir(), "taken")
	if err := os.WriteFile(path, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := synth.New()
	tk := b.Task(100)
	b.Stdio(tk)
	l := b.UnixSocket(synth.Stream, synth.Listening, []byte(path))
	l.Usk().Backlog = proto.Uint32(1)
	b.Share(l, tk, 3)
	dir := t.TempDir()
	if err := b.Write(dir); err != nil {
		t.Fatal(err)
	}
	p := loadPlan(t, dir)
	res, err := restore.Run(context.Background(), p, restore.Options{End: restore.EndStop, Timeout: 20 * time.Second, Log: testLogger(t)})
	if err == nil {
		cleanupPids(t, res.PidMap)
		t.Fatal("restore succeeded with the socket's path taken by a regular file")
	}
	msg := err.Error()
	for _, want := range []string{"unix socket file id", path, "not a socket"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "mine" {
		t.Errorf("%s after the failed restore: %q, %v", path, b, err)
	}
}

// TestUnixInFlight: one SCM_RIGHTS message carries several files that
// exist only in flight: a pipe read end with data, a socket whose own
// queue holds data and whose peer is restored in another task (so the
// socket is created there and sent to the task that refills the queue),
// and /dev/null.
func TestUnixInFlight(t *testing.T) {
	b := synth.New()
	tk := b.Task(100)
	kid := b.Child(tk, 101)
	b.Stdio(tk)
	b.Stdio(kid)
	a, bb := b.UnixPair(synth.Stream)
	pp := b.NewPipe([]byte("pipedata"), 65536) // write end closed
	x, y := b.UnixPair(synth.Seqpacket)
	null := b.DevNull(unix.O_RDWR)
	b.Packet(x, []byte("inner-1"))
	b.Packet(x, []byte("inner-22"))
	b.Packet(y, []byte("to-y"))
	b.Packet(a, []byte("multi"), pp.Read, x, null)
	b.Packet(a, []byte("tail"))
	b.Share(a, kid, 3) // the receiver lives in the child
	b.Share(bb, tk, 3)
	b.Share(y, kid, 4) // x's component is created by the child
	c := restoreSynth(t, b)
	c.check(&wantTree{tasks: []wantTask{{100, 0, 100, 100}, {101, 100, 100, 100}},
		fds: append(append(stdio(100), sockFD(100, 3, "b", 0, false)),
			append(ownStdio(101), sockFD(101, 3, "a", 0, false), sockFD(101, 4, "y", 0, false))...)})
	fd := c.getfd(ref{101, 3})
	buf := make([]byte, 64)
	oob := make([]byte, unix.CmsgSpace(3*4))
	n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		t.Fatalf("recvmsg: %v", err)
	}
	if string(buf[:n]) != "multi" {
		t.Errorf("first message %q, want %q", buf[:n], "multi")
	}
	fds := parseRights(t, oob[:oobn])
	for _, f := range fds {
		defer unix.Close(f)
	}
	if len(fds) != 3 {
		t.Fatalf("%d fds in flight, want 3", len(fds))
	}
	if got := readAllFD(t, fds[0]); got != "pipedata" {
		t.Errorf("pipe in flight: %q, want %q then EOF", got, "pipedata")
	}
	if typ, err := unix.GetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_SEQPACKET {
		t.Errorf("socket in flight: SO_TYPE %d (%v), want SOCK_SEQPACKET", typ, err)
	}
	for _, want := range []string{"inner-1", "inner-22"} {
		n, _, err := unix.Recvfrom(fds[1], buf, unix.MSG_DONTWAIT)
		if err != nil || string(buf[:n]) != want {
			t.Errorf("socket in flight: recv %q (%v), want %q", buf[:n], err, want)
		}
	}
	if _, _, err := unix.Recvfrom(fds[1], buf, unix.MSG_DONTWAIT); err != unix.EAGAIN {
		t.Errorf("socket in flight: more queued than recorded (%v)", err)
	}
	if _, err := unix.Write(c.getfd(ref{101, 4}), []byte("y->x")); err != nil {
		t.Fatal(err)
	}
	if n, _, err := unix.Recvfrom(fds[1], buf, unix.MSG_DONTWAIT); err != nil || string(buf[:n]) != "y->x" {
		t.Errorf("socket in flight is not the peer of task 101 fd 4: %q, %v", buf[:n], err)
	}
	c.wantMessages(ref{101, 4}, "to-y")
	if target, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fds[2])); err != nil || target != "/dev/null" {
		t.Errorf("third fd in flight: %q (%v), want /dev/null", target, err)
	}
	c.wantStream(ref{101, 3}, "tail")
}

// TestUnixFinalState: shutdown BOTH, O_NONBLOCK, fown and socket options
// are applied after the queues are refilled.
func TestUnixFinalState(t *testing.T) {
	b := synth.New()
	tk := b.Task(100)
	b.Stdio(tk)
	a, bb := b.UnixPair(synth.Stream)
	a.Usk().Shutdown = criupb.SkShutdown_BOTH.Enum()
	bb.Usk().Shutdown = criupb.SkShutdown_BOTH.Enum()
	a.Usk().Flags = proto.Uint32(unix.O_RDWR | unix.O_NONBLOCK)
	b.Packet(a, []byte("before-shutdown"))
	o := a.Usk().Opts
	o.SoSndbuf, o.SoRcvbuf = proto.Uint32(262144), proto.Uint32(300000)
	o.SoRcvTmoSec, o.SoRcvTmoUsec = proto.Uint64(3), proto.Uint64(500000)
	o.SoSndTmoSec = proto.Uint64(1)
	o.SoPasscred = proto.Bool(true)
	o.SoPriority, o.SoRcvlowat, o.SoMark = proto.Uint32(5), proto.Uint32(4), proto.Uint32(7)
	a.Usk().Fown.Pid, a.Usk().Fown.PidType, a.Usk().Fown.Signum = proto.Uint32(100), proto.Uint32(1), proto.Uint32(uint32(unix.SIGUSR1))
	b.Share(a, tk, 3)
	b.Share(bb, tk, 4)
	c := restoreSynth(t, b)
	c.check(&wantTree{tasks: []wantTask{{100, 0, 100, 100}},
		fds: append(stdio(100), sockFD(100, 3, "a", nonblk, false), sockFD(100, 4, "b", 0, false))})
	r := ref{100, 3}
	for _, o := range []struct {
		name     string
		opt, val int
	}{{"SO_SNDBUF", unix.SO_SNDBUF, 262144}, {"SO_RCVBUF", unix.SO_RCVBUF, 300000}, {"SO_PASSCRED", unix.SO_PASSCRED, 1},
		{"SO_PRIORITY", unix.SO_PRIORITY, 5}, {"SO_RCVLOWAT", unix.SO_RCVLOWAT, 4}, {"SO_MARK", unix.SO_MARK, 7}} {
		if got := c.sockOpt(r, o.opt); got != o.val {
			t.Errorf("%s: %s %d, want %d", r, o.name, got, o.val)
		}
	}
	if got := c.sockOpt(ref{100, 4}, unix.SO_PASSCRED); got != 0 {
		t.Errorf("SO_PASSCRED on the peer: %d", got)
	}
	tv, err := unix.GetsockoptTimeval(c.getfd(r), unix.SOL_SOCKET, unix.SO_RCVTIMEO)
	if err != nil || tv.Sec != 3 || tv.Usec != 500000 {
		t.Errorf("SO_RCVTIMEO %+v (%v), want 3.5s", tv, err)
	}
	if tv, err := unix.GetsockoptTimeval(c.getfd(r), unix.SOL_SOCKET, unix.SO_SNDTIMEO); err != nil || tv.Sec != 1 || tv.Usec != 0 {
		t.Errorf("SO_SNDTIMEO %+v (%v), want 1s", tv, err)
	}
	if sig, err := unix.FcntlInt(uintptr(c.getfd(r)), unix.F_GETSIG, 0); err != nil || sig != int(unix.SIGUSR1) {
		t.Errorf("F_GETSIG %d (%v), want SIGUSR1", sig, err)
	}
	if own, err := unix.FcntlInt(uintptr(c.getfd(r)), unix.F_GETOWN, 0); err != nil || own != c.pid(100) {
		t.Errorf("F_GETOWN %d (%v), want %d", own, err, c.pid(100))
	}
	// SO_PASSCRED adds credentials to every recvmsg: read(2) instead.
	if got := readAllFD(t, c.getfd(r)); got != "before-shutdown" {
		t.Errorf("%s: queued %q, want %q then EOF", r, got, "before-shutdown")
	}
	for _, r := range []ref{{100, 3}, {100, 4}} {
		if err := c.send(r, "x"); err != unix.EPIPE {
			t.Errorf("%s: send after shutdown BOTH: %v, want EPIPE", r, err)
		}
	}
	if n, err := unix.Read(c.getfd(ref{100, 4}), make([]byte, 4)); n != 0 || err != nil {
		t.Errorf("read on the peer: %d, %v; want EOF", n, err)
	}
}

// TestUnixPlanErrors: images that cannot be restored fail `fdrestore
// plan` (and restore.NewPlan) with the sockets named.
func TestUnixPlanErrors(t *testing.T) {
	cases := []struct {
		name  string
		build func(b *synth.Builder, tk *synth.Task)
		want  []string
	}{
		{"missing peer", func(b *synth.Builder, tk *synth.Task) {
			s := b.UnixSocket(synth.Dgram, synth.Established, nil)
			s.Usk().Peer = proto.Uint32(0x7777)
			b.Share(s, tk, 3)
		}, []string{"unix socket file id", "task 100 fd 3", "socket inode 30583", "not in the images"}},
		{"peer cycle", func(b *synth.Builder, tk *synth.Task) {
			x := b.UnixSocket(synth.Stream, synth.Established, nil)
			y := b.UnixSocket(synth.Stream, synth.Established, nil)
			z := b.UnixSocket(synth.Stream, synth.Established, nil)
			b.Connect(x, y)
			b.Connect(y, z)
			b.Connect(z, x)
			b.Share(x, tk, 3)
			b.Share(y, tk, 4)
			b.Share(z, tk, 5)
		}, []string{"cycle", "task 100 fd 3", "task 100 fd 4", "task 100 fd 5"}},
		{"datagram connect cycle", func(b *synth.Builder, tk *synth.Task) {
			var ds []*synth.Desc
			for i := range 3 {
				name, _ := abstractName(t, fmt.Sprintf("dc%d", i))
				ds = append(ds, b.UnixSocket(synth.Dgram, synth.Established, name))
			}
			for i, d := range ds {
				b.Connect(d, ds[(i+1)%3])
				b.Share(d, tk, uint32(3+i))
			}
		}, []string{"datagram sockets are connected in a cycle", "task 100 fd 3", "task 100 fd 4", "task 100 fd 5"}},
		{"external peer", func(b *synth.Builder, tk *synth.Task) {
			s := b.UnixSocket(synth.Dgram, synth.Established, nil)
			e := b.UnixSocket(synth.Dgram, synth.Established, []byte{0, 'x'})
			e.Usk().Uflags = proto.Uint32(1)
			b.Connect(s, e)
			b.Share(s, tk, 3)
		}, []string{"task 100 fd 3", "outside the dumped tree", "--ext-unix-sk"}},
		{"connected to an unnamed socket and connected to", func(b *synth.Builder, tk *synth.Task) {
			name, _ := abstractName(t, "un")
			m := b.UnixSocket(synth.Dgram, synth.Established, name)
			u := b.UnixSocket(synth.Dgram, synth.Established, nil)
			o := b.UnixSocket(synth.Dgram, synth.Established, nil)
			b.Connect(m, u)
			b.Connect(o, m)
			b.Share(m, tk, 3)
			b.Share(u, tk, 4)
			b.Share(o, tk, 5)
		}, []string{"task 100 fd 3", "task 100 fd 4", "has no name", "no order restores that"}},
		{"packet on a listener", func(b *synth.Builder, tk *synth.Task) {
			name, _ := abstractName(t, "pl")
			l := b.UnixSocket(synth.Stream, synth.Listening, name)
			b.Packet(l, []byte("no"))
			b.Share(l, tk, 3)
		}, []string{"task 100 fd 3", "listening"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := synth.New()
			tk := b.Task(100)
			b.Stdio(tk)
			tc.build(b, tk)
			dir, _, err := planSynth(t, b, restore.PlanOptions{})
			if err == nil {
				t.Fatal("NewPlan succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("NewPlan error %q does not mention %q", err, w)
				}
			}
			out, cerr := exec.Command(cliBinary(t), "plan", "-D", dir).CombinedOutput()
			if cerr == nil {
				t.Errorf("fdrestore plan exited 0:\n%s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("fdrestore plan output does not mention %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestUnixExternalPeer: with --ext-unix-sk (PlanOptions.ExtUnixSk) a
// socket whose peer is outside the tree connects to the peer's name.
func TestUnixExternalPeer(t *testing.T) {
	needRoot(t)
	name, str := abstractName(t, "ext")
	srv, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(srv)
	if err := unix.Bind(srv, &unix.SockaddrUnix{Name: str}); err != nil {
		t.Fatal(err)
	}
	b := synth.New()
	tk := b.Task(100)
	b.Stdio(tk)
	s := b.UnixSocket(synth.Dgram, synth.Established, nil)
	e := b.UnixSocket(synth.Dgram, synth.Established, name)
	e.Usk().Uflags = proto.Uint32(1)
	b.Connect(s, e)
	b.Share(s, tk, 3)
	dir, p, err := planSynth(t, b, restore.PlanOptions{ExtUnixSk: true})
	if err != nil {
		t.Fatalf("plan with ExtUnixSk: %v", err)
	}
	if out, err := exec.Command(cliBinary(t), "plan", "--ext-unix-sk", "-D", dir).CombinedOutput(); err != nil {
		t.Errorf("fdrestore plan --ext-unix-sk: %v\n%s", err, out)
	}
	if out, err := exec.Command(cliBinary(t), "plan", "-D", dir).CombinedOutput(); err == nil || !strings.Contains(string(out), "--ext-unix-sk") {
		t.Errorf("fdrestore plan without --ext-unix-sk: %v\n%s", err, out)
	}
	res, err := restore.Run(context.Background(), p, restore.Options{End: restore.EndStop, Timeout: 20 * time.Second, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	cleanupPids(t, res.PidMap)
	c := &checker{t: t, pids: res.PidMap}
	c.wantSock(ref{100, 3}, unix.SOCK_DGRAM, "", str, false)
	if err := c.send(ref{100, 3}, "out"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, _, err := unix.Recvfrom(srv, buf, unix.MSG_DONTWAIT)
	if err != nil || string(buf[:n]) != "out" {
		t.Errorf("external server got %q, %v", buf[:n], err)
	}
}

// TestUnixBigQueues: queues larger than the default buffers are refilled
// (buffers raised for the refill) and the recorded buffer sizes are back
// afterwards, through both the socketpair and the component openers.
func TestUnixBigQueues(t *testing.T) {
	b := synth.New()
	tk := b.Task(100)
	b.Stdio(tk)
	chunk := patternBytes(65536)
	var big []byte
	var fds []*synth.Desc
	for _, plain := range []bool{true, false} {
		sa, sb := b.UnixPair(synth.Stream)
		da, db := b.UnixPair(synth.Dgram)
		if !plain {
			sb.Usk().Opts.SoPasscred = proto.Bool(true)
			db.Usk().Opts.SoPasscred = proto.Bool(true)
		}
		big = big[:0]
		for range 48 { // 3 MiB
			b.Packet(sa, chunk)
			big = append(big, chunk...)
		}
		for i := range 300 {
			b.Packet(da, []byte(fmt.Sprintf("%04d:%s", i, strings.Repeat("d", 1000))))
		}
		fds = append(fds, sa, sb, da, db)
	}
	for i, d := range fds {
		b.Share(d, tk, uint32(3+i))
	}
	c := restoreSynth(t, b)
	for k := range 2 {
		base := 3 + 4*k
		sa, sb, da, db := ref{100, base}, ref{100, base + 1}, ref{100, base + 2}, ref{100, base + 3}
		for _, r := range []ref{sa, sb, da, db} {
			for _, o := range []int{unix.SO_SNDBUF, unix.SO_RCVBUF} {
				if got := c.sockOpt(r, o); got != synth.DefaultBuf {
					t.Errorf("%s: buffer option %d is %d after the refill, want the recorded %d", r, o, got, synth.DefaultBuf)
				}
			}
		}
		if n := c.queued(sa); n != len(big) {
			t.Errorf("%s: %d bytes queued, want %d", sa, n, len(big))
		}
		got := bytes.Join(c.recvAll(sa), nil)
		if !bytes.Equal(got, big) {
			t.Errorf("%s: queued data differs (%d bytes, want %d)", sa, len(got), len(big))
		}
		msgs := c.recvAll(da)
		if len(msgs) != 300 {
			t.Errorf("%s: %d datagrams, want 300", da, len(msgs))
		}
		for i, m := range msgs {
			if want := fmt.Sprintf("%04d:%s", i, strings.Repeat("d", 1000)); string(m) != want {
				t.Errorf("%s: datagram %d is %d bytes %.8q, want %.8q", da, i, len(m), m, want)
				break
			}
		}
	}
}

// TestUnixAcrossTasks: a listener, its accepted connection and the client
// held by three tasks (the client by two): the root creates the whole
// component and sends each socket where it belongs.
func TestUnixAcrossTasks(t *testing.T) {
	lname, lstr := abstractName(t, "tasks")
	b := synth.New()
	root := b.Task(100)
	k1 := b.Child(root, 101)
	k2 := b.Child(root, 102)
	for _, tk := range []*synth.Task{root, k1, k2} {
		b.Stdio(tk)
	}
	l := b.UnixSocket(synth.Stream, synth.Listening, lname)
	l.Usk().Backlog = proto.Uint32(3)
	acc := b.UnixSocket(synth.Stream, synth.Established, lname)
	cl := b.UnixSocket(synth.Stream, synth.Established, nil)
	b.Connect(acc, cl)
	b.Connect(cl, acc)
	b.Packet(acc, []byte("hello-acc"))
	b.Share(l, k1, 7)
	b.Share(acc, k2, 4)
	b.Share(cl, root, 5)
	b.Share(cl, k2, 9)
	c := restoreSynth(t, b)
	fds := append(stdio(100), sockFD(100, 5, "cl", 0, false))
	fds = append(fds, ownStdio(101)...)
	fds = append(fds, sockFD(101, 7, "l", 0, false))
	fds = append(fds, ownStdio(102)...)
	fds = append(fds, sockFD(102, 4, "acc", 0, false), sockFD(102, 9, "cl", 0, false))
	c.check(&wantTree{tasks: []wantTask{{100, 0, 100, 100}, {101, 100, 100, 100}, {102, 100, 100, 100}}, fds: fds})
	st := unix.SOCK_STREAM
	c.wantSock(ref{101, 7}, st, lstr, "-", true)
	c.wantSock(ref{102, 4}, st, lstr, "", false)
	c.wantSock(ref{100, 5}, st, "", lstr, false)
	c.wantStream(ref{102, 4}, "hello-acc")
	c.linked(ref{102, 9}, ref{102, 4})
	c.linked(ref{102, 4}, ref{100, 5})
}

// TestUnixPeerInOwnQueue: the only reference to a socketpair end is in
// flight in its peer's queue (a socket sent over its own connection).
func TestUnixPeerInOwnQueue(t *testing.T) {
	b := synth.New()
	tk := b.Task(100)
	b.Stdio(tk)
	p, q := b.UnixPair(synth.Dgram)
	b.Packet(p, []byte("here-is-q"), q)
	b.Packet(q, []byte("for-q"))
	b.Share(p, tk, 3)
	c := restoreSynth(t, b)
	c.check(&wantTree{tasks: []wantTask{{100, 0, 100, 100}}, fds: append(stdio(100), sockFD(100, 3, "p", 0, false))})
	fd := c.getfd(ref{100, 3})
	buf := make([]byte, 64)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	if err != nil || string(buf[:n]) != "here-is-q" {
		t.Fatalf("recvmsg: %q, %v", buf[:n], err)
	}
	fds := parseRights(t, oob[:oobn])
	if len(fds) != 1 {
		t.Fatalf("%d fds, want 1", len(fds))
	}
	defer unix.Close(fds[0])
	if n, _, err := unix.Recvfrom(fds[0], buf, unix.MSG_DONTWAIT); err != nil || string(buf[:n]) != "for-q" {
		t.Errorf("q's queue: %q, %v", buf[:n], err)
	}
	if _, err := unix.Write(fds[0], []byte("q->p")); err != nil {
		t.Fatal(err)
	}
	if got := c.recvWait(ref{100, 3}); got != "q->p" {
		t.Errorf("p got %q from q, want %q", got, "q->p")
	}
}

// TestUnixInFlightOtherTypes: an eventfd and an epoll set exist only in
// flight, in one message; their own planners create them in the task
// that refills the queue.
func TestUnixInFlightOtherTypes(t *testing.T) {
	b := synth.New()
	tk := b.Task(100)
	b.Stdio(tk)
	a, bb := b.UnixPair(synth.Stream)
	efd := b.RawFile(criupb.FdTypes_EVENTFD, func(fe *criupb.FileEntry) {
		fe.Efd = &criupb.EventfdFileEntry{Id: proto.Uint32(fe.GetId()), Flags: proto.Uint32(unix.O_RDWR), Fown: noFown(), Counter: proto.Uint64(42)}
	})
	ep := b.RawFile(criupb.FdTypes_EVENTPOLL, func(fe *criupb.FileEntry) {
		fe.Epfd = &criupb.EventpollFileEntry{Id: proto.Uint32(fe.GetId()), Flags: proto.Uint32(unix.O_RDWR), Fown: noFown()}
	})
	b.Packet(a, []byte("two"), efd, ep)
	b.Share(a, tk, 3)
	b.Share(bb, tk, 4)
	c := restoreSynth(t, b)
	c.check(&wantTree{tasks: []wantTask{{100, 0, 100, 100}}, fds: append(stdio(100), sockFD(100, 3, "a", 0, false), sockFD(100, 4, "b", 0, false))})
	buf := make([]byte, 16)
	oob := make([]byte, unix.CmsgSpace(8))
	n, oobn, _, _, err := unix.Recvmsg(c.getfd(ref{100, 3}), buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	if err != nil || string(buf[:n]) != "two" {
		t.Fatalf("recvmsg: %q, %v", buf[:n], err)
	}
	fds := parseRights(t, oob[:oobn])
	for _, f := range fds {
		defer unix.Close(f)
	}
	if len(fds) != 2 {
		t.Fatalf("%d fds in flight, want 2", len(fds))
	}
	var v [8]byte
	if n, err := unix.Read(fds[0], v[:]); n != 8 || err != nil || v[0] != 42 {
		t.Errorf("eventfd in flight: read %d %v (%v), want counter 42", n, v, err)
	}
	if target, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fds[1])); target != "anon_inode:[eventpoll]" {
		t.Errorf("second fd in flight is %q, want an epoll", target)
	}
}
