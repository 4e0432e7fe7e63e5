//! The portable backend: a fixed pool of blocking threads running plain `open`/`read`/`write`/`fsync`.
//!
//! Runs everywhere (Windows/NTFS, Linux with io_uring disabled). Measured on the 2-core dev machine a pool of
//! ~32 threads reads small files ~1.6x faster than one thread warm and ~8x cold, because path lookups and
//! device reads overlap; see ARCHITECTURE.md.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use rayon::prelude::*;

use super::{fsync_dir, parent_dirs, rename_no_replace, tmp_path, BatchIo, FileWrite, IoError, IoOp, WriteMode};

/// Pool size used by `open_backend`: I/O-bound threads, not CPU-bound, so many more than cores.
pub const THREADS_DEFAULT: usize = 32;
/// Files handed to one pool task at once; amortises task overhead without starving other threads.
const READ_CHUNK_FILES: usize = 16;

pub struct ThreadPoolIo {
    pool: rayon::ThreadPool,
}

impl ThreadPoolIo {
    pub fn new(threads: usize) -> ThreadPoolIo {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("opossum-io-{i}"))
            .build()
            .expect("spawning I/O threads");
        ThreadPoolIo { pool }
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

    fn write_files(&self, files: &[FileWrite<'_>], durable: bool) -> Result<(), IoError> {
        write_files_blocking(files, durable, &self.pool)
    }
}

pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>, IoError> {
    std::fs::read(path).map_err(|e| IoError::new(IoOp::Read, path, e))
}

/// Most files of one write batch held open at once (their descriptors wait for the final fsync round); bigger
/// batches are written in chunks of this size. Well below the 20,000-descriptor hard limit seen here.
pub const WRITE_OPEN_FILES_MAX: usize = 4096;

/// The write protocol of blocking backends, in at most three parallel rounds per chunk of files:
/// 1. write every temporary file (a `Replace` file is also fsynced here, so its rename is an atomic replace
///    even across power loss);
/// 2. rename each to its final name, in order (`CreateNew` never replaces);
/// 3. when durable, fsync every `CreateNew` file and every parent directory at once. A crash before this round
///    ends can leave a `CreateNew` file torn at its final name, which the `BatchIo` contract allows: such files
///    only become valid through a later commit record (the ledger).
///
/// Temporary files are removed on failure.
pub(crate) fn write_files_blocking(
    files: &[FileWrite<'_>],
    durable: bool,
    pool: &rayon::ThreadPool,
) -> Result<(), IoError> {
    for chunk in files.chunks(WRITE_OPEN_FILES_MAX) {
        write_chunk(chunk, durable, pool)?;
    }
    Ok(())
}

fn write_chunk(files: &[FileWrite<'_>], durable: bool, pool: &rayon::ThreadPool) -> Result<(), IoError> {
    let tmps: Vec<PathBuf> = files.iter().map(|f| tmp_path(f.path)).collect();
    let write_one =
        |(f, tmp): (&FileWrite<'_>, &PathBuf)| write_tmp(tmp, f.bytes, durable && f.mode == WriteMode::Replace);
    let written: Vec<Result<std::fs::File, IoError>> = if files.len() <= 2 {
        files.iter().zip(&tmps).map(write_one).collect()
    } else {
        pool.install(|| files.par_iter().zip(tmps.par_iter()).map(write_one).collect())
    };
    let mut handles = Vec::with_capacity(files.len());
    for result in written {
        match result {
            Ok(file) => handles.push(file),
            Err(err) => {
                remove_all(&tmps);
                return Err(err);
            }
        }
    }
    for (i, (f, tmp)) in files.iter().zip(&tmps).enumerate() {
        let renamed = match f.mode {
            WriteMode::CreateNew => rename_no_replace(tmp, f.path),
            WriteMode::Replace => std::fs::rename(tmp, f.path),
        };
        if let Err(e) = renamed {
            remove_all(&tmps[i..]);
            return Err(IoError::new(IoOp::Rename, f.path, e));
        }
    }
    if !durable {
        return Ok(());
    }
    enum Sync<'a> {
        File(&'a std::fs::File, &'a std::path::Path),
        Dir(&'a std::path::Path),
    }
    let mut syncs: Vec<Sync<'_>> = files
        .iter()
        .zip(&handles)
        .filter(|(f, _)| f.mode == WriteMode::CreateNew)
        .map(|(f, h)| Sync::File(h, f.path))
        .collect();
    syncs.extend(parent_dirs(files).into_iter().map(Sync::Dir));
    let sync_one = |s: &Sync<'_>| match s {
        Sync::File(h, path) => h.sync_data().map_err(|e| IoError::new(IoOp::Fsync, *path, e)),
        Sync::Dir(dir) => fsync_dir(dir).map_err(|e| IoError::new(IoOp::FsyncDir, *dir, e)),
    };
    let results: Vec<Result<(), IoError>> = if syncs.len() <= 1 {
        syncs.iter().map(sync_one).collect()
    } else {
        pool.install(|| syncs.par_iter().map(sync_one).collect())
    };
    results.into_iter().collect()
}

fn write_tmp(tmp: &std::path::Path, bytes: &[u8], sync: bool) -> Result<std::fs::File, IoError> {
    let mut file =
        OpenOptions::new().write(true).create_new(true).open(tmp).map_err(|e| IoError::new(IoOp::Open, tmp, e))?;
    file.write_all(bytes).map_err(|e| IoError::new(IoOp::Write, tmp, e))?;
    if sync {
        file.sync_data().map_err(|e| IoError::new(IoOp::Fsync, tmp, e))?;
    }
    Ok(file)
}

fn remove_all(paths: &[PathBuf]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}
