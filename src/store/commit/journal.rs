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
    trash: &crate::store::trash::Trash,
    unsynced: Option<u64>,
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
    let mut ledger = match unsynced {
        Some(durable_through) => {
            recovery::unsynced_ledger(layout, io.as_ref(), recovery::read_ledger(layout), durable_through, durable)?
        }
        None => recovery::read_ledger(layout)?,
    };
    if let Some(durable_through) = unsynced {
        // The last run wrote without syncing and did not stop cleanly (`store/unsynced.rs`): tree files beyond both
        // the journal's head and the tree's durable point are that run's (the mirror's files of journal groups the
        // crash cut, or files-mode appends), kept only when every one up to the ledger is whole.
        let end = recovery::whole_tree_end(layout, io.as_ref(), durable_through.max(journal.head()), ledger)?;
        if end < ledger {
            tracing::warn!(
                journal_head = journal.head(),
                tree_durable_through = durable_through,
                "the Opossum tree's files beyond position {end} are the unsynced run's, not all whole: setting them \
                 aside"
            );
            recovery::cut_ledger(layout, io.as_ref(), end, ledger, durable)?;
            ledger = end;
        }
    }
    super::tree_checks::refuse_tree_contradicting_journal(layout, io.as_ref(), &journal, ledger)?;
    super::tree_checks::set_aside_tree_leftovers(
        layout,
        io.as_ref(),
        ledger.max(journal.head()),
        durable,
        unsynced.is_some(),
    )?;
    let journal_opened = started.elapsed();
    let naming = crate::store::recovery::store_naming_rules(layout);
    crate::store::recovery::record_naming_rules(layout, naming);
    // From the index checkpoint plus the journal after it (or the whole journal, when the checkpoint is unusable);
    // an import below adds its events as it goes.
    let mut tracking = crate::store::tracking::Table::default();
    let (mut index, loaded) = crate::store::checkpoint::load_index(
        &layout.root,
        &journal,
        &mut tracking,
        naming.for_writing_on_this_platform(),
    )?;
    let index_loaded = started.elapsed();
    let from = journal.head() + 1;
    if ledger >= from {
        tracing::info!(from, to = ledger, "journal: importing events from the Opossum tree");
        let started = std::time::Instant::now();
        let times = import_tree(layout, io.as_ref(), &journal, &mut index, (from, ledger))?;
        tracing::info!(
            events = ledger + 1 - from,
            took_ms = started.elapsed().as_millis() as u64,
            read_ms = times.read.as_millis() as u64,
            wait_ms = times.wait.as_millis() as u64,
            decode_index_ms = times.decode.as_millis() as u64,
            append_ms = times.append.as_millis() as u64,
            groups = times.groups,
            "journal: import done"
        );
        // Just imported: the tree holds every event from the journal's old head up to its ledger, durably (.NET or
        // files mode wrote it). Only an import says so: after a crash with the mirror live, the ledger may vouch for
        // files never synced. And only when the tree was durable up to the old head: else the mark stays, and
        // `reconcile_tree` re-derives everything after it (the imported files compare equal and stay).
        // After an unsynced run (files mode under `none`) the imported files may not be durable yet: synced first.
        if journal.marks().mirror_durable >= from - 1 {
            // (Elsewhere than Linux there is no cheap sync: the mark covers them as before.)
            #[cfg(target_os = "linux")]
            if unsynced.is_some() {
                crate::store::unsynced::sync_store(layout)?;
            }
            journal.set_mirror_durable(ledger)?;
        }
    }
    let head = journal.head();
    // Imported events carry no event ids or tracking positions: nothing for `tracking` to observe.
    tracking.mark_through(head);
    let imported = started.elapsed();
    // The index files of the tree are not this mode's business: nothing is dirty.
    index.dirty_tags.clear();
    index.dirty_types.clear();
    index.max_position = head;
    let live = options.mirror == crate::store::MirrorMode::Live;
    if live {
        reconcile_tree(layout, io.as_ref(), &journal, &mut index, durable, trash)?;
    }
    if unsynced.is_some() {
        // Index files the unsynced run wrote may be older than others or hold another file's old blocks (the
        // mirror's checkpoints recycle inodes), also those of stems no event after the durable mark touches.
        let through = if live { head } else { ledger };
        recovery::rewrite_differing_index_files(layout, io.as_ref(), &mut index, through, durable, trash)?;
    }
    tracing::info!(
        head,
        journal_ms = journal_opened.as_millis() as u64,
        index_ms = (index_loaded - journal_opened).as_millis() as u64,
        import_ms = (imported - index_loaded).as_millis() as u64,
        tree_ms = (started.elapsed() - imported).as_millis() as u64,
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

/// Where an import's time went (the `journal: import done` log line).
#[derive(Debug, Default)]
struct ImportTimes {
    /// The reader thread inside `BatchIo::read_files`.
    read: std::time::Duration,
    /// The importing thread waiting for the reader (the disk, when it is the bottleneck).
    wait: std::time::Duration,
    /// Decoding event files and adding them to the index.
    decode: std::time::Duration,
    /// `Journal::append`: encoding the records, the write and the `fdatasync`.
    append: std::time::Duration,
    groups: u64,
}

/// One `read_files` call of the import's reader thread: the files of positions `first ..`, in order.
struct ReadBatch {
    first: u64,
    results: Vec<Result<Vec<u8>, IoError>>,
}

/// The events of one import group, packed: each decoded event is copied in and dropped at once (so the allocator
/// reuses its memory for the next one instead of freeing a group's worth of small blocks at the end), its tags
/// moved. What [`NewRecord`]s borrow from.
#[derive(Default)]
struct ImportGroup {
    first: u64,
    /// Every event's type, data and metadata, one after the other.
    text: String,
    tags: Vec<crate::model::Tag>,
    /// The tags' keys and values, in bytes.
    tag_bytes: usize,
    /// Per event: where its type, data and metadata end in `text`, and its tags in `tags`.
    ends: Vec<(usize, usize, usize, usize)>,
}

impl ImportGroup {
    fn push(&mut self, e: SequencedEvent) {
        if self.ends.is_empty() {
            self.first = e.position;
        }
        self.text.push_str(&e.event_type);
        let type_end = self.text.len();
        self.text.push_str(e.data.get());
        let data_end = self.text.len();
        self.text.push_str(e.metadata.get());
        self.tag_bytes += e.tags.iter().map(|t| t.key.len() + t.value.len()).sum::<usize>();
        self.tags.extend(e.tags);
        self.ends.push((type_end, data_end, self.text.len(), self.tags.len()));
    }

    /// About the bytes of the group's records (header, parts, padding; the tags' length prefixes aside), so a
    /// group stays near `IMPORT_GROUP_BYTES_MAX` whatever the tags weigh beside the data.
    fn record_bytes(&self) -> usize {
        use crate::journal::format::{RECORD_ALIGN, RECORD_HEADER_BYTES};
        self.ends.len() * (RECORD_HEADER_BYTES + RECORD_ALIGN) + self.text.len() + self.tag_bytes
    }

    /// Appends the group to the journal as one group of records (one write, one `fdatasync`) and empties it. The
    /// data and metadata are as `format::decode_event` left them: minified, so the records are wire-ready.
    fn append(&mut self, journal: &Journal) -> Result<(), StoreError> {
        let (mut text_at, mut tags_at) = (0, 0);
        let records: Vec<NewRecord<'_>> = self
            .ends
            .iter()
            .map(|&(type_end, data_end, metadata_end, tags_end)| {
                let record = NewRecord::new(
                    &self.text[text_at..type_end],
                    &self.tags[tags_at..tags_end],
                    &self.text[type_end..data_end],
                    &self.text[data_end..metadata_end],
                );
                (text_at, tags_at) = (metadata_end, tags_end);
                record
            })
            .collect();
        journal.append(self.first, &records)?;
        self.text.clear();
        self.tags.clear();
        self.tag_bytes = 0;
        self.ends.clear();
        Ok(())
    }
}

/// Imports the tree's events `from..=ledger` into the journal and adds them to `index`. A reader thread only reads:
/// back-to-back `BatchIo::read_files` calls of `IMPORT_READ_BATCH_FILES_MAX` files (the size at which the io_uring
/// backend keeps the disk's queue full: smaller calls drain it at every call's tail), at most
/// `IMPORT_READ_AHEAD_BATCHES_MAX` calls ahead; this thread decodes each file (an error names it), adds the event
/// to the index (so no second scan of the new journal builds it) and appends groups of about
/// `IMPORT_GROUP_BYTES_MAX` of records (one `fdatasync` each). An interrupted import leaves the tree as it was and a
/// journal holding a prefix of it, whole groups only: the next open imports the rest.
fn import_tree(
    layout: &crate::format::Layout,
    io: &dyn crate::io::BatchIo,
    journal: &Journal,
    index: &mut crate::store::index::Index,
    (from, ledger): (u64, u64),
) -> Result<ImportTimes, StoreError> {
    use crate::limits::{IMPORT_GROUP_BYTES_MAX, IMPORT_READ_AHEAD_BATCHES_MAX, IMPORT_READ_BATCH_FILES_MAX};
    use std::time::Instant;
    let (batches, read) = std::sync::mpsc::sync_channel::<ReadBatch>(IMPORT_READ_AHEAD_BATCHES_MAX);
    let mut times = ImportTimes::default();
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("opossum-import".into())
            .spawn_scoped(scope, move || {
                let mut reading = std::time::Duration::ZERO;
                // Reused from batch to batch: only the file names change (this thread is the import's bottleneck).
                let mut paths: Vec<std::path::PathBuf> = Vec::new();
                let mut next = from;
                while next <= ledger {
                    let last = (next + IMPORT_READ_BATCH_FILES_MAX as u64 - 1).min(ledger);
                    paths.resize_with((last + 1 - next) as usize, || layout.events.join("0"));
                    for (path, position) in paths.iter_mut().zip(next..) {
                        path.set_file_name(crate::format::event_file_name(position));
                    }
                    let started = Instant::now();
                    let results = io.read_files(&paths);
                    reading += started.elapsed();
                    // A closed channel: the importer stopped at an error.
                    if batches.send(ReadBatch { first: next, results }).is_err() {
                        break;
                    }
                    next = last + 1;
                }
                reading
            })
            .map_err(|e| StoreError::Io(Arc::new(IoError::new(IoOp::Open, layout.events.clone(), e))))?;
        let imported = (|| -> Result<(), StoreError> {
            let mut group = ImportGroup::default();
            loop {
                let waited = Instant::now();
                let Ok(batch) = read.recv() else { break };
                times.wait += waited.elapsed();
                let decoding = Instant::now();
                let appended_before = times.append;
                for (result, position) in batch.results.into_iter().zip(batch.first..) {
                    let path = || layout.event_file(position);
                    let e = crate::store::decode_event_file(result, &path, position, ledger)?;
                    index.insert(e.position, &e.event_type, &e.tags);
                    group.push(e);
                    if group.record_bytes() >= IMPORT_GROUP_BYTES_MAX {
                        let appending = Instant::now();
                        group.append(journal)?;
                        times.append += appending.elapsed();
                        times.groups += 1;
                        if times.groups.is_multiple_of(10) {
                            tracing::info!(done = journal.head(), of = ledger, "journal: import progress");
                        }
                    }
                }
                times.decode += decoding.elapsed().saturating_sub(times.append - appended_before);
            }
            if !group.ends.is_empty() {
                let appending = Instant::now();
                group.append(journal)?;
                times.append += appending.elapsed();
                times.groups += 1;
            }
            Ok(())
        })();
        // Stops the reader at its next batch when this thread failed.
        drop(read);
        times.read = reader.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        imported
    })?;
    Ok(times)
}

