package dump

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
)

// takeFD duplicates fd of pid into the test; closed at clean-up.
func takeFD(t *testing.T, pid, fd int) int {
	t.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	local, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		t.Fatalf("pid %d fd %d: %v", pid, fd, err)
	}
	t.Cleanup(func() { unix.Close(local) })
	return local
}

// startTCPScenario starts the zdtm scenario tcp-pair (test/scenario) in a
// network namespace of its own, as a session leader, and waits until it
// is ready. The dumper stays in the test's namespace, so sock_diag is
// read from the tree's.
func startTCPScenario(t *testing.T) int {
	t.Helper()
	return startScenarioNetns(t, "tcp-pair")
}

// startScenarioNetns starts zdtm scenario name as startTCPScenario does.
func startScenarioNetns(t *testing.T, name string) int {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (network namespaces, TCP repair)")
		}
		t.Skip("needs root (network namespaces, TCP repair)")
	}
	bin := filepath.Join(t.TempDir(), "scenario")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/fdrestore/fdrestore/test/scenario").CombinedOutput(); err != nil {
		t.Fatalf("build test/scenario: %v\n%s", err, out)
	}
	dir := t.TempDir()
	devnull, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(devnull)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	env := []string{"PATH=/usr/bin:/bin", "ZDTM_DIR=" + dir, "ZDTM_RESULT=" + filepath.Join(dir, "result"),
		"ZDTM_READY_FD=3", "GODEBUG=containermaxprocs=0,updatemaxprocs=0"}
	pid, err := syscall.ForkExec(bin, []string{bin, name}, &syscall.ProcAttr{Dir: dir, Env: env,
		Files: []uintptr{uintptr(devnull), uintptr(devnull), uintptr(devnull), uintptr(p[1])},
		Sys:   &syscall.SysProcAttr{Setsid: true, Cloneflags: unix.CLONE_NEWNET}})
	unix.Close(p[1])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-pid, syscall.SIGKILL)
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, 0, nil)
	})
	pfd := []unix.PollFd{{Fd: int32(p[0]), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 30000); n != 1 || err != nil {
		t.Fatalf("scenario not ready: poll %d, %v", n, err)
	}
	buf := make([]byte, 256)
	n, _ := unix.Read(p[0], buf)
	if got := strings.TrimSpace(string(buf[:n])); got != "ready" {
		t.Fatalf("scenario: %q", got)
	}
	return pid
}

// TestDumpTCP dumps a tree with a listener and an established connection
// whose two ends are in different tasks, from outside the tree's network
// namespace: refused without TCPEstablished (naming both ends, the tree
// left running), dumped with --leave-running (the connection goes on),
// then dumped; the images hold the sockets, both streams
// with the unread bytes, and decode with crit.
func TestDumpTCP(t *testing.T) {
	pid := startTCPScenario(t)
	img := filepath.Join(t.TempDir(), "img")
	_, err := Dump(context.Background(), pid, img, Options{Timeout: 20 * time.Second})
	var ue *UnsupportedError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "fd 4: established TCP connection") || !strings.Contains(err.Error(), "fd 5: established TCP connection") {
		t.Fatalf("dump without TCPEstablished: %v, want both connection ends refused", err)
	}
	if strings.Contains(err.Error(), "fd 3:") {
		t.Errorf("the listener is refused: %v", err)
	}
	if err := unix.Kill(pid, 0); err != nil {
		t.Fatalf("tree gone after a refused dump: %v", err)
	}
	// --leave-running: the connection goes on, repair is off again and
	// SO_REUSEADDR (which repair-off resets) is as it was.
	if _, err := Dump(context.Background(), pid, filepath.Join(t.TempDir(), "lr"), Options{Timeout: 20 * time.Second, TCPEstablished: true, LeaveRunning: true}); err != nil {
		t.Fatalf("dump --leave-running: %v", err)
	}
	child := 0
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)); err == nil {
		fmt.Sscan(string(b), &child)
	}
	srv, cli := takeFD(t, pid, 4), takeFD(t, child, 5)
	for _, c := range []struct {
		fd, reuse int
		send      string
		peer      int
		inq       int
	}{{srv, 1, "x", cli, len("hello-clnt\nx")}, {cli, 0, "y", srv, len("to-srvy")}} {
		if v, err := unix.GetsockoptInt(c.fd, unix.SOL_TCP, unix.TCP_REPAIR); err != nil || v != 0 {
			t.Errorf("TCP_REPAIR %d (%v) after dump --leave-running", v, err)
		}
		if v, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_REUSEADDR); err != nil || v != c.reuse {
			t.Errorf("SO_REUSEADDR %d (%v) after dump --leave-running, want %d", v, err, c.reuse)
		}
		if _, err := unix.Write(c.fd, []byte(c.send)); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			n, err := unix.IoctlGetInt(c.peer, unix.SIOCINQ)
			if err == nil && n == c.inq {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after dump --leave-running, %q sent: peer has %d bytes queued (%v), want %d", c.send, n, err, c.inq)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if _, err := Dump(context.Background(), pid, img, Options{Timeout: 20 * time.Second, TCPEstablished: true}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	critCheck(t, img)
	set, err := images.Load(img)
	if err != nil {
		t.Fatal(err)
	}
	var inet []*criupb.InetSkEntry
	for _, f := range set.FileOrder {
		if f.Type == criupb.FdTypes_INETSK {
			inet = append(inet, f.Entry.GetIsk())
		}
	}
	if len(inet) != 3 {
		t.Fatalf("%d inet sockets in files.img, want 3", len(inet))
	}
	want := map[uint32]string{}
	for _, ie := range inet {
		switch {
		case ie.GetState() == 10:
			if ie.GetSrcPort() != 7100 || ie.GetBacklog() != 8 || !ie.GetOpts().GetReuseaddr() {
				t.Errorf("listener: %v", ie)
			}
		case ie.GetSrcPort() == 7100:
			want[ie.GetIno()] = "to-srvy"
		case ie.GetSrcPort() == 40100:
			want[ie.GetIno()] = "hello-clnt\nx"
		default:
			t.Errorf("unexpected socket %v", ie)
		}
	}
	if len(set.TCPStreams) != 2 {
		t.Fatalf("%d tcp-stream images, want 2", len(set.TCPStreams))
	}
	for ino, st := range set.TCPStreams {
		// The send queue may still hold the last byte sent: the peer has
		// it but may not have acknowledged it yet (delayed ACK).
		out := string(st.OutQ)
		okOut := out == "" || (want[ino] == "to-srvy" && out == "x") || (want[ino] == "hello-clnt\nx" && out == "y")
		if string(st.InQ) != want[ino] || !okOut {
			t.Errorf("stream of socket %d: in %q out %q, want in %q", ino, st.InQ, st.OutQ, want[ino])
		}
		if st.Entry.GetOptMask()&7 != 7 || st.Entry.GetMssClamp() == 0 {
			t.Errorf("stream of socket %d: options %v", ino, st.Entry)
		}
	}
}
