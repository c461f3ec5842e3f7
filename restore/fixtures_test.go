package restore_test

import (
	"bufio"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/internal/fdcheck"
	"golang.org/x/sys/unix"
)

const (
	rdonly = unix.O_RDONLY
	wronly = unix.O_WRONLY
	rdwr   = unix.O_RDWR
	nonblk = unix.O_NONBLOCK
	appnd  = unix.O_APPEND
)

// fixtureRoot is where the fixtures' environment prerequisites live.
const fixtureRoot = "/tmp/fdr-fixtures"

// stdio is fds 0-2 of a fixture task: /dev/null, fd 0 read-only, fds 1
// and 2 one write-only description, all shared by every task.
func stdio(task uint32) []wantFD {
	return []wantFD{
		{ref{task, 0}, rdonly, false, 0, "null-r", "null", "/dev/null"},
		{ref{task, 1}, wronly, false, 0, "null-w", "null", "/dev/null"},
		{ref{task, 2}, wronly, false, 0, "null-w", "null", "/dev/null"},
	}
}

func patternBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

type fixture struct {
	name  string
	want  func() *wantTree
	setup func(t *testing.T) // environment prerequisites, before each restore
	// extra runs the fixture's remaining checks; they may change the
	// tasks' state. It runs after check and before checkData when
	// beforeData, else after it.
	extra      func(c *checker)
	beforeData bool
}

