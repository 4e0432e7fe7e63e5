//! Operator tools on a stopped store, behind `opossum export --opossum` and `opossum verify`: they read the journal
//! (`.opossumd/journal/`) directly, not through a daemon.
//!
//! Offline by design: [`OfflineStore::open`] takes `.opossumd.lock` and `.store.lock` without waiting and fails with
//! [`ToolError::InUse`] naming the lock when a daemon (or a .NET writer) holds one, so a tool never reads a journal
//! or a tree that is being appended to. Opening the journal recovers it as the daemon would (a torn tail of the
//! active segment is cut: it was never acknowledged).
//!
//! What "equal" means for an event file ([`compare_event_file`]): the bytes of the journal record's event file, or,
//! for an event imported from a tree .NET wrote (indented, CRLF), a file that decodes to the same position, type,
//! tags, data and metadata (the record holds the minified re-encoding that import made of it).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::{self, Layout};
use crate::io::{self, BatchIo, IoBackendKind, SyncStrategy};
use crate::journal::{journal_dir, Journal, JournalError, JournalOptions, RecordView};
use crate::model::Tag;
use crate::store::StoreError;

pub mod export;
pub mod verify;

pub use export::{export_tree, Exported};
pub use verify::{verify, Difference, VerifyReport};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(
        "store {root} is in use: another process holds {lock} ({holder}); stop it first, these tools work on a \
         stopped store"
    )]
    InUse { root: PathBuf, lock: &'static str, holder: &'static str },
    #[error("{0} has no journal (.opossumd/journal): it was never opened with --commit journal; its Opossum tree is the record")]
    NoJournal(PathBuf),
    #[error("{0} is not an empty directory: export writes a whole tree and never mixes it with other files")]
    NotEmpty(PathBuf),
    #[error("{0} overlaps the store: export into a directory outside it")]
    Overlaps(PathBuf),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<io::IoError> for ToolError {
    fn from(e: io::IoError) -> ToolError {
        ToolError::Store(StoreError::from(e))
    }
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ToolError {
    let path = path.to_path_buf();
    move |source| ToolError::Io { op, path, source }
}

/// A stopped store opened for a tool: both locks held until drop, the journal recovered and readable through
/// `BatchIo`.
pub struct OfflineStore {
    pub layout: Layout,
    pub journal: Journal,
    pub io: Arc<dyn BatchIo>,
    _owner_lock: File,
    _tree_lock: File,
}

impl OfflineStore {
    /// Opens the store at `root` (the directory holding `.ledger`, `events/`, `.opossumd/`). See the module docs.
    pub fn open(root: &Path) -> Result<OfflineStore, ToolError> {
        let root = std::fs::canonicalize(root).map_err(io_error("open", root))?;
        if !journal_dir(&root).is_dir() {
            return Err(ToolError::NoJournal(root));
        }
        let layout = Layout::new(&root);
        let take = |path: PathBuf, lock: &'static str, holder: &'static str| -> Result<File, ToolError> {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_error("open", &path))?;
            match file.try_lock() {
                Ok(()) => Ok(file),
                Err(std::fs::TryLockError::WouldBlock) => Err(ToolError::InUse { root: root.clone(), lock, holder }),
                Err(std::fs::TryLockError::Error(e)) => Err(io_error("lock", &path)(e)),
            }
        };
        let owner_lock = take(layout.owner_lock(), format::OWNER_LOCK_FILE, "a running opossumd")?;
        let tree_lock = take(layout.lock(), format::LOCK_FILE, "a running opossumd or a .NET Opossum writer")?;
        let io = io::open_backend_with(IoBackendKind::Auto, SyncStrategy::default()).map_err(StoreError::from)?;
        let (journal, _) = Journal::open_dir(&root, JournalOptions::default())?;
        let journal = journal.with_batch_io(io.clone());
        Ok(OfflineStore { layout, journal, io, _owner_lock: owner_lock, _tree_lock: tree_lock })
    }
}

/// How an event file differs from its journal record, if it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventFileMismatch {
    /// Not an event file at all (torn by a crash, truncated, not JSON): `reason` says why.
    Unreadable(String),
    /// A whole event file of another event: `what` names the first field that differs.
    Differs(String),
}

impl std::fmt::Display for EventFileMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventFileMismatch::Unreadable(reason) => write!(f, "not a readable event file: {reason}"),
            EventFileMismatch::Differs(what) => write!(f, "{what}"),
        }
    }
}

/// Whether `file` (an event file of the tree) is the event `record` holds: see the module docs.
pub fn compare_event_file(file: &[u8], record: &RecordView<'_>) -> Result<(), EventFileMismatch> {
    if file == &record.event_file()[..] {
        return Ok(());
    }
    let e = format::decode_event(file).map_err(|e| EventFileMismatch::Unreadable(e.to_string()))?;
    let short = |s: &str| -> String {
        const SHOWN_CHARS_MAX: usize = 60;
        match s.char_indices().nth(SHOWN_CHARS_MAX) {
            Some((at, _)) => format!("{}…", &s[..at]),
            None => s.to_string(),
        }
    };
    let differs = |field: &str, file: &str, journal: &str| {
        Err(EventFileMismatch::Differs(format!(
            "{field}: the file says {}, the journal {}",
            short(file),
            short(journal)
        )))
    };
    if e.position != record.position {
        return differs("position", &e.position.to_string(), &record.position.to_string());
    }
    if e.event_type != record.event_type {
        return differs("eventType", &e.event_type, record.event_type);
    }
    if e.tags != record.owned_tags() {
        let show = |tags: &[Tag]| tags.iter().map(|t| format!("{}={}", t.key, t.value)).collect::<Vec<_>>().join(",");
        return differs("tags", &show(&e.tags), &show(&record.owned_tags()));
    }
    if e.data.get() != record.data {
        return differs("data", e.data.get(), record.data);
    }
    if e.metadata.get() != record.metadata {
        return differs("metadata", e.metadata.get(), record.metadata);
    }
    // Same event, other bytes: a file .NET wrote (indented, CRLF) that the record holds re-encoded.
    Ok(())
}

/// The index files a tree of the journal's events has, with their positions: what files mode writes (one type file
/// per event type, one tag file per tag, each naming every position once, ascending).
#[derive(Debug, Default)]
pub struct IndexLists {
    pub files: BTreeMap<PathBuf, Vec<u64>>,
}

impl IndexLists {
    /// Adds `record`'s position to its type file and to each of its tag files (records come in position order).
    pub fn add(&mut self, layout: &Layout, record: &RecordView<'_>) {
        let mut push = |path: PathBuf| {
            let list = self.files.entry(path).or_default();
            if list.last() != Some(&record.position) {
                list.push(record.position);
            }
        };
        push(layout.type_index_file(record.event_type));
        for (key, value) in record.tags() {
            push(layout.tag_index_file(&Tag::new(key, value)));
        }
    }
}
