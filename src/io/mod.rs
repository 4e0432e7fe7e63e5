//! `BatchIo`: the one seam between the store and the kernel for bulk file work.
//!
//! The store hands a backend many small files at once — thousands of event files to read, a group commit's
//! event, index and ledger files to write — and the backend decides how to get them through the kernel
//! (a thread pool everywhere; io_uring rings on Linux). Backends are interchangeable: the same test suite runs
//! over each one, and `FaultyIo` wraps any of them to inject ENOSPC/EIO.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) mod barrier;
pub(crate) mod commit;
pub mod faulty;
pub mod priority;
pub mod sim;
pub mod spares;
pub mod threads;
#[cfg(target_os = "linux")]
pub mod uring;

pub use crate::format::tmp_path;
pub use barrier::fsync_dir;
pub use commit::parent_dirs;
pub use faulty::{Fault, FaultyIo};
pub use spares::Spares;
pub use threads::ThreadPoolIo;

/// A failed file operation, naming the file and the step that failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct IoError {
    pub op: IoOp,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    pub fn new(op: IoOp, path: impl Into<PathBuf>, source: std::io::Error) -> IoError {
        IoError { op, path: path.into(), source }
    }

    pub fn kind(&self) -> std::io::ErrorKind {
        self.source.kind()
    }
}

/// The step of a file operation that failed (for error messages and fault injection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    Open,
    Read,
    Write,
    Fsync,
    Rename,
    FsyncDir,
    /// Deleting a file (temporaries, leftovers found at open).
    Remove,
    /// Taking or testing a file lock.
    Lock,
    /// Creating a directory (and its missing parents).
    CreateDir,
    /// Spawning a thread (a writer, a flusher, an I/O pool): not a file operation, but a step that can fail.
    Spawn,
    /// Reserving a file's blocks ahead of its writes (`fallocate`).
    Preallocate,
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoOp::Open => "open",
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Fsync => "fsync",
            IoOp::Rename => "rename",
            IoOp::FsyncDir => "fsync directory",
            IoOp::Remove => "remove",
            IoOp::Lock => "lock",
            IoOp::CreateDir => "create directory",
            IoOp::Spawn => "spawn",
            IoOp::Preallocate => "preallocate",
        })
    }
}

/// How a written file takes its final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// The final name must not exist yet (event files: never overwrite). An existing file fails the write
    /// with `ErrorKind::AlreadyExists` and is left untouched.
    CreateNew,
    /// Atomically replace whatever is at the final name (index files).
    Replace,
    /// Atomically replace the final name, but only once every other file of the batch is durable: the batch's
    /// commit record (the ledger). Its contents are made durable together with the other files and its rename
    /// comes last, so a commit costs two durability rounds, not three.
    Commit,
    /// Like `Commit`, but the record is overwritten in place (padded with spaces to its old length, created when
    /// absent) instead of replaced by a new file: one `fdatasync` instead of a new inode, a rename and a directory
    /// fsync, several times cheaper (docs/io-engine.md, "Durability barriers"). The record must fit in one disk
    /// sector ([`crate::limits::IN_PLACE_RECORD_BYTES_MAX`]), so a crash leaves the old or the new one; a reader that
    /// takes no lock could see a half-copied record, so only for files no lockless reader shares (see
    /// `IndexWrites::Deferred`).
    CommitInPlace,
}

/// One file of a write batch.
#[derive(Debug, Clone, Copy)]
pub struct FileWrite<'a> {
    pub path: &'a Path,
    pub bytes: &'a [u8],
    pub mode: WriteMode,
}

/// A byte range of a file the caller holds open: the unit a journal read asks for.
#[derive(Debug, Clone, Copy)]
pub struct Extent<'a> {
    /// An open, readable descriptor; positional reads leave its cursor alone, so callers may share it.
    pub file: &'a std::fs::File,
    /// The file's path, for errors only (never opened).
    pub path: &'a Path,
    pub offset: u64,
    pub len: u32,
}

/// Which backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoBackendKind {
    /// io_uring when the kernel allows it, else the thread pool (with a logged reason).
    #[default]
    Auto,
    Uring,
    Threads,
}

