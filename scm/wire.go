package scm

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// MaxFDs is the largest number of fds one message can carry (the kernel's
// SCM_MAX_FD).
const MaxFDs = 253

// MaxData is the largest number of data bytes one message can carry.
const MaxData = 16 << 10

const (
	headerLen   = 16
	wireMagic   = 0xFD
	wireVersion = 1
	// maxDatagram is the longest valid datagram.
	maxDatagram = headerLen + 4*MaxFDs + MaxData
)

// Kind says what a message means. Kind 0 is invalid on the wire; the
// transport itself only produces KindFDs (for batches made by Queue). Other
// kinds are for the caller to define; values from KindUser up are never
// used by this package.
type Kind uint8

// Message kinds.
const (
	// KindFDs is a batch of fds made by Transport.Queue; Keys[i] says
	// which fle FDs[i] is for.
	KindFDs Kind = 1
	// KindReached tells the receiver that dependency-graph nodes of the
	// sender were reached. By convention Data holds the node numbers, see
	// AppendUint32s.
	KindReached Kind = 2
	// KindAbort tells the receiver that the sender gave up. By convention
	// Data holds a human-readable reason.
	KindAbort Kind = 3
	// KindUser is the first kind reserved for callers.
	KindUser Kind = 64
)

// String returns a short name for k.
func (k Kind) String() string {
	switch k {
	case KindFDs:
		return "fds"
	case KindReached:
		return "reached"
	case KindAbort:
		return "abort"
	}
	return fmt.Sprintf("kind %d", uint8(k))
}

// Message is one datagram of the transport.
//
// On send, From is ignored (the transport fills in its own task), Keys and
// FDs must have the same length (at most MaxFDs) and Data at most MaxData
// bytes. On receive, FDs are raw descriptors, CLOEXEC, owned by whoever
// received the Message.
type Message struct {
	Kind Kind     // what the message means; not 0
	From uint32   // sending task
	Keys []uint32 // one key per fd, e.g. the fle index the fd is for
	FDs  []int    // the descriptors, in the same order as Keys
	Data []byte   // opaque payload, e.g. a control message's arguments
}

// ErrProtocol is wrapped by every error about a malformed or unexpected
// datagram.
var ErrProtocol = errors.New("protocol violation")

// check validates m for sending.
func (m *Message) check() error {
	switch {
	case m.Kind == 0:
		return errors.New("message kind 0 is invalid")
	case len(m.Keys) != len(m.FDs):
		return fmt.Errorf("message has %d keys for %d fds", len(m.Keys), len(m.FDs))
	case len(m.FDs) > MaxFDs:
		return fmt.Errorf("message has %d fds, at most %d fit in one message", len(m.FDs), MaxFDs)
	case len(m.Data) > MaxData:
		return fmt.Errorf("message has %d data bytes, at most %d allowed", len(m.Data), MaxData)
	}
	for i, fd := range m.FDs {
		if fd < 0 {
			return fmt.Errorf("message fd #%d is %d", i, fd)
		}
	}
	return nil
}

// encodeMessage returns the datagram body for a message from task from.
// The message must have passed check.
func encodeMessage(kind Kind, from uint32, keys []uint32, data []byte) []byte {
	b := make([]byte, headerLen, headerLen+4*len(keys)+len(data))
	b[0] = wireMagic
	b[1] = wireVersion
	b[2] = byte(kind)
	binary.LittleEndian.PutUint32(b[4:], from)
	binary.LittleEndian.PutUint16(b[8:], uint16(len(keys)))
	binary.LittleEndian.PutUint32(b[12:], uint32(len(data)))
	for _, k := range keys {
		b = binary.LittleEndian.AppendUint32(b, k)
	}
	return append(b, data...)
}

// decodeMessage parses a datagram body that arrived with nfds fds. The
// returned Message copies everything it needs from b; its FDs are not set.
// It never panics, whatever b holds.
func decodeMessage(b []byte, nfds int) (Message, error) {
	if len(b) < headerLen {
		return Message{}, fmt.Errorf("datagram of %d bytes is shorter than the %d-byte header", len(b), headerLen)
	}
	if b[0] != wireMagic || b[1] != wireVersion {
		return Message{}, fmt.Errorf("bad magic/version %#02x/%d", b[0], b[1])
	}
	if b[3] != 0 || b[10] != 0 || b[11] != 0 {
		return Message{}, errors.New("reserved header bytes are not zero")
	}
	kind := Kind(b[2])
	if kind == 0 {
		return Message{}, errors.New("kind 0 is invalid")
	}
	nkeys := int(binary.LittleEndian.Uint16(b[8:]))
	ndata := uint64(binary.LittleEndian.Uint32(b[12:]))
	if nkeys > MaxFDs {
		return Message{}, fmt.Errorf("header claims %d keys, at most %d allowed", nkeys, MaxFDs)
	}
	if ndata > MaxData {
		return Message{}, fmt.Errorf("header claims %d data bytes, at most %d allowed", ndata, MaxData)
	}
	if want := uint64(headerLen) + 4*uint64(nkeys) + ndata; uint64(len(b)) != want {
		return Message{}, fmt.Errorf("datagram is %d bytes, header says %d (%d keys, %d data bytes)", len(b), want, nkeys, ndata)
	}
	if nkeys != nfds {
		return Message{}, fmt.Errorf("header claims %d keys but %d fds arrived", nkeys, nfds)
	}
	m := Message{Kind: kind, From: binary.LittleEndian.Uint32(b[4:])}
	p := b[headerLen:]
	if nkeys > 0 {
		m.Keys = make([]uint32, nkeys)
		for i := range m.Keys {
			m.Keys[i] = binary.LittleEndian.Uint32(p[4*i:])
		}
		p = p[4*nkeys:]
	}
	if len(p) > 0 {
		m.Data = append([]byte(nil), p...)
	}
	return m, nil
}

// AppendUint32s appends vs to b as little-endian uint32s. It is the
// conventional encoding of a list of numbers in Message.Data, for example
// the nodes of a KindReached message.
func AppendUint32s(b []byte, vs ...uint32) []byte {
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	return b
}

// ParseUint32s decodes data written by AppendUint32s. It fails if the
// length of data is not a multiple of 4.
func ParseUint32s(data []byte) ([]uint32, error) {
	if len(data)%4 != 0 {
		return nil, fmt.Errorf("scm: %d bytes is not a list of uint32s: %w", len(data), ErrProtocol)
	}
	vs := make([]uint32, len(data)/4)
	for i := range vs {
		vs[i] = binary.LittleEndian.Uint32(data[4*i:])
	}
	return vs, nil
}
