//! Projection file names and JSON, as .NET Opossum lays them out (`docs/format.md`, "Tree"):
//!
//! ```text
//! Projections/_checkpoints/<Name>.checkpoint          {"ProjectionName","LastProcessedPosition","LastUpdated","TotalEventsProcessed"}
//! Projections/<Name>/<K(key)>.json                     {"Data": <state>, "Metadata": {CreatedAt, LastUpdatedAt, Version, SizeInBytes}}
//! Projections/<Name>/Indices/<lower k>_<lower v>.json  ["<key>", ...]
//! Projections/<Name>/Metadata/index.json               {"<key>": {CreatedAt, LastUpdatedAt, Version, SizeInBytes}, ...}
//! ```
//!
//! Pure functions over names and bytes; the store does the I/O.
//!
//! Two additions of ours, both invisible to .NET (System.Text.Json skips unknown properties):
//! - projection files we write carry `"Key"` (the real key; `K(key)` loses `/`) and `"Tags"` (`[{"Key","Value"}]`),
//!   so that the tag indices and the metadata index can be rebuilt from the projection files alone;
//! - `Metadata/opossumd.dirty` (not `*.json`, so .NET's `GetAll` never reads it) marks a projection whose index
//!   files may lag its projection files (see `projection/mod.rs`, "Crash consistency").
//!
//! Like Opossum, the `SizeInBytes` inside a projection file is 0 and the one in `Metadata/index.json` is the file's
//! length (Opossum cannot know the length before serialising; we report the real length on reads).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use crate::format::FormatError;
use crate::model::{RawJson, Tag};

pub const PROJECTIONS_DIR: &str = crate::format::PROJECTIONS_DIR;
pub const INDICES_DIR: &str = "Indices";
pub const METADATA_DIR: &str = "Metadata";
pub const METADATA_INDEX_FILE: &str = "index.json";
pub const CHECKPOINTS_DIR: &str = "_checkpoints";
pub const CHECKPOINT_SUFFIX: &str = ".checkpoint";
pub const PROJECTION_FILE_SUFFIX: &str = ".json";
/// Present while index files may lag the projection files; see the module docs.
pub const DIRTY_MARKER_FILE: &str = "opossumd.dirty";

pub use crate::limits::{
    PROJECTION_KEY_BYTES_MAX as KEY_BYTES_MAX, PROJECTION_NAME_BYTES_MAX as NAME_BYTES_MAX,
    PROJECTION_TAG_FILE_NAME_BYTES_MAX as TAG_FILE_NAME_BYTES_MAX,
};

/// A projection name, key or tag that cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct NameError {
    pub what: &'static str,
    pub value: String,
    pub reason: &'static str,
}

fn name_error(what: &'static str, value: &str, reason: &'static str) -> NameError {
    NameError { what, value: value.to_string(), reason }
}

/// Characters .NET's `Path.GetInvalidFileNameChars()` returns on this platform.
fn is_invalid_file_name_char(c: char) -> bool {
    crate::format::NamingRules::NATIVE.is_invalid_char(c)
}

/// Path separators a hostile key could use to climb out of its directory.
fn is_separator(c: char) -> bool {
    c == '/' || (cfg!(windows) && c == '\\')
}

/// Opossum's `K(x)`: each invalid file-name character becomes `_` (nothing is dropped). Owned by `crate::format`.
pub use crate::format::projection_key_stem as sanitize_key;

/// Checks a projection name. Opossum uses the name as a directory name unchanged, so anything that is not one plain
/// file name is refused rather than sanitised: empty or blank, `.`/`..`, separators, NUL (and on Windows the other
/// invalid characters), the reserved `_checkpoints`, and the temporary-name marker (`format::TMP_MARKER`, Opossum's rebuild staging directories).
pub fn validate_projection_name(name: &str) -> Result<(), NameError> {
    let err = |reason| Err(name_error("projection name", name, reason));
    if name.trim().is_empty() {
        return err("empty or blank");
    }
    if name.len() > NAME_BYTES_MAX {
        return err("longer than 200 bytes");
    }
    if name == "." || name == ".." {
        return err("a relative directory reference");
    }
    if name.chars().any(|c| is_invalid_file_name_char(c) || is_separator(c)) {
        return err("contains a path separator or a character invalid in file names");
    }
    if name == CHECKPOINTS_DIR {
        return err("reserved for checkpoints");
    }
    if crate::format::contains_tmp_marker(name) {
        return err("contains the temporary-name marker (reserved for temporary files)");
    }
    Ok(())
}

