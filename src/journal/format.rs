//! The journal's bytes: segment header, record, offset table. `docs/journal.md` draws the same layouts with the
//! recovery rules around them; the offsets below and the diagrams say the same thing, and the `const` assertions
//! hold them together.
//!
//! ```text
//! segment header (32 bytes, at offset 0)
//! 0   8  magic b"OPOSSJNL"
//! 8   4  format version = 3 (1 and 2 are read too)       (u32 LE)
//! 12  4  zero
//! 16  8  first position: the segment's first record      (u64 LE) = the number in its file name
//! 24  4  crc32c of bytes 0 .. 24                         (u32 LE)
//! 28  4  zero
//!
//! record, version 3 (at an 8-aligned offset ≥ 32; `size` bytes, then zeros up to the next multiple of 8)
//! 0   4  checksum: crc32c of bytes 4 .. size             (u32 LE)
//! 4   4  size: the record's bytes, header included, padding excluded
//! 8   8  position
//! 16  4  group index: position − the first position of the group this record was appended with
//! 20  4  group events: how many records that group has (so the group ends at first + events - 1)
//! 24  4  data len (D)     28  4  metadata len (M)
//! 32  2  type len         34  2  tag count
//! 36  1  extension flags: bit 0 event id, bit 1 tracking; other bits zero
//! 37  3  zero
//! 40  …  event type (UTF-8), then per tag: key len (u16), key, value len (u16), value
//! …   16 event id (flag bit 0): the client's UUID, its 16 bytes in text order
//! …   …  tracking (flag bit 1; on the last record of an append): source len (u16), source (UTF-8), position (u64)
//! …   D  the event's data JSON (minified), ending at size − M
//! …   M  the event's metadata JSON (minified), ending at size
//!
//! record, versions 1 and 2 (read only): a 56-byte header
//! 0 checksum, 4 size, 8 position, 16 group first (u64), 24 group events, 28 file offset F, 32 data offset,
//! 36 data len, 40 metadata offset, 44 metadata len, 48 type len, 50 tag count, 52 flags (version 1: zero), 53 zero;
//! then the type, tags and extensions as above, and from F the event file, byte for byte
//!
//! sealed segment footer (after the last record's padding, ending the file)
//! T       8 × n  offset table: per record in position order, offset (u32 LE) and size (u32 LE)
//! T+8n    8      magic b"OPOSSEAL"
//! T+8n+8  8      first position                          (u64 LE)
//! T+8n+16 4      record count n                          (u32 LE)
//! T+8n+20 4      T: the table's offset                   (u32 LE)
//! T+8n+24 4      crc32c of the table and trailer bytes 0 .. 24
//! T+8n+28 4      zero
//! ```
//!
//! Version 3 stores each event's parts once: the event file (`events/<position>.json`, with the type, tags and
//! position a second time around the data and metadata) is derived from them by [`RecordView::event_file`], byte
//! for byte what `format::encode_event` writes, so the mirror, `export` and `verify` see the same bytes as before
//! at some 125 fewer bytes per event. A record's layout is its segment's version: a build reads segments of
//! versions 1 to 3, and never appends to an older one (the first append after an open seals it and starts a
//! version 3 segment). A build that reads only up to version 2 refuses a version 3 segment header.

//! Integers are little-endian fixed widths; nothing on disk is a `usize`. A record names its group, so recovery
//! can tell a torn last group (cut it: never acknowledged) from a damaged record that whole groups follow (corrupt:
//! a loud error). Only the active (last) segment may end in a torn group; a sealed segment must be whole.

use std::ops::Range;

use crate::limits::{JOURNAL_RECORD_BYTES_MAX, JOURNAL_SEGMENT_BYTES_MAX};
use crate::model::Tag;

pub const SEGMENT_MAGIC: [u8; 8] = *b"OPOSSJNL";
pub const SEAL_MAGIC: [u8; 8] = *b"OPOSSEAL";
pub const FORMAT_VERSION: u32 = 3;
/// The oldest segment format this build reads.
pub const FORMAT_VERSION_MIN: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 32;
pub const SEGMENT_SUFFIX: &str = ".seg";
/// Records start at multiples of this, so recovery can look for valid records after a damaged one cheaply.
pub const RECORD_ALIGN: usize = 8;

