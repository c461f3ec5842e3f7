package dump

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"github.com/fdrestore/fdrestore/restore"
	"golang.org/x/sys/unix"
)

// The "unix" scenario: one task holding every kind of unix socket state
// the dumper records, at fixed fds.
//
//	10/11 stream pair, "ping#10" queued at 10, "pong-to-11" at 11
//	12/13 dgram pair, 3 datagrams at 12
//	14/15 seqpacket pair, 2 records at 14
//	16    stream listener @NAME-l (backlog 16); 17 accepted ("acpt" queued),
//	      18 its client; 19 a pending client (not accepted, no data)
//	20    stream listener bound to DIR/listen.sock, mode 0751
//	21/22 stream pair, 21 shut down for writing
//	23    dgram server @NAME-d; 24 its client, "hello" and "world!!" queued at 23
//	25/26 stream pair; at 25: "FD:2" carrying [a pipe read end with "P|\n"
//	      and no writer, a socket whose peer holds "inner"], then "plain-after"
//	27    stream socket whose peer was closed, "orphan" queued
//	28    dgram socket @NAME-s connected to itself, "self" queued
//	29/30 stream pair with options at 29 (and O_NONBLOCK), SO_PEEK_OFF 3
//	      and "peekoff" queued at 29; a BPF filter on 30
//	31    dgram socket bound to DIR/gone.sock, which was unlinked
//	32    dgram socket bound to the relative name rel.sock (cwd DIR)
//	33    the peer of the socket in flight in 25's queue (which holds
//	      "inner" then "nested" carrying a pipe read end with "Q")
//	34/35 stream pair; 34 has an owner and "me" queued, carrying 34 itself
//	36    dgram socket bound to DIR/moved-from.sock, renamed since
const (
	uxPing  = "ping#10"
	uxPong  = "pong-to-11"
	uxInner = "inner"
)

var (
	uxDgrams = []string{"x", "dgram", "twelve bytes"}
	uxRecs   = []string{"rec-one", "record-two!", ""}
)

// uxName is an abstract name unique to the test process testPid.
func uxName(testPid int, suffix string) string {
	return fmt.Sprintf("\x00fdr-dumptest-%d-%s", testPid, suffix)
}

func uxAddr(name string) *unix.SockaddrUnix { return &unix.SockaddrUnix{Name: name} }

func uxPair(typ, a, b int) {
	sp, err := unix.Socketpair(unix.AF_UNIX, typ, 0)
	must(err, "socketpair")
	moveFd(sp[0], a, false)
	moveFd(sp[1], b, false)
}

