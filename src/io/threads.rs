//! The portable backend: a fixed pool of blocking threads running plain `open`/`read`/`write`/`fsync`.
//!
//! Runs everywhere (Windows/NTFS, Linux with io_uring disabled). Measured on the 2-core dev machine a pool of
//! ~32 threads reads small files ~1.6x faster than one thread warm and ~8x cold, because path lookups and
//! device reads overlap; see ARCHITECTURE.md.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{fsync_dir, parent_dirs, tmp_path, BatchIo, FileWrite, IoError, IoOp, SyncStrategy, WriteMode};

/// Pool size used by `open_backend`: I/O-bound threads, not CPU-bound, so many more than cores.
pub const THREADS_DEFAULT: usize = 32;
/// Files handed to one pool task at once; amortises task overhead without starving other threads.
const READ_CHUNK_FILES: usize = 16;

/// Most files of one write batch held open at once (their descriptors wait for the final fsync round); bigger
/// batches are written in chunks of this size. Well below the 20,000-descriptor hard limit seen here.
pub const WRITE_OPEN_FILES_MAX: usize = 4096;
/// When the strategy allows `syncfs` (`Syncfs`, or `Auto` while little is dirty), from this many files and
/// directories to make durable at once one `syncfs(2)` replaces the per-file fsyncs (a single file is cheaper with
/// its own fdatasync).
pub const SYNCFS_MIN_TARGETS: usize = 3;
/// Smaller write batches create their files on the calling thread: creates in one directory serialise on its lock
/// anyway (~50 µs each here), and waking the pool costs CPU the commit needs: its idle threads spin in
/// `sched_yield` (~3,000 calls per thread per 4 s under a 16-client append load, `perf trace -s`).
const PARALLEL_WRITE_MIN_FILES: usize = 64;

pub struct ThreadPoolIo {
    pool: rayon::ThreadPool,
    sync: SyncStrategy,
    barrier: FsBarrier,
    /// Runs the fsyncs of a per-file barrier; `None`: parallel calls on `pool`.
    fsyncs: Option<Box<dyn FsyncRunner>>,
}

/// What one durability barrier must make durable.
#[derive(Clone)]
pub(crate) enum SyncTarget<'a> {
    /// `fdatasync` this open file (the path names it in errors).
    File(&'a std::fs::File, &'a Path),
    /// `fsync` this directory.
    Dir(&'a Path),
}

