package main

import (
	"github.com/fdrestore/fdrestore/images"
	"github.com/fdrestore/fdrestore/show"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
)

func (a *app) showCmd() *cobra.Command {
	var (
		dir     string
		payload bool
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "show (FILE... | -D DIR)",
		Short: "Print image files as JSON, or summarise an image directory",
		Long: `With FILE arguments, print each image as JSON the way crit show does:
{"magic": KIND, "entries": [...]}, one document per file. Raw payloads
(queued pipe, socket and TCP data) appear as "extra": their size, or with
--payload the bytes in base64.

With -D DIR, load the whole image directory and print the process tree and
every task's fds: flags, targets, and which other fds share each open file
description. --json prints the same summary as JSON.`,
		Example: `  fdrestore show files.img pipes-data.img
  fdrestore show --payload sk-queues.img
  fdrestore show -D /tmp/dump
  fdrestore show -D /tmp/dump --json`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case dir == "" && len(args) == 0:
				return usagef("show needs image files or -D DIR")
			case dir != "" && len(args) > 0:
				return usagef("show takes either image files or -D DIR, not both")
			case dir != "" && payload:
				return usagef("--payload applies to image files, not to -D")
			case dir == "" && asJSON:
				return usagef("--json applies to -D (image files are always shown as JSON)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			if dir != "" {
				logrus.WithField("dir", dir).Info("loading images")
				set, err := images.Load(dir)
				if err != nil {
					return err
				}
				sum := show.Summarize(set)
				if asJSON {
					return sum.WriteJSON(out)
				}
				return sum.WriteText(out)
			}
			for _, path := range args {
				logrus.WithField("file", path).Debug("decoding image")
				if err := show.WriteImage(out, path, show.ImageOptions{Payload: payload}); err != nil {
					return err
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&dir, "images-dir", "D", "", "summarise the image directory `DIR`")
	f.BoolVar(&payload, "payload", false, "show raw payloads in base64 instead of their size")
	f.BoolVar(&asJSON, "json", false, "with -D: print the summary as JSON")
	return cmd
}
