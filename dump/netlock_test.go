package dump

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/internal/netlock"
	"github.com/fdrestore/fdrestore/restore"
	"golang.org/x/sys/unix"
)

// treeNetns holds the network namespace of a scenario's tree, which
// outlives the tree (the dump kills it) for as long as the test runs.
type treeNetns struct {
	t  *testing.T
	fd int
}

func holdNetns(t *testing.T, pid int) *treeNetns {
	fd, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return &treeNetns{t: t, fd: fd}
}

// do runs fn on a thread in the namespace (processes it starts are born
// there).
func (ns *treeNetns) do(fn func()) {
	ns.t.Helper()
	self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		ns.t.Fatal(err)
	}
	defer unix.Close(self)
	runtime.LockOSThread()
	if err := unix.Setns(ns.fd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		ns.t.Fatal(err)
	}
	defer func() {
		if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
			panic(err)
		}
		runtime.UnlockOSThread()
	}()
	fn()
}

func (ns *treeNetns) nft(stdin string, args ...string) string {
	ns.t.Helper()
	var out []byte
	var err error
	ns.do(func() {
		cmd := exec.Command("nft", args...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err = cmd.CombinedOutput()
	})
	if err != nil {
		ns.t.Fatalf("nft %v: %v: %s", args, err, out)
	}
	return string(out)
}

func (ns *treeNetns) ruleset() string { return ns.nft("", "list", "ruleset") }

func needNft(t *testing.T) {
	if _, err := netlock.Resolve(netlock.NFTables); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
}

const otherTable = "table ip other {\n\tchain c {\n\t\ttype filter hook input priority filter; policy accept;\n\t\ttcp dport 9 accept\n\t}\n}\n"

// lockedDump starts tcp-pair in a network namespace of its own with a
// table of somebody else's in it, and dumps it: the lock recorded is in
// the tree's namespace, and the ruleset is what it was plus the lock's
// table. It returns the images, the namespace, the lock and the ruleset
// before the dump.
func lockedDump(t *testing.T) (string, *treeNetns, *netlock.Lock, string) {
	pid := startTCPScenario(t)
	needNft(t)
	ns := holdNetns(t, pid)
	ns.nft(otherTable, "-f", "-")
	before := ns.ruleset()
	img := filepath.Join(t.TempDir(), "img")
	if _, err := Dump(context.Background(), pid, img, Options{Timeout: 20 * time.Second, TCPEstablished: true}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	l, err := netlock.ReadRecord(img)
	if err != nil || l == nil {
		t.Fatalf("no lock recorded: %v", err)
	}
	if l.Method != netlock.NFTables || len(l.Conns) != 2 {
		t.Fatalf("lock %+v, want nftables with the two ends of the connection", l)
	}
	var st unix.Stat_t
	unix.Fstat(ns.fd, &st)
	if l.Netns != st.Ino {
		t.Errorf("lock set in netns %d, the tree's is %d", l.Netns, st.Ino)
	}
	during := ns.ruleset()
	if !strings.Contains(during, "table inet "+l.Name+" {") || !strings.Contains(during, "127.0.0.1 . 7100 . 127.0.0.1 . 40100") ||
		!strings.Contains(during, "127.0.0.1 . 40100 . 127.0.0.1 . 7100") {
		t.Errorf("ruleset of the tree's namespace after the dump:\n%s", during)
	}
	if got := ns.nft("", "list", "table", "ip", "other"); !strings.Contains(before, strings.TrimSpace(got)) {
		t.Errorf("the other table changed: %s", got)
	}
	set, err := images.Load(img)
	if err != nil {
		t.Fatal(err)
	}
	if m := set.Inventory.GetNetworkLockMethod(); m != 1 {
		t.Errorf("inventory network_lock_method %d, want 1 (nftables)", m)
	}
	return img, ns, l, before
}

func restoreInNetns(t *testing.T, ns *treeNetns, img string, timeout time.Duration, before func()) (*restore.Result, error) {
	set, err := images.Load(img)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := restore.NewPlan(set, restore.PlanOptions{TCPEstablished: true})
	if err == nil {
		err = plan.Err()
	}
	if err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before()
	}
	var res *restore.Result
	ns.do(func() {
		res, err = restore.Run(context.Background(), plan, restore.Options{End: restore.EndStop, Timeout: timeout})
	})
	if res != nil {
		t.Cleanup(func() {
			for _, p := range res.PidMap {
				unix.Kill(p, unix.SIGKILL)
			}
		})
	}
	return res, err
}

// TestNetLockRestoreRemoves: the lock is in the tree's namespace after
// the dump and gone after the restore, which leaves the rest of the
// ruleset as it was.
func TestNetLockRestoreRemoves(t *testing.T) {
	img, ns, l, before := lockedDump(t)
	if _, err := restoreInNetns(t, ns, img, 30*time.Second, nil); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if after := ns.ruleset(); after != before {
		t.Errorf("ruleset after the restore:\n%s\nwant (before the dump):\n%s", after, before)
	}
	_ = l
}

// TestNetLockFailedRestore: a restore that fails before any socket exists
// leaves the lock (the restore can be tried again); one that fails after
// the tasks began restoring their fds removes it, and nothing else.
func TestNetLockFailedRestore(t *testing.T) {
	img, ns, l, before := lockedDump(t)
	if _, err := restoreInNetns(t, ns, img, time.Nanosecond, nil); err == nil {
		t.Fatal("restore within 1ns succeeded")
	}
	if !strings.Contains(ns.ruleset(), "table inet "+l.Name) {
		t.Fatal("the lock is gone after a restore that failed before any socket existed")
	}
	// The tree's working directory gone after the plan: the tasks fail
	// to chdir at the end, after their sockets are restored and out of
	// repair.
	cwd := readCwd(t, img)
	_, err := restoreInNetns(t, ns, img, 30*time.Second, func() {
		if err := os.Rename(cwd, cwd+".away"); err != nil {
			t.Fatal(err)
		}
	})
	if err := os.Rename(cwd+".away", cwd); err != nil {
		t.Fatal(err)
	}
	if err == nil {
		t.Fatal("restore without the working directory succeeded")
	}
	if errors.Is(err, restore.ErrNetworkLock) {
		t.Fatalf("restore failed removing the lock: %v", err)
	}
	t.Logf("restore failed as planned: %v", err)
	if after := ns.ruleset(); after != before {
		t.Errorf("ruleset after the failed restore:\n%s\nwant (before the dump):\n%s", after, before)
	}
	if out := ns.nft("", "list", "tables"); strings.Contains(out, l.Name) {
		t.Errorf("lock table still listed: %s", out)
	}
}

// readCwd returns the working directory of the dumped root task.
func readCwd(t *testing.T, img string) string {
	recs, err := restore.LoadExecRecords(img)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.GetCwd() != "" {
			return r.GetCwd()
		}
	}
	t.Fatal("no cwd recorded")
	return ""
}

