//! The journal: the durable record of every event, as append-only segments of checksummed records under
//! `<store>/.opossumd/journal/` (byte layouts in [`format`] and `docs/journal.md`).
//!
//! Contract:
//! - [`Journal::append`] writes one group (the records of one group commit, consecutive positions from
//!   `head + 1`) with one write and, when durable, one `fdatasync` of the active segment. On `Ok` the group is on
//!   stable storage and visible to reads; on `Err` the journal is poisoned (a failed write or `fdatasync` may have
//!   lost dirty pages; retrying would lie) and refuses further appends until reopened.
//! - A group is all or nothing across crashes: recovery keeps whole groups only.
//! - Reads never see a position above [`Journal::head`], which moves only after its group is durable.
//! - Appends are serialised by the caller's single writer; reads may run on any thread meanwhile (the table of
//!   locations is locked only to copy locations out or push new ones, never across I/O).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};

pub mod faulty;
pub mod format;
pub mod marks;
pub mod recovery;
pub mod storage;

pub use faulty::{FaultyStorage, JournalFault};
pub use format::{NewRecord, RecordView};
pub use marks::Marks;
pub use storage::{DiskStorage, JournalStorage, SimStorage};

use crate::io::{BatchIo, Extent};
use crate::limits::{
    JOURNAL_GROUP_BUFFER_KEPT_BYTES_MAX, JOURNAL_READ_EXTENT_BYTES_MAX, JOURNAL_SCAN_BYTES_MAX,
    JOURNAL_SEGMENT_BYTES_MAX, JOURNAL_SPARE_STEP_BYTES_MAX, JOURNAL_ZERO_AHEAD_BYTES_MAX,
    JOURNAL_ZERO_CHUNK_BYTES_DEFAULT,
};
use format::{padded, SEGMENT_HEADER_BYTES, SPARE_SEGMENT_FILE, TRAILER_BYTES};

/// A durable group's write ends on a multiple of this (zeros after its records, where zeros already are): the page
/// cache then holds every page a group wrote whole, so the next group, which starts inside the last one, makes the
/// kernel read nothing from the disk first (a spare segment's zeros bypass the cache).
const GROUP_WRITE_ALIGN_BYTES: u64 = 4096;

/// `<store>/.opossumd`: the daemon's own files (the journal, the index checkpoint).
pub const DAEMON_DIR: &str = ".opossumd";
/// The index checkpoint's file name in [`DAEMON_DIR`] (format: `store::checkpoint`, `docs/journal.md`).
pub const INDEX_CHECKPOINT_FILE: &str = "index.ckpt";

/// `<store>/.opossumd/journal`
pub fn journal_dir(store_root: &Path) -> PathBuf {
    store_root.join(DAEMON_DIR).join("journal")
}

/// `<store>/.opossumd/index.ckpt`: the in-memory index as of a position, so an open reads only the journal after it.
pub fn index_checkpoint_path(store_root: &Path) -> PathBuf {
    store_root.join(DAEMON_DIR).join(INDEX_CHECKPOINT_FILE)
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt journal segment {segment} at offset {offset}: {reason}")]
    Corrupt { segment: PathBuf, offset: u64, reason: String },
    #[error("the journal refuses appends after a failed write or fdatasync (reopen to recover): {0}")]
    Poisoned(String),
}

impl JournalError {
    fn io(op: &'static str, path: PathBuf) -> impl FnOnce(std::io::Error) -> JournalError {
        move |source| JournalError::Io { op, path, source }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct JournalOptions {
    /// `fdatasync` each group (and seals, and segment creation) before `append` returns.
    pub durable: bool,
    /// Seal a segment once the next group would take it past this many bytes.
    pub segment_bytes: u64,
    /// Zeros written and synced per step ahead of the write head (durable journals only).
    pub zero_chunk_bytes: u64,
    /// Who writes those zeros.
    pub zero_fill: ZeroFill,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            durable: true,
            segment_bytes: JOURNAL_SEGMENT_BYTES_MAX,
            zero_chunk_bytes: JOURNAL_ZERO_CHUNK_BYTES_DEFAULT,
            zero_fill: ZeroFill::Background,
        }
    }
}

/// Who zero-fills the active segment ahead of its write head (durable journals; see [`Journal::append`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroFill {
    /// A thread of the journal's own, off the commit path (the default).
    Background,
    /// The appending thread, inside `append`, just before the group is written: deterministic, for the
    /// simulated-crash tests, where every write and sync is a numbered crash point.
    Inline,
}

/// Where one record lies: `segment` indexes [`Journal::segment_name`]s in position order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub segment: u32,
    pub offset: u32,
    pub size: u32,
}

#[derive(Debug, Clone)]
struct Segment {
    first: u64,
    name: Arc<str>,
    /// Its format version (`format::decode_segment_header`): how its records are laid out.
    version: u32,
}

#[derive(Debug, Default)]
struct Table {
    segments: Vec<Segment>,
    /// `locations[p - 1]`: where position `p` lies. Positions are contiguous from 1.
    locations: Vec<Location>,
}

#[derive(Debug)]
struct Active {
    /// The segment being appended to (index into `Table::segments`), or none (all sealed, or an empty journal).
    segment: Option<u32>,
    /// Where the next group goes.
    end: u64,
    /// The bytes the segment may take before it is sealed (`segment_bytes`, or more for one bigger group).
    capacity: u64,
    /// The group write buffer, kept between groups.
    buf: Vec<u8>,
}

/// The zero-fill of the active segment ahead of its write head, shared by `append` and the zero-fill thread.
///
/// Why: a group commit's `fdatasync` must flush data alone. Writing into a hole or into `fallocate`'s unwritten
/// extents changes block metadata, so every such `fdatasync` was a filesystem journal commit, carrying with it every
/// file the live mirror had created since the last one (measured: 6.2k against 9.1k `fdatasync`/s beside a file
/// creator). So groups are written only over zeros already written and synced.
///
/// A new segment is made from the spare (`format::SPARE_SEGMENT_FILE`) when one is ready: a whole segment of zeros
/// the thread wrote and synced beforehand, in a file nothing else writes. Its segment then needs no zeros while it
/// is active: the writer alone writes to it (no wait on the thread's writes to the same file) and a commit's
/// `fdatasync` flushes its group alone (not zeros the thread wrote but had not synced yet).
#[derive(Default)]
struct Zeroing {
    state: Mutex<ZeroState>,
    changed: Condvar,
}

