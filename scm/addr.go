package scm

import (
	"encoding/hex"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// MaxRunIDLen is the longest run ID accepted, so that every address fits a
// sockaddr_un.
const MaxRunIDLen = 64

// NewRunID returns a fresh random run ID (16 hex digits).
func NewRunID() string {
	// getrandom(2) rather than crypto/rand: the restore helpers link this
	// package, and crypto's initialisation would cost each of them
	// resident memory. Up to 256 bytes never come back short once the
	// pool is initialised; a signal can interrupt the wait before that.
	var b [8]byte
	for {
		n, err := unix.Getrandom(b[:], 0)
		if err == nil && n == len(b) {
			break
		}
		if err != nil && err != unix.EINTR {
			panic("scm: getrandom: " + err.Error())
		}
	}
	return hex.EncodeToString(b[:])
}

// CheckRunID reports whether runID can be used in addresses: 1 to
// MaxRunIDLen characters from [A-Za-z0-9._].
func CheckRunID(runID string) error {
	if runID == "" || len(runID) > MaxRunIDLen {
		return fmt.Errorf("scm: run ID %q must be 1 to %d characters long", runID, MaxRunIDLen)
	}
	for i := 0; i < len(runID); i++ {
		c := runID[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_') {
			return fmt.Errorf("scm: run ID %q: character %q not allowed (use [A-Za-z0-9._])", runID, c)
		}
	}
	return nil
}

// Addr returns the abstract unix socket name of task's receive endpoint in
// run runID, in golang.org/x/sys/unix notation: the leading '@' stands for
// the NUL byte of an abstract name, so the result can be used as the Name
// of a unix.SockaddrUnix directly. runID should satisfy CheckRunID.
func Addr(runID string, task uint32) string {
	return "@fdrestore/" + runID + "/r" + strconv.FormatUint(uint64(task), 10)
}

// senderAddr is the name of the socket task from uses to send to task to.
func senderAddr(runID string, from, to uint32) string {
	return "@fdrestore/" + runID + "/s" + strconv.FormatUint(uint64(from), 10) + "." + strconv.FormatUint(uint64(to), 10)
}
