//! Every bound the store, io, projection and server enforce, in one place.
//!
//! Names put the qualifier last (`EVENT_BYTES_MAX`, not `MAX_EVENT_BYTES`) so related limits sort together, and units
//! come before the qualifier (`CONNECTION_IDLE_SECS_MAX`). The `const _: () = { ... }` blocks at the end of each
//! section fail the build when two limits stop fitting each other.
//!
//! Sections: file names (model, tree), events and appends (store), reads (store, io), projections, journal, index
//! checkpoints, server.

// --- file names ------------------------------------------------------------------------------------------------

/// Longest file name (one path component) in bytes on the filesystems a store lives on (ext4, xfs, btrfs, tmpfs:
/// `NAME_MAX`). Every name below is bounded so that its file, and that file's temporary name, fit.
pub const FILE_NAME_BYTES_MAX: usize = 255;
/// Longest event type name accepted, in bytes: it becomes `Indices/EventType/<type>.json`.
pub const EVENT_TYPE_BYTES_MAX: usize = 200;
/// Longest tag key plus value accepted, in bytes: it becomes `Indices/Tags/<key>_<value>.json`. Kept at 240 (the
/// documented limit since the start, and .NET Opossum accepts such tags too); the temporary name of a 250-byte index
/// file is made shorter instead (`format::tmp_path` cuts the final name to leave room for its suffix), because a
/// temporary name only has to be unique and recognisable.
pub const TAG_BYTES_MAX: usize = 240;
/// Longest projection name accepted, in bytes: a directory name, and `_checkpoints/<name>.checkpoint`.
pub const PROJECTION_NAME_BYTES_MAX: usize = 200;
/// Longest projection key accepted, in bytes (of `K(key)`): `K(key).json` must fit a file name.
pub const PROJECTION_KEY_BYTES_MAX: usize = 200;
/// Longest projection tag index file name accepted, in bytes (`<lower k>_<lower v>.json`).
pub const PROJECTION_TAG_FILE_NAME_BYTES_MAX: usize = 250;

/// `.json`, the suffix of event, index and projection files.
const JSON_SUFFIX_BYTES: usize = ".json".len();
/// The longest final name the store or the projection store can create.
pub const FINAL_NAME_BYTES_MAX: usize = {
    let event_type = EVENT_TYPE_BYTES_MAX + JSON_SUFFIX_BYTES;
    // `S(key)_S(value).json`: `S()` never lengthens a name.
    let event_tag = TAG_BYTES_MAX + 1 + JSON_SUFFIX_BYTES;
    let projection_key = PROJECTION_KEY_BYTES_MAX + JSON_SUFFIX_BYTES;
    let checkpoint = PROJECTION_NAME_BYTES_MAX + ".checkpoint".len();
    let mut max = event_type;
    let others = [event_tag, projection_key, checkpoint, PROJECTION_TAG_FILE_NAME_BYTES_MAX];
    let mut i = 0;
    while i < others.len() {
        if others[i] > max {
            max = others[i];
        }
        i += 1;
    }
    max
};

const _: () = {
    // Every final name fits; its temporary name fits by construction (`format::tmp_path` cuts the final name to
    // `FILE_NAME_BYTES_MAX - TMP_SUFFIX_BYTES`; `format.rs` asserts that the suffix leaves room for a name, so this
    // module depends on no other).
    assert!(FINAL_NAME_BYTES_MAX <= FILE_NAME_BYTES_MAX);
    // Event files `<10+ digits>.json` and `.ledger` are far below the limit.
    assert!(20 + JSON_SUFFIX_BYTES <= FILE_NAME_BYTES_MAX);
};

// --- events and appends ----------------------------------------------------------------------------------------

/// Most events one append request may carry.
pub const APPEND_EVENTS_MAX: usize = 10_000;
/// Largest encoded event file accepted, in bytes.
pub const EVENT_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest total of encoded event bytes in one append request. Library callers may use all of it; over the socket
/// a request is one line of at most the server's frame limit (16 MiB by default), so a wire append is bounded by
/// that first. Decided (issue 12): the library limit stays 64 MiB (bulk imports in-process), larger than a frame.
pub const APPEND_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Append requests waiting for the writer; further appenders block (backpressure).
pub const APPEND_QUEUE_MAX: usize = 1024;
/// Most events one group commit writes; the rest wait for the next commit.
pub const GROUP_EVENTS_MAX: usize = 8192;
/// Event files read per `BatchIo::read_files` call while streaming a read (and while recovering or catching up).
pub const READ_BATCH_FILES_DEFAULT: usize = 1024;
/// With deferred index writes, the index flusher pauses at least this many times as long as its last flush took
/// (and at least the configured interval): flushes use at most ~1/(1 + factor) of the time.
pub const INDEX_FLUSH_PAUSE_FACTOR: u32 = 9;

const _: () = {
    // The largest event fits an append on its own.
    assert!(EVENT_BYTES_MAX <= APPEND_BYTES_MAX);
    // A request that is allowed at all commits in one group (a group takes at least one whole request).
    assert!(APPEND_EVENTS_MAX >= 1 && GROUP_EVENTS_MAX >= 1);
    assert!(READ_BATCH_FILES_DEFAULT >= 1 && INDEX_FLUSH_PAUSE_FACTOR >= 1);
};

/// After a write fault the writer re-runs recovery in place first after this long (`StoreOptions::
/// recovery_backoff_min`), doubling the wait after each failed attempt up to [`RECOVERY_BACKOFF_MAX`].
pub const RECOVERY_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(100);
/// Longest wait between in-place recovery attempts: on a full disk one attempt (a directory scan and a read of
/// the index files) every 5 s costs little, and freed space brings writes back within 5 s.
pub const RECOVERY_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);

