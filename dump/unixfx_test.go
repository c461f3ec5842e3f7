package dump

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"
)

// The "unixfx" scenario rebuilds the state of a real CRIU 4.2 dump in
// /work/shared/criu-images (FDR_DUMP_N names it: unix-stream, unix-dgram,
// unix-scm; see their EXPECTED.md) with fdrestore-unique abstract names,
// so that our images can be compared with CRIU's entry by entry.
func unixFixtureRoot(dir string) {
	name := func(s string) string { return uxName(os.Getppid(), s) }
	// The fixtures use fd 3: report readiness on another fd.
	must(unix.Dup3(3, 100, unix.O_CLOEXEC), "dup the ready fd")
	unix.Close(3)
	switch os.Getenv(envN) {
	case "unix-stream":
		uxPair(unix.SOCK_STREAM, 3, 4)
		writeAll(4, []byte("ping#3"))
		writeAll(3, []byte("pong-to-4"))
		l, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		must(err, "socket")
		must(unix.Bind(l, uxAddr(name("stream-listen"))), "bind")
		must(unix.Listen(l, 16), "listen")
		moveFd(l, 5, false)
		c, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		must(err, "socket")
		must(unix.Connect(c, uxAddr(name("stream-listen"))), "connect")
		moveFd(c, 7, false)
		a, _, err := unix.Accept(5)
		must(err, "accept")
		moveFd(a, 6, false)
		writeAll(7, []byte("acpt"))
		p, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		must(err, "socket")
		must(unix.Bind(p, uxAddr(dir+"/listen.sock")), "bind path")
		must(unix.Listen(p, 5), "listen")
		moveFd(p, 8, false)
		uxPair(unix.SOCK_STREAM, 9, 10)
		must(unix.Shutdown(9, unix.SHUT_WR), "shutdown")
	case "unix-dgram":
		uxPair(unix.SOCK_DGRAM, 3, 4)
		for _, d := range []string{"x", "dgram", "twelve bytes"} {
			writeAll(4, []byte(d))
		}
		uxPair(unix.SOCK_SEQPACKET, 5, 6)
		for _, r := range []string{"rec-one", "record-two!"} {
			writeAll(6, []byte(r))
		}
		s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
		must(err, "socket")
		must(unix.Bind(s, uxAddr(name("dgram-srv"))), "bind")
		moveFd(s, 7, false)
		c, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
		must(err, "socket")
		must(unix.Connect(c, uxAddr(name("dgram-srv"))), "connect")
		moveFd(c, 8, false)
		writeAll(8, []byte("hello"))
		writeAll(8, []byte("world!!"))
	case "unix-scm":
		uxPair(unix.SOCK_STREAM, 3, 4)
		var p [2]int
		must(unix.Pipe2(p[:], unix.O_CLOEXEC), "pipe")
		writeAll(p[1], []byte("P|\n"))
		unix.Close(p[1])
		must(unix.Sendmsg(4, []byte("FD:1"), unix.UnixRights(p[0]), nil, 0), "sendmsg")
		unix.Close(p[0])
		writeAll(4, []byte("plain-after"))
	default:
		die("FDR_DUMP_N %q", os.Getenv(envN))
	}
	signalReady(100)
}

// fixtureDir is the directory of the real CRIU dumps.
func fixtureDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("FDRESTORE_FIXTURES"); d != "" {
		return d
	}
	d, err := filepath.Abs("../../shared/criu-images")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CRIU fixtures not found at %s (set FDRESTORE_FIXTURES): %v", d, err)
		}
		t.Skipf("CRIU fixtures not found at %s (set FDRESTORE_FIXTURES)", d)
	}
	return d
}

