package images

import (
	"fmt"
	"sort"
	"strings"

	"github.com/fdrestore/fdrestore/proto/criupb"
	"google.golang.org/protobuf/proto"
)

// Magic is a CRIU image magic number: the u32 that says which kind of image
// a file holds.
type Magic uint32

// Framing magics. Every image except inventory.img starts with one of these,
// followed by the image's own magic.
const (
	MagicCommon  Magic = 0x54564319 // IMG_COMMON
	MagicService Magic = 0x55105940 // IMG_SERVICE, for stats and irmap-cache
)

// ImageVersion is the only inventory img_version fdrestore reads and writes
// (CRIU's CRTOOLS_IMAGES_V1_1: images carry the common magic).
const ImageVersion = 2

// Image magics of CRIU 4.2 that fdrestore knows by name.
const (
	MagicInventory     Magic = 0x58313116
	MagicPstree        Magic = 0x50273030
	MagicFdinfo        Magic = 0x56213732
	MagicCore          Magic = 0x55053847
	MagicIDs           Magic = 0x54432030
	MagicMM            Magic = 0x57492820
	MagicFS            Magic = 0x51403912
	MagicFiles         Magic = 0x56303138
	MagicRegFiles      Magic = 0x50363636
	MagicRemapFpath    Magic = 0x59133954
	MagicGhostFile     Magic = 0x52583605
	MagicPipes         Magic = 0x56513555
	MagicPipesData     Magic = 0x56453709
	MagicFifo          Magic = 0x58364939
	MagicFifoData      Magic = 0x59333054
	MagicUnixSk        Magic = 0x54373943
	MagicInetSk        Magic = 0x56443851
	MagicSkQueues      Magic = 0x56264026
	MagicTCPStream     Magic = 0x51465506
	MagicTTYFiles      Magic = 0x59433025
	MagicTTYInfo       Magic = 0x59453036
	MagicTTYData       Magic = 0x59413026
	MagicEventpollFile Magic = 0x45023858
	MagicEventpollTfd  Magic = 0x44433746
	MagicEventfdFile   Magic = 0x44523722
	MagicSignalfd      Magic = 0x57323820
	MagicTimerfd       Magic = 0x50493712
	MagicSeccomp       Magic = 0x64413049
	MagicTimens        Magic = 0x43114433
	MagicStats         Magic = 0x57093306
)

// MagicFdrestoreExec is the magic of fdrestore-exec.img, fdrestore's own
// side image (after the common magic): what each task was running
// (fdrestore_exec_entry). It is deliberately not a CRIU magic; CRIU and crit
// do not know it, and CRIU ignores the file.
const MagicFdrestoreExec Magic = 0x46445845 // "EXDF" in little-endian bytes

// Trailer says what raw bytes follow an entry, and how many.
type Trailer int

const (
	// NoTrailer: entries follow each other directly.
	NoTrailer Trailer = iota
	// PipeDataTrailer: pipe_data_entry.bytes bytes of queued pipe or FIFO data.
	PipeDataTrailer
	// PacketTrailer: sk_packet_entry.length bytes of one queued packet.
	PacketTrailer
	// TCPStreamTrailer: inq_len bytes of receive queue, then outq_len bytes
	// of send queue.
	TCPStreamTrailer
	// GhostTrailer: a ghost-file image (see ghost.go). Entry 0 is a
	// ghost_file_entry; without chunks its trailer is the rest of the file
	// (the content), with chunks every further entry is a
	// ghost_chunk_entry followed by len bytes of data.
	GhostTrailer
)

// Kind describes one kind of image: its magic, how it is framed, the
// protobuf message of its entries and what follows each entry.
type Kind struct {
	Name    string // crit's name for the magic, e.g. "FILES"
	Magic   Magic
	Framing Magic // MagicCommon, MagicService, or 0 for inventory.img
	Trailer Trailer
	newMsg  func() proto.Message
}