func unixRoot(dir string) {
	uxPair(unix.SOCK_STREAM, 10, 11)
	writeAll(11, []byte(uxPing))
	writeAll(10, []byte(uxPong))
	uxPair(unix.SOCK_DGRAM, 12, 13)
	for _, d := range uxDgrams {
		writeAll(13, []byte(d))
	}
	uxPair(unix.SOCK_SEQPACKET, 14, 15)
	for _, r := range uxRecs {
		must(unix.Sendto(15, []byte(r), 0, nil), "send a record")
	}

	l, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	must(err, "socket")
	must(unix.Bind(l, uxAddr(uxName(os.Getppid(), "l"))), "bind")
	must(unix.Listen(l, 16), "listen")
	moveFd(l, 16, false)
	c, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	must(err, "socket")
	must(unix.Connect(c, uxAddr(uxName(os.Getppid(), "l"))), "connect")
	moveFd(c, 18, false)
	a, _, err := unix.Accept(16)
	must(err, "accept")
	moveFd(a, 17, false)
	writeAll(18, []byte("acpt"))
	c, err = unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	must(err, "socket")
	must(unix.Connect(c, uxAddr(uxName(os.Getppid(), "l"))), "connect pending")
	moveFd(c, 19, false)

	l, err = unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	must(err, "socket")
	must(unix.Bind(l, uxAddr(dir+"/listen.sock")), "bind path")
	must(unix.Chmod(dir+"/listen.sock", 0o751), "chmod")
	must(unix.Listen(l, 5), "listen")
	moveFd(l, 20, false)

	uxPair(unix.SOCK_STREAM, 21, 22)
	must(unix.Shutdown(21, unix.SHUT_WR), "shutdown")

	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	must(err, "socket")
	must(unix.Bind(s, uxAddr(uxName(os.Getppid(), "d"))), "bind dgram")
	moveFd(s, 23, false)
	c, err = unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	must(err, "socket")
	must(unix.Connect(c, uxAddr(uxName(os.Getppid(), "d"))), "connect dgram")
	moveFd(c, 24, false)
	writeAll(24, []byte("hello"))
	writeAll(24, []byte("world!!"))

	uxPair(unix.SOCK_STREAM, 25, 26)
	var p [2]int
	must(unix.Pipe2(p[:], 0), "pipe")
	writeAll(p[1], []byte("P|\n"))
	unix.Close(p[1])
	in, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	must(err, "socketpair")
	writeAll(in[1], []byte(uxInner))
	// Nested: the socket in flight holds a pipe in flight in its own queue.
	var q [2]int
	must(unix.Pipe2(q[:], 0), "pipe")
	writeAll(q[1], []byte("Q"))
	must(unix.Sendmsg(in[1], []byte("nested"), unix.UnixRights(q[0]), nil, 0), "sendmsg nested")
	unix.Close(q[0])
	unix.Close(q[1])
	must(unix.Sendmsg(26, []byte("FD:2"), unix.UnixRights(p[0], in[0]), nil, 0), "sendmsg")
	unix.Close(p[0])
	unix.Close(in[0])
	moveFd(in[1], 33, false)
	writeAll(26, []byte("plain-after"))

	o, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	must(err, "socketpair")
	writeAll(o[1], []byte("orphan"))
	unix.Close(o[1])
	moveFd(o[0], 27, false)

	s, err = unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	must(err, "socket")
	must(unix.Bind(s, uxAddr(uxName(os.Getppid(), "s"))), "bind self")
	must(unix.Connect(s, uxAddr(uxName(os.Getppid(), "s"))), "connect self")
	moveFd(s, 28, false)
	writeAll(28, []byte("self"))

	uxPair(unix.SOCK_STREAM, 29, 30)
	must(unix.SetsockoptInt(29, unix.SOL_SOCKET, unix.SO_SNDBUF, 50000), "SO_SNDBUF")
	must(unix.SetsockoptInt(29, unix.SOL_SOCKET, unix.SO_PASSCRED, 1), "SO_PASSCRED")
	must(unix.SetsockoptInt(29, unix.SOL_SOCKET, unix.SO_PRIORITY, 3), "SO_PRIORITY")
	must(unix.SetsockoptInt(29, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 2), "SO_RCVLOWAT")
	must(unix.SetsockoptInt(29, unix.SOL_SOCKET, unix.SO_MARK, 7), "SO_MARK")
	must(unix.SetsockoptTimeval(29, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1, Usec: 500000}), "SO_RCVTIMEO")
	must(unix.SetsockoptInt(29, unix.SOL_SOCKET, unix.SO_PEEK_OFF, 3), "SO_PEEK_OFF")
	// The peer of 29 passes pidfds: peeking 29's queue must not leave
	// any in the dumper.
	if err := unix.SetsockoptInt(29, unix.SOL_SOCKET, unix.SO_PASSPIDFD, 1); err != nil && err != unix.ENOPROTOOPT {
		die("SO_PASSPIDFD: %v", err)
	}
	_, err = unix.FcntlInt(29, unix.F_SETFL, unix.O_RDWR|unix.O_NONBLOCK)
	must(err, "F_SETFL")
	writeAll(30, []byte("peekoff"))
	// A classic BPF filter on 30: accept everything.
	prog := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff}}
	must(unix.SetsockoptSockFprog(30, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: 1, Filter: &prog[0]}), "SO_ATTACH_FILTER")

	s, err = unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	must(err, "socket")
	must(unix.Bind(s, uxAddr(dir+"/gone.sock")), "bind gone")
	must(unix.Unlink(dir+"/gone.sock"), "unlink")
	moveFd(s, 31, false)

	s, err = unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	must(err, "socket")
	must(unix.Bind(s, uxAddr("rel.sock")), "bind relative")
	moveFd(s, 32, false)

	s, err = unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	must(err, "socket")
	must(unix.Bind(s, uxAddr(dir+"/moved-from.sock")), "bind moved")
	must(unix.Rename(dir+"/moved-from.sock", dir+"/moved-to.sock"), "rename")
	moveFd(s, 36, false)

	// 34 carries itself in its own queue; it has an owner (F_SETOWN).
	uxPair(unix.SOCK_STREAM, 34, 35)
	must(unix.Sendmsg(35, []byte("me"), unix.UnixRights(34), nil, 0), "sendmsg self")
	_, err = unix.FcntlInt(34, unix.F_SETOWN, os.Getpid())
	must(err, "F_SETOWN")
	signalReady(3)
}