/// Checks a projection key and returns `K(key)`, the stem of its file name. Keys are sanitised as Opossum does
/// (`a/b` → `a_b.json`), and additionally refused when they could mean a path outside the directory or could not be
/// a file: empty or blank, absolute, a `.` or `..` path segment, NUL, the temporary-name marker (temporary files are never read).
pub fn key_file_stem(key: &str) -> Result<String, NameError> {
    let err = |reason| Err(name_error("projection key", key, reason));
    if key.trim().is_empty() {
        return err("empty or blank");
    }
    if key.contains('\0') {
        return err("contains NUL");
    }
    if key.starts_with(is_separator) || (cfg!(windows) && key.as_bytes().get(1) == Some(&b':')) {
        return err("an absolute path");
    }
    if key.split(is_separator).any(|segment| segment == "." || segment == "..") {
        return err("contains a `.` or `..` path segment");
    }
    if crate::format::contains_tmp_marker(key) {
        return err("contains the temporary-name marker (reserved for temporary files)");
    }
    let stem = sanitize_key(key);
    if stem.len() > KEY_BYTES_MAX {
        return err("longer than 200 bytes");
    }
    debug_assert!(!stem.contains(is_separator) && stem != "." && stem != "..");
    Ok(stem)
}

/// The stem of a tag's index file, `<lower k>_<lower v>` with each invalid character replaced by `_`, exactly as
/// Opossum names it. Tag matching is by this stem: case-insensitive, and (as in Opossum) `a_b`+`c` equals `a`+`b_c`.
pub fn tag_stem(tag: &Tag) -> Result<String, NameError> {
    let stem = crate::format::projection_tag_stem(tag);
    let text = format!("{}={}", tag.key, tag.value);
    if stem.len() + PROJECTION_FILE_SUFFIX.len() > TAG_FILE_NAME_BYTES_MAX {
        return Err(name_error("tag", &text, "its index file name would be longer than 250 bytes"));
    }
    if crate::format::contains_tmp_marker(&stem) {
        return Err(name_error("tag", &text, "contains the temporary-name marker (reserved for temporary files)"));
    }
    Ok(stem)
}

/// The stem of a `*.json` file name in a projection directory, or `None` for temporary and other files.
pub fn parse_json_file_name(name: &str) -> Option<&str> {
    if crate::format::is_tmp_file_name(name) {
        return None;
    }
    name.strip_suffix(PROJECTION_FILE_SUFFIX).filter(|stem| !stem.is_empty())
}

/// Opossum's `ProjectionMetadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionMetadata {
    #[serde(rename = "CreatedAt", alias = "createdAt")]
    pub created_at: String,
    #[serde(rename = "LastUpdatedAt", alias = "lastUpdatedAt")]
    pub last_updated_at: String,
    #[serde(rename = "Version", alias = "version")]
    pub version: u64,
    #[serde(rename = "SizeInBytes", alias = "sizeInBytes", default)]
    pub size_in_bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct TagIo<'a> {
    #[serde(rename = "Key", alias = "key", borrow)]
    key: std::borrow::Cow<'a, str>,
    #[serde(rename = "Value", alias = "value", borrow)]
    value: std::borrow::Cow<'a, str>,
}

#[derive(Serialize)]
struct FileOut<'a> {
    #[serde(rename = "Data")]
    data: &'a RawValue,
    #[serde(rename = "Metadata")]
    metadata: &'a ProjectionMetadata,
    #[serde(rename = "Key")]
    key: &'a str,
    #[serde(rename = "Tags")]
    tags: Vec<TagIo<'a>>,
}

#[derive(Deserialize)]
struct FileIn<'a> {
    #[serde(rename = "Data", alias = "data", borrow)]
    data: &'a RawValue,
    #[serde(rename = "Metadata", alias = "metadata", borrow)]
    metadata: MetadataIn<'a>,
    #[serde(rename = "Key", alias = "key", default, borrow)]
    key: Option<Cow<'a, str>>,
    #[serde(rename = "Tags", alias = "tags", default, borrow)]
    tags: Option<Vec<TagIo<'a>>>,
}

/// [`ProjectionMetadata`] borrowed from the file's bytes.
#[derive(Deserialize)]
struct MetadataIn<'a> {
    #[serde(rename = "CreatedAt", alias = "createdAt", borrow)]
    created_at: Cow<'a, str>,
    #[serde(rename = "LastUpdatedAt", alias = "lastUpdatedAt", borrow)]
    last_updated_at: Cow<'a, str>,
    #[serde(rename = "Version", alias = "version")]
    version: u64,
    #[serde(rename = "SizeInBytes", alias = "sizeInBytes", default)]
    size_in_bytes: u64,
}

