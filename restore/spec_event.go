package restore

import (
	"fmt"
	"math"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/files/eventfd"
	"github.com/fdrestore/fdrestore/files/signalfd"
	"github.com/fdrestore/fdrestore/files/timerfd"
	"github.com/fdrestore/fdrestore/images"
	"golang.org/x/sys/unix"
)

// entryErr is the error of a bad field of f's files.img entry.
func entryErr(f *images.File, field, format string, args ...any) error {
	return fmt.Errorf("files.img entry %d (%s): %s: %s", f.Index, f.Name(), field, fmt.Sprintf(format, args...))
}

// planSingle gives the one-description spec of f to its creator.
func (pl *planner) planSingle(f *images.File, typ, name string, data []byte, err error) error {
	hs := pl.holders(f)
	if len(hs) == 0 {
		pl.unsupported(f)
		return nil
	}
	c := pl.creator(hs)
	spec := files.OpenSpec{Type: typ, Files: []uint32{f.ID}, SendTo: [][]uint32{pl.others(hs, c)}, Data: data, Name: name}
	return pl.add(c, spec, err)
}

// planEventfd plans an eventfd: its counter, flags and semaphore mode
// (fdrestore's own field; CRIU does not record it).
func (pl *planner) planEventfd(f *images.File) error {
	e := f.Entry.GetEfd()
	if e.GetCounter() > eventfd.MaxCounter {
		return entryErr(f, "efd.counter", "%#x exceeds the largest eventfd counter %#x", e.GetCounter(), uint64(eventfd.MaxCounter))
	}
	p := eventfd.Params{File: f.ID, Flags: e.GetFlags(), Fown: fownFrom(e.GetFown()), Counter: e.GetCounter(), Semaphore: e.GetSemaphore()}
	data, err := p.MarshalBinary()
	return pl.planSingle(f, eventfd.Type, fmt.Sprintf("eventfd (file id %d)", f.ID), data, err)
}

// planSignalfd plans a signalfd: its mask and flags.
func (pl *planner) planSignalfd(f *images.File) error {
	e := f.Entry.GetSgfd()
	p := signalfd.Params{File: f.ID, Flags: e.GetFlags(), Fown: fownFrom(e.GetFown()), Mask: e.GetSigmask()}
	data, err := p.MarshalBinary()
	return pl.planSingle(f, signalfd.Type, fmt.Sprintf("signalfd mask %#x (file id %d)", p.Mask, f.ID), data, err)
}

// planTimerfd plans a timerfd: clock, settime flags, time left, interval
// and unread expirations.
func (pl *planner) planTimerfd(f *images.File) error {
	e := f.Entry.GetTfd()
	for _, v := range []struct {
		field string
		v     uint64
	}{{"tfd.vsec", e.GetVsec()}, {"tfd.isec", e.GetIsec()}} {
		if v.v > math.MaxInt64/2 {
			return entryErr(f, v.field, "%d seconds is out of range", v.v)
		}
	}
	for _, v := range []struct {
		field string
		v     uint64
	}{{"tfd.vnsec", e.GetVnsec()}, {"tfd.insec", e.GetInsec()}} {
		if v.v >= 1e9 {
			return entryErr(f, v.field, "%d nanoseconds is not below one second", v.v)
		}
	}
	p := timerfd.Params{
		File: f.ID, Flags: e.GetFlags(), Fown: fownFrom(e.GetFown()),
		Clock: e.GetClockid(), Ticks: e.GetTicks(), SettimeFlags: e.GetSettimeFlags(),
		Value:    unix.Timespec{Sec: int64(e.GetVsec()), Nsec: int64(e.GetVnsec())},
		Interval: unix.Timespec{Sec: int64(e.GetIsec()), Nsec: int64(e.GetInsec())},
	}
	if err := p.Check(); err != nil {
		return entryErr(f, "tfd", "%v", err)
	}
	if p.SettimeFlags&unix.TFD_TIMER_ABSTIME != 0 && (p.Value.Sec != 0 || p.Value.Nsec != 0) {
		pl.p.Warnings = append(pl.p.Warnings, fmt.Sprintf("%s: absolute timer (TFD_TIMER_ABSTIME) on clock %d: the images record the time left, so it expires %d.%09ds after the restore, not at its original time",
			f.Name(), p.Clock, p.Value.Sec, p.Value.Nsec))
	}
	data, err := p.MarshalBinary()
	return pl.planSingle(f, timerfd.Type, fmt.Sprintf("timerfd clock %d (file id %d)", p.Clock, f.ID), data, err)
}
