package show

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"google.golang.org/protobuf/proto"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/golden")

// fixtureDir returns the shared CRIU 4.2 fixtures (FDRESTORE_FIXTURES, or
// shared/criu-images next to the checkout). Tests skip without them,
// except under CI=true.
func fixtureDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("FDRESTORE_FIXTURES"); d != "" {
		return d
	}
	d, err := filepath.Abs("../../shared/criu-images")
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

// golden compares got with testdata/golden/name, or rewrites it with
// -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./show -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (run go test ./show -update after reviewing):\n--- got ---\n%s", path, got)
	}
}

// The golden image files were generated from our own output and checked
// against go-criu's crit (gocrit show / gocrit show --nopl, v8.3.0) by
// parsing both into `any` and comparing with reflect.DeepEqual: they are
// equal for these four images. Over all 209 fixture images the only
// differences are fields our schema keeps opaque as bytes, which we print
// as base64 where crit decodes them:
//   - core-*.img: thread_info, thread_core (and ti_* on other
//     architectures), tc.timers; tc fields after rlimits (field 8) are not
//     in our schema and so not printed (child_subreaper, loginuid,
//     oom_score_adj, sigactions, signals_s in these fixtures);
//   - mm-*.img: each of vmas (and aios).
//
// gocrit show (with payloads) fails on tcp-stream images; we print their
// payload as {"in_q": BASE64, "out_q": BASE64}, the shape crit means.
var goldenImages = []string{
	"pipe-basic/pipes-data.img",
	"unix-stream/sk-queues.img",
	"pty/tty-info.img",
	"reg-files/files.img",
}

func TestImageGolden(t *testing.T) {
	dir := fixtureDir(t)
	for _, img := range goldenImages {
		for _, payload := range []bool{false, true} {
			name := strings.ReplaceAll(strings.TrimSuffix(img, ".img"), "/", "_")
			if payload {
				name += "_payload"
			}
			t.Run(name, func(t *testing.T) {
				var buf bytes.Buffer
				if err := WriteImage(&buf, filepath.Join(dir, img), ImageOptions{Payload: payload}); err != nil {
					t.Fatal(err)
				}
				golden(t, name+".json", buf.Bytes())
			})
		}
	}
}

func TestImageGoldenContent(t *testing.T) {
	dir := fixtureDir(t)
	var buf bytes.Buffer
	if err := WriteImage(&buf, filepath.Join(dir, "pipe-basic/pipes-data.img"), ImageOptions{}); err != nil {
		t.Fatal(err)
	}
	// Exactly crit's layout: 4-space indent, "extra" last.
	if !strings.Contains(buf.String(), "{\n    \"magic\": \"PIPES_DATA\",\n    \"entries\": [\n        {\n            \"pipe_id\": ") ||
		!strings.Contains(buf.String(), "\"size\": 1048576,\n            \"extra\": \"13 B\"\n        }") {
		t.Errorf("unexpected layout:\n%s", buf.String())
	}
	buf.Reset()
	if err := WriteImage(&buf, filepath.Join(dir, "pipe-basic/pipes-data.img"), ImageOptions{Payload: true}); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Entries []map[string]any
	}
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if got := doc.Entries[0]["extra"]; got != base64.StdEncoding.EncodeToString([]byte("Hello, pipe!\n")) {
		t.Errorf("payload of entry 0 = %v", got)
	}
	if _, ok := doc.Entries[1]["extra"]; ok {
		t.Errorf("empty payload of entry 1 is shown: %v", doc.Entries[1])
	}
}