var fixtures = []fixture{
	{
		// EXPECTED.md of pipe-basic.
		name: "pipe-basic",
		want: func() *wantTree {
			return &wantTree{
				tasks: []wantTask{{2, 0, 2, 2}},
				fds: append(stdio(2),
					wantFD{ref{2, 3}, rdonly, false, 0, "P1r", "P1", "pipe:[*"},
					wantFD{ref{2, 7}, wronly | nonblk, false, 0, "P1w", "P1", "pipe:[*"},
					wantFD{ref{2, 10}, rdonly, false, 0, "P2r", "P2", "pipe:[*"},
					wantFD{ref{2, 11}, wronly, false, 0, "P2w", "P2", "pipe:[*"},
					wantFD{ref{2, 12}, rdonly, true, 0, "P1r", "P1", "pipe:[*"},
				),
				pipes: []wantPipe{
					{obj: "P1", read: ref{2, 3}, size: 1 << 20, data: []byte("Hello, pipe!\n")},
					{obj: "P2", read: ref{2, 10}, size: 65536, data: []byte{}},
				},
			}
		},
		extra: func(c *checker) {
			t := c.t
			// O_NONBLOCK set on fd 3 shows on fd 12 (one description),
			// not on fd 10; clearing it again leaves fd 7's.
			fl := c.getfl(ref{2, 3})
			c.setfl(ref{2, 3}, fl|nonblk)
			if c.getfl(ref{2, 12})&nonblk == 0 {
				t.Errorf("O_NONBLOCK set on fd 3 does not show on fd 12")
			}
			if c.getfl(ref{2, 10})&nonblk != 0 {
				t.Errorf("O_NONBLOCK set on fd 3 shows on fd 10")
			}
			c.setfl(ref{2, 3}, fl)
			if c.getfl(ref{2, 7})&nonblk == 0 {
				t.Errorf("clearing O_NONBLOCK on fd 3 cleared it on fd 7")
			}
			// P1 and P2 are different pipes: fd 11 feeds fd 10, not fd 3.
			c.write(ref{2, 11}, "p2")
			if n := c.queued(ref{2, 10}); n != 2 {
				t.Errorf("after writing 2 bytes on fd 11, fd 10 has %d queued", n)
			}
			if n := c.queued(ref{2, 3}); n != 0 {
				t.Errorf("after writing on fd 11, fd 3 has %d queued", n)
			}
			// fd 7 feeds fd 3.
			c.write(ref{2, 7}, "p1")
			if got := c.read(ref{2, 12}, 16); got != "p1" {
				t.Errorf("wrote %q on fd 7, read %q on fd 12", "p1", got)
			}
		},
	},
	{
		// EXPECTED.md of pipe-tree.
		name: "pipe-tree",
		want: func() *wantTree {
			fds := append(stdio(2), wantFD{ref{2, 5}, wronly, false, 0, "Qw", "Q", "pipe:[*"})
			fds = append(fds, stdio(3)...)
			fds = append(fds,
				wantFD{ref{3, 4}, rdonly, false, 0, "Qr", "Q", "pipe:[*"},
				wantFD{ref{3, 100}, rdonly, false, 0, "Qr", "Q", "pipe:[*"})
			fds = append(fds, stdio(4)...)
			fds = append(fds,
				wantFD{ref{4, 3}, wronly, false, 0, "Qw", "Q", "pipe:[*"},
				wantFD{ref{4, 8}, rdonly, false, 0, "Rr", "R", "pipe:[*"},
				wantFD{ref{4, 9}, wronly, false, 0, "Rw", "R", "pipe:[*"})
			return &wantTree{
				tasks: []wantTask{{2, 0, 2, 2}, {3, 2, 2, 2}, {4, 2, 2, 2}},
				fds:   fds,
				pipes: []wantPipe{
					{obj: "Q", read: ref{3, 100}, size: 65536, data: patternBytes(1024), empty: []ref{{3, 4}}},
					{obj: "R", read: ref{4, 8}, size: 65536, data: []byte("private\n")},
				},
			}
		},
		extra: func(c *checker) {
			// The ends point the right way: pid 4 fd 3 feeds pid 3 fd 4,
			// and root fd 5 too.
			c.write(ref{4, 3}, "from-B")
			c.write(ref{2, 5}, "+root")
			if got := c.read(ref{3, 4}, 64); got != "from-B+root" {
				c.t.Errorf("wrote on pid 4 fd 3 and pid 2 fd 5, read %q on pid 3 fd 4", got)
			}
		},
	},
	{
		// EXPECTED.md of fifo.
		name:  "fifo",
		setup: setupFifo,
		want: func() *wantTree {
			const path = fixtureRoot + "/fifo/fifo0"
			fds := append(stdio(2),
				wantFD{ref{2, 3}, rdonly | nonblk, false, 0, "Fa", "F", path},
				wantFD{ref{2, 4}, wronly, false, 0, "Fb", "F", path})
			fds = append(fds, stdio(3)...)
			fds = append(fds, wantFD{ref{3, 5}, rdwr, false, 0, "Fc", "F", path})
			return &wantTree{
				tasks: []wantTask{{2, 0, 2, 2}, {3, 2, 2, 2}},
				fds:   fds,
				pipes: []wantPipe{{obj: "F", read: ref{2, 3}, size: 65536, data: []byte("fifo!"), empty: []ref{{3, 5}}}},
			}
		},
		beforeData: true,
		extra: func(c *checker) {
			// The restored fds are the FIFO at the path.
			var st unix.Stat_t
			if err := unix.Stat(fixtureRoot+"/fifo/fifo0", &st); err != nil {
				c.t.Fatal(err)
			}
			for _, r := range []ref{{2, 3}, {2, 4}, {3, 5}} {
				dev, ino, mode, err := fdcheck.Inode(c.getfd(r))
				if err != nil {
					c.t.Fatal(err)
				}
				if dev != st.Dev || ino != st.Ino || mode&unix.S_IFMT != unix.S_IFIFO {
					c.t.Errorf("%s: dev %d ino %d mode %#o, want the FIFO at the path (dev %d ino %d)", r, dev, ino, mode, st.Dev, st.Ino)
				}
			}
		},
	},
	{
		// EXPECTED.md of reg-files.
		name:  "reg-files",
		setup: setupRegFiles,
		want: func() *wantTree {
			const d = fixtureRoot + "/reg-files/"
			fds := append(stdio(2),
				wantFD{ref{2, 3}, rdonly, false, 17, "ro", "ro", d + "ro.txt"},
				wantFD{ref{2, 4}, wronly | appnd, false, 14, "append", "append", d + "append.log"},
				wantFD{ref{2, 5}, rdwr, false, 3, "rwX", "rw", d + "rw.dat"},
				wantFD{ref{2, 6}, rdwr, false, 9, "rwY", "rw", d + "rw.dat"},
				wantFD{ref{2, 8}, rdwr, false, 0, "null-rw", "null", "/dev/null"},
				wantFD{ref{2, 1000}, rdonly, true, 0, "high", "high", d + "high.bin"})
			fds = append(fds, stdio(3)...)
			fds = append(fds, wantFD{ref{3, 7}, rdwr, false, 3, "rwX", "rw", d + "rw.dat"})
			return &wantTree{tasks: []wantTask{{2, 0, 2, 2}, {3, 2, 2, 2}}, fds: fds}
		},
		extra: func(c *checker) {
			t := c.t
			if got := c.read(ref{2, 3}, 1); got != "h" {
				t.Errorf("pid 2 fd 3: read %q, want %q", got, "h")
			}
			if got := c.read(ref{2, 5}, 1); got != "D" {
				t.Errorf("pid 2 fd 5: read %q, want %q", got, "D")
			}
			if pos := c.info(ref{3, 7}).Pos; pos != 4 {
				t.Errorf("pid 3 fd 7: offset %d after reading 1 byte on pid 2 fd 5, want 4 (shared description)", pos)
			}
			if pos := c.info(ref{2, 6}).Pos; pos != 9 {
				t.Errorf("pid 2 fd 6: offset %d, want 9 (its own description)", pos)
			}
			if got := c.read(ref{2, 6}, 1); got != "J" {
				t.Errorf("pid 2 fd 6: read %q, want %q", got, "J")
			}
			// O_APPEND: a write lands at the end whatever the offset.
			fd := c.getfd(ref{2, 4})
			if _, err := unix.Seek(fd, 0, 0); err != nil {
				t.Fatal(err)
			}
			c.write(ref{2, 4}, "X")
			b, err := os.ReadFile(fixtureRoot + "/reg-files/append.log")
			if err != nil || string(b) != "line-1\nline-2\nX" {
				t.Errorf("append.log after writing X on fd 4: %q (%v), want %q", b, err, "line-1\nline-2\nX")
			}
		},
	},
}

