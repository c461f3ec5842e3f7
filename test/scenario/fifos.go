package main

import (
	"encoding/binary"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// openNonblockRetry opens a FIFO without blocking (for O_WRONLY: retrying
// ENXIO until a reader exists) and clears O_NONBLOCK, so the result is
// what a blocking open gives, without hanging when the peer never comes.
func (t *T) openNonblockRetry(path string, flags, target int) error {
	deadline := time.Now().Add(ioTimeout)
	for {
		fd, err := unix.Open(path, flags|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err == unix.ENXIO && time.Now().Before(deadline) {
			sleep(time.Millisecond)
			continue
		}
		if err != nil {
			return fmt.Errorf("open %s: %w", path, err)
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags); err != nil {
			return err
		}
		if fd, err = t.hi(fd); err != nil {
			return err
		}
		return t.Place(fd, target)
	}
}

// checkFifoPath fails unless path is still a FIFO with mode and, when
// fd >= 0, the inode of fd.
func (t *T) checkFifoPath(path string, mode uint32, fd int) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fail("stat %s: %v", path, err)
		return
	}
	if st.Mode != unix.S_IFIFO|mode {
		t.Fail("%s: mode %#o, want %#o", path, st.Mode, unix.S_IFIFO|mode)
	}
	if fd >= 0 && st.Ino != Ino(fd) {
		t.Fail("%s is inode %d, fd %d is inode %d", path, st.Ino, fd, Ino(fd))
	}
}

// fifo_ro: a FIFO (mode 0700) opened O_RDWR (fd 3) and O_RDONLY (fd 4);
// 64 KiB written through fd 3, which is then closed: only a reader with
// a full buffer remains.
const fifoROSize = 64 << 10

func init() {
	register("fifo_ro", map[string]*Role{
		"root": {
			Fds: std(4),
			Setup: func(t *T) error {
				path := t.Path("fifo")
				if err := Mkfifo(path, 0o700); err != nil {
					return err
				}
				if err := t.OpenAt(path, unix.O_RDWR, 0, 3); err != nil {
					return err
				}
				if err := t.OpenAt(path, unix.O_RDONLY, 0, 4); err != nil {
					return err
				}
				if err := WriteAll(3, Datagen(1, fifoROSize)); err != nil {
					return err
				}
				return unix.Close(3)
			},
			Verify: func(t *T) {
				t.CheckType(4, t.Path("fifo"))
				t.CheckFlags(4, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDONLY)
				data, err := ReadFull(4, fifoROSize)
				if !t.Check(err, "queued data") {
					return
				}
				if !Datachk(data) {
					t.Fail("queued data: bad CRC")
				}
				t.CheckData("queued data", data, Datagen(1, fifoROSize))
				rest, err := ReadToEOF(4)
				if t.Check(err, "EOF after the data") && len(rest) > 0 {
					t.Fail("%d bytes after the data", len(rest))
				}
				t.checkFifoPath(t.Path("fifo"), 0o700, 4)
			},
		},
	})
}

// fifo_wronly: a FIFO (0600) opened O_WRONLY by the root (fd 3) and
// O_RDONLY by the child (fd 3), by a blocking rendezvous. After restore
// the root writes 7 bytes, the child reads exactly those.
const fifoWronlyMsg = "wronly\n"

func init() {
	register("fifo_wronly", map[string]*Role{
		"root": {
			Fds:      std(3),
			Children: children("reader"),
			Setup: func(t *T) error {
				path := t.Path("fifo")
				if err := Mkfifo(path, 0o600); err != nil {
					return err
				}
				p, err := t.Start("reader", nil)
				if err != nil {
					return err
				}
				if err := t.openNonblockRetry(path, unix.O_WRONLY, 3); err != nil {
					return err
				}
				return p.Ready()
			},
			Verify: func(t *T) {
				t.CheckType(3, t.Path("fifo"))
				t.CheckFlags(3, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_WRONLY)
				t.Check(WriteAll(3, []byte(fifoWronlyMsg)), "write")
				t.checkFifoPath(t.Path("fifo"), 0o600, 3)
			},
		},
		"reader": {
			Fds: std(3),
			Setup: func(t *T) error {
				return t.OpenAt(t.Path("fifo"), unix.O_RDONLY, 0, 3)
			},
			Verify: func(t *T) {
				t.CheckType(3, t.Path("fifo"))
				t.CheckFlags(3, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDONLY)
				msg, err := ReadFull(3, len(fifoWronlyMsg))
				if t.Check(err, "read") {
					t.CheckData("message", msg, []byte(fifoWronlyMsg))
				}
			},
		},
	})
}

// fifo-rowo-pair: FIFOs "master" and "slave". The root opens slave O_RDWR
// (fd 5) before starting the child, which moves its inherited copy to fd
// 64; the child opens master O_WRONLY (fd 4), the root O_RDONLY (fd 4).
// The child writes one int into each FIFO.
const rowoMagic = 0x2e0b5a11

func init() {
	register("fifo-rowo-pair", map[string]*Role{
		"root": {
			Fds:      std(4, 5),
			Children: children("writer"),
			Setup: func(t *T) error {
				for _, n := range []string{"master", "slave"} {
					if err := Mkfifo(t.Path(n), 0o600); err != nil {
						return err
					}
				}
				if err := t.OpenAt(t.Path("slave"), unix.O_RDWR, 0, 5); err != nil {
					return err
				}
				p, err := t.Start("writer", nil)
				if err != nil {
					return err
				}
				if err := t.openNonblockRetry(t.Path("master"), unix.O_RDONLY, 4); err != nil {
					return err
				}
				return p.Ready()
			},
			BeforeChildren: func(t *T) {
				w := t.Child("writer")
				if w < 0 {
					return
				}
				same, err := SameFile(unix.Getpid(), 5, w, 64)
				if t.Check(err, "kcmp root fd 5, writer fd 64") && !same {
					t.Fail("root fd 5 and writer fd 64 are not the same open file")
				}
			},
			Verify: func(t *T) {
				t.CheckType(4, t.Path("master"))
				t.CheckType(5, t.Path("slave"))
				t.CheckFlags(4, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDONLY)
				t.CheckFlags(5, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDWR)
				for _, fd := range []int{4, 5} {
					b, err := ReadFull(fd, 4)
					if t.Check(err, fmt.Sprintf("int from fd %d", fd)) {
						if v := binary.LittleEndian.Uint32(b); v != rowoMagic {
							t.Fail("fd %d: read %#x, want %#x", fd, v, rowoMagic)
						}
					}
				}
			},
		},
		"writer": {
			Fds: std(4, 64),
			Setup: func(t *T) error {
				if err := t.OpenAt(t.Path("master"), unix.O_WRONLY, 0, 4); err != nil {
					return err
				}
				if err := t.Place(5, 64); err != nil {
					return err
				}
				var b [4]byte
				binary.LittleEndian.PutUint32(b[:], rowoMagic)
				if err := WriteAll(64, b[:]); err != nil {
					return err
				}
				return WriteAll(4, b[:])
			},
			Verify: func(t *T) {
				t.CheckType(4, t.Path("master"))
				t.CheckType(64, t.Path("slave"))
				t.CheckFlags(4, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_WRONLY)
				t.CheckFlags(64, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_RDWR)
			},
		},
	})
}
