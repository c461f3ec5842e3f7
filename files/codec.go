package files

import (
	"encoding/binary"
	"errors"
)

// Enc builds the compact binary encoding that opener parameters use for
// OpenSpec.Data: unsigned varints, and length-prefixed bytes and strings.
// It is much cheaper than a gob stream per object.
type Enc struct{ B []byte }

// Uint appends v.
func (e *Enc) Uint(v uint64) { e.B = binary.AppendUvarint(e.B, v) }

// Bool appends b.
func (e *Enc) Bool(b bool) {
	if b {
		e.Uint(1)
	} else {
		e.Uint(0)
	}
}

// Bytes appends b with its length.
func (e *Enc) Bytes(b []byte) { e.Uint(uint64(len(b))); e.B = append(e.B, b...) }

// String appends s with its length.
func (e *Enc) String(s string) { e.Uint(uint64(len(s))); e.B = append(e.B, s...) }

// Fown appends f.
func (e *Enc) Fown(f Fown) {
	e.Uint(uint64(f.PidType))
	e.Uint(uint64(f.Pid))
	e.Uint(uint64(f.Signum))
}

// errShort is the error of a Dec that ran out of bytes.
var errShort = errors.New("opener parameters: truncated or malformed")

// Dec reads what Enc wrote. After the first problem every read returns
// zero and Err reports it.
type Dec struct {
	B   []byte
	Err error
}

// Uint reads an unsigned varint.
func (d *Dec) Uint() uint64 {
	if d.Err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.B)
	if n <= 0 {
		d.Err = errShort
		return 0
	}
	d.B = d.B[n:]
	return v
}

// Uint32 reads an unsigned varint that must fit 32 bits.
func (d *Dec) Uint32() uint32 {
	v := d.Uint()
	if v > 1<<32-1 && d.Err == nil {
		d.Err = errShort
	}
	return uint32(v)
}

// Bool reads a bool.
func (d *Dec) Bool() bool { return d.Uint() != 0 }

// Bytes reads length-prefixed bytes (a sub-slice of the input).
func (d *Dec) Bytes() []byte {
	n := d.Uint()
	if d.Err != nil || n > uint64(len(d.B)) {
		if d.Err == nil {
			d.Err = errShort
		}
		return nil
	}
	b := d.B[:n:n]
	d.B = d.B[n:]
	return b
}

// String reads a length-prefixed string.
func (d *Dec) String() string { return string(d.Bytes()) }

// Fown reads an Fown.
func (d *Dec) Fown() Fown {
	return Fown{PidType: d.Uint32(), Pid: d.Uint32(), Signum: d.Uint32()}
}

// Done returns the first error, or an error if bytes are left over.
func (d *Dec) Done() error {
	if d.Err == nil && len(d.B) != 0 {
		d.Err = errShort
	}
	return d.Err
}
