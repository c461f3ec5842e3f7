package restore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/files/tcp"
	"github.com/fdrestore/fdrestore/images"
	"golang.org/x/sys/unix"
)

// ErrTCPEstablished is wrapped by the plan error of images holding
// established TCP connections restored without --tcp-established or
// --tcp-close.
var ErrTCPEstablished = errors.New("established TCP connections need --tcp-established (or --tcp-close)")

// inetPort is one local address of inet sockets: its sockets must all
// exist before any gets its recorded reuse flags back.
type inetPort struct {
	key   string
	files []uint32
	owner []int // creator task of each
}

// planInet plans one inet socket description, created by the task that
// holds it with the lowest pid.
func (pl *planner) planInet(f *images.File, hs []int) error {
	p := pl.p
	ie := f.Entry.GetIsk()
	where := fmt.Sprintf("files.img entry %d (file id %d, inet socket ino %d)", f.Index, f.ID, ie.GetIno())
	if len(hs) == 0 {
		p.Unsupported = append(p.Unsupported, fmt.Sprintf("%s exists only in flight (in a unix socket queue)", where))
		return nil
	}
	prm, problem := inetParams(f)
	if problem != "" {
		p.Unsupported = append(p.Unsupported, where+": "+problem)
		return nil
	}
	if ie.FdrPendingListener != nil && !pl.opts.TCPClose {
		if problem := pl.pendingParams(&prm, f); problem != "" {
			p.Unsupported = append(p.Unsupported, where+": "+problem)
			return nil
		}
	}
	if prm.Mode == tcp.ModeRepair {
		switch {
		case pl.opts.TCPClose:
			prm.Mode, prm.Stream = tcp.ModePlain, tcp.Stream{}
			p.Warnings = append(p.Warnings, fmt.Sprintf("%s: %s restored closed (--tcp-close)", where, prm.Describe()))
		case !pl.opts.TCPEstablished:
			p.Unsupported = append(p.Unsupported, fmt.Sprintf("%s: %s at %s: %v", where, prm.Describe(), fdList(f), ErrTCPEstablished))
			return nil
		default:
			st := pl.set.TCPStreams[ie.GetIno()]
			if st == nil {
				p.Unsupported = append(p.Unsupported, fmt.Sprintf("%s: %s: tcp-stream-%x.img is missing", where, prm.Describe(), ie.GetIno()))
				return nil
			}
			if problem := streamParams(&prm, st); problem != "" {
				p.Unsupported = append(p.Unsupported, fmt.Sprintf("%s: tcp-stream-%x.img: %s", where, ie.GetIno(), problem))
				return nil
			}
		}
	}
	c := pl.creator(hs)
	if prm.SrcPort != 0 {
		pl.addInetPort(prm, f.ID, c)
	}
	data, err := files.EncodeData(prm)
	spec := files.OpenSpec{Type: tcp.Type, Files: []uint32{f.ID}, SendTo: [][]uint32{pl.others(hs, c)}, Data: data,
		Name: fmt.Sprintf("%s (ino %d, file id %d)", prm.Describe(), ie.GetIno(), f.ID)}
	if prm.Mode == tcp.ModePending {
		prev, problem := pl.pendingBefore(f)
		if problem != "" {
			p.Unsupported = append(p.Unsupported, where+": "+problem)
			return nil
		}
		// The listener listens, and the client before this one in its
		// queue is connected, before this one connects.
		spec.Needs = []uint32{prm.Listener}
		if prev != 0 {
			spec.Needs = append(spec.Needs, prev)
			pl.deliver(c, prev)
		}
		spec.Name = fmt.Sprintf("%s, not yet accepted by file id %d (ino %d, file id %d)", prm.Describe(), prm.Listener, ie.GetIno(), f.ID)
		pl.addPending(c, f.ID, prm.Listener, ie.GetFdrPendingOrder())
	}
	return pl.add(c, spec, err)
}

// fdList names the fds of f: "task 2 fd 4, task 3 fd 5".
func fdList(f *images.File) string {
	var s []string
	for _, fd := range f.Fds {
		s = append(s, fdName(fd))
	}
	return strings.Join(s, ", ")
}

// addInetPort counts a socket on its local address; the first socket of
// an address adds the graph edges of them all (once every file is
// planned).
func (pl *planner) addInetPort(prm tcp.Params, id uint32, creator int) {
	key := fmt.Sprintf("%s %s", protoName(prm.Proto, prm.Family), tcp.Addr(prm.Src, prm.SrcPort))
	if pl.inetPorts == nil {
		pl.inetPorts = map[string]*inetPort{}
		pl.p.edges = append(pl.p.edges, pl.inetPortEdges)
	}
	pt := pl.inetPorts[key]
	if pt == nil {
		pt = &inetPort{key: key}
		pl.inetPorts[key] = pt
	}
	pt.files = append(pt.files, id)
	pt.owner = append(pt.owner, creator)
}

