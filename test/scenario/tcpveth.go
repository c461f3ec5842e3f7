package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tcp-veth: a server (listener fd 3 on *:7600, connection fd 4) whose
// client is outside the dumped tree and in another network namespace,
// joined to the tree's by a veth pair (10.199.0.1/24 on the tree's side,
// 10.199.0.2/24 on the client's; both namespaces belong to the test).
// The client keeps sending numbered records every few milliseconds,
// across every dump and restore: what it sends while the tree is away is
// dropped by fdrestore's network lock and retransmitted once the restored
// server owns the connection again. After restore the server stops the
// stream, reads every record in order up to the client's trailer with its
// count, answers, and sees the client close. A client that sees a reset
// (or any other error) writes it to tcp-veth.ext-error and exits.
const (
	vethPort       = 7600
	vethRecLen     = 64
	vethMinRecords = 10
	vethTrailer    = ^uint64(0)
	vethInterval   = 10 * time.Millisecond
	vethAnswer     = "answer-after-restore\n"
	vethThanks     = "thanks\n"
	vethStop       = "stop\n"
	vethTreeIf     = "vzs"
	vethClientIf   = "vzc"
	vethTreeAddr   = "10.199.0.1"
	vethClientIPs  = "10.199.0.2/24"
)

var vethServer = [4]byte{10, 199, 0, 1}

// vethRecord is record n: n (8 bytes, big endian) then Datagen(n) data.
func vethRecord(n uint64) []byte {
	b := make([]byte, vethRecLen)
	binary.BigEndian.PutUint64(b, n)
	copy(b[8:], Datagen(uint32(n), vethRecLen-8))
	return b
}

// ipTool runs ip(8) with args, within the I/O deadline.
func ipTool(args ...string) error {
	path := ""
	for _, p := range []string{"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"} {
		if _, err := os.Stat(p); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		return fmt.Errorf("ip(8) not found (install iproute2)")
	}
	devnull, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(devnull)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	pid, err := syscall.ForkExec(path, append([]string{"ip"}, args...), &syscall.ProcAttr{
		Env: []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, Files: []uintptr{uintptr(devnull), uintptr(p[1]), uintptr(p[1])}})
	unix.Close(p[1])
	if err != nil {
		unix.Close(p[0])
		return fmt.Errorf("ip %s: %w", strings.Join(args, " "), err)
	}
	out, _ := ReadToEOF(p[0])
	unix.Close(p[0])
	if err := waitExit(pid); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func init() {
	register("tcp-veth", map[string]*Role{
		"root": {
			Fds: std(3, 4),
			Setup: func(t *T) error {
				if err := tcpLoUp(); err != nil {
					return err
				}
				l, err := t.sockAt(unix.AF_INET, unix.SOCK_STREAM, &unix.SockaddrInet4{Port: vethPort}, true)
				if err != nil {
					return err
				}
				// Room for every record sent until the verification.
				if err := unix.SetsockoptInt(l, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20); err != nil {
					return err
				}
				if err := unix.Listen(l, 4); err != nil {
					return err
				}
				if err := t.spawnExt(); err != nil {
					return err
				}
				a, err := t.acceptHi(l)
				if err != nil {
					return err
				}
				if err := t.Place(l, 3); err != nil {
					return err
				}
				return t.Place(a, 4)
			},
			Verify: func(t *T) {
				t.CheckAddrs(3, &unix.SockaddrInet4{Port: vethPort}, nil)
				t.CheckTCPState(4, 1)
				t.CheckSockopt(4, unix.SOL_TCP, unix.TCP_REPAIR, 0, "TCP_REPAIR")
				if sa, err := unix.Getsockname(4); err != nil || saString(sa) != fmt.Sprintf("%s:%d", vethTreeAddr, vethPort) {
					t.Fail("fd 4: local address %s (%v)", saString(sa), err)
				}
				vethVerify(t)
				if b, err := readFile(t.Path("ext-error")); err == nil {
					t.Fail("the external client failed: %s", bytes.TrimSpace(b))
				}
				writeFileRaw(t.Path("ext-release"), nil)
			},
		},
		"launcher": {
			Fds:            std(),
			ExitAfterSetup: true,
			Setup: func(t *T) error {
				// The client makes the veth pair and moves our end here.
				if _, err := t.Spawn("ext", &SpawnOpts{NewNet: true}); err != nil {
					return err
				}
				if err := ipTool("addr", "add", vethTreeAddr+"/24", "dev", vethTreeIf); err != nil {
					return err
				}
				return ipTool("link", "set", vethTreeIf, "up")
			},
		},
		"ext": {
			Fds: std(3),
			Setup: func(t *T) error {
				if err := tcpLoUp(); err != nil {
					return err
				}
				if err := ipTool("link", "add", vethClientIf, "type", "veth", "peer", "name", vethTreeIf, "netns", strconv.Itoa(os.Getppid())); err != nil {
					return err
				}
				if err := ipTool("addr", "add", vethClientIPs, "dev", vethClientIf); err != nil {
					return err
				}
				if err := ipTool("link", "set", vethClientIf, "up"); err != nil {
					return err
				}
				c, err := t.sockAt(unix.AF_INET, unix.SOCK_STREAM, nil, false)
				if err != nil {
					return err
				}
				if err := t.Place(c, 3); err != nil {
					return err
				}
				go vethClient(t, 3, os.Getppid())
				return nil
			},
		},
	})
}

// vethFail records the client's error for the server's verification and
// exits once the server has read it (or after a while): the client's
// network namespace, and with it the veth pair and the server's address,
// lives as long as the client.
func vethFail(t *T, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintf(os.Stderr, "tcp-veth/ext: %s\n", msg)
	writeFileRaw(t.Path("ext-error"), []byte(msg+"\n"))
	deadline := time.Now().Add(6 * ioTimeout)
	for time.Now().Before(deadline) {
		if _, err := readFile(t.Path("ext-release")); err == nil {
			break
		}
		sleep(10 * time.Millisecond)
	}
	os.Exit(1)
}

// vethClient connects socket c once the launcher (parent) has exited,
// which it does once the tree's end of the veth is up, then sends a
// record every vethInterval until the server says stop, then the trailer
// with the count; it waits for the server's answer, thanks it, and exits
// once the server closes.
func vethClient(t *T, c, parent int) {
	deadline := time.Now().Add(ioTimeout)
	for os.Getppid() == parent {
		if time.Now().After(deadline) {
			vethFail(t, "the launcher did not exit")
		}
		sleep(2 * time.Millisecond)
	}
	if err := unix.Connect(c, &unix.SockaddrInet4{Port: vethPort, Addr: vethServer}); err != nil {
		vethFail(t, "connect: %v", err)
	}
	var stop atomic.Bool
	stopped := make(chan uint64)
	go func() {
		n := uint64(0)
		for !stop.Load() {
			if err := WriteAll(c, vethRecord(n)); err != nil {
				vethFail(t, "write record %d: %v", n, err)
			}
			n++
			sleep(vethInterval)
		}
		stopped <- n
	}()
	got, err := vethReadUntil(c, vethStop, time.Now().Add(10*time.Minute))
	if err != nil {
		vethFail(t, "read: %v", err)
	}
	if got != vethStop {
		vethFail(t, "read %q, want %q", got, vethStop)
	}
	stop.Store(true)
	n := <-stopped
	tr := vethRecord(vethTrailer)
	binary.BigEndian.PutUint64(tr[8:], n)
	if err := WriteAll(c, tr); err != nil {
		vethFail(t, "write the trailer: %v", err)
	}
	if got, err = vethReadUntil(c, vethAnswer, time.Now().Add(ioTimeout)); err != nil || got != vethAnswer {
		vethFail(t, "read the answer: %q, %v", got, err)
	}
	if err := WriteAll(c, []byte(vethThanks)); err != nil {
		vethFail(t, "write thanks: %v", err)
	}
	if err := unix.Shutdown(c, unix.SHUT_WR); err != nil {
		vethFail(t, "shutdown: %v", err)
	}
	rest, err := ReadToEOF(c)
	if err != nil || len(rest) > 0 {
		vethFail(t, "read to EOF: %q, %v", rest, err)
	}
	if e, _ := unix.GetsockoptInt(c, unix.SOL_SOCKET, unix.SO_ERROR); e != 0 {
		vethFail(t, "SO_ERROR %v", unix.Errno(e))
	}
	unix.Close(c)
	os.Exit(0)
}

// vethReadUntil reads exactly len(want) bytes (blocking, within deadline).
func vethReadUntil(fd int, want string, deadline time.Time) (string, error) {
	buf := make([]byte, len(want))
	got := 0
	for got < len(buf) {
		if err := pollIn(fd, deadline); err != nil {
			return string(buf[:got]), err
		}
		n, err := unix.Read(fd, buf[got:])
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return string(buf[:got]), err
		}
		if n == 0 {
			return string(buf[:got]), fmt.Errorf("EOF")
		}
		got += n
	}
	return string(buf), nil
}

