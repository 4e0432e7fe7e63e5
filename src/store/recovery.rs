//! Opening a store: create the layout, read the ledger, set aside what no acknowledged batch owns, and load the
//! in-memory index from the index files, re-deriving it from the event files wherever they fall short.
//!
//! Runs with `.store.lock` held, so no other writer is half way through an append while we look.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use super::index::Index;
use super::trash::Trash;
use super::{StoreError, READ_BATCH_FILES_DEFAULT};
use crate::format::{self, Layout, Ledger, NamingRules};
use crate::io::{self, BatchIo, FileWrite, IoOp, WriteMode};

/// Which of the two kinds of event index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexKind {
    /// `Indices/EventType/<S(type)>.json`: the coverage record `open` trusts.
    Type,
    /// `Indices/Tags/<S(key)_S(value)>.json`.
    Tag,
}

pub(crate) struct Recovered {
    pub index: Index,
    pub head: u64,
    /// Why the store cannot take writes yet, when a write recovery needs failed (a full disk): the store still opens
    /// for reads, and the writer retries recovery with backoff.
    pub unwritable: Option<String>,
    /// Index files that could not be rewritten (a derived cache: logged and skipped; the next open re-derives).
    pub index_write_failures: u64,
    /// Journal mode: the position the index checkpoint on disk holds through, as the open found and checked it
    /// (`None`: none usable, or files mode). The checkpointer starts from it instead of reading the file again.
    pub index_checkpoint: Option<u64>,
}

