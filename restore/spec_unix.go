package restore

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/files/unixsk"
	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
)

// Unix socket planning.
//
// The sockets of files.img are grouped into connected components: a socket
// and its peer, a listener and the connections accepted from it (they
// share its name) or waiting in its queue, a datagram socket and every
// socket connected to it. One task creates a whole component (see
// files/unixsk): the holder with the lowest pid among its sockets'
// holders, or, for a component no fd refers to (it exists only in flight),
// the task that refills the queue carrying it. planInflight finds the
// components and their creators, following files in flight recursively (a
// socket in flight may itself carry files); planUnix writes the openers:
// unixsk-pair for a plain socketpair, unixsk for any other component, plus
// unixsk-queue when its queues carry files (its Needs are those files).
//
// Checked here, before any process exists: every peer inode resolves (a
// peer outside the tree needs PlanOptions.ExtUnixSk), stream peers point
// at each other or at a listener (a cycle of them is named in full), no
// packet is queued on a listener or where no socket could have sent it,
// names fit a sockaddr_un. The component's order (bind and listen before
// connect, accepted before pending connections, carried files before the
// refill, both queue directions before flags and shutdown) goes into the
// stage graph for every component but plain socketpairs, which have no
// order to keep and would only cost nodes (a task may hold thousands).
//
// Not restored: mount and network namespaces of names (names are bound in
// the restoring task's), data a client wrote before its connection was
// accepted (not in CRIU's images), SCM_CREDENTIALS and sender addresses
// (not in the images either).

// uflags bits of unix_sk_entry.
const (
	uskExtern   = 1
	uskService  = 2
	uskCallback = 4
)

// Socket states of unix_sk_entry.state (TCP_* codes).
const (
	uskEstablished = 1
	uskClose       = 7
	uskListen      = 10
)

type uskNode struct {
	f      *images.File
	e      *criupb.UnixSkEntry
	peer   *uskNode // peer inside the images, restored with it
	ext    *uskNode // peer outside the tree (USK_EXTERN entry)
	parent *uskNode // union-find
	comp   *uskComp
	idx    int
	sock   unixsk.Sock
	listen *uskNode // an accepted socket's listener (same name), if alive
	byName bool     // a mutual datagram pair connected by name, not made by socketpair
}

type uskComp struct {
	socks   []*uskNode
	creator int // task index, -1 until known
	planned bool
	carried []uint32 // files carried by the component's queues
	order   []int32  // datagram sockets, in refill and connect order
}

// uskState is the planner's view of every unix socket.
type uskState struct {
	byID  map[uint32]*uskNode
	comps []*uskComp
}

func (n *uskNode) root() *uskNode {
	for n.parent != n {
		n.parent = n.parent.parent
		n = n.parent
	}
	return n
}

func union(a, b *uskNode) {
	ra, rb := a.root(), b.root()
	if ra != rb {
		rb.parent = ra
	}
}

var uskTypeNames = map[uint32]string{unixsk.TypeStream: "STREAM", unixsk.TypeDgram: "DGRAM", unixsk.TypeSeqpacket: "SEQPACKET"}

// uskName names a socket for messages: file id, inode, type, name and its
// first fd.
func uskName(n *uskNode) string {
	var b strings.Builder
	fmt.Fprintf(&b, "unix socket file id %d (ino %d, %s", n.f.ID, n.e.GetIno(), uskTypeNames[n.e.GetType()])
	if name := uskPathName(n.e.GetName()); len(name) > 0 {
		if name[0] == 0 {
			b.WriteString(" " + strconv.Quote("@"+string(name[1:])))
		} else {
			b.WriteString(" " + strconv.Quote(string(name)))
		}
	}
	if len(n.f.Fds) > 0 {
		fd := n.f.Fds[0]
		fmt.Fprintf(&b, ", task %d fd %d", fd.Table.Tasks[0].Pid, fd.Num)
	} else {
		b.WriteString(", in flight")
	}
	b.WriteString(")")
	return b.String()
}

