//! Every bound the store, io, projection and server enforce, in one place.
//!
//! Names put the qualifier last (`EVENT_BYTES_MAX`, not `MAX_EVENT_BYTES`) so related limits sort together, and units
//! come before the qualifier (`CONNECTION_IDLE_SECS_MAX`). The `const _: () = { ... }` blocks at the end of each
//! section fail the build when two limits stop fitting each other.
//!
//! Sections: file names (model, tree), events and appends (store), reads (store, io), projections, journal, server.

// --- file names ------------------------------------------------------------------------------------------------

// --- events and appends ----------------------------------------------------------------------------------------

// --- reads and io ----------------------------------------------------------------------------------------------

// --- projections -----------------------------------------------------------------------------------------------

// --- journal ---------------------------------------------------------------------------------------------------

/// A segment is sealed (offset table written, a new segment started) once the next group would take it past this.
/// A group bigger than a whole segment gets a segment of its own, stretched to fit.
pub const JOURNAL_SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// Largest journal record: an event file of up to the store's event limit plus its type and tags.
pub const JOURNAL_RECORD_BYTES_MAX: usize = 8 << 20;
/// Reads coalesce the records of adjacent positions into extents of at most this many bytes (one `pread` each).
pub const JOURNAL_READ_EXTENT_BYTES_MAX: usize = 1 << 20;
/// Bytes of records a full scan (index rebuild, import, mirror catch-up) holds in memory at once.
pub const JOURNAL_SCAN_BYTES_MAX: usize = 16 << 20;
/// Most bytes one group commit hands the journal; the writer closes a group before it would pass this.
pub const JOURNAL_GROUP_BYTES_MAX: usize = 256 << 20;
const _: () = {
    assert!(JOURNAL_RECORD_BYTES_MAX <= JOURNAL_READ_EXTENT_BYTES_MAX * 16);
    assert!(JOURNAL_SCAN_BYTES_MAX >= JOURNAL_RECORD_BYTES_MAX);
    assert!((JOURNAL_GROUP_BYTES_MAX as u64) < u32::MAX as u64 / 2);
    assert!(JOURNAL_SEGMENT_BYTES_MAX >= JOURNAL_RECORD_BYTES_MAX as u64 * 2);
};

// --- server ----------------------------------------------------------------------------------------------------