const _: () = assert!(
    RECOVERY_BACKOFF_MIN.as_millis() > 0 && RECOVERY_BACKOFF_MIN.as_millis() <= RECOVERY_BACKOFF_MAX.as_millis()
);

/// Windows: the longest pause between attempts to open `.store.lock` with share mode 0 while another process (a
/// .NET writer, for one append) holds it open; the first pause is 1 ms, doubling up to this.
pub const STORE_LOCK_RETRY_MS_MAX: u64 = 50;

/// Deepest nesting of arrays and objects in an event's `data` and `metadata` (checked by a byte scan, without
/// recursion, in `model::validate_event`). Common JSON readers stop at 128 (serde_json among them), so a deeper
/// event could be stored but not read back by them.
pub const JSON_DEPTH_MAX: usize = 64;
/// serde_json's own recursion limit when it builds values (metadata is parsed into one).
const SERDE_JSON_RECURSION_LIMIT: usize = 128;
const _: () = assert!(JSON_DEPTH_MAX < SERDE_JSON_RECURSION_LIMIT);

/// Longest tracking source name (`"tracking": {"source": ..}` of an append), in bytes: it is stored in the journal
/// record of the append's last event and held in memory for every source.
pub const TRACKING_SOURCE_BYTES_MAX: usize = 256;
/// Most tracking sources a store remembers (each costs its name and two numbers in memory, rebuilt at open). An
/// append naming a new source beyond it fails with `limit_exceeded` and writes nothing.
pub const TRACKING_SOURCES_MAX: usize = 65_536;
/// How many of the most recent event ids (`"id"` of an event) the store remembers, id → position, to recognise a
/// retried append whose answer was lost (an idempotent replay). Rebuilt at open from the journal's tail. A retry
/// whose events have left the window is a new append (conditional ones then fail their condition as usual). About
/// 60 bytes each: 16 MB; at 30,000 id-carrying events/s a retry is recognised for ~9 s of such traffic, across
/// restarts too.
pub const EVENT_ID_WINDOW_MAX: usize = 1 << 18;
const _: () = {
    // A source name is a short key, not a payload: it fits a u16 length in the journal record.
    assert!(TRACKING_SOURCE_BYTES_MAX >= 1 && TRACKING_SOURCE_BYTES_MAX <= u16::MAX as usize);
    // The window holds at least one whole append and one whole group, so a retry of either is recognised at once.
    assert!(EVENT_ID_WINDOW_MAX >= APPEND_EVENTS_MAX && EVENT_ID_WINDOW_MAX >= GROUP_EVENTS_MAX);
};

/// Changes of the store's write status (poisoned, recovered) a watcher may fall behind by before it is told it
/// lagged (`Store::write_status_changes`); it then reads the current status.
pub const WRITE_STATUS_CHANGES_MAX: usize = 16;

// --- reads and io ----------------------------------------------------------------------------------------------

/// Threads of the thread-pool backend (and of the io_uring backend's pool for large write batches): I/O-bound
/// threads, not CPU-bound, so many more than cores (docs/io-engine.md has the measurements).
pub const IO_THREADS_DEFAULT: usize = 32;
/// Most files of one write batch held open at once (their descriptors wait for the final fsync round); bigger
/// batches are written in chunks of this size. Well below the 20,000-descriptor hard limit seen here.
pub const WRITE_OPEN_FILES_MAX: usize = 4096;
/// Directory descriptors one chunk of a write batch opens to create its `CreateNew` files by name relative to them
/// (`openat`: one path component walked per file); files in further directories are created by their whole path.
pub const WRITE_CREATE_DIR_FDS_MAX: usize = 16;
/// When the strategy allows `syncfs` (`Syncfs`, or `Auto` while little is dirty), from this many files and
/// directories to make durable at once one `syncfs(2)` replaces the per-file fsyncs (a single file is cheaper with
/// its own fdatasync).
pub const SYNCFS_MIN_TARGETS: usize = 3;
/// `SyncStrategy::Auto` uses `syncfs` only while the system's dirty and under-writeback page cache (besides the
/// barrier's own files) stays below this, so a `syncfs` costs at most ~10 ms more than the files it was for
/// (docs/io-engine.md, "Durability barriers").
pub const AUTO_SYNCFS_DIRTY_MAX_BYTES: u64 = 4 << 20;
/// Largest record `WriteMode::CommitInPlace` accepts: one disk sector, so a crash cannot tear it.
pub const IN_PLACE_RECORD_BYTES_MAX: usize = 512;

/// io_uring: descriptors (plain or direct) one `UringIo` keeps open at once for whole-file reads, over all its
/// rings. The process limit here is 20,000 and the store, the server and other backends need their own.
pub const URING_FDS_IN_FLIGHT_MAX: usize = 4096;
/// io_uring: per ring, a ring starts no new whole file while the grown buffers of large files in flight exceed this
/// (a single file larger than the limit is still read whole).
pub const URING_RING_BYTES_IN_FLIGHT_MAX: usize = 64 << 20;
/// io_uring: a helper ring (and thread) is only started for every this many files of a `read_files` call; smaller
/// calls run on the calling thread alone, where a thread spawn would cost more than it saves.
pub const FILES_PER_RING_MIN: usize = 128;
/// io_uring: directory descriptors one ring opens per call for relative opens; further directories use full paths.
pub const URING_DIR_FDS_PER_RING_MAX: usize = 16;
/// io_uring: entries of the fsync ring; barriers with more targets are submitted in rounds of this many.
pub const URING_FSYNC_ENTRIES_MAX: u32 = 256;

