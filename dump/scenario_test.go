package dump

// Scenario processes for the dump tests: the test binary re-executed with
// FDR_DUMP_SCENARIO set. Scenario code uses raw system calls only (no
// os.File, no timers): anything that starts the Go netpoller would give the
// process an epoll fd and an eventfd, which the dumper refuses.

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

const (
	envScenario = "FDR_DUMP_SCENARIO" // scenario name
	envRole     = "FDR_DUMP_ROLE"     // role in the scenario's tree
	envDir      = "FDR_DUMP_DIR"      // scenario directory (files, FIFO)
	envN        = "FDR_DUMP_N"        // size parameter
	envDepth    = "FDR_DUMP_DEPTH"    // generation below the scenario root
)

// Fixed content of the scenario's files and pipes.
var (
	roText    = "0123456789abcdefghijklmnopqrstuvwxyz\n" // 37 bytes
	rwText    = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"             // 26 bytes
	pipeAData = "alpha: stage1 -> stage2\n"
	pipeBData = "beta"
	fifoData  = "fifo!"
	pipeCLen  = 100000
)

func pipeCData() []byte {
	b := make([]byte, pipeCLen)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return b
}

func die(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "scenario %s/%s: %s\n", os.Getenv(envScenario), os.Getenv(envRole), fmt.Sprintf(format, args...))
	os.Exit(3)
}

func must(err error, what string) {
	if err != nil {
		die("%s: %v", what, err)
	}
}

// place opens path and puts the description at fd target (closing the
// temporary fd), with FD_CLOEXEC when cloexec.
func place(path string, flags int, target int, cloexec bool) {
	fd, err := unix.Open(path, flags, 0)
	must(err, "open "+path)
	moveFd(fd, target, cloexec)
}

func moveFd(fd, target int, cloexec bool) {
	if fd == target {
		fl := 0
		if cloexec {
			fl = unix.FD_CLOEXEC
		}
		_, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, fl)
		must(err, "F_SETFD")
		return
	}
	fl := 0
	if cloexec {
		fl = unix.O_CLOEXEC
	}
	must(unix.Dup3(fd, target, fl), fmt.Sprintf("dup3 %d -> %d", fd, target))
	unix.Close(fd)
}

func seek(fd int, off int64) {
	_, err := unix.Seek(fd, off, 0)
	must(err, "lseek")
}

func writeAll(fd int, b []byte) {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		must(err, "write")
		b = b[n:]
	}
}

// spawn starts a child of this process running role, with files[i] at
// fd i (-1: closed).
func spawn(role string, files []int, extraEnv ...string) int {
	// Replace the role: getenv takes the first of duplicate variables,
	// and a child that thought it was the root would spawn again.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envRole+"=") && !strings.HasPrefix(kv, envDepth+"=") {
			env = append(env, kv)
		}
	}
	depth, _ := strconv.Atoi(os.Getenv(envDepth))
	env = append(env, envRole+"="+role, envDepth+"="+strconv.Itoa(depth+1))
	env = append(env, extraEnv...)
	fds := make([]uintptr, len(files))
	for i, f := range files {
		fds[i] = uintptr(f)
		if f < 0 {
			fds[i] = ^uintptr(0)
		}
	}
	pid, err := syscall.ForkExec("/proc/self/exe", []string{os.Args[0], "-test.run=^$"}, &syscall.ProcAttr{Env: env, Files: fds})
	must(err, "spawn "+role)
	return pid
}

// signalReady writes one byte to fd and closes it.
func signalReady(fd int) {
	writeAll(fd, []byte{1})
	unix.Close(fd)
}

func readN(fd, n int) {
	buf := make([]byte, n)
	for got := 0; got < n; {
		m, err := unix.Read(fd, buf[got:])
		must(err, "wait for children")
		if m == 0 {
			die("children died before they were ready (%d of %d)", got, n)
		}
		got += m
	}
}

func pauseForever() {
	for {
		unix.Pause()
	}
}

// scenarioMain runs the scenario process named by the environment.
func scenarioMain() int {
	if os.Getenv("FDRESTORE_RESTORED") == "1" {
		return restoredMain()
	}
	dir := os.Getenv(envDir)
	role := os.Getenv(envRole)
	if d, _ := strconv.Atoi(os.Getenv(envDepth)); d > 1 || (d > 0 && role == "root") {
		die("runaway scenario: depth %d role %s", d, role)
	}
	switch os.Getenv(envScenario) + "/" + role {
	case "main/root":
		mainRoot(dir)
	case "main/stage1", "main/stage2":
		signalReady(3)
	case "main/stage3":
		place(dir+"/fifo0", unix.O_RDWR, 5, false)
		must(unix.Dup3(0, 100, 0), "dup 0 -> 100")
		signalReady(3)
	case "sock/root":
		var sp [2]int
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		must(err, "socketpair")
		moveFd(sp[0], 10, false)
		moveFd(sp[1], 11, false)
		var p [2]int
		must(unix.Pipe2(p[:], 0), "pipe")
		moveFd(p[0], 20, false)
		moveFd(p[1], 21, false)
		writeAll(21, []byte("still here"))
		in, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_ROUTE) // no dumper for netlink
		must(err, "netlink socket")
		moveFd(in, 12, false)
		signalReady(3)
		buf := make([]byte, 64)
		for { // echo on fd 11
			n, err := unix.Read(11, buf)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n == 0 {
				return 0
			}
			writeAll(11, buf[:n])
		}
	case "unix/root":
		unixRoot(dir) // unix_test.go
	case "unixfx/root":
		unixFixtureRoot(dir) // unixfx_test.go
	case "unixmany/root":
		unixManyRoot()
	case "unixext/root":
		unixExtRoot()
	case "inflight/root", "inflight/child":
		inflightRoot() // inflight_test.go
	case "pipes/root":
		n, _ := strconv.Atoi(os.Getenv(envN))
		must(unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: uint64(2*n + 100), Max: uint64(2*n + 100)}), "setrlimit")
		for i := 0; i < n; i++ {
			var p [2]int
			must(unix.Pipe2(p[:], 0), "pipe")
			if i%10 == 0 {
				writeAll(p[1], []byte("x"))
			}
		}
		signalReady(3)
	case "fanout/root":
		n, _ := strconv.Atoi(os.Getenv(envN))
		var ready [2]int
		must(unix.Pipe2(ready[:], unix.O_CLOEXEC), "pipe")
		var shared [2]int
		must(unix.Pipe2(shared[:], unix.O_CLOEXEC), "pipe")
		for i := 1; i < n; i++ {
			spawn("child", []int{0, 1, 2, ready[1], shared[0], shared[1]})
		}
		unix.Close(ready[1])
		readN(ready[0], n-1)
		unix.Close(ready[0])
		unix.Close(shared[0])
		unix.Close(shared[1])
		signalReady(3)
	case "fanout/child":
		signalReady(3)
	case "ghost/root":
		ghostRoot(dir) // ghost_test.go
	case "ghost/child":
		signalReady(3)
	case "epoll/root", "epollbad/root":
		epollRoot(os.Getenv(envScenario)) // event_test.go
	default:
		die("unknown scenario")
	}
	pauseForever()
	return 0
}

