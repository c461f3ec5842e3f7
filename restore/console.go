package restore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// NewConsole creates a pty for a restored tree's console: it returns the
// master (the caller's end, close-on-exec) and the path of the slave, for
// PlanOptions.Console. The slave is unlocked; only the tree opens it.
func NewConsole() (master *os.File, slave string, err error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", fmt.Errorf("console: open /dev/ptmx: %w", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("console: unlock pty: %w", err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("console: pty number: %w", err)
	}
	slave = "/dev/pts/" + strconv.FormatUint(uint64(n), 10)
	return os.NewFile(uintptr(fd), slave), slave, nil
}

// SendConsole sends master over the unix socket at path in the protocol of
// runc's --console-socket: one message whose payload is the terminal's
// name and whose SCM_RIGHTS carry the master's fd.
func SendConsole(path string, master *os.File) error {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("console socket: %w", err)
	}
	defer c.Close()
	fd, err := fdOf(master)
	if err != nil {
		return fmt.Errorf("console socket: %w", err)
	}
	n, oobn, err := c.WriteMsgUnix([]byte(master.Name()), unix.UnixRights(fd), nil)
	if err == nil && (n != len(master.Name()) || oobn == 0) {
		err = errors.New("short write")
	}
	if err != nil {
		return fmt.Errorf("console socket %s: send the console: %w", path, err)
	}
	return nil
}

// consoleState is a console handover: when Config.OnConsole is set,
// Restore creates the pty and names its slave in the plan options; hook
// then hands the master over before the tree resumes.
type consoleState struct {
	master *os.File
	give   func(*os.File) error
	used   bool
}

func (cs *consoleState) close() {
	if cs != nil && cs.master != nil {
		cs.master.Close()
		cs.master = nil
	}
}

// hook returns the PreResume hook that hands the master over, chained with
// the caller's own.
func (cs *consoleState) hook(next func(context.Context, *Result) error) func(context.Context, *Result) error {
	return func(ctx context.Context, res *Result) error {
		if cs.used {
			m := cs.master
			cs.master = nil // the caller's now
			if err := cs.give(m); err != nil {
				return fmt.Errorf("console handover: %w", err)
			}
		}
		if next != nil {
			return next(ctx, res)
		}
		return nil
	}
}
