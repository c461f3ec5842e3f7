package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestLeanImports: the helper binary links none of the packages that made
// every helper process page in megabytes of executable: the image model
// and protobuf, the CLI, gob, crypto. (Opener packages must stay free of
// them too: files/openers is in this graph.)
func TestLeanImports(t *testing.T) {
	gotool, err := exec.LookPath("go")
	if err != nil {
		gotool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out, err := exec.Command(gotool, "list", "-deps", "github.com/fdrestore/fdrestore/cmd/fdrestore-helper").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps listed only %q", deps)
	}
	forbidden := []string{
		"google.golang.org/protobuf",
		"github.com/fdrestore/fdrestore/images",
		"github.com/fdrestore/fdrestore/proto",
		"github.com/fdrestore/fdrestore/restore", // the coordinator (restore/helper is fine)
		"github.com/fdrestore/fdrestore/dump",
		"github.com/spf13/cobra",
		"encoding/gob",
		"crypto",
		"net",
	}
	for _, d := range deps {
		for _, f := range forbidden {
			if (d == f || strings.HasPrefix(d, f+"/")) && d != "github.com/fdrestore/fdrestore/restore/helper" {
				t.Errorf("the helper binary links %s", d)
			}
		}
	}
	for _, want := range []string{"github.com/fdrestore/fdrestore/files/openers", "github.com/fdrestore/fdrestore/files/pipe", "github.com/fdrestore/fdrestore/files/reg",
		"github.com/fdrestore/fdrestore/files/epoll", "github.com/fdrestore/fdrestore/files/eventfd", "github.com/fdrestore/fdrestore/files/signalfd",
		"github.com/fdrestore/fdrestore/files/timerfd", "github.com/fdrestore/fdrestore/files/tty", "github.com/fdrestore/fdrestore/files/tcp"} {
		found := false
		for _, d := range deps {
			found = found || d == want
		}
		if !found {
			t.Errorf("the helper binary does not link %s", want)
		}
	}
}
