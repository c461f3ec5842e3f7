package show

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/fdrestore/fdrestore/proto/criupb"
	"golang.org/x/sys/unix"
)

type bitName struct {
	bit  uint32
	name string
}

// Open status flags as the kernel of the dumping machine records them in
// f_flags. The values differ between architectures; genericOpenFlags is
// asm-generic (x86_64, riscv64, loongarch64, s390), armOpenFlags is ARM and
// AArch64. O_SYNC is __O_SYNC|O_DSYNC and is matched before O_DSYNC.
var (
	genericOpenFlags = []bitName{
		{0x101000, "O_SYNC"}, {0x80, "O_EXCL"}, {0x100, "O_NOCTTY"}, {0x200, "O_TRUNC"},
		{0x400, "O_APPEND"}, {0x800, "O_NONBLOCK"}, {0x1000, "O_DSYNC"}, {0x2000, "O_ASYNC"},
		{0x4000, "O_DIRECT"}, {0x8000, "O_LARGEFILE"}, {0x10000, "O_DIRECTORY"},
		{0x20000, "O_NOFOLLOW"}, {0x40000, "O_NOATIME"}, {0x80000, "O_CLOEXEC"},
		{0x200000, "O_PATH"}, {0x40, "O_CREAT"},
	}
	armOpenFlags = []bitName{
		{0x101000, "O_SYNC"}, {0x80, "O_EXCL"}, {0x100, "O_NOCTTY"}, {0x200, "O_TRUNC"},
		{0x400, "O_APPEND"}, {0x800, "O_NONBLOCK"}, {0x1000, "O_DSYNC"}, {0x2000, "O_ASYNC"},
		{0x10000, "O_DIRECT"}, {0x20000, "O_LARGEFILE"}, {0x4000, "O_DIRECTORY"},
		{0x8000, "O_NOFOLLOW"}, {0x40000, "O_NOATIME"}, {0x80000, "O_CLOEXEC"},
		{0x200000, "O_PATH"}, {0x40, "O_CREAT"},
	}
)

// OpenFlags decodes open(2) status flags as recorded for architecture
// march: the access mode first (O_RDONLY, O_WRONLY or O_RDWR), then every
// other set flag, including O_LARGEFILE, joined by "|". Bits without a name
// are appended in hex.
func OpenFlags(flags uint32, march criupb.CoreEntryMarch) string {
	var parts []string
	switch flags & 3 {
	case 0:
		parts = append(parts, "O_RDONLY")
	case 1:
		parts = append(parts, "O_WRONLY")
	case 2:
		parts = append(parts, "O_RDWR")
	default:
		parts = append(parts, "O_ACCMODE")
	}
	table := genericOpenFlags
	if march == criupb.CoreEntry_ARM || march == criupb.CoreEntry_AARCH64 {
		table = armOpenFlags
	}
	rest := flags &^ 3
	for _, b := range table {
		if rest&b.bit == b.bit {
			parts = append(parts, b.name)
			rest &^= b.bit
		}
	}
	if rest != 0 {
		parts = append(parts, fmt.Sprintf("%#x", rest))
	}
	return strings.Join(parts, "|")
}

var epollEvents = []bitName{
	{0x1, "EPOLLIN"}, {0x2, "EPOLLPRI"}, {0x4, "EPOLLOUT"}, {0x8, "EPOLLERR"},
	{0x10, "EPOLLHUP"}, {0x20, "EPOLLNVAL"}, {0x40, "EPOLLRDNORM"}, {0x80, "EPOLLRDBAND"},
	{0x100, "EPOLLWRNORM"}, {0x200, "EPOLLWRBAND"}, {0x400, "EPOLLMSG"},
	{0x2000, "EPOLLRDHUP"}, {1 << 28, "EPOLLEXCLUSIVE"}, {1 << 29, "EPOLLWAKEUP"},
	{1 << 30, "EPOLLONESHOT"}, {1 << 31, "EPOLLET"},
}

// EpollEvents decodes an epoll event mask, e.g. "EPOLLIN|EPOLLET".
func EpollEvents(ev uint32) string {
	var parts []string
	for _, b := range epollEvents {
		if ev&b.bit != 0 {
			parts = append(parts, b.name)
			ev &^= b.bit
		}
	}
	if ev != 0 || len(parts) == 0 {
		parts = append(parts, fmt.Sprintf("%#x", ev))
	}
	return strings.Join(parts, "|")
}