// NewEntry returns an empty message of the kind's entry type.
func (k *Kind) NewEntry() proto.Message { return k.newMsg() }

// String returns the kind's name.
func (k *Kind) String() string { return k.Name }

// TrailerLen returns how many raw bytes follow entry m, which must be a
// message of the kind's entry type.
func (k *Kind) TrailerLen(m proto.Message) uint64 {
	switch k.Trailer {
	case PipeDataTrailer:
		return uint64(m.(*criupb.PipeDataEntry).GetBytes())
	case PacketTrailer:
		return uint64(m.(*criupb.SkPacketEntry).GetLength())
	case TCPStreamTrailer:
		e := m.(*criupb.TcpStreamEntry)
		return uint64(e.GetInqLen()) + uint64(e.GetOutqLen())
	}
	return 0
}

func kind(name string, m Magic, framing Magic, tr Trailer, f func() proto.Message) *Kind {
	return &Kind{Name: name, Magic: m, Framing: framing, Trailer: tr, newMsg: f}
}

// kinds lists every image kind fdrestore can decode, including CRIU's legacy
// per-type file images.
var kinds = []*Kind{
	kind("INVENTORY", MagicInventory, 0, NoTrailer, func() proto.Message { return new(criupb.InventoryEntry) }),
	kind("PSTREE", MagicPstree, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.PstreeEntry) }),
	kind("FDINFO", MagicFdinfo, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.FdinfoEntry) }),
	kind("CORE", MagicCore, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.CoreEntry) }),
	kind("IDS", MagicIDs, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.TaskKobjIdsEntry) }),
	kind("MM", MagicMM, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.MmEntry) }),
	kind("FS", MagicFS, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.FsEntry) }),
	kind("FILES", MagicFiles, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.FileEntry) }),
	kind("REG_FILES", MagicRegFiles, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.RegFileEntry) }),
	kind("REMAP_FPATH", MagicRemapFpath, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.RemapFilePathEntry) }),
	kind("GHOST_FILE", MagicGhostFile, MagicCommon, GhostTrailer, func() proto.Message { return new(criupb.GhostFileEntry) }),
	kind("PIPES", MagicPipes, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.PipeEntry) }),
	kind("PIPES_DATA", MagicPipesData, MagicCommon, PipeDataTrailer, func() proto.Message { return new(criupb.PipeDataEntry) }),
	kind("FIFO", MagicFifo, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.FifoEntry) }),
	kind("FIFO_DATA", MagicFifoData, MagicCommon, PipeDataTrailer, func() proto.Message { return new(criupb.PipeDataEntry) }),
	kind("UNIXSK", MagicUnixSk, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.UnixSkEntry) }),
	kind("INETSK", MagicInetSk, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.InetSkEntry) }),
	kind("SK_QUEUES", MagicSkQueues, MagicCommon, PacketTrailer, func() proto.Message { return new(criupb.SkPacketEntry) }),
	kind("TCP_STREAM", MagicTCPStream, MagicCommon, TCPStreamTrailer, func() proto.Message { return new(criupb.TcpStreamEntry) }),
	kind("TTY_FILES", MagicTTYFiles, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.TtyFileEntry) }),
	kind("TTY_INFO", MagicTTYInfo, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.TtyInfoEntry) }),
	kind("TTY_DATA", MagicTTYData, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.TtyDataEntry) }),
	kind("EVENTPOLL_FILE", MagicEventpollFile, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.EventpollFileEntry) }),
	kind("EVENTPOLL_TFD", MagicEventpollTfd, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.EventpollTfdEntry) }),
	kind("EVENTFD_FILE", MagicEventfdFile, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.EventfdFileEntry) }),
	kind("SIGNALFD", MagicSignalfd, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.SignalfdEntry) }),
	kind("TIMERFD", MagicTimerfd, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.TimerfdEntry) }),
	kind("SECCOMP", MagicSeccomp, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.SeccompEntry) }),
	kind("TIMENS", MagicTimens, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.TimensEntry) }),
	kind("STATS", MagicStats, MagicService, NoTrailer, func() proto.Message { return new(criupb.StatsEntry) }),
	kind("FDRESTORE_EXEC", MagicFdrestoreExec, MagicCommon, NoTrailer, func() proto.Message { return new(criupb.FdrestoreExecEntry) }),
}

