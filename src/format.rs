//! Everything about Opossum's file names and JSON: the one module that knows the on-disk layout
//! (`docs/format.md`). Pure functions over bytes and names; the store does the I/O.
//!
//! We write minified JSON (PascalCase ledger and index files, camelCase event files, nulls omitted) and read what
//! .NET Opossum writes: indented, CRLF line ends, non-ASCII and `<>&'+` as `\uXXXX`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::limits::FILE_NAME_BYTES_MAX;
use crate::model::{RawJson, SequencedEvent, Tag};

pub const LEDGER_FILE: &str = ".ledger";
pub const LOCK_FILE: &str = ".store.lock";
/// Held (flock, non-blocking) for a daemon's whole life so that two daemons never serve one store.
pub const OWNER_LOCK_FILE: &str = ".opossumd.lock";
pub const EVENTS_DIR: &str = "events";
pub const INDICES_DIR: &str = "Indices";
pub const EVENT_TYPE_INDEX_DIR: &str = "EventType";
pub const TAG_INDEX_DIR: &str = "Tags";
pub const PROJECTIONS_DIR: &str = "Projections";
/// This daemon's own files inside a store (the journal, the naming-rules record); .NET Opossum ignores it.
pub const DAEMON_DIR: &str = ".opossumd";
/// `unix` or `windows`: the file-name rules the store's index files follow ([`NamingRules`]), written by the
/// first open that finds none (docs/windows.md, "Index file names across platforms").
pub const NAMING_RULES_FILE: &str = "naming-rules";
/// Where recovery moves event files that belong to no acknowledged batch. Nothing is ever deleted.
pub const QUARANTINE_DIR: &str = ".quarantine";
/// Inside [`DAEMON_DIR`]: the old contents of index files and ledgers the daemon replaced, waiting to be deleted
/// (`store/trash.rs`), one directory per generation named by a decimal number. Never part of the tree: everything
/// in it is junk, deleted in the background.
pub const TRASH_DIR: &str = "trash";
/// Inside [`DAEMON_DIR`]: present while a run may have left writes that are not durable (`--durability none`),
/// from before its first such write until its clean close has synced them (`store/unsynced.rs`). Holds the
/// position through which the tree's event files were durable when it was made.
pub const UNSYNCED_MARKER_FILE: &str = "unsynced";

/// The directories of a store, derived from its root.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    pub events: PathBuf,
    pub type_index: PathBuf,
    pub tag_index: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        let indices = root.join(INDICES_DIR);
        Layout {
            root: root.to_path_buf(),
            events: root.join(EVENTS_DIR),
            type_index: indices.join(EVENT_TYPE_INDEX_DIR),
            tag_index: indices.join(TAG_INDEX_DIR),
        }
    }

    pub fn ledger(&self) -> PathBuf {
        self.root.join(LEDGER_FILE)
    }

    pub fn lock(&self) -> PathBuf {
        self.root.join(LOCK_FILE)
    }

    pub fn owner_lock(&self) -> PathBuf {
        self.root.join(OWNER_LOCK_FILE)
    }

    /// `.opossumd/naming-rules`
    pub fn naming_rules_record(&self) -> PathBuf {
        self.root.join(DAEMON_DIR).join(NAMING_RULES_FILE)
    }

    /// `.opossumd/unsynced` ([`UNSYNCED_MARKER_FILE`])
    pub fn unsynced_marker(&self) -> PathBuf {
        self.root.join(DAEMON_DIR).join(UNSYNCED_MARKER_FILE)
    }

    pub fn quarantine(&self) -> PathBuf {
        self.root.join(QUARANTINE_DIR)
    }

    /// `.opossumd/trash`
    pub fn trash(&self) -> PathBuf {
        self.root.join(DAEMON_DIR).join(TRASH_DIR)
    }

    /// `.opossumd/trash/<generation>`
    pub fn trash_generation(&self, generation: u64) -> PathBuf {
        self.trash().join(generation.to_string())
    }

    /// The generation a name in `.opossumd/trash` belongs to, or `None` for a name no generation has.
    pub fn trash_generation_of(name: &std::ffi::OsStr) -> Option<u64> {
        let name = name.to_str()?;
        name.bytes().all(|b| b.is_ascii_digit()).then(|| name.parse().ok()).flatten()
    }

    pub fn event_file(&self, position: u64) -> PathBuf {
        self.events.join(event_file_name(position))
    }

    pub fn type_index_file(&self, event_type: &str) -> PathBuf {
        self.type_index.join(type_index_file_name(event_type))
    }

    pub fn tag_index_file(&self, tag: &Tag) -> PathBuf {
        self.tag_index.join(tag_index_file_name(tag))
    }

    /// Every directory of the layout, parents first.
    pub fn dirs(&self) -> [PathBuf; 5] {
        [
            self.root.clone(),
            self.events.clone(),
            self.root.join(INDICES_DIR),
            self.type_index.clone(),
            self.tag_index.clone(),
        ]
    }
}

