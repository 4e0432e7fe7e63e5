//! The projection writer thread: owns every projection mutation and group-commits whatever puts and deletes are
//! queued (up to [`GROUP_OPS_MAX`](super::GROUP_OPS_MAX)) into one `BatchIo::write_files` call.
//!
//! A commit: validate every request against the current view plus the requests before it in the group (a request is
//! all-or-nothing; a rejected one leaves no trace) → make sure each touched projection has its directories and a
//! durable dirty marker → unlink deleted projection files → one write batch: projection files first, then the
//! changed tag index files, then `Metadata/index.json` → unlink emptied tag index files → fsync touched directories
//! → update the hot tier (`cache.rs`: written files in, deleted ones out; after a failed batch every staged file out)
//! → publish the new view to readers → acknowledge. A failed write poisons the store (see `BatchIo::write_files`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use super::format::{self, ProjectionMetadata};
use super::state::{self, Entry, Projection};
use super::{Op, PreparedPut, ProjectionError, Shared, GROUP_OPS_MAX};
use crate::io::{FileWrite, WriteMode};

pub(crate) enum Request {
    Mutate { ops: Vec<Op>, reply: Reply },
    Checkpoint { projection: String, position: u64, reply: SyncSender<Result<(), ProjectionError>> },
}

impl Request {
    fn ops(&self) -> usize {
        match self {
            Request::Mutate { ops, .. } => ops.len(),
            Request::Checkpoint { .. } => 1,
        }
    }
}

/// What a commit does to one file stem of one projection.
struct Change {
    /// `None`: delete.
    new: Option<Entry>,
    /// The projection file's bytes when `new` is set.
    bytes: Vec<u8>,
}

type Staged = BTreeMap<String, BTreeMap<String, Change>>;
type Reply = SyncSender<Result<Vec<u64>, ProjectionError>>;

pub(crate) struct Writer {
    shared: Arc<Shared>,
    rx: Receiver<Request>,
    /// Projections whose dirty marker this process has written (and must clear at close).
    marked: HashSet<String>,
}

impl Writer {
    pub fn new(shared: Arc<Shared>, rx: Receiver<Request>) -> Writer {
        Writer { shared, rx, marked: HashSet::new() }
    }

