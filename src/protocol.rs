//! Wire protocol v1 (design.md §3.3): JSON Lines over a Unix stream socket.
//!
//! One UTF-8 JSON object per line, `\n`-terminated, at most [`MAX_FRAME_BYTES_DEFAULT`] bytes by default. Every
//! request carries `"id"` (a string or a number, echoed verbatim) and `"op"`. A request gets zero or more item lines
//! and then exactly one final line carrying `"ok"`. Errors are
//! `{"id":..,"ok":false,"error":{"code":"<snake_case>","message":"<human text>"}}`.
//!
//! This module is pure: parsing requests into typed bodies, and encoding response lines into byte buffers. The
//! server (`crate::server`) does the I/O; the client (`crate::client`) uses the same types to decode responses.
//! See docs/PROTOCOL.md for every op with examples.

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::model::{AppendCondition, Event, Query, RawJson, ReadOptions, SequencedEvent, Tag};
use crate::projection::format::ProjectionView;
use crate::projection::{ProjectionError, ProjectionItem, ProjectionMetadata, ProjectionSummary, Put};
use crate::store::StoreError;

/// Protocol version reported by `hello`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line accepted by default, in bytes (excluding the `\n`). A longer line is answered with
/// `frame_too_large` and the connection is closed (the rest of the line cannot be told apart from the next request).
pub const MAX_FRAME_BYTES_DEFAULT: usize = 16 * 1024 * 1024;
/// The server's name in `hello`.
pub const SERVER_NAME: &str = "opossumd";

/// Error codes of the final error line (`error.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Malformed JSON, a missing or ill-typed field, a rule of the DCB model broken (empty type, bad tag, ...).
    InvalidRequest,
    /// The append's condition matched an event: nothing was written.
    AppendConditionFailed,
    /// The request line is longer than `max_frame_bytes`; the connection is closed after this line.
    FrameTooLarge,
    /// `op` names no operation this server knows.
    UnknownOp,
    /// The request names something that does not exist (projections, ...).
    NotFound,
    /// A projection put's `expected_version` is not the key's current version: nothing was written.
    VersionConflict,
    /// The store failed to read or write (I/O error, corrupt file, store poisoned after a failed fsync).
    StorageError,
    /// The server is at its connection limit; the connection is closed after this line.
    Busy,
    /// The server is stopping (SIGTERM) and takes no new requests.
    ShuttingDown,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::InvalidRequest,
        ErrorCode::AppendConditionFailed,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownOp,
        ErrorCode::NotFound,
        ErrorCode::VersionConflict,
        ErrorCode::StorageError,
        ErrorCode::Busy,
        ErrorCode::ShuttingDown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::AppendConditionFailed => "append_condition_failed",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::NotFound => "not_found",
            ErrorCode::VersionConflict => "version_conflict",
            ErrorCode::StorageError => "storage_error",
            ErrorCode::Busy => "busy",
            ErrorCode::ShuttingDown => "shutting_down",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error to be sent as a final error line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProtocolError {
        ProtocolError { code, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> ProtocolError {
        ProtocolError::new(ErrorCode::InvalidRequest, message)
    }
}

impl From<StoreError> for ProtocolError {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::Invalid(_) => ErrorCode::InvalidRequest,
            StoreError::ConditionFailed { .. } => ErrorCode::AppendConditionFailed,
            StoreError::Closed => ErrorCode::ShuttingDown,
            StoreError::Io(_)
            | StoreError::Corrupt { .. }
            | StoreError::MissingEvent { .. }
            | StoreError::Poisoned(_)
            | StoreError::Locked(_) => ErrorCode::StorageError,
        };
        ProtocolError::new(code, e.to_string())
    }
}

impl From<ProjectionError> for ProtocolError {
    fn from(e: ProjectionError) -> Self {
        let code = match &e {
            // A name or key that could leave its directory, a bad tag, a state too large, a key whose file name
            // another key already uses: the request cannot be stored as it is.
            ProjectionError::InvalidName(_) | ProjectionError::Invalid(_) | ProjectionError::KeyCollision { .. } => {
                ErrorCode::InvalidRequest
            }
            ProjectionError::NotFound { .. } => ErrorCode::NotFound,
            ProjectionError::VersionConflict { .. } => ErrorCode::VersionConflict,
            ProjectionError::Closed => ErrorCode::ShuttingDown,
            ProjectionError::Io(_) | ProjectionError::Corrupt { .. } | ProjectionError::Poisoned(_) => {
                ErrorCode::StorageError
            }
        };
        ProtocolError::new(code, e.to_string())
    }
}