/// `BatchIo::read_extents`: bytes of extents being read at once, per call (thread pool) or per ring (io_uring). A
/// backend starts no further extent while this many bytes are outstanding; a single larger extent is still read whole.
pub const EXTENT_BYTES_IN_FLIGHT_MAX: usize = 64 << 20;
/// io_uring: extent reads one ring keeps submitted at once (each is one SQE and one CQE).
pub const EXTENT_READS_PER_RING_MAX: usize = 256;
/// io_uring: a helper ring (and thread) reads extents only for every this many extents of a call; smaller calls run
/// on the calling thread alone.
pub const EXTENTS_PER_RING_MIN: usize = 256;
/// io_uring: bytes one read operation asks for; a longer extent is read in several (the kernel caps one read at
/// about 2 GiB, and a short read is resubmitted for the rest anyway).
pub const EXTENT_READ_OP_BYTES_MAX: u32 = 1 << 30;

const _: () = {
    // Descriptors held by reads (whole files, all rings) and by one write batch fit the process limit seen here
    // (20,000) with room for the store's own files, the server's connections and a second backend.
    assert!(
        URING_FDS_IN_FLIGHT_MAX + WRITE_OPEN_FILES_MAX + WRITE_CREATE_DIR_FDS_MAX + URING_DIR_FDS_PER_RING_MAX * 64
            <= 10_000
    );
    // An in-place record must fit one 512-byte sector to be written atomically.
    assert!(IN_PLACE_RECORD_BYTES_MAX <= 512);
    // A read's byte count comes back in a CQE's `i32` result.
    assert!(EXTENT_READ_OP_BYTES_MAX <= i32::MAX as u32);
    // One op never asks for more than a call may have in flight unless one extent alone is larger.
    assert!(EXTENT_READ_OP_BYTES_MAX as usize >= EXTENT_BYTES_IN_FLIGHT_MAX);
    assert!(SYNCFS_MIN_TARGETS >= 2);
};

// --- the trash (store::trash) ----------------------------------------------------------------------------------

/// Threads that delete the trash's files at once. On a filesystem that discards freed blocks synchronously (ext4
/// mounted `discard`) one thread frees ~560 small files/s; deletions from many threads overlap their discards
/// outside the directory lock (~14x faster at 64 threads here).
pub const TRASH_EMPTY_THREADS_MAX: usize = 16;
/// Names one emptying round reads from a trash generation and deletes before it looks again (and before a stopping
/// emptier returns): bounds its memory and how long a close waits for it.
pub const TRASH_EMPTY_BATCH_FILES_MAX: usize = 1024;
/// The background emptier starts a new generation and empties the old ones at least this often while the store is
/// open (a close empties what is left, within `TRASH_EMPTY_AT_CLOSE_TIME_MAX`).
pub const TRASH_EMPTY_INTERVAL_MAX: std::time::Duration = std::time::Duration::from_millis(500);
/// How long a close spends emptying the trash; what is left then is deleted by the next open, in the background.
/// Short, because a stop waits for it: at 250 ms it was 0.29 s of a 1.87 s stop right after a fill and 0.17 of an
/// idle store's 0.23 s (the emptier checks it before every file, so it is not overrun).
pub const TRASH_EMPTY_AT_CLOSE_TIME_MAX: std::time::Duration = std::time::Duration::from_millis(50);
/// The store is busy writing its tree until this long after its last write through the trash; until then the
/// emptier deletes at most `TRASH_EMPTY_BUSY_FILES_PER_SEC_MAX`. Why: on ext4 without a journal every inode
/// allocation scans past the inodes freed in the last 60-360 s, so deleting while the mirror creates files slows
/// every create (checkpoints of 100,000 index files took 15-30 s with the trash emptied as it filled, 4-6 s with
/// it left alone; a stop right after a 1M-event fill 18-21 s against 5.4 s).
pub const TRASH_EMPTY_IDLE_MIN: std::time::Duration = std::time::Duration::from_secs(2);
/// Files per second the emptier deletes while the store is busy (see `TRASH_EMPTY_IDLE_MIN`): about what a
/// sustained load of small appends puts there (a ledger per mirror batch, a checkpoint's few index files), so that
/// the trash does not grow under it, and a small fraction of a bulk load's.
pub const TRASH_EMPTY_BUSY_FILES_PER_SEC_MAX: usize = 256;
/// Files the trash may hold (an upper bound: a write counts every file it replaced or created) before the emptier
/// deletes at full speed even while the store is busy: ~4 GiB of 4 KiB blocks, about the tree of a 1M-event store.
pub const TRASH_DEFERRED_FILES_MAX: u64 = 1 << 20;
/// The emptier's threads' nice value (Linux): the lowest priority, so deleting never takes CPU from appends or reads
/// (at nice 0 it halved a read-all running while it deleted a 1M-event load's trash).
pub const TRASH_EMPTY_NICE: i32 = 19;
const _: () = assert!(TRASH_EMPTY_THREADS_MAX >= 1 && TRASH_EMPTY_THREADS_MAX <= TRASH_EMPTY_BATCH_FILES_MAX);
const _: () = assert!(TRASH_EMPTY_IDLE_MIN.as_millis() > TRASH_EMPTY_INTERVAL_MAX.as_millis());
const _: () = assert!(TRASH_EMPTY_BUSY_FILES_PER_SEC_MAX >= 1);
const _: () = assert!(TRASH_DEFERRED_FILES_MAX >= TRASH_EMPTY_BATCH_FILES_MAX as u64);
/// Spare inodes the trash keeps for the mirror's checkpoints to overwrite instead of creating and freeing a file per
/// replaced index file (`io/spares.rs`); the old files of replacements beyond it go to the emptier. A checkpoint
/// writes its index files in chunks of `MIRROR_CHECKPOINT_CHUNK_FILES`, each reusing the spares the one before left,
/// so twice that keeps a warm pool creating nothing even when some spares are held open by readers or a chunk
/// replaces files of new tags (which take a spare and leave none).
pub const TRASH_SPARE_FILES_MAX: usize = 2 * MIRROR_CHECKPOINT_CHUNK_FILES;
const _: () = assert!(TRASH_SPARE_FILES_MAX >= MIRROR_CHECKPOINT_CHUNK_FILES);