/// `0000000042.json`: the position zero-padded to at least 10 digits.
pub fn event_file_name(position: u64) -> String {
    format!("{position:010}.json")
}

/// The position an event file name stands for; `None` for temporary files and anything else.
pub fn parse_event_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".json")?;
    if stem.len() < 10 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// What every temporary name ends with: `.tmp.` and 32 lowercase hex digits (the shape .NET Opossum's temporary
/// files and rebuild directories have too). [`tmp_path`] makes these names, [`is_tmp_file_name`] recognises them;
/// nothing else in the crate spells `.tmp.`.
pub const TMP_MARKER: &str = ".tmp.";
const TMP_HEX_DIGITS: usize = 32;
/// Bytes a temporary name adds to the (possibly shortened) final name: `.tmp.` + 32 hex digits.
pub const TMP_SUFFIX_BYTES: usize = TMP_MARKER.len() + TMP_HEX_DIGITS;
// `tmp_path` cuts a long final name to `FILE_NAME_BYTES_MAX - TMP_SUFFIX_BYTES`: at least one byte must be left.
const _: () = assert!(TMP_SUFFIX_BYTES < FILE_NAME_BYTES_MAX);

/// A fresh temporary name beside `final_path`: `<final>.tmp.<32 hex>`, unique per process and call. A final name
/// so long that the suffix would push it past [`FILE_NAME_BYTES_MAX`] is first cut (at a character boundary) to
/// leave room, so every name that fits the limit has a temporary name that fits too (issue 11: a 213-byte tag's
/// index file could not be written because its temporary name was 37 bytes longer than its 250-byte final name).
/// The temporary name only has to be unique and recognisable, never parsed back.
pub fn tmp_path(final_path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let hi = nanos ^ ((std::process::id() as u64) << 32);
    let final_name = final_path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let mut keep = final_name.len().min(FILE_NAME_BYTES_MAX - TMP_SUFFIX_BYTES);
    while !final_name.is_char_boundary(keep) {
        keep -= 1;
    }
    let name = format!("{}{TMP_MARKER}{hi:016x}{n:016x}", &final_name[..keep]);
    debug_assert!(name.len() <= FILE_NAME_BYTES_MAX && is_tmp_file_name(&name), "{name}");
    final_path.with_file_name(name)
}

/// Is this a temporary file or directory left by an interrupted write: does the name END with `.tmp.` and exactly
/// 32 lowercase hex digits? A tag value like `ada.tmp.lovelace` makes an index file `email_ada.tmp.lovelace.json`,
/// which is not one (issue 11: recovery used to take it for one and delete it, losing the tag's index).
pub fn is_tmp_file_name(name: &str) -> bool {
    let Some(hex_start) = name.len().checked_sub(TMP_HEX_DIGITS) else { return false };
    let (head, hex) = name.split_at_checked(hex_start).unwrap_or((name, ""));
    hex.len() == TMP_HEX_DIGITS
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && head.ends_with(TMP_MARKER)
}

/// Does a name contain the temporary-name marker anywhere? Projection names, keys and tags are refused when they
/// do: .NET Opossum takes any such name in a projection directory for its own staging files.
pub fn contains_tmp_marker(name: &str) -> bool {
    name.contains(TMP_MARKER)
}

/// Which characters a platform's .NET (`Path.GetInvalidFileNameChars()`) refuses in a file name, and so which
/// ones `S()` and `K()` replace. A store's index file names follow the rules it was created with (recorded in
/// [`NAMING_RULES_FILE`]); lookups try both rules' stems, so a store copied between platforms still answers
/// (docs/windows.md, "Index file names across platforms").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamingRules {
    /// Linux and macOS: NUL and `/`.
    Unix,
    /// Windows: `" < > | : * ? \ /`, NUL and the control characters 1–31.
    Windows,
}

impl NamingRules {
    /// The rules of the platform this build runs on.
    #[cfg(windows)]
    pub const NATIVE: NamingRules = NamingRules::Windows;
    /// The rules of the platform this build runs on.
    #[cfg(not(windows))]
    pub const NATIVE: NamingRules = NamingRules::Unix;

