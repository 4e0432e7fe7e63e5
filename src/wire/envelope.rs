//! The envelope of every request (`id`, `op`), body parsing with unknown fields named by their JSON path, and the
//! short quoting of client input in error messages.

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::error::{ErrorCode, ProtocolError};
use crate::limits::{INPUT_QUOTE_BYTES_MAX, REQUEST_ID_BYTES_MAX};

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
///
/// An `append` line that starts `{"id":<digits or plain string>,"op":"append",` is read from that prefix alone: the
/// rest (a batch's megabyte of events) is checked once, by the body's parse (`parse_append`), and when that refuses
/// the line the append handler runs [`parse_envelope_whole`] first, so the error is the one this function would
/// have given for the whole line (`ops::core::append`).
pub fn parse_envelope(line: &[u8]) -> Result<Envelope, (RequestId, ProtocolError)> {
    match append_envelope(line) {
        Some(envelope) => Ok(envelope),
        None => parse_envelope_whole(line),
    }
}

/// The envelope of an append line from its prefix `{"id":<id>,"op":"append",` (see [`parse_envelope`]); `None`
/// for any other line, and for ids other than plain digits or a string without escapes or control characters.
fn append_envelope(line: &[u8]) -> Option<Envelope> {
    let rest = line.strip_prefix(b"{\"id\":")?;
    let id_len = match rest.first()? {
        b'"' => {
            2 + rest[1..].iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).filter(|&n| rest[1 + n] == b'"')?
        }
        b'1'..=b'9' => rest.iter().position(|b| !b.is_ascii_digit())?,
        _ => return None,
    };
    if id_len > REQUEST_ID_BYTES_MAX {
        return None;
    }
    let (id, rest) = rest.split_at(id_len);
    rest.strip_prefix(b",\"op\":\"append\",")?;
    let id = RawValue::from_string(std::str::from_utf8(id).ok()?.to_string()).ok()?;
    Some(Envelope { id: RequestId(id), op: "append".to_string() })
}

/// [`parse_envelope`] with the whole line checked as JSON, whatever its op.
pub fn parse_envelope_whole(line: &[u8]) -> Result<Envelope, (RequestId, ProtocolError)> {
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
