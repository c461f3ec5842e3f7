// Command bench measures restore against issue 3's targets (`make bench`).
//
// For each scenario it writes a synthetic image directory (internal/synth),
// then restores it -runs times (images.Load, restore.NewPlan, restore.Run
// with EndStop, each timed), restores it once more while sampling the
// helpers' VmHWM every -rss-interval, builds the same tree and fd tables
// from scratch -runs times as the baseline (see baseline.go), and prints
// medians and PASS/FAIL per target:
//
//	a  1 task, 9,000 pipes (18,000 fds + stdio)      restore ≤ 3× baseline
//	b  10 tasks sharing 5,500 pipes, all ends each   restore ≤ 0.5 s
//	   (110,000 fds + stdio)
//	c  200 tasks with 100 private pipes each          restore ≤ 1 s, peak RSS ≤ 4 MiB per helper
//	d  1 task, 9,000 unix socketpairs (18,000 fds)    restore ≤ 0.15 s
//	e  10 tasks sharing 500 pipes and 5,000 socket-   restore ≤ 0.5 s
//	   pairs, 5 bytes queued in each (110,000 fds)
//
// "restore" is load + plan + run. Every restored and baseline task is
// killed and reaped after each run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/internal/synth"
	"github.com/fdrestore/fdrestore/restore"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

type scenario struct {
	name, desc   string
	tasks, pipes int
	build        func(data []byte) *synth.Builder
	base         baselineSpec
	data         int // bytes queued in each object whatever -data says (0: -data)
}

const pipeSize = 65536 // F_GETPIPE_SZ as CRIU records it for a default pipe

func scenarios() []scenario {
	return []scenario{
		{name: "a", desc: "1 task, 9000 pipes", tasks: 1, pipes: 9000,
			build: func(data []byte) *synth.Builder {
				b := synth.New()
				t := b.Task(1000)
				b.Stdio(t)
				for i := uint32(0); i < 9000; i++ {
					b.Pipe(t, 3+2*i, t, 4+2*i, data, pipeSize)
				}
				return b
			},
			base: baselineSpec{Mode: "own", Kids: 0, Pipes: 9000}},
		{name: "b", desc: "10 tasks share 5500 pipes", tasks: 10, pipes: 5500,
			build: func(data []byte) *synth.Builder {
				b := synth.New()
				root := b.Task(1000)
				ts := []*synth.Task{root}
				for i := 1; i < 10; i++ {
					ts = append(ts, b.Child(root, uint32(1000+i)))
				}
				for _, t := range ts {
					b.Stdio(t)
				}
				for i := uint32(0); i < 5500; i++ {
					p := b.Pipe(root, 3+2*i, root, 4+2*i, data, pipeSize)
					for _, t := range ts[1:] {
						b.Share(p.Read, t, 3+2*i)
						b.Share(p.Write, t, 4+2*i)
					}
				}
				return b
			},
			base: baselineSpec{Mode: "shared", Kids: 9, Pipes: 5500}},
		{name: "c", desc: "200 tasks, 100 own pipes each", tasks: 200, pipes: 20000,
			build: func(data []byte) *synth.Builder {
				b := synth.New()
				root := b.Task(1000)
				ts := []*synth.Task{root}
				for i := 1; i < 200; i++ {
					ts = append(ts, b.Child(root, uint32(1000+i)))
				}
				for _, t := range ts {
					b.Stdio(t)
					for i := uint32(0); i < 100; i++ {
						b.Pipe(t, 3+2*i, t, 4+2*i, data, pipeSize)
					}
				}
				return b
			},
			base: baselineSpec{Mode: "own", Kids: 199, Pipes: 100}},
		{name: "d", desc: "1 task, 9000 socketpairs", tasks: 1,
			build: func(data []byte) *synth.Builder {
				b := synth.New()
				t := b.Task(1000)
				b.Stdio(t)
				for i := uint32(0); i < 9000; i++ {
					x, y := b.UnixPair(synth.Stream)
					b.Share(x, t, 3+2*i)
					b.Share(y, t, 4+2*i)
					if len(data) > 0 {
						b.Packet(x, data)
					}
				}
				return b
			},
			base: baselineSpec{Mode: "own", Kids: 0, Socks: 9000}},
		{name: "e", desc: "10 tasks share 500 pipes + 5000 socketpairs, 5 bytes in each", tasks: 10, pipes: 500, data: 5,
			build: func(data []byte) *synth.Builder {
				b := synth.New()
				root := b.Task(1000)
				ts := []*synth.Task{root}
				for i := 1; i < 10; i++ {
					ts = append(ts, b.Child(root, uint32(1000+i)))
				}
				for _, t := range ts {
					b.Stdio(t)
				}
				for i := uint32(0); i < 500; i++ {
					p := b.Pipe(root, 3+2*i, root, 4+2*i, data, pipeSize)
					for _, t := range ts[1:] {
						b.Share(p.Read, t, 3+2*i)
						b.Share(p.Write, t, 4+2*i)
					}
				}
				for i := uint32(500); i < 5500; i++ {
					x, y := b.UnixPair(synth.Stream)
					b.Packet(x, data)
					for _, t := range ts {
						b.Share(x, t, 3+2*i)
						b.Share(y, t, 4+2*i)
					}
				}
				return b
			},
			base: baselineSpec{Mode: "shared", Kids: 9, Pipes: 500, Socks: 5000}},
	}
}

