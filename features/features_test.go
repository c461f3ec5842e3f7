package features

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// rootRequired lists the features every machine fdrestore is tested on must
// have when running as root.
var rootRequired = []string{
	PidfdOpen, PidfdGetfd, KcmpFile, TCPRepair, TCPRepairQueue,
	Ptmx, PtmxIndex, PtmxPeer, Tee, SOPeekOff, SockDiagUnix, SockDiagInet,
	NSPid, NSNet, NSMnt, NSIpc,
}

// skipUnlessRoot skips root-only assertions, except in CI where they must
// run.
func skipUnlessRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("CI must run as root: root-only feature assertions cannot be skipped (euid is not 0)")
	}
	t.Skip("not root: skipping assertions for features that need CAP_NET_ADMIN/CAP_SYS_ADMIN (set CI=true to make this fatal)")
}

func TestProbe(t *testing.T) {
	start := time.Now()
	fs := Probe()
	elapsed := time.Since(start)
	t.Logf("Probe took %v", elapsed)

	if got, want := len(fs), len(Names()); got != want {
		t.Fatalf("Probe returned %d features, Names has %d", got, want)
	}
	seen := map[string]bool{}
	for i, f := range fs {
		t.Log(f.String())
		if f.Name != Names()[i] {
			t.Errorf("feature %d is %q, want %q", i, f.Name, Names()[i])
		}
		if seen[f.Name] {
			t.Errorf("duplicate feature %q", f.Name)
		}
		seen[f.Name] = true
		if f.Needed == "" {
			t.Errorf("%s: empty Needed", f.Name)
		}
		if f.Err != nil && strings.ContainsAny(f.Err.Error(), "\r\n") {
			t.Errorf("%s: error is not one line: %q", f.Name, f.Err)
		}
	}
	if m := Missing(fs); len(m) > 0 {
		t.Logf("%d feature(s) missing", len(m))
	}

	skipUnlessRoot(t)
	byName := map[string]Feature{}
	for _, f := range fs {
		byName[f.Name] = f
	}
	for _, name := range rootRequired {
		if f := byName[name]; f.Err != nil {
			t.Errorf("required feature %s missing as root: %v", name, f.Err)
		}
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// childPIDs returns the children of every thread of this process.
func childPIDs(t *testing.T) []string {
	t.Helper()
	tasks, err := filepath.Glob("/proc/self/task/*/children")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // thread exited
		}
		out = append(out, strings.Fields(string(b))...)
	}
	return out
}

func tempLeftovers(t *testing.T) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(os.TempDir(), "fdrestore-devpts-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestProbeLeavesNothingBehind(t *testing.T) {
	// The first run may make the Go runtime open long-lived fds of its own
	// (the netpoller's epoll and eventfd), so compare two later runs.
	Probe()
	before := countFDs(t)
	tmpBefore := tempLeftovers(t)

	start := time.Now()
	fs := Probe()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Probe took %v, want under 5s", d)
	}
	if after := countFDs(t); after != before {
		ents, _ := os.ReadDir("/proc/self/fd")
		var links []string
		for _, e := range ents {
			l, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
			links = append(links, e.Name()+"->"+l)
		}
		t.Errorf("Probe leaked fds: %d before, %d after: %v", before, after, links)
	}
	if c := childPIDs(t); len(c) > 0 {
		t.Errorf("Probe left child processes: %v", c)
	}
	if tmp := tempLeftovers(t); len(tmp) != len(tmpBefore) {
		t.Errorf("Probe left temporary directories: %v (before: %v)", tmp, tmpBefore)
	}
	if len(fs) != len(Names()) {
		t.Errorf("second Probe returned %d features", len(fs))
	}
	// The devpts probe uses a private mount namespace on a throw-away
	// thread; no surviving thread may still be in it.
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	links, _ := filepath.Glob("/proc/self/task/*/ns/mnt")
	for _, l := range links {
		if ns, err := os.Readlink(l); err == nil && ns != self {
			t.Errorf("%s is %s, process is in %s", l, ns, self)
		}
	}
}

func TestProbeOne(t *testing.T) {
	f, err := ProbeOne(Tee)
	if err != nil {
		t.Fatal(err)
	}
	if f.Name != Tee || f.Needed == "" {
		t.Errorf("ProbeOne(Tee) = %+v", f)
	}
	if f.Err != nil {
		t.Errorf("tee is available on every supported kernel: %v", f.Err)
	}
	_, err = ProbeOne("no_such_feature")
	if !errors.Is(err, ErrUnknownFeature) {
		t.Errorf("ProbeOne(unknown) error = %v, want ErrUnknownFeature", err)
	}
}

func TestMissing(t *testing.T) {
	fs := []Feature{
		{Name: "a"},
		{Name: "b", Err: errors.New("b failed")},
		{Name: "c"},
		{Name: "d", Err: errors.New("d failed")},
	}
	m := Missing(fs)
	if len(m) != 2 || m[0].Name != "b" || m[1].Name != "d" {
		t.Errorf("Missing = %+v", m)
	}
	if Missing(fs[:1]) != nil {
		t.Error("Missing of available features should be nil")
	}
}

