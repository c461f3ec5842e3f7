package main

import (
	"encoding/binary"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// fdinfoField returns the value of a "key:" line of /proc/self/fdinfo/fd.
func fdinfoField(fd int, key string) (string, error) {
	b, err := readFile("/proc/self/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == key {
			return strings.TrimSpace(v), nil
		}
	}
	return "", nil
}

func (t *T) checkFdinfo(fd int, key, want string) {
	v, err := fdinfoField(fd, key)
	if t.Check(err, "fdinfo") && v != want {
		t.Fail("fd %d fdinfo %q is %q, want %q", fd, key, v, want)
	}
}

// readCounter reads one 8-byte counter (eventfd, timerfd).
func readCounter(fd int) (uint64, error) {
	var b [8]byte
	for {
		n, err := unix.Read(fd, b[:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n != 8 {
			return 0, unix.EIO
		}
		return binary.NativeEndian.Uint64(b[:]), nil
	}
}

// eventfd00: fd 3 is an eventfd in semaphore mode with O_NONBLOCK and
// counter 3; fd 4 counts 2^40 (beyond eventfd2's 32-bit initial value);
// fd 5 is non-blocking at 0. After restore: flags and fdinfo as built;
// fd 3 reads 1 three times then EAGAIN; fd 4 reads 2^40; fd 5 EAGAIN.
func init() {
	register("eventfd00", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5),
			Setup: func(t *T) error {
				fd, err := unix.Eventfd(3, unix.EFD_SEMAPHORE|unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
				if err := t.placeNew(fd, err, 3); err != nil {
					return err
				}
				fd, err = unix.Eventfd(0, unix.EFD_CLOEXEC)
				if err := t.placeNew(fd, err, 4); err != nil {
					return err
				}
				var b [8]byte
				binary.NativeEndian.PutUint64(b[:], 1<<40)
				if err := WriteAll(4, b[:]); err != nil {
					return err
				}
				fd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
				return t.placeNew(fd, err, 5)
			},
			Verify: func(t *T) {
				for fd := 3; fd <= 5; fd++ {
					t.CheckType(fd, "anon_inode:[eventfd]")
					t.CheckCloexec(fd, false)
				}
				t.CheckFlags(3, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDWR|unix.O_NONBLOCK)
				t.CheckFlags(4, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDWR)
				t.CheckFlags(5, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDWR|unix.O_NONBLOCK)
				t.checkFdinfo(3, "eventfd-semaphore", "1")
				t.checkFdinfo(4, "eventfd-semaphore", "0")
				t.checkFdinfo(3, "eventfd-count", "3")
				t.checkFdinfo(4, "eventfd-count", strconv.FormatUint(1<<40, 16))
				for i := 0; i < 3; i++ {
					if v, err := readCounter(3); t.Check(err, "read semaphore eventfd") && v != 1 {
						t.Fail("semaphore eventfd read %d, want 1", v)
					}
				}
				if _, err := readCounter(3); err != unix.EAGAIN {
					t.Fail("fourth read of the semaphore eventfd: %v, want EAGAIN", err)
				}
				if v, err := readCounter(4); t.Check(err, "read eventfd 4") && v != 1<<40 {
					t.Fail("eventfd 4 read %d, want %d", v, uint64(1)<<40)
				}
				if _, err := readCounter(5); err != unix.EAGAIN {
					t.Fail("read of eventfd 5 at 0: %v, want EAGAIN", err)
				}
			},
		},
	})
}
