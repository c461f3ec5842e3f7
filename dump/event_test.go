package dump

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
)

// epollRoot builds the epoll scenario: a pipe (20, 21) holding bytes, an
// eventfd (22), a signalfd (23), timerfds (24 periodic, 25 absolute, 27
// expired once and not read), an epoll set (26) watching 20, 22 and 24 and
// the signalfd through fd 40, which is closed afterwards, and an epoll set
// (28) watching 26. "epollbad" then registers the pipe's read end again
// through a duplicate at 41 that it closes: no fd is left for that
// registration.
func epollRoot(name string) {
	var p [2]int
	must(unix.Pipe2(p[:], 0), "pipe")
	moveFd(p[0], 20, false)
	moveFd(p[1], 21, false)
	writeAll(21, []byte("data"))
	fd, err := unix.Eventfd(5, unix.EFD_SEMAPHORE|unix.EFD_NONBLOCK)
	must(err, "eventfd")
	moveFd(fd, 22, false)
	var set unix.Sigset_t
	set.Val[0] = 1<<(unix.SIGUSR1-1) | 1<<(unix.SIGPWR-1)
	fd, err = unix.Signalfd(-1, &set, 0)
	must(err, "signalfd")
	moveFd(fd, 23, false)
	fd, err = unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK)
	must(err, "timerfd")
	must(unix.TimerfdSettime(fd, 0, &unix.ItimerSpec{Value: unix.Timespec{Sec: 100}, Interval: unix.Timespec{Sec: 7}}, nil), "settime")
	moveFd(fd, 24, false)
	fd, err = unix.TimerfdCreate(unix.CLOCK_REALTIME, 0)
	must(err, "timerfd")
	var now unix.Timespec
	must(unix.ClockGettime(unix.CLOCK_REALTIME, &now), "clock_gettime")
	must(unix.TimerfdSettime(fd, unix.TFD_TIMER_ABSTIME|unix.TFD_TIMER_CANCEL_ON_SET, &unix.ItimerSpec{Value: unix.Timespec{Sec: now.Sec + 1000}}, nil), "settime")
	moveFd(fd, 25, false)
	fd, err = unix.TimerfdCreate(unix.CLOCK_MONOTONIC, 0)
	must(err, "timerfd")
	must(unix.TimerfdSettime(fd, 0, &unix.ItimerSpec{Value: unix.Timespec{Nsec: 1}}, nil), "settime")
	moveFd(fd, 27, false)
	ep, err := unix.EpollCreate1(0)
	must(err, "epoll_create1")
	moveFd(ep, 26, false)
	add := func(ep, fd int, events uint32, data uint32) {
		must(unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: events, Fd: int32(data)}), fmt.Sprintf("epoll_ctl add %d", fd))
	}
	add(26, 20, unix.EPOLLIN, 0x20)
	add(26, 22, unix.EPOLLIN|unix.EPOLLET, 0x22)
	add(26, 24, unix.EPOLLIN|unix.EPOLLONESHOT, 0x24)
	must(unix.Dup3(23, 40, 0), "dup 23 -> 40")
	add(26, 40, unix.EPOLLIN, 0x23)
	unix.Close(40)
	ep, err = unix.EpollCreate1(0)
	must(err, "epoll_create1")
	moveFd(ep, 28, false)
	add(28, 26, unix.EPOLLIN, 0x26)
	if name == "epollbad" {
		must(unix.Dup3(20, 41, 0), "dup 20 -> 41")
		add(26, 41, unix.EPOLLIN, 0x41)
		unix.Close(41)
	}
	ts := unix.Timespec{Nsec: 20e6} // let timer 27 expire
	unix.Nanosleep(&ts, nil)
	signalReady(3)
}