    pub fn run(mut self) {
        while let Ok(first) = self.rx.recv() {
            let mut ops = first.ops();
            let mut group = vec![first];
            while ops < GROUP_OPS_MAX {
                match self.rx.try_recv() {
                    Ok(r) => {
                        ops += r.ops();
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            let mut mutations = Vec::new();
            let mut checkpoints = Vec::new();
            for r in group {
                match r {
                    Request::Mutate { ops, reply } => mutations.push((ops, reply)),
                    Request::Checkpoint { projection, position, reply } => {
                        checkpoints.push((projection, position, reply))
                    }
                }
            }
            if !mutations.is_empty() {
                self.commit(mutations);
            }
            for (projection, position, reply) in checkpoints {
                let _ = reply.send(self.write_checkpoint(&projection, position));
            }
        }
        self.close();
    }

    /// At a clean shutdown the index files are current: clear the dirty markers so the next open trusts them.
    fn close(&mut self) {
        if self.shared.poison_reason().is_some() {
            return;
        }
        for name in self.marked.drain() {
            if let Err(e) = state::clear_dirty_marker(&self.shared.paths, &name, self.shared.durable()) {
                tracing::warn!(projection = %name, "could not clear the dirty marker: {e}");
            }
        }
    }

    fn write_checkpoint(&self, projection: &str, position: u64) -> Result<(), ProjectionError> {
        self.shared.check_poisoned()?;
        let paths = &self.shared.paths;
        let dir = paths.checkpoints_dir();
        if !dir.exists() {
            state::create_dir(&dir)?;
            if self.shared.durable() {
                state::fsync_dir(&paths.root)?;
            }
        }
        let checkpoint = format::Checkpoint {
            projection_name: projection.to_string(),
            last_processed_position: position,
            last_updated: crate::format::dotnet_timestamp(std::time::SystemTime::now()),
            total_events_processed: position,
        };
        let path = paths.checkpoint(projection);
        let bytes = checkpoint.encode();
        let write = [FileWrite { path: &path, bytes: &bytes, mode: WriteMode::Replace }];
        self.shared.io.write_files(&write, self.shared.durable()).map_err(|e| self.shared.poison_with(e.into()))
    }

    fn commit(&mut self, mutations: Vec<(Vec<Op>, Reply)>) {
        if let Err(e) = self.shared.check_poisoned() {
            for (_, reply) in mutations {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
        let shared = self.shared.clone();
        let view = shared.projections.read().unwrap();
        let mut staged: Staged = BTreeMap::new();
        let mut accepted = Vec::new();
        let now = crate::format::dotnet_timestamp(std::time::SystemTime::now());
        for (ops, reply) in mutations {
            match stage_request(&view, &staged, ops, &now) {
                Ok((changes, results)) => {
                    for (name, stem, change) in changes {
                        staged.entry(name).or_default().insert(stem, change);
                    }
                    accepted.push((reply, results));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if staged.is_empty() {
            drop(view);
            for (reply, results) in accepted {
                let _ = reply.send(Ok(results));
            }
            return;
        }
        let written = self.write(&view, &staged);
        drop(view);
        if let Some(cache) = &self.shared.cache {
            // The files now on disk (after a failure: unknown, so evicted), in their wire form. Before the reply, so
            // a reader that starts after the acknowledgement never sees an older version from memory.
            let ok = written.is_ok();
            let paths = &self.shared.paths;
            let changes: Vec<(String, String, Option<super::ItemJson>)> = staged
                .iter()
                .flat_map(|(name, changes)| {
                    changes.iter().map(move |(stem, change)| {
                        let body = match &change.new {
                            Some(entry) if ok => {
                                let path = paths.projection_file(name, stem);
                                super::reader::item_body(&entry.key, &path, &change.bytes).ok()
                            }
                            _ => None,
                        };
                        (name.clone(), stem.clone(), body)
                    })
                })
                .collect();
            cache.commit_writes(changes.into_iter());
        }
        if let Err(e) = written {
            let e = self.shared.poison_with(e);
            for (reply, _) in accepted {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
        {
            let mut view = self.shared.projections.write().unwrap();
            for (name, changes) in staged {
                let projection = view.entry(name).or_default();
                for (stem, change) in changes {
                    projection.apply(&stem, change.new);
                }
            }
        }
        for (reply, results) in accepted {
            let _ = reply.send(Ok(results));
        }
    }

    /// Puts the staged changes on disk, in the order the module docs give.
    fn write(&mut self, view: &BTreeMap<String, Projection>, staged: &Staged) -> Result<(), ProjectionError> {
        let durable = self.shared.durable();
        let paths = self.shared.paths.clone();
        let mut owned: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        let mut index_files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        let mut unlink_first: Vec<PathBuf> = Vec::new();
        let mut unlink_after: Vec<PathBuf> = Vec::new();
        let mut fsync_dirs: BTreeSet<PathBuf> = BTreeSet::new();
        let empty = Projection::default();
        for (name, changes) in staged {
            let current = view.get(name).unwrap_or(&empty);
            self.prepare_dirs(name)?;
            if let Some(cache) = &self.shared.cache {
                cache.prepare_write(name);
            }
            // Projection files.
            let mut touched: BTreeSet<&str> = BTreeSet::new();
            for (stem, change) in changes {
                let old = current.entries.get(stem);
                touched.extend(old.iter().flat_map(|e| e.tag_stems.iter().map(String::as_str)));
                match &change.new {
                    Some(entry) => {
                        touched.extend(entry.tag_stems.iter().map(String::as_str));
                        owned.push((paths.projection_file(name, stem), change.bytes.clone()));
                    }
                    None => {
                        unlink_first.push(paths.projection_file(name, stem));
                        fsync_dirs.insert(paths.projection_dir(name));
                    }
                }
            }
            // Tag index files: the current set with this commit's removals and additions.
            for tag in touched {
                let mut keys = current.tags.get(tag).cloned().unwrap_or_default();
                for (stem, change) in changes {
                    if let Some(old) = current.entries.get(stem) {
                        if old.tag_stems.iter().any(|t| t == tag) {
                            keys.remove(&old.key);
                        }
                    }
                    if let Some(new) = &change.new {
                        if new.tag_stems.iter().any(|t| t == tag) {
                            keys.insert(new.key.clone());
                        }
                    }
                }
                let path = paths.tag_index(name, tag);
                if keys.is_empty() {
                    unlink_after.push(path);
                    fsync_dirs.insert(paths.indices_dir(name));
                } else {
                    index_files.push((path, format::encode_tag_index(keys.iter())));
                }
            }
            // The metadata index, whole (as Opossum writes it).
            let mut metas: BTreeMap<&str, &ProjectionMetadata> =
                current.entries.values().map(|e| (e.key.as_str(), &e.meta)).collect();
            for (stem, change) in changes {
                if let Some(old) = current.entries.get(stem) {
                    metas.remove(old.key.as_str());
                }
                if let Some(new) = &change.new {
                    metas.insert(new.key.as_str(), &new.meta);
                }
            }
            index_files.push((paths.metadata_index(name), format::encode_metadata_index(metas.into_iter())));
        }
        for path in &unlink_first {
            state::remove_file(path)?;
        }
        owned.extend(index_files);
        let writes: Vec<FileWrite<'_>> =
            owned.iter().map(|(path, bytes)| FileWrite { path, bytes, mode: WriteMode::Replace }).collect();
        self.shared.io.write_files(&writes, durable)?;
        for path in &unlink_after {
            state::remove_file(path)?;
        }
        if durable {
            for dir in &fsync_dirs {
                state::fsync_dir(dir)?;
            }
        }
        Ok(())
    }

    /// Creates a projection's directories on first use and writes its dirty marker once per process, durably, before
    /// any of its files change.
    fn prepare_dirs(&mut self, name: &str) -> Result<(), ProjectionError> {
        if self.marked.contains(name) {
            return Ok(());
        }
        let paths = &self.shared.paths;
        let durable = self.shared.durable();
        let dir = paths.projection_dir(name);
        let new = !dir.exists();
        state::create_dir(&paths.indices_dir(name))?;
        state::create_dir(&paths.metadata_dir(name))?;
        if new && durable {
            state::fsync_dir(&paths.root)?;
            state::fsync_dir(&dir)?;
        }
        let marker = paths.dirty_marker(name);
        let text = format!("opossumd pid {}\n", std::process::id());
        let write = [FileWrite { path: &marker, bytes: text.as_bytes(), mode: WriteMode::Replace }];
        self.shared.io.write_files(&write, durable)?;
        self.marked.insert(name.to_string());
        Ok(())
    }
}

/// Validates one request against `view` and the changes `staged` earlier in the group. All or nothing.
#[allow(clippy::type_complexity)]
fn stage_request(
    view: &BTreeMap<String, Projection>,
    staged: &Staged,
    ops: Vec<Op>,
    now: &str,
) -> Result<(Vec<(String, String, Change)>, Vec<u64>), ProjectionError> {
    let mut local: Vec<(String, String, Change)> = Vec::with_capacity(ops.len());
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        let (projection, stem) = match &op {
            Op::Put(p) => (&p.projection, &p.stem),
            Op::Delete { projection, stem, .. } => (projection, stem),
        };
        let current: Option<&Entry> = match local.iter().rev().find(|(n, s, _)| n == projection && s == stem) {
            Some((_, _, change)) => change.new.as_ref(),
            None => match staged.get(projection).and_then(|c| c.get(stem)) {
                Some(change) => change.new.as_ref(),
                None => view.get(projection).and_then(|p| p.entries.get(stem)),
            },
        };
        match op {
            Op::Put(put) => {
                let PreparedPut { projection, key, stem, state, tags, tag_stems, expected_version } = put;
                if let Some(e) = current {
                    if e.key != key {
                        return Err(ProjectionError::KeyCollision { projection, key, existing: e.key.clone(), stem });
                    }
                }
                let actual = current.map_or(0, |e| e.meta.version);
                if let Some(expected) = expected_version {
                    if expected != actual {
                        return Err(ProjectionError::VersionConflict { projection, key, expected, actual });
                    }
                }
                let mut meta = ProjectionMetadata {
                    created_at: current.map_or_else(|| now.to_string(), |e| e.meta.created_at.clone()),
                    last_updated_at: now.to_string(),
                    version: actual + 1,
                    size_in_bytes: 0,
                };
                let bytes = format::encode_projection(&key, &state, &meta, &tags);
                meta.size_in_bytes = bytes.len() as u64;
                results.push(meta.version);
                local.push((projection, stem, Change { new: Some(Entry { key, meta, tag_stems }), bytes }));
            }
            Op::Delete { projection, key, stem } => match current {
                Some(e) if e.key == key => {
                    results.push(1);
                    local.push((projection, stem, Change { new: None, bytes: Vec::new() }));
                }
                _ => results.push(0),
            },
        }
    }
    Ok((local, results))
}