/// Open-time recovery; the writer re-runs it in place after a write fault. Reads everything it needs first; its own
/// writes (setting leftovers aside, rewriting index files) never make it fail: a failure to set aside leftovers
/// leaves the store readable and `unwritable`, a failure to write index files is logged and counted.
///
/// `unsynced`: the last run wrote without syncing and did not stop cleanly (`store/unsynced.rs`), and the tree's
/// event files were durable through this position. Then the event files after it count only when every one up to
/// the ledger is there and whole, else the ledger is cut back to it ([`whole_tree_end`]; the rest is set aside), and
/// the index files are not trusted: the index is re-derived from every event file and each index file that differs
/// from it is rewritten.
pub(crate) fn recover(
    layout: &Layout,
    io: &dyn BatchIo,
    durable: bool,
    unsynced: Option<u64>,
) -> Result<Recovered, StoreError> {
    create_layout(layout, durable)?;
    let mut leftovers = commit_leftovers(layout)?;
    let mut head = match unsynced {
        Some(durable_through) => unsynced_ledger(layout, io, read_ledger(layout), durable_through, durable)?,
        None => read_ledger(layout)?,
    };
    if let Some(durable_through) = unsynced {
        let end = whole_tree_end(layout, io, durable_through, head)?;
        cut_ledger(layout, io, end, head, durable)?;
        head = end;
    }
    let scan = scan_events(layout, head)?;
    if let Some(&missing) = scan.missing.first() {
        return Err(StoreError::MissingEvent { path: layout.event_file(missing), ledger: head });
    }
    leftovers.extend(scan.strays);
    let naming = store_naming_rules(layout);
    let mut index = Index::new(naming.for_writing_on_this_platform());
    let mut rebuild_tags = false;
    let mut covered = vec![false; head as usize];
    // Type files this platform cannot open leave their events uncovered, so those are re-derived below.
    let (types, _) = load_index_dir(&layout.type_index, io, head, &mut index.dirty_types, &mut leftovers)?;
    for (stem, positions) in types {
        for &p in &positions {
            covered[(p - 1) as usize] = true;
        }
        index.by_type.set(&stem, positions);
    }
    let (tags, foreign_tag_files) = load_index_dir(&layout.tag_index, io, head, &mut index.dirty_tags, &mut leftovers)?;
    for (stem, positions) in tags {
        index.by_tag.set(&stem, positions);
    }
    if unsynced.is_some() {
        // Any index file the last run wrote may be older than its neighbours, or hold another file's old blocks.
        index = rederive_index(layout, io, index, head)?;
    } else if index.dirty_tags.iter().any(|stem| !index.by_tag.contains_key(stem)) || foreign_tag_files > 0 {
        // A corrupt tag file, or one this platform cannot open: we cannot tell which events it listed, so
        // re-derive every tag list.
        rebuild_tags = true;
    }
    let uncovered: Vec<u64> = if unsynced.is_some() {
        Vec::new()
    } else if rebuild_tags {
        index.clear_tag_lists();
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
    // Every event up to the ledger is in the lists now (loaded or re-derived).
    index.max_position = head;
    let mut unwritable = None;
    if !leftovers.is_empty() {
        leftovers.sort();
        if let Err(e) = quarantine(layout, &leftovers, durable) {
            tracing::warn!("could not set leftovers aside, the store opens read-only: {e}");
            unwritable = Some(format!("could not set aside leftovers of unacknowledged writes: {e}"));
        }
    }
    let index = RwLock::new(index);
    let mut index_write_failures = 0;
    if unwritable.is_none() {
        record_naming_rules(layout, naming);
        if let Err(e) = flush_index_files(layout, io, &index, durable, None) {
            // Index files are a derived cache (ARCHITECTURE.md, invariant 5): never a reason not to open.
            tracing::warn!("could not write index files; the next open re-derives them from the event files: {e}");
            index_write_failures = 1;
        }
    }
    Ok(Recovered { index: index.into_inner().unwrap(), head, unwritable, index_write_failures, index_checkpoint: None })
}

/// After a run that wrote without syncing and did not stop cleanly: where the tree's events end. The event files
/// after `durable_through` (durable before that run) up to `ledger` count only when every one is there and whole: the
/// ledger is only ever written at a group boundary, after its group's event files, so then every group it covers is
/// whole. Else (a file missing or torn: the machine stopped before it was written back) the tree ends at
/// `durable_through`, a group boundary too, so no batch is ever partly visible; the events after it are lost (logged).
pub(crate) fn whole_tree_end(
    layout: &Layout,
    io: &dyn BatchIo,
    durable_through: u64,
    ledger: u64,
) -> Result<u64, StoreError> {
    let positions: Vec<u64> = (durable_through + 1..=ledger).collect();
    for chunk in positions.chunks(READ_BATCH_FILES_DEFAULT) {
        let paths: Vec<PathBuf> = chunk.iter().map(|&p| layout.event_file(p)).collect();
        for ((result, path), &position) in io.read_files(&paths).into_iter().zip(&paths).zip(chunk) {
            if let Err(e) = super::decode_event_file(result, &|| path.clone(), position, ledger) {
                tracing::error!(
                    lost = %format!("{}..={ledger}", durable_through + 1),
                    "the last run wrote without syncing and the machine stopped before event {position} reached the \
                     disk ({e}): the tree goes back to position {durable_through}, the last one known durable, and \
                     the events after it (acknowledged under --durability none) are set aside in quarantine"
                );
                return Ok(durable_through);
            }
        }
    }
    if ledger > durable_through {
        tracing::info!(
            from = durable_through + 1,
            to = ledger,
            "the unsynced run's event files all reached the disk whole"
        );
    }
    Ok(ledger)
}

/// After a run that wrote without syncing and did not stop cleanly: the tree's ledger as `read`, unless that run
/// left it torn (overwritten in place) or below `durable_through` (a replacement whose bytes never reached the disk
/// reads empty): then where the groups after the durable point end is unknown, and the ledger goes back to it.
pub(crate) fn unsynced_ledger(
    layout: &Layout,
    io: &dyn BatchIo,
    read: Result<u64, StoreError>,
    durable_through: u64,
    durable: bool,
) -> Result<u64, StoreError> {
    let why = match read {
        Ok(ledger) if ledger >= durable_through => return Ok(ledger),
        Ok(ledger) => format!("it says {ledger}"),
        Err(StoreError::Corrupt { reason, .. }) => reason,
        Err(e) => return Err(e),
    };
    tracing::error!(
        file = %layout.ledger().display(),
        "the last run wrote without syncing and left the ledger torn ({why}): the tree goes back to position \
         {durable_through}, the last one known durable; the event files after it are set aside in quarantine"
    );
    let bytes = Ledger { last_sequence_position: durable_through, event_count: durable_through }.encode();
    let path = layout.ledger();
    io.write_files(&[FileWrite { path: &path, bytes: &bytes, mode: WriteMode::Commit }], durable)?;
    Ok(durable_through)
}

/// Writes the ledger back to `end` when it says more (`whole_tree_end`); the files after it are set aside by the
/// caller's scan.
pub(crate) fn cut_ledger(
    layout: &Layout,
    io: &dyn BatchIo,
    end: u64,
    ledger: u64,
    durable: bool,
) -> Result<(), StoreError> {
    if end >= ledger {
        return Ok(());
    }
    let bytes = Ledger { last_sequence_position: end, event_count: end }.encode();
    let path = layout.ledger();
    io.write_files(&[FileWrite { path: &path, bytes: &bytes, mode: WriteMode::Commit }], durable)?;
    tracing::warn!(to = end, "cut the ledger back");
    Ok(())
}

/// `loaded` (the index files as read) replaced by the index of every event file through `head`, with each stem
/// whose file differs from it (or is corrupt, or lists events it does not hold) marked for rewriting.
fn rederive_index(layout: &Layout, io: &dyn BatchIo, loaded: Index, head: u64) -> Result<Index, StoreError> {
    let started = std::time::Instant::now();
    tracing::warn!(events = head, "re-deriving the index from every event file (index files are not trusted)");
    let mut index = Index::new(loaded.naming);
    let positions: Vec<u64> = (1..=head).collect();
    for chunk in positions.chunks(READ_BATCH_FILES_DEFAULT) {
        for e in super::read_event_files(layout, io, chunk, head)? {
            index.insert(e.position, &e.event_type, &e.tags);
        }
    }
    index.dirty_types = loaded.dirty_types;
    index.dirty_tags = loaded.dirty_tags;
    let differ = |ours: &super::index::StemLists, theirs: &super::index::StemLists, dirty: &mut BTreeSet<String>| {
        for (stem, _) in ours.iter().chain(theirs.iter()) {
            if ours.get(stem).unwrap_or(&[]) != theirs.get(stem).unwrap_or(&[]) {
                dirty.insert(stem.to_string());
            }
        }
    };
    differ(&index.by_type, &loaded.by_type, &mut index.dirty_types);
    differ(&index.by_tag, &loaded.by_tag, &mut index.dirty_tags);
    tracing::warn!(
        type_files = index.dirty_types.len(),
        tag_files = index.dirty_tags.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "index re-derived; rewriting the index files that differ from it"
    );
    Ok(index)
}

/// Journal mode, after a run that wrote without syncing and did not stop cleanly: every index file of the tree read
/// and compared with `index`'s lists clipped to `through` (what the tree holds); each one that differs, is corrupt,
/// or is missing is rewritten (through the trash). `index`'s dirty marks are left empty.
pub(crate) fn rewrite_differing_index_files(
    layout: &Layout,
    io: &dyn BatchIo,
    index: &mut Index,
    through: u64,
    durable: bool,
    trash: &Trash,
) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let mut on_disk = Index::new(index.naming);
    let mut leftovers = Vec::new();
    let (types, _) = load_index_dir(&layout.type_index, io, u64::MAX, &mut on_disk.dirty_types, &mut leftovers)?;
    let (tags, _) = load_index_dir(&layout.tag_index, io, u64::MAX, &mut on_disk.dirty_tags, &mut leftovers)?;
    for (stem, positions) in types {
        on_disk.by_type.set(&stem, positions);
    }
    for (stem, positions) in tags {
        on_disk.by_tag.set(&stem, positions);
    }
    let clip = |list: Option<&[u64]>| -> Vec<u64> {
        let list = list.unwrap_or(&[]);
        list[..list.partition_point(|&p| p <= through)].to_vec()
    };
    let differ = |ours: &super::index::StemLists, theirs: &super::index::StemLists, dirty: &mut BTreeSet<String>| {
        for (stem, _) in ours.iter().chain(theirs.iter()) {
            if clip(ours.get(stem)) != theirs.get(stem).unwrap_or(&[]) {
                dirty.insert(stem.to_string());
            }
        }
    };
    let (mut dirty_types, mut dirty_tags) = (on_disk.dirty_types, on_disk.dirty_tags);
    differ(&index.by_type, &on_disk.by_type, &mut dirty_types);
    differ(&index.by_tag, &on_disk.by_tag, &mut dirty_tags);
    tracing::warn!(
        type_files = dirty_types.len(),
        tag_files = dirty_tags.len(),
        "index files that differ from the events (left by the unsynced run): rewriting them"
    );
    index.dirty_types = dirty_types;
    index.dirty_tags = dirty_tags;
    let max_position = index.max_position;
    index.max_position = through;
    let lock = RwLock::new(std::mem::take(index));
    let flushed = flush_index_files(layout, io, &lock, durable, Some(trash));
    *index = lock.into_inner().unwrap_or_else(|e| e.into_inner());
    index.max_position = max_position;
    index.dirty_types.clear();
    index.dirty_tags.clear();
    flushed?;
    tracing::info!(took_ms = started.elapsed().as_millis() as u64, "index files checked");
    Ok(())
}