func (n *uskNode) stream() bool { return n.e.GetType() != unixsk.TypeDgram }
func (n *uskNode) listening() bool {
	return n.e.GetState() == uskListen
}
func (n *uskNode) mutual() bool { return n.peer != nil && n.peer != n && n.peer.peer == n }

// unixSockets builds the nodes, resolves peers, checks them and groups the
// sockets into components with their roles. It returns nil state when the
// images hold no unix socket.
func (pl *planner) unixSockets() (*uskState, error) {
	st := &uskState{byID: map[uint32]*uskNode{}}
	byIno := map[uint32]*uskNode{}
	var all []*uskNode
	for _, f := range pl.set.FileOrder {
		if f.Type != criupb.FdTypes_UNIXSK {
			continue
		}
		e := f.Entry.GetUsk()
		n := &uskNode{f: f, e: e}
		n.parent = n
		if prev := byIno[e.GetIno()]; prev != nil {
			return nil, fmt.Errorf("files.img: %s and %s have the same inode", uskName(prev), uskName(n))
		}
		byIno[e.GetIno()] = n
		st.byID[f.ID] = n
		all = append(all, n)
	}
	if len(all) == 0 {
		return nil, nil
	}
	var live []*uskNode
	listeners := map[string]*uskNode{}
	for _, n := range all {
		e := n.e
		if e.GetUflags()&uskExtern != 0 && len(n.f.Fds) == 0 {
			continue // a peer outside the tree: not restored
		}
		if _, ok := uskTypeNames[e.GetType()]; !ok {
			return nil, fmt.Errorf("files.img: %s: type %d is not a unix socket type", uskName(n), e.GetType())
		}
		if u := e.GetUflags() & (uskService | uskCallback); u != 0 {
			pl.p.Unsupported = append(pl.p.Unsupported, fmt.Sprintf("%s: uflags %#x (CRIU service or plugin socket)", uskName(n), u))
		}
		if nm := uskPathName(e.GetName()); len(nm) > 108 || len(nm) == 108 && nm[0] != 0 {
			l := len(nm)
			return nil, fmt.Errorf("files.img: %s: name of %d bytes does not fit a sockaddr_un", uskName(n), l)
		}
		if pi := e.GetPeer(); pi != 0 {
			p := byIno[pi]
			switch {
			case p == nil:
				return nil, fmt.Errorf("files.img: %s: its peer, socket inode %d, is not in the images", uskName(n), pi)
			case p.e.GetUflags()&uskExtern != 0 && len(p.f.Fds) == 0:
				// The caller's policy (extunix.go): reconnect by
				// name, the caller's fd, or no peer at all.
				pol, err := pl.extUnixPolicy(n, p)
				if err != nil {
					return nil, err
				}
				if pol == ExtUnixDisconnect {
					break
				}
				if pol == ExtUnixReconnect && len(p.e.GetName()) == 0 {
					return nil, fmt.Errorf("%s: its peer %s is outside the dumped tree and has no name to connect to", uskName(n), uskName(p))
				}
				n.ext = p
			default:
				n.peer = p
			}
		}
		if n.listening() {
			if len(e.GetName()) == 0 {
				return nil, fmt.Errorf("files.img: %s: listening but not bound to a name", uskName(n))
			}
			if !n.stream() {
				return nil, fmt.Errorf("files.img: %s: a datagram socket cannot listen", uskName(n))
			}
			key := string(rune(e.GetType())) + string(e.GetName())
			if l := listeners[key]; l == nil || l.e.GetDeleted() && !e.GetDeleted() {
				listeners[key] = n
			}
		}
		live = append(live, n)
	}
	// Peers: unions, and stream peers must point at each other (or be a
	// listener, for a connection not yet accepted).
	for _, n := range live {
		if n.peer == nil {
			continue
		}
		union(n, n.peer)
		if n.peer.listening() {
			if !n.stream() || n.peer.e.GetType() != n.e.GetType() {
				return nil, fmt.Errorf("files.img: %s: connected to listener %s of another type", uskName(n), uskName(n.peer))
			}
			continue
		}
		if n.stream() && !n.mutual() {
			return nil, streamPeerError(n)
		}
		if n.stream() != n.peer.stream() || n.e.GetType() != n.peer.e.GetType() {
			return nil, fmt.Errorf("files.img: %s: its peer %s has another type", uskName(n), uskName(n.peer))
		}
	}
	// Accepted connections share their listener's name: the listener is
	// in their component.
	for _, n := range live {
		if n.stream() && n.mutual() && !n.listening() && len(n.e.GetName()) > 0 {
			if l := listeners[string(rune(n.e.GetType()))+string(n.e.GetName())]; l != nil {
				n.listen = l
				union(n, l)
			}
		}
	}
	comps := map[*uskNode]*uskComp{}
	for _, n := range live {
		r := n.root()
		c := comps[r]
		if c == nil {
			c = &uskComp{creator: -1}
			comps[r] = c
			st.comps = append(st.comps, c)
		}
		n.comp, n.idx = c, len(c.socks)
		c.socks = append(c.socks, n)
	}
	for _, c := range st.comps {
		if err := pl.uskRoles(c); err != nil {
			return nil, err
		}
		for _, n := range c.socks {
			for _, f := range n.f.Fds {
				for _, t := range f.Table.Tasks {
					ti := pl.taskIx[t]
					if c.creator < 0 || t.Pid < pl.set.Tasks[c.creator].Pid {
						c.creator = ti
					}
				}
			}
		}
	}
	return st, nil
}

