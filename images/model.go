package images

import (
	"fmt"

	"github.com/fdrestore/fdrestore/proto/criupb"
)

// Set is the validated content of an image directory: the process tree,
// every fd table, every file description, and the per-type side tables,
// with every cross-reference resolved. Load builds it; nothing in a Set
// dangles.
type Set struct {
	Dir       string
	Inventory *criupb.InventoryEntry

	// Tasks in pstree order; Tasks[0] is the root of the tree.
	Tasks     []*Task
	TaskByPid map[uint32]*Task

	// Files holds files.img by file id; FileOrder keeps files.img order.
	Files     map[uint32]*File
	FileOrder []*File

	// FdTables by files_id (fdinfo-<files_id>.img). Tasks that share an fd
	// table point at the same FdTable.
	FdTables map[uint32]*FdTable

	// Pipes groups PIPE descriptions by pipe_id (the pipe's inode).
	Pipes map[uint32]*Pipe
	// Fifos groups FIFO descriptions by pipe_id.
	Fifos map[uint32]*Pipe

	// Packets queued on unix sockets (sk-queues.img), by the file id of the
	// socket whose receive queue holds them, in queue order.
	Packets map[uint32][]*Packet

	// TTYs by tty-info id, with their queued data (tty-data.img).
	TTYs map[uint32]*TTY

	// TCPStreams by socket inode (tcp-stream-<ino hex>.img).
	TCPStreams map[uint32]*TCPStream

	// Remaps by the id of the file they remap (remap-fpath.img).
	Remaps map[uint32]*criupb.RemapFilePathEntry

	// Ghosts (deleted files saved with their content) by remap id
	// (ghost-file-<id hex>.img), for the GHOST remaps in Remaps.
	Ghosts map[uint32]*Ghost
}

// Task is one process of the dumped tree.
type Task struct {
	Pid, PPid, Pgid, Sid uint32
	Threads              []uint32
	IDs                  *criupb.TaskKobjIdsEntry
	Core                 *criupb.CoreEntry // nil when core-PID.img is absent
	FS                   *criupb.FsEntry   // nil when fs-PID.img is absent
	Parent               *Task             // nil for the root
	Children             []*Task           // in pstree order
	Fds                  *FdTable
}

// SessionLeader reports whether the task leads its session.
func (t *Task) SessionLeader() bool { return t.Sid == t.Pid }

// GroupLeader reports whether the task leads its process group.
func (t *Task) GroupLeader() bool { return t.Pgid == t.Pid }

// FdTable is one fd table (fdinfo-<files_id>.img), sorted by fd number.
type FdTable struct {
	ID    uint32
	Fds   []*Fd
	Tasks []*Task // tasks using this table, in pstree order
	byNum map[uint32]*Fd
}

// Lookup returns the table's entry for fd number n, or nil.
func (t *FdTable) Lookup(n uint32) *Fd { return t.byNum[n] }

// MaxFd returns the highest fd number in the table, or -1 when empty.
func (t *FdTable) MaxFd() int {
	if len(t.Fds) == 0 {
		return -1
	}
	return int(t.Fds[len(t.Fds)-1].Num)
}

// Fd is one fd of one fd table: a number, its fd flags, and the file
// description it refers to.
type Fd struct {
	Num   uint32
	Flags uint32 // fd flags: FD_CLOEXEC
	Table *FdTable
	File  *File
	Index int // entry index in fdinfo-<files_id>.img
}

// Cloexec reports whether FD_CLOEXEC is set.
func (f *Fd) Cloexec() bool { return f.Flags&1 != 0 }

// File is one open file description (one files.img entry).
type File struct {
	ID    uint32
	Type  criupb.FdTypes
	Entry *criupb.FileEntry
	Index int   // entry index in files.img
	Fds   []*Fd // every fd that refers to it, in table then fd order

	// Resolved references, set where the type has them.
	Path *File // FIFO and TTY: the reg_file_entry naming the path
	Pipe *Pipe // PIPE and FIFO: the pipe it is an end of
	TTY  *TTY  // TTY: its tty-info entry
}

// Name returns a short description for messages, e.g. "file id 6 (PIPE)".
func (f *File) Name() string {
	return fmt.Sprintf("file id %d (%s)", f.ID, f.Type)
}

// Flags returns the description's status flags (open(2) flags) as recorded
// for its type, and false for types that record none.
func (f *File) Flags() (uint32, bool) {
	e := f.Entry
	switch f.Type {
	case criupb.FdTypes_REG:
		return e.GetReg().GetFlags(), true
	case criupb.FdTypes_PIPE:
		return e.GetPipe().GetFlags(), true
	case criupb.FdTypes_FIFO:
		if f.Path != nil {
			return f.Path.Entry.GetReg().GetFlags(), true
		}
	case criupb.FdTypes_TTY:
		return e.GetTty().GetFlags(), true
	case criupb.FdTypes_UNIXSK:
		return e.GetUsk().GetFlags(), true
	case criupb.FdTypes_INETSK:
		return e.GetIsk().GetFlags(), true
	case criupb.FdTypes_EVENTFD:
		return e.GetEfd().GetFlags(), true
	case criupb.FdTypes_EVENTPOLL:
		return e.GetEpfd().GetFlags(), true
	case criupb.FdTypes_SIGNALFD:
		return e.GetSgfd().GetFlags(), true
	case criupb.FdTypes_TIMERFD:
		return e.GetTfd().GetFlags(), true
	}
	return 0, false
}

// Pipe is one pipe or FIFO: its descriptions and its queued data.
type Pipe struct {
	ID      uint32  // pipe_id: the pipe's inode at dump time
	Ends    []*File // descriptions, in files.img order
	Data    []byte  // queued bytes (nil when none recorded)
	Size    uint32  // buffer size (F_GETPIPE_SZ), 0 when not recorded
	HasData bool    // a pipes-data/fifo-data entry exists
}

// Packet is one queued unix socket packet.
type Packet struct {
	Entry *criupb.SkPacketEntry
	Data  []byte
	Index int     // entry index in sk-queues.img
	Owner *File   // the socket whose queue holds it (id_for)
	Fds   []*File // files carried by SCM_RIGHTS, in order
}

// TTY is one tty (one side of a pty) with its queued data.
type TTY struct {
	Info  *criupb.TtyInfoEntry
	Data  []byte
	Files []*File // descriptions of this tty
}

// TCPStream is the content of a tcp-stream-<ino>.img.
type TCPStream struct {
	Ino   uint32
	Entry *criupb.TcpStreamEntry
	InQ   []byte
	OutQ  []byte
}
