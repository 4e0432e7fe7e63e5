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
//! The tree: with `--mirror live` the mirror thread (`store/mirror.rs`) writes it after the answer, off the commit
//! path; with `--mirror off` it is not written for new events at all. Either way the store holds `.store.lock` for
//! its whole life, so a .NET writer can never take a position the journal already holds.

use std::sync::Arc;

use crate::io::{IoError, IoOp};
use crate::journal::{Journal, JournalError, NewRecord};
use crate::model::SequencedEvent;
use crate::store::mirror::reconcile_tree;
use crate::store::{PreparedBatch, Shared, StoreError};

// A record holds an event file plus keys no longer than the file; a group holds whatever requests fit in half of
// its byte bound, plus one more request.
const _: () = {
    use crate::journal::format::{EXTENSION_BYTES_MAX, RECORD_HEADER_BYTES};
    use crate::limits::{JOURNAL_GROUP_BYTES_MAX, JOURNAL_RECORD_BYTES_MAX};
    use crate::store::{APPEND_BYTES_MAX, EVENT_BYTES_MAX};
    assert!(JOURNAL_RECORD_BYTES_MAX >= 2 * EVENT_BYTES_MAX + RECORD_HEADER_BYTES + EXTENSION_BYTES_MAX);
    assert!(JOURNAL_GROUP_BYTES_MAX / 2 + 2 * APPEND_BYTES_MAX <= JOURNAL_GROUP_BYTES_MAX);
};

/// Makes positions `head + 1 ..= new_head` durable in the journal (steps 1–3).
pub(crate) fn write(
    shared: &Shared,
    journal: &Journal,
    accepted: &[(&PreparedBatch, u64)],
    head: u64,
) -> Result<(), StoreError> {
    {
        let mut index = shared.index.write().unwrap_or_else(|e| e.into_inner());
        for &(batch, first) in accepted {
            for (i, e) in batch.iter().enumerate() {
                index.insert(first + i as u64, &e.event_type, &e.tags);
            }
        }
    }
    // The records borrow the prepared parts; the journal encodes them straight into its group buffer (no event file
    // is built: the record stores the parts, and the mirror derives the file).
    let records: Vec<NewRecord<'_>> = accepted
        .iter()
        .flat_map(|&(batch, _)| {
            batch.iter().map(move |e| NewRecord {
                event_id: e.id.map(|id| id.0),
                tracking: e.tracking.as_ref().map(|t| (t.source.as_str(), t.position)),
                ..NewRecord::new(&e.event_type, &e.tags, batch.data(e), batch.metadata(e))
            })
        })
        .collect();
    journal.append(head + 1, &records).map(|_| ()).map_err(StoreError::from)
}