/// The request id: a JSON string or number, kept as its exact text so it is echoed byte for byte.
#[derive(Debug, Clone)]
pub struct RequestId(Box<RawValue>);

impl PartialEq for RequestId {
    fn eq(&self, other: &Self) -> bool {
        self.as_json() == other.as_json()
    }
}

impl Eq for RequestId {}

impl RequestId {
    /// The id of replies to lines whose id could not be read (`null`).
    pub fn null() -> RequestId {
        RequestId(RawValue::from_string("null".into()).expect("null is JSON"))
    }

    pub fn number(n: u64) -> RequestId {
        RequestId(RawValue::from_string(n.to_string()).expect("a number is JSON"))
    }

    pub fn string(s: &str) -> RequestId {
        RequestId(RawValue::from_string(serde_json::to_string(s).expect("a string serialises")).expect("JSON"))
    }

    /// The id's JSON text, e.g. `7` or `"a"`.
    pub fn as_json(&self) -> &str {
        self.0.get()
    }

    fn from_raw(raw: &RawValue) -> Result<RequestId, ProtocolError> {
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') | Some(b'-') | Some(b'0'..=b'9') => {
                Ok(RequestId(RawValue::from_string(text.to_string()).expect("already JSON")))
            }
            _ => Err(ProtocolError::invalid(format!("\"id\" must be a string or a number, got {text}"))),
        }
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// The two fields every request has, parsed without touching the rest of the line.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub id: RequestId,
    pub op: String,
}

/// Parses a request line's `id` and `op`. On failure also returns the id when it could be read, so the error line
/// can echo it.
pub fn parse_envelope(line: &[u8]) -> Result<Envelope, (RequestId, ProtocolError)> {
    #[derive(Deserialize)]
    struct Wire<'a> {
        #[serde(borrow, default)]
        id: Option<&'a RawValue>,
        #[serde(default)]
        op: Option<serde_json::Value>,
    }
    // (serde would also read a struct from an array; requests are objects.)
    if line.trim_ascii_start().first().is_some_and(|&b| b != b'{') && serde_json::from_slice::<IgnoredAny>(line).is_ok()
    {
        return Err((RequestId::null(), ProtocolError::invalid("a request must be a JSON object")));
    }
    let wire: Wire<'_> = match serde_json::from_slice(line) {
        Ok(w) => w,
        Err(e) => {
            return Err((RequestId::null(), ProtocolError::invalid(format!("malformed JSON: {e}"))));
        }
    };
    let id = match wire.id {
        None => return Err((RequestId::null(), ProtocolError::invalid("missing \"id\" (a string or a number)"))),
        Some(raw) => RequestId::from_raw(raw).map_err(|e| (RequestId::null(), e))?,
    };
    match wire.op {
        Some(serde_json::Value::String(op)) => Ok(Envelope { id, op }),
        Some(other) => Err((id, ProtocolError::invalid(format!("\"op\" must be a string, got {other}")))),
        None => Err((id, ProtocolError::invalid("missing \"op\""))),
    }
}

/// Parses the whole request line as the body of `op`. Bodies reject unknown fields, so a misspelt `"condition"`
/// is an error rather than an unconditional append.
pub fn parse_body<T: DeserializeOwned>(op: &str, line: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(line).map_err(|e| {
        // serde_json names the position, not the field, of a type error: name the nearest key before it.
        let near = match e.classify() {
            serde_json::error::Category::Data if e.line() == 1 => nearest_key(line, e.column()),
            _ => None,
        };
        match near {
            Some(key) => ProtocolError::invalid(format!("bad {op} request: {e} (near \"{key}\")")),
            None => ProtocolError::invalid(format!("bad {op} request: {e}")),
        }
    })
}

/// The last object key (`"key":`) that starts before byte `column` (1-based) of `line`.
fn nearest_key(line: &[u8], column: usize) -> Option<String> {
    let prefix = std::str::from_utf8(&line[..column.min(line.len())]).ok()?;
    let colon = prefix.rfind("\":")?;
    let open = prefix[..colon].rfind('"')?;
    let key = &prefix[open + 1..colon];
    (!key.is_empty() && key.len() <= 64 && !key.contains('\\')).then(|| key.to_string())
}

