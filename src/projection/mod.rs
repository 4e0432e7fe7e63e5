//! The projection store: .NET Opossum's `Projections/` tree (see [`format`]) read and written by the daemon.
//!
//! A projection (`Projections/<Name>/`) holds one file per key with an opaque JSON state, a tag index per tag
//! (`Indices/<lower k>_<lower v>.json`, the keys carrying it) and `Metadata/index.json` (key → metadata).
//! Checkpoints live beside them in `Projections/_checkpoints/<Name>.checkpoint`.
//!
//! # Threads
//! [`ProjectionStore`] is `Send + Sync`. One writer thread owns every mutation (so writers are serialised globally)
//! and group-commits queued puts and deletes: one durable `BatchIo::write_files` per commit, however many callers.
//! Readers run on the calling thread without a lock on disk: `get`, `get_all` and `query` take a snapshot of the
//! in-memory view (a `RwLock` held only while copying keys), take what the hot tier ([`cache`]) holds and read the
//! other files through `BatchIo`.
//!
//! # No `.store.lock`
//! .NET Opossum takes no file lock for projections (`FileSystemProjectionStore` serialises saves with an in-process
//! `SemaphoreSlim` only), so holding `flock(.store.lock)` would not exclude a .NET writer; and since `flock` belongs
//! to an open file description, a second descriptor in this process would contend with our own event store's writer
//! and serialise projection commits behind event appends for nothing. Two daemons on one store are excluded by the
//! event store's `.opossumd.lock`. A .NET process and the daemon must not write the *same* projection at once (two
//! .NET processes cannot either). Other processes' changes to projection files still reach `get`/`get_all`/`query`:
//! the cache watches projection directories with inotify (see [`cache`], "Coherence").
//!
//! # Crash consistency
//! The projection files are the truth; `Indices/` and `Metadata/index.json` are derived caches kept current on every
//! commit. Each projection file is written whole to a temporary file, fsynced and renamed (then its directory
//! fsynced), so it is always either the old or the new version. The index files are rewritten in the same write
//! batch, *after* the projection files, and a crash can leave them behind. So, before the first change this process
//! makes to a projection, it durably writes `Metadata/opossumd.dirty`, and removes it only at a clean close, when
//! every index file has been written. `open`:
//! 1. with no marker, trusts the index files if they agree with the directory: `Metadata/index.json` parses, names
//!    exactly the `*.json` files present (one key per file), and every tag index file parses and names known keys;
//! 2. otherwise (marker present, an index file missing, corrupt or stale) reads every projection file through
//!    `BatchIo` and rebuilds: keys, versions and timestamps from the files, tags from the `"Tags"` we write into each
//!    file (files written by .NET carry none: their tags are taken from the surviving index files); then rewrites
//!    `Metadata/index.json` and every tag index file, removes stale ones, and only then removes the marker.
//!
//! An acknowledged put is durable (file fsynced and renamed, directory fsynced) before its reply; an unacknowledged
//! one may or may not be there after a crash, and a `put_many` interrupted by a crash may be partly applied.
//! A failed write or fsync poisons the store: it refuses further writes until reopened (and rebuilt).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use crate::io::{BatchIo, IoError, IoOp};
use crate::model::{RawJson, Tag};
use crate::store::Durability;

pub mod cache;
pub mod format;
pub mod item;
mod reader;
mod state;
mod writer;

pub use cache::{CacheStats, PROJECTION_CACHE_BYTES_DEFAULT};
pub use format::{Checkpoint, NameError, ProjectionMetadata};
pub use item::ItemJson;
pub use reader::{decode_view, item_body, ItemSource, ProjectionReader};

// The limits live in `crate::limits` (names there carry a `PROJECTION_` prefix where they would be ambiguous).
pub use crate::limits::{
    PROJECTION_GROUP_OPS_MAX as GROUP_OPS_MAX, PROJECTION_OPEN_READ_BATCH_FILES_MAX as OPEN_READ_BATCH_FILES,
    PROJECTION_QUERY_TAGS_MAX as QUERY_TAGS_MAX, PROJECTION_READ_BATCH_FILES_DEFAULT as READ_BATCH_FILES_DEFAULT,
    PROJECTION_REQUEST_QUEUE_MAX as REQUEST_QUEUE_MAX, PROJECTION_STATE_BYTES_MAX as STATE_BYTES_MAX,
    PROJECTION_TAGS_MAX as TAGS_PER_PROJECTION_MAX, PUT_MANY_BYTES_MAX, PUT_MANY_MAX,
};