type runTimes struct {
	load, plan, run, total time.Duration
	tree, files            time.Duration // from the coordinator's "tree restored" entry
}

type result struct {
	sc        scenario
	fds       int
	restore   runTimes // medians
	all       []runTimes
	baseline  time.Duration // median
	baseAll   []time.Duration
	helperMem memStats
	stopMem   memStats
	baseMem   memStats
	err       error           // the restore failed
	taskTook  []time.Duration // per-task engine time (-debug)
	rootPid   int             // of the RSS run
}

var (
	flagScen     = flag.String("scenarios", "a,b,c,d,e", "scenarios to run")
	flagRuns     = flag.Int("runs", 3, "timed runs per scenario (medians are reported)")
	flagData     = flag.Int("data", 0, "bytes queued in every pipe")
	flagInterval = flag.Duration("rss-interval", 2*time.Millisecond, "sampling interval of the RSS run")
	flagCPU      = flag.String("cpuprofile", "", "write a CPU profile of the coordinator's timed runs of scenario X to FILE.X")
	flagDebug    = flag.Bool("debug", false, "log at debug level: helpers report their own engine time")
	flagKeep     = flag.String("keep", "", "write the image directories under this directory and keep them")
	flagNoBase   = flag.Bool("no-baseline", false, "skip the baseline")
)

