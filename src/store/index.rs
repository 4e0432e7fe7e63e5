//! The in-memory index: which positions each index *file* lists, plus, where known, each event's exact type and
//! tags. Keys are the sanitised file stems of Opossum's index files, so the index loads straight from them;
//! because different types or tags can share a file stem, every answer is a candidate set that callers check
//! against the exact type and tags (post-filtering).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use std::borrow::Cow;

use crate::format::{event_tag_stems, event_type_stems, NamingRules};
use crate::model::{Query, QueryItem, Tag};

/// An event's exact type and tags, interned.
#[derive(Debug, Clone)]
pub struct EventKeys {
    pub event_type: Arc<str>,
    pub tags: Box<[Arc<Tag>]>,
}

impl EventKeys {
    pub fn matches(&self, query: &Query) -> bool {
        query.matches(&self.event_type, &self.tags)
    }
}

#[derive(Debug)]
pub struct Index {
    /// Positions listed by `Indices/EventType/<stem>.json`, sorted and unique.
    pub by_type: HashMap<String, Vec<u64>>,
    /// Positions listed by `Indices/Tags/<stem>.json`, sorted and unique.
    pub by_tag: HashMap<String, Vec<u64>>,
    /// `keys[p - 1]`: the exact keys of event `p`, when this process has seen them.
    keys: Vec<Option<EventKeys>>,
    types_interned: HashSet<Arc<str>>,
    tags_interned: HashSet<Arc<Tag>>,
    /// File stems changed since the index files were last written.
    pub dirty_types: BTreeSet<String>,
    pub dirty_tags: BTreeSet<String>,
    /// The highest position inserted so far. Positions are inserted in increasing order, so every position up to it
    /// has had its stems marked dirty (or written) already: a flush writes lists clipped to it.
    pub max_position: u64,
    /// The rules new positions are filed under (the store's, [`NamingRules::for_writing_on_this_platform`]).
    /// Lookups try every rules' stem: a store copied between platforms holds files named under either.
    pub naming: NamingRules,
}

impl Default for Index {
    fn default() -> Index {
        Index::new(NamingRules::NATIVE)
    }
}

impl Index {
    /// An empty index filing new positions under `naming`.
    pub fn new(naming: NamingRules) -> Index {
        Index {
            by_type: HashMap::new(),
            by_tag: HashMap::new(),
            keys: Vec::new(),
            types_interned: HashSet::new(),
            tags_interned: HashSet::new(),
            dirty_types: BTreeSet::new(),
            dirty_tags: BTreeSet::new(),
            max_position: 0,
            naming,
        }
    }

    /// Adds event `position` with its exact keys to the index (idempotent), marking the touched files dirty.
    pub fn insert(&mut self, position: u64, event_type: &str, tags: &[Tag]) {
        self.max_position = self.max_position.max(position);
        let stem = self.naming.event_type_stem(event_type);
        if insert_sorted(self.by_type.entry(stem.clone()).or_default(), position) {
            self.dirty_types.insert(stem);
        }
        for tag in tags {
            let stem = self.naming.event_tag_stem(tag);
            if insert_sorted(self.by_tag.entry(stem.clone()).or_default(), position) {
                self.dirty_tags.insert(stem);
            }
        }
        self.remember(position, event_type, tags);
    }

    /// Records the exact keys of an event already in the position lists.
    pub fn remember(&mut self, position: u64, event_type: &str, tags: &[Tag]) {
        let event_type = match self.types_interned.get(event_type) {
            Some(t) => t.clone(),
            None => {
                let t: Arc<str> = Arc::from(event_type);
                self.types_interned.insert(t.clone());
                t
            }
        };
        let tags = tags
            .iter()
            .map(|tag| match self.tags_interned.get(tag) {
                Some(t) => t.clone(),
                None => {
                    let t = Arc::new(tag.clone());
                    self.tags_interned.insert(t.clone());
                    t
                }
            })
            .collect();
        let slot = (position - 1) as usize;
        if self.keys.len() <= slot {
            self.keys.resize(slot + 1, None);
        }
        self.keys[slot] = Some(EventKeys { event_type, tags });
    }

