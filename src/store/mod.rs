//! The event store: open (with recovery), group-committed durable appends, streaming reads.
//!
//! Only this module changes disk state. Writers: one thread (`writer`) owns every mutation and takes
//! `flock(LOCK_EX)` on `.store.lock` around each group commit, so a .NET Opossum process can share the store.
//! Readers: any thread, no lock; they see a snapshot of the in-memory index at the current head.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::format::{self, Layout};
use crate::io::{self, BatchIo, IoBackendKind, IoError, SyncStrategy};
use crate::journal::Journal;
use crate::limits::JSON_DEPTH_MAX;
use crate::limits::{RECOVERY_BACKOFF_MIN, TRACKING_SOURCE_BYTES_MAX, WRITE_STATUS_CHANGES_MAX};
use crate::model::{
    self, AppendCondition, Event, EventId, EventRef, ModelError, Query, ReadOptions, SequencedEvent, Tag, Tracking,
    EVENT_TYPE_BYTES_MAX,
};

mod checkpoint;
mod commit;
mod index;
mod lock;
mod mirror;
mod reader;
mod recovery;
mod subscribe;
pub mod tools;
mod tracking;
mod trash;
mod unsynced;
mod writer;

pub(crate) use lock::{LockFile, StoreLock};
pub use reader::{CachedStep, EventBatch, EventReader, EventView};
pub use subscribe::{CommitWatch, Live, Subscription, SubscriptionStats, TailFill};

// The limits live in `crate::limits`; re-exported here for the server, the CLI and tests that name them so.
pub use crate::limits::{
    APPEND_BYTES_MAX, APPEND_EVENTS_MAX, APPEND_QUEUE_MAX, EVENT_BYTES_MAX, GROUP_EVENTS_MAX, INDEX_FLUSH_PAUSE_FACTOR,
    READ_BATCH_FILES_DEFAULT,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledge only after event files, index files, the ledger and their directories are fsynced.
    #[default]
    Fsync,
    /// Write through the page cache only (benchmarks, tests, throwaway stores).
    None,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fsync" => Ok(Durability::Fsync),
            "none" => Ok(Durability::None),
            other => Err(format!("unknown durability {other:?}: expected fsync or none")),
        }
    }
}

/// When the Opossum index files (`Indices/`) are rewritten in `CommitMode::Files` (journal mode ignores it: its
/// mirror writes index files at its checkpoints). The in-memory index answers every query either way; the files are
/// a derived cache that `open` re-derives for any event they do not cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IndexWrites {
    /// In every group commit, before the ledger (as Opossum does): the files are current whenever
    /// `.store.lock` is free, so .NET processes can share the store. Costs O(index file size) per commit.
    #[default]
    EveryCommit,
    /// At most every `interval` and at close: appends stay O(batch) on big stores. Meant for a store this process
    /// owns alone: .NET readers would see index files up to `interval` old, and the ledger is overwritten in place
    /// (`WriteMode::CommitInPlace`), which a reader taking no lock could catch half-written.
    Deferred { interval: Duration },
}

/// Which copy of an event is durable before its append is acknowledged (design §3.1; `store/commit/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommitMode {
    /// Today's protocol: event files, ledger and directory entries durable before the answer. For stores that
    /// .NET processes append to while the daemon runs. O(index file size) per commit with `IndexWrites::EveryCommit`.
    Files,
    /// The journal (`.opossumd/journal/`) is the durable record: one write + one `fdatasync` per group commit.
    /// The store holds `.store.lock` for its whole life (so whenever the tree may be behind the journal), so .NET
    /// writers wait until it closes. `IndexWrites` does not apply. The default (with `MirrorMode::Live`).
    #[default]
    Journal,
}

impl std::str::FromStr for CommitMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "files" => Ok(CommitMode::Files),
            "journal" => Ok(CommitMode::Journal),
            other => Err(format!("unknown commit mode {other:?}: expected journal or files")),
        }
    }
}

/// In journal mode, whether the Opossum tree is kept as a mirror of the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MirrorMode {
    /// A mirror thread materialises event files, the ledger and (at checkpoints) index files from the journal, off
    /// the commit path, within a lag bound (`limits::MIRROR_LAG_*`); see `store/mirror.rs`.
    #[default]
    Live,
    /// No tree for new events: fastest; the tree stays as it was when the journal took over.
    Off,
}

impl std::str::FromStr for MirrorMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "live" => Ok(MirrorMode::Live),
            "off" => Ok(MirrorMode::Off),
            other => Err(format!("unknown mirror mode {other:?}: expected live or off")),
        }
    }
}

#[derive(Clone)]
pub struct StoreOptions {
    pub commit: CommitMode,
    pub mirror: MirrorMode,
    pub durability: Durability,
    pub io_backend: IoBackendKind,
    /// How durable write batches wait for stable storage (when the store opens its own backend).
    pub sync_strategy: SyncStrategy,
    /// Use this backend instead of opening `io_backend` (tests wrap backends, e.g. in `FaultyIo`).
    pub io: Option<Arc<dyn BatchIo>>,
    /// Journal mode: use this storage for the journal instead of `<store>/.opossumd/journal` on disk (tests wrap
    /// it, e.g. in `journal::FaultyStorage`).
    pub journal_storage: Option<Arc<dyn crate::journal::JournalStorage>>,
    pub index_writes: IndexWrites,
    /// Hold `.opossumd.lock` for the store's lifetime and fail if another process holds it (daemons).
    pub exclusive: bool,
    pub read_batch_files: usize,
    /// After a write fault, how long the writer waits before its first in-place recovery attempt; each failed
    /// attempt doubles the wait, up to [`crate::limits::RECOVERY_BACKOFF_MAX`].
    pub recovery_backoff_min: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            commit: CommitMode::default(),
            mirror: MirrorMode::default(),
            durability: Durability::Fsync,
            io_backend: IoBackendKind::Auto,
            sync_strategy: SyncStrategy::default(),
            io: None,
            journal_storage: None,
            index_writes: IndexWrites::EveryCommit,
            exclusive: false,
            read_batch_files: READ_BATCH_FILES_DEFAULT,
            recovery_backoff_min: RECOVERY_BACKOFF_MIN,
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("commit", &self.commit)
            .field("mirror", &self.mirror)
            .field("durability", &self.durability)
            .field("io_backend", &self.io_backend)
            .field("sync_strategy", &self.sync_strategy)
            .field("io", &self.io.as_ref().map(|io| io.name()))
            .field("journal_storage", &self.journal_storage.as_ref().map(|s| s.dir().to_path_buf()))
            .field("index_writes", &self.index_writes)
            .field("exclusive", &self.exclusive)
            .field("read_batch_files", &self.read_batch_files)
            .field("recovery_backoff_min", &self.recovery_backoff_min)
            .finish()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Invalid(#[from] ModelError),
    /// A request over one of the limits in `crate::limits` (`limit` is the constant's name).
    #[error("{what} is {value}; the limit is {max} ({limit})")]
    LimitExceeded { what: String, limit: &'static str, value: usize, max: usize },
    #[error("append condition failed: event {position} matches the condition's query")]
    ConditionFailed { position: u64 },
    /// The append's tracking position is not above its source's last one: nothing was written.
    #[error("tracking conflict: source {source_name:?} is at position {last}; this append's tracking position {position} is not after it")]
    TrackingConflict { source_name: String, position: u64, last: u64 },
    /// A feature the store's commit mode cannot keep durably (`what` names it).
    #[error(
        "{what} needs --commit journal (this store commits in files mode, which has no journal record to keep it in)"
    )]
    NeedsJournal { what: &'static str },
    #[error("storage error: {0}")]
    Io(Arc<IoError>),
    #[error("corrupt file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("event file {path} is missing, but the ledger says events up to {ledger} exist")]
    MissingEvent { path: PathBuf, ledger: u64 },
    #[error("the store refuses writes until recovery succeeds (files mode: retried automatically, with backoff; journal mode: at the next open): {0}")]
    Poisoned(String),
    #[error("store {0} is in use by another opossumd process")]
    Locked(PathBuf),
    #[error("the store is closed")]
    Closed,
    #[error("the final index flush failed (index files are derived: the next open re-derives them)")]
    IndexFlush,
}

impl From<IoError> for StoreError {
    fn from(e: IoError) -> Self {
        StoreError::Io(Arc::new(e))
    }
}

impl StoreError {
    fn io(op: io::IoOp, path: &Path, e: std::io::Error) -> StoreError {
        StoreError::from(IoError::new(op, path, e))
    }
}

/// Whether the store takes appends: see [`Store::write_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteStatus {
    Writable,
    /// A write or fsync failed and may have left unknown state on disk (or open could not finish its own writes,
    /// e.g. on a full disk): appends fail with `Poisoned` while the writer re-runs recovery with backoff.
    Unwritable {
        reason: String,
    },
}