// streamPeerError explains a stream socket whose peer does not point back:
// a cycle of such sockets is named in full.
func streamPeerError(n *uskNode) error {
	seen := map[*uskNode]int{}
	var path []*uskNode
	for m := n; m != nil && m.stream() && !m.listening() && !m.mutual() && m.peer != nil; m = m.peer {
		if i, ok := seen[m]; ok {
			var names []string
			for _, x := range path[i:] {
				names = append(names, uskName(x))
			}
			names = append(names, uskName(m))
			return fmt.Errorf("files.img: unix stream sockets form a peer cycle, which no connect order can restore: %s", strings.Join(names, " -> "))
		}
		seen[m] = len(path)
		path = append(path, m)
	}
	return fmt.Errorf("files.img: %s: its peer %s is neither connected back to it nor listening", uskName(n), uskName(n.peer))
}

// uskRoles decides how the opener makes each socket of c.
func (pl *planner) uskRoles(c *uskComp) error {
	const undecided = 255
	for _, n := range c.socks {
		e := n.e
		s := &n.sock
		*s = unixsk.Sock{
			File: n.f.ID, Ino: e.GetIno(), Type: uint8(e.GetType()), Flags: e.GetFlags(),
			Fown: fownFrom(e.GetFown()), Backlog: e.GetBacklog(),
			Name: uskPathName(e.GetName()), NameDir: e.GetNameDir(), Deleted: e.GetDeleted(), Shutdown: uint8(e.GetShutdown()),
			Create: undecided, Partner: -1, Listener: -1, ConnectTo: -1, Pending: -1, Sender: unixsk.SendNone,
		}
		if fp := e.GetFilePerms(); fp != nil {
			s.HasPerms, s.Mode, s.UID, s.GID = true, fp.GetMode(), fp.GetUid(), fp.GetGid()
		}
		if o := e.GetOpts(); o != nil {
			s.Opts = unixsk.Opts{
				Sndbuf: o.GetSoSndbuf(), Rcvbuf: o.GetSoRcvbuf(),
				SndTmoSec: o.GetSoSndTmoSec(), SndTmoUsec: o.GetSoSndTmoUsec(),
				RcvTmoSec: o.GetSoRcvTmoSec(), RcvTmoUsec: o.GetSoRcvTmoUsec(),
				Priority: o.GetSoPriority(), Rcvlowat: o.GetSoRcvlowat(), Mark: o.GetSoMark(),
				Passcred: o.GetSoPasscred(), Passsec: o.GetSoPasssec(), Reuseaddr: o.GetReuseaddr(),
				Reuseport: o.GetSoReuseport(), Dontroute: o.GetSoDontroute(), Broadcast: o.GetSoBroadcast(),
				Keepalive: o.GetSoKeepalive(), Oobinline: o.GetSoOobinline(), Linger: o.GetSoLinger(),
				BufLock: o.GetSoBufLock(), BoundDev: o.GetSoBoundDev(), Filter: o.GetSoFilter(),
			}
		}
		if n.ext != nil {
			s.ExtName, s.ExtDir = uskPathName(n.ext.e.GetName()), n.ext.e.GetNameDir()
		}
	}
	named := func(n *uskNode) bool { return len(n.e.GetName()) > 0 }
	// Listeners, then peers that point at each other.
	for _, n := range c.socks {
		s := &n.sock
		if n.listening() {
			s.Create, s.Bind, s.Listen = unixsk.CreatePlain, true, true
		}
	}
	// A datagram socket another one connects to, besides its own peer:
	// when it is one end of a mutual pair, the pair cannot be a
	// socketpair (that connect would be refused), the two connect by name.
	thirdParty := map[*uskNode]bool{}
	for _, m := range c.socks {
		if p := m.peer; p != nil && !m.stream() && p != m && p.peer != m {
			thirdParty[p] = true
		}
	}
	for _, n := range c.socks {
		if !n.mutual() || n.sock.Create != undecided || n.peer.sock.Create != undecided {
			continue
		}
		a, b := n, n.peer
		if !a.stream() && (thirdParty[a] || thirdParty[b]) {
			if !named(a) || !named(b) {
				return fmt.Errorf("files.img: %s and %s are connected to each other and another socket is connected to one of them: without names for both, no connect order can restore that", uskName(a), uskName(b))
			}
			a.byName, b.byName = true, true
			a.sock.Create, a.sock.Bind = unixsk.CreatePlain, true
			b.sock.Create, b.sock.Bind = unixsk.CreatePlain, true
			continue
		}
		acc, cl := (*uskNode)(nil), (*uskNode)(nil)
		if a.stream() && a.e.GetState() == uskEstablished {
			switch {
			case a.listen != nil:
				acc, cl = a, b
			case b.listen != nil:
				acc, cl = b, a
			case named(a) && (!named(b) || a.idx < b.idx):
				acc, cl = a, b // its listener is gone
			case named(b):
				acc, cl = b, a
			}
		}
		if acc != nil {
			acc.sock.Create, acc.sock.Partner = unixsk.CreateAccepted, int32(cl.idx)
			if acc.listen != nil {
				acc.sock.Listener = int32(acc.listen.idx)
			}
			cl.sock.Create, cl.sock.Partner, cl.sock.Bind = unixsk.CreateClient, int32(acc.idx), named(cl)
			continue
		}
		a.sock.Create, a.sock.Partner, a.sock.Bind = unixsk.CreatePair, int32(b.idx), named(a)
		b.sock.Create, b.sock.Partner, b.sock.Bind = unixsk.CreatePairEnd, int32(a.idx), named(b)
	}
	// The rest.
	for _, n := range c.socks {
		s := &n.sock
		if s.Create != undecided {
			continue
		}
		s.Bind = named(n)
		switch {
		case n.peer != nil && n.peer.listening():
			s.Create, s.Pending = unixsk.CreatePlain, int32(n.peer.idx)
		case n.peer == nil && n.ext == nil && n.stream() && n.e.GetState() == uskEstablished:
			// The peer was closed: a socketpair whose other end closes
			// after the refill gives the same EOF and EPIPE. Like CRIU,
			// a connected stream socket does not bind its name (it was
			// its listener's).
			s.Create, s.Bind = unixsk.CreateTmpPair, false
		case n.peer != nil && n.peer != n && !named(n.peer) && n.peer.sock.Create == undecided && !n.peer.mutual():
			// Connected to an unnamed datagram socket: only a socketpair
			// can make that; the peer then connects to its own peer.
			p := n.peer
			if thirdParty[n] {
				return fmt.Errorf("files.img: %s is connected to %s, which has no name, and another socket is connected to %s: only a socketpair connects to an unnamed socket, and a socket born connected refuses every other connect, so no order restores that", uskName(n), uskName(p), uskName(n))
			}
			s.Create, s.Partner = unixsk.CreatePair, int32(p.idx)
			p.sock.Create, p.sock.Partner, p.sock.Bind = unixsk.CreatePairEnd, int32(n.idx), named(p)
		default:
			s.Create = unixsk.CreatePlain
		}
	}
	// Datagram connects.
	for _, n := range c.socks {
		s := &n.sock
		if n.stream() || n.mutual() && !n.byName {
			continue
		}
		switch {
		case n.peer != nil && (s.Create == unixsk.CreatePair || s.Create == unixsk.CreatePairEnd) && int(s.Partner) == n.peer.idx:
			// connected by the socketpair
		case n.peer != nil:
			if !named(n.peer) {
				return fmt.Errorf("files.img: %s: connected to %s, which has no name to connect to", uskName(n), uskName(n.peer))
			}
			s.ConnectTo = int32(n.peer.idx)
		case n.ext == nil && (s.Create == unixsk.CreatePair || s.Create == unixsk.CreatePairEnd):
			s.Disconnect = true
		}
	}
	// Queues and who refills them.
	pointing := map[*uskNode]*uskNode{}
	for _, n := range c.socks {
		if n.peer != nil && !n.stream() && pointing[n.peer] == nil {
			pointing[n.peer] = n
		}
	}
	for _, n := range c.socks {
		pkts := pl.set.Packets[n.f.ID]
		if len(pkts) == 0 {
			continue
		}
		s := &n.sock
		if n.listening() {
			return fmt.Errorf("sk-queues.img: %d packets queued on %s, which is listening", len(pkts), uskName(n))
		}
		// A connected datagram socket takes datagrams from its peer only:
		// one whose queue came from others is refilled before its connect
		// (see Params.Order).
		connected := !n.stream() && n.peer != n && !n.mutual() && (s.ConnectTo >= 0 || len(s.ExtName) > 0)
		switch {
		case n.mutual():
			s.Sender = int32(n.peer.idx)
		case n.peer == n:
			s.Sender = int32(n.idx) // connected to itself: from itself
		case pointing[n] != nil:
			s.Sender = int32(pointing[n].idx)
		case s.Create == unixsk.CreateTmpPair:
			s.Sender = unixsk.SendTmp
		case connected && s.Create == unixsk.CreatePlain && named(n):
			s.Sender = unixsk.SendName
		case connected:
			return fmt.Errorf("sk-queues.img: %d packets queued on %s, which is connected to another socket and has no name they could have been sent to", len(pkts), uskName(n))
		case !n.stream() && s.Create == unixsk.CreatePlain:
			s.Create, s.Sender = unixsk.CreateTmpPair, unixsk.SendTmp
			if n.peer == nil && n.ext == nil {
				s.Disconnect = true
			}
		default:
			return fmt.Errorf("sk-queues.img: %d packets queued on %s, which no socket can send to (a connection not yet accepted?)", len(pkts), uskName(n))
		}
		if connected && (s.Create == unixsk.CreatePair || s.Create == unixsk.CreatePairEnd) && s.ConnectTo != s.Partner {
			return fmt.Errorf("sk-queues.img: %d packets queued on %s, which a socketpair connects to %s and which then connects elsewhere: the connect would drop them", len(pkts), uskName(n), uskName(c.socks[s.Partner]))
		}
		for _, pk := range pkts {
			p := unixsk.Packet{Data: pk.Data}
			for _, f := range pk.Fds {
				p.Fds = append(p.Fds, f.ID)
				c.carried = append(c.carried, f.ID)
			}
			s.Packets = append(s.Packets, p)
		}
	}
	return uskOrder(c)
}