/// A projection file parsed without copying: what streaming reads re-frame onto the wire as they are.
#[derive(Debug)]
pub struct ProjectionView<'a> {
    /// The state, minified (borrowed unless the file was indented, as .NET writes it).
    pub state: Cow<'a, RawValue>,
    pub created_at: Cow<'a, str>,
    pub last_updated_at: Cow<'a, str>,
    pub version: u64,
    /// As written in the file (Opossum writes 0 there).
    pub size_in_bytes: u64,
    /// Present in files this crate wrote.
    pub key: Option<Cow<'a, str>>,
    /// Present in files this crate wrote: (key, value) pairs.
    pub tags: Option<Vec<(Cow<'a, str>, Cow<'a, str>)>>,
}

/// Whether JSON text has whitespace outside its string literals (then it is not minified).
fn has_insignificant_whitespace(text: &[u8]) -> bool {
    // Most states hold no whitespace byte at all: check that first, 32 bytes at a time (branch-free, vectorised).
    let is_ws = |b: &u8| matches!(*b, b' ' | b'\n' | b'\r' | b'\t');
    if !text.chunks(32).any(|chunk| chunk.iter().fold(false, |seen, b| seen | is_ws(b))) {
        return false;
    }
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            return true;
        }
    }
    false
}

/// A projection file as read back.
#[derive(Debug)]
pub struct DecodedProjection {
    /// The state, minified.
    pub state: RawJson,
    /// As written in the file (Opossum writes `SizeInBytes: 0` there).
    pub metadata: ProjectionMetadata,
    /// Present in files this crate wrote; .NET files name the key only through `K(key)`.
    pub key: Option<String>,
    /// Present in files this crate wrote; .NET keeps tags only in the index files.
    pub tags: Option<Vec<Tag>>,
}

/// One projection file, minified. `metadata.size_in_bytes` is written as 0, as Opossum does.
pub fn encode_projection(key: &str, state: &RawValue, metadata: &ProjectionMetadata, tags: &[Tag]) -> Vec<u8> {
    let metadata = ProjectionMetadata { size_in_bytes: 0, ..metadata.clone() };
    let tags = tags.iter().map(|t| TagIo { key: t.key.as_str().into(), value: t.value.as_str().into() }).collect();
    let mut out = Vec::with_capacity(state.get().len() + 256);
    serde_json::to_writer(&mut out, &FileOut { data: state, metadata: &metadata, key, tags })
        .expect("projection serialises");
    out
}

/// Parses a projection file written by this crate or by .NET Opossum (indented, CRLF, `\uXXXX` escapes, BOM).
pub fn decode_projection(bytes: &[u8]) -> Result<DecodedProjection, FormatError> {
    let v = decode_projection_view(bytes)?;
    Ok(DecodedProjection {
        state: v.state.into_owned(),
        metadata: ProjectionMetadata {
            created_at: v.created_at.into_owned(),
            last_updated_at: v.last_updated_at.into_owned(),
            version: v.version,
            size_in_bytes: v.size_in_bytes,
        },
        key: v.key.map(Cow::into_owned),
        tags: v.tags.map(|tags| tags.into_iter().map(|(k, v)| Tag::new(k, v)).collect()),
    })
}

/// [`decode_projection`] without copying what can be borrowed from `bytes`.
pub fn decode_projection_view(bytes: &[u8]) -> Result<ProjectionView<'_>, FormatError> {
    let bytes = strip_bom(bytes);
    let file: FileIn<'_> = serde_json::from_slice(bytes).map_err(|e| FormatError::Json(e.to_string()))?;
    if file.metadata.version == 0 {
        return Err(FormatError::Invalid("Metadata.Version is 0 (versions start at 1)".into()));
    }
    // Files we write are minified; .NET indents them. (Whitespace inside strings is data, not indentation.)
    let state = if has_insignificant_whitespace(file.data.get().as_bytes()) {
        Cow::Owned(crate::format::minify_raw(file.data))
    } else {
        Cow::Borrowed(file.data)
    };
    let m = file.metadata;
    Ok(ProjectionView {
        state,
        created_at: m.created_at,
        last_updated_at: m.last_updated_at,
        version: m.version,
        size_in_bytes: m.size_in_bytes,
        key: file.key,
        tags: file.tags.map(|tags| tags.into_iter().map(|t| (t.key, t.value)).collect()),
    })
}

