package features

import (
	"bytes"
	"fmt"

	"golang.org/x/sys/unix"
)

// newPipe returns a non-blocking, close-on-exec pipe.
func newPipe() ([2]int, error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return p, opErr("pipe2", err)
	}
	return p, nil
}

// readExact does one non-blocking read of len(want) bytes from fd and checks
// the data.
func readExact(fd int, want []byte, what string) error {
	buf := make([]byte, len(want)+1)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return opErr("read "+what, err)
	}
	if !bytes.Equal(buf[:n], want) {
		return fmt.Errorf("read %s: got %q, want %q", what, buf[:n], want)
	}
	return nil
}

func probeTee() (string, error) {
	src, err := newPipe()
	if err != nil {
		return "", err
	}
	defer closeAll(src[0], src[1])
	dst, err := newPipe()
	if err != nil {
		return "", err
	}
	defer closeAll(dst[0], dst[1])

	data := []byte("fdrestore tee probe")
	if n, err := unix.Write(src[1], data); err != nil || n != len(data) {
		return "", fmt.Errorf("write to pipe: wrote %d of %d bytes: %v", n, len(data), err)
	}
	n, err := unix.Tee(src[0], dst[1], len(data), unix.SPLICE_F_NONBLOCK)
	if err != nil {
		return "", opErr("tee(pipe, pipe)", err)
	}
	if n != int64(len(data)) {
		return "", fmt.Errorf("tee(pipe, pipe) copied %d bytes, want %d", n, len(data))
	}
	if err := readExact(dst[0], data, "the tee copy"); err != nil {
		return "", err
	}
	if err := readExact(src[0], data, "the source pipe after tee"); err != nil {
		return "", fmt.Errorf("tee consumed its source: %w", err)
	}
	return "", nil
}

func probePipeSize() (string, error) {
	p, err := newPipe()
	if err != nil {
		return "", err
	}
	defer closeAll(p[0], p[1])
	orig, err := unix.FcntlInt(uintptr(p[0]), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		return "", opErr("fcntl(F_GETPIPE_SZ)", err)
	}
	want := 2 * orig
	got, err := unix.FcntlInt(uintptr(p[0]), unix.F_SETPIPE_SZ, want)
	if err != nil {
		return "", permErr(fmt.Sprintf("fcntl(F_SETPIPE_SZ, %d)", want), err,
			"above /proc/sys/fs/pipe-max-size or the user's pipe quota; needs CAP_SYS_RESOURCE")
	}
	if got < want {
		return "", fmt.Errorf("fcntl(F_SETPIPE_SZ, %d) gave only %d bytes", want, got)
	}
	now, err := unix.FcntlInt(uintptr(p[0]), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		return "", opErr("fcntl(F_GETPIPE_SZ) after resize", err)
	}
	if now != got {
		return "", fmt.Errorf("F_GETPIPE_SZ = %d after F_SETPIPE_SZ returned %d", now, got)
	}
	return fmt.Sprintf("%d -> %d bytes", orig, now), nil
}

func probeSOPeekOff() (string, error) {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return "", opErr("socketpair(AF_UNIX)", err)
	}
	defer closeAll(sp[0], sp[1])
	data := []byte("0123456789")
	if n, err := unix.Write(sp[0], data); err != nil || n != len(data) {
		return "", fmt.Errorf("write to unix socket: wrote %d of %d bytes: %v", n, len(data), err)
	}
	if err := unix.SetsockoptInt(sp[1], unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0); err != nil {
		return "", opErr("setsockopt(SO_PEEK_OFF, 0) on a unix socket", err)
	}
	buf := make([]byte, 4)
	for i, want := range []string{"0123", "4567"} {
		n, _, err := unix.Recvfrom(sp[1], buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err != nil {
			return "", opErr(fmt.Sprintf("recv(MSG_PEEK) #%d with SO_PEEK_OFF", i+1), err)
		}
		if string(buf[:n]) != want {
			return "", fmt.Errorf("recv(MSG_PEEK) #%d with SO_PEEK_OFF: got %q, want %q (peek offset not advanced)", i+1, buf[:n], want)
		}
	}
	off, err := unix.GetsockoptInt(sp[1], unix.SOL_SOCKET, unix.SO_PEEK_OFF)
	if err != nil {
		return "", opErr("getsockopt(SO_PEEK_OFF)", err)
	}
	if off != 8 {
		return "", fmt.Errorf("getsockopt(SO_PEEK_OFF) = %d after peeking 8 bytes", off)
	}
	if err := readExact(sp[1], data, "the unix socket after peeking"); err != nil {
		return "", fmt.Errorf("peeking consumed data: %w", err)
	}
	return "", nil
}
