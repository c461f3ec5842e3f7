package zdtm

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
)

// spec is the runner's view of a scenario (the programs are in
// test/scenario).
type spec struct {
	name string
	// crfail: the dump must refuse the tree with an error matching
	// crfailError ({pid:ROLE} = pid of the task running ROLE).
	crfail      bool
	crfailError string
	// extPeer: the runner binds a datagram socket outside the tree for
	// the scenario (see Config.ExtPeer); extUnixSk: dumps and restores
	// get --ext-unix-sk.
	extPeer, extUnixSk bool
	// unsupported: a state fdrestore does not handle yet. When the run
	// fails with an error matching it, the scenario is reported as
	// skipped with that error; any other failure is a failure, and a
	// pass is a pass (then the marker should go).
	unsupported string
	// nsOnly: the scenario restores ptys at their recorded index, which
	// needs a devpts instance of its own: it runs in the ns flavor only
	// and never touches the host's /dev/pts.
	nsOnly bool
	// tcp: the scenario holds TCP connections and binds ports: it runs
	// with --tcp-established, in the ns flavor only (nsOnly) and without
	// C/R in a network namespace of its own.
	tcp bool
	// leaveRunningError: the dump with --leave-running must be refused
	// with an error matching it (Config.LeaveRunningError).
	leaveRunningError string
}

var scenarios = []spec{
	{name: "pipe00"},
	{name: "pipe01"},
	{name: "pipe03"},
	{name: "fifo_ro"},
	{name: "fifo_wronly"},
	{name: "fifo-rowo-pair"},
	{name: "file_shared"},
	{name: "fd01"},
	{name: "fd"},
	{name: "write_read10"},
	{name: "file_fown"},
	{name: "pipeline"},
	{name: "pipe-wonly-data"},
	{name: "unix-pairs"},
	{name: "unix-listen-path"},
	{name: "unix-listen-abstract"},
	{name: "unix-peerless"},
	{name: "unix-dgram-server"},
	{name: "unix-dgram-self"},
	{name: "unix-shutdown"},
	{name: "unix-sockopts"},
	{name: "unix-scm"},
	{name: "unix-deleted"},
	{name: "unix-shared"},
	{name: "unix-ext-dgram", extPeer: true, extUnixSk: true},
	{name: "unix-epoll"},
	{name: "unix-inflight-events"},
	{name: "crfail-unix-ext", extPeer: true, crfail: true,
		crfailError: `^fdrestore: dump refused, the tree was left running unchanged: ` +
			`pid {pid:root} fd 3: unix socket:\[\d+\] \(unnamed\) cannot be dumped: its peer socket:\[\d+\] ".*/crfail-unix-ext\.ext\.sock" ` +
			`is outside the dumped tree \(dump with --ext-unix-sk to record it as external and reconnect to it by name\)$`},
	{name: "crfail-unix-pending-data", crfail: true,
		crfailError: `^fdrestore: dump refused, the tree was left running unchanged: ` +
			`pid {pid:root} fd 4: unix socket:\[\d+\] \(unnamed\) cannot be dumped: it sent data \(\d+ bytes of buffers\) ` +
			`into its connection to socket:\[\d+\] "@zdtm-[0-9a-f]+-crfail-unix-pending-data-l", which was not accepted yet; ` +
			`that data cannot be read without accepting the connection$`},
	{name: "crfail-console", crfail: true,
		crfailError: `^fdrestore: dump refused, the tree was left running unchanged: ` +
			`pid {pid:root} fd 3: tty is not supported \(/dev/console\)$`},
	{name: "pty00", nsOnly: true},
	{name: "pty01", nsOnly: true},
	{name: "pty02", nsOnly: true},
	{name: "pty03", nsOnly: true},
	{name: "pty04", nsOnly: true},
	{name: "pty05", nsOnly: true},
	{name: "epoll00"},
	{name: "epoll01"},
	{name: "epoll-shared"},
	{name: "eventfd00"},
	{name: "signalfd00"},
	{name: "timerfd00"},
	{name: "tcp-pair", tcp: true, nsOnly: true},
	{name: "tcp-ext", tcp: true, nsOnly: true},
	{name: "tcp-veth", tcp: true, nsOnly: true},
	{name: "tcp-bufs", tcp: true, nsOnly: true},
	{name: "tcp-halfclosed", tcp: true, nsOnly: true},
	{name: "tcp-halfclosed-full", tcp: true, nsOnly: true},
	{name: "tcp6-udp", tcp: true, nsOnly: true},
	{name: "tcp-pending", tcp: true, nsOnly: true,
		leaveRunningError: `^fdrestore: dump refused, the tree was left running unchanged: ` +
			`pid {pid:root} fd 3: TCP listener with connections not yet accepted \(2\): with --leave-running .* is not supported \(socket:\[\d+\]\)$`},
	{name: "tcp-crfail-pending", tcp: true, nsOnly: true, crfail: true,
		crfailError: `^fdrestore: dump refused, the tree was left running unchanged: ` +
			`pid {pid:root} fd 3: TCP listener with connections not yet accepted \(1\) \(the client of the one from 127\.0\.0\.1:\d+ is not in the dumped tree; ` +
			`only connections with both ends in the tree can be taken out of an accept queue\) is not supported \(socket:\[\d+\]\)$`},
}