// Both layouts (versions 1–2 and 3) begin alike: checksum, size, position.
const CHECKSUM_AT: usize = 0;
const SIZE_AT: usize = CHECKSUM_AT + 4;
const POSITION_AT: usize = SIZE_AT + 4;
// Version 3.
const GROUP_INDEX_AT: usize = POSITION_AT + 8;
const GROUP_EVENTS_AT: usize = GROUP_INDEX_AT + 4;
const DATA_LEN_AT: usize = GROUP_EVENTS_AT + 4;
const METADATA_LEN_AT: usize = DATA_LEN_AT + 4;
const TYPE_LEN_AT: usize = METADATA_LEN_AT + 4;
const TAG_COUNT_AT: usize = TYPE_LEN_AT + 2;
const FLAGS_AT: usize = TAG_COUNT_AT + 2;
pub const RECORD_HEADER_BYTES: usize = FLAGS_AT + 4;
// Versions 1 and 2.
const V2_GROUP_FIRST_AT: usize = POSITION_AT + 8;
const V2_GROUP_EVENTS_AT: usize = V2_GROUP_FIRST_AT + 8;
const V2_FILE_OFFSET_AT: usize = V2_GROUP_EVENTS_AT + 4;
const V2_DATA_OFFSET_AT: usize = V2_FILE_OFFSET_AT + 4;
const V2_DATA_LEN_AT: usize = V2_DATA_OFFSET_AT + 4;
const V2_METADATA_OFFSET_AT: usize = V2_DATA_LEN_AT + 4;
const V2_METADATA_LEN_AT: usize = V2_METADATA_OFFSET_AT + 4;
const V2_TYPE_LEN_AT: usize = V2_METADATA_LEN_AT + 4;
const V2_TAG_COUNT_AT: usize = V2_TYPE_LEN_AT + 2;
const V2_FLAGS_AT: usize = V2_TAG_COUNT_AT + 2;
pub const V2_RECORD_HEADER_BYTES: usize = V2_FLAGS_AT + 4;
/// The smallest record of any version (recovery's probe for records after a damaged one).
pub const RECORD_BYTES_MIN: usize = RECORD_HEADER_BYTES;
const FLAG_EVENT_ID: u8 = 1;
const FLAG_TRACKING: u8 = 2;
pub const EVENT_ID_BYTES: usize = 16;
/// The largest extension area: an event id and a tracking entry with the longest source.
pub const EXTENSION_BYTES_MAX: usize = EVENT_ID_BYTES + 2 + crate::limits::TRACKING_SOURCE_BYTES_MAX + 8;
const _: () = assert!(RECORD_HEADER_BYTES == 40 && RECORD_HEADER_BYTES.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(V2_RECORD_HEADER_BYTES == 56 && RECORD_BYTES_MIN <= V2_RECORD_HEADER_BYTES);

pub const TABLE_ENTRY_BYTES: usize = 8;
pub const TRAILER_BYTES: usize = 32;
const _: () = assert!(SEGMENT_HEADER_BYTES.is_multiple_of(RECORD_ALIGN) && TRAILER_BYTES.is_multiple_of(RECORD_ALIGN));
// Offsets inside a segment are u32: a segment (even one stretched for a big group) must stay addressable.
const _: () = assert!(JOURNAL_SEGMENT_BYTES_MAX < u32::MAX as u64 / 2);

/// The spare segment: zeros written and synced ahead of need (by the journal's zero-fill thread), which the next
/// segment is made from by writing its header and renaming it to the segment's name. Never a segment itself (open
/// ignores it; the zero-fill thread starts a new one from scratch; a clean close removes it).
pub const SPARE_SEGMENT_FILE: &str = "spare.zeros";

/// `<first position, 20 digits>.seg`: names sort in position order.
pub fn segment_name(first: u64) -> String {
    format!("{first:020}{SEGMENT_SUFFIX}")
}

/// The first position a segment file name stands for; `None` for any other file.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok().filter(|&p| p >= 1)
}

pub fn encode_segment_header(first: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(decode_segment_header(&h), Ok((first, FORMAT_VERSION)));
    h
}

/// The checksum a segment header carries at bytes 24..28 (tests that forge headers).
pub fn segment_header_crc(h: &[u8]) -> u32 {
    crc32c::crc32c(&h[0..24])
}

/// The first position a segment header names and its format version (which says how its records are laid out),
/// or why the header is not one this build reads.
pub fn decode_segment_header(h: &[u8]) -> Result<(u64, u32), String> {
    if h.len() < SEGMENT_HEADER_BYTES {
        return Err(format!("{} bytes, shorter than a segment header", h.len()));
    }
    if h[0..8] != SEGMENT_MAGIC {
        return Err("not a journal segment (bad magic)".into());
    }
    if crc32c::crc32c(&h[0..24]) != u32_at(h, 24) {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32_at(h, 8);
    if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&version) {
        return Err(format!(
            "segment format version {version}; this build reads {FORMAT_VERSION_MIN} to {FORMAT_VERSION}"
        ));
    }
    Ok((u64_at(h, 16), version))
}

/// One event as the writer hands it to the journal: its keys and its minified data and metadata JSON (the record
/// stores these; the event file is derived from them).
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    pub event_type: &'a str,
    pub tags: &'a [Tag],
    /// The event's data JSON, minified: `event.event` of its event file.
    pub data: &'a str,
    /// The event's metadata JSON, minified.
    pub metadata: &'a str,
    /// The client's event id (`model::EventId`), if it gave one.
    pub event_id: Option<[u8; EVENT_ID_BYTES]>,
    /// The append's tracking (source, position), on the record of its last event only.
    pub tracking: Option<(&'a str, u64)>,
}

