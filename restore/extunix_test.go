package restore_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/internal/fdcheck"
	"github.com/fdrestore/fdrestore/internal/synth"
	"github.com/fdrestore/fdrestore/restore"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// extUnixImages: task 100 holds at fd 3 a datagram socket connected to an
// outside peer bound to dgramName, and at fd 4 a stream socket connected
// to an outside peer named streamName. It returns their inodes.
func extUnixImages(dgramName, streamName []byte) (*synth.Builder, uint32, uint32) {
	b := synth.New()
	tk := b.Task(100)
	b.Stdio(tk)
	d := b.UnixSocket(synth.Dgram, synth.Established, nil)
	de := b.UnixSocket(synth.Dgram, synth.Established, dgramName)
	de.Usk().Uflags = proto.Uint32(1)
	b.Connect(d, de)
	b.Share(d, tk, 3)
	s := b.UnixSocket(synth.Stream, synth.Established, nil)
	se := b.UnixSocket(synth.Stream, synth.Established, streamName)
	se.Usk().Uflags = proto.Uint32(1)
	b.Connect(s, se)
	b.Share(s, tk, 4)
	return b, d.Usk().GetIno(), s.Usk().GetIno()
}

// TestExtUnixPolicies: sockets whose peer is outside the tree reconnect
// by name, take the caller's fd, or stay disconnected, by a global policy
// or one per socket; the plan lists each choice; a policy for a socket
// that has no outside peer, or inherit without an fd, is an error.
func TestExtUnixPolicies(t *testing.T) {
	needRoot(t)
	dname, dstr := abstractName(t, "extd")
	sname, _ := abstractName(t, "exts")
	srv, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(srv)
	if err := unix.Bind(srv, &unix.SockaddrUnix{Name: dstr}); err != nil {
		t.Fatal(err)
	}
	b, dino, sino := extUnixImages(dname, sname)
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine := os.NewFile(uintptr(sp[0]), "mine")
	defer mine.Close()
	defer unix.Close(sp[1])
	dkey := "socket:[" + strconv.FormatUint(uint64(dino), 10) + "]"

	restoreWith := func(t *testing.T, opts restore.PlanOptions, listing ...string) *checker {
		t.Helper()
		_, p, err := planSynth(t, b, opts)
		if err != nil {
			t.Fatalf("plan: %v", err)
		}
		var sb strings.Builder
		p.Print(&sb)
		for _, l := range listing {
			if !strings.Contains(sb.String(), l) {
				t.Errorf("plan lacks %q:\n%s", l, sb.String())
			}
		}
		res, err := restore.Run(context.Background(), p, restore.Options{End: restore.EndStop, Timeout: 20 * time.Second, Log: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		cleanupPids(t, res.PidMap)
		return &checker{t: t, pids: res.PidMap}
	}
	eof := func(c *checker, r ref) {
		t.Helper()
		fd := c.getfd(r)
		buf := make([]byte, 8)
		if n, err := unix.Read(fd, buf); n != 0 || err != nil {
			t.Errorf("%s: read %d, %v; want EOF (no peer)", r, n, err)
		}
	}
	t.Run("reconnect-disconnect", func(t *testing.T) {
		c := restoreWith(t, restore.PlanOptions{ExtUnix: restore.ExtUnixReconnect, ExtUnixSockets: map[uint32]restore.ExtUnixPolicy{sino: restore.ExtUnixDisconnect}},
			"External unix peers (2):", dkey+" ", `reconnect to "`+dstr+`"`, "left disconnected")
		if err := c.send(ref{100, 3}, "hi"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 8)
		if n, _, err := unix.Recvfrom(srv, buf, unix.MSG_DONTWAIT); err != nil || string(buf[:n]) != "hi" {
			t.Errorf("outside peer got %q, %v", buf[:n], err)
		}
		eof(c, ref{100, 4})
	})
	t.Run("inherit-disconnect", func(t *testing.T) {
		c := restoreWith(t, restore.PlanOptions{ExtUnix: restore.ExtUnixDisconnect, ExtUnixSockets: map[uint32]restore.ExtUnixPolicy{dino: restore.ExtUnixInherit},
			Inherit: []restore.Inherit{{Key: dkey, File: mine}}}, "the caller's fd")
		if same, err := fdcheck.SameDescription(c.pid(100), 3, os.Getpid(), sp[0]); err != nil || !same {
			t.Errorf("fd 3 is not the caller's socket (%v)", err)
		}
		eof(c, ref{100, 4})
	})
	t.Run("disconnect", func(t *testing.T) {
		c := restoreWith(t, restore.PlanOptions{ExtUnix: restore.ExtUnixDisconnect})
		if err := c.send(ref{100, 3}, "hi"); !errors.Is(err, unix.ENOTCONN) && !errors.Is(err, unix.EDESTADDRREQ) {
			t.Errorf("send on a disconnected datagram socket: %v, want ENOTCONN", err)
		}
		eof(c, ref{100, 4})
	})
	t.Run("errors", func(t *testing.T) {
		for _, c := range []struct {
			opts restore.PlanOptions
			want string
		}{
			{restore.PlanOptions{}, "--ext-unix-sk"},
			{restore.PlanOptions{ExtUnix: restore.ExtUnixInherit}, "no fd was given"},
			{restore.PlanOptions{ExtUnix: restore.ExtUnixDisconnect, ExtUnixSockets: map[uint32]restore.ExtUnixPolicy{7: restore.ExtUnixReconnect}}, `"socket:[7]": no unix socket`},
		} {
			_, _, err := planSynth(t, b, c.opts)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%+v: got %v, want %q", c.opts, err, c.want)
			}
		}
	})
	t.Run("cli", func(t *testing.T) {
		dir, _, _ := planSynth(t, b, restore.PlanOptions{ExtUnix: restore.ExtUnixDisconnect})
		out, err := exec.Command(cliBinary(t), "plan", "-D", dir, "--ext-unix", "disconnect", "--ext-unix-socket", dkey+"=reconnect").CombinedOutput()
		if err != nil || !strings.Contains(string(out), `reconnect to "`+dstr+`"`) || !strings.Contains(string(out), "left disconnected") {
			t.Errorf("plan --ext-unix: %v\n%s", err, out)
		}
	})
}