/// What a successful append reports: the positions it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub first: u64,
    pub last: u64,
    /// The append repeated one already committed (same event ids, in order): these are its positions, and
    /// nothing was written this time (docs/PROTOCOL.md, "Idempotent retry").
    pub replayed: bool,
}

/// Counters for `stats`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub appends: AtomicU64,
    pub events_appended: AtomicU64,
    pub condition_failures: AtomicU64,
    pub commits: AtomicU64,
    pub write_batches: AtomicU64,
    pub events_read: AtomicU64,
    pub commit_latency_us_total: AtomicU64,
    pub index_flushes: AtomicU64,
    pub index_flush_files: AtomicU64,
    pub index_flush_us_total: AtomicU64,
    pub index_flush_us_max: AtomicU64,
    /// In-place recovery attempts after a write fault.
    pub recovery_attempts: AtomicU64,
    /// Index file writes that failed (derived files: logged, skipped, re-derived at the next open).
    pub index_write_failures: AtomicU64,
    /// Files and bytes under `.quarantine/`, as of open or the last quarantine.
    pub quarantine_files: AtomicU64,
    pub quarantine_bytes: AtomicU64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    pub head: u64,
    pub io_backend: String,
    /// `journal` or `files` (`CommitMode`), and the mirror in journal mode: `live`, `off`, or `n/a` in files mode.
    pub commit_mode: String,
    pub mirror: String,
    pub appends: u64,
    pub events_appended: u64,
    pub condition_failures: u64,
    /// Group commits: each pays its fsyncs once for all of its appends.
    pub commits: u64,
    /// `BatchIo::write_files` calls (each fsyncs its files and directories once when durable).
    pub write_batches: u64,
    pub events_read: u64,
    pub commit_latency_us_total: u64,
    /// Deferred index writes: flushes that wrote files, the files they wrote, and their time (total and longest).
    pub index_flushes: u64,
    pub index_flush_files: u64,
    pub index_flush_us_total: u64,
    pub index_flush_us_max: u64,
    /// The reason appends are refused, if they are (the same as `unwritable_reason`; kept for older clients).
    pub poisoned: Option<String>,
    /// Whether appends are taken now ([`Store::write_status`]).
    pub writable: bool,
    pub unwritable_reason: Option<String>,
    /// In-place recovery attempts after write faults since open.
    pub recovery_attempts: u64,
    /// Index file writes that failed and were skipped (a derived cache).
    pub index_write_failures: u64,
    /// What recovery set aside under `.quarantine/` (never deleted; an operator may inspect and remove it).
    pub quarantine_files: u64,
    pub quarantine_bytes: u64,
    /// Journal mode with the mirror live (all 0 otherwise): the tree holds event files and a ledger through
    /// `mirror_head`; the last checkpoint made it durable through `mirror_durable`; `mirror_lag` events of the
    /// head are not in the tree yet.
    pub mirror_head: u64,
    pub mirror_durable: u64,
    pub mirror_lag: u64,
    /// Mirror checkpoints since open (index files written, one `syncfs`, the durable mark recorded).
    pub mirror_checkpoints: u64,
    /// Group commits that waited for the mirror (its lag bound) since open.
    pub mirror_waits: u64,
    /// A tree write failed: the mirror stopped until the next open (appends go on; the journal is the record).
    pub mirror_failed: bool,
    /// Journal mode: bytes of records in the journal (padded, as stored: no segment headers, offset tables or
    /// preallocated space) and its segment files. Both 0 in files mode.
    pub journal_bytes: u64,
    pub journal_segments: u64,
    /// Files replaced since open that wait in the trash to be deleted (an upper bound; `store/trash.rs`: deleted
    /// slowly while the store writes its tree, at full speed once it idles), and files deleted from it since open.
    pub trash_files: u64,
    pub trash_emptied: u64,
    /// Journal mode's mirror checkpoints: index files written into a spare inode an earlier replacement swapped out
    /// (no inode created or freed), and temporaries they created instead (a cold or full pool; `io/spares.rs`).
    pub trash_spares_reused: u64,
    pub trash_spares_created: u64,
    /// Subscriptions open now, events handed out to them, and times a caught-up one fell behind the live tail.
    pub subscriptions_active: u64,
    pub subscription_events_delivered: u64,
    pub subscription_catch_up_fallbacks: u64,
}

/// State shared by the store handle, the writer thread and readers.
pub(crate) struct Shared {
    pub layout: Layout,
    pub io: Arc<dyn BatchIo>,
    pub options: StoreOptions,
    pub index: RwLock<index::Index>,
    /// Highest committed (acknowledgeable) position; readers never go beyond it.
    pub head: AtomicU64,
    pub poisoned: Mutex<Option<String>>,
    /// Every change of [`WriteStatus`], in order (a poison and the recovery right after it are two messages, so a
    /// watcher such as the systemd status line sees the fault even when recovery takes 100 ms).
    pub write_status_changes: tokio::sync::broadcast::Sender<WriteStatus>,
    pub counters: Counters,
    /// Serialises deferred index flushes (the flusher thread, `sync`, close).
    pub index_flush: Mutex<()>,
    /// Identity of the ledger as the writer last wrote or read it: while the file is unchanged no other process
    /// has appended, so commits skip re-reading it and reads skip catching up.
    pub ledger_seen: Mutex<Option<writer::LedgerFingerprint>>,
    /// The journal, in `CommitMode::Journal`: the durable record and the read path.
    pub journal: Option<Arc<Journal>>,
    /// Journal mode, mirror live: the mirror thread's progress, which the writer publishes to and waits on.
    pub mirror: Option<mirror::Mirror>,
    /// Journal mode, mirror live: a tree write failed; the mirror stops until the next open re-derives the tree.
    pub mirror_failed: std::sync::atomic::AtomicBool,
    /// Commit notifications for subscriptions: the writer publishes each head right after it (`head`) is.
    pub commits: CommitWatch,
    /// Tracking sources and the event id window (journal mode; empty in files mode, which refuses both).
    pub tracking: Mutex<tracking::Table>,
    /// Where the files that index-file flushes and the mirror replace wait to be deleted (`store/trash.rs`).
    pub trash: Arc<trash::Trash>,
}

impl Shared {
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    pub fn mirror_failed(&self) -> bool {
        self.mirror_failed.load(Ordering::Relaxed)
    }

    pub fn poison_reason(&self) -> Option<String> {
        self.poisoned.lock().unwrap().clone()
    }