func main() {
	restore.MaybeHelper()
	if len(os.Args) > 1 && os.Args[1] == baselineArg {
		os.Exit(baselineMain(os.Args[2:]))
	}
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	if h := os.Getenv(restore.HelperEnv); h != "" {
		fmt.Fprintf(os.Stderr, "helpers run %s\n", h)
	} else {
		fmt.Fprintf(os.Stderr, "%s is not set: restore helpers re-execute the bench binary, not the lean helper (make bench sets it)\n", restore.HelperEnv)
	}
	// fds: 18,003 in scenario a's single task, 11,003 per task in b.
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	rl.Cur = rl.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	if rl.Cur < serviceFd+100 {
		return fmt.Errorf("RLIMIT_NOFILE hard limit %d is below the %d the scenarios need", rl.Max, serviceFd+100)
	}
	// Nothing we inherited (from make, a CI runner...) goes to the
	// baseline's processes or the restore's.
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		for _, e := range ents {
			if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
				unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC)
			}
		}
	}
	// Orphans of killed trees come to us to be reaped.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return err
	}
	memfd, err := selfCopy("fdr-baseline")
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "fdrestore-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	root := tmp
	if *flagKeep != "" {
		root = *flagKeep
	}

	want := map[string]bool{}
	for _, s := range strings.Split(*flagScen, ",") {
		want[strings.TrimSpace(s)] = true
	}
	var data []byte
	if *flagData > 0 {
		data = make([]byte, *flagData)
		for i := range data {
			data[i] = byte('a' + i%26)
		}
	}

	// Warm up: the first restore copies the executable into a memfd.
	if err := warmUp(tmp); err != nil {
		return fmt.Errorf("warm-up restore: %w", err)
	}

	var results []*result
	for _, sc := range scenarios() {
		if !want[sc.name] {
			continue
		}
		dir := filepath.Join(root, "scenario-"+sc.name)
		os.RemoveAll(dir)
		scData := data
		if sc.data > 0 {
			scData = make([]byte, sc.data)
			for i := range scData {
				scData[i] = byte('a' + i%26)
			}
		}
		b := sc.build(scData)
		if err := b.Write(dir); err != nil {
			return err
		}
		r := &result{sc: sc}
		for _, t := range b.Tasks() {
			r.fds += t.Fds()
		}
		fmt.Fprintf(os.Stderr, "scenario %s: %s, %d tasks, %d fds\n", sc.name, sc.desc, sc.tasks, r.fds)
		var prof *os.File
		if *flagCPU != "" {
			if prof, err = os.Create(*flagCPU + "." + sc.name); err != nil {
				return err
			}
			pprof.StartCPUProfile(prof)
		}
		for i := 0; i < *flagRuns; i++ {
			rt, _, _, err := restoreOnce(dir, false, r)
			if err != nil {
				r.err = err
				fmt.Fprintf(os.Stderr, "  restore %d: FAILED: %v\n", i+1, err)
				break
			}
			r.all = append(r.all, rt)
			fmt.Fprintf(os.Stderr, "  restore %d: load %v plan %v run %v (tree %v, files %v) total %v\n", i+1, ms(rt.load), ms(rt.plan), ms(rt.run), ms(rt.tree), ms(rt.files), ms(rt.total))
		}
		if prof != nil {
			pprof.StopCPUProfile()
			prof.Close()
		}
		if r.err == nil {
			r.restore = medianTimes(r.all)
			helpers, stopped := memStats{}, memStats{}
			if _, helpers, stopped, err = restoreOnce(dir, true, r); err != nil {
				r.err = fmt.Errorf("RSS run: %w", err)
			}
			r.helperMem, r.stopMem = helpers, stopped
			fmt.Fprintf(os.Stderr, "  RSS run: %d helpers seen, VmHWM max %d kB median %d kB (at max: anon %d file %d shmem %d kB); stopped tasks max %d kB\n",
				helpers.N, helpers.Max, helpers.Median, helpers.AtMax.Anon, helpers.AtMax.File, helpers.AtMax.Shmem, stopped.Max)
		}

		if !*flagNoBase {
			spec := sc.base
			spec.Data, spec.Stdio, spec.Memfd = *flagData, true, memfd
			if sc.data > 0 {
				spec.Data = sc.data
			}
			for i := 0; i < *flagRuns; i++ {
				d, pids, err := runBaseline(spec)
				killReap(pids)
				if err != nil {
					return fmt.Errorf("scenario %s baseline: %w", sc.name, err)
				}
				r.baseAll = append(r.baseAll, d)
				fmt.Fprintf(os.Stderr, "  baseline %d: %v\n", i+1, ms(d))
			}
			r.baseline = median(r.baseAll)
			mon := startRSSMonitor("/memfd:fdr-baseline (deleted)", *flagInterval)
			_, pids, err := runBaseline(spec)
			peaks, _ := mon.Stop()
			killReap(pids)
			if err != nil {
				return fmt.Errorf("scenario %s baseline (RSS run): %w", sc.name, err)
			}
			r.baseMem = summarize(peaks, nil)
		}
		results = append(results, r)
	}
	report(os.Stdout, results)
	return nil
}

// selfCopy returns a memfd (CLOEXEC, numbered above 10) holding this
// executable.
func selfCopy(name string) (int, error) {
	b, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		return -1, err
	}
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return -1, err
	}
	for off := 0; off < len(b); {
		n, err := unix.Write(fd, b[off:])
		if err != nil {
			return -1, err
		}
		off += n
	}
	hi, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 10)
	unix.Close(fd)
	return hi, err
}

func warmUp(tmp string) error {
	dir := filepath.Join(tmp, "warmup")
	b := synth.New()
	b.Stdio(b.Task(1))
	if err := b.Write(dir); err != nil {
		return err
	}
	_, _, _, err := restoreOnce(dir, false, nil)
	return err
}

// captureHook keeps the coordinator's "tree restored" fields and the
// helpers' "fds restored" times.
type captureHook struct {
	tree, files time.Duration
	took        []time.Duration
}