// --- projections -----------------------------------------------------------------------------------------------
// (The projection cache's budget constants stay in `projection/cache.rs` for now: another change owns that file.)

/// Most puts one `put_many` may carry.
pub const PUT_MANY_MAX: usize = 10_000;
/// Largest projection state accepted, in bytes (minified).
pub const PROJECTION_STATE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest total of state bytes in one `put_many`.
pub const PUT_MANY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most tags one projection may carry.
pub const PROJECTION_TAGS_MAX: usize = 64;
/// Most tags one projection query may AND together.
pub const PROJECTION_QUERY_TAGS_MAX: usize = 64;
/// Projection requests waiting for the projection writer; further writers block (backpressure).
pub const PROJECTION_REQUEST_QUEUE_MAX: usize = 1024;
/// Most operations one projection group commit takes from the queue (a single larger `put_many` commits whole).
pub const PROJECTION_GROUP_OPS_MAX: usize = 8192;
/// Projection files read per `BatchIo::read_files` call while streaming `get_all` and `query`.
pub const PROJECTION_READ_BATCH_FILES_DEFAULT: usize = 1024;
/// Projection files read (and index files written) per `BatchIo` call while rebuilding at open.
pub const PROJECTION_OPEN_READ_BATCH_FILES_MAX: usize = 4096;

const _: () = assert!(PROJECTION_STATE_BYTES_MAX <= PUT_MANY_BYTES_MAX);

// --- journal ---------------------------------------------------------------------------------------------------

/// A segment is sealed (offset table written, a new segment started) once the next group would take it past this.
/// A group bigger than a whole segment gets a segment of its own, stretched to fit.
pub const JOURNAL_SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// Largest journal record: a 56-byte header, the event's type and tags (shorter than their JSON in the event file),
/// and an event file of up to the store's event limit (4 MiB): under 9 MiB.
pub const JOURNAL_RECORD_BYTES_MAX: usize = 9 << 20;
/// Reads coalesce the records of adjacent positions into extents of at most this many bytes (one `pread` each).
pub const JOURNAL_READ_EXTENT_BYTES_MAX: usize = 1 << 20;
/// Bytes of records a full scan (index rebuild, import, mirror catch-up) holds in memory at once.
pub const JOURNAL_SCAN_BYTES_MAX: usize = 16 << 20;
/// Most bytes one group commit hands the journal. The writer stops adding requests to a group once it holds half of
/// this, so one more request (at most the store's append byte limit, 64 MiB) still fits with the records' headers.
pub const JOURNAL_GROUP_BYTES_MAX: usize = 256 << 20;
/// The journal keeps its group write buffer between groups up to this capacity (a bigger group's is freed after it).
pub const JOURNAL_GROUP_BUFFER_KEPT_BYTES_MAX: usize = 8 << 20;
/// Zeros written (and `fdatasync`ed) in one step ahead of the active segment's write head, by the journal's
/// zero-fill thread; also what a new segment gets beyond its first group, on the commit path.
pub const JOURNAL_ZERO_CHUNK_BYTES_DEFAULT: u64 = 1 << 20;
/// How far ahead of the write head the active segment is kept zero-filled, at most: the bytes already in the
/// segment, clamped between one chunk and this (so a small store stays small, a busy one never waits for zeros).
pub const JOURNAL_ZERO_AHEAD_BYTES_MAX: u64 = 8 << 20;
/// Zeros written (and `fdatasync`ed) in one step into the spare segment (`journal::format::SPARE_SEGMENT_FILE`), the
/// next segment prepared whole by the zero-fill thread; between steps the thread serves the active segment first.
/// Small, so a commit's write and `fdatasync` wait little behind a step's direct write at the device (measured at 4
/// clients of 1,000-event appends: 1 MiB steps 475k / 478k events/s, 4 MiB 414k / 453k, alternated).
pub const JOURNAL_SPARE_STEP_BYTES_MAX: u64 = 1 << 20;
const _: () = {
    assert!(
        JOURNAL_SPARE_STEP_BYTES_MAX.is_multiple_of(4096) && JOURNAL_SPARE_STEP_BYTES_MAX <= JOURNAL_SEGMENT_BYTES_MAX
    );
    assert!(JOURNAL_ZERO_CHUNK_BYTES_DEFAULT <= JOURNAL_ZERO_AHEAD_BYTES_MAX);
    assert!(JOURNAL_ZERO_AHEAD_BYTES_MAX <= JOURNAL_SEGMENT_BYTES_MAX);
    assert!(JOURNAL_RECORD_BYTES_MAX <= JOURNAL_READ_EXTENT_BYTES_MAX * 16);
    assert!(JOURNAL_SCAN_BYTES_MAX >= JOURNAL_RECORD_BYTES_MAX);
    assert!((JOURNAL_GROUP_BYTES_MAX as u64) < u32::MAX as u64 / 2);
    assert!(JOURNAL_SEGMENT_BYTES_MAX >= JOURNAL_RECORD_BYTES_MAX as u64 * 2);
};

