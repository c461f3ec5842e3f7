package zdtm

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestNetworkLockVeth runs tcp-veth (a client in another network
// namespace that keeps sending across every dump and restore) with each
// network lock method: with nftables and iptables every byte arrives and
// nothing is reset; without a lock (--network-lock=skip) the client's
// segments sent while the tree is away meet no socket and the kernel
// resets the connection, which the scenario must report — the proof that
// it can fail.
func TestNetworkLockVeth(t *testing.T) {
	needRoot(t)
	for _, m := range []struct {
		method string
		tools  []string
	}{{"nftables", []string{"nft"}}, {"iptables", []string{"iptables-restore", "ip6tables-restore"}}, {"skip", nil}} {
		t.Run(m.method, func(t *testing.T) {
			t.Parallel()
			for _, tool := range m.tools {
				if !haveTool(tool) {
					if os.Getenv("CI") == "true" {
						t.Fatalf("%s is not installed (make test installs nftables and iptables)", tool)
					}
					t.Skipf("%s is not installed", tool)
				}
			}
			// The gap makes the client's segments certainly meet the lock,
			// or without it no socket (a reset), before any restore.
			res := runDriver(t, Config{Scenario: "tcp-veth", Flavor: FlavorNS, TCP: true, NetworkLock: m.method, Iters: 1, Gap: 300 * time.Millisecond})
			if m.method != "skip" {
				if res.Status != "pass" {
					t.Fatalf("tcp-veth with --network-lock=%s: %s", m.method, res.Reason)
				}
				return
			}
			if res.Status != "fail" {
				t.Fatalf("tcp-veth without a network lock: %s (%s), want a failure: the client's segments during the gap must be reset", res.Status, res.Reason)
			}
			_, client, _ := strings.Cut(res.Reason, "the external client failed: ")
			if !strings.Contains(client, "connection reset by peer") && !strings.Contains(client, "broken pipe") {
				t.Fatalf("tcp-veth without a network lock failed, but not by a reset of the client: %s", res.Reason)
			}
			t.Logf("without the lock, as expected: %s", res.Reason)
		})
	}
}

func haveTool(name string) bool {
	if _, err := exec.LookPath(name); err == nil {
		return true
	}
	for _, d := range []string{"/usr/sbin/", "/sbin/"} {
		if _, err := os.Stat(d + name); err == nil {
			return true
		}
	}
	return false
}