/// Files mode at open (`.store.lock` held), before `recovery::recover` trusts the tree: the tree must be what the
/// journal says is durable. Files mode never writes the journal, so a journal whose "mirror durable through" mark
/// reaches its head says nothing against the tree (a clean journal-mode stop, then files-mode appends beyond it:
/// neither refused nor repaired). A mark below the head says the tree after it cannot be trusted: a journal-mode run
/// that did not stop cleanly (its mirror wrote without fsyncs after the mark; a checkpoint may have left another
/// index file's old bytes in a recycled inode, event files torn or missing, a ledger claiming them) or that ran with
/// `--mirror off` (the tree lacks its events). Serving that tree would give wrong answers and torn events, and reuse
/// positions the journal holds. So the open does first what a `--commit journal --mirror live` open and clean stop
/// would: journal recovery, the tree's checks and leftovers, an import of what .NET appended meanwhile, the tree
/// re-derived after the mark (`reconcile_tree`, logged with progress), made durable with one `syncfs`, the mark
/// moved to the head (with `Durability::Fsync` whatever the store's: the mark must vouch for the tree), and the
/// journal closed. Anything it cannot repair (a tree event contradicting the journal) stops the open with the error
/// a journal-mode open gives. A tree behind a mark at the head (a tree restored from an older copy) is an error.
pub(crate) fn bring_tree_up_to_journal(
    layout: &crate::format::Layout,
    io: Arc<dyn crate::io::BatchIo>,
    options: &crate::store::StoreOptions,
    trash: &crate::store::trash::Trash,
    unsynced: Option<u64>,
) -> Result<(), StoreError> {
    use crate::store::{CommitMode, Durability, MirrorMode, StoreOptions};
    let dir = crate::journal::journal_dir(&layout.root);
    if !dir.is_dir() {
        return Ok(());
    }
    let (head, mark) = {
        let (journal, _) = Journal::open_dir(&layout.root, crate::journal::JournalOptions::default())?;
        (journal.head(), journal.marks().mirror_durable)
    };
    if mark >= head {
        if unsynced.is_some() {
            // An unsynced files-mode run may have torn the ledger or lost its writes: `recovery::recover` deals
            // with the tree beyond the journal's head.
            return Ok(());
        }
        let tree_head = crate::store::recovery::read_ledger(layout)?;
        if tree_head < head {
            return Err(StoreError::Corrupt {
                path: dir,
                reason: format!(
                    "the journal holds events up to position {head} and says the Opossum tree held them durably, but \
                     the tree's ledger ends at {tree_head}: the tree was replaced by an older copy? `opossum verify` \
                     lists the differences; `opossum export --opossum DIR` writes the tree from the journal"
                ),
            });
        }
        return Ok(());
    }
    tracing::warn!(
        durable_through = mark,
        head,
        "files mode: the journal says the Opossum tree is durable only through position {mark} of {head} (a \
         journal-mode run that did not stop cleanly, or ran with --mirror off): bringing the tree up to the journal \
         first, as a --commit journal open and clean stop would"
    );
    let started = std::time::Instant::now();
    let repair = StoreOptions {
        commit: CommitMode::Journal,
        mirror: MirrorMode::Live,
        durability: Durability::Fsync,
        journal_storage: None,
        ..options.clone()
    };
    let (_, journal, _) = open(layout, io, &repair, trash, unsynced)?;
    journal.close()?;
    let (head, mark) = (journal.head(), journal.marks().mirror_durable);
    debug_assert!(mark >= head, "reconcile_tree moved the mark to the head");
    tracing::info!(
        head,
        durable_through = mark,
        took_ms = started.elapsed().as_millis() as u64,
        "files mode: the Opossum tree is current and durable through the journal's head; opening in files mode"
    );
    Ok(())
}