impl<'a> NewRecord<'a> {
    pub fn new(event_type: &'a str, tags: &'a [Tag], data: &'a str, metadata: &'a str) -> Self {
        NewRecord { event_type, tags, data, metadata, event_id: None, tracking: None }
    }

    /// A record for an event file as `format::encode_event` writes it (minified, metadata last). The file itself is
    /// not stored: it is what [`RecordView::event_file`] derives from the parts.
    ///
    /// # Panics
    /// When `file` does not contain `data` and `metadata` where `encode_event` puts them: a bug upstream.
    pub fn for_event_file(event_type: &'a str, tags: &'a [Tag], file: &[u8], data: &'a str, metadata: &'a str) -> Self {
        assert!(
            event_file_ranges(event_type, file, data, metadata).is_some(),
            "event file laid out as format::encode_event writes it"
        );
        NewRecord::new(event_type, tags, data, metadata)
    }

    /// The record's size on disk, padding included.
    pub fn stored_bytes(&self) -> usize {
        padded(self.size())
    }

    fn size(&self) -> usize {
        RECORD_HEADER_BYTES
            + keys_bytes(self.event_type, self.tags)
            + self.extension_bytes()
            + self.data.len()
            + self.metadata.len()
    }

    fn extension_bytes(&self) -> usize {
        self.event_id.map_or(0, |_| EVENT_ID_BYTES) + self.tracking.map_or(0, |(source, _)| 2 + source.len() + 8)
    }

    fn flags(&self) -> u8 {
        (if self.event_id.is_some() { FLAG_EVENT_ID } else { 0 })
            | (if self.tracking.is_some() { FLAG_TRACKING } else { 0 })
    }
}

/// Where `data` and `metadata` start in an event file laid out as `format::encode_event` writes it:
/// `{"event":{"eventType":<type>,"event":<data>,"tags":[..]},"position":<n>,"metadata":<metadata>}`.
pub fn event_file_ranges(event_type: &str, file: &[u8], data: &str, metadata: &str) -> Option<(usize, usize)> {
    const BEFORE_TYPE: &[u8] = b"{\"event\":{\"eventType\":";
    const BEFORE_DATA: &[u8] = b",\"event\":";
    let type_json = serde_json::to_string(event_type).ok()?;
    let data_at = BEFORE_TYPE.len() + type_json.len() + BEFORE_DATA.len();
    let metadata_at = file.len().checked_sub(metadata.len() + 1)?;
    let fits = |at: usize, part: &str| file.get(at..at + part.len()) == Some(part.as_bytes());
    (fits(data_at, data) && fits(metadata_at, metadata)).then_some((data_at, metadata_at))
}

fn keys_bytes(event_type: &str, tags: &[Tag]) -> usize {
    event_type.len() + tags.iter().map(|t| 4 + t.key.len() + t.value.len()).sum::<usize>()
}

pub fn padded(n: usize) -> usize {
    n.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Appends one record (and its padding) to `out`, in the current format version; returns its size without
/// padding. The record's bytes are written straight into `out` (the group's write buffer), checksummed in place.
///
/// # Panics
/// On position 0, a group that does not contain `position`, keys over u16, or a record over
/// `JOURNAL_RECORD_BYTES_MAX`: the store validated the event, so each is a bug upstream, not bad input.
pub fn encode_record(out: &mut Vec<u8>, position: u64, group_first: u64, group_events: u32, r: &NewRecord<'_>) -> u32 {
    assert!(position >= 1, "positions start at 1");
    assert!(group_first <= position && position < group_first + group_events as u64, "record outside its group");
    assert!(out.len().is_multiple_of(RECORD_ALIGN), "records start aligned");
    let size = r.size();
    assert!(size <= JOURNAL_RECORD_BYTES_MAX, "record of {size} bytes over JOURNAL_RECORD_BYTES_MAX");
    let start = out.len();
    out.reserve(padded(size));
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(size as u32).to_le_bytes());
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(&((position - group_first) as u32).to_le_bytes());
    out.extend_from_slice(&group_events.to_le_bytes());
    out.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
    out.extend_from_slice(&(r.metadata.len() as u32).to_le_bytes());
    out.extend_from_slice(&u16::try_from(r.event_type.len()).expect("type within u16").to_le_bytes());
    out.extend_from_slice(&u16::try_from(r.tags.len()).expect("tag count within u16").to_le_bytes());
    out.extend_from_slice(&[r.flags(), 0, 0, 0]);
    debug_assert_eq!(out.len() - start, RECORD_HEADER_BYTES);
    out.extend_from_slice(r.event_type.as_bytes());
    for tag in r.tags {
        out.extend_from_slice(&u16::try_from(tag.key.len()).expect("tag key within u16").to_le_bytes());
        out.extend_from_slice(tag.key.as_bytes());
        out.extend_from_slice(&u16::try_from(tag.value.len()).expect("tag value within u16").to_le_bytes());
        out.extend_from_slice(tag.value.as_bytes());
    }
    if let Some(id) = &r.event_id {
        out.extend_from_slice(id);
    }
    if let Some((source, position)) = r.tracking {
        out.extend_from_slice(&u16::try_from(source.len()).expect("tracking source within u16").to_le_bytes());
        out.extend_from_slice(source.as_bytes());
        out.extend_from_slice(&position.to_le_bytes());
    }
    out.extend_from_slice(r.data.as_bytes());
    out.extend_from_slice(r.metadata.as_bytes());
    debug_assert_eq!(out.len() - start, size);
    let checksum = crc32c::crc32c(&out[start + SIZE_AT..]);
    out[start..start + SIZE_AT].copy_from_slice(&checksum.to_le_bytes());
    out.resize(start + padded(size), 0);
    // Pair assertion: what recovery and reads will decode is what we meant to write.
    debug_assert!(decode_record(&out[start..], FORMAT_VERSION).is_ok_and(|v| v.position == position
        && v.event_type == r.event_type
        && v.data == r.data
        && v.metadata == r.metadata
        && v.event_id == r.event_id
        && v.tracking == r.tracking
        && v.tags().eq(r.tags.iter().map(|t| (t.key.as_str(), t.value.as_str())))));
    size as u32
}

