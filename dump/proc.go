package dump

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// procStat is what fdrestore needs from /proc/PID/stat.
type procStat struct {
	comm            string
	state           byte
	ppid, pgid, sid int
	flags           uint32
	threads         int
	ttyNr, tpgid    int // controlling terminal (encoded device, 0: none) and its foreground group
}

// readStat parses /proc/PID/stat. The comm field may hold spaces and
// parentheses, so the fields are taken after the last ')'.
func readStat(pid int) (*procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	open, close := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || close < open {
		return nil, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	st := &procStat{comm: string(b[open+1 : close])}
	f := strings.Fields(string(b[close+1:]))
	// f[0]=state (field 3), f[1]=ppid, f[2]=pgrp, f[3]=session, f[6]=flags (field 9), f[17]=num_threads (field 20)
	if len(f) < 18 || len(f[0]) != 1 {
		return nil, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	st.state = f[0][0]
	nums := make([]uint64, 0, 18)
	for _, s := range f[1:18] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("/proc/%d/stat: %q: %w", pid, s, err)
		}
		nums = append(nums, uint64(v))
	}
	st.ppid, st.pgid, st.sid = int(nums[0]), int(nums[1]), int(nums[2])
	st.ttyNr, st.tpgid = int(nums[3]), int(nums[4])
	st.flags = uint32(nums[5])
	st.threads = int(nums[16])
	return st, nil
}

// readStatus returns the fields of /proc/PID/status named in want.
func readStatus(pid int, want ...string) (map[string]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		for _, w := range want {
			if k == w {
				out[k] = strings.TrimSpace(v)
			}
		}
	}
	return out, nil
}

// threadsOf lists the task's thread ids, sorted, the leader first.
func threadsOf(pid int) ([]int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, err
	}
	out := []int{pid}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil || tid == pid {
			continue
		}
		out = append(out, tid)
	}
	sort.Ints(out[1:])
	return out, nil
}

// childrenOf returns the children of every thread of pid, without
// duplicates, in pid order. The kernel's lists are no order to keep: each
// thread lists only the children it forked (a Go program forks from
// whichever thread runs the goroutine), and the children of a thread
// that exits move to the end of another thread's list. Pid order is
// creation order but for pid wrap-around, and it makes the dump of a
// restored tree list the children in the order restore created them.
func childrenOf(pid int, threads []int) ([]int, error) {
	var out []int
	seen := map[int]bool{}
	for _, tid := range threads {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, tid))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) && tid != pid {
				continue // the thread exited
			}
			return nil, err
		}
		for _, s := range strings.Fields(string(b)) {
			c, err := strconv.Atoi(s)
			if err != nil {
				return nil, fmt.Errorf("/proc/%d/task/%d/children: %q", pid, tid, s)
			}
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
	}
	sort.Ints(out)
	return out, nil
}

// fdInfo is the content of /proc/PID/fdinfo/N that matters here.
type fdInfo struct {
	pos   uint64
	flags uint32 // f_flags, with O_CLOEXEC for the fd's FD_CLOEXEC
	mntID int
}

func readFdInfo(pid, fd int) (*fdInfo, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		return nil, err
	}
	fi := &fdInfo{mntID: -1}
	var sawFlags bool
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "pos":
			fi.pos, err = strconv.ParseUint(v, 10, 64)
		case "flags":
			var f uint64
			f, err = strconv.ParseUint(v, 8, 32)
			fi.flags, sawFlags = uint32(f), true
		case "mnt_id":
			fi.mntID, err = strconv.Atoi(v)
		}
		if err != nil {
			return nil, fmt.Errorf("fdinfo %s: %q: %w", k, v, err)
		}
	}
	if !sawFlags {
		return nil, fmt.Errorf("fdinfo has no flags line")
	}
	return fi, nil
}

// listFds returns the task's open fd numbers, sorted.
func listFds(pid int) ([]int, error) {
	d, err := os.Open(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	fds := make([]int, 0, len(names))
	for _, n := range names {
		fd, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		fds = append(fds, fd)
	}
	sort.Ints(fds)
	return fds, nil
}

// nulSplit splits /proc/PID/cmdline or environ.
func nulSplit(b []byte) []string {
	b = bytes.TrimSuffix(b, []byte{0})
	if len(b) == 0 {
		return nil
	}
	parts := bytes.Split(b, []byte{0})
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = string(p)
	}
	return out
}

// nsInode returns the inode of the task's namespace of the given kind
// (a name under /proc/PID/ns), or 0 when the kernel has no such namespace.
func nsInode(pid int, kind string) (uint64, error) {
	var st unix.Stat_t
	p := "/proc/self/ns/" + kind
	if pid != 0 {
		p = fmt.Sprintf("/proc/%d/ns/%s", pid, kind)
	}
	if err := unix.Stat(p, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, nil
		}
		return 0, fmt.Errorf("stat %s: %w", p, err)
	}
	return st.Ino, nil
}

// cgroup2Mount returns the first cgroup2 mount point of this process, or ""
// when there is none.
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) >= 5 && len(qf) >= 1 && qf[0] == "cgroup2" {
			return unescapeOctal(pf[4]), nil
		}
	}
	return "", sc.Err()
}

// unescapeOctal undoes mountinfo's \NNN escapes.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cgroup2Of returns the task's cgroup v2 directory under mnt.
func cgroup2Of(pid int, mnt string) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rel, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(mnt, rel), nil
		}
	}
	return "", fmt.Errorf("pid %d has no cgroup v2 membership in /proc/%d/cgroup", pid, pid)
}