/// Importing a tree into a new journal (a store .NET wrote): event files are appended in groups of about this
/// many bytes (one `fdatasync` each); a reader thread reads this many event files per `BatchIo::read_files` call
/// (io_uring keeps the disk's queue full only in large calls: 1M files cold took 10.7 s in calls of 16,384 files,
/// 19.1 s in calls of 1,024, `import_bench`), at most this many calls ahead of the importing thread (which decodes
/// a batch several times faster than it is read). At most `IMPORT_READ_AHEAD_BATCHES_MAX + 2` batches of event
/// files are in memory at once (one being read, one being imported): ~30 MB for 600-byte events.
/// Journal-mode open: how many positions after the tree's ledger (and the journal's head) are looked at (one `stat`
/// each) for a crashed tree writer's leftovers (`tree_checks::set_aside_tree_leftovers`): a crash can keep any of a
/// group's event files and lose the others (top + 1 missing, top + 3 there). Most groups are far smaller than this.
/// A group's worth was too dear for every open: 8,192 absent files took 70-330 ms through io_uring and 11-18 ms on
/// the thread pool (measured under load); 64 `stat`s take well under a millisecond. A leftover further out is set
/// aside when the mirror's create meets it (`mirror.rs`, `write_batch`); the index entries it left name a position
/// whose event has other keys, and reads drop such candidates (post-filtering, invariant 6).
pub const TREE_LEFTOVER_PROBE_POSITIONS_MAX: u64 = 64;
pub const IMPORT_GROUP_BYTES_MAX: usize = 8 << 20;
pub const IMPORT_READ_BATCH_FILES_MAX: usize = 16_384;
pub const IMPORT_READ_AHEAD_BATCHES_MAX: usize = 1;
const _: () = {
    assert!(IMPORT_READ_BATCH_FILES_MAX >= 1);
    // A group is cut after the event that reaches the bound: one more record still fits a journal group.
    assert!(IMPORT_GROUP_BYTES_MAX + JOURNAL_RECORD_BYTES_MAX <= JOURNAL_GROUP_BYTES_MAX);
    assert!(IMPORT_READ_AHEAD_BATCHES_MAX >= 1);
};

// --- journal: the live mirror ----------------------------------------------------------------------------------

