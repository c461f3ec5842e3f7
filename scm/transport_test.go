package scm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pair opens the endpoints of tasks 0 (sender) and 1 (receiver) of a fresh
// run.
func pair(t testing.TB) (snd, rcv *Transport) {
	t.Helper()
	run := NewRunID()
	snd, err := Open(run, 0, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rcv, err = Open(run, 1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { snd.Close(); rcv.Close() })
	return snd, rcv
}

func mkpipe(t testing.TB) [2]int {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	return p
}

// countFDs counts the entries of /proc/self/fd.
func countFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func inode(t testing.TB, fd int) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatalf("fstat %d: %v", fd, err)
	}
	return st.Ino
}

// flushAll flushes snd and sends until nothing is pending (receiver must
// have room).
func flushAll(t testing.TB, snd *Transport) {
	t.Helper()
	if err := snd.Flush(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for snd.Pending() {
		if err := snd.Wait(deadline); err != nil {
			t.Fatal(err)
		}
		if err := snd.TrySend(); err != nil {
			t.Fatal(err)
		}
	}
}

// receive drains rcv until n messages arrived.
func receive(t testing.TB, rcv *Transport, n int) []Message {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var got []Message
	for len(got) < n {
		if err := rcv.Wait(deadline); err != nil {
			t.Fatal(err)
		}
		if err := rcv.Drain(func(m Message) error { got = append(got, m); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	return got
}

func TestAddr(t *testing.T) {
	if got, want := Addr("abc", 12), "@fdrestore/abc/r12"; got != want {
		t.Errorf("Addr = %q, want %q", got, want)
	}
	id := NewRunID()
	if err := CheckRunID(id); err != nil || len(id) != 16 {
		t.Errorf("NewRunID() = %q: %v", id, err)
	}
	for _, bad := range []string{"", "a/b", "a-b", "x\x00", strings.Repeat("a", MaxRunIDLen+1)} {
		if CheckRunID(bad) == nil {
			t.Errorf("CheckRunID(%q) accepted", bad)
		}
		if _, err := Open(bad, 0, Options{}); err == nil {
			t.Errorf("Open(%q) accepted", bad)
		}
	}
	long := strings.Repeat("z", MaxRunIDLen)
	if n := len(senderAddr(long, ^uint32(0), ^uint32(0))); n >= 108 {
		t.Errorf("longest sender address is %d bytes, does not fit sockaddr_un", n)
	}
	// Two runs with the same task numbers do not collide.
	a, err := Open(NewRunID(), 0, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Open(NewRunID(), 0, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := Open(a.RunID(), 0, Options{}); !errors.Is(err, unix.EADDRINUSE) {
		t.Errorf("second endpoint for the same task: err = %v, want EADDRINUSE", err)
	}
}

func TestRoundTripOneFD(t *testing.T) {
	snd, rcv := pair(t)
	p := mkpipe(t)
	if err := snd.Queue(1, 42, p[1]); err != nil {
		t.Fatal(err)
	}
	if !snd.Pending() {
		t.Fatal("queued fd not pending")
	}
	flushAll(t, snd)
	msgs := receive(t, rcv, 1)
	m := msgs[0]
	if m.Kind != KindFDs || m.From != 0 || len(m.Keys) != 1 || m.Keys[0] != 42 || len(m.FDs) != 1 || m.Data != nil {
		t.Fatalf("got %+v", m)
	}
	fd := m.FDs[0]
	defer unix.Close(fd)
	if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("received fd flags %#x, %v: want FD_CLOEXEC", flags, err)
	}
	if _, err := unix.Write(fd, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, err := unix.Read(p[0], buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
}

func TestMaxFDsInOneMessage(t *testing.T) {
	snd, rcv := pair(t)
	p := mkpipe(t)
	ino := inode(t, p[0])
	for i := range MaxFDs {
		if err := snd.Queue(1, uint32(1000+i), p[0]); err != nil {
			t.Fatal(err)
		}
	}
	flushAll(t, snd)
	msgs := receive(t, rcv, 1)
	if err := rcv.Drain(func(m Message) error { t.Errorf("extra message %+v", m); return nil }); err != nil {
		t.Fatal(err)
	}
	m := msgs[0]
	defer closeFDs(m.FDs)
	if len(m.FDs) != MaxFDs || len(m.Keys) != MaxFDs {
		t.Fatalf("got %d fds, %d keys, want %d", len(m.FDs), len(m.Keys), MaxFDs)
	}
	for i, fd := range m.FDs {
		if m.Keys[i] != uint32(1000+i) {
			t.Fatalf("key %d = %d", i, m.Keys[i])
		}
		if inode(t, fd) != ino {
			t.Fatalf("fd %d is not the pipe", fd)
		}
	}
}

func TestSplitInOrder(t *testing.T) {
	snd, rcv := pair(t)
	p := mkpipe(t)
	const n = 1000
	for i := range n {
		if err := snd.Queue(1, uint32(i), p[1]); err != nil {
			t.Fatal(err)
		}
	}
	flushAll(t, snd)
	msgs := receive(t, rcv, 4)
	want := []int{253, 253, 253, 241}
	next := 0
	for i, m := range msgs {
		if len(m.FDs) != want[i] {
			t.Errorf("message %d has %d fds, want %d", i, len(m.FDs), want[i])
		}
		for _, k := range m.Keys {
			if k != uint32(next) {
				t.Fatalf("message %d: key %d, want %d", i, k, next)
			}
			next++
		}
		closeFDs(m.FDs)
	}
	if next != n {
		t.Fatalf("received %d fds, want %d", next, n)
	}
}

// TestBackpressure sends 10,000 fds to one receiver that starts draining
// only after the sender's queue filled up. The sender never blocks, retries
// on POLLOUT and does not spin.
func TestBackpressure(t *testing.T) {
	snd, rcv := pair(t)
	p := mkpipe(t)
	const n = 10000
	for i := range n {
		if err := snd.Queue(1, uint32(i), p[1]); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	if err := snd.Flush(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Flush took %v", d)
	}
	if !snd.Pending() {
		t.Fatal("all 40 messages sent at once: expected the receive queue to fill up")
	}
	// Nothing moves while the receiver does not drain.
	if err := snd.Wait(time.Now().Add(50 * time.Millisecond)); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Wait with a full receiver: %v, want timeout", err)
	} else if !strings.Contains(err.Error(), "room to send to task 1") {
		t.Errorf("timeout error does not name the blocked destination: %v", err)
	}

	deadline := time.Now().Add(20 * time.Second)
	done := make(chan error, 1)
	go func() {
		next := 0
		for next < n {
			if err := rcv.Wait(deadline); err != nil {
				done <- err
				return
			}
			err := rcv.Drain(func(m Message) error {
				defer closeFDs(m.FDs)
				for _, k := range m.Keys {
					if k != uint32(next) {
						return errors.New("out of order")
					}
					next++
				}
				return nil
			})
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	tries := 0
	for snd.Pending() {
		if err := snd.Wait(deadline); err != nil {
			t.Fatal(err)
		}
		if err := snd.TrySend(); err != nil {
			t.Fatal(err)
		}
		tries++
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d fds in %d messages, %d sender wakeups", n, (n+MaxFDs-1)/MaxFDs, tries)
	if tries > 200 {
		t.Errorf("sender woke %d times for 40 messages: spinning", tries)
	}
}

func TestControlMessages(t *testing.T) {
	snd, rcv := pair(t)
	p := mkpipe(t)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(snd.Queue(1, 5, p[0]))
	must(snd.Post(1, KindReached, AppendUint32s(nil, 3, 1<<31)))
	must(snd.Queue(1, 6, p[1]))
	must(snd.Post(1, KindAbort, []byte("task 0: pipe 7 failed")))
	must(snd.Post(1, KindUser, nil))
	must(snd.PostMessage(1, Message{Kind: KindUser + 1, Keys: []uint32{77}, FDs: []int{p[0]}, Data: []byte("x")}))
	flushAll(t, snd)
	msgs := receive(t, rcv, 6)
	for _, m := range msgs {
		defer closeFDs(m.FDs)
	}
	if m := msgs[0]; m.Kind != KindFDs || len(m.FDs) != 1 || m.Keys[0] != 5 {
		t.Errorf("message 0: %+v", m)
	}
	if m := msgs[1]; m.Kind != KindReached || len(m.FDs) != 0 {
		t.Errorf("message 1: %+v", m)
	} else if nodes, err := ParseUint32s(m.Data); err != nil || len(nodes) != 2 || nodes[0] != 3 || nodes[1] != 1<<31 {
		t.Errorf("reached nodes %v, %v", nodes, err)
	}
	if m := msgs[2]; m.Kind != KindFDs || len(m.FDs) != 1 || m.Keys[0] != 6 {
		t.Errorf("message 2: %+v", m)
	}
	if m := msgs[3]; m.Kind != KindAbort || string(m.Data) != "task 0: pipe 7 failed" {
		t.Errorf("message 3: %+v", m)
	}
	if m := msgs[4]; m.Kind != KindUser || m.Data != nil || m.FDs != nil || m.Keys != nil {
		t.Errorf("message 4: %+v", m)
	}
	if m := msgs[5]; m.Kind != KindUser+1 || len(m.FDs) != 1 || m.Keys[0] != 77 || string(m.Data) != "x" {
		t.Errorf("message 5: %+v", m)
	}
	if _, err := ParseUint32s([]byte{1, 2, 3}); !errors.Is(err, ErrProtocol) {
		t.Errorf("ParseUint32s of 3 bytes: %v", err)
	}

	// Invalid messages are refused at post time.
	for _, m := range []Message{
		{Kind: 0},
		{Kind: KindUser, Keys: []uint32{1}},
		{Kind: KindUser, Keys: make([]uint32, MaxFDs+1), FDs: make([]int, MaxFDs+1)},
		{Kind: KindUser, Data: make([]byte, MaxData+1)},
		{Kind: KindUser, Keys: []uint32{1}, FDs: []int{-1}},
	} {
		if err := snd.PostMessage(1, m); err == nil {
			t.Errorf("PostMessage accepted kind %d, %d keys, %d fds, %d data", m.Kind, len(m.Keys), len(m.FDs), len(m.Data))
		}
	}
	if err := snd.Queue(1, 1, -1); err == nil {
		t.Error("Queue accepted fd -1")
	}
}

// header builds a raw datagram header.
func header(magic, version, kind byte, from uint32, nkeys uint16, ndata uint32) []byte {
	b := make([]byte, headerLen)
	b[0], b[1], b[2] = magic, version, kind
	binary.LittleEndian.PutUint32(b[4:], from)
	binary.LittleEndian.PutUint16(b[8:], nkeys)
	binary.LittleEndian.PutUint32(b[12:], ndata)
	return b
}

// TestHostile sends malformed datagrams with fds attached and checks they
// are rejected with ErrProtocol, every fd that came with them is closed,
// and the receiver keeps working.
func TestHostile(t *testing.T) {
	snd, rcv := pair(t)
	p := mkpipe(t)
	three := []int{p[0], p[1], p[0]}
	keys3 := AppendUint32s(nil, 1, 2, 3)
	ok := append(header(wireMagic, wireVersion, byte(KindFDs), 0, 3, 0), keys3...)

	d, err := snd.dest(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := snd.dial(d); err != nil {
		t.Fatal(err)
	}
	unnamed, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(unnamed)
	spoof, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(spoof)
	if err := unix.Bind(spoof, &unix.SockaddrUnix{Name: "@fdrestore-test-" + rcv.RunID()}); err != nil {
		t.Fatal(err)
	}

	big := append(header(wireMagic, wireVersion, byte(KindUser), 0, 0, MaxData+100), make([]byte, MaxData+100+4*MaxFDs)...)
	cases := []struct {
		name string
		body []byte
		fds  []int
		sock int // 0: the real sender socket
	}{
		{"empty", nil, three, 0},
		{"short header", []byte{wireMagic, wireVersion, 1, 0, 0}, three, 0},
		{"bad magic", append(header(0x7F, wireVersion, 1, 0, 3, 0), keys3...), three, 0},
		{"bad version", append(header(wireMagic, 9, 1, 0, 3, 0), keys3...), three, 0},
		{"kind 0", append(header(wireMagic, wireVersion, 0, 0, 3, 0), keys3...), three, 0},
		{"reserved set", func() []byte { b := bytes.Clone(ok); b[3] = 1; return b }(), three, 0},
		{"nkeys 65535", append(header(wireMagic, wireVersion, 1, 0, 65535, 0), keys3...), three, 0},
		{"ndata 4G", append(header(wireMagic, wireVersion, 1, 0, 3, 0xFFFFFFFF), keys3...), three, 0},
		{"ndata past end", append(header(wireMagic, wireVersion, 1, 0, 3, 10), keys3...), three, 0},
		{"trailing bytes", append(bytes.Clone(ok), 0), three, 0},
		{"keys missing", header(wireMagic, wireVersion, 1, 0, 3, 0), three, 0},
		{"fewer keys than fds", append(header(wireMagic, wireVersion, 1, 0, 2, 0), keys3[:8]...), three, 0},
		{"more keys than fds", ok, three[:2], 0},
		{"fds without keys", header(wireMagic, wireVersion, byte(KindUser), 0, 0, 0), three, 0},
		{"oversized datagram", big, three, 0},
		{"spoofed from", append(header(wireMagic, wireVersion, 1, 5, 3, 0), keys3...), three, 0},
		{"unnamed sender", ok, three, unnamed},
		{"foreign sender", ok, three, spoof},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := countFDs(t)
			sock := c.sock
			var to unix.Sockaddr
			if sock == 0 {
				sock = d.sock
			} else {
				to = &unix.SockaddrUnix{Name: Addr(rcv.RunID(), 1)}
			}
			if err := unix.Sendmsg(sock, c.body, unix.UnixRights(c.fds...), to, 0); err != nil {
				t.Fatalf("raw send: %v", err)
			}
			called := false
			err := rcv.Drain(func(m Message) error { called = true; closeFDs(m.FDs); return nil })
			if !errors.Is(err, ErrProtocol) || called {
				t.Fatalf("Drain = %v (callback called: %v), want ErrProtocol", err, called)
			}
			t.Log(err)
			if after := countFDs(t); after != before {
				t.Fatalf("%d fds before, %d after: received fds leaked", before, after)
			}
		})
	}

	// The endpoint still works.
	if err := snd.Queue(1, 9, p[0]); err != nil {
		t.Fatal(err)
	}
	flushAll(t, snd)
	m := receive(t, rcv, 1)[0]
	closeFDs(m.FDs)
	if m.Keys[0] != 9 {
		t.Fatalf("got %+v", m)
	}
}

func TestCallbackError(t *testing.T) {
	snd, rcv := pair(t)
	p := mkpipe(t)
	snd.Queue(1, 1, p[0])
	snd.Post(1, KindUser, nil)
	flushAll(t, snd)
	boom := errors.New("boom")
	if _, err := Wait(time.Now().Add(5*time.Second), "message", unix.PollFd{Fd: int32(rcv.FD()), Events: unix.POLLIN}); err != nil {
		t.Fatal(err)
	}
	err := rcv.Drain(func(m Message) error { closeFDs(m.FDs); return boom })
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "from task 0 (1 fds)") {
		t.Fatalf("Drain = %v", err)
	}
	// The message behind the failed one is still there.
	if m := receive(t, rcv, 1)[0]; m.Kind != KindUser {
		t.Fatalf("got %+v", m)
	}
}

func TestDestinationGone(t *testing.T) {
	t.Run("never bound", func(t *testing.T) {
		snd, _ := pair(t)
		p := mkpipe(t)
		snd.Queue(7, 1, p[0])
		err := snd.Flush()
		var se *SendError
		if !errors.As(err, &se) || se.To != 7 || !errors.Is(err, unix.ECONNREFUSED) {
			t.Fatalf("Flush = %v, want SendError to task 7 with ECONNREFUSED", err)
		}
		t.Log(err)
		if snd.Pending() {
			t.Error("failed destination still pending")
		}
		if err := snd.Queue(7, 2, p[0]); !errors.As(err, &se) {
			t.Errorf("Queue after failure = %v, want the sticky error", err)
		}
	})
	t.Run("closed while connected", func(t *testing.T) {
		snd, rcv := pair(t)
		p := mkpipe(t)
		snd.Post(1, KindUser, []byte("hi"))
		flushAll(t, snd)
		rcv.Close()
		snd.Queue(1, 1, p[0])
		err := snd.Flush()
		var se *SendError
		if !errors.As(err, &se) || se.To != 1 || se.FDs != 1 || se.Op != "send" || !errors.Is(err, unix.ECONNREFUSED) {
			t.Fatalf("Flush = %v, want SendError(send, 1 fd) with ECONNREFUSED", err)
		}
		if !strings.Contains(err.Error(), "task 0 -> task 1") || !strings.Contains(err.Error(), "gone") {
			t.Errorf("unclear error: %v", err)
		}
		t.Log(err)
	})
	t.Run("closed while blocked", func(t *testing.T) {
		snd, rcv := pair(t)
		p := mkpipe(t)
		for i := range 20 * MaxFDs {
			snd.Queue(1, uint32(i), p[0])
		}
		if err := snd.Flush(); err != nil || !snd.Pending() {
			t.Fatalf("Flush = %v, pending %v", err, snd.Pending())
		}
		rcv.Close()
		// The sender is woken (not left waiting for its deadline) and
		// learns that the destination is gone.
		start := time.Now()
		if err := snd.Wait(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("woken after %v", d)
		}
		if err := snd.TrySend(); !errors.Is(err, unix.ECONNREFUSED) {
			t.Fatalf("TrySend = %v", err)
		}
		if snd.Pending() {
			t.Error("still pending")
		}
	})
}

func TestWaitTimeout(t *testing.T) {
	p := mkpipe(t)
	start := time.Now()
	_, err := Wait(start.Add(50*time.Millisecond), "pipe data from task 3", unix.PollFd{Fd: int32(p[0]), Events: unix.POLLIN})
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "pipe data from task 3") {
		t.Fatalf("Wait = %v", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond || d > 2*time.Second {
		t.Errorf("waited %v for a 50ms deadline", d)
	}
	t.Log(err)
	if _, err := Wait(time.Time{}, "anything"); err == nil || errors.Is(err, ErrTimeout) {
		t.Errorf("Wait without deadline = %v", err)
	}
	if _, err := Wait(time.Now().Add(-time.Second), "past"); !errors.Is(err, ErrTimeout) {
		t.Errorf("Wait with past deadline = %v", err)
	}
	unix.Write(p[1], []byte("x"))
	fds := []unix.PollFd{{Fd: int32(p[1]), Events: unix.POLLIN}, {Fd: int32(p[0]), Events: unix.POLLIN}}
	if n, err := Wait(time.Now().Add(time.Second), "data", fds...); err != nil || n != 1 || fds[1].Revents&unix.POLLIN == 0 {
		t.Errorf("Wait = %d, %v, revents %v", n, err, fds)
	}
	if _, err := Wait(time.Now().Add(time.Second), "closed fd", unix.PollFd{Fd: 1 << 20, Events: unix.POLLIN}); err == nil || errors.Is(err, ErrTimeout) {
		t.Errorf("Wait on a closed fd = %v", err)
	}

	_, rcv := pair(t)
	extra := []unix.PollFd{{Fd: int32(p[0]), Events: unix.POLLIN}}
	if err := rcv.Wait(time.Now().Add(time.Second), extra...); err != nil || extra[0].Revents&unix.POLLIN == 0 {
		t.Errorf("transport Wait with a ready extra fd: %v, %v", err, extra)
	}
	unix.Read(p[0], make([]byte, 1))
	err = rcv.Wait(time.Now().Add(30 * time.Millisecond))
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "messages to task 1") {
		t.Fatalf("transport Wait = %v", err)
	}
	t.Log(err)
}

func TestAdoptAndFloor(t *testing.T) {
	run := NewRunID()
	made, err := Open(run, 4, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer made.Close()
	dup, err := unix.Dup(made.FD())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Adopt(dup, run, 5, Options{}); err == nil || !strings.Contains(err.Error(), "want") {
		t.Errorf("Adopt for the wrong task = %v", err)
	}
	if _, err := Adopt(dup, "other", 4, Options{}); err == nil {
		t.Error("Adopt for the wrong run succeeded")
	}
	p := mkpipe(t)
	if _, err := Adopt(p[0], run, 4, Options{}); err == nil {
		t.Error("Adopt of a pipe succeeded")
	}
	stream, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(stream)
	if _, err := Adopt(stream, run, 4, Options{}); err == nil {
		t.Error("Adopt of a stream socket succeeded")
	}
	// Clear CLOEXEC and O_NONBLOCK as an inheriting process would see it.
	unix.FcntlInt(uintptr(dup), unix.F_SETFD, 0)
	const floor = 500
	tr, err := Adopt(dup, run, 4, Options{FDFloor: floor})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if tr.FD() < floor || tr.Self() != 4 || tr.RunID() != run {
		t.Errorf("adopted fd %d (floor %d), self %d, run %q", tr.FD(), floor, tr.Self(), tr.RunID())
	}
	if flags, _ := unix.FcntlInt(uintptr(tr.FD()), unix.F_GETFD, 0); flags&unix.FD_CLOEXEC == 0 {
		t.Error("adopted fd is not CLOEXEC")
	}
	if fl, _ := unix.FcntlInt(uintptr(tr.FD()), unix.F_GETFL, 0); fl&unix.O_NONBLOCK == 0 {
		t.Error("adopted fd is not O_NONBLOCK")
	}
	if _, err := unix.FcntlInt(uintptr(dup), unix.F_GETFD, 0); err != unix.EBADF {
		t.Errorf("old number %d still open after the move", dup)
	}

	// Sender sockets honour the floor too, and a task can send to itself.
	snd, err := Open(run, 6, Options{FDFloor: floor})
	if err != nil {
		t.Fatal(err)
	}
	defer snd.Close()
	snd.Post(4, KindUser, []byte("a"))
	snd.Post(6, KindUser, []byte("self"))
	flushAll(t, snd)
	for _, d := range snd.dests {
		if d.sock < floor {
			t.Errorf("sender socket %d below floor %d", d.sock, floor)
		}
	}
	if m := receive(t, tr, 1)[0]; m.From != 6 || string(m.Data) != "a" {
		t.Errorf("got %+v", m)
	}
	if m := receive(t, snd, 1)[0]; m.From != 6 || string(m.Data) != "self" {
		t.Errorf("got %+v", m)
	}

	// Closed transports refuse work; Close is idempotent.
	tr.Close()
	if err := tr.Close(); err != nil {
		t.Error(err)
	}
	if err := tr.Queue(1, 1, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("Queue after Close = %v", err)
	}
	if err := tr.Drain(func(Message) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("Drain after Close = %v", err)
	}
	if err := tr.Flush(); !errors.Is(err, ErrClosed) {
		t.Errorf("Flush after Close = %v", err)
	}
}

func TestNoLeakOnClose(t *testing.T) {
	before := countFDs(t)
	run := NewRunID()
	a, err := Open(run, 0, Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(run, 1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	a.Post(1, KindUser, nil)
	a.Post(0, KindUser, nil)
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
	if after := countFDs(t); after != before {
		t.Errorf("%d fds before, %d after", before, after)
	}
}

// TestCrossProcess runs task 1 in a re-executed test binary. The parent
// (as coordinator) makes the child's endpoint and passes it as fd 3; the
// child adopts it. Fds go both ways and are used across the process
// boundary. A pidfd in the wait set makes the parent notice a dead child
// at once instead of at its deadline.
func TestCrossProcess(t *testing.T) {
	run := NewRunID()
	me, err := Open(run, 0, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer me.Close()
	child, err := Open(run, 1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	pid, err := syscall.ForkExec(exe, []string{exe}, &syscall.ProcAttr{
		Env:   append(os.Environ(), childEnv+"=1", childRunIDEnv+"="+run, "GORACE=atexit_sleep_ms=0"),
		Files: []uintptr{0, 1, 2, uintptr(child.FD())},
	})
	child.Close() // the child has its own reference
	if err != nil {
		t.Fatal(err)
	}
	reaped := false
	reap := func() (unix.WaitStatus, error) {
		var ws unix.WaitStatus
		_, err := unix.Wait4(pid, &ws, 0, nil)
		reaped = true
		return ws, err
	}
	defer func() {
		if !reaped {
			unix.Kill(pid, unix.SIGKILL)
			reap()
		}
	}()
	pidfd, err := unix.PidfdOpen(pid, 0) // pidfds are always CLOEXEC
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)

	p := mkpipe(t)
	if _, err := unix.Write(p[1], []byte("from parent")); err != nil {
		t.Fatal(err)
	}
	if err := me.Queue(1, 7, p[0]); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	if err := me.Flush(); err != nil {
		t.Fatal(err)
	}
	var echo, fromChild []byte
	for echo == nil || me.Pending() {
		pfd := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		if err := me.Wait(deadline, pfd...); err != nil {
			t.Fatal(err)
		}
		if err := me.TrySend(); err != nil {
			t.Fatal(err)
		}
		// Look at the child's state before draining: everything it sent
		// before exiting is queued by the time the exit is visible.
		exited := pfd[0].Revents&unix.POLLIN != 0
		err := me.Drain(func(m Message) error {
			defer closeFDs(m.FDs)
			switch {
			case m.From != 1:
				t.Errorf("message from task %d", m.From)
			case m.Kind == KindFDs && len(m.FDs) == 1 && m.Keys[0] == 9:
				buf := make([]byte, 64)
				n, err := unix.Read(m.FDs[0], buf)
				if err != nil {
					return err
				}
				fromChild = buf[:n]
			case m.Kind == KindUser:
				echo = append([]byte{}, m.Data...)
			default:
				t.Errorf("unexpected message %+v", m)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if echo == nil && exited {
			ws, _ := reap()
			t.Fatalf("child exited (status %d) before answering", ws.ExitStatus())
		}
	}
	if string(echo) != "from parent" || string(fromChild) != "from child" {
		t.Errorf("child read %q, parent read %q", echo, fromChild)
	}
	if _, err := Wait(deadline, "exit of child task 1", unix.PollFd{Fd: int32(pidfd), Events: unix.POLLIN}); err != nil {
		t.Fatal(err)
	}
	ws, err := reap()
	if err != nil || !ws.Exited() || ws.ExitStatus() != 0 {
		t.Fatalf("child: %v, status %v", err, ws)
	}
}

// TestCrossProcessChildDies: the child exits without reading; the parent
// learns it at once through the pidfd, and its next send fails with a
// clear error instead of blocking or waiting for the deadline.
func TestCrossProcessChildDies(t *testing.T) {
	run := NewRunID()
	me, err := Open(run, 0, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer me.Close()
	child, err := Open(run, 1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	pid, err := syscall.ForkExec(exe, []string{exe}, &syscall.ProcAttr{
		Env:   append(os.Environ(), childEnv+"=1", childModeEnv+"=die", "GORACE=atexit_sleep_ms=0"),
		Files: []uintptr{0, 1, 2, uintptr(child.FD())},
	})
	child.Close()
	if err != nil {
		t.Fatal(err)
	}
	var ws unix.WaitStatus
	reaped := false
	defer func() {
		if !reaped {
			unix.Kill(pid, unix.SIGKILL)
			unix.Wait4(pid, &ws, 0, nil)
		}
	}()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	p := mkpipe(t)
	if err := me.Queue(1, 1, p[0]); err != nil {
		t.Fatal(err)
	}
	// The child may or may not be gone already.
	if err := me.Flush(); err != nil && !errors.Is(err, unix.ECONNREFUSED) {
		t.Fatal(err)
	}
	start := time.Now()
	pfd := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for pfd[0].Revents&unix.POLLIN == 0 {
		if err := me.Wait(start.Add(20*time.Second), pfd...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	reaped = true
	if ws.ExitStatus() != 3 {
		t.Errorf("child status %d, want 3", ws.ExitStatus())
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("noticed the death after %v", d)
	}
	err = me.Post(1, KindAbort, []byte("parent gives up"))
	if err == nil {
		err = me.Flush()
	}
	var se *SendError
	if !errors.As(err, &se) || se.To != 1 || !errors.Is(err, unix.ECONNREFUSED) {
		t.Fatalf("send to the dead task = %v, want ECONNREFUSED", err)
	}
	t.Log(err)
}

// FuzzDecode checks that decoding never panics and accepts only what
// encodes back to the same bytes.
func FuzzDecode(f *testing.F) {
	f.Add(encodeMessage(KindFDs, 3, []uint32{1, 2}, nil), 2)
	f.Add(encodeMessage(KindUser, 0, nil, []byte("abc")), 0)
	f.Add([]byte{wireMagic, wireVersion, 1}, 0)
	f.Add(header(wireMagic, wireVersion, 1, 0, 0xFFFF, 0xFFFFFFFF), 0)
	f.Fuzz(func(t *testing.T, b []byte, nfds int) {
		m, err := decodeMessage(b, nfds)
		if err != nil {
			return
		}
		if again := encodeMessage(m.Kind, m.From, m.Keys, m.Data); !bytes.Equal(again, b) {
			t.Fatalf("accepted %x, re-encodes as %x", b, again)
		}
	})
}
