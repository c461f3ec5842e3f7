package restore_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/dump"
	"github.com/fdrestore/fdrestore/internal/fdcheck"
	"github.com/fdrestore/fdrestore/restore"
	"golang.org/x/sys/unix"
)

// shellLike answers every line it reads on its terminal.
const shellLike = `while read -r l; do echo "answer: $l ${FDRESTORE_RESTORED:+(restored)}"; done`

// startOnConsole starts shellLike as a session leader whose controlling
// terminal is a pty slave; the test holds the master (the runtime's end,
// outside the tree).
func startOnConsole(t *testing.T) (*exec.Cmd, *os.File) {
	t.Helper()
	master, slavePath, err := restore.NewConsole()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Close() })
	slave, err := os.OpenFile(slavePath, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer slave.Close()
	cmd := exec.Command("/bin/sh", "-c", shellLike)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, master
}

// converse types line into the terminal behind master and waits for the
// program's answer.
func converse(t *testing.T, master *os.File, line, want string) {
	t.Helper()
	fd := int(master.Fd())
	if _, err := unix.Write(fd, []byte(line+"\n")); err != nil {
		t.Fatal(err)
	}
	var got strings.Builder
	buf := make([]byte, 512)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, _ := unix.Poll(pfd, 100); n <= 0 {
			continue
		}
		n, err := unix.Read(fd, buf)
		if err != nil {
			t.Fatalf("read the console: %v (got %q)", err, got.String())
		}
		got.Write(buf[:n])
		if strings.Contains(got.String(), want) {
			return
		}
	}
	t.Fatalf("no %q on the console; it shows %q", want, got.String())
}

// TestConsoleSocket: a program whose terminal was a console from outside
// the tree is dumped; fdrestore restore --console-socket gives it a new
// console and sends the master, as runc's protocol does, to a receiver
// that types into the restored program and reads its answer. The restored
// root has the new console as its controlling terminal.
func TestConsoleSocket(t *testing.T) {
	needRoot(t)
	cmd, master := startOnConsole(t)
	converse(t, master, "one", "answer: one")
	dir := t.TempDir()
	if _, err := dump.Dump(context.Background(), cmd.Process.Pid, dir, dump.Options{Console: true, Log: testLogger(t)}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	cmd.Wait()

	sock := filepath.Join(t.TempDir(), "console.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type got struct {
		name string
		fd   int
		err  error
	}
	recvd := make(chan got, 1)
	go func() {
		ln.SetDeadline(time.Now().Add(20 * time.Second))
		c, err := ln.AcceptUnix()
		if err != nil {
			recvd <- got{err: err}
			return
		}
		defer c.Close()
		buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4))
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil {
			recvd <- got{err: err}
			return
		}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		fd := -1
		if len(msgs) == 1 {
			if fds, err := unix.ParseUnixRights(&msgs[0]); err == nil && len(fds) == 1 {
				fd = fds[0]
			}
		}
		recvd <- got{name: string(buf[:n]), fd: fd}
	}()

	pidfile := filepath.Join(t.TempDir(), "pid")
	out, err := exec.Command(cliBinary(t), "restore", "-D", dir, "--exec-recorded", "-d", "--pidfile", pidfile, "--console-socket", sock).CombinedOutput()
	if b, rerr := os.ReadFile(pidfile); rerr == nil {
		if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); pid > 0 {
			cleanupPids(t, map[uint32]int{1: pid})
		}
	}
	if err != nil {
		t.Fatalf("fdrestore restore --console-socket: %v\n%s", err, out)
	}
	g := <-recvd
	if g.err != nil || g.fd < 0 {
		t.Fatalf("console socket received %+v", g)
	}
	cm := os.NewFile(uintptr(g.fd), g.name)
	defer cm.Close()
	if !strings.HasPrefix(g.name, "/dev/pts/") {
		t.Errorf("console message names %q, want /dev/pts/N", g.name)
	}
	b, _ := os.ReadFile(pidfile)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	converse(t, cm, "two", "answer: two (restored)")
	// The console is the root's controlling terminal.
	var st unix.Stat_t
	if err := unix.Stat(g.name, &st); err != nil {
		t.Fatal(err)
	}
	stat, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	if len(fields) < 5 || fields[4] != strconv.FormatUint(st.Rdev, 10) {
		t.Errorf("restored root's tty_nr %v, want the console's %d", fields[4:5], st.Rdev)
	}
	if s, err := fdcheck.ReadStat(pid); err != nil || s.Session != pid {
		t.Errorf("restored root: session %d (%v), want its own", s.Session, err)
	}
}

// TestInheritStdioCLI: a tree dumped with its stdin and stdout on pipes
// is restored by fdrestore restore --inherit-stdio onto fdrestore's own
// stdio (new pipes), through descriptors.json, and answers there; its
// stderr (/dev/null) is reopened as recorded.
func TestInheritStdioCLI(t *testing.T) {
	needRoot(t)
	cmd := exec.Command("/bin/sh", "-c", shellLike)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	dir := t.TempDir()
	if out, err := exec.Command(cliBinary(t), "dump", "-t", strconv.Itoa(cmd.Process.Pid), "-D", dir).CombinedOutput(); err != nil {
		t.Fatalf("dump: %v\n%s", err, out)
	}
	cmd.Wait()
	in.Close()
	outR.Close()
	descs, err := restore.ReadDescriptors(dir)
	if err != nil || len(descs) != 3 || !strings.HasPrefix(descs[0], "pipe:[") || !strings.HasPrefix(descs[1], "pipe:[") || descs[2] != "/dev/null" {
		t.Fatalf("descriptors.json: %q, %v", descs, err)
	}
	rc := exec.Command(cliBinary(t), "restore", "-D", dir, "--exec-recorded", "--inherit-stdio")
	rc.Stdin = strings.NewReader("hello\n")
	var stdout, stderr strings.Builder
	rc.Stdout, rc.Stderr = &stdout, &stderr
	if err := rc.Run(); err != nil {
		t.Fatalf("restore --inherit-stdio: %v\n%s", err, stderr.String())
	}
	if want := "answer: hello (restored)\n"; stdout.String() != want {
		t.Errorf("restored tree wrote %q, want %q", stdout.String(), want)
	}
}
