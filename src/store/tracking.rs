//! What exactly-once consumers need beside the stream (docs/PROTOCOL.md, "Tracking" and "Idempotent retry"):
//! the last position of each tracking source, and a window of recent event ids → positions.
//!
//! Both are derived from the journal: each append's tracking is stored on the record of its last event, each event
//! id on its own record (`journal::format`), so they are exactly as durable as the events. [`Table::observe`]
//! rebuilds them at open from a scan of the records (today the index's full scan; an index checkpoint can store the
//! table's two plain maps beside the index instead, or scan only the records that carry extensions).
//!
//! The writer checks each append against the table in arrival order, as it checks conditions: against what is
//! committed ([`Table`]) and against the appends already accepted into the same group ([`GroupAppend`]), and
//! updates the table only once the group is committed and published ([`Table::committed`]), so `tracking.get`
//! never reports a position whose append is not acknowledged.

use std::collections::{HashMap, VecDeque};

use crate::limits::{EVENT_ID_WINDOW_MAX, TRACKING_SOURCES_MAX};
use crate::model::EventId;

use super::PreparedEvent;

/// The tracking sources' last positions and the recent event ids of one store.
#[derive(Debug)]
pub(crate) struct Table {
    sources: HashMap<String, u64>,
    /// source → the position of the record that set its last position (what an index checkpoint through P may
    /// keep: only entries set at or below P; the scan after P brings the rest).
    sources_at: HashMap<String, u64>,
    /// Every committed position up to here has been taken in (`committed`, or the scan at open).
    through: u64,
    /// id → the position of the latest event carrying it, for ids still in `window`.
    ids: HashMap<EventId, u64>,
    /// The remembered ids in position order (oldest first), at most `window_max`.
    window: VecDeque<(u64, EventId)>,
    window_max: usize,
    /// The ids and tracking of the appends accepted so far into the group being checked, so each check costs
    /// O(its own events), not O(the group).
    group: GroupSeen,
}

/// What the writer has shown [`Table`] of the current group: its first `appends` accepted appends.
#[derive(Debug, Default)]
struct GroupSeen {
    appends: usize,
    ids: HashMap<EventId, u64>,
    sources: HashMap<String, u64>,
}

impl Default for Table {
    fn default() -> Table {
        Table::with_window(EVENT_ID_WINDOW_MAX)
    }
}

/// The part of a [`Table`] an index checkpoint stores (`store::checkpoint`): `(source, last position, position of
/// the record that set it)` and `(position, event id)` in position order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TrackingSnapshot {
    pub sources: Vec<(String, u64, u64)>,
    pub ids: Vec<(u64, [u8; 16])>,
}

/// What the writer decides for one append, before its condition is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Not a replay: check and append it.
    No,
    /// A retry of the append that took `first ..= last` (every event's id, in order, at those positions).
    Of { first: u64, last: u64 },
}

/// Why an append's tracking is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TrackingRefusal {
    /// The position is not above the source's last one.
    NotAfter { last: u64 },
    /// A new source while the table holds `TRACKING_SOURCES_MAX`.
    TooManySources,
}

/// One append accepted into the group being committed: its events and its first position.
pub(crate) trait GroupAppend {
    fn events(&self) -> &[PreparedEvent];
    fn first(&self) -> u64;
}

impl GroupAppend for (&[PreparedEvent], u64) {
    fn events(&self) -> &[PreparedEvent] {
        self.0
    }
    fn first(&self) -> u64 {
        self.1
    }
}

impl Table {
    pub fn with_window(window_max: usize) -> Table {
        assert!(window_max >= 1, "the id window holds at least one id");
        Table {
            sources: HashMap::new(),
            sources_at: HashMap::new(),
            through: 0,
            ids: HashMap::new(),
            window: VecDeque::new(),
            window_max,
            group: GroupSeen::default(),
        }
    }