// orderEdge reports whether n's connect must come before its peer's: it
// must unless the peer connects back to n (a pair connected by name).
func orderEdge(c *uskComp, n *uskNode) bool {
	t := n.sock.ConnectTo
	return t >= 0 && int(t) != n.idx && c.socks[t].sock.ConnectTo != int32(n.idx)
}

// uskOrder orders the component's datagram sockets so that a socket that
// connects to another comes before it: a datagram socket accepts a
// connect only while it is unconnected (or connected back). Sockets that
// connect in a cycle cannot be restored (nor could they have been made);
// the error names them all.
func uskOrder(c *uskComp) error {
	var dg []*uskNode
	indeg := make(map[*uskNode]int)
	for _, n := range c.socks {
		if n.stream() {
			continue
		}
		dg = append(dg, n)
		if orderEdge(c, n) {
			indeg[c.socks[n.sock.ConnectTo]]++
		}
	}
	if len(dg) == 0 {
		return nil
	}
	order := make([]int32, 0, len(dg))
	var queue []*uskNode
	for _, n := range dg {
		if indeg[n] == 0 {
			queue = append(queue, n)
		}
	}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		order = append(order, int32(n.idx))
		if orderEdge(c, n) {
			m := c.socks[n.sock.ConnectTo]
			if indeg[m]--; indeg[m] == 0 {
				queue = append(queue, m)
			}
		}
	}
	if len(order) < len(dg) {
		// Every socket left is on a cycle or leads into one: walk from
		// one on the cycle.
		var start *uskNode
		for _, n := range dg {
			if indeg[n] > 0 {
				start = n
				break
			}
		}
		seen := map[*uskNode]bool{}
		for !seen[start] {
			seen[start] = true
			start = c.socks[start.sock.ConnectTo]
		}
		names := []string{uskName(start)}
		for m := c.socks[start.sock.ConnectTo]; m != start; m = c.socks[m.sock.ConnectTo] {
			names = append(names, uskName(m))
		}
		names = append(names, uskName(start))
		return cycleError{fmt.Errorf("files.img: unix datagram sockets are connected in a cycle, which no connect order can restore: %s", strings.Join(names, " -> "))}
	}
	c.order = order
	return nil
}

