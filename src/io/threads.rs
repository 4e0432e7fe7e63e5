//! The portable backend: a fixed pool of blocking threads running plain `open`/`read`/`pread`, writing through the
//! shared commit protocol (`commit.rs`) with per-file barriers run on the same threads.
//!
//! Runs everywhere (Windows/NTFS, Linux with io_uring disabled). A pool of many more threads than cores reads small
//! files faster than one thread, warm and cold, because path lookups and device reads overlap: see
//! docs/io-engine.md for the measurements.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use super::barrier::{sync_one, Barriers, FsyncRunner, SyncTarget};
use super::commit::{CommitWriter, Temporaries};
use super::{read_extent, BatchIo, Extent, FileWrite, IoError, IoOp, Spares, SyncStrategy};
use crate::limits::EXTENT_BYTES_IN_FLIGHT_MAX;

/// Files handed to one pool task at once; amortises task overhead without starving other threads.
const READ_CHUNK_FILES: usize = 16;
/// Calls with fewer extents read them on the calling thread: a positional read of a cached page costs about as much
/// as handing it to the pool.
const PARALLEL_EXTENTS_MIN: usize = 8;

pub struct ThreadPoolIo {
    pool: Arc<rayon::ThreadPool>,
    writer: CommitWriter,
}

/// Per-file barriers on the pool: every fsync of a barrier at once, one per thread.
struct PoolFsyncs(Arc<rayon::ThreadPool>);

impl FsyncRunner for PoolFsyncs {
    fn sync_all(&self, targets: &[SyncTarget<'_>]) -> Result<(), IoError> {
        let results: Vec<Result<(), IoError>> = self.0.install(|| targets.par_iter().map(sync_one).collect());
        results.into_iter().collect()
    }
}

/// A pool of `threads` I/O threads named `opossum-io-<i>`.
pub(crate) fn io_pool(threads: usize) -> Result<rayon::ThreadPool, IoError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("opossum-io-{i}"))
        .build()
        .map_err(|e| IoError::new(IoOp::Spawn, "I/O thread pool", std::io::Error::other(e)))
}

impl ThreadPoolIo {
    /// Panics when the threads cannot be spawned; [`ThreadPoolIo::try_with_sync_strategy`] reports it.
    pub fn new(threads: usize) -> ThreadPoolIo {
        ThreadPoolIo::with_sync_strategy(threads, SyncStrategy::default())
    }

    /// Panics when the threads cannot be spawned; [`ThreadPoolIo::try_with_sync_strategy`] reports it.
    pub fn with_sync_strategy(threads: usize, sync: SyncStrategy) -> ThreadPoolIo {
        ThreadPoolIo::try_with_sync_strategy(threads, sync).expect("spawning I/O threads")
    }

    /// A pool of `threads` threads; fails with `IoOp::Spawn` when they cannot be spawned.
    pub fn try_with_sync_strategy(threads: usize, sync: SyncStrategy) -> Result<ThreadPoolIo, IoError> {
        let pool = Arc::new(io_pool(threads)?);
        let barriers = Barriers::new(sync, Box::new(PoolFsyncs(pool.clone())));
        Ok(ThreadPoolIo { writer: CommitWriter::new(barriers, pool.clone()), pool })
    }

    /// Runs `f` on this pool's threads (for callers that want their own parallel loops on the same threads).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

impl BatchIo for ThreadPoolIo {
    fn name(&self) -> &'static str {
        "threads"
    }

    fn read_files(&self, paths: &[PathBuf]) -> Vec<Result<Vec<u8>, IoError>> {
        if paths.len() <= 2 {
            return paths.iter().map(|p| read_file(p)).collect();
        }
        self.pool.install(|| {
            paths.par_iter().with_min_len(READ_CHUNK_FILES.min(paths.len() / 2)).map(|p| read_file(p)).collect()
        })
    }

    fn read_extents(&self, extents: &[Extent<'_>]) -> Vec<Result<Vec<u8>, IoError>> {
        if extents.len() < PARALLEL_EXTENTS_MIN {
            return extents.iter().map(read_extent).collect();
        }
        let mut results = Vec::with_capacity(extents.len());
        for window in byte_windows(extents, EXTENT_BYTES_IN_FLIGHT_MAX) {
            self.pool.install(|| results.par_extend(window.par_iter().with_min_len(READ_CHUNK_FILES).map(read_extent)));
        }
        results
    }

    #[cfg(target_os = "linux")]
    fn read_extents_cached(&self, extents: &[Extent<'_>]) -> Option<Vec<Result<Vec<u8>, IoError>>> {
        super::read_extents_nowait(extents)
    }

    fn write_files(&self, files: &[FileWrite<'_>], durable: bool) -> Result<(), IoError> {
        self.writer.write_files(files, durable, Temporaries::Beside)
    }

    fn write_files_with_trash(&self, files: &[FileWrite<'_>], durable: bool, trash: &Path) -> Result<(), IoError> {
        self.writer.write_files(files, durable, Temporaries::Trash(trash))
    }

    fn write_files_recycling(&self, files: &[FileWrite<'_>], trash: &Path, spares: &Spares) -> Result<(), IoError> {
        self.writer.write_files(files, false, Temporaries::Recycle { trash, spares })
    }
}

/// Splits `extents` into consecutive runs of at most `max_bytes` each (a larger extent is a run of its own).
fn byte_windows<'s, 'a>(extents: &'s [Extent<'a>], max_bytes: usize) -> impl Iterator<Item = &'s [Extent<'a>]> {
    let mut rest = extents;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0usize;
        let n = rest
            .iter()
            .take_while(|e| {
                bytes += e.len as usize;
                bytes <= max_bytes
            })
            .count()
            .max(1);
        let (window, tail) = rest.split_at(n);
        rest = tail;
        Some(window)
    })
}

pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>, IoError> {
    std::fs::read(path).map_err(|e| IoError::new(IoOp::Read, path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_windows_bound_the_bytes_of_each_run_and_keep_order() {
        let file = tempfile::tempfile().unwrap();
        let path = std::path::Path::new("f");
        let lens = [10u32, 20, 30, 100, 5, 5, 0, 40];
        let extents: Vec<Extent<'_>> = lens.iter().map(|&len| Extent { file: &file, path, offset: 0, len }).collect();
        let windows: Vec<Vec<u32>> = byte_windows(&extents, 50).map(|w| w.iter().map(|e| e.len).collect()).collect();
        // 100 exceeds the bound alone and is a run of its own; the zero-length extent joins its neighbours.
        assert_eq!(windows, vec![vec![10, 20], vec![30], vec![100], vec![5, 5, 0, 40]]);
    }
}
