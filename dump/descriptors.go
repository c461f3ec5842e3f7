package dump

import (
	"os"
	"strconv"
)

// DescriptorsFile is the file Dump writes into the image directory beside
// the images: a JSON array of what the root task's fds 0, 1 and 2 were
// (their /proc/PID/fd links, e.g. "pipe:[123]" or "/dev/null"; "" for a
// closed one), the format runc and crun keep as descriptors.json.
// restore.ReadDescriptors and restore.InheritStdio map it to a caller's
// new stdio.
const DescriptorsFile = "descriptors.json"

// stdioLinks returns the links of pid's fds 0, 1 and 2.
func stdioLinks(pid int) []string {
	out := make([]string, 3)
	for i := range out {
		l, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/" + strconv.Itoa(i))
		if err == nil {
			out[i] = l
		}
	}
	return out
}
