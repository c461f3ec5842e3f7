package synth_test

import (
	"testing"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/internal/synth"
	"github.com/fdrestore/fdrestore/proto/criupb"
)

// TestUnixImages writes unix sockets, a packet carrying files in flight,
// and checks what images.Load makes of them.
func TestUnixImages(t *testing.T) {
	b := synth.New()
	tk := b.Task(100)
	b.Stdio(tk)
	x, y := b.UnixPair(synth.Stream)
	l := b.UnixSocket(synth.Stream, synth.Listening, []byte("/tmp/x.sock"))
	p := b.NewPipe([]byte("d"), 0)
	b.Share(x, tk, 3)
	b.Share(y, tk, 4)
	b.Share(l, tk, 5)
	b.Packet(x, []byte("hi"), p.Read, l)
	dir := t.TempDir()
	if err := b.Write(dir); err != nil {
		t.Fatal(err)
	}
	s, err := images.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	fx, fy, fl := s.Files[x.ID], s.Files[y.ID], s.Files[l.ID]
	if fx.Type != criupb.FdTypes_UNIXSK || fx.Entry.GetUsk().GetPeer() != fy.Entry.GetUsk().GetIno() || fy.Entry.GetUsk().GetPeer() != fx.Entry.GetUsk().GetIno() {
		t.Errorf("pair not mutual: %v / %v", fx.Entry.GetUsk(), fy.Entry.GetUsk())
	}
	if got := string(fl.Entry.GetUsk().GetName()); got != "/tmp/x.sock\x00" {
		t.Errorf("path name recorded as %q, want it NUL-terminated as CRIU does", got)
	}
	pk := s.Packets[x.ID]
	if len(pk) != 1 || string(pk[0].Data) != "hi" || len(pk[0].Fds) != 2 || pk[0].Fds[0].ID != p.Read.ID || pk[0].Fds[1].ID != l.ID {
		t.Errorf("packets %+v", pk)
	}
	if len(s.Files[p.Read.ID].Fds) != 0 {
		t.Errorf("the pipe in flight has fds")
	}
}
