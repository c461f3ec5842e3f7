// Package scm moves raw file descriptors between the restore helper
// processes of one restore run, using SCM_RIGHTS over AF_UNIX datagram
// sockets, and carries the small control messages that go with them.
//
// # Endpoints and addressing
//
// Every restored task has one receive endpoint: an AF_UNIX SOCK_DGRAM
// socket (CLOEXEC, NONBLOCK) bound in the abstract namespace to
// [Addr](runID, task), i.e. "@fdrestore/<runID>/r<task>" (the leading '@'
// is golang.org/x/sys/unix's spelling of the NUL byte that marks an abstract
// name). The run ID makes names unique per restore run, so parallel
// restores of trees with the same task numbering never collide; use
// [NewRunID] to make one. The coordinator should create every task's
// receive socket (with [Open]) before any helper starts sending, and hand
// it to the helper, which takes it over with [Adopt]; then no peer ever has
// to wait for another to bind. Abstract names are scoped to a network
// namespace: all endpoints of a run, and every sender socket, must be
// created in the same one.
//
// Sending does not go through the receive endpoint. For each destination a
// task sends to, the transport lazily creates one sender socket, binds it to
// "@fdrestore/<runID>/s<from>.<to>" and connect(2)s it to the destination's
// receive address. The connection is what makes non-blocking sends
// pollable: the kernel reports POLLOUT on an unconnected datagram socket
// even while the destination's receive queue is full (only the sender's own
// buffer is checked), so a sender that got EAGAIN could only spin or sleep
// blindly. A connected sender socket is woken exactly when the receiver
// dequeues. The sender's bound name also lets the receiver check that a
// message's From field matches the socket it came from. This check catches
// mistakes and stray traffic; it is not a security boundary (any process in
// the network namespace can reach abstract sockets), which is one more
// reason to use an unguessable run ID.
//
// # Wire format
//
// One datagram is one [Message]: a 16-byte header, one little-endian uint32
// key per fd, then the opaque data bytes; the fds travel as a single
// SCM_RIGHTS control message.
//
//	off  size  field
//	0    1     magic 0xFD
//	1    1     version (1)
//	2    1     kind (0 is invalid)
//	3    1     reserved, 0
//	4    4     from: sending task
//	8    2     nkeys: number of keys = number of fds (<= MaxFDs)
//	10   2     reserved, 0
//	12   4     ndata: length of data (<= MaxData)
//	16   4*nkeys keys
//	..   ndata data
//
// The receiver accepts a datagram only if it was not truncated (MSG_TRUNC,
// MSG_CTRUNC), its length is exactly 16+4*nkeys+ndata, the header is
// well-formed, the number of fds received equals nkeys, it carries no
// control message other than SCM_RIGHTS, and it came from the sender socket
// that From names. Anything else is an error wrapping [ErrProtocol], and the
// fds that arrived with it are closed before Drain returns.
//
// # Sending
//
// [Transport.Queue] adds one (key, fd) pair to the open batch of a
// destination; every MaxFDs pairs become one message of kind [KindFDs].
// [Transport.Post] and [Transport.PostMessage] append a message (control
// messages usually carry no fds). Per destination, messages reach the
// receiver in exactly the order they were queued or posted: posting first
// closes the destination's open batch, so an fd queued before a
// "dependency reached" notice arrives before it.
//
// Nothing is written to a socket until [Transport.Flush] (close all open
// batches, then send) or [Transport.TrySend] (send what is already packed).
// Both send as much as the receivers accept and return; they never block.
// Whatever the kernel refused with EAGAIN stays in a per-destination outbox:
// [Transport.Pending] reports it, and [Transport.Wait] (or [Wait] with
// [Transport.PollFDs]) sleeps until a receive or a retry can make progress.
//
// The transport does not dup queued fds: it keeps the raw numbers, and the
// kernel takes its own reference only when sendmsg succeeds. The caller must
// keep every queued fd open, and unchanged, until Pending reports false (or
// the transport has returned an error for that destination). A destination
// that fails for good (its socket is gone: ECONNREFUSED) has its outbox
// dropped and every later call for it returns the same error.
//
// # Receiving
//
// [Transport.Drain] reads every datagram that has arrived, without
// blocking, with MSG_CMSG_CLOEXEC, and hands each valid one to a callback.
// The received fds are raw ints owned by the callback. The receive queue of
// a unix datagram socket is short (net.unix.max_dgram_qlen, 10 by default),
// so a task that expects messages must keep draining whenever its endpoint
// is readable, also while it waits for other things; senders stall (without
// blocking) until it does.
//
// # Waiting
//
// Every wait has a deadline. [Wait] polls raw fds until one is ready or the
// deadline passes, and reports a timeout as an error wrapping [ErrTimeout]
// that names what was awaited.
//
// # Limits
//
// A Transport is not safe for concurrent use; each helper owns its own.
// Fds in flight are charged to the sending user and limited by
// RLIMIT_NOFILE unless the sender has CAP_SYS_RESOURCE or CAP_SYS_ADMIN
// (sendmsg then fails with ETOOMANYREFS).
package scm