/// `Metadata/index.json`: key → metadata, keys sorted.
pub fn encode_metadata_index<'a>(entries: impl Iterator<Item = (&'a str, &'a ProjectionMetadata)>) -> Vec<u8> {
    let map: BTreeMap<&str, &ProjectionMetadata> = entries.collect();
    serde_json::to_vec(&map).expect("metadata index serialises")
}

pub fn decode_metadata_index(bytes: &[u8]) -> Result<BTreeMap<String, ProjectionMetadata>, FormatError> {
    serde_json::from_slice(strip_bom(bytes)).map_err(|e| FormatError::Json(e.to_string()))
}

/// A tag index file: a JSON array of projection keys (Opossum serialises a `HashSet<string>`; we write it sorted).
pub fn encode_tag_index<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<u8> {
    serde_json::to_vec(&keys.collect::<Vec<_>>()).expect("tag index serialises")
}

pub fn decode_tag_index(bytes: &[u8]) -> Result<BTreeSet<String>, FormatError> {
    let keys: Vec<String> = serde_json::from_slice(strip_bom(bytes)).map_err(|e| FormatError::Json(e.to_string()))?;
    Ok(keys.into_iter().collect())
}

/// Opossum's `ProjectionCheckpoint` (`_checkpoints/<Name>.checkpoint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    #[serde(rename = "ProjectionName", alias = "projectionName")]
    pub projection_name: String,
    #[serde(rename = "LastProcessedPosition", alias = "lastProcessedPosition")]
    pub last_processed_position: u64,
    #[serde(rename = "LastUpdated", alias = "lastUpdated")]
    pub last_updated: String,
    /// Opossum writes the position here too.
    #[serde(rename = "TotalEventsProcessed", alias = "totalEventsProcessed", default)]
    pub total_events_processed: u64,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("checkpoint serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, FormatError> {
        serde_json::from_slice(strip_bom(bytes)).map_err(|e| FormatError::Json(e.to_string()))
    }
}

fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::TMP_MARKER;

    fn meta(version: u64) -> ProjectionMetadata {
        ProjectionMetadata {
            created_at: "2026-03-11T10:30:00.1234567+00:00".into(),
            last_updated_at: "2026-03-12T08:00:00.0000000+00:00".into(),
            version,
            size_in_bytes: 0,
        }
    }

    #[test]
    fn keys_are_sanitised_as_opossum_does() {
        assert_eq!(
            key_file_stem("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap(),
            "0f8fad5b-d9cb-469f-a165-70867728950e"
        );
        #[cfg(not(windows))]
        {
            assert_eq!(key_file_stem("a/b").unwrap(), "a_b");
            assert_eq!(key_file_stem("a//b/").unwrap(), "a__b_");
            assert_eq!(key_file_stem("a:b*c").unwrap(), "a:b*c");
        }
        assert_eq!(key_file_stem("..a").unwrap(), "..a");
    }

    #[test]
    fn hostile_keys_and_names_are_refused() {
        for key in [
            "",
            "  ",
            ".",
            "..",
            "../x",
            "a/../../b",
            "a/..",
            "./a",
            "/etc/passwd",
            "a\0b",
            &format!("x.json{TMP_MARKER}1"),
        ] {
            assert!(key_file_stem(key).is_err(), "{key:?} accepted");
        }
        assert!(key_file_stem(&"k".repeat(201)).is_err());
        for name in [
            "",
            " ",
            ".",
            "..",
            "../x",
            "a/b",
            "/abs",
            "a\0",
            "_checkpoints",
            &format!("P{TMP_MARKER}0123"),
            &"n".repeat(201),
        ] {
            assert!(validate_projection_name(name).is_err(), "{name:?} accepted");
        }
        validate_projection_name("StudentShortInfo").unwrap();
        let e = key_file_stem("../x").unwrap_err();
        assert_eq!(e.what, "projection key");
    }

    #[test]
    fn tag_stems_are_lower_case_and_sanitised() {
        assert_eq!(tag_stem(&Tag::new("EnrollmentTier", "Basic")).unwrap(), "enrollmenttier_basic");
        assert_eq!(tag_stem(&Tag::new("ÉCOLE", "X")).unwrap(), "école_x");
        #[cfg(not(windows))]
        assert_eq!(tag_stem(&Tag::new("a/b", "c")).unwrap(), "a_b_c");
        assert_eq!(tag_stem(&Tag::new("a_b", "c")).unwrap(), tag_stem(&Tag::new("A", "B_C")).unwrap());
        assert!(tag_stem(&Tag::new("k", "v".repeat(300))).is_err());
    }

    #[test]
    fn json_file_names_skip_temporaries() {
        assert_eq!(parse_json_file_name("abc.json"), Some("abc"));
        assert_eq!(parse_json_file_name(&format!("abc.json{TMP_MARKER}0123456789abcdef0123456789abcdef")), None);
        assert_eq!(parse_json_file_name(".json"), None);
        assert_eq!(parse_json_file_name("abc.txt"), None);
    }

    #[test]
    fn projection_files_round_trip_with_key_and_tags() {
        let state = RawValue::from_string(r#"{"Name":"Ann","N":1}"#.into()).unwrap();
        let bytes = encode_projection(
            "a/b",
            &state,
            &ProjectionMetadata { size_in_bytes: 99, ..meta(3) },
            &[Tag::new("T", "v")],
        );
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.starts_with(r#"{"Data":{"Name":"Ann","N":1},"Metadata":{"CreatedAt":"#), "{text}");
        assert!(text.contains(r#""Version":3,"SizeInBytes":0}"#), "{text}");
        let d = decode_projection(&bytes).unwrap();
        assert_eq!(d.state.get(), r#"{"Name":"Ann","N":1}"#);
        assert_eq!(d.metadata, meta(3));
        assert_eq!(d.key.as_deref(), Some("a/b"));
        assert_eq!(d.tags, Some(vec![Tag::new("T", "v")]));
    }

    #[test]
    fn whitespace_inside_strings_is_data() {
        assert!(!has_insignificant_whitespace(br#"{"Name":"Anna Maria","Q":"a \" b"}"#));
        assert!(has_insignificant_whitespace(br#"{"Name":"Anna", "Q":1}"#));
        assert!(has_insignificant_whitespace(b"{\"a\\\\\":\n1}"));
        let state = RawValue::from_string(r#"{"Name":"Anna Maria"}"#.into()).unwrap();
        let bytes = encode_projection("k", &state, &meta(1), &[]);
        let v = decode_projection_view(&bytes).unwrap();
        assert!(matches!(v.state, Cow::Borrowed(_)));
        assert_eq!(v.state.get(), r#"{"Name":"Anna Maria"}"#);
    }

    #[test]
    fn dotnet_indented_crlf_files_decode_minified() {
        let dotnet = "\u{feff}{\r\n  \"Data\": {\r\n    \"FirstName\": \"Kov\\u00E1cs\",\r\n    \"Note\": \"a  b\"\r\n  },\r\n  \
                      \"Metadata\": {\r\n    \"CreatedAt\": \"2026-03-11T10:30:00.1234567+00:00\",\r\n    \
                      \"LastUpdatedAt\": \"2026-03-12T08:00:00.0000000+00:00\",\r\n    \"Version\": 3,\r\n    \
                      \"SizeInBytes\": 0\r\n  }\r\n}";
        let d = decode_projection(dotnet.as_bytes()).unwrap();
        assert_eq!(d.state.get(), r#"{"FirstName":"Kov\u00E1cs","Note":"a  b"}"#);
        assert_eq!(d.metadata, meta(3));
        assert_eq!((d.key, d.tags), (None, None));
        assert!(decode_projection(b"{\"Data\":{},\"Metadata\":{\"CreatedAt\":\"x\"").is_err());
        assert!(decode_projection(b"{\"Data\":{}}").is_err());
    }

    #[test]
    fn indices_and_checkpoints_round_trip() {
        let m = meta(2);
        let bytes = encode_metadata_index([("b", &m), ("a", &m)].into_iter());
        let back = decode_metadata_index(&bytes).unwrap();
        assert_eq!(back.keys().collect::<Vec<_>>(), ["a", "b"]);
        let keys: BTreeSet<String> = ["x".to_string(), "y".to_string()].into();
        assert_eq!(encode_tag_index(keys.iter()), br#"["x","y"]"#);
        assert_eq!(decode_tag_index(b"[\r\n  \"y\",\r\n  \"x\"\r\n]").unwrap(), keys);
        assert!(decode_tag_index(b"{}").is_err());
        let c = Checkpoint {
            projection_name: "P".into(),
            last_processed_position: 42,
            last_updated: "2026-03-11T10:30:00.1234567+00:00".into(),
            total_events_processed: 42,
        };
        assert_eq!(Checkpoint::decode(&c.encode()).unwrap(), c);
        assert!(String::from_utf8(c.encode())
            .unwrap()
            .starts_with(r#"{"ProjectionName":"P","LastProcessedPosition":42"#));
    }
}