impl std::str::FromStr for IoBackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoBackendKind::Auto),
            "uring" | "io_uring" => Ok(IoBackendKind::Uring),
            "threads" => Ok(IoBackendKind::Threads),
            other => Err(format!("unknown io backend {other:?}: expected auto, uring or threads")),
        }
    }
}

/// Bulk file I/O. Implementations must be safe to call from many threads at once.
pub trait BatchIo: Send + Sync {
    /// A short name for logs and `stats` (`"threads"`, `"uring"`).
    fn name(&self) -> &'static str;

    /// Reads every file in `paths` whole, however large, and returns one result per path **in request order**
    /// (`result[i]` belongs to `paths[i]`). A missing or unreadable file fails only its own entry, with its path;
    /// the call itself never fails. Any number of paths may be given: the backend bounds the descriptors and
    /// bytes it keeps in flight itself. Callers that need bounded memory pass bounded slices.
    fn read_files(&self, paths: &[PathBuf]) -> Vec<Result<Vec<u8>, IoError>>;

    /// Reads each extent; one result per extent, **in request order** (`result[i]` is `extents[i]`).
    ///
    /// `Ok(bytes)` holds exactly `len` bytes, read at `offset` without moving the descriptor's cursor. A file shorter
    /// than `offset + len` fails that entry with `ErrorKind::UnexpectedEof` (never a short `Ok`, never a panic); any
    /// failure fails only its own entry, as an [`IoOp::Read`] naming `path`; the call itself never fails. A zero-length
    /// extent is `Ok(vec![])`. Any number of extents may be given: the backend bounds the bytes it has in flight
    /// ([`crate::limits::EXTENT_BYTES_IN_FLIGHT_MAX`], though a single larger extent is still read whole); the
    /// results themselves are the caller's memory, so callers that need bounded memory pass bounded slices.
    fn read_extents(&self, extents: &[Extent<'_>]) -> Vec<Result<Vec<u8>, IoError>>;

    /// [`BatchIo::read_extents`] for a caller that must not wait for a device (an async worker answering a small
    /// read): `Some` with the same results when every extent came whole from the page cache, `None` as soon as one
    /// would have waited (nothing more is read; the kernel may start read-ahead), or where the backend cannot read
    /// without waiting. The caller bounds how many extents it asks for: they are read one after another on the
    /// calling thread (a cached read completes within its system call; no ring or pool another thread may hold).
    fn read_extents_cached(&self, extents: &[Extent<'_>]) -> Option<Vec<Result<Vec<u8>, IoError>>> {
        let _ = extents;
        None
    }

    /// Writes a batch of files: a `CreateNew` file straight at its final name (exclusive create), any other to a
    /// fresh temporary name in its own directory (`format::tmp_path`), then renamed to its final name according to its
    /// [`WriteMode`].
    ///
    /// With `durable == true`, on `Ok` every file's contents and every new directory entry are on stable storage
    /// (each distinct parent directory is fsynced once). With `durable == false` nothing is fsynced (the page cache
    /// decides). Ordering within a durable batch, per mode:
    /// - `Replace`: the file's data is durable *before* its rename, so even after a power loss the final name holds
    ///   the old or the new contents, whole.
    /// - `CreateNew`: the name appears before the data is durable (one fsync round for the whole batch instead
    ///   of two, and no rename per file), so a crash during the call can leave a torn file at the final name. Callers create only files
    ///   that a later commit record makes valid (event files beyond the ledger are quarantined at open).
    /// - `Commit`: renamed after every other file of the batch (and its directory entry) is durable, then its own
    ///   directory is fsynced. After a crash the final name holds the old record, or the new one with every file it
    ///   vouches for. An interrupted call can leave its temporary file behind.
    /// - `CommitInPlace`: overwritten after every other file of the batch is durable, then fdatasynced (and its
    ///   directory fsynced if the call created it).
    ///
    /// On `Err` the batch is **not** atomic: any subset of the files may have reached their final names, and after
    /// a failed fsync the page cache may have dropped data. Callers treat an error like a crash: they stop writing
    /// (poison) and rely on recovery at the next open. Leftover temporary files are removed on a best-effort basis.
    fn write_files(&self, files: &[FileWrite<'_>], durable: bool) -> Result<(), IoError>;

    /// [`BatchIo::write_files`], except that a `Replace` or `Commit` file's rename frees nothing: its temporary is
    /// written in `trash` (a directory on the same filesystem, which the caller owns and empties; nothing there is
    /// ever read) and swapped with the file at the final name (`renameat2(RENAME_EXCHANGE)`), so the old contents
    /// stay in `trash` under the temporary's name until the caller deletes them. The contract is `write_files`'s
    /// (what a crash leaves at the final names, what is durable on `Ok`; `trash` itself is never synced: whatever a
    /// crash leaves there is junk).
    ///
    /// Why: on a filesystem that discards freed blocks synchronously (ext4 mounted `discard`), a rename over an
    /// existing file frees its blocks while holding the directory's lock, ~0.3 ms per file that no other rename
    /// into that directory can overlap; deleting the same files later from several threads frees them outside it.
    /// Linux (glibc); elsewhere, on a filesystem that cannot swap names, or by default, the same as `write_files`.
    fn write_files_with_trash(&self, files: &[FileWrite<'_>], durable: bool, trash: &Path) -> Result<(), IoError> {
        let _ = trash;
        self.write_files(files, durable)
    }

    /// [`BatchIo::write_files_with_trash`] without `fsync`s (`durable == false`), whose temporaries reuse the inodes
    /// earlier swaps left behind: a `Replace` or `Commit` file is written into a spare of `spares` (opened without
    /// `O_CREAT`, overwritten from offset 0, cut to its new length) when the pool has one that no other open file
    /// description refers to (a write lease proves it, `io/spares.rs`; a spare a reader holds open goes to `trash`
    /// untouched), else to a new temporary in the pool's directory while it has room, else in `trash`; then it is
    /// swapped with the file at the final name, which leaves that file's old inode at the temporary's name, a spare
    /// again. Once the pool is warm no replacement creates or frees an inode.
    ///
    /// The contract is `write_files_with_trash`'s with `durable == false`, plus one weaker promise: after a crash a
    /// final name this call replaced may hold **another file's** old contents, whole and valid-looking (the swap
    /// reached the disk, the overwrite of the recycled inode did not), where a fresh temporary could only leave the
    /// old file, the new one or a torn one. Callers therefore use it only for files they rewrite from their own
    /// durable record after any crash before their next barrier: journal mode's mirror, whose open rewrites every
    /// index file touched after its last durable checkpoint (`mirror::reconcile_tree`); never for durable writes,
    /// files mode, or a file read before that rewrite (the ledger). Linux (glibc) with file leases; elsewhere, or
    /// where leases cannot be taken (`fs.leases-enable = 0`), the same as `write_files_with_trash(files, false, trash)`.
    fn write_files_recycling(&self, files: &[FileWrite<'_>], trash: &Path, spares: &Spares) -> Result<(), IoError> {
        let _ = spares;
        self.write_files_with_trash(files, false, trash)
    }
}

impl<T: BatchIo + ?Sized> BatchIo for Arc<T> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn read_files(&self, paths: &[PathBuf]) -> Vec<Result<Vec<u8>, IoError>> {
        (**self).read_files(paths)
    }
    fn read_extents(&self, extents: &[Extent<'_>]) -> Vec<Result<Vec<u8>, IoError>> {
        (**self).read_extents(extents)
    }
    fn read_extents_cached(&self, extents: &[Extent<'_>]) -> Option<Vec<Result<Vec<u8>, IoError>>> {
        (**self).read_extents_cached(extents)
    }
    fn write_files(&self, files: &[FileWrite<'_>], durable: bool) -> Result<(), IoError> {
        (**self).write_files(files, durable)
    }
    fn write_files_with_trash(&self, files: &[FileWrite<'_>], durable: bool, trash: &Path) -> Result<(), IoError> {
        (**self).write_files_with_trash(files, durable, trash)
    }
    fn write_files_recycling(&self, files: &[FileWrite<'_>], trash: &Path, spares: &Spares) -> Result<(), IoError> {
        (**self).write_files_recycling(files, trash, spares)
    }
}

/// How a durable write batch waits for stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncStrategy {
    /// `Syncfs` for a barrier while the system has little dirty data (at most [`crate::limits::AUTO_SYNCFS_DIRTY_MAX_BYTES`]
    /// besides the barrier's own, from `/proc/meminfo`), else `PerFile`: the cheap barrier when it is cheap, and a
    /// latency that never depends on a neighbour's bulk writes. Linux; elsewhere `PerFile`.
    #[default]
    Auto,
    /// `fdatasync` each file and `fsync` each directory, all at once. Each new file costs its own device flush, but
    /// only the batch's own files are written.
    PerFile,
    /// One `syncfs(2)` per barrier of [`crate::limits::SYNCFS_MIN_TARGETS`] or more files (Linux; elsewhere
    /// `PerFile`): a fraction of the per-file cost for many new files, but it also writes back everything else dirty
    /// on that filesystem, so a barrier after a bulk non-durable import, or next to a busy neighbour, can take
    /// seconds (measurements: docs/io-engine.md, "Durability barriers"). For stores on a filesystem of their own.
    Syncfs,
}

impl std::str::FromStr for SyncStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(SyncStrategy::Auto),
            "per-file" => Ok(SyncStrategy::PerFile),
            "syncfs" => Ok(SyncStrategy::Syncfs),
            other => Err(format!("unknown sync strategy {other:?}: expected auto, per-file or syncfs")),
        }
    }
}

/// Opens the backend `kind` asks for with the default [`SyncStrategy`]; see [`open_backend_with`].
pub fn open_backend(kind: IoBackendKind) -> Result<Arc<dyn BatchIo>, IoError> {
    open_backend_with(kind, SyncStrategy::default())
}

/// Opens the backend `kind` asks for. `Auto` probes io_uring and falls back to the thread pool, logging why.
pub fn open_backend_with(kind: IoBackendKind, sync: SyncStrategy) -> Result<Arc<dyn BatchIo>, IoError> {
    let pool = || ThreadPoolIo::try_with_sync_strategy(crate::limits::IO_THREADS_DEFAULT, sync);
    #[cfg(target_os = "linux")]
    let uring_config = || uring::UringConfig { sync, ..uring::UringConfig::default() };
    match kind {
        IoBackendKind::Threads => Ok(Arc::new(pool()?)),
        #[cfg(target_os = "linux")]
        IoBackendKind::Uring => Ok(Arc::new(uring::UringIo::new(uring_config())?)),
        #[cfg(not(target_os = "linux"))]
        IoBackendKind::Uring => Err(IoError::new(
            IoOp::Open,
            "io_uring",
            std::io::Error::new(std::io::ErrorKind::Unsupported, "io_uring exists only on Linux"),
        )),
        IoBackendKind::Auto => {
            #[cfg(target_os = "linux")]
            match uring::UringIo::new(uring_config()) {
                Ok(io) => return Ok(Arc::new(io)),
                Err(e) => tracing::warn!("io_uring unavailable, using the thread pool: {e}"),
            }
            Ok(Arc::new(pool()?))
        }
    }
}

/// Reads one extent with blocking positional reads on the calling thread (the thread pool's reader, and the
/// io_uring backend's fallback when a ring fails).
pub(crate) fn read_extent(extent: &Extent<'_>) -> Result<Vec<u8>, IoError> {
    let mut bytes = vec![0u8; extent.len as usize];
    read_exact_at(extent.file, &mut bytes, extent.offset).map_err(|e| IoError::new(IoOp::Read, extent.path, e))?;
    Ok(bytes)
}

/// [`BatchIo::read_extents_cached`] with `preadv2(RWF_NOWAIT)`, one extent after another on the calling thread.
#[cfg(target_os = "linux")]
pub(crate) fn read_extents_nowait(extents: &[Extent<'_>]) -> Option<Vec<Result<Vec<u8>, IoError>>> {
    extents.iter().map(read_extent_nowait).collect()
}

/// One extent from the page cache: `None` when part of it is not cached (`EAGAIN`) or the file system cannot
/// tell (`EOPNOTSUPP`).
#[cfg(target_os = "linux")]
fn read_extent_nowait(extent: &Extent<'_>) -> Option<Result<Vec<u8>, IoError>> {
    use std::os::fd::AsRawFd;
    let len = extent.len as usize;
    let mut bytes: Vec<u8> = Vec::with_capacity(len);
    while bytes.len() < len {
        let rest = bytes.spare_capacity_mut();
        let iov = libc::iovec { iov_base: rest.as_mut_ptr().cast(), iov_len: len - bytes.len() };
        let offset = extent.offset + bytes.len() as u64;
        // SAFETY: the iovec covers the vector's spare capacity (`len - bytes.len()` bytes past its length), which
        // nothing else borrows during the call; the descriptor is borrowed from the caller for the call.
        let n = unsafe { libc::preadv2(extent.file.as_raw_fd(), &iov, 1, offset as libc::off_t, libc::RWF_NOWAIT) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN | libc::EOPNOTSUPP) => return None,
                _ => return Some(Err(IoError::new(IoOp::Read, extent.path, e))),
            }
        }
        if n == 0 {
            let e = std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file ends inside the extent ({} of {len} bytes at offset {})", bytes.len(), extent.offset),
            );
            return Some(Err(IoError::new(IoOp::Read, extent.path, e)));
        }
        // SAFETY: the kernel initialised `n` more bytes after the first `bytes.len()`, within the capacity (`len`).
        unsafe { bytes.set_len(bytes.len() + n as usize) };
    }
    Some(Ok(bytes))
}

/// Fills `buf` from `offset`, failing with `UnexpectedEof` when the file ends first.
#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(file, buf, offset) {
            Ok(0) => {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file ends inside the extent"))
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Bytes of the extent test file: every byte depends on its offset, so a read at the wrong place shows.
    fn pattern(offset: u64) -> u8 {
        (offset.wrapping_mul(2_654_435_761) >> 13) as u8
    }

    /// A file of `len` pattern bytes.
    fn pattern_file(path: &Path, len: u64) {
        let bytes: Vec<u8> = (0..len).map(pattern).collect();
        std::fs::write(path, bytes).unwrap();
    }

    fn check_extent(io: &dyn BatchIo, extent: &Extent<'_>, result: &Result<Vec<u8>, IoError>) {
        let bytes = result.as_ref().unwrap_or_else(|e| panic!("{}: extent {extent:?}: {e}", io.name()));
        assert_eq!(bytes.len(), extent.len as usize, "{}: extent {extent:?}", io.name());
        let wrong = bytes.iter().enumerate().position(|(i, &b)| b != pattern(extent.offset + i as u64));
        assert_eq!(wrong, None, "{}: wrong byte in extent {extent:?}", io.name());
    }

    /// The `read_extents` contract every backend must keep: request order, exact lengths, `UnexpectedEof` instead
    /// of a short read, errors that fail one entry and name its path, zero-length extents, thousands of extents in
    /// one call, and extents far larger than one read.
    pub(crate) fn extent_checks(io: &dyn BatchIo) {
        let dir = tempfile::tempdir().unwrap();
        let (big_path, small_path) = (dir.path().join("big.seg"), dir.path().join("small.seg"));
        let big_len: u64 = 20 << 20;
        let small_len: u64 = 100_000;
        pattern_file(&big_path, big_len);
        pattern_file(&small_path, small_len);
        let big = std::fs::File::open(&big_path).unwrap();
        let small = std::fs::File::open(&small_path).unwrap();
        // Random extents over both files (a fixed LCG, so a failure reproduces), most of them small.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |bound: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % bound
        };
        let mut extents = Vec::new();
        for i in 0..5000 {
            let (file, path, len) =
                if i % 3 == 0 { (&small, &small_path, small_len) } else { (&big, &big_path, big_len) };
            let offset = next(len);
            let want = if i % 97 == 0 { next(200_000) } else { next(1200) };
            let len = want.min(len - offset) as u32;
            extents.push(Extent { file, path, offset, len });
        }
        let results = io.read_extents(&extents);
        assert_eq!(results.len(), extents.len(), "{}", io.name());
        for (extent, result) in extents.iter().zip(&results) {
            check_extent(io, extent, result);
        }
        // Past the end: UnexpectedEof for those entries alone, never a short Ok; zero-length extents are empty.
        let write_only_path = dir.path().join("write-only.seg");
        let write_only = std::fs::OpenOptions::new().create_new(true).write(true).open(&write_only_path).unwrap();
        let mixed = [
            Extent { file: &small, path: &small_path, offset: 10, len: 100 },
            Extent { file: &small, path: &small_path, offset: small_len - 10, len: 100 },
            Extent { file: &small, path: &small_path, offset: small_len + 5, len: 1 },
            Extent { file: &small, path: &small_path, offset: 0, len: 0 },
            Extent { file: &small, path: &small_path, offset: small_len + 5, len: 0 },
            Extent { file: &write_only, path: &write_only_path, offset: 0, len: 8 },
            Extent { file: &big, path: &big_path, offset: big_len - 4096, len: 4096 },
        ];
        let results = io.read_extents(&mixed);
        assert_eq!(results.len(), mixed.len(), "{}", io.name());
        check_extent(io, &mixed[0], &results[0]);
        for i in [1, 2] {
            let e = results[i].as_ref().expect_err("an extent past the end fails");
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{}: {e}", io.name());
            assert_eq!((e.op, e.path.as_path()), (IoOp::Read, small_path.as_path()), "{}", io.name());
        }
        assert_eq!(results[3].as_ref().unwrap(), &Vec::<u8>::new(), "{}", io.name());
        assert_eq!(results[4].as_ref().unwrap(), &Vec::<u8>::new(), "{}", io.name());
        let e = results[5].as_ref().expect_err("a write-only descriptor cannot be read");
        assert_eq!((e.op, e.path.as_path()), (IoOp::Read, write_only_path.as_path()), "{}", io.name());
        check_extent(io, &mixed[6], &results[6]);
        // Extents far larger than one read, at unaligned offsets, many at once (more than one call's byte bound).
        let large: Vec<Extent<'_>> = (0..12u64)
            .map(|i| Extent { file: &big, path: &big_path, offset: i * 999_331 + 7, len: (8 << 20) + i as u32 })
            .collect();
        let results = io.read_extents(&large);
        for (extent, result) in large.iter().zip(&results) {
            check_extent(io, extent, result);
        }
        assert!(io.read_extents(&[]).is_empty());
        // The positional reads did not move the descriptor's cursor (`pread`; Windows' `seek_read` moves it, and
        // nothing there relies on the cursor).
        #[cfg(unix)]
        assert_eq!(std::io::Seek::stream_position(&mut &small).unwrap(), 0, "{}", io.name());
    }

    #[test]
    fn thread_pool_keeps_the_extent_contract() {
        extent_checks(&ThreadPoolIo::new(4));
        extent_checks(&ThreadPoolIo::new(1));
    }

    #[test]
    fn faulty_io_fails_the_armed_extent_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.seg");
        pattern_file(&path, 1000);
        let file = std::fs::File::open(&path).unwrap();
        let extents: Vec<Extent<'_>> =
            (0..4).map(|i| Extent { file: &file, path: &path, offset: i * 100, len: 50 }).collect();
        let io = FaultyIo::new(ThreadPoolIo::new(2));
        extent_checks(&io);
        io.arm_extent_read(2, libc::EIO);
        let results = io.read_extents(&extents);
        for (i, (extent, result)) in extents.iter().zip(&results).enumerate() {
            if i == 2 {
                let e = result.as_ref().unwrap_err();
                assert_eq!(
                    (e.op, e.path.as_path(), e.source.raw_os_error()),
                    (IoOp::Read, path.as_path(), Some(libc::EIO))
                );
            } else {
                check_extent(&io, extent, result);
            }
        }
        // The fault fired once.
        assert!(io.read_extents(&extents).iter().all(|r| r.is_ok()));
    }
}