    pub fn keys(&self, position: u64) -> Option<&EventKeys> {
        self.keys.get((position.checked_sub(1)?) as usize)?.as_ref()
    }

    /// The slots of positions `from ..= to` (clipped to what the index holds): each event's exact keys, or `None`
    /// where they are not known (events loaded from index files). Index checkpoints copy them (`store::checkpoint`).
    pub(crate) fn keys_between(&self, from: u64, to: u64) -> &[Option<EventKeys>] {
        let start = (from.max(1) - 1).min(self.keys.len() as u64) as usize;
        let end = to.min(self.keys.len() as u64) as usize;
        &self.keys[start..end.max(start)]
    }

    /// The index an index checkpoint holds (`store::checkpoint` decodes it): the position lists per type and tag
    /// file stem, every event's keys (`keys[p - 1]`, for positions `1 ..= keys.len()`), and the interned strings
    /// those keys share. Nothing is dirty, and the highest position is the last key's.
    pub(crate) fn from_checkpoint(
        by_type: HashMap<String, Vec<u64>>,
        by_tag: HashMap<String, Vec<u64>>,
        keys: Vec<Option<EventKeys>>,
        types_interned: HashSet<Arc<str>>,
        tags_interned: HashSet<Arc<Tag>>,
    ) -> Index {
        Index {
            by_type,
            by_tag,
            max_position: keys.len() as u64,
            keys,
            types_interned,
            tags_interned,
            dirty_types: BTreeSet::new(),
            dirty_tags: BTreeSet::new(),
            // The store's rules are set by whoever loads the checkpoint (`checkpoint::load_index`).
            naming: crate::format::NamingRules::NATIVE,
        }
    }

    /// Drops every position above `head` (after a failed commit left uncommitted ones behind).
    pub fn truncate(&mut self, head: u64) {
        for (stem, list) in self.by_type.iter_mut() {
            if list.last().is_some_and(|&p| p > head) {
                list.retain(|&p| p <= head);
                self.dirty_types.insert(stem.clone());
            }
        }
        for (stem, list) in self.by_tag.iter_mut() {
            if list.last().is_some_and(|&p| p > head) {
                list.retain(|&p| p <= head);
                self.dirty_tags.insert(stem.clone());
            }
        }
        self.keys.truncate(head as usize);
        self.max_position = self.max_position.min(head);
    }

    /// Candidate positions for `query` within `[lo, hi]`, ascending: a superset of the matching events (index
    /// files can be shared by several exact types or tags), `None` meaning "every position" for `Query::All`.
    pub fn candidates(&self, query: &Query, lo: u64, hi: u64) -> Option<Vec<u64>> {
        let items = match query {
            Query::All => return None,
            Query::Items(items) => items,
        };
        let mut lists: Vec<Vec<u64>> = items.iter().map(|item| self.item_candidates(item, lo, hi)).collect();
        Some(if lists.len() == 1 { lists.pop().unwrap_or_default() } else { union_sorted(&lists) })
    }

    /// One item's candidates. With tags, the work is proportional to the shortest tag list, never to a type's list
    /// (a million-event store's busiest type has ~850,000 positions; copying it for every condition check stalled
    /// the first commit of 64 new streams for ~0.9 s).
    fn item_candidates(&self, item: &QueryItem, lo: u64, hi: u64) -> Vec<u64> {
        let clip = |list: &[u64]| -> Vec<u64> {
            let start = list.partition_point(|&p| p < lo);
            let end = list.partition_point(|&p| p <= hi);
            list[start..end.max(start)].to_vec()
        };
        let type_lists: Vec<Cow<'_, [u64]>> =
            item.types.iter().filter_map(|t| stem_lists(&self.by_type, event_type_stems(t))).collect();
        let mut tag_lists: Vec<Cow<'_, [u64]>> = Vec::with_capacity(item.tags.len());
        for tag in &item.tags {
            match stem_lists(&self.by_tag, event_tag_stems(tag)) {
                Some(list) => tag_lists.push(list),
                // Tags AND: an unknown tag matches nothing.
                None => return Vec::new(),
            }
        }
        // Tags AND: intersect, starting with the shortest list.
        tag_lists.sort_by_key(|l| l.len());
        let Some((shortest, rest)) = tag_lists.split_first() else {
            // Types only, OR'ed: the union of their lists.
            let mut lists: Vec<Vec<u64>> = type_lists.iter().map(|l| clip(l)).collect();
            return if lists.len() == 1 { lists.pop().unwrap_or_default() } else { union_sorted(&lists) };
        };
        let mut acc = clip(shortest);
        for l in rest {
            acc.retain(|p| l.binary_search(p).is_ok());
        }
        if !item.types.is_empty() {
            acc.retain(|p| type_lists.iter().any(|l| l.binary_search(p).is_ok()));
        }
        acc
    }
}

