package main

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// pipeline: a shell running `s1 | s2 | s3 | s4 | s5` as one job. The
// root (the shell, a session leader) starts five stages in a new process
// group led by s1; stage k reads stdin from pipe k-1 (s1: the root's
// /dev/null) and writes stdout to pipe k (s5: the root's stdout). Before
// the dump every stage but s5 queues "pre-k" in its output pipe. After
// restore s1 writes "post-1" and closes; stages 2-4 forward every line
// with "|k" appended until EOF; s5 checks the exact sequence.
const stages = 5

func stageRoles() []string {
	var out []string
	for k := 1; k <= stages; k++ {
		out = append(out, fmt.Sprintf("s%d", k))
	}
	return out
}

func pipelineWant() string {
	// s5 first gets what s4 queued, then s4's forwards of s3's queue
	// and so on.
	var lines []string
	for k := stages - 1; k >= 1; k-- {
		l := fmt.Sprintf("pre-%d", k)
		for j := k + 1; j < stages; j++ {
			l += fmt.Sprintf("|%d", j)
		}
		lines = append(lines, l)
	}
	l := "post-1"
	for j := 2; j < stages; j++ {
		l += fmt.Sprintf("|%d", j)
	}
	return strings.Join(append(lines, l), "\n") + "\n"
}

func init() {
	roles := map[string]*Role{
		"root": {
			Fds:      std(),
			Children: children(stageRoles()...),
			Setup: func(t *T) error {
				var pipes [stages - 1][2]int
				for i := range pipes {
					if err := unix.Pipe2(pipes[i][:], unix.O_CLOEXEC); err != nil {
						return err
					}
					for j := 0; j < 2; j++ {
						var err error
						if pipes[i][j], err = t.hi(pipes[i][j]); err != nil {
							return err
						}
					}
				}
				leader := 0
				for k := 1; k <= stages; k++ {
					in, out := 0, 1
					if k > 1 {
						in = pipes[k-2][0]
					}
					if k < stages {
						out = pipes[k-1][1]
					}
					p, err := t.Spawn(fmt.Sprintf("s%d", k), &SpawnOpts{Stdio: [3]int{in, out, 2}, Setpgid: true, Pgid: leader})
					if err != nil {
						return err
					}
					if k == 1 {
						leader = p.Pid
					}
				}
				for i := range pipes {
					unix.Close(pipes[i][0])
					unix.Close(pipes[i][1])
				}
				return nil
			},
			BeforeChildren: func(t *T) {
				me := unix.Getpid()
				if sid, _ := unix.Getsid(0); sid != me {
					t.Fail("shell: session %d, want its own (%d)", sid, me)
				}
				leader := t.Child("s1")
				if leader < 0 {
					return
				}
				for _, c := range t.children {
					pgid, err := unix.Getpgid(c.pid)
					sid, err2 := unix.Getsid(c.pid)
					if err != nil || err2 != nil {
						t.Fail("%s: getpgid/getsid: %v %v", c.role, err, err2)
						continue
					}
					if pgid != leader {
						t.Fail("%s: process group %d, want s1's (%d)", c.role, pgid, leader)
					}
					if sid != me {
						t.Fail("%s: session %d, want the shell's (%d)", c.role, sid, me)
					}
				}
			},
		},
	}
	for k := 1; k <= stages; k++ {
		roles[fmt.Sprintf("s%d", k)] = &Role{
			Fds: std(),
			Setup: func(t *T) error {
				if k == stages {
					return nil
				}
				return WriteAll(1, []byte(fmt.Sprintf("pre-%d\n", k)))
			},
			Verify: func(t *T) {
				if k == 1 {
					t.CheckType(0, "/dev/null")
				} else {
					t.CheckType(0, "pipe:")
				}
				if k < stages {
					t.CheckType(1, "pipe:")
				}
				t.CheckFlags(0, unix.O_ACCMODE|unix.O_NONBLOCK, map[bool]int{true: unix.O_RDWR, false: unix.O_RDONLY}[k == 1])
				t.CheckFlags(1, unix.O_NONBLOCK, 0)
				switch {
				case k == 1:
					t.Check(WriteAll(1, []byte("post-1\n")), "write post-1")
				case k < stages:
					in, err := ReadToEOF(0)
					if !t.Check(err, "stdin") {
						return
					}
					var out strings.Builder
					for _, l := range strings.SplitAfter(string(in), "\n") {
						if l != "" {
							fmt.Fprintf(&out, "%s|%d\n", strings.TrimSuffix(l, "\n"), k)
						}
					}
					t.Check(WriteAll(1, []byte(out.String())), "forward")
				default:
					in, err := ReadToEOF(0)
					if t.Check(err, "stdin") && string(in) != pipelineWant() {
						t.Fail("got %q, want %q", in, pipelineWant())
					}
				}
				if k < stages {
					unix.Close(1)
				}
			},
		}
	}
	register("pipeline", roles)
}