/// Body of `hello`, `head` and `stats`: nothing but id and op.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyRequest {
    #[serde(rename = "id")]
    _id: IgnoredAny,
    #[serde(rename = "op")]
    _op: IgnoredAny,
}

/// Body of `append`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest {
    #[serde(rename = "id")]
    _id: IgnoredAny,
    #[serde(rename = "op")]
    _op: IgnoredAny,
    pub events: Vec<Event>,
    #[serde(default)]
    pub condition: Option<AppendCondition>,
}

/// Body of `read`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    #[serde(rename = "id")]
    _id: IgnoredAny,
    #[serde(rename = "op")]
    _op: IgnoredAny,
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

fn query_all() -> Query {
    Query::All
}

impl ReadRequest {
    pub fn options(&self) -> ReadOptions {
        ReadOptions { after: self.after, before: self.before, limit: self.limit, backwards: self.backwards }
    }
}

/// Body of `projection.put`: one [`Put`], its fields beside `id` and `op`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionPutRequest {
    #[serde(rename = "id")]
    _id: IgnoredAny,
    #[serde(rename = "op")]
    _op: IgnoredAny,
    pub projection: String,
    pub key: String,
    pub state: RawJson,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default)]
    pub expected_version: Option<u64>,
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

/// Body of `projection.put_many`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionPutManyRequest {
    #[serde(rename = "id")]
    _id: IgnoredAny,
    #[serde(rename = "op")]
    _op: IgnoredAny,
    pub puts: Vec<Put>,
}

/// Body of `projection.get` and `projection.delete`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionKeyRequest {
    #[serde(rename = "id")]
    _id: IgnoredAny,
    #[serde(rename = "op")]
    _op: IgnoredAny,
    pub projection: String,
    pub key: String,
}

/// Body of `projection.get_all`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionNameRequest {
    #[serde(rename = "id")]
    _id: IgnoredAny,
    #[serde(rename = "op")]
    _op: IgnoredAny,
    pub projection: String,
}

/// Body of `projection.query`: the projections carrying every one of `tags`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionQueryRequest {
    #[serde(rename = "id")]
    _id: IgnoredAny,
    #[serde(rename = "op")]
    _op: IgnoredAny,
    pub projection: String,
    pub tags: Vec<Tag>,
}

/// Body of `projection.checkpoint`: reads the checkpoint, or sets it when `position` is given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionCheckpointRequest {
    #[serde(rename = "id")]
    _id: IgnoredAny,
    #[serde(rename = "op")]
    _op: IgnoredAny,
    pub projection: String,
    #[serde(default)]
    pub position: Option<u64>,
}

// ---------------------------------------------------------------------------------------------------------------
// Encoding responses.

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
    serde_json::to_writer(&mut *out, &ErrorBody { code: error.code.as_str(), message: &error.message })
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

/// Appends one projection item line `{"id":<id>,"item":{...}}\n` to `out`.
pub fn encode_projection_item(out: &mut Vec<u8>, id: &RequestId, item: &ProjectionItemOut<'_>) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.as_json().as_bytes());
    out.extend_from_slice(b",\"item\":");
    encode_projection_item_body(out, item);
    out.extend_from_slice(b"}\n");
}

/// The `"item"` object of a projection item line alone: what the projection cache keeps, so that streaming a cached
/// projection is [`encode_projection_item_line`], a copy.
pub fn encode_projection_item_body(out: &mut Vec<u8>, item: &ProjectionItemOut<'_>) {
    serde_json::to_writer(&mut *out, item).expect("projections serialise");
}

/// An item line around a body made by [`encode_projection_item_body`]; the same bytes as [`encode_projection_item`].
pub fn encode_projection_item_line(out: &mut Vec<u8>, id: &RequestId, body: &[u8]) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.as_json().as_bytes());
    out.extend_from_slice(b",\"item\":");
    out.extend_from_slice(body);
    out.extend_from_slice(b"}\n");
}

/// Reads back a body made by [`encode_projection_item_body`].
pub fn decode_projection_item_body(body: &[u8]) -> Result<ProjectionItem, serde_json::Error> {
    serde_json::from_slice::<ProjectionItemIn>(body).map(ProjectionItem::from)
}

