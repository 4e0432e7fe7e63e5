//! Index checkpoints: the in-memory index (`store::index`) as of a position P, in one file
//! (`<store>/.opossumd/index.ckpt`, journal mode), so an open loads it and scans only the journal after P instead
//! of every record. This module owns the format (drawn again in `docs/journal.md`, "Index checkpoint").
//!
//! Contract:
//! - A checkpoint is derived data. A missing one means a scan of the whole journal; a damaged, stale (holding
//!   positions the journal does not have) or foreign (written for another journal) one is logged (`warn`, naming
//!   the file and why) and ignored the same way. Never fatal, never read as "empty".
//! - Written off the commit path: by the checkpointer thread once the head is `INDEX_CHECKPOINT_EVENTS_DEFAULT`
//!   past the last checkpoint, and at a clean close. The index is copied under its read lock in slices of
//!   `INDEX_CHECKPOINT_SNAPSHOT_EVENTS_MAX` positions (the keys of positions up to the published head never
//!   change, so slices taken at different times make one consistent picture), then encoded and written without
//!   it. Atomically: a temporary file, `fdatasync`, rename, directory `fsync` (the syncs only with
//!   `Durability::Fsync`; the checksums catch whatever a crash leaves otherwise).
//! - It holds every event's exact type and tags, interned. The position lists per type and tag file stem are
//!   derived from them when loading (stored once, consistent by construction), with each distinct type's and tag's
//!   index file stem stored beside it (sanitising a million tags at load costs more than reading their stems). A
//!   checkpoint needs the keys of every position, which journal mode always has.
//! - It names the journal it belongs to by the checksums of the event files at positions 1 and P (their metadata
//!   carries the append time): a checkpoint copied from another store, or left from a journal that was replaced,
//!   does not match.
//!
//! ```text
//! header (48 bytes)
//! 0   8  magic b"OPOSIDXC"
//! 8   4  format version = 1                                     (u32 LE)
//! 12  4  zero
//! 16  8  P: the checkpoint holds positions 1 ..= P               (u64 LE)
//! 24  8  body length in bytes (the file is header + body)        (u64 LE)
//! 32  4  crc32c of the event file at position 1                  (u32 LE)
//! 36  4  crc32c of the event file at position P                  (u32 LE)
//! 40  4  crc32c of the body                                      (u32 LE)
//! 44  4  crc32c of header bytes 0 .. 44                          (u32 LE)
//!
//! body (u32/u64 LE; strings UTF-8, each after its u16 LE length)
//! u32 T    event types, then T × (type string, its index file stem)
//! u32 G    tags, then G × (key string, value string, its index file stem)
//! u32 S    tracking sources, then S × (source string, u64 last position, u64 position of the record that set it)
//! u32 W    remembered event ids, then W × (u64 position, 16-byte id), in position order
//! P × u32  the type id of each position 1 ..= P
//! P × u32  the tag count of each position
//! u64 R    tag references (the sum of the counts), then R × u32 tag ids, position by position
//! ```

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::journal::{index_checkpoint_path, Journal, JournalError};
use crate::limits::{
    INDEX_CHECKPOINT_EVENTS_DEFAULT, INDEX_CHECKPOINT_PAUSE_FACTOR, INDEX_CHECKPOINT_POLL_MAX,
    INDEX_CHECKPOINT_SNAPSHOT_EVENTS_MAX,
};
use crate::store::index::Index;
use crate::store::tracking::{Table, TrackingSnapshot};
use crate::store::{Durability, Shared, StoreError};

pub const CHECKPOINT_MAGIC: [u8; 8] = *b"OPOSIDXC";
pub const CHECKPOINT_VERSION: u32 = 1;
pub const CHECKPOINT_HEADER_BYTES: usize = 48;
const THROUGH_AT: usize = 16;
const BODY_LEN_AT: usize = 24;
const FIRST_FILE_CRC_AT: usize = 32;
const LAST_FILE_CRC_AT: usize = 36;
const BODY_CRC_AT: usize = 40;
const HEADER_CRC_AT: usize = 44;
const _: () = assert!(HEADER_CRC_AT + 4 == CHECKPOINT_HEADER_BYTES);

/// Why bytes are not a valid checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    #[error("{0} bytes, shorter than a checkpoint header")]
    ShortHeader(usize),
    #[error("not an index checkpoint (bad magic)")]
    Magic,
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("format version {0}; this build reads {CHECKPOINT_VERSION}")]
    Version(u32),
    #[error("the header says {expected} body bytes, the file holds {actual}")]
    Length { expected: u64, actual: u64 },
    #[error("body checksum mismatch")]
    BodyChecksum,
    #[error("the body ends inside its {0}")]
    Short(&'static str),
    #[error("a {0} that is not UTF-8")]
    Utf8(&'static str),
    #[error("{what} id {id} where only {count} exist")]
    BadId { what: &'static str, id: u32, count: usize },
    #[error("{0} bytes after the body's end")]
    Trailing(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("index checkpoint {path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("index checkpoint {path} is damaged: {damage}")]
    Damaged { path: PathBuf, damage: Damage },
    #[error(
        "index checkpoint {path} holds positions up to {through}, but the journal ends at {head} (it lost records \
         since the checkpoint was written)"
    )]
    AheadOfJournal { path: PathBuf, through: u64, head: u64 },
    #[error(
        "index checkpoint {path} belongs to another journal: the event at position {position} is not the one it was \
         written with"
    )]
    Foreign { path: PathBuf, position: u64 },
    #[error("index checkpoint {path}: reading the journal to check it: {source}")]
    Journal {
        path: PathBuf,
        #[source]
        source: JournalError,
    },
    #[error("index checkpoint: the tracking table has not taken in position {through} yet")]
    TrackingBehind { through: u64 },
    #[error("index checkpoint: the exact type and tags of position {position} are not in the index")]
    KeysUnknown { position: u64 },
}

