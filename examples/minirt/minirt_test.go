package main

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/fdrestore/fdrestore/restore"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	restore.MaybeHelper()
	// Restored roots are children of the test; the tree's other processes
	// could be orphaned to us.
	unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	os.Exit(m.Run())
}

// TestMiniRuntime runs the example end to end: start, dump, restore onto
// new pipes from descriptors.json, talk to the restored tree.
func TestMiniRuntime(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("minirt needs root (dump uses pidfd_getfd and the freezer)")
		}
		t.Skip("minirt needs root (dump uses pidfd_getfd and the freezer)")
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	var out strings.Builder
	err := run(context.Background(), t.TempDir(), log, &out)
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"workload up", "answer: before"`, `"restored workload up", "answer: after"`,
		"pre-restore, setup-namespaces(root", "post-resume(root", `stdio was ["pipe:[`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}