// unixSummary renders the unix socket entries (in files.img order), the
// files in flight and sk-queues.img of a dump of one task (pid) with ids
// and inodes replaced by the fds that hold them, and names reduced to
// their last component, so that two dumps of the same state compare
// equal.
func unixSummary(t *testing.T, dir string, pid int) string {
	t.Helper()
	_, fes, err := images.ReadFile(filepath.Join(dir, "files.img"), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, fis, err := images.ReadFile(filepath.Join(dir, fmt.Sprintf("fdinfo-%d.img", 2)), nil)
	if err != nil {
		t.Fatal(err)
	}
	fds := map[uint32][]string{}
	for _, e := range fis {
		fi := e.Msg.(*criupb.FdinfoEntry)
		fds[fi.GetId()] = append(fds[fi.GetId()], fmt.Sprint(fi.GetFd()))
	}
	label := map[uint32]string{}
	inoLabel := map[uint32]string{}
	var inflight int
	for _, e := range fes {
		fe := e.Msg.(*criupb.FileEntry)
		l := strings.Join(fds[fe.GetId()], ",")
		if l == "" && fe.GetType() != criupb.FdTypes_REG {
			inflight++
			l = fmt.Sprintf("inflight%d", inflight)
		}
		label[fe.GetId()] = "fd " + l
		if u := fe.GetUsk(); u != nil {
			inoLabel[u.GetIno()] = "fd " + l
		}
	}
	short := func(name []byte) string {
		s := strings.TrimRight(string(name), "\x00")
		if strings.HasPrefix(s, "\x00") {
			parts := strings.Split(s, "-")
			return "@" + parts[len(parts)-1]
		}
		return filepath.Base(s)
	}
	var b strings.Builder
	for _, e := range fes {
		fe := e.Msg.(*criupb.FileEntry)
		switch fe.GetType() {
		case criupb.FdTypes_UNIXSK:
			u := fe.GetUsk()
			peer := "none"
			if u.GetPeer() != 0 {
				peer = inoLabel[u.GetPeer()]
			}
			// A non-listener's backlog is the truesize of what it sent
			// and is not read yet: kernel-dependent, so only whether
			// there is any is compared.
			backlog := fmt.Sprint(u.GetBacklog())
			if u.GetState() != tcpListen {
				backlog = fmt.Sprint("unread ", u.GetBacklog() != 0)
			}
			opts, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(u.GetOpts())
			fown, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(u.GetFown())
			fmt.Fprintf(&b, "%s: unix type %d state %d flags %#o uflags %d backlog %s peer %s name %q shutdown %v perms %v deleted %v name_dir %v ns_id set %v mnt_id set %v\n  opts %s fown %s\n",
				label[fe.GetId()], u.GetType(), u.GetState(), u.GetFlags(), u.GetUflags(), backlog, peer, short(u.GetName()),
				u.Shutdown, u.GetFilePerms().GetMode(), u.Deleted, u.NameDir, u.NsId != nil, u.MntId != nil, opts, fown)
		case criupb.FdTypes_REG:
			// Not compared: CRIU's list the executable and libraries
			// (from the memory dump), ours the cwd and root.
		default:
			if strings.HasPrefix(label[fe.GetId()], "fd inflight") {
				fmt.Fprintf(&b, "%s: %v in flight\n", label[fe.GetId()], fe.GetType())
			}
		}
	}
	_, pkts, err := images.ReadFile(filepath.Join(dir, "sk-queues.img"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range pkts {
		pe := e.Msg.(*criupb.SkPacketEntry)
		var scm []string
		for _, s := range pe.GetScm() {
			var r []string
			for _, id := range s.GetRights() {
				r = append(r, label[id])
			}
			scm = append(scm, fmt.Sprintf("type %d %v", s.GetType(), r))
		}
		fmt.Fprintf(&b, "packet for %s: %d bytes %q scm %v\n", label[pe.GetIdFor()], pe.GetLength(), e.Trailer, scm)
	}
	return b.String()
}

// TestDumpLikeCRIU dumps the states of CRIU's unix fixtures and compares
// our images with CRIU's: the same entries in the same order with the
// same fields set (ids and inodes compared by the fds holding them).
func TestDumpLikeCRIU(t *testing.T) {
	fx := fixtureDir(t)
	for _, name := range []string{"unix-stream", "unix-dgram", "unix-scm"} {
		t.Run(name, func(t *testing.T) {
			tr := startScenario(t, "unixfx", t.TempDir(), envN+"="+name)
			img := filepath.Join(t.TempDir(), "img")
			doDumpOpts(t, tr.pid, img, Options{LeaveRunning: true})
			critCheck(t, img)
			// Our fd table is in fdinfo-2.img too: the files id of the
			// first task is 2, like CRIU's.
			want := unixSummary(t, filepath.Join(fx, name), 2)
			got := unixSummary(t, img, tr.pid)
			if got != want {
				t.Errorf("our images differ from CRIU's:\n%s", diffLines(want, got))
			}
			if testing.Verbose() {
				t.Logf("summary:\n%s", got)
			}
		})
	}
}
