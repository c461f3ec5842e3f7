package restore_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/internal/fdcheck"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"github.com/fdrestore/fdrestore/restore"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// netns is a fresh network namespace with lo up, made for one test.
type netns struct {
	t    testing.TB
	fd   int // the namespace
	orig int // the test's own
}

// newNetns creates a network namespace with lo up, removed with its last
// user when the test ends.
func newNetns(t testing.TB) *netns {
	t.Helper()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ns := &netns{t: t, fd: -1, orig: orig}
	t.Cleanup(func() {
		if ns.fd >= 0 {
			unix.Close(ns.fd)
		}
		unix.Close(orig)
	})
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("unshare(CLONE_NEWNET): %v", err)
	}
	lerr := loUp()
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if serr := unix.Setns(orig, unix.CLONE_NEWNET); serr != nil {
		// The thread stays locked and dies with the goroutine.
		t.Fatalf("setns back: %v", serr)
	}
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatal(err)
	}
	ns.fd = fd
	if lerr != nil {
		t.Fatal(lerr)
	}
	return ns
}

func loUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	ifr.SetUint16(unix.IFF_UP | unix.IFF_LOOPBACK | unix.IFF_RUNNING)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// do runs fn on a thread inside the namespace: sockets it creates belong
// to the namespace, and processes it starts are born in it.
func (ns *netns) do(fn func()) {
	ns.t.Helper()
	runtime.LockOSThread()
	if err := unix.Setns(ns.fd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		ns.t.Fatalf("setns: %v", err)
	}
	defer func() {
		if err := unix.Setns(ns.orig, unix.CLONE_NEWNET); err != nil {
			panic("setns back to the test's network namespace: " + err.Error())
		}
		runtime.UnlockOSThread()
	}()
	fn()
}

// socket creates a socket in the namespace, closed at clean-up.
func (ns *netns) socket(family, typ int) int {
	ns.t.Helper()
	fd := -1
	var err error
	ns.do(func() { fd, err = unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0) })
	if err != nil {
		ns.t.Fatal(err)
	}
	ns.t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func tcpPlan(t testing.TB, dir string, opts restore.PlanOptions) *restore.Plan {
	t.Helper()
	set, err := images.Load(dir)
	if err != nil {
		t.Fatalf("load %s: %v", dir, err)
	}
	p, err := restore.NewPlan(set, opts)
	if err != nil {
		t.Fatalf("plan %s: %v", dir, err)
	}
	return p
}

// restoreIn restores dir in ns, through the API or the CLI, and returns
// the pid map.
func restoreIn(t *testing.T, ns *netns, how, dir string, extra ...string) map[uint32]int {
	t.Helper()
	switch how {
	case "api":
		p := tcpPlan(t, dir, restore.PlanOptions{TCPEstablished: true})
		if err := p.Err(); err != nil {
			t.Fatal(err)
		}
		var res *restore.Result
		var err error
		ns.do(func() {
			res, err = restore.Run(context.Background(), p, restore.Options{End: restore.EndStop, Timeout: 30 * time.Second, Log: testLogger(t)})
		})
		if err != nil {
			t.Fatalf("restore %s: %v", dir, err)
		}
		cleanupPids(t, res.PidMap)
		return res.PidMap
	}
	bin := cliBinary(t)
	pm := filepath.Join(t.TempDir(), "pidmap.json")
	args := append([]string{"restore", "-D", dir, "--leave-stopped", "-d", "--pid-map", pm, "--tcp-established"}, extra...)
	cmd := exec.Command(bin, args...)
	var out []byte
	var err error
	ns.do(func() { out, err = cmd.CombinedOutput() })
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
	}
	if err != nil {
		t.Fatalf("fdrestore %v: %v\n%s", args, err, out)
	}
	return m
}

