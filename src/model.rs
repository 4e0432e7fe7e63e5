//! DCB domain types and matching rules. Pure: no I/O, no file names.
//!
//! Matching (design.md §3.2): a query is `All` or one or more items, OR'ed. Within an item the event's type is
//! one of `types` (when given) AND the event carries every tag in `tags` (when given); keys and values are
//! compared exactly. An item with neither types nor tags is rejected at construction.

use std::borrow::Borrow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::limits::JSON_DEPTH_MAX;

/// A JSON value kept as its (minified) text; the store never interprets payloads.
pub type RawJson = Box<RawValue>;

pub use crate::limits::{EVENT_TYPE_BYTES_MAX, TAG_BYTES_MAX};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

impl Tag {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Tag {
        Tag { key: key.into(), value: value.into() }
    }
}

/// An event as a client hands it to `append`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: RawJson,
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// Opossum's metadata object (`timestamp`, `correlationId`, ...). The store fills in `timestamp` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<RawJson>,
    /// The event's identity, chosen by the client, for idempotent retries (docs/PROTOCOL.md, "Idempotent
    /// retry"). Kept in the journal record only: the Opossum event file has no place for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<EventId>,
}

impl Event {
    /// Convenience constructor for tests and tools; `data` must be valid JSON text.
    pub fn new(event_type: &str, data: &str, tags: Vec<Tag>) -> Result<Event, ModelError> {
        let data = RawValue::from_string(data.to_string())
            .map_err(|e| ModelError::InvalidEvent(format!("data is not valid JSON: {e}")))?;
        Ok(Event { event_type: event_type.to_string(), data, tags, metadata: None, id: None })
    }

    pub fn with_id(mut self, id: EventId) -> Event {
        self.id = Some(id);
        self
    }
}

/// An event borrowed from the bytes it was parsed from (a request line): what the store's append takes, so a
/// request's events are validated and encoded without being copied into owned strings first. Parses exactly as
/// [`Event`] does (same fields, same refusals); [`Event::as_ref`] lends an owned event as one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRef<'a> {
    #[serde(rename = "type", borrow)]
    pub event_type: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub data: &'a RawValue,
    #[serde(default, borrow)]
    pub tags: Vec<TagRef<'a>>,
    #[serde(default, borrow)]
    pub metadata: Option<&'a RawValue>,
    #[serde(default)]
    pub id: Option<EventId>,
}

/// A [`Tag`] borrowed from the bytes it was parsed from (see [`EventRef`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagRef<'a> {
    #[serde(borrow)]
    pub key: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub value: std::borrow::Cow<'a, str>,
}

impl Event {
    /// This event as an [`EventRef`] borrowing its strings.
    pub fn as_ref(&self) -> EventRef<'_> {
        EventRef {
            event_type: std::borrow::Cow::Borrowed(&self.event_type),
            data: &self.data,
            tags: self
                .tags
                .iter()
                .map(|t| TagRef {
                    key: std::borrow::Cow::Borrowed(&t.key),
                    value: std::borrow::Cow::Borrowed(&t.value),
                })
                .collect(),
            metadata: self.metadata.as_deref(),
            id: self.id,
        }
    }
}

/// A client-chosen event identity: a UUID (any version), 16 bytes. Wire form: the canonical 36-character text
/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (hex digits in either case; written lower case).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub [u8; 16]);

impl EventId {
    /// Parses the canonical text form; anything else (braces, no dashes, URNs) is refused.
    pub fn parse(text: &str) -> Result<EventId, ModelError> {
        let bad =
            || ModelError::InvalidEvent(format!("event id {:?} is not a UUID (8-4-4-4-12 hex digits)", short(text)));
        let b = text.as_bytes();
        if b.len() != 36 {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(bad());
                }
                continue;
            }
            let v = (c as char).to_digit(16).ok_or_else(bad)? as u8;
            out[nibbles / 2] |= if nibbles.is_multiple_of(2) { v << 4 } else { v };
            nibbles += 1;
        }
        debug_assert_eq!(nibbles, 32);
        Ok(EventId(out))
    }

    /// A random (version 4) id, for clients and tests that have no id of their own.
    pub fn random() -> EventId {
        use std::hash::{BuildHasher, Hasher};
        let mut out = [0u8; 16];
        for half in out.chunks_mut(8) {
            // `RandomState` is seeded from the OS per process and per instance: enough for ids, not for secrets.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
            );
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
        out[6] = (out[6] & 0x0f) | 0x40;
        out[8] = (out[8] & 0x3f) | 0x80;
        EventId(out)
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventId({self})")
    }
}

