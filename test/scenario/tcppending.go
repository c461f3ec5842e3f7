package main

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// tcp-pending: a listener (root fd 3, 127.0.0.1:7900) with two accepted
// connections (root fds 4 and 5; their clients in the child, fds 3 and 4,
// bound to 40901 and 40902) and two connections not yet accepted: the
// first from the child (fd 5, 40903), which sent "early-1", the second
// from root itself (fd 6, 40904), which sent nothing. After restore the
// listener accepts the pending connections in that order, the first with
// its recorded bytes, and every connection carries data both ways.
const tcpPendingEarly = "early-1"

func init() {
	register("tcp-pending", map[string]*Role{
		"root": {
			Fds:      std(3, 4, 5, 6),
			Children: children("client"),
			Setup: func(t *T) error {
				if err := tcpLoUp(); err != nil {
					return err
				}
				l, err := t.tcpListen(7900, 8)
				if err != nil {
					return err
				}
				if _, err := t.Spawn("client", nil); err != nil {
					return err
				}
				a1, err := t.acceptHi(l)
				if err != nil {
					return err
				}
				a2, err := t.acceptHi(l)
				if err != nil {
					return err
				}
				// The child says on its first connection that its
				// pending connection is made and its bytes sent.
				if _, err := ReadFull(a1, 1); err != nil {
					return fmt.Errorf("the child's go: %w", err)
				}
				p2, err := t.tcpDial(sa4(40904), 7900)
				if err != nil {
					return err
				}
				for i, fd := range []int{l, a1, a2, p2} {
					if err := t.Place(fd, 3+i); err != nil {
						return err
					}
				}
				return nil
			},
			Verify: func(t *T) {
				t.CheckAddrs(3, sa4(7900), nil)
				t.CheckSockopt(3, unix.SOL_SOCKET, unix.SO_ACCEPTCONN, 1, "SO_ACCEPTCONN")
				t.CheckAddrs(4, sa4(7900), sa4(40901))
				t.CheckAddrs(5, sa4(7900), sa4(40902))
				t.CheckAddrs(6, sa4(40904), sa4(7900))
				t.CheckTCPState(6, 1)
				t.CheckSockopt(6, unix.SOL_TCP, unix.TCP_REPAIR, 0, "TCP_REPAIR")
				t.CheckSockopt(6, unix.SOL_SOCKET, unix.SO_REUSEADDR, 0, "SO_REUSEADDR")
				// The queue, in its order.
				var acc [2]int
				for i, want := range []int{40903, 40904} {
					if err := pollIn(3, time.Now().Add(ioTimeout)); !t.Check(err, fmt.Sprintf("pending connection %d", i)) {
						return
					}
					a, peer, err := unix.Accept4(3, unix.SOCK_CLOEXEC)
					if !t.Check(err, fmt.Sprintf("accept pending connection %d", i)) {
						return
					}
					defer unix.Close(a)
					if saString(peer) != saString(sa4(want)) {
						t.Fail("pending connection %d comes from %s, want %s", i, saString(peer), saString(sa4(want)))
					}
					acc[i] = a
				}
				t.exchange(4, "", "s->c1", "c1->s")
				t.exchange(5, "", "s->c2", "c2->s")
				t.exchange(acc[0], tcpPendingEarly, "s->p1", "p1->s")
				// Both ends of the second pending connection are here.
				if !t.Check(WriteAll(6, []byte("p2->s")), "send on fd 6") {
					return
				}
				t.exchange(acc[1], "", "s->p2", "p2->s")
				got, err := ReadFull(6, len("s->p2"))
				if t.Check(err, "receive on fd 6") {
					t.CheckData("fd 6: data after restore", got, []byte("s->p2"))
				}
				t.checkNewConn(3, unix.AF_INET, sa4(7900))
			},
		},
		"client": {
			Fds: std(3, 4, 5),
			Setup: func(t *T) error {
				var fds []int
				for _, port := range []int{40901, 40902, 40903} {
					c, err := t.sockAt(unix.AF_INET, unix.SOCK_STREAM, sa4(port), false)
					if err != nil {
						return err
					}
					if err := unix.Connect(c, sa4(7900)); err != nil {
						return fmt.Errorf("connect from %d: %w", port, err)
					}
					fds = append(fds, c)
				}
				if err := WriteAll(fds[2], []byte(tcpPendingEarly)); err != nil {
					return err
				}
				if err := WriteAll(fds[0], []byte("g")); err != nil {
					return err
				}
				for i, fd := range fds {
					if err := t.Place(fd, 3+i); err != nil {
						return err
					}
				}
				return nil
			},
			Verify: func(t *T) {
				t.CheckAddrs(5, sa4(40903), sa4(7900))
				t.CheckTCPState(5, 1)
				t.CheckSockopt(5, unix.SOL_TCP, unix.TCP_REPAIR, 0, "TCP_REPAIR")
				t.exchange(3, "", "c1->s", "s->c1")
				t.exchange(4, "", "c2->s", "s->c2")
				t.exchange(5, "", "p1->s", "s->p1")
			},
		},
	})
}
