// Package show renders CRIU-format images for people and programs.
//
// It has two views:
//
//   - [WriteImage] and [ImageJSON] print one image file as JSON in the shape
//     of CRIU's crit ("crit show"): {"magic": KIND, "entries": [...]}, each
//     entry rendered with protojson under CRIU's field names, raw payloads
//     as an "extra" key.
//   - [Summarize] turns a loaded image directory ([images.Set]) into a
//     [Summary]: the process tree and, per task, its fds with decoded flags,
//     targets and the other fds sharing each open file description.
//     [Summary.WriteText] prints it for people; the Summary itself marshals
//     to JSON for programs.
//
// The fdrestore CLI's "show" command is a thin layer over this package.
package show