/// The file-name rules the store's index files follow (`format::NamingRules`): as recorded in
/// `.opossumd/naming-rules`; without a record, the rules its index file names show (a name holding `:` was
/// written under the Unix rules), or else this platform's (a new store, or one whose names cannot tell).
pub(crate) fn store_naming_rules(layout: &Layout) -> NamingRules {
    let record = layout.naming_rules_record();
    match std::fs::read_to_string(&record) {
        Ok(text) => match NamingRules::parse(&text) {
            Some(rules) => return rules,
            None => tracing::warn!(file = %record.display(), "unknown naming rules {text:?}, inferring them again"),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %record.display(), "cannot read the naming rules, inferring them: {e}"),
    }
    let mut names = Vec::new();
    for dir in [&layout.tag_index, &layout.type_index] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            names.extend(entries.filter_map(|e| e.ok()?.file_name().into_string().ok()));
        }
    }
    NamingRules::evident_in(names.iter().map(String::as_str)).unwrap_or(NamingRules::NATIVE)
}

/// Writes `.opossumd/naming-rules` when it does not say `naming` yet, so the store keeps its rules wherever it is
/// opened next. Best effort: without the record the next open infers the rules again.
pub(crate) fn record_naming_rules(layout: &Layout, naming: NamingRules) {
    let record = layout.naming_rules_record();
    if std::fs::read_to_string(&record).ok().and_then(|text| NamingRules::parse(&text)) == Some(naming) {
        return;
    }
    let written = record
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&record, format!("{}\n", naming.as_str())));
    match written {
        Ok(()) => {
            tracing::info!(file = %record.display(), rules = naming.as_str(), "recorded the store's naming rules")
        }
        Err(e) => tracing::warn!(file = %record.display(), "cannot record the store's naming rules: {e}"),
    }
}

