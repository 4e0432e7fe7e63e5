//! Every bound the store, io, projection and server enforce, in one place.
//!
//! Names put the qualifier last (`EVENT_BYTES_MAX`, not `MAX_EVENT_BYTES`) so related limits sort together, and units
//! come before the qualifier (`CONNECTION_IDLE_SECS_MAX`). The `const _: () = { ... }` blocks at the end of each
//! section fail the build when two limits stop fitting each other.
//!
//! Sections: file names (model, tree), events and appends (store), reads (store, io), projections, journal, server.

// --- file names ------------------------------------------------------------------------------------------------

// --- events and appends ----------------------------------------------------------------------------------------

// --- reads and io ----------------------------------------------------------------------------------------------

/// Threads of the thread-pool backend (and of the io_uring backend's pool for large write batches): I/O-bound
/// threads, not CPU-bound, so many more than cores (docs/io-engine.md has the measurements).
pub const IO_THREADS_DEFAULT: usize = 32;
/// Most files of one write batch held open at once (their descriptors wait for the final fsync round); bigger
/// batches are written in chunks of this size. Well below the 20,000-descriptor hard limit seen here.
pub const WRITE_OPEN_FILES_MAX: usize = 4096;
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
    assert!(URING_FDS_IN_FLIGHT_MAX + WRITE_OPEN_FILES_MAX + URING_DIR_FDS_PER_RING_MAX * 64 <= 10_000);
    // An in-place record must fit one 512-byte sector to be written atomically.
    assert!(IN_PLACE_RECORD_BYTES_MAX <= 512);
    // A read's byte count comes back in a CQE's `i32` result.
    assert!(EXTENT_READ_OP_BYTES_MAX <= i32::MAX as u32);
    // One op never asks for more than a call may have in flight unless one extent alone is larger.
    assert!(EXTENT_READ_OP_BYTES_MAX as usize >= EXTENT_BYTES_IN_FLIGHT_MAX);
    assert!(SYNCFS_MIN_TARGETS >= 2);
};

// --- projections -----------------------------------------------------------------------------------------------

// --- journal ---------------------------------------------------------------------------------------------------

// --- server ----------------------------------------------------------------------------------------------------

// --- subscriptions -----------------------------------------------------------------------------------------------

/// Positions one step of a subscription plans through the index at once: a subscriber that is far behind (a
/// catch-up from 0, or a slow consumer the writer left behind) reads `(through, through + this]` windows one after
/// another, so its candidate list never holds more than this many positions (512 KiB), however far behind it is.
pub const SUBSCRIPTION_WINDOW_POSITIONS_MAX: u64 = 65_536;
/// The per-subscriber buffer: encoded item lines the server holds for one subscriber before it writes them and
/// reads on. A subscriber whose socket is full holds at most this (plus one event) and one read batch; it never
/// holds up appends, and it resumes with reads of the positions committed meanwhile (nothing is queued for it).
pub const SUBSCRIPTION_BUFFER_BYTES_MAX: usize = 256 * 1024;
/// How often an idle subscription gets a heartbeat line `{"id":..,"heartbeat":true,"head":H}` (and how soon a
/// client that vanished without closing is noticed).
pub const SUBSCRIPTION_HEARTBEAT_INTERVAL_MS: u64 = 1000;
/// How long the final `ok` line of a subscription may take to be written at a daemon's shutdown before the
/// connection is dropped without it (the client then resumes from the last event it received).
pub const SUBSCRIPTION_FINAL_WRITE_TIMEOUT_MS: u64 = 1000;

const _: () = {
    // A window's candidate list (8 bytes a position) stays within a few buffers' worth of memory.
    assert!(SUBSCRIPTION_WINDOW_POSITIONS_MAX * 8 <= 4 * SUBSCRIPTION_BUFFER_BYTES_MAX as u64);
    assert!(SUBSCRIPTION_HEARTBEAT_INTERVAL_MS >= 10);
};
