package tcp

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Repair queues for TCP_REPAIR_QUEUE (include/uapi/linux/tcp.h), which
// x/sys/unix does not define.
const (
	NoQueue   = 0
	RecvQueue = 1
	SendQueue = 2
)

// TCP_INFO option bits of tcpi_options.
const (
	OptTimestamps = 1
	OptSack       = 2
	OptWscale     = 4
)

// SetRepair turns TCP repair mode on or off. Turning it off sends a window
// probe, so that the peer learns of the connection's window at once.
func SetRepair(fd int, on bool) error {
	v := unix.TCP_REPAIR_OFF
	if on {
		v = unix.TCP_REPAIR_ON
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR, v); err != nil {
		return fmt.Errorf("TCP_REPAIR %d: %w", v, err)
	}
	return nil
}

// SelectQueue selects the queue that TCP_QUEUE_SEQ, send and recv act on
// in repair mode.
func SelectQueue(fd, q int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR_QUEUE, q); err != nil {
		return fmt.Errorf("TCP_REPAIR_QUEUE %d: %w", q, err)
	}
	return nil
}

// QueueSeq returns the sequence number of the selected queue: for the
// receive queue the next byte expected, for the send queue the next byte
// to be sent (snd_nxt... write_seq).
func QueueSeq(fd int) (uint32, error) {
	v, err := unix.GetsockoptInt(fd, unix.SOL_TCP, unix.TCP_QUEUE_SEQ)
	if err != nil {
		return 0, fmt.Errorf("get TCP_QUEUE_SEQ: %w", err)
	}
	return uint32(v), nil
}

// SetQueueSeq sets the initial sequence number of the selected queue
// (before connect).
func SetQueueSeq(fd int, seq uint32) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_QUEUE_SEQ, int(int32(seq))); err != nil {
		return fmt.Errorf("TCP_QUEUE_SEQ %d: %w", seq, err)
	}
	return nil
}

// GetWindow reads struct tcp_repair_window (repair mode only).
func GetWindow(fd int) (RepairWindow, error) {
	var w RepairWindow
	l := uint32(unsafe.Sizeof(w))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_TCP, unix.TCP_REPAIR_WINDOW,
		uintptr(unsafe.Pointer(&w)), uintptr(unsafe.Pointer(&l)), 0)
	runtime.KeepAlive(&w)
	if errno != 0 {
		return w, fmt.Errorf("get TCP_REPAIR_WINDOW: %w", errno)
	}
	if l != uint32(unsafe.Sizeof(w)) {
		return w, fmt.Errorf("get TCP_REPAIR_WINDOW: %d bytes, want %d", l, unsafe.Sizeof(w))
	}
	return w, nil
}

// SetWindow writes struct tcp_repair_window (repair mode only).
func SetWindow(fd int, w RepairWindow) error {
	_, _, errno := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_TCP, unix.TCP_REPAIR_WINDOW,
		uintptr(unsafe.Pointer(&w)), unsafe.Sizeof(w), 0)
	runtime.KeepAlive(&w)
	if errno != 0 {
		return fmt.Errorf("TCP_REPAIR_WINDOW %+v: %w", w, errno)
	}
	return nil
}

// PeekQueue reads the selected repair queue without consuming it: n bytes
// with MSG_PEEK (repair mode makes recv return the queue's content, the
// send queue included).
func PeekQueue(fd, n int) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	buf := make([]byte, n)
	got, _, err := unix.Recvfrom(fd, buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
	if err != nil {
		return nil, fmt.Errorf("peek %d queued bytes: %w", n, err)
	}
	if got != n {
		return nil, fmt.Errorf("peek %d queued bytes: got %d", n, got)
	}
	return buf, nil
}

// FinOnRecv reports whether a connection in state s has received its
// peer's FIN (one sequence number of the receive side is the FIN).
func FinOnRecv(s uint32) bool {
	switch s {
	case StateCloseWait, StateLastAck, StateClosing, StateClose:
		return true
	}
	return false
}

// FinOnSend reports whether a connection in state s has queued its own
// FIN (one sequence number of the send side is the FIN).
func FinOnSend(s uint32) bool {
	switch s {
	case StateFinWait1, StateFinWait2, StateClosing, StateLastAck, StateClose:
		return true
	}
	return false
}