    /// The last position recorded for `source` (0 when it has none).
    pub fn position(&self, source: &str) -> u64 {
        self.sources.get(source).copied().unwrap_or(0)
    }

    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// Takes in one committed record, in position order (open's scan, and [`Table::committed`]).
    pub fn observe(&mut self, position: u64, event_id: Option<[u8; 16]>, tracking: Option<(&str, u64)>) {
        if let Some(id) = event_id {
            let id = EventId(id);
            debug_assert!(self.window.back().is_none_or(|&(p, _)| p < position), "ids arrive in position order");
            self.ids.insert(id, position);
            self.window.push_back((position, id));
            while self.window.len() > self.window_max {
                let (old, old_id) = self.window.pop_front().expect("non-empty");
                // The id may have been reused later (ids are not unique keys): keep its newest position.
                if self.ids.get(&old_id) == Some(&old) {
                    self.ids.remove(&old_id);
                }
            }
        }
        if let Some((source, last)) = tracking {
            // Monotonic by construction (the writer refused anything else); `max` keeps a bad journal harmless.
            let entry = self.sources.entry(source.to_string()).or_insert(0);
            if last >= *entry {
                *entry = last;
                self.sources_at.insert(source.to_string(), position);
            }
        }
    }

    /// Every position up to `head` has been taken in (open, after its scan).
    pub fn mark_through(&mut self, head: u64) {
        self.through = self.through.max(head);
    }

    /// What an index checkpoint through `through` keeps of the table: the sources whose last position was set at or
    /// below `through`, and the remembered ids at or below it — `None` while the writer has not taken in every
    /// commit up to `through` yet (it publishes the head first). Loaded with [`Table::import`] and followed by the
    /// journal's records after `through`, it gives the table a scan of the whole journal gives.
    pub fn export(&self, through: u64) -> Option<TrackingSnapshot> {
        if self.through < through {
            return None;
        }
        let mut sources: Vec<(String, u64, u64)> = self
            .sources
            .iter()
            .filter_map(|(s, &last)| {
                let at = self.sources_at.get(s).copied().unwrap_or(0);
                (at <= through).then(|| (s.clone(), last, at))
            })
            .collect();
        sources.sort_by_key(|&(_, _, at)| at);
        let ids = self.window.iter().filter(|&&(p, _)| p <= through).map(|&(p, id)| (p, id.0)).collect();
        Some(TrackingSnapshot { sources, ids })
    }

    /// Takes in what [`Table::export`] kept, before the records after the checkpoint are observed.
    pub fn import(&mut self, snapshot: &TrackingSnapshot) {
        for (source, last, at) in &snapshot.sources {
            self.observe(*at, None, Some((source, *last)));
        }
        for &(position, id) in &snapshot.ids {
            self.observe(position, Some(id), None);
        }
    }

