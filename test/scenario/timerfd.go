package main

import (
	"fmt"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

const (
	tfdValue = 60 * time.Second // the one-shot timers' time
	tfdWait  = 1200 * time.Millisecond
)

func monoNow() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

func tsDur(ts unix.Timespec) time.Duration { return time.Duration(ts.Nano()) }

// timerfd00: fd 3 is a CLOCK_MONOTONIC one-shot timer set to 60 s
// (relative), fd 4 a CLOCK_REALTIME timer set to now + 60 s with
// TFD_TIMER_ABSTIME|TFD_TIMER_CANCEL_ON_SET, fd 5 a CLOCK_BOOTTIME timer
// (O_NONBLOCK) that expired once after 1 ms and repeats every hour, fd 6 a
// one-shot that expired and was not read. Setup waits 1.2 s after arming.
// After restore: clocks, settime flags and intervals as set; the time left
// on 3 and 4 is at most 60 s less those 1.2 s (it is not reset) and at
// least 60 s less the time since they were armed; 5 and 6 read one
// expiration each.
func init() {
	register("timerfd00", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5, 6),
			Setup: func(t *T) error {
				armed := monoNow()
				fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC)
				if err := t.placeNew(fd, err, 3); err != nil {
					return err
				}
				if err := unix.TimerfdSettime(3, 0, &unix.ItimerSpec{Value: unix.NsecToTimespec(int64(tfdValue))}, nil); err != nil {
					return err
				}
				fd, err = unix.TimerfdCreate(unix.CLOCK_REALTIME, unix.TFD_CLOEXEC)
				if err := t.placeNew(fd, err, 4); err != nil {
					return err
				}
				var now unix.Timespec
				if err := unix.ClockGettime(unix.CLOCK_REALTIME, &now); err != nil {
					return err
				}
				abs := unix.NsecToTimespec(now.Nano() + int64(tfdValue))
				if err := unix.TimerfdSettime(4, unix.TFD_TIMER_ABSTIME|unix.TFD_TIMER_CANCEL_ON_SET, &unix.ItimerSpec{Value: abs}, nil); err != nil {
					return err
				}
				fd, err = unix.TimerfdCreate(unix.CLOCK_BOOTTIME, unix.TFD_CLOEXEC|unix.TFD_NONBLOCK)
				if err := t.placeNew(fd, err, 5); err != nil {
					return err
				}
				if err := unix.TimerfdSettime(5, 0, &unix.ItimerSpec{Value: unix.Timespec{Nsec: 1e6}, Interval: unix.Timespec{Sec: 3600}}, nil); err != nil {
					return err
				}
				fd, err = unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC)
				if err := t.placeNew(fd, err, 6); err != nil {
					return err
				}
				if err := unix.TimerfdSettime(6, 0, &unix.ItimerSpec{Value: unix.Timespec{Nsec: 1e6}}, nil); err != nil {
					return err
				}
				// Remember when the timers were armed (CLOCK_MONOTONIC is
				// the same for the restored task).
				p := t.Path("armed")
				f, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o600)
				if err != nil {
					return err
				}
				err = WriteAll(f, []byte(strconv.FormatInt(int64(armed), 10)))
				unix.Close(f)
				if err != nil {
					return err
				}
				sleep(tfdWait)
				return nil
			},
			Verify: func(t *T) {
				b, err := readFile(t.Path("armed"))
				if !t.Check(err, "read the arming time") {
					return
				}
				armed, err := strconv.ParseInt(string(b), 10, 64)
				if !t.Check(err, "arming time") {
					return
				}
				// Measured after each timerfd_gettime: the bound holds
				// even when no dump stopped the clock (flavor nocr).
				since := func() time.Duration { return monoNow() - time.Duration(armed) }
				for fd := 3; fd <= 6; fd++ {
					t.CheckType(fd, "anon_inode:[timerfd]")
					t.CheckCloexec(fd, false)
				}
				t.CheckFlags(5, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDWR|unix.O_NONBLOCK)
				t.CheckFlags(3, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDWR)
				for fd, want := range map[int][2]string{3: {"1", "00"}, 4: {"0", "03"}, 5: {"7", "00"}, 6: {"1", "00"}} {
					t.checkFdinfo(fd, "clockid", want[0])
					t.checkFdinfo(fd, "settime flags", want[1])
				}
				for _, fd := range []int{3, 4} {
					var cur unix.ItimerSpec
					if !t.Check(unix.TimerfdGettime(fd, &cur), "timerfd_gettime") {
						continue
					}
					left, el := tsDur(cur.Value), since()
					if left > tfdValue-tfdWait || left < tfdValue-el {
						t.Fail("timerfd %d: %v left, want at most %v (not reset) and at least %v", fd, left, tfdValue-tfdWait, tfdValue-el)
					}
					if !(cur.Interval.Sec == 0 && cur.Interval.Nsec == 0) {
						t.Fail("timerfd %d interval %v, want none", fd, tsDur(cur.Interval))
					}
				}
				var cur unix.ItimerSpec
				if t.Check(unix.TimerfdGettime(5, &cur), "timerfd_gettime") {
					if el := since(); tsDur(cur.Interval) != time.Hour || tsDur(cur.Value) > time.Hour || tsDur(cur.Value) < time.Hour-el {
						t.Fail("periodic timerfd: %v left, interval %v; want an hour each, less the time since arming", tsDur(cur.Value), tsDur(cur.Interval))
					}
				}
				t.checkFdinfo(5, "ticks", "1")
				t.checkFdinfo(6, "ticks", "1")
				for _, fd := range []int{5, 6} {
					if n, err := readCounter(fd); t.Check(err, fmt.Sprintf("read timerfd %d", fd)) && n != 1 {
						t.Fail("timerfd %d: %d expirations, want 1", fd, n)
					}
				}
				if _, err := readCounter(5); err != unix.EAGAIN {
					t.Fail("second read of periodic timerfd 5: %v, want EAGAIN", err)
				}
			},
		},
	})
}