func (h *captureHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h *captureHook) Fire(e *logrus.Entry) error {
	dur := func(k string) time.Duration {
		switch v := e.Data[k].(type) {
		case time.Duration:
			return v
		case float64: // relayed from a helper as JSON
			return time.Duration(v)
		case string:
			d, _ := time.ParseDuration(v)
			return d
		}
		return 0
	}
	switch e.Message {
	case "tree restored":
		h.tree, h.files = dur("tree"), dur("files")
	case "fds restored":
		h.took = append(h.took, dur("took"))
	}
	return nil
}

// restoreOnce restores dir, kills the tree and reaps it. With rss it
// samples the helpers' memory during Run and the stopped tasks' after.
func restoreOnce(dir string, rss bool, r *result) (runTimes, memStats, memStats, error) {
	var rt runTimes
	log := logrus.New()
	log.SetOutput(io.Discard)
	log.SetLevel(logrus.InfoLevel)
	if *flagDebug {
		log.SetLevel(logrus.DebugLevel)
	}
	hook := &captureHook{}
	log.AddHook(hook)

	t0 := time.Now()
	set, err := images.Load(dir)
	if err != nil {
		return rt, memStats{}, memStats{}, err
	}
	t1 := time.Now()
	plan, err := restore.NewPlan(set, restore.PlanOptions{})
	if err != nil {
		return rt, memStats{}, memStats{}, err
	}
	if err := plan.Err(); err != nil {
		return rt, memStats{}, memStats{}, err
	}
	t2 := time.Now()
	var mon *rssMonitor
	if rss {
		mon = startRSSMonitor("/memfd:fdrestore (deleted)", *flagInterval)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := restore.Run(ctx, plan, restore.Options{End: restore.EndStop, Log: log, Timeout: 2 * time.Minute})
	t3 := time.Now()
	var helpers, stopped memStats
	var peaks map[int]procMem
	if mon != nil {
		peaks, _ = mon.Stop()
	}
	if err != nil {
		return rt, summarize(peaks, nil), stopped, err
	}
	var pids []int
	only := map[int]bool{}
	for _, pid := range res.PidMap {
		pids = append(pids, pid)
		only[pid] = true
	}
	// The restored tasks' helpers (not the forks seen before their exec,
	// nor stand-ins).
	helpers = summarize(peaks, only)
	if r != nil && rss {
		r.rootPid = res.RootPid
	}
	if rss {
		buf := make([]byte, 4096)
		now := map[int]procMem{}
		for _, pid := range pids {
			if pm, ok := readStatus(pid, buf); ok {
				now[pid] = pm
			}
		}
		stopped = summarize(now, nil)
	}
	killReap(pids)
	rt = runTimes{load: t1.Sub(t0), plan: t2.Sub(t1), run: t3.Sub(t2), total: t3.Sub(t0), tree: hook.tree, files: hook.files}
	if r != nil && len(hook.took) > 0 {
		r.taskTook = hook.took
	}
	return rt, helpers, stopped, nil
}

// killReap SIGKILLs pids and waits until each is reaped or gone.
func killReap(pids []int) {
	for _, pid := range pids {
		unix.Kill(pid, unix.SIGKILL)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, pid := range pids {
		for time.Now().Before(deadline) {
			var ws unix.WaitStatus
			wp, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
			if wp == pid {
				break
			}
			if errors.Is(err, unix.ECHILD) {
				if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
					break
				}
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	// Anything else that came to us as subreaper.
	for {
		var ws unix.WaitStatus
		if wp, _ := unix.Wait4(-1, &ws, unix.WNOHANG, nil); wp <= 0 {
			break
		}
	}
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func medianTimes(all []runTimes) runTimes {
	pick := func(f func(runTimes) time.Duration) time.Duration {
		var ds []time.Duration
		for _, r := range all {
			ds = append(ds, f(r))
		}
		return median(ds)
	}
	return runTimes{
		load:  pick(func(r runTimes) time.Duration { return r.load }),
		plan:  pick(func(r runTimes) time.Duration { return r.plan }),
		run:   pick(func(r runTimes) time.Duration { return r.run }),
		total: pick(func(r runTimes) time.Duration { return r.total }),
		tree:  pick(func(r runTimes) time.Duration { return r.tree }),
		files: pick(func(r runTimes) time.Duration { return r.files }),
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/1e6) }

func mib(kb int64) string { return fmt.Sprintf("%.1f MiB", float64(kb)/1024) }

// baseRatio describes restore time against the baseline.
func baseRatio(r *result) string {
	if r.baseline <= 0 {
		return "no baseline"
	}
	return fmt.Sprintf("%.2f× the baseline's %s", float64(r.restore.total)/float64(r.baseline), ms(r.baseline))
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

func report(w io.Writer, results []*result) {
	fmt.Fprintf(w, "\nfdrestore restore benchmark (%d timed runs each, medians; restore = load + plan + run, run = restore.Run with EndStop)\n\n", *flagRuns)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\ttasks\tfds\tload\tplan\trun\t(tree\tfiles)\trestore\tbaseline\tratio\thelper VmHWM max\tmedian\tbaseline task max\t")
	for _, r := range results {
		if r.err != nil {
			fmt.Fprintf(tw, "%s\t%d\t%d\t-\t-\t-\t-\t-\tFAILED\t%s\t-\t-\t-\t%s\t\n", r.sc.name, r.sc.tasks, r.fds, ms(r.baseline), mib(r.baseMem.Max))
			continue
		}
		ratio := "-"
		if r.baseline > 0 {
			ratio = fmt.Sprintf("%.2f×", float64(r.restore.total)/float64(r.baseline))
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.sc.name, r.sc.tasks, r.fds,
			ms(r.restore.load), ms(r.restore.plan), ms(r.restore.run), ms(r.restore.tree), ms(r.restore.files), ms(r.restore.total),
			ms(r.baseline), ratio, mib(r.helperMem.Max), mib(r.helperMem.Median), mib(r.baseMem.Max))
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Targets (issues 3 and 6):")
	for _, r := range results {
		if r.err != nil {
			fmt.Fprintf(w, "  %s: FAIL: restore failed: %v\n", r.sc.name, r.err)
			continue
		}
		t := r.restore.total
		switch r.sc.name {
		case "a":
			if r.baseline > 0 {
				fmt.Fprintf(w, "  a: restore ≤ 3× baseline        %s (%.2f×: %s vs %s)\n", verdict(t <= 3*r.baseline), float64(t)/float64(r.baseline), ms(t), ms(r.baseline))
			}
		case "b":
			fmt.Fprintf(w, "  b: restore ≤ 0.5 s               %s (%s)\n", verdict(t <= 500*time.Millisecond), ms(t))
		case "d":
			fmt.Fprintf(w, "  d: restore ≤ 0.15 s              %s (%s, %s)\n", verdict(t <= 150*time.Millisecond), ms(t), baseRatio(r))
		case "e":
			fmt.Fprintf(w, "  e: restore ≤ 0.5 s               %s (%s, %s)\n", verdict(t <= 500*time.Millisecond), ms(t), baseRatio(r))
		case "c":
			fmt.Fprintf(w, "  c: restore ≤ 1 s                 %s (%s)\n", verdict(t <= time.Second), ms(t))
			fmt.Fprintf(w, "  c: ≤ 4 MiB peak RSS per helper   %s (max %s, median %s over %d helpers)\n", verdict(r.helperMem.Max <= 4096 && r.helperMem.N > 0), mib(r.helperMem.Max), mib(r.helperMem.Median), r.helperMem.N)
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Memory detail (VmHWM sampled every", *flagInterval, "during Run; the stopper is the re-exec'd end state):")
	for _, r := range results {
		a, m := r.helperMem.AtMax, r.helperMem.AtMedian
		who := "a child task"
		if r.helperMem.MaxPid == r.rootPid {
			who = "the root task"
		}
		fmt.Fprintf(w, "  %s: helper max %s, %s (RSS at that sample %s = anon %s + file %s + shmem %s); median %s (%s = anon %s + file %s + shmem %s); stopped task max %s; baseline task max %s median %s\n",
			r.sc.name, mib(r.helperMem.Max), who, mib(a.RSS), mib(a.Anon), mib(a.File), mib(a.Shmem),
			mib(m.HWM), mib(m.RSS), mib(m.Anon), mib(m.File), mib(m.Shmem),
			mib(r.stopMem.Max), mib(r.baseMem.Max), mib(r.baseMem.Median))
		if len(r.taskTook) > 0 {
			s := append([]time.Duration(nil), r.taskTook...)
			sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
			fmt.Fprintf(w, "     helper engine time (last run): min %s median %s max %s over %d tasks\n", ms(s[0]), ms(s[len(s)/2]), ms(s[len(s)-1]), len(s))
		}
	}
}
