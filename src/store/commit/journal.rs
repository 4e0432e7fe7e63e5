//! `--commit journal`: the journal is the durable record; the Opossum tree is not written on the commit path.
//!
//! Protocol for one group (the writer thread, positions `head + 1 ..= new_head` already assigned, every
//! condition already checked against the in-memory index):
//! 1. Encode one journal record per event (the event file bytes, with its type and tags in front).
//! 2. Add the events to the in-memory index (readers do not look above the published head yet).
//! 3. `Journal::append`: one write of the whole group and, with `Durability::Fsync`, one `fdatasync` of the active
//!    segment. On error the journal and the store are poisoned and the index is cut back to `head`.
//! 4. The caller publishes `new_head` and answers every appender.
//!
//! The tree: with `--mirror off` it is not written for new events at all; the store holds `.store.lock` for its
//! whole life, so a .NET writer can never take a position the journal already holds.

use std::sync::Arc;

use crate::io::{IoError, IoOp};
use crate::journal::{Journal, JournalError, NewRecord};
use crate::model::SequencedEvent;
use crate::store::{PreparedEvent, Shared, StoreError};

// A record holds an event file plus keys no longer than the file; a group holds whatever requests fit in half of
// its byte bound, plus one more request.
const _: () = {
    use crate::limits::{JOURNAL_GROUP_BYTES_MAX, JOURNAL_RECORD_BYTES_MAX};
    use crate::store::{APPEND_BYTES_MAX, EVENT_BYTES_MAX};
    assert!(JOURNAL_RECORD_BYTES_MAX >= 2 * EVENT_BYTES_MAX + crate::journal::format::RECORD_HEADER_BYTES);
    assert!(JOURNAL_GROUP_BYTES_MAX / 2 + 2 * APPEND_BYTES_MAX <= JOURNAL_GROUP_BYTES_MAX);
};

/// Makes positions `head + 1 ..= new_head` durable in the journal (steps 1–3).
pub(crate) fn write(
    shared: &Shared,
    journal: &Journal,
    accepted: &[(&[PreparedEvent], u64)],
    head: u64,
) -> Result<(), StoreError> {
    let mut files: Vec<Vec<u8>> = Vec::new();
    {
        let mut index = shared.index.write().unwrap_or_else(|e| e.into_inner());
        for &(events, first) in accepted {
            for (i, e) in events.iter().enumerate() {
                let position = first + i as u64;
                files.push(e.file_bytes(position));
                index.insert(position, &e.event_type, &e.tags);
            }
        }
    }
    let mut records = Vec::with_capacity(files.len());
    let mut at = 0;
    for &(events, _) in accepted {
        for e in events {
            let file = &files[at];
            at += 1;
            records.push(NewRecord {
                event_type: &e.event_type,
                tags: &e.tags,
                file,
                data: e.data_range,
                metadata: (file.len() as u32 - e.metadata_from_end, e.metadata_len),
            });
        }
    }
    journal.append(head + 1, &records).map(|_| ()).map_err(StoreError::from)
}

/// Reads `positions` (each at most the head) from the journal, in the order given.
pub(crate) fn read_events(journal: &Journal, positions: &[u64]) -> Result<Vec<SequencedEvent>, StoreError> {
    let batch = journal.read(positions)?;
    let mut events = Vec::with_capacity(batch.len());
    for v in batch.iter() {
        let raw = |json: &str, what: &str| {
            serde_json::value::RawValue::from_string(json.to_string()).map_err(|e| StoreError::Corrupt {
                path: journal.locate(v.position).map(|(p, _)| p).unwrap_or_default(),
                reason: format!("position {}: {what} is not JSON: {e}", v.position),
            })
        };
        events.push(SequencedEvent {
            position: v.position,
            event_type: v.event_type.to_string(),
            data: raw(v.data, "data")?,
            tags: v.owned_tags(),
            metadata: raw(v.metadata, "metadata")?,
        });
    }
    Ok(events)
}

impl From<JournalError> for StoreError {
    fn from(e: JournalError) -> StoreError {
        match e {
            JournalError::Io { op, path, source } => {
                let op = match op {
                    "read" | "stat" | "list" => IoOp::Read,
                    "write" | "truncate" | "fallocate" | "remove" => IoOp::Write,
                    "fdatasync" => IoOp::Fsync,
                    "fsync" => IoOp::FsyncDir,
                    "replace" => IoOp::Rename,
                    _ => IoOp::Open,
                };
                StoreError::Io(Arc::new(IoError::new(op, path, source)))
            }
            JournalError::Corrupt { segment, offset, reason } => {
                StoreError::Corrupt { path: segment, reason: format!("at offset {offset}: {reason}") }
            }
            JournalError::Poisoned(reason) => StoreError::Poisoned(reason),
        }
    }
}