/// A record read back, borrowing the bytes it was decoded from.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub position: u64,
    pub group_first: u64,
    pub group_events: u32,
    /// The record's size without padding.
    pub size: u32,
    pub event_type: &'a str,
    keys: &'a [u8],
    tag_count: u16,
    /// The event file as a version 1 or 2 record stores it (version 3 stores none: [`RecordView::event_file`]).
    stored_file: Option<&'a [u8]>,
    /// The event's data JSON (minified).
    pub data: &'a str,
    /// The event's metadata JSON (minified).
    pub metadata: &'a str,
    /// The client's event id, if the append gave one (format version 2).
    pub event_id: Option<[u8; EVENT_ID_BYTES]>,
    /// The append's tracking (source, position), on the record of an append's last event (format version 2).
    pub tracking: Option<(&'a str, u64)>,
}

impl<'a> RecordView<'a> {
    /// The event's tags as (key, value), in the order they were appended.
    pub fn tags(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let mut rest = self.keys;
        (0..self.tag_count).map(move |_| {
            // SAFETY: a view is only made by `decode`, which took these tags with the checking `take_str` (in
            // `decode_record`), or under `decode_record_again`'s contract that `decode_record` did.
            let (key, after) = unsafe { take_str_unchecked(rest) }.expect("tags checked at decode");
            // SAFETY: as for the key.
            let (value, after) = unsafe { take_str_unchecked(after) }.expect("tags checked at decode");
            rest = after;
            (key, value)
        })
    }

    pub fn owned_tags(&self) -> Vec<Tag> {
        self.tags().map(|(k, v)| Tag { key: k.to_string(), value: v.to_string() }).collect()
    }

    /// The last position of the group this record was appended with.
    pub fn group_last(&self) -> u64 {
        self.group_first + self.group_events as u64 - 1
    }

    /// The event file (`events/<position>.json`) byte for byte as `format::encode_event` writes it: derived from
    /// the record's parts (version 3), or the bytes a version 1 or 2 record stores (the same bytes: those versions
    /// stored what `encode_event` wrote).
    pub fn event_file(&self) -> std::borrow::Cow<'a, [u8]> {
        match self.stored_file {
            Some(file) => std::borrow::Cow::Borrowed(file),
            None => {
                let mut out = Vec::with_capacity(self.event_file_bytes_hint());
                self.write_event_file(&mut out);
                std::borrow::Cow::Owned(out)
            }
        }
    }

    /// Appends [`RecordView::event_file`] to `out`.
    pub fn write_event_file(&self, out: &mut Vec<u8>) {
        if let Some(file) = self.stored_file {
            out.extend_from_slice(file);
            return;
        }
        let json_string =
            |out: &mut Vec<u8>, s: &str| serde_json::to_writer(&mut *out, s).expect("a string serialises");
        out.extend_from_slice(b"{\"event\":{\"eventType\":");
        json_string(out, self.event_type);
        out.extend_from_slice(b",\"event\":");
        out.extend_from_slice(self.data.as_bytes());
        out.extend_from_slice(b",\"tags\":[");
        for (i, (key, value)) in self.tags().enumerate() {
            out.extend_from_slice(if i == 0 { b"{\"key\":" } else { b",{\"key\":" });
            json_string(out, key);
            out.extend_from_slice(b",\"value\":");
            json_string(out, value);
            out.push(b'}');
        }
        out.extend_from_slice(b"]},\"position\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.position).as_bytes());
        out.extend_from_slice(b",\"metadata\":");
        out.extend_from_slice(self.metadata.as_bytes());
        out.push(b'}');
    }

    /// About the event file's length (exact unless a string needs escapes), to size buffers.
    pub fn event_file_bytes_hint(&self) -> usize {
        match self.stored_file {
            Some(file) => file.len(),
            None => 80 + self.keys.len() + 22 * self.tag_count as usize + self.data.len() + self.metadata.len(),
        }
    }
}