// Signals decodes a signal mask (bit n-1 for signal n) into signal names,
// e.g. ["SIGINT", "SIGTERM"]; unnamed signals appear as "SIG34".
func Signals(mask uint64) []string {
	var out []string
	for n := 1; n <= 64; n++ {
		if mask&(1<<(n-1)) == 0 {
			continue
		}
		name := unix.SignalName(unix.Signal(n))
		if name == "" {
			name = fmt.Sprintf("SIG%d", n)
		}
		out = append(out, name)
	}
	return out
}

// ClockName names a clock id (CLOCK_MONOTONIC, ...), or gives its number.
func ClockName(id uint32) string {
	names := map[uint32]string{
		0: "CLOCK_REALTIME", 1: "CLOCK_MONOTONIC", 2: "CLOCK_PROCESS_CPUTIME_ID",
		3: "CLOCK_THREAD_CPUTIME_ID", 4: "CLOCK_MONOTONIC_RAW", 5: "CLOCK_REALTIME_COARSE",
		6: "CLOCK_MONOTONIC_COARSE", 7: "CLOCK_BOOTTIME", 8: "CLOCK_REALTIME_ALARM",
		9: "CLOCK_BOOTTIME_ALARM", 11: "CLOCK_TAI",
	}
	if n, ok := names[id]; ok {
		return n
	}
	return fmt.Sprintf("clock %d", id)
}

// SocketType names a socket type (STREAM, DGRAM, SEQPACKET, ...).
func SocketType(t uint32) string {
	switch t {
	case unix.SOCK_STREAM:
		return "STREAM"
	case unix.SOCK_DGRAM:
		return "DGRAM"
	case unix.SOCK_SEQPACKET:
		return "SEQPACKET"
	case unix.SOCK_RAW:
		return "RAW"
	}
	return fmt.Sprintf("type %d", t)
}

// SocketState names a socket state in the kernel's TCP numbering, which
// unix sockets share (ESTABLISHED, LISTEN, CLOSE, ...).
func SocketState(s uint32) string {
	names := []string{1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1",
		5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK",
		10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}
	if int(s) < len(names) && names[s] != "" {
		return names[s]
	}
	return fmt.Sprintf("state %d", s)
}

func familyName(f uint32) string {
	switch f {
	case unix.AF_INET:
		return "AF_INET"
	case unix.AF_INET6:
		return "AF_INET6"
	}
	return fmt.Sprintf("family %d", f)
}

func protoName(p uint32) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "TCP"
	case unix.IPPROTO_UDP:
		return "UDP"
	case unix.IPPROTO_UDPLITE:
		return "UDPLITE"
	case unix.IPPROTO_ICMP:
		return "ICMP"
	case unix.IPPROTO_ICMPV6:
		return "ICMPV6"
	}
	return fmt.Sprintf("proto %d", p)
}

// inetAddr formats an address stored as CRIU does: the bytes of the
// address in network order, copied into 32-bit words of the dumping host
// (one word for IPv4, four for IPv6).
func inetAddr(family uint32, words []uint32, port uint32) string {
	var b [16]byte
	for i, w := range words {
		if i >= 4 {
			break
		}
		binary.NativeEndian.PutUint32(b[i*4:], w)
	}
	var a netip.Addr
	if family == unix.AF_INET6 {
		a = netip.AddrFrom16(b)
	} else {
		a = netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrPortFrom(a, uint16(port)).String()
}

// unixName renders a unix socket name: abstract names (leading NUL) as
// @name, path names up to their terminating NUL, unbound sockets as "".
// Unprintable bytes are escaped as in a Go string literal.
func unixName(name []byte) string {
	if len(name) == 0 {
		return ""
	}
	if name[0] == 0 {
		return "@" + printable(string(name[1:]))
	}
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	return printable(string(name))
}

// printable returns s, or its Go-escaped form without quotes when it holds
// unprintable bytes.
func printable(s string) string {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			q := strconv.Quote(s)
			return q[1 : len(q)-1]
		}
	}
	return s
}
