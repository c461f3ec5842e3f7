package restore

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/fdrestore/fdrestore/restore/helper"
	"golang.org/x/sys/unix"
)

// The coordinator's side of the helper processes: which binary they run.
// What a helper does is package restore/helper; the protocol between the
// two is ctl.go (aliases of restore/helper's names).
//
// Helpers run the lean helper binary, cmd/fdrestore-helper, which links
// only the files engine, the openers and the transport: each of the
// hundreds of helpers of a large restore then faults in a few hundred
// kilobytes of executable instead of the several megabytes the image model,
// protobuf and the CLI would cost (issue 3's 4 MiB per helper). Which
// binary (helperPath):
//
//  1. Options.Helper, when set;
//  2. else $FDRESTORE_HELPER (HelperEnv), when set;
//  3. else fdrestore-helper (HelperName) in the directory of the running
//     executable, where `make build` and `go install ./cmd/...` put it;
//  4. else the running executable itself, re-executed (it must call
//     MaybeHelper first thing in main; logged at debug level).
//
// A path given in 1 or 2 must work: it is an error, not a fallback, when
// it cannot be read. Whichever it is, the coordinator copies it once into
// a memfd (named "fdrestore") and starts the helpers from that copy: the
// binary on disk may then be replaced or removed while a restore runs
// (make build, an upgrade) without the tree mixing two builds; restored
// tasks pin no file on disk, in any mount namespace; and in the fallback,
// no package initialiser of the full binary can open the executable
// through /proc/self/exe (protobuf's does) before the helper has reserved
// the low fd numbers. The copy costs no extra memory per helper: the
// memfd's pages are shared as a file's would be.

// HelperArg is argv[1] of a restore helper process (helper.Arg). A program
// that embeds package restore and may run without fdrestore-helper must
// call MaybeHelper first thing in main.
const HelperArg = helper.Arg

// HelperEnv names the environment variable that gives the path of the
// helper binary (see Options.Helper).
const HelperEnv = "FDRESTORE_HELPER"

// HelperName is the file name of the helper binary that the coordinator
// looks for next to its own executable.
const HelperName = "fdrestore-helper"

// MaybeHelper runs the helper (or the stopper) and exits if this process
// was started as one; otherwise it returns. Call it at the top of main in
// every program that calls Run, so that the fallback (helpers re-executing
// the program itself) works.
func MaybeHelper() { helper.Maybe() }

// HelperMain is the body of a restore helper process (helper.Main); it
// returns the exit status.
func HelperMain(args []string) int { return helper.Main(args) }

// helperPath returns the helper binary to run and where its path came
// from, or "" when helpers re-execute the running executable.
func helperPath(opt string) (path, source string) {
	self, _ := os.Executable()
	return pickHelper(opt, os.Getenv(HelperEnv), self)
}

// pickHelper is helperPath for the option, the environment variable's
// value and the running executable ("" when unknown).
func pickHelper(opt, env, self string) (path, source string) {
	if opt != "" {
		return opt, "Options.Helper"
	}
	if env != "" {
		return env, "$" + HelperEnv
	}
	if self == "" {
		return "", ""
	}
	p := filepath.Join(filepath.Dir(self), HelperName)
	if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
		return p, "next to " + self
	}
	return "", ""
}

// helperExe returns the memfd copy of the helper binary for this run.
func (c *coordinator) helperExe() (int, error) {
	path, source := helperPath(c.opts.Helper)
	if path == "" {
		c.log.WithField("looked for", HelperName+" next to the executable, $"+HelperEnv).
			Debug("no helper binary: helpers re-execute this program")
		path, source = "/proc/self/exe", "the running executable"
	} else {
		c.log.WithField("helper", path).WithField("from", source).Debug("helper binary")
	}
	fd, err := executableCopy(path)
	if err != nil {
		return -1, fmt.Errorf("helper binary %s (from %s): %w", path, source, err)
	}
	return fd, nil
}

// exeKey identifies one version of a binary on disk.
type exeKey struct {
	path     string
	dev, ino uint64
	size     int64
	mtime    unix.Timespec
}

var (
	exeMu     sync.Mutex
	exeCopies = map[exeKey]int{}
)

// executableCopy returns a memfd holding a copy of the binary at path,
// made once per process for each version of the file (its memfd stays
// open for later runs).
func executableCopy(path string) (int, error) {
	src, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open: %w", err)
	}
	defer unix.Close(src)
	var st unix.Stat_t
	if err := unix.Fstat(src, &st); err != nil {
		return -1, fmt.Errorf("stat: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return -1, fmt.Errorf("not a regular file (mode %#o)", st.Mode)
	}
	key := exeKey{path: path, dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim}
	exeMu.Lock()
	defer exeMu.Unlock()
	if fd, ok := exeCopies[key]; ok {
		return fd, nil
	}
	mfd, err := unix.MemfdCreate("fdrestore", unix.MFD_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("memfd_create: %w", err)
	}
	for left := st.Size; left > 0; {
		n, err := unix.Sendfile(mfd, src, nil, int(left))
		if err != nil || n == 0 {
			unix.Close(mfd)
			if err == nil {
				err = io.ErrUnexpectedEOF // the file shrank
			}
			return -1, fmt.Errorf("copy to a memfd: %w", err)
		}
		left -= int64(n)
	}
	exeCopies[key] = mfd
	return mfd, nil
}

// dupAbove returns a CLOEXEC duplicate of fd numbered at least min.
func dupAbove(fd, min int) (int, error) {
	return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, min)
}

// lastWords returns what a dead helper wrote on its control channel that
// nobody read, as "; it wrote: ...": a crash report, or the complaint of a
// helper binary of another version (a helper's stdio are placeholders on
// its control socket). It reads without waiting, at most a few messages.
func lastWords(ctl int) string {
	if ctl < 0 {
		return ""
	}
	var said []string
	buf := make([]byte, helper.MaxMsg)
	for i := 0; i < 16; i++ {
		n, _, err := unix.Recvfrom(ctl, buf, unix.MSG_DONTWAIT)
		if err != nil || n <= 0 {
			break
		}
		if m := buf[:n]; !helper.IsMsg(m) {
			said = append(said, strings.TrimSpace(string(m)))
		}
	}
	if len(said) == 0 {
		return ""
	}
	return "; it wrote: " + strings.Join(said, " ")
}
