package epoll

import (
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/fdrestore/fdrestore/files"
	"golang.org/x/sys/unix"
)

func TestParamsRoundTrip(t *testing.T) {
	p := Params{File: 7, Flags: unix.O_RDWR | unix.O_NONBLOCK, Fown: files.Fown{PidType: 1, Pid: 3, Signum: 10}}
	b, _ := p.MarshalBinary()
	var q Params
	if err := q.UnmarshalBinary(b); err != nil || q != p {
		t.Fatalf("round trip: %+v, %v", q, err)
	}
	rp := RegParams{Epoll: 7, Regs: []Reg{
		{Target: 1, Tfd: 3, Events: 0x8000001d, Data: 1<<64 - 1, Mode: ModeAt},
		{Target: 2, Tfd: 100000, Events: 0x19, Data: 0, Mode: ModeOther},
	}}
	b, _ = rp.MarshalBinary()
	var rq RegParams
	if err := rq.UnmarshalBinary(b); err != nil || !reflect.DeepEqual(rq, rp) {
		t.Fatalf("round trip: %+v, %v", rq, err)
	}
	for i := range b {
		if err := new(RegParams).UnmarshalBinary(b[:i]); err == nil {
			t.Errorf("truncated to %d of %d bytes: no error", i, len(b))
		}
	}
	bad := RegParams{Epoll: 1, Regs: []Reg{{Mode: ModeOther + 1}}}
	b, _ = bad.MarshalBinary()
	if err := new(RegParams).UnmarshalBinary(b); err == nil {
		t.Errorf("unknown mode accepted")
	}
}

// TestRegisterModes registers through the three modes in this process
// and checks the tfd numbers fdinfo shows.
func TestRegisterModes(t *testing.T) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ep)
	var ev [3]int
	for i := range ev {
		if ev[i], err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(ev[i])
	}
	free := 900 // far above anything open
	if _, err := unix.FcntlInt(uintptr(free), unix.F_GETFD, 0); err == nil {
		t.Skip("fd 900 is open")
	}
	for _, r := range []struct {
		fd  int
		reg Reg
	}{
		{ev[0], Reg{Tfd: uint32(ev[0]), Events: unix.EPOLLIN, Data: 1, Mode: ModeAt}},
		{ev[1], Reg{Tfd: uint32(free), Events: unix.EPOLLIN, Data: 2, Mode: ModeFree}},
		// Free, but taken when registering: through the fd given.
		{ev[2], Reg{Tfd: uint32(ep), Events: unix.EPOLLIN, Data: 3, Mode: ModeFree}},
	} {
		if err := Register(nil, ep, r.fd, &r.reg); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := unix.FcntlInt(uintptr(free), unix.F_GETFD, 0); err != unix.EBADF {
		t.Errorf("the temporary duplicate at %d is still open (%v)", free, err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", ep))
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint64]int{}
	for _, line := range strings.Split(string(b), "\n") {
		var tfd int
		var events uint32
		var data uint64
		if n, _ := fmt.Sscanf(line, "tfd: %d events: %x data: %x", &tfd, &events, &data); n == 3 {
			got[data] = tfd
		}
	}
	if want := map[uint64]int{1: ev[0], 2: free, 3: ev[2]}; !reflect.DeepEqual(got, want) {
		t.Errorf("registrations (data: tfd) %v, want %v", got, want)
	}
}