/// The mirror thread (`--commit journal --mirror live`) reads at most this many journal records per tree write
/// batch, and replaces the ledger once per batch, after all its event files: fewer ledger replacements (each creates
/// a file and frees one, a synchronous discard on a `discard` mount).
pub const MIRROR_BATCH_EVENTS_MAX: usize = 1024;
/// While the tree is within a large batch of the lag bound, where the writer waits or soon will, the mirror writes a
/// batch's event files in steps of at most this many and publishes each (the ledger moves only after the batch's
/// last): a waiting writer resumes as soon as a step is written instead of waiting a whole large batch (~60 ms at 17k
/// events/s), which made the conditional appends' p99 at 64 clients 25 ms.
pub const MIRROR_BATCH_EVENTS_PACED: usize = 64;
/// Lag bound, in events: while the tree is this many positions behind the published head, the writer waits for the
/// mirror before its next group commit (backpressure). A group still adds up to `GROUP_EVENTS_MAX` events on top.
pub const MIRROR_LAG_EVENTS_MAX: u64 = 10_000;
/// Lag bound, in time: the writer also waits while the tree is behind by more events than the mirror writes in this
/// long at its measured rate (but never for fewer than `MIRROR_LAG_EVENTS_MIN`), and while the mirror has made no
/// progress for this long with work waiting (a stalled mirror). It bounds a clean stop's catch-up. A bound on the age
/// of the oldest unmirrored commit would be a wall: once the writer waits that long, every commit the tree lacks is
/// that old, and the writer would wait for the whole lag to drain (seconds) instead of one batch.
pub const MIRROR_LAG_MAX: std::time::Duration = std::time::Duration::from_secs(1);
/// The time bound (above) never holds the lag below this many events: a slow mirror still gets whole batches.
pub const MIRROR_LAG_EVENTS_MIN: u64 = 1024;
/// A mirror checkpoint (index files written, the tree made durable with one `syncfs`, "mirror durable through P"
/// recorded in the journal) runs once this many events were mirrored since the last one...
pub const MIRROR_CHECKPOINT_EVENTS_MAX: u64 = 10_000;
/// ... or this long after the last one, whichever comes first (and only when something was mirrored since). A
/// reopen after a crash re-derives the tree for at most these events plus the lag bound.
pub const MIRROR_CHECKPOINT_INTERVAL_MAX: std::time::Duration = std::time::Duration::from_secs(2);
/// A checkpoint writes back the event and index files it makes durable with at most this many files' writeback in
/// flight (`sync_file_range`, a sliding window, one descriptor each) before its `syncfs`: a `syncfs` alone queued
/// the whole burst (2 s of event files) ahead of the journal's `fdatasync`, which then waited milliseconds (the
/// conditional appends' p99 with the mirror live). This disk serves its queue in order, so a journal write waits
/// behind what the window has in flight: with 32 files a concurrent `fdatasync` took 1.6-2.3 ms at p99 during the
/// writeback, with 1-4 files 0.2-1.0 ms (session 12, a synthetic mirror beside a 600-byte `fdatasync` loop).
pub const MIRROR_CHECKPOINT_WRITEBACK_FILES_MAX: usize = 8;
/// Before its `syncfs`, a checkpoint also writes back (through the same window) the event files the mirror wrote
/// since the checkpoint began, for at most this many more passes, until fewer than
/// `MIRROR_CHECKPOINT_SYNCFS_FILES_MAX` are left. Why: the mirror goes on creating files while a checkpoint runs, and
/// the `syncfs` wrote all of those at once: its time grew with them (80 files: 4 ms; 28,828: 3.1 s; 49,965: 3.3 s,
/// session 12 at 16-64 clients), and so did the journal `fdatasync`s queued behind that burst. The mark still covers
/// only the checkpoint's own positions; the extra passes only move writes out of the burst.
pub const MIRROR_CHECKPOINT_CATCH_UP_PASSES_MAX: usize = 4;
/// See `MIRROR_CHECKPOINT_CATCH_UP_PASSES_MAX`: the event files past the checkpoint a `syncfs` may be left to write
/// in its burst (about what the window writes in a few ms).
pub const MIRROR_CHECKPOINT_SYNCFS_FILES_MAX: u64 = 256;
/// The nice value (0 default .. 19 lowest) of the mirror's checkpoint threads, whose work only moves the durable
/// mark (not the mirror thread itself: appends wait for it at the lag bound; not the index checkpointer, whose write
/// a stop may wait for; nor a closing store's checkpoints). On 2 cores shared with the connection tasks, the writer and the mirror, a checkpoint that ran at the
/// default priority made the writer wait for a CPU after its `fdatasync` (1/3 of the slow commits' time was the
/// writer's run-queue wait, session 12). A lower nice value only lowers their share under contention.
pub const MIRROR_CHECKPOINT_NICE: i32 = 10;
/// A mirror checkpoint replaces its index files through the trash (`store/trash.rs`) in calls of at most this many,
/// so that each call pins a trash generation only briefly.
pub const MIRROR_CHECKPOINT_CHUNK_FILES: usize = 1024;
/// The mirror starts a tree write batch at most this often (unless closing, asked to checkpoint or a whole batch
/// behind), so under a stream of small commits it writes fewer, larger batches (one ledger replacement each) and adds
/// less metadata to each journal `fdatasync`'s filesystem commit.
pub const MIRROR_BATCH_INTERVAL_MIN: std::time::Duration = std::time::Duration::from_millis(20);
/// The mirror thread creates a step's event files in calls of at most this many and offers its CPU to waiting
/// threads between them (`sched_yield`; not once the store is closing). Why: the mirror is busy most of the time, and
/// a thread woken on its CPU (a connection task, the writer after its `fdatasync`, a client) waited there until the
/// scheduler's tick (4 ms here) while the other CPU idled: the running task keeps its slice against wakeup preemption
/// (EEVDF), and a shorter slice for the woken threads did not change it. With 1 client, 3/4 of the time of requests
/// slower than 1 ms was such run-queue waits, and the p99 of conditional appends was 1.4 ms (session 13, scheduler
/// traces). Yielding after every 1 / 4 / 16 files: p99 0.37-0.42 / 0.45-0.46 / 0.71-0.84 ms against 1.36-1.50 ms
/// without; 16 and 64 clients no different beyond noise. A yield with nobody waiting costs a syscall, and each call
/// one open of the directory.
pub const MIRROR_YIELD_FILES: usize = 4;
/// Index backlog bound, in time: the writer also waits while the index files the next checkpoints must write (the
/// stems of the events mirrored since the last checkpoint began, plus what the running one has not written yet) are
/// more than the checkpoints write in this long at their measured rate. Why: a clean stop writes them all, and a bulk
/// load with a new tag per event dirties an index file per event, faster than checkpoints beside the event files
/// write them (at 1M events the checkpoints grew to 14-30k files each and a stop right after the fill took 2-8 s).
/// A stop then writes at most the running checkpoint's rest and one more, about twice this, beside the event files'
/// catch-up (`MIRROR_LAG_MAX`): within the 3 s a graceful stop is allowed.
pub const MIRROR_INDEX_BACKLOG_MAX: std::time::Duration = std::time::Duration::from_millis(500);
/// The index backlog bound never falls below this many files (a slow checkpoint still gets big chunks; a few tags
/// per event, as most stores have, never come near it)...
pub const MIRROR_INDEX_BACKLOG_FILES_MIN: u64 = 4096;
/// ... nor rises above this many (before any checkpoint was measured it is the minimum).
pub const MIRROR_INDEX_BACKLOG_FILES_MAX: u64 = 65_536;
/// While the writer waits for the mirror (lag bound), it looks again at least this often (a failed mirror, a close).
pub const MIRROR_LAG_RECHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
const _: () = {
    assert!(MIRROR_BATCH_EVENTS_PACED >= 1 && MIRROR_BATCH_EVENTS_PACED <= MIRROR_BATCH_EVENTS_MAX);
    // One batch's stems (a tag or two per event, and types) fit below the backlog bound with room for another.
    assert!(MIRROR_INDEX_BACKLOG_FILES_MIN >= 2 * MIRROR_BATCH_EVENTS_MAX as u64);
    assert!(MIRROR_INDEX_BACKLOG_FILES_MIN <= MIRROR_INDEX_BACKLOG_FILES_MAX);
    // The lag bound never forbids a whole group; one checkpoint's worth of lag can always build up.
    assert!(MIRROR_LAG_EVENTS_MAX >= GROUP_EVENTS_MAX as u64);
    assert!(MIRROR_LAG_EVENTS_MIN >= MIRROR_BATCH_EVENTS_MAX as u64 && MIRROR_LAG_EVENTS_MIN <= MIRROR_LAG_EVENTS_MAX);
    assert!(MIRROR_CHECKPOINT_EVENTS_MAX >= MIRROR_BATCH_EVENTS_MAX as u64);
    assert!(MIRROR_CHECKPOINT_WRITEBACK_FILES_MAX >= 1);
    assert!(MIRROR_CHECKPOINT_SYNCFS_FILES_MAX >= 1);
    assert!(MIRROR_CHECKPOINT_NICE >= 0 && MIRROR_CHECKPOINT_NICE <= 19);
    assert!(MIRROR_CHECKPOINT_CHUNK_FILES >= 1);
    assert!(MIRROR_YIELD_FILES >= 1 && MIRROR_YIELD_FILES <= MIRROR_BATCH_EVENTS_PACED);
    assert!(MIRROR_LAG_RECHECK_INTERVAL.as_millis() < MIRROR_LAG_MAX.as_millis());
    assert!(MIRROR_BATCH_INTERVAL_MIN.as_millis() * 10 <= MIRROR_LAG_MAX.as_millis());
};

