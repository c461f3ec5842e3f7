package main

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Epoll scenarios: registrations are checked from inside the restored
// tasks with epoll_wait and /proc/self/fdinfo.

// epollRegs returns the registrations /proc/self/fdinfo shows for epoll
// fd: tfd -> "events data" (hex, as the kernel prints them).
func epollRegs(fd int) (map[int]string, error) {
	b, err := readFile("/proc/self/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		return nil, err
	}
	out := map[int]string{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || f[0] != "tfd:" || f[2] != "events:" || f[4] != "data:" {
			continue
		}
		n, err := strconv.Atoi(f[1])
		if err != nil {
			return nil, fmt.Errorf("fdinfo line %q: %w", line, err)
		}
		out[n] = f[3] + " " + f[5]
	}
	return out, nil
}

// checkRegs compares the registrations of epoll fd with want.
func (t *T) checkRegs(fd int, want map[int]string) {
	got, err := epollRegs(fd)
	if !t.Check(err, "fdinfo of the epoll set") {
		return
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fail("epoll fd %d registrations (tfd: events data) %v, want %v", fd, got, want)
	}
}

// ready returns data -> events of what epoll fd reports at once.
func ready(fd int) (map[uint64]uint32, error) {
	evs := make([]unix.EpollEvent, 32)
	for {
		n, err := unix.EpollWait(fd, evs, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		out := map[uint64]uint32{}
		for _, e := range evs[:n] {
			out[uint64(uint32(e.Fd))|uint64(uint32(e.Pad))<<32] = e.Events
		}
		return out, nil
	}
}

func (t *T) checkReady(fd int, want map[uint64]uint32, what string) {
	got, err := ready(fd)
	if !t.Check(err, "epoll_wait "+what) {
		return
	}
	if fmt.Sprintf("%x", got) != fmt.Sprintf("%x", want) {
		t.Fail("epoll_wait on fd %d %s: data:events %x, want %x", fd, what, got, want)
	}
}

func epollAdd(ep, fd int, events uint32, data uint64) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(uint32(data)), Pad: int32(uint32(data >> 32))}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl add fd %d to %d: %w", fd, ep, err)
	}
	return nil
}

// epollAt creates an epoll set at fd n (no FD_CLOEXEC: the suite takes a
// close-on-exec epoll for the Go runtime's).
func (t *T) epollAt(n int) error {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	return t.placeNew(ep, err, n)
}

const epET = 1 << 31

// epoll00: one epoll set E1 (fd 7) watching a pipe's read end (3, one
// byte queued) level-triggered, its write end (4) edge-triggered for
// EPOLLOUT, a FIFO (5, O_RDWR, one byte queued) with EPOLLONESHOT, an
// eventfd (6, counter 2) with 64-bit data, and the write end (11) of a
// second pipe (10, 11) registered through a duplicate at 12 that was
// closed, and its read end (10) with EPOLLEXCLUSIVE; E2 (fd 8) watches
// E1. After restore: fdinfo shows every
// registration with its tfd, events and data (the closed 12 as 11, the
// fd of the same file); epoll_wait reports exactly what is ready, then
// again without the edge-triggered and one-shot ones; E2 reports E1.
func init() {
	const evData = 0x66_0000_0006
	register("epoll00", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5, 6, 7, 8, 10, 11),
			Setup: func(t *T) error {
				if err := t.PipeAt(3, 4, 0); err != nil {
					return err
				}
				if err := WriteAll(4, []byte("x")); err != nil {
					return err
				}
				fifo := t.Path("fifo")
				if err := Mkfifo(fifo, 0o600); err != nil {
					return err
				}
				if err := t.OpenAt(fifo, unix.O_RDWR, 0, 5); err != nil {
					return err
				}
				if err := WriteAll(5, []byte("f")); err != nil {
					return err
				}
				ev, err := unix.Eventfd(2, unix.EFD_CLOEXEC)
				if err := t.placeNew(ev, err, 6); err != nil {
					return err
				}
				if err := t.PipeAt(10, 11, 0); err != nil {
					return err
				}
				if err := t.epollAt(7); err != nil {
					return err
				}
				if err := t.epollAt(8); err != nil {
					return err
				}
				for _, r := range []struct {
					fd     int
					events uint32
					data   uint64
				}{
					{3, unix.EPOLLIN, 0x3},
					{4, unix.EPOLLOUT | epET, 0x4},
					{5, unix.EPOLLIN | unix.EPOLLONESHOT, 0x5},
					{6, unix.EPOLLIN, evData},
				} {
					if err := epollAdd(7, r.fd, r.events, r.data); err != nil {
						return err
					}
				}
				if err := epollAdd(7, 10, unix.EPOLLIN|unix.EPOLLEXCLUSIVE, 0xa); err != nil {
					return err
				}
				if err := t.DupAt(11, 12); err != nil {
					return err
				}
				if err := epollAdd(7, 12, unix.EPOLLOUT, 0xc); err != nil {
					return err
				}
				unix.Close(12)
				return epollAdd(8, 7, unix.EPOLLIN, 0x7)
			},
			Verify: func(t *T) {
				for _, fd := range []int{7, 8} {
					t.CheckType(fd, "anon_inode:[eventpoll]")
					t.CheckCloexec(fd, false)
				}
				t.CheckType(6, "anon_inode:[eventfd]")
				// The registration made through 12 (closed) shows as 12
				// until a dump records it under 11, the fd of its file.
				viaDup := 11
				if !t.Restored {
					viaDup = 12
				}
				t.checkRegs(7, map[int]string{
					3:      "19 3",
					4:      "8000001c 4",
					5:      "40000019 5",
					6:      fmt.Sprintf("19 %x", evData),
					10:     "10000019 a",
					viaDup: "1c c",
				})
				t.checkRegs(8, map[int]string{7: "19 7"})
				t.checkReady(8, map[uint64]uint32{0x7: unix.EPOLLIN}, "(E2, nested)")
				t.checkReady(7, map[uint64]uint32{0x3: unix.EPOLLIN, 0x4: unix.EPOLLOUT, 0x5: unix.EPOLLIN, evData: unix.EPOLLIN, 0xc: unix.EPOLLOUT}, "(E1)")
				// Edge-triggered 0x4 and one-shot 0x5 are not reported again.
				t.checkReady(7, map[uint64]uint32{0x3: unix.EPOLLIN, evData: unix.EPOLLIN, 0xc: unix.EPOLLOUT}, "(E1, second time)")
				t.checkRegs(7, map[int]string{
					3:      "19 3",
					4:      "8000001c 4",
					5:      "40000000 5", // disarmed
					6:      fmt.Sprintf("19 %x", evData),
					10:     "10000019 a",
					viaDup: "1c c",
				})
				// Draining the pipe and the eventfd makes them quiet.
				b, err := ReadFull(3, 1)
				if t.Check(err, "read the queued byte") {
					t.CheckData("queued byte", b, []byte("x"))
				}
				var c [8]byte
				if n, err := unix.Read(6, c[:]); t.Check(err, "read the eventfd") && (n != 8 || c[0] != 2) {
					t.Fail("eventfd read %d bytes %v, want counter 2", n, c)
				}
				t.checkReady(7, map[uint64]uint32{0xc: unix.EPOLLOUT}, "(E1, pipe and eventfd drained)")
				// The pipe at 10/11 is the one registered through 12.
				unix.Close(10)
				t.checkReady(7, map[uint64]uint32{0xc: unix.EPOLLOUT | unix.EPOLLERR}, "(E1, read end of 11 closed)")
			},
		},
	})
}