pub(crate) fn create_layout(layout: &Layout, durable: bool) -> Result<(), StoreError> {
    let mut created = false;
    for dir in layout.dirs() {
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(IoOp::CreateDir, &dir, e))?;
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

/// Temporary ledgers (`.ledger` + a temporary suffix): ledgers of commits that never completed. They vouch for
/// nothing (the events they would have covered are quarantined by `scan_events`), and are set aside with them.
fn commit_leftovers(layout: &Layout) -> Result<Vec<PathBuf>, StoreError> {
    let entries = std::fs::read_dir(&layout.root).map_err(|e| StoreError::io(IoOp::Open, &layout.root, e))?;
    let mut leftovers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(IoOp::Read, &layout.root, e))?;
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.starts_with(format::LEDGER_FILE) && format::is_tmp_file_name(n)) {
            leftovers.push(entry.path());
        }
    }
    Ok(leftovers)
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

/// Moves leftovers into `.quarantine/<unix nanos>/<their path under the store root>`, logging each by name.
/// Nothing is ever deleted.
pub(crate) fn quarantine(layout: &Layout, strays: &[PathBuf], durable: bool) -> Result<(), StoreError> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = layout.quarantine().join(stamp.to_string());
    let mut dirs: Vec<PathBuf> = vec![layout.root.clone(), layout.quarantine(), dir.clone()];
    for path in strays {
        let relative =
            path.strip_prefix(&layout.root).unwrap_or_else(|_| Path::new(path.file_name().unwrap_or_default()));
        let to = dir.join(relative);
        let to_dir = to.parent().expect("a quarantined file has a directory").to_path_buf();
        std::fs::create_dir_all(&to_dir).map_err(|e| StoreError::io(IoOp::CreateDir, &to_dir, e))?;
        tracing::warn!(file = %path.display(), to = %to.display(), "setting aside a leftover of an unacknowledged write");
        std::fs::rename(path, &to).map_err(|e| StoreError::io(IoOp::Rename, path, e))?;
        for d in [to_dir, path.parent().unwrap_or(&layout.root).to_path_buf()] {
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    tracing::warn!(files = strays.len(), to = %dir.display(), "moved leftovers of unacknowledged writes to quarantine");
    if durable {
        for d in &dirs {
            io::fsync_dir(d).map_err(|e| StoreError::io(IoOp::FsyncDir, d, e))?;
        }
    }
    Ok(())
}

/// Files and bytes under `.quarantine/` (for `stats` and the open log line); `(0, 0)` when there is none.
pub(crate) fn quarantine_usage(layout: &Layout) -> (u64, u64) {
    fn walk(dir: &Path, files: &mut u64, bytes: &mut u64) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => walk(&entry.path(), files, bytes),
                Ok(_) => {
                    *files += 1;
                    *bytes += entry.metadata().map_or(0, |m| m.len());
                }
                Err(_) => {}
            }
        }
    }
    let (mut files, mut bytes) = (0, 0);
    walk(&layout.quarantine(), &mut files, &mut bytes);
    (files, bytes)
}