/// The decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The checkpoint holds positions `1 ..= through`.
    pub through: u64,
    pub body_len: u64,
    /// crc32c of the event files at positions 1 and `through`: the journal the checkpoint belongs to.
    pub identity: (u32, u32),
    pub body_crc: u32,
}

pub fn decode_header(bytes: &[u8]) -> Result<Header, Damage> {
    if bytes.len() < CHECKPOINT_HEADER_BYTES {
        return Err(Damage::ShortHeader(bytes.len()));
    }
    if bytes[0..8] != CHECKPOINT_MAGIC {
        return Err(Damage::Magic);
    }
    if crc32c::crc32c(&bytes[..HEADER_CRC_AT]) != u32_at(bytes, HEADER_CRC_AT) {
        return Err(Damage::HeaderChecksum);
    }
    let version = u32_at(bytes, 8);
    if version != CHECKPOINT_VERSION {
        return Err(Damage::Version(version));
    }
    Ok(Header {
        through: u64_at(bytes, THROUGH_AT),
        body_len: u64_at(bytes, BODY_LEN_AT),
        identity: (u32_at(bytes, FIRST_FILE_CRC_AT), u32_at(bytes, LAST_FILE_CRC_AT)),
        body_crc: u32_at(bytes, BODY_CRC_AT),
    })
}

/// The header, after checking that the body is whole (length and checksum).
fn decode_checked_header(bytes: &[u8]) -> Result<Header, Damage> {
    let header = decode_header(bytes)?;
    let actual = (bytes.len() - CHECKPOINT_HEADER_BYTES) as u64;
    if actual != header.body_len {
        return Err(Damage::Length { expected: header.body_len, actual });
    }
    if crc32c::crc32c(&bytes[CHECKPOINT_HEADER_BYTES..]) != header.body_crc {
        return Err(Damage::BodyChecksum);
    }
    Ok(header)
}

