package images

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// fixtureDir is where the shared CRIU 4.2 fixtures live, relative to this
// package in a checkout (the repo sits next to shared/).
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

// fixtureImages lists every image file of every fixture.
func fixtureImages(t testing.TB) []string {
	dir := fixtureDir(t)
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "files" {
			return filepath.SkipDir
		}
		if !d.IsDir() && (filepath.Ext(p) == ".img" || d.Name() == "stats-dump") {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) < 100 {
		t.Fatalf("found only %d fixture images under %s", len(out), dir)
	}
	return out
}

func TestFixturesDecodeAndRecodeIdentically(t *testing.T) {
	for _, p := range fixtureImages(t) {
		rel, _ := filepath.Rel(fixtureDir(t), p)
		t.Run(rel, func(t *testing.T) {
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			want := KindForFile(filepath.Base(p))
			if want == nil {
				t.Fatalf("no image kind known for file name %s", filepath.Base(p))
			}
			k, entries, err := DecodeBytes(data, filepath.Base(p), want)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			out, err := EncodeBytes(k, entries)
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			if !bytes.Equal(out, data) {
				i := 0
				for i < len(out) && i < len(data) && out[i] == data[i] {
					i++
				}
				t.Fatalf("re-encoding differs at byte %d (len %d vs original %d)", i, len(out), len(data))
			}
		})
	}
}
