//! The in-memory index: which positions each index *file* lists, plus, where known, each event's exact type and
//! tags. Keys are the sanitised file stems of Opossum's index files, so the index loads straight from them;
//! because different types or tags can share a file stem, every answer is a candidate set that callers check
//! against the exact type and tags (post-filtering).
//!
//! Layout: a big store has about as many distinct tags as events (a tag per entity), so nothing here is allocated
//! per tag or per event. Every string (exact types, exact tags, file stems) is stored once in an append-only arena
//! and found by content through a table of `u32` ids ([`Strings`]); each event's keys are ids in flat columns; a
//! stem's position list is inline while it lists one event. (Keeping each tag as its own strings, list, map entry
//! and per-event box cost ~7 small allocations per event: seconds to load and, at a daemon's stop, to free a
//! million-event index, and most of the daemon's memory.)

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use crate::format::{event_tag_stems, event_type_stems, NamingRules};
use crate::model::{Query, QueryItem, Tag};

/// Interned byte strings: each stored once, one after another in one buffer, and found by content through a
/// table of their ids (ids count up from 0 in interning order and never change).
#[derive(Default)]
pub(crate) struct Strings {
    bytes: Vec<u8>,
    /// `ends[id]`: where string `id` ends in `bytes` (it starts where string `id - 1` ends).
    ends: Vec<u64>,
    lookup: HashTable<u32>,
    hasher: RandomState,
}

fn string_in<'a>(bytes: &'a [u8], ends: &[u64], id: u32) -> &'a [u8] {
    let id = id as usize;
    let start = if id == 0 { 0 } else { ends[id - 1] as usize };
    &bytes[start..ends[id] as usize]
}

impl Strings {
    fn with_capacity(strings: usize, bytes: usize) -> Strings {
        Strings {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(strings),
            lookup: HashTable::with_capacity(strings),
            hasher: RandomState::new(),
        }
    }

    pub fn get(&self, id: u32) -> &[u8] {
        string_in(&self.bytes, &self.ends, id)
    }

    pub fn find(&self, s: &[u8]) -> Option<u32> {
        let hash = self.hasher.hash_one(s);
        self.lookup.find(hash, |&id| self.get(id) == s).copied()
    }

    /// The id of `s`, interning it when new (then `true`). One hash, one probe.
    pub fn intern(&mut self, s: &[u8]) -> (u32, bool) {
        let Strings { bytes, ends, lookup, hasher } = self;
        let hash = hasher.hash_one(s);
        let entry = lookup.entry(
            hash,
            |&id| string_in(bytes, ends, id) == s,
            |&id| hasher.hash_one(string_in(bytes, ends, id)),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(found) => (*found.get(), false),
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                let id = u32::try_from(ends.len()).expect("fewer than 2^32 distinct strings in one index");
                bytes.extend_from_slice(s);
                ends.push(bytes.len() as u64);
                vacant.insert(id);
                (id, true)
            }
        }
    }

    /// Appends `s`, known to be new (a checkpoint's strings, each listed once): no comparison with the others.
    fn push_new(&mut self, s: &[u8]) {
        let id = u32::try_from(self.ends.len()).expect("fewer than 2^32 distinct strings in one index");
        self.bytes.extend_from_slice(s);
        self.ends.push(self.bytes.len() as u64);
        let (bytes, ends, hasher) = (&self.bytes, &self.ends, &self.hasher);
        self.lookup.insert_unique(hasher.hash_one(s), id, |&id| hasher.hash_one(string_in(bytes, ends, id)));
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.lookup.clear();
    }
}

impl std::fmt::Debug for Strings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Strings({} strings, {} bytes)", self.ends.len(), self.bytes.len())
    }
}

/// A tag as [`Index`] interns it: the key's length (u32 LE), the key, the value.
fn tag_bytes(out: &mut Vec<u8>, key: &str, value: &str) {
    out.clear();
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(value.as_bytes());
}

/// `(key, value)` of a tag interned as [`tag_bytes`] wrote it.
fn tag_parts(bytes: &[u8]) -> (&str, &str) {
    let key_len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    let (key, value) = bytes[4..].split_at(key_len);
    // Only whole `&str`s are interned, so both parts are UTF-8.
    (std::str::from_utf8(key).unwrap_or_default(), std::str::from_utf8(value).unwrap_or_default())
}