/// The index of positions `1 ..= through` as copied out of the live index: its exact types and tags (with their
/// stems) already in the checkpoint's encoding, and each position's type and tags as ids into them (the live
/// index's own ids: interned strings never change).
#[derive(Debug)]
pub struct Snapshot {
    through: u64,
    type_count: u32,
    /// `type_count` × (type string, its index file stem), encoded as the body holds them.
    types: Vec<u8>,
    tag_count: u32,
    /// `tag_count` × (key string, value string, its index file stem), encoded as the body holds them.
    tags: Vec<u8>,
    event_types: Vec<u32>,
    tag_counts: Vec<u32>,
    tag_refs: Vec<u32>,
    /// The tracking table as of `through` (`store::tracking`): sources and recent event ids.
    tracking: TrackingSnapshot,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Types, tag keys and values are far below 64 KiB (`EVENT_TYPE_BYTES_MAX`, `TAG_BYTES_MAX`).
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Copies the keys of positions `1 ..= through` out of `index`, holding its read lock for at most
/// `INDEX_CHECKPOINT_SNAPSHOT_EVENTS_MAX` positions (or strings) at a time. Every position up to `through` must be
/// published (its keys final): the writer changes only positions above the head.
pub fn snapshot(
    index: &RwLock<Index>,
    through: u64,
    tracking: Option<&Mutex<Table>>,
) -> Result<Snapshot, CheckpointError> {
    // The writer takes a commit into the tracking table just after publishing its head: wait those microseconds.
    let tracking = match tracking {
        None => TrackingSnapshot::default(),
        Some(table) => {
            let deadline = Instant::now() + crate::limits::INDEX_CHECKPOINT_TRACKING_WAIT_MAX;
            loop {
                if let Some(taken) = table.lock().unwrap_or_else(|e| e.into_inner()).export(through) {
                    break taken;
                }
                if Instant::now() >= deadline {
                    return Err(CheckpointError::TrackingBehind { through });
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    };
    let n = through as usize;
    let mut snap = Snapshot {
        through,
        type_count: 0,
        types: Vec::new(),
        tag_count: 0,
        tags: Vec::new(),
        event_types: Vec::with_capacity(n),
        tag_counts: Vec::with_capacity(n),
        tag_refs: Vec::with_capacity(n),
        tracking,
    };
    let read = || index.read().unwrap_or_else(|e| e.into_inner());
    let mut next = 1;
    while next <= through {
        let last = (next + INDEX_CHECKPOINT_SNAPSHOT_EVENTS_MAX - 1).min(through);
        let (types, tags) = read()
            .export_keys(next, last, &mut snap.event_types, &mut snap.tag_counts, &mut snap.tag_refs)
            .map_err(|position| CheckpointError::KeysUnknown { position })?;
        snap.type_count = snap.type_count.max(types);
        snap.tag_count = snap.tag_count.max(tags);
        next = last + 1;
    }
    // Every type and tag up to the highest id referenced (ids count up as they are first seen, so nearly all of
    // them are; one no position references loads as an empty list).
    let step = INDEX_CHECKPOINT_SNAPSHOT_EVENTS_MAX as u32;
    let mut id = 0;
    while id < snap.type_count {
        let index = read();
        for id in id..(id.saturating_add(step)).min(snap.type_count) {
            let (name, stem) = index.type_entry(id);
            put_str(&mut snap.types, name);
            put_str(&mut snap.types, stem);
        }
        id = id.saturating_add(step);
    }
    let mut id = 0;
    while id < snap.tag_count {
        let index = read();
        for id in id..(id.saturating_add(step)).min(snap.tag_count) {
            let (key, value, stem) = index.tag_entry(id);
            put_str(&mut snap.tags, key);
            put_str(&mut snap.tags, value);
            put_str(&mut snap.tags, stem);
        }
        id = id.saturating_add(step);
    }
    Ok(snap)
}

/// Encodes a snapshot as a checkpoint file belonging to the journal whose event files at positions 1 and
/// `snapshot.through` have the crc32c checksums `identity`.
pub fn encode(snap: &Snapshot, identity: (u32, u32)) -> Vec<u8> {
    let columns = 8 * snap.event_types.len() + 8 + 4 * snap.tag_refs.len();
    let mut out = Vec::with_capacity(CHECKPOINT_HEADER_BYTES + 8 + snap.types.len() + snap.tags.len() + columns);
    out.resize(CHECKPOINT_HEADER_BYTES, 0);
    out.extend_from_slice(&snap.type_count.to_le_bytes());
    out.extend_from_slice(&snap.types);
    out.extend_from_slice(&snap.tag_count.to_le_bytes());
    out.extend_from_slice(&snap.tags);
    out.extend_from_slice(&(snap.tracking.sources.len() as u32).to_le_bytes());
    for (source, last, at) in &snap.tracking.sources {
        // Source names are at most `TRACKING_SOURCE_BYTES_MAX` bytes.
        put_str(&mut out, source);
        out.extend_from_slice(&last.to_le_bytes());
        out.extend_from_slice(&at.to_le_bytes());
    }
    out.extend_from_slice(&(snap.tracking.ids.len() as u32).to_le_bytes());
    for (position, id) in &snap.tracking.ids {
        out.extend_from_slice(&position.to_le_bytes());
        out.extend_from_slice(id);
    }
    for column in [&snap.event_types, &snap.tag_counts] {
        for id in column {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    out.extend_from_slice(&(snap.tag_refs.len() as u64).to_le_bytes());
    for id in &snap.tag_refs {
        out.extend_from_slice(&id.to_le_bytes());
    }
    let body_len = (out.len() - CHECKPOINT_HEADER_BYTES) as u64;
    let body_crc = crc32c::crc32c(&out[CHECKPOINT_HEADER_BYTES..]);
    let h = &mut out[..CHECKPOINT_HEADER_BYTES];
    h[0..8].copy_from_slice(&CHECKPOINT_MAGIC);
    h[8..12].copy_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
    h[THROUGH_AT..THROUGH_AT + 8].copy_from_slice(&snap.through.to_le_bytes());
    h[BODY_LEN_AT..BODY_LEN_AT + 8].copy_from_slice(&body_len.to_le_bytes());
    h[FIRST_FILE_CRC_AT..FIRST_FILE_CRC_AT + 4].copy_from_slice(&identity.0.to_le_bytes());
    h[LAST_FILE_CRC_AT..LAST_FILE_CRC_AT + 4].copy_from_slice(&identity.1.to_le_bytes());
    h[BODY_CRC_AT..BODY_CRC_AT + 4].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&h[..HEADER_CRC_AT]);
    h[HEADER_CRC_AT..].copy_from_slice(&header_crc.to_le_bytes());
    out
}

/// Reads the body front to back.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Damage> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or(Damage::Short(what))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, Damage> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, Damage> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
    fn str(&mut self, what: &'static str) -> Result<&'a str, Damage> {
        let len = u16::from_le_bytes(self.take(2, what)?.try_into().expect("2 bytes")) as usize;
        std::str::from_utf8(self.take(len, what)?).map_err(|_| Damage::Utf8(what))
    }
    /// A count of items each at least `min_bytes` long, checked against what is left (no huge allocation for a
    /// count the body cannot hold).
    fn count(&mut self, what: &'static str, min_bytes: usize) -> Result<usize, Damage> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_bytes) > self.bytes.len() - self.at {
            return Err(Damage::Short(what));
        }
        Ok(n)
    }
    /// `n` u32 values.
    fn u32s(&mut self, n: usize, what: &'static str) -> Result<Vec<u32>, Damage> {
        let bytes = self.take(n.checked_mul(4).ok_or(Damage::Short(what))?, what)?;
        Ok(bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
    }
}

fn id_in(id: u32, count: usize, what: &'static str) -> Result<usize, Damage> {
    if (id as usize) < count {
        Ok(id as usize)
    } else {
        Err(Damage::BadId { what, id, count })
    }
}

/// Decodes a checkpoint file into its header and the index it holds, checking lengths, checksums and every id.
#[cfg(test)]
pub fn decode(bytes: &[u8]) -> Result<(Header, Index), Damage> {
    decode_with_tracking(bytes).map(|(header, index, _)| (header, index))
}

/// [`decode`], with the tracking table the checkpoint holds. The index's stems are the ones stored (their naming
/// rules are the store's: [`load_index`] sets them).
pub fn decode_with_tracking(bytes: &[u8]) -> Result<(Header, Index, TrackingSnapshot), Damage> {
    let header = decode_checked_header(bytes)?;
    let mut c = Cursor { bytes: &bytes[CHECKPOINT_HEADER_BYTES..], at: 0 };
    let n = c.count("types", 4)?;
    let mut types = Vec::with_capacity(n);
    for _ in 0..n {
        types.push((c.str("types")?, c.str("types")?));
    }
    let n = c.count("tags", 6)?;
    let mut tags = Vec::with_capacity(n);
    for _ in 0..n {
        tags.push((c.str("tags")?, c.str("tags")?, c.str("tags")?));
    }
    let mut tracking = TrackingSnapshot::default();
    let n = c.count("tracking sources", 18)?;
    for _ in 0..n {
        let source = c.str("tracking sources")?.to_string();
        let last = c.u64("tracking sources")?;
        let at = c.u64("tracking sources")?;
        tracking.sources.push((source, last, at));
    }
    let n = c.count("event ids", 24)?;
    for _ in 0..n {
        let position = c.u64("event ids")?;
        let id: [u8; 16] = c.take(16, "event ids")?.try_into().expect("16 bytes");
        tracking.ids.push((position, id));
    }
    let through = usize::try_from(header.through).map_err(|_| Damage::Short("positions"))?;
    let event_types = c.u32s(through, "type ids")?;
    let tag_counts = c.u32s(through, "tag counts")?;
    let refs = c.u64("tag references")?;
    let tag_refs = c.u32s(usize::try_from(refs).map_err(|_| Damage::Short("tag references"))?, "tag references")?;
    if c.at != c.bytes.len() {
        return Err(Damage::Trailing(c.bytes.len() - c.at));
    }
    // Every id is checked first, so building the index cannot fail on them.
    let mut refs_needed = 0usize;
    for (&type_id, &count) in event_types.iter().zip(&tag_counts) {
        id_in(type_id, types.len(), "type")?;
        refs_needed = refs_needed.saturating_add(count as usize);
    }
    if refs_needed != tag_refs.len() {
        return Err(if refs_needed > tag_refs.len() {
            Damage::Short("tag references")
        } else {
            Damage::Trailing((tag_refs.len() - refs_needed) * 4)
        });
    }
    for &tag_id in &tag_refs {
        id_in(tag_id, tags.len(), "tag")?;
    }
    let index =
        Index::from_checkpoint(crate::format::NamingRules::NATIVE, &types, &tags, &event_types, &tag_counts, tag_refs);
    Ok((header, index, tracking))
}

/// The journal a checkpoint through `through` belongs to: the crc32c checksums of the event files at positions 1
/// and `through` (every record's own checksum is checked by the read).
fn identity(journal: &Journal, through: u64) -> Result<(u32, u32), JournalError> {
    let batch = journal.read(&[1, through])?;
    let mut files = batch.iter().map(|v| crc32c::crc32c(&v.event_file()));
    Ok((files.next().unwrap_or(0), files.next().unwrap_or(0)))
}

/// A checkpoint's index and tracking table.
/// The checkpoint at `path` if it is whole and belongs to `journal` (its header and body checked, its identity
/// compared, its positions within the journal); `None` when there is none.
fn read_valid(path: &Path, journal: &Journal) -> Result<Option<(Index, TrackingSnapshot)>, CheckpointError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CheckpointError::Io { op: "read", path: path.to_path_buf(), source }),
    };
    let damaged = |damage| CheckpointError::Damaged { path: path.to_path_buf(), damage };
    let header = decode_header(&bytes).map_err(damaged)?;
    let head = journal.head();
    if header.through > head {
        return Err(CheckpointError::AheadOfJournal { path: path.to_path_buf(), through: header.through, head });
    }
    if header.through > 0 {
        let found = identity(journal, header.through)
            .map_err(|source| CheckpointError::Journal { path: path.to_path_buf(), source })?;
        if found.0 != header.identity.0 || found.1 != header.identity.1 {
            let position = if found.0 != header.identity.0 { 1 } else { header.through };
            return Err(CheckpointError::Foreign { path: path.to_path_buf(), position });
        }
    }
    let (_, index, tracking) = decode_with_tracking(&bytes).map_err(damaged)?;
    Ok(Some((index, tracking)))
}

/// How the index was loaded at open (logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// The checkpoint used, if any: positions `1 ..= through` came from it.
    pub checkpoint: Option<u64>,
    /// Journal records scanned after it.
    pub scanned: u64,
}

/// Journal mode, at open: the index of every position up to the journal's head — from the checkpoint when it is
/// valid and belongs to this journal, plus a scan of the journal after it; otherwise from a scan of the whole
/// journal (a bad checkpoint is logged and ignored). Leftover temporary checkpoint files are removed.
pub(crate) fn load_index(
    store_root: &Path,
    journal: &Journal,
    tracking: &mut crate::store::tracking::Table,
    naming: crate::format::NamingRules,
) -> Result<(Index, Loaded), StoreError> {
    let path = index_checkpoint_path(store_root);
    remove_temporaries(&path);
    let started = Instant::now();
    let mut index = match read_valid(&path, journal) {
        Ok(Some((mut index, taken))) => {
            // Written by this store, so its stems follow the store's rules.
            index.set_stems_naming(naming);
            tracking.import(&taken);
            index
        }
        Ok(None) => Index::new(naming),
        Err(e) => {
            tracing::warn!(file = %path.display(), "ignoring the index checkpoint, scanning the whole journal: {e}");
            Index::new(naming)
        }
    };
    // Journal mode keeps no dirty marks in the index (the mirror keeps its own).
    index.marks_dirty = false;
    let checkpoint = (index.max_position > 0).then_some(index.max_position);
    let loaded_ms = started.elapsed().as_millis() as u64;
    let head = journal.head();
    let from = index.max_position + 1;
    journal.scan(from, head, |v| -> Result<(), StoreError> {
        index.insert_parts(v.position, v.event_type, v.tags());
        tracking.observe(v.position, v.event_id, v.tracking);
        Ok(())
    })?;
    let scanned = head.saturating_sub(from - 1);
    release_freed_memory();
    tracing::info!(
        checkpoint = checkpoint.unwrap_or(0),
        checkpoint_ms = loaded_ms,
        scanned,
        took_ms = started.elapsed().as_millis() as u64,
        "index loaded"
    );
    Ok((index, Loaded { checkpoint, scanned }))
}

/// Gives the heap memory freed since the start back to the system: loading a big index leaves ~100 MB of freed
/// temporaries (the checkpoint's bytes, its decoded tables), and a mirror checkpoint of 100,000 index files tens of
/// MB (its copied lists and encoded files), that glibc would otherwise keep in the daemon's RSS for good. Elsewhere
/// a no-op.
pub(super) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free heap pages to the kernel; it touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Writes a checkpoint of the index through the published head, atomically; returns the position it holds
/// through (nothing is written for an empty store).
pub fn write(shared: &Shared, journal: &Journal) -> Result<u64, CheckpointError> {
    let durable = shared.options.durability == Durability::Fsync;
    write_through(&shared.layout.root, &shared.index, Some(&shared.tracking), shared.head(), journal, durable)
}

/// Writes the checkpoint of `index` through `through` (every position up to it published) for the store at
/// `store_root`.
fn write_through(
    store_root: &Path,
    index: &RwLock<Index>,
    tracking: Option<&Mutex<Table>>,
    through: u64,
    journal: &Journal,
    durable: bool,
) -> Result<u64, CheckpointError> {
    if through == 0 {
        return Ok(0);
    }
    let path = index_checkpoint_path(store_root);
    let snap = snapshot(index, through, tracking)?;
    let identity =
        identity(journal, through).map_err(|source| CheckpointError::Journal { path: path.clone(), source })?;
    let bytes = encode(&snap, identity);
    drop(snap);
    replace(&path, &bytes, durable)?;
    Ok(through)
}

/// Replaces `path` with `bytes` atomically: a temporary file beside it, `fdatasync` (when `durable`), rename,
/// directory `fsync` (when `durable`).
fn replace(path: &Path, bytes: &[u8], durable: bool) -> Result<(), CheckpointError> {
    let tmp = crate::format::tmp_path(path);
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| CheckpointError::Io { op, path: p, source }
    };
    let written = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        std::io::Write::write_all(&mut file, bytes).map_err(io("write", &tmp))?;
        if durable {
            file.sync_data().map_err(io("fdatasync", &tmp))?;
        }
        std::fs::rename(&tmp, path).map_err(io("rename", path))?;
        if durable {
            let dir = path.parent().unwrap_or(Path::new("."));
            crate::io::fsync_dir(dir).map_err(io("fsync", dir))?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Removes temporary checkpoint files a crash left beside `path` (derived data, never the only copy of anything).
fn remove_temporaries(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else { return };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        if file.starts_with(name) && file != name && crate::format::is_tmp_file_name(file) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(file = %entry.path().display(), "removed a temporary index checkpoint"),
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), "could not remove a temporary index checkpoint: {e}")
                }
            }
        }
    }
}

