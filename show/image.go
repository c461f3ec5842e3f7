package show

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"

	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/proto/criupb"
	"google.golang.org/protobuf/encoding/protojson"
)

// ImageOptions control how an image is rendered as JSON.
type ImageOptions struct {
	// Payload renders the raw bytes that follow an entry (queued pipe,
	// socket or TCP data) in base64 under "extra". Without it, "extra"
	// holds their size as crit --nopl prints it ("13 B", "1.0 KB").
	Payload bool
}

// entryMarshal renders entries like crit: CRIU's field names, enums by
// name, 64-bit integers as strings, set proto2 fields even when zero. A
// missing required field is not an error here: show what is there.
var entryMarshal = protojson.MarshalOptions{UseProtoNames: true, AllowPartial: true}

// WriteImage decodes the image file at path and writes it to w as one
// indented JSON document followed by a newline. The kind of image is taken
// from the file's magic. Decoding errors are returned as they come from the
// images package (a *images.FormatError naming file, entry, offset and
// field) and nothing is written then.
func WriteImage(w io.Writer, path string, opts ImageOptions) error {
	kind, entries, err := images.ReadFile(path, nil)
	if err != nil {
		return err
	}
	out, err := ImageJSON(kind, entries, opts)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	out = append(out, '\n')
	_, err = w.Write(out)
	return err
}

// ImageJSON renders decoded entries of an image of the given kind as crit
// does: {"magic": NAME, "entries": [...]}, indented by four spaces, without
// a trailing newline. Trailing payloads appear as "extra" (see
// [ImageOptions]); for TCP_STREAM images, with Payload set, "extra" is an
// object {"in_q": BASE64, "out_q": BASE64}.
func ImageJSON(kind *images.Kind, entries []*images.Entry, opts ImageOptions) ([]byte, error) {
	var b bytes.Buffer
	name, _ := json.Marshal(kind.Name)
	b.WriteString(`{"magic":`)
	b.Write(name)
	b.WriteString(`,"entries":[`)
	for i, e := range entries {
		if i > 0 {
			b.WriteByte(',')
		}
		raw, err := entryMarshal.Marshal(e.Msg)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", e.Index, err)
		}
		// protojson's whitespace is deliberately unstable: compact it
		// before splicing "extra" in and indenting the whole document.
		var c bytes.Buffer
		if err := json.Compact(&c, raw); err != nil {
			return nil, fmt.Errorf("entry %d: %w", e.Index, err)
		}
		extra, err := extraJSON(kind, e, opts)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", e.Index, err)
		}
		obj := c.Bytes()
		if extra != nil {
			obj = obj[:len(obj)-1] // drop the closing brace
			if len(obj) > 1 {
				obj = append(obj, ',')
			}
			obj = append(obj, `"extra":`...)
			obj = append(obj, extra...)
			obj = append(obj, '}')
		}
		b.Write(obj)
	}
	b.WriteString(`]}`)
	var out bytes.Buffer
	if err := json.Indent(&out, b.Bytes(), "", "    "); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// extraJSON returns the JSON value of an entry's "extra" key, or nil when
// the entry gets none.
func extraJSON(kind *images.Kind, e *images.Entry, opts ImageOptions) ([]byte, error) {
	if kind.Trailer == images.NoTrailer {
		return nil, nil
	}
	if !opts.Payload {
		return json.Marshal(ByteCount(int64(len(e.Trailer))))
	}
	if kind.Trailer == images.TCPStreamTrailer {
		ts := e.Msg.(*criupb.TcpStreamEntry)
		inq := int(ts.GetInqLen())
		if inq > len(e.Trailer) {
			inq = len(e.Trailer)
		}
		return json.Marshal(struct {
			InQ  string `json:"in_q"`
			OutQ string `json:"out_q"`
		}{
			base64.StdEncoding.EncodeToString(e.Trailer[:inq]),
			base64.StdEncoding.EncodeToString(e.Trailer[inq:]),
		})
	}
	if len(e.Trailer) == 0 {
		return nil, nil // crit leaves out an empty payload
	}
	return json.Marshal(base64.StdEncoding.EncodeToString(e.Trailer))
}

// ByteCount formats a size the way crit --nopl does: "N B" below 1024,
// otherwise one decimal in binary units with single-letter prefixes
// ("1.0 KB", "1.5 MB").
func ByteCount(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	const prefixes = "KMGTPE"
	v := float64(n) / 1024
	i := 0
	for v >= 1024 && i < len(prefixes)-1 {
		v /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %cB", v, prefixes[i])
}
