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
//!
//! Live subscribers share one read per commit: the *live tail* keeps the events of the last few commits (at most
//! [`LIVE_TAIL_EVENTS_MAX`] events and [`LIVE_TAIL_BYTES_MAX`] bytes), read once by whichever caught-up subscriber
//! asks first ([`Subscription::claim_tail_fill`]) through the same read path. A caught-up subscriber takes its
//! matches from there without blocking ([`Subscription::next_live`]), so an async task serves a commit to a
//! hundred subscribers with one blocking read instead of a hundred (a blocking-pool hand-off per subscriber per
//! commit cost 85 % of the append throughput with 100 subscribers). The tail holds only positions up to a
//! published head, and a subscriber whose `through` is below the tail's start reads its windows as in a catch-up:
//! the tail only saves work, it never decides what is delivered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{EventReader, Store, StoreError};
use crate::limits::{LIVE_TAIL_BYTES_MAX, LIVE_TAIL_EVENTS_MAX, SUBSCRIPTION_WINDOW_POSITIONS_MAX};
use crate::model::{Query, ReadOptions, SequencedEvent};

/// The writer's commit notifications: the highest acknowledged position, published after each durable group
/// commit (and after picking up another process's events). Waitable from threads and from async tasks.
pub struct CommitWatch {
    head: Mutex<u64>,
    advanced: Condvar,
    sender: watch::Sender<u64>,
    tail: LiveTail,
    counters: SubscriptionCounters,
}

/// The events of the last commits, read once for every caught-up subscriber.
struct LiveTail {
    events: Mutex<TailEvents>,
    /// Whether a fill is under way (one at a time: the others wait for it on `filled`).
    filling: AtomicBool,
    /// The tail's end after each fill (successful or not), for subscribers waiting for one.
    filled: watch::Sender<u64>,
}

/// Every event with a position in `(start, end]`, in order; `end` is never above a published head.
struct TailEvents {
    start: u64,
    end: u64,
    events: VecDeque<Arc<SequencedEvent>>,
    /// Approximate bytes the events hold (type, data, metadata, tags).
    bytes: usize,
}

impl TailEvents {
    fn reset(&mut self, at: u64) {
        self.events.clear();
        (self.start, self.end, self.bytes) = (at, at, 0);
    }
}

fn event_bytes(event: &SequencedEvent) -> usize {
    let tags: usize = event.tags.iter().map(|t| t.key.len() + t.value.len()).sum();
    event.event_type.len() + event.data.get().len() + event.metadata.get().len() + tags + 64
}

#[derive(Default)]
struct SubscriptionCounters {
    active: AtomicU64,
    delivered: AtomicU64,
    catch_up_fallbacks: AtomicU64,
}

/// Subscription counters for `stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// Subscriptions open now.
    pub active: u64,
    /// Events handed out to subscriptions (catch-up and live) since open.
    pub events_delivered: u64,
    /// Times a subscription that had caught up fell behind the live tail (a slow consumer) and went back to
    /// catch-up reads.
    pub catch_up_fallbacks: u64,
}

impl CommitWatch {
    pub(crate) fn new(head: u64) -> CommitWatch {
        CommitWatch {
            head: Mutex::new(head),
            advanced: Condvar::new(),
            sender: watch::channel(head).0,
            tail: LiveTail {
                events: Mutex::new(TailEvents { start: head, end: head, events: VecDeque::new(), bytes: 0 }),
                filling: AtomicBool::new(false),
                filled: watch::channel(head).0,
            },
            counters: SubscriptionCounters::default(),
        }
    }

    /// Subscription counters.
    pub fn stats(&self) -> SubscriptionStats {
        let c = &self.counters;
        SubscriptionStats {
            active: c.active.load(Ordering::Relaxed),
            events_delivered: c.delivered.load(Ordering::Relaxed),
            catch_up_fallbacks: c.catch_up_fallbacks.load(Ordering::Relaxed),
        }
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
    /// Whether it has caught up with the head since its last catch-up read (a later window read is a fallback).
    live: bool,
}

/// What [`Subscription::next_live`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Everything through the head was handed out.
    CaughtUp,
    /// The callback wanted no more; the tail holds more (call again, or step with `next_event`).
    Stopped,
    /// The tail ends below the head: fill it ([`Subscription::claim_tail_fill`]) or wait for the fill under way
    /// ([`Subscription::tail_fills`]).
    NeedsFill,
    /// Behind the tail (or a window read is under way): read with [`Subscription::next_event`].
    Behind,
}

