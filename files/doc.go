// Package files is the file-descriptor restore engine of fdrestore.
//
// Ordering between restore steps is expressed as an explicit stage graph
// (see [Graph]) rather than being hidden inside the per-type open
// callbacks. A node of the graph is a pair (object, [Stage]): for example
// "pipe file id 7 reached Created" or "unix socket id 3 reached Connected".
// An edge says that one node needs another: the waiter may only be worked
// on once its dependency has been reached.
//
// The life cycle of a graph is:
//
//  1. Build: [NewGraph], then [Graph.Node], [Graph.Need] and [Graph.Chain]
//     for every rule that applies to the objects found in the images.
//  2. Check: [Graph.Check] runs once, before any process is created. It
//     rejects inconsistent input and dependency cycles; a cycle is reported
//     as a [*CycleError] naming every object, stage and reason on it.
//  3. Run: every task takes a [Tracker] for the nodes it owns
//     ([Graph.Tracker]). The tracker hands out nodes whose dependencies are
//     met, is told with [Tracker.Done] when a stage is reached (locally or
//     in another task), and explains with [Tracker.Stalled] what every
//     unfinished node is still waiting for when the engine gives up.
//
// Completion of a node must be announced to the other tasks listed by
// [Graph.RemoteWaiters], and to no others.
package files