fn take_str(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let len = u16::from_le_bytes(bytes.get(0..2)?.try_into().ok()?) as usize;
    let s = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
    Some((s, &bytes[2 + len..]))
}

/// [`take_str`] of a string already checked (a read's views decode each record's tags several times: the filter,
/// the framing).
///
/// # Safety
/// [`take_str`] must have returned `Some` for the same bytes: the string is taken as UTF-8 without a check.
unsafe fn take_str_unchecked(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let len = u16::from_le_bytes(bytes.get(0..2)?.try_into().ok()?) as usize;
    let s = bytes.get(2..2 + len)?;
    // SAFETY: the caller's contract.
    Some((unsafe { std::str::from_utf8_unchecked(s) }, &bytes[2 + len..]))
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// Zeros where a record would start: the written end of a preallocated segment.
    End,
    /// Fewer bytes than the header or the size field claims.
    Short,
    /// A checksum mismatch or an impossible field.
    Invalid(String),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::End => f.write_str("no record (zeros)"),
            RecordError::Short => f.write_str("record cut short"),
            RecordError::Invalid(reason) => f.write_str(reason),
        }
    }
}

/// Decodes the record at the start of `bytes` (which may run on past it), laid out as segment format `version`
/// lays records out, checking its checksum and every field.
pub fn decode_record(bytes: &[u8], version: u32) -> Result<RecordView<'_>, RecordError> {
    decode(bytes, version, true)
}

/// Decodes a record that [`decode_record`] already accepted from the same bytes (a checked read batch handing out
/// its views): the fields are located again, the checksum and the UTF-8 of the type, data and metadata are not
/// checked again.
///
/// # Safety
/// `bytes` must start with a record [`decode_record`] returned `Ok` for with the same `version`, unchanged since:
/// the type, data and metadata are taken as UTF-8 without a check.
pub(crate) unsafe fn decode_record_again(bytes: &[u8], version: u32) -> Result<RecordView<'_>, RecordError> {
    decode(bytes, version, false)
}

