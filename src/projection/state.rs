//! The in-memory view of one projection (entries and tag sets) and how `open` builds it: trusted from the index files
//! when they are provably current, otherwise rebuilt from the projection files and written back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::format::{self, ProjectionMetadata};
use super::{OpenReport, Paths, ProjectionError, OPEN_READ_BATCH_FILES};
use crate::io::{self, BatchIo, FileWrite, IoError, IoOp, WriteMode};

/// One projection key as the store knows it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub key: String,
    /// `size_in_bytes` is the file's real length.
    pub meta: ProjectionMetadata,
    /// Stems of the tag index files listing this key.
    pub tag_stems: Vec<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Projection {
    /// By file stem `K(key)`.
    pub entries: BTreeMap<String, Entry>,
    /// Tag index stem → keys.
    pub tags: HashMap<String, BTreeSet<String>>,
}

impl Projection {
    /// Replaces (or with `None` removes) the entry at `stem`, keeping the tag sets in step.
    pub fn apply(&mut self, stem: &str, new: Option<Entry>) {
        let old = match new {
            Some(entry) => {
                for t in &entry.tag_stems {
                    self.tags.entry(t.clone()).or_default().insert(entry.key.clone());
                }
                let old = self.entries.insert(stem.to_string(), entry);
                // Keep the tags the new entry still carries.
                old.map(|o| {
                    let kept = &self.entries[stem].tag_stems;
                    Entry { tag_stems: o.tag_stems.into_iter().filter(|t| !kept.contains(t)).collect(), ..o }
                })
            }
            None => self.entries.remove(stem),
        };
        if let Some(old) = old {
            for t in &old.tag_stems {
                if let Some(set) = self.tags.get_mut(t) {
                    set.remove(&old.key);
                    if set.is_empty() {
                        self.tags.remove(t);
                    }
                }
            }
        }
    }

    /// Keys carrying every one of `tag_stems` (AND), sorted.
    pub fn keys_with_all(&self, tag_stems: &[String]) -> Vec<String> {
        let mut sets: Vec<&BTreeSet<String>> = Vec::with_capacity(tag_stems.len());
        for t in tag_stems {
            match self.tags.get(t) {
                Some(set) => sets.push(set),
                None => return Vec::new(),
            }
        }
        sets.sort_by_key(|s| s.len());
        let Some((first, rest)) = sets.split_first() else { return Vec::new() };
        first.iter().filter(|k| rest.iter().all(|s| s.contains(*k))).cloned().collect()
    }

    pub fn metadata_index_bytes(&self) -> Vec<u8> {
        format::encode_metadata_index(self.entries.values().map(|e| (e.key.as_str(), &e.meta)))
    }
}