    /// Writes the index files changed since the last flush (deferred index writes), without blocking appends: see
    /// `recovery::flush_index_files`. Flushes do not overlap. Index files are a derived cache (ARCHITECTURE.md,
    /// invariant 5): a failure is logged and counted, their dirty marks stay for the next flush, and the store keeps
    /// serving. Returns whether every dirty file was written.
    pub fn flush_index(&self) -> bool {
        let _one_at_a_time = self.index_flush.lock().unwrap();
        if self.poison_reason().is_some() {
            return false;
        }
        let durable = self.options.durability == Durability::Fsync;
        let started = Instant::now();
        match recovery::flush_index_files(&self.layout, self.io.as_ref(), &self.index, durable, Some(&self.trash)) {
            Ok(flushed) => {
                let c = &self.counters;
                c.write_batches.fetch_add(flushed.batches as u64, Ordering::Relaxed);
                if flushed.files > 0 {
                    let took = elapsed_us(started);
                    c.index_flushes.fetch_add(1, Ordering::Relaxed);
                    c.index_flush_files.fetch_add(flushed.files as u64, Ordering::Relaxed);
                    c.index_flush_us_total.fetch_add(took, Ordering::Relaxed);
                    c.index_flush_us_max.fetch_max(took, Ordering::Relaxed);
                    tracing::debug!(
                        files = flushed.files,
                        bytes = flushed.bytes,
                        encode_us = flushed.encode_us,
                        took_us = took,
                        "flushed index files"
                    );
                }
                true
            }
            Err(e) => {
                self.counters.index_write_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "could not write index files; retrying at the next flush (the next open re-derives them): {e}"
                );
                false
            }
        }
    }

    pub fn clear_poison(&self) {
        if self.poisoned.lock().unwrap().take().is_some() {
            // No receiver is not an error: nobody watches.
            let _ = self.write_status_changes.send(WriteStatus::Writable);
        }
    }

    /// Recounts `.quarantine/` (after open and after anything is set aside).
    pub fn count_quarantine(&self) {
        let (files, bytes) = recovery::quarantine_usage(&self.layout);
        self.counters.quarantine_files.store(files, Ordering::Relaxed);
        self.counters.quarantine_bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn poison(&self, reason: String) {
        tracing::error!("store poisoned: {reason}");
        let mut poisoned = self.poisoned.lock().unwrap();
        if poisoned.is_none() {
            let _ = self.write_status_changes.send(WriteStatus::Unwritable { reason: reason.clone() });
            *poisoned = Some(reason);
        }
    }

    /// [`Shared::read_batch`] from the page cache only, at most `bytes_max` bytes of records: `None` when that is
    /// not possible (see [`Journal::read_cached`]; always with `--commit files`).
    pub fn read_batch_cached(
        &self,
        positions: &[u64],
        bytes_max: usize,
    ) -> Result<Option<reader::EventBatch>, StoreError> {
        match &self.journal {
            Some(journal) => Ok(journal.read_cached(positions, bytes_max)?.map(reader::EventBatch::Records)),
            None => Ok(None),
        }
    }

    /// Reads `positions` (each at most the head) in order: journal records as read (checksummed), or event files
    /// decoded (`--commit files`).
    pub fn read_batch(&self, positions: &[u64]) -> Result<reader::EventBatch, StoreError> {
        if let Some(journal) = &self.journal {
            return Ok(reader::EventBatch::Records(journal.read(positions)?));
        }
        read_event_files(&self.layout, self.io.as_ref(), positions, self.head()).map(reader::EventBatch::Events)
    }
}

/// Reads and decodes the event files of `positions` in one `BatchIo` call, in order. A missing file (all of
/// `positions` are at most the ledger's `head`) or one whose content disagrees with its name is an error naming it.
pub(crate) fn read_event_files(
    layout: &Layout,
    io: &dyn BatchIo,
    positions: &[u64],
    head: u64,
) -> Result<Vec<SequencedEvent>, StoreError> {
    let paths: Vec<PathBuf> = positions.iter().map(|&p| layout.event_file(p)).collect();
    let results = io.read_files(&paths);
    let mut events = Vec::with_capacity(positions.len());
    for ((result, path), &position) in results.into_iter().zip(&paths).zip(positions) {
        events.push(decode_event_file(result, &|| path.clone(), position, head)?);
    }
    Ok(events)
}

/// The event of one `read_files` result for the event file at `path()` (position `position`, the ledger at
/// `head`): a missing file, undecodable bytes or a position other than its name's are errors naming the file (the
/// path is made only then).
pub(crate) fn decode_event_file(
    result: Result<Vec<u8>, IoError>,
    path: &dyn Fn() -> PathBuf,
    position: u64,
    head: u64,
) -> Result<SequencedEvent, StoreError> {
    let bytes = result.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => StoreError::MissingEvent { path: path(), ledger: head },
        _ => StoreError::from(e),
    })?;
    let event =
        format::decode_event(&bytes).map_err(|e| StoreError::Corrupt { path: path(), reason: e.to_string() })?;
    if event.position != position {
        return Err(StoreError::Corrupt {
            path: path(),
            reason: format!("file says position {}, its name says {position}", event.position),
        });
    }
    Ok(event)
}

/// An append validated and encoded by the appending thread (`prepare`), so the writer only splices in positions.
/// One buffer holds the pieces of every event's file; a piece several events share (the part before the data of
/// one type, the part after the data of one tag list, the default metadata) is in it once. Derefs to its events.
pub(crate) struct PreparedBatch {
    bytes: Vec<u8>,
    events: Vec<PreparedEvent>,
    /// The pieces' bytes per event, added up (each event's file is this plus its position's digits).
    encoded_bytes: usize,
}

impl std::fmt::Debug for PreparedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreparedBatch({} events, {} bytes)", self.events.len(), self.bytes.len())
    }
}

/// What precedes the metadata JSON in an event file's last piece (`format::encode_event` writes metadata last).
const METADATA_PREFIX: &str = r#","metadata":"#;

/// Where a piece of an event file lies in [`PreparedBatch`]'s buffer: (offset, length).
#[derive(Debug, Clone, Copy)]
struct Piece(u32, u32);

// A batch that `prepare` accepts holds at most `APPEND_BYTES_MAX` bytes of pieces (plus one default metadata):
// its offsets fit a `u32`.
const _: () = assert!(APPEND_BYTES_MAX < u32::MAX as usize / 2);

/// One event of a [`PreparedBatch`].
pub(crate) struct PreparedEvent {
    /// Shared with the previous event of the append when equal (batches mostly repeat one type and tags).
    pub event_type: Arc<str>,
    pub tags: Arc<[Tag]>,
    /// The event file, around its position: before the data (`{"event":{"eventType":..,"event":`), the data,
    /// after the data (`,"tags":[..]},"position":`), after the position (`,"metadata":<metadata>}`).
    pieces: [Piece; 4],
    /// The client's event id, kept in the journal record.
    pub id: Option<EventId>,
    /// The append's tracking, on its last event only (stored in that event's journal record).
    pub tracking: Option<Tracking>,
}

impl std::ops::Deref for PreparedBatch {
    type Target = [PreparedEvent];
    fn deref(&self) -> &[PreparedEvent] {
        &self.events
    }
}

/// Where an event's data and metadata JSON lie in its file: ((offset, length), (offset, length)).
pub(crate) type FileRanges = ((u32, u32), (u32, u32));

impl PreparedBatch {
    /// The bytes of every event's file but its position, added up.
    pub fn encoded_bytes(&self) -> usize {
        self.encoded_bytes
    }

    fn piece(&self, p: Piece) -> &[u8] {
        &self.bytes[p.0 as usize..(p.0 + p.1) as usize]
    }

    /// Appends event `e`'s file, at `position`, to `out`; returns where its data and metadata lie in it.
    pub fn push_file(&self, e: &PreparedEvent, position: u64, out: &mut Vec<u8>) -> FileRanges {
        let start = out.len();
        let [before, data, after, tail] = e.pieces;
        out.extend_from_slice(self.piece(before));
        out.extend_from_slice(self.piece(data));
        out.extend_from_slice(self.piece(after));
        out.extend_from_slice(itoa::Buffer::new().format(position).as_bytes());
        out.extend_from_slice(self.piece(tail));
        let len = out.len() - start;
        // `,"metadata":` + metadata + `}`
        let metadata_len = tail.1 - METADATA_PREFIX.len() as u32 - 1;
        let ranges = ((before.1, data.1), ((len - 1) as u32 - metadata_len, metadata_len));
        // The bytes we are about to make durable read back as this event at this position (tests and debug builds).
        debug_assert!(
            format::decode_event(&out[start..]).is_ok_and(|d| d.position == position
                && d.event_type == *e.event_type
                && d.data.get().as_bytes() == self.piece(data)),
            "event file bytes for position {position} do not decode to themselves"
        );
        ranges
    }