/// The stem of a tag's index file under `naming` ([`NamingRules::event_tag_stem`], from the key and value).
fn tag_stem(naming: NamingRules, key: &str, value: &str) -> String {
    format!("{}_{}", naming.sanitize(key), naming.sanitize(value))
}

fn as_str(bytes: &[u8]) -> &str {
    // Only whole `&str`s are interned as types and stems.
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// `StemLists::lists` entries: a list of one position is that position itself; `EMPTY` is no position; `MANY | i`
/// is `StemLists::many[i]`. (Positions stay far below 2^63.)
const EMPTY: u64 = u64::MAX;
const MANY: u64 = 1 << 63;

/// Position lists by index file stem (types or tags), each sorted and unique: a stem's list id is its id in
/// `names`. 8 bytes per stem while it lists one event (most stems of a big store: a tag of its own).
#[derive(Debug, Default)]
pub struct StemLists {
    names: Strings,
    lists: Vec<u64>,
    many: Vec<Vec<u64>>,
}

impl StemLists {
    fn with_capacity(stems: usize, bytes: usize) -> StemLists {
        StemLists { names: Strings::with_capacity(stems, bytes), lists: Vec::with_capacity(stems), many: Vec::new() }
    }

    /// The positions listed under `stem`, if it has a list.
    pub fn get(&self, stem: &str) -> Option<&[u64]> {
        self.names.find(stem.as_bytes()).map(|id| self.list(id))
    }

    pub fn contains_key(&self, stem: &str) -> bool {
        self.names.find(stem.as_bytes()).is_some()
    }

    /// Replaces the list of `stem` with `positions` (sorted and unique).
    pub fn set(&mut self, stem: &str, positions: Vec<u64>) {
        let id = self.id(stem);
        self.set_list(id, positions);
    }

    fn clear(&mut self) {
        self.names.clear();
        self.lists.clear();
        self.many.clear();
    }

    /// Every stem with its list (empty lists included), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u64])> + '_ {
        (0..self.lists.len() as u32).map(|id| (as_str(self.names.get(id)), self.list(id)))
    }

    /// The list id of `stem`, with an empty list when new.
    fn id(&mut self, stem: &str) -> u32 {
        let (id, new) = self.names.intern(stem.as_bytes());
        if new {
            self.lists.push(EMPTY);
        }
        id
    }

    fn name(&self, id: u32) -> &str {
        as_str(self.names.get(id))
    }

    fn list(&self, id: u32) -> &[u64] {
        let entry = &self.lists[id as usize];
        match *entry {
            EMPTY => &[],
            e if e & MANY != 0 => &self.many[(e & !MANY) as usize],
            _ => std::slice::from_ref(entry),
        }
    }

    fn set_list(&mut self, id: u32, positions: Vec<u64>) {
        let entry = self.lists[id as usize];
        let slot = (entry != EMPTY && entry & MANY != 0).then_some((entry & !MANY) as usize);
        if let Some(at) = slot {
            // Reused below, or left empty (no allocation).
            self.many[at] = Vec::new();
        }
        self.lists[id as usize] = match positions[..] {
            [] => EMPTY,
            [one] if one < MANY => one,
            _ => {
                let at = slot.unwrap_or_else(|| {
                    self.many.push(Vec::new());
                    self.many.len() - 1
                });
                self.many[at] = positions;
                MANY | at as u64
            }
        };
    }

    /// Inserts `p` into list `id`, keeping it sorted and unique; returns whether it was new.
    fn insert_at(&mut self, id: u32, p: u64) -> bool {
        match self.lists[id as usize] {
            EMPTY if p < MANY => {
                self.lists[id as usize] = p;
                true
            }
            EMPTY => {
                self.set_list(id, vec![p]);
                true
            }
            e if e & MANY != 0 => insert_sorted(&mut self.many[(e & !MANY) as usize], p),
            one if one == p => false,
            one => {
                self.set_list(id, if one < p { vec![one, p] } else { vec![p, one] });
                true
            }
        }
    }

    /// Drops positions above `head`; returns the stems whose lists changed.
    fn truncate(&mut self, head: u64) -> Vec<String> {
        let mut changed = Vec::new();
        for id in 0..self.lists.len() as u32 {
            let list = self.list(id);
            if list.last().is_some_and(|&p| p > head) {
                let kept = list.iter().copied().filter(|&p| p <= head).collect();
                self.set_list(id, kept);
                changed.push(self.name(id).to_string());
            }
        }
        changed
    }
}