impl std::str::FromStr for EventId {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<EventId, ModelError> {
        EventId::parse(s)
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<EventId, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        EventId::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An append's consumer checkpoint (docs/PROTOCOL.md, "Tracking"): the append is the effect of `source` up to
/// `position`, committed with its events, and refused unless `position` is above the source's last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracking {
    pub source: String,
    pub position: u64,
}

impl Tracking {
    pub fn new(source: impl Into<String>, position: u64) -> Tracking {
        Tracking { source: source.into(), position }
    }
}

/// A tracking source name: 1..=`TRACKING_SOURCE_BYTES_MAX` bytes, no NUL or control characters (it is a key in
/// logs and error messages, never a file name).
pub fn validate_tracking_source(source: &str) -> Result<(), ModelError> {
    if source.is_empty() {
        return Err(ModelError::InvalidEvent("tracking source must not be empty".into()));
    }
    if source.chars().any(char::is_control) {
        return Err(ModelError::InvalidEvent(format!(
            "tracking source {:?} contains a control character",
            short(source)
        )));
    }
    Ok(())
}

/// An event read back from the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SequencedEvent {
    pub position: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: RawJson,
    pub tags: Vec<Tag>,
    pub metadata: RawJson,
}

/// One OR-branch of a query. Build it with [`QueryItem::new`], which rejects an item with neither types nor tags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryItem {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

impl QueryItem {
    pub fn new(types: Vec<String>, tags: Vec<Tag>) -> Result<QueryItem, ModelError> {
        let item = QueryItem { types, tags };
        item.validate()?;
        Ok(item)
    }

    pub fn types(types: &[&str]) -> QueryItem {
        QueryItem { types: types.iter().map(|t| t.to_string()).collect(), tags: Vec::new() }
    }

    pub fn tags(tags: &[(&str, &str)]) -> QueryItem {
        QueryItem { types: Vec::new(), tags: tags.iter().map(|(k, v)| Tag::new(*k, *v)).collect() }
    }

    pub fn with_tags(mut self, tags: &[(&str, &str)]) -> QueryItem {
        self.tags.extend(tags.iter().map(|(k, v)| Tag::new(*k, *v)));
        self
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        if self.types.is_empty() && self.tags.is_empty() {
            return Err(ModelError::InvalidQuery("a query item needs at least one type or tag".into()));
        }
        // Queries create no files, so they may name anything an existing (.NET-written) store could hold;
        // only emptiness is an error.
        if self.types.iter().any(|t| t.is_empty()) {
            return Err(ModelError::InvalidQuery("a query type must not be empty".into()));
        }
        if self.tags.iter().any(|t| t.key.is_empty()) {
            return Err(ModelError::InvalidQuery("a query tag key must not be empty".into()));
        }
        Ok(())
    }

    /// `tags` may be plain or shared (`Arc<Tag>`) tags.
    pub fn matches<T: Borrow<Tag>>(&self, event_type: &str, tags: &[T]) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
            && self.tags.iter().all(|want| tags.iter().any(|have| have.borrow() == want))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    All,
    Items(Vec<QueryItem>),
}

impl Query {
    pub fn items(items: Vec<QueryItem>) -> Result<Query, ModelError> {
        let q = Query::Items(items);
        q.validate()?;
        Ok(q)
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            Query::All => Ok(()),
            Query::Items(items) if items.is_empty() => {
                Err(ModelError::InvalidQuery("a query needs at least one item (or use \"all\")".into()))
            }
            Query::Items(items) => items.iter().try_for_each(QueryItem::validate),
        }
    }

    pub fn matches<T: Borrow<Tag>>(&self, event_type: &str, tags: &[T]) -> bool {
        match self {
            Query::All => true,
            Query::Items(items) => items.iter().any(|i| i.matches(event_type, tags)),
        }
    }
}