#[derive(Default)]
struct ZeroState {
    /// The segment being zero-filled (none between a seal and the next segment's first group).
    segment: Option<Arc<str>>,
    /// Its bytes below this are records or durable zeros: a group may be written there.
    zeroed: u64,
    /// Where the thread should take `zeroed` (at most the segment's capacity).
    want: u64,
    /// The thread is writing zeros to `segment` right now (a seal waits for it before cutting the file).
    busy: bool,
    /// A zero-fill that failed: reported to the append that needs the space, which poisons the journal.
    failed: Option<(std::io::ErrorKind, String)>,
    /// Bytes of the spare from its start that are zeros written and synced.
    spare_zeroed: u64,
    /// The spare's length to reach (the segment size); 0: no spare is being made (none asked for yet, or one is
    /// being turned into a segment, or `spare_off`).
    spare_want: u64,
    /// The thread is writing zeros to the spare right now.
    spare_busy: bool,
    /// No more spares: the journal closed, or making one failed (new segments are then zero-filled as they fill).
    spare_off: bool,
    /// A seal's durable head for the thread to note in `marks` (0: none due).
    durable_head_due: u64,
    stop: bool,
}

impl Zeroing {
    fn lock(&self) -> MutexGuard<'_, ZeroState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, ZeroState>) -> MutexGuard<'a, ZeroState> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    /// Stops zero-filling the current segment, waiting out a step in flight (before a seal or a trim cuts it).
    fn detach(&self) {
        let mut s = self.lock();
        while s.busy {
            s = self.wait(s);
        }
        s.segment = None;
        s.zeroed = 0;
        s.want = 0;
    }

    /// Gives up spares for good, waiting out a step in flight (a close, which then removes the file).
    fn stop_spares(&self) {
        let mut s = self.lock();
        s.spare_off = true;
        while s.spare_busy {
            s = self.wait(s);
        }
        s.spare_want = 0;
        s.spare_zeroed = 0;
    }
}

impl ZeroState {
    /// `name` becomes the segment zero-filled ahead of its head, zeros (or records) below `zeroed`.
    fn set_segment(&mut self, name: Arc<str>, zeroed: u64) {
        self.segment = Some(name);
        self.zeroed = zeroed;
        self.want = 0;
        self.failed = None;
    }
}

/// The zero-fill thread: takes `zeroed` towards `want` one chunk (one write + one `fdatasync`) at a time; when the
/// active segment needs none, takes the spare towards `spare_want` one `JOURNAL_SPARE_STEP_BYTES_MAX` step at a time.
fn zero_fill_thread(storage: Arc<dyn JournalStorage>, zeroing: Arc<Zeroing>, marks: Arc<Mutex<Marks>>, chunk: u64) {
    let mut s = zeroing.lock();
    loop {
        if s.stop {
            return;
        }
        if s.durable_head_due > 0 {
            let due = std::mem::take(&mut s.durable_head_due);
            drop(s);
            if let Err(e) = write_marks(storage.as_ref(), &marks, |m| m.durable_head = m.durable_head.max(due)) {
                // Only the check it enables is missing until the next seal or the close notes it again.
                tracing::warn!("journal: could not note durable head {due} in the marks after a seal: {e}");
            }
            s = zeroing.lock();
            continue;
        }
        let step = match &s.segment {
            Some(name) if s.failed.is_none() && s.zeroed < s.want => Some((name.clone(), s.zeroed)),
            _ => None,
        };
        let Some((name, from)) = step else {
            if s.spare_zeroed < s.spare_want && !s.spare_off {
                let (from, to) = (s.spare_zeroed, s.spare_want.min(s.spare_zeroed + JOURNAL_SPARE_STEP_BYTES_MAX));
                s.spare_busy = true;
                drop(s);
                let filled = zero_spare_step(storage.as_ref(), from, to);
                s = zeroing.lock();
                s.spare_busy = false;
                match filled {
                    // Unless the spare was given up meanwhile (a close).
                    Ok(()) if s.spare_want > 0 => s.spare_zeroed = to,
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(
                            "journal: could not prepare a spare segment ({e}); new segments are zero-filled as they fill"
                        );
                        s.spare_off = true;
                        s.spare_want = 0;
                        s.spare_zeroed = 0;
                    }
                }
                zeroing.changed.notify_all();
                continue;
            }
            s = zeroing.wait(s);
            continue;
        };
        let to = s.want.min(from + chunk);
        s.busy = true;
        drop(s);
        let filled = storage.zero_fill(&name, from, to - from);
        s = zeroing.lock();
        s.busy = false;
        if s.segment.as_ref() == Some(&name) {
            match filled {
                Ok(()) => s.zeroed = s.zeroed.max(to),
                Err(e) => s.failed = Some((e.kind(), e.to_string())),
            }
        }
        zeroing.changed.notify_all();
    }
}

/// Replaces the marks file with `change` applied to `marks`, unless that changes nothing.
fn write_marks(
    storage: &dyn JournalStorage,
    marks: &Mutex<Marks>,
    change: impl FnOnce(&mut Marks),
) -> Result<(), JournalError> {
    let mut marks = marks.lock().unwrap_or_else(|e| e.into_inner());
    let mut next = *marks;
    change(&mut next);
    if next == *marks {
        return Ok(());
    }
    storage
        .replace(marks::MARKS_FILE, &next.encode())
        .map_err(JournalError::io("replace", storage.path(marks::MARKS_FILE)))?;
    *marks = next;
    Ok(())
}

/// One step of making the spare: zeros `[from, to)` written and synced; a new spare (`from == 0`) replaces whatever
/// an earlier run left under its name.
fn zero_spare_step(storage: &dyn JournalStorage, from: u64, to: u64) -> std::io::Result<()> {
    if from == 0 {
        match storage.remove(SPARE_SEGMENT_FILE) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        storage.create(SPARE_SEGMENT_FILE)?;
    }
    storage.zero_fill_uncached(SPARE_SEGMENT_FILE, from, to - from)
}

