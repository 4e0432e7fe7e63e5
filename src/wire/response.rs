//! Encoding response lines, and the response bodies of the core ops (shared by server and client).

use serde::{Deserialize, Serialize};

use super::envelope::{quote_input, RequestId};
use super::error::{ProtocolError, WireError};
use crate::format::{push_json_string, push_tags_json};
use crate::limits::ERROR_MESSAGE_BYTES_MAX;
use crate::model::SequencedEvent;
use crate::store::EventView;

/// Appends `{"id":<id>,"ok":true,<fields of body>}\n` to `out`. `body` must serialise as a JSON object (or unit
/// struct / empty map for no fields).
pub fn encode_ok<T: Serialize>(out: &mut Vec<u8>, id: &RequestId, body: &T) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.as_json().as_bytes());
    out.extend_from_slice(b",\"ok\":true");
    let fields = serde_json::to_vec(body).expect("response bodies serialise");
    // `fields` is `{...}`: splice its members after `"ok":true`.
    if fields.len() > 2 && fields[0] == b'{' {
        out.push(b',');
        out.extend_from_slice(&fields[1..fields.len() - 1]);
    }
    out.extend_from_slice(b"}\n");
}

/// Appends a final error line to `out`.
pub fn encode_error(out: &mut Vec<u8>, id: &RequestId, error: &ProtocolError) {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        code: &'static str,
        message: &'a str,
    }
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.as_json().as_bytes());
    out.extend_from_slice(b",\"ok\":false,\"error\":");
    // The last guard against echoing large client input: messages quote input through `quote_input`, but store
    // and model errors may name what they refused in full.
    let message = quote_input(&error.message, ERROR_MESSAGE_BYTES_MAX);
    serde_json::to_writer(&mut *out, &ErrorBody { code: error.code.as_str(), message: &message })
        .expect("errors serialise");
    out.extend_from_slice(b"}\n");
}

/// Appends one read item line `{"id":<id>,"event":{...}}\n` to `out`.
pub fn encode_item(out: &mut Vec<u8>, id: &RequestId, event: &SequencedEvent) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.as_json().as_bytes());
    out.extend_from_slice(b",\"event\":");
    serde_json::to_writer(&mut *out, event).expect("events serialise");
    out.extend_from_slice(b"}\n");
}

/// Appends one read item line for a borrowed event, byte for byte what [`encode_item`] writes for the same event
/// owned: the type and tags escaped as JSON strings, the data and metadata JSON copied as they are.
pub fn encode_item_view(out: &mut Vec<u8>, id: &RequestId, event: &EventView<'_>) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.as_json().as_bytes());
    out.extend_from_slice(b",\"event\":{\"position\":");
    out.extend_from_slice(itoa::Buffer::new().format(event.position).as_bytes());
    out.extend_from_slice(b",\"type\":");
    push_json_string(out, event.event_type);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(event.data.as_bytes());
    out.extend_from_slice(b",\"tags\":");
    push_tags_json(out, event.tags());
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(event.metadata.as_bytes());
    out.extend_from_slice(b"}}\n");
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResponse {
    pub server: String,
    pub version: String,
    pub protocol: u32,
    pub io_backend: String,
    pub head: u64,
    /// Whether the store takes appends now; when not, `unwritable_reason` says why (reads still work).
    #[serde(default = "writable_default")]
    pub writable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwritable_reason: Option<String>,
}

fn writable_default() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadResponse {
    pub head: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResponse {
    pub first: u64,
    pub last: u64,
    pub head: u64,
    /// The append repeated one already committed (its events' ids, in order): `first..=last` are that append's
    /// positions and nothing was written now. Absent (false) otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

/// The answer of `tracking.get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackingGetResponse {
    pub source: String,
    /// The source's last tracked position; 0 when no append has tracked it.
    pub position: u64,
}

/// The final line of a successful read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadDone {
    pub count: u64,
    /// The store head the read was a snapshot of.
    pub head: u64,
}

/// The final line of a subscription (the client closed, or the daemon is stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeDone {
    /// Item lines sent.
    pub count: u64,
    /// Every match at or below this position was sent: subscribing again with `after` = this misses nothing and
    /// repeats nothing.
    pub last: u64,
    pub head: u64,
}

/// Appends a subscription's heartbeat line `{"id":<id>,"heartbeat":true,"head":<head>}\n` to `out`.
pub fn encode_heartbeat(out: &mut Vec<u8>, id: &RequestId, head: u64) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.as_json().as_bytes());
    out.extend_from_slice(b",\"heartbeat\":true,\"head\":");
    out.extend_from_slice(head.to_string().as_bytes());
    out.extend_from_slice(b"}\n");
}

/// Any response line, as a client decodes it: an item line (`event` present) or a final line (`ok` present).
#[derive(Debug, Deserialize)]
pub struct ResponseLine {
    #[serde(default)]
    pub id: Option<serde_json::Value>,
    #[serde(default)]
    pub ok: Option<bool>,
    #[serde(default)]
    pub error: Option<WireError>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Event, Query, ReadOptions, Tag};
    use crate::store::{CommitMode, MirrorMode, Store, StoreOptions};

    fn tricky_events() -> Vec<Event> {
        let mut events = vec![
            Event::new("Plain", r#"{"a":1}"#, vec![Tag::new("k", "v")]).unwrap(),
            Event::new("Quote \"x\"", r#"{"s":"x\"y\\\u0001","n":[1,2.5,null]}"#, vec![]).unwrap(),
            Event::new("Ünïcødé ✓", r#"  [ 1 , "a b" ]  "#, vec![Tag::new("kéy", "va\"l"), Tag::new("a", "b")])
                .unwrap(),
        ];
        events[0].metadata = Some(serde_json::value::RawValue::from_string(r#"{"correlationId":"c"}"#.into()).unwrap());
        events
    }

    /// The read path frames lines from journal records; a client must get the same bytes as from the owned event.
    #[test]
    fn item_lines_from_views_are_the_owned_encoding_byte_for_byte() {
        for commit in [CommitMode::Journal, CommitMode::Files] {
            let dir = tempfile::tempdir().unwrap();
            let options = StoreOptions { commit, mirror: MirrorMode::Off, ..StoreOptions::default() };
            let store = Store::open(dir.path(), options).unwrap();
            store.append(tricky_events(), None).unwrap();
            let id = RequestId::string("r\"1");
            let mut reader = store.read(&Query::All, ReadOptions::default()).unwrap();
            let mut seen = 0;
            while let Some(batch) = reader.next_views() {
                for view in batch.unwrap().views() {
                    let (mut framed, mut owned) = (Vec::new(), Vec::new());
                    encode_item_view(&mut framed, &id, &view);
                    let event = view.to_event().unwrap();
                    encode_item(&mut owned, &id, &event);
                    assert_eq!(String::from_utf8(framed).unwrap(), String::from_utf8(owned).unwrap(), "{commit:?}");
                    let mut again = Vec::new();
                    encode_item_view(&mut again, &id, &EventView::from_event(&event));
                    assert_eq!(again, {
                        let mut o = Vec::new();
                        encode_item(&mut o, &id, &event);
                        o
                    });
                    seen += 1;
                }
            }
            assert_eq!(seen, 3, "{commit:?}");
        }
    }
}