    /// What [`NAMING_RULES_FILE`] holds for these rules.
    pub fn as_str(self) -> &'static str {
        match self {
            NamingRules::Unix => "unix",
            NamingRules::Windows => "windows",
        }
    }

    /// The rules a [`NAMING_RULES_FILE`] names (surrounding whitespace ignored); `None` for anything else.
    pub fn parse(text: &str) -> Option<NamingRules> {
        match text.trim() {
            "unix" => Some(NamingRules::Unix),
            "windows" => Some(NamingRules::Windows),
            _ => None,
        }
    }

    /// The rules index file names show, when they show any: a name holding a character only Unix allows was
    /// written under the Unix rules. A store whose names hold none of them could have been written under either.
    pub fn evident_in<'a>(index_file_names: impl IntoIterator<Item = &'a str>) -> Option<NamingRules> {
        index_file_names
            .into_iter()
            .any(|name| name.chars().any(|c| NamingRules::Windows.is_invalid_char(c)))
            .then_some(NamingRules::Unix)
    }

    /// The rules a store's new index files are written under: its own, except on Windows, where a Unix stem such
    /// as `time_12:30` would name an NTFS alternate data stream (`time_12`, stream `30.json`), not a file.
    pub fn for_writing_on_this_platform(self) -> NamingRules {
        if cfg!(windows) {
            NamingRules::Windows
        } else {
            self
        }
    }

    /// Is `c` refused in a file name under these rules?
    pub fn is_invalid_char(self, c: char) -> bool {
        match self {
            NamingRules::Windows => {
                matches!(c, '"' | '<' | '>' | '|' | ':' | '*' | '?' | '\\' | '/') || (c as u32) < 32
            }
            NamingRules::Unix => c == '\0' || c == '/',
        }
    }

    /// Opossum's `S(x)` under these rules: split on invalid characters, drop empty pieces, join with `_`.
    pub fn sanitize(self, x: &str) -> String {
        x.split(|c| self.is_invalid_char(c)).filter(|p| !p.is_empty()).collect::<Vec<_>>().join("_")
    }

    /// The stem of an event tag's index file under these rules, `S(key)_S(value)`.
    pub fn event_tag_stem(self, tag: &Tag) -> String {
        format!("{}_{}", self.sanitize(&tag.key), self.sanitize(&tag.value))
    }

    /// The stem of an event type's index file under these rules, `S(type)`.
    pub fn event_type_stem(self, event_type: &str) -> String {
        self.sanitize(event_type)
    }
}

/// Every stem an event tag's index file can have, whichever platform's rules wrote the store: the Unix stem,
/// and the Windows stem when it differs (only when the key or value holds a character only Unix allows).
pub fn event_tag_stems(tag: &Tag) -> impl Iterator<Item = String> {
    let differs = windows_differs(&tag.key) || windows_differs(&tag.value);
    std::iter::once(NamingRules::Unix.event_tag_stem(tag))
        .chain(differs.then(|| NamingRules::Windows.event_tag_stem(tag)))
}

/// Every stem an event type's index file can have (see [`event_tag_stems`]).
pub fn event_type_stems(event_type: &str) -> impl Iterator<Item = String> {
    std::iter::once(NamingRules::Unix.event_type_stem(event_type))
        .chain(windows_differs(event_type).then(|| NamingRules::Windows.event_type_stem(event_type)))
}

/// Does `x` hold a character Windows refuses and Unix allows (so that the two rules' `S(x)` differ)?
fn windows_differs(x: &str) -> bool {
    x.chars().any(|c| NamingRules::Windows.is_invalid_char(c) && !NamingRules::Unix.is_invalid_char(c))
}

/// Opossum's `S(x)` for event index file names: split on invalid file-name characters, drop empty pieces, join
/// with `_`. Different inputs can map to one name, so readers post-filter on the real type and tags.
pub fn sanitize(x: &str) -> String {
    NamingRules::NATIVE.sanitize(x)
}

/// The stem of an event type's index file, `S(type)` (the store's in-memory index is keyed by it).
pub fn event_type_stem(event_type: &str) -> String {
    NamingRules::NATIVE.event_type_stem(event_type)
}

/// The stem of an event tag's index file, `S(key)_S(value)` (case-sensitive, unlike projection tags).
pub fn event_tag_stem(tag: &Tag) -> String {
    NamingRules::NATIVE.event_tag_stem(tag)
}

/// An index file's name from its stem.
pub fn index_file_name(stem: &str) -> String {
    format!("{stem}.json")
}

/// The stem of an index file's name; `None` for temporary and other files.
pub fn parse_index_file_name(name: &str) -> Option<&str> {
    if is_tmp_file_name(name) {
        return None;
    }
    name.strip_suffix(".json")
}

pub fn type_index_file_name(event_type: &str) -> String {
    index_file_name(&event_type_stem(event_type))
}

pub fn tag_index_file_name(tag: &Tag) -> String {
    index_file_name(&event_tag_stem(tag))
}

/// Opossum's `K(x)` for projection file names: each invalid file-name character becomes `_` (nothing is dropped,
/// unlike `S()`). Projection names and keys are validated around it in `projection::format`.
pub fn projection_key_stem(x: &str) -> String {
    x.chars().map(|c| if NamingRules::NATIVE.is_invalid_char(c) { '_' } else { c }).collect()
}

/// The stem of a projection tag's index file, `K(lower key)_K(lower value)` with .NET's `ToLowerInvariant`:
/// projection tag matching is case-insensitive (unlike event tags), and `a_b`+`c` equals `a`+`b_c`.
pub fn projection_tag_stem(tag: &Tag) -> String {
    let lower = |x: &str| -> String { x.chars().flat_map(char::to_lowercase).collect() };
    format!("{}_{}", projection_key_stem(&lower(&tag.key)), projection_key_stem(&lower(&tag.value)))
}

