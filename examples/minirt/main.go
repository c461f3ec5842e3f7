// Command minirt is a miniature container runtime built on fdrestore's Go
// API: it starts a process tree with stdio pipes of its own, checkpoints
// it with dump.Dump, restores it with restore.Restore onto new stdio pipes
// taken from the dump's descriptors.json (as runc does), and talks to the
// restored tree through them.
//
// The workload is a shell loop that answers every line it reads. fdrestore
// restores fds, not memory: the restored tree runs its recorded command
// again (restore.EndExecRecorded), with FDRESTORE_RESTORED=1 set, on the fd
// table of the dump.
//
// Run it as root: go run ./examples/minirt [-dir DIR] [-v]
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/fdrestore/fdrestore/dump"
	"github.com/fdrestore/fdrestore/restore"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// workload answers each line of stdin on stdout, says on stderr who it is.
const workload = `echo "${FDRESTORE_RESTORED:+restored }workload up" >&2
while read -r line; do echo "answer: $line"; done`

func main() {
	// A restore starts helper processes; without an installed
	// fdrestore-helper they re-execute this program, which must then
	// become the helper at once.
	restore.MaybeHelper()
	dir := flag.String("dir", "", "image directory (default: a temporary one, removed afterwards)")
	verbose := flag.Bool("v", false, "log the restore")
	flag.Parse()
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	if *verbose {
		log.SetLevel(logrus.DebugLevel)
	}
	if err := run(context.Background(), *dir, log, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "minirt:", err)
		os.Exit(1)
	}
}

// container is a running tree and the runtime's ends of its stdio.
type container struct {
	pid            int
	stdin          io.WriteCloser
	stdout, stderr *bufio.Reader
	closers        []io.Closer
}

func (c *container) close() {
	for _, f := range c.closers {
		f.Close()
	}
}

// ask writes a line to the container and reads its answer.
func (c *container) ask(line string) (string, error) {
	if _, err := io.WriteString(c.stdin, line+"\n"); err != nil {
		return "", err
	}
	return readLine(c.stdout)
}

func readLine(r *bufio.Reader) (string, error) {
	s, err := r.ReadString('\n')
	return strings.TrimSuffix(s, "\n"), err
}

// pipes makes three stdio pipes: the tree's ends and the runtime's.
func pipes() (tree [3]*os.File, mine [3]*os.File, err error) {
	for i := range 3 {
		r, w, err := os.Pipe()
		if err != nil {
			return tree, mine, err
		}
		if i == 0 {
			tree[i], mine[i] = r, w
		} else {
			tree[i], mine[i] = w, r
		}
	}
	return tree, mine, nil
}

// answerWait bounds how long the runtime waits for what a container
// prints: a workload that hangs fails the run instead of blocking it.
const answerWait = 30 * time.Second

func newContainer(pid int, tree, mine [3]*os.File) *container {
	for _, f := range tree {
		f.Close() // the tree holds them now
	}
	for _, f := range mine[1:] {
		f.SetReadDeadline(time.Now().Add(answerWait))
	}
	return &container{pid: pid, stdin: mine[0], stdout: bufio.NewReader(mine[1]), stderr: bufio.NewReader(mine[2]),
		closers: []io.Closer{mine[0], mine[1], mine[2]}}
}

func run(ctx context.Context, dir string, log *logrus.Logger, out io.Writer) error {
	if dir == "" {
		d, err := os.MkdirTemp("", "minirt-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	// 1. Start the container: its own session, stdio on our pipes.
	tree, mine, err := pipes()
	if err != nil {
		return err
	}
	cmd := exec.Command("/bin/sh", "-c", workload)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tree[0], tree[1], tree[2]
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	if err := cmd.Start(); err != nil {
		return err
	}
	c := newContainer(cmd.Process.Pid, tree, mine)
	defer c.close()
	hello, err := readLine(c.stderr)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return fmt.Errorf("container did not start: %w", err)
	}
	ans, err := c.ask("before")
	fmt.Fprintf(out, "started pid %d: %q, %q\n", c.pid, hello, ans)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return err
	}

	// 2. Checkpoint it: the tree is killed once the images are written.
	st, err := dump.Dump(ctx, c.pid, dir, dump.Options{Log: log})
	cmd.Wait()
	if err != nil {
		return fmt.Errorf("dump: %w", err)
	}
	c.close()
	descs, err := restore.ReadDescriptors(dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "dumped %d task(s), %d fds; stdio was %q\n", st.Tasks, st.Fds, descs)

	// 3. Restore it onto new stdio pipes.
	tree, mine, err = pipes()
	if err != nil {
		return err
	}
	var hooks []string
	hook := func(name string) func(context.Context, *restore.Result) error {
		return func(_ context.Context, res *restore.Result) error {
			s := name
			if res != nil {
				s = fmt.Sprintf("%s(root %d)", name, res.RootPid)
			}
			hooks = append(hooks, s)
			return nil
		}
	}
	res, err := restore.Restore(ctx, restore.Config{
		ImagesDir: dir,
		Plan:      restore.PlanOptions{Inherit: restore.InheritStdio(descs, tree[:]...)},
		Run: restore.Options{End: restore.EndExecRecorded, Timeout: 30 * time.Second, Log: log,
			Hooks: restore.Hooks{PreRestore: hook("pre-restore"), SetupNamespaces: hook("setup-namespaces"),
				PostRestore: hook("post-restore"), PreResume: hook("pre-resume"), PostResume: hook("post-resume")}},
	})
	if err != nil {
		for _, f := range append(tree[:], mine[:]...) {
			f.Close()
		}
		return fmt.Errorf("restore: %w", err)
	}
	if res.PidFd != nil {
		defer res.PidFd.Close()
	}
	c = newContainer(res.RootPid, tree, mine)
	defer c.close()
	fmt.Fprintf(out, "restored as pid %d in %v (tree %v, files %v, end %v); hooks: %s\n",
		res.RootPid, res.Took.Round(time.Microsecond), res.Timings.Tree.Round(time.Microsecond),
		res.Timings.Files.Round(time.Microsecond), res.Timings.End.Round(time.Microsecond), strings.Join(hooks, ", "))

	// 4. Talk to it through the new pipes, then let it finish.
	hello, err = readLine(c.stderr)
	if err != nil {
		return fmt.Errorf("restored container said nothing on its new stderr: %w", err)
	}
	ans, err = c.ask("after")
	fmt.Fprintf(out, "restored container: %q, %q\n", hello, ans)
	if err != nil {
		return err
	}
	if hello != "restored workload up" || ans != "answer: after" {
		return fmt.Errorf("unexpected answers from the restored container")
	}
	c.stdin.Close() // end of input: the loop ends
	return waitExit(res, 10*time.Second)
}

// waitExit waits for the restored root through its pidfd, then reaps it.
func waitExit(res *restore.Result, timeout time.Duration) error {
	if res.PidFd != nil {
		fds := []unix.PollFd{{Fd: int32(res.PidFd.Fd()), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(timeout.Milliseconds()))
		if err == nil && n == 0 {
			unix.Kill(res.RootPid, unix.SIGKILL)
			unix.Wait4(res.RootPid, nil, 0, nil)
			return errors.New("restored container did not exit")
		}
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(res.RootPid, &ws, 0, nil); err != nil {
		return fmt.Errorf("wait for the restored container: %w", err)
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		return fmt.Errorf("restored container ended with %v", ws)
	}
	return nil
}
