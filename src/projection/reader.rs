//! Streaming projection reads (`get_all`, `query`): the keys come from a snapshot of the in-memory view taken when
//! the read starts; files are read through `BatchIo` a batch at a time and decoded in order. Memory stays bounded by
//! one batch of states plus the key list, however many projections there are.

use std::path::PathBuf;
use std::sync::Arc;

use super::format::{self, ProjectionMetadata};
use super::{Paths, ProjectionError, ProjectionItem};
use rayon::prelude::*;

use crate::io::{BatchIo, IoError};

/// Batches at least this large are decoded on the rayon pool.
const PARALLEL_DECODE_MIN_FILES: usize = 256;

/// One file of a batch: ((key, stem), path) and what `read_files` returned for it.
type ReadResult<'a> = (((&'a String, &'a String), &'a PathBuf), Result<Vec<u8>, IoError>);

pub struct ProjectionReader {
    io: Arc<dyn BatchIo>,
    paths: Paths,
    projection: String,
    /// (key, file stem), in output order.
    keys: Vec<(String, String)>,
    next: usize,
    batch_files: usize,
    current: std::vec::IntoIter<ProjectionItem>,
    failed: bool,
}

impl ProjectionReader {
    pub(crate) fn new(
        io: Arc<dyn BatchIo>,
        paths: Paths,
        projection: String,
        keys: Vec<(String, String)>,
        batch_files: usize,
    ) -> ProjectionReader {
        ProjectionReader {
            io,
            paths,
            projection,
            keys,
            next: 0,
            batch_files: batch_files.max(1),
            current: Vec::new().into_iter(),
            failed: false,
        }
    }

    /// How many keys the snapshot holds (projections deleted meanwhile are skipped, so the output may be shorter).
    pub fn len_hint(&self) -> usize {
        self.keys.len()
    }

    /// The next batch of projections (at most `read_batch_files`), or `None` at the end.
    pub fn next_batch(&mut self) -> Option<Result<Vec<ProjectionItem>, ProjectionError>> {
        if self.failed {
            return None;
        }
        let rest: Vec<ProjectionItem> = self.current.by_ref().collect();
        if !rest.is_empty() {
            return Some(Ok(rest));
        }
        self.next_batch_map(decode_item)
    }

    /// Like [`next_batch`](Self::next_batch), but hands each file's bytes (with its key and path) to `f` instead of
    /// decoding them into a [`ProjectionItem`]: the server re-frames files straight onto the wire this way
    /// (see [`format::decode_projection_view`]). `f` runs on the rayon pool for large batches. Do not mix with
    /// `next`/`next_batch` on one reader.
    pub fn next_batch_map<T, F>(&mut self, f: F) -> Option<Result<Vec<T>, ProjectionError>>
    where
        T: Send,
        F: Fn(&str, &std::path::Path, &[u8]) -> Result<T, ProjectionError> + Sync,
    {
        if self.failed {
            return None;
        }
        while self.next < self.keys.len() {
            let end = (self.next + self.batch_files).min(self.keys.len());
            let chunk = &self.keys[self.next..end];
            self.next = end;
            let files: Vec<PathBuf> =
                chunk.iter().map(|(_, stem)| self.paths.projection_file(&self.projection, stem)).collect();
            let results = self.io.read_files(&files);
            let decode = |(((key, _), path), result): ReadResult<'_>| {
                match result {
                    Ok(bytes) => f(key, path, &bytes).map(Some),
                    // Deleted after the snapshot was taken.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(ProjectionError::from(e)),
                }
            };
            let pairs = chunk.iter().map(|(k, s)| (k, s)).zip(&files).zip(results);
            // Decoding costs about as much as a warm read: spread big batches over the cores.
            let decoded: Vec<Result<Option<T>, ProjectionError>> = if chunk.len() >= PARALLEL_DECODE_MIN_FILES {
                pairs.collect::<Vec<_>>().into_par_iter().map(decode).collect()
            } else {
                pairs.map(decode).collect()
            };
            let mut items = Vec::with_capacity(chunk.len());
            for result in decoded {
                match result {
                    Ok(Some(item)) => items.push(item),
                    Ok(None) => {}
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
            }
            if !items.is_empty() {
                return Some(Ok(items));
            }
        }
        None
    }
}

/// Parses one projection file read for `key` without copying (see [`format::decode_projection_view`]); a file that
/// does not parse, or names another key, is `Corrupt`.
pub fn decode_view<'a>(
    key: &str,
    path: &std::path::Path,
    bytes: &'a [u8],
) -> Result<format::ProjectionView<'a>, ProjectionError> {
    let v = format::decode_projection_view(bytes)
        .map_err(|e| ProjectionError::Corrupt { path: path.to_path_buf(), reason: e.to_string() })?;
    if let Some(k) = &v.key {
        if k != key {
            return Err(ProjectionError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("file says key {k:?}, the index says {key:?}"),
            });
        }
    }
    Ok(v)
}

/// Decodes one projection file read for `key`; metadata reports the file's real size.
pub(crate) fn decode_item(key: &str, path: &std::path::Path, bytes: &[u8]) -> Result<ProjectionItem, ProjectionError> {
    let v = decode_view(key, path, bytes)?;
    Ok(ProjectionItem {
        key: key.to_string(),
        state: v.state.into_owned(),
        metadata: ProjectionMetadata {
            created_at: v.created_at.into_owned(),
            last_updated_at: v.last_updated_at.into_owned(),
            version: v.version,
            size_in_bytes: bytes.len() as u64,
        },
        tags: v.tags.map(|tags| tags.into_iter().map(|(k, v)| crate::model::Tag::new(k, v)).collect()),
    })
}

impl Iterator for ProjectionReader {
    type Item = Result<ProjectionItem, ProjectionError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(item) = self.current.next() {
            return Some(Ok(item));
        }
        match self.next_batch()? {
            Ok(batch) => {
                self.current = batch.into_iter();
                self.current.next().map(Ok)
            }
            Err(e) => Some(Err(e)),
        }
    }
}