// mkFixtureDir creates fixtureRoot/name and removes it at clean-up if it
// (or fixtureRoot) did not exist before.
func mkFixtureDir(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(fixtureRoot, name)
	for _, d := range []string{fixtureRoot, dir} {
		if _, err := os.Stat(d); errors.Is(err, fs.ErrNotExist) {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(d) })
		} else if err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// setupFifo: mkfifo -m 0640 /tmp/fdr-fixtures/fifo/fifo0, empty.
func setupFifo(t *testing.T) {
	dir := mkFixtureDir(t, "fifo")
	p := filepath.Join(dir, "fifo0")
	var st unix.Stat_t
	switch err := unix.Lstat(p, &st); {
	case errors.Is(err, unix.ENOENT):
		if err := unix.Mkfifo(p, 0o640); err != nil {
			t.Fatal(err)
		}
	case err != nil:
		t.Fatal(err)
	case st.Mode&unix.S_IFMT != unix.S_IFIFO:
		t.Fatalf("%s exists and is not a FIFO (mode %#o)", p, st.Mode)
	}
	if err := os.Chmod(p, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, 0, 0); err != nil {
		t.Fatal(err)
	}
}

// setupRegFiles copies reg-files/files/* to /tmp/fdr-fixtures/reg-files
// with the sizes and modes listed in files/README.txt, owned by root.
func setupRegFiles(t *testing.T) {
	src := filepath.Join(fixtureDir(t, "reg-files"), "files")
	dst := mkFixtureDir(t, "reg-files")
	f, err := os.Open(filepath.Join(src, "README.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	table, n := false, 0
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 3 && fields[0] == "path" {
			table = true
			continue
		}
		if !table || len(fields) != 3 {
			continue
		}
		size, err1 := strconv.ParseInt(fields[1], 10, 64)
		mode, err2 := strconv.ParseUint(fields[2], 8, 32)
		if err1 != nil || err2 != nil {
			t.Fatalf("README.txt line %q", sc.Text())
		}
		data, err := os.ReadFile(filepath.Join(src, fields[0]))
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(data)) != size {
			t.Fatalf("%s: %d bytes, README says %d", fields[0], len(data), size)
		}
		p := filepath.Join(dst, fields[0])
		os.Remove(p)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, os.FileMode(mode)); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, 0, 0); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 4 {
		t.Fatalf("README.txt lists %d files, want 4", n)
	}
}

// TestFixtures restores each CRIU 4.2 fixture with restore.Run (EndStop)
// and with the CLI (--leave-stopped -d --pid-map), and checks every fact
// of its EXPECTED.md from outside the stopped tasks.
func TestFixtures(t *testing.T) {
	needRoot(t)
	unlock, err := fdcheck.LockFixtures(filepath.Dir(fixtureDir(t, "pipe-basic")), 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
	for _, fx := range fixtures {
		t.Run(fx.name, func(t *testing.T) {
			dir := fixtureDir(t, fx.name)
			for _, how := range []string{"api", "cli"} {
				t.Run(how, func(t *testing.T) {
					if fx.setup != nil {
						fx.setup(t)
					}
					var pids map[uint32]int
					start := time.Now()
					switch how {
					case "api":
						res := runStop(t, dir)
						pids = res.PidMap
						t.Logf("%s: restore.Run took %v (Result.Took %v)", fx.name, time.Since(start), res.Took)
						if res.RootPid != pids[2] {
							t.Errorf("RootPid %d, pid map says %d", res.RootPid, pids[2])
						}
					case "cli":
						var took time.Duration
						pids, took = runCLIStop(t, dir)
						t.Logf("%s: fdrestore restore --leave-stopped -d took %v (process wall time)", fx.name, took)
					}
					w := fx.want()
					c := &checker{t: t, pids: pids}
					c.check(w)
					if fx.extra != nil && fx.beforeData {
						fx.extra(c)
					}
					c.checkData(w)
					if fx.extra != nil && !fx.beforeData {
						fx.extra(c)
					}
				})
			}
		})
	}
}