/// `checked`: verify the checksum and the UTF-8 of the text fields (else the caller vouches for both).
fn decode(bytes: &[u8], version: u32, checked: bool) -> Result<RecordView<'_>, RecordError> {
    let text = |b| {
        if checked {
            std::str::from_utf8(b).ok()
        } else {
            // SAFETY: `decode_record_again`'s contract: these bytes passed this very check in `decode_record`.
            Some(unsafe { std::str::from_utf8_unchecked(b) })
        }
    };
    let v3 = version >= 3;
    let header_bytes = if v3 { RECORD_HEADER_BYTES } else { V2_RECORD_HEADER_BYTES };
    if bytes.len() < header_bytes {
        return Err(if bytes.iter().all(|&b| b == 0) { RecordError::End } else { RecordError::Short });
    }
    let size = u32_at(bytes, SIZE_AT) as usize;
    if size == 0 && u32_at(bytes, CHECKSUM_AT) == 0 {
        return Err(RecordError::End);
    }
    if !(header_bytes..=JOURNAL_RECORD_BYTES_MAX).contains(&size) {
        return Err(RecordError::Invalid(format!("impossible record size {size}")));
    }
    let Some(record) = bytes.get(..size) else { return Err(RecordError::Short) };
    if checked && crc32c::crc32c(&record[SIZE_AT..]) != u32_at(record, CHECKSUM_AT) {
        return Err(RecordError::Invalid("record checksum mismatch".into()));
    }
    let invalid = |what: &str| RecordError::Invalid(format!("record with a valid checksum but {what}"));
    let position = u64_at(record, POSITION_AT);
    let (group_first, group_events) = if v3 {
        let index = u32_at(record, GROUP_INDEX_AT) as u64;
        (position.wrapping_sub(index), u32_at(record, GROUP_EVENTS_AT))
    } else {
        (u64_at(record, V2_GROUP_FIRST_AT), u32_at(record, V2_GROUP_EVENTS_AT))
    };
    if position == 0 || group_first == 0 || group_first > position || position - group_first >= group_events as u64 {
        return Err(invalid("a position outside its group"));
    }
    let (type_at, tag_count_at, flags_at) =
        if v3 { (TYPE_LEN_AT, TAG_COUNT_AT, FLAGS_AT) } else { (V2_TYPE_LEN_AT, V2_TAG_COUNT_AT, V2_FLAGS_AT) };
    let type_len = u16_at(record, type_at) as usize;
    let tag_count = u16_at(record, tag_count_at);
    let flags = record[flags_at];
    if flags & !(FLAG_EVENT_ID | FLAG_TRACKING) != 0 || record[flags_at + 1..header_bytes] != [0, 0, 0] {
        return Err(invalid("unknown extension flags"));
    }
    // Where the keys end: the event file (versions 1–2), or the data (version 3).
    let keys_end = if v3 {
        let parts = u32_at(record, DATA_LEN_AT) as usize + u32_at(record, METADATA_LEN_AT) as usize;
        size.checked_sub(parts).ok_or_else(|| invalid("data and metadata longer than the record"))?
    } else {
        u32_at(record, V2_FILE_OFFSET_AT) as usize
    };
    if keys_end < header_bytes + type_len || keys_end > size {
        return Err(invalid(if v3 { "data and metadata overlapping the keys" } else { "a bad file offset" }));
    }
    let event_type =
        text(&record[header_bytes..header_bytes + type_len]).ok_or_else(|| invalid("a type that is not UTF-8"))?;
    let keys = &record[header_bytes + type_len..keys_end];
    let mut rest = keys;
    for _ in 0..u32::from(tag_count) * 2 {
        let taken = if checked {
            take_str(rest)
        } else {
            // SAFETY: `decode_record_again`'s contract: these bytes passed `take_str` in `decode_record`.
            unsafe { take_str_unchecked(rest) }
        };
        rest = taken.ok_or_else(|| invalid("bad tags"))?.1;
    }
    let keys = &keys[..keys.len() - rest.len()];
    let mut event_id = None;
    if flags & FLAG_EVENT_ID != 0 {
        let id = rest.get(..EVENT_ID_BYTES).ok_or_else(|| invalid("a cut event id"))?;
        event_id = Some(id.try_into().expect("16 bytes"));
        rest = &rest[EVENT_ID_BYTES..];
    }
    let mut tracking = None;
    if flags & FLAG_TRACKING != 0 {
        let (source, after) = take_str(rest).ok_or_else(|| invalid("a bad tracking source"))?;
        let position = after.get(..8).ok_or_else(|| invalid("a cut tracking position"))?;
        tracking = Some((source, u64_at(position, 0)));
        rest = &after[8..];
    }
    if !rest.is_empty() {
        return Err(invalid(if v3 {
            "bytes between the tags and the data"
        } else {
            "bytes between the tags and the event file"
        }));
    }
    let (data, metadata, stored_file) = if v3 {
        let data_len = u32_at(record, DATA_LEN_AT) as usize;
        let data = text(&record[keys_end..keys_end + data_len]).ok_or_else(|| invalid("data that is not UTF-8"))?;
        let metadata = text(&record[keys_end + data_len..size]).ok_or_else(|| invalid("metadata that is not UTF-8"))?;
        (data, metadata, None)
    } else {
        let slice = |offset_at: usize, len_at: usize, what: &str| -> Result<&str, RecordError> {
            let (at, len) = (u32_at(record, offset_at) as usize, u32_at(record, len_at) as usize);
            if at < keys_end || at + len > size {
                return Err(invalid(&format!("{what} outside the event file")));
            }
            text(&record[at..at + len]).ok_or_else(|| invalid(&format!("{what} that is not UTF-8")))
        };
        let data = slice(V2_DATA_OFFSET_AT, V2_DATA_LEN_AT, "data")?;
        let metadata = slice(V2_METADATA_OFFSET_AT, V2_METADATA_LEN_AT, "metadata")?;
        (data, metadata, Some(&record[keys_end..]))
    };
    Ok(RecordView {
        position,
        group_first,
        group_events,
        size: size as u32,
        event_type,
        keys,
        tag_count,
        stored_file,
        data,
        metadata,
        event_id,
        tracking,
    })
}

/// The footer that seals a segment: the offset table of its `locations` (offset, size) starting at `table_at`,
/// then the trailer.
pub fn encode_footer(first: u64, table_at: u32, locations: &[(u32, u32)]) -> Vec<u8> {
    assert!((table_at as usize).is_multiple_of(RECORD_ALIGN), "the table starts aligned");
    let mut out = Vec::with_capacity(locations.len() * TABLE_ENTRY_BYTES + TRAILER_BYTES);
    for &(offset, size) in locations {
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
    }
    out.extend_from_slice(&SEAL_MAGIC);
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&u32::try_from(locations.len()).expect("records per segment within u32").to_le_bytes());
    out.extend_from_slice(&table_at.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    debug_assert!(decode_trailer(&out[out.len() - TRAILER_BYTES..]).is_ok());
    out
}

/// A sealed segment's trailer (its last `TRAILER_BYTES`): first position, record count, table offset. The table's
/// checksum is checked by [`decode_table`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub first: u64,
    pub count: u32,
    pub table_at: u32,
}

pub fn decode_trailer(t: &[u8]) -> Result<Trailer, String> {
    if t.len() != TRAILER_BYTES || t[0..8] != SEAL_MAGIC {
        return Err("no seal trailer".into());
    }
    Ok(Trailer { first: u64_at(t, 8), count: u32_at(t, 16), table_at: u32_at(t, 20) })
}

