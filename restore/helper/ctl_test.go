package helper

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// fillMsg sets every field of a Msg to a value other than its zero value
// (and each differently), so that a field the codec forgets shows.
func fillMsg(t *testing.T, seed int) *Msg {
	m := new(Msg)
	v := reflect.ValueOf(m).Elem()
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		name := v.Type().Field(i).Name
		switch f.Kind() {
		case reflect.String:
			f.SetString(name + "-é\x00" + strings.Repeat("x", seed+i))
		case reflect.Int:
			f.SetInt(int64((seed + i) * 1000003 * (1 - 2*(i%2)))) // negative ones too
		case reflect.Bool:
			f.SetBool(true)
		case reflect.Slice:
			switch f.Type().Elem().Kind() {
			case reflect.String:
				f.Set(reflect.ValueOf([]string{name, "", "a=b"}))
			case reflect.Uint8:
				f.SetBytes([]byte{0, 1, 2, byte(seed + i)})
			default:
				t.Fatalf("Msg.%s: no test value for %s", name, f.Type())
			}
		default:
			t.Fatalf("Msg.%s: no test value for %s (teach encode, decodeMsg and this test)", name, f.Type())
		}
	}
	return m
}

// TestMsgRoundTrip: every field of Msg survives encode and decodeMsg, the
// zero message too, and a truncated message is an error.
func TestMsgRoundTrip(t *testing.T) {
	for _, m := range []*Msg{{}, {Op: OpOK}, fillMsg(t, 0), fillMsg(t, 7)} {
		b := m.encode()
		if !IsMsg(b) {
			t.Fatalf("encoded %+v is not a message", m)
		}
		got, err := decodeMsg(b)
		if err != nil {
			t.Fatalf("decode %+v: %v", m, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, m)
		}
		for cut := len(msgMagic); cut < len(b); cut += 1 + len(b)/50 {
			if _, err := decodeMsg(b[:cut]); err == nil {
				t.Errorf("%d of %d bytes decoded without error", cut, len(b))
			}
		}
	}
	if IsMsg([]byte("panic: runtime error")) {
		t.Error("a crash report passes for a message")
	}
}

// TestSendRecv: a message and its fds over a SEQPACKET pair, and a crash
// report written in several pieces comes back as one error.
func TestSendRecv(t *testing.T) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer CloseFDs(pair[:])
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer CloseFDs(p[:])
	want := fillMsg(t, 3)
	if err := Send(pair[0], want, p[0], p[1]); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	got, fds, err := Recv(pair[1], deadline)
	if err != nil {
		t.Fatal(err)
	}
	CloseFDs(fds)
	if !reflect.DeepEqual(got, want) || len(fds) != 2 {
		t.Errorf("received %+v with %d fds, want %+v with 2", got, len(fds), want)
	}
	for _, piece := range []string{"panic: boom\n", "\ngoroutine 1 [running]:\n", "main.main()\n"} {
		unix.Write(pair[0], []byte(piece))
	}
	_, _, err = Recv(pair[1], deadline)
	if err == nil || !strings.Contains(err.Error(), "helper crashed: panic: boom goroutine 1 [running]: main.main()") {
		t.Errorf("crash report: %v", err)
	}
	unix.Close(pair[0])
	pair[0] = -1
	if _, _, err := Recv(pair[1], deadline); !errors.Is(err, ErrPeerGone) {
		t.Errorf("after close: %v, want ErrPeerGone", err)
	}
}

// TestLogRoundTrip: a helper's log entry comes back with its level,
// message and fields (values as text).
func TestLogRoundTrip(t *testing.T) {
	e := &logrus.Entry{Level: logrus.DebugLevel, Message: "fds restored",
		Data: logrus.Fields{"task": uint32(7), "took": 1500 * time.Microsecond, "error": errors.New("bad"), "fds": 3}}
	b, err := logFormatter{}.Format(e)
	if err != nil {
		t.Fatal(err)
	}
	lvl, msg, fields, err := DecodeLog(b)
	if err != nil {
		t.Fatal(err)
	}
	want := logrus.Fields{"task": "7", "took": "1.5ms", "error": "bad", "fds": "3"}
	if lvl != logrus.DebugLevel || msg != "fds restored" || !reflect.DeepEqual(fields, want) {
		t.Errorf("got %v %q %v, want debug %q %v", lvl, msg, fields, "fds restored", want)
	}
	if _, _, _, err := DecodeLog(b[:len(b)-1]); err == nil {
		t.Error("a truncated entry decodes")
	}
}

// TestEnv: the helpers' environment turns the container-aware GOMAXPROCS
// off and sets GOMAXPROCS=1 unless given, whatever the generation.
func TestEnv(t *testing.T) {
	t.Setenv("GODEBUG", "x=1")
	t.Setenv("GOMAXPROCS", "")
	unsetenv(t, "GOMAXPROCS")
	env := Env()
	count := func(env []string, prefix string) (n int, last string) {
		for _, kv := range env {
			if strings.HasPrefix(kv, prefix) {
				n, last = n+1, kv
			}
		}
		return
	}
	if n, kv := count(env, "GODEBUG="); n != 1 || kv != "GODEBUG=x=1,containermaxprocs=0,updatemaxprocs=0" {
		t.Errorf("GODEBUG: %d entries, %q", n, kv)
	}
	if n, kv := count(env, "GOMAXPROCS="); n != 1 || kv != "GOMAXPROCS=1" {
		t.Errorf("GOMAXPROCS: %d entries, %q", n, kv)
	}
	// A helper's own environment is Env(): its children get the same.
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	if again := Env(); len(again) != len(env) {
		t.Errorf("Env of a helper adds %d entries", len(again)-len(env))
	}
	t.Setenv("GOMAXPROCS", "4")
	if _, kv := count(Env(), "GOMAXPROCS="); kv != "GOMAXPROCS=4" {
		t.Errorf("a given GOMAXPROCS became %q", kv)
	}
}

func unsetenv(t *testing.T, k string) {
	t.Helper()
	if err := unix.Unsetenv(k); err != nil {
		t.Fatal(err)
	}
}

// TestRanges: the stopper's fd lists.
func TestRanges(t *testing.T) {
	for _, v := range [][]int{nil, {3}, {3, 4, 5, 9, 11, 12}, {0, 2, 4}} {
		s := encodeRanges(v)
		got, err := decodeRanges(s)
		if err != nil || !reflect.DeepEqual(got, v) {
			t.Errorf("%v -> %q -> %v, %v", v, s, got, err)
		}
	}
	if _, err := decodeRanges("r:5-3"); err == nil {
		t.Error("a reversed range decodes")
	}
}
