package images

import (
	"bytes"
	"math/rand"
	"testing"

	"github.com/fdrestore/fdrestore/proto/criupb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// checkFast decodes body with the fast decoder and with proto.Unmarshal:
// whenever the fast one takes it, the messages must be equal and encode
// to the same bytes. It reports whether the fast decoder took it.
func checkFast(t *testing.T, k *Kind, body []byte) bool {
	t.Helper()
	var d fastDec
	fast := d.decode(k, body)
	slow := k.NewEntry()
	err := proto.Unmarshal(body, slow)
	if fast == nil {
		return false
	}
	if err != nil {
		t.Fatalf("%s %x: fast decoder took what proto.Unmarshal refuses (%v)", k.Name, body, err)
	}
	if !proto.Equal(fast, slow) {
		t.Fatalf("%s %x: fast %v, proto.Unmarshal %v", k.Name, body, fast, slow)
	}
	opts := proto.MarshalOptions{Deterministic: true}
	a, _ := opts.Marshal(fast)
	b, _ := opts.Marshal(slow)
	if !bytes.Equal(a, b) {
		t.Fatalf("%s %x: re-encodes as %x, proto.Unmarshal's as %x", k.Name, body, a, b)
	}
	return true
}

func TestFastDecodeMatchesProto(t *testing.T) {
	u := proto.Uint32
	fdinfo := &criupb.FdinfoEntry{Id: u(7), Flags: u(1), Type: criupb.FdTypes_PIPE.Enum(), Fd: u(3)}
	pipe := &criupb.FileEntry{Type: criupb.FdTypes_PIPE.Enum(), Id: u(7), Pipe: &criupb.PipeEntry{Id: u(7), PipeId: u(1234), Flags: u(0o4001),
		Fown: &criupb.FownEntry{Uid: u(0), Euid: u(1000), Signum: u(0), PidType: u(0), Pid: u(0)}}}
	fdinfoKind, filesKind := KindNamed("FDINFO"), KindNamed("FILES")
	mustTake := func(k *Kind, m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if !checkFast(t, k, b) {
			t.Fatalf("%s %v: fast decoder did not take it", k.Name, m)
		}
		return b
	}
	fb := mustTake(fdinfoKind, fdinfo)
	pb := mustTake(filesKind, pipe)
	mustTake(filesKind, &criupb.FileEntry{Type: criupb.FdTypes_PIPE.Enum(), Id: u(1)}) // no payload: proto.Unmarshal takes it too
	mustTake(fdinfoKind, &criupb.FdinfoEntry{Id: u(1 << 31), Flags: u(0), Type: criupb.FdTypes_REG.Enum(), Fd: u(1<<32 - 1)})

	// What it must leave to proto.Unmarshal.
	var unknown []byte
	unknown = protowire.AppendTag(unknown, 99, protowire.VarintType)
	unknown = protowire.AppendVarint(unknown, 5)
	var badEnum []byte
	badEnum = protowire.AppendTag(badEnum, 3, protowire.VarintType)
	badEnum = protowire.AppendVarint(badEnum, 77777)
	var big []byte
	big = protowire.AppendTag(big, 4, protowire.VarintType)
	big = protowire.AppendVarint(big, 1<<40)
	withSelinux, _ := proto.Marshal(&criupb.FdinfoEntry{Id: u(1), Flags: u(0), Type: criupb.FdTypes_REG.Enum(), Fd: u(0), XattrSecuritySelinux: proto.String("x")})
	reg, _ := proto.Marshal(&criupb.FileEntry{Type: criupb.FdTypes_REG.Enum(), Id: u(1), Reg: &criupb.RegFileEntry{Id: u(1), Flags: u(0), Pos: proto.Uint64(0), Name: proto.String("/")}})
	noFown, _ := proto.Marshal(&criupb.FileEntry{Type: criupb.FdTypes_PIPE.Enum(), Id: u(7), Pipe: &criupb.PipeEntry{Id: u(7), PipeId: u(1), Flags: u(0)}})
	for name, c := range map[string]struct {
		k    *Kind
		body []byte
	}{
		"fdinfo unknown field":   {fdinfoKind, append(append([]byte(nil), fb...), unknown...)},
		"fdinfo repeated field":  {fdinfoKind, append(append([]byte(nil), fb...), fb[:2]...)},
		"fdinfo unknown enum":    {fdinfoKind, append(append([]byte(nil), fb[:4]...), append(badEnum, fb[6:]...)...)},
		"fdinfo beyond 32 bits":  {fdinfoKind, append(append([]byte(nil), fb[:6]...), big...)},
		"fdinfo missing fd":      {fdinfoKind, fb[:6]},
		"fdinfo selinux":         {fdinfoKind, withSelinux},
		"files unknown field":    {filesKind, append(append([]byte(nil), pb...), unknown...)},
		"files reg":              {filesKind, reg},
		"pipe without fown":      {filesKind, noFown},
		"files truncated":        {filesKind, pb[:len(pb)-1]},
		"files empty":            {filesKind, nil},
		"fdinfo wrong wire type": {fdinfoKind, []byte{0x0d, 1, 2, 3, 4}},
	} {
		if checkFast(t, c.k, c.body) {
			t.Errorf("%s: fast decoder took %x", name, c.body)
		}
	}

	// Random mutations of valid entries: whatever the fast decoder takes
	// must be exactly proto.Unmarshal's message.
	rnd := rand.New(rand.NewSource(1))
	for i := 0; i < 20000; i++ {
		k, src := fdinfoKind, fb
		if i%2 == 1 {
			k, src = filesKind, pb
		}
		b := append([]byte(nil), src...)
		for j := rnd.Intn(3); j >= 0; j-- {
			switch rnd.Intn(3) {
			case 0:
				b[rnd.Intn(len(b))] = byte(rnd.Intn(256))
			case 1:
				b = b[:rnd.Intn(len(b)+1)]
			case 2:
				b = append(b, byte(rnd.Intn(256)))
			}
			if len(b) == 0 {
				break
			}
		}
		checkFast(t, k, b)
	}
}