// planUnix plans the component of unix socket f, at its first socket in
// files.img order.
func (pl *planner) planUnix(f *images.File) error {
	if pl.usk == nil {
		return nil
	}
	n := pl.usk.byID[f.ID]
	if n == nil || n.comp == nil || n.comp.planned {
		return nil // an external peer, or planned already
	}
	c := n.comp
	c.planned = true
	if c.creator < 0 {
		var names []string
		for _, m := range c.socks {
			names = append(names, uskName(m))
		}
		pl.p.Unsupported = append(pl.p.Unsupported, fmt.Sprintf("%s: exists only in flight, in no queue that is restored", strings.Join(names, ", ")))
		return nil
	}
	params := unixsk.Params{Socks: make([]unixsk.Sock, len(c.socks)), Split: len(c.carried) > 0, Order: c.order}
	ids := make([]uint32, len(c.socks))
	sendTo := make([][]uint32, len(c.socks))
	for i, m := range c.socks {
		params.Socks[i] = m.sock
		ids[i] = m.f.ID
		if len(m.f.Fds) > 0 {
			sendTo[i] = pl.others(pl.holders(m.f), c.creator)
		}
	}
	var name string
	if len(c.socks) > 1 {
		name = uskIDs(ids)
	} else {
		name = uskName(c.socks[0])
	}
	if pp, ok := unixsk.PairOf(&params); ok {
		data, err := pp.MarshalBinary()
		return pl.add(c.creator, files.OpenSpec{Type: unixsk.PairType, Files: ids, SendTo: sendTo, Data: data, Name: name}, err)
	}
	data, err := params.MarshalBinary()
	if err := pl.add(c.creator, files.OpenSpec{Type: unixsk.Type, Files: ids, SendTo: sendTo, Data: data, Name: name}, err); err != nil {
		return err
	}
	if params.Split {
		needs := dedupe(append(append([]uint32(nil), ids...), c.carried...))
		if err := pl.add(c.creator, files.OpenSpec{Type: unixsk.QueueType, Data: data, Needs: needs, Name: "queues of " + name}, nil); err != nil {
			return err
		}
	}
	if len(c.socks) > 2 || params.Split || c.socks[0].sock.Create != unixsk.CreatePair {
		pl.p.edges = append(pl.p.edges, func(g *files.Graph) error { return pl.uskEdges(g, c) })
	}
	return nil
}

