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

/// Most events one append request may carry.
pub const APPEND_EVENTS_MAX: usize = 10_000;
/// Largest encoded event file accepted, in bytes.
pub const EVENT_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest total of encoded event bytes in one append request. Library callers may use all of it; over the socket
/// a request is one line of at most the server's frame limit (16 MiB by default), so a wire append is bounded by
/// that first. Decided (issue 12): the library limit stays 64 MiB (bulk imports in-process), larger than a frame.
pub const APPEND_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Append requests waiting for the writer; further appenders block (backpressure).
pub const APPEND_QUEUE_MAX: usize = 1024;
/// Most events one group commit writes; the rest wait for the next commit.
pub const GROUP_EVENTS_MAX: usize = 8192;
/// Event files read per `BatchIo::read_files` call while streaming a read (and while recovering or catching up).
pub const READ_BATCH_FILES_DEFAULT: usize = 1024;
/// With deferred index writes, the index flusher pauses at least this many times as long as its last flush took
/// (and at least the configured interval): flushes use at most ~1/(1 + factor) of the time.
pub const INDEX_FLUSH_PAUSE_FACTOR: u32 = 9;

const _: () = {
    // The largest event fits an append on its own.
    assert!(EVENT_BYTES_MAX <= APPEND_BYTES_MAX);
    // A request that is allowed at all commits in one group (a group takes at least one whole request).
    assert!(APPEND_EVENTS_MAX >= 1 && GROUP_EVENTS_MAX >= 1);
    assert!(READ_BATCH_FILES_DEFAULT >= 1 && INDEX_FLUSH_PAUSE_FACTOR >= 1);
};

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
// (The projection cache's budget constants stay in `projection/cache.rs` for now: another change owns that file.)

/// Most puts one `put_many` may carry.
pub const PUT_MANY_MAX: usize = 10_000;
/// Largest projection state accepted, in bytes (minified).
pub const PROJECTION_STATE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest total of state bytes in one `put_many`.
pub const PUT_MANY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most tags one projection may carry.
pub const PROJECTION_TAGS_MAX: usize = 64;
/// Most tags one projection query may AND together.
pub const PROJECTION_QUERY_TAGS_MAX: usize = 64;
/// Projection requests waiting for the projection writer; further writers block (backpressure).
pub const PROJECTION_REQUEST_QUEUE_MAX: usize = 1024;
/// Most operations one projection group commit takes from the queue (a single larger `put_many` commits whole).
pub const PROJECTION_GROUP_OPS_MAX: usize = 8192;
/// Projection files read per `BatchIo::read_files` call while streaming `get_all` and `query`.
pub const PROJECTION_READ_BATCH_FILES_DEFAULT: usize = 1024;
/// Projection files read (and index files written) per `BatchIo` call while rebuilding at open.
pub const PROJECTION_OPEN_READ_BATCH_FILES_MAX: usize = 4096;

const _: () = assert!(PROJECTION_STATE_BYTES_MAX <= PUT_MANY_BYTES_MAX);

// --- journal ---------------------------------------------------------------------------------------------------

// --- server ----------------------------------------------------------------------------------------------------
