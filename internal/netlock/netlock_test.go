package netlock

import (
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (network namespaces, firewall rules)")
		}
		t.Skip("needs root (network namespaces, firewall rules)")
	}
}

// inFreshNetns runs fn on a thread in a new network namespace with lo up.
func inFreshNetns(t *testing.T, fn func()) {
	t.Helper()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(orig)
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer func() {
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			panic(err)
		}
		runtime.UnlockOSThread()
	}()
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ifr, _ := unix.NewIfreq("lo")
	ifr.SetUint16(unix.IFF_UP | unix.IFF_LOOPBACK | unix.IFF_RUNNING)
	err = unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr)
	unix.Close(s)
	if err != nil {
		t.Fatal(err)
	}
	fn()
}

func methods(t *testing.T) []string {
	var out []string
	for _, m := range []string{NFTables, IPTables} {
		if _, err := Resolve(m); err != nil {
			if os.Getenv("CI") == "true" {
				t.Errorf("%v", err)
			}
			t.Logf("skipping %s: %v", m, err)
			continue
		}
		out = append(out, m)
	}
	return out
}

func ruleset(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	if out, err := run("nft", nil, "list", "ruleset"); err == nil {
		b.WriteString(out)
	}
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		if _, err := os.Stat("/usr/sbin/" + tool); err != nil {
			continue
		}
		out, err := run(tool, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Drop the comment lines (they carry a time) and counters.
		for _, l := range strings.Split(out, "\n") {
			if !strings.HasPrefix(l, "#") {
				if i := strings.Index(l, " ["); i > 0 && strings.HasPrefix(l, ":") {
					l = l[:i]
				}
				b.WriteString(l + "\n")
			}
		}
	}
	return b.String()
}

// TestLockDropsAndRemoves sets a lock on a loopback connection next to an
// unrelated table: data sent meanwhile does not arrive (and causes no
// reset), the rest of the ruleset is unchanged; once removed the data
// arrives (retransmitted) and the ruleset is exactly what it was.
func TestLockDropsAndRemoves(t *testing.T) {
	needRoot(t)
	for _, m := range methods(t) {
		for _, v6 := range []bool{false, true} {
			name := m + "/v4"
			if v6 {
				name = m + "/v6"
			}
			t.Run(name, func(t *testing.T) {
				inFreshNetns(t, func() { testLock(t, m, v6) })
			})
		}
	}
}

func testLock(t *testing.T, method string, v6 bool) {
	if _, err := run("nft", []byte("table ip other {\n chain c { type filter hook input priority 0; policy accept; tcp dport 9 accept\n }\n}\n"), "-f", "-"); err != nil {
		t.Fatal(err)
	}
	before := ruleset(t)
	fam := unix.AF_INET
	var laddr unix.Sockaddr = &unix.SockaddrInet4{Port: 7000, Addr: [4]byte{127, 0, 0, 1}}
	if v6 {
		fam = unix.AF_INET6
		a := &unix.SockaddrInet6{Port: 7000}
		a.Addr[15] = 1
		laddr = a
	}
	l, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(l)
	if err := unix.Bind(l, laddr); err != nil {
		t.Fatal(err)
	}
	unix.Listen(l, 1)
	c, _ := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	defer unix.Close(c)
	if err := unix.Connect(c, laddr); err != nil {
		t.Fatal(err)
	}
	s, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	sa, _ := unix.Getsockname(s)
	pa, _ := unix.Getpeername(s)
	conn := Conn{Src: addrOf(sa), SrcPort: portOf(sa), Dst: addrOf(pa), DstPort: portOf(pa)}
	lk := New(method, []Conn{conn})
	if err := lk.Set(0); err != nil {
		t.Fatal(err)
	}
	if ok, err := lk.Present(0); !ok || err != nil {
		t.Fatalf("present after Set: %v %v", ok, err)
	}
	during := ruleset(t)
	if !strings.Contains(during, lk.Name) || !strings.HasPrefix(strings.TrimSpace(during), strings.TrimSpace(firstLine(before))) {
		t.Errorf("ruleset while locked:\n%s", during)
	}
	if _, err := unix.Write(c, []byte("during")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if n, _ := unix.IoctlGetInt(s, unix.SIOCINQ); n != 0 {
		t.Errorf("%d bytes arrived through the lock", n)
	}
	if err := lk.Remove(0); err != nil {
		t.Fatal(err)
	}
	if after := ruleset(t); after != before {
		t.Errorf("ruleset after Remove:\n%s\nwant:\n%s", after, before)
	}
	if err := lk.Remove(0); err == nil || !strings.Contains(err.Error(), ErrNotFound.Error()) {
		t.Errorf("second Remove: %v, want not found", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, _ := unix.IoctlGetInt(s, unix.SIOCINQ)
		if n == len("during") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("data sent during the lock did not arrive after it (%d bytes)", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if e, _ := unix.GetsockoptInt(c, unix.SOL_SOCKET, unix.SO_ERROR); e != 0 {
		t.Errorf("client SO_ERROR %v", unix.Errno(e))
	}
}

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }

func addrOf(sa unix.Sockaddr) netip.Addr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(a.Addr)
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(a.Addr)
	}
	return netip.Addr{}
}

func portOf(sa unix.Sockaddr) uint16 {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return uint16(a.Port)
	case *unix.SockaddrInet6:
		return uint16(a.Port)
	}
	return 0
}

func TestResolve(t *testing.T) {
	if _, err := Resolve("bogus"); err == nil || !strings.Contains(err.Error(), "unknown method") {
		t.Errorf("bogus: %v", err)
	}
	if m, err := Resolve(Skip); m != Skip || err != nil {
		t.Errorf("skip: %q %v", m, err)
	}
	t.Setenv("PATH", t.TempDir())
	saved := sbinDirs
	sbinDirs = nil
	defer func() { sbinDirs = saved }()
	if _, err := Resolve(""); err == nil || !strings.Contains(err.Error(), "neither nft nor iptables") {
		t.Errorf("no tools: %v", err)
	}
}

func TestRecord(t *testing.T) {
	dir := t.TempDir()
	if l, err := ReadRecord(dir); l != nil || err != nil {
		t.Fatalf("no record: %v %v", l, err)
	}
	lk := New(NFTables, []Conn{{Src: netip.MustParseAddr("10.1.2.3"), SrcPort: 1, Dst: netip.MustParseAddr("::ffff:10.1.2.4"), DstPort: 2}})
	lk.Netns = 42
	if err := WriteRecord(dir, lk); err != nil {
		t.Fatal(err)
	}
	got, err := ReadRecord(dir)
	if err != nil || got.Name != lk.Name || got.Netns != 42 || len(got.Conns) != 1 || got.Conns[0] != lk.Conns[0] {
		t.Fatalf("read back %+v, %v", got, err)
	}
	os.WriteFile(dir+"/"+RecordFile, []byte(`{"method":"nftables","name":"x; flush ruleset"}`), 0o644)
	if _, err := ReadRecord(dir); err == nil || !strings.Contains(err.Error(), "field name") {
		t.Errorf("bad name: %v", err)
	}
	if err := RemoveRecord(dir); err != nil {
		t.Fatal(err)
	}
	if l, err := ReadRecord(dir); l != nil || err != nil {
		t.Fatalf("removed record: %v %v", l, err)
	}
}