/// An index file's stem and the positions it lists.
type StemList = (String, Vec<u64>);

/// Loads every `<stem>.json` index file of `dir`; its temporary files go to `leftovers`. Positions beyond `head` (left by a crashed append) are dropped
/// and the file marked dirty; a corrupt file is logged, marked dirty and left out, so its events count as
/// uncovered and get re-indexed. Also returns how many index files were left out because this platform cannot
/// open them: a name holding a character Windows refuses (`time_12?30.json`, written under the Unix rules) is
/// listed under Wine or on a share of a Linux directory, but opening it fails (`ERROR_INVALID_NAME`).
fn load_index_dir(
    dir: &Path,
    io: &dyn BatchIo,
    head: u64,
    dirty: &mut BTreeSet<String>,
    leftovers: &mut Vec<PathBuf>,
) -> Result<(Vec<StemList>, usize), StoreError> {
    let mut stems = Vec::new();
    let mut paths = Vec::new();
    let mut foreign = 0;
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io(IoOp::Open, dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(IoOp::Read, dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.chars().any(|c| NamingRules::NATIVE.is_invalid_char(c)) {
            tracing::warn!(
                file = %entry.path().display(),
                "index file named under another platform's rules cannot be opened here: re-deriving what it lists \
                 from the event files (at every open while it is there)"
            );
            foreign += 1;
        } else if format::is_tmp_file_name(name) {
            // An interrupted rewrite's temporary file: derived data, but never deleted silently.
            leftovers.push(entry.path());
        } else if let Some(stem) = format::parse_index_file_name(name) {
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
    Ok((out, foreign))
}

/// The lists of `stems` (tag lists or type lists) in `index`, clipped to positions up to `limit`, with the path of
/// each one's index file.
pub(crate) fn clipped_lists<'a>(
    layout: &'a Layout,
    index: &'a Index,
    stems: &'a BTreeSet<String>,
    kind: IndexKind,
    limit: u64,
) -> impl Iterator<Item = (PathBuf, &'a [u64])> + 'a {
    let (dir, lists) = match kind {
        IndexKind::Tag => (&layout.tag_index, &index.by_tag),
        IndexKind::Type => (&layout.type_index, &index.by_type),
    };
    stems.iter().map(move |stem| {
        let positions = lists.get(stem).unwrap_or(&[]);
        (dir.join(format::index_file_name(stem)), &positions[..positions.partition_point(|&p| p <= limit)])
    })
}

/// The index files of `stems` (tag files or type files), encoded from the lists in `index` up to position `limit`.
pub(crate) fn encode_index_files(
    layout: &Layout,
    index: &Index,
    stems: &BTreeSet<String>,
    kind: IndexKind,
    limit: u64,
) -> Vec<(PathBuf, Vec<u8>)> {
    clipped_lists(layout, index, stems, kind, limit).map(|(path, list)| (path, format::encode_index(list))).collect()
}

pub(crate) fn replace_all(files: &[(PathBuf, Vec<u8>)]) -> Vec<FileWrite<'_>> {
    files.iter().map(|(path, bytes)| FileWrite { path, bytes, mode: WriteMode::Replace }).collect()
}

/// What one [`flush_index_files`] did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Flushed {
    /// `BatchIo::write_files` calls.
    pub batches: usize,
    pub files: usize,
    pub bytes: usize,
    /// Time spent encoding the files, in µs.
    pub encode_us: u64,
}

/// Rewrites the index files whose lists changed: tag files first, then type files, each batch durable before the
/// next. Type files are the coverage record `open` trusts, so they must never get ahead of the tag files.
/// Takes the dirty marks at the start (they are put back if a write fails) and holds the index lock only to copy the
/// lists, never while encoding or during I/O, so appends go on while a flush writes. Both kinds of file come from
/// one snapshot, clipped to the highest position inserted when the marks were taken: a position inserted later may be in a list being
/// written while its other stems are not being written, and must wait for the next flush.
/// With a `trash`, the replaced files wait there to be deleted (`store/trash.rs`).
pub(crate) fn flush_index_files(
    layout: &Layout,
    io: &dyn BatchIo,
    index: &RwLock<Index>,
    durable: bool,
    trash: Option<&Trash>,
) -> Result<Flushed, StoreError> {
    let started = std::time::Instant::now();
    let (tags, types, limit) = {
        let mut index = index.write().unwrap();
        (std::mem::take(&mut index.dirty_tags), std::mem::take(&mut index.dirty_types), index.max_position)
    };
    // Copying the lists under the lock and encoding them after it keeps the writer's wait for the lock to a
    // memcpy (~2 ms for a type with 850,000 positions) instead of the encoding (~10-25 ms).
    let (tag_lists, type_lists) = {
        let index = index.read().unwrap();
        let copy = |stems, kind| -> Vec<(PathBuf, Vec<u64>)> {
            clipped_lists(layout, &index, stems, kind, limit).map(|(path, list)| (path, list.to_vec())).collect()
        };
        (copy(&tags, IndexKind::Tag), copy(&types, IndexKind::Type))
    };
    let encode = |lists: Vec<(PathBuf, Vec<u64>)>| -> Vec<(PathBuf, Vec<u8>)> {
        lists.into_iter().map(|(path, positions)| (path, format::encode_index(&positions))).collect()
    };
    let (tag_files, type_files) = (encode(tag_lists), encode(type_lists));
    let mut flushed = Flushed {
        batches: 0,
        files: tag_files.len() + type_files.len(),
        bytes: tag_files.iter().chain(&type_files).map(|(_, bytes)| bytes.len()).sum(),
        encode_us: started.elapsed().as_micros() as u64,
    };
    let mut write = || -> Result<(), StoreError> {
        for files in [&tag_files, &type_files] {
            if files.is_empty() {
                continue;
            }
            match trash {
                Some(trash) => trash.write_files(io, &replace_all(files), durable)?,
                None => io.write_files(&replace_all(files), durable)?,
            }
            flushed.batches += 1;
        }
        Ok(())
    };
    match write() {
        Ok(()) => Ok(flushed),
        Err(e) => {
            let mut index = index.write().unwrap();
            index.dirty_tags.extend(tags);
            index.dirty_types.extend(types);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::ThreadPoolIo;
    use crate::model::Tag;

    #[test]
    fn a_flush_never_lets_type_files_cover_positions_inserted_after_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        create_layout(&layout, false).unwrap();
        let mut index = Index::default();
        index.insert(1, "A", &[Tag::new("k", "1")]);
        // Position 2 arrives after the flush took its marks: its type list is being written, its tag's is not.
        index.by_type.set("A", vec![1, 2]);
        index.by_tag.set("k_2", vec![2]);
        let index = RwLock::new(index);
        flush_index_files(&layout, &ThreadPoolIo::new(2), &index, false, None).unwrap();
        let read = |p: PathBuf| format::decode_index(&std::fs::read(p).unwrap()).unwrap();
        assert_eq!(read(layout.type_index.join("A.json")), vec![1], "type file ran ahead of the tag files");
        assert_eq!(read(layout.tag_index.join("k_1.json")), vec![1]);
        assert!(!layout.tag_index.join("k_2.json").exists());
    }
}