/// The right to fill the live tail (one fill at a time); released, and waiting subscribers woken, when dropped.
pub struct TailFill {
    store: Arc<Store>,
}

impl TailFill {
    /// Blocking: reads the events committed after the tail's end up to the head into the tail, once for every
    /// subscriber.
    pub fn run(self) -> Result<(), StoreError> {
        let tail = &self.store.commits().tail;
        let head = self.store.head();
        let end = tail.events.lock().unwrap().end;
        if head <= end {
            return Ok(());
        }
        // Only the last LIVE_TAIL_EVENTS_MAX are kept: no use reading more (subscribers that far behind read their
        // own windows).
        let from = end.max(head.saturating_sub(LIVE_TAIL_EVENTS_MAX as u64));
        let options = ReadOptions { after: Some(from), before: Some(head + 1), ..Default::default() };
        let read: Vec<SequencedEvent> = self.store.read_published(Query::All, options).collect::<Result<_, _>>()?;
        let mut t = tail.events.lock().unwrap();
        if t.end < from {
            t.reset(from);
        }
        for event in read {
            if event.position <= t.end {
                continue;
            }
            t.bytes += event_bytes(&event);
            t.events.push_back(Arc::new(event));
        }
        t.end = t.end.max(head);
        while t.events.len() > LIVE_TAIL_EVENTS_MAX || (t.bytes > LIVE_TAIL_BYTES_MAX && t.events.len() > 1) {
            let oldest = t.events.pop_front().expect("not empty");
            t.bytes -= event_bytes(&oldest);
            t.start = oldest.position;
        }
        Ok(())
    }
}

impl Drop for TailFill {
    fn drop(&mut self) {
        let tail = &self.store.commits().tail;
        tail.filling.store(false, Ordering::Release);
        let end = tail.events.lock().unwrap().end;
        tail.filled.send_modify(|filled| *filled = end);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let watch = self.store.commits();
        if watch.counters.active.fetch_sub(1, Ordering::Relaxed) == 1 && !watch.tail.filling.load(Ordering::Acquire) {
            // The last subscriber is gone: the tail's memory is not kept for nobody.
            watch.tail.events.lock().unwrap().reset(self.store.head());
        }
    }
}

