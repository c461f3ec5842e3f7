package timerfd

import (
	"encoding/binary"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestCheck(t *testing.T) {
	for _, p := range []Params{
		{Clock: unix.CLOCK_MONOTONIC, Value: unix.Timespec{Nsec: 1e9}},
		{Clock: unix.CLOCK_MONOTONIC, Interval: unix.Timespec{Sec: -1}},
		{Clock: unix.CLOCK_PROCESS_CPUTIME_ID},
		{Clock: unix.CLOCK_MONOTONIC, SettimeFlags: 4},
	} {
		if err := p.Check(); err == nil {
			t.Errorf("%+v accepted", p)
		}
	}
	p := Params{File: 3, Clock: unix.CLOCK_BOOTTIME, Ticks: 4, SettimeFlags: unix.TFD_TIMER_ABSTIME,
		Value: unix.Timespec{Sec: 5, Nsec: 6}, Interval: unix.Timespec{Sec: 7, Nsec: 8}}
	b, _ := p.MarshalBinary()
	var q Params
	if err := q.UnmarshalBinary(b); err != nil || q != p {
		t.Errorf("round trip %+v: %+v, %v", p, q, err)
	}
}

// TestSet arms timers as the images record them: an absolute one from
// its time left, an expired periodic one for one more interval, with its
// unread expirations restored.
func TestSet(t *testing.T) {
	get := func(fd int) (time.Duration, time.Duration) {
		var cur unix.ItimerSpec
		if err := unix.TimerfdGettime(fd, &cur); err != nil {
			t.Fatal(err)
		}
		return time.Duration(cur.Value.Nano()), time.Duration(cur.Interval.Nano())
	}
	abs, err := unix.TimerfdCreate(unix.CLOCK_REALTIME, unix.TFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(abs)
	if err := Set(abs, &Params{Clock: unix.CLOCK_REALTIME, SettimeFlags: unix.TFD_TIMER_ABSTIME, Value: unix.Timespec{Sec: 30}}); err != nil {
		t.Fatal(err)
	}
	if v, iv := get(abs); v > 30*time.Second || v < 29*time.Second || iv != 0 {
		t.Errorf("absolute timer: %v left, interval %v; want about 30s, none", v, iv)
	}
	per, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC|unix.TFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(per)
	if err := Set(per, &Params{Clock: unix.CLOCK_MONOTONIC, Interval: unix.Timespec{Sec: 2}}); err != nil {
		t.Fatal(err)
	}
	if err := SetTicks(per, 5); err != nil {
		t.Fatal(err)
	}
	if v, iv := get(per); v > 2*time.Second || v < time.Second || iv != 2*time.Second {
		t.Errorf("expired periodic timer: %v left, interval %v; want about 2s each", v, iv)
	}
	var b [8]byte
	if n, err := unix.Read(per, b[:]); n != 8 || err != nil || binary.NativeEndian.Uint64(b[:]) != 5 {
		t.Errorf("read: %d %v %v, want 5 expirations", n, err, b)
	}
	if v, _ := get(per); v < time.Second {
		t.Errorf("after reading the ticks the timer has %v left: it stopped", v)
	}
}
