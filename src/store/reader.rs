//! Streaming reads: positions come from the in-memory index (a snapshot at the head when the read starts), event
//! files are read through `BatchIo` a batch at a time, checked against the exact query (post-filtering), and
//! handed out in order. Memory stays bounded by one batch of events, however many match.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Shared, StoreError};
use crate::model::{Query, ReadOptions, SequencedEvent};

enum Positions {
    /// `Query::All`: every position in `[lo, hi]`, never materialised.
    Range {
        lo: u64,
        hi: u64,
    },
    /// Candidate positions, ascending; consumed from the front (or back when reading backwards).
    List {
        positions: Vec<u64>,
        front: usize,
        back: usize,
    },
    Done,
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
            let head = shared.head();
            let positions = match options.range(head) {
                None => Positions::Done,
                Some((lo, hi)) => match index.candidates(&query, lo, hi) {
                    None => Positions::Range { lo, hi },
                    Some(list) => Positions::List { back: list.len(), positions: list, front: 0 },
                },
            };
            (head, positions)
        };
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
                if front == back {
                    self.positions = Positions::Done;
                }
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
        while self.remaining > 0 {
            // With a small limit, read no more files than could be returned.
            let want = (self.batch_files as u64).min(self.remaining) as usize;
            let positions = self.take_positions(want);
            if positions.is_empty() {
                return None;
            }
            let events = match self.shared.read_events(&positions) {
                Ok(events) => events,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            };
            let mut matching: Vec<SequencedEvent> =
                events.into_iter().filter(|e| self.query.matches(&e.event_type, &e.tags)).collect();
            matching.truncate(self.remaining.min(usize::MAX as u64) as usize);
            self.remaining -= matching.len() as u64;
            self.shared.counters.events_read.fetch_add(matching.len() as u64, Ordering::Relaxed);
            if !matching.is_empty() {
                return Some(Ok(matching));
            }
        }
        None
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
