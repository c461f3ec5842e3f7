package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// file_shared: file F opened at fd 3 and, separately, at fd 5; fd 4 =
// dup(3); the child inherits all three; the root then sets FD_CLOEXEC on
// its fd 4 only. Offsets before the dump: 4096 on 3/4 (written), 100 on
// 5 (read). After restore the root seeks 3 to 1000 and 5 to 500 and the
// child must see 1000 on 3 and 4 and 500 on 5.
func init() {
	register("file_shared", map[string]*Role{
		"root": {
			Fds:      std(3, 5),
			Cloexec:  []int{4},
			Children: children("child"),
			Setup: func(t *T) error {
				path := t.Path("data")
				if err := t.OpenAt(path, unix.O_RDWR|unix.O_CREAT|unix.O_TRUNC, 0o644, 3); err != nil {
					return err
				}
				if err := WriteAll(3, Datagen(3, 4096)); err != nil {
					return err
				}
				if err := t.DupAt(3, 4); err != nil {
					return err
				}
				if err := t.OpenAt(path, unix.O_RDWR, 0, 5); err != nil {
					return err
				}
				if _, err := ReadFull(5, 100); err != nil {
					return err
				}
				if _, err := t.Spawn("child", nil); err != nil {
					return err
				}
				_, err := unix.FcntlInt(4, unix.F_SETFD, unix.FD_CLOEXEC)
				return err
			},
			Verify: func(t *T) {
				t.CheckPos(3, 4096)
				t.CheckPos(4, 4096)
				t.CheckPos(5, 100)
				t.CheckCloexec(3, false)
				t.CheckCloexec(4, true)
				t.CheckCloexec(5, false)
				for fd := 3; fd <= 5; fd++ {
					t.CheckFlags(fd, unix.O_ACCMODE|unix.O_APPEND|unix.O_NONBLOCK, unix.O_RDWR)
				}
				if Ino(3) != Ino(5) {
					t.Fail("fds 3 and 5 are different inodes")
				}
				c := t.Child("child")
				if !t.WaitKick("the child's first check") {
					return
				}
				unix.Seek(3, 1000, unix.SEEK_SET)
				unix.Seek(5, 500, unix.SEEK_SET)
				t.CheckPos(4, 1000)
				t.Kick(c)
			},
		},
		"child": {
			Fds: std(3, 4, 5),
			Verify: func(t *T) {
				t.CheckPos(3, 4096)
				t.CheckPos(4, 4096)
				t.CheckPos(5, 100)
				for fd := 3; fd <= 5; fd++ {
					t.CheckCloexec(fd, false)
				}
				t.Kick(unix.Getppid())
				if !t.WaitKick("the root's seeks") {
					return
				}
				t.CheckPos(3, 1000)
				t.CheckPos(4, 1000)
				t.CheckPos(5, 500)
			},
		},
	})
}

// fd01: RLIMIT_NOFILE raised to min(hard limit, nr_open); for each power
// of two n = 2^i below half of it (and below fd01Cap) whose number is
// free, the data file is dup'ed to n and a child c<i> is started, which
// inherits a copy of the fd table as it is then. (zdtm's fd01 shares the
// table with CLONE_FILES for even i; a re-executed Go child cannot, so
// every child has its own copy.) The exponents used are recorded in the
// data file, which outlives the tasks.
const fd01Cap = 1 << 17

func fd01Exps(t *T) []int {
	b := make([]byte, 256)
	fd, err := unix.Open(t.Path("data"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	defer unix.Close(fd)
	n, _ := unix.Pread(fd, b, 0)
	var out []int
	for _, f := range strings.Fields(string(b[:n])) {
		if i, err := strconv.Atoi(f); err == nil {
			out = append(out, i)
		}
	}
	return out
}

func fd01Fds(upto int) func(t *T) []int {
	return func(t *T) []int {
		fds := []int{0, 1, 2}
		for _, i := range fd01Exps(t) {
			if upto < 0 || i <= upto {
				fds = append(fds, 1<<i)
			}
		}
		return fds
	}
}

func init() {
	roles := map[string]*Role{
		"root": {
			Fds: fd01Fds(-1),
			Children: func(t *T) []string {
				var out []string
				for _, i := range fd01Exps(t) {
					out = append(out, "c"+itoa(i))
				}
				return out
			},
			Setup: func(t *T) error {
				limit := uint64(1 << 20)
				if b, err := readFile("/proc/sys/fs/nr_open"); err == nil {
					if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
						limit = v
					}
				}
				var rl unix.Rlimit
				if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
					return err
				}
				limit = min(limit, rl.Max)
				rl.Cur = limit
				if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
					return fmt.Errorf("setrlimit: %w", err)
				}
				fd, err := unix.Open(t.Path("data"), unix.O_RDWR|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
				if err != nil {
					return err
				}
				if fd, err = t.hi(fd); err != nil {
					return err
				}
				defer unix.Close(fd)
				var exps []string
				var procs []*Proc
				for i := 1; 1<<i < int(limit/2) && 1<<i < fd01Cap && 1<<i < t.floor; i++ {
					n := 1 << i
					if _, err := unix.FcntlInt(uintptr(n), unix.F_GETFD, 0); err == nil {
						continue // in use
					}
					if err := t.DupAt(fd, n); err != nil {
						return err
					}
					exps = append(exps, itoa(i))
					if _, err := unix.Pwrite(fd, []byte(strings.Join(exps, " ")+"\n"), 0); err != nil {
						return err
					}
					p, err := t.Start("c"+itoa(i), nil)
					if err != nil {
						return err
					}
					procs = append(procs, p)
				}
				for _, p := range procs {
					if err := p.Ready(); err != nil {
						return err
					}
				}
				return nil
			},
			Verify: func(t *T) {
				fds := fd01Fds(-1)(t)
				for _, fd := range fds[3:] {
					t.CheckPos(fd, 0)
					t.CheckType(fd, t.Path("data"))
				}
			},
		},
	}
	for i := 1; 1<<i < fd01Cap; i++ {
		roles["c"+itoa(i)] = &Role{Fds: fd01Fds(i), Verify: func(t *T) {
			for _, fd := range fd01Fds(i)(t)[3:] {
				t.CheckType(fd, t.Path("data"))
			}
		}}
	}
	register("fd01", roles)
}