/// Runs the fsyncs of one per-file barrier, all at once, and returns only when every one of them has finished
/// (the first error, if any). The io_uring backend submits them to a ring (`uring::RingFsyncs`) instead of waking
/// the pool, whose idle threads spin in `sched_yield` on CPU the commit needs (see `PARALLEL_WRITE_MIN_FILES`).
pub(crate) trait FsyncRunner: Send + Sync {
    fn sync_all(&self, targets: &[SyncTarget<'_>]) -> Result<(), IoError>;
}

/// One target, synchronously on the calling thread.
fn sync_one(target: &SyncTarget<'_>) -> Result<(), IoError> {
    match target {
        SyncTarget::File(h, path) => h.sync_data().map_err(|e| IoError::new(IoOp::Fsync, *path, e)),
        SyncTarget::Dir(dir) => fsync_dir(dir).map_err(|e| IoError::new(IoOp::FsyncDir, *dir, e)),
    }
}

impl ThreadPoolIo {
    pub fn new(threads: usize) -> ThreadPoolIo {
        ThreadPoolIo::with_sync_strategy(threads, SyncStrategy::default())
    }

    pub fn with_sync_strategy(threads: usize, sync: SyncStrategy) -> ThreadPoolIo {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("opossum-io-{i}"))
            .build()
            .expect("spawning I/O threads");
        ThreadPoolIo { pool, sync, barrier: FsBarrier::default(), fsyncs: None }
    }

    /// Runs per-file barriers through `runner` instead of the pool.
    pub(crate) fn with_fsync_runner(mut self, runner: Box<dyn FsyncRunner>) -> ThreadPoolIo {
        self.fsyncs = Some(runner);
        self
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
        let (in_place, files): (Vec<FileWrite<'_>>, Vec<FileWrite<'_>>) =
            files.iter().partition(|f| f.mode == WriteMode::CommitInPlace);
        let (commits, others): (Vec<FileWrite<'_>>, Vec<FileWrite<'_>>) =
            files.iter().partition(|f| f.mode == WriteMode::Commit);
        let commit_dirs = parent_dirs(&commits);
        // Commit records are written first but renamed last: their data becomes durable in the same barrier as the
        // last chunk's new files, their new names only after that barrier.
        let mut commit_tmps = Vec::with_capacity(commits.len());
        let mut commit_handles = Vec::with_capacity(commits.len());
        for f in &commits {
            let tmp = tmp_path(f.path);
            match write_new(&tmp, f.bytes) {
                Ok(handle) => commit_handles.push(handle),
                Err(e) => {
                    remove_all(&commit_tmps);
                    return Err(e);
                }
            }
            commit_tmps.push(tmp);
        }
        let commit_targets: Vec<SyncTarget<'_>> =
            commit_handles.iter().zip(&commit_tmps).map(|(h, tmp)| SyncTarget::File(h, tmp)).collect();
        let chunks: Vec<&[FileWrite<'_>]> =
            if others.is_empty() { vec![&[]] } else { others.chunks(WRITE_OPEN_FILES_MAX).collect() };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let extra = if i == last { &commit_targets[..] } else { &[] };
            if let Err(e) = self.write_chunk(chunk, durable, extra) {
                remove_all(&commit_tmps);
                return Err(e);
            }
        }
        for (i, (f, tmp)) in commits.iter().zip(&commit_tmps).enumerate() {
            if let Err(e) = std::fs::rename(tmp, f.path) {
                remove_all(&commit_tmps[i..]);
                return Err(IoError::new(IoOp::Rename, f.path, e));
            }
        }
        if durable && !commits.is_empty() {
            let dirs: Vec<SyncTarget<'_>> = commit_dirs.iter().map(|d| SyncTarget::Dir(d)).collect();
            self.barrier(&dirs, &commit_dirs)?;
        }
        for f in &in_place {
            overwrite_in_place(f, durable)?;
        }
        Ok(())
    }
}

pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>, IoError> {
    std::fs::read(path).map_err(|e| IoError::new(IoOp::Read, path, e))
}

impl ThreadPoolIo {
    /// The write protocol for one chunk of non-commit files, in at most four rounds:
    /// 1. write every file: a `CreateNew` file straight at its final name (`O_EXCL`: never overwrites, and no
    ///    rename to pay per event), any other to a temporary file;
    /// 2. (durable, if any `Replace` file) a barrier over the `Replace` temporaries, so their renames are atomic
    ///    replaces even across power loss;
    /// 3. rename each temporary to its final name, in order;
    /// 4. (durable) a barrier over every `CreateNew` file, every parent directory and the `extra` targets (the
    ///    batch's commit records, on its last chunk). A crash before it ends can leave a `CreateNew` file torn at
    ///    its final name, which the `BatchIo` contract allows.
    ///
    /// On failure, temporaries and the `CreateNew` files this call created are removed.
    fn write_chunk(&self, files: &[FileWrite<'_>], durable: bool, extra: &[SyncTarget<'_>]) -> Result<(), IoError> {
        if files.is_empty() {
            return if durable { self.barrier(extra, &[]) } else { Ok(()) };
        }
        let dirs = parent_dirs(files);
        if durable && self.sync != SyncStrategy::PerFile {
            self.barrier.prepare(&dirs)?;
        }
        // Where each file is written first: its final name (`CreateNew`) or a temporary.
        let first_names: Vec<PathBuf> = files
            .iter()
            .map(|f| if f.mode == WriteMode::CreateNew { f.path.to_path_buf() } else { tmp_path(f.path) })
            .collect();
        let written: Vec<Result<std::fs::File, IoError>> = if files.len() < PARALLEL_WRITE_MIN_FILES {
            files.iter().zip(&first_names).map(|(f, name)| write_new(name, f.bytes)).collect()
        } else {
            self.pool.install(|| {
                files.par_iter().zip(first_names.par_iter()).map(|(f, name)| write_new(name, f.bytes)).collect()
            })
        };
        let mut handles = Vec::with_capacity(files.len());
        let mut failure = None;
        let mut created = Vec::with_capacity(files.len());
        for (result, name) in written.into_iter().zip(&first_names) {
            match result {
                Ok(file) => {
                    handles.push(file);
                    created.push(name.clone());
                }
                Err(err) => failure = failure.or(Some(err)),
            }
        }
        if let Some(err) = failure {
            // Only what this call created: an existing `CreateNew` target (`AlreadyExists`) is not ours.
            remove_all(&created);
            return Err(err);
        }
        if durable {
            let replaced: Vec<SyncTarget<'_>> = files
                .iter()
                .zip(&handles)
                .zip(&first_names)
                .filter(|((f, _), _)| f.mode == WriteMode::Replace)
                .map(|((_, h), tmp)| SyncTarget::File(h, tmp))
                .collect();
            if let Err(e) = self.barrier(&replaced, &dirs) {
                remove_all(&first_names);
                return Err(e);
            }
        }
        for (i, (f, tmp)) in files.iter().zip(&first_names).enumerate() {
            if f.mode == WriteMode::CreateNew {
                continue;
            }
            if let Err(e) = std::fs::rename(tmp, f.path) {
                let rest: Vec<PathBuf> = files[i..]
                    .iter()
                    .zip(&first_names[i..])
                    .filter(|(f, _)| f.mode != WriteMode::CreateNew)
                    .map(|(_, tmp)| tmp.clone())
                    .collect();
                remove_all(&rest);
                return Err(IoError::new(IoOp::Rename, f.path, e));
            }
        }
        if !durable {
            return Ok(());
        }
        let mut targets: Vec<SyncTarget<'_>> = files
            .iter()
            .zip(&handles)
            .filter(|(f, _)| f.mode == WriteMode::CreateNew)
            .map(|(f, h)| SyncTarget::File(h, f.path))
            .collect();
        targets.extend(dirs.iter().map(|d| SyncTarget::Dir(d)));
        targets.extend(extra.iter().map(SyncTarget::clone));
        self.barrier(&targets, &dirs)
    }