#[derive(Debug, Clone)]
pub struct ProjectionOptions {
    /// `Fsync` (default): every acknowledged write is on stable storage. `None`: page cache only.
    pub durability: Durability,
    pub read_batch_files: usize,
    /// Byte budget of the hot tier of projection reads ([`cache`]); 0 turns it off.
    pub cache_bytes: usize,
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        ProjectionOptions {
            durability: Durability::Fsync,
            read_batch_files: READ_BATCH_FILES_DEFAULT,
            cache_bytes: PROJECTION_CACHE_BYTES_DEFAULT,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A request over one of the limits in `crate::limits` (`limit` is the constant's name).
    #[error("{what} is {value}; the limit is {max} ({limit})")]
    LimitExceeded { what: String, limit: &'static str, value: usize, max: usize },
    #[error("projection {projection}: no key {key:?}")]
    NotFound { projection: String, key: String },
    #[error("projection {projection}, key {key:?}: expected version {expected}, found {actual}")]
    VersionConflict { projection: String, key: String, expected: u64, actual: u64 },
    #[error("projection {projection}: key {key:?} and existing key {existing:?} share the file name {stem}.json")]
    KeyCollision { projection: String, key: String, existing: String, stem: String },
    #[error("storage error: {0}")]
    Io(Arc<IoError>),
    #[error("corrupt file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("the projection store refuses writes after a failed write or fsync (reopen it to recover): {0}")]
    Poisoned(String),
    #[error("the projection store is closed")]
    Closed,
}

impl From<IoError> for ProjectionError {
    fn from(e: IoError) -> Self {
        ProjectionError::Io(Arc::new(e))
    }
}

/// One put: replaces the state and the tags of `key` (tags are not merged: a put without tags leaves none).
/// Also the wire form of one element of `projection.put_many`'s `puts`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Put {
    pub projection: String,
    pub key: String,
    pub state: RawJson,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    /// `Some(0)`: the key must not exist; `Some(v)`: its current version must be `v`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
}

/// A projection as read back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProjectionItem {
    pub key: String,
    pub state: RawJson,
    /// `SizeInBytes` is the file's length.
    pub metadata: ProjectionMetadata,
    /// The tags recorded in the file; `None` for files written by .NET Opossum, which keeps tags only in the indices.
    pub tags: Option<Vec<Tag>>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProjectionSummary {
    pub name: String,
    pub count: usize,
}

/// What `open` found and repaired.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    pub projections: usize,
    /// Projections whose indices were rebuilt from the projection files, with the reason.
    pub rebuilt: Vec<(String, String)>,
    /// Projection files that could not be parsed (left in place, not served).
    pub skipped_files: Vec<PathBuf>,
    /// .NET-written projections (no `"Tags"` in the file) rebuilt while some tag index file was corrupt: their tags
    /// may be incomplete.
    pub keys_with_unknown_tags: usize,
}

/// Where everything lives, from `<store root>/Projections`.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn projection_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    pub fn projection_file(&self, name: &str, stem: &str) -> PathBuf {
        let mut file = self.root.join(name);
        file.push(format!("{stem}{}", format::PROJECTION_FILE_SUFFIX));
        file
    }
    pub fn indices_dir(&self, name: &str) -> PathBuf {
        self.root.join(name).join(format::INDICES_DIR)
    }
    pub fn tag_index(&self, name: &str, tag_stem: &str) -> PathBuf {
        self.indices_dir(name).join(format!("{tag_stem}.json"))
    }
    pub fn metadata_dir(&self, name: &str) -> PathBuf {
        self.root.join(name).join(format::METADATA_DIR)
    }
    pub fn metadata_index(&self, name: &str) -> PathBuf {
        self.metadata_dir(name).join(format::METADATA_INDEX_FILE)
    }
    pub fn dirty_marker(&self, name: &str) -> PathBuf {
        self.metadata_dir(name).join(format::DIRTY_MARKER_FILE)
    }
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join(format::CHECKPOINTS_DIR)
    }
    pub fn checkpoint(&self, name: &str) -> PathBuf {
        self.checkpoints_dir().join(format!("{name}{}", format::CHECKPOINT_SUFFIX))
    }
}

/// State shared by the store handle, the writer thread and readers.
pub(crate) struct Shared {
    pub paths: Paths,
    pub io: Arc<dyn BatchIo>,
    pub options: ProjectionOptions,
    pub projections: RwLock<BTreeMap<String, state::Projection>>,
    pub poisoned: Mutex<Option<String>>,
    /// The hot tier; `None` when off.
    pub cache: Option<Arc<cache::ProjectionCache>>,
}

