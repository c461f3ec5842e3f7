package unixsk

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/fdrestore/fdrestore/files"
)

func TestParamsRoundTrip(t *testing.T) {
	p := Params{Split: true, Socks: []Sock{
		{File: 6, Ino: 100, Type: TypeStream, Flags: 2 | 04000, Fown: files.Fown{PidType: 1, Pid: 2, Signum: 10},
			Backlog: 5, Name: []byte("\x00abs"), NameDir: "/d", Deleted: true, HasPerms: true, Mode: 0o140755, UID: 1, GID: 2,
			Shutdown: ShutWrite, Opts: Opts{Sndbuf: 4096, Passcred: true, Filter: []uint64{1 << 48, 6<<48 | 0xffff}},
			Create: CreateAccepted, Partner: 1, Listener: -1, ConnectTo: -1, Pending: -1, Sender: 1,
			Packets: []Packet{{Data: []byte("a"), Fds: []uint32{7, 8}}, {Data: []byte("bc")}}},
		{File: 9, Ino: 101, Type: TypeStream, Create: CreateClient, Partner: 0, Listener: -1, ConnectTo: -1, Pending: -1, Sender: SendNone,
			ExtName: []byte("/x"), ExtDir: "/"},
	}}
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var q Params
	if err := q.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	b2, _ := q.MarshalBinary()
	if !bytes.Equal(b, b2) {
		t.Errorf("round trip changed the encoding:\n%+v\n%+v", p, q)
	}
	s := q.Socks[0]
	if string(s.Name) != "\x00abs" || s.Mode != 0o140755 || !reflect.DeepEqual(s.Opts.Filter, p.Socks[0].Opts.Filter) ||
		!reflect.DeepEqual(s.Packets[0].Fds, []uint32{7, 8}) || s.Listener != -1 || s.Sender != 1 || string(q.Socks[1].ExtName) != "/x" {
		t.Errorf("decoded %+v", s)
	}
	for n := range b {
		var r Params
		if r.UnmarshalBinary(b[:n]) == nil {
			t.Errorf("truncated to %d of %d bytes: no error", n, len(b))
		}
	}
}

func TestParamsCheck(t *testing.T) {
	base := func() Params {
		return Params{Socks: []Sock{
			{File: 1, Type: TypeStream, Create: CreatePair, Partner: 1, Listener: -1, ConnectTo: -1, Pending: -1, Sender: SendNone},
			{File: 2, Type: TypeStream, Create: CreatePairEnd, Partner: 0, Listener: -1, ConnectTo: -1, Pending: -1, Sender: SendNone},
		}}
	}
	for name, mut := range map[string]func(p *Params){
		"partner out of range": func(p *Params) { p.Socks[0].Partner = 5 },
		"partner is self":      func(p *Params) { p.Socks[0].Partner = 0 },
		"pair end missing":     func(p *Params) { p.Socks[1].Create = CreatePlain },
		"bad type":             func(p *Params) { p.Socks[0].Type = 3 },
		"tmp sender":           func(p *Params) { p.Socks[0].Sender = SendTmp },
		"connect range":        func(p *Params) { p.Socks[0].ConnectTo = 2 },
		"unknown creation":     func(p *Params) { p.Socks[0].Create = 99 },
	} {
		p := base()
		mut(&p)
		b, _ := p.MarshalBinary()
		var q Params
		if err := q.UnmarshalBinary(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	p := base()
	b, _ := p.MarshalBinary()
	var q Params
	if err := q.UnmarshalBinary(b); err != nil {
		t.Errorf("valid parameters: %v", err)
	}
	pp, ok := PairOf(&q)
	if !ok || pp.Type != TypeStream {
		t.Errorf("PairOf a plain socketpair: %+v %v", pp, ok)
	}
	q.Socks[0].Shutdown = ShutBoth
	if _, ok := PairOf(&q); ok {
		t.Errorf("PairOf a socketpair with a shutdown: accepted")
	}
}