    /// Whether a barrier over `targets` files and directories should be one `syncfs` (see [`SyncStrategy`]).
    fn wants_syncfs(&self, targets: usize) -> bool {
        match self.sync {
            SyncStrategy::PerFile => false,
            SyncStrategy::Syncfs => true,
            // Each target dirties about one page of data or metadata.
            SyncStrategy::Auto => {
                dirty_bytes().is_some_and(|dirty| dirty <= super::AUTO_SYNCFS_DIRTY_MAX_BYTES + targets as u64 * 8192)
            }
        }
    }

    /// Makes `targets` durable: parallel fsyncs, or one `syncfs` for many with `SyncStrategy::Syncfs` (Linux).
    fn barrier(&self, targets: &[SyncTarget<'_>], dirs: &[&Path]) -> Result<(), IoError> {
        if targets.is_empty() {
            return Ok(());
        }
        if targets.len() >= SYNCFS_MIN_TARGETS && !dirs.is_empty() && self.wants_syncfs(targets.len()) {
            if let Some(result) = self.barrier.syncfs(dirs) {
                return result;
            }
        }
        if targets.len() == 1 {
            return sync_one(&targets[0]);
        }
        if let Some(runner) = &self.fsyncs {
            return runner.sync_all(targets);
        }
        let results: Vec<Result<(), IoError>> = self.pool.install(|| targets.par_iter().map(sync_one).collect());
        results.into_iter().collect()
    }
}

/// Filesystem-wide durability barriers (`syncfs(2)`), through one long-lived directory descriptor per filesystem.
///
/// The descriptor must outlive the writes it vouches for: since Linux 5.8 `syncfs` reports a writeback error that
/// happened after the descriptor was opened, so one opened *after* a failed background writeback would miss it.
/// `prepare` opens them before a batch's first write; they are kept for the backend's lifetime.
#[derive(Default)]
struct FsBarrier {
    #[cfg(target_os = "linux")]
    fds: std::sync::Mutex<Vec<(u64, std::fs::File)>>,
}

impl FsBarrier {
    /// Descriptors for the filesystems holding `dirs`, opening any missing one.
    #[cfg(target_os = "linux")]
    fn descriptors(&self, dirs: &[&Path]) -> Result<Vec<(std::fs::File, PathBuf)>, IoError> {
        use std::os::unix::fs::MetadataExt;
        let mut out: Vec<(u64, std::fs::File, PathBuf)> = Vec::new();
        let mut fds = self.fds.lock().unwrap();
        for dir in dirs {
            let dev = std::fs::metadata(dir).map_err(|e| IoError::new(IoOp::Open, *dir, e))?.dev();
            if out.iter().any(|(d, _, _)| *d == dev) {
                continue;
            }
            let known = fds.iter().find(|(d, _)| *d == dev).map(|(_, f)| f.try_clone());
            let file = match known {
                Some(clone) => clone.map_err(|e| IoError::new(IoOp::Open, *dir, e))?,
                None => {
                    let f = std::fs::File::open(dir).map_err(|e| IoError::new(IoOp::Open, *dir, e))?;
                    let clone = f.try_clone().map_err(|e| IoError::new(IoOp::Open, *dir, e))?;
                    fds.push((dev, f));
                    clone
                }
            };
            out.push((dev, file, dir.to_path_buf()));
        }
        Ok(out.into_iter().map(|(_, f, p)| (f, p)).collect())
    }

