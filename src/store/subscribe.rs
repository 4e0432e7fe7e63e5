//! Subscriptions: every committed event matching a query after a position, in order, then every newly committed
//! one — with no gap and no duplicate where the catch-up ends and live delivery begins.
//!
//! Catch-up and live delivery are one mechanism. A [`Subscription`] remembers the position through which it has
//! handed out every match (`through`). Each step reads the next window
//! `(through, min(head, through + SUBSCRIPTION_WINDOW_POSITIONS_MAX)]` through [`Store::read_published`] — the
//! store's one read path (what [`Store::read`] does after looking for other writers' appends), so whatever backs
//! reads (event files today, the journal later) backs subscriptions too. Once
//! `through` reaches the head it waits for the writer's next commit notification ([`CommitWatch`]), which the
//! writer sends only after a group is durable and its head published. "Live" delivery is therefore a catch-up read
//! of the few positions the last commits added, and the handover is exact by construction: every window starts
//! right after the last one ended, and no position above the head is ever read.
//!
//! Nothing is queued per subscriber: the writer publishes one number per commit and never waits for anyone. A
//! subscriber that stops reading holds one window's candidate list and one read batch (see
//! [`crate::limits::SUBSCRIPTION_WINDOW_POSITIONS_MAX`]); when it reads again it reads larger windows until it
//! has caught up, and never misses an event.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{EventReader, Store, StoreError};
use crate::limits::SUBSCRIPTION_WINDOW_POSITIONS_MAX;
use crate::model::{Query, ReadOptions, SequencedEvent};

/// The writer's commit notifications: the highest acknowledged position, published after each durable group
/// commit (and after picking up another process's events). Waitable from threads and from async tasks.
pub struct CommitWatch {
    head: Mutex<u64>,
    advanced: Condvar,
    sender: watch::Sender<u64>,
}

impl CommitWatch {
    pub(crate) fn new(head: u64) -> CommitWatch {
        CommitWatch { head: Mutex::new(head), advanced: Condvar::new(), sender: watch::channel(head).0 }
    }

    /// Called by the writer once `head` is durable and published (`Shared::head`): only acknowledged events are
    /// ever announced.
    pub(crate) fn publish(&self, head: u64) {
        let mut current = self.head.lock().unwrap();
        if head > *current {
            *current = head;
            self.advanced.notify_all();
            self.sender.send_replace(head);
        }
    }

    /// The last published head.
    pub fn head(&self) -> u64 {
        *self.head.lock().unwrap()
    }

    /// A receiver for async tasks: `changed()` wakes after each publication (several may coalesce into one).
    pub fn receiver(&self) -> watch::Receiver<u64> {
        self.sender.subscribe()
    }

    /// Blocks until the published head is above `seen` or `timeout` passed; returns the head.
    pub fn wait_above(&self, seen: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut head = self.head.lock().unwrap();
        while *head <= seen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            head = self.advanced.wait_timeout(head, left).unwrap().0;
        }
        *head
    }
}

/// The window being read: a snapshot read of `(from, to]` and the matches of its current batch.
struct Window {
    reader: EventReader,
    to: u64,
}

/// A subscription to the events matching a query after a position. Blocking: [`Subscription::next_event`] never
/// waits for commits (it returns `None` once caught up with the head); wait with [`Subscription::wait_for_commit`]
/// (threads) or on [`Subscription::commits`] (async tasks), or use [`Subscription::next_event_wait`].
pub struct Subscription {
    store: Arc<Store>,
    query: Query,
    /// Every match at or below this position has been handed out.
    through: u64,
    /// The last event handed out, if any.
    last_event: Option<u64>,
    window: Option<Window>,
    /// Matches read but not yet handed out (at most one read batch).
    pending: VecDeque<SequencedEvent>,
}

impl Subscription {
    /// Subscribes to the events matching `query` with positions above `after`.
    pub fn new(store: Arc<Store>, query: Query, after: u64) -> Result<Subscription, StoreError> {
        query.validate()?;
        Ok(Subscription { store, query, through: after, last_event: None, window: None, pending: VecDeque::new() })
    }

    /// Every match at or below this position has been handed out: resuming after it (`after = through`) misses
    /// nothing and repeats nothing.
    pub fn through(&self) -> u64 {
        self.through
    }

    /// The position of the last event handed out.
    pub fn last_event(&self) -> Option<u64> {
        self.last_event
    }

    /// The store's current head.
    pub fn head(&self) -> u64 {
        self.store.head()
    }