impl<'a> ProjectionItemOut<'a> {
    /// A projection file parsed in place (`decode_view`), for `key`, whose file is `file_len` bytes long.
    pub fn from_view(key: &'a str, view: &'a ProjectionView<'a>, file_len: usize) -> ProjectionItemOut<'a> {
        ProjectionItemOut {
            key,
            state: &view.state,
            metadata: ProjectionMetadataOut {
                created_at: &view.created_at,
                last_updated_at: &view.last_updated_at,
                version: view.version,
                size_in_bytes: file_len as u64,
            },
            tags: view.tags.as_deref().map(TagsOut::Pairs),
        }
    }
}

/// Tags as `[{"key":..,"value":..},..]`, from items or from files parsed in place.
pub enum TagsOut<'a> {
    Tags(&'a [Tag]),
    Pairs(&'a [(std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)]),
}

impl Serialize for TagsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Pair<'b> {
            key: &'b str,
            value: &'b str,
        }
        match self {
            TagsOut::Tags(tags) => s.collect_seq(tags.iter()),
            TagsOut::Pairs(pairs) => s.collect_seq(pairs.iter().map(|(key, value)| Pair { key, value })),
        }
    }
}

/// A projection on the wire (borrowed, for encoding): the `item` of a streamed line and the body of `projection.get`.
#[derive(Serialize)]
pub struct ProjectionItemOut<'a> {
    pub key: &'a str,
    pub state: &'a RawValue,
    pub metadata: ProjectionMetadataOut<'a>,
    /// Absent for projections written by .NET Opossum (it keeps tags only in its index files).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<TagsOut<'a>>,
}

impl<'a> From<&'a ProjectionItem> for ProjectionItemOut<'a> {
    fn from(item: &'a ProjectionItem) -> Self {
        let m = &item.metadata;
        ProjectionItemOut {
            key: &item.key,
            state: &item.state,
            metadata: ProjectionMetadataOut {
                created_at: &m.created_at,
                last_updated_at: &m.last_updated_at,
                version: m.version,
                size_in_bytes: m.size_in_bytes,
            },
            tags: item.tags.as_deref().map(TagsOut::Tags),
        }
    }
}

/// A projection's metadata on the wire: Opossum's `ProjectionMetadata` in the protocol's snake_case.
/// `size_in_bytes` is the projection file's length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectionMetadataOut<'a> {
    pub created_at: &'a str,
    pub last_updated_at: &'a str,
    pub version: u64,
    pub size_in_bytes: u64,
}

/// [`ProjectionMetadataOut`] as a client decodes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProjectionMetadataIn {
    pub created_at: String,
    pub last_updated_at: String,
    pub version: u64,
    pub size_in_bytes: u64,
}

/// A projection as a client decodes it (item lines and the `projection.get` answer).
#[derive(Debug, Deserialize)]
pub struct ProjectionItemIn {
    pub key: String,
    pub state: RawJson,
    pub metadata: ProjectionMetadataIn,
    #[serde(default)]
    pub tags: Option<Vec<Tag>>,
}

