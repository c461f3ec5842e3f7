package scm

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// ErrTimeout is wrapped by the error a wait returns when its deadline
// passes.
var ErrTimeout = errors.New("deadline exceeded")

// Wait polls fds (with ppoll) until at least one of them is ready or the
// deadline passes, and returns the number of ready fds; their Revents are
// set in place (pass a slice with fds... to see them). what describes what
// is being waited for; it appears in the errors. A zero deadline is an
// error, as is a polled fd that is not open (POLLNVAL). When the deadline
// passes the error wraps ErrTimeout. Interrupted polls are restarted with
// the remaining time.
func Wait(deadline time.Time, what string, fds ...unix.PollFd) (int, error) {
	return wait(deadline, func() string { return what }, fds)
}

// WaitFunc is Wait with a description built only when an error reports
// it, for callers that wait often and pay to describe what they wait for.
func WaitFunc(deadline time.Time, what func() string, fds ...unix.PollFd) (int, error) {
	return wait(deadline, what, fds)
}

// wait is Wait with a lazily built description.
func wait(deadline time.Time, what func() string, fds []unix.PollFd) (int, error) {
	if deadline.IsZero() {
		return 0, fmt.Errorf("scm: refusing to wait for %s without a deadline", what())
	}
	start := time.Now()
	for {
		rem := time.Until(deadline)
		if rem < 0 {
			rem = 0
		}
		ts := unix.NsecToTimespec(rem.Nanoseconds())
		for i := range fds {
			fds[i].Revents = 0
		}
		n, err := unix.Ppoll(fds, &ts, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("scm: poll while waiting for %s: %w", what(), err)
		}
		if n == 0 {
			if rem > 0 && time.Now().Before(deadline) {
				continue // woke a little early
			}
			return 0, fmt.Errorf("scm: timed out after %s waiting for %s: %w",
				time.Since(start).Round(time.Millisecond), what(), ErrTimeout)
		}
		for _, p := range fds {
			if p.Revents&unix.POLLNVAL != 0 {
				return n, fmt.Errorf("scm: waiting for %s: fd %d is not open", what(), p.Fd)
			}
		}
		return n, nil
	}
}