/// `.ledger`: the commit record. An empty or missing file means an empty store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    #[serde(rename = "LastSequencePosition")]
    pub last_sequence_position: u64,
    #[serde(rename = "EventCount", default)]
    pub event_count: u64,
}

impl Ledger {
    pub fn encode(&self) -> Vec<u8> {
        let bytes = serde_json::to_vec(self).expect("ledger serialises");
        debug_assert_eq!(Ledger::decode(&bytes), Ok(Some(*self)), "the ledger reads back as written");
        bytes
    }

    /// `Ok(None)` for an empty (all-whitespace) file; `Err` for anything unparseable.
    pub fn decode(bytes: &[u8]) -> Result<Option<Ledger>, FormatError> {
        let text = strip_bom(bytes);
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(text).map(Some).map_err(|e| FormatError::Json(e.to_string()))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexFile<P> {
    #[serde(rename = "Positions")]
    positions: P,
}

/// `{"Positions":[...]}`
pub fn encode_index(positions: &[u64]) -> Vec<u8> {
    let bytes = serde_json::to_vec(&IndexFile { positions }).expect("index serialises");
    debug_assert!(
        decode_index(&bytes).is_ok_and(|read| read == positions),
        "an index file reads back as written (sorted, unique, ≥ 1)"
    );
    bytes
}

/// Parses an index file; the positions must be sorted and unique (Opossum keeps them so), otherwise the file is
/// reported corrupt so that the caller rebuilds it.
pub fn decode_index(bytes: &[u8]) -> Result<Vec<u64>, FormatError> {
    let file: IndexFile<Vec<u64>> =
        serde_json::from_slice(strip_bom(bytes)).map_err(|e| FormatError::Json(e.to_string()))?;
    if file.positions.windows(2).any(|w| w[0] >= w[1]) || file.positions.first() == Some(&0) {
        return Err(FormatError::Invalid("positions are not sorted, unique and ≥ 1".into()));
    }
    Ok(file.positions)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DomainEventOut<'a> {
    event_type: &'a str,
    event: &'a RawValue,
    tags: &'a [Tag],
}

#[derive(Deserialize)]
struct EventFileIn {
    event: DomainEventIn,
    position: u64,
    #[serde(default)]
    metadata: Option<RawJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DomainEventIn {
    event_type: String,
    event: RawJson,
    #[serde(default)]
    tags: Option<Vec<TagIn>>,
}

#[derive(Deserialize)]
struct TagIn {
    key: String,
    value: Option<String>,
}

/// One event file, minified, as .NET Opossum lays it out (camelCase, `event.event` = the payload).
pub fn encode_event(position: u64, event_type: &str, data: &RawValue, tags: &[Tag], metadata: &RawValue) -> Vec<u8> {
    let (mut bytes, tail) = encode_event_parts(event_type, data, tags, metadata);
    bytes.extend_from_slice(position.to_string().as_bytes());
    bytes.extend_from_slice(&tail);
    bytes
}

/// What one scan of (valid) JSON text finds: how deep its arrays and objects nest, and whether it has whitespace
/// outside its strings (so needs [`minify_json`]). One pass instead of a depth check and a whitespace check; string
/// contents are skipped with `memchr`, so payloads that are mostly text cost little.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonShape {
    pub depth: usize,
    pub spaced: bool,
}

/// Scans JSON text once (see [`JsonShape`]); without recursion, so no depth can exhaust the stack.
pub fn json_shape(text: &[u8]) -> JsonShape {
    let (mut depth, mut deepest, mut spaced) = (0usize, 0usize, false);
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                // Past the closing quote: the first `"` not escaped by a `\`.
                i += 1;
                while i < text.len() {
                    match memchr::memchr2(b'"', b'\\', &text[i..]) {
                        Some(k) if text[i + k] == b'\\' => i += k + 2,
                        Some(k) => {
                            i += k;
                            break;
                        }
                        None => i = text.len(),
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b' ' | b'\n' | b'\r' | b'\t' => spaced = true,
            _ => {}
        }
        i += 1;
    }
    JsonShape { depth: deepest, spaced }
}

/// `text` as a JSON string, appended to `out` (serde_json's escaping, as the event file's serialiser writes it).
pub fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // Plain text (the usual type or tag) needs no escaping: `"` + text + `"`.
    if !text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, text).expect("a string serialises");
    }
}

/// The event file's bytes before its data: `{"event":{"eventType":<type>,"event":` (see [`encode_event_parts`]).
pub fn push_event_file_before_data(out: &mut Vec<u8>, event_type: &str) {
    out.extend_from_slice(b"{\"event\":{\"eventType\":");
    push_json_string(out, event_type);
    out.extend_from_slice(b",\"event\":");
}

