package tcp

import (
	"fmt"
	"time"

	"github.com/fdrestore/fdrestore/scm"
	"golang.org/x/sys/unix"
)

// pendingTimeout bounds the connect of a pending connection to its
// restored listener, and the write of what it had sent.
const pendingTimeout = 10 * time.Second

// connectPending connects a pending client (bound already) to its
// listener, which is listening (the spec Needs it), and sends again the
// bytes the listener's side had received: the connection then sits in
// the listener's accept queue as it did. The connect is non-blocking with
// a deadline: a full accept queue must not hang the restore.
func (o *opener) connectPending(fd int) error {
	p := &o.p
	sa, err := sockaddr(p.Family, p.Dst, p.DstPort)
	if err != nil {
		return err
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return fmt.Errorf("F_GETFL: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_NONBLOCK); err != nil {
		return fmt.Errorf("F_SETFL: %w", err)
	}
	err = unix.Connect(fd, sa)
	if err == unix.EINPROGRESS {
		err = waitConnected(fd, pendingTimeout)
	}
	if err != nil {
		return fmt.Errorf("connect %s to its restored listener (file id %d): %w", Addr(p.Dst, p.DstPort), p.Listener, err)
	}
	if err := sendAll(fd, p.Sent, pendingTimeout); err != nil {
		return fmt.Errorf("send again the %d bytes %s had sent: %w", len(p.Sent), Addr(p.Src, p.SrcPort), err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl); err != nil {
		return fmt.Errorf("F_SETFL: %w", err)
	}
	return nil
}

// waitConnected waits for a non-blocking connect to finish.
func waitConnected(fd int, d time.Duration) error {
	if _, err := scm.Wait(time.Now().Add(d), "the connect", unix.PollFd{Fd: int32(fd), Events: unix.POLLOUT}); err != nil {
		return err
	}
	soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return fmt.Errorf("SO_ERROR: %w", err)
	}
	if soErr != 0 {
		return unix.Errno(soErr)
	}
	return nil
}
