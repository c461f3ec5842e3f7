package helper

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/fdrestore/fdrestore/files"
	"github.com/fdrestore/fdrestore/scm"
	"golang.org/x/sys/unix"
)

// The control channel between the coordinator and each helper is one
// SOCK_SEQPACKET socketpair: one message per packet (Msg in the binary
// form of files.Enc: no encoding/json in the helper binary), fds alongside
// as SCM_RIGHTS. The coordinator sends commands and the helper answers each
// with "ok" or "err"; in between, a helper may send "log" messages.

// Control operations (Msg.Op).
const (
	OpSpawn     = "spawn"     // spawn child proc; fds: its ctl end [, its transport endpoint]
	OpSetsid    = "setsid"    // call setsid
	OpSetpgid   = "setpgid"   // setpgid(0, Arg)
	OpSubreaper = "subreaper" // PR_SET_CHILD_SUBREAPER Arg
	OpReap      = "reap"      // wait for child Arg to exit
	OpExit      = "exit"      // stand-in: exit now (no answer)
	OpPlan      = "plan"      // restore fds; fds: a memfd holding the encoded TaskPlan, then the task's inherited fds (at most MaxInherited)
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
	Op       string
	Proc     int
	Setsid   bool
	NewGroup bool
	Task     bool // spawn: the child restores a task (has an endpoint)
	TaskIx   int  // spawn: its task index
	TempBase int  // spawn: its lowest service fd
	Arg      int
	Pid      int
	Err      string
	Mode     string
	Argv     []string
	Path     string // exec: the file to run (default Argv[0])
	// KeepCloexec: exec keeps the task's FD_CLOEXEC fds open (flag
	// cleared) and lists them in CloexecEnv, for programs that adopt
	// their fds after --exec-recorded.
	KeepCloexec bool
	Env         []string
	Dir         string
	Log         []byte // a log entry (see logFormatter)
}

// MaxInherited is the most inherited fds one task's plan message carries.
const MaxInherited = 64

// MaxMsg is the largest control message, encoded.
const MaxMsg = 1 << 16

// ErrPeerGone is wrapped when the other end of a control channel closed.
var ErrPeerGone = errors.New("control channel closed by the other side")

// Send sends m, with fds as SCM_RIGHTS, on the control socket fd.
func Send(fd int, m *Msg, fds ...int) error {
	b := m.encode()
	var err error
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
	oob := make([]byte, unix.CmsgSpace(4*(MaxInherited+1)))
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
	if !IsMsg(buf[:n]) {
		CloseFDs(fds)
		// Not a message: the Go runtime's crash report of the helper
		// (see debug.SetCrashOutput in start), or what a process that
		// is no helper of this version wrote to its stdio (they are
		// placeholders on the control socket). Such output comes in
		// many writes, a packet each: take what arrives until the
		// writer is gone (end of file: it exited and closed every copy
		// of the socket), or for at most crashWait on a loaded machine
		// where a dying writer can pause between writes.
		said := []string{strings.TrimSpace(string(buf[:n]))}
		until := time.Now().Add(crashWait)
		for i := 0; i < 64; i++ {
			left := time.Until(until)
			if left <= 0 {
				break
			}
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if k, err := unix.Poll(pfd, int(left/time.Millisecond)+1); err == unix.EINTR {
				continue
			} else if err != nil || k == 0 {
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
	m, err := decodeMsg(buf[:n])
	if err != nil {
		CloseFDs(fds)
		return nil, nil, err
	}
	return m, fds, nil
}

// crashWait bounds how long Recv collects the rest of a crash report.
const crashWait = 2 * time.Second

// msgMagic starts every encoded Msg: a NUL, which no crash report or other
// text starts with, and the protocol's tag.
const msgMagic = "\x00" + Protocol + ":"

// IsMsg reports whether packet b is an encoded Msg (and not, say, a
// helper's crash report).
func IsMsg(b []byte) bool { return len(b) >= len(msgMagic) && string(b[:len(msgMagic)]) == msgMagic }

func encInt(e *files.Enc, v int) { e.Uint(uint64(v<<1) ^ uint64(v>>63)) }

func decInt(d *files.Dec) int {
	u := d.Uint()
	return int(u>>1) ^ -int(u&1)
}

func encStrings(e *files.Enc, v []string) {
	e.Uint(uint64(len(v)))
	for _, s := range v {
		e.String(s)
	}
}

func decStrings(d *files.Dec) []string {
	n := d.Uint()
	if n == 0 || d.Err != nil {
		return nil
	}
	if n > uint64(len(d.B)) {
		d.Err = errors.New("string list longer than the message")
		return nil
	}
	out := make([]string, 0, n)
	for i := uint64(0); i < n && d.Err == nil; i++ {
		out = append(out, d.String())
	}
	return out
}

// encode writes every field of m, in a fixed order. A field added to Msg
// must be added here and in decodeMsg (TestMsgRoundTrip fails until it is).
func (m *Msg) encode() []byte {
	e := files.Enc{B: make([]byte, 0, 64)}
	e.B = append(e.B, msgMagic...)
	e.String(m.Op)
	encInt(&e, m.Proc)
	e.Bool(m.Setsid)
	e.Bool(m.NewGroup)
	e.Bool(m.Task)
	encInt(&e, m.TaskIx)
	encInt(&e, m.TempBase)
	encInt(&e, m.Arg)
	encInt(&e, m.Pid)
	e.String(m.Err)
	e.String(m.Mode)
	encStrings(&e, m.Argv)
	e.String(m.Path)
	e.Bool(m.KeepCloexec)
	encStrings(&e, m.Env)
	e.String(m.Dir)
	e.Bytes(m.Log)
	return e.B
}

// decodeMsg parses what encode wrote. Nothing of the result points into b.
func decodeMsg(b []byte) (*Msg, error) {
	d := files.Dec{B: b[len(msgMagic):]}
	m := &Msg{Op: d.String(), Proc: decInt(&d), Setsid: d.Bool(), NewGroup: d.Bool(), Task: d.Bool(),
		TaskIx: decInt(&d), TempBase: decInt(&d), Arg: decInt(&d), Pid: decInt(&d),
		Err: d.String(), Mode: d.String(), Argv: decStrings(&d), Path: d.String(),
		KeepCloexec: d.Bool(), Env: decStrings(&d), Dir: d.String()}
	if log := d.Bytes(); len(log) > 0 {
		m.Log = append([]byte(nil), log...)
	}
	if err := d.Done(); err != nil {
		return nil, fmt.Errorf("malformed control message (%d bytes): %w", len(b), err)
	}
	return m, nil
}

// CloseFDs closes every fd of fds that is not negative.
func CloseFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}
