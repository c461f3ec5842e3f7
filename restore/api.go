package restore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/fdrestore/fdrestore/images"
)

// Config is everything Restore needs.
type Config struct {
	// ImagesDir is the image directory's path; ImagesDirFile an open
	// directory used instead (like CRIU's images_dir_fd). It must stay
	// open until Restore returns.
	ImagesDir     string
	ImagesDirFile *os.File
	// Plan tunes planning: inherited fds, shell job, external unix
	// sockets, file checks.
	Plan PlanOptions
	// Run chooses the end state, logging, timeout and hooks.
	Run Options
	// OnPlan, when set, sees the plan before anything runs; an error
	// stops the restore there.
	OnPlan func(*Plan) error
	// OnConsole, when set, hands over a console: if the tree had a
	// terminal from outside (a pty slave whose master is not in the
	// images), Restore gives it a fresh pty's slave instead and passes
	// the master to OnConsole once the fds are in place, before the tree
	// resumes (SendConsole sends it to a runc-style --console-socket).
	// The master is the callee's to close. An error aborts the restore.
	OnConsole func(master *os.File) error
}

// imagesPath returns the path to load the images from.
func (cfg *Config) imagesPath() (string, error) {
	switch {
	case cfg.ImagesDirFile != nil && cfg.ImagesDir != "":
		return "", errors.New("restore: set ImagesDir or ImagesDirFile, not both")
	case cfg.ImagesDirFile != nil:
		fd, err := fdOf(cfg.ImagesDirFile)
		if err != nil {
			return "", fmt.Errorf("restore: images directory: %w", err)
		}
		return fmt.Sprintf("/proc/self/fd/%d", fd), nil
	case cfg.ImagesDir != "":
		return cfg.ImagesDir, nil
	}
	return "", errors.New("restore: no image directory")
}

// Restore loads the images, plans the restore and runs it: the one call a
// runtime needs. The context cancels it (every process it created is then
// killed); Run.Timeout bounds it.
func Restore(ctx context.Context, cfg Config) (*Result, error) {
	dir, err := cfg.imagesPath()
	if err != nil {
		return nil, err
	}
	set, err := images.Load(dir)
	if err != nil {
		return nil, err
	}
	var cs *consoleState
	if cfg.OnConsole != nil {
		m, slave, err := NewConsole()
		if err != nil {
			return nil, err
		}
		cs = &consoleState{master: m, give: cfg.OnConsole}
		defer cs.close()
		cfg.Plan.Console = slave
	}
	p, err := NewPlan(set, cfg.Plan)
	if err != nil {
		return nil, err
	}
	if cs != nil {
		cs.used = p.Console
		cfg.Run.Hooks.PreResume = cs.hook(cfg.Run.Hooks.PreResume)
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	if cfg.OnPlan != nil {
		if err := cfg.OnPlan(p); err != nil {
			return nil, err
		}
	}
	return Run(ctx, p, cfg.Run)
}

// DescriptorsFile is the name of the runc-style descriptors.json that
// fdrestore dump writes into the image directory: a JSON array of the
// links the root task's fds 0, 1 and 2 had ("pipe:[123]", "/dev/null",
// "" for a closed fd).
const DescriptorsFile = "descriptors.json"

// ReadDescriptors reads the descriptors.json of an image directory.
func ReadDescriptors(dir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, DescriptorsFile))
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	var out []string
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("restore: %s: %w", filepath.Join(dir, DescriptorsFile), err)
	}
	return out, nil
}

// InheritStdio maps recorded stdio to the caller's new stdio, as runc does
// with descriptors.json: for each i with a new file stdio[i], the pipe or
// socket that fd i was at dump (descs[i], "pipe:[ino]" or "socket:[ino]")
// is replaced by stdio[i] wherever the tree holds it. Entries that name a
// path (/dev/null, a tty) are reopened as recorded and not mapped; an
// entry repeated (stdout and stderr on one pipe) is mapped once, to the
// first new file.
func InheritStdio(descs []string, stdio ...*os.File) []Inherit {
	var out []Inherit
	seen := map[string]bool{}
	for i, d := range descs {
		if i >= len(stdio) || stdio[i] == nil || seen[d] {
			continue
		}
		if strings.HasPrefix(d, "pipe:[") || strings.HasPrefix(d, "socket:[") {
			seen[d] = true
			out = append(out, Inherit{Key: d, File: stdio[i]})
		}
	}
	return out
}

// ErrDependencyCycle is wrapped by plan errors for objects that depend on
// each other in a cycle, which no order can restore: a cycle of the stage
// graph (errors.As gives its *files.CycleError) or datagram sockets
// connected in a ring.
var ErrDependencyCycle = errors.New("dependency cycle")

// cycleError marks an error as a dependency cycle, keeping its message and
// what it wraps.
type cycleError struct{ error }

func (e cycleError) Unwrap() error        { return e.error }
func (e cycleError) Is(target error) bool { return target == ErrDependencyCycle }
