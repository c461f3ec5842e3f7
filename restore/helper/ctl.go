package helper

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/fdrestore/fdrestore/scm"
	"golang.org/x/sys/unix"
)

// The control channel between the coordinator and each helper is one
// SOCK_SEQPACKET socketpair: one JSON message per packet, fds alongside as
// SCM_RIGHTS. The coordinator sends commands and the helper answers each
// with "ok" or "err"; in between, a helper may send "log" messages.

// Control operations (Msg.Op).
const (
	OpSpawn     = "spawn"     // spawn child proc; fds: its ctl end [, its transport endpoint]
	OpSetsid    = "setsid"    // call setsid
	OpSetpgid   = "setpgid"   // setpgid(0, Arg)
	OpSubreaper = "subreaper" // PR_SET_CHILD_SUBREAPER Arg
	OpReap      = "reap"      // wait for child Arg to exit
	OpExit      = "exit"      // stand-in: exit now (no answer)
	OpPlan      = "plan"      // restore fds; fd: a memfd holding the encoded TaskPlan
	OpEnd       = "end"       // finish: stop, exec or detach (Mode)
	OpOK        = "ok"
	OpErr       = "err"
	OpLog       = "log"
	OpIdle      = "idle" // helper: nothing to do for a while (Err: what it waits for)
	OpBusy      = "busy" // helper: working again after idle
)

// End modes (Msg.Mode of OpEnd).
const (
	ModeStop   = "stop"
	ModeExec   = "exec"
	ModeDetach = "detach"
)

// Msg is one control message, a command or an answer; which fields
// matter depends on Op.
type Msg struct {
	Op       string   `json:"op"`
	Proc     int      `json:"proc,omitempty"`
	Setsid   bool     `json:"setsid,omitempty"`
	NewGroup bool     `json:"newgroup,omitempty"`
	Task     bool     `json:"task,omitempty"`     // spawn: the child restores a task (has an endpoint)
	TaskIx   int      `json:"taskix,omitempty"`   // spawn: its task index
	TempBase int      `json:"tempbase,omitempty"` // spawn: its lowest service fd
	Arg      int      `json:"arg,omitempty"`
	Pid      int      `json:"pid,omitempty"`
	Err      string   `json:"err,omitempty"`
	Mode     string   `json:"mode,omitempty"`
	Argv     []string `json:"argv,omitempty"`
	Path     string   `json:"path,omitempty"` // exec: the file to run (default Argv[0])
	// KeepCloexec: exec keeps the task's FD_CLOEXEC fds open (flag
	// cleared) and lists them in CloexecEnv, for programs that adopt
	// their fds after --exec-recorded.
	KeepCloexec bool     `json:"keepcloexec,omitempty"`
	Env         []string `json:"env,omitempty"`
	Dir         string   `json:"dir,omitempty"`
	Log         []byte   `json:"log,omitempty"` // a logrus JSON entry
}

// MaxMsg is the largest control message (bytes of JSON).
const MaxMsg = 1 << 16

// ErrPeerGone is wrapped when the other end of a control channel closed.
var ErrPeerGone = errors.New("control channel closed by the other side")

// Send sends m, with fds as SCM_RIGHTS, on the control socket fd.
func Send(fd int, m *Msg, fds ...int) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > MaxMsg {
		return fmt.Errorf("control message %s too large (%d bytes)", m.Op, len(b))
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	for {
		err = unix.Sendmsg(fd, b, oob, nil, 0)
		if err != unix.EINTR {
			break
		}
	}
	if err == unix.EPIPE || err == unix.ECONNRESET {
		return fmt.Errorf("send %s: %w", m.Op, ErrPeerGone)
	}
	if err != nil {
		return fmt.Errorf("send %s: %w", m.Op, err)
	}
	return nil
}

// recvBufs holds Recv's buffers: a helper that spawns hundreds of children
// receives a command for each, and a fresh MaxMsg buffer per message would
// grow its heap by megabytes between collections. (Nothing of a message
// points into the buffer once it is decoded.)
var recvBufs = sync.Pool{New: func() any { b := make([]byte, MaxMsg); return &b }}

// Recv waits until deadline for one message on fd. Received fds are
// CLOEXEC and owned by the caller.
func Recv(fd int, deadline time.Time) (*Msg, []int, error) {
	if _, err := scm.Wait(deadline, "a control message", unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}); err != nil {
		return nil, nil, err
	}
	bp := recvBufs.Get().(*[]byte)
	defer recvBufs.Put(bp)
	buf := *bp
	oob := make([]byte, unix.CmsgSpace(4*4))
	var n, oobn, flags int
	var err error
	reset := false
	for {
		n, oobn, flags, _, err = unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.ECONNRESET && !reset {
			// The peer closed with our message unread; the kernel
			// reports that first, but what the peer sent before it
			// closed is still queued.
			reset = true
			continue
		}
		if err != unix.EINTR {
			break
		}
	}
	if err == unix.ECONNRESET || err == unix.EAGAIN && reset {
		return nil, nil, ErrPeerGone
	}
	if err != nil {
		return nil, nil, fmt.Errorf("receive control message: %w", err)
	}
	var fds []int
	if oobn > 0 {
		msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr == nil {
			for _, cm := range msgs {
				if rights, err := unix.ParseUnixRights(&cm); err == nil {
					fds = append(fds, rights...)
				}
			}
		}
	}
	if n == 0 && oobn == 0 {
		return nil, nil, ErrPeerGone
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		CloseFDs(fds)
		return nil, nil, fmt.Errorf("control message truncated")
	}
	m := new(Msg)
	if err := json.Unmarshal(buf[:n], m); err != nil {
		CloseFDs(fds)
		// Not a message: the Go runtime's crash report of the helper
		// (see debug.SetCrashOutput in start), or what a process that
		// is no helper of this version wrote to its stdio (they are
		// placeholders on the control socket). Such output comes in
		// many writes, a packet each: take what arrives until the
		// writer has been quiet for a moment.
		said := []string{strings.TrimSpace(string(buf[:n]))}
		for i := 0; i < 64; i++ {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if k, err := unix.Poll(pfd, 50); err != nil || k == 0 {
				break
			}
			k, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
			if err != nil || k <= 0 {
				break
			}
			said = append(said, strings.TrimSpace(string(buf[:k])))
		}
		return nil, nil, fmt.Errorf("helper crashed: %s", strings.Join(said, " "))
	}
	return m, fds, nil
}

// CloseFDs closes every fd of fds that is not negative.
func CloseFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}
