//! `--commit journal --mirror live`: the mirror thread keeps the Opossum tree (event files, index files, ledger) a
//! copy of the journal, off the commit path.
//!
//! The writer makes each group durable in the journal, publishes its head and answers; then it tells the mirror
//! ([`Mirror::published`]). The mirror thread reads the new records back through `Journal::read` (mostly the page
//! cache) and writes, without fsyncs, first their event files and then the ledger that covers them (the ledger in a
//! `BatchIo` call after theirs, so a lockless .NET reader that reads `.ledger` and then event files never finds one
//! missing or torn). Index files are written at checkpoints only: at most every [`MIRROR_CHECKPOINT_EVENTS_MAX`] events
//! or [`MIRROR_CHECKPOINT_INTERVAL_MAX`], a checkpoint through P (what the tree holds when it starts) writes the index
//! files the mirrored events touched (tag files, then type files), writes back the checkpoint's event and index files
//! with a bounded window ([`write_back`]: a bare `syncfs` queued seconds of tree writes ahead of the journal's
//! `fdatasync`), makes the whole tree durable with one `syncfs` (without `syncfs`, not on Linux, the mirror fsyncs
//! every file as it writes it instead), and only then records "mirror durable through P" in the journal's marks (with
//! `Durability::None` the checkpoints sync nothing and record nothing: only the close's last one syncs once and records
//! it, [`mark_after_checkpoint`]). A reopen after a crash re-derives the tree after P (`reconcile_tree`; a files-mode
//! open runs it first too). A checkpoint runs on a thread of its own, at most one at a time, while the mirror thread
//! goes on writing event files and ledgers past P (index files live in `Indices/`, another directory; its index files
//! take hundreds of ms under load and its writeback and `syncfs` can take seconds, which the writer would otherwise
//! spend waiting on the lag bound). It copies its lists under the index's read lock and encodes and writes them without
//! it. Ledgers and a checkpoint's index files are replaced through the store's trash (`store/trash.rs`): the files they
//! replace are freed later, not one by one under the directory's lock (~0.3 ms each on a `discard` mount), and not
//! while the store is busy writing its tree (freed inodes slow every later create on ext4 without a journal: 100,000
//! index files took 15-30 s with them freed at once, 4-6 s without); a checkpoint writes its index files into the
//! inodes earlier ones swapped out (spares, `Trash::write_files_recycling`: no inode created or freed per file), safe
//! because a reopen after a crash rewrites every index file touched after the durable mark (`reconcile_tree`). Once the
//! store will close ([`Mirror::begin_close`]: a daemon's stop) the mirror takes the fastest way, not the one that keeps
//! commits waiting least: whole batches, no writeback window before `syncfs`.
//!
//! Backpressure: the writer waits before a group commit while the tree's event files are [`MIRROR_LAG_EVENTS_MAX`]
//! events behind, or more events than the mirror writes in [`MIRROR_LAG_MAX`] at its measured rate, or while the mirror
//! has made no progress for [`MIRROR_LAG_MAX`] with work waiting ([`Mirror::wait_for_room`]), so the lag, a clean
//! stop's work and a reopen's work stay bounded. It also waits while the index files the next checkpoints must write
//! are more than they write in [`MIRROR_INDEX_BACKLOG_MAX`] at their measured rate (a bulk load with a new tag per
//! event dirties an index file per event, faster than checkpoints beside the event files write them), and such a
//! backlog makes a checkpoint due at once, so a clean stop's index files stay bounded too. Near the bound the mirror
//! writes a batch's event files in small steps ([`MIRROR_BATCH_EVENTS_PACED`]) and publishes each, so a waiting writer
//! resumes after a few ms instead of a whole large batch: the writer is paced to the mirror's rate in small steps, not
//! stopped and released in lumps (those lumps were the conditional appends' p99). The ledger is replaced once per
//! batch, after its last step (a replacement creates a file and frees one): it trails the event files by at most a
//! batch, and checkpoints and `stats` cover what it covers. A mirror write that fails is logged and counted, and stops
//! the mirror until the next open; appends go on (the journal is the record) and no longer wait for the mirror: the lag
//! is then unbounded, and the next open re-derives the tree from the last checkpoint.
//!
//! `.store.lock` is held by the store from open to close in journal mode, so whenever the tree is behind the
//! journal no .NET writer can append to it. A clean close (`Store::close`, drop) stops the writer first, then the
//! mirror brings the tree current and makes it durable (a last checkpoint) before the lock is released.

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::recovery::{self, IndexKind};
use super::{Durability, Shared, StoreError};
use crate::format::{self, Layout, Ledger};
use crate::io::{BatchIo, FileWrite, IoOp, WriteMode};
use crate::journal::Journal;
use crate::limits::{
    MIRROR_BATCH_EVENTS_MAX, MIRROR_BATCH_EVENTS_PACED, MIRROR_BATCH_INTERVAL_MIN,
    MIRROR_CHECKPOINT_CATCH_UP_PASSES_MAX, MIRROR_CHECKPOINT_CHUNK_FILES, MIRROR_CHECKPOINT_EVENTS_MAX,
    MIRROR_CHECKPOINT_INTERVAL_MAX, MIRROR_CHECKPOINT_NICE, MIRROR_CHECKPOINT_SYNCFS_FILES_MAX,
    MIRROR_CHECKPOINT_WRITEBACK_FILES_MAX, MIRROR_INDEX_BACKLOG_FILES_MAX, MIRROR_INDEX_BACKLOG_FILES_MIN,
    MIRROR_INDEX_BACKLOG_MAX, MIRROR_LAG_EVENTS_MAX, MIRROR_LAG_EVENTS_MIN, MIRROR_LAG_MAX,
    MIRROR_LAG_RECHECK_INTERVAL, MIRROR_YIELD_FILES, READ_BATCH_FILES_DEFAULT,
};

/// The mirror's progress, shared by the writer (which publishes and may wait) and the mirror thread.
pub(crate) struct Mirror {
    progress: Mutex<Progress>,
    /// The writer published, a checkpoint was asked for, or the store is closing: the mirror thread looks.
    wake: Condvar,
    /// The mirror wrote, checkpointed, failed or stopped: waiting writers and `Store::sync` look.
    advanced: Condvar,
    /// Counters for `stats`, readable without the lock.
    written: AtomicU64,
    durable: AtomicU64,
    checkpoints: AtomicU64,
    /// Group commits that waited for the mirror (lag bound).
    waits: AtomicU64,
}

