package main

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

func std(fds ...int) func(*T) []int {
	return func(*T) []int { return append([]int{0, 1, 2}, fds...) }
}

func children(roles ...string) func(*T) []string {
	return func(*T) []string { return roles }
}

// pipe00: crossed pipes. Root: 11 = pipeB.w, 12 = pipeA.r; child:
// 11 = pipeA.w, 12 = pipeB.r. The child queues a 12-byte message in pipeA.
// After restore the root reads it, echoes it through pipeB and closes its
// write end; the child reads the echo, sends it back and closes; both see
// EOF at the end.
const pipe00Msg = "pipe00-ping\x00"

func init() {
	register("pipe00", map[string]*Role{
		"root": {
			Fds:      std(11, 12),
			Children: children("child"),
			Setup: func(t *T) error {
				var a, b [2]int
				if err := unix.Pipe2(a[:], unix.O_CLOEXEC); err != nil {
					return err
				}
				if err := unix.Pipe2(b[:], unix.O_CLOEXEC); err != nil {
					return err
				}
				for _, fd := range []*int{&a[0], &a[1], &b[0], &b[1]} {
					var err error
					if *fd, err = t.hi(*fd); err != nil {
						return err
					}
				}
				// The child's ends first, at the numbers the root uses for
				// the other pipe.
				if err := t.DupAt(a[1], 11); err != nil {
					return err
				}
				if err := t.DupAt(b[0], 12); err != nil {
					return err
				}
				if _, err := t.Spawn("child", nil); err != nil {
					return err
				}
				if err := t.Place(b[1], 11); err != nil {
					return err
				}
				if err := t.Place(a[0], 12); err != nil {
					return err
				}
				unix.Close(a[1])
				unix.Close(b[0])
				return nil
			},
			Verify: func(t *T) {
				t.CheckType(11, "pipe:")
				t.CheckType(12, "pipe:")
				t.CheckFlags(11, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_WRONLY)
				t.CheckFlags(12, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDONLY)
				msg, err := ReadFull(12, len(pipe00Msg))
				if !t.Check(err, "queued message") {
					return
				}
				t.CheckData("queued message", msg, []byte(pipe00Msg))
				if !t.Check(WriteAll(11, msg), "echo") {
					return
				}
				unix.Close(11)
				back, err := ReadFull(12, len(pipe00Msg))
				if t.Check(err, "second message") {
					t.CheckData("second message", back, []byte(pipe00Msg))
				}
				rest, err := ReadToEOF(12)
				if t.Check(err, "EOF on fd 12") && len(rest) > 0 {
					t.Fail("fd 12: %d unexpected bytes before EOF", len(rest))
				}
			},
		},
		"child": {
			Fds: std(11, 12),
			Setup: func(t *T) error {
				return WriteAll(11, []byte(pipe00Msg))
			},
			Verify: func(t *T) {
				t.CheckFlags(11, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_WRONLY)
				t.CheckFlags(12, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDONLY)
				msg, err := ReadFull(12, len(pipe00Msg))
				if !t.Check(err, "echo from root") {
					return
				}
				t.CheckData("echo from root", msg, []byte(pipe00Msg))
				t.Check(WriteAll(11, msg), "send back")
				unix.Close(11)
				rest, err := ReadToEOF(12)
				if t.Check(err, "EOF on fd 12") && len(rest) > 0 {
					t.Fail("fd 12: %d unexpected bytes before EOF", len(rest))
				}
			},
		},
	})
}

// pipe01: one pipe, six fds, four open file descriptions: 3 = r, 4 = w,
// 5 = dup(3), 6 = dup(4), 7 = reopen of r, 8 = reopen of w (through
// /proc/self/fd). O_NONBLOCK on the description of 4/6 only. The pipe is
// full: 16 chunks of 4 KiB, each CRC-tagged.
const (
	chunk       = 4096
	pipe01Count = 16
)

