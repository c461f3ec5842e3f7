package show

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteText prints the summary for people: the tasks indented as a tree,
// each followed by its fd table (or a note where a shared fd table was
// already listed).
func (s *Summary) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	fmt.Fprintf(ew, "%s: %d tasks, %d fd tables, %d fds, %d file descriptions", s.Dir,
		s.Counts.Tasks, s.Counts.FdTables, s.Counts.Fds, s.Counts.Files)
	if s.Arch != "" {
		fmt.Fprintf(ew, ", %s", s.Arch)
	}
	fmt.Fprintln(ew)
	for _, t := range s.Tasks {
		indent := strings.Repeat("    ", t.Depth)
		fmt.Fprintf(ew, "\n%s%s\n", indent, t.headline())
		inner := indent + "    "
		switch {
		case t.FdsListedAt != 0:
			fmt.Fprintf(ew, "%sfd table %d shared with pid %s: listed at pid %d\n", inner, t.FdTable, pids(t.TableSharedWith), t.FdsListedAt)
			continue
		case len(t.TableSharedWith) > 0:
			fmt.Fprintf(ew, "%sfd table %d, shared with pid %s:\n", inner, t.FdTable, pids(t.TableSharedWith))
		}
		if len(t.Fds) == 0 {
			fmt.Fprintf(ew, "%s(no fds)\n", inner)
			continue
		}
		tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "%sFD\tTYPE\tFLAGS\tCLOEXEC\tID\tTARGET\tSHARES\n", inner)
		for _, fd := range t.Fds {
			cloexec := "-"
			if fd.Cloexec {
				cloexec = "cloexec"
			}
			fmt.Fprintf(tw, "%s%d\t%s\t%s\t%s\t%d\t%s\t%s\n", inner, fd.Fd, fd.Type, orDash(fd.Flags),
				cloexec, fd.FileID, fd.Target, fd.sharesText())
		}
		tw.Flush()
	}
	return ew.err
}

func (t *TaskSummary) headline() string {
	var b strings.Builder
	fmt.Fprintf(&b, "pid %d", t.Pid)
	if t.Comm != "" {
		fmt.Fprintf(&b, " (%s)", t.Comm)
	}
	fmt.Fprintf(&b, " ppid %d pgid %d sid %d", t.PPid, t.Pgid, t.Sid)
	var marks []string
	if t.SessionLeader {
		marks = append(marks, "session leader")
	}
	if t.GroupLeader {
		marks = append(marks, "group leader")
	}
	if len(marks) > 0 {
		fmt.Fprintf(&b, " [%s]", strings.Join(marks, ", "))
	}
	return b.String()
}

func (fd *FdSummary) sharesText() string {
	if len(fd.Shares) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(fd.Shares)+1)
	for _, r := range fd.Shares {
		if r.SameTable {
			parts = append(parts, fmt.Sprintf("fd %d", r.Fd))
		} else {
			parts = append(parts, fmt.Sprintf("pid %d fd %d", r.Pid, r.Fd))
		}
	}
	if fd.SharesOmitted > 0 {
		parts = append(parts, fmt.Sprintf("+%d more", fd.SharesOmitted))
	}
	return strings.Join(parts, ", ")
}

func pids(ps []uint32) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, ", ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// errWriter remembers the first write error so the printing code can stay
// linear.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}

// WriteJSON prints the summary as one indented JSON document followed by a
// newline.
func (s *Summary) WriteJSON(w io.Writer) error {
	b, err := json.MarshalIndent(s, "", "    ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