// --- index checkpoints (store::checkpoint) ----------------------------------------------------------------------

/// The checkpointer writes a new index checkpoint once the head is this many events past the last one, so an open
/// after a crash scans about this many journal records (~5 µs each here) on top of loading the checkpoint.
pub const INDEX_CHECKPOINT_EVENTS_DEFAULT: u64 = 100_000;
/// How often the checkpointer looks at the head.
pub const INDEX_CHECKPOINT_POLL_MAX: std::time::Duration = std::time::Duration::from_millis(500);
/// After writing a checkpoint, the checkpointer waits at least this many times as long as that took: checkpoints
/// use at most ~1/(1 + factor) of one core, however big the index grows (at ingest rates beyond that, the
/// checkpoint falls further behind than `INDEX_CHECKPOINT_EVENTS_DEFAULT`).
pub const INDEX_CHECKPOINT_PAUSE_FACTOR: u32 = 4;
/// Positions a checkpoint copies out of the in-memory index per hold of its read lock: the writer, which takes the
/// write lock once per group commit, waits for at most this many copies.
pub const INDEX_CHECKPOINT_SNAPSHOT_EVENTS_MAX: u64 = 16_384;
/// How long a checkpoint's snapshot waits for the writer to take the commits up to its position into the tracking
/// table (it does so right after publishing them, so microseconds); past it this checkpoint is skipped and the next
/// one tries again.
pub const INDEX_CHECKPOINT_TRACKING_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(1);
const _: () = assert!(INDEX_CHECKPOINT_SNAPSHOT_EVENTS_MAX <= INDEX_CHECKPOINT_EVENTS_DEFAULT);

// --- server ----------------------------------------------------------------------------------------------------

/// Longest request `id` (its JSON text) accepted. The id is echoed on every line of the answer, so a long one
/// would multiply into every item line of a read.
pub const REQUEST_ID_BYTES_MAX: usize = 256;
/// Longest piece of client input (an id, a key, a value) an error message quotes; longer input is cut and its
/// length said instead.
pub const INPUT_QUOTE_BYTES_MAX: usize = 64;
/// Longest error message the server sends; a longer one (a store error quoting a name, ...) is cut.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;
const _: () = assert!(INPUT_QUOTE_BYTES_MAX * 4 <= ERROR_MESSAGE_BYTES_MAX);

/// Connections served at once by default; further ones get a `busy` line and are closed.
pub const CONNECTIONS_DEFAULT: usize = 1024;
/// Descriptors the daemon keeps besides connections and batch I/O: the listener, the store's lock, ledger and
/// directory handles, the projection store, the runtime's epoll and event descriptors, logs, `$NOTIFY_SOCKET`, and a
/// mirror checkpoint's writeback window and the directory it opens its files in.
pub const FDS_RESERVED: usize = 64 + MIRROR_CHECKPOINT_WRITEBACK_FILES_MAX + 1;
/// Descriptors one batch read may hold open at once: the io_uring backend's bound (the thread-pool backend holds one
/// per thread, fewer).
pub const FDS_READS_MAX: usize = URING_FDS_IN_FLIGHT_MAX;
/// Descriptors one write batch may hold open at once.
pub const FDS_WRITES_MAX: usize = WRITE_OPEN_FILES_MAX + WRITE_CREATE_DIR_FDS_MAX;
/// `LimitNOFILE=` in systemd/opossumd.service: the default budget must fit it.
pub const FDS_UNIT_LIMIT: usize = 20_000;
/// When the descriptor limit cannot hold the connection limit beside reads and writes, connections get at most
/// this share (1/N) of what is left after the reserve, so batch I/O keeps the rest.
pub const FDS_CONNECTION_SHARE_WHEN_SHORT: usize = 4;
const _: () = assert!(CONNECTIONS_DEFAULT + FDS_RESERVED + FDS_READS_MAX + FDS_WRITES_MAX <= FDS_UNIT_LIMIT);