pub struct Journal {
    storage: Arc<dyn JournalStorage>,
    options: JournalOptions,
    table: RwLock<Table>,
    active: Mutex<Active>,
    head: AtomicU64,
    poisoned: Mutex<Option<String>>,
    marks: Arc<Mutex<Marks>>,
    /// Reads go through this backend's `read_extents` when set (and the storage has real files).
    io: Option<Arc<dyn BatchIo>>,
    zeroing: Arc<Zeroing>,
    /// The zero-fill thread, started by the first durable append (`ZeroFill::Background`).
    zero_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.zeroing.lock().stop = true;
        self.zeroing.changed.notify_all();
        if let Some(thread) = self.zero_thread.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// What `open` found, for logs.
#[derive(Debug, Clone, Default)]
pub struct Opened {
    pub head: u64,
    pub segments: usize,
    /// Bytes of a torn tail cut from the active segment.
    pub torn_bytes: u64,
}

impl Journal {
    /// Opens the journal on `storage`, recovering: reads sealed segments' offset tables, scans the active segment,
    /// cuts a torn tail (see [`recovery`]), and fails on corruption naming the segment and offset.
    pub fn open(storage: Arc<dyn JournalStorage>, options: JournalOptions) -> Result<(Journal, Opened), JournalError> {
        let dir = storage.dir().to_path_buf();
        let marks = match read_small(storage.as_ref(), marks::MARKS_FILE)? {
            None => Marks::default(),
            Some(bytes) => Marks::decode(&bytes).map_err(|reason| JournalError::Corrupt {
                segment: storage.path(marks::MARKS_FILE),
                offset: 0,
                reason,
            })?,
        };
        let mut names: Vec<(u64, String)> = storage
            .list()
            .map_err(JournalError::io("list", dir.clone()))?
            .into_iter()
            .filter_map(|n| format::parse_segment_name(&n).map(|first| (first, n)))
            .collect();
        names.sort();
        let mut table = Table::default();
        let mut active = Active { segment: None, end: 0, capacity: 0, buf: Vec::new() };
        let mut opened = Opened::default();
        let count = names.len();
        for (i, (first, name)) in names.into_iter().enumerate() {
            let path = storage.path(&name);
            let is_last = i + 1 == count;
            let expected = table.locations.len() as u64 + 1;
            if first != expected {
                return Err(JournalError::Corrupt {
                    segment: path,
                    offset: 0,
                    reason: format!(
                        "segment starts at position {first}, but the journal before it ends at {}",
                        expected - 1
                    ),
                });
            }
            let len = storage.len(&name).map_err(JournalError::io("stat", path.clone()))?;
            let segment_index = table.segments.len() as u32;
            if let Some((version, records)) = read_sealed(storage.as_ref(), &name, first, len)? {
                table.segments.push(Segment { first, name: name.into(), version });
                table.locations.extend(records.into_iter().map(|(offset, size)| Location {
                    segment: segment_index,
                    offset,
                    size,
                }));
                continue;
            }
            let mut bytes = vec![0u8; len as usize];
            storage.read_at(&name, &mut bytes, 0).map_err(JournalError::io("read", path.clone()))?;
            if let Err(reason) = format::decode_segment_header(&bytes) {
                // A segment whose creation did not finish holds no acknowledged record: its header and name were
                // durable before its first group was written.
                let nothing = bytes.len() <= SEGMENT_HEADER_BYTES
                    || (format::FORMAT_VERSION_MIN..=format::FORMAT_VERSION)
                        .all(|v| recovery::scan(&bytes, first, v, &path).is_ok_and(|s| s.records.is_empty()));
                if is_last && nothing {
                    tracing::warn!(segment = %path.display(), "removing a journal segment whose creation never finished");
                    storage.remove(&name).map_err(JournalError::io("remove", path.clone()))?;
                    storage.sync_dir().map_err(JournalError::io("fsync", dir.clone()))?;
                    break;
                }
                return Err(JournalError::Corrupt { segment: path, offset: 0, reason });
            }
            let (header_first, version) = format::decode_segment_header(&bytes).unwrap_or((0, 0));
            if header_first != first {
                return Err(JournalError::Corrupt {
                    segment: path,
                    offset: 16,
                    reason: format!("header says first position {header_first}, the name says {first}"),
                });
            }
            let scanned = recovery::scan(&bytes, first, version, &path)?;
            if let Some(tail_end) = scanned.tail_end {
                let cut_at = first + scanned.records.len() as u64;
                if !is_last || cut_at <= marks.durable_head {
                    return Err(JournalError::Corrupt {
                        segment: path,
                        offset: scanned.end,
                        reason: format!(
                            "damaged records from position {cut_at} on, which the journal acknowledged as durable \
                             (durable head {}{})",
                            marks.durable_head,
                            if is_last { "" } else { "; not the last segment" }
                        ),
                    });
                }
                let torn = tail_end - scanned.end;
                tracing::warn!(segment = %path.display(), offset = scanned.end, bytes = torn, "cutting a torn journal tail (never acknowledged)");
                storage
                    .write_at(&name, &vec![0u8; torn as usize], scanned.end)
                    .map_err(JournalError::io("write", path.clone()))?;
                storage.sync_data(&name).map_err(JournalError::io("fdatasync", path.clone()))?;
                opened.torn_bytes += torn;
            }
            table.segments.push(Segment { first, name: name.into(), version });
            table.locations.extend(scanned.records.iter().map(|&(offset, size)| Location {
                segment: segment_index,
                offset,
                size,
            }));
            if is_last {
                // A clean close cut the zeros after the records; the segment may still take `segment_bytes`.
                let capacity = len.max(options.segment_bytes);
                active = Active { segment: Some(segment_index), end: scanned.end, capacity, buf: Vec::new() };
            }
        }
        let head = table.locations.len() as u64;
        if head < marks.durable_head {
            return Err(JournalError::Corrupt {
                segment: dir,
                offset: 0,
                reason: format!(
                    "the journal ends at position {head}, but it acknowledged up to {} as durable",
                    marks.durable_head
                ),
            });
        }
        opened.head = head;
        opened.segments = table.segments.len();
        let journal = Journal {
            storage,
            options,
            table: RwLock::new(table),
            active: Mutex::new(active),
            head: AtomicU64::new(head),
            poisoned: Mutex::new(None),
            marks: Arc::new(Mutex::new(marks)),
            io: None,
            zeroing: Arc::default(),
            zero_thread: Mutex::new(None),
        };
        Ok((journal, opened))
    }

    /// Opens the journal of the store at `store_root` on real files.
    pub fn open_dir(store_root: &Path, options: JournalOptions) -> Result<(Journal, Opened), JournalError> {
        let dir = journal_dir(store_root);
        let storage = DiskStorage::open(&dir).map_err(JournalError::io("create", dir.clone()))?;
        Journal::open(Arc::new(storage), options)
    }

    /// The last position in the journal (0 when empty): every position up to it is durable and readable.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    pub fn storage(&self) -> &Arc<dyn JournalStorage> {
        &self.storage
    }