func init() {
	register("pipe01", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5, 6, 7, 8),
			Setup: func(t *T) error {
				if err := t.PipeAt(3, 4, 0); err != nil {
					return err
				}
				if err := t.DupAt(3, 5); err != nil {
					return err
				}
				if err := t.DupAt(4, 6); err != nil {
					return err
				}
				if err := t.OpenAt("/proc/self/fd/3", unix.O_RDONLY, 0, 7); err != nil {
					return err
				}
				if err := t.OpenAt("/proc/self/fd/4", unix.O_WRONLY, 0, 8); err != nil {
					return err
				}
				if _, err := unix.FcntlInt(4, unix.F_SETFL, unix.O_WRONLY|unix.O_NONBLOCK); err != nil {
					return err
				}
				n := 0
				for ; ; n++ {
					_, err := unix.Write(4, Datagen(uint32(n), chunk))
					if errors.Is(err, unix.EAGAIN) {
						break
					}
					if err != nil {
						return err
					}
				}
				if n != pipe01Count {
					return fmt.Errorf("pipe took %d chunks, want %d", n, pipe01Count)
				}
				return nil
			},
			Verify: func(t *T) {
				ino := Ino(3)
				for fd := 3; fd <= 8; fd++ {
					t.CheckType(fd, "pipe:")
					if Ino(fd) != ino {
						t.Fail("fd %d is pipe inode %d, fd 3 is %d", fd, Ino(fd), ino)
					}
				}
				for _, fd := range []int{3, 5, 7} {
					t.CheckFlags(fd, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDONLY)
				}
				t.CheckFlags(4, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_WRONLY|unix.O_NONBLOCK)
				t.CheckFlags(6, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_WRONLY|unix.O_NONBLOCK)
				t.CheckFlags(8, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_WRONLY)
				unix.Close(4)
				unix.Close(6)
				unix.Close(8)
				data, err := ReadToEOF(3)
				if !t.Check(err, "drain pipe") {
					return
				}
				if len(data) != pipe01Count*chunk {
					t.Fail("pipe held %d bytes, want %d", len(data), pipe01Count*chunk)
					return
				}
				for i := 0; i < pipe01Count; i++ {
					c := data[i*chunk : (i+1)*chunk]
					if !Datachk(c) {
						t.Fail("chunk %d: bad CRC", i)
						return
					}
					t.CheckData(fmt.Sprintf("chunk %d", i), c, Datagen(uint32(i), chunk))
				}
			},
		},
	})
}

// pipe03: two pipe2(O_NONBLOCK) pipes resized to 1 MiB (3/4 and 5/6);
// the first holds exactly 1 MiB.
const (
	pipe03Size   = 1 << 20
	pipe03Chunks = pipe03Size / chunk
)

func init() {
	register("pipe03", map[string]*Role{
		"root": {
			Fds: std(3, 4, 5, 6),
			Setup: func(t *T) error {
				if err := t.PipeAt(3, 4, unix.O_NONBLOCK); err != nil {
					return err
				}
				if err := t.PipeAt(5, 6, unix.O_NONBLOCK); err != nil {
					return err
				}
				for _, fd := range []int{4, 6} {
					if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETPIPE_SZ, pipe03Size); err != nil {
						return fmt.Errorf("F_SETPIPE_SZ: %w", err)
					}
				}
				for i := 0; i < pipe03Chunks; i++ {
					if n, err := unix.Write(4, Datagen(uint32(i), chunk)); err != nil || n != chunk {
						return fmt.Errorf("chunk %d: wrote %d: %v", i, n, err)
					}
				}
				return nil
			},
			Verify: func(t *T) {
				for fd := 3; fd <= 6; fd++ {
					sz, err := unix.FcntlInt(uintptr(fd), unix.F_GETPIPE_SZ, 0)
					if t.Check(err, fmt.Sprintf("fd %d: F_GETPIPE_SZ", fd)) && sz != pipe03Size {
						t.Fail("fd %d: pipe size %d, want %d", fd, sz, pipe03Size)
					}
					want := unix.O_RDONLY | unix.O_NONBLOCK
					if fd%2 == 0 {
						want = unix.O_WRONLY | unix.O_NONBLOCK
					}
					t.CheckFlags(fd, unix.O_ACCMODE|unix.O_NONBLOCK, want)
				}
				buf := make([]byte, chunk)
				for i := 0; i < pipe03Chunks; i++ {
					n, err := unix.Read(3, buf)
					if err != nil || n != chunk {
						t.Fail("read %d of %d: got %d bytes: %v", i, pipe03Chunks, n, err)
						return
					}
					if !Datachk(buf) {
						t.Fail("chunk %d: bad CRC", i)
						return
					}
				}
				if n, err := unix.Read(3, buf); !errors.Is(err, unix.EAGAIN) {
					t.Fail("pipe not empty after 1 MiB: read %d, %v", n, err)
				}
				if n, err := unix.Read(5, buf); !errors.Is(err, unix.EAGAIN) {
					t.Fail("second pipe not empty: read %d, %v", n, err)
				}
			},
		},
	})
}