// fd: the child closes every fd it has, 0-2 included. The root checks
// from outside that the restored child has none.
func init() {
	register("fd", map[string]*Role{
		"root": {
			Fds:      std(),
			Children: children("empty"),
			Setup: func(t *T) error {
				_, err := t.Spawn("empty", nil)
				return err
			},
			BeforeChildren: func(t *T) {
				c := t.Child("empty")
				if c < 0 {
					return
				}
				ents, err := readDirNames("/proc/" + itoa(c) + "/fd")
				if !t.Check(err, "list the child's fds") {
					return
				}
				var names []string
				for _, e := range ents {
					target, _ := os.Readlink("/proc/" + itoa(c) + "/fd/" + e)
					names = append(names, e+"="+target)
				}
				if len(names) > 0 {
					t.Fail("child has fds %s, want none", strings.Join(names, ", "))
				}
			},
		},
		"empty": {
			Fds: func(*T) []int { return nil },
			Setup: func(t *T) error {
				fds, err := listFds()
				if err != nil {
					return err
				}
				sync, _ := strconv.Atoi(os.Getenv(envSync))
				for fd := range fds {
					if fd < t.floor && fd != sync {
						unix.Close(fd)
					}
				}
				return nil
			},
		},
	})
}

// write_read10: file F opened twice (O_TRUNC) at fds 3 and 4, then
// unlinked; the child keeps open #2 (fd 4), the root open #1 (fd 3).
// After restore the child writes 1 MiB of CRC data through #2 and the
// root reads it back through #1.
const wr10Size = 1 << 20

func init() {
	register("write_read10", map[string]*Role{
		"root": {
			Fds:      std(3),
			Children: children("writer"),
			Setup: func(t *T) error {
				path := t.Path("data")
				if err := t.OpenAt(path, unix.O_RDWR|unix.O_CREAT|unix.O_TRUNC, 0o644, 3); err != nil {
					return err
				}
				if err := t.OpenAt(path, unix.O_RDWR|unix.O_CREAT|unix.O_TRUNC, 0o644, 4); err != nil {
					return err
				}
				if err := unix.Unlink(path); err != nil {
					return err
				}
				if _, err := t.Spawn("writer", nil); err != nil {
					return err
				}
				return unix.Close(4)
			},
			BeforeChildren: func(t *T) {
				c := t.Child("writer")
				var st unix.Stat_t
				if c > 0 && t.Check(unix.Stat("/proc/"+itoa(c)+"/fd/4", &st), "stat the writer's fd 4") && st.Ino != Ino(3) {
					t.Fail("root fd 3 is inode %d, writer fd 4 is inode %d", Ino(3), st.Ino)
				}
			},
			Verify: func(t *T) {
				var st unix.Stat_t
				if t.Check(unix.Fstat(3, &st), "fstat fd 3") && st.Nlink != 0 {
					t.Fail("fd 3: file has %d links, want 0 (unlinked)", st.Nlink)
				}
				if !t.WaitKick("the writer") {
					return
				}
				buf := make([]byte, wr10Size)
				n, err := unix.Pread(3, buf, 0)
				if !t.Check(err, "pread") {
					return
				}
				if n != wr10Size || !Datachk(buf) {
					t.Fail("read %d bytes through fd 3 (CRC ok: %v), want %d", n, Datachk(buf[:n]), wr10Size)
				}
				if err := unix.Access(t.Path("data"), unix.F_OK); err == nil {
					t.Fail("%s exists again after restore", t.Path("data"))
				}
			},
		},
		"writer": {
			Fds: std(4),
			Setup: func(t *T) error {
				return unix.Close(3)
			},
			Verify: func(t *T) {
				t.CheckPos(4, 0)
				t.Check(WriteAll(4, Datagen(10, wr10Size)), "write 1 MiB")
				t.Kick(unix.Getppid())
			},
		},
	})
}