/// The offset table of a sealed segment from its footer bytes (table + trailer), checksum checked.
pub fn decode_table(footer: &[u8]) -> Result<Vec<(u32, u32)>, String> {
    let trailer = decode_trailer(&footer[footer.len().saturating_sub(TRAILER_BYTES)..])?;
    if footer.len() != trailer.count as usize * TABLE_ENTRY_BYTES + TRAILER_BYTES {
        return Err("offset table length does not match its record count".into());
    }
    let checked = footer.len() - 8;
    if crc32c::crc32c(&footer[..checked]) != u32_at(footer, checked) {
        return Err("offset table checksum mismatch".into());
    }
    Ok(footer[..trailer.count as usize * TABLE_ENTRY_BYTES]
        .chunks_exact(TABLE_ENTRY_BYTES)
        .map(|e| (u32_at(e, 0), u32_at(e, 4)))
        .collect())
}

/// A byte range inside a segment.
pub fn range(offset: u32, size: u32) -> Range<u64> {
    offset as u64..offset as u64 + size as u64
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::encode_event;
    use serde_json::value::RawValue;

    fn file(position: u64, ty: &str, tags: &[Tag]) -> (Vec<u8>, String, String) {
        let data = r#"{"a":[1,2,{"b":"x\"y"}]}"#;
        let metadata = r#"{"timestamp":"2026-11-29T00:00:00.0000000+00:00"}"#;
        let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
        (encode_event(position, ty, &raw(data), tags, &raw(metadata)), data.to_string(), metadata.to_string())
    }

    /// A record as versions 1 and 2 wrote it (the event file stored whole after a 56-byte header).
    fn encode_v2(out: &mut Vec<u8>, position: u64, group_first: u64, group_events: u32, r: &NewRecord<'_>) -> u32 {
        let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
        let file = encode_event(position, r.event_type, &raw(r.data), r.tags, &raw(r.metadata));
        let (data_at, metadata_at) = event_file_ranges(r.event_type, &file, r.data, r.metadata).unwrap();
        let keys = keys_bytes(r.event_type, r.tags);
        let file_offset = V2_RECORD_HEADER_BYTES + keys + r.extension_bytes();
        let size = file_offset + file.len();
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(size as u32).to_le_bytes());
        out.extend_from_slice(&position.to_le_bytes());
        out.extend_from_slice(&group_first.to_le_bytes());
        out.extend_from_slice(&group_events.to_le_bytes());
        out.extend_from_slice(&(file_offset as u32).to_le_bytes());
        out.extend_from_slice(&((file_offset + data_at) as u32).to_le_bytes());
        out.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&((file_offset + metadata_at) as u32).to_le_bytes());
        out.extend_from_slice(&(r.metadata.len() as u32).to_le_bytes());
        out.extend_from_slice(&(r.event_type.len() as u16).to_le_bytes());
        out.extend_from_slice(&(r.tags.len() as u16).to_le_bytes());
        out.extend_from_slice(&[r.flags(), 0, 0, 0]);
        out.extend_from_slice(r.event_type.as_bytes());
        for tag in r.tags {
            out.extend_from_slice(&(tag.key.len() as u16).to_le_bytes());
            out.extend_from_slice(tag.key.as_bytes());
            out.extend_from_slice(&(tag.value.len() as u16).to_le_bytes());
            out.extend_from_slice(tag.value.as_bytes());
        }
        if let Some(id) = &r.event_id {
            out.extend_from_slice(id);
        }
        if let Some((source, position)) = r.tracking {
            out.extend_from_slice(&(source.len() as u16).to_le_bytes());
            out.extend_from_slice(source.as_bytes());
            out.extend_from_slice(&position.to_le_bytes());
        }
        out.extend_from_slice(&file);
        let checksum = crc32c::crc32c(&out[start + SIZE_AT..]);
        out[start..start + SIZE_AT].copy_from_slice(&checksum.to_le_bytes());
        out.resize(start + padded(size), 0);
        size as u32
    }

    #[test]
    fn records_round_trip_with_their_keys_and_json_and_derive_the_event_file_byte_for_byte() {
        let tags = [Tag::new("course", "c-1"), Tag::new("ünï \"q\" \\ \u{1}", ""), Tag::new("k", "</>")];
        for (ty, tags) in [("Enrolled \"x\"", &tags[..]), ("T", &[][..]), ("ü\n\t", &tags[1..2])] {
            let (bytes, data, metadata) = file(7, ty, tags);
            let r = NewRecord::for_event_file(ty, tags, &bytes, &data, &metadata);
            let mut out = vec![];
            let size = encode_record(&mut out, 7, 5, 3, &r);
            assert_eq!(out.len(), r.stored_bytes());
            assert_eq!(out.len() % RECORD_ALIGN, 0);
            let v = decode_record(&out, FORMAT_VERSION).unwrap();
            assert_eq!((v.position, v.group_first, v.group_last(), v.size), (7, 5, 7, size));
            assert_eq!(v.event_type, ty);
            assert_eq!(v.owned_tags(), tags);
            assert_eq!((v.data, v.metadata), (data.as_str(), metadata.as_str()));
            assert_eq!(&v.event_file()[..], &bytes[..], "{}", String::from_utf8_lossy(&bytes));
            assert!(v.event_file_bytes_hint() >= bytes.len() / 2);
            // Smaller than the event file plus its keys, as version 2 stored it.
            let mut old = vec![];
            encode_v2(&mut old, 7, 5, 3, &r);
            assert!(out.len() + 64 < old.len(), "{} against {}", out.len(), old.len());
        }
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let (bytes, data, metadata) = file(1, "T", &[Tag::new("k", "v")]);
        let mut out = vec![];
        let size = encode_record(
            &mut out,
            1,
            1,
            1,
            &NewRecord::for_event_file("T", &[Tag::new("k", "v")], &bytes, &data, &metadata),
        );
        for at in 0..size as usize {
            for bit in 0..8 {
                let mut bad = out.clone();
                bad[at] ^= 1 << bit;
                assert!(decode_record(&bad, FORMAT_VERSION).is_err(), "flip of bit {bit} at {at} went unnoticed");
            }
        }
        assert_eq!(decode_record(&[0; 64], FORMAT_VERSION).unwrap_err(), RecordError::End);
        assert_eq!(decode_record(&out[..size as usize - 1], FORMAT_VERSION).unwrap_err(), RecordError::Short);
    }

    #[test]
    fn extensions_round_trip_and_are_checked() {
        let tags = vec![Tag::new("k", "v")];
        let (bytes, data, metadata) = file(3, "T", &tags);
        let mut r = NewRecord::for_event_file("T", &tags, &bytes, &data, &metadata);
        let id = [7u8; EVENT_ID_BYTES];
        for (event_id, tracking) in
            [(Some(id), None), (None, Some(("orders-ü", 42u64))), (Some(id), Some(("s", u64::MAX))), (None, None)]
        {
            r.event_id = event_id;
            r.tracking = tracking;
            for version in [2, FORMAT_VERSION] {
                let mut out = vec![];
                let size =
                    if version == 2 { encode_v2(&mut out, 3, 1, 3, &r) } else { encode_record(&mut out, 3, 1, 3, &r) };
                let v = decode_record(&out, version).unwrap();
                assert_eq!((v.event_id, v.tracking), (event_id, tracking));
                assert_eq!((v.data, v.metadata), (data.as_str(), metadata.as_str()));
                assert_eq!(&v.event_file()[..], &bytes[..]);
                assert_eq!(v.owned_tags(), tags);
                for at in 0..size as usize {
                    let mut bad = out.clone();
                    bad[at] ^= 0x10;
                    assert!(decode_record(&bad, version).is_err(), "version {version}: flip at {at} went unnoticed");
                }
            }
        }
    }

    #[test]
    fn version_1_and_2_records_and_segments_still_decode() {
        // A version 1 record is a version 2 record without extensions.
        let tags = vec![Tag::new("k", "v")];
        let (bytes, data, metadata) = file(1, "T", &tags);
        let mut out = vec![];
        encode_v2(&mut out, 1, 1, 1, &NewRecord::for_event_file("T", &tags, &bytes, &data, &metadata));
        for version in [1, 2] {
            let v = decode_record(&out, version).unwrap();
            assert_eq!((v.event_id, v.tracking, &v.event_file()[..]), (None, None, &bytes[..]));
            assert_eq!((v.data, v.metadata, v.event_type), (data.as_str(), metadata.as_str(), "T"));
        }
        // Read with the wrong version's layout, a record is refused, not misread.
        assert!(decode_record(&out, 3).is_err());
        for version in [1u32, 2] {
            let mut h = encode_segment_header(5);
            h[8..12].copy_from_slice(&version.to_le_bytes());
            let crc = crc32c::crc32c(&h[0..24]);
            h[24..28].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(decode_segment_header(&h), Ok((5, version)));
        }
        let mut h = encode_segment_header(5);
        h[8..12].copy_from_slice(&4u32.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..24]);
        h[24..28].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_segment_header(&h).unwrap_err().contains("version 4"));
    }

    #[test]
    fn headers_footers_and_names_round_trip() {
        assert_eq!(decode_segment_header(&encode_segment_header(42)), Ok((42, FORMAT_VERSION)));
        let mut h = encode_segment_header(42);
        h[17] ^= 1;
        assert!(decode_segment_header(&h).is_err());
        let footer = encode_footer(9, 4096, &[(32, 100), (136, 200)]);
        assert_eq!(decode_table(&footer), Ok(vec![(32, 100), (136, 200)]));
        let t = decode_trailer(&footer[footer.len() - TRAILER_BYTES..]).unwrap();
        assert_eq!(t, Trailer { first: 9, count: 2, table_at: 4096 });
        let mut bad = footer.clone();
        bad[3] ^= 1;
        assert!(decode_table(&bad).is_err());
        assert_eq!(segment_name(1), "00000000000000000001.seg");
        assert_eq!(parse_segment_name(&segment_name(123_456)), Some(123_456));
        assert_eq!(parse_segment_name("00000000000000000001.seg.tmp"), None);
        assert_eq!(parse_segment_name("00000000000000000000.seg"), None);
    }
}
