package scm

import (
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	childEnv      = "FDRESTORE_SCM_TEST_CHILD"
	childRunIDEnv = "FDRESTORE_SCM_TEST_RUNID"
	childModeEnv  = "FDRESTORE_SCM_TEST_MODE"
)

// TestMain turns the test binary into the child of TestCrossProcess when
// childEnv is set.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		if os.Getenv(childModeEnv) == "die" {
			os.Exit(3)
		}
		if err := childMain(os.Getenv(childRunIDEnv)); err != nil {
			fmt.Fprintf(os.Stderr, "scm test child: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// childMain is task 1 of a two-task run. Its endpoint is fd 3, made by the
// parent (task 0). It receives a pipe read end (key 7), reads the parent's
// text from it, and answers with a pipe read end of its own (key 9) that
// holds "from child", followed by a KindUser message echoing the text.
func childMain(runID string) error {
	tr, err := Adopt(3, runID, 1, Options{FDFloor: 100})
	if err != nil {
		return err
	}
	defer tr.Close()
	deadline := time.Now().Add(10 * time.Second)
	var got []byte
	for got == nil {
		if err := tr.Wait(deadline); err != nil {
			return err
		}
		err := tr.Drain(func(m Message) error {
			defer closeFDs(m.FDs)
			if m.Kind != KindFDs || m.From != 0 || len(m.Keys) != 1 || m.Keys[0] != 7 {
				return fmt.Errorf("unexpected message %+v", m)
			}
			buf := make([]byte, 64)
			n, err := unix.Read(m.FDs[0], buf)
			if err != nil {
				return fmt.Errorf("read received pipe: %w", err)
			}
			got = buf[:n]
			return nil
		})
		if err != nil {
			return err
		}
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	if _, err := unix.Write(p[1], []byte("from child")); err != nil {
		return err
	}
	unix.Close(p[1])
	if err := tr.Queue(0, 9, p[0]); err != nil {
		return err
	}
	if err := tr.Post(0, KindUser, got); err != nil {
		return err
	}
	if err := tr.Flush(); err != nil {
		return err
	}
	for tr.Pending() {
		if err := tr.Wait(deadline); err != nil {
			return err
		}
		if err := tr.TrySend(); err != nil {
			return err
		}
	}
	unix.Close(p[0]) // safe: sent
	return nil
}
