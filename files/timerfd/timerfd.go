// Package timerfd restores timerfd descriptions: the clock, the settime
// flags, the remaining time and interval, and the expirations not yet read.
//
// The images record the time left until the next expiration (what
// /proc/PID/fdinfo shows), also for a timer set with TFD_TIMER_ABSTIME:
// such a timer is set again to expire that long after the restore, as an
// absolute time on its clock. A periodic timer that expired and was not
// read yet shows no time left; it is set to expire one interval after the
// restore, with its unread expirations restored as ticks.
package timerfd

import (
	"fmt"
	"runtime"
	"unsafe"

	"github.com/fdrestore/fdrestore/files"
	"golang.org/x/sys/unix"
)

// Type is the opener type name.
const Type = "timerfd"

// TFD_IOC_SET_TICKS is _IOW('T', 0, u64): it needs CONFIG_CHECKPOINT_RESTORE.
const iocSetTicks = 0x40085400

// Params describes one timerfd description.
type Params struct {
	File         uint32
	Flags        uint32 // access mode and status flags (f_flags)
	Fown         files.Fown
	Clock        uint32 // CLOCK_REALTIME, CLOCK_MONOTONIC, ...
	Ticks        uint64 // expirations not yet read
	SettimeFlags uint32 // TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET
	Value        unix.Timespec
	Interval     unix.Timespec
}

// MarshalBinary encodes p for OpenSpec.Data.
func (p Params) MarshalBinary() ([]byte, error) {
	var e files.Enc
	e.Uint(uint64(p.File))
	e.Uint(uint64(p.Flags))
	e.Fown(p.Fown)
	e.Uint(uint64(p.Clock))
	e.Uint(p.Ticks)
	e.Uint(uint64(p.SettimeFlags))
	e.Uint(uint64(p.Value.Sec))
	e.Uint(uint64(p.Value.Nsec))
	e.Uint(uint64(p.Interval.Sec))
	e.Uint(uint64(p.Interval.Nsec))
	return e.B, nil
}

// UnmarshalBinary decodes what MarshalBinary wrote.
func (p *Params) UnmarshalBinary(b []byte) error {
	d := files.Dec{B: b}
	p.File, p.Flags, p.Fown = d.Uint32(), d.Uint32(), d.Fown()
	p.Clock, p.Ticks, p.SettimeFlags = d.Uint32(), d.Uint(), d.Uint32()
	p.Value.Sec, p.Value.Nsec = int64(d.Uint()), int64(d.Uint())
	p.Interval.Sec, p.Interval.Nsec = int64(d.Uint()), int64(d.Uint())
	return d.Done()
}

// Check validates the recorded times.
func (p *Params) Check() error {
	for _, ts := range []struct {
		name string
		v    unix.Timespec
	}{{"value", p.Value}, {"interval", p.Interval}} {
		if ts.v.Sec < 0 || ts.v.Nsec < 0 || ts.v.Nsec >= 1e9 {
			return fmt.Errorf("timerfd %s (%d s, %d ns) is not a valid time", ts.name, ts.v.Sec, ts.v.Nsec)
		}
	}
	switch p.Clock {
	case unix.CLOCK_REALTIME, unix.CLOCK_MONOTONIC, unix.CLOCK_BOOTTIME, unix.CLOCK_REALTIME_ALARM, unix.CLOCK_BOOTTIME_ALARM:
	default:
		return fmt.Errorf("timerfd clock %d is not one timerfd_create accepts", p.Clock)
	}
	if p.SettimeFlags&^uint32(unix.TFD_TIMER_ABSTIME|unix.TFD_TIMER_CANCEL_ON_SET) != 0 {
		return fmt.Errorf("timerfd settime flags %#x: unknown bits", p.SettimeFlags)
	}
	return nil
}

// baseClock is the clock whose time an alarm clock's timer counts in.
func baseClock(c uint32) int32 {
	switch c {
	case unix.CLOCK_REALTIME_ALARM:
		return unix.CLOCK_REALTIME
	case unix.CLOCK_BOOTTIME_ALARM:
		return unix.CLOCK_BOOTTIME
	}
	return int32(c)
}

