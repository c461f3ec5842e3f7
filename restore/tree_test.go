package restore_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/restore"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// procStat returns ppid, pgrp and session of pid from /proc/PID/stat.
func procStat(t *testing.T, pid int) (ppid, pgrp, sid int) {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatalf("pid %d: %v", pid, err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ppid, _ = strconv.Atoi(f[1])
	pgrp, _ = strconv.Atoi(f[2])
	sid, _ = strconv.Atoi(f[3])
	return
}

// TestTreeShapes restores trees whose sessions and process groups need
// every kind of tree step, and checks from /proc that parent links,
// sessions and groups come out as in the images: the same tasks share a
// session or group, the same tasks lead them, and a session or group whose
// leader died before the dump is led by no restored task.
func TestTreeShapes(t *testing.T) {
	needRoot(t)
	type task struct{ pid, ppid, pgid, sid uint32 }
	cases := []struct {
		name  string
		tasks []task
	}{
		{"two sessions three groups", []task{{2, 0, 2, 2}, {3, 2, 3, 2}, {4, 2, 3, 2}, {5, 2, 5, 2}, {6, 5, 6, 6}}},
		{"born session", []task{{2, 0, 2, 2}, {3, 2, 3, 3}, {4, 3, 2, 2}, {5, 3, 3, 3}}},
		{"dead session leader", []task{{2, 0, 2, 2}, {5, 2, 9, 9}, {6, 5, 6, 9}, {7, 2, 2, 2}}},
		{"dead group leader", []task{{2, 0, 2, 2}, {3, 2, 7, 2}, {4, 2, 7, 2}, {8, 4, 7, 2}}},
		{"group leader spawned after member", []task{{2, 0, 2, 2}, {3, 2, 4, 2}, {4, 2, 4, 2}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := newImgBuilder()
			null := b.devNull(0)
			for _, tk := range tc.tasks {
				b.task(tk.pid, tk.ppid, tk.pgid, tk.sid).fd(0, null, false)
			}
			set, err := images.Load(b.write(t))
			if err != nil {
				t.Fatal(err)
			}
			p, err := restore.NewPlan(set, restore.PlanOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var steps strings.Builder
			for _, op := range p.TreeOps {
				fmt.Fprintf(&steps, "\n  %s", op.Describe(p.Procs))
			}
			t.Logf("tree steps:%s", steps.String())
			log := logrus.New()
			log.SetLevel(logrus.WarnLevel)
			res, err := restore.Run(context.Background(), p, restore.Options{End: restore.EndStop, Timeout: 20 * time.Second, Log: log})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				for _, pid := range res.PidMap {
					unix.Kill(pid, unix.SIGKILL)
				}
				for _, pid := range res.PidMap {
					for i := 0; i < 2000; i++ {
						var ws unix.WaitStatus
						if wpid, _ := unix.Wait4(pid, &ws, unix.WNOHANG, nil); wpid == pid {
							break
						}
						if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
							break
						}
						time.Sleep(time.Millisecond)
					}
				}
			})
			restored := map[int]bool{}
			for _, pid := range res.PidMap {
				restored[pid] = true
			}
			// image id (session or group) -> restored id, consistently.
			sids, pgids := map[uint32]int{}, map[uint32]int{}
			for _, tk := range tc.tasks {
				pid := res.PidMap[tk.pid]
				ppid, pgrp, sid := procStat(t, pid)
				if tk.ppid != 0 && ppid != res.PidMap[tk.ppid] {
					t.Errorf("task %d: parent is %d, want %d (task %d)", tk.pid, ppid, res.PidMap[tk.ppid], tk.ppid)
				}
				for _, c := range []struct {
					what  string
					image uint32
					got   int
					seen  map[uint32]int
				}{{"session", tk.sid, sid, sids}, {"process group", tk.pgid, pgrp, pgids}} {
					if prev, ok := c.seen[c.image]; ok && prev != c.got {
						t.Errorf("task %d: %s %d restored as %d and as %d", tk.pid, c.what, c.image, prev, c.got)
					}
					c.seen[c.image] = c.got
					if leader, ok := res.PidMap[c.image]; ok {
						if c.got != leader {
							t.Errorf("task %d: %s is %d, want the one led by task %d (pid %d)", tk.pid, c.what, c.got, c.image, leader)
						}
					} else if restored[c.got] {
						t.Errorf("task %d: %s %d had a dead leader, but restored task pid %d leads it", tk.pid, c.what, c.image, c.got)
					}
				}
			}
		})
	}
}
