// Package netlock is fdrestore's network lock, like CRIU's: between a
// dump that kills a tree and the restore of its TCP connections no socket
// owns their 4-tuples, and the kernel would answer a peer that keeps
// sending with a reset. The dump therefore drops, in the tree's network
// namespace, every packet of the dumped connections (both directions, on
// input and output) with firewall rules of its own, and the restore
// removes them once the connections are back.
//
// Methods: nftables (a table "inet fdrestore-lock-ID" whose chains hook
// input and output at raw priority and drop what matches a set of the
// connections' 4-tuples) and iptables (a chain "fdrestore-lock-ID" in the
// raw table, jumped to from PREROUTING and OUTPUT, with one DROP rule per
// direction of each connection; ip6tables for IPv6). Nothing else of the
// ruleset is touched. What was set is recorded in the image directory
// (RecordFile), so that the restore removes exactly that.
package netlock

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Methods.
const (
	NFTables = "nftables"
	IPTables = "iptables"
	Skip     = "skip"
)

// ForgeMark is the packet mark of the segments the restore forges to
// bring a half-closed connection to its state (files/tcp): the lock lets
// them through.
const ForgeMark = 0xC114

// RecordFile is the file in the image directory that records the lock a
// dump set (JSON; CRIU ignores it).
const RecordFile = "fdrestore-netlock.json"

// ErrUnavailable is wrapped when no tool for the method is installed.
var ErrUnavailable = errors.New("no firewall tool")

// ErrNotFound is wrapped by Remove when the lock is not in the namespace
// (already removed, or set in another network namespace).
var ErrNotFound = errors.New("network lock not found")

// Conn is one TCP connection: its local and peer address and port.
type Conn struct {
	Src     netip.Addr `json:"src"`
	SrcPort uint16     `json:"sport"`
	Dst     netip.Addr `json:"dst"`
	DstPort uint16     `json:"dport"`
}

func (c Conn) String() string {
	return netip.AddrPortFrom(c.Src, c.SrcPort).String() + "<->" + netip.AddrPortFrom(c.Dst, c.DstPort).String()
}

// is4 says whether the connection's packets are IPv4 (IPv4-mapped IPv6
// addresses included).
func (c Conn) is4() bool { return c.Src.Unmap().Is4() && c.Dst.Unmap().Is4() }

// Lock is one network lock: its method, name (nftables table or iptables
// chain), the network namespace it was set in, and its connections.
type Lock struct {
	Method string `json:"method"`
	Name   string `json:"name"`
	// Netns is the inode of the network namespace the lock was set in.
	Netns uint64 `json:"netns"`
	Conns []Conn `json:"conns"`
	// RawCreated lists the nf_tables families ("ip", "ip6") whose raw
	// table the iptables method created (iptables-nft makes it on first
	// use): Remove deletes it again if it is still empty.
	RawCreated []string `json:"raw_created,omitempty"`
}

// Resolve checks a method and turns "" into the default: nftables when
// nft is installed, else iptables when iptables is, else an error.
func Resolve(method string) (string, error) {
	switch method {
	case Skip:
		return Skip, nil
	case NFTables:
		if _, err := lookTool("nft"); err != nil {
			return "", fmt.Errorf("%w: nft is not installed (install Debian's nftables, or use --network-lock=iptables or skip)", ErrUnavailable)
		}
		return method, nil
	case IPTables:
		for _, tool := range []string{"iptables-restore", "ip6tables-restore"} {
			if _, err := lookTool(tool); err != nil {
				return "", fmt.Errorf("%w: %s is not installed (install Debian's iptables, or use --network-lock=nftables or skip)", ErrUnavailable, tool)
			}
		}
		return method, nil
	case "":
		if m, err := Resolve(NFTables); err == nil {
			return m, nil
		}
		if m, err := Resolve(IPTables); err == nil {
			return m, nil
		}
		return "", fmt.Errorf("%w: neither nft nor iptables is installed (install Debian's nftables, or use --network-lock=skip to let the peers of the dumped connections get resets)", ErrUnavailable)
	}
	return "", fmt.Errorf("network lock: unknown method %q (want nftables, iptables or skip)", method)
}

