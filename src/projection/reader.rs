//! Streaming projection reads (`get_all`, `query`): the keys come from a snapshot of the in-memory view taken when
//! the read starts; each batch of keys is looked up in the hot tier ([`super::cache`]) under one lock, only the
//! misses are read through `BatchIo`, and hits and misses are decoded in key order. Memory stays bounded by one
//! batch of states plus the key list, however many projections there are.

use std::path::PathBuf;
use std::sync::Arc;

use super::cache::{CachedItem, ProjectionCache};
use super::format::{self, ProjectionMetadata};
use super::{Paths, ProjectionError, ProjectionItem};
use rayon::prelude::*;

use crate::io::{BatchIo, IoError};

/// Batches at least this large are decoded on the rayon pool.
const PARALLEL_DECODE_MIN_FILES: usize = 256;

/// One projection of a batch as [`ProjectionReader::next_batch_map`] hands it over.
pub enum ItemSource<'a> {
    /// From the cache: the item's JSON ([`super::ItemJson`]).
    Cached(&'a Arc<CachedItem>),
    /// Read from disk: the projection file of `key` at `path`.
    File { key: &'a str, path: &'a std::path::Path, bytes: &'a [u8] },
}

/// Where one file of a batch comes from.
enum Source<'a> {
    Cached(&'a Arc<CachedItem>),
    /// The `n`th file read from disk, and what `read_files` returned for it.
    Read(usize, &'a Result<Vec<u8>, IoError>),
}

/// Why one file of a batch could not be delivered.
enum Failure {
    Decode(ProjectionError),
    /// `read_files` failed for the `n`th file read (the error is taken from the results afterwards).
    Io(usize),
}

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
    cache: Option<Arc<ProjectionCache>>,
}

impl ProjectionReader {
    pub(crate) fn new(
        io: Arc<dyn BatchIo>,
        paths: Paths,
        projection: String,
        keys: Vec<(String, String)>,
        batch_files: usize,
        cache: Option<Arc<ProjectionCache>>,
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
            cache,
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
        self.next_batch_map(|source| match source {
            ItemSource::Cached(item) => item.body.decode(),
            ItemSource::File { key, path, bytes } => decode_item(key, path, bytes),
        })
    }

    /// Like [`next_batch`](Self::next_batch), but hands each projection (a cached [`super::ItemJson`], or a file's bytes with
    /// its key and path) to `f` instead of decoding it into a [`ProjectionItem`]: the server copies cached bodies and
    /// re-frames files straight onto the wire this way (see [`item_body`]). `f` runs on the rayon pool for large
    /// batches. Do not mix with `next`/`next_batch` on one reader.
    pub fn next_batch_map<T, F>(&mut self, f: F) -> Option<Result<Vec<T>, ProjectionError>>
    where
        T: Send,
        F: Fn(ItemSource<'_>) -> Result<T, ProjectionError> + Sync,
    {
        if self.failed {
            return None;
        }
        while self.next < self.keys.len() {
            let end = (self.next + self.batch_files).min(self.keys.len());
            let chunk = &self.keys[self.next..end];
            self.next = end;
            let mut cached: Vec<Option<Arc<CachedItem>>> = Vec::with_capacity(chunk.len());
            let token = match &self.cache {
                Some(cache) => Some(cache.lookup(&self.projection, chunk.iter().map(|(_, s)| s.as_str()), &mut cached)),
                None => {
                    cached.resize(chunk.len(), None);
                    None
                }
            };
            // Paths of the misses only: a hit needs none.
            let misses: Vec<usize> = (0..chunk.len()).filter(|&i| cached[i].is_none()).collect();
            let read: Vec<PathBuf> =
                misses.iter().map(|&i| self.paths.projection_file(&self.projection, &chunk[i].1)).collect();
            let mut results = if read.is_empty() { Vec::new() } else { self.io.read_files(&read) };
            let mut sources: Vec<Source<'_>> = Vec::with_capacity(chunk.len());
            let mut next_miss = results.iter().enumerate();
            for item in &cached {
                sources.push(match item {
                    Some(item) => Source::Cached(item),
                    None => {
                        let (n, result) = next_miss.next().expect("one result per path");
                        Source::Read(n, result)
                    }
                });
            }
            let decode = |((key, _), source): (&(String, String), Source<'_>)| match source {
                Source::Cached(item) => f(ItemSource::Cached(item)).map(Some).map_err(Failure::Decode),
                Source::Read(n, Ok(bytes)) => {
                    f(ItemSource::File { key, path: &read[n], bytes }).map(Some).map_err(Failure::Decode)
                }
                // Deleted after the snapshot was taken.
                Source::Read(_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Source::Read(n, Err(_)) => Err(Failure::Io(n)),
            };
            let pairs = chunk.iter().zip(sources);
            // Decoding a file costs about as much as a warm read: spread batches with many misses over the cores.
            // Hits cost next to nothing.
            let decoded: Vec<Result<Option<T>, Failure>> = if read.len() >= PARALLEL_DECODE_MIN_FILES {
                pairs.collect::<Vec<_>>().into_par_iter().map(decode).collect()
            } else {
                pairs.map(decode).collect()
            };
            let mut items = Vec::with_capacity(chunk.len());
            for result in decoded {
                match result {
                    Ok(Some(item)) => items.push(item),
                    Ok(None) => {}
                    Err(failure) => {
                        self.failed = true;
                        return Some(Err(match failure {
                            Failure::Decode(e) => e,
                            Failure::Io(n) => results.swap_remove(n).expect_err("a failed read").into(),
                        }));
                    }
                }
            }
            if let (Some(cache), Some(token)) = (&self.cache, token) {
                let ok: Vec<(usize, &Vec<u8>)> =
                    results.iter().enumerate().filter_map(|(n, r)| r.as_ref().ok().map(|bytes| (n, bytes))).collect();
                let admit =
                    cache.second_touch(token, &self.projection, ok.iter().map(|(n, _)| chunk[misses[*n]].1.as_str()));
                let bodies = ok.iter().zip(admit).filter(|(_, admit)| *admit).filter_map(|((n, bytes), _)| {
                    let (key, stem) = &chunk[misses[*n]];
                    item_body(key, &read[*n], bytes).ok().map(|body| (stem.as_str(), body))
                });
                let bodies: Vec<(&str, super::ItemJson)> = bodies.collect();
                if !bodies.is_empty() {
                    cache.admit(token, &self.projection, bodies.into_iter());
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

/// The item JSON of the projection file read for `key` ([`super::ItemJson::from_file`]): what the cache keeps.
pub fn item_body(key: &str, path: &std::path::Path, bytes: &[u8]) -> Result<super::ItemJson, ProjectionError> {
    super::ItemJson::from_file(key, path, bytes)
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