// epoll-shared: the root creates an epoll set (3) watching a pipe's read
// end (4) and the child inherits it with the pipe (4, 5); one byte is
// queued. After restore both see the byte through the one shared set; the
// child reads it and the root's set goes quiet.
func init() {
	register("epoll-shared", map[string]*Role{
		"root": {
			Fds:      std(3, 4, 5),
			Children: children("child"),
			Setup: func(t *T) error {
				if err := t.PipeAt(4, 5, 0); err != nil {
					return err
				}
				if err := t.epollAt(3); err != nil {
					return err
				}
				if err := epollAdd(3, 4, unix.EPOLLIN, 0x44); err != nil {
					return err
				}
				if _, err := t.Spawn("child", nil); err != nil {
					return err
				}
				return WriteAll(5, []byte("s"))
			},
			Verify: func(t *T) {
				t.checkRegs(3, map[int]string{4: "19 44"})
				t.checkReady(3, map[uint64]uint32{0x44: unix.EPOLLIN}, "before the child reads")
				c := t.Child("child")
				t.Kick(c)
				if !t.WaitKick("the child's read") {
					return
				}
				t.checkReady(3, map[uint64]uint32{}, "after the child read the byte")
			},
		},
		"child": {
			Fds: std(3, 4, 5),
			Verify: func(t *T) {
				if !t.WaitKick("the root's first check") {
					return
				}
				t.checkRegs(3, map[int]string{4: "19 44"})
				t.checkReady(3, map[uint64]uint32{0x44: unix.EPOLLIN}, "in the child")
				b, err := ReadFull(4, 1)
				if t.Check(err, "read the byte") {
					t.CheckData("queued byte", b, []byte("s"))
				}
				t.Kick(unix.Getppid())
			},
		},
	})
}

// epoll01 (formerly crfail-epoll, from when the dumper refused epoll):
// the root holds an epoll instance (fd 3) watching the read end (4) of a
// pipe (4/5) with one byte queued.
func init() {
	register("epoll01", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5),
			Setup: func(t *T) error {
				if err := t.PipeAt(4, 5, 0); err != nil {
					return err
				}
				if err := t.epollAt(3); err != nil {
					return err
				}
				ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: 4}
				if err := unix.EpollCtl(3, unix.EPOLL_CTL_ADD, 4, &ev); err != nil {
					return err
				}
				return WriteAll(5, []byte("x"))
			},
			Verify: func(t *T) {
				t.CheckType(3, "anon_inode:[eventpoll]")
				evs := make([]unix.EpollEvent, 4)
				n, err := unix.EpollWait(3, evs, 1000)
				if t.Check(err, "epoll_wait") && (n != 1 || evs[0].Fd != 4 || evs[0].Events&unix.EPOLLIN == 0) {
					t.Fail("epoll_wait: %d events %+v, want EPOLLIN on fd 4", n, evs[:max(n, 0)])
				}
				b, err := ReadFull(4, 1)
				if t.Check(err, "read the queued byte") && string(b) != "x" {
					t.Fail("queued byte %q, want x", b)
				}
			},
		},
	})
}