    /// Opens the descriptors a later `syncfs` over `dirs` will use, before anything is written.
    fn prepare(&self, dirs: &[&Path]) -> Result<(), IoError> {
        #[cfg(target_os = "linux")]
        self.descriptors(dirs)?;
        let _ = dirs;
        Ok(())
    }

    /// `None` when this platform has no `syncfs` (the caller fsyncs file by file).
    #[cfg(target_os = "linux")]
    fn syncfs(&self, dirs: &[&Path]) -> Option<Result<(), IoError>> {
        use std::os::fd::AsRawFd;
        let run = || {
            for (fd, dir) in self.descriptors(dirs)? {
                nix::unistd::syncfs(fd.as_raw_fd()).map_err(|e| IoError::new(IoOp::Fsync, dir, e.into()))?;
            }
            Ok(())
        };
        Some(run())
    }

    #[cfg(not(target_os = "linux"))]
    fn syncfs(&self, _dirs: &[&Path]) -> Option<Result<(), IoError>> {
        None
    }
}

/// The system's dirty and under-writeback page cache in bytes (`/proc/meminfo`), `None` where unknown.
fn dirty_bytes() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| parse_dirty_bytes(&m))
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// `Dirty:` + `Writeback:` of a `/proc/meminfo` text, in bytes.
fn parse_dirty_bytes(meminfo: &str) -> Option<u64> {
    let field = |name: &str| {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..].trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kib * 1024)
    };
    Some(field("Dirty:")? + field("Writeback:")?)
}

/// Largest record `WriteMode::CommitInPlace` accepts: one disk sector, so a crash cannot tear it.
pub const IN_PLACE_RECORD_BYTES_MAX: usize = 512;