/// One event's exact keys: its type id (`UNKNOWN` when not known) and its tag ids `tag_refs[tag_start ..][..
/// tag_count]`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    type_id: u32,
    tag_count: u32,
    tag_start: u64,
}

const UNKNOWN: u32 = u32::MAX;
const UNKNOWN_SLOT: Slot = Slot { type_id: UNKNOWN, tag_count: 0, tag_start: 0 };

/// An event's exact type and tags, as the index holds them.
#[derive(Clone, Copy)]
pub struct EventKeys<'a> {
    index: &'a Index,
    slot: Slot,
}

impl<'a> EventKeys<'a> {
    pub fn event_type(&self) -> &'a str {
        as_str(self.index.types.get(self.slot.type_id))
    }

    /// The tags as `(key, value)`, in the event's order.
    pub fn tags(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let index = self.index;
        let start = self.slot.tag_start as usize;
        index.tag_refs[start..start + self.slot.tag_count as usize].iter().map(move |&id| tag_parts(index.tags.get(id)))
    }

    pub fn owned_tags(&self) -> Vec<Tag> {
        self.tags().map(|(key, value)| Tag::new(key, value)).collect()
    }

    /// Whether this event matches `query` (the rules of [`Query::matches`], on the interned strings).
    pub fn matches(&self, query: &Query) -> bool {
        let item_matches = |item: &QueryItem| {
            let event_type = self.event_type();
            (item.types.is_empty() || item.types.iter().any(|t| t == event_type))
                && item.tags.iter().all(|want| self.tags().any(|(key, value)| key == want.key && value == want.value))
        };
        match query {
            Query::All => true,
            Query::Items(items) => items.iter().any(item_matches),
        }
    }
}

impl std::fmt::Debug for EventKeys<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventKeys").field("event_type", &self.event_type()).field("tags", &self.owned_tags()).finish()
    }
}