struct Progress {
    /// The tree holds event files and a ledger covering them through this position (page cache): what a .NET reader
    /// sees, and what a checkpoint covers.
    written: u64,
    /// The tree holds event files through this position (page cache), `written` or up to one batch beyond it: the
    /// lag bound and the pacing count these (the ledger of a batch is replaced once, after all its event files).
    files_written: u64,
    /// When `files_written` last moved (or the mirror started): a mirror with work waiting and no progress for
    /// `MIRROR_LAG_MAX` is stalled, and the writer waits for its next step.
    advanced_at: Instant,
    /// The mirror's measured rate, events per second of batch writing (a moving average); `None` before its first
    /// batch.
    rate: Option<f64>,
    /// The lag, in events, at which the writer waits ([`over_lag_bound`]): about what the mirror writes in
    /// `MIRROR_LAG_MAX` at `rate`, within `MIRROR_LAG_EVENTS_MIN..=MIRROR_LAG_EVENTS_MAX`. It rises at once but falls
    /// by at most half of each batch written, so a slower mirror paces the writer down instead of stopping it until
    /// the lag has drained to the new bound.
    lag_limit: u64,
    /// The last checkpoint covered positions through this (durable on Linux with `Durability::Fsync`; see
    /// `sync_filesystem`).
    checkpointed: u64,
    /// The journal's "mirror durable through" mark: `checkpointed` with `Durability::Fsync`; with `Durability::None`
    /// where the last durable mark left it, until the close's checkpoint ([`mark_after_checkpoint`]).
    marked: u64,
    /// Index files the next checkpoint will write: the stems of the events mirrored since the last one began.
    index_files_dirty: u64,
    /// Index files the running checkpoint has not written yet.
    index_files_unwritten: u64,
    /// Checkpoints' measured rate, index files per second of writing them (a moving average); `None` before the
    /// first.
    index_file_rate: Option<f64>,
    /// The index backlog (`index_files_dirty + index_files_unwritten`) at which the writer waits and a checkpoint is
    /// due: what checkpoints write in `MIRROR_INDEX_BACKLOG_MAX` at `index_file_rate`, within
    /// `MIRROR_INDEX_BACKLOG_FILES_MIN..=MIRROR_INDEX_BACKLOG_FILES_MAX`.
    index_backlog_limit: u64,
    /// The writer's last published head.
    head: u64,
    /// Commits whose event files the tree lacks, oldest first: (head after the commit, when it was published). At
    /// most one entry per commit beyond `files_written`, so bounded by the lag bound plus one group.
    unwritten: VecDeque<(u64, Instant)>,
    /// `Store::sync` asks for a checkpoint through this position.
    checkpoint_wanted: u64,
    /// A checkpoint runs on its own thread (at most one at a time).
    checkpoint_running: bool,
    stopping: bool,
    /// The store closes soon ([`Mirror::begin_close`], or `stopping`): nothing waits on a commit's latency any more,
    /// so a checkpoint writes nothing back ahead of its `syncfs` and the mirror writes whole batches. Appends may
    /// still come (and are mirrored as always).
    closing: bool,
    /// A tree write failed: the mirror does nothing more until the next open, and the writer never waits for it.
    failed: bool,
}

/// What `stats` reports about the mirror.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MirrorStats {
    pub written: u64,
    pub durable: u64,
    pub checkpoints: u64,
    pub waits: u64,
}

