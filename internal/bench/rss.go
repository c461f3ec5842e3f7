package main

import (
	"bytes"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// rssMonitor samples, every interval, the VmHWM of every process whose
// /proc/PID/exe is exe (restore helpers run from the coordinator's memfd
// copy of the binary, "/memfd:fdrestore (deleted)"), keeping each pid's
// maximum. A helper's VmHWM only grows until it execs (the stopper gets a
// fresh mm), so the last sample before the exec is its peak, short of
// whatever it grew in the final interval.
//
// A vfork child shares its parent's mm until it execs, so a helper's
// child can briefly show its parent's VmHWM; the per-pid maximum may
// then be the parent's.
type rssMonitor struct {
	exe      string
	self     string // our own exe: a fork of ours may still exec a helper
	interval time.Duration
	stop     chan struct{}
	done     chan struct{}

	mu      sync.Mutex
	peak    map[int]procMem
	skip    map[int]bool
	samples int
}

// procMem is one sample of /proc/PID/status (kB).
type procMem struct {
	HWM, RSS, Anon, File, Shmem int64
}

func startRSSMonitor(exe string, interval time.Duration) *rssMonitor {
	self, _ := os.Readlink("/proc/self/exe")
	m := &rssMonitor{exe: exe, self: self, interval: interval, stop: make(chan struct{}), done: make(chan struct{}),
		peak: map[int]procMem{}, skip: map[int]bool{}}
	go m.loop()
	return m
}

func (m *rssMonitor) loop() {
	defer close(m.done)
	me := os.Getpid()
	buf := make([]byte, 4096)
	dbuf := make([]byte, 32<<10)
	for {
		select {
		case <-m.stop:
			return
		default:
		}
		dir, err := unix.Open("/proc", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return
		}
		var names []string
		for {
			n, err := unix.ReadDirent(dir, dbuf)
			if err != nil || n == 0 {
				break
			}
			_, _, names = unix.ParseDirent(dbuf[:n], -1, names)
		}
		unix.Close(dir)
		m.mu.Lock()
		for _, name := range names {
			pid, err := strconv.Atoi(name)
			if err != nil || pid == me || m.skip[pid] {
				continue
			}
			if _, known := m.peak[pid]; !known {
				exe, err := os.Readlink("/proc/" + name + "/exe")
				if err != nil {
					continue
				}
				if exe != m.exe {
					if exe != m.self {
						m.skip[pid] = true
					}
					continue
				}
			}
			pm, ok := readStatus(pid, buf)
			if !ok {
				continue
			}
			old := m.peak[pid]
			if pm.HWM > old.HWM {
				m.peak[pid] = pm
			} else if _, known := m.peak[pid]; !known {
				m.peak[pid] = pm
			}
		}
		m.samples++
		m.mu.Unlock()
		time.Sleep(m.interval)
	}
}

func readStatus(pid int, buf []byte) (procMem, bool) {
	fd, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/status", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return procMem{}, false
	}
	n, err := unix.Read(fd, buf)
	unix.Close(fd)
	if err != nil || n <= 0 {
		return procMem{}, false
	}
	var pm procMem
	for _, line := range bytes.Split(buf[:n], []byte{'\n'}) {
		k, v, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		var dst *int64
		switch string(k) {
		case "VmHWM":
			dst = &pm.HWM
		case "VmRSS":
			dst = &pm.RSS
		case "RssAnon":
			dst = &pm.Anon
		case "RssFile":
			dst = &pm.File
		case "RssShmem":
			dst = &pm.Shmem
		default:
			continue
		}
		*dst, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(string(v)), " kB"), 10, 64)
	}
	return pm, pm.HWM > 0
}

// Stop ends sampling and returns each process's peak sample, and how
// many sweeps of /proc were made.
func (m *rssMonitor) Stop() (map[int]procMem, int) {
	close(m.stop)
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.peak, m.samples
}

// memStats summarises peaks: max, median, and the sample of the max.
type memStats struct {
	N           int
	Max, Median int64 // kB
	AtMax       procMem
	AtMedian    procMem // the sample of the median process
	MaxPid      int
}

func summarize(peaks map[int]procMem, only map[int]bool) memStats {
	var hw []procMem
	var st memStats
	for pid, pm := range peaks {
		if only != nil && !only[pid] {
			continue
		}
		hw = append(hw, pm)
		if pm.HWM > st.Max {
			st.Max, st.AtMax, st.MaxPid = pm.HWM, pm, pid
		}
	}
	if len(hw) == 0 {
		return st
	}
	sort.Slice(hw, func(i, j int) bool { return hw[i].HWM < hw[j].HWM })
	st.N, st.AtMedian = len(hw), hw[len(hw)/2]
	st.Median = st.AtMedian.HWM
	return st
}
