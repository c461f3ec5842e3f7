package restore

import (
	"fmt"
	"strconv"
	"strings"
)

// ExtUnixPolicy says what becomes of a unix socket whose peer was outside
// the dumped tree (a USK_EXTERN peer: a system daemon, the runtime, an X
// server).
type ExtUnixPolicy int

const (
	// ExtUnixDefault: the caller's fd if one is inherited for the socket
	// (socket:[INO]), else reconnect when PlanOptions.ExtUnixSk is set,
	// else the plan fails naming the socket.
	ExtUnixDefault ExtUnixPolicy = iota
	// ExtUnixReconnect connects the socket to its peer's recorded name
	// (CRIU's --ext-unix-sk).
	ExtUnixReconnect
	// ExtUnixInherit takes the caller's fd for the socket: an Inherit
	// with key socket:[INO] must be given (else an *UnresolvedError).
	ExtUnixInherit
	// ExtUnixDisconnect restores the socket without its peer: a stream
	// socket reads EOF and fails writes with EPIPE, as after its peer
	// closed; a datagram socket is left unconnected.
	ExtUnixDisconnect
)

var extUnixNames = []string{"default", "reconnect", "inherit", "disconnect"}

func (p ExtUnixPolicy) String() string {
	if int(p) < len(extUnixNames) {
		return extUnixNames[p]
	}
	return "policy " + strconv.Itoa(int(p))
}

// ParseExtUnixPolicy parses "reconnect", "inherit" or "disconnect".
func ParseExtUnixPolicy(s string) (ExtUnixPolicy, error) {
	for i, n := range extUnixNames[1:] {
		if s == n {
			return ExtUnixPolicy(i + 1), nil
		}
	}
	return 0, fmt.Errorf("unknown external unix socket policy %q (want reconnect, inherit or disconnect)", s)
}

// ExtUnixChoice is the policy the plan applies to one socket.
type ExtUnixChoice struct {
	Socket string // the tree's socket, as in messages
	Key    string // its inherit key, socket:[INO]
	Peer   string // the outside peer's recorded name ("" when it had none)
	Policy ExtUnixPolicy
}

// extUnixPolicy decides the policy of socket n, whose peer p is outside
// the tree, and records it for Plan.Print.
func (pl *planner) extUnixPolicy(n, p *uskNode) (ExtUnixPolicy, error) {
	ino := n.e.GetIno()
	key := "socket:[" + strconv.FormatUint(uint64(ino), 10) + "]"
	pol, ok := pl.opts.ExtUnixSockets[ino]
	if !ok || pol == ExtUnixDefault {
		pol = pl.opts.ExtUnix
	}
	inherited := pl.inherited(n.f.ID) != nil
	if pol == ExtUnixDefault {
		switch {
		case inherited:
			pol = ExtUnixInherit
		case pl.opts.ExtUnixSk:
			pol = ExtUnixReconnect
		default:
			return 0, fmt.Errorf("%s: its peer %s is outside the dumped tree (USK_EXTERN): restore with --ext-unix-sk to connect it by name, or choose a policy (--ext-unix, --ext-unix-socket %s=POLICY)", uskName(n), uskName(p), key)
		}
	}
	switch {
	case pol == ExtUnixInherit && !inherited:
		return 0, &UnresolvedError{Key: key, Reason: fmt.Sprintf("%s: its peer is outside the tree and the policy is to inherit it, but no fd was given for it (--inherit-fd fd[N]:%s)", uskName(n), key)}
	case pol != ExtUnixInherit && inherited:
		return 0, &UnresolvedError{Key: key, Reason: fmt.Sprintf("%s: an fd was given for it, but its policy is %s", uskName(n), pol)}
	case pol < ExtUnixReconnect || pol > ExtUnixDisconnect:
		return 0, fmt.Errorf("%s: %s", uskName(n), pol)
	}
	peer := strings.TrimRight(string(p.e.GetName()), "\x00")
	if strings.HasPrefix(peer, "\x00") {
		peer = "@" + peer[1:]
	}
	pl.p.ExtUnix = append(pl.p.ExtUnix, ExtUnixChoice{Socket: uskName(n), Key: key, Peer: peer, Policy: pol})
	if pl.extUnixSeen == nil {
		pl.extUnixSeen = map[uint32]bool{}
	}
	pl.extUnixSeen[ino] = true
	return pol, nil
}

// checkExtUnixSockets fails for policies given for sockets that have no
// peer outside the tree: a typo must not go unnoticed.
func (pl *planner) checkExtUnixSockets() error {
	for ino := range pl.opts.ExtUnixSockets {
		if !pl.extUnixSeen[ino] {
			var cands []string
			for _, c := range pl.p.ExtUnix {
				cands = append(cands, c.Key)
			}
			return &UnresolvedError{Key: "socket:[" + strconv.FormatUint(uint64(ino), 10) + "]", Reason: "no unix socket of the images with that inode has a peer outside the tree", Candidates: cands}
		}
	}
	return nil
}

func (p *Plan) printExtUnix(w interface{ Write([]byte) (int, error) }) {
	if len(p.ExtUnix) == 0 {
		return
	}
	fmt.Fprintf(w, "External unix peers (%d):\n", len(p.ExtUnix))
	for _, c := range p.ExtUnix {
		var what string
		switch c.Policy {
		case ExtUnixReconnect:
			what = "reconnect to " + strconv.Quote(c.Peer)
		case ExtUnixInherit:
			what = "the caller's fd"
		case ExtUnixDisconnect:
			what = "left disconnected (peer " + strconv.Quote(c.Peer) + ")"
		}
		fmt.Fprintf(w, "  %s %s: %s\n", c.Key, c.Socket, what)
	}
}
