//! The single writer thread: group commit.
//!
//! Appenders queue requests; the writer takes everything queued (up to `GROUP_EVENTS_MAX` events), and under
//! `.store.lock`:
//! 1. catches up with events other processes appended (the ledger moved),
//! 2. checks each request's condition in arrival order — against the committed index and against the requests
//!    already accepted into this group, so each accepted batch is visible to the next one's check,
//! 3. writes all accepted event files (and, with `IndexWrites::EveryCommit`, the changed index files) and the
//!    ledger in one durable `BatchIo` batch, the ledger as its `WriteMode::Commit` record (renamed only after
//!    every event file is durable),
//! 4. publishes the new head and answers every appender.
//!
//! In journal mode steps 1 and 3 are `commit::journal` (no lock per commit: the store holds it; one journal write),
//! the tree is left to the mirror thread (`store/mirror.rs`), which the writer tells of each new head and waits for
//! before a group while the tree lags by its bound.
//!
//! A write or fsync error that may have left unknown state on disk poisons the store: the writer refuses further
//! appends (a failed fsync may have lost dirty pages; retrying would lie), readers keep working below the last
//! acknowledged head, and the writer re-runs open-time recovery in place with backoff (`recover_in_place`), so
//! freeing disk space brings writes back without a restart. A batch that failed before writing anything (a create
//! refused: too many open files, no inodes, a name too long) only fails its appends: its leftovers (event files
//! beyond the head) are set aside by the next commit at those positions.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::recovery::{self, encode_index_files, replace_all, IndexKind};
use super::tracking::{Replay, TrackingRefusal};
use super::{
    commit, elapsed_us, read_event_files, AppendReply, Appended, CommitMode, Durability, IndexWrites, LockFile,
    PreparedBatch, PreparedEvent, Request, Shared, StoreError, StoreLock, GROUP_EVENTS_MAX, READ_BATCH_FILES_DEFAULT,
};
use crate::format::Ledger;
use crate::io::{FileWrite, IoOp, WriteMode};
use crate::limits::{JOURNAL_GROUP_BYTES_MAX, RECOVERY_BACKOFF_MAX};
use crate::model::AppendCondition;

/// A commit taking at least this long, plus `SLOW_COMMIT_PER_EVENT` for each of its events (bulk imports create
/// thousands of files per commit), is logged (`warn`) with where its time went.
const SLOW_COMMIT: Duration = Duration::from_millis(200);
const SLOW_COMMIT_PER_EVENT: Duration = Duration::from_micros(500);

struct Pending {
    events: PreparedBatch,
    condition: Option<AppendCondition>,
    reply: AppendReply,
}

impl super::tracking::GroupAppend for (Pending, u64) {
    fn events(&self) -> &[PreparedEvent] {
        &self.0.events
    }
    fn first(&self) -> u64 {
        self.1
    }
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    lock_file: LockFile,
    requests: Receiver<Request>,
    /// While the store is poisoned: when the next in-place recovery runs, and the wait after it if it fails.
    next_recovery: Option<Instant>,
    recovery_backoff: Duration,
}

/// Writers replace the ledger by rename (we do, and so does .NET Opossum), so a new inode means a new ledger.
/// Windows: std offers no stable file id, and NTFS gives a file renamed over a name it just removed the old
/// file's creation time (tunnelling), so a hash of the ledger's bytes (~50) stands in for the inode; reading
/// them costs an open, as `metadata` does there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LedgerFingerprint {
    identity: u64,
    modified: Option<std::time::SystemTime>,
    len: u64,
}

pub(crate) fn ledger_fingerprint(path: &std::path::Path) -> Option<LedgerFingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let identity = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let identity = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::fs::read(path).ok()?.hash(&mut hasher);
        hasher.finish()
    };
    Some(LedgerFingerprint { identity, modified: meta.modified().ok(), len: meta.len() })
}

impl Writer {
    pub fn new(shared: Arc<Shared>, lock_file: LockFile, requests: Receiver<Request>) -> Writer {
        let recovery_backoff = shared.options.recovery_backoff_min;
        Writer { shared, lock_file, requests, next_recovery: None, recovery_backoff }
    }