func add(a, b unix.Timespec) unix.Timespec {
	s := unix.Timespec{Sec: a.Sec + b.Sec, Nsec: a.Nsec + b.Nsec}
	if s.Nsec >= 1e9 {
		s.Sec, s.Nsec = s.Sec+1, s.Nsec-1e9
	}
	return s
}

func zero(t unix.Timespec) bool { return t.Sec == 0 && t.Nsec == 0 }

type opener struct{ p Params }

func (o *opener) Open(c *files.Context) (bool, error) {
	p := &o.p
	flags := 0
	ce := c.Cloexec(p.File)
	if ce {
		flags |= unix.TFD_CLOEXEC
	}
	if p.Flags&unix.O_NONBLOCK != 0 {
		flags |= unix.TFD_NONBLOCK
	}
	fd, err := unix.TimerfdCreate(int(p.Clock), flags)
	if err != nil {
		return false, fmt.Errorf("timerfd_create clock %d flags %#x: %w", p.Clock, flags, err)
	}
	fail := func(err error) (bool, error) {
		unix.Close(fd)
		return false, err
	}
	if err := Set(fd, p); err != nil {
		return fail(err)
	}
	if p.Ticks > 0 {
		// timerfd_settime clears the count: the ticks go in after it.
		if err := SetTicks(fd, p.Ticks); err != nil {
			return fail(fmt.Errorf("restore %d unread expirations: %w", p.Ticks, err))
		}
	}
	if p.Flags&files.StatusFlagsMask&^unix.O_NONBLOCK != 0 {
		if err := files.SetStatusFlags(fd, p.Flags); err != nil {
			return fail(fmt.Errorf("set flags %#o: %w", p.Flags, err))
		}
	}
	if err := p.Fown.Apply(c, fd); err != nil {
		return fail(err)
	}
	return true, c.AdoptCloexec([]uint32{p.File}, []int{fd}, ce)
}

// Set arms (or only configures) the timer behind fd as p records it: the
// remaining time counts from now, also for an absolute timer.
func Set(fd int, p *Params) error {
	if zero(p.Value) && zero(p.Interval) && p.SettimeFlags == 0 {
		return nil // disarmed, as created
	}
	its := unix.ItimerSpec{Value: p.Value, Interval: p.Interval}
	if zero(its.Value) && !zero(its.Interval) {
		// Expired and not read yet: the next period starts now.
		its.Value = its.Interval
	}
	if p.SettimeFlags&unix.TFD_TIMER_ABSTIME != 0 && !zero(its.Value) {
		var now unix.Timespec
		if err := unix.ClockGettime(baseClock(p.Clock), &now); err != nil {
			return fmt.Errorf("clock_gettime %d: %w", baseClock(p.Clock), err)
		}
		its.Value = add(now, its.Value)
	}
	if err := unix.TimerfdSettime(fd, int(p.SettimeFlags), &its, nil); err != nil {
		return fmt.Errorf("timerfd_settime flags %#x value %d.%09d interval %d.%09d: %w",
			p.SettimeFlags, its.Value.Sec, its.Value.Nsec, its.Interval.Sec, its.Interval.Nsec, err)
	}
	return nil
}

// SetTicks sets the count of unread expirations (TFD_IOC_SET_TICKS).
func SetTicks(fd int, ticks uint64) error {
	v := ticks
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), iocSetTicks, uintptr(unsafe.Pointer(&v)))
	runtime.KeepAlive(&v)
	if e != 0 {
		if e == unix.ENOTTY || e == unix.EINVAL {
			return fmt.Errorf("TFD_IOC_SET_TICKS: %w (the kernel lacks CONFIG_CHECKPOINT_RESTORE)", e)
		}
		return fmt.Errorf("TFD_IOC_SET_TICKS: %w", e)
	}
	return nil
}

func init() {
	files.Register(Type, func(spec *files.OpenSpec) (files.Opener, error) {
		o := &opener{}
		if err := files.DecodeData(spec.Data, &o.p); err != nil {
			return nil, fmt.Errorf("timerfd parameters: %w", err)
		}
		if len(spec.Files) != 1 || spec.Files[0] != o.p.File {
			return nil, fmt.Errorf("timerfd parameters name file id %d where the plan has %v", o.p.File, spec.Files)
		}
		if err := o.p.Check(); err != nil {
			return nil, err
		}
		return o, nil
	})
}