// mainRoot builds the main scenario: a 3-stage pipeline of children with
// pipes shared at different fd numbers, regular files at offsets, O_APPEND,
// dup'ed and independently opened descriptions, a description shared with
// a child, a FIFO with data, a big pipe, and fd 1000 with FD_CLOEXEC.
func mainRoot(dir string) {
	// Children first, while every fd of ours is close-on-exec, so that
	// they get exactly the fds passed to them.
	var a, b, c, ready [2]int
	must(unix.Pipe2(a[:], unix.O_CLOEXEC), "pipe A")
	must(unix.Pipe2(b[:], unix.O_CLOEXEC), "pipe B")
	must(unix.Pipe2(c[:], unix.O_CLOEXEC), "pipe C")
	must(unix.Pipe2(ready[:], unix.O_CLOEXEC), "ready pipe")
	writeAll(a[1], []byte(pipeAData))
	writeAll(b[1], []byte(pipeBData))
	// O_NONBLOCK (per description) only where no Go child has it as fd
	// 0-2: the os package would register a non-blocking stdio fd with the
	// netpoller, which brings an epoll fd.
	_, err := unix.FcntlInt(uintptr(c[1]), unix.F_SETFL, unix.O_NONBLOCK)
	must(err, "F_SETFL")
	_, err = unix.FcntlInt(uintptr(c[1]), unix.F_SETPIPE_SZ, 1<<20)
	must(err, "F_SETPIPE_SZ")
	writeAll(c[1], pipeCData())
	rw, err := unix.Open(dir+"/rw.dat", unix.O_RDWR|unix.O_CLOEXEC, 0)
	must(err, "open rw.dat")
	seek(rw, 3)

	spawn("stage1", []int{0, a[1], 2, ready[1], -1, -1, -1, rw})
	spawn("stage2", []int{a[0], b[1], 2, ready[1]})
	spawn("stage3", []int{b[0], 1, 2, ready[1]})
	unix.Close(ready[1])
	readN(ready[0], 3)
	unix.Close(ready[0])

	moveFd(a[1], 50, false)
	unix.Close(a[0])
	moveFd(b[0], 51, false)
	unix.Close(b[1])
	moveFd(c[0], 60, false)
	moveFd(c[1], 61, false)
	moveFd(rw, 12, false) // shared with stage1's fd 7
	must(unix.Dup3(12, 13, 0), "dup 12")

	place(dir+"/ro.txt", unix.O_RDONLY, 10, false)
	seek(10, 17)
	place(dir+"/append.log", unix.O_WRONLY|unix.O_APPEND, 11, false)
	seek(11, 14)
	place(dir+"/rw.dat", unix.O_RDWR, 14, false)
	seek(14, 9)
	place(dir, unix.O_RDONLY|unix.O_DIRECTORY, 15, false)
	place("/dev/null", unix.O_RDWR, 16, false)
	place(dir+"/fifo0", unix.O_RDONLY|unix.O_NONBLOCK, 20, false)
	place(dir+"/fifo0", unix.O_WRONLY, 21, false)
	writeAll(21, []byte(fifoData))
	place(dir+"/high.bin", unix.O_RDONLY|unix.O_CLOEXEC, 1000, true)
	signalReady(3)
}

// restoredMain runs in a task restored with --exec-recorded: it reports its
// fd table (and, in the root, the FIFO's content) to dir/restored-ROLE.
func restoredMain() int {
	dir, role := os.Getenv(envDir), os.Getenv(envRole)
	fds, err := listFds(os.Getpid())
	must(err, "list fds")
	var lines []string
	for _, fd := range fds {
		link, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
		lines = append(lines, fmt.Sprintf("%d %s", fd, strings.TrimRight(strings.SplitN(link, ":", 2)[0], "[")))
	}
	if role == "root" {
		buf := make([]byte, 64)
		n, err := unix.Read(20, buf)
		must(err, "read fifo")
		lines = append(lines, "fifo "+string(buf[:n]))
	}
	out := dir + "/restored-" + role
	fd, err := unix.Open(out+".tmp", unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
	must(err, "create report")
	writeAll(fd, []byte(strings.Join(lines, "\n")+"\n"))
	unix.Close(fd)
	must(unix.Rename(out+".tmp", out), "rename report")
	return 0
}