/// The checkpointer thread (journal mode): writes a checkpoint whenever the head is
/// `INDEX_CHECKPOINT_EVENTS_DEFAULT` past the last one, pausing at least `INDEX_CHECKPOINT_PAUSE_FACTOR` times as
/// long as the last write took; [`Checkpointer::close`] writes the last one. [`Checkpointer::write_now`] writes one
/// from any thread (the daemon's stop runs it beside the mirror's last checkpoint); writes never overlap.
pub struct Checkpointer {
    stop: SyncSender<()>,
    thread: JoinHandle<()>,
    marks: Arc<Marks>,
}

/// What the checkpointer threads share: the position the checkpoint on disk holds through, and a lock that keeps
/// two writes from overlapping (the second would only write the same again).
#[derive(Default)]
struct Marks {
    written: Mutex<u64>,
}

impl Marks {
    /// Writes a checkpoint through the head unless the one on disk already holds it; returns what the checkpoint on
    /// disk holds through afterwards. Waits for a write in progress.
    fn write_if_behind(&self, shared: &Shared, journal: &Journal, why: &str) -> Result<u64, CheckpointError> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if shared.head() <= *written {
            return Ok(*written);
        }
        let started = Instant::now();
        let through = write(shared, journal)?;
        tracing::info!(through, took_ms = started.elapsed().as_millis() as u64, why, "index checkpoint written");
        *written = through;
        Ok(through)
    }
}