// uxImages reads files.img and sk-queues.img of a dump.
func uxImages(t *testing.T, dir string) (map[uint32]*criupb.FileEntry, []*criupb.FdinfoEntry, []*images.Entry) {
	t.Helper()
	_, fes, err := images.ReadFile(filepath.Join(dir, "files.img"), nil)
	if err != nil {
		t.Fatal(err)
	}
	files := map[uint32]*criupb.FileEntry{}
	for _, e := range fes {
		fe := e.Msg.(*criupb.FileEntry)
		if files[fe.GetId()] != nil {
			t.Errorf("files.img: id %d twice", fe.GetId())
		}
		files[fe.GetId()] = fe
	}
	_, fds, err := images.ReadFile(filepath.Join(dir, "fdinfo-2.img"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var fdinfo []*criupb.FdinfoEntry
	for _, e := range fds {
		fdinfo = append(fdinfo, e.Msg.(*criupb.FdinfoEntry))
	}
	_, pkts, err := images.ReadFile(filepath.Join(dir, "sk-queues.img"), nil)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return files, fdinfo, pkts
}

func TestDumpUnixSockets(t *testing.T) {
	dir := t.TempDir()
	tr := startScenario(t, "unix", dir)
	img := filepath.Join(t.TempDir(), "img")
	fdsBefore := openFds(t)
	st := doDumpOpts(t, tr.pid, img, Options{LeaveRunning: true})
	// Fds of earlier tests may be closed meanwhile (finalizers): only a
	// new one is a leak.
	if fdsAfter := openFds(t); len(newFds(fdsBefore, fdsAfter)) > 0 {
		t.Errorf("the dumper has %d fds after the dump, %d before; new: %v", len(fdsAfter), len(fdsBefore), newFds(fdsBefore, fdsAfter))
	}
	pid := tr.pid
	critCheck(t, img)
	files, fdinfo, pkts := uxImages(t, img)

	byFd := map[int]*criupb.UnixSkEntry{}
	for _, fi := range fdinfo {
		fe := files[fi.GetId()]
		if fe == nil {
			t.Fatalf("fd %d: file id %d not in files.img", fi.GetFd(), fi.GetId())
		}
		if fi.GetFd() >= 10 {
			if fi.GetType() != criupb.FdTypes_UNIXSK || fe.GetType() != criupb.FdTypes_UNIXSK || fe.GetUsk() == nil {
				t.Fatalf("fd %d: type %v / %v, want UNIXSK", fi.GetFd(), fi.GetType(), fe.GetType())
			}
			byFd[int(fi.GetFd())] = fe.GetUsk()
		}
	}
	if len(byFd) != 27 {
		t.Fatalf("%d socket fds in fdinfo, want 27", len(byFd))
	}
	byIno := map[uint32]*criupb.UnixSkEntry{}
	for _, fe := range files {
		if u := fe.GetUsk(); u != nil {
			byIno[u.GetIno()] = u
		}
	}
	ino := func(fd int) uint32 { return byFd[fd].GetIno() }
	queue := func(id uint32) []*images.Entry {
		var out []*images.Entry
		for _, p := range pkts {
			if p.Msg.(*criupb.SkPacketEntry).GetIdFor() == id {
				out = append(out, p)
			}
		}
		return out
	}
	checkQueue := func(fd int, want ...string) {
		t.Helper()
		q := queue(byFd[fd].GetId())
		var got []string
		for _, p := range q {
			got = append(got, string(p.Trailer))
			if pe := p.Msg.(*criupb.SkPacketEntry); int(pe.GetLength()) != len(p.Trailer) {
				t.Errorf("fd %d: packet length %d, %d bytes follow", fd, pe.GetLength(), len(p.Trailer))
			}
		}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("fd %d: queue %q, want %q", fd, got, want)
		}
	}
	type want struct {
		typ, state, peerFd int
		name               string
		shutdown           criupb.SkShutdown
		backlog            int // -1: not checked
	}
	abs := func(s string) string { return uxName(os.Getpid(), s) }
	wants := map[int]want{
		10: {unix.SOCK_STREAM, tcpEstablished, 11, "", 0, -1},
		11: {unix.SOCK_STREAM, tcpEstablished, 10, "", 0, -1},
		12: {unix.SOCK_DGRAM, tcpEstablished, 13, "", 0, 0},
		13: {unix.SOCK_DGRAM, tcpEstablished, 12, "", 0, -1},
		14: {unix.SOCK_SEQPACKET, tcpEstablished, 15, "", 0, 0},
		15: {unix.SOCK_SEQPACKET, tcpEstablished, 14, "", 0, -1},
		16: {unix.SOCK_STREAM, tcpListen, -1, abs("l"), 0, 16},
		17: {unix.SOCK_STREAM, tcpEstablished, 18, abs("l"), 0, 0},
		18: {unix.SOCK_STREAM, tcpEstablished, 17, "", 0, -1},
		19: {unix.SOCK_STREAM, tcpEstablished, 16, "", 0, 0},
		20: {unix.SOCK_STREAM, tcpListen, -1, dir + "/listen.sock\x00", 0, 5},
		21: {unix.SOCK_STREAM, tcpEstablished, 22, "", criupb.SkShutdown_WRITE, 0},
		22: {unix.SOCK_STREAM, tcpEstablished, 21, "", criupb.SkShutdown_READ, 0},
		23: {unix.SOCK_DGRAM, tcpEstablished, -1, abs("d"), 0, 0},
		24: {unix.SOCK_DGRAM, tcpEstablished, 23, "", 0, -1},
		25: {unix.SOCK_STREAM, tcpEstablished, 26, "", 0, 0},
		26: {unix.SOCK_STREAM, tcpEstablished, 25, "", 0, -1},
		27: {unix.SOCK_STREAM, tcpEstablished, -1, "", criupb.SkShutdown_BOTH, 0},
		28: {unix.SOCK_DGRAM, tcpEstablished, 28, abs("s"), 0, -1},
		29: {unix.SOCK_STREAM, tcpEstablished, 30, "", 0, 0},
		30: {unix.SOCK_STREAM, tcpEstablished, 29, "", 0, -1},
		31: {unix.SOCK_DGRAM, tcpClose, -1, dir + "/gone.sock\x00", 0, 0},
		32: {unix.SOCK_DGRAM, tcpClose, -1, "rel.sock\x00", 0, 0},
	}
	for fd, w := range wants {
		u := byFd[fd]
		if u == nil {
			t.Errorf("fd %d: no entry", fd)
			continue
		}
		peer := uint32(0)
		if w.peerFd >= 0 {
			peer = ino(w.peerFd)
		}
		if int(u.GetType()) != w.typ || int(u.GetState()) != w.state || u.GetPeer() != peer || string(u.GetName()) != w.name ||
			u.GetShutdown() != w.shutdown || u.GetUflags() != 0 || u.Name == nil || u.NsId == nil {
			t.Errorf("fd %d: type %d state %d peer %d name %q shutdown %v uflags %d ns_id %v, want type %d state %d peer %d name %q shutdown %v",
				fd, u.GetType(), u.GetState(), u.GetPeer(), u.GetName(), u.GetShutdown(), u.GetUflags(), u.NsId, w.typ, w.state, peer, w.name, w.shutdown)
		}
		if w.backlog >= 0 && int(u.GetBacklog()) != w.backlog {
			t.Errorf("fd %d: backlog %d, want %d", fd, u.GetBacklog(), w.backlog)
		}
		wantFl := uint32(unix.O_RDWR)
		if fd == 29 {
			wantFl |= unix.O_NONBLOCK
		}
		if u.GetFlags() != wantFl {
			t.Errorf("fd %d: flags %#o, want %#o", fd, u.GetFlags(), wantFl)
		}
		if w.shutdown == 0 && u.Shutdown != nil {
			t.Errorf("fd %d: shutdown set (%v), CRIU leaves it out", fd, u.GetShutdown())
		}
		o := u.GetOpts()
		if o.SoRcvlowat == nil || o.SoPriority == nil || o.SoPasscred == nil || o.Reuseaddr == nil || o.SoBufLock == nil {
			t.Errorf("fd %d: options CRIU always records are missing: %v", fd, o)
		}
		if fd != 29 && (o.SoMark != nil || o.GetSoPasscred() || o.GetSoRcvTmoSec() != 0) {
			t.Errorf("fd %d: unexpected options %v", fd, o)
		}
	}
	// Backlog of a non-listener is the bytes it sent that are not read
	// yet: nonzero for the senders.
	for _, fd := range []int{11, 13, 15, 24} {
		if byFd[fd].GetBacklog() == 0 {
			t.Errorf("fd %d: backlog 0, want the unread bytes it sent", fd)
		}
	}
	o := byFd[29].GetOpts()
	if o.GetSoSndbuf() != 100000 || !o.GetSoPasscred() || o.GetSoPriority() != 3 || o.GetSoRcvlowat() != 2 || o.GetSoMark() != 7 ||
		o.GetSoRcvTmoSec() != 1 || o.GetSoRcvTmoUsec() != 500000 {
		t.Errorf("fd 29 options: %v", o)
	}
	if f := byFd[30].GetOpts().GetSoFilter(); len(f) != 1 || f[0] != uint64(unix.BPF_RET|unix.BPF_K)<<48|0xffffffff {
		t.Errorf("fd 30: so_filter %#x, want the one accept-all instruction", f)
	}
	if len(byFd[29].GetOpts().GetSoFilter()) != 0 {
		t.Errorf("fd 29: so_filter %v, want none", byFd[29].GetOpts().GetSoFilter())
	}
	// Bound files.
	if fp := byFd[20].GetFilePerms(); fp == nil || fp.GetMode() != unix.S_IFSOCK|0o751 || fp.GetUid() != 0 || byFd[20].Deleted != nil {
		t.Errorf("fd 20: file_perms %v deleted %v, want mode 0140751, uid 0, not deleted", fp, byFd[20].Deleted)
	}
	if !byFd[31].GetDeleted() || byFd[31].GetFilePerms() == nil {
		t.Errorf("fd 31: deleted %v perms %v, want deleted with perms", byFd[31].Deleted, byFd[31].GetFilePerms())
	}
	if !byFd[36].GetDeleted() || string(byFd[36].GetName()) != dir+"/moved-from.sock\x00" {
		t.Errorf("fd 36: deleted %v name %q, want the old name, deleted (the file was renamed)", byFd[36].Deleted, byFd[36].GetName())
	}
	if byFd[32].Deleted != nil {
		t.Errorf("fd 32: deleted %v", byFd[32].GetDeleted())
	}
	if got := byFd[32].GetNameDir(); got != dir {
		t.Errorf("fd 32: name_dir %q, want %q", got, dir)
	}
	if byFd[16].GetFilePerms() != nil || byFd[10].GetFilePerms() != nil {
		t.Error("abstract or unnamed sockets got file_perms")
	}
	// Queues.
	checkQueue(10, uxPing)
	checkQueue(11, uxPong)
	checkQueue(12, uxDgrams...)
	checkQueue(14, uxRecs...)
	checkQueue(17, "acpt")
	checkQueue(23, "hello", "world!!")
	checkQueue(27, "orphan")
	checkQueue(28, "self")
	checkQueue(29, "peekoff")
	checkQueue(25, "FD:2", "plain-after")
	for _, fd := range []int{13, 15, 16, 18, 19, 20, 21, 22, 24, 26, 30, 31, 32, 33} {
		checkQueue(fd)
	}
	// The files in flight: a pipe with its data, and a socket with its
	// own queue whose peer is written too.
	q := queue(byFd[25].GetId())
	scm := q[0].Msg.(*criupb.SkPacketEntry).GetScm()
	if len(scm) != 1 || scm[0].GetType() != unix.SCM_RIGHTS || len(scm[0].GetRights()) != 2 {
		t.Fatalf("fd 25 first packet: scm %v, want SCM_RIGHTS with 2 files", scm)
	}
	if len(q[1].Msg.(*criupb.SkPacketEntry).GetScm()) != 0 {
		t.Error("fd 25 second packet carries files")
	}
	pipeFe, skFe := files[scm[0].GetRights()[0]], files[scm[0].GetRights()[1]]
	if pipeFe.GetType() != criupb.FdTypes_PIPE || pipeFe.GetPipe().GetFlags() != unix.O_RDONLY {
		t.Errorf("first file in flight: %v, want a pipe read end", pipeFe)
	}
	_, pd, err := images.ReadFile(filepath.Join(img, "pipes-data.img"), nil)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range pd {
		if e.Msg.(*criupb.PipeDataEntry).GetPipeId() == pipeFe.GetPipe().GetPipeId() {
			found = string(e.Trailer) == "P|\n"
		}
	}
	if !found {
		t.Error("the pipe in flight has no data entry with P|\\n")
	}
	inner := skFe.GetUsk()
	if inner == nil || inner.GetPeer() != ino(33) || byFd[33].GetPeer() != inner.GetIno() {
		t.Fatalf("second file in flight: %v, want the peer of fd 33", skFe)
	}
	iq := queue(inner.GetId())
	// A stream read glues the plain bytes to the message with fds that
	// follows them (from the same sender), and a peek does the same.
	if len(iq) != 1 || string(iq[0].Trailer) != uxInner+"nested" {
		t.Fatalf("in-flight socket queue: %d packets, want one %q", len(iq), uxInner+"nested")
	}
	nested := iq[0].Msg.(*criupb.SkPacketEntry).GetScm()
	if len(nested) != 1 || len(nested[0].GetRights()) != 1 || files[nested[0].GetRights()[0]].GetType() != criupb.FdTypes_PIPE {
		t.Errorf("nested packet scm %v, want one pipe", nested)
	}
	// 34 carries its own description.
	sq := queue(byFd[34].GetId())
	if len(sq) != 1 || len(sq[0].Msg.(*criupb.SkPacketEntry).GetScm()) != 1 ||
		!slices.Equal(sq[0].Msg.(*criupb.SkPacketEntry).GetScm()[0].GetRights(), []uint32{byFd[34].GetId()}) {
		t.Errorf("fd 34 queue: %v, want \"me\" carrying fd 34's own file id", sq)
	}
	if f := byFd[34].GetFown(); f.GetPid() != uint32(pid) || f.GetPidType() != 1 {
		t.Errorf("fd 34 fown %v, want pid %d (PIDTYPE_TGID)", f, pid)
	}
	for _, fi := range fdinfo {
		if fi.GetId() == inner.GetId() || fi.GetId() == pipeFe.GetId() {
			t.Errorf("a file in flight is at fd %d", fi.GetFd())
		}
	}
	if st.UnixSockets != 28 {
		t.Errorf("stats: %d unix sockets, want 28 (27 at fds, 1 in flight)", st.UnixSockets)
	}

	// --leave-running left every queue, peek offset and connection as
	// it was.
	uxCheckAfter(t, tr.pid, dir)
}

// uxCheckAfter checks the unix scenario's tree after a dump that left it
// running: queues intact, peek offsets as set, connections working.
func uxCheckAfter(t *testing.T, pid int, dir string) {
	t.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	get := func(fd int) int {
		t.Helper()
		l, err := unix.PidfdGetfd(pidfd, fd, 0)
		if err != nil {
			t.Fatalf("pidfd_getfd %d: %v", fd, err)
		}
		t.Cleanup(func() { unix.Close(l) })
		return l
	}
	for _, fd := range []int{10, 12, 25} {
		if off, err := unix.GetsockoptInt(get(fd), unix.SOL_SOCKET, unix.SO_PEEK_OFF); err != nil || off != -1 {
			t.Errorf("fd %d: SO_PEEK_OFF %d (%v), want -1 as before the dump", fd, off, err)
		}
	}
	if off, err := unix.GetsockoptInt(get(29), unix.SOL_SOCKET, unix.SO_PEEK_OFF); err != nil || off != 3 {
		t.Errorf("fd 29: SO_PEEK_OFF %d (%v), want 3 as before the dump", off, err)
	}
	recv := func(fd int) ([]byte, []int) {
		t.Helper()
		buf := make([]byte, 256)
		oob := make([]byte, unix.CmsgSpace(16*4))
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(pfd, 5000); n != 1 || err != nil {
			t.Fatalf("nothing to read (poll %d, %v)", n, err)
		}
		n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_DONTWAIT)
		if err != nil {
			t.Fatalf("recvmsg: %v", err)
		}
		fds, err := rightsOf(oob[:oobn])
		if err != nil {
			t.Fatal(err)
		}
		return buf[:n], fds
	}
	expect := func(fd int, want ...string) {
		t.Helper()
		l := get(fd)
		for _, w := range want {
			got, fds := recv(l)
			for _, f := range fds {
				unix.Close(f)
			}
			if string(got) != w {
				t.Errorf("fd %d: read %q, want %q", fd, got, w)
			}
		}
	}
	expect(10, uxPing)
	expect(11, uxPong)
	expect(12, uxDgrams...)
	expect(14, uxRecs...)
	expect(17, "acpt")
	expect(23, "hello", "world!!")
	expect(27, "orphan")
	expect(28, "self")
	// fd 25: the files in flight still arrive, with their data.
	got, fds := recv(get(25))
	if string(got) != "FD:2" || len(fds) != 2 {
		t.Fatalf("fd 25: %q with %d fds, want FD:2 with 2", got, len(fds))
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	b := make([]byte, 16)
	if n, _ := unix.Read(fds[0], b); string(b[:n]) != "P|\n" {
		t.Errorf("pipe in flight: %q", b[:n])
	}
	got, nfds := recv(fds[1])
	if string(got) != uxInner+"nested" || len(nfds) != 1 {
		t.Errorf("socket in flight: %q with %d fds, want %q with 1", got, len(nfds), uxInner+"nested")
	}
	for _, f := range nfds {
		if n, _ := unix.Read(f, b); string(b[:n]) != "Q" {
			t.Errorf("nested pipe: %q", b[:n])
		}
		unix.Close(f)
	}
	if _, err := unix.Write(fds[1], []byte("to33")); err != nil {
		t.Error(err)
	} else if got, _ := recv(get(33)); string(got) != "to33" {
		t.Errorf("fd 33 from the socket that was in flight: %q", got)
	}
	if got, _ := recv(get(25)); string(got) != "plain-after" {
		t.Errorf("fd 25 second: %q", got)
	}
	// Connections work both ways.
	for _, p := range [][2]int{{10, 11}, {11, 10}, {12, 13}, {13, 12}, {14, 15}, {17, 18}, {18, 17}, {24, 23}, {29, 30}} {
		a, b := get(p[0]), get(p[1])
		msg := []byte(fmt.Sprintf("%d->%d", p[0], p[1]))
		if _, err := unix.Write(a, msg); err != nil {
			t.Errorf("write %d: %v", p[0], err)
			continue
		}
		if got, _ := recv(b); !bytes.Equal(got, msg) {
			t.Errorf("%d -> %d: %q", p[0], p[1], got)
		}
	}
	// The pending connection is still pending: accept it now.
	l := get(16)
	a, _, err := unix.Accept4(l, unix.SOCK_NONBLOCK)
	if err != nil {
		t.Errorf("accept the pending connection: %v", err)
	} else {
		unix.Close(a)
	}
	if err := unix.Sendto(get(21), []byte("x"), unix.MSG_NOSIGNAL, nil); !errors.Is(err, unix.EPIPE) {
		t.Errorf("write on the shut down fd 21: %v, want EPIPE", err)
	}
}

func doDumpOpts(t *testing.T, pid int, dir string, opts Options) *Stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := Dump(ctx, pid, dir, opts)
	if err != nil {
		t.Fatalf("dump pid %d: %v", pid, err)
	}
	return st
}