/// Longest request line accepted by default, in bytes (excluding the `\n`).
pub const FRAME_BYTES_DEFAULT: usize = 16 * 1024 * 1024;
/// Smallest `max_frame_bytes` a configuration may set.
pub const FRAME_BYTES_MIN: usize = 1024;
/// Initial (and idle) size of a connection's request buffer; it grows up to `max_frame_bytes` for a long line.
pub const LINE_BUFFER_BYTES_INITIAL: usize = 8 * 1024;
/// Request-buffer bytes (grown beyond the initial size) all connections may hold together. A connection whose long
/// line would exceed it gets `busy` and is closed: 1,024 connections stalled inside 16 MiB lines cannot take 16 GiB.
pub const LINE_BUFFERS_BYTES_TOTAL_MAX: usize = 256 * 1024 * 1024;
/// How long a started request line may take to arrive in full by default; a connection stalled inside a line is
/// answered with an error and closed. (Idle connections between lines cost a descriptor and the initial buffer.)
pub const LINE_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// How long a streaming answer may wait for the client to take a chunk before the connection is closed, so a client
/// that stops reading does not hold its read's permit and chunks forever.
pub const STREAM_WRITE_TIMEOUT_MS: u64 = 60_000;
/// Bytes of encoded item lines handed from a read's producer to the socket at a time.
pub const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Encoded chunks a read may have waiting for the socket; the producer blocks beyond that (backpressure).
pub const READ_CHUNKS_IN_FLIGHT: usize = 2;
/// Streaming reads (event reads, projection `get_all`/`query`) running at once; each holds a blocking thread and up
/// to `READ_CHUNKS_IN_FLIGHT + 1` chunks. More wait (without a thread) for a permit.
pub const READ_STREAMS_MAX: usize = 128;
/// tokio's blocking pool (`max_blocking_threads`): appends waiting for their group commit, projection writes,
/// streaming reads. Threads start lazily; with 1,024 connections the daemon had 2,586 threads before this bound.
pub const BLOCKING_THREADS_MAX: usize = 256;
const _: () = assert!(READ_STREAMS_MAX < BLOCKING_THREADS_MAX);
/// Events a read may answer on the connection's own task (no blocking thread, no hand-over): a read whose next batch
/// is at most this many journal records, all in the page cache, is read with `preadv2(RWF_NOWAIT)` and framed right
/// there; a larger or uncached one streams from a blocking thread. Bounds the work an async worker does per read.
pub const READ_INLINE_EVENTS_MAX: usize = 64;
/// Bytes of journal records such a read may take on the connection's task (the same purpose, for large events).
pub const READ_INLINE_BYTES_MAX: usize = 256 * 1024;
const _: () = assert!(READ_INLINE_BYTES_MAX <= READ_CHUNK_BYTES && READ_INLINE_EVENTS_MAX <= READ_BATCH_FILES_DEFAULT);
/// Longest append request line parsed, encoded and queued on the connection's own task (no blocking thread, no
/// hand-over): a one-event append's line is well under it, a batch's is not. Bounds the parse an async worker does
/// per append (~1 ns per byte with serde_json here, so ~16 µs).
pub const APPEND_INLINE_LINE_BYTES_MAX: usize = 16 * 1024;
/// Candidate positions a read may list on the connection's task before its first cached step: a query whose index
/// lists may hold more (a type matching a million events: an ~8 MB list) builds them on the blocking thread that
/// then streams it. Bounds the index work an async worker does per read, as `READ_INLINE_EVENTS_MAX` bounds its reads.
pub const READ_INLINE_CANDIDATES_MAX: usize = 4096;
const _: () = assert!(READ_INLINE_CANDIDATES_MAX >= READ_INLINE_EVENTS_MAX);
/// `TasksMax=` in systemd/opossumd.service: the blocking pool, the I/O pool (`IO_THREADS_DEFAULT`) and
/// room for the tokio workers, io_uring rings, the rayon pool and the store's writer and flusher must fit it.
pub const UNIT_TASKS_MAX: usize = 512;
const _: () = assert!(BLOCKING_THREADS_MAX + IO_THREADS_DEFAULT + 128 <= UNIT_TASKS_MAX);
const _: () = assert!(FRAME_BYTES_DEFAULT <= LINE_BUFFERS_BYTES_TOTAL_MAX);
const _: () = assert!(FRAME_BYTES_MIN <= LINE_BUFFER_BYTES_INITIAL);
/// The file-creation mask the daemon sets at start by default (the unit's `UMask=`): store files and the socket
/// directory are never group-writable or world-readable, whatever the shell's umask.
pub const UMASK_DEFAULT: u32 = 0o027;

// --- subscriptions -----------------------------------------------------------------------------------------------

/// Positions one step of a subscription plans through the index at once: a subscriber that is far behind (a
/// catch-up from 0, or a slow consumer the writer left behind) reads `(through, through + this]` windows one after
/// another, so its candidate list never holds more than this many positions (512 KiB), however far behind it is.
pub const SUBSCRIPTION_WINDOW_POSITIONS_MAX: u64 = 65_536;
/// The per-subscriber buffer: encoded item lines one step of a subscription reads before they are written (the next
/// step reads while they are). A subscriber whose socket is full holds at most two of these (plus an event each)
/// and one read batch; it never holds up appends, and it resumes with reads of the positions committed meanwhile
/// (nothing is queued for it).
pub const SUBSCRIPTION_BUFFER_BYTES_MAX: usize = 256 * 1024;
/// How often an idle subscription gets a heartbeat line `{"id":..,"heartbeat":true,"head":H}` (and how soon a
/// client that vanished without closing is noticed).
pub const SUBSCRIPTION_HEARTBEAT_INTERVAL_MS: u64 = 1000;
/// How long the final `ok` line of a subscription may take to be written at a daemon's shutdown before the
/// connection is dropped without it (the client then resumes from the last event it received).
pub const SUBSCRIPTION_FINAL_WRITE_TIMEOUT_MS: u64 = 1000;

/// The live tail: the events of the last commits, read once and shared by every caught-up subscriber (one read
/// per commit instead of one per subscriber). At most this many events...
pub const LIVE_TAIL_EVENTS_MAX: usize = 8_192;
/// ... and about this many bytes of them (a subscriber further behind reads its own windows, as in a catch-up).
pub const LIVE_TAIL_BYTES_MAX: usize = 8 * 1024 * 1024;

const _: () = {
    // A window's candidate list (8 bytes a position) stays within a few buffers' worth of memory.
    assert!(SUBSCRIPTION_WINDOW_POSITIONS_MAX * 8 <= 4 * SUBSCRIPTION_BUFFER_BYTES_MAX as u64);
    assert!(SUBSCRIPTION_HEARTBEAT_INTERVAL_MS >= 10);
    // A fill never reads more than one window's positions.
    assert!(LIVE_TAIL_EVENTS_MAX as u64 <= SUBSCRIPTION_WINDOW_POSITIONS_MAX);
};

// --- platform: Windows named pipes ----------------------------------------------------------------------------

/// How long a Windows client waits for a named-pipe instance when all are connected (`ERROR_PIPE_BUSY`: the server
/// creates the next instance right after it accepts one), retrying every [`PIPE_BUSY_RETRY_MS`].
pub const PIPE_BUSY_WAIT_MS_MAX: u64 = 2_000;
/// The pause between two attempts to open a busy named pipe.
pub const PIPE_BUSY_RETRY_MS: u64 = 10;

const _: () = assert!(PIPE_BUSY_RETRY_MS < PIPE_BUSY_WAIT_MS_MAX);
