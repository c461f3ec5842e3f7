package zdtm

import (
	"strings"
	"testing"
	"time"
)

// TestMutations breaks the engine's input on purpose — the images between
// dump and restore — and requires the suite to notice: the comparison of
// the restored tree with the recorded one must name what differs, and
// where the tasks can see it, their own verification must fail too.
func TestMutations(t *testing.T) {
	needRoot(t)
	cases := []struct {
		mutation, scenario string
		diff               string // must appear in a comparison difference
		verdict            string // must appear in a failed verdict ("" when the tasks cannot tell)
	}{
		{MutDropByte, "pipe00", "task 0 fd 12: 12 bytes queued before the dump, 11 after restore", "pipe00/root: FAIL: queued message"},
		{MutSplitShared, "pipe01", "task 0 fd 3, task 0 fd 5 share one open file description before the dump, but 2 after restore", ""},
		{MutFlipNonblock, "pipe01", "task 0 fd 3: flags O_RDONLY before the dump, O_RDONLY|O_NONBLOCK after restore", "pipe01/root: FAIL: fd 3: flags"},
		{MutExtraFd, "pipe00", "task 0: extra fd 100 (pipe) after restore", "pipe00/root: FAIL: after restore: unexpected fds 100 (pipe:["},
	}
	for _, c := range cases {
		t.Run(c.mutation, func(t *testing.T) {
			t.Parallel()
			res := runDriver(t, Config{Scenario: c.scenario, Flavor: FlavorHost, Iters: 1, Mutate: c.mutation, IOTimeout: 2 * time.Second})
			if res.Status == "pass" {
				t.Fatalf("%s of %s went unnoticed", c.mutation, c.scenario)
			}
			found := false
			for _, d := range res.Diffs {
				found = found || strings.Contains(d, c.diff)
			}
			if !found {
				t.Errorf("no difference saying %q; got %q (reason: %s)", c.diff, res.Diffs, res.Reason)
			}
			if c.verdict != "" {
				found = false
				for _, v := range res.Verdicts {
					found = found || strings.Contains(v, c.verdict)
				}
				if !found {
					t.Errorf("no verdict saying %q; got %q", c.verdict, res.Verdicts)
				}
			}
			t.Logf("%s of %s: %s", c.mutation, c.scenario, res.Reason)
		})
	}
}