// report collects one line per scenario and flavor.
var report struct {
	sync.Mutex
	lines map[string]string // "scenario flavor" -> "pass" / "fail: ..." / "skip: ..."
}

func record(name, flavor, line string) {
	report.Lock()
	defer report.Unlock()
	if report.lines == nil {
		report.lines = map[string]string{}
	}
	report.lines[name+" "+flavor] = line
}

// printReport prints one line per scenario and flavor, then the totals.
func printReport(t *testing.T) {
	report.Lock()
	defer report.Unlock()
	if len(report.lines) == 0 {
		return
	}
	keys := make([]string, 0, len(report.lines))
	for k := range report.lines {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	var pass, fail, skip int
	b.WriteString("\nzdtm report:\n")
	for _, k := range keys {
		l := report.lines[k]
		switch {
		case l == "pass":
			pass++
		case strings.HasPrefix(l, "skip"):
			skip++
		default:
			fail++
		}
		fmt.Fprintf(&b, "%-28s %s\n", k, l)
	}
	fmt.Fprintf(&b, "%d passed, %d failed", pass, fail)
	if skip > 0 {
		fmt.Fprintf(&b, ", %d skipped", skip)
	}
	b.WriteString("\n")
	fmt.Print(b.String())
	if *flagReport != "" {
		if err := os.WriteFile(*flagReport, []byte(strings.TrimPrefix(b.String(), "\n")), 0o644); err != nil {
			t.Errorf("report: %v", err)
		}
	}
}

func flavors() []string {
	var out []string
	for _, f := range strings.Split(*flagFlavors, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// TestZdtm runs every scenario in every flavor: start, record the state
// from outside, dump, restore stopped and compare, restore with
// --exec-recorded, and again for -zdtm.iters, then let the tasks verify
// themselves. Select scenarios with -run 'TestZdtm/.*pipe.*' or
// -zdtm.run=pipe.
func TestZdtm(t *testing.T) {
	needRoot(t)
	var filter *regexp.Regexp
	if *flagRun != "" {
		filter = regexp.MustCompile(*flagRun)
	}
	t.Cleanup(func() { printReport(t) })
	for _, sc := range scenarios {
		if filter != nil && !filter.MatchString(sc.name) {
			continue
		}
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			for _, fl := range flavors() {
				t.Run(fl, func(t *testing.T) {
					t.Parallel()
					if sc.nsOnly && fl != FlavorNS {
						record(sc.name, fl, "skip: ns flavor only (needs namespaces of its own)")
						t.Skip("ns flavor only: the scenario needs a devpts instance or a network namespace of its own")
					}
					res := runDriver(t, Config{Scenario: sc.name, Flavor: fl, CRFail: sc.crfail, CRFailError: sc.crfailError,
						ExtPeer: sc.extPeer, ExtUnixSk: sc.extUnixSk, TCP: sc.tcp, LeaveRunningError: sc.leaveRunningError})
					if res.Status == "fail" && sc.unsupported != "" && regexp.MustCompile(sc.unsupported).MatchString(res.Reason) {
						res.Status, res.Reason = "skip", "not supported yet: "+res.Reason
					}
					switch res.Status {
					case "pass":
						record(sc.name, fl, "pass")
					case "skip":
						record(sc.name, fl, "skip: "+res.Reason)
						t.Skip(res.Reason)
					default:
						record(sc.name, fl, "fail: "+res.Reason)
						t.Error(res.Reason)
					}
				})
			}
		})
	}
}

// TestScenarioList checks that the runner's table and the scenario
// binary agree.
func TestScenarioList(t *testing.T) {
	out, err := exec.Command(binary(t, "test/scenario"), "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	have := strings.Fields(string(out))
	var want []string
	for _, sc := range scenarios {
		want = append(want, sc.name)
	}
	sort.Strings(want)
	if !slices.Equal(have, want) {
		t.Errorf("scenario binary has %v, the runner's table %v", have, want)
	}
}

// TestScenarioSanity runs every scenario without a checkpoint: it must
// pass its own verification (zdtm's --nocr), so that a failure in
// TestZdtm is the engine's, not the scenario's.
func TestScenarioSanity(t *testing.T) {
	needRoot(t)
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			res := runDriver(t, Config{Scenario: sc.name, Flavor: FlavorNoCR, ExtPeer: sc.extPeer, TCP: sc.tcp})
			if res.Status != "pass" {
				t.Errorf("%s without C/R: %s", sc.name, res.Reason)
			}
		})
	}
}