func TestFeatureString(t *testing.T) {
	ok := Feature{Name: Tee, Needed: "dump: x", Detail: "d"}
	if got, want := ok.String(), "tee: ok [d] (dump: x)"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	if !ok.Available() {
		t.Error("Available = false for nil Err")
	}
	bad := Feature{Name: TCPRepair, Needed: "n", Err: permErr("setsockopt(TCP_REPAIR, 1)", unix.EPERM, capNetAdminHint)}
	if got, want := bad.String(), "tcp_repair: MISSING: setsockopt(TCP_REPAIR, 1): operation not permitted (needs CAP_NET_ADMIN) (n)"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	if !errors.Is(bad.Err, unix.EPERM) {
		t.Error("errno is not wrapped")
	}
}

func TestNamesAreConstants(t *testing.T) {
	names := Names()
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	if len(slices.Compact(sorted)) != len(names) {
		t.Errorf("duplicate names in %v", names)
	}
	for name := range nsFlags {
		if !slices.Contains(names, name) {
			t.Errorf("namespace feature %s is not probed", name)
		}
	}
}

func TestUnixDiagReqLayout(t *testing.T) {
	b := unixDiagReq(0x01020304, udiagShowName|udiagShowPeer)
	if len(b) != 24 {
		t.Fatalf("len = %d", len(b))
	}
	ne := binary.NativeEndian
	if b[0] != unix.AF_UNIX || b[1] != 0 || ne.Uint32(b[8:]) != 0x01020304 || ne.Uint32(b[12:]) != 5 {
		t.Errorf("bad unix_diag_req % x", b)
	}
	if ne.Uint32(b[16:]) != ^uint32(0) || ne.Uint32(b[20:]) != ^uint32(0) {
		t.Errorf("cookie is not INET_DIAG_NOCOOKIE: % x", b[16:])
	}
}

func TestInetDiagReqLayout(t *testing.T) {
	b := inetDiagReq([4]byte{127, 0, 0, 1}, 0x1234)
	if len(b) != 56 {
		t.Fatalf("len = %d", len(b))
	}
	if b[0] != unix.AF_INET || b[1] != unix.IPPROTO_TCP {
		t.Errorf("family/protocol = %d/%d", b[0], b[1])
	}
	if b[8] != 0x12 || b[9] != 0x34 {
		t.Errorf("sport not big-endian: % x", b[8:10])
	}
	if !slices.Equal(b[12:16], []byte{127, 0, 0, 1}) {
		t.Errorf("src = % x", b[12:16])
	}
}

func TestParseNetlinkAndAttrs(t *testing.T) {
	ne := binary.NativeEndian
	// Two messages: one with a 5-byte payload (padded to 8), one empty.
	var b []byte
	m1 := make([]byte, 16+5+3)
	ne.PutUint32(m1[0:], 16+5)
	ne.PutUint16(m1[4:], 20)
	ne.PutUint32(m1[8:], 7)
	copy(m1[16:], "hello")
	m2 := make([]byte, 16)
	ne.PutUint32(m2[0:], 16)
	ne.PutUint16(m2[4:], unix.NLMSG_DONE)
	b = append(append(b, m1...), m2...)
	msgs, err := parseNetlink(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 || msgs[0].typ != 20 || msgs[0].seq != 7 || string(msgs[0].data) != "hello" || msgs[1].typ != unix.NLMSG_DONE {
		t.Errorf("parseNetlink = %+v", msgs)
	}
	if _, err := parseNetlink([]byte{200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}); err == nil {
		t.Error("want error for an overlong length")
	}

	// Attributes: type 0 "ab" (len 6, padded to 8), type 2 uint32 42.
	a := make([]byte, 16)
	ne.PutUint16(a[0:], 6)
	ne.PutUint16(a[2:], 0)
	copy(a[4:], "ab")
	ne.PutUint16(a[8:], 8)
	ne.PutUint16(a[10:], 2)
	ne.PutUint32(a[12:], 42)
	attrs := rtattrs(a)
	if string(attrs[0]) != "ab" || ne.Uint32(attrs[2]) != 42 {
		t.Errorf("rtattrs = %v", attrs)
	}
}

func TestPtsIndexOf(t *testing.T) {
	if i, ok := ptsIndexOf(unix.Mkdev(136, 5)); !ok || i != 5 {
		t.Errorf("136:5 -> %d %v", i, ok)
	}
	if i, ok := ptsIndexOf(unix.Mkdev(137, 1)); !ok || i != 257 {
		t.Errorf("137:1 -> %d %v", i, ok)
	}
	if _, ok := ptsIndexOf(unix.Mkdev(5, 2)); ok {
		t.Error("5:2 (/dev/ptmx) is not a pts slave")
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	if got := unescapeMountinfo(`/a\040b\134c`); got != `/a b\c` {
		t.Errorf("got %q", got)
	}
	if got := unescapeMountinfo("/sys/fs/cgroup"); got != "/sys/fs/cgroup" {
		t.Errorf("got %q", got)
	}
}
