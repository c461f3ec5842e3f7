package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fdrestore/fdrestore/features"
	"github.com/fdrestore/fdrestore/show"
	"github.com/sirupsen/logrus"
)

// fixtureDir returns the shared CRIU 4.2 fixtures (FDRESTORE_FIXTURES, or
// shared/criu-images next to the checkout).
func fixtureDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("FDRESTORE_FIXTURES"); d != "" {
		return d
	}
	d, err := filepath.Abs("../../../shared/criu-images")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CRIU fixtures not found at %s (set FDRESTORE_FIXTURES): %v", d, err)
		}
		t.Skipf("CRIU fixtures not found at %s (set FDRESTORE_FIXTURES)", d)
	}
	return d
}

// fdrestore runs the command tree in-process.
func fdrestore(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	t.Cleanup(func() { logrus.SetLevel(logrus.WarnLevel); logrus.SetOutput(os.Stderr) })
	return code, out.String(), errb.String()
}

func readGolden(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "show", "testdata", "golden", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestShowFiles(t *testing.T) {
	dir := fixtureDir(t)
	pd := filepath.Join(dir, "pipe-basic", "pipes-data.img")
	sk := filepath.Join(dir, "unix-stream", "sk-queues.img")

	code, out, errs := fdrestore(t, "show", pd)
	if code != 0 || errs != "" {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	if want := readGolden(t, "pipe-basic_pipes-data.json"); out != want {
		t.Errorf("show pipes-data.img:\n%s\nwant\n%s", out, want)
	}

	code, out, _ = fdrestore(t, "show", "--payload", pd, sk)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	if want := readGolden(t, "pipe-basic_pipes-data_payload.json") + readGolden(t, "unix-stream_sk-queues_payload.json"); out != want {
		t.Errorf("show --payload, two files:\n%s\nwant\n%s", out, want)
	}
	// One JSON document per file, in order.
	dec := json.NewDecoder(strings.NewReader(out))
	var magics []string
	for {
		var doc struct{ Magic string }
		if err := dec.Decode(&doc); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		magics = append(magics, doc.Magic)
	}
	if strings.Join(magics, ",") != "PIPES_DATA,SK_QUEUES" {
		t.Errorf("documents: %v", magics)
	}
}

func TestShowCorruptFile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(fixtureDir(t), "pipe-basic", "files.img"))
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(t.TempDir(), "files.img")
	if err := os.WriteFile(bad, data[:len(data)-3], 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := fdrestore(t, "show", bad)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if out != "" {
		t.Errorf("stdout %q", out)
	}
	if !strings.HasPrefix(errs, "fdrestore: files.img entry ") || !strings.Contains(errs, "(offset ") || !strings.Contains(errs, "field length") {
		t.Errorf("stderr %q", errs)
	}

	// Garbage magic.
	if err := os.WriteFile(bad, []byte("not an image at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errs = fdrestore(t, "show", bad)
	if code != 1 || !strings.Contains(errs, "files.img (offset 0) field magic: bad magic") {
		t.Errorf("exit %d, stderr %q", code, errs)
	}
}

func TestShowDir(t *testing.T) {
	dir := fixtureDir(t)
	code, out, errs := fdrestore(t, "show", "-D", filepath.Join(dir, "pipe-basic"))
	if code != 0 || errs != "" {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	for _, want := range []string{"pid 2 (pipe-basic) ppid 0 pgid 2 sid 2 [session leader, group leader]", "cloexec", "13 B queued, buffer 1048576", "fd 12\n", "O_WRONLY|O_NONBLOCK"} {
		if !strings.Contains(out, want) {
			t.Errorf("show -D lacks %q:\n%s", want, out)
		}
	}

	code, out, _ = fdrestore(t, "show", "-D", filepath.Join(dir, "pipe-tree"), "--json")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	var sum show.Summary
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatal(err)
	}
	if len(sum.Tasks) != 3 || sum.Tasks[0].Pid != 2 || len(sum.Tasks[0].Fds) != 4 {
		t.Fatalf("summary %+v", sum)
	}
	if fd5 := sum.Tasks[0].Fds[3]; fd5.Fd != 5 || len(fd5.Shares) != 1 || fd5.Shares[0] != (show.FdRef{Pid: 4, Fd: 3}) {
		t.Errorf("pid 2 fd 5: %+v", fd5)
	}

	code, _, errs = fdrestore(t, "show", "-D", filepath.Join(dir, "no-such-dir"))
	if code != 1 || !strings.Contains(errs, "no-such-dir") {
		t.Errorf("missing dir: exit %d, stderr %q", code, errs)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"show"},
		{"show", "-D", "/tmp", "x.img"},
		{"show", "--json", "x.img"},
		{"show", "--payload", "-D", "/tmp"},
		{"show", "--bogus"},
		{"bogus"},
		{"version", "extra"},
		{"check", "extra"},
		{"dump", "-t", "1", "-D", "/tmp/x", "--network-lock", "bogus"},
		{"restore", "-D", "/tmp/x", "--leave-stopped", "--network-lock", "bogus"},
	} {
		code, out, errs := fdrestore(t, args...)
		if code != 2 || out != "" || !strings.HasPrefix(errs, "fdrestore: ") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
}

func TestCheck(t *testing.T) {
	code, out, errs := fdrestore(t, "check")
	for _, name := range features.Names() {
		if !strings.Contains(out, " "+name) {
			t.Errorf("check does not mention %s:\n%s", name, out)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasPrefix(line, "ok   ") && !strings.HasPrefix(line, "FAIL ") {
			t.Errorf("line %q", line)
		}
	}
	if os.Geteuid() == 0 && code != 0 {
		t.Errorf("check as root: exit %d, stderr %q\n%s", code, errs, out)
	}
	if code != 0 && !strings.Contains(errs, "features missing") {
		t.Errorf("exit %d with stderr %q", code, errs)
	}

	code, out, _ = fdrestore(t, "check", "--json")
	var doc struct {
		OK       bool
		Features []struct {
			Name string
			OK   bool
		}
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("check --json: %v\n%s", err, out)
	}
	if len(doc.Features) != len(features.Names()) || doc.OK != (code == 0) {
		t.Errorf("check --json: %d features, ok %v, exit %d", len(doc.Features), doc.OK, code)
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := fdrestore(t, "version")
	if code != 0 || !strings.HasPrefix(out, "fdrestore ") {
		t.Errorf("exit %d, %q", code, out)
	}
}

func TestLogging(t *testing.T) {
	for v, want := range []logrus.Level{logrus.WarnLevel, logrus.InfoLevel, logrus.DebugLevel, logrus.TraceLevel, logrus.TraceLevel} {
		if got := logLevel(v); got != want {
			t.Errorf("logLevel(%d) = %s, want %s", v, got, want)
		}
	}
	logPath := filepath.Join(t.TempDir(), "fdrestore.log")
	code, _, errs := fdrestore(t, "-vv", "-o", logPath, "version")
	if code != 0 || errs != "" {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	if logrus.GetLevel() != logrus.DebugLevel {
		t.Errorf("-vv: level %s", logrus.GetLevel())
	}
	b, err := os.ReadFile(logPath)
	if err != nil || !strings.Contains(string(b), "level=debug msg=starting command=\"fdrestore version\"") {
		t.Errorf("log file: %q, %v", b, err)
	}
	code, _, errs = fdrestore(t, "-v", "-v", "-v", "version")
	if code != 0 || logrus.GetLevel() != logrus.TraceLevel || !strings.Contains(errs, "level=debug") {
		t.Errorf("-v -v -v: exit %d, level %s, stderr %q", code, logrus.GetLevel(), errs)
	}
	code, _, errs = fdrestore(t, "-o", filepath.Join(t.TempDir(), "no", "such", "dir", "log"), "version")
	if code != 1 || !strings.HasPrefix(errs, "fdrestore: log file: ") {
		t.Errorf("bad log file: exit %d, stderr %q", code, errs)
	}
}