impl Shared {
    pub fn durable(&self) -> bool {
        self.options.durability == Durability::Fsync
    }

    pub fn poison_reason(&self) -> Option<String> {
        self.poisoned.lock().unwrap().clone()
    }

    pub fn check_poisoned(&self) -> Result<(), ProjectionError> {
        match self.poison_reason() {
            Some(reason) => Err(ProjectionError::Poisoned(reason)),
            None => Ok(()),
        }
    }

    /// Poisons the store after a failed write; returns the error to report.
    pub fn poison_with(&self, e: ProjectionError) -> ProjectionError {
        tracing::error!("projection store poisoned: {e}");
        self.poisoned.lock().unwrap().get_or_insert(e.to_string());
        e
    }
}

/// A put validated and minified on the caller's thread.
pub(crate) struct PreparedPut {
    pub projection: String,
    pub key: String,
    pub stem: String,
    pub state: RawJson,
    pub tags: Vec<Tag>,
    pub tag_stems: Vec<String>,
    pub expected_version: Option<u64>,
}

pub(crate) enum Op {
    Put(PreparedPut),
    Delete { projection: String, key: String, stem: String },
}

pub struct ProjectionStore {
    shared: Arc<Shared>,
    report: OpenReport,
    requests: Option<SyncSender<writer::Request>>,
    writer: Option<JoinHandle<()>>,
}

impl ProjectionStore {
    /// Opens the projections of the store whose root is `root` (the folder holding `.ledger` and `Projections/`),
    /// creating `Projections/` if needed, and checks or rebuilds every projection's indices (see the module docs).
    /// `io` is normally the event store's backend.
    pub fn open(
        root: impl AsRef<Path>,
        io: Arc<dyn BatchIo>,
        options: ProjectionOptions,
    ) -> Result<ProjectionStore, ProjectionError> {
        let paths = Paths { root: root.as_ref().join(format::PROJECTIONS_DIR) };
        let durable = options.durability == Durability::Fsync;
        if !paths.root.exists() {
            state::create_dir(&paths.root)?;
            if durable {
                state::fsync_dir(root.as_ref())?;
            }
        }
        let mut report = OpenReport::default();
        let mut projections = BTreeMap::new();
        for name in list_projection_dirs(&paths.root)? {
            let projection = state::load(&paths, &name, io.as_ref(), durable, &mut report)?;
            projections.insert(name, projection);
        }
        report.projections = projections.len();
        let cache = cache::ProjectionCache::new(options.cache_bytes, paths.clone()).map(Arc::new);
        let shared = Arc::new(Shared {
            paths,
            io,
            options,
            projections: RwLock::new(projections),
            poisoned: Mutex::new(None),
            cache,
        });
        let (tx, rx) = sync_channel(REQUEST_QUEUE_MAX);
        let writer = writer::Writer::new(shared.clone(), rx);
        let handle = std::thread::Builder::new()
            .name("opossum-projections".into())
            .spawn(move || writer.run())
            .map_err(|e| IoError::new(IoOp::Spawn, "projection writer thread", e))?;
        tracing::info!(root = %shared.paths.root.display(), projections = report.projections, rebuilt = report.rebuilt.len(), "projection store open");
        Ok(ProjectionStore { shared, report, requests: Some(tx), writer: Some(handle) })
    }

    /// What `open` found: which projections it rebuilt, and why.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The `Projections/` directory.
    pub fn dir(&self) -> &Path {
        &self.shared.paths.root
    }

    /// Writes one projection; returns its new version. Durable on return (unless opened with `Durability::None`).
    pub fn put(&self, put: Put) -> Result<u64, ProjectionError> {
        let op = prepare_put(put)?;
        Ok(self.mutate(vec![Op::Put(op)])?[0])
    }

