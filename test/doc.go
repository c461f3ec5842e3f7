// Package zdtm is fdrestore's zdtm-style test suite: scenario programs
// (test/scenario) that build some fd state, are checkpointed with
// `fdrestore dump`, restored with `fdrestore restore`, and check their
// own state afterwards, plus a runner that compares the tree's state seen
// from outside before the dump and after each restore.
//
// One run (a scenario in a flavor) happens in a driver process: the test
// binary re-executed with ZDTM_DRIVER_CONFIG set. The driver
//
//  1. starts `scenario NAME` (a session leader, fds 0 = /dev/null, 1 and
//     2 = a log file in the work directory) and waits for "ready" on the
//     pipe at fd 3;
//  2. records the tree's state from outside (Capture): per task its
//     position in the tree, process group and session, and per fd the
//     type and target, status flags, FD_CLOEXEC, offset, pipe buffer size,
//     queued bytes and their hash (tee, without consuming), owner and
//     signal (through pidfd_getfd), which fds share an open file
//     description (kcmp) and which share an inode; pids, inode numbers
//     and description identities are replaced by names that do not
//     depend on the run;
//  3. per iteration (-zdtm.iters, default 2): `fdrestore dump`, checks the
//     tree is gone, restores with `--leave-stopped -d --pid-map` and
//     compares the stopped tree with the recorded state (Compare), kills
//     it, restores again with `--exec-recorded -d` so that every task
//     execs its recorded argv and environment, and waits for every task
//     to be back in its waiting state (comm "zdtm-wait"); the running
//     tree is compared again before the next dump;
//  4. sends SIGUSR2 to the root, which passes it down: every task checks
//     its fds (reads the queued data, writes through pipes and FIFOs and
//     checks the other end, checks flags, offsets, owners, ...) and
//     appends "NAME/ROLE: PASS" or "NAME/ROLE: FAIL: why" to the result
//     file; the root waits for its children and exits 0 only if all
//     passed;
//  5. kills whatever is left and prints a JSON Result on stdout.
//
// Flavors: h runs in the runner's namespaces (the driver is a child
// subreaper; every process of a run carries ZDTM_RUN=<token> in its
// environment, which is how leftovers are found and killed); ns runs the
// driver as the init of fresh pid, mount, net, IPC and UTS namespaces
// with its own /proc and devpts instance (killing the driver ends
// everything). Expected-failure scenarios (crfail-*) require the dump to
// refuse the tree with an exact error and the tree to keep running
// unharmed. Mutation tests doctor the images between dump and restore
// and require the comparison and the tasks' own checks to notice.
//
// Run it with `make zdtm` (T=pattern picks scenarios) or
// `go test ./test/ -run 'TestZdtm/.*pipe.*'`; -zdtm.flavors, -zdtm.iters,
// -zdtm.run, -zdtm.timeout, -zdtm.report FILE and -zdtm.v adjust it. It
// needs root.
package zdtm