impl Subscription {
    /// Subscribes to the events matching `query` with positions above `after`.
    pub fn new(store: Arc<Store>, query: Query, after: u64) -> Result<Subscription, StoreError> {
        query.validate()?;
        store.commits().counters.active.fetch_add(1, Ordering::Relaxed);
        Ok(Subscription {
            store,
            query,
            through: after,
            last_event: None,
            window: None,
            pending: VecDeque::new(),
            live: false,
        })
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
                self.store.commits().counters.delivered.fetch_add(1, Ordering::Relaxed);
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
                self.live = true;
                return Ok(None);
            }
            if self.live && self.behind_tail(head) {
                self.live = false;
                self.store.commits().counters.catch_up_fallbacks.fetch_add(1, Ordering::Relaxed);
            }
            let to = head.min(self.through.saturating_add(SUBSCRIPTION_WINDOW_POSITIONS_MAX));
            let options = ReadOptions { after: Some(self.through), before: Some(to + 1), ..Default::default() };
            let reader = self.store.read_published(self.query.clone(), options);
            // The read snapshots the head when it starts; `to` is at most the head we saw, which only grows.
            debug_assert!(reader.head() >= to);
            self.window = Some(Window { reader, to });
        }
    }

    /// Without blocking: hands the matches in `(through, head]` to `hand_out` from the live tail, in order, until
    /// it returns false (it wants no more after the event it was given) or the head is reached.
    pub fn next_live(&mut self, mut hand_out: impl FnMut(&SequencedEvent) -> bool) -> Live {
        if !self.pending.is_empty() || self.window.is_some() {
            return Live::Behind;
        }
        let head = self.store.head();
        if self.through >= head {
            self.live = true;
            return Live::CaughtUp;
        }
        let watch = self.store.commits();
        let events: Vec<Arc<SequencedEvent>> = {
            let tail = watch.tail.events.lock().unwrap();
            // Further behind than the tail can hold (a slow consumer): its own windows, without filling the tail.
            if self.through < tail.start || head - self.through > LIVE_TAIL_EVENTS_MAX as u64 {
                drop(tail);
                if std::mem::take(&mut self.live) {
                    watch.counters.catch_up_fallbacks.fetch_add(1, Ordering::Relaxed);
                }
                return Live::Behind;
            }
            if tail.end < head {
                return Live::NeedsFill;
            }
            let first = tail.events.partition_point(|e| e.position <= self.through);
            tail.events.range(first..).take_while(|e| e.position <= head).cloned().collect()
        };
        for event in events {
            if self.query.matches(&event.event_type, &event.tags) {
                self.through = event.position;
                self.last_event = Some(event.position);
                watch.counters.delivered.fetch_add(1, Ordering::Relaxed);
                if !hand_out(&event) {
                    if self.through < head {
                        return Live::Stopped;
                    }
                    break;
                }
            }
        }
        self.through = head;
        self.live = true;
        Live::CaughtUp
    }

    /// Whether the events it needs next are no longer (or too many for) the live tail.
    fn behind_tail(&self, head: u64) -> bool {
        head - self.through > LIVE_TAIL_EVENTS_MAX as u64
            || self.through < self.store.commits().tail.events.lock().unwrap().start
    }

    /// The right to fill the live tail, unless a fill is under way (then wait on [`Subscription::tail_fills`]).
    pub fn claim_tail_fill(&self) -> Option<TailFill> {
        let tail = &self.store.commits().tail;
        (!tail.filling.swap(true, Ordering::AcqRel)).then(|| TailFill { store: self.store.clone() })
    }

    /// Changes after each fill of the live tail (mark it seen before [`Subscription::next_live`]).
    pub fn tail_fills(&self) -> watch::Receiver<u64> {
        self.store.commits().tail.filled.subscribe()
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

    fn live_positions(sub: &mut Subscription) -> (Live, Vec<u64>) {
        let mut got = Vec::new();
        let live = sub.next_live(|e| {
            got.push(e.position);
            true
        });
        (live, got)
    }

    #[test]
    fn caught_up_subscribers_share_one_fill_of_the_live_tail_and_a_slow_one_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { durability: Durability::None, ..Default::default() };
        let store = Arc::new(Store::open(dir.path(), options).unwrap());
        let only_a = Query::Items(vec![QueryItem { types: vec!["A".into()], tags: vec![] }]);
        let (mut all, mut a) = (store.subscribe(Query::All, 0).unwrap(), store.subscribe(only_a, 0).unwrap());
        assert_eq!(live_positions(&mut all), (Live::CaughtUp, vec![]));
        assert_eq!(live_positions(&mut a), (Live::CaughtUp, vec![]));
        store.append(vec![event("A", "1"), event("B", "1"), event("A", "2")], None).unwrap();
        // The tail ends below the head: one subscriber fills it, the other cannot claim a fill meanwhile.
        assert_eq!(live_positions(&mut all), (Live::NeedsFill, vec![]));
        let fill = all.claim_tail_fill().unwrap();
        assert!(a.claim_tail_fill().is_none());
        fill.run().unwrap();
        assert_eq!(live_positions(&mut all), (Live::CaughtUp, vec![1, 2, 3]));
        assert_eq!(live_positions(&mut a), (Live::CaughtUp, vec![1, 3]));
        assert_eq!((all.through(), a.through()), (3, 3));
        // A callback that wants no more stops right after its event, and the next call goes on from there.
        store.append(vec![event("A", "3"), event("A", "4")], None).unwrap();
        all.claim_tail_fill().unwrap().run().unwrap();
        assert_eq!(a.next_live(|_| false), Live::Stopped);
        assert_eq!(a.through(), 4);
        assert_eq!(live_positions(&mut a), (Live::CaughtUp, vec![5]));
        // Further behind than the tail holds: back to its own catch-up reads, counted once, and nothing missed.
        let many = (0..LIVE_TAIL_EVENTS_MAX + 1).map(|i| event("B", &i.to_string())).collect();
        store.append(many, None).unwrap();
        store.append(vec![event("A", "last")], None).unwrap();
        assert_eq!(live_positions(&mut a), (Live::Behind, vec![]));
        assert_eq!(store.commits().stats().catch_up_fallbacks, 1);
        let mut rest = Vec::new();
        while let Some(e) = a.next_event().unwrap() {
            rest.push(e.position);
        }
        assert_eq!(rest, vec![store.head()]);
        assert_eq!(store.commits().stats().active, 2);
        drop(all);
        assert_eq!(store.commits().stats().active, 1);
    }
}
