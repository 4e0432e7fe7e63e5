//! Opening a store: create the layout, read the ledger, set aside what no acknowledged batch owns, and load the
//! in-memory index from the index files, re-deriving it from the event files wherever they fall short.
//!
//! Runs with `.store.lock` held, so no other writer is half way through an append while we look.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use super::index::Index;
use super::{StoreError, READ_BATCH_FILES_DEFAULT};
use crate::format::{self, Layout, Ledger};
use crate::io::{self, BatchIo, FileWrite, IoOp, WriteMode};

pub(crate) struct Recovered {
    pub index: Index,
    pub head: u64,
}

pub(crate) fn recover(layout: &Layout, io: &dyn BatchIo, durable: bool) -> Result<Recovered, StoreError> {
    create_layout(layout, durable)?;
    remove_commit_leftovers(layout)?;
    let head = read_ledger(layout)?;
    let scan = scan_events(layout, head)?;
    if let Some(&missing) = scan.missing.first() {
        return Err(StoreError::MissingEvent { path: layout.event_file(missing), ledger: head });
    }
    if !scan.strays.is_empty() {
        quarantine(layout, &scan.strays, durable)?;
    }
    let mut index = Index::default();
    let mut rebuild_tags = false;
    let mut covered = vec![false; head as usize];
    for (stem, positions) in load_index_dir(&layout.type_index, io, head, &mut index.dirty_types)? {
        for &p in &positions {
            covered[(p - 1) as usize] = true;
        }
        index.by_type.insert(stem, positions);
    }
    for (stem, positions) in load_index_dir(&layout.tag_index, io, head, &mut index.dirty_tags)? {
        index.by_tag.insert(stem, positions);
    }
    if index.dirty_tags.iter().any(|stem| !index.by_tag.contains_key(stem)) {
        // A corrupt tag file: we cannot tell which events it listed, so re-derive every tag list.
        rebuild_tags = true;
    }
    let uncovered: Vec<u64> = if rebuild_tags {
        index.by_tag.clear();
        (1..=head).collect()
    } else {
        covered.iter().enumerate().filter(|(_, c)| !**c).map(|(i, _)| i as u64 + 1).collect()
    };
    if !uncovered.is_empty() {
        tracing::warn!(events = uncovered.len(), "index files do not cover every event: re-indexing from event files");
        for chunk in uncovered.chunks(READ_BATCH_FILES_DEFAULT) {
            let events = super::read_event_files(layout, io, chunk, head)?;
            for e in events {
                index.insert(e.position, &e.event_type, &e.tags);
            }
        }
    }
    let index = RwLock::new(index);
    flush_index_files(layout, io, &index, durable)?;
    Ok(Recovered { index: index.into_inner().unwrap(), head })
}

fn create_layout(layout: &Layout, durable: bool) -> Result<(), StoreError> {
    let mut created = false;
    for dir in layout.dirs() {
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(IoOp::Open, &dir, e))?;
            created = true;
        }
    }
    if created && durable {
        for dir in layout.dirs() {
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            io::fsync_dir(parent).map_err(|e| StoreError::io(IoOp::FsyncDir, parent, e))?;
        }
    }
    Ok(())
}

/// Removes `.ledger.tmp.*` files: ledgers of commits that never completed. They vouch for nothing; the events they
/// would have covered are quarantined by `scan_events`.
fn remove_commit_leftovers(layout: &Layout) -> Result<(), StoreError> {
    let entries = std::fs::read_dir(&layout.root).map_err(|e| StoreError::io(IoOp::Open, &layout.root, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(IoOp::Read, &layout.root, e))?;
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.starts_with(format::LEDGER_FILE) && format::is_tmp_file_name(n)) {
            std::fs::remove_file(entry.path()).map_err(|e| StoreError::io(IoOp::Rename, &entry.path(), e))?;
        }
    }
    Ok(())
}

