// Package openers links every opener type of the files engine into a
// binary: importing it (for its side effects) registers them all with
// files.Register. The restore helper (package restore/helper, and so
// cmd/fdrestore-helper and every program that embeds restore) imports it,
// so a helper can restore every type the planner plans.
//
// Each opener package it names imports only files, scm, x/sys/unix and the
// standard library: never the image model or protobuf, which the lean
// helper binary must not link (see TestLeanImports).
package openers

import (
	_ "github.com/fdrestore/fdrestore/files/epoll"    // epoll sets and their registrations
	_ "github.com/fdrestore/fdrestore/files/eventfd"  // eventfds
	_ "github.com/fdrestore/fdrestore/files/inherit"  // descriptions the caller hands over
	_ "github.com/fdrestore/fdrestore/files/pipe"     // pipes and FIFOs
	_ "github.com/fdrestore/fdrestore/files/reg"      // regular files, directories, device nodes
	_ "github.com/fdrestore/fdrestore/files/signalfd" // signalfds
	_ "github.com/fdrestore/fdrestore/files/tcp"      // inet sockets, TCP repair
	_ "github.com/fdrestore/fdrestore/files/timerfd"  // timerfds
	_ "github.com/fdrestore/fdrestore/files/tty"      // ptys, controlling terminals, /dev/tty
	_ "github.com/fdrestore/fdrestore/files/unixsk"   // unix sockets with their queues
)