// unixExtRoot: sockets connected outside the tree (FDR_DUMP_N says which)
// or a pending connection holding data.
//
//	dgram:  10 dgram socket connected to the test's @NAME-ext-d, 11 a
//	        socketpair end whose peer (12) is in the tree
//	stream: 10 stream socket connected to the test's listener @NAME-ext-l
//	        (not accepted)
//	icon:   10 listener @NAME-icon, 11 its pending client with 4 bytes sent
func unixExtRoot() {
	ppid := os.Getppid()
	switch os.Getenv(envN) {
	case "dgram":
		s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
		must(err, "socket")
		must(unix.Connect(s, uxAddr(uxName(ppid, "ext-d"))), "connect")
		moveFd(s, 10, false)
		uxPair(unix.SOCK_DGRAM, 11, 12)
	case "stream":
		s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		must(err, "socket")
		must(unix.Connect(s, uxAddr(uxName(ppid, "ext-l"))), "connect")
		moveFd(s, 10, false)
	case "icon":
		l, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		must(err, "socket")
		must(unix.Bind(l, uxAddr(uxName(ppid, "icon"))), "bind")
		must(unix.Listen(l, 4), "listen")
		moveFd(l, 10, false)
		c, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		must(err, "socket")
		must(unix.Connect(c, uxAddr(uxName(ppid, "icon"))), "connect")
		moveFd(c, 11, false)
		writeAll(11, []byte("lost"))
	case "netns":
		// Sockets of another network namespace than the dumper's.
		runtime.LockOSThread()
		must(unix.Unshare(unix.CLONE_NEWNET), "unshare(CLONE_NEWNET)")
		uxPair(unix.SOCK_STREAM, 10, 11)
		writeAll(11, []byte("in-netns"))
		l, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		must(err, "socket")
		must(unix.Bind(l, uxAddr(uxName(ppid, "netns"))), "bind")
		must(unix.Listen(l, 3), "listen")
		moveFd(l, 12, false)
	case "oob":
		uxPair(unix.SOCK_STREAM, 10, 11)
		writeAll(11, []byte("ab"))
		must(unix.Sendto(11, []byte("X"), unix.MSG_OOB, nil), "send MSG_OOB")
		writeAll(11, []byte("cd"))
	case "inflight-udp":
		uxPair(unix.SOCK_STREAM, 10, 11)
		u, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		must(err, "socket")
		must(unix.Sendmsg(11, []byte("E"), unix.UnixRights(u), nil, 0), "sendmsg")
		unix.Close(u)
	default:
		die("FDR_DUMP_N %q", os.Getenv(envN))
	}
	signalReady(3)
}