    /// Event `e`'s data JSON (minified), as its event file and its journal record hold it.
    pub fn data(&self, e: &PreparedEvent) -> &str {
        let bytes = self.piece(e.pieces[1]);
        debug_assert!(std::str::from_utf8(bytes).is_ok(), "prepare put the data JSON text here");
        // SAFETY: `prepare_refs` made this piece of the request's data text (a `&str`), as it came or minified
        // (`format::minify_json` removes ASCII whitespace between tokens only, which keeps UTF-8 whole); pieces are
        // never written after. Checking it again cost the writer thread a pass over every event's data per commit.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// Event `e`'s metadata JSON (minified): its file's last piece is `,"metadata":` + metadata + `}`.
    pub fn metadata(&self, e: &PreparedEvent) -> &str {
        let tail = self.piece(e.pieces[3]);
        let bytes = &tail[METADATA_PREFIX.len()..tail.len() - 1];
        debug_assert!(std::str::from_utf8(bytes).is_ok(), "prepare put the metadata here");
        // SAFETY: `prepare_refs` wrote this piece from `format::push_event_file_after_position` of a metadata
        // `&str`: ASCII before and after it, so cutting those off leaves the metadata text whole.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// Event `e`'s file at `position`.
    pub fn file_bytes(&self, e: &PreparedEvent, position: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(e.pieces.iter().map(|p| p.1 as usize).sum::<usize>() + 20);
        self.push_file(e, position, &mut out);
        out
    }
}

/// Where the writer answers an append: a thread blocked on it, or a task awaiting it ([`Store::submit_refs`]).
pub(crate) enum AppendReply {
    Blocking(SyncSender<Result<Appended, StoreError>>),
    Task(tokio::sync::oneshot::Sender<Result<Appended, StoreError>>),
}

impl AppendReply {
    /// Answers; an appender that went away (a closed connection) is no error.
    pub fn send(self, result: Result<Appended, StoreError>) {
        match self {
            AppendReply::Blocking(reply) => {
                let _ = reply.send(result);
            }
            AppendReply::Task(reply) => {
                let _ = reply.send(result);
            }
        }
    }
}

/// An append queued for the writer by [`Store::submit_refs`]: await it for the answer.
pub struct PendingAppend(tokio::sync::oneshot::Receiver<Result<Appended, StoreError>>);

impl std::future::Future for PendingAppend {
    type Output = Result<Appended, StoreError>;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|answer| answer.unwrap_or(Err(StoreError::Closed)))
    }
}

/// What [`Store::try_submit_refs`] did with an append.
pub enum Submitted {
    Queued(PendingAppend),
    /// The writer's queue was full: nothing is queued yet.
    QueueFull(QueueFull),
}

/// An append validated and encoded but not queued, because the writer's queue was full
/// ([`Store::try_submit_refs`]).
pub struct QueueFull {
    request: Request,
    answer: tokio::sync::oneshot::Receiver<Result<Appended, StoreError>>,
}

impl QueueFull {
    /// Queues the append, blocking while the writer's queue is full (backpressure).
    pub fn submit(self, store: &Store) -> Result<PendingAppend, StoreError> {
        store.send(self.request)?;
        Ok(PendingAppend(self.answer))
    }
}

pub(crate) enum Request {
    Append {
        events: PreparedBatch,
        condition: Option<AppendCondition>,
        reply: AppendReply,
    },
    /// Take the store lock, pick up events other processes appended, and (deferred mode, `flush_index`) flush
    /// index files.
    Sync {
        flush_index: bool,
        reply: SyncSender<Result<u64, StoreError>>,
    },
}

pub struct Store {
    shared: Arc<Shared>,
    requests: Option<SyncSender<Request>>,
    writer: Option<JoinHandle<()>>,
    flusher: Option<IndexFlusher>,
    /// Journal mode, mirror live: the mirror thread (`store/mirror.rs`).
    mirror: Option<JoinHandle<()>>,
    /// Journal mode: writes index checkpoints in the background and at close (`checkpoint`).
    checkpointer: Option<checkpoint::Checkpointer>,
    /// Deletes the files in the trash (`store/trash.rs`), stopped at close.
    trash_emptier: Option<JoinHandle<()>>,
    /// The marker of this run's unsynced writes (`store/unsynced.rs`), removed by a clean close after its sync.
    unsynced: unsynced::Run,
    _owner_lock: Option<File>,
    /// Journal mode: `.store.lock`, held (flock) from open to close.
    _tree_lock: Option<File>,
}

/// With deferred index writes: a thread that flushes changed index files every `interval`, off the writer thread,
/// so a flush of thousands of files never stalls appends. A flush rewrites whole files (a type index of a
/// million-event store is ~8 MB), so the pause after one is at least [`INDEX_FLUSH_PAUSE_FACTOR`] times what it
/// took: flushing never takes more than a small share of the disk from commits, however big the store grows.
struct IndexFlusher {
    stop: SyncSender<()>,
    thread: JoinHandle<()>,
}

