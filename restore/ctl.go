package restore

import (
	"time"

	"github.com/fdrestore/fdrestore/restore/helper"
)

// The coordinator's names for the control protocol, which package
// restore/helper defines (the helper processes link that package only).

type ctlMsg = helper.Msg

const (
	ctlSpawn     = helper.OpSpawn
	ctlSetsid    = helper.OpSetsid
	ctlSetpgid   = helper.OpSetpgid
	ctlSubreaper = helper.OpSubreaper
	ctlReap      = helper.OpReap
	ctlExit      = helper.OpExit
	ctlPlan      = helper.OpPlan
	ctlEnd       = helper.OpEnd
	ctlOK        = helper.OpOK
	ctlErr       = helper.OpErr
	ctlLog       = helper.OpLog
	ctlIdle      = helper.OpIdle
	ctlBusy      = helper.OpBusy

	modeStop = helper.ModeStop
	modeExec = helper.ModeExec
)

var errPeerGone = helper.ErrPeerGone

func ctlSend(fd int, m *ctlMsg, fds ...int) error { return helper.Send(fd, m, fds...) }

func ctlRecv(fd int, deadline time.Time) (*ctlMsg, []int, error) { return helper.Recv(fd, deadline) }

func closeFDs(fds []int) { helper.CloseFDs(fds) }