func uxServer(t *testing.T, typ int, suffix string) int {
	t.Helper()
	s, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(s) })
	if err := unix.Bind(s, uxAddr(uxName(os.Getpid(), suffix))); err != nil {
		t.Fatal(err)
	}
	if typ == unix.SOCK_STREAM {
		if err := unix.Listen(s, 4); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func uxRefused(t *testing.T, err error, pid, fd int, want string) {
	t.Helper()
	var ue *UnsupportedError
	if !errors.As(err, &ue) || !errors.Is(err, ErrUnsupported) {
		t.Fatalf("dump: %v, want a refusal", err)
	}
	prefix := fmt.Sprintf("pid %d fd %d: unix socket:[", pid, fd)
	if msg := err.Error(); !strings.Contains(msg, prefix) || !strings.Contains(msg, want) {
		t.Errorf("refusal %q does not say %q ... %q", msg, prefix, want)
	}
	t.Logf("refused: %v", err)
}

func TestDumpUnixExternalDgram(t *testing.T) {
	srv := uxServer(t, unix.SOCK_DGRAM, "ext-d")
	tr := startScenario(t, "unixext", t.TempDir(), envN+"=dgram")
	img := filepath.Join(t.TempDir(), "img")
	_, err := Dump(context.Background(), tr.pid, img, Options{LeaveRunning: true, Timeout: 20 * time.Second})
	uxRefused(t, err, tr.pid, 10, "outside the dumped tree (dump with --ext-unix-sk")
	if _, err := os.Stat(filepath.Join(img, "inventory.img")); err == nil {
		t.Error("a refused dump wrote images")
	}

	doDumpOpts(t, tr.pid, img, Options{LeaveRunning: true, ExtUnixSk: true})
	critCheck(t, img)
	files, fdinfo, _ := uxImages(t, img)
	var st unix.Stat_t
	if err := unix.Fstat(srv, &st); err != nil {
		t.Fatal(err)
	}
	var ext, client *criupb.UnixSkEntry
	for _, fe := range files {
		if u := fe.GetUsk(); u != nil && u.GetIno() == uint32(st.Ino) {
			ext = u
		}
	}
	for _, fi := range fdinfo {
		if fi.GetFd() == 10 {
			client = files[fi.GetId()].GetUsk()
		}
	}
	if ext == nil || client == nil {
		t.Fatalf("external entry %v, client %v", ext, client)
	}
	if ext.GetUflags() != uskExtern || ext.GetType() != unix.SOCK_DGRAM || ext.GetState() != tcpListen || ext.GetPeer() != 0 ||
		string(ext.GetName()) != uxName(os.Getpid(), "ext-d") || ext.GetOpts() == nil || ext.GetFown() == nil {
		t.Errorf("external entry %v", ext)
	}
	if client.GetPeer() != ext.GetIno() || client.GetUflags() != 0 {
		t.Errorf("client entry %v", client)
	}
	for _, fi := range fdinfo {
		if fi.GetId() == ext.GetId() {
			t.Errorf("the external socket is at fd %d", fi.GetFd())
		}
	}
	// files.img order: the external entry comes right before the sockets
	// connected to it, at the end, with the highest id.
	_, fes, _ := images.ReadFile(filepath.Join(img, "files.img"), nil)
	n := len(fes)
	if last := fes[n-1].Msg.(*criupb.FileEntry); last.GetUsk().GetId() != client.GetId() || fes[n-2].Msg.(*criupb.FileEntry).GetUsk().GetId() != ext.GetId() {
		t.Errorf("files.img does not end with the external entry and its client")
	}
	for _, e := range fes {
		if e.Msg.(*criupb.FileEntry).GetId() > ext.GetId() {
			t.Errorf("id %d after the external socket's %d", e.Msg.(*criupb.FileEntry).GetId(), ext.GetId())
		}
	}
	// Still connected: a datagram sent from the tree reaches the server.
	pidfd, err := unix.PidfdOpen(tr.pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	c, err := unix.PidfdGetfd(pidfd, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(c)
	if _, err := unix.Write(c, []byte("after")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 16)
	if n, _, err := unix.Recvfrom(srv, b, unix.MSG_DONTWAIT); err != nil || string(b[:n]) != "after" {
		t.Errorf("server got %q, %v", b[:n], err)
	}
	// A dump that kills the tree checks that restore (with
	// --ext-unix-sk) accepts the images.
	doDumpOpts(t, tr.pid, filepath.Join(t.TempDir(), "img2"), Options{ExtUnixSk: true})
	waitGone(t, tr.pid)
}

func TestDumpUnixExternalStream(t *testing.T) {
	uxServer(t, unix.SOCK_STREAM, "ext-l")
	tr := startScenario(t, "unixext", t.TempDir(), envN+"=stream")
	img := filepath.Join(t.TempDir(), "img")
	_, err := Dump(context.Background(), tr.pid, img, Options{LeaveRunning: true, ExtUnixSk: true, Timeout: 20 * time.Second})
	uxRefused(t, err, tr.pid, 10, "pending connection to socket:[")
}

func TestDumpUnixPendingWithData(t *testing.T) {
	tr := startScenario(t, "unixext", t.TempDir(), envN+"=icon")
	img := filepath.Join(t.TempDir(), "img")
	_, err := Dump(context.Background(), tr.pid, img, Options{Timeout: 20 * time.Second})
	uxRefused(t, err, tr.pid, 11, "which was not accepted yet")
	// Left running with the data still there.
	pidfd, err := unix.PidfdOpen(tr.pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	l, err := unix.PidfdGetfd(pidfd, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(l)
	a, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(a)
	b := make([]byte, 16)
	if n, _ := unix.Read(a, b); string(b[:n]) != "lost" {
		t.Errorf("pending connection after the refused dump: %q", b[:n])
	}
}

func TestDumpUnixInflightUnsupported(t *testing.T) {
	tr := startScenario(t, "unixext", t.TempDir(), envN+"=inflight-udp")
	img := filepath.Join(t.TempDir(), "img")
	_, err := Dump(context.Background(), tr.pid, img, Options{Timeout: 20 * time.Second})
	var ue *UnsupportedError
	if !errors.As(err, &ue) {
		t.Fatalf("dump: %v, want a refusal", err)
	}
	want := fmt.Sprintf("pid %d fd 10: inet socket in flight (SCM_RIGHTS) in the queue of socket:[", tr.pid)
	if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "(socket:[") {
		t.Errorf("refusal %q, want %q...", err, want)
	}
	// Nothing was consumed: the eventfd still arrives.
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
	buf, oob := make([]byte, 8), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(s, buf, oob, unix.MSG_DONTWAIT)
	if err != nil || string(buf[:n]) != "E" {
		t.Fatalf("after the refused dump: %q, %v", buf[:n], err)
	}
	fds, err := rightsOf(oob[:oobn])
	if err != nil || len(fds) != 1 {
		t.Fatalf("after the refused dump: %d fds, %v", len(fds), err)
	}
	unix.Close(fds[0])
}

// unixManyRoot: FDR_DUMP_N socketpairs (stream, dgram, seqpacket in
// turn) with a packet queued each way, and one stream pair with a full
// queue and one dgram pair with 1000 datagrams.
func unixManyRoot() {
	n, _ := strconv.Atoi(os.Getenv(envN))
	must(unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: uint64(2*n + 100), Max: uint64(2*n + 100)}), "setrlimit")
	types := []int{unix.SOCK_STREAM, unix.SOCK_DGRAM, unix.SOCK_SEQPACKET}
	for i := 0; i < n; i++ {
		sp, err := unix.Socketpair(unix.AF_UNIX, types[i%3], 0)
		must(err, "socketpair")
		writeAll(sp[0], []byte("a"))
		writeAll(sp[1], []byte("bb"))
	}
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	must(err, "socketpair")
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i * 13)
	}
	for off := 0; off < len(big); {
		m, err := unix.Write(sp[1], big[off:])
		if err == unix.EAGAIN {
			break
		}
		must(err, "fill")
		off += m
	}
	sp, err = unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	must(err, "socketpair")
	must(unix.SetsockoptInt(sp[1], unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20), "SO_SNDBUF")
	for i := 0; i < 1000; i++ {
		writeAll(sp[1], []byte(strconv.Itoa(i)))
	}
	signalReady(3)
}

