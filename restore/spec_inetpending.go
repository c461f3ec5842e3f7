package restore

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/files/tcp"
	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
)

// Connections that were in the accept queue of a listener of the tree
// (dump/inetpending.go): the client, recorded with fdr_pending_listener,
// is not repaired but connects for real to the restored listener and
// sends again what it had sent. Its spec Needs the listener (delivered to
// the client's task), and the graph says it connects once the listener
// listens.

// pendingConn is one client to connect, for the graph edges.
type pendingConn struct {
	file, listener uint32
	order          uint32
	owner          int // creator task index
}

// pendingParams turns the recorded pending connection of f into
// ModePending parameters; problem is non-empty when it cannot be.
func (pl *planner) pendingParams(prm *tcp.Params, f *images.File) string {
	ie := f.Entry.GetIsk()
	lid := ie.GetFdrPendingListener()
	if prm.Proto != unix.IPPROTO_TCP || prm.Mode != tcp.ModeRepair || prm.State != tcp.StateEstablished {
		return fmt.Sprintf("fdr_pending_listener %d on a socket that is not an established TCP connection (%s)", lid, prm.Describe())
	}
	lf := pl.set.Files[lid]
	if lf == nil || lf.Type != criupb.FdTypes_INETSK || lf.Entry.GetIsk() == nil {
		return fmt.Sprintf("fdr_pending_listener %d is not an inet socket of files.img", lid)
	}
	lie := lf.Entry.GetIsk()
	if lie.GetState() != tcp.StateListen || lie.GetProto() != prm.Proto || lie.GetFamily() != prm.Family || lie.GetSrcPort() != prm.DstPort {
		return fmt.Sprintf("fdr_pending_listener %d is not a TCP listener on the connection's peer port %d", lid, prm.DstPort)
	}
	if len(pl.holders(lf)) == 0 {
		return fmt.Sprintf("fdr_pending_listener %d is held by no task", lid)
	}
	prm.Mode, prm.Listener, prm.Sent, prm.Stream = tcp.ModePending, lid, ie.GetFdrPendingData(), tcp.Stream{}
	return ""
}

// pendingBefore returns the file id of the client before f in its
// listener's accept queue, or 0 for the first. The queues are indexed in
// one pass over files.img.
func (pl *planner) pendingBefore(f *images.File) (uint32, string) {
	if pl.pendingQueues == nil {
		pl.pendingQueues = map[uint32][]*images.File{}
		for _, g := range pl.set.FileOrder {
			if isk := g.Entry.GetIsk(); isk != nil && isk.FdrPendingListener != nil {
				l := isk.GetFdrPendingListener()
				pl.pendingQueues[l] = append(pl.pendingQueues[l], g)
			}
		}
		for _, q := range pl.pendingQueues {
			slices.SortFunc(q, func(a, b *images.File) int {
				return cmp.Compare(a.Entry.GetIsk().GetFdrPendingOrder(), b.Entry.GetIsk().GetFdrPendingOrder())
			})
		}
	}
	ie := f.Entry.GetIsk()
	q := pl.pendingQueues[ie.GetFdrPendingListener()]
	i := slices.Index(q, f)
	if i > 0 && q[i-1].Entry.GetIsk().GetFdrPendingOrder() == ie.GetFdrPendingOrder() {
		return 0, fmt.Sprintf("fdr_pending_order %d is also that of file id %d", ie.GetFdrPendingOrder(), q[i-1].ID)
	}
	if i > 0 {
		return q[i-1].ID, ""
	}
	return 0, ""
}

// addPending records a pending client created by task c, delivers its
// listener to c, and adds the graph edges once.
func (pl *planner) addPending(c int, file, listener, order uint32) {
	if pl.pending == nil {
		pl.p.edges = append(pl.p.edges, pl.pendingEdges)
	}
	pl.pending = append(pl.pending, pendingConn{file: file, listener: listener, order: order, owner: c})
	pl.deliver(c, listener)
}

// pendingEdges: a client connects once its listener listens, and after
// the client before it in the listener's queue connected.
func (pl *planner) pendingEdges(g *files.Graph) error {
	pc := slices.Clone(pl.pending)
	slices.SortFunc(pc, func(a, b pendingConn) int {
		if a.listener != b.listener {
			return cmp.Compare(a.listener, b.listener)
		}
		return cmp.Compare(a.order, b.order)
	})
	for i, c := range pc {
		lf := pl.set.Files[c.listener]
		lh := pl.holders(lf)
		lowner := pl.creator(lh)
		lnode := g.Node(files.Object{ID: files.ObjectID{Kind: "file", ID: uint64(c.listener)}, Owner: int(pl.set.Tasks[lowner].Pid)}, files.StageListening)
		cnode := g.Node(files.Object{ID: files.ObjectID{Kind: "file", ID: uint64(c.file)}, Owner: int(pl.set.Tasks[c.owner].Pid)}, files.StageConnected)
		g.Need(cnode, lnode, "connect to the listener once it listens")
		if i > 0 && pc[i-1].listener == c.listener {
			prev := pc[i-1]
			pnode := g.Node(files.Object{ID: files.ObjectID{Kind: "file", ID: uint64(prev.file)}, Owner: int(pl.set.Tasks[prev.owner].Pid)}, files.StageConnected)
			g.Need(cnode, pnode, "keep the accept queue's order")
		}
	}
	return nil
}
