package main

// The baseline: the same process tree and fd tables built from scratch by
// ordinary code, with no images and no engine. Every baseline process is
// this binary re-executed from a memfd copy (as restore helpers are, so
// that both pay the same exec cost and no package initialiser opens the
// executable at a low fd), with the Go runtime's cgroup-aware GOMAXPROCS
// off (it would hold a cgroup file at fd 3).
//
//   - root: opens its stdio on /dev/null, spawns its kids (before creating
//     any pipe, so that nothing is inherited), creates its pipes, hands
//     them to the kids that share them, waits for every kid's ack, then
//     reports "ok PID..." on the status fd and stops itself.
//   - kid: opens its stdio, creates its own pipes or receives the shared
//     ones over SCM_RIGHTS (up to 253 per message) and dup3s them onto
//     their numbers, acks, and stops itself.
//
// Every fd is placed at its number with dup3 when it did not land there.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/fdrestore/fdrestore/files"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	baselineArg = "__fdr-bench-baseline"
	// serviceFd is where a baseline process keeps its status or control
	// socket: above every target fd of the scenarios.
	serviceFd = 19500
	maxRights = 253
)

// baselineSpec says what one baseline run builds.
type baselineSpec struct {
	Mode   string // "own": every task creates its own pipes; "shared": the root creates them and sends them to every kid
	Kids   int    // tasks besides the root
	Pipes  int    // pipes per task ("own") or in total ("shared")
	Socks  int    // stream socketpairs after the pipes, counted like Pipes
	Data   int    // bytes queued in each pipe and on the first end of each socketpair
	Stdio  bool
	Memfd  int    // the bench's memfd copy of itself
	Prefix string // the memfd's /proc/PID/exe target
}

func (s baselineSpec) args(role string) []string {
	return []string{"fdr-baseline", baselineArg, role, s.Mode, strconv.Itoa(s.Kids), strconv.Itoa(s.Pipes), strconv.Itoa(s.Data), strconv.FormatBool(s.Stdio), strconv.Itoa(s.Socks)}
}

func childEnv() []string {
	const off = "containermaxprocs=0,updatemaxprocs=0"
	env := os.Environ()
	for i, kv := range env {
		if strings.HasPrefix(kv, "GODEBUG=") {
			env[i] = kv + "," + off
			return env
		}
	}
	return append(env, "GODEBUG="+off)
}

// runBaseline builds the tree once and returns the wall time from the
// first fork to every task stopped with its fds in place, and the pids.
func runBaseline(s baselineSpec) (time.Duration, []int, error) {
	var st [2]int
	if err := unix.Pipe2(st[:], unix.O_CLOEXEC); err != nil {
		return 0, nil, err
	}
	defer unix.Close(st[0])
	start := time.Now()
	pid, err := syscall.ForkExec("/proc/self/fd/"+strconv.Itoa(s.Memfd), s.args("root"),
		&syscall.ProcAttr{Env: childEnv(), Files: []uintptr{0, 1, 2, uintptr(st[1])}})
	unix.Close(st[1])
	if err != nil {
		return 0, nil, fmt.Errorf("start baseline root: %w", err)
	}
	pids := []int{pid}
	timer := time.AfterFunc(2*time.Minute, func() { unix.Kill(pid, unix.SIGKILL) })
	defer timer.Stop()
	var msg []byte
	buf := make([]byte, 4096)
	for !strings.HasSuffix(string(msg), "\n") {
		n, err := unix.Read(st[0], buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return 0, pids, fmt.Errorf("baseline root died (%v) after %q", err, msg)
		}
		msg = append(msg, buf[:n]...)
	}
	f := strings.Fields(string(msg))
	if len(f) == 0 || f[0] != "ok" {
		return 0, pids, fmt.Errorf("baseline: %s", strings.TrimSpace(string(msg)))
	}
	for _, p := range f[1:] {
		n, _ := strconv.Atoi(p)
		pids = append(pids, n)
	}
	for _, p := range pids {
		if err := waitStopped(p, time.Now().Add(time.Minute)); err != nil {
			return 0, pids, err
		}
	}
	return time.Since(start), pids, nil
}

