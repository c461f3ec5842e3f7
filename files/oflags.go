package files

import "golang.org/x/sys/unix"

// OLargefile is the kernel's O_LARGEFILE bit as it shows in recorded file
// flags. golang.org/x/sys/unix defines O_LARGEFILE as 0 on 64-bit
// platforms (open(2) implies it there), but the kernel still reports the
// bit in F_GETFL and /proc/PID/fdinfo, and CRIU records it.
const OLargefile = oLargefile

// OTmpfileOnly is the bit that makes open(2) create an unnamed file
// (__O_TMPFILE), without the O_DIRECTORY that unix.O_TMPFILE includes.
const OTmpfileOnly = unix.O_TMPFILE &^ unix.O_DIRECTORY
