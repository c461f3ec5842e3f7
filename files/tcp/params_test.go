package tcp

import (
	"encoding/binary"
	"reflect"
	"testing"

	"github.com/fdrestore/fdrestore/files"
	"golang.org/x/sys/unix"
)

func TestParamsRoundTrip(t *testing.T) {
	for _, p := range []Params{
		{File: 7, Ino: 1306881, Family: unix.AF_INET, SkType: unix.SOCK_STREAM, Proto: unix.IPPROTO_TCP, State: StateListen,
			Flags: unix.O_RDWR, Src: []byte{127, 0, 0, 1}, SrcPort: 7000, Dst: []byte{0, 0, 0, 0}, Backlog: 8, Mode: ModeListen,
			Opts: Opts{SndBuf: 16384, RcvBuf: 131072, ReuseAddr: true, KeepCnt: 9, KeepIdle: 7200, KeepIntvl: 75, HasLinger: true, Linger: 3,
				SndTmo: [2]uint64{1, 500}, BoundDev: "lo", HasTOS: true, TOS: 16, ShutdownRecorded: true}},
		{File: 10, Family: unix.AF_INET6, SkType: unix.SOCK_STREAM, Proto: unix.IPPROTO_TCP, State: StateCloseWait,
			Src: make([]byte, 16), SrcPort: 40001, Dst: make([]byte, 16), DstPort: 7000, Mode: ModeRepair,
			Fown: files.Fown{PidType: 1, Pid: 3, Signum: 29},
			Stream: Stream{InqSeq: 1, OutqSeq: 1<<32 - 1, OptMask: 7, SndWscale: 10, RcvWscale: 7, MssClamp: 65495, Timestamp: 42,
				InQ: []byte("to-srv"), OutQ: []byte("unacked+unsent"), UnsqLen: 6, HasWindow: true,
				Window: RepairWindow{SndWl1: 1, SndWnd: 2, MaxWindow: 3, RcvWnd: 4, RcvWup: 5}}},
		{File: 11, Family: unix.AF_INET, SkType: unix.SOCK_STREAM, Proto: unix.IPPROTO_TCP, State: StateEstablished,
			Src: []byte{127, 0, 0, 1}, SrcPort: 40903, Dst: []byte{127, 0, 0, 1}, DstPort: 7900, Mode: ModePending,
			Listener: 3, Sent: []byte("early-1")},
	} {
		b, err := p.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var q Params
		if err := q.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(p, q) {
			t.Errorf("round trip:\n got %+v\nwant %+v", q, p)
		}
		for n := 0; n < len(b); n++ {
			var r Params
			if err := r.UnmarshalBinary(b[:n]); err == nil {
				t.Errorf("%d of %d bytes decoded without error", n, len(b))
			}
		}
	}
	bad := Params{Mode: ModeRepair, Stream: Stream{OutQ: []byte("ab"), UnsqLen: 3}}
	b, _ := bad.MarshalBinary()
	if err := new(Params).UnmarshalBinary(b); err == nil {
		t.Error("never-sent length beyond the send queue accepted")
	}
}

// TestSegmentChecksum: a forged segment's checksum, summed again over
// the pseudo-header and the segment, folds to all ones.
func TestSegmentChecksum(t *testing.T) {
	for _, p := range []*Params{
		{Family: unix.AF_INET, Src: []byte{127, 0, 0, 1}, SrcPort: 7000, Dst: []byte{127, 0, 0, 2}, DstPort: 40001},
		{Family: unix.AF_INET6, Src: append(make([]byte, 15), 1), SrcPort: 7000, Dst: append(make([]byte, 15), 1), DstPort: 40001},
	} {
		for _, ts := range []bool{false, true} {
			seg := segment(p, 0xdeadbeef, 0x01020304, 0x11, 512, ts)
			var sum uint32
			add := func(x []byte) {
				for i := 0; i+1 < len(x); i += 2 {
					sum += uint32(binary.BigEndian.Uint16(x[i:]))
				}
			}
			add(p.Dst)
			add(p.Src)
			sum += unix.IPPROTO_TCP + uint32(len(seg))
			add(seg)
			for sum > 0xffff {
				sum = sum&0xffff + sum>>16
			}
			if sum != 0xffff {
				t.Errorf("family %d ts %v: checksum does not verify (%#x)", p.Family, ts, sum)
			}
			if got := binary.BigEndian.Uint16(seg[0:]); got != 40001 {
				t.Errorf("source port %d, want the peer's 40001", got)
			}
		}
	}
}

func TestAddr(t *testing.T) {
	v6 := func(groups ...uint16) []byte {
		b := make([]byte, 16)
		for i, g := range groups {
			b[2*i], b[2*i+1] = byte(g>>8), byte(g)
		}
		return b
	}
	for _, c := range []struct {
		ip   []byte
		want string
	}{
		{[]byte{127, 0, 0, 1}, "127.0.0.1:7000"},
		{v6(0, 0, 0, 0, 0, 0, 0, 1), "[::1]:7000"},
		{v6(), "[::]:7000"},
		{v6(0x2001, 0xdb8, 0, 0, 1, 0, 0, 1), "[2001:db8::1:0:0:1]:7000"},
		{v6(0xfe80, 0, 0, 0, 0xa, 0xb, 0xc, 0xd), "[fe80::a:b:c:d]:7000"},
		{v6(1, 0, 2, 0, 3, 0, 4, 0), "[1:0:2:0:3:0:4:0]:7000"},
		{v6(0, 0, 0, 0, 0, 0xffff, 0x7f00, 1), "[::ffff:7f00:1]:7000"},
	} {
		if got := Addr(c.ip, 7000); got != c.want {
			t.Errorf("Addr(%x) = %s, want %s", c.ip, got, c.want)
		}
	}
}