func sockname(t testing.TB, fd int, peer bool) string {
	t.Helper()
	var sa unix.Sockaddr
	var err error
	if peer {
		sa, err = unix.Getpeername(fd)
	} else {
		sa, err = unix.Getsockname(fd)
	}
	if err != nil {
		return "error: " + err.Error()
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return strconv.Itoa(int(a.Addr[0])) + "." + strconv.Itoa(int(a.Addr[1])) + "." + strconv.Itoa(int(a.Addr[2])) + "." + strconv.Itoa(int(a.Addr[3])) + ":" + strconv.Itoa(a.Port)
	case *unix.SockaddrInet6:
		return "[" + strings.TrimSuffix(ip6(a.Addr[:]), "") + "]:" + strconv.Itoa(a.Port)
	}
	return "?"
}

func ip6(b []byte) string {
	var parts []string
	for i := 0; i < 16; i += 2 {
		parts = append(parts, strconv.FormatUint(uint64(b[i])<<8|uint64(b[i+1]), 16))
	}
	return strings.Join(parts, ":")
}

// recvWithin reads what arrives on fd within d, up to n bytes.
func recvWithin(t testing.TB, fd, n int, d time.Duration) string {
	t.Helper()
	var got []byte
	deadline := time.Now().Add(d)
	buf := make([]byte, n)
	for len(got) < n {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, int(left/time.Millisecond)+1); err != nil && err != unix.EINTR {
			t.Fatalf("poll: %v", err)
		}
		k, _, err := unix.Recvfrom(fd, buf[:n-len(got)], unix.MSG_DONTWAIT)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		if k == 0 {
			break
		}
		got = append(got, buf[:k]...)
	}
	return string(got)
}

func sockInt(t testing.TB, fd, level, opt int) int {
	t.Helper()
	v, err := unix.GetsockoptInt(fd, level, opt)
	if err != nil {
		t.Fatalf("getsockopt(%d, %d): %v", level, opt, err)
	}
	return v
}