/// The event file's bytes between its data and its position: `,"tags":[{"key":..,"value":..},..]},"position":`.
pub fn push_event_file_after_data<'a>(out: &mut Vec<u8>, tags: impl IntoIterator<Item = (&'a str, &'a str)>) {
    out.extend_from_slice(b",\"tags\":");
    push_tags_json(out, tags);
    out.extend_from_slice(b"},\"position\":");
}

/// Tags as the JSON array event files and read lines both spell: `[{"key":..,"value":..},..]`.
pub fn push_tags_json<'a>(out: &mut Vec<u8>, tags: impl IntoIterator<Item = (&'a str, &'a str)>) {
    out.push(b'[');
    for (i, (key, value)) in tags.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"key\":");
        push_json_string(out, key);
        out.extend_from_slice(b",\"value\":");
        push_json_string(out, value);
        out.push(b'}');
    }
    out.push(b']');
}

/// The event file's bytes after its position: `,"metadata":<metadata>}`.
pub fn push_event_file_after_position(out: &mut Vec<u8>, metadata: &str) {
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(metadata.as_bytes());
    out.push(b'}');
}

/// An event file split around its position number: `{"event":{..},"position":` and `,"metadata":{..}}`, so the
/// expensive part is encoded before the position is known.
pub fn encode_event_parts(event_type: &str, data: &RawValue, tags: &[Tag], metadata: &RawValue) -> (Vec<u8>, Vec<u8>) {
    let mut head = Vec::with_capacity(data.get().len() + 128);
    head.extend_from_slice(b"{\"event\":");
    serde_json::to_writer(&mut head, &DomainEventOut { event_type, event: data, tags }).expect("event serialises");
    head.extend_from_slice(b",\"position\":");
    let mut tail = Vec::with_capacity(metadata.get().len() + 16);
    tail.extend_from_slice(b",\"metadata\":");
    tail.extend_from_slice(metadata.get().as_bytes());
    tail.push(b'}');
    (head, tail)
}

/// Parses an event file written by this library or by .NET Opossum. Payload and metadata keep their meaning
/// byte for byte; indentation is removed so every value fits on one line of the wire protocol.
/// A null tag value (possible in .NET) reads as the text `null`, as Opossum's `S()` names it.
pub fn decode_event(bytes: &[u8]) -> Result<SequencedEvent, FormatError> {
    let bytes = strip_bom(bytes);
    let minified;
    let bytes = if bytes.contains(&b'\n') || bytes.contains(&b'\r') {
        minified = minify_json(bytes);
        &minified[..]
    } else {
        bytes
    };
    let file: EventFileIn = serde_json::from_slice(bytes).map_err(|e| FormatError::Json(e.to_string()))?;
    if file.event.event_type.is_empty() {
        return Err(FormatError::Invalid("empty eventType".into()));
    }
    let tags = file
        .event
        .tags
        .unwrap_or_default()
        .into_iter()
        .map(|t| Tag { key: t.key, value: t.value.unwrap_or_else(|| "null".to_string()) })
        .collect();
    let metadata = match file.metadata {
        Some(m) => m,
        None => RawValue::from_string("{}".into()).expect("valid json"),
    };
    Ok(SequencedEvent {
        position: file.position,
        event_type: file.event.event_type,
        data: file.event.event,
        tags,
        metadata,
    })
}

