//! Streaming reads: positions come from the in-memory index (a snapshot at the head when the read starts), event
//! files are read through `BatchIo` a batch at a time, checked against the exact query (post-filtering), and
//! handed out in order. Memory stays bounded by one batch of events, however many match.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Shared, StoreError};
use crate::journal::{RecordBatch, RecordView};
use crate::limits::READ_INLINE_CANDIDATES_MAX;
use crate::model::{Query, ReadOptions, SequencedEvent, Tag};

/// One event of a read, borrowing the batch it was read into: in journal mode the record's own bytes (type, tags,
/// and the minified data and metadata JSON as the event file holds them), so the server frames wire lines from
/// these slices without decoding or copying the event.
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    pub position: u64,
    pub event_type: &'a str,
    /// The event's data JSON text (minified).
    pub data: &'a str,
    /// The event's metadata JSON text (minified object).
    pub metadata: &'a str,
    tags: ViewTags<'a>,
}

#[derive(Debug, Clone, Copy)]
enum ViewTags<'a> {
    Record(RecordView<'a>),
    Owned(&'a [Tag]),
}

impl<'a> EventView<'a> {
    fn from_record(v: RecordView<'a>) -> EventView<'a> {
        EventView {
            position: v.position,
            event_type: v.event_type,
            data: v.data,
            metadata: v.metadata,
            tags: ViewTags::Record(v),
        }
    }

    pub fn from_event(e: &'a SequencedEvent) -> EventView<'a> {
        EventView {
            position: e.position,
            event_type: &e.event_type,
            data: e.data.get(),
            metadata: e.metadata.get(),
            tags: ViewTags::Owned(&e.tags),
        }
    }

    /// The event's tags as (key, value), in the order they were appended.
    pub fn tags(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let (record, owned) = match self.tags {
            ViewTags::Record(v) => (Some(v.tags()), None),
            ViewTags::Owned(tags) => (None, Some(tags.iter().map(|t| (t.key.as_str(), t.value.as_str())))),
        };
        record.into_iter().flatten().chain(owned.into_iter().flatten())
    }

    /// Whether `query` matches this event (the same rule as [`Query::matches`], without owning the tags).
    pub fn matches(&self, query: &Query) -> bool {
        match query {
            Query::All => true,
            Query::Items(items) => items.iter().any(|item| {
                (item.types.is_empty() || item.types.iter().any(|t| t == self.event_type))
                    && item.tags.iter().all(|want| self.tags().any(|(k, v)| k == want.key && v == want.value))
            }),
        }
    }

    /// The event, owned. In journal mode its data and metadata are copied as they are (the record was checksummed
    /// when read, its JSON checked when appended).
    pub fn to_event(&self) -> Result<SequencedEvent, StoreError> {
        let raw = |json: &str, what: &str| {
            serde_json::value::RawValue::from_string(json.to_string()).map_err(|e| StoreError::Corrupt {
                path: Default::default(),
                reason: format!("position {}: {what} is not JSON: {e}", self.position),
            })
        };
        Ok(SequencedEvent {
            position: self.position,
            event_type: self.event_type.to_string(),
            data: raw(self.data, "data")?,
            tags: self.tags().map(|(k, v)| Tag::new(k, v)).collect(),
            metadata: raw(self.metadata, "metadata")?,
        })
    }
}

/// A batch of a read's events, in output order: journal records read into a few buffers (one per extent of
/// adjacent records), or events decoded from event files (`--commit files`).
pub enum EventBatch {
    Records(RecordBatch),
    Events(Vec<SequencedEvent>),
}

impl EventBatch {
    pub fn len(&self) -> usize {
        match self {
            EventBatch::Records(b) => b.len(),
            EventBatch::Events(e) => e.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The events, borrowed.
    pub fn views(&self) -> Box<dyn Iterator<Item = EventView<'_>> + '_> {
        match self {
            EventBatch::Records(b) => Box::new(b.iter().map(EventView::from_record)),
            EventBatch::Events(e) => Box::new(e.iter().map(EventView::from_event)),
        }
    }

    /// The events, owned.
    pub fn into_events(self) -> Result<Vec<SequencedEvent>, StoreError> {
        match self {
            EventBatch::Records(b) => b.iter().map(|v| EventView::from_record(v).to_event()).collect(),
            EventBatch::Events(e) => Ok(e),
        }
    }

    /// Keeps the events matching `query`, at most `max` of them.
    fn retain_matching(&mut self, query: &Query, max: usize) {
        match self {
            EventBatch::Records(b) => match query {
                Query::All => b.retain(max, |_| true),
                _ => b.retain(max, |v| EventView::from_record(*v).matches(query)),
            },
            EventBatch::Events(e) => {
                e.retain(|e| query.matches(&e.event_type, &e.tags));
                e.truncate(max);
            }
        }
    }
}

enum Positions {
    /// `Query::All`: every position in `[lo, hi]`, never materialised.
    Range {
        lo: u64,
        hi: u64,
    },
    /// Candidate positions, ascending; consumed from the front (or back when reading backwards). Exhausted when
    /// `front == back`.
    List {
        positions: Vec<u64>,
        front: usize,
        back: usize,
    },
    Done,
}

/// Where a read stands in its [`Positions`], to take back positions a read that would wait did not read.
#[derive(Clone, Copy)]
enum Cursor {
    Range { lo: u64, hi: u64 },
    List { front: usize, back: usize },
    Done,
}

/// What [`EventReader::next_views_cached`] did.
pub enum CachedStep {
    /// The next batch of matching events, read from the page cache (empty when none of its candidates matched).
    Batch(EventBatch),
    /// Nothing is left to read.
    End,
    /// The next batch is larger than asked or not wholly cached: nothing was read; continue with
    /// [`EventReader::next_views`] on a thread that may block.
    WouldWait,
    /// The read failed (as [`EventReader::next_views`] would have); the reader ends.
    Failed(StoreError),
}

pub struct EventReader {
    shared: Arc<Shared>,
    query: Query,
    positions: Positions,
    backwards: bool,
    remaining: u64,
    batch_files: usize,
    current: std::vec::IntoIter<SequencedEvent>,
    failed: bool,
    /// The head this read is a snapshot of.
    head: u64,
}

impl EventReader {
    pub(crate) fn new(shared: Arc<Shared>, query: Query, options: ReadOptions) -> EventReader {
        let (head, positions) = {
            let index = shared.index.read().unwrap();
            Self::snapshot(&shared, &index, &query, options)
        };
        Self::with_positions(shared, query, options, head, positions)
    }

    /// [`EventReader::new`] without waiting for the index lock and without unbounded work: `None` while the lock is
    /// held for writing (or a writer waits for it), and for a query that may list more than
    /// [`READ_INLINE_CANDIDATES_MAX`] positions (its candidate list is built where the read then streams, on a
    /// thread that may block, not on an async worker).
    pub(crate) fn try_new(shared: Arc<Shared>, query: &Query, options: ReadOptions) -> Option<EventReader> {
        let (head, positions) = {
            let index = shared.index.try_read().ok()?;
            if index.candidates_at_most(query).is_some_and(|n| n > READ_INLINE_CANDIDATES_MAX) {
                return None;
            }
            Self::snapshot(&shared, &index, query, options)
        };
        Some(Self::with_positions(shared, query.clone(), options, head, positions))
    }

    /// The head and the positions to read, both taken under the index lock.
    fn snapshot(shared: &Shared, index: &super::index::Index, query: &Query, options: ReadOptions) -> (u64, Positions) {
        let head = shared.head();
        let positions = match options.range(head) {
            None => Positions::Done,
            Some((lo, hi)) => match index.candidates(query, lo, hi) {
                None => Positions::Range { lo, hi },
                Some(list) => Positions::List { back: list.len(), positions: list, front: 0 },
            },
        };
        (head, positions)
    }

    fn with_positions(
        shared: Arc<Shared>,
        query: Query,
        options: ReadOptions,
        head: u64,
        positions: Positions,
    ) -> EventReader {
        let batch_files = shared.options.read_batch_files.max(1);
        EventReader {
            shared,
            query,
            positions,
            backwards: options.backwards,
            remaining: options.limit.unwrap_or(u64::MAX),
            batch_files,
            current: Vec::new().into_iter(),
            failed: false,
            head,
        }
    }

    /// The store head when this read started; no event above it is returned.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Whether nothing is left to return (the next call of a `next_*` method would end the read).
    pub fn is_done(&self) -> bool {
        self.failed
            || self.remaining == 0
            || match &self.positions {
                Positions::Done => true,
                Positions::Range { .. } => false,
                Positions::List { front, back, .. } => front == back,
            }
    }

    fn cursor(&self) -> Cursor {
        match &self.positions {
            Positions::Range { lo, hi } => Cursor::Range { lo: *lo, hi: *hi },
            Positions::List { front, back, .. } => Cursor::List { front: *front, back: *back },
            Positions::Done => Cursor::Done,
        }
    }

    /// Goes back to `cursor` (taken by [`EventReader::cursor`] since the last change of variant other than
    /// `Range` → `Done`).
    fn restore(&mut self, cursor: Cursor) {
        match (cursor, &mut self.positions) {
            (Cursor::Range { lo, hi }, positions) => *positions = Positions::Range { lo, hi },
            (Cursor::List { front, back }, Positions::List { front: f, back: b, .. }) => (*f, *b) = (front, back),
            (Cursor::Done, _) => self.positions = Positions::Done,
            (Cursor::List { .. }, _) => unreachable!("a list of positions stays a list"),
        }
    }

    /// The next positions to read, at most `n`, in output order.
    fn take_positions(&mut self, n: usize) -> Vec<u64> {
        let n = n as u64;
        match &mut self.positions {
            Positions::Done => Vec::new(),
            Positions::Range { lo, hi } => {
                let count = (*hi - *lo + 1).min(n);
                let out: Vec<u64> = if self.backwards {
                    let out = (*hi + 1 - count..=*hi).rev().collect();
                    if *hi - *lo + 1 == count {
                        self.positions = Positions::Done;
                    } else {
                        *hi -= count;
                    }
                    out
                } else {
                    let out = (*lo..*lo + count).collect();
                    if *hi - *lo + 1 == count {
                        self.positions = Positions::Done;
                    } else {
                        *lo += count;
                    }
                    out
                };
                out
            }
            Positions::List { positions, front, back } => {
                let count = ((*back - *front) as u64).min(n) as usize;
                let out = if self.backwards {
                    let out = positions[*back - count..*back].iter().rev().copied().collect();
                    *back -= count;
                    out
                } else {
                    let out = positions[*front..*front + count].to_vec();
                    *front += count;
                    out
                };
                out
            }
        }
    }

    /// The next batch of matching events (at most `read_batch_files`), or `None` at the end.
    pub fn next_batch(&mut self) -> Option<Result<Vec<SequencedEvent>, StoreError>> {
        if self.failed {
            return None;
        }
        let rest: Vec<SequencedEvent> = self.current.by_ref().collect();
        if !rest.is_empty() {
            return Some(Ok(rest));
        }
        match self.next_views()? {
            Ok(batch) => match batch.into_events() {
                Ok(events) => Some(Ok(events)),
                Err(e) => {
                    self.failed = true;
                    Some(Err(e))
                }
            },
            Err(e) => Some(Err(e)),
        }
    }

    /// The next batch of matching events (at most `read_batch_files`) as read, borrowed through
    /// [`EventBatch::views`], or `None` at the end. Do not mix with [`EventReader::next`] on the same reader.
    pub fn next_views(&mut self) -> Option<Result<EventBatch, StoreError>> {
        if self.failed {
            return None;
        }
        while self.remaining > 0 {
            // With a small limit, read no more files than could be returned.
            let want = (self.batch_files as u64).min(self.remaining) as usize;
            let positions = self.take_positions(want);
            if positions.is_empty() {
                return None;
            }
            let mut batch = match self.shared.read_batch(&positions) {
                Ok(batch) => batch,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            };
            batch.retain_matching(&self.query, self.remaining.min(usize::MAX as u64) as usize);
            let matching = batch.len();
            self.remaining -= matching as u64;
            self.shared.counters.events_read.fetch_add(matching as u64, Ordering::Relaxed);
            if matching > 0 {
                return Some(Ok(batch));
            }
        }
        None
    }
}

impl EventReader {
    /// [`EventReader::next_views`] for a caller that must not wait (an async worker): reads the next batch only
    /// when it is at most `events_max` positions and `bytes_max` bytes of records, all in the page cache
    /// ([`CachedStep::WouldWait`] otherwise, and nothing is consumed). One batch per call, so a caller bounds the
    /// work it does by the calls it makes; the batch may hold no event when none of its candidates matched.
    pub fn next_views_cached(&mut self, events_max: usize, bytes_max: usize) -> CachedStep {
        if self.is_done() {
            return CachedStep::End;
        }
        let want = (self.batch_files as u64).min(self.remaining) as usize;
        let cursor = self.cursor();
        let positions = self.take_positions(want);
        if positions.is_empty() {
            return CachedStep::End;
        }
        if positions.len() > events_max {
            self.restore(cursor);
            return CachedStep::WouldWait;
        }
        let mut batch = match self.shared.read_batch_cached(&positions, bytes_max) {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                self.restore(cursor);
                return CachedStep::WouldWait;
            }
            Err(e) => {
                self.failed = true;
                return CachedStep::Failed(e);
            }
        };
        batch.retain_matching(&self.query, self.remaining.min(usize::MAX as u64) as usize);
        self.remaining -= batch.len() as u64;
        self.shared.counters.events_read.fetch_add(batch.len() as u64, Ordering::Relaxed);
        CachedStep::Batch(batch)
    }
}

impl Iterator for EventReader {
    type Item = Result<SequencedEvent, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.current.next() {
            return Some(Ok(e));
        }
        match self.next_batch()? {
            Ok(batch) => {
                self.current = batch.into_iter();
                self.current.next().map(Ok)
            }
            Err(e) => Some(Err(e)),
        }
    }
}