// TestImageEveryFixture renders every fixture image both ways and checks
// the document against the decoded entries.
func TestImageEveryFixture(t *testing.T) {
	dir := fixtureDir(t)
	n := 0
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !(filepath.Ext(p) == ".img" || d.Name() == "stats-dump") {
			return err
		}
		n++
		kind, entries, err := images.ReadFile(p, nil)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			return nil
		}
		for _, payload := range []bool{false, true} {
			out, err := ImageJSON(kind, entries, ImageOptions{Payload: payload})
			if err != nil {
				t.Errorf("%s: %v", p, err)
				continue
			}
			var doc struct {
				Magic   string           `json:"magic"`
				Entries []map[string]any `json:"entries"`
			}
			if err := json.Unmarshal(out, &doc); err != nil {
				t.Errorf("%s: output is not JSON: %v", p, err)
				continue
			}
			if doc.Magic != kind.Name || len(doc.Entries) != len(entries) {
				t.Errorf("%s: magic %q with %d entries, want %q with %d", p, doc.Magic, len(doc.Entries), kind.Name, len(entries))
				continue
			}
			for i, e := range entries {
				extra, has := doc.Entries[i]["extra"]
				switch {
				case kind.Trailer == images.NoTrailer:
					if has {
						t.Errorf("%s entry %d: extra on a kind without payloads", p, i)
					}
				case !payload:
					if extra != ByteCount(int64(len(e.Trailer))) {
						t.Errorf("%s entry %d: extra %v for %d bytes", p, i, extra, len(e.Trailer))
					}
				case kind.Trailer == images.TCPStreamTrailer:
					q := extra.(map[string]any)
					in, _ := base64.StdEncoding.DecodeString(q["in_q"].(string))
					outq, _ := base64.StdEncoding.DecodeString(q["out_q"].(string))
					if !bytes.Equal(append(in, outq...), e.Trailer) {
						t.Errorf("%s: tcp queues do not round-trip", p)
					}
				case len(e.Trailer) == 0:
					if has {
						t.Errorf("%s entry %d: extra for an empty payload", p, i)
					}
				default:
					b, _ := base64.StdEncoding.DecodeString(extra.(string))
					if !bytes.Equal(b, e.Trailer) {
						t.Errorf("%s entry %d: payload does not round-trip", p, i)
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 100 {
		t.Fatalf("only %d fixture images found", n)
	}
}

func TestImageJSONEmptyEntryWithExtra(t *testing.T) {
	k := images.KindNamed("PIPES_DATA")
	e := &images.Entry{Msg: new(criupb.PipeDataEntry), Trailer: []byte("ab")}
	out, err := ImageJSON(k, []*images.Entry{e}, ImageOptions{Payload: true})
	if err != nil {
		t.Fatal(err)
	}
	want := "{\n    \"magic\": \"PIPES_DATA\",\n    \"entries\": [\n        {\n            \"extra\": \"YWI=\"\n        }\n    ]\n}"
	if string(out) != want {
		t.Errorf("got\n%s\nwant\n%s", out, want)
	}
	out, err = ImageJSON(k, nil, ImageOptions{})
	if err != nil || string(out) != "{\n    \"magic\": \"PIPES_DATA\",\n    \"entries\": []\n}" {
		t.Errorf("no entries: %q, %v", out, err)
	}
	// 64-bit integers are strings, as in crit.
	ts := &images.Entry{Msg: &criupb.RegFileEntry{Id: proto.Uint32(1), Pos: proto.Uint64(7)}}
	out, err = ImageJSON(images.KindNamed("REG_FILES"), []*images.Entry{ts}, ImageOptions{})
	if err != nil || !strings.Contains(string(out), `"pos": "7"`) {
		t.Errorf("uint64 rendering: %s, %v", out, err)
	}
}

func TestWriteImageErrors(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile(filepath.Join(fixtureDir(t), "pipe-basic/files.img"))
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "files.img")
	if err := os.WriteFile(bad, data[:len(data)-5], 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	err = WriteImage(&buf, bad, ImageOptions{})
	var fe *images.FormatError
	if err == nil || !asFormatError(err, &fe) || fe.File != "files.img" || fe.Offset < 0 {
		t.Fatalf("truncated image: err %v", err)
	}
	if buf.Len() != 0 {
		t.Errorf("partial output written: %q", buf.String())
	}
	if err := WriteImage(&buf, filepath.Join(dir, "nope.img"), ImageOptions{}); err == nil {
		t.Error("missing file: no error")
	}
}

func asFormatError(err error, fe **images.FormatError) bool {
	e, ok := err.(*images.FormatError)
	*fe = e
	return ok
}

func TestByteCount(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 B", 13: "13 B", 1023: "1023 B", 1024: "1.0 KB", 1536: "1.5 KB",
		1<<20 - 1: "1024.0 KB", 1 << 20: "1.0 MB", 5 << 30: "5.0 GB", 1 << 62: "4.0 EB",
	} {
		if got := ByteCount(n); got != want {
			t.Errorf("ByteCount(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestOpenFlags(t *testing.T) {
	x86 := criupb.CoreEntry_X86_64
	for _, c := range []struct {
		flags uint32
		march criupb.CoreEntryMarch
		want  string
	}{
		{0, x86, "O_RDONLY"},
		{0x8000, x86, "O_RDONLY|O_LARGEFILE"},
		{0x8401, x86, "O_WRONLY|O_APPEND|O_LARGEFILE"},
		{0x802, x86, "O_RDWR|O_NONBLOCK"},
		{0x101001, x86, "O_WRONLY|O_SYNC"},
		{0x1001, x86, "O_WRONLY|O_DSYNC"},
		{0x20000, criupb.CoreEntry_AARCH64, "O_RDONLY|O_LARGEFILE"},
		{0x20000, x86, "O_RDONLY|O_NOFOLLOW"},
		{0x1000000 | 2, x86, "O_RDWR|0x1000000"},
	} {
		if got := OpenFlags(c.flags, c.march); got != c.want {
			t.Errorf("OpenFlags(%#x, %s) = %q, want %q", c.flags, c.march, got, c.want)
		}
	}
	if got := EpollEvents(0x80000019); got != "EPOLLIN|EPOLLERR|EPOLLHUP|EPOLLET" {
		t.Errorf("EpollEvents = %q", got)
	}
	if got := Signals(1<<1 | 1<<14 | 1<<33); !reflect.DeepEqual(got, []string{"SIGINT", "SIGTERM", "SIG34"}) {
		t.Errorf("Signals = %q", got)
	}
	if got := unixName([]byte("\x00a\x00b")); got != `@a\x00b` {
		t.Errorf("abstract name = %q", got)
	}
	if got := unixName([]byte("/tmp/s\x00")); got != "/tmp/s" {
		t.Errorf("path name = %q", got)
	}
	if got := inetAddr(10, []uint32{0, 0, 0, 0x01000000}, 80); got != "[::1]:80" {
		t.Errorf("inet6 = %q", got)
	}
}