// New returns a lock of a resolved method (not skip) for conns, with a
// fresh name.
func New(method string, conns []Conn) *Lock {
	var b [6]byte
	rand.Read(b[:])
	return &Lock{Method: method, Name: "fdrestore-lock-" + hex.EncodeToString(b[:]), Conns: conns}
}

// Set installs the lock in the network namespace of pid (0: the calling
// thread's), in one transaction per family.
func (l *Lock) Set(pid int) error {
	ino, err := netnsInode(pid)
	if err != nil {
		return err
	}
	l.Netns = ino
	err = inNetns(pid, func() error {
		switch l.Method {
		case NFTables:
			return nft(l.nftScript())
		case IPTables:
			for _, v4 := range []bool{true, false} {
				if s := l.iptScript(v4, true); s != "" {
					if fam, ok := rawAbsent(v4); ok {
						l.RawCreated = append(l.RawCreated, fam)
					}
					if err := ipt(v4, s); err != nil {
						if v4 {
							return err
						}
						// Take the IPv4 half back.
						return errors.Join(err, ipt(true, l.iptScript(true, false)))
					}
				}
			}
			return nil
		}
		return fmt.Errorf("method %q", l.Method)
	})
	if err != nil {
		return fmt.Errorf("network lock (%s %s, %d connections): set: %w", l.Method, l.Name, len(l.Conns), err)
	}
	return nil
}