    fn durable(&self) -> bool {
        self.shared.options.durability == Durability::Fsync
    }

    pub fn run(mut self) {
        loop {
            let request = if self.shared.poison_reason().is_some() {
                let next = *self.next_recovery.get_or_insert_with(|| Instant::now() + self.recovery_backoff);
                let request = match self.requests.recv_timeout(next.saturating_duration_since(Instant::now())) {
                    Ok(request) => Some(request),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                if Instant::now() >= next {
                    self.recover_in_place();
                }
                match request {
                    Some(request) => request,
                    None => continue,
                }
            } else {
                match self.requests.recv() {
                    Ok(request) => request,
                    Err(_) => break,
                }
            };
            match request {
                Request::Sync { flush_index, reply } => {
                    let _ = reply.send(self.sync(flush_index));
                }
                Request::Append { events, condition, reply } => {
                    let mut syncs = Vec::new();
                    let mut group = vec![Pending { events, condition, reply }];
                    let mut group_events = group[0].events.len();
                    // Bytes bound too: a journal group is one write of its records (`JOURNAL_GROUP_BYTES_MAX`).
                    let mut group_bytes = group[0].events.encoded_bytes();
                    while group_events < GROUP_EVENTS_MAX && group_bytes < JOURNAL_GROUP_BYTES_MAX / 2 {
                        match self.requests.try_recv() {
                            Ok(Request::Append { events, condition, reply }) => {
                                group_events += events.len();
                                group_bytes += events.encoded_bytes();
                                group.push(Pending { events, condition, reply });
                            }
                            Ok(Request::Sync { flush_index, reply }) => syncs.push((flush_index, reply)),
                            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                        }
                    }
                    self.commit(group);
                    for (flush_index, reply) in syncs {
                        let _ = reply.send(self.sync(flush_index));
                    }
                }
            }
        }
    }

    /// Re-runs open-time recovery under `.store.lock` after a write fault (or an open that could not write), and
    /// makes the store writable again when it completes; otherwise waits twice as long before the next attempt.
    fn recover_in_place(&mut self) {
        if self.shared.journal.is_some() {
            // Journal mode: a failed journal write or fdatasync poisons the journal until the store is reopened (its
            // recovery cuts what the failed group left); the tree's recovery has nothing to repair, and `.store.lock`
            // is already held by the store, on another descriptor.
            self.next_recovery = None;
            return;
        }
        let attempt = self.shared.counters.recovery_attempts.fetch_add(1, Ordering::Relaxed) + 1;
        let reason = self.shared.poison_reason().unwrap_or_default();
        tracing::warn!(attempt, "store unwritable ({reason}): re-running recovery");
        // No deferred index flush may run while the index is replaced.
        let flush_guard = self.shared.index_flush.lock().unwrap();
        let result = StoreLock::acquire(&self.lock_file, &self.shared.layout).and_then(|_lock| {
            let recovered = recovery::recover(&self.shared.layout, self.shared.io.as_ref(), self.durable(), None)?;
            Ok((recovered, ledger_fingerprint(&self.shared.layout.ledger())))
        });
        let failure = match result {
            Ok((recovered, _)) if recovered.head < self.shared.head() => {
                Some(format!("the ledger went back from {} to {}", self.shared.head(), recovered.head))
            }
            Ok((recovered, fingerprint)) => {
                self.shared.counters.index_write_failures.fetch_add(recovered.index_write_failures, Ordering::Relaxed);
                match recovered.unwritable {
                    Some(why) => Some(why),
                    None => {
                        *self.shared.index.write().unwrap() = recovered.index;
                        self.shared.head.store(recovered.head, Ordering::Release);
                        self.shared.commits.publish(recovered.head);
                        *self.shared.ledger_seen.lock().unwrap() = fingerprint;
                        None
                    }
                }
            }
            Err(e) => Some(e.to_string()),
        };
        drop(flush_guard);
        self.shared.count_quarantine();
        match failure {
            None => {
                self.shared.clear_poison();
                self.next_recovery = None;
                self.recovery_backoff = self.shared.options.recovery_backoff_min;
                tracing::info!(attempt, head = self.shared.head(), "recovery finished: the store takes writes again");
            }
            Some(why) => {
                self.recovery_backoff = (self.recovery_backoff * 2).min(RECOVERY_BACKOFF_MAX);
                self.next_recovery = Some(Instant::now() + self.recovery_backoff);
                tracing::warn!(
                    attempt,
                    retry_in_ms = self.recovery_backoff.as_millis() as u64,
                    "recovery could not finish, the store stays unwritable: {why}"
                );
            }
        }
    }

    /// `Request::Sync`: catch up with other writers and, if asked, flush deferred index files.
    fn sync(&mut self, flush_index: bool) -> Result<u64, StoreError> {
        if let Some(reason) = self.shared.poison_reason() {
            return Err(StoreError::Poisoned(reason));
        }
        if self.shared.journal.is_some() {
            // Journal mode: the store holds `.store.lock` for its whole life, so no other process appends.
            return Ok(self.shared.head());
        }
        {
            let _lock = StoreLock::acquire(&self.lock_file, &self.shared.layout)?;
            self.catch_up()?;
        }
        if flush_index && matches!(self.shared.options.index_writes, IndexWrites::Deferred { .. }) {
            self.shared.flush_index();
        }
        Ok(self.shared.head())
    }

    /// Picks up events another process appended since our head (it moved the ledger). A failure (a read refused
    /// for want of descriptors, a corrupt file) changes nothing: the ledger counts as unseen, so the next commit
    /// or read tries again.
    fn catch_up(&self) -> Result<(), StoreError> {
        let fingerprint = ledger_fingerprint(&self.shared.layout.ledger());
        if fingerprint.is_some() && fingerprint == *self.shared.ledger_seen.lock().unwrap() {
            return Ok(());
        }
        let head = self.shared.head();
        let caught_up = self.read_appended(head);
        match &caught_up {
            Ok(()) => *self.shared.ledger_seen.lock().unwrap() = fingerprint,
            Err(_) => self.shared.index.write().unwrap().truncate(self.shared.head()),
        }
        caught_up
    }

    fn read_appended(&self, head: u64) -> Result<(), StoreError> {
        let ledger = recovery::read_ledger(&self.shared.layout)?;
        if ledger < head {
            return Err(StoreError::Corrupt {
                path: self.shared.layout.ledger(),
                reason: format!("the ledger went back from {head} to {ledger}"),
            });
        }
        if ledger == head {
            return Ok(());
        }
        tracing::info!(from = head + 1, to = ledger, "picking up events appended by another process");
        let positions: Vec<u64> = (head + 1..=ledger).collect();
        for chunk in positions.chunks(READ_BATCH_FILES_DEFAULT) {
            let events = read_event_files(&self.shared.layout, self.shared.io.as_ref(), chunk, ledger)?;
            let mut index = self.shared.index.write().unwrap();
            for e in events {
                index.insert(e.position, &e.event_type, &e.tags);
            }
        }
        self.shared.head.store(ledger, Ordering::Release);
        self.shared.commits.publish(ledger);
        Ok(())
    }

    fn commit(&mut self, group: Vec<Pending>) {
        let started = Instant::now();
        if let Some(reason) = self.shared.poison_reason() {
            for p in group {
                p.reply.send(Err(StoreError::Poisoned(reason.clone())));
            }
            return;
        }
        // Journal mode holds `.store.lock` for the store's life (taken at open): no other writer to catch up with.
        let journal_mode = self.shared.journal.is_some();
        if let Some(mirror) = &self.shared.mirror {
            // Backpressure: the tree may lag the journal only so far (`limits::MIRROR_LAG_*`).
            mirror.wait_for_room();
        }
        let waited = Instant::now();
        let lock = match journal_mode {
            true => None,
            false => match StoreLock::acquire(&self.lock_file, &self.shared.layout) {
                Ok(lock) => Some(lock),
                Err(e) => {
                    for p in group {
                        p.reply.send(Err(e.clone()));
                    }
                    return;
                }
            },
        };
        if let Err(e) = if journal_mode { Ok(()) } else { self.catch_up() } {
            // Nothing was written: fail these appends, stay writable.
            tracing::warn!("could not pick up other writers' events: {e}");
            for p in group {
                p.reply.send(Err(e.clone()));
            }
            return;
        }
        let locked = Instant::now();
        let head = self.shared.head();
        let mut next = head + 1;
        let mut accepted: Vec<(Pending, u64)> = Vec::with_capacity(group.len());
        // Retries of appends accepted earlier in this group: answered with their positions once the group commits.
        let mut replays: Vec<(Pending, Appended)> = Vec::new();
        self.shared.tracking.lock().unwrap().begin_group();
        for p in group {
            match self.check(&p, head, &accepted) {
                Ok(Some(replayed)) if replayed.last <= head => {
                    p.reply.send(Ok(replayed));
                }
                Ok(Some(replayed)) => replays.push((p, replayed)),
                Ok(None) => {
                    let first = next;
                    next += p.events.len() as u64;
                    accepted.push((p, first));
                }
                Err(e) => {
                    if matches!(e, StoreError::ConditionFailed { .. }) {
                        self.shared.counters.condition_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    p.reply.send(Err(e));
                }
            }
        }
        if accepted.is_empty() {
            debug_assert!(replays.is_empty(), "an in-group replay repeats an accepted append");
            return;
        }
        let new_head = next - 1;
        // Positions are contiguous: the accepted batches cover head + 1 ..= new_head, in order, without gaps.
        assert!(new_head > head, "a commit must advance the head ({head} -> {new_head})");
        debug_assert!(accepted
            .iter()
            .scan(head + 1, |expected, (p, first)| {
                let ok = *first == *expected;
                *expected += p.events.len() as u64;
                Some(ok)
            })
            .all(|ok| ok));
        let checked = Instant::now();
        // The one place the commit mode decides what is durable before the answer (store/commit/).
        let written = match (self.shared.options.commit, &self.shared.journal) {
            (CommitMode::Journal, Some(journal)) => {
                // The tree is not written here: the mirror thread (store/mirror.rs) follows the published head.
                let groups: Vec<(&PreparedBatch, u64)> =
                    accepted.iter().map(|(p, first)| (&p.events, *first)).collect();
                commit::journal::write(&self.shared, journal, &groups, head)
            }
            (CommitMode::Journal, None) => unreachable!("journal mode opens its journal"),
            (CommitMode::Files, _) => self.write(&accepted, head, new_head),
        };
        let took = started.elapsed();
        if took >= SLOW_COMMIT + SLOW_COMMIT_PER_EVENT.saturating_mul((new_head - head).min(u32::MAX as u64) as u32) {
            // Where the time went, for operators chasing latency spikes; each field names what it measured in
            // this commit mode.
            let ms = |d: Duration| d.as_millis() as u64;
            if journal_mode {
                tracing::warn!(
                    events = new_head - head,
                    took_ms = ms(took),
                    mirror_lag_wait_ms = ms(waited - started),
                    check_ms = ms(checked - locked),
                    journal_write_ms = ms(checked.elapsed()),
                    "slow commit"
                );
            } else {
                tracing::warn!(
                    events = new_head - head,
                    took_ms = ms(took),
                    lock_and_catch_up_ms = ms(locked - started),
                    check_ms = ms(checked - locked),
                    write_ms = ms(checked.elapsed()),
                    "slow commit"
                );
            }
        }
        match written {
            Ok(()) => {
                self.shared.head.store(new_head, Ordering::Release);
                self.shared.commits.publish(new_head);
                if let Some(mirror) = &self.shared.mirror {
                    mirror.published(new_head);
                }
                self.shared
                    .tracking
                    .lock()
                    .unwrap()
                    .committed(accepted.iter().map(|(p, first)| (&p.events[..], *first)));
                for (p, replayed) in replays.drain(..) {
                    p.reply.send(Ok(replayed));
                }
                drop(lock);
                let c = &self.shared.counters;
                c.commits.fetch_add(1, Ordering::Relaxed);
                c.appends.fetch_add(accepted.len() as u64, Ordering::Relaxed);
                c.events_appended.fetch_add(new_head - head, Ordering::Relaxed);
                c.commit_latency_us_total.fetch_add(elapsed_us(started), Ordering::Relaxed);
                for (p, first) in accepted {
                    let last = first + p.events.len() as u64 - 1;
                    p.reply.send(Ok(Appended { first, last, replayed: false }));
                }
            }
            Err(e) => {
                let what = format!("group commit of positions {}..={new_head} failed", head + 1);
                if may_leave_unknown_state(&e) {
                    self.shared.poison(format!("{what}: {e}"));
                } else {
                    tracing::warn!("{what} before writing anything, the store stays writable: {e}");
                }
                self.shared.index.write().unwrap().truncate(head);
                for (p, _) in accepted.into_iter().chain(replays.into_iter().map(|(p, r)| (p, r.first))) {
                    p.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Is `p` a retry of an append already committed or accepted (`Some`: its positions), and if not, do its
    /// tracking and its condition hold, given the committed events up to `head` and this group's accepted requests?
    fn check(&self, p: &Pending, head: u64, accepted: &[(Pending, u64)]) -> Result<Option<Appended>, StoreError> {
        let extended = p.events.iter().any(|e| e.id.is_some()) || p.events.last().is_some_and(|e| e.tracking.is_some());
        if extended {
            let mut table = self.shared.tracking.lock().unwrap();
            let after = p.condition.as_ref().and_then(|c| c.after);
            if let Replay::Of { first, last } = table.replay(&p.events, after, accepted) {
                return Ok(Some(Appended { first, last, replayed: true }));
            }
            if let Some(t) = p.events.last().and_then(|e| e.tracking.as_ref()) {
                match table.check_tracking(&t.source, t.position, accepted) {
                    Ok(()) => {}
                    Err(TrackingRefusal::NotAfter { last }) => {
                        return Err(StoreError::TrackingConflict {
                            source_name: t.source.clone(),
                            position: t.position,
                            last,
                        })
                    }
                    Err(TrackingRefusal::TooManySources) => {
                        return Err(StoreError::LimitExceeded {
                            what: "the number of tracking sources".into(),
                            limit: "TRACKING_SOURCES_MAX",
                            value: table.sources() + 1,
                            max: crate::limits::TRACKING_SOURCES_MAX,
                        })
                    }
                }
            }
        }
        self.check_condition(p, head, accepted).map(|()| None)
    }

    /// Does `p`'s condition hold, given the committed events up to `head` and this group's accepted requests?
    fn check_condition(&self, p: &Pending, head: u64, accepted: &[(Pending, u64)]) -> Result<(), StoreError> {
        let Some(condition) = &p.condition else { return Ok(()) };
        let query = &condition.fail_if_events_match;
        let after = condition.after.unwrap_or(0);
        for (q, first) in accepted {
            for (i, e) in q.events.iter().enumerate() {
                let position = first + i as u64;
                if position > after && query.matches(&e.event_type, &e.tags) {
                    return Err(StoreError::ConditionFailed { position });
                }
            }
        }
        if after >= head {
            return Ok(());
        }
        let mut unknown = Vec::new();
        {
            let index = self.shared.index.read().unwrap();
            let Some(candidates) = index.candidates(query, after + 1, head) else {
                return Err(StoreError::ConditionFailed { position: head });
            };
            for p in candidates {
                match index.keys(p) {
                    Some(keys) if keys.matches(query) => return Err(StoreError::ConditionFailed { position: p }),
                    Some(_) => {}
                    None => unknown.push(p),
                }
            }
        }
        // Events loaded from index files: their exact type and tags are in their files.
        for chunk in unknown.chunks(READ_BATCH_FILES_DEFAULT) {
            let events = read_event_files(&self.shared.layout, self.shared.io.as_ref(), chunk, head)?;
            let mut index = self.shared.index.write().unwrap();
            for e in &events {
                index.remember(e.position, &e.event_type, &e.tags);
            }
            if let Some(e) = events.iter().find(|e| query.matches(&e.event_type, &e.tags)) {
                return Err(StoreError::ConditionFailed { position: e.position });
            }
        }
        Ok(())
    }

    /// Makes positions `head + 1 ..= new_head` durable: event (+ index) files, and the ledger as the commit record.
    fn write(&self, accepted: &[(Pending, u64)], head: u64, new_head: u64) -> Result<(), StoreError> {
        let layout = &self.shared.layout;
        let durable = self.durable();
        let mut event_files: Vec<(PathBuf, Vec<u8>)> = Vec::with_capacity((new_head - head) as usize);
        {
            let mut index = self.shared.index.write().unwrap();
            for (p, first) in accepted {
                for (i, e) in p.events.iter().enumerate() {
                    let position = first + i as u64;
                    event_files.push((layout.event_file(position), p.events.file_bytes(e, position)));
                    index.insert(position, &e.event_type, &e.tags);
                }
            }
        }
        let index_files = match self.shared.options.index_writes {
            IndexWrites::EveryCommit => {
                let index = self.shared.index.read().unwrap();
                let mut files = encode_index_files(layout, &index, &index.dirty_tags, IndexKind::Tag, new_head);
                files.extend(encode_index_files(layout, &index, &index.dirty_types, IndexKind::Type, new_head));
                files
            }
            IndexWrites::Deferred { .. } => Vec::new(),
        };
        let ledger = Ledger { last_sequence_position: new_head, event_count: new_head }.encode();
        let ledger_path = layout.ledger();
        let mut batch: Vec<FileWrite<'_>> =
            event_files.iter().map(|(path, bytes)| FileWrite { path, bytes, mode: WriteMode::CreateNew }).collect();
        batch.extend(replace_all(&index_files));
        // A daemon-owned store (deferred index files) overwrites its ledger in place: far cheaper than a new file,
        // but a lockless .NET reader could catch it half-written (see `WriteMode::CommitInPlace`).
        let ledger_mode = match self.shared.options.index_writes {
            IndexWrites::EveryCommit => WriteMode::Commit,
            IndexWrites::Deferred { .. } => WriteMode::CommitInPlace,
        };
        batch.push(FileWrite { path: &ledger_path, bytes: &ledger, mode: ledger_mode });
        let written = self.shared.io.write_files(&batch, durable);
        self.shared.counters.write_batches.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = written {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(e.into());
            }
            // Another process crashed after writing event files it never committed, at the positions we want.
            // They are not events (the ledger does not cover them): set them aside and write ours.
            let strays: Vec<PathBuf> =
                (head + 1..=new_head).map(|p| layout.event_file(p)).filter(|p| p.exists()).collect();
            recovery::quarantine(layout, &strays, durable)?;
            self.shared.count_quarantine();
            self.shared.io.write_files(&batch, durable)?;
            self.shared.counters.write_batches.fetch_add(1, Ordering::Relaxed);
        }
        if !index_files.is_empty() {
            let mut index = self.shared.index.write().unwrap();
            index.dirty_tags.clear();
            index.dirty_types.clear();
        }
        *self.shared.ledger_seen.lock().unwrap() = ledger_fingerprint(&ledger_path);
        Ok(())
    }
}

/// Whether a failed write batch may have left state on disk that only recovery can sort out. A refused open
/// (create) happens before anything of that file is written and before any rename or fsync of the batch (the
/// backends create every file first), so what it leaves is known: event files beyond the head, which the next
/// commit at those positions sets aside, and temporary files. Every failed write, rename or fsync poisons
/// (fsyncgate: a retried fsync can report success for pages the kernel dropped).
fn may_leave_unknown_state(e: &StoreError) -> bool {
    !matches!(e, StoreError::Io(io) if io.op == IoOp::Open)
}