/// The positions listed under any of `stems` (a key's stems under each naming rules, see
/// [`event_tag_stems`]): borrowed when one file lists them, merged when a store copied between platforms has files
/// named under both rules; `None` when no file does.
fn stem_lists<'a>(lists: &'a HashMap<String, Vec<u64>>, stems: impl Iterator<Item = String>) -> Option<Cow<'a, [u64]>> {
    let mut found: Vec<&'a Vec<u64>> = stems.filter_map(|stem| lists.get(&stem)).collect();
    match found.len() {
        0 => None,
        1 => found.pop().map(|list| Cow::Borrowed(list.as_slice())),
        _ => Some(Cow::Owned(union_sorted(&found.into_iter().cloned().collect::<Vec<_>>()))),
    }
}

/// Inserts `p` keeping `list` sorted and unique; returns whether it was new.
fn insert_sorted(list: &mut Vec<u64>, p: u64) -> bool {
    if list.last().is_none_or(|&last| last < p) {
        list.push(p);
        return true;
    }
    match list.binary_search(&p) {
        Ok(_) => false,
        Err(at) => {
            list.insert(at, p);
            true
        }
    }
}

/// K-way merge of sorted, unique lists into one sorted, unique list.
pub fn union_sorted(lists: &[Vec<u64>]) -> Vec<u64> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    match lists {
        [] => return Vec::new(),
        [one] => return one.clone(),
        _ => {}
    }
    let mut heap: BinaryHeap<Reverse<(u64, usize, usize)>> =
        lists.iter().enumerate().filter_map(|(i, l)| l.first().map(|&p| Reverse((p, i, 0)))).collect();
    let mut out = Vec::with_capacity(lists.iter().map(Vec::len).max().unwrap_or(0));
    while let Some(Reverse((p, list, at))) = heap.pop() {
        if out.last() != Some(&p) {
            out.push(p);
        }
        if let Some(&next) = lists[list].get(at + 1) {
            heap.push(Reverse((next, list, at + 1)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_merges_and_dedupes() {
        assert_eq!(union_sorted(&[vec![1, 4, 9], vec![2, 4, 10], vec![]]), vec![1, 2, 4, 9, 10]);
        assert_eq!(union_sorted(&[]), Vec::<u64>::new());
    }

    #[test]
    fn candidates_follow_the_query_rules() {
        let mut ix = Index::default();
        ix.insert(1, "A", &[Tag::new("c", "1")]);
        ix.insert(2, "B", &[Tag::new("c", "1"), Tag::new("s", "9")]);
        ix.insert(3, "A", &[Tag::new("c", "2")]);
        ix.insert(4, "C", &[]);
        let q = |items: Vec<QueryItem>| Query::items(items).unwrap();
        assert_eq!(ix.candidates(&q(vec![QueryItem::types(&["A", "C"])]), 1, 4), Some(vec![1, 3, 4]));
        assert_eq!(ix.candidates(&q(vec![QueryItem::tags(&[("c", "1"), ("s", "9")])]), 1, 4), Some(vec![2]));
        assert_eq!(ix.candidates(&q(vec![QueryItem::types(&["A"]).with_tags(&[("c", "1")])]), 1, 4), Some(vec![1]));
        let two = q(vec![QueryItem::types(&["C"]), QueryItem::tags(&[("c", "2")])]);
        assert_eq!(ix.candidates(&two, 1, 4), Some(vec![3, 4]));
        assert_eq!(ix.candidates(&two, 4, 4), Some(vec![4]));
        assert_eq!(ix.candidates(&q(vec![QueryItem::types(&["Z"])]), 1, 4), Some(vec![]));
        assert_eq!(ix.candidates(&Query::All, 1, 4), None);
        // Types OR within an item that also has tags; clipping applies; an unknown tag or type matches nothing.
        let ab_c1 = q(vec![QueryItem::types(&["A", "B"]).with_tags(&[("c", "1")])]);
        assert_eq!(ix.candidates(&ab_c1, 1, 4), Some(vec![1, 2]));
        assert_eq!(ix.candidates(&ab_c1, 2, 4), Some(vec![2]));
        assert_eq!(ix.candidates(&ab_c1, 1, 1), Some(vec![1]));
        assert_eq!(ix.candidates(&q(vec![QueryItem::types(&["B"]).with_tags(&[("c", "2")])]), 1, 4), Some(vec![]));
        assert_eq!(ix.candidates(&q(vec![QueryItem::types(&["A"]).with_tags(&[("c", "9")])]), 1, 4), Some(vec![]));
        assert_eq!(ix.candidates(&q(vec![QueryItem::types(&["Z"]).with_tags(&[("c", "1")])]), 1, 4), Some(vec![]));
        assert_eq!(ix.candidates(&q(vec![QueryItem::tags(&[("c", "1"), ("c", "9")])]), 1, 4), Some(vec![]));
    }

    #[test]
    fn colliding_stems_share_a_list_but_keys_stay_exact() {
        let mut ix = Index::default();
        ix.insert(1, "E", &[Tag::new("a_b", "c")]);
        ix.insert(2, "E", &[Tag::new("a", "b_c")]);
        let q = Query::items(vec![QueryItem::tags(&[("a_b", "c")])]).unwrap();
        assert_eq!(ix.candidates(&q, 1, 2), Some(vec![1, 2]));
        assert!(ix.keys(1).unwrap().matches(&q));
        assert!(!ix.keys(2).unwrap().matches(&q));
    }

    #[test]
    fn lookups_find_files_named_under_either_rules() {
        // A store written on Windows (`eu_west` stems) and then on Unix (`eu:west` stems), or the reverse.
        let mut ix = Index::new(NamingRules::Windows);
        ix.insert(1, "Ns:Placed", &[Tag::new("region", "eu:west")]);
        ix.insert(2, "Ns:Placed", &[Tag::new("region", "eu?west")]);
        assert!(ix.by_tag.contains_key("region_eu_west") && ix.by_type.contains_key("Ns_Placed"));
        ix.naming = NamingRules::Unix;
        ix.insert(3, "Ns:Placed", &[Tag::new("region", "eu:west")]);
        assert!(ix.by_tag.contains_key("region_eu:west") && ix.by_type.contains_key("Ns:Placed"));
        let q = |items: Vec<QueryItem>| Query::items(items).unwrap();
        let tag = q(vec![QueryItem::tags(&[("region", "eu:west")])]);
        assert_eq!(ix.candidates(&tag, 1, 3), Some(vec![1, 2, 3]), "both files, post-filtered by the caller");
        assert_eq!(ix.candidates(&q(vec![QueryItem::types(&["Ns:Placed"])]), 2, 3), Some(vec![2, 3]));
        let both = q(vec![QueryItem::types(&["Ns:Placed"]).with_tags(&[("region", "eu:west")])]);
        assert_eq!(ix.candidates(&both, 1, 3), Some(vec![1, 2, 3]));
        assert!(!ix.keys(2).unwrap().matches(&tag));
    }

    #[test]
    fn truncate_drops_uncommitted_positions() {
        let mut ix = Index::default();
        ix.insert(1, "A", &[Tag::new("k", "v")]);
        ix.insert(2, "A", &[Tag::new("k", "v")]);
        ix.dirty_types.clear();
        ix.truncate(1);
        assert_eq!(ix.by_type["A"], vec![1]);
        assert_eq!(ix.by_tag["k_v"], vec![1]);
        assert!(ix.keys(2).is_none());
        assert!(ix.dirty_types.contains("A"));
    }
}