// TestTCPFixture restores the CRIU fixture tcp in a fresh network
// namespace and checks every fact of its EXPECTED.md.
func TestTCPFixture(t *testing.T) {
	needRoot(t)
	dir := fixtureDir(t, "tcp")
	for _, how := range []string{"api", "cli"} {
		t.Run(how, func(t *testing.T) {
			ns := newNetns(t)
			pids := restoreIn(t, ns, how, dir)
			c := &checker{t: t, pids: pids}
			fds := append(stdio(2),
				wantFD{ref{2, 3}, rdwr, false, 0, "L", "L", "socket:[*"},
				wantFD{ref{2, 4}, rdwr, false, 0, "A", "A", "socket:[*"})
			fds = append(fds, stdio(3)...)
			fds = append(fds, wantFD{ref{3, 5}, rdwr, false, 0, "C", "C", "socket:[*"})
			c.check(&wantTree{tasks: []wantTask{{2, 0, 2, 2}, {3, 2, 2, 2}}, fds: fds})

			l, a, cl := c.getfd(ref{2, 3}), c.getfd(ref{2, 4}), c.getfd(ref{3, 5})
			for _, x := range []struct {
				what string
				fd   int
				peer bool
				want string
			}{
				{"pid 2 fd 3 local", l, false, "127.0.0.1:7000"},
				{"pid 2 fd 4 local", a, false, "127.0.0.1:7000"},
				{"pid 2 fd 4 peer", a, true, "127.0.0.1:40001"},
				{"pid 3 fd 5 local", cl, false, "127.0.0.1:40001"},
				{"pid 3 fd 5 peer", cl, true, "127.0.0.1:7000"},
			} {
				if got := sockname(t, x.fd, x.peer); got != x.want {
					t.Errorf("%s: %s, want %s", x.what, got, x.want)
				}
			}
			for _, x := range []struct {
				what            string
				fd              int
				accept, reuse   int
				state, repairOn int
			}{
				{"pid 2 fd 3", l, 1, 1, 10, 0},
				{"pid 2 fd 4", a, 0, 1, 1, 0},
				{"pid 3 fd 5", cl, 0, 0, 1, 0},
			} {
				if v := sockInt(t, x.fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); v != x.accept {
					t.Errorf("%s: SO_ACCEPTCONN %d, want %d", x.what, v, x.accept)
				}
				if v := sockInt(t, x.fd, unix.SOL_SOCKET, unix.SO_REUSEADDR); v != x.reuse {
					t.Errorf("%s: SO_REUSEADDR %d, want %d", x.what, v, x.reuse)
				}
				if v := sockInt(t, x.fd, unix.SOL_TCP, unix.TCP_REPAIR); v != x.repairOn {
					t.Errorf("%s: TCP_REPAIR %d, want %d (repair off after the restore)", x.what, v, x.repairOn)
				}
				info, err := unix.GetsockoptTCPInfo(x.fd, unix.SOL_TCP, unix.TCP_INFO)
				if err != nil || int(info.State) != x.state {
					t.Errorf("%s: TCP state %d (%v), want %d", x.what, info.State, err, x.state)
				}
			}
			if v := sockInt(t, l, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); v != 1 {
				t.Errorf("listener not listening")
			}
			// The recorded unread bytes come first, then new data both
			// ways.
			if got := recvWithin(t, cl, 11, 2*time.Second); got != "hello-clnt\n" {
				t.Errorf("pid 3 fd 5: recv %q, want %q", got, "hello-clnt\n")
			}
			if got := recvWithin(t, a, 6, 2*time.Second); got != "to-srv" {
				t.Errorf("pid 2 fd 4: recv %q, want %q", got, "to-srv")
			}
			c.write(ref{2, 4}, "after-restore s->c")
			if got := recvWithin(t, cl, 18, 5*time.Second); got != "after-restore s->c" {
				t.Errorf("server -> client after restore: got %q", got)
			}
			c.write(ref{3, 5}, "after-restore c->s")
			if got := recvWithin(t, a, 18, 5*time.Second); got != "after-restore c->s" {
				t.Errorf("client -> server after restore: got %q", got)
			}
			// The listener is live: a new connection completes.
			s := ns.socket(unix.AF_INET, unix.SOCK_STREAM)
			if err := unix.Connect(s, &unix.SockaddrInet4{Port: 7000, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
				t.Errorf("connect to 127.0.0.1:7000: %v", err)
			}
		})
	}
}

// TestTCPFixtureRefused: without --tcp-established the plan refuses the
// connections and names them; with --tcp-close it restores them closed.
func TestTCPFixtureRefused(t *testing.T) {
	dir := fixtureDir(t, "tcp")
	p := tcpPlan(t, dir, restore.PlanOptions{})
	err := p.Err()
	if !errors.Is(err, restore.ErrUnsupported) {
		t.Fatalf("plan without --tcp-established: %v, want ErrUnsupported", err)
	}
	for _, want := range []string{"task 2 fd 4", "task 3 fd 5", "127.0.0.1:7000 -> 127.0.0.1:40001", "--tcp-established"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("plan error does not name %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "task 2 fd 3") {
		t.Errorf("plan error names the listener:\n%v", err)
	}
	// With --tcp-established: restorable, and the stage graph counts the
	// sockets on 127.0.0.1:7000 (listener and accepted connection) before
	// their reuse flags come back.
	p = tcpPlan(t, dir, restore.PlanOptions{TCPEstablished: true})
	if err := p.Err(); err != nil {
		t.Fatalf("plan with --tcp-established: %v", err)
	}
	found := false
	for n := 0; n < p.Graph.Len(); n++ {
		info := p.Graph.Info(files.NodeID(n))
		if strings.Contains(info.Name, "inet address tcp 127.0.0.1:7000") {
			found = true
			if deps := p.Graph.Deps(files.NodeID(n)); len(deps) != 2 {
				t.Errorf("%s: %d dependencies, want 2 (listener and accepted socket)", info, len(deps))
			}
		}
		if strings.Contains(info.Name, "40001") && strings.Contains(info.Name, "inet address") {
			t.Errorf("a node for an address with one socket: %s", info)
		}
	}
	if !found {
		t.Error("no stage-graph node for the sockets of 127.0.0.1:7000")
	}
	p = tcpPlan(t, dir, restore.PlanOptions{TCPClose: true})
	if err := p.Err(); err != nil {
		t.Fatalf("plan with --tcp-close: %v", err)
	}
	if len(p.Warnings) < 2 {
		t.Errorf("--tcp-close: warnings %q, want one per connection", p.Warnings)
	}
}

// copyFixture copies a fixture's images to a temporary directory.
func copyFixture(t *testing.T, name string) string {
	t.Helper()
	src := fixtureDir(t, name)
	dst := t.TempDir()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// netSockets lists the TCP sockets of the namespace (/proc/net/tcp and
// tcp6 as seen from inside it), as "local remote state" lines.
func (ns *netns) netSockets() []string {
	var out []string
	ns.do(func() {
		for _, f := range []string{"tcp", "tcp6"} {
			b, err := os.ReadFile("/proc/thread-self/net/" + f)
			if err != nil {
				ns.t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			for _, l := range lines[1:] {
				if fs := strings.Fields(l); len(fs) > 3 {
					out = append(out, f+" "+fs[1]+" "+fs[2]+" st "+fs[3])
				}
			}
		}
	})
	return out
}

// TestTCPFailedRestoreLeavesNoPort: restores that fail half-way leave no
// socket behind (none in repair mode, no port held, nothing in TIME_WAIT)
// and no process. Case "bind": the listener's port is taken. Case
// "window": the connection of task 2 fails at its last repair step (an
// impossible window in its tcp-stream image), when the listener and the
// repaired socket on port 7000 already exist.
func TestTCPFailedRestoreLeavesNoPort(t *testing.T) {
	needRoot(t)
	for _, tc := range []string{"bind", "window"} {
		t.Run(tc, func(t *testing.T) {
			dir := fixtureDir(t, "tcp")
			ns := newNetns(t)
			want := "address already in use"
			switch tc {
			case "bind":
				blocker := ns.socket(unix.AF_INET, unix.SOCK_STREAM)
				if err := unix.Bind(blocker, &unix.SockaddrInet4{Port: 7000, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
					t.Fatal(err)
				}
				if err := unix.Listen(blocker, 1); err != nil {
					t.Fatal(err)
				}
				defer unix.Close(blocker)
			case "window":
				dir = copyFixture(t, "tcp")
				p := filepath.Join(dir, "tcp-stream-13f102.img")
				k, ents, err := images.ReadFile(p, nil)
				if err != nil {
					t.Fatal(err)
				}
				ts := ents[0].Msg.(*criupb.TcpStreamEntry)
				ts.RcvWup = proto.Uint32(ts.GetInqSeq() + 1<<20) // after rcv_nxt: EINVAL
				if err := images.WriteFile(p, k, ents); err != nil {
					t.Fatal(err)
				}
				want = "TCP_REPAIR_WINDOW"
			}
			p := tcpPlan(t, dir, restore.PlanOptions{TCPEstablished: true})
			var err error
			ns.do(func() {
				_, err = restore.Run(context.Background(), p, restore.Options{End: restore.EndStop, Timeout: 20 * time.Second, Log: testLogger(t)})
			})
			if err == nil {
				t.Fatal("restore succeeded")
			}
			if !strings.Contains(err.Error(), "127.0.0.1:7000") || !strings.Contains(err.Error(), want) {
				t.Errorf("error does not name the socket and %q: %v", want, err)
			}
			t.Logf("restore failed as expected: %v", err)
			if left := restoreProcs(nil); len(left) > 0 {
				t.Errorf("processes left: %v", left)
			}
			var socks []string
			sawBlocker := false
			for _, s := range ns.netSockets() {
				if tc == "bind" && strings.Contains(s, ":1B58 00000000:0000 st 0A") {
					sawBlocker = true // 127.0.0.1:7000 LISTEN
					continue
				}
				socks = append(socks, s)
			}
			if tc == "bind" && !sawBlocker {
				t.Errorf("the namespace's socket list does not show the blocking listener: %v", ns.netSockets())
			}
			if len(socks) > 0 {
				t.Errorf("sockets left in the namespace: %v", socks)
			}
			for _, port := range []int{7000, 40001} {
				if tc == "bind" && port == 7000 {
					continue
				}
				s := ns.socket(unix.AF_INET, unix.SOCK_STREAM)
				if err := unix.Bind(s, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
					t.Errorf("port %d still held after the failed restore: %v", port, err)
				}
			}
		})
	}
}

// TestTCPClose restores the fixture with --tcp-close: the connections
// come back as sockets that are not connected, the listener as it was.
func TestTCPClose(t *testing.T) {
	needRoot(t)
	dir := fixtureDir(t, "tcp")
	ns := newNetns(t)
	p := tcpPlan(t, dir, restore.PlanOptions{TCPClose: true})
	if err := p.Err(); err != nil {
		t.Fatal(err)
	}
	var res *restore.Result
	var err error
	ns.do(func() {
		res, err = restore.Run(context.Background(), p, restore.Options{End: restore.EndStop, Timeout: 20 * time.Second, Log: testLogger(t)})
	})
	if err != nil {
		t.Fatal(err)
	}
	cleanupPids(t, res.PidMap)
	c := &checker{t: t, pids: res.PidMap}
	for _, r := range []ref{{2, 4}, {3, 5}} {
		fd := c.getfd(r)
		if _, err := unix.Getpeername(fd); err != unix.ENOTCONN {
			t.Errorf("%s: getpeername: %v, want ENOTCONN (closed)", r, err)
		}
	}
	if got := sockname(t, c.getfd(ref{2, 3}), false); got != "127.0.0.1:7000" {
		t.Errorf("listener at %s", got)
	}
	s := ns.socket(unix.AF_INET, unix.SOCK_STREAM)
	if err := unix.Connect(s, &unix.SockaddrInet4{Port: 7000, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Errorf("connect to the listener: %v", err)
	}
}

// TestTCPUnackedData restores the fixture with the client's send queue
// holding 5 bytes the server never got: 3 sent and not acknowledged, 2
// never sent (the tcp-stream image is edited so). The server receives
// the recorded unread bytes, then all 5, in order: the unacknowledged
// part is retransmitted by the restored socket, the never-sent part is
// written once repair is off.
func TestTCPUnackedData(t *testing.T) {
	needRoot(t)
	dir := copyFixture(t, "tcp")
	p := filepath.Join(dir, "tcp-stream-13f103.img")
	k, ents, err := images.ReadFile(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	ts := ents[0].Msg.(*criupb.TcpStreamEntry)
	inq := ents[0].Trailer[:ts.GetInqLen()]
	const extra = "XYZab"
	ts.OutqLen = proto.Uint32(uint32(len(extra)))
	ts.OutqSeq = proto.Uint32(ts.GetOutqSeq() + uint32(len(extra)))
	ts.UnsqLen = proto.Uint32(2)
	ents[0].Trailer = append(append([]byte{}, inq...), extra...)
	if err := images.WriteFile(p, k, ents); err != nil {
		t.Fatal(err)
	}
	ns := newNetns(t)
	pids := restoreIn(t, ns, "api", dir)
	c := &checker{t: t, pids: pids}
	a, cl := c.getfd(ref{2, 4}), c.getfd(ref{3, 5})
	start := time.Now()
	if got := recvWithin(t, a, 6+len(extra), 10*time.Second); got != "to-srv"+extra {
		t.Errorf("server: recv %q, want %q", got, "to-srv"+extra)
	}
	t.Logf("server had all bytes after %v", time.Since(start))
	if got := recvWithin(t, cl, 11, 2*time.Second); got != "hello-clnt\n" {
		t.Errorf("client: recv %q", got)
	}
	c.write(ref{2, 4}, "more")
	if got := recvWithin(t, cl, 4, 5*time.Second); got != "more" {
		t.Errorf("client: recv %q after the retransmission, want %q", got, "more")
	}
}

// TestTCPAbortSilences: an aborted restore puts the tree's TCP sockets
// back in repair mode before killing it (silenceTCP), so that connections
// already out of repair mode vanish without a FIN or reset and leave no
// TIME_WAIT behind. Without it, killing the same restored tree leaves
// connections closing in the namespace.
func TestTCPAbortSilences(t *testing.T) {
	needRoot(t)
	dir := fixtureDir(t, "tcp")
	for _, silence := range []bool{false, true} {
		ns := newNetns(t)
		pids := restoreIn(t, ns, "api", dir)
		// Empty queues: a kill then closes with FINs, not resets.
		var dups []int
		for _, x := range []struct {
			task uint32
			fd   int
			n    int
		}{{3, 5, 11}, {2, 4, 6}} {
			fd, err := fdcheck.GetFD(pids[x.task], x.fd)
			if err != nil {
				t.Fatal(err)
			}
			dups = append(dups, fd)
			recvWithin(t, fd, x.n, 2*time.Second)
		}
		var list []int
		for _, p := range pids {
			list = append(list, p)
		}
		if silence {
			restore.SilenceTCP(list)
		}
		// The test's own dups go first, so that the kill drops the last
		// references.
		for _, fd := range dups {
			unix.Close(fd)
		}
		if err := fdcheck.KillAndReap(list, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		var conns []string
		for _, s := range ns.netSockets() {
			if !strings.HasSuffix(s, "st 0A") { // not a listener
				conns = append(conns, s)
			}
		}
		switch {
		case silence && len(conns) > 0:
			t.Errorf("connections left after a silenced kill: %v", conns)
		case !silence && len(conns) == 0:
			t.Errorf("a plain kill left no closing connection: the check sees nothing")
		}
		t.Logf("silence %v: %v", silence, conns)
	}
}

// TestTCPPlanBadEntries: impossible inet entries and streams are listed as
// unsupported, naming the files.img entry, the field and the problem.
func TestTCPPlanBadEntries(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, dir string)
		want string
	}{
		{"src_addr", func(t *testing.T, dir string) {
			editInet(t, dir, 1306882, func(ie *criupb.InetSkEntry) { ie.SrcAddr = []uint32{1, 2, 3} })
		}, "files.img entry 6 (file id 7, inet socket ino 1306882): src_addr: address of 3 words for family 2"},
		{"proto", func(t *testing.T, dir string) {
			editInet(t, dir, 1306881, func(ie *criupb.InetSkEntry) { ie.Proto = proto.Uint32(132) })
		}, "files.img entry 5 (file id 6, inet socket ino 1306881): protocol 132 type 1"},
		{"state", func(t *testing.T, dir string) {
			editInet(t, dir, 1306882, func(ie *criupb.InetSkEntry) { ie.State = proto.Uint32(3) })
		}, "inet socket ino 1306882): TCP state SYN_RECV"},
		{"stream", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "tcp-stream-13f103.img")); err != nil {
				t.Fatal(err)
			}
		}, "inet socket ino 1306883): tcp 127.0.0.1:40001 -> 127.0.0.1:7000 ESTABLISHED: tcp-stream-13f103.img is missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyFixture(t, "tcp")
			tc.edit(t, dir)
			err := tcpPlan(t, dir, restore.PlanOptions{TCPEstablished: true}).Err()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("plan: %v\nwant it to contain %q", err, tc.want)
			}
		})
	}
}

// editInet rewrites the inet_sk_entry of socket ino in files.img.
func editInet(t *testing.T, dir string, ino uint32, fn func(*criupb.InetSkEntry)) {
	t.Helper()
	p := filepath.Join(dir, "files.img")
	k, ents, err := images.ReadFile(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range ents {
		if ie := e.Msg.(*criupb.FileEntry).GetIsk(); ie != nil && ie.GetIno() == ino {
			fn(ie)
			found = true
		}
	}
	if !found {
		t.Fatalf("no inet socket %d in files.img", ino)
	}
	if err := images.WriteFile(p, k, ents); err != nil {
		t.Fatal(err)
	}
}

// editStream rewrites the tcp-stream image of socket ino.
func editStream(t *testing.T, dir string, ino uint32, fn func(*criupb.TcpStreamEntry)) {
	t.Helper()
	p := filepath.Join(dir, fmt.Sprintf("tcp-stream-%x.img", ino))
	k, ents, err := images.ReadFile(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	fn(ents[0].Msg.(*criupb.TcpStreamEntry))
	if err := images.WriteFile(p, k, ents); err != nil {
		t.Fatal(err)
	}
}

// TestTCPHalfClosedStates restores the fixture's connection edited into
// half-closed states whose FINs were sent but not acknowledged, which
// loopback cannot hold still for a dump: FIN_WAIT1 (the client's FIN
// never arrived), LAST_ACK (the server's FIN acknowledged, FIN_WAIT2; the
// client's own FIN not), CLOSING (both FINs crossed, neither
// acknowledged). Right after the restore each end is in its state (or
// already past it, once the FIN exchange resumed); then each reads the
// recorded bytes and EOF where a FIN is due, with no reset.
func TestTCPHalfClosedStates(t *testing.T) {
	needRoot(t)
	const srv, cli = 1306882, 1306883
	fin := func(ts *criupb.TcpStreamEntry, sent, received bool) {
		if sent {
			ts.OutqSeq = proto.Uint32(ts.GetOutqSeq() + 1)
		}
		if received {
			ts.InqSeq = proto.Uint32(ts.GetInqSeq() + 1)
			ts.RcvWup = proto.Uint32(ts.GetRcvWup() + 1)
		}
	}
	for _, tc := range []struct {
		name               string
		srvState, cliState uint32
		srvFin, cliFin     [2]bool // sent, received
		srvOK, cliOK       []uint8 // states accepted right after the restore
		srvEOF, cliEOF     bool
	}{
		{"FIN_WAIT1", 1, 4, [2]bool{false, false}, [2]bool{true, false}, []uint8{1, 8}, []uint8{4, 5}, true, false},
		{"LAST_ACK", 5, 9, [2]bool{true, false}, [2]bool{true, true}, []uint8{5, 7}, []uint8{9, 7}, true, true},
		{"CLOSING", 11, 11, [2]bool{true, true}, [2]bool{true, true}, []uint8{11, 7}, []uint8{11, 7}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyFixture(t, "tcp")
			editInet(t, dir, srv, func(ie *criupb.InetSkEntry) { ie.State = proto.Uint32(tc.srvState) })
			editInet(t, dir, cli, func(ie *criupb.InetSkEntry) { ie.State = proto.Uint32(tc.cliState) })
			editStream(t, dir, srv, func(ts *criupb.TcpStreamEntry) { fin(ts, tc.srvFin[0], tc.srvFin[1]) })
			editStream(t, dir, cli, func(ts *criupb.TcpStreamEntry) { fin(ts, tc.cliFin[0], tc.cliFin[1]) })
			ns := newNetns(t)
			pids := restoreIn(t, ns, "api", dir)
			c := &checker{t: t, pids: pids}
			a, cl := c.getfd(ref{2, 4}), c.getfd(ref{3, 5})
			for _, x := range []struct {
				what string
				fd   int
				ok   []uint8
			}{{"server", a, tc.srvOK}, {"client", cl, tc.cliOK}} {
				info, err := unix.GetsockoptTCPInfo(x.fd, unix.SOL_TCP, unix.TCP_INFO)
				if err != nil || !slices.Contains(x.ok, info.State) {
					t.Errorf("%s: state %d (%v) right after the restore, want one of %v", x.what, info.State, err, x.ok)
				}
			}
			for _, x := range []struct {
				what string
				fd   int
				data string
				eof  bool
			}{{"server", a, "to-srv", tc.srvEOF}, {"client", cl, "hello-clnt\n", tc.cliEOF}} {
				n := len(x.data)
				if x.eof {
					n++ // read on: EOF ends it
				}
				if got := recvWithin(t, x.fd, n, 5*time.Second); got != x.data {
					t.Errorf("%s: read %q, want %q", x.what, got, x.data)
				}
				if x.eof {
					if k, _, err := unix.Recvfrom(x.fd, make([]byte, 1), unix.MSG_DONTWAIT); k != 0 || err != nil {
						t.Errorf("%s: after the data: %d, %v, want EOF", x.what, k, err)
					}
				}
			}
			if !tc.cliEOF {
				// FIN_WAIT1: the server can still send; the client reads it.
				c.write(ref{2, 4}, "late")
				if got := recvWithin(t, cl, 4, 5*time.Second); got != "late" {
					t.Errorf("client: %q after the server wrote, want %q", got, "late")
				}
			}
		})
	}
}
