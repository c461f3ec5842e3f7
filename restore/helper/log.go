package helper

import (
	"errors"
	"fmt"

	"github.com/fdrestore/fdrestore/files"
	"github.com/sirupsen/logrus"
)

// A helper's log entries travel to the coordinator in Msg.Log (OpLog),
// encoded by logFormatter and decoded by DecodeLog: level, message, and
// each field as a key and its value's text (fmt's %v). The coordinator
// logs them again with its own logger.

// logFormatter is the helper logger's formatter.
type logFormatter struct{}

func (logFormatter) Format(e *logrus.Entry) ([]byte, error) {
	enc := files.Enc{B: make([]byte, 0, 64+len(e.Message))}
	enc.Uint(uint64(e.Level))
	enc.String(e.Message)
	enc.Uint(uint64(len(e.Data)))
	for k, v := range e.Data {
		enc.String(k)
		if err, ok := v.(error); ok {
			enc.String(err.Error())
		} else {
			enc.String(fmt.Sprint(v))
		}
	}
	return enc.B, nil
}

// DecodeLog parses a helper's log entry (Msg.Log).
func DecodeLog(b []byte) (logrus.Level, string, logrus.Fields, error) {
	d := files.Dec{B: b}
	level, msg := logrus.Level(d.Uint32()), d.String()
	n := d.Uint()
	if n > uint64(len(d.B)) {
		return 0, "", nil, errors.New("helper log entry: more fields than bytes")
	}
	fields := make(logrus.Fields, n)
	for i := uint64(0); i < n && d.Err == nil; i++ {
		k := d.String()
		fields[k] = d.String()
	}
	if err := d.Done(); err != nil {
		return 0, "", nil, fmt.Errorf("helper log entry: %w", err)
	}
	return level, msg, fields, nil
}