impl Checkpointer {
    /// Starts the thread for a journal-mode store (`None` in files mode); `on_disk` is the position the checkpoint
    /// the open loaded holds through (0: none).
    pub fn spawn(shared: &Arc<Shared>, on_disk: u64) -> Result<Option<Checkpointer>, StoreError> {
        let Some(journal) = shared.journal.clone() else { return Ok(None) };
        let marks = Arc::new(Marks { written: Mutex::new(on_disk) });
        let (thread_shared, thread_marks) = (shared.clone(), marks.clone());
        let (stop, stopped) = sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("opossum-checkpoint".into())
            .spawn(move || {
                let (shared, marks) = (thread_shared, thread_marks);
                let mut not_before = Instant::now();
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(INDEX_CHECKPOINT_POLL_MAX) {
                    let last = *marks.written.lock().unwrap_or_else(|e| e.into_inner());
                    if shared.head() < last + INDEX_CHECKPOINT_EVENTS_DEFAULT || Instant::now() < not_before {
                        continue;
                    }
                    let started = Instant::now();
                    if let Err(e) = marks.write_if_behind(&shared, &journal, "interval") {
                        tracing::warn!("writing the index checkpoint failed (retried later): {e}");
                    }
                    not_before = Instant::now() + started.elapsed() * INDEX_CHECKPOINT_PAUSE_FACTOR;
                }
            })
            .map_err(|e| StoreError::io(crate::io::IoOp::Spawn, Path::new("checkpoint thread"), e))?;
        Ok(Some(Checkpointer { stop, thread, marks }))
    }

