package main

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// unix-inflight-events: an eventfd, a timerfd, a signalfd and an epoll set
// that exist only in flight (issue 6). Stream pair 3/4, a pipe 5/6 with
// "pp" queued, an eventfd 7 (counter 2). Queued at 3: "events" carrying
//
//	[eventfd (counter 9, O_NONBLOCK), timerfd (CLOCK_MONOTONIC, 1000 s
//	left, 7 s interval, O_NONBLOCK), signalfd (SIGWINCH, O_NONBLOCK),
//	epoll set watching the pipe's read end (registered through a
//	duplicate at 12 that was closed: the task holds it at 5) with data 0x55 and
//	eventfd 7 with 64-bit data 0x77_0000_0007]
//
// and none of the four is open in the task. After restore the task
// receives them: the eventfd reads 9 then EAGAIN; the timer has its
// interval and most of its time left; the signalfd reads a SIGWINCH
// raised on the thread; the epoll set reports the pipe and eventfd 7
// ready with their data, registered at the task's fds 5 and 7.
func init() {
	const (
		counter  = 9
		timerSec = 1000
		timerInt = 7
		pipeData = 0x55
		efdData  = 0x77_0000_0007
	)
	register("unix-inflight-events", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5, 6, 7),
			Setup: func(t *T) error {
				if err := t.PairAt(unix.SOCK_STREAM, 3, 4); err != nil {
					return err
				}
				if err := t.PipeAt(5, 6, 0); err != nil {
					return err
				}
				if err := WriteAll(6, []byte("pp")); err != nil {
					return err
				}
				fd, err := unix.Eventfd(2, unix.EFD_CLOEXEC)
				if err := t.placeNew(fd, err, 7); err != nil {
					return err
				}
				var fly []int
				defer func() { closeAll(fly) }()
				take := func(fd int, err error) error {
					if err != nil {
						return err
					}
					if fd, err = t.hi(fd); err != nil {
						return err
					}
					fly = append(fly, fd)
					return nil
				}
				if err := take(unix.Eventfd(counter, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)); err != nil {
					return fmt.Errorf("eventfd: %w", err)
				}
				if err := take(unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)); err != nil {
					return fmt.Errorf("timerfd: %w", err)
				}
				its := unix.ItimerSpec{Value: unix.Timespec{Sec: timerSec}, Interval: unix.Timespec{Sec: timerInt}}
				if err := unix.TimerfdSettime(fly[1], 0, &its, nil); err != nil {
					return fmt.Errorf("timerfd_settime: %w", err)
				}
				var set unix.Sigset_t
				set.Val[0] = sigBit(sigfdA)
				if err := take(unix.Signalfd(-1, &set, unix.SFD_NONBLOCK|unix.SFD_CLOEXEC)); err != nil {
					return fmt.Errorf("signalfd: %w", err)
				}
				if err := take(unix.EpollCreate1(unix.EPOLL_CLOEXEC)); err != nil {
					return fmt.Errorf("epoll_create1: %w", err)
				}
				if err := t.DupAt(5, 12); err != nil {
					return err
				}
				err = epollAdd(fly[3], 12, unix.EPOLLIN, pipeData)
				unix.Close(12)
				if err != nil {
					return err
				}
				if err := epollAdd(fly[3], 7, unix.EPOLLIN, efdData); err != nil {
					return err
				}
				return unix.Sendmsg(4, []byte("events"), unix.UnixRights(fly...), nil, 0)
			},
			Verify: func(t *T) {
				t.CheckType(5, "pipe:")
				t.CheckType(7, "anon_inode:[eventfd]")
				got, fds, err := Recv(3)
				if !t.Check(err, "the message") {
					return
				}
				defer closeAll(fds)
				if string(got) != "events" || len(fds) != 4 {
					t.Fail("message %q with %d fds, want \"events\" with 4", got, len(fds))
					return
				}
				efd, tfd, sfd, ep := fds[0], fds[1], fds[2], fds[3]
				for i, typ := range []string{"eventfd", "timerfd", "signalfd", "eventpoll"} {
					t.CheckType(fds[i], "anon_inode:["+typ+"]")
					want := unix.O_RDWR | unix.O_NONBLOCK
					if typ == "eventpoll" {
						want = unix.O_RDWR
					}
					t.CheckFlags(fds[i], unix.O_ACCMODE|unix.O_NONBLOCK, want)
				}
				// eventfd
				if v, err := readCounter(efd); t.Check(err, "read the eventfd") && v != counter {
					t.Fail("eventfd in flight counts %d, want %d", v, counter)
				}
				if _, err := readCounter(efd); err != unix.EAGAIN {
					t.Fail("second read of the eventfd: %v, want EAGAIN", err)
				}
				// timerfd
				var its unix.ItimerSpec
				if t.Check(unix.TimerfdGettime(tfd, &its), "timerfd_gettime") {
					left := time.Duration(its.Value.Nano())
					if its.Interval.Sec != timerInt || its.Interval.Nsec != 0 || left > timerSec*time.Second || left < (timerSec-300)*time.Second {
						t.Fail("timerfd in flight: interval %v, %v left; want %d s and nearly %d s", time.Duration(its.Interval.Nano()), left, timerInt, timerSec)
					}
				}
				t.checkFdinfo(tfd, "clockid", fmt.Sprint(unix.CLOCK_MONOTONIC))
				// signalfd
				t.checkFdinfo(sfd, "sigmask", fmt.Sprintf("%016x", sigBit(sigfdA)))
				t.checkSigfdA(sfd, "signalfd in flight")
				// epoll
				// Registered through 12 (closed): without C/R fdinfo
				// shows 12, restored the task's fd of the pipe, 5.
				viaDup := 5
				if !t.Restored {
					viaDup = 12
				}
				t.checkRegs(ep, map[int]string{viaDup: fmt.Sprintf("%x %x", unix.EPOLLIN|unix.EPOLLERR|unix.EPOLLHUP, pipeData),
					7: fmt.Sprintf("%x %x", unix.EPOLLIN|unix.EPOLLERR|unix.EPOLLHUP, uint64(efdData))})
				t.checkReady(ep, map[uint64]uint32{pipeData: unix.EPOLLIN, efdData: unix.EPOLLIN}, "on the set in flight")
				t.CheckQueueEmpty(3)
			},
		},
	})
}