// inetPortEdges: the reuse flags of the sockets on an address come back
// (stage FlagsSet of the address) only after every socket on it exists.
// The restore meets this by restoring them after the whole tree.
func (pl *planner) inetPortEdges(g *files.Graph) error {
	keys := make([]string, 0, len(pl.inetPorts))
	for k := range pl.inetPorts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for i, k := range keys {
		pt := pl.inetPorts[k]
		if len(pt.files) < 2 {
			continue
		}
		port := g.Node(files.Object{ID: files.ObjectID{Kind: "inet address", ID: uint64(i)}, Name: "inet address " + k,
			Owner: int(pl.set.Tasks[pt.owner[0]].Pid)}, files.StageFlagsSet)
		for j, id := range pt.files {
			obj := files.Object{ID: files.ObjectID{Kind: "file", ID: uint64(id)}, Owner: int(pl.set.Tasks[pt.owner[j]].Pid)}
			g.Need(port, g.Node(obj, files.StageCreated), fmt.Sprintf("every socket on the address exists (%d)", len(pt.files)))
		}
	}
	return nil
}

func protoName(proto, family uint32) string {
	s := "tcp"
	if proto == unix.IPPROTO_UDP {
		s = "udp"
	}
	if family == unix.AF_INET6 {
		s += "6"
	}
	return s
}

// inetAddr converts an image address (words in network order as stored
// in memory) to bytes.
func inetAddr(family uint32, words []uint32) ([]byte, string) {
	n := 4
	if family == unix.AF_INET6 {
		n = 16
	}
	if len(words) == 0 {
		return make([]byte, n), ""
	}
	if len(words)*4 != n {
		return nil, fmt.Sprintf("address of %d words for family %d", len(words), family)
	}
	b := make([]byte, n)
	for i, w := range words {
		binary.LittleEndian.PutUint32(b[4*i:], w)
	}
	return b, ""
}

// inetParams converts an inet_sk_entry; problem is non-empty when the
// socket cannot be restored.
func inetParams(f *images.File) (tcp.Params, string) {
	ie := f.Entry.GetIsk()
	prm := tcp.Params{File: f.ID, Ino: ie.GetIno(), Family: ie.GetFamily(), SkType: ie.GetType(), Proto: ie.GetProto(),
		State: ie.GetState(), Flags: ie.GetFlags(), Fown: fownFrom(ie.GetFown()),
		SrcPort: ie.GetSrcPort(), DstPort: ie.GetDstPort(), Backlog: ie.GetBacklog()}
	if prm.Family != unix.AF_INET && prm.Family != unix.AF_INET6 {
		return prm, fmt.Sprintf("family %d is not AF_INET or AF_INET6", prm.Family)
	}
	var problem string
	if prm.Src, problem = inetAddr(prm.Family, ie.GetSrcAddr()); problem != "" {
		return prm, "src_addr: " + problem
	}
	if prm.Dst, problem = inetAddr(prm.Family, ie.GetDstAddr()); problem != "" {
		return prm, "dst_addr: " + problem
	}
	so := ie.GetOpts()
	o := &prm.Opts
	o.SndBuf, o.RcvBuf = so.GetSoSndbuf(), so.GetSoRcvbuf()
	o.BufLock, o.HasBufLock = so.GetSoBufLock(), so.SoBufLock != nil
	o.SndTmo = [2]uint64{so.GetSoSndTmoSec(), so.GetSoSndTmoUsec()}
	o.RcvTmo = [2]uint64{so.GetSoRcvTmoSec(), so.GetSoRcvTmoUsec()}
	o.ReuseAddr, o.ReusePort = so.GetReuseaddr(), so.GetSoReuseport()
	o.Priority, o.RcvLowat, o.Mark = so.GetSoPriority(), so.GetSoRcvlowat(), so.GetSoMark()
	o.Broadcast, o.Keepalive, o.DontRoute = so.GetSoBroadcast(), so.GetSoKeepalive(), so.GetSoDontroute()
	o.OOBInline = so.GetSoOobinline() != 0
	o.KeepCnt, o.KeepIdle, o.KeepIntvl = so.GetTcpKeepcnt(), so.GetTcpKeepidle(), so.GetTcpKeepintvl()
	o.Linger, o.HasLinger = so.GetSoLinger(), so.SoLinger != nil
	o.BoundDev = so.GetSoBoundDev()
	if to := ie.GetTcpOpts(); to != nil {
		o.Nodelay, o.Cork = to.GetNodelay(), to.GetCork()
		if to.Keepcnt != nil {
			o.KeepCnt = to.GetKeepcnt()
		}
		if to.Keepidle != nil {
			o.KeepIdle = to.GetKeepidle()
		}
		if to.Keepintvl != nil {
			o.KeepIntvl = to.GetKeepintvl()
		}
	}
	if ip := ie.GetIpOpts(); ip != nil {
		o.FreeBind = ip.GetFreebind()
		o.TOS, o.HasTOS = ip.GetTos(), ip.Tos != nil
		o.TTL, o.HasTTL = ip.GetTtl(), ip.Ttl != nil
		if ip.GetRaw() != nil {
			return prm, "raw socket options"
		}
	}
	o.V6Only = ie.GetV6Only()
	o.Shutdown, o.ShutdownRecorded = uint32(ie.GetShutdown()), ie.Shutdown != nil
	switch {
	case prm.Proto == unix.IPPROTO_TCP && prm.SkType == unix.SOCK_STREAM:
		switch prm.State {
		case tcp.StateListen:
			prm.Mode = tcp.ModeListen
		case tcp.StateClose:
			// A connection that ended (reset, or closed by both sides)
			// while its fd stayed open is an unconnected socket: its
			// port went with it.
			prm.Mode = tcp.ModePlain
			if prm.SrcPort != 0 && prm.DstPort == 0 {
				prm.Mode = tcp.ModeBound
			}
		case tcp.StateEstablished, tcp.StateFinWait1, tcp.StateFinWait2, tcp.StateCloseWait, tcp.StateLastAck, tcp.StateClosing:
			prm.Mode = tcp.ModeRepair
		default:
			return prm, fmt.Sprintf("TCP state %s", tcp.StateName(prm.State))
		}
	case prm.Proto == unix.IPPROTO_UDP && prm.SkType == unix.SOCK_DGRAM:
		switch {
		case prm.DstPort != 0:
			prm.Mode = tcp.ModeConnect
		case prm.SrcPort != 0:
			prm.Mode = tcp.ModeBound
		default:
			prm.Mode = tcp.ModePlain
		}
	default:
		return prm, fmt.Sprintf("protocol %d type %d (only TCP stream and UDP datagram sockets)", prm.Proto, prm.SkType)
	}
	return prm, ""
}