// waitStopped polls until pid shows state T.
func waitStopped(pid int, deadline time.Time) error {
	for {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return fmt.Errorf("process %d: %w", pid, err)
		}
		i := strings.LastIndexByte(string(b), ')')
		if i > 0 && i+2 < len(b) {
			switch b[i+2] {
			case 'T', 't':
				return nil
			case 'Z', 'X':
				return fmt.Errorf("process %d died", pid)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d did not stop", pid)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// baselineMain is the entry point of a re-executed baseline process. fd 3
// is its status pipe (root) or its socket to the root (kid).
func baselineMain(args []string) int {
	ctl, err := unix.FcntlInt(3, unix.F_DUPFD_CLOEXEC, serviceFd)
	if err != nil {
		return 125
	}
	unix.Close(3)
	report := func(err error) {
		if err != nil {
			unix.Write(ctl, []byte("err "+err.Error()+"\n"))
		}
	}
	if len(args) != 7 {
		report(errors.New("bad arguments"))
		return 125
	}
	var s baselineSpec
	role := args[0]
	s.Mode = args[1]
	s.Kids, _ = strconv.Atoi(args[2])
	s.Pipes, _ = strconv.Atoi(args[3])
	s.Data, _ = strconv.Atoi(args[4])
	s.Stdio = args[5] == "true"
	s.Socks, _ = strconv.Atoi(args[6])
	if err := checkClean(ctl); err != nil {
		report(err)
		return 1
	}
	if s.Stdio {
		if err := stdio(); err != nil {
			report(err)
			return 1
		}
	}
	var msg string
	switch role {
	case "root":
		msg, err = baselineRoot(s)
	case "kid":
		err = baselineKid(s, ctl)
		msg = "ok"
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		report(err)
		return 1
	}
	if _, err := unix.Write(ctl, []byte(msg+"\n")); err != nil {
		return 1
	}
	// The stop lands asynchronously: wait here for it (and for the
	// SIGKILL that ends the run) instead of exiting.
	unix.Kill(unix.Getpid(), unix.SIGSTOP)
	for {
		unix.Pause()
	}
}

// checkClean makes sure nothing but stdio and the service fd is open
// below the service area, so that placing fds cannot clobber anything.
func checkClean(ctl int) error {
	fds, err := files.ListFDs() // raw syscalls: no os.File, no netpoller
	if err != nil {
		return err
	}
	for _, fd := range fds {
		if fd > 2 && fd < serviceFd {
			t, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
			return fmt.Errorf("fd %d (%s) is open below the service area", fd, t)
		}
	}
	return nil
}

// place moves fd onto target (no FD_CLOEXEC) unless it is there already.
func place(fd, target int) error {
	if fd == target {
		return nil
	}
	if err := unix.Dup3(fd, target, 0); err != nil {
		return fmt.Errorf("dup3 %d -> %d: %w", fd, target, err)
	}
	return unix.Close(fd)
}

func stdio() error {
	in, err := unix.Open("/dev/null", unix.O_RDONLY, 0)
	if err != nil {
		return err
	}
	if err := place(in, 0); err != nil {
		return err
	}
	out, err := unix.Open("/dev/null", unix.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if err := place(out, 1); err != nil {
		return err
	}
	return unix.Dup3(1, 2, 0)
}

// objects creates the spec's pipes from fd first on, then its
// socketpairs.
func objects(s baselineSpec, first int) error {
	if err := pipes(first, s.Pipes, s.Data); err != nil {
		return err
	}
	return socketpairs(first+2*s.Pipes, s.Socks, s.Data)
}

// socketpairs creates n stream socketpairs, pair i at fds first+2i and
// first+2i+1, with data queued toward the first end.
func socketpairs(first, n, data int) error {
	payload := make([]byte, data)
	for i := 0; i < n; i++ {
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			return fmt.Errorf("socketpair: %w", err)
		}
		if err := place(p[0], first+2*i); err != nil {
			return err
		}
		if err := place(p[1], first+2*i+1); err != nil {
			return err
		}
		if data > 0 {
			if _, err := unix.Write(first+2*i+1, payload); err != nil {
				return err
			}
		}
	}
	return nil
}

// pipes creates n pipes, pipe i at fds first+2i (read) and first+2i+1.
func pipes(first, n, data int) error {
	payload := make([]byte, data)
	for i := 0; i < n; i++ {
		var p [2]int
		if err := unix.Pipe2(p[:], 0); err != nil {
			return fmt.Errorf("pipe2: %w", err)
		}
		if err := place(p[0], first+2*i); err != nil {
			return err
		}
		if err := place(p[1], first+2*i+1); err != nil {
			return err
		}
		if data > 0 {
			if _, err := unix.Write(first+2*i+1, payload); err != nil {
				return err
			}
		}
	}
	return nil
}

func spawnKid(s baselineSpec) (pid, sock int, err error) {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, -1, err
	}
	pid, err = syscall.ForkExec("/proc/self/exe", s.args("kid"), &syscall.ProcAttr{Env: childEnv(), Files: []uintptr{0, 1, 2, uintptr(sp[1])}})
	unix.Close(sp[1])
	if err != nil {
		unix.Close(sp[0])
		return 0, -1, fmt.Errorf("start kid: %w", err)
	}
	sock, err = unix.FcntlInt(uintptr(sp[0]), unix.F_DUPFD_CLOEXEC, serviceFd)
	unix.Close(sp[0])
	return pid, sock, err
}

func baselineRoot(s baselineSpec) (string, error) {
	pids := make([]string, 0, s.Kids)
	socks := make([]int, 0, s.Kids)
	for i := 0; i < s.Kids; i++ {
		pid, sock, err := spawnKid(s)
		if err != nil {
			return "", err
		}
		pids = append(pids, strconv.Itoa(pid))
		socks = append(socks, sock)
	}
	if err := objects(s, 3); err != nil {
		return "", err
	}
	if s.Mode == "shared" {
		nfds := 2 * (s.Pipes + s.Socks)
		hdr := make([]byte, 8)
		fds := make([]int, 0, maxRights)
		for off := 0; off < nfds; off += maxRights {
			n := min(maxRights, nfds-off)
			fds = fds[:0]
			for i := 0; i < n; i++ {
				fds = append(fds, 3+off+i)
			}
			binary.LittleEndian.PutUint32(hdr, uint32(3+off))
			binary.LittleEndian.PutUint32(hdr[4:], uint32(n))
			rights := unix.UnixRights(fds...)
			for _, sk := range socks {
				if err := unix.Sendmsg(sk, hdr, rights, nil, 0); err != nil {
					return "", fmt.Errorf("send %d fds: %w", n, err)
				}
			}
		}
		binary.LittleEndian.PutUint32(hdr[4:], 0)
		for _, sk := range socks {
			if err := unix.Sendmsg(sk, hdr, nil, nil, 0); err != nil {
				return "", err
			}
		}
	}
	buf := make([]byte, 512)
	for i, sk := range socks {
		n, err := unix.Read(sk, buf)
		if err != nil || n == 0 {
			return "", fmt.Errorf("kid %s died (%v)", pids[i], err)
		}
		if got := strings.TrimSpace(string(buf[:n])); got != "ok" {
			return "", fmt.Errorf("kid %s: %s", pids[i], got)
		}
	}
	return "ok " + strings.Join(pids, " "), nil
}

func baselineKid(s baselineSpec, sock int) error {
	if s.Mode != "shared" {
		return objects(s, 3)
	}
	hdr := make([]byte, 8)
	oob := make([]byte, unix.CmsgSpace(maxRights*4))
	for {
		n, oobn, _, _, err := unix.Recvmsg(sock, hdr, oob, 0)
		if err != nil {
			return fmt.Errorf("recvmsg: %w", err)
		}
		if n != 8 {
			return fmt.Errorf("short message (%d bytes): root died?", n)
		}
		first, count := int(binary.LittleEndian.Uint32(hdr)), int(binary.LittleEndian.Uint32(hdr[4:]))
		if count == 0 {
			return nil
		}
		cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(cmsgs) != 1 {
			return fmt.Errorf("control message: %v", err)
		}
		fds, err := unix.ParseUnixRights(&cmsgs[0])
		if err != nil || len(fds) != count {
			return fmt.Errorf("got %d fds, want %d (%v)", len(fds), count, err)
		}
		// Received fds land at the lowest free numbers. When one of them
		// is not at its target, move the whole batch out of the way
		// first, so that placing one cannot clobber another.
		for i, fd := range fds {
			if fd != first+i {
				for j := range fds {
					nfd, err := unix.FcntlInt(uintptr(fds[j]), unix.F_DUPFD_CLOEXEC, first+count)
					if err != nil {
						return err
					}
					unix.Close(fds[j])
					fds[j] = nfd
				}
				break
			}
		}
		for i, fd := range fds {
			if err := place(fd, first+i); err != nil {
				return err
			}
		}
	}
}