// file_fown: a pipe (3 = r, 4 = w) whose ends have owner = the root
// (F_SETOWN, set while the root's euid was 1), F_SETSIG = SIGIO and
// O_ASYNC; the child inherits both ends. After restore the child makes
// itself the owner of the write end and reports what it sees through
// the pipe (which raises SIGIO in the root); the root compares.
type fownView struct{ FlR, OwnR, SigR, FlW, OwnW, SigW int32 }

func readFown(t *T) fownView {
	var v fownView
	get := func(fd, cmd int) int32 {
		r, err := unix.FcntlInt(uintptr(fd), cmd, 0)
		if err != nil {
			t.Fail("fd %d: fcntl %d: %v", fd, cmd, err)
		}
		return int32(r)
	}
	v.FlR, v.OwnR, v.SigR = get(3, unix.F_GETFL), get(3, unix.F_GETOWN), get(3, unix.F_GETSIG)
	v.FlW, v.OwnW, v.SigW = get(4, unix.F_GETFL), get(4, unix.F_GETOWN), get(4, unix.F_GETSIG)
	return v
}

func (t *T) checkFown(who string, v fownView, ownR, ownW int) {
	const m = unix.O_ACCMODE | unix.O_ASYNC | unix.O_NONBLOCK
	if v.FlR&m != unix.O_RDONLY|unix.O_ASYNC || v.FlW&m != unix.O_WRONLY|unix.O_ASYNC {
		t.Fail("%s: flags r %#o w %#o, want O_ASYNC on both", who, v.FlR, v.FlW)
	}
	if int(v.OwnR) != ownR || int(v.OwnW) != ownW {
		t.Fail("%s: owners r %d w %d, want %d and %d", who, v.OwnR, v.OwnW, ownR, ownW)
	}
	if v.SigR != int32(unix.SIGIO) || v.SigW != int32(unix.SIGIO) {
		t.Fail("%s: signals r %d w %d, want SIGIO (%d)", who, v.SigR, v.SigW, unix.SIGIO)
	}
}

func init() {
	register("file_fown", map[string]*Role{
		"root": {
			Fds:      std(3, 4),
			Children: children("child"),
			Setup: func(t *T) error {
				if err := t.PipeAt(3, 4, 0); err != nil {
					return err
				}
				if err := syscall.Setresuid(-1, 1, -1); err != nil {
					return fmt.Errorf("seteuid 1: %w", err)
				}
				for _, fd := range []int{3, 4} {
					for _, c := range [][2]int{{unix.F_SETOWN, unix.Getpid()}, {unix.F_SETSIG, int(unix.SIGIO)}} {
						if _, err := unix.FcntlInt(uintptr(fd), c[0], c[1]); err != nil {
							syscall.Setresuid(-1, 0, -1)
							return fmt.Errorf("fd %d: fcntl %d: %w", fd, c[0], err)
						}
					}
				}
				if err := syscall.Setresuid(-1, 0, -1); err != nil {
					return err
				}
				for _, fd := range []int{3, 4} {
					fl, _ := GetFL(fd)
					if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_ASYNC); err != nil {
						return err
					}
				}
				_, err := t.Spawn("child", nil)
				return err
			},
			Verify: func(t *T) {
				me := unix.Getpid()
				t.checkFown("root before", readFown(t), me, me)
				c := t.Child("child")
				if c < 0 {
					return
				}
				t.Kick(c)
				b, err := ReadFull(3, 24)
				if !t.Check(err, "the child's report") {
					return
				}
				var v fownView
				binary.Read(strings.NewReader(string(b)), binary.LittleEndian, &v)
				t.checkFown("child", v, me, c)
				t.checkFown("root after", readFown(t), me, c)
				deadline := time.Now().Add(2 * time.Second)
				for t.SigioCount() == 0 {
					if time.Now().After(deadline) {
						t.Fail("no SIGIO after the child wrote to the pipe")
						break
					}
					sleep(5 * time.Millisecond)
				}
			},
		},
		"child": {
			Fds: std(3, 4),
			Verify: func(t *T) {
				if !t.WaitKick("the root") {
					return
				}
				if _, err := unix.FcntlInt(4, unix.F_SETOWN, unix.Getpid()); !t.Check(err, "F_SETOWN") {
					return
				}
				v := readFown(t)
				var sb strings.Builder
				binary.Write(&sb, binary.LittleEndian, v)
				t.Check(WriteAll(4, []byte(sb.String())), "report")
			},
		},
	})
}
