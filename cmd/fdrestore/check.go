package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/fdrestore/fdrestore/features"
	"github.com/spf13/cobra"
)

// featureJSON is one feature in check --json output.
type featureJSON struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Needed string `json:"needed,omitempty"`
	Detail string `json:"detail,omitempty"`
	Error  string `json:"error,omitempty"`
}

func (a *app) checkCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check that the kernel has what fdrestore needs",
		Long: `Probe every kernel feature fdrestore uses (pidfds, kcmp, TCP repair, ptys,
namespaces, ...) by exercising it, and print one line per feature. The exit
status is non-zero when a feature is missing.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fs := features.Probe()
			out := cmd.OutOrStdout()
			var err error
			if asJSON {
				err = writeFeaturesJSON(out, fs)
			} else {
				err = writeFeatures(out, fs)
			}
			if err != nil {
				return err
			}
			if missing := features.Missing(fs); len(missing) > 0 {
				names := make([]string, len(missing))
				for i, f := range missing {
					names[i] = f.Name
				}
				return fmt.Errorf("%d of %d features missing: %v", len(missing), len(fs), names)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the results as JSON")
	return cmd
}

func writeFeatures(w io.Writer, fs []features.Feature) error {
	for _, f := range fs {
		var err error
		if f.Available() {
			line := "ok   " + f.Name
			if f.Detail != "" {
				line += " [" + f.Detail + "]"
			}
			_, err = fmt.Fprintln(w, line)
		} else {
			_, err = fmt.Fprintf(w, "FAIL %s: %v (needed for: %s)\n", f.Name, f.Err, f.Needed)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func writeFeaturesJSON(w io.Writer, fs []features.Feature) error {
	doc := struct {
		OK       bool          `json:"ok"`
		Features []featureJSON `json:"features"`
	}{OK: true, Features: []featureJSON{}}
	for _, f := range fs {
		j := featureJSON{Name: f.Name, OK: f.Available(), Needed: f.Needed, Detail: f.Detail}
		if f.Err != nil {
			j.Error = f.Err.Error()
			doc.OK = false
		}
		doc.Features = append(doc.Features, j)
	}
	b, err := json.MarshalIndent(doc, "", "    ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
