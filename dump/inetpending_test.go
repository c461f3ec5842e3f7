package dump

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
)

// acceptQueueLen is the accept queue length of listener fd (for a
// listener tcpi_unacked).
func acceptQueueLen(t *testing.T, fd int) uint32 {
	t.Helper()
	info, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO)
	if err != nil {
		t.Fatal(err)
	}
	return info.Unacked
}

// TestDumpTCPPending dumps the scenario tcp-pending: a listener with two
// accepted connections and two not yet accepted whose clients are in the
// tree. With --leave-running the dump is refused and the queue untouched;
// the dump that kills the tree records each pending client with its
// listener, its place in the queue and what it had sent, without a
// tcp-stream image, and the images decode with crit.
func TestDumpTCPPending(t *testing.T) {
	pid := startScenarioNetns(t, "tcp-pending")
	l := takeFD(t, pid, 3)
	if n := acceptQueueLen(t, l); n != 2 {
		t.Fatalf("scenario: accept queue of %d, want 2", n)
	}
	_, err := Dump(context.Background(), pid, t.TempDir(), Options{Timeout: 20 * time.Second, TCPEstablished: true, LeaveRunning: true})
	var ue *UnsupportedError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "fd 3: TCP listener with connections not yet accepted (2): with --leave-running") {
		t.Fatalf("dump --leave-running: %v, want the listener refused", err)
	}
	if n := acceptQueueLen(t, l); n != 2 {
		t.Fatalf("after the refused dump: accept queue of %d, want 2", n)
	}
	img := t.TempDir()
	if _, err := Dump(context.Background(), pid, img, Options{Timeout: 20 * time.Second, TCPEstablished: true}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	critCheck(t, img)
	set, err := images.Load(img)
	if err != nil {
		t.Fatal(err)
	}
	var listener uint32
	pending := map[uint32]*criupb.InetSkEntry{} // by source port
	others := 0
	for _, f := range set.FileOrder {
		ie := f.Entry.GetIsk()
		if f.Type != criupb.FdTypes_INETSK {
			continue
		}
		switch {
		case ie.GetState() == 10:
			listener = f.ID
			if ie.FdrPendingListener != nil {
				t.Errorf("listener marked pending: %v", ie)
			}
		case ie.FdrPendingListener != nil:
			pending[ie.GetSrcPort()] = ie
			if set.TCPStreams[ie.GetIno()] != nil {
				t.Errorf("pending client %d has a tcp-stream image", ie.GetSrcPort())
			}
		default:
			others++
			if set.TCPStreams[ie.GetIno()] == nil {
				t.Errorf("connection %d:%d has no tcp-stream image", ie.GetSrcPort(), ie.GetDstPort())
			}
		}
	}
	if others != 4 || len(pending) != 2 || listener == 0 {
		t.Fatalf("%d connections, %d pending clients, listener %d: want 4, 2 and a listener", others, len(pending), listener)
	}
	for port, want := range map[uint32]struct {
		order uint32
		data  string
	}{40903: {0, "early-1"}, 40904: {1, ""}} {
		ie := pending[port]
		if ie == nil {
			t.Errorf("no pending client on port %d", port)
			continue
		}
		if ie.GetFdrPendingListener() != listener || ie.GetFdrPendingOrder() != want.order || string(ie.GetFdrPendingData()) != want.data ||
			ie.GetDstPort() != 7900 {
			t.Errorf("pending client %d: listener %d order %d data %q peer port %d, want %d %d %q 7900", port,
				ie.GetFdrPendingListener(), ie.GetFdrPendingOrder(), ie.GetFdrPendingData(), ie.GetDstPort(), listener, want.order, want.data)
		}
	}
}

// TestDumpTCPPendingOutsideClient: a listener whose pending connection
// has its client outside the tree is refused, the tree left running with
// the connection still queued.
func TestDumpTCPPendingOutsideClient(t *testing.T) {
	pid := startScenarioNetns(t, "tcp-crfail-pending")
	l := takeFD(t, pid, 3)
	_, err := Dump(context.Background(), pid, t.TempDir(), Options{Timeout: 20 * time.Second, TCPEstablished: true})
	var ue *UnsupportedError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "fd 3: TCP listener with connections not yet accepted (1) (the client of the one from 127.0.0.1:") ||
		!strings.Contains(err.Error(), "is not in the dumped tree") {
		t.Fatalf("dump: %v, want the listener refused for its outside client", err)
	}
	if err := unix.Kill(pid, 0); err != nil {
		t.Fatalf("tree gone after a refused dump: %v", err)
	}
	if n := acceptQueueLen(t, l); n != 1 {
		t.Fatalf("after the refused dump: accept queue of %d, want 1", n)
	}
}

// TestDumpTCPClientOfOutsideListener: a connection of the tree whose
// other end waits in the accept queue of a listener outside the tree is
// an ordinary connection: dumped in repair mode with its stream, under
// the network lock, with no pending mark. (The tree dumped is the outside
// client of tcp-crfail-pending, whose listener is in the scenario's root.)
func TestDumpTCPClientOfOutsideListener(t *testing.T) {
	root := startScenarioNetns(t, "tcp-crfail-pending")
	ext := 0
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if sid, _ := unix.Getsid(p); sid == root && len(args) > 1 && args[len(args)-1] == "ext" {
			ext = p
		}
	}
	if ext == 0 {
		t.Fatal("the scenario's outside client is not running")
	}
	img := t.TempDir()
	if _, err := Dump(context.Background(), ext, img, Options{Timeout: 20 * time.Second, TCPEstablished: true, ShellJob: true}); err != nil {
		t.Fatalf("dump of the client: %v", err)
	}
	set, err := images.Load(img)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range set.FileOrder {
		if ie := f.Entry.GetIsk(); f.Type == criupb.FdTypes_INETSK {
			n++
			if ie.FdrPendingListener != nil || set.TCPStreams[ie.GetIno()] == nil || ie.GetDstPort() != 7700 {
				t.Errorf("client: %v, stream %v; want a repaired connection to 7700", ie, set.TCPStreams[ie.GetIno()] != nil)
			}
		}
	}
	if n != 1 {
		t.Fatalf("%d inet sockets, want 1", n)
	}
	if _, err := os.Stat(filepath.Join(img, NetLockRecord)); err != nil {
		t.Errorf("no network lock record: %v", err)
	}
}