impl Mirror {
    /// A mirror whose tree is current through `head` (open ran `reconcile_tree`), durable through `marked` (the
    /// journal's mark: `head`, unless `reconcile_tree` ran with `Durability::None`).
    pub fn new(head: u64, marked: u64) -> Mirror {
        Mirror {
            progress: Mutex::new(Progress {
                written: head,
                files_written: head,
                advanced_at: Instant::now(),
                rate: None,
                lag_limit: MIRROR_LAG_EVENTS_MAX,
                checkpointed: head,
                marked,
                index_files_dirty: 0,
                index_files_unwritten: 0,
                index_file_rate: None,
                index_backlog_limit: MIRROR_INDEX_BACKLOG_FILES_MIN,
                head,
                unwritten: VecDeque::new(),
                checkpoint_wanted: 0,
                checkpoint_running: false,
                stopping: false,
                closing: false,
                failed: false,
            }),
            wake: Condvar::new(),
            advanced: Condvar::new(),
            written: AtomicU64::new(head),
            durable: AtomicU64::new(marked),
            checkpoints: AtomicU64::new(0),
            waits: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> MirrorStats {
        MirrorStats {
            written: self.written.load(Ordering::Relaxed),
            durable: self.durable.load(Ordering::Relaxed),
            checkpoints: self.checkpoints.load(Ordering::Relaxed),
            waits: self.waits.load(Ordering::Relaxed),
        }
    }

    /// The writer, after publishing `head`: the mirror has work.
    pub fn published(&self, head: u64) {
        let mut p = self.lock();
        if p.failed || head <= p.head {
            return;
        }
        p.head = head;
        p.unwritten.push_back((head, Instant::now()));
        drop(p);
        self.wake.notify_one();
    }

    /// The writer, before a group commit: waits while the tree is at or past the lag bound (events or time, see
    /// [`over_lag_bound`]), unless the mirror failed or is stopping. Each batch the mirror writes wakes it.
    pub fn wait_for_room(&self) {
        let mut p = self.lock();
        let mut waited = false;
        while !p.failed && !p.stopping && over_lag_bound(&p) {
            waited = true;
            p = self.advanced.wait_timeout(p, MIRROR_LAG_RECHECK_INTERVAL).unwrap_or_else(|e| e.into_inner()).0;
        }
        if waited {
            self.waits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `Store::sync`: waits until a checkpoint covers `through` (or the mirror failed or stopped). Returns whether
    /// one does.
    pub fn checkpoint_through(&self, through: u64) -> bool {
        let mut p = self.lock();
        p.checkpoint_wanted = p.checkpoint_wanted.max(through);
        self.wake.notify_one();
        while !p.failed && !p.stopping && p.checkpointed < through {
            p = self.advanced.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        p.checkpointed >= through
    }

    /// The store will close soon (a daemon's stop, before the `Store::sync` that precedes its close): from now on
    /// the fastest way to bring the tree current and durable, not the one that keeps commits' latency low. A
    /// checkpoint already running skips its writeback window if it has not begun it.
    pub fn begin_close(&self) {
        self.lock().closing = true;
        self.wake.notify_all();
    }

    /// Close: the writer has stopped; the mirror thread brings the tree current and durable, then exits.
    pub fn stop(&self) {
        let mut p = self.lock();
        p.stopping = true;
        p.closing = true;
        drop(p);
        self.wake.notify_all();
        self.advanced.notify_all();
    }

    fn fail(&self, shared: &Shared, what: &str, e: &StoreError) {
        tracing::error!("{what} failed, the mirror stops until the next open (which re-derives the tree): {e}");
        shared.mirror_failed.store(true, Ordering::Relaxed);
        let mut p = self.lock();
        p.failed = true;
        p.unwritten.clear();
        drop(p);
        self.advanced.notify_all();
    }
}

/// Writes `files` through `io` in calls of at most `slice` files, calling `between` after each call but the last:
/// the mirror thread's points to let a waiting thread have its CPU ([`MIRROR_YIELD_FILES`]). Stops at the first
/// failed call.
fn write_in_slices(
    io: &dyn BatchIo,
    files: &[FileWrite<'_>],
    durable: bool,
    slice: usize,
    mut between: impl FnMut(),
) -> Result<(), crate::io::IoError> {
    for (n, part) in files.chunks(slice.max(1)).enumerate() {
        if n > 0 {
            between();
        }
        io.write_files(part, durable)?;
    }
    Ok(())
}

/// Whether the writer must wait: the tree's event files are `Progress::lag_limit` events behind, or the mirror is
/// stalled (the oldest commit it lacks and its last progress both `MIRROR_LAG_MAX` ago), or the index files the
/// checkpoints have yet to write reached `Progress::index_backlog_limit` ([`over_index_backlog`]). A stall ends with
/// the mirror's next step, not when the whole lag has drained (the age of the oldest commit alone would hold the
/// writer until then). The ledger does not count: it trails the event files by at most a batch, and a clean stop's
/// or a reopen's work is the event files and the index files.
fn over_lag_bound(p: &Progress) -> bool {
    p.head - p.files_written >= p.lag_limit
        || over_index_backlog(p)
        || (p.unwritten.front().is_some_and(|&(_, at)| at.elapsed() >= MIRROR_LAG_MAX)
            && p.advanced_at.elapsed() >= MIRROR_LAG_MAX)
}

/// The index files the checkpoints have yet to write (those of the running one not written yet, and the next one's)
/// reached the bound: the writer waits, and a checkpoint is due at once if none runs.
fn over_index_backlog(p: &Progress) -> bool {
    p.index_files_dirty + p.index_files_unwritten >= p.index_backlog_limit
}

/// A checkpoint wrote `files` index files in `took`: their rate moves a quarter of the way, and the index backlog
/// bound follows it (what checkpoints write in `MIRROR_INDEX_BACKLOG_MAX`).
fn index_files_written(p: &mut Progress, files: u64, took: std::time::Duration) {
    if files == 0 {
        return;
    }
    let rate = update_rate(p.index_file_rate, files, took);
    p.index_file_rate = Some(rate);
    p.index_backlog_limit = ((rate * MIRROR_INDEX_BACKLOG_MAX.as_secs_f64()) as u64)
        .clamp(MIRROR_INDEX_BACKLOG_FILES_MIN, MIRROR_INDEX_BACKLOG_FILES_MAX);
}

/// After the mirror wrote a step of `events` in `took`: its rate, and the lag bound that follows from it, what the
/// mirror writes in `MIRROR_LAG_MAX` (so a clean stop catches up in about that long), within
/// `MIRROR_LAG_EVENTS_MIN..=MIRROR_LAG_EVENTS_MAX`, falling by at most half the step.
fn batch_written(p: &mut Progress, events: u64, took: std::time::Duration) {
    let rate = update_rate(p.rate, events, took);
    p.rate = Some(rate);
    let target = ((rate * MIRROR_LAG_MAX.as_secs_f64()) as u64).clamp(MIRROR_LAG_EVENTS_MIN, MIRROR_LAG_EVENTS_MAX);
    p.lag_limit = target.max(p.lag_limit.saturating_sub(events.div_ceil(2)));
}

/// How many event files the mirror writes before it publishes them (a step of its batch): few within a large batch
/// of the lag bound (the writer waits or soon will, and resumes when a step is published), a whole batch otherwise
/// (a close, a mirror that keeps up). Either way the batch's ledger is replaced once, after its last step: a ledger
/// per paced step (a temporary file created, renamed over the old one, whose blocks are freed) cost bulk loads a
/// file creation and a discard per `MIRROR_BATCH_EVENTS_PACED` events.
fn step_events(p: &Progress) -> u64 {
    match !p.closing && p.head - p.files_written + MIRROR_BATCH_EVENTS_MAX as u64 >= p.lag_limit {
        true => MIRROR_BATCH_EVENTS_PACED as u64,
        false => MIRROR_BATCH_EVENTS_MAX as u64,
    }
}

/// The mirror wrote the event files through `to` (a step), and with `ledger` the ledger covering them: the writer's
/// lag shrinks (and it may resume), the rate and the lag bound follow the step's `events` in `took`.
fn step_written(p: &mut Progress, to: u64, ledger: bool, events: u64, took: std::time::Duration) {
    p.files_written = to;
    if ledger {
        p.written = to;
    }
    p.advanced_at = Instant::now();
    batch_written(p, events, took);
    while p.unwritten.front().is_some_and(|&(h, _)| h <= to) {
        p.unwritten.pop_front();
    }
}

/// One batch of `events` written in `took`: the moving average of the mirror's rate moves a quarter of the way.
fn update_rate(rate: Option<f64>, events: u64, took: std::time::Duration) -> f64 {
    let sample = events as f64 / took.as_secs_f64().max(1e-6);
    match rate {
        None => sample,
        Some(rate) => rate + (sample - rate) / 4.0,
    }
}

/// Starts the mirror thread of a store in journal mode with the mirror live.
pub(crate) fn spawn(shared: Arc<Shared>) -> Result<std::thread::JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name("opossum-mirror".into())
        .spawn(move || MirrorThread::new(shared).run())
        .map_err(|e| StoreError::io(IoOp::Spawn, std::path::Path::new("mirror thread"), e))
}

struct MirrorThread {
    shared: Arc<Shared>,
    /// Index file stems the events mirrored since the last checkpoint touched.
    dirty_tags: BTreeSet<String>,
    dirty_types: BTreeSet<String>,
    last_checkpoint: Instant,
    /// When the last tree write batch started (`MIRROR_BATCH_INTERVAL_MIN`).
    last_batch: Instant,
    /// The thread of the last checkpoint started. A checkpoint (index files, then `syncfs`) runs beside the event
    /// files so the mirror keeps writing them: its index files take hundreds of ms under load and a `syncfs` on a
    /// busy filesystem seconds, and the writer would wait on the lag bound meanwhile. `Progress::checkpoint_running`
    /// says whether it still runs.
    checkpointer: Option<std::thread::JoinHandle<()>>,
    /// Without `syncfs` (not Linux) and with `Durability::Fsync`: every tree write fsyncs its files, at the mirror's
    /// pace, so a checkpoint has nothing left to make durable.
    per_file: bool,
}

impl MirrorThread {
    fn new(shared: Arc<Shared>) -> MirrorThread {
        MirrorThread {
            dirty_tags: BTreeSet::new(),
            dirty_types: BTreeSet::new(),
            last_checkpoint: Instant::now(),
            last_batch: Instant::now(),
            checkpointer: None,
            per_file: shared.options.durability == Durability::Fsync && !cfg!(target_os = "linux"),
            shared,
        }
    }

    fn mirror(&self) -> &Mirror {
        self.shared.mirror.as_ref().expect("the mirror thread runs only with a mirror")
    }

    fn journal(&self) -> &Journal {
        self.shared.journal.as_deref().expect("the mirror runs in journal mode")
    }

    fn run(mut self) {
        loop {
            // What to do next, decided under the lock; the work happens without it.
            // `to`: the last position of the next batch.
            let (written, to, checkpoint) = {
                let mirror = self.mirror();
                let mut p = mirror.lock();
                loop {
                    if p.failed {
                        drop(p);
                        return self.join_checkpointer();
                    }
                    let checkpoint = self.checkpoint_due(&p);
                    if p.stopping && !checkpoint && p.written >= p.head && !p.checkpoint_running {
                        drop(p);
                        return self.join_checkpointer();
                    }
                    // No pause with a whole batch waiting: it would only cap the mirror's rate.
                    let pause = match p.closing
                        || p.checkpoint_wanted > p.checkpointed
                        || p.head - p.files_written >= step_events(&p)
                    {
                        true => std::time::Duration::ZERO,
                        false => MIRROR_BATCH_INTERVAL_MIN.saturating_sub(self.last_batch.elapsed()),
                    };
                    if (p.written < p.head && pause.is_zero()) || checkpoint {
                        debug_assert_eq!(p.files_written, p.written, "a batch ends with its ledger");
                        break (p.written, p.head.min(p.written + MIRROR_BATCH_EVENTS_MAX as u64), checkpoint);
                    }
                    let wait = match p.written > p.checkpointed {
                        true => MIRROR_CHECKPOINT_INTERVAL_MAX.saturating_sub(self.last_checkpoint.elapsed()),
                        false => MIRROR_CHECKPOINT_INTERVAL_MAX,
                    };
                    let wait = match p.written < p.head {
                        true => pause.min(wait),
                        false => wait,
                    };
                    // A checkpoint thread that finishes wakes us (under the lock, so never lost).
                    p = mirror.wake.wait_timeout(p, wait).unwrap_or_else(|e| e.into_inner()).0;
                }
            };
            if checkpoint {
                if let Err(e) = self.start_checkpoint(written) {
                    self.mirror().fail(&self.shared, "a mirror checkpoint", &e);
                    return self.join_checkpointer();
                }
                continue;
            }
            if written >= to {
                continue;
            }
            self.last_batch = Instant::now();
            if let Err(e) = self.write_batch(written + 1, to) {
                let what = format!("mirroring positions {}..={to} to the Opossum tree", written + 1);
                self.mirror().fail(&self.shared, &what, &e);
                return self.join_checkpointer();
            }
        }
    }

    /// Publishes a step of the batch: event files through `to`, and with `ledger` the ledger covering them, `events`
    /// written since the last step started at `started`.
    fn publish_step(&self, to: u64, ledger: bool, events: u64, started: Instant) {
        let mirror = self.mirror();
        let mut p = mirror.lock();
        step_written(&mut p, to, ledger, events, started.elapsed());
        p.index_files_dirty = (self.dirty_tags.len() + self.dirty_types.len()) as u64;
        if ledger {
            mirror.written.store(to, Ordering::Relaxed);
        }
        drop(p);
        mirror.advanced.notify_all();
    }

    /// Waits for the last checkpoint's thread (the mirror stops or failed: it has finished or is finishing).
    fn join_checkpointer(&mut self) {
        if let Some(thread) = self.checkpointer.take() {
            if thread.join().is_err() {
                tracing::error!("the mirror's checkpoint thread panicked");
            }
        }
    }

    /// Whether a checkpoint is due now: none running, something mirrored since the last one, and enough events or
    /// time since it, or enough index files to write (the writer waits for them), or `Store::sync` asking for what
    /// is written, or a close with the tree current; or a close with the tree current and checkpointed but not
    /// marked durable (`Durability::None`: only the close's checkpoint records the mark).
    fn checkpoint_due(&self, p: &Progress) -> bool {
        let closing_unmarked = p.stopping
            && p.written >= p.head
            && p.marked < p.written
            && mark_after_checkpoint(self.shared.options.durability, true);
        !p.checkpoint_running
            && (closing_unmarked
                || p.written > p.checkpointed
                    && (p.written - p.checkpointed >= MIRROR_CHECKPOINT_EVENTS_MAX
                        || over_index_backlog(p)
                        || self.last_checkpoint.elapsed() >= MIRROR_CHECKPOINT_INTERVAL_MAX
                        || (p.checkpoint_wanted > p.checkpointed && p.written >= p.checkpoint_wanted.min(p.head))
                        || (p.stopping && p.written >= p.head)))
    }

    /// Writes the event files of positions `from..=to` from their journal records in steps ([`step_events`]), each
    /// published so a writer waiting on the lag bound resumes, then the ledger covering them all, published with the
    /// last step.
    fn write_batch(&mut self, from: u64, to: u64) -> Result<(), StoreError> {
        let layout = &self.shared.layout;
        let io = self.shared.io.as_ref();
        let positions: Vec<u64> = (from..=to).collect();
        let batch = self.journal().read(&positions)?;
        let paths: Vec<PathBuf> = positions.iter().map(|&p| layout.event_file(p)).collect();
        let files = batch.event_files();
        // The store's naming rules, as the index files them (a store keeps the rules it was created with).
        let naming = self.shared.index.read().unwrap_or_else(|e| e.into_inner()).naming;
        for v in batch.iter() {
            self.dirty_types.insert(naming.event_type_stem(v.event_type));
            for (key, value) in v.tags() {
                self.dirty_tags.insert(naming.event_tag_stem(&crate::model::Tag::new(key, value)));
            }
        }
        let mut step_started = self.last_batch;
        let mut next = from;
        loop {
            let (step, closing) = {
                let p = self.mirror().lock();
                (step_events(&p), p.closing)
            };
            let last = to.min(next + step - 1);
            let range = (next - from) as usize..=(last - from) as usize;
            let writes = |mode| -> Vec<FileWrite<'_>> {
                range.clone().map(|i| FileWrite { path: &paths[i], bytes: files.get(i), mode }).collect()
            };
            // Between slices the mirror offers its CPU to whoever waits for it (`MIRROR_YIELD_FILES`), unless the
            // store is closing and the tree's catch-up is all that matters.
            let make_way = || {
                if !closing {
                    std::thread::yield_now();
                }
            };
            let created =
                write_in_slices(io, &writes(WriteMode::CreateNew), self.per_file, MIRROR_YIELD_FILES, make_way);
            if let Err(e) = created {
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(e.into());
                }
                // Files beyond the tree's ledger left by a crashed tree writer (never covered, so never events)
                // further out than the open looked (`set_aside_tree_leftovers`): set aside, never deleted (this
                // step's own files among them are written again), then the journal's events created.
                let strays: Vec<PathBuf> = range.clone().map(|i| paths[i].clone()).filter(|p| p.exists()).collect();
                recovery::quarantine(layout, &strays, false)?;
                self.shared.count_quarantine();
                io.write_files(&writes(WriteMode::CreateNew), self.per_file)?;
            }
            self.shared.counters.write_batches.fetch_add(1, Ordering::Relaxed);
            if last == to {
                break;
            }
            self.publish_step(last, false, last + 1 - next, step_started);
            step_started = Instant::now();
            next = last + 1;
        }
        // After the event files it covers, in a call of its own: the ledger's rename comes after their writes.
        let ledger = Ledger { last_sequence_position: to, event_count: to }.encode();
        let ledger_path = layout.ledger();
        let ledger_write = [FileWrite { path: &ledger_path, bytes: &ledger, mode: WriteMode::Commit }];
        self.shared.trash.write_files(io, &ledger_write, self.per_file)?;
        self.shared.counters.write_batches.fetch_add(1, Ordering::Relaxed);
        self.publish_step(to, true, to + 1 - next, step_started);
        Ok(())
    }

    /// Starts a checkpoint through `through` (every position the tree holds) on a thread of its own: the index files
    /// of the events mirrored since the last one, the tree made durable, and "mirror durable through `through`"
    /// recorded in the journal ([`checkpoint`]). The mirror goes on writing event files meanwhile.
    fn start_checkpoint(&mut self, through: u64) -> Result<(), StoreError> {
        self.join_checkpointer();
        let stems = (std::mem::take(&mut self.dirty_tags), std::mem::take(&mut self.dirty_types));
        // Journal mode never uses the index's own dirty marks (the writer's inserts set them): keep them from
        // growing, taking them under the write lock (a swap) and dropping them after it.
        let unused_marks = {
            let mut index = self.shared.index.write().unwrap_or_else(|e| e.into_inner());
            (std::mem::take(&mut index.dirty_tags), std::mem::take(&mut index.dirty_types))
        };
        drop(unused_marks);
        self.last_checkpoint = Instant::now();
        // A closing store's checkpoints keep no commit waiting but a stop: they run at the default priority (a
        // thread cannot raise its own back without privilege, so each checkpoint's thread decides at its start).
        let background = {
            let mut p = self.mirror().lock();
            p.checkpoint_running = true;
            p.index_files_dirty = 0;
            p.index_files_unwritten = (stems.0.len() + stems.1.len()) as u64;
            !p.closing
        };
        let shared = self.shared.clone();
        let per_file = self.per_file;
        let started = std::thread::Builder::new().name("opossum-mirror-checkpoint".into()).spawn(move || {
            if background {
                lower_checkpoint_thread();
            }
            let mirror = shared.mirror.as_ref().expect("the mirror checkpoints only with a mirror");
            match checkpoint(&shared, &stems.0, &stems.1, through, per_file) {
                Ok(marked) => {
                    let mut p = mirror.lock();
                    p.checkpoint_running = false;
                    p.index_files_unwritten = 0;
                    p.checkpointed = through;
                    if marked {
                        p.marked = through;
                        mirror.durable.store(through, Ordering::Relaxed);
                    }
                    mirror.checkpoints.fetch_add(1, Ordering::Relaxed);
                    drop(p);
                    tracing::debug!(through, marked, "mirror checkpoint: done (marked: recorded durable)");
                    super::checkpoint::release_freed_memory();
                }
                Err(e) => {
                    let mut p = mirror.lock();
                    p.checkpoint_running = false;
                    p.index_files_unwritten = 0;
                    drop(p);
                    mirror.fail(&shared, "a mirror checkpoint", &e);
                }
            }
            mirror.wake.notify_all();
            mirror.advanced.notify_all();
        });
        match started {
            Ok(thread) => {
                self.checkpointer = Some(thread);
                Ok(())
            }
            Err(e) => {
                let mut p = self.mirror().lock();
                p.checkpoint_running = false;
                p.index_files_unwritten = 0;
                drop(p);
                Err(StoreError::io(IoOp::Spawn, std::path::Path::new("mirror checkpoint thread"), e))
            }
        }
    }
}

/// The priority a mirror checkpoint's thread runs at unless the store will close: its work only moves the durable mark,
/// so the commit path goes first. CPU: `MIRROR_CHECKPOINT_NICE`. I/O: the idle class, so the scheduler (`mq-deadline`,
/// `bfq`) holds the writeback window's requests while a journal write is queued (a synthetic mirror beside a 600-byte
/// `fdatasync` loop: the `fdatasync`'s p99 during a 32-file window 0.3 ms with the idle class, 1.6-2.3 ms without).
/// Idle requests still go after the scheduler's aging (10 s for `mq-deadline`), and a closing store's checkpoint leaves
/// the window at once. Not the mirror thread: its creates read directory and bitmap blocks, and appends wait for it.
pub(crate) fn lower_checkpoint_thread() -> crate::io::priority::Applied {
    use crate::io::priority::{lower_current_thread, Background, IoPriority};
    lower_current_thread(Background { nice: MIRROR_CHECKPOINT_NICE, io: IoPriority::Idle })
}

/// A mirror checkpoint through `through`, on its own thread: the index files of `tags` and `types` (the stems of
/// the events mirrored since the last checkpoint, lists clipped to `through`), tag files before type files (type
/// files are the coverage record a files-mode open trusts); then the tree made durable (one `syncfs`: the event
/// files and ledgers through `through` were written before this started) and "mirror durable through `through`"
/// recorded in the journal, when [`mark_after_checkpoint`] says so. Returns whether it recorded the mark.
fn checkpoint(
    shared: &Shared,
    tags: &BTreeSet<String>,
    types: &BTreeSet<String>,
    through: u64,
    per_file: bool,
) -> Result<bool, StoreError> {
    let started = Instant::now();
    let layout = &shared.layout;
    // The event files this checkpoint makes durable: those after the last checkpoint (one runs at a time).
    let from = shared.mirror.as_ref().expect("the mirror checkpoints only with a mirror").lock().checkpointed + 1;
    // Copy the lists under the index's read lock (a memcpy), encode and write without it.
    let (tag_lists, type_lists) = {
        let index = shared.index.read().unwrap_or_else(|e| e.into_inner());
        let copy = |stems, kind| -> Vec<(PathBuf, Vec<u64>)> {
            recovery::clipped_lists(layout, &index, stems, kind, through)
                .map(|(path, list)| (path, list.to_vec()))
                .collect()
        };
        (copy(tags, IndexKind::Tag), copy(types, IndexKind::Type))
    };
    let encode = |lists: Vec<(PathBuf, Vec<u64>)>| -> Vec<(PathBuf, Vec<u8>)> {
        lists.into_iter().map(|(path, positions)| (path, format::encode_index(&positions))).collect()
    };
    let mirror = shared.mirror.as_ref().expect("the mirror checkpoints only with a mirror");
    let mut index_paths = Vec::new();
    let mut written = 0;
    for files in [encode(tag_lists), encode(type_lists)] {
        written += files.len();
        // Through the trash: a rename over each old file would free it (and discard its block) under the
        // directory's lock, and the inodes it frees slow every later create on ext4 without a journal. In chunks,
        // so each pins a trash generation briefly. Without fsyncs, into the spare inodes earlier checkpoints' swaps
        // left (`Trash::write_files_recycling`): no inode created or freed per file. That a crash may then leave
        // another file's old bytes at an index file's name is safe here: the checkpoint's files are those of the
        // events after the journal's mirror-durable mark, and `reconcile_tree` rewrites the index files of every
        // event after that mark at the next open, before anything reads them.
        for chunk in files.chunks(MIRROR_CHECKPOINT_CHUNK_FILES) {
            let writes = recovery::replace_all(chunk);
            if per_file {
                shared.trash.write_files(shared.io.as_ref(), &writes, true)?;
            } else {
                shared.trash.write_files_recycling(shared.io.as_ref(), &writes)?;
            }
            shared.counters.write_batches.fetch_add(1, Ordering::Relaxed);
            // A writer waiting on the index backlog resumes as the chunks go.
            let mut p = mirror.lock();
            p.index_files_unwritten = p.index_files_unwritten.saturating_sub(chunk.len() as u64);
            drop(p);
            mirror.advanced.notify_all();
        }
        index_paths.extend(files.into_iter().map(|(path, _)| path));
    }
    tracing::debug!(
        through,
        files = written,
        took_us = super::elapsed_us(started),
        "mirror checkpoint: index files written"
    );
    index_files_written(&mut mirror.lock(), written as u64, started.elapsed());
    let (closing, stopping) = {
        let p = mirror.lock();
        (p.closing, p.stopping)
    };
    if !mark_after_checkpoint(shared.options.durability, stopping) {
        return Ok(false);
    }
    if !per_file {
        // A closing store's checkpoint keeps no commit waiting (the writer has stopped, or the daemon is stopping):
        // a bare `syncfs` is faster.
        if !closing {
            // Stops early once the store will close: the rest goes with the bare `syncfs`, sooner.
            let closing = || mirror.lock().closing;
            let events = (from..=through).map(|position| layout.event_file(position));
            write_back(events.chain(index_paths), &closing)?;
            // The event files the mirror wrote meanwhile, so the `syncfs` finds little left to write in one burst.
            let mut written_back = through;
            for _ in 0..MIRROR_CHECKPOINT_CATCH_UP_PASSES_MAX {
                let files_written = mirror.lock().files_written;
                if files_written <= written_back + MIRROR_CHECKPOINT_SYNCFS_FILES_MAX || closing() {
                    break;
                }
                write_back((written_back + 1..=files_written).map(|position| layout.event_file(position)), &closing)?;
                written_back = files_written;
            }
            tracing::debug!(
                through,
                written_back,
                took_us = super::elapsed_us(started),
                "mirror checkpoint: files written back"
            );
        }
        sync_filesystem(&layout.root)?;
        tracing::debug!(through, took_us = super::elapsed_us(started), "mirror checkpoint: synced");
    }
    shared.journal.as_deref().expect("the mirror runs in journal mode").set_mirror_durable(through)?;
    Ok(true)
}

/// Whether a checkpoint makes the tree durable and records "mirror durable through P" (`stopping`: the store's
/// close, after its writer stopped). The mark is what a reopen after a machine crash trusts: the tree through it is
/// never re-checked, and the checkpoints after it write index files into recycled inodes that may hold another
/// file's old bytes until a sync. So it is recorded only after a sync: always with `Durability::Fsync`; with
/// `Durability::None` only by a stopping store's last checkpoint (one `syncfs`; Linux only, where the mirror has
/// one: elsewhere never, and every open re-checks the tree from the last durable mark), so a crash under `none`
/// loses acknowledged events and makes the next open re-derive the tree since the last clean stop, but never leaves a
/// mark over a tree that is not there.
fn mark_after_checkpoint(durability: Durability, stopping: bool) -> bool {
    match durability {
        Durability::Fsync => true,
        Durability::None => stopping && cfg!(target_os = "linux"),
    }
}

/// Writes back the dirty pages of `paths` (data only, no device flush) and waits for them, with at most
/// [`MIRROR_CHECKPOINT_WRITEBACK_FILES_MAX`] files' writeback in flight, so that the `syncfs` after it finds little
/// left (inodes, directories). The point is the bound: a `syncfs` alone queues every dirty page of the checkpoint at
/// once, and a journal `fdatasync` issued meanwhile waits behind all of them (measured: a 10,000-file `syncfs` held
/// a concurrent 512-byte `fdatasync` at 2.5-4 ms p50 against 0.1 ms behind a 64-file window). Durability is still
/// the `syncfs`'s: this only paces the writes ahead of it. Elsewhere than Linux the mirror fsyncs per file and this
/// is never called.
///
/// `stop` is asked every window's worth of files: once it says so, the files in flight are waited for and the rest
/// are left to the `syncfs` (a closing store's, which writes them fastest).
fn write_back(paths: impl Iterator<Item = PathBuf>, stop: &dyn Fn() -> bool) -> Result<(), StoreError> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        /// `sync_file_range(2)` over the whole file: start its writeback, or with `wait` wait for what is in
        /// flight, start the rest and wait for that too.
        fn sync_range(file: &std::fs::File, path: &std::path::Path, wait: bool) -> Result<(), StoreError> {
            let flags = match wait {
                true => {
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER
                }
                false => libc::SYNC_FILE_RANGE_WRITE,
            };
            // SAFETY: `file` is an open descriptor for the duration of the call; offset 0 and length 0 mean the
            // whole file; the call touches no memory of ours.
            match unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) } {
                0 => Ok(()),
                _ => Err(StoreError::io(IoOp::Fsync, path, std::io::Error::last_os_error())),
            }
        }
        let mut in_flight: VecDeque<(PathBuf, std::fs::File)> =
            VecDeque::with_capacity(MIRROR_CHECKPOINT_WRITEBACK_FILES_MAX);
        // Each file opened by its name relative to its directory, whose descriptor is kept while the files that
        // follow are in the same one (a checkpoint's event files, then its index files, directory by directory):
        // the kernel walks one path component per file, not the store's whole path.
        let mut dir: Option<(PathBuf, std::os::fd::OwnedFd)> = None;
        for (i, path) in paths.enumerate() {
            if i % MIRROR_CHECKPOINT_WRITEBACK_FILES_MAX == 0 && i > 0 && stop() {
                break;
            }
            if in_flight.len() == MIRROR_CHECKPOINT_WRITEBACK_FILES_MAX {
                let (oldest, file) = in_flight.pop_front().expect("the window is full");
                sync_range(&file, &oldest, true)?;
            }
            let file = open_in_dir(&mut dir, &path).map_err(|e| StoreError::io(IoOp::Open, &path, e))?;
            sync_range(&file, &path, false)?;
            in_flight.push_back((path, file));
        }
        for (path, file) in in_flight {
            sync_range(&file, &path, true)?;
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (paths, stop, MIRROR_CHECKPOINT_WRITEBACK_FILES_MAX);
        unreachable!("the mirror fsyncs per file where there is no syncfs")
    }
}

