package dump

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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

// The in-flight scenario: files that exist only in one SCM_RIGHTS message
// queued on a unix stream socket.
const (
	ifSock      = 10 // receives the message (its peer, 11, sent it)
	ifPipeR     = 20 // pipe read end holding "pp" (write end 21)
	ifWatched   = 22 // eventfd with counter 3, watched by the epoll set
	ifCounter   = 7  // the in-flight eventfd's counter
	ifWatchedN  = 3
	ifTimerSec  = 100 // the in-flight timerfd's time left at start and interval
	ifTimerIntv = 5
	ifMessage   = "inflight"
)

// inflightRoot builds it (FDR_DUMP_N "ok" or "lost"):
//
//	ok:   fd 10/11 a stream socketpair; 11 sent "inflight" with an eventfd
//	      (counter 7, non-blocking), a timerfd (monotonic, 100 s left,
//	      5 s interval), a signalfd (SIGUSR2) and an epoll set watching
//	      the pipe's read end (registered through fd 40, closed since:
//	      the task holds it at 20) with data 0x20 and eventfd 22 with
//	      data 0x22; the task closed its fds of the four.
//	lost: the same socketpair; 11 sent "lost" with an eventfd and an
//	      epoll set watching it (registered as fd 30); the task closed
//	      both, so the target exists only in flight.
//	held: fd 30 is an epoll set watching the pipe's read end (20, with
//	      "pp"), also sent in flight alone.
//	nested: 11 sent "inflight" with the end y of a socketpair whose other
//	      end (closed since) sent "inner" with an epoll set watching 20
//	      (the pipe, "pp") and 22 (eventfd, counter 3): the set is in
//	      flight in the queue of a socket in flight that no task holds.
//	split: as ok without the timerfd and signalfd, but the receiving
//	      socket, the pipe's read end and eventfd 22 are handed to a
//	      child (at fds 4, 5 and 6) and the root keeps only 11, 20, 21
//	      and 22: the queue is the child's, but restore refills it in the
//	      task with the lowest pid holding a socket of the pair.
func inflightRoot() {
	if os.Getenv(envRole) == "child" {
		signalReady(3)
		return
	}
	uxPair(unix.SOCK_STREAM, ifSock, 11)
	add := func(ep, fd int, data uint32) {
		must(unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(data)}), fmt.Sprintf("epoll_ctl add %d", fd))
	}
	switch os.Getenv(envN) {
	case "ok":
		var p [2]int
		must(unix.Pipe2(p[:], 0), "pipe")
		moveFd(p[0], ifPipeR, false)
		moveFd(p[1], ifPipeR+1, false)
		writeAll(ifPipeR+1, []byte("pp"))
		w, err := unix.Eventfd(ifWatchedN, 0)
		must(err, "eventfd")
		moveFd(w, ifWatched, false)
		efd, err := unix.Eventfd(ifCounter, unix.EFD_NONBLOCK)
		must(err, "eventfd")
		tfd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK)
		must(err, "timerfd")
		must(unix.TimerfdSettime(tfd, 0, &unix.ItimerSpec{Value: unix.Timespec{Sec: ifTimerSec}, Interval: unix.Timespec{Sec: ifTimerIntv}}, nil), "settime")
		var set unix.Sigset_t
		set.Val[0] = 1 << (unix.SIGUSR2 - 1)
		sfd, err := unix.Signalfd(-1, &set, 0)
		must(err, "signalfd")
		ep, err := unix.EpollCreate1(0)
		must(err, "epoll_create1")
		must(unix.Dup3(ifPipeR, 40, 0), "dup 20 -> 40")
		add(ep, 40, 0x20)
		unix.Close(40)
		add(ep, ifWatched, 0x22)
		must(unix.Sendmsg(11, []byte(ifMessage), unix.UnixRights(efd, tfd, sfd, ep), nil, 0), "sendmsg")
		for _, fd := range []int{efd, tfd, sfd, ep} {
			unix.Close(fd)
		}
	case "split":
		var p [2]int
		must(unix.Pipe2(p[:], 0), "pipe")
		moveFd(p[0], ifPipeR, false)
		moveFd(p[1], ifPipeR+1, false)
		writeAll(ifPipeR+1, []byte("pp"))
		w, err := unix.Eventfd(ifWatchedN, 0)
		must(err, "eventfd")
		moveFd(w, ifWatched, false)
		efd, err := unix.Eventfd(ifCounter, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
		must(err, "eventfd")
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		must(err, "epoll_create1")
		add(ep, ifPipeR, 0x20)
		add(ep, ifWatched, 0x22)
		must(unix.Sendmsg(11, []byte(ifMessage), unix.UnixRights(efd, ep), nil, 0), "sendmsg")
		unix.Close(efd)
		unix.Close(ep)
		// Only the listed fds go to the child.
		keep := []int{ifSock, 11, ifPipeR, ifPipeR + 1, ifWatched}
		for _, fd := range keep {
			moveFd(fd, fd, true)
		}
		var ready [2]int
		must(unix.Pipe2(ready[:], unix.O_CLOEXEC), "ready pipe")
		spawn("child", []int{0, 1, 2, ready[1], ifSock, ifPipeR, ifWatched})
		unix.Close(ready[1])
		readN(ready[0], 1)
		unix.Close(ready[0])
		for _, fd := range keep {
			moveFd(fd, fd, false)
		}
		unix.Close(ifSock)
	case "held":
		// The epoll set is also the task's fd 30, a higher number than
		// the socket whose queue carries it: the dump meets it in
		// flight first.
		var p [2]int
		must(unix.Pipe2(p[:], 0), "pipe")
		moveFd(p[0], ifPipeR, false)
		moveFd(p[1], ifPipeR+1, false)
		writeAll(ifPipeR+1, []byte("pp"))
		ep, err := unix.EpollCreate1(0)
		must(err, "epoll_create1")
		moveFd(ep, 30, false)
		add(30, ifPipeR, 0x20)
		must(unix.Sendmsg(11, []byte(ifMessage), unix.UnixRights(30), nil, 0), "sendmsg")
	case "nested":
		var p [2]int
		must(unix.Pipe2(p[:], 0), "pipe")
		moveFd(p[0], ifPipeR, false)
		moveFd(p[1], ifPipeR+1, false)
		writeAll(ifPipeR+1, []byte("pp"))
		w, err := unix.Eventfd(ifWatchedN, 0)
		must(err, "eventfd")
		moveFd(w, ifWatched, false)
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		must(err, "epoll_create1")
		add(ep, ifPipeR, 0x20)
		add(ep, ifWatched, 0x22)
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		must(err, "socketpair")
		must(unix.Sendmsg(sp[0], []byte("inner"), unix.UnixRights(ep), nil, 0), "sendmsg inner")
		must(unix.Sendmsg(11, []byte(ifMessage), unix.UnixRights(sp[1]), nil, 0), "sendmsg outer")
		unix.Close(ep)
		unix.Close(sp[0])
		unix.Close(sp[1])
	case "lost":
		efd, err := unix.Eventfd(1, 0)
		must(err, "eventfd")
		moveFd(efd, 30, false)
		ep, err := unix.EpollCreate1(0)
		must(err, "epoll_create1")
		add(ep, 30, 0x30)
		must(unix.Sendmsg(11, []byte("lost"), unix.UnixRights(30, ep), nil, 0), "sendmsg")
		unix.Close(30)
		unix.Close(ep)
	default:
		die("FDR_DUMP_N %q", os.Getenv(envN))
	}
	signalReady(3)
}