// vethVerify: stop the stream, read every record in order up to the
// trailer, answer, and see the client's thanks and close.
func vethVerify(t *T) {
	// The client keeps sending: let a few records (more than the
	// verification counts on) queue up first.
	deadline := time.Now().Add(ioTimeout)
	for {
		n, err := unix.IoctlGetInt(4, unix.SIOCINQ)
		if !t.Check(err, "fd 4: SIOCINQ") {
			return
		}
		if n >= vethMinRecords*vethRecLen {
			break
		}
		if _, err := readFile(t.Path("ext-error")); err == nil {
			return // the client failed: the caller reports why
		}
		if time.Now().After(deadline) {
			t.Fail("fd 4: %d bytes queued after %v: the client does not keep sending", n, ioTimeout)
			return
		}
		sleep(5 * time.Millisecond)
	}
	if !t.Check(WriteAll(4, []byte(vethStop)), "fd 4: send stop") {
		return
	}
	for n := uint64(0); ; n++ {
		rec, err := ReadFull(4, vethRecLen)
		if !t.Check(err, fmt.Sprintf("fd 4: record %d", n)) {
			return
		}
		if k := binary.BigEndian.Uint64(rec); k == vethTrailer {
			if cnt := binary.BigEndian.Uint64(rec[8:]); cnt != n {
				t.Fail("fd 4: %d records received in order, the client sent %d", n, cnt)
				return
			}
			if n < vethMinRecords {
				t.Fail("fd 4: only %d records: the client did not keep sending", n)
			}
			break
		}
		if !bytes.Equal(rec, vethRecord(n)) {
			t.Fail("fd 4: record %d out of order or corrupt (number %d)", n, binary.BigEndian.Uint64(rec))
			return
		}
	}
	if !t.Check(WriteAll(4, []byte(vethAnswer)), "fd 4: answer") {
		return
	}
	got, err := ReadFull(4, len(vethThanks))
	if t.Check(err, "fd 4: the client's thanks") {
		t.CheckData("fd 4: the client's thanks", got, []byte(vethThanks))
	}
	rest, err := ReadToEOF(4)
	if t.Check(err, "EOF from the external client") && len(rest) > 0 {
		t.Fail("fd 4: %q before EOF", rest)
	}
}