impl From<JournalError> for StoreError {
    fn from(e: JournalError) -> StoreError {
        match e {
            JournalError::Io { op, path, source } => {
                let op = match op {
                    "read" | "stat" | "list" => IoOp::Read,
                    "write" | "zero-fill" | "truncate" | "remove" => IoOp::Write,
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
/// while the daemon was stopped), then the in-memory index from its checkpoint plus the journal after it
/// (`store::checkpoint`), then (mirror live) the tree brought up to the journal.
pub(crate) fn open(
    layout: &crate::format::Layout,
    io: Arc<dyn crate::io::BatchIo>,
    options: &crate::store::StoreOptions,
) -> Result<(crate::store::recovery::Recovered, Journal, crate::store::tracking::Table), StoreError> {
    use crate::journal::JournalOptions;
    use crate::store::{recovery, Durability};
    let started = std::time::Instant::now();
    let durable = options.durability == Durability::Fsync;
    recovery::create_layout(layout, durable)?;
    let journal_options = JournalOptions { durable, ..JournalOptions::default() };
    let (journal, opened) = match &options.journal_storage {
        Some(storage) => Journal::open(storage.clone(), journal_options)?,
        None => Journal::open_dir(&layout.root, journal_options)?,
    };
    let journal = journal.with_batch_io(io.clone());
    if opened.torn_bytes > 0 {
        tracing::warn!(bytes = opened.torn_bytes, head = opened.head, "journal: cut a torn tail (never acknowledged)");
    }
    let ledger = recovery::read_ledger(layout)?;
    super::tree_checks::refuse_tree_contradicting_journal(layout, io.as_ref(), &journal, ledger)?;
    super::tree_checks::set_aside_tree_leftovers(layout, io.as_ref(), ledger.max(journal.head()), durable)?;
    let from = journal.head() + 1;
    if ledger >= from {
        tracing::info!(from, to = ledger, "journal: importing events from the Opossum tree");
        let started = std::time::Instant::now();
        import_tree(layout, io.as_ref(), &journal, from, ledger)?;
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
    let journal_opened = started.elapsed();
    let naming = crate::store::recovery::store_naming_rules(layout);
    crate::store::recovery::record_naming_rules(layout, naming);
    // From the index checkpoint plus the journal after it (or the whole journal, when the checkpoint is unusable).
    let mut tracking = crate::store::tracking::Table::default();
    let (mut index, loaded) = crate::store::checkpoint::load_index(
        &layout.root,
        &journal,
        &mut tracking,
        naming.for_writing_on_this_platform(),
    )?;
    tracking.mark_through(head);
    let index_loaded = started.elapsed();
    // The index files of the tree are not this mode's business: nothing is dirty.
    index.dirty_tags.clear();
    index.dirty_types.clear();
    index.max_position = head;
    if options.mirror == crate::store::MirrorMode::Live {
        reconcile_tree(layout, io.as_ref(), &journal, &mut index, durable)?;
    }
    tracing::info!(
        head,
        journal_ms = journal_opened.as_millis() as u64,
        index_ms = (index_loaded - journal_opened).as_millis() as u64,
        tree_ms = (started.elapsed() - index_loaded).as_millis() as u64,
        "journal mode: open done"
    );
    let recovered = crate::store::recovery::Recovered {
        index,
        head,
        unwritable: None,
        index_write_failures: 0,
        index_checkpoint: loaded.checkpoint,
    };
    Ok((recovered, journal, tracking))
}

/// Imports the tree's events `from..=ledger` into the journal. A reader thread reads (through `BatchIo`, batches of
/// `READ_BATCH_FILES_DEFAULT`) and decodes the next event files while this thread re-encodes and appends the ones
/// before, so the disk's reads and the CPU's work overlap; groups of about `IMPORT_GROUP_BYTES_MAX` of event files
/// keep the `fdatasync`s few (one per group, not one per read batch).
fn import_tree(
    layout: &crate::format::Layout,
    io: &dyn crate::io::BatchIo,
    journal: &Journal,
    from: u64,
    ledger: u64,
) -> Result<(), StoreError> {
    use crate::limits::{IMPORT_GROUP_BYTES_MAX, IMPORT_READ_AHEAD_BATCHES_MAX};
    use crate::store::READ_BATCH_FILES_DEFAULT;
    let (batches, read) = std::sync::mpsc::sync_channel(IMPORT_READ_AHEAD_BATCHES_MAX);
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("opossum-import".into())
            .spawn_scoped(scope, move || {
                let mut next = from;
                while next <= ledger {
                    let last = (next + READ_BATCH_FILES_DEFAULT as u64 - 1).min(ledger);
                    let positions: Vec<u64> = (next..=last).collect();
                    let batch = crate::store::read_event_files(layout, io, &positions, ledger);
                    let failed = batch.is_err();
                    // A closed channel: the importer stopped at an error of its own.
                    if batches.send(batch).is_err() || failed {
                        return;
                    }
                    next = last + 1;
                }
            })
            .map_err(|e| StoreError::Io(Arc::new(IoError::new(IoOp::Open, layout.events.clone(), e))))?;
        let (mut events, mut bytes) = (Vec::new(), 0);
        let mut groups = 0u64;
        for batch in read {
            for e in batch? {
                // About its record's size (header, parts, padding; the tags' length prefixes aside): a group's records
                // stay near `IMPORT_GROUP_BYTES_MAX` whatever the tags weigh beside the data.
                bytes += crate::journal::format::RECORD_HEADER_BYTES
                    + crate::journal::format::RECORD_ALIGN
                    + e.event_type.len()
                    + e.data.get().len()
                    + e.metadata.get().len()
                    + e.tags.iter().map(|t| t.key.len() + t.value.len()).sum::<usize>();
                events.push(e);
                if bytes >= IMPORT_GROUP_BYTES_MAX {
                    import(journal, &events)?;
                    groups += 1;
                    if groups.is_multiple_of(10) {
                        tracing::info!(done = journal.head(), of = ledger, "journal: import progress");
                    }
                    events.clear();
                    bytes = 0;
                }
            }
        }
        if !events.is_empty() {
            import(journal, &events)?;
        }
        Ok(())
    })
}

/// Appends events read from the tree to the journal as one group, re-encoded as this library writes event files
/// (minified), so the record's data and metadata are wire-ready.
fn import(journal: &Journal, events: &[SequencedEvent]) -> Result<(), StoreError> {
    let records: Vec<NewRecord<'_>> =
        events.iter().map(|e| NewRecord::new(&e.event_type, &e.tags, e.data.get(), e.metadata.get())).collect();
    journal.append(events[0].position, &records)?;
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
