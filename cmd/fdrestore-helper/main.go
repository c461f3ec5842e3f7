// Command fdrestore-helper is the process a restore is made of: fdrestore
// restore starts one per task of the restored tree (and per dead session or
// group leader it stands in for), each runs the files engine for its task
// and then stops or execs the task's program.
//
// It is a separate, lean binary so that each of those processes is small:
// it links the files engine, the opener types and the fd transport, but not
// the image model, protobuf or the CLI, whose code and package
// initialisers would otherwise be paged in by every helper. fdrestore looks
// for it next to its own executable (or at $FDRESTORE_HELPER) and falls
// back to re-executing itself. It is not meant to be run by hand.
package main

import (
	"fmt"
	"os"

	"github.com/fdrestore/fdrestore/restore/helper"
)

func main() {
	// Before anything else can open an fd: the low numbers belong to the
	// task being restored.
	helper.Maybe()
	fmt.Fprintf(os.Stderr, "fdrestore-helper: restore helper of fdrestore (protocol %s); fdrestore restore starts it, it is not run by hand\n", helper.Protocol)
	os.Exit(2)
}