// Remove takes the lock away from the network namespace of pid (0: the
// calling thread's) and nothing else. A lock that is not there gives an
// error wrapping ErrNotFound.
func (l *Lock) Remove(pid int) error {
	err := inNetns(pid, func() error {
		present, err := l.present()
		if err != nil {
			return err
		}
		if !present {
			return ErrNotFound
		}
		switch l.Method {
		case NFTables:
			return nft("delete table inet " + l.Name + "\n")
		case IPTables:
			var errs []error
			for _, v4 := range []bool{true, false} {
				if s := l.iptScript(v4, false); s != "" {
					errs = append(errs, ipt(v4, s))
				}
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			for _, fam := range l.RawCreated {
				if err := dropEmptyRaw(fam); err != nil {
					return err
				}
			}
			return nil
		}
		return fmt.Errorf("method %q", l.Method)
	})
	if err != nil {
		return fmt.Errorf("network lock (%s %s): remove: %w", l.Method, l.Name, err)
	}
	return nil
}

// Present reports whether the lock is in the network namespace of pid
// (0: the calling thread's).
func (l *Lock) Present(pid int) (bool, error) {
	var ok bool
	err := inNetns(pid, func() error {
		var err error
		ok, err = l.present()
		return err
	})
	return ok, err
}

func (l *Lock) present() (bool, error) {
	switch l.Method {
	case NFTables:
		out, err := run("nft", nil, "list", "tables", "inet")
		if err != nil {
			return false, err
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.TrimSpace(line) == "table inet "+l.Name {
				return true, nil
			}
		}
		return false, nil
	case IPTables:
		for _, v4 := range []bool{true, false} {
			if l.iptScript(v4, true) == "" {
				continue
			}
			tool := "iptables"
			if !v4 {
				tool = "ip6tables"
			}
			out, err := run(tool, nil, "-w", "5", "-t", "raw", "-S")
			if err != nil {
				return false, err
			}
			if strings.Contains(out, "-N "+l.Name+"\n") {
				return true, nil
			}
		}
		return false, nil
	}
	return false, fmt.Errorf("method %q", l.Method)
}

// nftScript is the table: a set of 4-tuples per family (each connection
// in both directions), dropped on input and output before conntrack.
func (l *Lock) nftScript() string {
	var s4, s6 []string
	seen := map[string]bool{}
	for _, c := range l.Conns {
		a, b := c.Src.Unmap(), c.Dst.Unmap()
		if !c.is4() {
			a, b = c.Src, c.Dst
		}
		e1 := fmt.Sprintf("%s . %d . %s . %d", a, c.SrcPort, b, c.DstPort)
		e2 := fmt.Sprintf("%s . %d . %s . %d", b, c.DstPort, a, c.SrcPort)
		for _, e := range []string{e1, e2} {
			// Both ends of a connection inside the tree give the same
			// pair of elements.
			if seen[e] {
				continue
			}
			seen[e] = true
			if c.is4() {
				s4 = append(s4, e)
			} else {
				s6 = append(s6, e)
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", l.Name)
	rules := []string{fmt.Sprintf("meta mark 0x%x return", ForgeMark)}
	if len(s4) > 0 {
		fmt.Fprintf(&b, "\tset conns4 {\n\t\ttype ipv4_addr . inet_service . ipv4_addr . inet_service\n\t\telements = { %s }\n\t}\n", strings.Join(s4, ", "))
		rules = append(rules, "ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop")
	}
	if len(s6) > 0 {
		fmt.Fprintf(&b, "\tset conns6 {\n\t\ttype ipv6_addr . inet_service . ipv6_addr . inet_service\n\t\telements = { %s }\n\t}\n", strings.Join(s6, ", "))
		rules = append(rules, "ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 drop")
	}
	for _, hook := range []string{"input", "output"} {
		fmt.Fprintf(&b, "\tchain %s {\n\t\ttype filter hook %s priority -300; policy accept;\n", hook, hook)
		for _, r := range rules {
			fmt.Fprintf(&b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// iptScript is the iptables-restore input that sets (or removes) the
// lock's chain of one family in the raw table; "" when the lock has no
// connection of that family.
func (l *Lock) iptScript(v4, set bool) string {
	var rules []string
	seen := map[string]bool{}
	for _, c := range l.Conns {
		if c.is4() != v4 {
			continue
		}
		a, b := c.Src, c.Dst
		if v4 {
			a, b = a.Unmap(), b.Unmap()
		}
		for _, r := range []string{
			fmt.Sprintf("-A %s -p tcp -s %s --sport %d -d %s --dport %d -j DROP", l.Name, a, c.SrcPort, b, c.DstPort),
			fmt.Sprintf("-A %s -p tcp -s %s --sport %d -d %s --dport %d -j DROP", l.Name, b, c.DstPort, a, c.SrcPort),
		} {
			if !seen[r] {
				seen[r] = true
				rules = append(rules, r)
			}
		}
	}
	if len(rules) == 0 {
		return ""
	}
	rules = append([]string{fmt.Sprintf("-A %s -m mark --mark 0x%x -j RETURN", l.Name, ForgeMark)}, rules...)
	var s strings.Builder
	s.WriteString("*raw\n")
	if set {
		fmt.Fprintf(&s, ":%s - [0:0]\n", l.Name)
		s.WriteString(strings.Join(rules, "\n") + "\n")
		fmt.Fprintf(&s, "-I PREROUTING -j %s\n-I OUTPUT -j %s\n", l.Name, l.Name)
	} else {
		fmt.Fprintf(&s, "-D PREROUTING -j %s\n-D OUTPUT -j %s\n-F %s\n-X %s\n", l.Name, l.Name, l.Name, l.Name)
	}
	s.WriteString("COMMIT\n")
	return s.String()
}

// rawAbsent says, for iptables over nf_tables with nft installed, that
// the family's raw table does not exist yet (and names the family).
func rawAbsent(v4 bool) (string, bool) {
	fam, tool := "ip", "iptables"
	if !v4 {
		fam, tool = "ip6", "ip6tables"
	}
	if v, err := run(tool, nil, "--version"); err != nil || !strings.Contains(v, "nf_tables") {
		return "", false
	}
	if _, err := lookTool("nft"); err != nil {
		return "", false
	}
	out, err := run("nft", nil, "list", "tables", fam)
	if err != nil {
		return "", false
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "table "+fam+" raw" {
			return "", false
		}
	}
	return fam, true
}

// dropEmptyRaw deletes the family's raw table that the lock created if
// nothing but the empty built-in chains is left in it.
func dropEmptyRaw(fam string) error {
	tool := "iptables"
	if fam == "ip6" {
		tool = "ip6tables"
	}
	out, err := run(tool, nil, "-w", "5", "-t", "raw", "-S")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line != "-P PREROUTING ACCEPT" && line != "-P OUTPUT ACCEPT" {
			return nil // somebody else uses it now
		}
	}
	return nft("delete table " + fam + " raw\n")
}

func nft(script string) error {
	_, err := run("nft", []byte(script), "-f", "-")
	return err
}

func ipt(v4 bool, script string) error {
	tool := "iptables-restore"
	if !v4 {
		tool = "ip6tables-restore"
	}
	_, err := run(tool, []byte(script), "-w", "5", "--noflush")
	return err
}

// run runs a firewall tool (within 20 s) and returns its output; its
// error names the tool and carries what it printed.
func run(tool string, stdin []byte, args ...string) (string, error) {
	path, err := lookTool(tool)
	if err != nil {
		return "", fmt.Errorf("%w: %s is not installed", ErrUnavailable, tool)
	}
	cmd := exec.Command(path, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("%s: %w", tool, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t := time.NewTimer(20 * time.Second)
	defer t.Stop()
	select {
	case err = <-done:
	case <-t.C:
		cmd.Process.Kill()
		<-done
		err = errors.New("timed out after 20s")
	}
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

var sbinDirs = []string{"/usr/sbin", "/sbin", "/usr/local/sbin"}

// lookTool finds a firewall tool in $PATH or, as root's tools often are
// where a user's $PATH does not look, in the sbin directories.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range sbinDirs {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}

// netnsInode returns the inode of the network namespace of pid (0: the
// calling thread's).
func netnsInode(pid int) (uint64, error) {
	var st unix.Stat_t
	p := nsPath(pid)
	if err := unix.Stat(p, &st); err != nil {
		return 0, fmt.Errorf("network lock: %s: %w", p, err)
	}
	return st.Ino, nil
}

// NetnsInode returns the inode of the network namespace of pid (0: the
// calling thread's).
func NetnsInode(pid int) (uint64, error) { return netnsInode(pid) }

func nsPath(pid int) string {
	if pid == 0 {
		return "/proc/thread-self/ns/net"
	}
	return fmt.Sprintf("/proc/%d/ns/net", pid)
}

// inNetns runs fn on a locked thread in the network namespace of pid
// (pid 0: the calling thread's, which fn then runs on): processes fn
// starts are born there. For another namespace fn runs on a goroutine of
// its own, so that a thread that cannot come back stays locked and ends
// with that goroutine instead of going on with the caller in the wrong
// namespace.
func inNetns(pid int, fn func() error) error {
	if pid == 0 {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		return fn()
	}
	target, err := unix.Open(nsPath(pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open the network namespace of pid %d: %w", pid, err)
	}
	defer unix.Close(target)
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		defer unix.Close(self)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("setns to the network namespace of pid %d: %w", pid, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
			// Left locked: the thread ends with this goroutine.
			done <- errors.Join(ferr, fmt.Errorf("setns back: %w", err))
			return
		}
		runtime.UnlockOSThread()
		done <- ferr
	}()
	return <-done
}

// WriteRecord records l in dir (atomically: written aside, then renamed).
func WriteRecord(dir string, l *Lock) error {
	b, err := json.MarshalIndent(l, "", "\t")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+RecordFile+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("network lock record: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, RecordFile)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("network lock record: %w", err)
	}
	return nil
}

// ReadRecord returns the lock recorded in dir, or nil when there is none.
func ReadRecord(dir string) (*Lock, error) {
	path := filepath.Join(dir, RecordFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("network lock record: %w", err)
	}
	var l Lock
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("network lock record %s: %w", path, err)
	}
	switch {
	case l.Method != NFTables && l.Method != IPTables:
		return nil, fmt.Errorf("network lock record %s: field method: %q is not nftables or iptables", path, l.Method)
	case !validName(l.Name):
		return nil, fmt.Errorf("network lock record %s: field name: %q is not a name fdrestore gives its locks", path, l.Name)
	}
	for i, c := range l.Conns {
		if !c.Src.IsValid() || !c.Dst.IsValid() {
			return nil, fmt.Errorf("network lock record %s: conns[%d]: missing address", path, i)
		}
	}
	return &l, nil
}

// RemoveRecord deletes the record in dir, if any.
func RemoveRecord(dir string) error {
	err := os.Remove(filepath.Join(dir, RecordFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("network lock record: %w", err)
	}
	return nil
}

// validName: fdrestore-lock- and 12 hex digits (no room for a script
// injected through a crafted record).
func validName(s string) bool {
	h, ok := strings.CutPrefix(s, "fdrestore-lock-")
	if !ok || len(h) != 12 {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil
}
