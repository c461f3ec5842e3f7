package zdtm

import (
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// InetCanon renders the inet sockets of an image directory (their
// files.img entries and tcp-stream images) with what legitimately differs
// between a tree and its restored copy normalised away: socket inodes
// (numbered in files.img order), owner pids (by pstree position), the
// TCP timestamp clock, snd_wl1 and
// the window sizes (see below). Sequence
// numbers, queues (as length and hash), options, rcv_wup and addresses
// stay: a connection dumped, restored and dumped again must come out the
// same.
func InetCanon(dir string) (string, error) {
	_, ents, err := images.ReadFile(filepath.Join(dir, "files.img"), images.KindNamed("FILES"))
	if err != nil {
		return "", err
	}
	// Owners are tasks: named by their place in pstree.img.
	pids := map[uint32]uint32{}
	if _, pst, err := images.ReadFile(filepath.Join(dir, "pstree.img"), images.KindNamed("PSTREE")); err == nil {
		for i, e := range pst {
			pids[e.Msg.(*criupb.PstreeEntry).GetPid()] = uint32(i + 1)
		}
	} else {
		return "", err
	}
	inos := map[uint32]uint32{}
	var out []string
	for _, e := range ents {
		fe := e.Msg.(*criupb.FileEntry)
		if fe.GetType() != criupb.FdTypes_INETSK {
			continue
		}
		ie := proto.Clone(fe.GetIsk()).(*criupb.InetSkEntry)
		n := uint32(len(inos) + 1)
		inos[ie.GetIno()] = n
		ie.Ino = proto.Uint32(n)
		if f := ie.GetFown(); f != nil && f.GetPid() != 0 {
			f.Pid = proto.Uint32(pids[f.GetPid()] | 1<<30)
		}
		j, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(ie)
		out = append(out, "isk "+compactJSON(j))
	}
	names, err := filepath.Glob(filepath.Join(dir, "tcp-stream-*.img"))
	if err != nil {
		return "", err
	}
	var streams []string
	for _, p := range names {
		var ino uint32
		if _, err := fmt.Sscanf(filepath.Base(p), "tcp-stream-%x.img", &ino); err != nil {
			return "", fmt.Errorf("%s: %w", p, err)
		}
		_, es, err := images.ReadFile(p, images.KindNamed("TCP_STREAM"))
		if err != nil {
			return "", err
		}
		for _, e := range es {
			ts := proto.Clone(e.Msg).(*criupb.TcpStreamEntry)
			if ts.Timestamp != nil {
				ts.Timestamp = proto.Uint32(0) // the clock moved on
			}
			// snd_wl1 is the sequence number of the segment that last
			// updated the send window: the window probe a connection
			// sends when it leaves repair mode gets an ACK that moves it.
			ts.SndWl1 = nil
			// The windows are advertised anew when repair goes off, and
			// the kernel rounds them with per-connection state (the
			// receive MSS estimate) that repair cannot set.
			ts.SndWnd, ts.RcvWnd, ts.MaxWindow = nil, nil, nil
			j, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(ts)
			streams = append(streams, fmt.Sprintf("stream of socket %d %s data %d bytes %x", inos[ino], compactJSON(j), len(e.Trailer), sha256.Sum256(e.Trailer)))
		}
	}
	sort.Strings(streams)
	return strings.Join(append(out, streams...), "\n"), nil
}

func compactJSON(b []byte) string { return strings.Join(strings.Fields(string(b)), "") }

// compareInet fails the run when the inet sockets of two dumps differ.
func (d *driver) compareInet(what, a, b string) {
	ca, err := InetCanon(a)
	if err == nil {
		var cb string
		if cb, err = InetCanon(b); err == nil && ca != cb {
			al, bl := strings.Split(ca, "\n"), strings.Split(cb, "\n")
			var diff []string
			for i := 0; i < max(len(al), len(bl)); i++ {
				var x, y string
				if i < len(al) {
					x = al[i]
				}
				if i < len(bl) {
					y = bl[i]
				}
				if x != y {
					diff = append(diff, fmt.Sprintf("- %s\n+ %s", x, y))
				}
			}
			d.failf("%s: inet sockets differ:\n%s", what, strings.Join(diff, "\n"))
			return
		}
	}
	if err != nil {
		d.failf("%s: %v", what, err)
		return
	}
	d.step("%s: inet sockets and TCP streams equal", what)
}
