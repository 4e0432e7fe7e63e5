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

use crate::limits::{ERROR_MESSAGE_BYTES_MAX, INPUT_QUOTE_BYTES_MAX, REQUEST_ID_BYTES_MAX};
use crate::model::{AppendCondition, Event, Query, RawJson, ReadOptions, SequencedEvent, Tag};
use crate::projection::format::ProjectionView;
use crate::projection::{ProjectionError, ProjectionItem, ProjectionMetadata, ProjectionSummary, Put};
use crate::store::StoreError;

/// Protocol version reported by `hello`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line accepted by default, in bytes (excluding the `\n`). A longer line is answered with
/// `frame_too_large` and the connection is closed (the rest of the line cannot be told apart from the next request).
pub const MAX_FRAME_BYTES_DEFAULT: usize = crate::limits::FRAME_BYTES_DEFAULT;
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
            Some(b'"') | Some(b'-') | Some(b'0'..=b'9') if text.len() <= REQUEST_ID_BYTES_MAX => {
                Ok(RequestId(RawValue::from_string(text.to_string()).expect("already JSON")))
            }
            Some(_) if text.len() > REQUEST_ID_BYTES_MAX => Err(ProtocolError::invalid(format!(
                "\"id\" is {} bytes of JSON; the limit is {REQUEST_ID_BYTES_MAX}",
                text.len()
            ))),
            _ => Err(ProtocolError::invalid(format!(
                "\"id\" must be a string or a number, got {}",
                quote_input(text, INPUT_QUOTE_BYTES_MAX)
            ))),
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
        Some(serde_json::Value::String(op)) if op.len() > INPUT_QUOTE_BYTES_MAX => Err((
            id,
            ProtocolError::new(ErrorCode::UnknownOp, format!("unknown op {}", quote_input(&op, INPUT_QUOTE_BYTES_MAX))),
        )),
        Some(serde_json::Value::String(op)) => Ok(Envelope { id, op }),
        Some(other) => Err((
            id,
            ProtocolError::invalid(format!(
                "\"op\" must be a string, got {}",
                quote_input(&other.to_string(), INPUT_QUOTE_BYTES_MAX)
            )),
        )),
        None => Err((id, ProtocolError::invalid("missing \"op\""))),
    }
}

/// Parses the whole request line as the body of `op`. Bodies reject unknown fields at every level, so a misspelt
/// `"condition"` or `"tags"` is an error rather than an unconditional or untagged append; the message names the JSON
/// path of the offending field (e.g. `events[0].tag`).
pub fn parse_body<T: DeserializeOwned>(op: &str, line: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(line).map_err(|e| {
        // serde_json names the position, not the field: name the path that leads to that position.
        let path = match e.classify() {
            serde_json::error::Category::Data if e.line() == 1 => json_path_at(line, e.column()),
            _ => None,
        };
        // serde_json's text ends with " at line 1 column N", which the path replaces.
        let text = e.to_string();
        let text = match text.rfind(" at line ") {
            Some(cut) if path.is_some() => text[..cut].to_string(),
            _ => text,
        };
        match path {
            Some(path) => ProtocolError::invalid(format!("bad {op} request at {path}: {text}")),
            None => ProtocolError::invalid(format!("bad {op} request: {text}")),
        }
    })
}