func TestDumpUnixScale(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	const n = 3000
	tr := startScenario(t, "unixmany", t.TempDir(), fmt.Sprintf("%s=%d", envN, n))
	img := filepath.Join(t.TempDir(), "img")
	st := doDumpOpts(t, tr.pid, img, Options{LeaveRunning: true})
	t.Logf("%d unix sockets, %d bytes queued: freezing %.2f ms, frozen %.2f ms, total %.2f ms",
		st.UnixSockets, st.SkQueueBytes, ms(st.Freezing), ms(st.Frozen), ms(st.Total))
	if st.UnixSockets != 2*n+4 {
		t.Errorf("%d unix sockets, want %d", st.UnixSockets, 2*n+4)
	}
	_, pkts, err := images.ReadFile(filepath.Join(img, "sk-queues.img"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var dgrams int
	var big int64
	for _, p := range pkts {
		switch l := p.Msg.(*criupb.SkPacketEntry).GetLength(); {
		case l > 2:
			big += int64(l)
		case l >= 1:
			if len(p.Trailer) == 0 {
				t.Fatal("packet without data")
			}
		}
	}
	for _, p := range pkts {
		if s := string(p.Trailer); len(s) > 0 && s[0] >= '0' && s[0] <= '9' {
			dgrams++
		}
	}
	if dgrams < 1000 || big < 100000 {
		t.Errorf("%d numbered datagrams (want 1000), %d bytes in the full stream (want > 100000)", dgrams, big)
	}
	if _, err := images.Load(img); err != nil {
		t.Fatal(err)
	}
}

func TestDumpUnixRefusesOOB(t *testing.T) {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = unix.Sendto(sp[0], []byte("X"), unix.MSG_OOB, nil)
	unix.Close(sp[0])
	unix.Close(sp[1])
	if err != nil {
		t.Skipf("no MSG_OOB on unix sockets here (CONFIG_AF_UNIX_OOB): %v", err)
	}
	tr := startScenario(t, "unixext", t.TempDir(), envN+"=oob")
	_, err = Dump(context.Background(), tr.pid, filepath.Join(t.TempDir(), "img"), Options{Timeout: 20 * time.Second})
	uxRefused(t, err, tr.pid, 10, "urgent data (MSG_OOB)")
}

// openFds returns what each open fd of the test process refers to.
func openFds(t *testing.T) map[string]string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]string, len(ents))
	for _, e := range ents {
		// The directory's own fd is closed by now: no link, not listed.
		if link, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil {
			m[e.Name()] = link
		}
	}
	return m
}