// uskPathName returns a recorded name as bind takes it: CRIU records path
// names with their terminating NUL; abstract names (a leading NUL) are
// kept byte for byte.
func uskPathName(name []byte) []byte {
	if len(name) == 0 || name[0] == 0 {
		return name
	}
	if i := bytes.IndexByte(name, 0); i >= 0 {
		return name[:i]
	}
	return name
}

// uskIDs is "unix sockets file ids [a b ...]", built without fmt: a plan
// names every socketpair.
func uskIDs(ids []uint32) string {
	b := make([]byte, 0, 24+8*len(ids))
	b = append(b, "unix sockets file ids ["...)
	for i, id := range ids {
		if i > 0 {
			b = append(b, ' ')
		}
		b = strconv.AppendUint(b, uint64(id), 10)
	}
	return string(append(b, ']'))
}

func dedupe(ids []uint32) []uint32 {
	seen := make(map[uint32]bool, len(ids))
	out := ids[:0]
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// uskEdges records the component's order in the stage graph: names before
// connects, connects before refills, carried files before the refill that
// sends them, both directions of a queue before the final flags and
// shutdown.
func (pl *planner) uskEdges(g *files.Graph, c *uskComp) error {
	owner := int(pl.set.Tasks[c.creator].Pid)
	node := func(n *uskNode, s files.Stage) files.NodeID {
		return g.Node(files.Object{ID: files.ObjectID{Kind: "unix socket", ID: uint64(n.f.ID)}, Name: uskName(n), Owner: owner}, s)
	}
	creators := map[uint32]int{}
	for ti, tp := range pl.p.TaskPlans {
		for _, o := range tp.Opens {
			for _, id := range o.Files {
				creators[id] = int(pl.set.Tasks[ti].Pid)
			}
		}
	}
	// Who connects to each socket, and each listener's accepted sockets:
	// one pass, not one per socket (a server may have thousands).
	connectsTo := map[int32][]*uskNode{}
	accepted := map[int32][]*uskNode{}
	for _, m := range c.socks {
		if orderEdge(c, m) {
			connectsTo[m.sock.ConnectTo] = append(connectsTo[m.sock.ConnectTo], m)
		}
		if m.sock.Create == unixsk.CreateAccepted && m.sock.Listener >= 0 {
			accepted[m.sock.Listener] = append(accepted[m.sock.Listener], m)
		}
	}
	for _, n := range c.socks {
		s := &n.sock
		created := node(n, files.StageCreated)
		connected := node(n, files.StageConnected)
		ready := created
		if s.Bind || s.Listen {
			bound := node(n, files.StageBound)
			g.Need(bound, created, "bind after create")
			ready = bound
			if s.Listen {
				l := node(n, files.StageListening)
				g.Need(l, bound, "listen after bind")
				ready = l
			}
		}
		g.Need(connected, ready, "connect after bind")
		switch {
		case s.Pending >= 0:
			g.Need(connected, node(c.socks[s.Pending], files.StageListening), "connect to the listener (not accepted yet)")
			for _, m := range accepted[s.Pending] {
				g.Need(connected, node(m, files.StageConnected), "pending connections after the accepted ones")
			}
		case s.ConnectTo >= 0 && int(s.ConnectTo) != n.idx:
			p := c.socks[s.ConnectTo]
			g.Need(connected, node(p, files.StageBound), "connect to the peer's name")
		case s.Create == unixsk.CreateAccepted && s.Listener >= 0:
			g.Need(connected, node(c.socks[s.Listener], files.StageListening), "accepted from the listener")
		case s.Partner >= 0:
			g.Need(connected, node(c.socks[s.Partner], files.StageCreated), "created together")
		}
		restored := node(n, files.StageRestored)
		if !n.stream() && s.ConnectTo != int32(n.idx) && !n.byName && (s.ConnectTo >= 0 || len(s.ExtName) > 0) {
			g.Need(restored, ready, "refill after bind")
			g.Need(connected, restored, "a connected datagram socket takes only its peer's datagrams: connect after the refill")
		} else {
			g.Need(restored, connected, "refill after connect")
		}
		if !n.stream() && (s.ConnectTo >= 0 || len(s.ExtName) > 0) {
			for _, m := range connectsTo[int32(n.idx)] {
				g.Need(connected, node(m, files.StageConnected), "a datagram socket accepts connects only while unconnected")
			}
		}
		if s.Sender >= 0 {
			g.Need(restored, node(c.socks[s.Sender], files.StageConnected), "refilled by sending from this socket")
		}
		for _, pk := range s.Packets {
			for _, id := range pk.Fds {
				if m := pl.usk.byID[id]; m != nil && m.comp == c {
					g.Need(restored, node(m, files.StageCreated), "carried in the queue (SCM_RIGHTS)")
					continue
				}
				cr, ok := creators[id]
				if !ok {
					return fmt.Errorf("plan: %s carries file id %d, which no task creates", uskName(n), id)
				}
				f := files.Object{ID: files.ObjectID{Kind: "file", ID: uint64(id)}, Owner: cr}
				g.Need(restored, g.Node(f, files.StageCreated), "carried in the queue (SCM_RIGHTS)")
			}
		}
		flags := node(n, files.StageFlagsSet)
		g.Need(flags, restored, "flags and shutdown after the refill")
		g.Need(flags, connected, "flags and shutdown after the connect")
		if n.peer != nil {
			g.Need(flags, node(n.peer, files.StageRestored), "shutdown after the peer's queue is refilled")
		}
	}
	return nil
}

// planUnixInflight gives every component its creator and every file in
// flight the task that holds it: the creator of the component whose queue
// carries it, recursively (a socket in flight carries files too).
func (pl *planner) planUnixInflight() error {
	st := pl.usk
	var work []*uskComp
	for _, c := range st.comps {
		if c.creator >= 0 {
			work = append(work, c)
		}
	}
	for len(work) > 0 {
		c := work[len(work)-1]
		work = work[:len(work)-1]
		for _, id := range c.carried {
			f := pl.set.Files[id]
			pl.deliver(c.creator, id)
			if len(f.Fds) > 0 {
				continue
			}
			if _, ok := pl.inflight[id]; !ok {
				if pl.inflight == nil {
					pl.inflight = map[uint32]int{}
				}
				pl.inflight[id] = c.creator
			}
			if m := st.byID[id]; m != nil && m.comp != nil && m.comp.creator < 0 {
				m.comp.creator = c.creator
				work = append(work, m.comp)
			}
		}
	}
	return nil
}