#[derive(Debug)]
pub struct Index {
    /// Positions listed by `Indices/EventType/<stem>.json`, sorted and unique.
    pub by_type: StemLists,
    /// Positions listed by `Indices/Tags/<stem>.json`, sorted and unique.
    pub by_tag: StemLists,
    /// Exact types and tags ([`tag_bytes`]), interned.
    types: Strings,
    tags: Strings,
    /// `type_lists[id]`, `tag_lists[id]`: the list (in `by_type`, `by_tag`) that type or tag `id` is filed under
    /// with `stems_naming`, so an insert sanitises each distinct type and tag once.
    type_lists: Vec<u32>,
    tag_lists: Vec<u32>,
    stems_naming: NamingRules,
    /// `slots[p - 1]`: the exact keys of event `p`, when this process has seen them.
    slots: Vec<Slot>,
    tag_refs: Vec<u32>,
    /// A reused buffer for [`tag_bytes`].
    scratch: Vec<u8>,
    /// File stems changed since the index files were last written (when `marks_dirty`).
    pub dirty_types: BTreeSet<String>,
    pub dirty_tags: BTreeSet<String>,
    /// Whether inserts mark the stems they touch dirty. Journal mode does not: its mirror keeps its own marks, and
    /// with the mirror off nothing would ever clear them (a million-tag store kept a million strings).
    pub marks_dirty: bool,
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
            by_type: StemLists::default(),
            by_tag: StemLists::default(),
            types: Strings::default(),
            tags: Strings::default(),
            type_lists: Vec::new(),
            tag_lists: Vec::new(),
            stems_naming: naming,
            slots: Vec::new(),
            tag_refs: Vec::new(),
            scratch: Vec::new(),
            dirty_types: BTreeSet::new(),
            dirty_tags: BTreeSet::new(),
            marks_dirty: true,
            max_position: 0,
            naming,
        }
    }

    /// Adds event `position` with its exact keys to the index (idempotent), marking the touched files dirty.
    pub fn insert(&mut self, position: u64, event_type: &str, tags: &[Tag]) {
        self.insert_parts(position, event_type, tags.iter().map(|t| (t.key.as_str(), t.value.as_str())));
    }

    /// [`Index::insert`] with the tags as `(key, value)` (a journal record's view: no `Tag` built per event).
    pub fn insert_parts<'t>(
        &mut self,
        position: u64,
        event_type: &str,
        tags: impl Iterator<Item = (&'t str, &'t str)>,
    ) {
        self.max_position = self.max_position.max(position);
        let type_id = self.intern_type(event_type);
        let list = match self.naming == self.stems_naming {
            true => self.type_lists[type_id as usize],
            false => self.by_type.id(&self.naming.event_type_stem(event_type)),
        };
        if self.by_type.insert_at(list, position) && self.marks_dirty {
            self.dirty_types.insert(self.by_type.name(list).to_string());
        }
        let tag_start = self.tag_refs.len() as u64;
        for (key, value) in tags {
            let tag_id = self.intern_tag(key, value);
            self.tag_refs.push(tag_id);
            let list = match self.naming == self.stems_naming {
                true => self.tag_lists[tag_id as usize],
                false => self.by_tag.id(&tag_stem(self.naming, key, value)),
            };
            if self.by_tag.insert_at(list, position) && self.marks_dirty {
                self.dirty_tags.insert(self.by_tag.name(list).to_string());
            }
        }
        let tag_count = (self.tag_refs.len() as u64 - tag_start) as u32;
        self.set_slot(position, Slot { type_id, tag_count, tag_start });
    }

    /// Records the exact keys of an event already in the position lists.
    pub fn remember(&mut self, position: u64, event_type: &str, tags: &[Tag]) {
        let type_id = self.intern_type(event_type);
        let tag_start = self.tag_refs.len() as u64;
        for tag in tags {
            let tag_id = self.intern_tag(&tag.key, &tag.value);
            self.tag_refs.push(tag_id);
        }
        self.set_slot(position, Slot { type_id, tag_count: tags.len() as u32, tag_start });
    }

    fn set_slot(&mut self, position: u64, slot: Slot) {
        let at = (position - 1) as usize;
        if self.slots.len() <= at {
            self.slots.resize(at + 1, UNKNOWN_SLOT);
        }
        // A slot set again leaves its old tag ids unreferenced in `tag_refs` (only files mode remembers keys of
        // positions it has seen before, once each).
        self.slots[at] = slot;
    }

    /// Sets the rules new positions are filed under, and says the stems already held were derived under them too
    /// (an index loaded from this store's own checkpoint), so inserts keep using them.
    pub(crate) fn set_stems_naming(&mut self, naming: NamingRules) {
        self.naming = naming;
        self.stems_naming = naming;
    }

    fn intern_type(&mut self, event_type: &str) -> u32 {
        let (id, new) = self.types.intern(event_type.as_bytes());
        if new {
            let list = self.by_type.id(&self.stems_naming.event_type_stem(event_type));
            self.type_lists.push(list);
        }
        id
    }

    fn intern_tag(&mut self, key: &str, value: &str) -> u32 {
        tag_bytes(&mut self.scratch, key, value);
        let (id, new) = self.tags.intern(&self.scratch);
        if new {
            let list = self.by_tag.id(&tag_stem(self.stems_naming, key, value));
            self.tag_lists.push(list);
        }
        id
    }

    pub fn keys(&self, position: u64) -> Option<EventKeys<'_>> {
        let slot = *self.slots.get((position.checked_sub(1)?) as usize)?;
        (slot.type_id != UNKNOWN).then_some(EventKeys { index: self, slot })
    }

    /// Appends the keys of positions `from ..= to` as ids (each position's type id, its tag count, its tag ids) to
    /// the three columns of an index checkpoint (`store::checkpoint`). Returns how many type and tag ids those
    /// reference (one more than the highest of each), or the first position whose keys are not known.
    pub(crate) fn export_keys(
        &self,
        from: u64,
        to: u64,
        type_ids: &mut Vec<u32>,
        tag_counts: &mut Vec<u32>,
        tag_refs: &mut Vec<u32>,
    ) -> Result<(u32, u32), u64> {
        let (mut types, mut tags) = (0u32, 0u32);
        for position in from..=to {
            let slot = match self.slots.get((position - 1) as usize) {
                Some(slot) if slot.type_id != UNKNOWN => *slot,
                _ => return Err(position),
            };
            type_ids.push(slot.type_id);
            tag_counts.push(slot.tag_count);
            types = types.max(slot.type_id + 1);
            let start = slot.tag_start as usize;
            let ids = &self.tag_refs[start..start + slot.tag_count as usize];
            tags = tags.max(ids.iter().max().map_or(0, |&id| id + 1));
            tag_refs.extend_from_slice(ids);
        }
        Ok((types, tags))
    }

    /// Type `id`'s name and the stem of the index file it is filed under.
    pub(crate) fn type_entry(&self, id: u32) -> (&str, &str) {
        (as_str(self.types.get(id)), self.by_type.name(self.type_lists[id as usize]))
    }

    /// Tag `id`'s key, value and the stem of the index file it is filed under.
    pub(crate) fn tag_entry(&self, id: u32) -> (&str, &str, &str) {
        let (key, value) = tag_parts(self.tags.get(id));
        (key, value, self.by_tag.name(self.tag_lists[id as usize]))
    }

    /// The index an index checkpoint holds (`store::checkpoint` decodes it): the exact types and tags with the
    /// stems they are filed under (ids in order, each distinct), and every event's keys as ids (`type_ids[p - 1]`,
    /// `tag_counts[p - 1]` tag ids in `tag_refs`, position after position; every id checked by the caller). The
    /// position lists are derived from them. Nothing is dirty, and the highest position is the last event's.
    /// Builds the strings on a second thread when one can be had.
    pub(crate) fn from_checkpoint(
        naming: NamingRules,
        types: &[(&str, &str)],
        tags: &[(&str, &str, &str)],
        type_ids: &[u32],
        tag_counts: &[u32],
        tag_refs: Vec<u32>,
    ) -> Index {
        // Two independent halves: the interned exact strings (with each event's slot), and the stems with the
        // position lists.
        let strings = || -> (Strings, Strings, Vec<Slot>) {
            // Each listed once by the checkpoint's writer (a damaged file that listed one twice would only give it
            // two ids, both filed under its stem): appended without looking for equals.
            let mut type_strings = Strings::with_capacity(types.len(), types.iter().map(|t| t.0.len()).sum());
            for (t, _) in types {
                type_strings.push_new(t.as_bytes());
            }
            let bytes = tags.iter().map(|(k, v, _)| 4 + k.len() + v.len()).sum();
            let mut tag_strings = Strings::with_capacity(tags.len(), bytes);
            let mut scratch = Vec::new();
            for (key, value, _) in tags {
                tag_bytes(&mut scratch, key, value);
                tag_strings.push_new(&scratch);
            }
            let mut slots = Vec::with_capacity(type_ids.len());
            let mut tag_start = 0u64;
            for (&type_id, &tag_count) in type_ids.iter().zip(tag_counts) {
                slots.push(Slot { type_id, tag_count, tag_start });
                tag_start += tag_count as u64;
            }
            (type_strings, tag_strings, slots)
        };
        let lists = || {
            let mut by_type = StemLists::with_capacity(types.len(), types.iter().map(|t| t.1.len()).sum());
            let type_lists: Vec<u32> = types.iter().map(|(_, stem)| by_type.id(stem)).collect();
            let mut by_tag = StemLists::with_capacity(tags.len(), tags.iter().map(|t| t.2.len()).sum());
            let tag_lists: Vec<u32> = tags.iter().map(|(_, _, stem)| by_tag.id(stem)).collect();
            let mut refs = tag_refs.iter();
            for (i, (&type_id, &count)) in type_ids.iter().zip(tag_counts).enumerate() {
                let position = i as u64 + 1;
                by_type.insert_at(type_lists[type_id as usize], position);
                for &tag_id in refs.by_ref().take(count as usize) {
                    // An event carrying two tags filed under one stem is listed once (the insert is idempotent).
                    by_tag.insert_at(tag_lists[tag_id as usize], position);
                }
            }
            (by_type, by_tag, type_lists, tag_lists)
        };
        let (strings, (by_type, by_tag, type_lists, tag_lists)) = std::thread::scope(|scope| {
            match std::thread::Builder::new().name("opossum-checkpoint-load".into()).spawn_scoped(scope, lists) {
                Ok(lists) => {
                    let strings = strings();
                    (strings, lists.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                }
                Err(e) => {
                    tracing::debug!("loading the index checkpoint on one thread (no second thread: {e})");
                    (strings(), lists())
                }
            }
        });
        let (types, tags, slots) = strings;
        Index {
            by_type,
            by_tag,
            types,
            tags,
            type_lists,
            tag_lists,
            stems_naming: naming,
            max_position: slots.len() as u64,
            slots,
            tag_refs,
            scratch: Vec::new(),
            dirty_types: BTreeSet::new(),
            dirty_tags: BTreeSet::new(),
            marks_dirty: true,
            naming,
        }
    }

    /// Forgets every tag list and every event's keys (their tag ids point into what is cleared): the tag lists are
    /// to be derived again (recovery, when a tag file could not be read).
    pub fn clear_tag_lists(&mut self) {
        self.by_tag.clear();
        self.tags.clear();
        self.tag_lists.clear();
        self.slots.clear();
        self.tag_refs.clear();
    }

    /// Drops every position above `head` (after a failed commit left uncommitted ones behind).
    pub fn truncate(&mut self, head: u64) {
        let (types, tags) = (self.by_type.truncate(head), self.by_tag.truncate(head));
        if self.marks_dirty {
            self.dirty_types.extend(types);
            self.dirty_tags.extend(tags);
        }
        self.slots.truncate(head as usize);
        let refs_end = self.slots.iter().map(|s| s.tag_start + s.tag_count as u64).max().unwrap_or(0);
        self.tag_refs.truncate(refs_end as usize);
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

    /// At least as many positions as [`Index::candidates`] returns for `query` over any range, found without
    /// building a list (a sum of list lengths: per item the shortest of its tags' lists, or its types' lists when
    /// it has no tags); `None` for `Query::All`, which has no list. Lets a caller that must not do unbounded work
    /// (an async worker) decline a broad query before paying for its candidates.
    pub fn candidates_at_most(&self, query: &Query) -> Option<usize> {
        let items = match query {
            Query::All => return None,
            Query::Items(items) => items,
        };
        let lens = |lists: &StemLists, stems: &mut dyn Iterator<Item = String>| -> Option<usize> {
            let found: Vec<usize> = stems.filter_map(|stem| lists.get(&stem).map(<[u64]>::len)).collect();
            (!found.is_empty()).then(|| found.iter().sum())
        };
        let item_bound = |item: &QueryItem| -> usize {
            if item.tags.is_empty() {
                return item.types.iter().filter_map(|t| lens(&self.by_type, &mut event_type_stems(t))).sum();
            }
            // Tags AND: an unknown tag matches nothing.
            item.tags.iter().map(|tag| lens(&self.by_tag, &mut event_tag_stems(tag)).unwrap_or(0)).min().unwrap_or(0)
        };
        Some(items.iter().map(item_bound).fold(0usize, usize::saturating_add))
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
fn stem_lists<'a>(lists: &'a StemLists, stems: impl Iterator<Item = String>) -> Option<Cow<'a, [u64]>> {
    let mut found: Vec<&'a [u64]> = stems.filter_map(|stem| lists.get(&stem)).collect();
    match found.len() {
        0 => None,
        1 => found.pop().map(Cow::Borrowed),
        _ => Some(Cow::Owned(union_sorted(&found.into_iter().map(<[u64]>::to_vec).collect::<Vec<_>>()))),
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
        assert_eq!(ix.by_tag.get("region_eu:west"), Some(&[3][..]));
        assert_eq!(ix.by_type.get("Ns:Placed"), Some(&[3][..]));
        let q = |items: Vec<QueryItem>| Query::items(items).unwrap();
        let tag = q(vec![QueryItem::tags(&[("region", "eu:west")])]);
        assert_eq!(ix.candidates(&tag, 1, 3), Some(vec![1, 2, 3]), "both files, post-filtered by the caller");
        assert_eq!(ix.candidates(&q(vec![QueryItem::types(&["Ns:Placed"])]), 2, 3), Some(vec![2, 3]));
        let both = q(vec![QueryItem::types(&["Ns:Placed"]).with_tags(&[("region", "eu:west")])]);
        assert_eq!(ix.candidates(&both, 1, 3), Some(vec![1, 2, 3]));
        assert!(!ix.keys(2).unwrap().matches(&tag));
    }

    #[test]
    fn stem_lists_stay_sorted_and_unique_through_every_shape() {
        let mut lists = StemLists::default();
        let a = lists.id("a");
        assert_eq!(lists.get("a"), Some(&[][..]));
        assert!(lists.insert_at(a, 5) && !lists.insert_at(a, 5));
        assert_eq!(lists.get("a"), Some(&[5][..]));
        assert!(lists.insert_at(a, 3) && lists.insert_at(a, 9) && lists.insert_at(a, 4) && !lists.insert_at(a, 9));
        assert_eq!(lists.get("a"), Some(&[3, 4, 5, 9][..]));
        lists.set("b", vec![7]);
        lists.set("c", vec![1, 2]);
        assert_eq!(lists.truncate(4), vec!["a".to_string(), "b".to_string()]);
        assert_eq!(
            (lists.get("a"), lists.get("b"), lists.get("c")),
            (Some(&[3, 4][..]), Some(&[][..]), Some(&[1, 2][..]))
        );
        lists.set("a", vec![2]);
        assert_eq!(lists.get("a"), Some(&[2][..]));
        assert!(lists.insert_at(a, 1));
        assert_eq!(lists.get("a"), Some(&[1, 2][..]));
        assert_eq!(lists.get("z"), None);
        assert!(lists.many.len() <= 3, "list slots are reused: {:?}", lists.many);
    }

    #[test]
    fn tag_stems_are_the_naming_rules_own() {
        for naming in [NamingRules::Unix, NamingRules::Windows] {
            for (key, value) in [("a", "b"), ("k:1", "v?w"), ("a_b", "c"), ("", "x"), ("ключ", "значение/1")]
            {
                assert_eq!(tag_stem(naming, key, value), naming.event_tag_stem(&Tag::new(key, value)));
            }
        }
    }

    #[test]
    fn truncate_drops_uncommitted_positions() {
        let mut ix = Index::default();
        ix.insert(1, "A", &[Tag::new("k", "v")]);
        ix.insert(2, "A", &[Tag::new("k", "v")]);
        ix.dirty_types.clear();
        ix.truncate(1);
        assert_eq!(ix.by_type.get("A"), Some(&[1][..]));
        assert_eq!(ix.by_tag.get("k_v"), Some(&[1][..]));
        assert!(ix.keys(2).is_none());
        assert!(ix.dirty_types.contains("A"));
        // Inserting again after the cut keeps the keys exact.
        ix.insert(2, "B", &[Tag::new("k", "w")]);
        let keys = ix.keys(2).unwrap();
        assert_eq!((keys.event_type(), keys.owned_tags()), ("B", vec![Tag::new("k", "w")]));
    }

    /// A tiny deterministic generator (no dependency for tests).
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    /// Random events (shared and own tags, colliding stems, repeated tags, no tags) against a brute-force filter of
    /// the same events: candidates are a superset of the matches, and keys post-filter them to exactly the matches.
    #[test]
    fn answers_equal_a_brute_force_filter_over_random_events() {
        let types = ["A", "B x", "B_x", "C:d", "C_d"];
        let tag_of = |rng: &mut Rng, n: u64| -> Tag {
            match rng.below(6) {
                0 => Tag::new("own", format!("{n}")),
                1 => Tag::new("a_b", "c"),
                2 => Tag::new("a", "b_c"),
                3 => Tag::new("k:1", "v"),
                4 => Tag::new("k_1", "v"),
                _ => Tag::new("s", format!("{}", rng.below(20))),
            }
        };
        let mut rng = Rng(7);
        let mut ix = Index::new(NamingRules::Windows);
        let mut events = Vec::new();
        for n in 1..=2_000u64 {
            let ty = types[rng.below(types.len() as u64) as usize].to_string();
            let tags: Vec<Tag> = (0..rng.below(4)).map(|_| tag_of(&mut rng, n)).collect();
            ix.insert(n, &ty, &tags);
            events.push((ty, tags));
        }
        // The same index after a round trip through an index checkpoint must answer the same.
        let lock = std::sync::RwLock::new(ix);
        let snap = crate::store::checkpoint::snapshot(&lock, 2_000, None).unwrap();
        let (_, mut loaded) =
            crate::store::checkpoint::decode(&crate::store::checkpoint::encode(&snap, (0, 0))).unwrap();
        loaded.set_stems_naming(NamingRules::Windows);
        let ix = lock.into_inner().unwrap();
        let pick_tag = |rng: &mut Rng| -> (String, String) {
            let n = rng.below(2_100) + 1;
            let t = tag_of(rng, n);
            (t.key, t.value)
        };
        for _ in 0..400 {
            let items: Vec<QueryItem> = (0..rng.below(3) + 1)
                .map(|_| {
                    let ts: Vec<&str> = (0..rng.below(3)).map(|_| types[rng.below(5) as usize]).collect();
                    let tags: Vec<(String, String)> = (0..rng.below(3)).map(|_| pick_tag(&mut rng)).collect();
                    let tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    if ts.is_empty() && tags.is_empty() {
                        QueryItem::types(&["A"])
                    } else {
                        QueryItem::types(&ts).with_tags(&tags)
                    }
                })
                .collect();
            let query = Query::items(items).unwrap();
            let (lo, hi) = (rng.below(2_000) + 1, rng.below(2_000) + 1);
            let (lo, hi) = (lo.min(hi), lo.max(hi));
            let expected: Vec<u64> =
                (lo..=hi).filter(|&p| query.matches(&events[p as usize - 1].0, &events[p as usize - 1].1)).collect();
            for (what, ix) in [("built", &ix), ("loaded from a checkpoint", &loaded)] {
                let candidates = ix.candidates(&query, lo, hi).unwrap();
                let everywhere = ix.candidates(&query, 1, 2_000).unwrap().len();
                let bound = ix.candidates_at_most(&query).unwrap();
                assert!(everywhere <= bound, "{what}: {query:?}: {everywhere} candidates, bound {bound}");
                assert!(candidates.windows(2).all(|w| w[0] < w[1]), "{what}: {query:?}: candidates not ascending");
                let found: Vec<u64> = candidates.into_iter().filter(|&p| ix.keys(p).unwrap().matches(&query)).collect();
                assert_eq!(found, expected, "{what}: {query:?} in {lo}..={hi}");
            }
        }
        for ix in [&ix, &loaded] {
            for (i, (ty, tags)) in events.iter().enumerate() {
                let keys = ix.keys(i as u64 + 1).unwrap();
                assert_eq!((keys.event_type(), &keys.owned_tags()), (ty.as_str(), tags));
            }
        }
        // Inserts after the load file new tags and known ones under the same stems as before.
        let (mut ix, mut loaded) = (ix, loaded);
        for (n, tag) in [(2_001, Tag::new("own", "2001")), (2_002, Tag::new("a_b", "c")), (2_003, Tag::new("k:1", "v"))]
        {
            ix.insert(n, "A", std::slice::from_ref(&tag));
            loaded.insert(n, "A", std::slice::from_ref(&tag));
            let q = Query::items(vec![QueryItem::tags(&[(tag.key.as_str(), tag.value.as_str())])]).unwrap();
            assert_eq!(ix.candidates(&q, 1, n), loaded.candidates(&q, 1, n), "{q:?}");
        }
    }
}
