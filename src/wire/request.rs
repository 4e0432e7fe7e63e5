//! Request bodies. Every one is declared with `request!`, which skips `id` and `op` and refuses unknown fields;
//! the model types inside (events, tags, queries, conditions, puts) refuse theirs too.

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::error::ProtocolError;
use crate::model::{AppendCondition, Event, EventRef, Query, RawJson, ReadOptions, Tag, Tracking};
use crate::projection::Put;

/// A request body: `id` and `op` are read by [`super::parse_envelope`] and skipped here, and every other field must be one
/// the struct names (`deny_unknown_fields`, which serde cannot combine with a flattened envelope).
macro_rules! request {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            #[serde(rename = "id")]
            _id: IgnoredAny,
            #[serde(rename = "op")]
            _op: IgnoredAny,
            $($(#[$fmeta])* pub $field: $ty,)*
        }
    };
}

request! {
/// Body of `hello`, `head` and `stats`: nothing but id and op.
pub struct EmptyRequest {
}
}

request! {
/// Body of `append`.
pub struct AppendRequest {
    pub events: Vec<Event>,
    #[serde(default)]
    pub condition: Option<AppendCondition>,
    /// The consumer checkpoint committed with the events (journal mode).
    #[serde(default)]
    pub tracking: Option<Tracking>,
}
}

/// `append`'s body borrowed from the request line ([`AppendRequest`] with [`EventRef`]s): the store validates and
/// encodes each event from the line itself. Read by [`parse_append`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendRequestRef<'a> {
    #[serde(rename = "id")]
    _id: IgnoredAny,
    #[serde(rename = "op")]
    _op: IgnoredAny,
    #[serde(borrow)]
    pub events: Vec<EventRef<'a>>,
    #[serde(default)]
    pub condition: Option<AppendCondition>,
    #[serde(default)]
    pub tracking: Option<Tracking>,
}

/// Parses an `append` line as an [`AppendRequestRef`]. A line it refuses is parsed again as an [`AppendRequest`],
/// whose error message (naming the field's JSON path) is the one returned, so errors read as for every other op.
pub fn parse_append<'a>(op: &str, line: &'a [u8]) -> Result<AppendRequestRef<'a>, ProtocolError> {
    match serde_json::from_slice::<AppendRequestRef<'a>>(line) {
        Ok(request) => Ok(request),
        Err(borrowed) => match super::parse_body::<AppendRequest>(op, line) {
            Err(e) => Err(e),
            // Both parse the same grammar: a line only one of them takes is a bug, reported as the refusal it got.
            Ok(_) => Err(ProtocolError::invalid(format!("bad {op} request: {borrowed}"))),
        },
    }
}

request! {
/// Body of `tracking.get`.
pub struct TrackingGetRequest {
    pub source: String,
}
}

request! {
/// Body of `read`.
pub struct ReadRequest {
    /// Defaults to `"all"`.
    #[serde(default = "query_all")]
    pub query: Query,
    #[serde(default)]
    pub after: Option<u64>,
    #[serde(default)]
    pub before: Option<u64>,
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub backwards: bool,
}
}

request! {
/// Body of `subscribe`: the connection becomes a stream of item lines (as `read`'s) and heartbeats until the client
/// closes or the daemon stops.
pub struct SubscribeRequest {
    /// Defaults to `"all"`.
    #[serde(default = "query_all")]
    pub query: Query,
    /// Events with positions above this; 0 (from the first event) when absent.
    #[serde(default)]
    pub after: Option<u64>,
}
}

fn query_all() -> Query {
    Query::All
}

impl ReadRequest {
    pub fn options(&self) -> ReadOptions {
        ReadOptions { after: self.after, before: self.before, limit: self.limit, backwards: self.backwards }
    }
}

request! {
/// Body of `projection.put`: one [`Put`], its fields beside `id` and `op`.
pub struct ProjectionPutRequest {
    pub projection: String,
    pub key: String,
    pub state: RawJson,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default)]
    pub expected_version: Option<u64>,
}
}

impl ProjectionPutRequest {
    pub fn into_put(self) -> Put {
        Put {
            projection: self.projection,
            key: self.key,
            state: self.state,
            tags: self.tags,
            expected_version: self.expected_version,
        }
    }
}

request! {
/// Body of `projection.put_many`.
pub struct ProjectionPutManyRequest {
    pub puts: Vec<Put>,
}
}

request! {
/// Body of `projection.get` and `projection.delete`.
pub struct ProjectionKeyRequest {
    pub projection: String,
    pub key: String,
}
}

request! {
/// Body of `projection.get_all`.
pub struct ProjectionNameRequest {
    pub projection: String,
}
}

request! {
/// Body of `projection.query`: the projections carrying every one of `tags`.
pub struct ProjectionQueryRequest {
    pub projection: String,
    pub tags: Vec<Tag>,
}
}

request! {
/// Body of `projection.checkpoint`: reads the checkpoint, or sets it when `position` is given.
pub struct ProjectionCheckpointRequest {
    pub projection: String,
    #[serde(default)]
    pub position: Option<u64>,
}
}
