package restore

import (
	"errors"
	"fmt"

	"github.com/fdrestore/fdrestore/internal/netlock"
)

// The network lock a dump set for its TCP connections (internal/netlock,
// recorded in the image directory) is removed once the whole tree is
// restored and every connection has left repair mode, and also when a
// restore fails after the tasks began to restore their fds (their
// sockets existed). It is removed in the restoring process's network
// namespace (where the restored sockets live). Options.NetworkLock
// "skip" leaves it in place (for a restore that is not the last, such
// as a --leave-stopped inspection).

// ErrNetworkLock is wrapped when the dump's network lock cannot be
// removed.
var ErrNetworkLock = errors.New("network lock")

// netUnlock is the coordinator's state of the lock.
type netUnlock struct {
	armed bool // the tasks were sent their fds: a failure removes the lock too
	done  bool
}

// checkNetworkLock validates Options.NetworkLock, before the run starts.
func checkNetworkLock(method string) error {
	switch method {
	case "", netlock.Skip, netlock.NFTables, netlock.IPTables:
		return nil
	}
	return fmt.Errorf("restore: %w: unknown method %q (want nftables, iptables or skip)", ErrNetworkLock, method)
}

// unlockNetwork removes the dump's lock, once.
func (c *coordinator) unlockNetwork() error {
	if c.nl.done {
		return nil
	}
	c.nl.done = true
	if c.opts.NetworkLock == netlock.Skip {
		return nil
	}
	if c.plan.Set == nil || c.plan.Set.Dir == "" {
		return nil // images built in memory: no dump, no lock
	}
	l, err := netlock.ReadRecord(c.plan.Set.Dir)
	if err != nil {
		return fmt.Errorf("restore: %w: %v", ErrNetworkLock, err)
	}
	if l == nil {
		return nil
	}
	if c.opts.NetworkLock != "" && c.opts.NetworkLock != l.Method {
		c.log.Warnf("network lock: the dump locked with %s (%s); removing that, not %s", l.Method, l.Name, c.opts.NetworkLock)
	}
	if ino, err := netlock.NetnsInode(0); err == nil && ino != l.Netns {
		c.log.Warnf("network lock %s was set in network namespace %d, the restore runs in %d", l.Name, l.Netns, ino)
	}
	if err := l.Remove(0); err != nil {
		if errors.Is(err, netlock.ErrNotFound) {
			c.log.WithError(err).Warn("network lock already gone")
			return nil
		}
		return fmt.Errorf("restore: %w: %v", ErrNetworkLock, err)
	}
	c.log.WithField("lock", l.Name).Info("network lock removed")
	return nil
}

// unlockAfterFailure removes the lock after a failed restore whose
// sockets existed; its error joins the restore's.
func (c *coordinator) unlockAfterFailure(err error) error {
	if !c.nl.armed {
		return err
	}
	if uerr := c.unlockNetwork(); uerr != nil {
		return errors.Join(err, uerr)
	}
	return err
}
