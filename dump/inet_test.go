package dump

import (
	"context"
	"errors"
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

// startTCPScenario starts the zdtm scenario tcp-pair (test/scenario) in a
// network namespace of its own, as a session leader, and waits until it
// is ready. The dumper stays in the test's namespace, so sock_diag is
// read from the tree's.
func startTCPScenario(t *testing.T) int {
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
	pid, err := syscall.ForkExec(bin, []string{bin, "tcp-pair"}, &syscall.ProcAttr{Dir: dir, Env: env,
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
// left running), then dumped; the images hold the sockets, both streams
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
			want[ie.GetIno()] = "to-srv"
		case ie.GetSrcPort() == 40100:
			want[ie.GetIno()] = "hello-clnt\n"
		default:
			t.Errorf("unexpected socket %v", ie)
		}
	}
	if len(set.TCPStreams) != 2 {
		t.Fatalf("%d tcp-stream images, want 2", len(set.TCPStreams))
	}
	for ino, st := range set.TCPStreams {
		if string(st.InQ) != want[ino] || len(st.OutQ) != 0 {
			t.Errorf("stream of socket %d: in %q out %q, want in %q out empty", ino, st.InQ, st.OutQ, want[ino])
		}
		if st.Entry.GetOptMask()&7 != 7 || st.Entry.GetMssClamp() == 0 {
			t.Errorf("stream of socket %d: options %v", ino, st.Entry)
		}
	}
}
