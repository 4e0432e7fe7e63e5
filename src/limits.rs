//! Every bound the store, io, projection and server enforce, in one place.
//!
//! Names put the qualifier last (`EVENT_BYTES_MAX`, not `MAX_EVENT_BYTES`) so related limits sort together, and units
//! come before the qualifier (`CONNECTION_IDLE_SECS_MAX`). The `const _: () = { ... }` blocks at the end of each
//! section fail the build when two limits stop fitting each other.
//!
//! Sections: file names (model, tree), events and appends (store), reads (store, io), projections, journal, server.

// --- file names ------------------------------------------------------------------------------------------------

// --- events and appends ----------------------------------------------------------------------------------------

/// Deepest nesting of arrays and objects in an event's `data` and `metadata` (checked by a byte scan, without
/// recursion, in `model::validate_event`). Common JSON readers stop at 128 (serde_json among them), so a deeper
/// event could be stored but not read back by them.
pub const JSON_DEPTH_MAX: usize = 64;
/// serde_json's own recursion limit when it builds values (metadata is parsed into one).
const SERDE_JSON_RECURSION_LIMIT: usize = 128;
const _: () = assert!(JSON_DEPTH_MAX < SERDE_JSON_RECURSION_LIMIT);

// --- reads and io ----------------------------------------------------------------------------------------------

// --- projections -----------------------------------------------------------------------------------------------

// --- journal ---------------------------------------------------------------------------------------------------

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
/// directory handles, the projection store, the runtime's epoll and event descriptors, logs, `$NOTIFY_SOCKET`.
pub const FDS_RESERVED: usize = 64;
/// Descriptors one batch read may hold open at once: the io_uring backend's bound (the thread-pool backend holds one
/// per thread, fewer).
pub const FDS_READS_MAX: usize = crate::io::uring::MAX_FDS_IN_FLIGHT;
/// Descriptors one write batch may hold open at once.
pub const FDS_WRITES_MAX: usize = crate::io::threads::WRITE_OPEN_FILES_MAX;
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
/// `TasksMax=` in systemd/opossumd.service: the blocking pool, the I/O pool (`io::threads::THREADS_DEFAULT`) and
/// room for the tokio workers, io_uring rings, the rayon pool and the store's writer and flusher must fit it.
pub const UNIT_TASKS_MAX: usize = 512;
const _: () = assert!(BLOCKING_THREADS_MAX + crate::io::threads::THREADS_DEFAULT + 128 <= UNIT_TASKS_MAX);
const _: () = assert!(FRAME_BYTES_DEFAULT <= LINE_BUFFERS_BYTES_TOTAL_MAX);
const _: () = assert!(FRAME_BYTES_MIN <= LINE_BUFFER_BYTES_INITIAL);
/// The file-creation mask the daemon sets at start by default (the unit's `UMask=`): store files and the socket
/// directory are never group-writable or world-readable, whatever the shell's umask.
pub const UMASK_DEFAULT: u32 = 0o027;