// streamParams adds a connection's tcp-stream image.
func streamParams(prm *tcp.Params, st *images.TCPStream) string {
	e := st.Entry
	s := &prm.Stream
	s.InqSeq, s.OutqSeq, s.OptMask = e.GetInqSeq(), e.GetOutqSeq(), e.GetOptMask()
	s.SndWscale, s.RcvWscale, s.MssClamp, s.Timestamp = e.GetSndWscale(), e.GetRcvWscale(), e.GetMssClamp(), e.GetTimestamp()
	s.InQ, s.OutQ, s.UnsqLen = st.InQ, st.OutQ, e.GetUnsqLen()
	if s.UnsqLen > uint32(len(s.OutQ)) {
		return fmt.Sprintf("unsq_len %d is larger than outq_len %d", s.UnsqLen, len(s.OutQ))
	}
	if e.SndWl1 != nil || e.SndWnd != nil || e.MaxWindow != nil || e.RcvWnd != nil || e.RcvWup != nil {
		s.HasWindow = true
		s.Window = tcp.RepairWindow{SndWl1: e.GetSndWl1(), SndWnd: e.GetSndWnd(), MaxWindow: e.GetMaxWindow(), RcvWnd: e.GetRcvWnd(), RcvWup: e.GetRcvWup()}
	}
	if e.Nodelay != nil {
		prm.Opts.Nodelay = e.GetNodelay()
	}
	if e.Cork != nil {
		prm.Opts.Cork = e.GetCork()
	}
	return ""
}

// hasTCP reports whether the plan restores any inet socket.
func (p *Plan) hasTCP() bool {
	for _, o := range p.Objects {
		if o.Spec.Type == tcp.Type {
			return true
		}
	}
	return false
}

// silenceTCP turns TCP repair on for every TCP socket of the processes,
// so that killing them sends nothing to the connections' peers and leaves
// no connection in TIME_WAIT holding a port: an aborted restore, where
// some tasks may already have turned repair off, goes away without a
// trace. Listeners refuse repair mode and need none. Errors are ignored:
// a process may be gone already.
func silenceTCP(pids []int) {
	for _, pid := range pids {
		pidfd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
		for _, e := range fds {
			n, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if l, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/" + e.Name()); !strings.HasPrefix(l, "socket:") {
				continue
			}
			fd, err := unix.PidfdGetfd(pidfd, n, 0)
			if err != nil {
				continue
			}
			if pr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err == nil && pr == unix.IPPROTO_TCP {
				unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_ON)
			}
			unix.Close(fd)
		}
		unix.Close(pidfd)
	}
}

// silenceTCP silences the TCP sockets of every process of the restore.
func (c *coordinator) silenceTCP() {
	var pids []int
	for _, st := range c.ps {
		if st != nil && st.pid > 0 {
			pids = append(pids, st.pid)
		}
	}
	silenceTCP(pids)
}
