//! Every bound the store, io, projection and server enforce, in one place.
//!
//! Names put the qualifier last (`EVENT_BYTES_MAX`, not `MAX_EVENT_BYTES`) so related limits sort together, and units
//! come before the qualifier (`CONNECTION_IDLE_SECS_MAX`). The `const _: () = { ... }` blocks at the end of each
//! section fail the build when two limits stop fitting each other.
//!
//! Sections: file names (model, tree), events and appends (store), reads (store, io), projections, journal, server.

// --- file names ------------------------------------------------------------------------------------------------

/// Longest file name (one path component) in bytes on the filesystems a store lives on (ext4, xfs, btrfs, tmpfs:
/// `NAME_MAX`). Every name below is bounded so that its file, and that file's temporary name, fit.
pub const FILE_NAME_BYTES_MAX: usize = 255;
/// Longest event type name accepted, in bytes: it becomes `Indices/EventType/<type>.json`.
pub const EVENT_TYPE_BYTES_MAX: usize = 200;
/// Longest tag key plus value accepted, in bytes: it becomes `Indices/Tags/<key>_<value>.json`. Kept at 240 (the
/// documented limit since the start, and .NET Opossum accepts such tags too); the temporary name of a 250-byte index
/// file is made shorter instead (`format::tmp_path` cuts the final name to leave room for its suffix), because a
/// temporary name only has to be unique and recognisable.
pub const TAG_BYTES_MAX: usize = 240;
/// Longest projection name accepted, in bytes: a directory name, and `_checkpoints/<name>.checkpoint`.
pub const PROJECTION_NAME_BYTES_MAX: usize = 200;
/// Longest projection key accepted, in bytes (of `K(key)`): `K(key).json` must fit a file name.
pub const PROJECTION_KEY_BYTES_MAX: usize = 200;
/// Longest projection tag index file name accepted, in bytes (`<lower k>_<lower v>.json`).
pub const PROJECTION_TAG_FILE_NAME_BYTES_MAX: usize = 250;

/// `.json`, the suffix of event, index and projection files.
const JSON_SUFFIX_BYTES: usize = ".json".len();
/// The longest final name the store or the projection store can create.
pub const FINAL_NAME_BYTES_MAX: usize = {
    let event_type = EVENT_TYPE_BYTES_MAX + JSON_SUFFIX_BYTES;
    // `S(key)_S(value).json`: `S()` never lengthens a name.
    let event_tag = TAG_BYTES_MAX + 1 + JSON_SUFFIX_BYTES;
    let projection_key = PROJECTION_KEY_BYTES_MAX + JSON_SUFFIX_BYTES;
    let checkpoint = PROJECTION_NAME_BYTES_MAX + ".checkpoint".len();
    let mut max = event_type;
    let others = [event_tag, projection_key, checkpoint, PROJECTION_TAG_FILE_NAME_BYTES_MAX];
    let mut i = 0;
    while i < others.len() {
        if others[i] > max {
            max = others[i];
        }
        i += 1;
    }
    max
};

const _: () = {
    // Every final name fits; its temporary name fits by construction (`format::tmp_path` cuts the final name to
    // `FILE_NAME_BYTES_MAX - TMP_SUFFIX_BYTES`), which needs room for the suffix and at least one byte of name.
    assert!(FINAL_NAME_BYTES_MAX <= FILE_NAME_BYTES_MAX);
    assert!(crate::format::TMP_SUFFIX_BYTES < FILE_NAME_BYTES_MAX);
    // Event files `<10+ digits>.json` and `.ledger` are far below the limit.
    assert!(20 + JSON_SUFFIX_BYTES <= FILE_NAME_BYTES_MAX);
};

// --- events and appends ----------------------------------------------------------------------------------------

/// After a write fault the writer re-runs recovery in place first after this long (`StoreOptions::
/// recovery_backoff_min`), doubling the wait after each failed attempt up to [`RECOVERY_BACKOFF_MAX`].
pub const RECOVERY_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(100);
/// Longest wait between in-place recovery attempts: on a full disk one attempt (a directory scan and a read of
/// the index files) every 5 s costs little, and freed space brings writes back within 5 s.
pub const RECOVERY_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);

const _: () = assert!(
    RECOVERY_BACKOFF_MIN.as_millis() > 0 && RECOVERY_BACKOFF_MIN.as_millis() <= RECOVERY_BACKOFF_MAX.as_millis()
);

// --- reads and io ----------------------------------------------------------------------------------------------

// --- projections -----------------------------------------------------------------------------------------------

// --- journal ---------------------------------------------------------------------------------------------------

// --- server ----------------------------------------------------------------------------------------------------