    /// Takes in a group the writer has committed and published.
    pub fn committed<'a>(&mut self, group: impl IntoIterator<Item = (&'a [PreparedEvent], u64)>) {
        for (events, first) in group {
            self.through = self.through.max(first + events.len() as u64 - 1);
            for (i, e) in events.iter().enumerate() {
                if e.id.is_some() || e.tracking.is_some() {
                    let tracking = e.tracking.as_ref().map(|t| (t.source.as_str(), t.position));
                    self.observe(first + i as u64, e.id.map(|id| id.0), tracking);
                }
            }
        }
    }

    /// Catches up with the appends accepted into the current group: `group` is the one the writer is checking,
    /// which only grows; an empty one starts a new group.
    fn see_group<G: GroupAppend>(&mut self, group: &[G]) {
        let seen = &mut self.group;
        if group.len() < seen.appends || group.is_empty() {
            seen.appends = 0;
            seen.ids.clear();
            seen.sources.clear();
        }
        for g in &group[seen.appends..] {
            for (i, e) in g.events().iter().enumerate() {
                if let Some(id) = e.id {
                    seen.ids.insert(id, g.first() + i as u64);
                }
            }
            if let Some(t) = g.events().last().and_then(|e| e.tracking.as_ref()) {
                seen.sources.insert(t.source.clone(), t.position);
            }
        }
        seen.appends = group.len();
    }

    /// Starts checking a new group (the writer calls this before its first check of each group).
    pub fn begin_group(&mut self) {
        self.see_group::<(&[PreparedEvent], u64)>(&[]);
    }

    /// Whether `events` repeat, in order, the events of an earlier append (committed, or accepted earlier in this
    /// group): every event carries an id and the ids sit at consecutive positions `first ..`, with `first = after +
    /// 1` when the append's condition names `after`. An append with any event lacking an id is never a replay.
    pub fn replay<G: GroupAppend>(&mut self, events: &[PreparedEvent], after: Option<u64>, group: &[G]) -> Replay {
        let Some(first_id) = events.first().and_then(|e| e.id) else { return Replay::No };
        if events.iter().any(|e| e.id.is_none()) {
            return Replay::No;
        }
        self.see_group(group);
        // The newest event carrying an id: the group's (later) wins over the committed ones.
        let newest = |id: &EventId| self.group.ids.get(id).or_else(|| self.ids.get(id)).copied();
        // Each event must be the one at its position: its id's newest position, or (an id reused since) an older
        // one still at that position.
        let at = |id: &EventId, position: u64| {
            newest(id) == Some(position) || self.ids.get(id) == Some(&position) || {
                // Reused inside the group: find the accepted append holding `position`.
                group
                    .iter()
                    .find(|g| (g.first()..g.first() + g.events().len() as u64).contains(&position))
                    .is_some_and(|g| g.events()[(position - g.first()) as usize].id == Some(*id))
            }
        };
        // Right after `after` when the condition names it; else where the first id last occurred.
        let first = match after {
            Some(a) => match a.checked_add(1) {
                Some(first) if at(&first_id, first) => first,
                _ => return Replay::No,
            },
            None => match newest(&first_id) {
                Some(first) => first,
                None => return Replay::No,
            },
        };
        for (i, e) in events.iter().enumerate().skip(1) {
            if !at(&e.id.expect("checked above"), first + i as u64) {
                return Replay::No;
            }
        }
        Replay::Of { first, last: first + events.len() as u64 - 1 }
    }

    /// Whether an append whose last event carries `tracking` (source, position) may commit after the committed
    /// table and the group's accepted appends.
    pub fn check_tracking<G: GroupAppend>(
        &mut self,
        source: &str,
        position: u64,
        group: &[G],
    ) -> Result<(), TrackingRefusal> {
        self.see_group(group);
        let last = self.group.sources.get(source).or_else(|| self.sources.get(source)).copied();
        match last {
            Some(last) if position <= last => Err(TrackingRefusal::NotAfter { last }),
            Some(_) => Ok(()),
            None if position == 0 => Err(TrackingRefusal::NotAfter { last: 0 }),
            None => {
                // A new source: count this group's other new ones too.
                let new = self.group.sources.keys().filter(|s| !self.sources.contains_key(*s)).count();
                match self.sources.len() + new < TRACKING_SOURCES_MAX {
                    true => Ok(()),
                    false => Err(TrackingRefusal::TooManySources),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Event, Tracking};

    fn prepared(ids: &[Option<u128>], tracking: Option<(&str, u64)>) -> crate::store::PreparedBatch {
        let events: Vec<Event> = ids
            .iter()
            .map(|id| {
                let mut e = Event::new("T", "{}", vec![]).unwrap();
                e.id = id.map(|n| EventId(n.to_be_bytes()));
                e
            })
            .collect();
        super::super::prepare(events, None, tracking.map(|(s, p)| Tracking::new(s, p)).as_ref()).unwrap()
    }

    const NONE: &[(&[PreparedEvent], u64)] = &[];

    fn id(n: u128) -> Option<[u8; 16]> {
        Some(n.to_be_bytes())
    }

    #[test]
    fn tracking_must_move_forward_against_committed_and_group() {
        let mut t = Table::default();
        t.observe(1, None, Some(("orders", 5)));
        assert_eq!(t.position("orders"), 5);
        assert_eq!(t.position("other"), 0);
        assert_eq!(t.check_tracking("orders", 5, NONE), Err(TrackingRefusal::NotAfter { last: 5 }));
        assert_eq!(t.check_tracking("orders", 4, NONE), Err(TrackingRefusal::NotAfter { last: 5 }));
        assert_eq!(t.check_tracking("orders", 6, NONE), Ok(()));
        assert_eq!(t.check_tracking("new", 0, NONE), Err(TrackingRefusal::NotAfter { last: 0 }));
        // A group with two appends for one source: the second sees the first.
        let a = prepared(&[None], Some(("orders", 9)));
        let group: Vec<(&[PreparedEvent], u64)> = vec![(&a[..], 2)];
        assert_eq!(t.check_tracking("orders", 9, &group), Err(TrackingRefusal::NotAfter { last: 9 }));
        assert_eq!(t.check_tracking("orders", 7, &group), Err(TrackingRefusal::NotAfter { last: 9 }));
        assert_eq!(t.check_tracking("orders", 10, &group), Ok(()));
        // Only published groups change the table.
        assert_eq!(t.position("orders"), 5);
        t.committed(group.iter().copied());
        assert_eq!(t.position("orders"), 9);
    }

    #[test]
    fn sources_are_bounded_counting_the_group() {
        let mut t = Table::default();
        for n in 0..TRACKING_SOURCES_MAX - 1 {
            t.observe(n as u64 + 1, None, Some((&format!("s{n}"), 1)));
        }
        assert_eq!(t.check_tracking("s0", 2, NONE), Ok(()));
        assert_eq!(t.check_tracking("last", 1, NONE), Ok(()));
        let a = prepared(&[None], Some(("last", 1)));
        let group: Vec<(&[PreparedEvent], u64)> = vec![(&a[..], 1)];
        assert_eq!(t.check_tracking("one-more", 1, &group), Err(TrackingRefusal::TooManySources));
        assert_eq!(t.check_tracking("last", 2, &group), Ok(()));
    }

    #[test]
    fn replays_need_every_id_in_order_right_after_after() {
        let mut t = Table::default();
        // Committed: positions 4, 5, 6 carry ids 1, 2, 3.
        for (p, n) in [(4, 1), (5, 2), (6, 3)] {
            t.observe(p, id(n), None);
        }
        let same = prepared(&[Some(1), Some(2), Some(3)], None);
        assert_eq!(t.replay(&same, None, NONE), Replay::Of { first: 4, last: 6 });
        assert_eq!(t.replay(&same, Some(3), NONE), Replay::Of { first: 4, last: 6 });
        assert_eq!(t.replay(&same, Some(2), NONE), Replay::No, "not right after `after`");
        assert_eq!(t.replay(&prepared(&[Some(1), Some(3)], None), None, NONE), Replay::No, "a gap");
        assert_eq!(t.replay(&prepared(&[Some(2), Some(1)], None), None, NONE), Replay::No, "another order");
        assert_eq!(t.replay(&prepared(&[Some(1), None], None), None, NONE), Replay::No, "an event without id");
        assert_eq!(t.replay(&prepared(&[Some(9)], None), None, NONE), Replay::No, "unknown id");
        assert_eq!(t.replay(&prepared(&[Some(2), Some(3)], None), Some(4), NONE), Replay::Of { first: 5, last: 6 });
        // In the group: an accepted append at 7..=8 with ids 7, 8.
        let a = prepared(&[Some(7), Some(8)], None);
        let group: Vec<(&[PreparedEvent], u64)> = vec![(&a[..], 7)];
        assert_eq!(t.replay(&prepared(&[Some(7), Some(8)], None), Some(6), &group), Replay::Of { first: 7, last: 8 });
        assert_eq!(t.replay(&prepared(&[Some(3), Some(7)], None), None, &group), Replay::Of { first: 6, last: 7 });
        assert_eq!(t.replay(&prepared(&[Some(7), Some(8)], None), None, NONE), Replay::No, "not committed yet");
        // An id reused since (committed at 4, again in the group at 9): with `after`, the older occurrence counts.
        let b = prepared(&[Some(1)], None);
        let group: Vec<(&[PreparedEvent], u64)> = vec![(&a[..], 7), (&b[..], 9)];
        assert_eq!(t.replay(&same, Some(3), &group), Replay::Of { first: 4, last: 6 });
        assert_eq!(t.replay(&prepared(&[Some(1)], None), None, &group), Replay::Of { first: 9, last: 9 });
        assert_eq!(t.replay(&prepared(&[Some(8), Some(1)], None), Some(7), &group), Replay::Of { first: 8, last: 9 });
    }

    fn journal_store(root: &std::path::Path) -> super::super::Store {
        let options = super::super::StoreOptions {
            commit: super::super::CommitMode::Journal,
            mirror: super::super::MirrorMode::Off,
            durability: super::super::Durability::None,
            ..Default::default()
        };
        super::super::Store::open(root, options).unwrap()
    }

    #[test]
    fn the_writer_answers_concurrent_repeats_once_and_the_table_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(journal_store(dir.path()));
        let ids: Vec<EventId> = (0..3).map(|_| EventId::random()).collect();
        let events =
            || -> Vec<Event> { ids.iter().map(|id| Event::new("T", "{}", vec![]).unwrap().with_id(*id)).collect() };
        // Many threads at once: their appends share group commits, so some repeats are of an append accepted in
        // the same group, answered only once that group is durable.
        let answers: Vec<super::super::Appended> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|n| {
                    let (store, events) = (store.clone(), events());
                    s.spawn(move || store.append_tracked(events, None, Some(Tracking::new(format!("w{}", n % 2), 1))))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        assert!(answers.iter().all(|a| (a.first, a.last) == (1, 3)), "{answers:?}");
        assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1);
        assert_eq!(store.head(), 3);
        // Only the committed append's tracking counts (replays keep nothing of theirs).
        let tracked: Vec<u64> = ["w0", "w1"].iter().map(|s| store.tracking_position(s)).collect();
        assert_eq!(tracked.iter().sum::<u64>(), 1, "{tracked:?}");
        store.append_tracked(vec![Event::new("T", "{}", vec![]).unwrap()], None, Some(Tracking::new("w9", 7))).unwrap();
        drop(store);
        let store = journal_store(dir.path());
        assert_eq!(store.tracking_position("w9"), 7);
        assert_eq!(store.append(events(), None).unwrap(), super::super::Appended { first: 1, last: 3, replayed: true });
        let refused =
            store.append_tracked(vec![Event::new("T", "{}", vec![]).unwrap()], None, Some(Tracking::new("w9", 7)));
        assert!(matches!(refused, Err(super::super::StoreError::TrackingConflict { last: 7, .. })), "{refused:?}");
        assert_eq!(store.head(), 4);
    }

    #[test]
    fn an_index_checkpoint_keeps_what_was_set_at_or_below_its_position() {
        let mut t = Table::with_window(8);
        t.observe(1, id(1), Some(("a", 5)));
        t.observe(2, id(2), Some(("b", 3)));
        t.observe(3, id(3), Some(("a", 9)));
        assert!(t.export(2).is_none(), "nothing taken in through 2 yet");
        t.mark_through(3);
        assert!(t.export(4).is_none(), "position 4 not taken in yet");
        let kept = t.export(2).unwrap();
        let mut u = Table::with_window(8);
        u.import(&kept);
        // `a` was last set at position 3: the scan after the checkpoint brings it.
        assert_eq!((u.position("a"), u.position("b")), (0, 3));
        assert_eq!(u.window.len(), 2);
        u.observe(3, id(3), Some(("a", 9)));
        assert_eq!((u.position("a"), u.position("b")), (9, 3));
        assert_eq!(u.window, t.window);
        assert_eq!(u.replay(&prepared(&[Some(2), Some(3)], None), Some(1), NONE), Replay::Of { first: 2, last: 3 });
    }

    #[test]
    fn the_window_forgets_the_oldest_ids_but_keeps_reused_ones() {
        let mut t = Table::with_window(3);
        t.observe(1, id(1), None);
        t.observe(2, id(2), None);
        t.observe(3, id(1), None); // id 1 appended again: the newest position counts
        t.observe(4, id(4), None);
        assert_eq!(t.window.len(), 3);
        assert_eq!(t.replay(&prepared(&[Some(1)], None), None, NONE), Replay::Of { first: 3, last: 3 });
        t.observe(5, id(5), None);
        assert_eq!(t.replay(&prepared(&[Some(2)], None), None, NONE), Replay::No, "left the window");
        t.observe(6, id(6), None);
        assert_eq!(t.replay(&prepared(&[Some(1)], None), None, NONE), Replay::No);
        assert_eq!(t.ids.len(), 3);
    }
}