/// Opens the journal of a store in journal mode (`.store.lock` held by the caller): journal recovery, then the
/// events of the tree beyond the journal's head imported (a store .NET wrote, or files a .NET writer appended
/// while the daemon was stopped), then the in-memory index from the journal.
pub(crate) fn open(
    layout: &crate::format::Layout,
    io: Arc<dyn crate::io::BatchIo>,
    options: &crate::store::StoreOptions,
) -> Result<(crate::store::recovery::Recovered, Journal), StoreError> {
    use crate::journal::JournalOptions;
    use crate::store::{index::Index, recovery, Durability, READ_BATCH_FILES_DEFAULT};
    let durable = options.durability == Durability::Fsync;
    recovery::create_layout(layout, durable)?;
    let (journal, opened) = Journal::open_dir(&layout.root, JournalOptions { durable, ..JournalOptions::default() })?;
    let journal = journal.with_batch_io(io.clone());
    if opened.torn_bytes > 0 {
        tracing::warn!(bytes = opened.torn_bytes, head = opened.head, "journal: cut a torn tail (never acknowledged)");
    }
    let ledger = recovery::read_ledger(layout)?;
    let from = journal.head() + 1;
    if ledger >= from {
        tracing::info!(from, to = ledger, "journal: importing events from the Opossum tree");
        let started = std::time::Instant::now();
        let positions: Vec<u64> = (from..=ledger).collect();
        for (n, chunk) in positions.chunks(READ_BATCH_FILES_DEFAULT).enumerate() {
            let events = crate::store::read_event_files(layout, io.as_ref(), chunk, ledger)?;
            import(&journal, &events)?;
            if n % 100 == 99 {
                tracing::info!(done = chunk[chunk.len() - 1], of = ledger, "journal: import progress");
            }
        }
        tracing::info!(
            events = ledger + 1 - from,
            took_ms = started.elapsed().as_millis() as u64,
            "journal: import done"
        );
    }
    if ledger >= from {
        // Just imported: the tree holds every event up to its ledger, durably (.NET or files mode wrote it). Only
        // an import says so: after a crash with the mirror live, the ledger may vouch for files never synced.
        journal.set_mirror_durable(ledger)?;
    }
    let head = journal.head();
    let naming = crate::store::recovery::store_naming_rules(layout);
    crate::store::recovery::record_naming_rules(layout, naming);
    let mut index = Index::new(naming.for_writing_on_this_platform());
    journal.scan(1, head, |v| -> Result<(), StoreError> {
        index.insert(v.position, v.event_type, &v.owned_tags());
        Ok(())
    })?;
    // The index files of the tree are not this mode's business: nothing is dirty.
    index.dirty_tags.clear();
    index.dirty_types.clear();
    index.max_position = head;
    if options.mirror == crate::store::MirrorMode::Live {
        reconcile_tree(layout, io.as_ref(), &journal, &mut index, durable)?;
    }
    Ok((crate::store::recovery::Recovered { index, head, unwritable: None, index_write_failures: 0 }, journal))
}

/// Appends events read from the tree to the journal as one group, re-encoded as this library writes event files
/// (minified), so the record's data and metadata are wire-ready.
fn import(journal: &Journal, events: &[SequencedEvent]) -> Result<(), StoreError> {
    let files: Vec<Vec<u8>> = events
        .iter()
        .map(|e| crate::format::encode_event(e.position, &e.event_type, &e.data, &e.tags, &e.metadata))
        .collect();
    let records: Vec<NewRecord<'_>> = events
        .iter()
        .zip(&files)
        .map(|(e, file)| NewRecord::for_event_file(&e.event_type, &e.tags, file, e.data.get(), e.metadata.get()))
        .collect();
    journal.append(events[0].position, &records)?;
    Ok(())
}

