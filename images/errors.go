package images

import (
	"errors"
	"fmt"
)

// Sentinel errors wrapped by *FormatError; test with errors.Is.
var (
	// ErrTruncated: the file ends inside a magic, a length, an entry or a
	// trailer.
	ErrTruncated = errors.New("truncated")
	// ErrBadMagic: a framing or image magic is not what the file must hold.
	ErrBadMagic = errors.New("bad magic")
	// ErrTooLarge: a length is larger than what remains of the file or than
	// fdrestore's limit for one entry.
	ErrTooLarge = errors.New("length exceeds what the file holds")
	// ErrBadEntry: an entry's protobuf does not decode (garbage, a missing
	// required field, a wrong wire type).
	ErrBadEntry = errors.New("entry does not decode")
	// ErrInvalid: the images decode but contradict each other or the rules
	// of the format (dangling ids, duplicate fds, missing payloads, ...).
	ErrInvalid = errors.New("invalid image")
	// ErrMissing: an image the directory must contain is not there.
	ErrMissing = errors.New("missing image")
)

// FormatError says what is wrong with an image: which file, which entry
// (index from 0, and its byte offset), which field, and why. Entry is -1 for
// errors that concern the file as a whole, Offset -1 when not known.
type FormatError struct {
	File   string // image file name, e.g. "fdinfo-2.img"
	Entry  int    // entry index, or -1
	Offset int64  // byte offset of the entry (or of the bad bytes), or -1
	Field  string // field or part, e.g. "length", "magic", "id"
	Err    error  // wraps one of the sentinel errors
}

func (e *FormatError) Error() string {
	s := e.File
	if e.Entry >= 0 {
		s += fmt.Sprintf(" entry %d", e.Entry)
	}
	if e.Offset >= 0 {
		s += fmt.Sprintf(" (offset %d)", e.Offset)
	}
	if e.Field != "" {
		s += " field " + e.Field
	}
	return s + ": " + e.Err.Error()
}

func (e *FormatError) Unwrap() error { return e.Err }

// errf builds a *FormatError wrapping sentinel with a formatted detail.
func errf(file string, entry int, off int64, field string, sentinel error, format string, args ...any) *FormatError {
	err := sentinel
	if format != "" {
		err = fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...))
	}
	return &FormatError{File: file, Entry: entry, Offset: off, Field: field, Err: err}
}
