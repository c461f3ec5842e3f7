package features

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// freezeTimeout bounds waiting for an empty cgroup to report frozen.
const freezeTimeout = time.Second

func probeChildSubreaper() (string, error) {
	// PR_GET_CHILD_SUBREAPER stores the value through arg2.
	var v int32
	if err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&v)), 0, 0, 0); err != nil {
		return "", opErr("prctl(PR_GET_CHILD_SUBREAPER)", err)
	}
	// Set the attribute to its current value: this exercises
	// PR_SET_CHILD_SUBREAPER without changing who reaps orphans of this
	// process, even for a moment.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, uintptr(v), 0, 0, 0); err != nil {
		return "", opErr(fmt.Sprintf("prctl(PR_SET_CHILD_SUBREAPER, %d)", v), err)
	}
	if v != 0 {
		return "this process is already a subreaper", nil
	}
	return "", nil
}

// cgroup2Mount returns the first cgroup2 mount point in
// /proc/self/mountinfo.
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "36 35 98:0 /root /mnt rw,noatime master:1 - cgroup2 cgroup2 rw"
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) >= 5 && len(qf) >= 1 && qf[0] == "cgroup2" {
			return unescapeMountinfo(pf[4]), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", nil
}

// unescapeMountinfo undoes the octal escapes (\040 etc.) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			o := s[i+1 : i+4]
			if o[0] >= '0' && o[0] <= '3' && o[1] >= '0' && o[1] <= '7' && o[2] >= '0' && o[2] <= '7' {
				b.WriteByte((o[0]-'0')<<6 | (o[1]-'0')<<3 | (o[2] - '0'))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ownCgroup2Dir returns the directory of this process's cgroup v2 group
// under mnt, or mnt itself if it cannot be found.
func ownCgroup2Dir(mnt string) string {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return mnt
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rel, ok := strings.CutPrefix(line, "0::"); ok {
			dir := filepath.Join(mnt, rel)
			if st, err := os.Stat(dir); err == nil && st.IsDir() {
				return dir
			}
		}
	}
	return mnt
}

// probeCgroup2Freezer creates an empty child cgroup next to this process,
// freezes and thaws it, and removes it. If no cgroup can be created, it
// falls back to checking that this process's cgroup has cgroup.freeze.
func probeCgroup2Freezer() (string, error) {
	mnt, err := cgroup2Mount()
	if err != nil {
		return "", opErr("read /proc/self/mountinfo", err)
	}
	if mnt == "" {
		return "", errors.New("no cgroup2 filesystem is mounted (cgroup v1 only)")
	}
	parent := ownCgroup2Dir(mnt)
	child := filepath.Join(parent, fmt.Sprintf("fdrestore-check-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(child, 0o755); err != nil {
		if _, serr := os.Stat(filepath.Join(parent, "cgroup.freeze")); serr == nil {
			return fmt.Sprintf("%s/cgroup.freeze exists (could not create a test cgroup: %v)", parent, err), nil
		}
		return "", fmt.Errorf("cannot check cgroup.freeze: creating a test cgroup failed (%w) and %s has no cgroup.freeze (needs write access to the cgroup2 hierarchy)", err, parent)
	}
	defer os.Remove(child)

	freeze := filepath.Join(child, "cgroup.freeze")
	if _, err := os.Stat(freeze); err != nil {
		return "", fmt.Errorf("new cgroup has no cgroup.freeze (needs Linux >= 5.2): %w", err)
	}
	if err := os.WriteFile(freeze, []byte("1"), 0); err != nil {
		return "", opErr("write 1 to "+freeze, err)
	}
	frozen, werr := waitFrozen(child)
	if err := os.WriteFile(freeze, []byte("0"), 0); err != nil {
		return "", opErr("write 0 to "+freeze, err)
	}
	if werr != nil {
		return "", werr
	}
	if !frozen {
		return "", fmt.Errorf("empty cgroup %s did not report frozen within %v", child, freezeTimeout)
	}
	if err := os.Remove(child); err != nil {
		return "", opErr("remove test cgroup", err)
	}
	return "froze and thawed a test cgroup under " + parent, nil
}

// waitFrozen polls cgroup.events until it says "frozen 1" or freezeTimeout
// passes.
func waitFrozen(dir string) (bool, error) {
	deadline := time.Now().Add(freezeTimeout)
	for {
		data, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if err != nil {
			return false, opErr("read cgroup.events", err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			if line == "frozen 1" {
				return true, nil
			}
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		time.Sleep(5 * time.Millisecond)
	}
}