var (
	kindByMagic = map[Magic]*Kind{}
	kindByName  = map[string]*Kind{}
)

func init() {
	for _, k := range kinds {
		kindByMagic[k.Magic] = k
		kindByName[k.Name] = k
	}
}

// KindOf returns the image kind with magic m, or nil when fdrestore does not
// decode that kind.
func KindOf(m Magic) *Kind { return kindByMagic[m] }

// KindNamed returns the image kind with crit's name (e.g. "FDINFO"), or nil.
func KindNamed(name string) *Kind { return kindByName[name] }

// Kinds returns every decodable image kind, sorted by name.
func Kinds() []*Kind {
	out := append([]*Kind(nil), kinds...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// String names the magic the way crit does, or prints it in hex.
func (m Magic) String() string {
	switch m {
	case MagicCommon:
		return "IMG_COMMON"
	case MagicService:
		return "IMG_SERVICE"
	}
	if k := kindByMagic[m]; k != nil {
		return k.Name
	}
	return fmt.Sprintf("%#08x", uint32(m))
}

// KindForFile returns the kind an image file is expected to hold, judged by
// its base name (files.img, fdinfo-3.img, tcp-stream-13f102.img, ...), or nil
// for names fdrestore does not know.
func KindForFile(base string) *Kind {
	switch base {
	case "inventory.img":
		return kindByName["INVENTORY"]
	case "pstree.img":
		return kindByName["PSTREE"]
	case "files.img":
		return kindByName["FILES"]
	case "pipes-data.img":
		return kindByName["PIPES_DATA"]
	case "fifo-data.img":
		return kindByName["FIFO_DATA"]
	case "sk-queues.img":
		return kindByName["SK_QUEUES"]
	case "tty-info.img":
		return kindByName["TTY_INFO"]
	case "tty-data.img":
		return kindByName["TTY_DATA"]
	case "remap-fpath.img":
		return kindByName["REMAP_FPATH"]
	case "seccomp.img":
		return kindByName["SECCOMP"]
	case "fdrestore-exec.img":
		return kindByName["FDRESTORE_EXEC"]
	case "stats-dump", "stats-restore":
		return kindByName["STATS"]
	case "reg-files.img":
		return kindByName["REG_FILES"]
	case "pipes.img":
		return kindByName["PIPES"]
	case "fifo.img":
		return kindByName["FIFO"]
	case "unixsk.img":
		return kindByName["UNIXSK"]
	case "inetsk.img":
		return kindByName["INETSK"]
	case "tty.img":
		return kindByName["TTY_FILES"]
	case "eventfd.img":
		return kindByName["EVENTFD_FILE"]
	case "eventpoll.img":
		return kindByName["EVENTPOLL_FILE"]
	case "eventpoll-tfd.img":
		return kindByName["EVENTPOLL_TFD"]
	case "signalfd.img":
		return kindByName["SIGNALFD"]
	case "timerfd.img":
		return kindByName["TIMERFD"]
	}
	for prefix, name := range map[string]string{
		"fdinfo-": "FDINFO", "core-": "CORE", "ids-": "IDS", "mm-": "MM",
		"fs-": "FS", "tcp-stream-": "TCP_STREAM", "timens-": "TIMENS",
		"ghost-file-": "GHOST_FILE",
	} {
		if strings.HasPrefix(base, prefix) && strings.HasSuffix(base, ".img") {
			return kindByName[name]
		}
	}
	return nil
}