/// Removes insignificant whitespace from valid JSON (outside strings); leaves escapes untouched.
pub fn minify_json(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in input {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
    out
}

fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// Fills in `timestamp` when the caller's metadata lacks one; returns minified metadata JSON.
pub fn metadata_with_timestamp(
    metadata: Option<&RawValue>,
    now: std::time::SystemTime,
) -> Result<RawJson, FormatError> {
    let mut map: serde_json::Map<String, serde_json::Value> = match metadata {
        Some(m) => serde_json::from_str(m.get()).map_err(|e| FormatError::Invalid(format!("metadata: {e}")))?,
        None => serde_json::Map::new(),
    };
    map.retain(|_, v| !v.is_null());
    if !map.contains_key("timestamp") {
        map.insert("timestamp".into(), serde_json::Value::String(dotnet_timestamp(now)));
    }
    let text = serde_json::to_string(&map).expect("metadata serialises");
    Ok(RawValue::from_string(text).expect("valid json"))
}

/// Whether JSON text has whitespace outside its strings (spaces inside strings are common and need no minifying).
fn has_space_outside_strings(text: &[u8]) -> bool {
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b' ' | b'\n' | b'\r' | b'\t' => return true,
            b'"' => {
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// Re-serialises client JSON minified (payloads arrive as arbitrary, possibly indented, JSON text).
pub fn minify_raw(raw: &RawValue) -> RawJson {
    let text = raw.get();
    if !has_space_outside_strings(text.as_bytes()) {
        return raw.to_owned();
    }
    let bytes = minify_json(text.as_bytes());
    RawValue::from_string(String::from_utf8(bytes).expect("minifying keeps UTF-8")).expect("minifying keeps JSON")
}

/// A `DateTimeOffset` in .NET's round-trip format, UTC: `2026-03-11T10:30:00.1234567+00:00`.
pub fn dotnet_timestamp(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:07}+00:00",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_nanos() / 100
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_file_names_are_ten_digit_padded() {
        assert_eq!(event_file_name(42), "0000000042.json");
        assert_eq!(event_file_name(12_345_678_901), "12345678901.json");
        assert_eq!(parse_event_file_name("0000000042.json"), Some(42));
        assert_eq!(parse_event_file_name("12345678901.json"), Some(12_345_678_901));
        assert_eq!(parse_event_file_name("42.json"), None);
        assert_eq!(parse_event_file_name("0000000042.json.tmp.0123456789abcdef0123456789abcdef"), None);
        assert!(is_tmp_file_name("0000000042.json.tmp.0123456789abcdef0123456789abcdef"));
    }

    #[test]
    fn temporary_names_are_recognised_only_by_their_exact_suffix() {
        let hex = "0123456789abcdef0123456789abcdef";
        for tmp in [format!(".ledger.tmp.{hex}"), format!("StudentShortInfo.tmp.{hex}"), format!("a.json.tmp.{hex}")] {
            assert!(is_tmp_file_name(&tmp), "{tmp}");
        }
        for not_tmp in [
            "email_ada.tmp.lovelace@example.com.json".to_string(),
            "courseId_x.tmp.y.json".to_string(),
            format!("a.json.tmp.{}", hex.to_uppercase()),
            format!("a.json.tmp.{}", &hex[1..]),
            format!("a.json.tmp.{hex}0"),
            format!("a.json.tmp.{hex}.json"),
            format!("a.json.tmp-{hex}"),
            "x.tmp.1".to_string(),
            hex.to_string(),
        ] {
            assert!(!is_tmp_file_name(&not_tmp), "{not_tmp}");
        }
    }

    #[test]
    fn tmp_paths_are_unique_recognised_and_fit_the_file_name_limit() {
        let a = tmp_path(Path::new("/x/events/0000000001.json"));
        let b = tmp_path(Path::new("/x/events/0000000001.json"));
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("/x/events")));
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("0000000001.json") && is_tmp_file_name(name), "{name}");
        assert_eq!(name.len(), "0000000001.json".len() + TMP_SUFFIX_BYTES);
        // The longest final names still get a temporary name within the limit, cut at a character boundary.
        for long in ["t".repeat(FILE_NAME_BYTES_MAX), "é".repeat(FILE_NAME_BYTES_MAX / 2)] {
            let tmp = tmp_path(&Path::new("/x").join(&long));
            let name = tmp.file_name().unwrap().to_str().unwrap();
            assert!(name.len() <= FILE_NAME_BYTES_MAX && is_tmp_file_name(name), "{name}");
        }
    }

    #[test]
    fn sanitiser_splits_on_invalid_chars_and_joins_with_underscore() {
        assert_eq!(sanitize("StudentRegistered"), "StudentRegistered");
        assert_eq!(sanitize("a/b"), "a_b");
        assert_eq!(sanitize("/a//b/"), "a_b");
        assert_eq!(sanitize("a\0b"), "a_b");
        assert_eq!(tag_index_file_name(&Tag::new("a_b", "c")), tag_index_file_name(&Tag::new("a", "b_c")));
        assert_eq!(tag_index_file_name(&Tag::new("studentId", "42")), "studentId_42.json");
    }

    #[test]
    fn windows_rules_make_legal_names_of_every_character_ntfs_refuses() {
        let w = NamingRules::Windows;
        assert_eq!(w.event_tag_stem(&Tag::new("time", "12:30")), "time_12_30");
        assert_eq!(w.event_tag_stem(&Tag::new("q", "why?")), "q_why");
        assert_eq!(w.event_tag_stem(&Tag::new("path", r#"C:\a\b"#)), "path_C_a_b");
        assert_eq!(w.sanitize("a\"b<c>d|e*f\u{1}g\u{1f}h\0i"), "a_b_c_d_e_f_g_h_i");
        let refused = ['"', '<', '>', '|', ':', '*', '?', '\\', '/', '\0', '\u{1}', '\u{1f}'];
        let every = Tag::new(String::from_iter(refused), format!("v{}", String::from_iter(refused)));
        assert!(!w.event_tag_stem(&every).chars().any(|c| refused.contains(&c)), "{}", w.event_tag_stem(&every));
        // The Unix rules keep what only Windows refuses: a store keeps the rules of the platform that wrote it.
        assert_eq!(NamingRules::Unix.event_tag_stem(&Tag::new("time", "12:30")), "time_12:30");
        assert_eq!(NamingRules::Unix.sanitize("a/b\0c"), NamingRules::Windows.sanitize("a/b\0c"));
        assert_eq!(sanitize("x:y"), NamingRules::NATIVE.sanitize("x:y"));
    }

    #[test]
    fn a_tag_has_both_rules_stems_only_when_they_differ() {
        let stems = |k: &str, v: &str| event_tag_stems(&Tag::new(k, v)).collect::<Vec<_>>();
        assert_eq!(stems("region", "eu"), ["region_eu"]);
        assert_eq!(stems("a/b", "c"), ["a_b_c"], "both rules refuse `/`");
        assert_eq!(stems("region", "eu:west"), ["region_eu:west", "region_eu_west"]);
        assert_eq!(stems("why?", "x"), ["why?_x", "why_x"]);
        assert_eq!(event_type_stems("Ns:Type").collect::<Vec<_>>(), ["Ns:Type", "Ns_Type"]);
        assert_eq!(event_type_stems("Type").collect::<Vec<_>>(), ["Type"]);
    }

    #[test]
    fn naming_rules_are_recorded_and_evident_in_unix_only_names() {
        for rules in [NamingRules::Unix, NamingRules::Windows] {
            assert_eq!(NamingRules::parse(&format!("{}\n", rules.as_str())), Some(rules));
        }
        assert_eq!(NamingRules::parse("ntfs"), None);
        assert_eq!(NamingRules::evident_in(["a_b.json", "time_12_30.json"]), None);
        assert_eq!(NamingRules::evident_in(["a_b.json", "time_12:30.json"]), Some(NamingRules::Unix));
        assert_eq!(NamingRules::Windows.for_writing_on_this_platform(), NamingRules::Windows);
        let unix_here = if cfg!(windows) { NamingRules::Windows } else { NamingRules::Unix };
        assert_eq!(NamingRules::Unix.for_writing_on_this_platform(), unix_here);
    }

    #[test]
    fn ledger_round_trips_and_empty_means_zero() {
        let l = Ledger { last_sequence_position: 7, event_count: 7 };
        assert_eq!(l.encode(), br#"{"LastSequencePosition":7,"EventCount":7}"#);
        assert_eq!(Ledger::decode(&l.encode()).unwrap(), Some(l));
        assert_eq!(Ledger::decode(b"").unwrap(), None);
        assert_eq!(Ledger::decode(b" \r\n").unwrap(), None);
        assert!(Ledger::decode(b"{\"LastSeq").is_err());
        let indented = b"{\r\n  \"LastSequencePosition\": 3,\r\n  \"EventCount\": 3\r\n}";
        assert_eq!(Ledger::decode(indented).unwrap().unwrap().last_sequence_position, 3);
    }

    #[test]
    fn index_round_trips_and_rejects_disorder() {
        assert_eq!(encode_index(&[1, 5, 9]), br#"{"Positions":[1,5,9]}"#);
        assert_eq!(decode_index(b"{\r\n  \"Positions\": [\r\n    1,\r\n    5\r\n  ]\r\n}").unwrap(), vec![1, 5]);
        assert!(decode_index(br#"{"Positions":[5,1]}"#).is_err());
        assert!(decode_index(br#"{"Positions":[1,1]}"#).is_err());
        assert!(decode_index(br#"{"Positions":[0]}"#).is_err());
        assert!(decode_index(b"garbage").is_err());
    }

    #[test]
    fn event_round_trips_minified_camel_case() {
        let data = RawValue::from_string(r#"{"$type":"X, Y","name":"Ann"}"#.into()).unwrap();
        let meta = RawValue::from_string(r#"{"timestamp":"2026-03-11T10:30:00.1234567+00:00"}"#.into()).unwrap();
        let bytes = encode_event(3, "StudentRegistered", &data, &[Tag::new("studentId", "7")], &meta);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"event":{"eventType":"StudentRegistered","event":{"$type":"X, Y","name":"Ann"},"tags":[{"key":"studentId","value":"7"}]},"position":3,"metadata":{"timestamp":"2026-03-11T10:30:00.1234567+00:00"}}"#
        );
        let e = decode_event(&bytes).unwrap();
        assert_eq!((e.position, e.event_type.as_str(), e.data.get()), (3, "StudentRegistered", data.get()));
        assert_eq!(e.tags, vec![Tag::new("studentId", "7")]);
    }

    #[test]
    fn reads_indented_crlf_escaped_dotnet_events() {
        let text = "\u{feff}{\r\n  \"event\": {\r\n    \"eventType\": \"A\",\r\n    \"event\": {\r\n      \"$type\": \"N.A, N\",\r\n      \"note\": \"x \\u003C y \\u0026 \\\"q\\\"  two spaces\"\r\n    },\r\n    \"tags\": [\r\n      {\r\n        \"key\": \"k\",\r\n        \"value\": null\r\n      }\r\n    ]\r\n  },\r\n  \"position\": 1,\r\n  \"metadata\": {\r\n    \"timestamp\": \"2026-03-11T10:30:00.1234567+01:00\"\r\n  }\r\n}";
        let e = decode_event(text.as_bytes()).unwrap();
        assert_eq!(e.data.get(), r#"{"$type":"N.A, N","note":"x \u003C y \u0026 \"q\"  two spaces"}"#);
        assert_eq!(e.tags, vec![Tag::new("k", "null")]);
        assert_eq!(e.metadata.get(), r#"{"timestamp":"2026-03-11T10:30:00.1234567+01:00"}"#);
        let v: serde_json::Value = serde_json::from_str(e.data.get()).unwrap();
        assert_eq!(v["note"], "x < y & \"q\"  two spaces");
    }

    #[test]
    fn corrupt_event_files_are_errors() {
        assert!(decode_event(b"").is_err());
        assert!(decode_event(b"{\"event\":{\"eventType\":\"A\"").is_err());
        assert!(decode_event(br#"{"event":{"eventType":"","event":{}},"position":1}"#).is_err());
    }

    #[test]
    fn timestamps_use_dotnet_round_trip_format() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_773_225_000, 123_456_789);
        assert_eq!(dotnet_timestamp(t), "2026-03-11T10:30:00.1234567+00:00");
        assert_eq!(dotnet_timestamp(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.0000000+00:00");
        let leap = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // 2000-02-29
        assert!(dotnet_timestamp(leap).starts_with("2000-02-29T00:00:00"));
    }

    #[test]
    fn metadata_keeps_caller_fields_and_adds_a_timestamp() {
        let m = RawValue::from_string(r#"{"correlationId":"c1","userId":null}"#.into()).unwrap();
        let out = metadata_with_timestamp(Some(&m), std::time::UNIX_EPOCH).unwrap();
        assert_eq!(out.get(), r#"{"correlationId":"c1","timestamp":"1970-01-01T00:00:00.0000000+00:00"}"#);
        let m = RawValue::from_string(r#"{"timestamp":"keep"}"#.into()).unwrap();
        assert_eq!(metadata_with_timestamp(Some(&m), std::time::UNIX_EPOCH).unwrap().get(), r#"{"timestamp":"keep"}"#);
    }

    #[test]
    fn one_scan_finds_the_depth_and_whitespace_the_separate_checks_find() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        for text in [
            r#"{"a":"x y","b":["\" z"]}"#.to_string(),
            r#"{"a":"x\\", "b":1}"#.to_string(),
            r#"{"a":"q\"", "b":[[1]]}"#.to_string(),
            r#"{"a":"[[[{{{\"]]]","b":{"c":{}}}"#.to_string(),
            "[1,\n2]".to_string(),
            "\"é ü \\u00e9\"".to_string(),
            "\"unterminated \\".to_string(),
            "{\r\n\t\"k\": [ ] }".to_string(),
            nested(200),
            "5".to_string(),
        ] {
            let shape = json_shape(text.as_bytes());
            assert_eq!(shape.spaced, has_space_outside_strings(text.as_bytes()), "{text}");
            assert_eq!(shape.spaced, minify_json(text.as_bytes()) != text.as_bytes(), "{text}");
            // The depth `model::check_json_depth` measures, by its loop.
            let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
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
                        deepest = deepest.max(depth);
                    }
                    b'}' | b']' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
            assert_eq!(shape.depth, deepest, "{text}");
        }
    }

    #[test]
    fn event_file_pieces_are_what_the_serialiser_writes() {
        let data = RawValue::from_string(r#"{"a":"x  y"}"#.into()).unwrap();
        let meta = RawValue::from_string(r#"{"timestamp":"t"}"#.into()).unwrap();
        for (event_type, tags) in
            [("A", vec![]), ("Tést \"q\" \\ /", vec![Tag::new("k\"", "é"), Tag::new("a b", "\u{1}\u{7f}\u{85}")])]
        {
            let mut file = Vec::new();
            push_event_file_before_data(&mut file, event_type);
            file.extend_from_slice(data.get().as_bytes());
            push_event_file_after_data(&mut file, tags.iter().map(|t| (t.key.as_str(), t.value.as_str())));
            file.extend_from_slice(b"42");
            push_event_file_after_position(&mut file, meta.get());
            assert_eq!(file, encode_event(42, event_type, &data, &tags, &meta), "{event_type}");
        }
    }

    #[test]
    fn minify_leaves_strings_alone() {
        assert_eq!(minify_json(b"{ \"a b\" : [ 1 , \"\\\" x \" ] }\r\n"), br#"{"a b":[1,"\" x "]}"#);
    }

    #[test]
    fn minify_raw_copies_text_whose_only_spaces_are_in_strings() {
        let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
        for (text, minified) in [
            (r#"{"a":"x y","b":["\" z"]}"#, r#"{"a":"x y","b":["\" z"]}"#),
            (r#"{"a":"x\\", "b":1}"#, r#"{"a":"x\\","b":1}"#),
            (r#"{"a":"q\"", "b":1}"#, r#"{"a":"q\"","b":1}"#),
            ("[1,\n2]", "[1,2]"),
        ] {
            assert_eq!(minify_raw(&raw(text)).get(), minified, "{text}");
        }
    }
}