/// `WriteMode::CommitInPlace`: overwrite `f.path` from offset 0, padded with spaces to its old length (JSON allows
/// trailing whitespace), so the file never shrinks and no stale bytes follow the record.
fn overwrite_in_place(f: &FileWrite<'_>, durable: bool) -> Result<(), IoError> {
    let io_err = |op, e| IoError::new(op, f.path, e);
    let mut bytes = f.bytes.to_vec();
    let (file, created) = match OpenOptions::new().write(true).create_new(true).open(f.path) {
        Ok(file) => (file, true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            (OpenOptions::new().write(true).open(f.path).map_err(|e| io_err(IoOp::Open, e))?, false)
        }
        Err(e) => return Err(io_err(IoOp::Open, e)),
    };
    let old_len = file.metadata().map_err(|e| io_err(IoOp::Open, e))?.len() as usize;
    if bytes.len() < old_len {
        bytes.resize(old_len, b' ');
    }
    if bytes.len() > IN_PLACE_RECORD_BYTES_MAX {
        let message = format!("an in-place record must fit in {IN_PLACE_RECORD_BYTES_MAX} bytes, not {}", bytes.len());
        return Err(io_err(IoOp::Write, std::io::Error::new(std::io::ErrorKind::InvalidInput, message)));
    }
    write_all_at(&file, &bytes).map_err(|e| io_err(IoOp::Write, e))?;
    if durable {
        file.sync_data().map_err(|e| io_err(IoOp::Fsync, e))?;
        if created {
            let dir = f.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            fsync_dir(dir).map_err(|e| IoError::new(IoOp::FsyncDir, dir, e))?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn write_all_at(file: &std::fs::File, bytes: &[u8]) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, 0)
}

#[cfg(windows)]
fn write_all_at(file: &std::fs::File, mut bytes: &[u8]) -> std::io::Result<()> {
    let mut offset = 0u64;
    while !bytes.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_write(file, bytes, offset)?;
        bytes = &bytes[n..];
        offset += n as u64;
    }
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<std::fs::File, IoError> {
    let mut file =
        OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| IoError::new(IoOp::Open, path, e))?;
    file.write_all(bytes).map_err(|e| IoError::new(IoOp::Write, path, e))?;
    Ok(file)
}

fn remove_all(paths: &[PathBuf]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_bytes_add_dirty_and_writeback_from_meminfo() {
        let meminfo = "MemTotal:       24636988 kB\nDirty:              1234 kB\nWriteback:            16 kB\n\
                       WritebackTmp:          7 kB\n";
        assert_eq!(parse_dirty_bytes(meminfo), Some((1234 + 16) * 1024));
        assert_eq!(parse_dirty_bytes("Dirty: 5 kB\n"), None, "no Writeback line");
        assert_eq!(parse_dirty_bytes("Dirty: lots kB\nWriteback: 0 kB\n"), None);
        #[cfg(target_os = "linux")]
        assert!(dirty_bytes().is_some(), "this kernel's /proc/meminfo parses");
    }

    #[test]
    fn auto_takes_syncfs_only_below_the_dirty_limit() {
        let io = |sync| ThreadPoolIo::with_sync_strategy(1, sync);
        assert!(!io(SyncStrategy::PerFile).wants_syncfs(16));
        assert!(io(SyncStrategy::Syncfs).wants_syncfs(16));
        // Auto follows the live counter: whatever it reads, the decision matches the limit.
        #[cfg(target_os = "linux")]
        {
            let dirty = dirty_bytes().unwrap();
            let expected = dirty <= crate::io::AUTO_SYNCFS_DIRTY_MAX_BYTES + 16 * 8192;
            // The counter moves between the two reads; only a clear margin is asserted.
            if dirty.abs_diff(crate::io::AUTO_SYNCFS_DIRTY_MAX_BYTES) > 8 << 20 {
                assert_eq!(io(SyncStrategy::Auto).wants_syncfs(16), expected);
            }
        }
    }
}
