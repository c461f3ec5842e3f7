package restore_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/proto/criupb"
	"github.com/fdrestore/fdrestore/restore"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// pendingFixture turns CRIU's tcp fixture's client (pid 3 fd 5, ino
// 1306883) into the client of a connection not yet accepted by the
// listener (file id 6, 127.0.0.1:7000), from port 40002 (the accepted
// connection of the fixture keeps 40001), having sent data; a pending
// client has no tcp-stream image.
func pendingFixture(t *testing.T, data string) string {
	t.Helper()
	dir := copyFixture(t, "tcp")
	editInet(t, dir, 1306883, func(ie *criupb.InetSkEntry) {
		ie.SrcPort = proto.Uint32(40002)
		ie.FdrPendingListener, ie.FdrPendingOrder = proto.Uint32(6), proto.Uint32(0)
		if data != "" {
			ie.FdrPendingData = []byte(data)
		}
	})
	if err := os.Remove(filepath.Join(dir, "tcp-stream-13f103.img")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestTCPPendingRestore restores a client recorded as pending in another
// task than its listener: it connects for real, so the restored listener
// has it in its accept queue with the recorded bytes, and the connection
// carries data both ways.
func TestTCPPendingRestore(t *testing.T) {
	needRoot(t)
	dir := pendingFixture(t, "early")
	p := tcpPlan(t, dir, restore.PlanOptions{TCPEstablished: true})
	if err := p.Err(); err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	p.Print(&sb)
	if !strings.Contains(sb.String(), "connect to the listener once it listens") {
		t.Errorf("plan without the listener edge:\n%s", sb.String())
	}
	ns := newNetns(t)
	pids := restoreIn(t, ns, "api", dir)
	c := &checker{t: t, pids: pids}
	l, cl := c.getfd(ref{2, 3}), c.getfd(ref{3, 5})
	if got := sockname(t, cl, false); got != "127.0.0.1:40002" {
		t.Errorf("client local %s, want 127.0.0.1:40002", got)
	}
	if got := sockname(t, cl, true); got != "127.0.0.1:7000" {
		t.Errorf("client peer %s, want 127.0.0.1:7000", got)
	}
	if v := sockInt(t, cl, unix.SOL_TCP, unix.TCP_REPAIR); v != 0 {
		t.Errorf("client TCP_REPAIR %d", v)
	}
	if v := sockInt(t, cl, unix.SOL_SOCKET, unix.SO_REUSEADDR); v != 0 {
		t.Errorf("client SO_REUSEADDR %d, want 0 as recorded", v)
	}
	info, err := unix.GetsockoptTCPInfo(l, unix.SOL_TCP, unix.TCP_INFO)
	if err != nil || info.Unacked != 1 {
		t.Fatalf("listener accept queue %d (%v), want 1", info.Unacked, err)
	}
	pfd := []unix.PollFd{{Fd: int32(l), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 5000); n != 1 || err != nil {
		t.Fatalf("listener not readable: %d %v", n, err)
	}
	a, peer, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(a)
	if pa, ok := peer.(*unix.SockaddrInet4); !ok || pa.Port != 40002 {
		t.Errorf("accepted from %v, want port 40002", peer)
	}
	if got := recvWithin(t, a, len("early"), 5*time.Second); got != "early" {
		t.Errorf("accepted connection holds %q, want %q", got, "early")
	}
	if _, err := unix.Write(a, []byte("s->c")); err != nil {
		t.Fatal(err)
	}
	if got := recvWithin(t, cl, 4, 5*time.Second); got != "s->c" {
		t.Errorf("client got %q", got)
	}
	if _, err := unix.Write(cl, []byte("c->s")); err != nil {
		t.Fatal(err)
	}
	if got := recvWithin(t, a, 4, 5*time.Second); got != "c->s" {
		t.Errorf("server got %q", got)
	}
}

// TestTCPPendingPlanBad: a pending mark that does not name a listener on
// the connection's peer port is refused with the entry named.
func TestTCPPendingPlanBad(t *testing.T) {
	for _, tc := range []struct {
		name     string
		listener uint32
		want     string
	}{
		{"missing", 99, "inet socket ino 1306883): fdr_pending_listener 99 is not an inet socket of files.img"},
		{"not a listener", 7, "inet socket ino 1306883): fdr_pending_listener 7 is not a TCP listener on the connection's peer port 7000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := pendingFixture(t, "")
			editInet(t, dir, 1306883, func(ie *criupb.InetSkEntry) { ie.FdrPendingListener = proto.Uint32(tc.listener) })
			err := tcpPlan(t, dir, restore.PlanOptions{TCPEstablished: true}).Err()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("plan: %v\nwant it to contain %q", err, tc.want)
			}
		})
	}
}