    pub fn poison_reason(&self) -> Option<String> {
        self.poisoned.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn poison(&self, e: JournalError) -> JournalError {
        let reason = e.to_string();
        self.poisoned.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(reason);
        e
    }

    /// Appends one group: `records[i]` takes position `first + i`. See the module contract.
    ///
    /// # Panics
    /// When `first` is not `head + 1` or the group is empty: the writer assigns positions, so either is a bug.
    pub fn append(&self, first: u64, records: &[NewRecord<'_>]) -> Result<Vec<Location>, JournalError> {
        assert!(!records.is_empty(), "a group has at least one record");
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = self.poison_reason() {
            return Err(JournalError::Poisoned(reason));
        }
        assert_eq!(first, self.head() + 1, "groups take the next positions");
        let events = u32::try_from(records.len()).expect("group within u32 events");
        // Records are encoded straight into the group's write buffer, kept between groups (no allocation, no page
        // faults of a fresh buffer per group) unless a big group grew it past `JOURNAL_GROUP_BUFFER_KEPT_BYTES_MAX`.
        let mut buf = std::mem::take(&mut active.buf);
        buf.clear();
        buf.reserve(records.iter().map(NewRecord::stored_bytes).sum());
        let mut placed = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let at = buf.len();
            let size = format::encode_record(&mut buf, first + i as u64, first, events, r);
            placed.push((at as u64, size));
        }
        let result = self.write_group(&mut active, first, events, &mut buf, placed);
        if buf.capacity() <= JOURNAL_GROUP_BUFFER_KEPT_BYTES_MAX {
            active.buf = buf;
        }
        result
    }

    /// `append` once the group is encoded in `buf` (`placed`: each record's offset in it and size).
    fn write_group(
        &self,
        active: &mut Active,
        first: u64,
        events: u32,
        buf: &mut Vec<u8>,
        placed: Vec<(u64, u32)>,
    ) -> Result<Vec<Location>, JournalError> {
        self.retire_older_format(active).map_err(|e| self.poison(e))?;
        if active.segment.is_none() || active.end + buf.len() as u64 > active.capacity {
            self.seal(active).map_err(|e| self.poison(e))?;
            self.start_segment(active, first, buf.len() as u64).map_err(|e| self.poison(e))?;
        }
        let segment = active.segment.expect("an active segment");
        let name = self.table.read().unwrap_or_else(|e| e.into_inner()).segments[segment as usize].name.clone();
        let path = || self.storage.path(&name);
        let records = buf.len();
        if self.options.durable {
            // Zeros after the records up to the next `GROUP_WRITE_ALIGN_BYTES` (never past the segment's capacity,
            // the zeros' reach): the same bytes as on disk, written so the group's last page is cached whole.
            let end = active.end + records as u64;
            let write_end = end.next_multiple_of(GROUP_WRITE_ALIGN_BYTES).min(active.capacity).max(end);
            self.zeroed_through(active, &name, write_end).map_err(|e| self.poison(e))?;
            buf.resize(records + (write_end - end) as usize, 0);
        }
        let written = self.storage.write_at(&name, buf, active.end);
        buf.truncate(records);
        written.map_err(|e| self.poison(JournalError::io("write", path())(e)))?;
        if self.options.durable {
            self.storage.sync_data(&name).map_err(|e| self.poison(JournalError::io("fdatasync", path())(e)))?;
        }
        let base = active.end;
        let locations: Vec<Location> =
            placed.into_iter().map(|(at, size)| Location { segment, offset: (base + at) as u32, size }).collect();
        active.end += buf.len() as u64;
        self.table.write().unwrap_or_else(|e| e.into_inner()).locations.extend_from_slice(&locations);
        self.head.store(first + events as u64 - 1, Ordering::Release);
        Ok(locations)
    }

    /// This build appends only to segments of its own format version: an older active segment (found at open) is
    /// sealed before the first group, or removed when it holds no record (its header was all it had).
    fn retire_older_format(&self, active: &mut Active) -> Result<(), JournalError> {
        let Some(segment) = active.segment else { return Ok(()) };
        let (name, version) = {
            let t = self.table.read().unwrap_or_else(|e| e.into_inner());
            let s = &t.segments[segment as usize];
            (s.name.clone(), s.version)
        };
        if version == format::FORMAT_VERSION {
            return Ok(());
        }
        if active.end > SEGMENT_HEADER_BYTES as u64 {
            tracing::info!(segment = %self.storage.path(&name).display(), version, "journal: sealing a segment of an older format version before appending");
            return self.seal(active);
        }
        self.zeroing.detach();
        self.storage.remove(&name).map_err(JournalError::io("remove", self.storage.path(&name)))?;
        if self.options.durable {
            self.storage.sync_dir().map_err(JournalError::io("fsync", self.storage.dir().to_path_buf()))?;
        }
        self.table.write().unwrap_or_else(|e| e.into_inner()).segments.pop();
        active.segment = None;
        Ok(())
    }

    /// Seals the active segment, if any: offset table + trailer after its records, synced, the file cut to its
    /// end, and the durable head noted in `marks` (by the zero-fill thread right after, with
    /// `ZeroFill::Background`: replacing the marks file took 0.5–11 ms of the commit path at each seal, measured,
    /// and the mark only enables a check, rule 5 of the recovery in `docs/journal.md`: a journal that ends below it).
    fn seal(&self, active: &mut Active) -> Result<(), JournalError> {
        let Some(segment) = active.segment else { return Ok(()) };
        let (name, first, table) = {
            let t = self.table.read().unwrap_or_else(|e| e.into_inner());
            let s = &t.segments[segment as usize];
            let from = (s.first - 1) as usize;
            let table: Vec<(u32, u32)> = t.locations[from..].iter().map(|l| (l.offset, l.size)).collect();
            (s.name.clone(), s.first, table)
        };
        let path = || self.storage.path(&name);
        self.zeroing.detach();
        let footer = format::encode_footer(first, active.end as u32, &table);
        self.storage.write_at(&name, &footer, active.end).map_err(JournalError::io("write", path()))?;
        self.storage.set_len(&name, active.end + footer.len() as u64).map_err(JournalError::io("truncate", path()))?;
        if self.options.durable {
            self.storage.sync_data(&name).map_err(JournalError::io("fdatasync", path()))?;
            let head = self.head();
            match self.options.zero_fill {
                ZeroFill::Inline => self.write_marks(|m| m.durable_head = m.durable_head.max(head))?,
                ZeroFill::Background => {
                    let mut z = self.zeroing.lock();
                    z.durable_head_due = z.durable_head_due.max(head);
                    self.zeroing.changed.notify_all();
                    if let Err(e) = self.start_zero_thread() {
                        drop(z);
                        tracing::warn!(
                            "journal: noting the durable head on the commit path (no zero-fill thread: {e})"
                        );
                        self.write_marks(|m| m.durable_head = m.durable_head.max(head))?;
                    }
                }
            }
        }
        active.segment = None;
        Ok(())
    }

    /// Creates the segment starting at `first`, on the commit path: its header and, when durable, zeros for the
    /// first group and one chunk more, synced with the directory entry before the group is written.
    /// Made from the spare instead when one is ready ([`Journal::segment_from_spare`]).
    fn start_segment(&self, active: &mut Active, first: u64, group_bytes: u64) -> Result<(), JournalError> {
        let name = format::segment_name(first);
        let path = || self.storage.path(&name);
        let capacity = self.options.segment_bytes.max(SEGMENT_HEADER_BYTES as u64 + group_bytes);
        if self.options.durable && self.segment_from_spare(&name, first, capacity)? {
            let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
            t.segments.push(Segment { first, name: name.into(), version: format::FORMAT_VERSION });
            active.segment = Some(t.segments.len() as u32 - 1);
            active.end = SEGMENT_HEADER_BYTES as u64;
            active.capacity = capacity;
            return Ok(());
        }
        self.storage.create(&name).map_err(JournalError::io("create", path()))?;
        self.storage
            .write_at(&name, &format::encode_segment_header(first), 0)
            .map_err(JournalError::io("write", path()))?;
        if self.options.durable {
            let zeroed = (SEGMENT_HEADER_BYTES as u64 + group_bytes + self.zero_chunk()).min(capacity);
            // Zeros after the header, synced with it: the header is durable before the first group is written.
            self.storage
                .zero_fill(&name, SEGMENT_HEADER_BYTES as u64, zeroed - SEGMENT_HEADER_BYTES as u64)
                .map_err(JournalError::io("zero-fill", path()))?;
            self.storage.sync_dir().map_err(JournalError::io("fsync", self.storage.dir().to_path_buf()))?;
            let mut z = self.zeroing.lock();
            z.set_segment(name.as_str().into(), zeroed);
        }
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        t.segments.push(Segment { first, name: name.into(), version: format::FORMAT_VERSION });
        active.segment = Some(t.segments.len() as u32 - 1);
        active.end = SEGMENT_HEADER_BYTES as u64;
        active.capacity = capacity;
        Ok(())
    }

    /// Makes segment `name` (first position `first`, `capacity` bytes) from the spare, when a whole one is ready
    /// (`ZeroFill::Inline`: made right here) and the segment fits in it: the header written into it and synced,
    /// the spare renamed to `name`, the directory synced. Like a segment created in place, its header and name are
    /// durable before its first group is written; a crash before the rename is durable leaves a spare, which
    /// nothing reads and the next one replaces. Returns whether it did; asks for the next spare.
    fn segment_from_spare(&self, name: &str, first: u64, capacity: u64) -> Result<bool, JournalError> {
        let spare_bytes = self.options.segment_bytes;
        if capacity > spare_bytes {
            return Ok(false);
        }
        let spare_path = || self.storage.path(SPARE_SEGMENT_FILE);
        if self.options.zero_fill == ZeroFill::Inline && !self.zeroing.lock().spare_off {
            // Deterministic, for the simulated-crash tests: the spare is made here as the thread would make it.
            let step = self.zero_chunk();
            let mut from = 0;
            while from < spare_bytes {
                let to = spare_bytes.min(from + step);
                zero_spare_step(self.storage.as_ref(), from, to)
                    .map_err(JournalError::io("zero-fill", spare_path()))?;
                from = to;
            }
            let mut z = self.zeroing.lock();
            (z.spare_zeroed, z.spare_want) = (spare_bytes, spare_bytes);
        }
        {
            let mut z = self.zeroing.lock();
            if z.spare_off || z.spare_want != spare_bytes || z.spare_zeroed < spare_bytes {
                return Ok(false);
            }
            // Taken: the thread leaves the file alone until the next spare is asked for, below.
            (z.spare_zeroed, z.spare_want) = (0, 0);
        }
        // The header with zeros to the end of its page (the zeros already there): a whole page, so the kernel
        // reads nothing from the disk first (the spare's zeros bypassed the page cache).
        let mut header = format::encode_segment_header(first).to_vec();
        header.resize(header.len().max(GROUP_WRITE_ALIGN_BYTES.min(spare_bytes) as usize), 0);
        self.storage.write_at(SPARE_SEGMENT_FILE, &header, 0).map_err(JournalError::io("write", spare_path()))?;
        self.storage.sync_data(SPARE_SEGMENT_FILE).map_err(JournalError::io("fdatasync", spare_path()))?;
        self.storage.rename(SPARE_SEGMENT_FILE, name).map_err(JournalError::io("rename", self.storage.path(name)))?;
        self.storage.sync_dir().map_err(JournalError::io("fsync", self.storage.dir().to_path_buf()))?;
        let mut z = self.zeroing.lock();
        z.set_segment(name.into(), spare_bytes);
        self.want_spare(&mut z);
        Ok(true)
    }

    /// Asks the zero-fill thread for a spare unless one is made or being made (`ZeroFill::Background`, durable
    /// journals; called with the zeroing state locked).
    fn want_spare(&self, z: &mut ZeroState) {
        if !self.options.durable || self.options.zero_fill != ZeroFill::Background || z.spare_off || z.spare_want > 0 {
            return;
        }
        z.spare_want = self.options.segment_bytes;
        z.spare_zeroed = 0;
        self.zeroing.changed.notify_all();
        if let Err(e) = self.start_zero_thread() {
            tracing::warn!("journal: no spare segment (starting the zero-fill thread: {e})");
            z.spare_off = true;
            z.spare_want = 0;
        }
    }

    fn zero_chunk(&self) -> u64 {
        self.options.zero_chunk_bytes.max(format::RECORD_ALIGN as u64)
    }

    /// Returns once the active segment `name` holds records or durable zeros below `need` (the end of the group
    /// about to be written), and keeps zeros ahead of the head: up to the bytes already in the segment, between one
    /// chunk and `JOURNAL_ZERO_AHEAD_BYTES_MAX`, never past the capacity. `ZeroFill::Background` asks the thread
    /// once less than half of that is left and waits only when the group itself lies beyond the zeros;
    /// `ZeroFill::Inline` writes them here.
    fn zeroed_through(&self, active: &Active, name: &Arc<str>, need: u64) -> Result<(), JournalError> {
        let chunk = self.zero_chunk();
        let ahead = (active.end - SEGMENT_HEADER_BYTES as u64).clamp(chunk, JOURNAL_ZERO_AHEAD_BYTES_MAX.max(chunk));
        let target = (need + ahead).min(active.capacity);
        let path = || self.storage.path(name);
        let mut z = self.zeroing.lock();
        if z.segment.as_ref() != Some(name) {
            // A segment found at open: what it holds past its records is zeros (a crash cut no zero-fill in half
            // that matters: the records never go past synced zeros). A clean close trimmed them off.
            while z.busy {
                z = self.zeroing.wait(z);
            }
            let len = self.storage.len(name).map_err(JournalError::io("stat", path()))?;
            z.set_segment(name.clone(), len.max(active.end));
        }
        self.want_spare(&mut z);
        if z.zeroed >= need + ahead / 2 || z.zeroed >= active.capacity {
            return Ok(());
        }
        match self.options.zero_fill {
            ZeroFill::Inline => {
                while z.zeroed < target {
                    let (from, to) = (z.zeroed, target.min(z.zeroed + chunk));
                    self.storage.zero_fill(name, from, to - from).map_err(JournalError::io("zero-fill", path()))?;
                    z.zeroed = to;
                }
                Ok(())
            }
            ZeroFill::Background => {
                if z.want < target {
                    z.want = target;
                    self.zeroing.changed.notify_all();
                    if let Err(e) = self.start_zero_thread() {
                        // No thread: this append (if it needs the zeros) or a later one reports it, poisoning.
                        z.failed = Some((e.kind(), format!("starting the zero-fill thread: {e}")));
                    }
                }
                while z.zeroed < need {
                    if let Some((kind, message)) = &z.failed {
                        return Err(JournalError::Io {
                            op: "zero-fill",
                            path: path(),
                            source: std::io::Error::new(*kind, message.clone()),
                        });
                    }
                    z = self.zeroing.wait(z);
                }
                Ok(())
            }
        }
    }

    /// Starts the zero-fill thread unless it runs (called with the zeroing state locked: it must not lock it).
    fn start_zero_thread(&self) -> std::io::Result<()> {
        let mut thread = self.zero_thread.lock().unwrap_or_else(|e| e.into_inner());
        if thread.is_none() {
            let (storage, zeroing, chunk) = (self.storage.clone(), self.zeroing.clone(), self.zero_chunk());
            let marks = self.marks.clone();
            let handle = std::thread::Builder::new()
                .name("opossum-journal-zero".into())
                .spawn(move || zero_fill_thread(storage, zeroing, marks, chunk))?;
            *thread = Some(handle);
        }
        Ok(())
    }

    fn write_marks(&self, change: impl FnOnce(&mut Marks)) -> Result<(), JournalError> {
        write_marks(self.storage.as_ref(), &self.marks, change)
    }

    pub fn marks(&self) -> Marks {
        *self.marks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that the Opossum tree holds every event up to `position`, durably (the mirror's checkpoints).
    pub fn set_mirror_durable(&self, position: u64) -> Result<(), JournalError> {
        self.write_marks(|m| m.mirror_durable = m.mirror_durable.max(position))
    }

    /// A clean close: notes the head as durable, so a later open treats losing any of it as corruption.
    /// Also cuts the zeros after the active segment's records (the next append writes new ones), so a stopped
    /// store takes the bytes of its records only.
    pub fn close(&self) -> Result<(), JournalError> {
        let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        // A stopped store keeps no spare (a poisoned one neither): it would take a segment's bytes for nothing, and
        // the next run makes one anew.
        self.zeroing.stop_spares();
        let removed = match self.storage.remove(SPARE_SEGMENT_FILE) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(JournalError::io("remove", self.storage.path(SPARE_SEGMENT_FILE))(e))
            }
            _ => Ok(()),
        };
        if self.poison_reason().is_some() {
            return Ok(());
        }
        removed?;
        self.zeroing.detach();
        if let Some(segment) = active.segment {
            let name = self.table.read().unwrap_or_else(|e| e.into_inner()).segments[segment as usize].name.clone();
            let path = || self.storage.path(&name);
            let len = self.storage.len(&name).map_err(JournalError::io("stat", path()))?;
            if len > active.end {
                self.storage.set_len(&name, active.end).map_err(JournalError::io("truncate", path()))?;
                if self.options.durable {
                    self.storage.sync_data(&name).map_err(JournalError::io("fdatasync", path()))?;
                }
            }
        }
        if self.options.durable {
            self.write_marks(|m| m.durable_head = m.durable_head.max(self.head()))?;
        }
        Ok(())
    }

    /// Where `position` lies: (segment file, offset, size).
    pub fn locate(&self, position: u64) -> Option<(PathBuf, Location)> {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        let l = *t.locations.get(position.checked_sub(1)? as usize)?;
        Some((self.storage.path(&t.segments[l.segment as usize].name), l))
    }

    /// Journal size: segments and bytes of records written.
    pub fn segments(&self) -> usize {
        self.table.read().unwrap_or_else(|e| e.into_inner()).segments.len()
    }

    /// Bytes of records (padded, as stored) in every segment: no headers, offset tables or preallocated space.
    /// O(segments): a segment's records lie back to back from its header to the end of its last record.
    pub fn record_bytes(&self) -> u64 {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        let mut total = 0u64;
        for (i, s) in t.segments.iter().enumerate() {
            let last = t.segments.get(i + 1).map_or(t.locations.len() as u64, |next| next.first - 1);
            if last >= s.first {
                let l = t.locations[(last - 1) as usize];
                total += l.offset as u64 + padded(l.size as usize) as u64 - SEGMENT_HEADER_BYTES as u64;
            }
        }
        total
    }

    /// Reads the records of `positions` (each at most the head), in the order given, coalescing adjacent records
    /// into extents of at most `JOURNAL_READ_EXTENT_BYTES_MAX`. Every record's checksum is checked; a mismatch is
    /// `Corrupt` naming the segment and offset.
    pub fn read(&self, positions: &[u64]) -> Result<RecordBatch, JournalError> {
        Ok(self.read_with(positions, None)?.expect("a read that may wait always reads"))
    }

    /// [`Journal::read`] for a caller that must not wait for the disk (an async worker): `None` when the records
    /// take more than `bytes_max` bytes, or one is not wholly in the page cache, or the journal has no batch I/O to
    /// read the cache without waiting ([`BatchIo::read_extents_cached`]); the caller then reads them with `read` on a
    /// thread that may block.
    pub fn read_cached(&self, positions: &[u64], bytes_max: usize) -> Result<Option<RecordBatch>, JournalError> {
        self.read_with(positions, Some(bytes_max))
    }

    /// `cached_bytes_max`: `Some` for [`Journal::read_cached`].
    fn read_with(
        &self,
        positions: &[u64],
        cached_bytes_max: Option<usize>,
    ) -> Result<Option<RecordBatch>, JournalError> {
        let (names, versions, located): (Vec<Arc<str>>, Vec<u32>, Vec<Location>) = {
            let t = self.table.read().unwrap_or_else(|e| e.into_inner());
            let head = t.locations.len() as u64;
            let located = positions
                .iter()
                .map(|&p| {
                    assert!((1..=head).contains(&p), "read of position {p} outside 1..={head}");
                    t.locations[(p - 1) as usize]
                })
                .collect();
            (
                t.segments.iter().map(|s| s.name.clone()).collect(),
                t.segments.iter().map(|s| s.version).collect(),
                located,
            )
        };
        // Extents over the records sorted by where they lie; each record then points into one of them.
        let mut order: Vec<usize> = (0..positions.len()).collect();
        order.sort_by_key(|&i| (located[i].segment, located[i].offset));
        let mut extents: Vec<(u32, u64, u64)> = Vec::new(); // (segment, start, end)
        let mut slots = vec![(0u32, 0u32); positions.len()]; // (extent, offset inside it)
        for i in order {
            let l = located[i];
            let last = extents.len().saturating_sub(1) as u32;
            let (start, end) = (l.offset as u64, l.offset as u64 + padded(l.size as usize) as u64);
            match extents.last_mut() {
                Some((s, e_start, e_end))
                    if *s == l.segment
                        && start >= *e_start
                        && start <= *e_end
                        && end.max(*e_end) - *e_start <= JOURNAL_READ_EXTENT_BYTES_MAX as u64 =>
                {
                    *e_end = end.max(*e_end);
                    slots[i] = (last, (start - *e_start) as u32);
                }
                _ => {
                    extents.push((l.segment, start, end));
                    slots[i] = ((extents.len() - 1) as u32, 0);
                }
            }
        }
        let buffers = match cached_bytes_max {
            None => self.read_extents(&names, &extents)?,
            Some(max) => {
                if extents.iter().map(|&(_, start, end)| end - start).sum::<u64>() > max as u64 {
                    return Ok(None);
                }
                match self.read_extents_cached(&names, &extents)? {
                    Some(buffers) => buffers,
                    None => return Ok(None),
                }
            }
        };
        let extent_versions: Vec<u32> = extents.iter().map(|&(segment, _, _)| versions[segment as usize]).collect();
        let mut records = Vec::with_capacity(positions.len());
        for (i, &(extent, at)) in slots.iter().enumerate() {
            let bytes = &buffers[extent as usize][at as usize..];
            let l = located[i];
            match format::decode_record(bytes, versions[l.segment as usize]) {
                Ok(v) if v.position == positions[i] && v.size == l.size => {}
                other => {
                    let reason = match other {
                        Ok(v) => format!("record of position {} where {} belongs", v.position, positions[i]),
                        Err(e) => e.to_string(),
                    };
                    return Err(JournalError::Corrupt {
                        segment: self.storage.path(&names[l.segment as usize]),
                        offset: l.offset as u64,
                        reason,
                    });
                }
            }
            records.push((extent, at));
        }
        Ok(Some(RecordBatch { buffers, versions: extent_versions, records }))
    }

    /// Fetches `(segment, start, end)` byte ranges: through `BatchIo::read_extents` on the segments' held
    /// descriptors when the journal has a backend and real files, else one positional read each.
    fn read_extents(&self, names: &[Arc<str>], extents: &[(u32, u64, u64)]) -> Result<Vec<Vec<u8>>, JournalError> {
        if let Some(io) = &self.io {
            if let Some(read) = self.with_extents(names, extents, |wanted| io.read_extents(wanted)) {
                return read;
            }
        }
        extents
            .iter()
            .map(|&(segment, start, end)| {
                let name = &names[segment as usize];
                let mut buf = vec![0u8; (end - start) as usize];
                self.storage
                    .read_at(name, &mut buf, start)
                    .map_err(JournalError::io("read", self.storage.path(name)))?;
                Ok(buf)
            })
            .collect()
    }

    /// [`Journal::read_extents`] from the page cache only: `None` when an extent is not wholly cached or the journal
    /// reads without `BatchIo` (tests' simulated storage).
    fn read_extents_cached(
        &self,
        names: &[Arc<str>],
        extents: &[(u32, u64, u64)],
    ) -> Result<Option<Vec<Vec<u8>>>, JournalError> {
        let Some(io) = &self.io else { return Ok(None) };
        match self.with_extents(names, extents, |wanted| io.read_extents_cached(wanted)) {
            Some(Some(read)) => read.map(Some),
            _ => Ok(None),
        }
    }

    /// Calls `read` with `extents` as [`Extent`]s of the segments' held descriptors (only the segments they lie in
    /// are looked up) and turns its results into buffers; `None` when the storage holds no descriptors.
    fn with_extents<R: ReadResults>(
        &self,
        names: &[Arc<str>],
        extents: &[(u32, u64, u64)],
        read: impl FnOnce(&[Extent<'_>]) -> R,
    ) -> Option<R::Buffers> {
        let mut files: Vec<Option<(Arc<std::fs::File>, PathBuf)>> = vec![None; names.len()];
        for &(segment, _, _) in extents {
            let slot = &mut files[segment as usize];
            if slot.is_none() {
                let name = &names[segment as usize];
                *slot = Some((self.storage.file(name)?, self.storage.path(name)));
            }
        }
        let wanted: Vec<Extent<'_>> = extents
            .iter()
            .map(|&(segment, start, end)| {
                let (file, path) = files[segment as usize].as_ref().expect("looked up above");
                Extent { file, path, offset: start, len: (end - start) as u32 }
            })
            .collect();
        Some(read(&wanted).into_buffers())
    }

    /// Reads through `io` (batched positional reads on the segments' descriptors) from now on.
    pub fn with_batch_io(mut self, io: Arc<dyn BatchIo>) -> Journal {
        self.io = Some(io);
        self
    }

    /// Calls `visit` with every record of positions `from ..= to` in order, holding at most
    /// `JOURNAL_SCAN_BYTES_MAX` of records at a time (index rebuilds, imports, the mirror).
    pub fn scan<E: From<JournalError>>(
        &self,
        from: u64,
        to: u64,
        mut visit: impl FnMut(RecordView<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut next = from.max(1);
        while next <= to {
            let mut bytes = 0usize;
            let mut last = next;
            {
                let t = self.table.read().unwrap_or_else(|e| e.into_inner());
                while last <= to {
                    bytes += padded(t.locations[(last - 1) as usize].size as usize);
                    if bytes > JOURNAL_SCAN_BYTES_MAX && last > next {
                        break;
                    }
                    last += 1;
                }
            }
            let positions: Vec<u64> = (next..last).collect();
            let batch = self.read(&positions)?;
            for v in batch.iter() {
                visit(v)?;
            }
            next = last;
        }
        Ok(())
    }
}

/// What a `BatchIo` extent read returns, turned into the journal's buffers or its error.
trait ReadResults {
    type Buffers;
    fn into_buffers(self) -> Self::Buffers;
}

fn journal_io_error(e: crate::io::IoError) -> JournalError {
    JournalError::Io { op: "read", path: e.path.clone(), source: e.source }
}

impl ReadResults for Vec<Result<Vec<u8>, crate::io::IoError>> {
    type Buffers = Result<Vec<Vec<u8>>, JournalError>;
    fn into_buffers(self) -> Self::Buffers {
        self.into_iter().map(|r| r.map_err(journal_io_error)).collect()
    }
}

impl ReadResults for Option<Vec<Result<Vec<u8>, crate::io::IoError>>> {
    type Buffers = Option<Result<Vec<Vec<u8>>, JournalError>>;
    fn into_buffers(self) -> Self::Buffers {
        self.map(ReadResults::into_buffers)
    }
}

/// Records read by [`Journal::read`], checked; [`RecordBatch::iter`] yields them in the order asked.
pub struct RecordBatch {
    buffers: Vec<Vec<u8>>,
    /// The format version of each buffer's segment.
    versions: Vec<u32>,
    records: Vec<(u32, u32)>,
}

impl RecordBatch {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = RecordView<'_>> + '_ {
        self.records.iter().map(|&(extent, at)| self.view(extent, at))
    }

    fn view(&self, extent: u32, at: u32) -> RecordView<'_> {
        // SAFETY: `Journal::read` made this batch and accepted the record at (extent, at) with `decode_record`;
        // the buffers are private and never written after that.
        unsafe {
            format::decode_record_again(&self.buffers[extent as usize][at as usize..], self.versions[extent as usize])
        }
        .expect("checked by Journal::read")
    }

    /// The event files of the batch's records, in order, built into one buffer (the mirror's and `export`'s
    /// writes borrow them from it).
    pub fn event_files(&self) -> EventFiles {
        let mut files = EventFiles { bytes: Vec::new(), ends: Vec::with_capacity(self.records.len()) };
        files.bytes.reserve(self.iter().map(|v| v.event_file_bytes_hint()).sum());
        for v in self.iter() {
            v.write_event_file(&mut files.bytes);
            files.ends.push(files.bytes.len());
        }
        files
    }

    /// Keeps the records `keep` accepts, in order (a read's post-filter), and at most `max` of them.
    pub fn retain(&mut self, max: usize, mut keep: impl FnMut(&RecordView<'_>) -> bool) {
        let mut records = std::mem::take(&mut self.records);
        let mut kept = 0;
        records.retain(|&(extent, at)| {
            let yes = kept < max && keep(&self.view(extent, at));
            kept += yes as usize;
            yes
        });
        self.records = records;
    }
}

/// Event files built by [`RecordBatch::event_files`].
pub struct EventFiles {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl EventFiles {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// A sealed segment's format version and its records' (offset, size).
type Sealed = (u32, Vec<(u32, u32)>);

/// The format version and records of a sealed segment from its header and offset table, or `None` when it carries
/// no valid seal.
fn read_sealed(storage: &dyn JournalStorage, name: &str, first: u64, len: u64) -> Result<Option<Sealed>, JournalError> {
    let path = || storage.path(name);
    if len < (SEGMENT_HEADER_BYTES + TRAILER_BYTES) as u64 {
        return Ok(None);
    }
    let mut trailer = [0u8; TRAILER_BYTES];
    storage.read_at(name, &mut trailer, len - TRAILER_BYTES as u64).map_err(JournalError::io("read", path()))?;
    let Ok(t) = format::decode_trailer(&trailer) else { return Ok(None) };
    let footer_len = t.count as u64 * format::TABLE_ENTRY_BYTES as u64 + TRAILER_BYTES as u64;
    if t.first != first || t.table_at as u64 + footer_len != len {
        return Ok(None);
    }
    let mut footer = vec![0u8; footer_len as usize];
    storage.read_at(name, &mut footer, t.table_at as u64).map_err(JournalError::io("read", path()))?;
    let Ok(table) = format::decode_table(&footer) else { return Ok(None) };
    // The table must describe records back to back from the header to the table.
    let mut at = SEGMENT_HEADER_BYTES as u64;
    for &(offset, size) in &table {
        if offset as u64 != at {
            return Err(JournalError::Corrupt {
                segment: path(),
                offset: t.table_at as u64,
                reason: format!("offset table entry {offset} where a record at {at} belongs"),
            });
        }
        at += padded(size as usize) as u64;
    }
    if at != t.table_at as u64 {
        return Err(JournalError::Corrupt {
            segment: path(),
            offset: t.table_at as u64,
            reason: "offset table does not reach its own offset".into(),
        });
    }
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    storage.read_at(name, &mut header, 0).map_err(JournalError::io("read", path()))?;
    let version = match format::decode_segment_header(&header) {
        Ok((header_first, version)) if header_first == first => version,
        Ok((header_first, _)) => {
            return Err(JournalError::Corrupt {
                segment: path(),
                offset: 16,
                reason: format!("header says first position {header_first}, the name says {first}"),
            })
        }
        Err(reason) => return Err(JournalError::Corrupt { segment: path(), offset: 0, reason }),
    };
    Ok(Some((version, table)))
}

fn read_small(storage: &dyn JournalStorage, name: &str) -> Result<Option<Vec<u8>>, JournalError> {
    let len = match storage.len(name) {
        Ok(len) => len,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(JournalError::io("stat", storage.path(name))(e)),
    };
    let mut buf = vec![0u8; len.min(1 << 16) as usize];
    storage.read_at(name, &mut buf, 0).map_err(JournalError::io("read", storage.path(name)))?;
    Ok(Some(buf))
}