impl IndexFlusher {
    fn spawn(shared: Arc<Shared>, interval: Duration) -> Result<IndexFlusher, StoreError> {
        let (stop, stopped) = sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("opossum-index-flush".into())
            .spawn(move || {
                let mut pause = interval;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(pause) {
                    let started = Instant::now();
                    shared.flush_index();
                    pause = interval.max(started.elapsed() * INDEX_FLUSH_PAUSE_FACTOR);
                }
            })
            .map_err(|e| StoreError::io(io::IoOp::Spawn, Path::new("index flush thread"), e))?;
        Ok(IndexFlusher { stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

impl Store {
    /// Opens (creating if needed) the store whose root directory is `root`: the folder holding `.ledger`,
    /// `events/` and `Indices/`. Recovers from crashes first: see ARCHITECTURE.md, "Recovery".
    pub fn open(root: impl AsRef<Path>, mut options: StoreOptions) -> Result<Store, StoreError> {
        let root = root.as_ref();
        std::fs::create_dir_all(root).map_err(|e| StoreError::io(io::IoOp::CreateDir, root, e))?;
        // Absolute from here on: error messages and logs name real paths, and no parent is ever "".
        let root = std::fs::canonicalize(root).map_err(|e| StoreError::io(io::IoOp::Open, root, e))?;
        let layout = Layout::new(&root);
        let owner_lock = if options.exclusive {
            let path = layout.owner_lock();
            let file = open_lock_file(&path)?;
            match file.try_lock() {
                Ok(()) => Some(file),
                Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(layout.root.clone())),
                Err(std::fs::TryLockError::Error(e)) => return Err(StoreError::io(io::IoOp::Lock, &path, e)),
            }
        } else {
            None
        };
        let io = match &options.io {
            Some(io) => io.clone(),
            None => io::open_backend_with(options.io_backend, options.sync_strategy)?,
        };
        let lock_file = LockFile::open(&layout.lock())?;
        let trash = Arc::new(trash::Trash::new(&layout));
        let (recovered, ledger_seen, journal, tree_lock, tracking, unsynced) = match options.commit {
            CommitMode::Files => {
                let _guard = StoreLock::acquire(&lock_file, &layout)?;
                // Before anything is written: a marker of this run's unsynced writes, or the last run's found.
                let mut unsynced = unsynced::Run::begin(&layout, options.durability);
                if unsynced.durable_instead() {
                    options.durability = Durability::Fsync;
                }
                // Never a tree the journal does not vouch for: repaired first (a journal-mode run that did not stop
                // cleanly, or ran with the mirror off).
                let repair = unsynced.repair_from();
                commit::journal::bring_tree_up_to_journal(&layout, io.clone(), &options, &trash, repair)?;
                let durable = options.durability == Durability::Fsync;
                let recovered = recovery::recover(&layout, io.as_ref(), durable, repair)?;
                unsynced.opened(&layout, recovered.head);
                let ledger_seen = writer::ledger_fingerprint(&layout.ledger());
                (recovered, ledger_seen, None, None, tracking::Table::default(), unsynced)
            }
            CommitMode::Journal => {
                // Held until close: the tree is behind the journal for as long as the store is open.
                let tree_lock = lock_file.hold()?;
                let mut unsynced = unsynced::Run::begin(&layout, options.durability);
                if unsynced.durable_instead() {
                    options.durability = Durability::Fsync;
                }
                let repair = unsynced.repair_from();
                let (recovered, journal, tracking) =
                    commit::journal::open(&layout, io.clone(), &options, &trash, repair)?;
                let tree = recovery::read_ledger(&layout).unwrap_or(0);
                unsynced.opened(&layout, tree);
                (recovered, None, Some(Arc::new(journal)), Some(tree_lock), tracking, unsynced)
            }
        };
        let mirror_live = journal.is_some() && options.mirror == MirrorMode::Live;
        let shared = Arc::new(Shared {
            layout,
            io,
            options,
            index: RwLock::new(recovered.index),
            head: AtomicU64::new(recovered.head),
            poisoned: Mutex::new(recovered.unwritable.clone()),
            write_status_changes: tokio::sync::broadcast::channel(WRITE_STATUS_CHANGES_MAX).0,
            counters: Counters::default(),
            index_flush: Mutex::new(()),
            ledger_seen: Mutex::new(ledger_seen),
            mirror: mirror_live.then(|| {
                let marked = journal.as_ref().map_or(recovered.head, |j| j.marks().mirror_durable.min(recovered.head));
                mirror::Mirror::new(recovered.head, marked)
            }),
            journal,
            mirror_failed: std::sync::atomic::AtomicBool::new(false),
            commits: CommitWatch::new(recovered.head),
            tracking: Mutex::new(tracking),
            trash,
        });
        shared.counters.index_write_failures.store(recovered.index_write_failures, Ordering::Relaxed);
        shared.count_quarantine();
        let (tx, rx) = sync_channel(APPEND_QUEUE_MAX);
        let writer = writer::Writer::new(shared.clone(), lock_file, rx);
        let handle = std::thread::Builder::new()
            .name("opossum-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::io(io::IoOp::Spawn, Path::new("writer thread"), e))?;
        // Journal mode writes index files at the mirror's checkpoints, whatever `index_writes` says.
        let mirror = match shared.mirror {
            Some(_) => Some(mirror::spawn(shared.clone())?),
            None => None,
        };
        let flusher = match shared.options.index_writes {
            _ if shared.journal.is_some() => None,
            IndexWrites::EveryCommit => None,
            IndexWrites::Deferred { interval } => Some(IndexFlusher::spawn(shared.clone(), interval)?),
        };
        let checkpointer = checkpoint::Checkpointer::spawn(&shared, recovered.index_checkpoint.unwrap_or(0))?;
        let trash_emptier = shared.trash.spawn_emptier()?;
        tracing::info!(root = %shared.layout.root.display(), head = recovered.head, io = shared.io.name(), "store open");
        let c = &shared.counters;
        let (quarantine_files, quarantine_bytes) =
            (c.quarantine_files.load(Ordering::Relaxed), c.quarantine_bytes.load(Ordering::Relaxed));
        if quarantine_files > 0 {
            tracing::info!(
                files = quarantine_files,
                bytes = quarantine_bytes,
                dir = %shared.layout.quarantine().display(),
                "leftovers set aside by recovery (kept for inspection; safe to remove)"
            );
        }
        if let Some(reason) = &recovered.unwritable {
            tracing::warn!("store open for reads only until recovery can write: {reason}");
        }
        Ok(Store {
            shared,
            requests: Some(tx),
            writer: Some(handle),
            flusher,
            mirror,
            checkpointer,
            trash_emptier: Some(trash_emptier),
            unsynced,
            _owner_lock: owner_lock,
            _tree_lock: tree_lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.shared.layout.root
    }

    /// The highest committed position (0 for an empty store).
    pub fn head(&self) -> u64 {
        self.shared.head()
    }

    /// The writer's commit notifications (see [`Subscription`]).
    pub fn commits(&self) -> &CommitWatch {
        &self.shared.commits
    }

    /// Every committed event matching `query` after position `after`, then each new one as it commits.
    pub fn subscribe(self: &Arc<Self>, query: Query, after: u64) -> Result<Subscription, StoreError> {
        Subscription::new(self.clone(), query, after)
    }

    pub fn io_backend(&self) -> &'static str {
        self.shared.io.name()
    }

    /// The store's `BatchIo` backend, to share with the projection store.
    pub fn io(&self) -> Arc<dyn BatchIo> {
        self.shared.io.clone()
    }

    /// Appends `events` atomically at the next positions, if `condition` holds. Blocks until the events are durable
    /// (per `Durability`); concurrent callers share group commits.
    pub fn append(&self, events: Vec<Event>, condition: Option<AppendCondition>) -> Result<Appended, StoreError> {
        self.append_tracked(events, condition, None)
    }

    /// [`Store::append`] with the consumer checkpoint `tracking`, committed with the events (journal mode only).
    /// Fails with `TrackingConflict` unless its position is above the source's last one. Events carrying ids that
    /// repeat a committed append are answered with its positions (`Appended::replayed`), writing nothing.
    pub fn append_tracked(
        &self,
        events: Vec<Event>,
        condition: Option<AppendCondition>,
        tracking: Option<Tracking>,
    ) -> Result<Appended, StoreError> {
        if self.shared.journal.is_none() {
            if tracking.is_some() {
                return Err(StoreError::NeedsJournal { what: "tracking" });
            }
            if events.iter().any(|e| e.id.is_some()) {
                return Err(StoreError::NeedsJournal { what: "an event id" });
            }
        }
        let prepared = prepare(events, condition.as_ref(), tracking.as_ref())?;
        self.append_prepared(prepared, condition)
    }

    /// [`Store::append_tracked`] of events borrowed from the bytes they were parsed from (the server's request line):
    /// each is validated and encoded from there, without owned copies of its fields.
    pub fn append_refs(
        &self,
        events: &[EventRef<'_>],
        condition: Option<AppendCondition>,
        tracking: Option<Tracking>,
    ) -> Result<Appended, StoreError> {
        self.refuse_without_journal(events, tracking.as_ref())?;
        let prepared = prepare_refs(events, condition.as_ref(), tracking.as_ref())?;
        self.append_prepared(prepared, condition)
    }

    /// [`Store::append_refs`] that returns once the events are validated, encoded and queued for the writer
    /// (blocking only while the queue is full): the answer is awaited, so no thread waits through the commit.
    pub fn submit_refs(
        &self,
        events: &[EventRef<'_>],
        condition: Option<AppendCondition>,
        tracking: Option<Tracking>,
    ) -> Result<PendingAppend, StoreError> {
        match self.try_submit_refs(events, condition, tracking)? {
            Submitted::Queued(pending) => Ok(pending),
            Submitted::QueueFull(full) => full.submit(self),
        }
    }

    /// [`Store::submit_refs`] that never blocks: the events are validated and encoded, and queued when the writer's
    /// queue has room; when it is full the prepared append comes back as [`QueueFull`], for a thread that may
    /// block to [`QueueFull::submit`]. An async task appends a small request this way without a hop to a blocking
    /// thread (two thread wake-ups, the larger part of a one-event append's CPU).
    pub fn try_submit_refs(
        &self,
        events: &[EventRef<'_>],
        condition: Option<AppendCondition>,
        tracking: Option<Tracking>,
    ) -> Result<Submitted, StoreError> {
        self.refuse_without_journal(events, tracking.as_ref())?;
        let prepared = prepare_refs(events, condition.as_ref(), tracking.as_ref())?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = Request::Append { events: prepared, condition, reply: AppendReply::Task(reply) };
        let requests = self.requests.as_ref().ok_or(StoreError::Closed)?;
        match requests.try_send(request) {
            Ok(()) => Ok(Submitted::Queued(PendingAppend(answer))),
            Err(TrySendError::Full(request)) => Ok(Submitted::QueueFull(QueueFull { request, answer })),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::Closed),
        }
    }

    /// Files mode keeps no tracking and no event ids (there is no journal record to keep them in).
    fn refuse_without_journal(&self, events: &[EventRef<'_>], tracking: Option<&Tracking>) -> Result<(), StoreError> {
        if self.shared.journal.is_none() {
            if tracking.is_some() {
                return Err(StoreError::NeedsJournal { what: "tracking" });
            }
            if events.iter().any(|e| e.id.is_some()) {
                return Err(StoreError::NeedsJournal { what: "an event id" });
            }
        }
        Ok(())
    }

    fn append_prepared(
        &self,
        prepared: PreparedBatch,
        condition: Option<AppendCondition>,
    ) -> Result<Appended, StoreError> {
        let (reply, response) = sync_channel(1);
        self.send(Request::Append { events: prepared, condition, reply: AppendReply::Blocking(reply) })?;
        response.recv().map_err(|_| StoreError::Closed)?
    }

    /// The last position recorded for tracking source `source` (0 when none; always 0 in files mode).
    pub fn tracking_position(&self, source: &str) -> u64 {
        self.shared.tracking.lock().unwrap_or_else(|e| e.into_inner()).position(source)
    }

    /// Says the store will be closed soon (a daemon's stop, before its last [`Store::sync`] and [`Store::close`]):
    /// from now on the mirror brings the tree current and durable the fastest way, not the way that keeps commits'
    /// latency low (its checkpoints write nothing back ahead of their `syncfs`, and it writes whole batches). The
    /// store goes on serving: appends, reads and `sync` work as before. Nothing to do in files mode or with the
    /// mirror off.
    pub fn begin_close(&self) {
        if let Some(mirror) = &self.shared.mirror {
            mirror.begin_close();
        }
    }

    /// Takes the store lock once: picks up events appended by other processes (the ledger moved) and, with
    /// deferred index writes, brings the index files up to date. In journal mode with the mirror live: waits for a
    /// mirror checkpoint covering the head (the tree current and durable, index files included). Returns the head.
    pub fn sync(&self) -> Result<u64, StoreError> {
        let head = self.sync_through_writer(true)?;
        if let Some(mirror) = &self.shared.mirror {
            if !self.shared.mirror_failed() {
                mirror.checkpoint_through(head);
            }
        }
        Ok(head)
    }

    fn sync_through_writer(&self, flush_index: bool) -> Result<u64, StoreError> {
        let (reply, response) = sync_channel(1);
        self.send(Request::Sync { flush_index, reply })?;
        response.recv().map_err(|_| StoreError::Closed)?
    }

    fn send(&self, request: Request) -> Result<(), StoreError> {
        let requests = self.requests.as_ref().ok_or(StoreError::Closed)?;
        requests.send(request).map_err(|_| StoreError::Closed)
    }

    /// Whether appends are taken now, and if not why (a write fault or a full disk; the writer retries recovery
    /// with backoff, so this can turn `Writable` again without a restart).
    pub fn write_status(&self) -> WriteStatus {
        match self.shared.poison_reason() {
            None => WriteStatus::Writable,
            Some(reason) => WriteStatus::Unwritable { reason },
        }
    }

    /// Every later change of [`Store::write_status`], in order. A receiver that falls more than
    /// `limits::WRITE_STATUS_CHANGES_MAX` changes behind gets `Lagged` and should read `write_status` afresh.
    pub fn write_status_changes(&self) -> tokio::sync::broadcast::Receiver<WriteStatus> {
        self.shared.write_status_changes.subscribe()
    }

    /// Streams the events matching `query` within `options`, in position order (descending when backwards).
    /// If another process (a .NET Opossum writer) moved the ledger since the writer last looked, its events are
    /// picked up first (one `stat` per read when nothing changed).
    pub fn read(&self, query: &Query, options: ReadOptions) -> Result<EventReader, StoreError> {
        query.validate()?;
        self.notice_other_writers()?;
        Ok(self.read_published(query.clone(), options))
    }

    /// [`Store::read`] for a caller that must not wait (an async worker): `None` with `--commit files` (a read
    /// there may first wait for the writer to pick up another process's appends) or while the index is locked for
    /// writing; the caller then runs `read` on a thread that may block. The reader's
    /// [`EventReader::next_views_cached`] reads on without waiting for the disk.
    pub fn try_read_now(&self, query: &Query, options: ReadOptions) -> Option<Result<EventReader, StoreError>> {
        self.shared.journal.as_ref()?;
        if let Err(e) = query.validate() {
            return Some(Err(e.into()));
        }
        EventReader::try_new(self.shared.clone(), query, options).map(Ok)
    }

    /// A read of what this store has published (every acknowledged event up to the head), without first looking
    /// for events other processes appended. Subscriptions read this way at each commit notification (the ledger
    /// check of [`Store::read`] would mostly catch our own writer mid-commit and wait for it), and look for other
    /// writers once per heartbeat. `query` must be valid.
    pub fn read_published(&self, query: Query, options: ReadOptions) -> EventReader {
        EventReader::new(self.shared.clone(), query, options)
    }

    /// If another process (a .NET Opossum writer) moved the ledger since the writer last looked, picks up its events
    /// (one `stat` when nothing changed).
    pub fn notice_other_writers(&self) -> Result<(), StoreError> {
        if self.shared.journal.is_some() {
            // The journal is the record: other processes' appends are picked up at open only (no `stat` per read).
            return Ok(());
        }
        let now = writer::ledger_fingerprint(&self.shared.layout.ledger());
        if now.is_some() && now != *self.shared.ledger_seen.lock().unwrap() && self.shared.poison_reason().is_none() {
            // Mostly our own writer, between writing the ledger and noting its new identity: then the ledger holds
            // nothing beyond our head, or its commit is in flight and the catch-up waits for it. Only a ledger
            // ahead of us needs the writer, and never an index flush (under load, racing reads used to trigger a
            // full flush on the writer thread, stalling appends for 100+ ms).
            match recovery::read_ledger(&self.shared.layout) {
                Ok(ledger) if ledger <= self.head() => {}
                _ => {
                    self.sync_through_writer(false)?;
                }
            }
        }
        Ok(())
    }

    /// Reads everything `read` would stream into one vector (tests and small results).
    pub fn read_to_vec(&self, query: &Query, options: ReadOptions) -> Result<Vec<SequencedEvent>, StoreError> {
        self.read(query, options)?.collect()
    }

    pub fn stats(&self) -> StoreStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let poison = self.shared.poison_reason();
        let mirror = self.shared.mirror.as_ref().map(mirror::Mirror::stats).unwrap_or_default();
        let subscriptions = self.shared.commits.stats();
        StoreStats {
            head: self.head(),
            io_backend: self.shared.io.name().to_string(),
            commit_mode: match self.shared.options.commit {
                CommitMode::Journal => "journal",
                CommitMode::Files => "files",
            }
            .to_string(),
            mirror: match (self.shared.options.commit, self.shared.options.mirror) {
                (CommitMode::Files, _) => "n/a",
                (CommitMode::Journal, MirrorMode::Live) => "live",
                (CommitMode::Journal, MirrorMode::Off) => "off",
            }
            .to_string(),
            appends: get(&c.appends),
            events_appended: get(&c.events_appended),
            condition_failures: get(&c.condition_failures),
            commits: get(&c.commits),
            write_batches: get(&c.write_batches),
            events_read: get(&c.events_read),
            commit_latency_us_total: get(&c.commit_latency_us_total),
            index_flushes: get(&c.index_flushes),
            index_flush_files: get(&c.index_flush_files),
            index_flush_us_total: get(&c.index_flush_us_total),
            index_flush_us_max: get(&c.index_flush_us_max),
            poisoned: poison.clone(),
            writable: poison.is_none(),
            unwritable_reason: poison,
            recovery_attempts: get(&c.recovery_attempts),
            index_write_failures: get(&c.index_write_failures),
            quarantine_files: get(&c.quarantine_files),
            quarantine_bytes: get(&c.quarantine_bytes),
            mirror_head: mirror.written,
            mirror_durable: mirror.durable,
            mirror_lag: match &self.shared.mirror {
                Some(_) => self.head().saturating_sub(mirror.written),
                None => 0,
            },
            mirror_checkpoints: mirror.checkpoints,
            mirror_waits: mirror.waits,
            mirror_failed: self.shared.mirror_failed(),
            journal_bytes: self.shared.journal.as_ref().map_or(0, |j| j.record_bytes()),
            journal_segments: self.shared.journal.as_ref().map_or(0, |j| j.segments() as u64),
            trash_files: self.shared.trash.deferred_files(),
            trash_emptied: self.shared.trash.emptied(),
            trash_spares_reused: self.shared.trash.spares().reused(),
            trash_spares_created: self.shared.trash.spares().created(),
            subscriptions_active: subscriptions.active,
            subscription_events_delivered: subscriptions.events_delivered,
            subscription_catch_up_fallbacks: subscriptions.catch_up_fallbacks,
        }
    }

    /// Journal mode: writes an index checkpoint through the head now, unless the one on disk holds it already (a
    /// checkpoint in progress is waited for). Returns the position the checkpoint on disk holds through, or `None`
    /// in files mode or when the write failed (logged; checkpoints are derived data: the next open scans more of the
    /// journal). The daemon's stop runs it beside [`Store::sync`], so the close that follows has nothing to write.
    pub fn checkpoint_index(&self) -> Option<u64> {
        let checkpointer = self.checkpointer.as_ref()?;
        match checkpointer.write_now(&self.shared) {
            Ok(through) => Some(through),
            Err(e) => {
                tracing::warn!("writing the index checkpoint failed (the next open scans more of the journal): {e}");
                None
            }
        }
    }

    /// Finishes queued appends, flushes deferred index files, and stops the writer. An error when the store was
    /// unwritable or its final index flush failed (nothing acknowledged is lost: the next open re-derives).
    ///
    /// The in-memory index (hundreds of MB and millions of allocations on a big store, ~2x its load time to free)
    /// is not freed on the caller's thread: when nothing else holds the store's state any more, it is handed to a
    /// short-lived thread that frees it, so a daemon's stop never waits for it (the process exits meanwhile).
    pub fn close(mut self) -> Result<(), StoreError> {
        let flushed = self.shutdown();
        match self.shared.poison_reason() {
            Some(reason) => Err(StoreError::Poisoned(reason)),
            None if !flushed => Err(StoreError::IndexFlush),
            None => Ok(()),
        }
    }

    /// Returns whether the final index flush (deferred index writes) wrote everything.
    fn shutdown(&mut self) -> bool {
        self.requests.take();
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
        let flushed = match self.flusher.take() {
            Some(flusher) => {
                flusher.stop();
                self.shared.flush_index()
            }
            None => true,
        };
        if let (Some(mirror), Some(thread)) = (&self.shared.mirror, self.mirror.take()) {
            // The writer has stopped: the mirror brings the tree current and durable (a last checkpoint) before
            // `.store.lock` is released (when `_tree_lock` drops).
            let started = Instant::now();
            mirror.stop();
            let _ = thread.join();
            tracing::info!(took_ms = started.elapsed().as_millis() as u64, "mirror: tree current at close");
        }
        if let Some(journal) = &self.shared.journal {
            if let Some(checkpointer) = self.checkpointer.take() {
                checkpointer.close(&self.shared);
            }
            if let Err(e) = journal.close() {
                self.shared.poison(format!("closing the journal failed: {e}"));
            }
        }
        // Every writer of the tree has stopped: what they left in the trash goes now (within a bound) or at the
        // next open.
        if let Some(emptier) = self.trash_emptier.take() {
            self.shared.trash.close(Some(emptier));
        }
        // Every writer has stopped: under `--durability none` one sync, then the marker of unsynced writes goes.
        let whole = self.shared.poison_reason().is_none();
        self.unsynced.close(&self.shared.layout, whole);
        self.free_index_in_background();
        flushed
    }

    /// After a close: frees the in-memory index on a thread of its own when this handle is the last one on the
    /// store's state (a reader still holding it keeps it, and frees it when it ends). Freeing a million-event index
    /// costs about twice its load time (glibc consolidating millions of small blocks); a stopping daemon exits
    /// without waiting for it. Everything durable was written before this.
    fn free_index_in_background(&mut self) {
        let Some(shared) = Arc::get_mut(&mut self.shared) else { return };
        let index = std::mem::take(shared.index.get_mut().unwrap_or_else(|e| e.into_inner()));
        if index.max_position == 0 {
            return;
        }
        // A failed spawn frees it here instead.
        let _ = std::thread::Builder::new().name("opossum-index-free".into()).spawn(move || drop(index));
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StoreError::io(io::IoOp::Open, path, e))
}

/// Validates an append and encodes its events (everything but the positions) on the caller's thread.
fn prepare(
    events: Vec<Event>,
    condition: Option<&AppendCondition>,
    tracking: Option<&Tracking>,
) -> Result<PreparedBatch, StoreError> {
    let refs: Vec<EventRef<'_>> = events.iter().map(Event::as_ref).collect();
    prepare_refs(&refs, condition, tracking)
}

/// [`prepare`] of borrowed events: one pass per event — names validated (once per run of equal types and tag
/// lists), the data scanned once for depth and whitespace (minified only when it has some), and every piece of its
/// file appended to the batch's one buffer.
fn prepare_refs(
    events: &[EventRef<'_>],
    condition: Option<&AppendCondition>,
    tracking: Option<&Tracking>,
) -> Result<PreparedBatch, StoreError> {
    if events.is_empty() {
        return Err(ModelError::InvalidEvent("an append needs at least one event".into()).into());
    }
    if events.len() > APPEND_EVENTS_MAX {
        return Err(StoreError::LimitExceeded {
            what: "the number of events in an append".into(),
            limit: "APPEND_EVENTS_MAX",
            value: events.len(),
            max: APPEND_EVENTS_MAX,
        });
    }
    if let Some(c) = condition {
        c.fail_if_events_match.validate()?;
    }
    if let Some(t) = tracking {
        model::validate_tracking_source(&t.source)?;
        if t.source.len() > TRACKING_SOURCE_BYTES_MAX {
            return Err(StoreError::LimitExceeded {
                what: "the tracking source, in bytes".into(),
                limit: "TRACKING_SOURCE_BYTES_MAX",
                value: t.source.len(),
                max: TRACKING_SOURCE_BYTES_MAX,
            });
        }
    }
    let count = events.len();
    let now = std::time::SystemTime::now();
    let data_bytes: usize = events.iter().map(|e| e.data.get().len()).sum();
    let mut bytes: Vec<u8> = Vec::with_capacity(data_bytes + 256);
    let piece = |bytes: &Vec<u8>, from: usize| Piece(from as u32, (bytes.len() - from) as u32);
    // Most events come without metadata: one `,"metadata":{"timestamp":..}}` for the whole append, built once.
    let default_metadata = format::metadata_with_timestamp(None, now)
        .map_err(|e| ModelError::InvalidEvent(format!("internal error: default metadata: {e}")))?;
    let from = bytes.len();
    format::push_event_file_after_position(&mut bytes, default_metadata.get());
    let default_tail = piece(&bytes, from);
    // The type and tags of the previous event, with their pieces: reused while the next events repeat them.
    let mut last_type: Option<(Arc<str>, Piece)> = None;
    let mut last_tags: Option<(Arc<[Tag]>, Piece)> = None;
    let mut total_bytes = 0usize;
    let mut prepared = Vec::with_capacity(count);
    for (i, event) in events.iter().enumerate() {
        let in_event = |reason: &dyn std::fmt::Display| ModelError::InvalidEvent(format!("event {i}: {reason}"));
        let invalid = |e: ModelError| match e {
            ModelError::InvalidEvent(reason) | ModelError::InvalidQuery(reason) => in_event(&reason),
        };
        // The checks of `model::validate_event`, in its order (the first failure is the one reported).
        let (event_type, before) = match &last_type {
            Some((t, before)) if **t == *event.event_type => (t.clone(), *before),
            _ => {
                model::validate_event_type(&event.event_type).map_err(invalid)?;
                let from = bytes.len();
                format::push_event_file_before_data(&mut bytes, &event.event_type);
                let made = (Arc::<str>::from(&*event.event_type), piece(&bytes, from));
                last_type = Some(made.clone());
                made
            }
        };
        let same_tags = |tags: &[Tag]| {
            tags.len() == event.tags.len()
                && tags.iter().zip(&event.tags).all(|(a, b)| a.key == *b.key && a.value == *b.value)
        };
        let (tags, after) = match &last_tags {
            Some((tags, after)) if same_tags(tags) => (tags.clone(), *after),
            _ => {
                for t in &event.tags {
                    model::validate_tag_parts(&t.key, &t.value).map_err(invalid)?;
                }
                let from = bytes.len();
                format::push_event_file_after_data(&mut bytes, event.tags.iter().map(|t| (&*t.key, &*t.value)));
                let tags: Arc<[Tag]> = event.tags.iter().map(|t| Tag::new(&*t.key, &*t.value)).collect();
                let made = (tags, piece(&bytes, from));
                last_tags = Some(made.clone());
                made
            }
        };
        let data = event.data.get();
        let shape = format::json_shape(data.as_bytes());
        if shape.depth > JSON_DEPTH_MAX {
            return Err(invalid(model::json_too_deep("data")).into());
        }
        let tail = match event.metadata {
            None => default_tail,
            Some(given) => {
                model::check_json_depth("metadata", given.get()).map_err(invalid)?;
                if !given.get().trim_start().starts_with('{') {
                    return Err(in_event(&"metadata must be a JSON object").into());
                }
                let metadata = format::metadata_with_timestamp(Some(given), now).map_err(|e| in_event(&e))?;
                let from = bytes.len();
                format::push_event_file_after_position(&mut bytes, metadata.get());
                piece(&bytes, from)
            }
        };
        let from = bytes.len();
        match shape.spaced {
            // Payloads arrive as arbitrary, possibly indented, JSON text: stored minified.
            true => bytes.extend_from_slice(&format::minify_json(data.as_bytes())),
            false => bytes.extend_from_slice(data.as_bytes()),
        }
        let data_piece = piece(&bytes, from);
        let pieces = [before, data_piece, after, tail];
        // The file's size without its position's digits.
        let file_bytes = pieces.iter().map(|p| p.1 as usize).sum::<usize>();
        if file_bytes > EVENT_BYTES_MAX {
            return Err(StoreError::LimitExceeded {
                what: format!("event {i}, encoded, in bytes"),
                limit: "EVENT_BYTES_MAX",
                value: file_bytes,
                max: EVENT_BYTES_MAX,
            });
        }
        total_bytes += file_bytes;
        prepared.push(PreparedEvent {
            event_type,
            tags,
            pieces,
            id: event.id,
            tracking: if i + 1 == count { tracking.cloned() } else { None },
        });
    }
    if total_bytes > APPEND_BYTES_MAX {
        return Err(StoreError::LimitExceeded {
            what: "the append, encoded, in bytes".into(),
            limit: "APPEND_BYTES_MAX",
            value: total_bytes,
            max: APPEND_BYTES_MAX,
        });
    }
    debug_assert!(prepared.iter().all(|e| e.event_type.len() <= EVENT_TYPE_BYTES_MAX));
    Ok(PreparedBatch { bytes, events: prepared, encoded_bytes: total_bytes })
}

/// Microseconds since `start`, saturating.
pub(crate) fn elapsed_us(start: Instant) -> u64 {
    start.elapsed().as_micros().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod prepare_tests {
    use super::*;
    use crate::model::TagRef;
    use serde_json::value::RawValue;
    use std::borrow::Cow;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).unwrap()
    }

    fn event(event_type: &str, data: &str, tags: &[(&str, &str)], metadata: Option<&str>) -> Event {
        let mut e = Event::new(event_type, data, tags.iter().map(|(k, v)| Tag::new(*k, *v)).collect()).unwrap();
        e.metadata = metadata.map(raw);
        e
    }

    /// The batch's files are what `format::encode_event` (serde's serialiser) writes for the minified event: types,
    /// tags and payloads with quotes, escapes, spaces in strings and non-ASCII text, shared pieces and not.
    #[test]
    fn prepared_files_are_what_the_event_file_encoder_writes() {
        let stamp = r#"{"timestamp":"2026-03-11T10:30:00.1234567+00:00"}"#;
        let events = vec![
            event(
                "Tést \"q\"",
                r#"{ "a" : "x  y\t", "b":"\u00e9 \"q\" é\\", "c":[ 1 , 2.5e3 ] }"#,
                &[("k", "v w")],
                Some(stamp),
            ),
            event("Tést \"q\"", r#""plain text""#, &[("k", "v w")], Some(stamp)),
            event("Tést \"q\"", "[]", &[("k", "é \"x\""), ("z", "1")], Some(r#"{"timestamp":"keep","c":null}"#)),
            event("B", "null", &[], Some(stamp)),
            event("Tést \"q\"", "{\"n\":\"a\\\\\"}", &[("k", "v w")], Some(stamp)),
        ];
        let batch = prepare(events.clone(), None, None).unwrap();
        assert_eq!(batch.len(), events.len());
        let now = std::time::SystemTime::now();
        for (i, (e, p)) in events.iter().zip(batch.iter()).enumerate() {
            let position = 1_000 + i as u64;
            let data = format::minify_raw(&e.data);
            let metadata = format::metadata_with_timestamp(e.metadata.as_deref(), now).unwrap();
            let expected = format::encode_event(position, &e.event_type, &data, &e.tags, &metadata);
            let mut file = vec![b'x'];
            let ((data_at, data_len), (meta_at, meta_len)) = batch.push_file(p, position, &mut file);
            assert_eq!(&file[1..], &expected[..], "event {i}: {}", String::from_utf8_lossy(&file));
            assert_eq!(batch.file_bytes(p, position), expected);
            let slice = |at: u32, len: u32| &expected[at as usize..(at + len) as usize];
            assert_eq!(slice(data_at, data_len), data.get().as_bytes());
            assert_eq!(slice(meta_at, meta_len), metadata.get().as_bytes());
            assert_eq!((&*p.event_type, &p.tags[..]), (e.event_type.as_str(), &e.tags[..]));
        }
        // Runs of equal types and tag lists share one copy.
        assert!(Arc::ptr_eq(&batch[0].event_type, &batch[1].event_type));
        assert!(Arc::ptr_eq(&batch[0].tags, &batch[1].tags));
        assert!(!Arc::ptr_eq(&batch[1].tags, &batch[2].tags));
        let pieces: usize = batch.iter().map(|p| p.pieces.iter().map(|x| x.1 as usize).sum::<usize>()).sum();
        assert_eq!(batch.encoded_bytes(), pieces);
    }

    /// Events without metadata share one default metadata, a timestamp of the append.
    #[test]
    fn events_without_metadata_get_the_appends_timestamp() {
        let batch = prepare(vec![event("A", "{}", &[], None), event("A", "1", &[], None)], None, None).unwrap();
        let files: Vec<SequencedEvent> =
            batch.iter().map(|p| format::decode_event(&batch.file_bytes(p, 1)).unwrap()).collect();
        assert!(files[0].metadata.get().starts_with(r#"{"timestamp":""#), "{}", files[0].metadata.get());
        assert_eq!(files[0].metadata.get(), files[1].metadata.get());
    }

    /// A name repeated from the event before is not checked again, but a different one always is: a bad type or tag
    /// after a run of good ones is refused with its event's index.
    #[test]
    fn every_distinct_type_and_tag_list_is_validated() {
        let good = || event("A", "{}", &[("k", "v")], None);
        let err = prepare(vec![good(), good(), event("A", "{}", &[("k", "a/b")], None)], None, None).unwrap_err();
        assert!(err.to_string().contains("event 2: tag value \"a/b\""), "{err}");
        let err = prepare(vec![good(), event("A/B", "{}", &[("k", "v")], None)], None, None).unwrap_err();
        assert!(err.to_string().contains("event 1: event type \"A/B\""), "{err}");
        let deep = format!("{}{}", "[".repeat(JSON_DEPTH_MAX + 1), "]".repeat(JSON_DEPTH_MAX + 1));
        let err = prepare(vec![good(), event("A", &deep, &[("k", "v")], None)], None, None).unwrap_err();
        assert!(err.to_string().contains("event 1: data is nested deeper"), "{err}");
        let err = prepare(vec![good(), event("A", "{}", &[("k", "v")], Some("[1]"))], None, None).unwrap_err();
        assert!(err.to_string().contains("event 1: metadata must be a JSON object"), "{err}");
    }

    /// Borrowed events (the server's path) prepare exactly as owned ones, escaped names decoded either way.
    #[test]
    fn borrowed_events_prepare_as_owned_ones() {
        let line = r#"[{"type":"A\u0042","data":{ "x" : "y  z" },"tags":[{"key":"k\"","value":"\u00e9"}]},{"type":"AB","data":1,"tags":[{"key":"k\"","value":"é"}],"metadata":{"timestamp":"t"}}]"#;
        let refs: Vec<EventRef<'_>> = serde_json::from_str(line).unwrap();
        assert!(matches!(refs[1].event_type, Cow::Borrowed(_)) && matches!(refs[0].event_type, Cow::Owned(_)));
        let owned: Vec<Event> = serde_json::from_str(line).unwrap();
        assert_eq!(refs[0].tags[0], TagRef { key: Cow::Borrowed("k\""), value: Cow::Borrowed("é") });
        let (a, b) = (prepare_refs(&refs, None, None).unwrap(), prepare(owned, None, None).unwrap());
        for (x, y) in a.iter().zip(b.iter()) {
            let strip = |bytes: Vec<u8>| format::decode_event(&bytes).unwrap();
            let (x, y) = (strip(a.file_bytes(x, 7)), strip(b.file_bytes(y, 7)));
            assert_eq!((x.event_type, x.data.get(), x.tags), (y.event_type, y.data.get(), y.tags));
        }
        assert!(Arc::ptr_eq(&a[0].tags, &a[1].tags), "equal after decoding: shared");
    }
}