/// The mirror's checkpoint: index files written, every tree file made durable (one `syncfs` of the store's
/// filesystem), then "mirror durable through the head" recorded in the journal's marks. Runs at close.
pub(crate) fn mirror_checkpoint(shared: &Shared, journal: &Journal) -> Result<(), StoreError> {
    let head = shared.head();
    shared.flush_index();
    if let Some(reason) = shared.poison_reason() {
        return Err(StoreError::Poisoned(reason));
    }
    if shared.options.durability == crate::store::Durability::Fsync {
        sync_filesystem(&shared.layout.root)?;
    }
    // With `--durability none` the tree is as durable as the journal: current, in the page cache.
    journal.set_mirror_durable(head)?;
    Ok(())
}

/// Makes every dirty page of the filesystem holding `root` durable: `syncfs(2)` on Linux; elsewhere an `fsync` of
/// each event file would be needed, and the mirror is re-derived from the journal at the next open instead.
fn sync_filesystem(root: &std::path::Path) -> Result<(), StoreError> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let dir = std::fs::File::open(root).map_err(|e| StoreError::io(IoOp::Open, root, e))?;
        nix::unistd::syncfs(dir.as_raw_fd()).map_err(|e| StoreError::io(IoOp::Fsync, root, e.into()))?;
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = root;
        Err(StoreError::Poisoned("the live mirror needs syncfs (Linux) to checkpoint".into()))
    }
}

/// Journal mode, mirror live, at open: brings the tree up to the journal. Every position after the mirror's last
/// durable checkpoint is written again from its journal record (a crash may have left those files torn or missing),
/// then the index files those events touch and the ledger, durably; then the checkpoint is recorded.
pub(crate) fn reconcile_tree(
    layout: &crate::format::Layout,
    io: &dyn crate::io::BatchIo,
    journal: &Journal,
    index: &mut crate::store::index::Index,
    durable: bool,
) -> Result<(), StoreError> {
    use crate::io::{FileWrite, WriteMode};
    let head = journal.head();
    let from = journal.marks().mirror_durable + 1;
    if from > head {
        return Ok(());
    }
    tracing::info!(from, to = head, "mirror: bringing the Opossum tree up to the journal");
    let mut next = from;
    while next <= head {
        let last = (next + crate::store::READ_BATCH_FILES_DEFAULT as u64 - 1).min(head);
        let positions: Vec<u64> = (next..=last).collect();
        let batch = journal.read(&positions)?;
        let paths: Vec<std::path::PathBuf> = positions.iter().map(|&p| layout.event_file(p)).collect();
        let writes: Vec<FileWrite<'_>> = batch
            .iter()
            .zip(&paths)
            .map(|(v, path)| FileWrite { path, bytes: v.file, mode: WriteMode::Replace })
            .collect();
        io.write_files(&writes, durable)?;
        for v in batch.iter() {
            index.dirty_types.insert(index.naming.event_type_stem(v.event_type));
            for (key, value) in v.tags() {
                index.dirty_tags.insert(index.naming.event_tag_stem(&crate::model::Tag::new(key, value)));
            }
        }
        next = last + 1;
    }
    let lock = std::sync::RwLock::new(std::mem::take(index));
    crate::store::recovery::flush_index_files(layout, io, &lock, durable)?;
    *index = lock.into_inner().unwrap_or_else(|e| e.into_inner());
    let ledger = crate::format::Ledger { last_sequence_position: head, event_count: head }.encode();
    let ledger_path = layout.ledger();
    io.write_files(&[FileWrite { path: &ledger_path, bytes: &ledger, mode: WriteMode::Commit }], durable)?;
    journal.set_mirror_durable(head)?;
    Ok(())
}

/// Files mode on a store whose journal holds events the tree lacks (journal mode with the mirror off, or a crash
/// before the live mirror's checkpoint): serving the tree would hide those events and reuse their positions.
pub(crate) fn refuse_tree_behind_journal(layout: &crate::format::Layout, tree_head: u64) -> Result<(), StoreError> {
    let dir = crate::journal::journal_dir(&layout.root);
    if !dir.is_dir() {
        return Ok(());
    }
    let (journal, _) = Journal::open_dir(&layout.root, crate::journal::JournalOptions::default())?;
    let head = journal.head();
    if head > tree_head {
        return Err(StoreError::Corrupt {
            path: dir,
            reason: format!(
                "the journal holds events up to position {head}, the Opossum tree only up to {tree_head}: open this \
                 store with --commit journal (with --mirror live it brings the tree up to date)"
            ),
        });
    }
    Ok(())
}