// TestDumpEpollEventfdSignalfdTimerfd dumps the epoll scenario and checks
// the entries: registrations (one rewritten from a closed fd to the fd
// of the same file), eventfd counter and semaphore mode, signalfd mask,
// timerfd clock, flags, times and ticks.
func TestDumpEpollEventfdSignalfdTimerfd(t *testing.T) {
	tr := startScenario(t, "epoll", t.TempDir())
	img := filepath.Join(t.TempDir(), "img")
	start := time.Now()
	doDump(t, tr.pid, img, true)
	set, err := images.Load(img)
	if err != nil {
		t.Fatal(err)
	}
	task := set.TaskByPid[uint32(tr.pid)]
	at := func(n uint32) *criupb.FileEntry {
		t.Helper()
		fd := task.Fds.Lookup(n)
		if fd == nil {
			t.Fatalf("no fd %d in the images", n)
		}
		return fd.File.Entry
	}
	type reg struct {
		tfd, events uint32
		data        uint64
	}
	regs := func(fe *criupb.FileEntry) []reg {
		var out []reg
		for _, r := range fe.GetEpfd().GetTfd() {
			out = append(out, reg{r.GetTfd(), r.GetEvents(), r.GetData()})
			if r.GetId() != fe.GetId() {
				t.Errorf("tfd entry id %d, epoll id %d", r.GetId(), fe.GetId())
			}
		}
		slices.SortFunc(out, func(a, b reg) int { return int(a.data) - int(b.data) })
		return out
	}
	const eh = unix.EPOLLERR | unix.EPOLLHUP
	want := []reg{{20, unix.EPOLLIN | eh, 0x20}, {22, unix.EPOLLIN | eh | 1<<31, 0x22}, {23, unix.EPOLLIN | eh, 0x23}, {24, unix.EPOLLIN | eh | unix.EPOLLONESHOT, 0x24}}
	if got := regs(at(26)); !slices.Equal(got, want) {
		t.Errorf("epoll fd 26: %+v, want %+v (the signalfd registered through closed fd 40 recorded as fd 23)", got, want)
	}
	if got := regs(at(28)); !slices.Equal(got, []reg{{26, unix.EPOLLIN | eh, 0x26}}) {
		t.Errorf("epoll fd 28: %+v", got)
	}
	if ef := at(22).GetEfd(); ef.GetCounter() != 5 || !ef.GetSemaphore() || ef.GetFlags() != unix.O_RDWR|unix.O_NONBLOCK {
		t.Errorf("eventfd: %v", ef)
	}
	if sg := at(23).GetSgfd(); sg.GetSigmask() != 1<<(unix.SIGUSR1-1)|1<<(unix.SIGPWR-1) || sg.GetFlags() != unix.O_RDWR {
		t.Errorf("signalfd: %v", sg)
	}
	el := uint64(time.Since(start)/time.Second) + 1
	if tf := at(24).GetTfd(); tf.GetClockid() != unix.CLOCK_MONOTONIC || tf.GetSettimeFlags() != 0 || tf.GetIsec() != 7 || tf.GetInsec() != 0 ||
		tf.GetVsec() > 99 || tf.GetVsec() < 99-el || tf.GetTicks() != 0 || tf.GetFlags() != unix.O_RDWR|unix.O_NONBLOCK {
		t.Errorf("periodic timerfd: %v", tf)
	}
	if tf := at(25).GetTfd(); tf.GetClockid() != unix.CLOCK_REALTIME || tf.GetSettimeFlags() != unix.TFD_TIMER_ABSTIME|unix.TFD_TIMER_CANCEL_ON_SET ||
		tf.GetVsec() > 999 || tf.GetVsec() < 999-el-1 || tf.GetIsec() != 0 {
		t.Errorf("absolute timerfd: %v", tf)
	}
	if tf := at(27).GetTfd(); tf.GetTicks() != 1 || tf.GetVsec() != 0 || tf.GetVnsec() != 0 {
		t.Errorf("expired timerfd: %v, want 1 tick and no time left", tf)
	}
	critCheck(t, img)
}

// TestDumpRefusesLostEpollTarget: a registration whose file is open in the
// task only at a number another registration of that file uses cannot be
// recorded; the dump refuses, naming the epoll set, and leaves the tree
// running.
func TestDumpRefusesLostEpollTarget(t *testing.T) {
	tr := startScenario(t, "epollbad", t.TempDir())
	img := filepath.Join(t.TempDir(), "img")
	_, err := Dump(context.Background(), tr.pid, img, Options{Timeout: 20 * time.Second})
	var ue *UnsupportedError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d fd 26: an epoll set whose target registered as fd 41", tr.pid)) {
		t.Fatalf("dump: %v, want a refusal naming pid %d fd 26 and target fd 41", err, tr.pid)
	}
	t.Logf("refused: %v", err)
	if unix.Kill(tr.pid, 0) != nil {
		t.Errorf("the tree is gone after a refused dump")
	}
}
