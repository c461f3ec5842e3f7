package restore

import (
	"os"
	"path/filepath"
	"testing"
)

// TestPickHelper: Options.Helper wins over $FDRESTORE_HELPER, which wins
// over an executable fdrestore-helper next to the running executable; with
// none of them (or a sibling that is not an executable file) helpers
// re-execute the running executable.
func TestPickHelper(t *testing.T) {
	dir := t.TempDir()
	self := filepath.Join(dir, "fdrestore")
	sibling := filepath.Join(dir, HelperName)
	for _, tc := range []struct {
		name, opt, env string
		sibling        os.FileMode // 0: none
		want, source   string
	}{
		{"option", "/x/opt", "/x/env", 0o755, "/x/opt", "Options.Helper"},
		{"env", "", "/x/env", 0o755, "/x/env", "$" + HelperEnv},
		{"sibling", "", "", 0o755, sibling, "next to " + self},
		{"sibling not executable", "", "", 0o644, "", ""},
		{"none", "", "", 0, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(sibling)
			if tc.sibling != 0 {
				if err := os.WriteFile(sibling, []byte("x"), tc.sibling); err != nil {
					t.Fatal(err)
				}
			}
			path, source := pickHelper(tc.opt, tc.env, self)
			if path != tc.want || source != tc.source {
				t.Errorf("pickHelper(%q, %q, %q) = %q, %q; want %q, %q", tc.opt, tc.env, self, path, source, tc.want, tc.source)
			}
		})
	}
	if path, _ := pickHelper("", "", ""); path != "" {
		t.Errorf("pickHelper without a known executable = %q, want the fallback", path)
	}
}