impl From<ProjectionItemIn> for ProjectionItem {
    fn from(w: ProjectionItemIn) -> Self {
        ProjectionItem {
            key: w.key,
            state: w.state,
            metadata: ProjectionMetadata {
                created_at: w.metadata.created_at,
                last_updated_at: w.metadata.last_updated_at,
                version: w.metadata.version,
                size_in_bytes: w.metadata.size_in_bytes,
            },
            tags: w.tags,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionPutResponse {
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionPutManyResponse {
    pub versions: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionDeleteResponse {
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionListResponse {
    pub projections: Vec<ProjectionSummary>,
}

/// The answer to `projection.checkpoint`: `position` is `null` when the projection has no checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionCheckpointResponse {
    pub position: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
}

/// The final line of a successful `projection.get_all` or `projection.query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionReadDone {
    pub count: u64,
}

// ---------------------------------------------------------------------------------------------------------------
// Response bodies (shared by server and client).

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResponse {
    pub server: String,
    pub version: String,
    pub protocol: u32,
    pub io_backend: String,
    pub head: u64,
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
}

/// The final line of a successful read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadDone {
    pub count: u64,
    /// The store head the read was a snapshot of.
    pub head: u64,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub code: String,
    pub message: String,
}

// ---------------------------------------------------------------------------------------------------------------
// subscribe: the request, the heartbeat line and the final line.

/// Body of `subscribe`: the connection becomes a stream of item lines (as `read`'s) and heartbeats until the client
/// closes or the daemon stops.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRequest {
    #[serde(rename = "id")]
    _id: IgnoredAny,
    #[serde(rename = "op")]
    _op: IgnoredAny,
    /// Defaults to `"all"`.
    #[serde(default = "query_all")]
    pub query: Query,
    /// Events with positions above this; 0 (from the first event) when absent.
    #[serde(default)]
    pub after: Option<u64>,
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

/// Appends a heartbeat line `{"id":<id>,"heartbeat":true,"head":<head>}\n` to `out`.
pub fn encode_heartbeat(out: &mut Vec<u8>, id: &RequestId, head: u64) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.as_json().as_bytes());
    out.extend_from_slice(b",\"heartbeat\":true,\"head\":");
    out.extend_from_slice(head.to_string().as_bytes());
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(out: &[u8]) -> serde_json::Value {
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        serde_json::from_slice(out).unwrap()
    }

    #[test]
    fn envelope_reads_id_and_op() {
        let e = parse_envelope(br#"{"id":7,"op":"head"}"#).unwrap();
        assert_eq!(e.id.as_json(), "7");
        assert_eq!(e.op, "head");
        let e = parse_envelope(br#"{"op":"head","id":"a\"b"}"#).unwrap();
        assert_eq!(e.id.as_json(), r#""a\"b""#);
    }

    #[test]
    fn envelope_errors_echo_what_they_can() {
        let (id, err) = parse_envelope(b"{nope").unwrap_err();
        assert_eq!((id.as_json(), err.code), ("null", ErrorCode::InvalidRequest));
        assert!(err.message.contains("malformed JSON"), "{err}");
        let (id, err) = parse_envelope(br#"{"op":"head"}"#).unwrap_err();
        assert_eq!(id.as_json(), "null");
        assert!(err.message.contains("missing \"id\""));
        let (_, err) = parse_envelope(br#"{"id":{"x":1},"op":"head"}"#).unwrap_err();
        assert!(err.message.contains("string or a number"));
        let (id, err) = parse_envelope(br#"{"id":3}"#).unwrap_err();
        assert_eq!(id.as_json(), "3");
        assert!(err.message.contains("missing \"op\""));
        let (_, err) = parse_envelope(b"[1,2]").unwrap_err();
        assert!(err.message.contains("a JSON object"), "{err}");
        let (_, err) = parse_envelope(b"[1,2").unwrap_err();
        assert!(err.message.contains("malformed JSON"), "{err}");
    }

    #[test]
    fn bodies_reject_unknown_fields_and_bad_positions() {
        let err = parse_body::<AppendRequest>("append", br#"{"id":1,"op":"append","events":[],"condtion":{}}"#);
        assert!(err.unwrap_err().message.contains("condtion"));
        for bad in [r#"-1"#, r#"1.5"#, r#""3""#] {
            let text = format!(r#"{{"id":1,"op":"read","after":{bad}}}"#);
            assert!(parse_body::<ReadRequest>("read", text.as_bytes()).is_err(), "{bad}");
        }
        let r = parse_body::<ReadRequest>("read", br#"{"id":1,"op":"read","limit":2,"backwards":true}"#).unwrap();
        assert_eq!(r.query, Query::All);
        assert_eq!(r.options(), ReadOptions { limit: Some(2), backwards: true, ..Default::default() });
        let err = parse_body::<ReadRequest>("read", br#"{"id":1,"op":"read","query":{"items":[{}]}}"#).unwrap_err();
        assert!(err.message.contains("at least one type or tag"), "{err}");
    }

    #[test]
    fn encoders_write_single_lines() {
        let id = RequestId::string("x");
        let mut out = Vec::new();
        encode_ok(&mut out, &id, &HeadResponse { head: 3 });
        assert_eq!(line(&out), serde_json::json!({"id":"x","ok":true,"head":3}));
        out.clear();
        encode_error(&mut out, &RequestId::number(4), &ProtocolError::invalid("bad\nthing"));
        assert_eq!(
            line(&out),
            serde_json::json!({"id":4,"ok":false,"error":{"code":"invalid_request","message":"bad\nthing"}})
        );
        out.clear();
        #[derive(Serialize)]
        struct Nothing {}
        encode_ok(&mut out, &id, &Nothing {});
        assert_eq!(line(&out), serde_json::json!({"id":"x","ok":true}));
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
    }
}
