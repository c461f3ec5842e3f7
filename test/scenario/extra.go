package main

import "golang.org/x/sys/unix"

// Extra states beyond the catalogue's list.

// pipe-wonly-data: only the write end of a pipe is left (fd 3), with 5
// bytes queued that nobody can read any more; after restore the task
// reopens the pipe for reading through /proc and finds them.
func init() {
	register("pipe-wonly-data", map[string]*Role{
		"root": {
			Fds: std(3),
			Setup: func(t *T) error {
				if err := t.PipeAt(4, 3, 0); err != nil {
					return err
				}
				if err := WriteAll(3, []byte("abcde")); err != nil {
					return err
				}
				return unix.Close(4)
			},
			Verify: func(t *T) {
				t.CheckType(3, "pipe:")
				t.CheckFlags(3, unix.O_ACCMODE|unix.O_NONBLOCK, unix.O_WRONLY)
				r, err := unix.Open("/proc/self/fd/3", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
				if !t.Check(err, "reopen for reading") {
					return
				}
				defer unix.Close(r)
				b, err := ReadFull(r, 5)
				if t.Check(err, "queued data") {
					t.CheckData("queued data", b, []byte("abcde"))
				}
			},
		},
	})
}