/// Loads projection `name`: trusts `Metadata/index.json` and `Indices/` when no dirty marker is present and they
/// agree with the directory listing; otherwise rebuilds both from the projection files (see `mod.rs`).
pub(crate) fn load(
    paths: &Paths,
    name: &str,
    io: &dyn BatchIo,
    durable: bool,
    report: &mut OpenReport,
) -> Result<Projection, ProjectionError> {
    let dir = paths.projection_dir(name);
    let stems = list_stems(&dir)?;
    let marker = paths.dirty_marker(name).exists();
    let meta = read_optional(&paths.metadata_index(name))?
        .map(|(path, bytes)| format::decode_metadata_index(&bytes).map_err(|e| (path, e.to_string())));
    let (tag_files, corrupt_tag_files) = read_tag_indices(&paths.indices_dir(name))?;

    let mut reason: Option<String> = None;
    if marker {
        reason = Some("dirty marker: the last writer stopped without closing".into());
    }
    let meta = match meta {
        Some(Ok(map)) => Some(map),
        Some(Err((path, e))) => {
            reason.get_or_insert(format!("corrupt {}: {e}", path.display()));
            None
        }
        None => {
            if !stems.is_empty() {
                reason.get_or_insert("Metadata/index.json is missing".into());
            }
            None
        }
    };
    if let Some(map) = &meta {
        let mut listed: BTreeSet<String> = BTreeSet::new();
        for key in map.keys() {
            match format::key_file_stem(key) {
                Ok(stem) if listed.insert(stem.clone()) && stems.contains(&stem) => {}
                _ => {
                    reason.get_or_insert(format!("Metadata/index.json lists {key:?}, which has no file of its own"));
                }
            }
        }
        if listed.len() != stems.len() {
            reason.get_or_insert("projection files without a Metadata/index.json entry".into());
        }
        for (tag, keys) in &tag_files {
            if let Some(k) = keys.iter().find(|k| !map.contains_key(*k)) {
                reason.get_or_insert(format!("tag index {tag} lists {k:?}, which does not exist"));
            }
        }
    }
    if !corrupt_tag_files.is_empty() {
        reason.get_or_insert(format!("corrupt tag index files: {corrupt_tag_files:?}"));
    }

    let Some(reason) = reason else {
        // Trusted: the index files agree with the directory and no writer died mid-commit.
        let mut projection = Projection::default();
        let mut tags_by_key: HashMap<&str, Vec<String>> = HashMap::new();
        for (tag, keys) in &tag_files {
            for k in keys {
                tags_by_key.entry(k.as_str()).or_default().push(tag.clone());
            }
        }
        for (key, m) in meta.unwrap_or_default() {
            let stem = format::key_file_stem(&key).expect("checked above");
            let tag_stems = tags_by_key.remove(key.as_str()).unwrap_or_default();
            projection.entries.insert(stem, Entry { key, meta: m, tag_stems });
        }
        projection.tags = tag_files;
        return Ok(projection);
    };

    tracing::warn!(projection = name, %reason, "rebuilding projection indices from the projection files");
    report.rebuilt.push((name.to_string(), reason));
    let legacy_keys: HashMap<String, String> = meta
        .iter()
        .flat_map(|m| m.keys())
        .filter_map(|k| format::key_file_stem(k).ok().map(|s| (s, k.clone())))
        .collect();
    let mut legacy_tags: HashMap<&str, Vec<String>> = HashMap::new();
    for (tag, keys) in &tag_files {
        for k in keys {
            legacy_tags.entry(k.as_str()).or_default().push(tag.clone());
        }
    }
    let mut projection = Projection::default();
    let stems: Vec<String> = stems.into_iter().collect();
    for chunk in stems.chunks(OPEN_READ_BATCH_FILES) {
        let files: Vec<PathBuf> = chunk.iter().map(|s| paths.projection_file(name, s)).collect();
        for ((stem, path), result) in chunk.iter().zip(&files).zip(io.read_files(&files)) {
            let bytes = match result {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let decoded = match format::decode_projection(&bytes) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(path = %path.display(), "skipping an unreadable projection file: {e}");
                    report.skipped_files.push(path.clone());
                    continue;
                }
            };
            let key = decoded
                .key
                .filter(|k| format::key_file_stem(k).as_deref() == Ok(stem.as_str()))
                .or_else(|| legacy_keys.get(stem).cloned())
                .unwrap_or_else(|| stem.clone());
            let tag_stems = match decoded.tags {
                Some(tags) => {
                    let mut stems: Vec<String> = tags.iter().filter_map(|t| format::tag_stem(t).ok()).collect();
                    stems.sort();
                    stems.dedup();
                    stems
                }
                None => {
                    if !corrupt_tag_files.is_empty() {
                        report.keys_with_unknown_tags += 1;
                    }
                    legacy_tags.get(key.as_str()).cloned().unwrap_or_default()
                }
            };
            let meta = ProjectionMetadata { size_in_bytes: bytes.len() as u64, ..decoded.metadata };
            projection.apply(stem, Some(Entry { key, meta, tag_stems }));
        }
    }
    write_indices(paths, name, &projection, io, durable)?;
    // Remove index files no entry needs any more, then the marker: the indices are current again.
    let indices = paths.indices_dir(name);
    let mut removed = false;
    for file in list_dir(&indices)? {
        let path = indices.join(&file);
        match format::parse_json_file_name(&file) {
            Some(stem) if !projection.tags.contains_key(stem) => {
                // A tag no key carries any more: derived data, rebuilt from the projection files just now.
                tracing::info!(file = %path.display(), "removing a projection tag index file no key needs");
                remove_file(&path)?;
                removed = true;
            }
            Some(_) => {}
            None if crate::format::is_tmp_file_name(&file) => {
                set_aside(paths, &path)?;
                removed = true;
            }
            None => {}
        }
    }
    if durable && removed {
        fsync_dir(&indices)?;
    }
    clear_dirty_marker(paths, name, durable)?;
    Ok(projection)
}

/// Writes `Metadata/index.json` and every tag index file of `projection` in one batch.
fn write_indices(
    paths: &Paths,
    name: &str,
    projection: &Projection,
    io: &dyn BatchIo,
    durable: bool,
) -> Result<(), ProjectionError> {
    create_dir(&paths.indices_dir(name))?;
    create_dir(&paths.metadata_dir(name))?;
    let mut owned: Vec<(PathBuf, Vec<u8>)> = Vec::with_capacity(projection.tags.len() + 1);
    owned.push((paths.metadata_index(name), projection.metadata_index_bytes()));
    for (tag, keys) in &projection.tags {
        owned.push((paths.tag_index(name, tag), format::encode_tag_index(keys.iter())));
    }
    for chunk in owned.chunks(OPEN_READ_BATCH_FILES) {
        let writes: Vec<FileWrite<'_>> =
            chunk.iter().map(|(path, bytes)| FileWrite { path, bytes, mode: WriteMode::Replace }).collect();
        io.write_files(&writes, durable)?;
    }
    Ok(())
}