pub(crate) fn read_ledger(layout: &Layout) -> Result<u64, StoreError> {
    let path = layout.ledger();
    match std::fs::read(&path) {
        Ok(bytes) => match Ledger::decode(&bytes) {
            Ok(ledger) => Ok(ledger.map_or(0, |l| l.last_sequence_position)),
            Err(e) => Err(StoreError::Corrupt { path, reason: e.to_string() }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(StoreError::io(IoOp::Read, &path, e)),
    }
}

struct EventScan {
    /// Positions in 1..=head with no event file, ascending.
    missing: Vec<u64>,
    /// Event files beyond the ledger and temporary files: leftovers of batches that were never acknowledged.
    strays: Vec<PathBuf>,
}

fn scan_events(layout: &Layout, head: u64) -> Result<EventScan, StoreError> {
    let mut present = vec![false; head as usize];
    let mut strays = Vec::new();
    let entries = std::fs::read_dir(&layout.events).map_err(|e| StoreError::io(IoOp::Open, &layout.events, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(IoOp::Read, &layout.events, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(p) = format::parse_event_file_name(name) {
            match p {
                1.. if p <= head => present[(p - 1) as usize] = true,
                _ => strays.push(entry.path()),
            }
        } else if format::is_tmp_file_name(name) {
            strays.push(entry.path());
        }
    }
    let missing = present.iter().enumerate().filter(|(_, p)| !**p).map(|(i, _)| i as u64 + 1).collect();
    strays.sort();
    Ok(EventScan { missing, strays })
}

/// Moves leftovers into `.quarantine/<unix nanos>/`, keeping their names. Nothing is deleted.
pub(crate) fn quarantine(layout: &Layout, strays: &[PathBuf], durable: bool) -> Result<(), StoreError> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = layout.quarantine().join(stamp.to_string());
    std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(IoOp::Open, &dir, e))?;
    for path in strays {
        let to = dir.join(path.file_name().expect("scanned entries have names"));
        std::fs::rename(path, &to).map_err(|e| StoreError::io(IoOp::Rename, path, e))?;
    }
    tracing::warn!(files = strays.len(), to = %dir.display(), "moved leftovers of unacknowledged appends to quarantine");
    if durable {
        for d in [&layout.events, &dir, &layout.quarantine(), &layout.root] {
            io::fsync_dir(d).map_err(|e| StoreError::io(IoOp::FsyncDir, d, e))?;
        }
    }
    Ok(())
}

/// Loads every `<stem>.json` index file of `dir`. Positions beyond `head` (left by a crashed append) are dropped
/// and the file marked dirty; a corrupt file is logged, marked dirty and left out, so its events count as
/// uncovered and get re-indexed.
fn load_index_dir(
    dir: &Path,
    io: &dyn BatchIo,
    head: u64,
    dirty: &mut BTreeSet<String>,
) -> Result<Vec<(String, Vec<u64>)>, StoreError> {
    let mut stems = Vec::new();
    let mut paths = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io(IoOp::Open, dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(IoOp::Read, dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if format::is_tmp_file_name(name) {
            // Index files are derived data: an interrupted rewrite's temporary file is simply dropped.
            let _ = std::fs::remove_file(entry.path());
        } else if let Some(stem) = name.strip_suffix(".json") {
            stems.push(stem.to_string());
            paths.push(entry.path());
        }
    }
    let mut out = Vec::with_capacity(stems.len());
    for (chunk_stems, chunk_paths) in stems.chunks(READ_BATCH_FILES_DEFAULT).zip(paths.chunks(READ_BATCH_FILES_DEFAULT))
    {
        for ((stem, path), result) in chunk_stems.iter().zip(chunk_paths).zip(io.read_files(chunk_paths)) {
            let bytes = result?;
            match format::decode_index(&bytes) {
                Ok(mut positions) => {
                    if positions.last().is_some_and(|&p| p > head) {
                        positions.retain(|&p| p <= head);
                        dirty.insert(stem.clone());
                    }
                    out.push((stem.clone(), positions));
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), "corrupt index file, rebuilding it from event files: {e}");
                    dirty.insert(stem.clone());
                }
            }
        }
    }
    Ok(out)
}

/// The index files whose lists changed since they were last written (tag files or type files), encoded.
pub(crate) fn encode_dirty_index_files(layout: &Layout, index: &Index, tags: bool) -> Vec<(PathBuf, Vec<u8>)> {
    let (dir, dirty, lists) = if tags {
        (&layout.tag_index, &index.dirty_tags, &index.by_tag)
    } else {
        (&layout.type_index, &index.dirty_types, &index.by_type)
    };
    dirty
        .iter()
        .map(|stem| {
            let positions = lists.get(stem).map_or(&[][..], Vec::as_slice);
            (dir.join(format!("{stem}.json")), format::encode_index(positions))
        })
        .collect()
}

pub(crate) fn replace_all(files: &[(PathBuf, Vec<u8>)]) -> Vec<FileWrite<'_>> {
    files.iter().map(|(path, bytes)| FileWrite { path, bytes, mode: WriteMode::Replace }).collect()
}

/// Rewrites the index files whose lists changed: tag files first, then type files, each batch durable before the
/// next. Type files are the coverage record `open` trusts, so they must never get ahead of the tag files.
/// Holds the index lock only to encode and to clear the dirty marks, not during I/O (only the caller mutates).
pub(crate) fn flush_index_files(
    layout: &Layout,
    io: &dyn BatchIo,
    index: &RwLock<Index>,
    durable: bool,
) -> Result<usize, StoreError> {
    let mut batches = 0;
    for tags in [true, false] {
        let files = encode_dirty_index_files(layout, &index.read().unwrap(), tags);
        if files.is_empty() {
            continue;
        }
        io.write_files(&replace_all(&files), durable)?;
        batches += 1;
        let mut index = index.write().unwrap();
        if tags {
            index.dirty_tags.clear();
        } else {
            index.dirty_types.clear();
        }
    }
    Ok(batches)
}