    /// Writes many projections in one group commit (one durable write batch); returns their new versions in order.
    /// All or nothing as far as validation goes: one version conflict rejects the whole batch. A crash during the
    /// commit may leave a prefix or subset of it on disk (none of it was acknowledged).
    pub fn put_many(&self, puts: Vec<Put>) -> Result<Vec<u64>, ProjectionError> {
        if puts.len() > PUT_MANY_MAX {
            return Err(ProjectionError::LimitExceeded {
                what: "the number of puts in put_many".into(),
                limit: "PUT_MANY_MAX",
                value: puts.len(),
                max: PUT_MANY_MAX,
            });
        }
        let ops: Vec<Op> = puts.into_iter().map(|p| prepare_put(p).map(Op::Put)).collect::<Result<_, _>>()?;
        let bytes: usize = ops.iter().map(|op| if let Op::Put(p) = op { p.state.get().len() } else { 0 }).sum();
        if bytes > PUT_MANY_BYTES_MAX {
            return Err(ProjectionError::LimitExceeded {
                what: "the state bytes of put_many".into(),
                limit: "PUT_MANY_BYTES_MAX",
                value: bytes,
                max: PUT_MANY_BYTES_MAX,
            });
        }
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.mutate(ops)
    }

    /// Deletes a projection key (its file, its metadata entry, its tag index entries). Returns whether it existed.
    pub fn delete(&self, projection: &str, key: &str) -> Result<bool, ProjectionError> {
        format::validate_projection_name(projection)?;
        let stem = format::key_file_stem(key)?;
        let op = Op::Delete { projection: projection.to_string(), key: key.to_string(), stem };
        Ok(self.mutate(vec![op])?[0] == 1)
    }

    fn mutate(&self, ops: Vec<Op>) -> Result<Vec<u64>, ProjectionError> {
        let (reply, response) = sync_channel(1);
        self.send(writer::Request::Mutate { ops, reply })?;
        response.recv().map_err(|_| ProjectionError::Closed)?
    }

    fn send(&self, request: writer::Request) -> Result<(), ProjectionError> {
        let requests = self.requests.as_ref().ok_or(ProjectionError::Closed)?;
        requests.send(request).map_err(|_| ProjectionError::Closed)
    }

    /// Reads one projection. `NotFound` when the key does not exist.
    pub fn get(&self, projection: &str, key: &str) -> Result<ProjectionItem, ProjectionError> {
        format::validate_projection_name(projection)?;
        let stem = format::key_file_stem(key)?;
        let not_found = || ProjectionError::NotFound { projection: projection.to_string(), key: key.to_string() };
        let known = {
            let view = self.shared.projections.read().unwrap();
            view.get(projection).and_then(|p| p.entries.get(&stem)).is_some_and(|e| e.key == key)
        };
        if !known {
            return Err(not_found());
        }
        let path = self.shared.paths.projection_file(projection, &stem);
        let mut hit = Vec::with_capacity(1);
        let token = self.shared.cache.as_ref().map(|c| c.lookup(projection, std::iter::once(stem.as_str()), &mut hit));
        if let Some(Some(item)) = hit.pop() {
            return item.body.decode();
        }
        let bytes = match self.shared.io.read_files(std::slice::from_ref(&path)).pop().expect("one result per path") {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(e.into()),
        };
        let item = reader::decode_item(key, &path, &bytes)?;
        if let (Some(cache), Some(token)) = (&self.shared.cache, token) {
            if cache.second_touch(token, projection, std::iter::once(stem.as_str())) == [true] {
                cache.admit(
                    token,
                    projection,
                    std::iter::once((stem.as_str(), reader::item_body(key, &path, &bytes)?)),
                );
            }
        }
        Ok(item)
    }

    /// The hot tier's counters; all zero when it is off.
    pub fn cache_stats(&self) -> CacheStats {
        self.shared.cache.as_ref().map(|c| c.stats()).unwrap_or_default()
    }

    /// Streams every projection of `projection`, by key. An unknown projection streams nothing.
    pub fn get_all(&self, projection: &str) -> Result<ProjectionReader, ProjectionError> {
        format::validate_projection_name(projection)?;
        let keys = {
            let view = self.shared.projections.read().unwrap();
            view.get(projection)
                .map(|p| p.entries.iter().map(|(stem, e)| (e.key.clone(), stem.clone())).collect())
                .unwrap_or_default()
        };
        Ok(self.reader(projection, keys))
    }

    /// Streams the projections carrying every one of `tags` (AND), matched case-insensitively by their index file
    /// name as Opossum does, by key.
    pub fn query(&self, projection: &str, tags: &[Tag]) -> Result<ProjectionReader, ProjectionError> {
        format::validate_projection_name(projection)?;
        if tags.is_empty() || tags.len() > QUERY_TAGS_MAX {
            return Err(ProjectionError::Invalid(format!(
                "a projection query needs 1 to {QUERY_TAGS_MAX} tags, got {}",
                tags.len()
            )));
        }
        let tag_stems: Vec<String> = tags.iter().map(format::tag_stem).collect::<Result<_, _>>()?;
        let keys = {
            let view = self.shared.projections.read().unwrap();
            match view.get(projection) {
                None => Vec::new(),
                Some(p) => p
                    .keys_with_all(&tag_stems)
                    .into_iter()
                    .filter_map(|k| format::key_file_stem(&k).ok().map(|stem| (k, stem)))
                    .collect(),
            }
        };
        Ok(self.reader(projection, keys))
    }