pub(crate) fn clear_dirty_marker(paths: &Paths, name: &str, durable: bool) -> Result<(), ProjectionError> {
    let marker = paths.dirty_marker(name);
    match std::fs::remove_file(&marker) {
        Ok(()) if durable => fsync_dir(&paths.metadata_dir(name)),
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IoError::new(IoOp::Remove, marker, e).into()),
    }
}

/// Stems of the `*.json` files directly in a projection directory (temporary files excluded).
fn list_stems(dir: &Path) -> Result<BTreeSet<String>, ProjectionError> {
    Ok(list_dir(dir)?.iter().filter_map(|n| format::parse_json_file_name(n)).map(str::to_string).collect())
}

/// File names (regular files only) in `dir`; a missing directory is empty.
pub(crate) fn list_dir(dir: &Path) -> Result<Vec<String>, ProjectionError> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(IoError::new(IoOp::Open, dir, e).into()),
    };
    let mut names = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| IoError::new(IoOp::Read, dir, e))?;
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if let (true, Ok(name)) = (is_file, entry.file_name().into_string()) {
            names.push(name);
        }
    }
    Ok(names)
}

fn read_optional(path: &Path) -> Result<Option<(PathBuf, Vec<u8>)>, ProjectionError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some((path.to_path_buf(), bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IoError::new(IoOp::Read, path, e).into()),
    }
}

type TagFiles = HashMap<String, BTreeSet<String>>;

/// Parses every tag index file; returns the parsed ones and the names of the corrupt ones.
fn read_tag_indices(dir: &Path) -> Result<(TagFiles, Vec<String>), ProjectionError> {
    let mut tags = HashMap::new();
    let mut corrupt = Vec::new();
    for file in list_dir(dir)? {
        let Some(stem) = format::parse_json_file_name(&file) else { continue };
        let path = dir.join(&file);
        let bytes = std::fs::read(&path).map_err(|e| IoError::new(IoOp::Read, &path, e))?;
        match format::decode_tag_index(&bytes) {
            Ok(keys) if !keys.is_empty() => {
                tags.insert(stem.to_string(), keys);
            }
            Ok(_) => {}
            Err(_) => corrupt.push(file),
        }
    }
    Ok((tags, corrupt))
}

pub(crate) fn create_dir(dir: &Path) -> Result<(), ProjectionError> {
    std::fs::create_dir_all(dir).map_err(|e| IoError::new(IoOp::CreateDir, dir, e).into())
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), ProjectionError> {
    io::fsync_dir(dir).map_err(|e| IoError::new(IoOp::FsyncDir, dir, e).into())
}

/// Moves a leftover temporary file to the store's `.quarantine/<unix nanos>/<its path under the store root>`, with a
/// `warn` line naming it: recovery never deletes anything silently.
fn set_aside(paths: &Paths, path: &Path) -> Result<(), ProjectionError> {
    let store_root = paths.root.parent().unwrap_or(&paths.root);
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let relative = path.strip_prefix(store_root).unwrap_or(path);
    let to = store_root.join(crate::format::QUARANTINE_DIR).join(stamp.to_string()).join(relative);
    let to_dir = to.parent().unwrap_or(store_root);
    create_dir(to_dir)?;
    tracing::warn!(file = %path.display(), to = %to.display(), "setting aside a leftover temporary file");
    std::fs::rename(path, &to).map_err(|e| IoError::new(IoOp::Rename, path, e).into())
}

/// Removes a file; a missing one is fine.
pub(crate) fn remove_file(path: &Path) -> Result<(), ProjectionError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IoError::new(IoOp::Remove, path, e).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, tags: &[&str]) -> Entry {
        Entry {
            key: key.into(),
            meta: ProjectionMetadata {
                created_at: "c".into(),
                last_updated_at: "u".into(),
                version: 1,
                size_in_bytes: 10,
            },
            tag_stems: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn apply_keeps_tag_sets_in_step() {
        let mut p = Projection::default();
        p.apply("a", Some(entry("a", &["t_1", "g_x"])));
        p.apply("b", Some(entry("b", &["t_1"])));
        assert_eq!(p.keys_with_all(&["t_1".into()]), ["a", "b"]);
        assert_eq!(p.keys_with_all(&["t_1".into(), "g_x".into()]), ["a"]);
        // A tag change removes the old tag and keeps the shared one.
        p.apply("a", Some(entry("a", &["t_2", "g_x"])));
        assert_eq!(p.keys_with_all(&["t_1".into()]), ["b"]);
        assert_eq!(p.keys_with_all(&["t_2".into(), "g_x".into()]), ["a"]);
        p.apply("b", None);
        assert!(!p.tags.contains_key("t_1"), "empty tag sets are dropped");
        assert_eq!(p.keys_with_all(&["nope".into()]), Vec::<String>::new());
        assert_eq!(p.entries.len(), 1);
    }
}