// newFds lists the fds of after that were not open, on the same file,
// in before.
func newFds(before, after map[string]string) []string {
	var out []string
	for fd, link := range after {
		if l, ok := before[fd]; !ok || l != link {
			out = append(out, fd+" -> "+link)
		}
	}
	sort.Strings(out)
	return out
}

func TestDumpUnixOtherNetns(t *testing.T) {
	tr := startScenario(t, "unixext", t.TempDir(), envN+"=netns")
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
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(s), unix.SIOCGSKNS, 0)
	if e != 0 {
		t.Fatal(e)
	}
	var theirs, ours unix.Stat_t
	unix.Fstat(int(r), &theirs)
	unix.Close(int(r))
	if err := unix.Stat("/proc/self/ns/net", &ours); err != nil {
		t.Fatal(err)
	}
	if theirs.Ino == ours.Ino {
		t.Fatal("the scenario's sockets are in the test's network namespace")
	}
	img := filepath.Join(t.TempDir(), "img")
	doDumpOpts(t, tr.pid, img, Options{LeaveRunning: true})
	files, fdinfo, pkts := uxImages(t, img)
	var names []string
	for _, fi := range fdinfo {
		if u := files[fi.GetId()].GetUsk(); u != nil {
			names = append(names, fmt.Sprintf("%d:%d:%q", fi.GetFd(), u.GetState(), u.GetName()))
		}
	}
	want := []string{"10:1:\"\"", "11:1:\"\"", fmt.Sprintf("12:10:%q", uxName(os.Getpid(), "netns"))}
	if !slices.Equal(names, want) {
		t.Errorf("sockets %v, want %v", names, want)
	}
	if len(pkts) != 1 || string(pkts[0].Trailer) != "in-netns" {
		t.Errorf("%d packets, want in-netns", len(pkts))
	}
}

// TestDumpRestoreRedumpUnix dumps the unix scenario (killing it), restores
// it stopped, dumps the restored tree and compares the images, inodes
// aside.
func TestDumpRestoreRedumpUnix(t *testing.T) {
	dir := t.TempDir()
	tr := startScenario(t, "unix", dir)
	img1 := filepath.Join(t.TempDir(), "img1")
	doDump(t, tr.pid, img1, false)
	tr.cmd.Wait()
	set, err := images.Load(img1)
	if err != nil {
		t.Fatal(err)
	}
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