/// Opens `path` read-only by its name relative to `dir`'s descriptor, after opening its parent directory as `dir`
/// unless `dir` is that directory already; by its whole path where the directory cannot be opened (the open then
/// reports what is wrong).
#[cfg(target_os = "linux")]
fn open_in_dir(
    dir: &mut Option<(PathBuf, std::os::fd::OwnedFd)>,
    path: &std::path::Path,
) -> std::io::Result<std::fs::File> {
    use nix::fcntl::OFlag;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else { return std::fs::File::open(path) };
    if dir.as_ref().is_none_or(|(open, _)| open.as_os_str() != parent.as_os_str()) {
        *dir = None;
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        if let Ok(fd) = nix::fcntl::open(parent, flags, nix::sys::stat::Mode::empty()) {
            // SAFETY: `open` returned a new descriptor that nothing else owns.
            *dir = Some((parent.to_path_buf(), unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let Some((_, fd)) = dir.as_ref() else { return std::fs::File::open(path) };
    let fd = nix::fcntl::openat(
        Some(fd.as_raw_fd()),
        name,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: `openat` returned a new descriptor that nothing else owns.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Makes every dirty page of the filesystem holding `root` durable: `syncfs(2)` on Linux. Elsewhere the mirror
/// fsyncs each file it writes instead (`MirrorThread::per_file`), and this is never called.
fn sync_filesystem(root: &std::path::Path) -> Result<(), StoreError> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let dir = std::fs::File::open(root).map_err(|e| StoreError::io(IoOp::Open, root, e))?;
        nix::unistd::syncfs(dir.as_raw_fd()).map_err(|e| StoreError::io(IoOp::Fsync, root, e.into()))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = root;
        unreachable!("the mirror fsyncs per file where there is no syncfs")
    }
}

/// Journal mode, mirror live, at open: brings the tree up to the journal. The event file of every position after
/// the mirror's last durable checkpoint is read and compared with its journal record: a missing one is created, a
/// torn or different one replaced (through the trash), an equal one left alone (a killed process leaves its
/// writes whole in the page cache, and replacing 10,000 of them held an open after SIGKILL at 2-4 s here). Then the
/// index files those events touch and the ledger are written; then the tree is made durable (one `syncfs`) and the
/// checkpoint recorded.
pub(crate) fn reconcile_tree(
    layout: &Layout,
    io: &dyn BatchIo,
    journal: &Journal,
    index: &mut crate::store::index::Index,
    durable: bool,
    trash: &super::trash::Trash,
) -> Result<(), StoreError> {
    let head = journal.head();
    let from = journal.marks().mirror_durable + 1;
    if from > head {
        return Ok(());
    }
    let started = Instant::now();
    tracing::info!(from, to = head, "mirror: bringing the Opossum tree up to the journal");
    // Without fsyncs per file where one `syncfs` makes them all durable at the end.
    let per_file = durable && !cfg!(target_os = "linux");
    let mut next = from;
    while next <= head {
        let last = (next + READ_BATCH_FILES_DEFAULT as u64 - 1).min(head);
        let positions: Vec<u64> = (next..=last).collect();
        let batch = journal.read(&positions)?;
        let paths: Vec<PathBuf> = positions.iter().map(|&p| layout.event_file(p)).collect();
        let files = batch.event_files();
        let (mut missing, mut different) = (Vec::new(), Vec::new());
        for ((found, bytes), path) in io.read_files(&paths).into_iter().zip(files.iter()).zip(&paths) {
            match found {
                Ok(found) if found == bytes && !per_file => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    missing.push(FileWrite { path, bytes, mode: WriteMode::CreateNew })
                }
                _ => different.push(FileWrite { path, bytes, mode: WriteMode::Replace }),
            }
        }
        // An equal file written before the crash may not be durable yet: the `syncfs` below covers it. Without
        // `syncfs` (`per_file`: each file fsynced as it is written) every file is written again, as it was.
        if !missing.is_empty() {
            io.write_files(&missing, per_file)?;
        }
        if !different.is_empty() {
            trash.write_files(io, &different, per_file)?;
        }
        for v in batch.iter() {
            index.dirty_types.insert(index.naming.event_type_stem(v.event_type));
            for (key, value) in v.tags() {
                index.dirty_tags.insert(index.naming.event_tag_stem(&crate::model::Tag::new(key, value)));
            }
        }
        next = last + 1;
        // A long one (a tree far behind: the mirror was off) says how far it is.
        if next <= head && ((next - from) / READ_BATCH_FILES_DEFAULT as u64).is_multiple_of(64) {
            tracing::info!(done = last, of = head, "mirror: bringing the Opossum tree up to the journal: progress");
        }
    }
    let lock = std::sync::RwLock::new(std::mem::take(index));
    recovery::flush_index_files(layout, io, &lock, per_file, Some(trash))?;
    *index = lock.into_inner().unwrap_or_else(|e| e.into_inner());
    let ledger = Ledger { last_sequence_position: head, event_count: head }.encode();
    let ledger_path = layout.ledger();
    io.write_files(&[FileWrite { path: &ledger_path, bytes: &ledger, mode: WriteMode::Commit }], per_file)?;
    // The mark only after a sync (`mark_after_checkpoint`): with `Durability::None` it stays, and the store's clean
    // close records it.
    if durable {
        if !per_file {
            sync_filesystem(&layout.root)?;
        }
        journal.set_mirror_durable(head)?;
    }
    tracing::info!(events = head + 1 - from, took_ms = started.elapsed().as_millis() as u64, "mirror: tree current");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Progress of a mirror `head - written` events behind, whose commits since `written` were published `age` ago
    /// and which last advanced `age` ago.
    fn behind(head: u64, written: u64, age: Duration) -> Progress {
        let then = Instant::now().checked_sub(age).expect("the clock runs longer than the test's ages");
        let mut p = Mirror::new(written, written).progress.into_inner().unwrap();
        assert_eq!(p.files_written, written);
        p.head = head;
        p.advanced_at = then;
        p.unwritten = (written + 1..=head).step_by(MIRROR_BATCH_EVENTS_PACED).map(|h| (h, then)).collect();
        p.unwritten.push_back((head, then));
        p
    }

    /// The mirror wrote `events` more event files in `took`, the last step of a batch (with its ledger), as
    /// `MirrorThread::write_batch` records it.
    fn write(p: &mut Progress, events: u64, took: Duration) {
        let to = p.files_written + events;
        step_written(p, to, true, events, took);
    }

    #[test]
    fn at_the_bound_the_mirror_writes_a_small_batch_and_the_waiting_writer_resumes_after_it() {
        let mut p = behind(MIRROR_LAG_EVENTS_MAX, 0, Duration::ZERO);
        assert!(over_lag_bound(&p));
        // The writer waits for one small step, not a large batch (tens of ms at the mirror's rate).
        let step = step_events(&p);
        assert!(step <= MIRROR_BATCH_EVENTS_PACED as u64 && step < MIRROR_BATCH_EVENTS_MAX as u64);
        write(&mut p, step, Duration::from_millis(2));
        assert!(!over_lag_bound(&p));
        // Far from the bound, and when closing, the mirror writes a batch in one step.
        let mut far = behind(MIRROR_LAG_EVENTS_MAX / 2, 0, Duration::ZERO);
        assert_eq!(step_events(&far), MIRROR_BATCH_EVENTS_MAX as u64);
        p.closing = true;
        assert_eq!(step_events(&p), MIRROR_BATCH_EVENTS_MAX as u64);
        far.closing = true;
        assert_eq!(step_events(&far), MIRROR_BATCH_EVENTS_MAX as u64);
    }

    #[test]
    fn at_the_bound_a_step_of_event_files_releases_the_writer_and_the_ledger_moves_once_per_batch() {
        let mut p = behind(MIRROR_LAG_EVENTS_MAX, 0, Duration::ZERO);
        assert!(over_lag_bound(&p));
        let step = step_events(&p);
        assert_eq!(step, MIRROR_BATCH_EVENTS_PACED as u64);
        // The batch's first step: its event files, no ledger. The writer resumes; readers and checkpoints still see
        // the tree through the ledger's position.
        step_written(&mut p, step, false, step, Duration::from_millis(2));
        assert!(!over_lag_bound(&p), "a step of event files is progress for the lag bound");
        assert_eq!((p.files_written, p.written), (step, 0));
        assert!(p.unwritten.front().is_some_and(|&(h, _)| h > step), "commits through the step are mirrored");
        // Steps until the batch's last, which moves the ledger to the batch's end.
        let batch = MIRROR_BATCH_EVENTS_MAX as u64;
        let mut to = step;
        while to + step < batch {
            to += step;
            step_written(&mut p, to, false, step, Duration::from_millis(2));
            assert_eq!(p.written, 0);
        }
        step_written(&mut p, batch, true, batch - to, Duration::from_millis(2));
        assert_eq!((p.files_written, p.written), (batch, batch));
    }

    #[test]
    fn a_stalled_mirror_is_not_stalled_while_it_writes_steps_of_a_batch() {
        let mut p = behind(2_000, 0, 2 * MIRROR_LAG_MAX);
        assert!(over_lag_bound(&p));
        step_written(&mut p, MIRROR_BATCH_EVENTS_PACED as u64, false, 64, Duration::from_millis(2));
        assert!(!over_lag_bound(&p), "a step without a ledger is progress");
    }

    /// The mirror's event files go out in calls of at most the slice, with a way made between calls (not after the
    /// last), every file written once; a failed call stops the rest.
    #[test]
    fn event_files_are_created_in_slices_with_a_way_made_between_them() {
        use crate::io::faulty::{Fault, FaultyIo};
        use crate::io::threads::ThreadPoolIo;
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> =
            (0..MIRROR_YIELD_FILES * 2 + 1).map(|i| dir.path().join(format!("{i}.json"))).collect();
        let writes: Vec<FileWrite<'_>> =
            paths.iter().map(|p| FileWrite { path: p, bytes: b"{}", mode: WriteMode::CreateNew }).collect();
        let io = FaultyIo::new(ThreadPoolIo::new(2));
        let mut ways = 0;
        write_in_slices(&io, &writes, false, MIRROR_YIELD_FILES, || ways += 1).unwrap();
        assert_eq!((io.write_batches(), ways), (3, 2), "{} files in slices of {MIRROR_YIELD_FILES}", paths.len());
        for p in &paths {
            assert_eq!(std::fs::read(p).unwrap(), b"{}", "{}", p.display());
        }
        // One slice: no way made. A failure in the second call: the third never runs.
        let one = &writes[..MIRROR_YIELD_FILES];
        let dir2 = tempfile::tempdir().unwrap();
        let moved: Vec<PathBuf> = one.iter().map(|w| dir2.path().join(w.path.file_name().unwrap())).collect();
        let one: Vec<FileWrite<'_>> =
            moved.iter().map(|p| FileWrite { path: p, bytes: b"{}", mode: WriteMode::CreateNew }).collect();
        let mut ways = 0;
        write_in_slices(&io, &one, false, MIRROR_YIELD_FILES, || ways += 1).unwrap();
        assert_eq!(ways, 0);
        let dir3 = tempfile::tempdir().unwrap();
        let more: Vec<PathBuf> = paths.iter().map(|p| dir3.path().join(p.file_name().unwrap())).collect();
        let more_writes: Vec<FileWrite<'_>> =
            more.iter().map(|p| FileWrite { path: p, bytes: b"{}", mode: WriteMode::CreateNew }).collect();
        let before = io.write_batches();
        io.arm(1, Fault::Write { errno: libc::ENOSPC, files_written: 0 });
        assert!(write_in_slices(&io, &more_writes, false, MIRROR_YIELD_FILES, || {}).is_err());
        assert_eq!(io.write_batches() - before, 2, "the call after the failed one never ran");
        assert!(!more[2 * MIRROR_YIELD_FILES].exists());
    }

    /// More files than the writeback window holds: every one is opened and written back; a file that is not there
    /// (a checkpoint's range gone wrong) fails the checkpoint with its name instead of being skipped.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_checkpoint_writes_back_every_file_through_its_window_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> =
            (0..MIRROR_CHECKPOINT_WRITEBACK_FILES_MAX * 2 + 3).map(|i| dir.path().join(format!("{i}.json"))).collect();
        for path in &paths {
            std::fs::write(path, b"{}").unwrap();
        }
        write_back(paths.iter().cloned(), &|| false).unwrap();
        let missing = dir.path().join("missing.json");
        let mut with_gap = paths.clone();
        with_gap.insert(MIRROR_CHECKPOINT_WRITEBACK_FILES_MAX + 1, missing.clone());
        match write_back(with_gap.into_iter(), &|| false) {
            Err(StoreError::Io(e)) => {
                assert_eq!(e.op, IoOp::Open);
                assert!(e.to_string().contains("missing.json"), "{e}");
            }
            other => panic!("a missing file must fail the writeback: {other:?}"),
        }
        // Files in several directories, back and forth (each opened relative to its directory's descriptor), and a
        // file in a directory that is not there, named.
        let subdirs = [dir.path().join("a"), dir.path().join("b")];
        let mut mixed = Vec::new();
        for i in 0..MIRROR_CHECKPOINT_WRITEBACK_FILES_MAX + 5 {
            let sub = &subdirs[(i / 3) % 2];
            std::fs::create_dir_all(sub).unwrap();
            let path = sub.join(format!("{i}.json"));
            std::fs::write(&path, b"{}").unwrap();
            mixed.push(path);
        }
        write_back(mixed.iter().cloned(), &|| false).unwrap();
        let orphan = dir.path().join("gone").join("1.json");
        mixed.insert(7, orphan.clone());
        match write_back(mixed.into_iter(), &|| false) {
            Err(StoreError::Io(e)) => assert_eq!((e.op, e.path.as_path()), (IoOp::Open, orphan.as_path())),
            other => panic!("a file in a missing directory must fail the writeback: {other:?}"),
        }
    }

    /// Once `stop` says so, the window waits for what is in flight and opens nothing more: a file that is not there
    /// after the first window fails a writeback that goes on, not one told to stop.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_writeback_told_to_stop_leaves_the_rest_to_the_syncfs() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths: Vec<PathBuf> =
            (0..MIRROR_CHECKPOINT_WRITEBACK_FILES_MAX * 3).map(|i| dir.path().join(format!("{i}.json"))).collect();
        for path in &paths {
            std::fs::write(path, b"{}").unwrap();
        }
        paths.insert(MIRROR_CHECKPOINT_WRITEBACK_FILES_MAX + 1, dir.path().join("missing.json"));
        assert!(write_back(paths.iter().cloned(), &|| false).is_err(), "a writeback that goes on opens every file");
        let asked = std::cell::Cell::new(0);
        let stop = || {
            asked.set(asked.get() + 1);
            true
        };
        write_back(paths.iter().cloned(), &stop).unwrap();
        assert_eq!(asked.get(), 1, "asked once, after the first window");
    }

    /// A checkpoint's thread runs below the commit path: `MIRROR_CHECKPOINT_NICE` (or lower, if the process runs
    /// lower already) and the idle I/O class, as the kernel reports them.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_checkpoint_thread_runs_at_background_priority() {
        use crate::io::priority::{current_thread, Applied, IoPriority};
        let (applied, now) = std::thread::spawn(|| (lower_checkpoint_thread(), current_thread())).join().unwrap();
        assert_eq!(applied, Applied { nice: true, io: true });
        let (nice, io) = now.unwrap();
        assert!(nice >= MIRROR_CHECKPOINT_NICE, "nice {nice}");
        assert_eq!(io, Some(IoPriority::Idle));
    }

    #[test]
    fn a_stalled_mirror_releases_the_writer_after_its_next_batch_not_when_the_lag_has_drained() {
        let mut p = behind(2_000, 0, 2 * MIRROR_LAG_MAX);
        assert!(over_lag_bound(&p), "no progress for MIRROR_LAG_MAX with work waiting: the writer waits");
        write(&mut p, MIRROR_BATCH_EVENTS_PACED as u64, Duration::from_millis(2));
        // Every commit the tree lacks is still older than MIRROR_LAG_MAX, but the mirror moves again.
        assert!(p.unwritten.front().is_some_and(|&(_, at)| at.elapsed() >= MIRROR_LAG_MAX));
        assert!(!over_lag_bound(&p));
    }

    #[test]
    fn the_lag_bound_follows_the_mirrors_rate_falling_by_at_most_half_a_batch() {
        let mut p = behind(0, 0, Duration::ZERO);
        assert_eq!(p.lag_limit, MIRROR_LAG_EVENTS_MAX, "no rate measured yet");
        let batch = MIRROR_BATCH_EVENTS_PACED as u64;
        // A mirror writing 2,000 events/s: the bound falls by half a step per step, to what it writes in
        // MIRROR_LAG_MAX.
        let slow = Duration::from_secs_f64(batch as f64 / 2_000.0);
        batch_written(&mut p, batch, slow);
        assert_eq!(p.lag_limit, MIRROR_LAG_EVENTS_MAX - batch / 2);
        for _ in 0..1_000 {
            batch_written(&mut p, batch, slow);
        }
        let expected = (2_000.0 * MIRROR_LAG_MAX.as_secs_f64()) as u64;
        assert!(p.lag_limit.abs_diff(expected.clamp(MIRROR_LAG_EVENTS_MIN, MIRROR_LAG_EVENTS_MAX)) <= 1);
        // A stalled batch never takes the bound below MIRROR_LAG_EVENTS_MIN; a fast one raises it at once.
        for _ in 0..1_000 {
            batch_written(&mut p, batch, Duration::from_secs(10));
        }
        assert_eq!(p.lag_limit, MIRROR_LAG_EVENTS_MIN);
        batch_written(&mut p, 1_000_000, Duration::from_millis(1));
        assert_eq!(p.lag_limit, MIRROR_LAG_EVENTS_MAX);
    }
}
