package features

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TCP_REPAIR_QUEUE values; x/sys/unix does not define them.
const (
	tcpNoQueue   = 0
	tcpRecvQueue = 1
	tcpSendQueue = 2
)

// tcpRepairWindowLen is sizeof(struct tcp_repair_window): five __u32.
const tcpRepairWindowLen = 20

const capNetAdminHint = "needs CAP_NET_ADMIN"

// repairSocket returns a fresh, unconnected TCP socket in repair mode. The
// caller must close it with closeRepair.
func repairSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, opErr("socket(AF_INET, SOCK_STREAM)", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_ON); err != nil {
		unix.Close(fd)
		return -1, permErr("setsockopt(TCP_REPAIR, 1)", err, capNetAdminHint)
	}
	return fd, nil
}

// closeRepair leaves repair mode and closes fd. It returns the error from
// leaving repair mode.
func closeRepair(fd int) error {
	err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF)
	unix.Close(fd)
	if err != nil {
		return opErr("setsockopt(TCP_REPAIR, 0)", err)
	}
	return nil
}

func probeTCPRepair() (string, error) {
	fd, err := repairSocket()
	if err != nil {
		return "", err
	}
	v, gerr := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR)
	if err := closeRepair(fd); err != nil {
		return "", err
	}
	if gerr != nil {
		return "", opErr("getsockopt(TCP_REPAIR)", gerr)
	}
	if v != 1 {
		return "", fmt.Errorf("getsockopt(TCP_REPAIR) = %d after setting it to 1", v)
	}
	return "", nil
}

func probeTCPRepairQueue() (string, error) {
	fd, err := repairSocket()
	if err != nil {
		return "", fmt.Errorf("prerequisite failed: %w", err)
	}
	err = repairQueueSeq(fd)
	if cerr := closeRepair(fd); err == nil {
		err = cerr
	}
	return "", err
}

func repairQueueSeq(fd int) error {
	for _, q := range []struct {
		queue int
		name  string
		seq   uint32
	}{
		{tcpRecvQueue, "TCP_RECV_QUEUE", 0x12345678},
		{tcpSendQueue, "TCP_SEND_QUEUE", 0x9abcdef0},
	} {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR_QUEUE, q.queue); err != nil {
			return opErr("setsockopt(TCP_REPAIR_QUEUE, "+q.name+")", err)
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_QUEUE_SEQ, int(int32(q.seq))); err != nil {
			return opErr("setsockopt(TCP_QUEUE_SEQ) on "+q.name, err)
		}
		got, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_QUEUE_SEQ)
		if err != nil {
			return opErr("getsockopt(TCP_QUEUE_SEQ) on "+q.name, err)
		}
		if uint32(got) != q.seq {
			return fmt.Errorf("TCP_QUEUE_SEQ on %s reads back %#x, set %#x", q.name, uint32(got), q.seq)
		}
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR_QUEUE, tcpNoQueue); err != nil {
		return opErr("setsockopt(TCP_REPAIR_QUEUE, TCP_NO_QUEUE)", err)
	}
	return nil
}

func probeTCPRepairWindow() (string, error) {
	fd, err := repairSocket()
	if err != nil {
		return "", fmt.Errorf("prerequisite failed: %w", err)
	}
	err = repairWindow(fd)
	if cerr := closeRepair(fd); err == nil {
		err = cerr
	}
	return "", err
}

// repairWindow reads TCP_REPAIR_WINDOW and writes the same values back.
func repairWindow(fd int) error {
	var buf [tcpRepairWindowLen]byte
	l := uint32(len(buf))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_REPAIR_WINDOW,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return opErr("getsockopt(TCP_REPAIR_WINDOW)", e)
	}
	if l != tcpRepairWindowLen {
		return fmt.Errorf("getsockopt(TCP_REPAIR_WINDOW) returned %d bytes, want %d", l, tcpRepairWindowLen)
	}
	// Sanity: max_window (third field) must not be below snd_wnd (second).
	if binary.NativeEndian.Uint32(buf[8:]) < binary.NativeEndian.Uint32(buf[4:]) {
		return fmt.Errorf("getsockopt(TCP_REPAIR_WINDOW) returned max_window < snd_wnd")
	}
	_, _, e = unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_REPAIR_WINDOW,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0)
	if e != 0 {
		return opErr("setsockopt(TCP_REPAIR_WINDOW)", e)
	}
	return nil
}