/// The JSON path (`events[0].tags[1].value`) of the value being read at byte `column` (1-based, as serde_json
/// reports it) of `line`: a scan of the bytes before it that tracks the open objects and arrays. `None` at the top
/// level or when the prefix is not JSON this scan understands.
fn json_path_at(line: &[u8], column: usize) -> Option<String> {
    enum Level {
        Object { key: Option<String>, expect_key: bool },
        Array { index: usize },
    }
    let end = column.min(line.len());
    let mut stack: Vec<Level> = Vec::new();
    let mut i = 0;
    while i < end {
        match line[i] {
            b'{' => stack.push(Level::Object { key: None, expect_key: true }),
            b'[' => stack.push(Level::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop()?;
            }
            b',' => match stack.last_mut()? {
                Level::Object { expect_key, .. } => *expect_key = true,
                Level::Array { index } => *index += 1,
            },
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < line.len() && line[i] != b'"' {
                    i += if line[i] == b'\\' { 2 } else { 1 };
                }
                if let Some(Level::Object { key, expect_key }) = stack.last_mut() {
                    if *expect_key {
                        let raw = &line[start..i.min(line.len())];
                        *key = Some(quote_input(&String::from_utf8_lossy(raw), INPUT_QUOTE_BYTES_MAX));
                        *expect_key = false;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for level in &stack {
        match level {
            Level::Object { key: Some(key), .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Level::Object { key: None, .. } => {}
            Level::Array { index } => path.push_str(&format!("[{index}]")),
        }
    }
    (!path.is_empty()).then_some(path)
}

/// At most `max` bytes of client input for an error message (cut at a character boundary), with how long it was
/// when it was cut: error answers never echo large input back.
pub fn quote_input(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... ({} bytes)", &text[..cut], text.len())
}

/// A request body: `id` and `op` are read by [`parse_envelope`] and skipped here, and every other field must be one
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
    fn unknown_fields_are_named_by_their_path() {
        let cases = [
            (r#"{"id":1,"op":"append","events":[{"type":"A","data":{},"tag":[]}]}"#, "events[0].tag"),
            (
                r#"{"id":1,"op":"append","events":[{"type":"A","data":{"x":[1,{}]}},{"type":"A","data":{},"tags":[{"key":"k","value":"v","vlaue":1}]}]}"#,
                "events[1].tags[0].vlaue",
            ),
            (
                r#"{"id":1,"op":"append","events":[{"type":"A","data":{}}],"condition":{"fail_if_events_match":"all","afterr":1}}"#,
                "condition.afterr",
            ),
            (r#"{"id":1,"op":"read","query":{"items":[{"types":["A"],"tag":[]}]}}"#, "query.items[0].tag"),
            (r#"{"id":1,"op":"read","query":{"items":[{"types":["A"]}],"x":1}}"#, "query.x"),
        ];
        for (text, path) in cases {
            let err = if text.contains("append") {
                parse_body::<AppendRequest>("append", text.as_bytes()).unwrap_err()
            } else {
                parse_body::<ReadRequest>("read", text.as_bytes()).unwrap_err()
            };
            assert!(err.message.contains(&format!("at {path}:")), "{text}\n-> {err}");
            assert!(!err.message.contains("line 1 column"), "{err}");
        }
        let err = parse_body::<ReadRequest>("read", br#"{"id":1,"op":"read","after":"3"}"#).unwrap_err();
        assert!(err.message.contains("at after:"), "{err}");
    }

    #[test]
    fn error_lines_quote_little_input() {
        let long = "x".repeat(100_000);
        let (_, err) = parse_envelope(format!(r#"{{"id":{{"a":"{long}"}},"op":"head"}}"#).as_bytes()).unwrap_err();
        assert!(err.message.len() < 200, "{}", err.message.len());
        let (id, err) = parse_envelope(format!(r#"{{"id":"{long}","op":"head"}}"#).as_bytes()).unwrap_err();
        assert_eq!(id.as_json(), "null");
        assert!(err.message.contains("limit"), "{err}");
        let (_, err) = parse_envelope(format!(r#"{{"id":1,"op":"{long}"}}"#).as_bytes()).unwrap_err();
        assert!(err.message.len() < 200 && err.code == ErrorCode::UnknownOp, "{err}");
        let mut out = Vec::new();
        encode_error(&mut out, &RequestId::number(1), &ProtocolError::invalid(long.clone()));
        assert!(out.len() < ERROR_MESSAGE_BYTES_MAX + 100, "{}", out.len());
        assert_eq!(quote_input("añb", 2), "a... (4 bytes)");
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
