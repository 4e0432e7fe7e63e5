//! Durability barriers: how a write batch waits until what it wrote is on stable storage.
//!
//! A barrier makes a set of [`SyncTarget`]s durable, either one `fdatasync`/`fsync` per target (run all at once by
//! the backend's [`FsyncRunner`]: the thread pool's threads, or an io_uring ring) or one `syncfs(2)` per filesystem,
//! as the [`SyncStrategy`] decides. The commit protocol (`commit.rs`) decides *what* must be durable *when*; this
//! module only decides *how*.

use std::path::Path;
#[cfg(target_os = "linux")]
use std::path::PathBuf;

use super::{IoError, IoOp, SyncStrategy};
use crate::limits::{AUTO_SYNCFS_DIRTY_MAX_BYTES, SYNCFS_MIN_TARGETS};

/// What one durability barrier must make durable.
#[derive(Clone)]
pub(crate) enum SyncTarget<'a> {
    /// `fdatasync` this open file (the path names it in errors).
    File(&'a std::fs::File, &'a Path),
    /// `fsync` this directory.
    Dir(&'a Path),
}

/// Runs the fsyncs of one per-file barrier, all at once, and returns only when every one of them has finished
/// (the first error, if any). The thread pool runs them on its threads (`threads::PoolFsyncs`); the io_uring backend
/// submits them to a ring (`uring::RingFsyncs`) instead of waking a pool whose idle threads spin in `sched_yield` on
/// CPU the commit needs.
pub(crate) trait FsyncRunner: Send + Sync {
    fn sync_all(&self, targets: &[SyncTarget<'_>]) -> Result<(), IoError>;
}

/// One target, synchronously on the calling thread.
pub(crate) fn sync_one(target: &SyncTarget<'_>) -> Result<(), IoError> {
    match target {
        SyncTarget::File(h, path) => h.sync_data().map_err(|e| IoError::new(IoOp::Fsync, *path, e)),
        SyncTarget::Dir(dir) => fsync_dir(dir).map_err(|e| IoError::new(IoOp::FsyncDir, *dir, e)),
    }
}

/// fsyncs a directory so that renames and new entries in it are durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        // Windows cannot fsync a directory. NTFS journals its metadata in order, so the FlushFileBuffers that ends
        // the commit (after the renames) commits the renames' log records too (docs/windows.md). std's rename is
        // MoveFileExW(MOVEFILE_REPLACE_EXISTING), without write-through.
        let _ = dir;
        Ok(())
    }
}

/// The barriers of one backend: its strategy, its `syncfs` descriptors and its per-file runner.
pub(crate) struct Barriers {
    sync: SyncStrategy,
    fs: FsBarrier,
    fsyncs: Box<dyn FsyncRunner>,
}

impl Barriers {
    pub(crate) fn new(sync: SyncStrategy, fsyncs: Box<dyn FsyncRunner>) -> Barriers {
        Barriers { sync, fs: FsBarrier::default(), fsyncs }
    }

    /// Before a durable batch's first write: opens the `syncfs` descriptors a later barrier over `dirs` may use.
    pub(crate) fn prepare(&self, dirs: &[&Path]) -> Result<(), IoError> {
        if self.sync == SyncStrategy::PerFile {
            return Ok(());
        }
        self.fs.prepare(dirs)
    }

    /// Whether a barrier over `targets` files and directories should be one `syncfs` (see [`SyncStrategy`]).
    pub(crate) fn wants_syncfs(&self, targets: usize) -> bool {
        match self.sync {
            SyncStrategy::PerFile => false,
            SyncStrategy::Syncfs => true,
            // Each target dirties about one page of data or metadata.
            SyncStrategy::Auto => {
                dirty_bytes().is_some_and(|dirty| dirty <= AUTO_SYNCFS_DIRTY_MAX_BYTES + targets as u64 * 8192)
            }
        }
    }

    /// Makes `targets` durable: per-file fsyncs all at once, or one `syncfs` per filesystem of `dirs` (Linux).
    pub(crate) fn run(&self, targets: &[SyncTarget<'_>], dirs: &[&Path]) -> Result<(), IoError> {
        if targets.is_empty() {
            return Ok(());
        }
        if targets.len() >= SYNCFS_MIN_TARGETS && !dirs.is_empty() && self.wants_syncfs(targets.len()) {
            if let Some(result) = self.fs.syncfs(dirs) {
                return result;
            }
        }
        if targets.len() == 1 {
            return sync_one(&targets[0]);
        }
        self.fsyncs.sync_all(targets)
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
#[cfg(any(target_os = "linux", test))]
fn parse_dirty_bytes(meminfo: &str) -> Option<u64> {
    let field = |name: &str| {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..].trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kib * 1024)
    };
    Some(field("Dirty:")? + field("Writeback:")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs per-file barriers one by one on the calling thread.
    struct InlineFsyncs;

    impl FsyncRunner for InlineFsyncs {
        fn sync_all(&self, targets: &[SyncTarget<'_>]) -> Result<(), IoError> {
            targets.iter().try_for_each(sync_one)
        }
    }

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
        let barriers = |sync| Barriers::new(sync, Box::new(InlineFsyncs));
        assert!(!barriers(SyncStrategy::PerFile).wants_syncfs(16));
        assert!(barriers(SyncStrategy::Syncfs).wants_syncfs(16));
        // Auto follows the live counter: whatever it reads, the decision matches the limit.
        #[cfg(target_os = "linux")]
        {
            let dirty = dirty_bytes().unwrap();
            let expected = dirty <= AUTO_SYNCFS_DIRTY_MAX_BYTES + 16 * 8192;
            // The counter moves between the two reads; only a clear margin is asserted.
            if dirty.abs_diff(AUTO_SYNCFS_DIRTY_MAX_BYTES) > 8 << 20 {
                assert_eq!(barriers(SyncStrategy::Auto).wants_syncfs(16), expected);
            }
        }
    }
}