// TestNetLockRefused: a lock that cannot be set refuses the dump and
// leaves the tree running, with no lock and no record.
func TestNetLockRefused(t *testing.T) {
	pid := startTCPScenario(t)
	needNft(t)
	ns := holdNetns(t, pid)
	// Somebody else's table of the same kind cannot make the lock fail;
	// a tool that fails does: nft found first in $PATH, failing.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nft"), []byte("#!/bin/sh\necho 'nft: no way' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	img := filepath.Join(t.TempDir(), "img")
	_, err := Dump(context.Background(), pid, img, Options{Timeout: 20 * time.Second, TCPEstablished: true, NetworkLock: netlock.NFTables})
	if !errors.Is(err, ErrNetworkLock) || !strings.Contains(err.Error(), "nft: no way") || !strings.Contains(err.Error(), "left running") {
		t.Fatalf("dump with a failing nft: %v", err)
	}
	if err := unix.Kill(pid, 0); err != nil {
		t.Fatalf("tree gone after a refused dump: %v", err)
	}
	if _, err := os.Stat(filepath.Join(img, NetLockRecord)); !os.IsNotExist(err) {
		t.Errorf("lock record left: %v", err)
	}
	t.Setenv("PATH", os.Getenv("PATH")[len(dir)+1:])
	if rs := ns.ruleset(); strings.Contains(rs, "fdrestore-lock") {
		t.Errorf("lock left in the ruleset: %s", rs)
	}
	// Unknown methods are refused before the tree is touched.
	if _, err := Dump(context.Background(), pid, img, Options{TCPEstablished: true, NetworkLock: "bogus"}); err == nil || !strings.Contains(err.Error(), "unknown method") {
		t.Errorf("dump --network-lock=bogus: %v", err)
	}
}