// TestDumpInflightEventFiles dumps an eventfd, a timerfd, a signalfd and
// an epoll set that exist only in flight, checks their entries field by
// field (the epoll targets recorded as the task's fds of the registered
// files) and with crit, restores the images and receives the message
// from the restored socket: the files work (eventfd counter, timer
// times, signal mask, epoll_wait's events and data).
func TestDumpInflightEventFiles(t *testing.T) {
	tr := startScenario(t, "inflight", t.TempDir(), envN+"=ok")
	img := filepath.Join(t.TempDir(), "img")
	start := time.Now()
	doDump(t, tr.pid, img, false)
	tr.cmd.Wait()
	critCheck(t, img)
	set, err := images.Load(img)
	if err != nil {
		t.Fatal(err)
	}
	task := set.TaskByPid[uint32(tr.pid)]
	fdAt := func(n uint32) *images.File {
		t.Helper()
		fd := task.Fds.Lookup(n)
		if fd == nil {
			t.Fatalf("no fd %d in the images", n)
		}
		return fd.File
	}
	files, fdinfo, pkts := uxImages(t, img)
	for _, fi := range fdinfo {
		if fi.GetType() != criupb.FdTypes_UNIXSK && fi.GetType() != criupb.FdTypes_PIPE && fi.GetType() != criupb.FdTypes_EVENTFD && fi.GetType() != criupb.FdTypes_REG {
			t.Errorf("fd %d of type %v in the task: the files in flight must have no fd", fi.GetFd(), fi.GetType())
		}
	}
	sock := fdAt(ifSock)
	var q []*criupb.SkPacketEntry
	var trailers []string
	for _, p := range pkts {
		if pe := p.Msg.(*criupb.SkPacketEntry); pe.GetIdFor() == sock.ID {
			q = append(q, pe)
			trailers = append(trailers, string(p.Trailer))
		}
	}
	if len(q) != 1 || trailers[0] != ifMessage {
		t.Fatalf("queue of fd %d: %d packets %q, want one %q", ifSock, len(q), trailers, ifMessage)
	}
	scm := q[0].GetScm()
	if len(scm) != 1 || scm[0].GetType() != unix.SCM_RIGHTS || len(scm[0].GetRights()) != 4 {
		t.Fatalf("scm %v, want SCM_RIGHTS with 4 files", scm)
	}
	r := scm[0].GetRights()
	efe, tfe, sfe, pfe := files[r[0]], files[r[1]], files[r[2]], files[r[3]]
	if ef := efe.GetEfd(); efe.GetType() != criupb.FdTypes_EVENTFD || ef.GetCounter() != ifCounter || ef.GetSemaphore() ||
		ef.GetFlags() != unix.O_RDWR|unix.O_NONBLOCK || ef.GetFown().GetPid() != 0 || ef.GetId() != efe.GetId() {
		t.Errorf("eventfd in flight: %v", efe)
	}
	el := uint64(time.Since(start)/time.Second) + 1
	if tf := tfe.GetTfd(); tfe.GetType() != criupb.FdTypes_TIMERFD || tf.GetClockid() != unix.CLOCK_MONOTONIC || tf.GetSettimeFlags() != 0 ||
		tf.GetIsec() != ifTimerIntv || tf.GetInsec() != 0 || tf.GetVsec() > ifTimerSec-1 || tf.GetVsec() < ifTimerSec-1-el ||
		tf.GetTicks() != 0 || tf.GetFlags() != unix.O_RDWR|unix.O_NONBLOCK || tf.GetId() != tfe.GetId() {
		t.Errorf("timerfd in flight: %v", tfe)
	}
	if sg := sfe.GetSgfd(); sfe.GetType() != criupb.FdTypes_SIGNALFD || sg.GetSigmask() != 1<<(unix.SIGUSR2-1) || sg.GetFlags() != unix.O_RDWR || sg.GetId() != sfe.GetId() {
		t.Errorf("signalfd in flight: %v", sfe)
	}
	ep := pfe.GetEpfd()
	if pfe.GetType() != criupb.FdTypes_EVENTPOLL || ep.GetFlags() != unix.O_RDWR || ep.GetId() != pfe.GetId() {
		t.Fatalf("epoll in flight: %v", pfe)
	}
	type reg struct {
		tfd, events uint32
		data        uint64
	}
	var got []reg
	for _, te := range ep.GetTfd() {
		got = append(got, reg{te.GetTfd(), te.GetEvents(), te.GetData()})
		if te.GetId() != pfe.GetId() || te.GetInode() == 0 {
			t.Errorf("tfd entry %v: want id %d and the target's inode", te, pfe.GetId())
		}
	}
	slices.SortFunc(got, func(a, b reg) int { return int(a.data) - int(b.data) })
	const eh = unix.EPOLLERR | unix.EPOLLHUP
	want := []reg{{ifPipeR, unix.EPOLLIN | eh, 0x20}, {ifWatched, unix.EPOLLIN | eh, 0x22}}
	if !slices.Equal(got, want) {
		t.Errorf("epoll in flight: %+v, want %+v (the pipe registered through closed fd 40 recorded as the task's fd 20)", got, want)
	}
	pipe := fdAt(ifPipeR)
	for _, te := range ep.GetTfd() {
		if te.GetTfd() == ifPipeR && (pipe.Pipe == nil || te.GetInode() != uint64(pipe.Pipe.ID)) {
			t.Errorf("pipe target inode %d, want the pipe's %v", te.GetInode(), pipe.Pipe)
		}
	}

	// Restore, and receive the message from outside.
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
	t.Cleanup(func() {
		for _, p := range res.PidMap {
			syscall.Kill(p, syscall.SIGKILL)
		}
		var ws syscall.WaitStatus
		syscall.Wait4(res.RootPid, &ws, 0, nil)
	})
	pidfd, err := unix.PidfdOpen(res.RootPid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	s, err := unix.PidfdGetfd(pidfd, ifSock, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	buf, oob := make([]byte, 64), make([]byte, unix.CmsgSpace(4*8))
	n, oobn, _, _, err := unix.Recvmsg(s, buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	if err != nil || string(buf[:n]) != ifMessage {
		t.Fatalf("recvmsg on the restored fd %d: %q, %v", ifSock, buf[:n], err)
	}
	fds, err := rightsOf(oob[:oobn])
	for _, fd := range fds {
		defer unix.Close(fd)
	}
	if err != nil || len(fds) != 4 {
		t.Fatalf("restored message carries %d fds (%v), want 4", len(fds), err)
	}
	links := make([]string, 4)
	for i, fd := range fds {
		links[i], _ = os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	}
	if want := []string{"anon_inode:[eventfd]", "anon_inode:[timerfd]", "anon_inode:[signalfd]", "anon_inode:[eventpoll]"}; !slices.Equal(links, want) {
		t.Fatalf("restored files in flight: %q, want %q", links, want)
	}
	var v [8]byte
	if n, err := unix.Read(fds[0], v[:]); n != 8 || err != nil || v[0] != ifCounter {
		t.Errorf("eventfd: read %d %v (%v), want counter %d", n, v, err, ifCounter)
	}
	if n, err := unix.Read(fds[0], v[:]); err != unix.EAGAIN {
		t.Errorf("eventfd: second read %d, %v: want EAGAIN (non-blocking, counter 0)", n, err)
	}
	var its unix.ItimerSpec
	if err := unix.TimerfdGettime(fds[1], &its); err != nil || its.Interval.Sec != ifTimerIntv || its.Value.Sec > ifTimerSec-1 || its.Value.Sec < ifTimerSec-1-int64(el)-60 {
		t.Errorf("timerfd: %+v, %v: want %d s interval, about %d s left", its, err, ifTimerIntv, ifTimerSec)
	}
	if fl, err := unix.FcntlInt(uintptr(fds[1]), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK == 0 {
		t.Errorf("timerfd flags %#x (%v), want O_NONBLOCK", fl, err)
	}
	info, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fds[2]))
	if err != nil || !strings.Contains(string(info), "sigmask:\t"+fmt.Sprintf("%016x", uint64(1)<<(unix.SIGUSR2-1))) {
		t.Errorf("signalfd fdinfo: %s (%v), want mask of SIGUSR2", info, err)
	}
	evs := make([]unix.EpollEvent, 8)
	n, err = unix.EpollWait(fds[3], evs, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ready []string
	for _, e := range evs[:n] {
		ready = append(ready, fmt.Sprintf("%#x:%#x", e.Fd, e.Events))
	}
	slices.Sort(ready)
	if want := []string{"0x20:0x1", "0x22:0x1"}; !slices.Equal(ready, want) {
		t.Errorf("epoll_wait on the restored set: %q, want %q (pipe data and eventfd counter ready, with their data)", ready, want)
	}
	// The registrations name the restored task's fds of the targets.
	info, err = os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fds[3]))
	if err != nil {
		t.Fatal(err)
	}
	var tfds []int
	for _, line := range strings.Split(string(info), "\n") {
		if v, ok := strings.CutPrefix(line, "tfd:"); ok {
			f := strings.Fields(v)
			n, _ := strconv.Atoi(f[0])
			tfds = append(tfds, n)
		}
	}
	slices.Sort(tfds)
	if !slices.Equal(tfds, []int{ifPipeR, ifWatched}) {
		t.Errorf("restored epoll registrations at fds %v, want [20 22]:\n%s", tfds, info)
	}
	for _, fd := range []int{ifPipeR, ifWatched} {
		slot := &kcmpEpollSlot{efd: uint32(fds[3]), tfd: uint32(fd)}
		if r, err := kcmpEpollTarget(res.RootPid, fd, os.Getpid(), slot); err != nil || r != 0 {
			t.Errorf("kcmp(KCMP_EPOLL_TFD) restored fd %d vs its registration: %d, %v", fd, r, err)
		}
	}
}

// TestDumpInflightEpollLostTarget: an epoll set in flight whose target
// exists only in flight too has no fd table to record the target in: the
// dump refuses, naming the set, the queue and the target, and leaves the
// tree running with the message intact.
func TestDumpInflightEpollLostTarget(t *testing.T) {
	tr := startScenario(t, "inflight", t.TempDir(), envN+"=lost")
	img := filepath.Join(t.TempDir(), "img")
	_, err := Dump(context.Background(), tr.pid, img, Options{Timeout: 20 * time.Second})
	var ue *UnsupportedError
	if !errors.As(err, &ue) || !errors.Is(err, ErrUnsupported) {
		t.Fatalf("dump: %v, want a refusal", err)
	}
	msg := err.Error()
	for _, want := range []string{
		fmt.Sprintf("pid %d fd %d: an epoll set in flight (SCM_RIGHTS) in the queue of socket:[", tr.pid, ifSock),
		"its target registered as fd 30 (inode ",
		"data 0x30, an anon_inode:[eventfd] that is only in flight, in socket:[",
		fmt.Sprintf("]) is not open in pid %d, the task that refills the queue", tr.pid),
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("refusal %q does not say %q", msg, want)
		}
	}
	t.Logf("refused: %v", err)
	pidfd, err := unix.PidfdOpen(tr.pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	s, err := unix.PidfdGetfd(pidfd, ifSock, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	buf, oob := make([]byte, 8), make([]byte, unix.CmsgSpace(8))
	n, oobn, _, _, err := unix.Recvmsg(s, buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	if err != nil || string(buf[:n]) != "lost" {
		t.Fatalf("after the refused dump: %q, %v", buf[:n], err)
	}
	fds, err := rightsOf(oob[:oobn])
	for _, fd := range fds {
		unix.Close(fd)
	}
	if err != nil || len(fds) != 2 {
		t.Fatalf("after the refused dump: %d fds, %v", len(fds), err)
	}
}

// TestDumpInflightEpollOtherTask: the queue carrying an eventfd and an
// epoll set is the child's, but restore refills it in the task with the
// lowest pid holding a socket of the pair (here the root, which holds the
// sender), so the epoll targets are recorded as that task's fds of them:
// the root's 20 and 22, not the child's 5 and 6. Restored, the message
// arrives at the child's fd 4 and the set reports both targets ready.
func TestDumpInflightEpollOtherTask(t *testing.T) {
	tr := startScenario(t, "inflight", t.TempDir(), envN+"=split")
	img := filepath.Join(t.TempDir(), "img")
	doDump(t, tr.pid, img, false)
	tr.cmd.Wait()
	critCheck(t, img)
	set, err := images.Load(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Tasks) != 2 {
		t.Fatalf("%d tasks, want 2", len(set.Tasks))
	}
	root, child := set.Tasks[0], set.Tasks[1]
	if root.Pid > child.Pid {
		t.Skipf("the child got a lower pid (%d < %d) than the root: the case needs the root lowest", child.Pid, root.Pid)
	}
	sk := child.Fds.Lookup(4)
	if sk == nil || root.Fds.Lookup(ifSock) != nil {
		t.Fatalf("the child must hold the receiving socket at 4 and the root not at %d", ifSock)
	}
	var ep *criupb.EventpollFileEntry
	for _, f := range set.FileOrder {
		if f.Type == criupb.FdTypes_EVENTPOLL {
			if len(f.Fds) != 0 || ep != nil {
				t.Fatalf("epoll %s: want one, in flight only", f.Name())
			}
			ep = f.Entry.GetEpfd()
		}
	}
	if ep == nil {
		t.Fatal("no epoll set in files.img")
	}
	var tfds []uint32
	for _, te := range ep.GetTfd() {
		tfds = append(tfds, te.GetTfd())
	}
	slices.Sort(tfds)
	if !slices.Equal(tfds, []uint32{ifPipeR, ifWatched}) {
		t.Errorf("epoll targets recorded as fds %v, want the root's [20 22]", tfds)
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
	t.Cleanup(func() {
		for _, p := range res.PidMap {
			syscall.Kill(p, syscall.SIGKILL)
		}
		var ws syscall.WaitStatus
		syscall.Wait4(res.RootPid, &ws, 0, nil)
	})
	pidfd, err := unix.PidfdOpen(res.PidMap[child.Pid], 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	s, err := unix.PidfdGetfd(pidfd, 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	buf, oob := make([]byte, 64), make([]byte, unix.CmsgSpace(2*4))
	n, oobn, _, _, err := unix.Recvmsg(s, buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	if err != nil || string(buf[:n]) != ifMessage {
		t.Fatalf("recvmsg on the restored child's fd 4: %q, %v", buf[:n], err)
	}
	fds, err := rightsOf(oob[:oobn])
	for _, fd := range fds {
		defer unix.Close(fd)
	}
	if err != nil || len(fds) != 2 {
		t.Fatalf("restored message carries %d fds (%v), want 2", len(fds), err)
	}
	var v [8]byte
	if n, err := unix.Read(fds[0], v[:]); n != 8 || err != nil || v[0] != ifCounter {
		t.Errorf("eventfd: read %d %v (%v), want counter %d", n, v, err, ifCounter)
	}
	evs := make([]unix.EpollEvent, 8)
	n, err = unix.EpollWait(fds[1], evs, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ready []string
	for _, e := range evs[:n] {
		ready = append(ready, fmt.Sprintf("%#x:%#x", e.Fd, e.Events))
	}
	slices.Sort(ready)
	if want := []string{"0x20:0x1", "0x22:0x1"}; !slices.Equal(ready, want) {
		t.Errorf("epoll_wait on the restored set: %q, want %q", ready, want)
	}
	// The targets are the child's files too (shared descriptions).
	for i, fd := range []int{5, 6} {
		slot := &kcmpEpollSlot{efd: uint32(fds[1]), tfd: []uint32{ifPipeR, ifWatched}[i]}
		if r, err := kcmpEpollTarget(res.PidMap[child.Pid], fd, os.Getpid(), slot); err != nil || r != 0 {
			t.Errorf("kcmp(KCMP_EPOLL_TFD) restored child fd %d vs registration: %d, %v", fd, r, err)
		}
	}
}

// TestDumpInflightEpollAlsoHeld: an epoll set both in flight and held by
// the task (at a number above the socket that carries it, so the dump
// meets it in flight first) is one description, recorded with the task's
// fds as targets; restored, the set received is the task's fd 30.
func TestDumpInflightEpollAlsoHeld(t *testing.T) {
	tr := startScenario(t, "inflight", t.TempDir(), envN+"=held")
	img := filepath.Join(t.TempDir(), "img")
	doDump(t, tr.pid, img, false)
	tr.cmd.Wait()
	critCheck(t, img)
	set, err := images.Load(img)
	if err != nil {
		t.Fatal(err)
	}
	task := set.TaskByPid[uint32(tr.pid)]
	fd := task.Fds.Lookup(30)
	if fd == nil || fd.File.Type != criupb.FdTypes_EVENTPOLL {
		t.Fatalf("fd 30: %v, want the epoll set", fd)
	}
	tfds := fd.File.Entry.GetEpfd().GetTfd()
	if len(tfds) != 1 || tfds[0].GetTfd() != ifPipeR || tfds[0].GetData() != 0x20 {
		t.Errorf("epoll registrations %v, want fd 20 with data 0x20", tfds)
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
	t.Cleanup(func() {
		for _, p := range res.PidMap {
			syscall.Kill(p, syscall.SIGKILL)
		}
		var ws syscall.WaitStatus
		syscall.Wait4(res.RootPid, &ws, 0, nil)
	})
	pidfd, err := unix.PidfdOpen(res.RootPid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	s, err := unix.PidfdGetfd(pidfd, ifSock, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	buf, oob := make([]byte, 64), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(s, buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	if err != nil || string(buf[:n]) != ifMessage {
		t.Fatalf("recvmsg: %q, %v", buf[:n], err)
	}
	fds, err := rightsOf(oob[:oobn])
	for _, fd := range fds {
		defer unix.Close(fd)
	}
	if err != nil || len(fds) != 1 {
		t.Fatalf("restored message carries %d fds (%v), want 1", len(fds), err)
	}
	if r, err := kcmp(res.RootPid, os.Getpid(), kcmpFile, 30, fds[0]); err != nil || r != 0 {
		t.Errorf("kcmp(KCMP_FILE) restored fd 30 vs the set received: %d, %v; want the same description", r, err)
	}
	evs := make([]unix.EpollEvent, 4)
	if n, err := unix.EpollWait(fds[0], evs, 0); err != nil || n != 1 || evs[0].Fd != 0x20 || evs[0].Events != unix.EPOLLIN {
		t.Errorf("epoll_wait: %d %+v, %v; want the pipe ready with data 0x20", n, evs[:max(n, 0)], err)
	}
}

// TestDumpInflightEpollNested: an epoll set in flight in the queue of a
// socket that is itself only in flight, in the task's queue: restore
// refills the inner queue in the task that refills the outer one, so the
// targets are that task's fds (20, 22). Restored, the set arrives through
// both queues and reports both targets ready.
func TestDumpInflightEpollNested(t *testing.T) {
	tr := startScenario(t, "inflight", t.TempDir(), envN+"=nested")
	img := filepath.Join(t.TempDir(), "img")
	doDump(t, tr.pid, img, false)
	tr.cmd.Wait()
	critCheck(t, img)
	set, err := images.Load(img)
	if err != nil {
		t.Fatal(err)
	}
	var tfds []uint32
	for _, f := range set.FileOrder {
		if f.Type == criupb.FdTypes_EVENTPOLL {
			for _, te := range f.Entry.GetEpfd().GetTfd() {
				tfds = append(tfds, te.GetTfd())
			}
		}
	}
	slices.Sort(tfds)
	if !slices.Equal(tfds, []uint32{ifPipeR, ifWatched}) {
		t.Errorf("epoll targets recorded as fds %v, want [20 22]", tfds)
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
	t.Cleanup(func() {
		for _, p := range res.PidMap {
			syscall.Kill(p, syscall.SIGKILL)
		}
		var ws syscall.WaitStatus
		syscall.Wait4(res.RootPid, &ws, 0, nil)
	})
	pidfd, err := unix.PidfdOpen(res.RootPid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	s, err := unix.PidfdGetfd(pidfd, ifSock, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	recv := func(fd int, want string) int {
		t.Helper()
		buf, oob := make([]byte, 64), make([]byte, unix.CmsgSpace(4))
		n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("recvmsg: %q, %v; want %q", buf[:n], err, want)
		}
		fds, err := rightsOf(oob[:oobn])
		for _, fd := range fds {
			t.Cleanup(func() { unix.Close(fd) })
		}
		if err != nil || len(fds) != 1 {
			t.Fatalf("%q carries %d fds (%v), want 1", want, len(fds), err)
		}
		return fds[0]
	}
	ep := recv(recv(s, ifMessage), "inner")
	evs := make([]unix.EpollEvent, 8)
	n, err := unix.EpollWait(ep, evs, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ready []string
	for _, e := range evs[:n] {
		ready = append(ready, fmt.Sprintf("%#x:%#x", e.Fd, e.Events))
	}
	slices.Sort(ready)
	if want := []string{"0x20:0x1", "0x22:0x1"}; !slices.Equal(ready, want) {
		t.Errorf("epoll_wait on the restored set: %q, want %q", ready, want)
	}
}
