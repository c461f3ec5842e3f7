package restore

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fdrestore/fdrestore/scm"
	"golang.org/x/sys/unix"
)

// The control channel between the coordinator and each helper is one
// SOCK_SEQPACKET socketpair: one JSON message per packet, fds alongside as
// SCM_RIGHTS. The coordinator sends commands and the helper answers each
// with "ok" or "err"; in between, a helper may send "log" messages.

// Control operations.
const (
	ctlSpawn     = "spawn"     // spawn child proc; fds: its ctl end [, its transport endpoint]
	ctlSetsid    = "setsid"    // call setsid
	ctlSetpgid   = "setpgid"   // setpgid(0, Arg)
	ctlSubreaper = "subreaper" // PR_SET_CHILD_SUBREAPER Arg
	ctlReap      = "reap"      // wait for child Arg to exit
	ctlExit      = "exit"      // stand-in: exit now (no answer)
	ctlPlan      = "plan"      // restore fds; fd: a memfd holding the encoded TaskPlan
	ctlEnd       = "end"       // finish: stop, exec or detach (Mode)
	ctlOK        = "ok"
	ctlErr       = "err"
	ctlLog       = "log"
	ctlIdle      = "idle" // helper: nothing to do for a while (Err: what it waits for)
	ctlBusy      = "busy" // helper: working again after idle
)

// End modes.
const (
	modeStop   = "stop"
	modeExec   = "exec"
	modeDetach = "detach"
)

type ctlMsg struct {
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

const maxCtlMsg = 1 << 16

// errPeerGone is wrapped when the other end of a control channel closed.
var errPeerGone = errors.New("control channel closed by the other side")

func ctlSend(fd int, m *ctlMsg, fds ...int) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > maxCtlMsg {
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
		return fmt.Errorf("send %s: %w", m.Op, errPeerGone)
	}
	if err != nil {
		return fmt.Errorf("send %s: %w", m.Op, err)
	}
	return nil
}

// ctlRecv waits until deadline for one message on fd. Received fds are
// CLOEXEC and owned by the caller.
func ctlRecv(fd int, deadline time.Time) (*ctlMsg, []int, error) {
	if _, err := scm.Wait(deadline, "a control message", unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}); err != nil {
		return nil, nil, err
	}
	buf := make([]byte, maxCtlMsg)
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
		return nil, nil, errPeerGone
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
		return nil, nil, errPeerGone
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		closeFDs(fds)
		return nil, nil, fmt.Errorf("control message truncated")
	}
	m := new(ctlMsg)
	if err := json.Unmarshal(buf[:n], m); err != nil {
		closeFDs(fds)
		// Not a message: the Go runtime's crash report of the helper
		// (see debug.SetCrashOutput in startHelper).
		return nil, nil, fmt.Errorf("helper crashed: %s", strings.TrimSpace(string(buf[:n])))
	}
	return m, fds, nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}
