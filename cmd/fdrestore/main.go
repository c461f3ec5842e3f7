// Command fdrestore checkpoints and restores the file-descriptor state of
// Linux process trees in CRIU's image format.
package main

import (
	"os"

	"github.com/fdrestore/fdrestore/restore"
)

func main() {
	// A restore helper must start before anything else opens an fd.
	restore.MaybeHelper()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}
