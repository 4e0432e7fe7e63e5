//! Reading a segment back at open: the offset table of a sealed one, or a checksum scan of the active one with
//! its torn tail told apart from corruption.
//!
//! The rules (docs/journal.md, "Recovery"):
//! 1. Records are taken in order while each is whole, has the next position and belongs to the group being read;
//!    a group counts only once its last record is read. The scan stops at zeros (the written end) or at the first
//!    record that is not whole.
//! 2. Everything from the end of the last whole group on is the tail. It is a *torn tail* — one group that was
//!    being written when the process died, never acknowledged — when every valid record found in it (at any
//!    aligned offset, up to the last non-zero byte) belongs to that one group. It is cut: zeroed and synced.
//! 3. Anything else is *corruption*: a damaged record with a later group's record after it was acknowledged once.
//!    Open fails with the segment and the offset, and nothing is served from it.
//! 4. A cut at or below the durable head of `marks` (sealed segments, clean closes) is corruption too.

use super::format::{self, decode_record, RecordError, RECORD_ALIGN, SEGMENT_HEADER_BYTES};
use super::JournalError;
use crate::limits::JOURNAL_RECORD_BYTES_MAX;
use std::path::Path;

/// What a scan of an active segment found.
#[derive(Debug)]
pub struct Scanned {
    /// (offset, size) of every record of a whole group, in position order.
    pub records: Vec<(u32, u32)>,
    /// Where the next record goes: the end of the last whole group.
    pub end: u64,
    /// The end of any bytes after `end` (the torn tail to zero), when there are some.
    pub tail_end: Option<u64>,
}

/// Scans `bytes` (a whole segment whose first position is `first`, records laid out as format `version`) as rules
/// 1–3 say.
pub fn scan(bytes: &[u8], first: u64, version: u32, path: &Path) -> Result<Scanned, JournalError> {
    let mut records = Vec::new();
    let mut group: Vec<(u32, u32)> = Vec::new();
    let mut group_first = first;
    let mut expected = first;
    let mut at = SEGMENT_HEADER_BYTES;
    let mut end = SEGMENT_HEADER_BYTES;
    let mut stop: Option<String> = None;
    while at < bytes.len() {
        match decode_record(&bytes[at..], version) {
            Ok(v)
                if v.position == expected
                    && v.group_first == (if group.is_empty() { expected } else { group_first }) =>
            {
                if group.is_empty() {
                    group_first = expected;
                }
                group.push((at as u32, v.size));
                at += format::padded(v.size as usize);
                expected += 1;
                if v.position == v.group_last() {
                    records.append(&mut group);
                    end = at;
                }
            }
            Ok(v) => {
                stop = Some(format!(
                    "record of position {} (group from {}) where {expected} belongs",
                    v.position, v.group_first
                ));
                break;
            }
            Err(RecordError::End) => break,
            Err(e) => {
                stop = Some(e.to_string());
                break;
            }
        }
    }
    let torn_first = first + records.len() as u64;
    let last_nonzero = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if last_nonzero <= end {
        return Ok(Scanned { records, end: end as u64, tail_end: None });
    }
    // Rule 2: any valid record past the stop must belong to the group that starts at `end`.
    let mut probe = at.max(end) + RECORD_ALIGN;
    probe -= probe % RECORD_ALIGN;
    while probe < last_nonzero {
        if plausible(&bytes[probe..], first) {
            if let Ok(v) = decode_record(&bytes[probe..], version) {
                if v.group_first != torn_first {
                    let bad_at = if stop.is_some() { at } else { end };
                    return Err(JournalError::Corrupt {
                        segment: path.to_path_buf(),
                        offset: bad_at as u64,
                        reason: format!(
                            "{}, but a later group's record (position {}) follows at offset {probe}",
                            stop.as_deref().unwrap_or("a gap of zeros"),
                            v.position
                        ),
                    });
                }
            }
        }
        probe += RECORD_ALIGN;
    }
    Ok(Scanned { records, end: end as u64, tail_end: Some(last_nonzero as u64) })
}

/// A cheap filter before a checksum: could a record start here (size and position in range)?
fn plausible(b: &[u8], first: u64) -> bool {
    if b.len() < format::RECORD_BYTES_MIN {
        return false;
    }
    let size = format::u32_at(b, 4) as usize;
    let position = format::u64_at(b, 8);
    (format::RECORD_BYTES_MIN..=JOURNAL_RECORD_BYTES_MAX).contains(&size)
        && size <= b.len()
        && position >= first
        && position - first < u32::MAX as u64
}