    /// Writes a checkpoint through the head now unless the one on disk holds it already (waiting for a write in
    /// progress); returns the position the checkpoint on disk holds through.
    pub fn write_now(&self, shared: &Shared) -> Result<u64, CheckpointError> {
        let Some(journal) = &shared.journal else { return Ok(0) };
        self.marks.write_if_behind(shared, journal, "requested")
    }

    /// Stops the thread and, when the head moved past the last checkpoint, writes one through it (a clean close:
    /// call after the writer stopped). A failure is logged: the next open scans more of the journal.
    pub fn close(self, shared: &Shared) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
        let Some(journal) = &shared.journal else { return };
        if let Err(e) = self.marks.write_if_behind(shared, journal, "close") {
            tracing::warn!("writing the index checkpoint at close failed (the next open scans the journal): {e}");
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{JournalOptions, NewRecord};
    use crate::model::{Query, QueryItem, Tag};
    use serde_json::value::RawValue;

    /// Event `n` of a varied workload: a few types (two with colliding stems), tags shared by many events, tags of
    /// their own, colliding tag stems, two tags of one event sharing a stem, and events without tags.
    fn keys_of(n: u64) -> (String, Vec<Tag>) {
        let ty = ["A", "B x", "B_x", "C"][(n % 4) as usize].to_string();
        let mut tags = vec![Tag::new("k", format!("{}", n % 7))];
        match n % 5 {
            0 => tags.push(Tag::new("a_b", "c")),
            1 => tags.push(Tag::new("a", "b_c")),
            2 => tags.extend([Tag::new("a_b", "c"), Tag::new("a", "b_c")]),
            3 => tags.push(Tag::new("own", format!("{n}"))),
            _ => tags.clear(),
        }
        (ty, tags)
    }

    /// A journal under `root` holding events `1 ..= count` of the workload, `salt` in their data.
    fn journal_with(root: &Path, count: u64, salt: &str) -> Journal {
        let (journal, _) =
            Journal::open_dir(root, JournalOptions { durable: false, ..JournalOptions::default() }).unwrap();
        append(&journal, 1, count, salt);
        journal
    }

    fn append(journal: &Journal, from: u64, to: u64, salt: &str) {
        for n in from..=to {
            let (ty, tags) = keys_of(n);
            let data = RawValue::from_string(format!(r#"{{"n":{n},"s":"{salt}"}}"#)).unwrap();
            let metadata =
                RawValue::from_string(r#"{"timestamp":"2026-11-29T12:00:00.0000000+00:00"}"#.into()).unwrap();
            let file = crate::format::encode_event(n, &ty, &data, &tags, &metadata);
            let record = NewRecord::for_event_file(&ty, &tags, &file, data.get(), metadata.get());
            journal.append(n, &[record]).unwrap();
        }
    }

    fn full_scan(journal: &Journal) -> Index {
        let mut index = Index::default();
        journal
            .scan(1, journal.head(), |v| -> Result<(), JournalError> {
                index.insert(v.position, v.event_type, &v.owned_tags());
                Ok(())
            })
            .unwrap();
        index
    }

    fn queries() -> Vec<Query> {
        let mut out = vec![Query::All];
        let types = ["A", "B x", "B_x", "C", "Z"];
        let tags = [("k", "0"), ("k", "3"), ("a_b", "c"), ("a", "b_c"), ("own", "8"), ("own", "13"), ("none", "x")];
        for t in types {
            out.push(Query::items(vec![QueryItem::types(&[t])]).unwrap());
            for tag in tags {
                out.push(Query::items(vec![QueryItem::types(&[t]).with_tags(&[tag])]).unwrap());
            }
        }
        for a in tags {
            out.push(Query::items(vec![QueryItem::tags(&[a])]).unwrap());
            for b in tags {
                out.push(Query::items(vec![QueryItem::tags(&[a, b])]).unwrap());
                out.push(Query::items(vec![QueryItem::tags(&[a]), QueryItem::tags(&[b])]).unwrap());
            }
        }
        out.push(Query::items(vec![QueryItem::types(&["A", "C"]), QueryItem::tags(&[("k", "1")])]).unwrap());
        out
    }

    /// Two indexes give the same candidates for every query over many ranges, and the same exact keys (and so the
    /// same post-filtered answers) for every position.
    fn assert_same(a: &Index, b: &Index, head: u64) {
        assert_eq!(a.max_position, b.max_position);
        let lists = |x: &crate::store::index::StemLists| {
            let mut v: Vec<_> =
                x.iter().filter(|(_, l)| !l.is_empty()).map(|(k, l)| (k.to_string(), l.to_vec())).collect();
            v.sort();
            v
        };
        assert_eq!(lists(&a.by_type), lists(&b.by_type));
        assert_eq!(lists(&a.by_tag), lists(&b.by_tag));
        for q in queries() {
            for (lo, hi) in [(1, head), (2, head / 2), (head / 3, head), (head, head)] {
                let (ca, cb) = (a.candidates(&q, lo, hi), b.candidates(&q, lo, hi));
                assert_eq!(ca, cb, "{q:?} in {lo}..={hi}");
                for p in ca.unwrap_or_else(|| (lo..=hi).collect()) {
                    assert_eq!(a.keys(p).unwrap().matches(&q), b.keys(p).unwrap().matches(&q), "{q:?} at {p}");
                }
            }
        }
        for p in 1..=head {
            let (ka, kb) = (a.keys(p).unwrap(), b.keys(p).unwrap());
            assert_eq!((ka.event_type(), ka.owned_tags()), (kb.event_type(), kb.owned_tags()), "keys of {p}");
        }
        assert!(a.keys(head + 1).is_none() && b.keys(head + 1).is_none());
    }

    #[test]
    fn a_checkpoint_round_trips_to_the_same_index() {
        let mut index = Index::default();
        for n in 1..=500 {
            let (ty, tags) = keys_of(n);
            index.insert(n, &ty, &tags);
        }
        let lock = RwLock::new(index);
        let snap = snapshot(&lock, 500, None).unwrap();
        let bytes = encode(&snap, (7, 9));
        let (header, decoded) = decode(&bytes).unwrap();
        assert_eq!((header.through, header.identity), (500, (7, 9)));
        assert!(decoded.dirty_tags.is_empty() && decoded.dirty_types.is_empty());
        assert_same(&lock.into_inner().unwrap(), &decoded, 500);
    }

    #[test]
    fn a_snapshot_stops_at_its_position_and_refuses_unknown_keys() {
        let mut index = Index::default();
        for n in 1..=40 {
            let (ty, tags) = keys_of(n);
            index.insert(n, &ty, &tags);
        }
        let lock = RwLock::new(index);
        let (_, decoded) = decode(&encode(&snapshot(&lock, 30, None).unwrap(), (0, 0))).unwrap();
        assert_eq!(decoded.max_position, 30);
        assert!(decoded.keys(31).is_none());
        assert_eq!(
            decoded.candidates(&Query::items(vec![QueryItem::types(&["A"])]).unwrap(), 1, 40).unwrap().last(),
            Some(&28)
        );
        assert!(matches!(snapshot(&lock, 41, None), Err(CheckpointError::KeysUnknown { position: 41 })));
    }

    #[test]
    fn every_damaged_byte_and_every_cut_is_refused() {
        let mut index = Index::default();
        for n in 1..=60 {
            let (ty, tags) = keys_of(n);
            index.insert(n, &ty, &tags);
        }
        let bytes = encode(&snapshot(&RwLock::new(index), 60, None).unwrap(), (1, 2));
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            // Bytes 12..16 are reserved zeros that the header checksum covers; every byte counts.
            assert!(decode(&bad).is_err(), "flipped byte {at} accepted");
        }
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "cut at {len} accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(Damage::Length { .. })));
    }

    /// A body changed on purpose, sealed again with good checksums: only the decoder's own checks can refuse it.
    fn resealed(mut bytes: Vec<u8>, change: impl FnOnce(&mut [u8])) -> Vec<u8> {
        change(&mut bytes[CHECKPOINT_HEADER_BYTES..]);
        let body_crc = crc32c::crc32c(&bytes[CHECKPOINT_HEADER_BYTES..]);
        bytes[BODY_CRC_AT..BODY_CRC_AT + 4].copy_from_slice(&body_crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&bytes[..HEADER_CRC_AT]);
        bytes[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&header_crc.to_le_bytes());
        bytes
    }

    #[test]
    fn ids_and_counts_are_checked_even_under_good_checksums() {
        let mut index = Index::default();
        for n in 1..=20 {
            let (ty, tags) = keys_of(n);
            index.insert(n, &ty, &tags);
        }
        let snap = snapshot(&RwLock::new(index), 20, None).unwrap();
        let (p, r) = (snap.event_types.len(), snap.tag_refs.len());
        let bytes = encode(&snap, (0, 0));
        assert!(decode(&resealed(bytes.clone(), |_| {})).is_ok());
        let body = bytes.len() - CHECKPOINT_HEADER_BYTES;
        let type_ids_at = body - 4 * r - 8 - 8 * p;
        let counts_at = body - 4 * r - 8 - 4 * p;
        let bad_type =
            resealed(bytes.clone(), |b| b[type_ids_at..type_ids_at + 4].copy_from_slice(&99u32.to_le_bytes()));
        assert!(matches!(decode(&bad_type), Err(Damage::BadId { what: "type", id: 99, .. })));
        let bad_tag = resealed(bytes.clone(), |b| b[body - 4..].copy_from_slice(&u32::MAX.to_le_bytes()));
        assert!(matches!(decode(&bad_tag), Err(Damage::BadId { what: "tag", .. })));
        let more_tags = resealed(bytes.clone(), |b| b[counts_at] += 1);
        assert!(matches!(decode(&more_tags), Err(Damage::Short("tag references"))));
        let fewer_tags = resealed(bytes.clone(), |b| {
            let at = (0..p).map(|i| counts_at + 4 * i).find(|&at| b[at] > 0).unwrap();
            b[at] -= 1;
        });
        assert!(matches!(decode(&fewer_tags), Err(Damage::Trailing(4))));
    }

    #[test]
    fn open_loads_the_checkpoint_and_scans_only_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal_with(dir.path(), 300, "one");
        let index = RwLock::new(full_scan(&journal));
        assert_eq!(write_through(dir.path(), &index, None, 200, &journal, true).unwrap(), 200);
        let (loaded, how) =
            load_index(dir.path(), &journal, &mut Default::default(), crate::format::NamingRules::NATIVE).unwrap();
        assert_eq!(how, Loaded { checkpoint: Some(200), scanned: 100 });
        assert_same(&loaded, &full_scan(&journal), 300);
        // Events appended after the checkpoint, after a reopen.
        append(&journal, 301, 350, "one");
        let (loaded, how) =
            load_index(dir.path(), &journal, &mut Default::default(), crate::format::NamingRules::NATIVE).unwrap();
        assert_eq!(how, Loaded { checkpoint: Some(200), scanned: 150 });
        assert_same(&loaded, &full_scan(&journal), 350);
    }

    #[test]
    fn a_damaged_stale_or_foreign_checkpoint_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal_with(dir.path(), 120, "mine");
        let expected = full_scan(&journal);
        let path = index_checkpoint_path(dir.path());
        let index = RwLock::new(full_scan(&journal));
        write_through(dir.path(), &index, None, 100, &journal, false).unwrap();
        let good = std::fs::read(&path).unwrap();
        let check = |case: &str| {
            let (loaded, how) =
                load_index(dir.path(), &journal, &mut Default::default(), crate::format::NamingRules::NATIVE).unwrap();
            assert_eq!(how, Loaded { checkpoint: None, scanned: 120 }, "{case}");
            assert_same(&loaded, &expected, 120);
        };
        let mut flipped = good.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        check("a flipped byte");
        std::fs::write(&path, &good[..good.len() - 3]).unwrap();
        check("a truncated file");
        std::fs::write(&path, b"not a checkpoint").unwrap();
        check("garbage");
        // Another store's checkpoint: same positions and keys, other events.
        let other = tempfile::tempdir().unwrap();
        let their_journal = journal_with(other.path(), 120, "theirs");
        let theirs = RwLock::new(full_scan(&their_journal));
        write_through(other.path(), &theirs, None, 100, &their_journal, false).unwrap();
        std::fs::copy(index_checkpoint_path(other.path()), &path).unwrap();
        check("a foreign checkpoint");
        // A checkpoint beyond the journal's head.
        append(&their_journal, 121, 130, "theirs");
        let theirs = RwLock::new(full_scan(&their_journal));
        write_through(other.path(), &theirs, None, 130, &their_journal, false).unwrap();
        std::fs::copy(index_checkpoint_path(other.path()), &path).unwrap();
        check("a checkpoint ahead of the journal");
        // The good one is used again, and leftover temporary files are removed.
        std::fs::write(&path, &good).unwrap();
        let tmp = crate::format::tmp_path(&path);
        std::fs::write(&tmp, b"half").unwrap();
        let (_, how) =
            load_index(dir.path(), &journal, &mut Default::default(), crate::format::NamingRules::NATIVE).unwrap();
        assert_eq!(how, Loaded { checkpoint: Some(100), scanned: 20 });
        assert!(!tmp.exists());
    }
}