    /// The writer's commit notifications, for async waiting.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.store.commits().receiver()
    }

    /// Whether everything up to the head has been handed out (so the next event needs a new commit).
    pub fn caught_up(&self) -> bool {
        self.pending.is_empty() && self.window.is_none() && self.through >= self.store.head()
    }

    /// The next matching event, reading the next window when the last one is used up, or `None` when caught up
    /// with the head (then `through` is the head this call saw). Does not wait for commits.
    pub fn next_event(&mut self) -> Result<Option<SequencedEvent>, StoreError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.through = event.position;
                self.last_event = Some(event.position);
                return Ok(Some(event));
            }
            if let Some(window) = &mut self.window {
                match window.reader.next_batch() {
                    Some(batch) => {
                        let batch = batch.inspect_err(|_| self.window = None)?;
                        self.pending.extend(batch);
                    }
                    None => {
                        self.through = self.through.max(window.to);
                        self.window = None;
                    }
                }
                continue;
            }
            let head = self.store.head();
            if self.through >= head {
                return Ok(None);
            }
            let to = head.min(self.through.saturating_add(SUBSCRIPTION_WINDOW_POSITIONS_MAX));
            let options = ReadOptions { after: Some(self.through), before: Some(to + 1), ..Default::default() };
            let reader = self.store.read_published(self.query.clone(), options);
            // The read snapshots the head when it starts; `to` is at most the head we saw, which only grows.
            debug_assert!(reader.head() >= to);
            self.window = Some(Window { reader, to });
        }
    }

    /// Without reading any event: if the index has no candidate for the query in `(through, head]`, moves
    /// `through` to the head and returns true (caught up). Only an index lookup under its read lock, so an async
    /// task may call it to skip a blocking step for a commit that added nothing this subscription wants (selective
    /// subscribers are woken by every commit). False for `"all"` or when a read is under way.
    pub fn skip_unmatched(&mut self) -> bool {
        if !self.pending.is_empty() || self.window.is_some() {
            return false;
        }
        let head = self.store.head();
        let index = self.store.shared.index.read().unwrap();
        while self.through < head {
            let to = head.min(self.through.saturating_add(SUBSCRIPTION_WINDOW_POSITIONS_MAX));
            match index.candidates(&self.query, self.through + 1, to) {
                Some(candidates) if candidates.is_empty() => self.through = to,
                _ => return false,
            }
        }
        true
    }

    /// Picks up events another process appended to the store (a .NET writer moved the ledger), so that they reach
    /// this subscription too: steps read only what the store has published. Call it now and then (the server does
    /// at each heartbeat); it costs one `stat` when nothing changed.
    pub fn notice_other_writers(&self) -> Result<(), StoreError> {
        self.store.notice_other_writers()
    }

    /// Blocks (up to `timeout`) until the store's head is above `through`; returns whether it is.
    pub fn wait_for_commit(&self, timeout: Duration) -> bool {
        self.store.commits().wait_above(self.through, timeout) > self.through
    }

    /// The next matching event, waiting up to `timeout` for new commits when caught up; `None` if none came.
    pub fn next_event_wait(&mut self, timeout: Duration) -> Result<Option<SequencedEvent>, StoreError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.next_event()? {
                return Ok(Some(event));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.wait_for_commit(left) {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Event, QueryItem, Tag};
    use crate::store::{Durability, StoreOptions};

    fn event(event_type: &str, k: &str) -> Event {
        Event::new(event_type, "{}", vec![Tag::new("k", k)]).unwrap()
    }

    #[test]
    fn catch_up_then_live_then_skips_what_does_not_match() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { durability: Durability::None, ..Default::default() };
        let store = Arc::new(Store::open(dir.path(), options).unwrap());
        store.append(vec![event("A", "1"), event("B", "1"), event("A", "2")], None).unwrap();
        let query = Query::Items(vec![QueryItem { types: vec!["A".into()], tags: vec![] }]);
        let mut sub = store.subscribe(query, 1).unwrap();
        assert_eq!(sub.next_event().unwrap().map(|e| e.position), Some(3));
        assert_eq!(sub.next_event().unwrap().map(|e| e.position), None);
        assert!(sub.caught_up());
        assert_eq!(sub.through(), 3);
        // Nothing new: the wait times out.
        assert!(sub.next_event_wait(Duration::from_millis(10)).unwrap().is_none());
        // A commit that adds nothing it wants is skipped without a read.
        store.append(vec![event("B", "3")], None).unwrap();
        assert!(sub.skip_unmatched());
        assert_eq!(sub.through(), 4);
        // A waiting subscriber wakes for a commit from another thread.
        let appender = {
            let store = store.clone();
            std::thread::spawn(move || store.append(vec![event("A", "4")], None).unwrap())
        };
        let live = sub.next_event_wait(Duration::from_secs(30)).unwrap().unwrap();
        appender.join().unwrap();
        assert_eq!((live.position, live.event_type.as_str()), (5, "A"));
        assert_eq!(sub.last_event(), Some(5));
    }
}