/// Wire form: the string `"all"` or `{"items":[...]}`.
impl Serialize for Query {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct ItemsRef<'a> {
            items: &'a [QueryItem],
        }
        match self {
            Query::All => s.serialize_str("all"),
            Query::Items(items) => ItemsRef { items }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Query {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Query, D::Error> {
        // A visitor rather than an untagged enum: the errors of the items (an unknown field, a bad type) reach the
        // client as they are, with their position, instead of "did not match any variant".
        struct QueryVisitor;
        impl<'de> serde::de::Visitor<'de> for QueryVisitor {
            type Value = Query;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"all\" or {\"items\":[..]}")
            }
            fn visit_str<E: serde::de::Error>(self, w: &str) -> Result<Query, E> {
                match w {
                    "all" => Ok(Query::All),
                    _ => Err(E::custom(format!("unknown query {:?}: use \"all\" or {{\"items\":[..]}}", short(w)))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Query, A::Error> {
                let mut items: Option<Vec<QueryItem>> = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "items" if items.is_none() => items = Some(map.next_value()?),
                        "items" => return Err(serde::de::Error::duplicate_field("items")),
                        other => return Err(serde::de::Error::unknown_field(short(other), &["items"])),
                    }
                }
                let items = items.ok_or_else(|| serde::de::Error::missing_field("items"))?;
                Query::items(items).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_any(QueryVisitor)
    }
}

/// Client input quoted in a deserialisation error: a short prefix.
fn short(s: &str) -> &str {
    let mut cut = s.len().min(64);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// The DCB condition: fail if any event matching `fail_if_events_match` has a position greater than `after`
/// (any position when `after` is `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendCondition {
    pub fail_if_events_match: Query,
    #[serde(default)]
    pub after: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadOptions {
    /// Exclusive lower bound.
    #[serde(default)]
    pub after: Option<u64>,
    /// Exclusive upper bound.
    #[serde(default)]
    pub before: Option<u64>,
    #[serde(default)]
    pub limit: Option<u64>,
    /// Newest first; with `limit` N this gives the newest N.
    #[serde(default)]
    pub backwards: bool,
}

impl ReadOptions {
    /// The inclusive position range `[lo, hi]` these bounds allow in a store whose head is `head`, or `None`.
    pub fn range(&self, head: u64) -> Option<(u64, u64)> {
        let lo = self.after.map_or(1, |a| a.saturating_add(1)).max(1);
        let hi = self.before.map_or(head, |b| b.saturating_sub(1)).min(head);
        (lo <= hi).then_some((lo, hi))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    #[error("invalid query: {0}")]
    InvalidQuery(String),
}

pub fn validate_event_type(t: &str) -> Result<(), ModelError> {
    if t.trim().is_empty() {
        return Err(ModelError::InvalidEvent("event type must not be empty".into()));
    }
    if t.len() > EVENT_TYPE_BYTES_MAX {
        return Err(ModelError::InvalidEvent(format!(
            "event type is {} bytes; the limit is {EVENT_TYPE_BYTES_MAX}",
            t.len()
        )));
    }
    if t.contains(['\0', '/', '\\']) || t.chars().any(char::is_control) {
        return Err(ModelError::InvalidEvent(format!(
            "event type {t:?} contains '/', '\\\\', NUL or a control character"
        )));
    }
    if t == "." || t == ".." {
        return Err(ModelError::InvalidEvent(format!("event type {t:?} is not a usable name")));
    }
    Ok(())
}

/// Tags become file names (`Indices/Tags/<key>_<value>.json`), so path separators, NUL, control characters
/// and dot-only names are refused rather than sanitised into surprises.
pub fn validate_tag(tag: &Tag) -> Result<(), ModelError> {
    validate_tag_parts(&tag.key, &tag.value)
}

/// [`validate_tag`] of a tag given as its key and value.
pub fn validate_tag_parts(key: &str, value: &str) -> Result<(), ModelError> {
    for (what, s) in [("key", key), ("value", value)] {
        if s.is_empty() {
            return Err(ModelError::InvalidEvent(format!("tag {what} must not be empty")));
        }
        if s.contains(['\0', '/', '\\']) || s.chars().any(char::is_control) {
            return Err(ModelError::InvalidEvent(format!(
                "tag {what} {s:?} contains '/', '\\\\', NUL or a control character"
            )));
        }
        if s.chars().all(|c| c == '.') {
            return Err(ModelError::InvalidEvent(format!("tag {what} {s:?} is not a usable name")));
        }
    }
    if key.len() + value.len() > TAG_BYTES_MAX {
        return Err(ModelError::InvalidEvent(format!("tag {key}={value} is longer than {TAG_BYTES_MAX} bytes")));
    }
    Ok(())
}

pub fn validate_event(e: &Event) -> Result<(), ModelError> {
    validate_event_type(&e.event_type)?;
    e.tags.iter().try_for_each(validate_tag)?;
    check_json_depth("data", e.data.get())?;
    if let Some(m) = &e.metadata {
        check_json_depth("metadata", m.get())?;
    }
    if let Some(m) = &e.metadata {
        if !m.get().trim_start().starts_with('{') {
            return Err(ModelError::InvalidEvent("metadata must be a JSON object".into()));
        }
    }
    Ok(())
}

/// The error [`check_json_depth`] gives for text nested deeper than [`JSON_DEPTH_MAX`].
pub fn json_too_deep(what: &str) -> ModelError {
    ModelError::InvalidEvent(format!("{what} is nested deeper than {JSON_DEPTH_MAX} levels of arrays and objects"))
}

/// Refuses JSON text nested deeper than [`JSON_DEPTH_MAX`]: a byte scan counting open arrays and objects outside
/// strings, without recursion, so no depth can exhaust the stack. `text` is already valid JSON.
pub fn check_json_depth(what: &str, text: &str) -> Result<(), ModelError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > JSON_DEPTH_MAX {
                    return Err(json_too_deep(what));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_is_limited_without_recursion() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(check_json_depth("data", &nested(JSON_DEPTH_MAX)).is_ok());
        let err = check_json_depth("data", &nested(JSON_DEPTH_MAX + 1)).unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{err}");
        assert!(check_json_depth("data", &nested(1_000_000)).is_err());
        // Brackets inside strings, escaped quotes included, are not nesting.
        let text = format!(r#"{{"a":"\"{}"}}"#, "[".repeat(200));
        assert!(check_json_depth("data", &text).is_ok(), "{text}");
    }

    #[test]
    fn event_ids_are_canonical_uuids() {
        let text = "6ba7b810-9dad-41d1-80b4-00c04fd430c8";
        let id = EventId::parse(text).unwrap();
        assert_eq!(id.0[0..2], [0x6b, 0xa7]);
        assert_eq!(id.to_string(), text);
        assert_eq!(EventId::parse(&text.to_uppercase()).unwrap(), id);
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{text}\""));
        for bad in [
            "",
            "6ba7b8109dad41d180b400c04fd430c8",
            "{6ba7b810-9dad-41d1-80b4-00c04fd430c8}",
            "6ba7b810-9dad-41d1-80b4-00c04fd430cg",
            "6ba7b810-9dad-41d1+80b4-00c04fd430c8",
            "6ba7b810-9dad-41d1-80b4-00c04fd430c8 ",
        ] {
            assert!(EventId::parse(bad).is_err(), "{bad:?}");
        }
        let e: Event = serde_json::from_str(&format!(r#"{{"type":"A","data":{{}},"id":"{text}"}}"#)).unwrap();
        assert_eq!(e.id, Some(id));
        assert!(serde_json::from_str::<Event>(r#"{"type":"A","data":{},"id":"x"}"#).is_err());
        let (a, b) = (EventId::random(), EventId::random());
        assert_ne!(a, b);
        assert_eq!(EventId::parse(&a.to_string()), Ok(a));
        assert_eq!(a.0[6] >> 4, 4, "version 4");
    }

    #[test]
    fn unknown_fields_are_refused_at_every_level() {
        assert!(serde_json::from_str::<Event>(r#"{"type":"A","data":{},"tag":[]}"#).is_err());
        assert!(serde_json::from_str::<Tag>(r#"{"key":"k","value":"v","x":1}"#).is_err());
        assert!(serde_json::from_str::<Query>(r#"{"items":[{"types":["A"],"tag":[]}]}"#).is_err());
        assert!(serde_json::from_str::<Query>(r#"{"items":[{"types":["A"]}],"x":1}"#).is_err());
        let c = r#"{"fail_if_events_match":"all","afterr":3}"#;
        assert!(serde_json::from_str::<AppendCondition>(c).is_err());
    }

    fn tags(t: &[(&str, &str)]) -> Vec<Tag> {
        t.iter().map(|(k, v)| Tag::new(*k, *v)).collect()
    }

    #[test]
    fn types_are_ored_within_an_item() {
        let item = QueryItem::types(&["A", "B"]);
        assert!(item.matches::<Tag>("A", &[]));
        assert!(item.matches::<Tag>("B", &[]));
        assert!(!item.matches::<Tag>("C", &[]));
    }

    #[test]
    fn tags_are_anded_within_an_item() {
        let item = QueryItem::tags(&[("course", "1"), ("student", "2")]);
        assert!(item.matches("X", &tags(&[("course", "1"), ("student", "2"), ("z", "9")])));
        assert!(!item.matches("X", &tags(&[("course", "1")])));
    }

    #[test]
    fn types_and_tags_both_apply() {
        let item = QueryItem::types(&["A"]).with_tags(&[("k", "v")]);
        assert!(item.matches("A", &tags(&[("k", "v")])));
        assert!(!item.matches("B", &tags(&[("k", "v")])));
        assert!(!item.matches("A", &tags(&[("k", "w")])));
    }

    #[test]
    fn items_are_ored() {
        let q = Query::items(vec![QueryItem::types(&["A"]), QueryItem::tags(&[("k", "v")])]).unwrap();
        assert!(q.matches::<Tag>("A", &[]));
        assert!(q.matches("B", &tags(&[("k", "v")])));
        assert!(!q.matches("B", &tags(&[("k", "w")])));
        assert!(Query::All.matches::<Tag>("anything", &[]));
    }

    #[test]
    fn keys_and_values_match_exactly() {
        let item = QueryItem::tags(&[("Course", "1")]);
        assert!(!item.matches("X", &tags(&[("course", "1")])));
        assert!(!item.matches("X", &tags(&[("Course", "1 ")])));
        let item = QueryItem::tags(&[("a_b", "c")]);
        assert!(!item.matches("X", &tags(&[("a", "b_c")])), "sanitised-name collisions must not match");
    }

    #[test]
    fn empty_items_and_empty_queries_are_rejected() {
        assert!(QueryItem::new(vec![], vec![]).is_err());
        assert!(Query::items(vec![]).is_err());
        assert!(serde_json::from_str::<Query>(r#"{"items":[{}]}"#).is_err());
        assert!(serde_json::from_str::<Query>(r#""some""#).is_err());
        assert_eq!(serde_json::from_str::<Query>(r#""all""#).unwrap(), Query::All);
        let q: Query = serde_json::from_str(r#"{"items":[{"types":["A"],"tags":[{"key":"k","value":"v"}]}]}"#).unwrap();
        assert_eq!(q, Query::items(vec![QueryItem::types(&["A"]).with_tags(&[("k", "v")])]).unwrap());
        assert_eq!(serde_json::to_string(&Query::All).unwrap(), r#""all""#);
    }

    #[test]
    fn bad_names_are_rejected() {
        assert!(validate_event_type("").is_err());
        assert!(validate_event_type("  ").is_err());
        assert!(validate_event_type("a/b").is_err());
        assert!(validate_event_type("..").is_err());
        assert!(validate_event_type(&"x".repeat(EVENT_TYPE_BYTES_MAX + 1)).is_err());
        assert!(validate_event_type("StudentRegistered").is_ok());
        assert!(validate_tag(&Tag::new("k", "..")).is_err());
        assert!(validate_tag(&Tag::new("k", "a/b")).is_err());
        assert!(validate_tag(&Tag::new("", "v")).is_err());
        assert!(validate_tag(&Tag::new("k", "a\0")).is_err());
        assert!(validate_tag(&Tag::new("studentId", "42")).is_ok());
    }

    #[test]
    fn read_range_applies_exclusive_bounds() {
        let o = ReadOptions { after: Some(2), before: Some(5), ..Default::default() };
        assert_eq!(o.range(10), Some((3, 4)));
        assert_eq!(ReadOptions::default().range(0), None);
        assert_eq!(ReadOptions::default().range(3), Some((1, 3)));
        let o = ReadOptions { after: Some(3), before: Some(4), ..Default::default() };
        assert_eq!(o.range(10), None);
        let o = ReadOptions { before: Some(0), ..Default::default() };
        assert_eq!(o.range(10), None);
        let o = ReadOptions { after: Some(u64::MAX), ..Default::default() };
        assert_eq!(o.range(10), None);
    }
}