    fn reader(&self, projection: &str, keys: Vec<(String, String)>) -> ProjectionReader {
        ProjectionReader::new(
            self.shared.io.clone(),
            self.shared.paths.clone(),
            projection.to_string(),
            keys,
            self.shared.options.read_batch_files,
            self.shared.cache.clone(),
        )
    }

    /// Every projection with its number of keys, by name.
    pub fn list(&self) -> Vec<ProjectionSummary> {
        let view = self.shared.projections.read().unwrap();
        view.iter().map(|(name, p)| ProjectionSummary { name: name.clone(), count: p.entries.len() }).collect()
    }

    /// The checkpoint of `projection`, `None` when it has none.
    pub fn checkpoint(&self, projection: &str) -> Result<Option<Checkpoint>, ProjectionError> {
        format::validate_projection_name(projection)?;
        let path = self.shared.paths.checkpoint(projection);
        match std::fs::read(&path) {
            Ok(bytes) => Checkpoint::decode(&bytes)
                .map(Some)
                .map_err(|e| ProjectionError::Corrupt { path, reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IoError::new(IoOp::Read, path, e).into()),
        }
    }

    /// Records that `projection` has processed the events up to `position` (durably, replacing the old checkpoint).
    pub fn set_checkpoint(&self, projection: &str, position: u64) -> Result<(), ProjectionError> {
        format::validate_projection_name(projection)?;
        let (reply, response) = sync_channel(1);
        self.send(writer::Request::Checkpoint { projection: projection.to_string(), position, reply })?;
        response.recv().map_err(|_| ProjectionError::Closed)?
    }

    /// Finishes queued writes, clears the dirty markers (the index files are current) and stops the writer.
    pub fn close(mut self) -> Result<(), ProjectionError> {
        self.shutdown();
        self.shared.check_poisoned()
    }

    fn shutdown(&mut self) {
        self.requests.take();
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for ProjectionStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Subdirectories of `Projections/` that are projections: not `_checkpoints`, not Opossum's temporary (`format::is_tmp_file_name`)
/// rebuild staging directories, not names we would refuse.
fn list_projection_dirs(dir: &Path) -> Result<Vec<String>, ProjectionError> {
    let read = std::fs::read_dir(dir).map_err(|e| IoError::new(IoOp::Open, dir, e))?;
    let mut names = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| IoError::new(IoOp::Read, dir, e))?;
        if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let Ok(name) = entry.file_name().into_string() else { continue };
        match format::validate_projection_name(&name) {
            Ok(()) => names.push(name),
            Err(e) if name != format::CHECKPOINTS_DIR && !crate::format::is_tmp_file_name(&name) => {
                tracing::warn!("ignoring directory {}: {e}", entry.path().display());
            }
            Err(_) => {}
        }
    }
    names.sort();
    Ok(names)
}

fn prepare_put(put: Put) -> Result<PreparedPut, ProjectionError> {
    format::validate_projection_name(&put.projection)?;
    let stem = format::key_file_stem(&put.key)?;
    if put.tags.len() > TAGS_PER_PROJECTION_MAX {
        return Err(ProjectionError::LimitExceeded {
            what: "the number of tags of a projection".into(),
            limit: "PROJECTION_TAGS_MAX",
            value: put.tags.len(),
            max: TAGS_PER_PROJECTION_MAX,
        });
    }
    let mut tag_stems: Vec<String> = put.tags.iter().map(format::tag_stem).collect::<Result<_, _>>()?;
    tag_stems.sort();
    tag_stems.dedup();
    let state = crate::format::minify_raw(&put.state);
    if state.get().len() > STATE_BYTES_MAX {
        return Err(ProjectionError::LimitExceeded {
            what: "the state, minified, in bytes".into(),
            limit: "PROJECTION_STATE_BYTES_MAX",
            value: state.get().len(),
            max: STATE_BYTES_MAX,
        });
    }
    Ok(PreparedPut {
        projection: put.projection,
        key: put.key,
        stem,
        state,
        tags: put.tags,
        tag_stems,
        expected_version: put.expected_version,
    })
}
