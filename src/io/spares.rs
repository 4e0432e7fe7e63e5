//! Spare inodes: files a replacement swapped out of the tree (`renameat2(RENAME_EXCHANGE)`), kept in a directory of
//! their own and overwritten as the temporaries of later replacements (`BatchIo::write_files_recycling`) instead of
//! creating a new file per replacement and freeing the old one later.
//!
//! Why: on ext4 without a journal mounted `discard` (as here) every create allocates an inode and a directory entry,
//! and every delete frees them and discards the blocks; a mirror checkpoint replaces one index file per tag it
//! touched, so a bulk load created and later freed about one file per event beside its event files. A warm pool
//! replaces files with no inode created or freed.
//!
//! Reader safety: a lockless reader (.NET) may hold the old file open when it is swapped out. A spare is overwritten
//! only after a write lease (`fcntl(F_SETLEASE, F_WRLCK)`) on our own descriptor succeeded, which the kernel grants
//! only when no other open file description refers to the inode ([`take_lease`]).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A pool of spare inodes in one directory (on the filesystem of the files they replace), at most `limit` of them.
#[derive(Debug)]
pub struct Spares {
    dir: PathBuf,
    limit: usize,
    state: Mutex<State>,
    /// Temporaries created (a new inode), in the pool's directory or elsewhere: what a warm pool avoids.
    created: AtomicU64,
    /// Spares overwritten as temporaries (no inode created).
    reused: AtomicU64,
    /// Files that left this pool for the trash (a spare a reader held open, or a temporary the full pool had no room
    /// for): what its owner's emptier deletes.
    to_trash: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Spares no write uses now, by the blocks their contents take ([`blocks_of`]), oldest first in each.
    idle: BTreeMap<u64, VecDeque<PathBuf>>,
    /// How many `idle` holds.
    idle_count: usize,
    /// Paths of the pool's directory a write uses now (a reused spare, or a new temporary that may become one).
    out: usize,
    /// Leases cannot be taken here (`EINVAL`, `EACCES`: `fs.leases-enable = 0`, a filesystem without them): no
    /// spare can be proven unused, so none is reused; replacements create temporaries as without a pool.
    no_leases: bool,
}

/// What became of a temporary of the pool's directory once its write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Swapped with the file it replaced: its path holds that file's old inode, a spare.
    Swapped,
    /// Renamed to a final name that did not exist, or deleted after a failure: its path is gone.
    Gone,
}

/// Why a spare could not be reused.
#[derive(Debug)]
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))] // only glibc Linux reuses spares
pub(crate) enum ReuseError {
    /// Another open file description refers to it (`EAGAIN` from the lease), or it belongs to another user (a file
    /// .NET wrote, swapped out of the tree: only its owner may take a lease, `EACCES`): skip it.
    InUse,
    /// The filesystem or the system gives no leases: reuse nothing.
    NoLeases,
    /// It vanished (nothing of ours deletes the pool's directory while it is used, but an operator may).
    Gone,
    Io(std::io::Error),
}

impl Spares {
    /// An empty pool whose spares live in `dir` (made by the caller, on the filesystem of the files replaced).
    pub fn new(dir: PathBuf, limit: usize) -> Spares {
        Spares {
            dir,
            limit,
            state: Mutex::new(State::default()),
            created: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            to_trash: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Temporaries created since the pool was made (new inodes).
    pub fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// Spares overwritten as temporaries since the pool was made.
    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    /// Files sent from the pool to the trash since it was made (see [`Spares::to_trash`]).
    pub fn sent_to_trash(&self) -> u64 {
        self.to_trash.load(Ordering::Relaxed)
    }

    /// Spares no write uses now.
    pub fn idle(&self) -> usize {
        self.lock().idle_count
    }

    /// An idle spare for contents of `len` bytes, now used by the caller (who reports its [`Outcome`] or sends it to
    /// the trash): the oldest of those that take as many blocks, else of the largest that take fewer (growing one
    /// only allocates), else of the smallest that take more. Why by size: cutting a spare to a shorter length frees
    /// its blocks, which on this `discard` mount issues a discard inside the checkpoint's write; a first-in-first-out
    /// pool cut the old type file (megabytes, swapped out by every checkpoint) down to a tag file's size each time.
    #[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
    pub(crate) fn take(&self, len: usize) -> Option<PathBuf> {
        let mut state = self.lock();
        if state.no_leases {
            return None;
        }
        let want = blocks_of(len as u64);
        let bucket = if state.idle.contains_key(&want) {
            want
        } else {
            let below = state.idle.range(..want).next_back().map(|(&b, _)| b);
            below.or_else(|| state.idle.range(want..).next().map(|(&b, _)| b))?
        };
        let spares = state.idle.get_mut(&bucket)?;
        let spare = spares.pop_front()?;
        if spares.is_empty() {
            state.idle.remove(&bucket);
        }
        state.idle_count -= 1;
        state.out += 1;
        Some(spare)
    }

    /// Files back in the pool, by size (`path` holds a spare now).
    fn put_back(state: &mut State, path: PathBuf) {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { return };
        state.idle.entry(blocks_of(meta.len())).or_default().push_back(path);
        state.idle_count += 1;
    }

    /// A new temporary name in the pool's directory for a file replacing `final_path`, when the pool has room for
    /// one more spare (the caller creates it and reports its [`Outcome`]); `None` when it is full.
    pub(crate) fn reserve(&self, final_path: &Path) -> Option<PathBuf> {
        let mut state = self.lock();
        if state.no_leases || state.idle_count + state.out >= self.limit {
            return None;
        }
        state.out += 1;
        Some(super::tmp_path(&self.dir.join(final_path.file_name()?)))
    }

    /// Whether `path` is a name of the pool's directory (a taken spare or a reserved temporary).
    pub(crate) fn owns(&self, path: &Path) -> bool {
        path.parent() == Some(self.dir.as_path())
    }

    /// A taken or reserved path's write ended with `outcome`.
    pub(crate) fn returned(&self, path: PathBuf, outcome: Outcome) {
        let mut state = self.lock();
        state.out = state.out.saturating_sub(1);
        if outcome == Outcome::Swapped {
            Spares::put_back(&mut state, path);
        }
    }

    /// A taken spare goes to `trash` (a reader holds it open; the trash's owner deletes it later); if it cannot be
    /// moved there, it stays in the pool's directory, forgotten (deleted with the directory).
    #[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
    pub(crate) fn send_to_trash(&self, spare: &Path, trash: &Path) {
        if let Some(name) = spare.file_name() {
            let _ = std::fs::rename(spare, trash.join(name));
        }
        self.to_trash.fetch_add(1, Ordering::Relaxed);
        self.returned(spare.to_path_buf(), Outcome::Gone);
    }

    /// Leases cannot be taken: the taken `spare` goes back, and no spare is reused from now on.
    #[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
    pub(crate) fn no_leases(&self, spare: PathBuf) {
        let mut state = self.lock();
        state.out = state.out.saturating_sub(1);
        Spares::put_back(&mut state, spare);
        if !state.no_leases {
            state.no_leases = true;
            tracing::info!(dir = %self.dir.display(), "no file leases here: replaced files are not reused");
        }
    }

    pub(crate) fn count_created(&self) {
        self.created.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
    pub(crate) fn count_reused(&self) {
        self.reused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_to_trash(&self) {
        self.to_trash.fetch_add(1, Ordering::Relaxed);
    }
}

/// The filesystem blocks `len` bytes take (4 KiB blocks: ext4's default; only used to pair spares with contents of
/// a similar size, so another block size only makes the pairing coarser or finer).
fn blocks_of(len: u64) -> u64 {
    const BLOCK_BYTES: u64 = 4096;
    len.div_ceil(BLOCK_BYTES)
}

/// Opens the spare at `path` for writing and proves that no other open file description refers to it, then
/// overwrites it with `bytes` from offset 0 and cuts it to their length: the spare is now a temporary holding `bytes`.
///
/// The proof: a write lease (`fcntl(F_SETLEASE, F_WRLCK)`) is granted only when the inode is open nowhere else (the
/// kernel counts its readers and writers; `EAGAIN` otherwise); it is released (`F_UNLCK`) before anything is written,
/// so no opener ever waits for it. Between the lease and the writes nobody can newly open the spare: its name lies in
/// the trash, which no reader of the tree, .NET or ours, ever opens, and no tree name refers to its inode any more
/// (the exchange that made it a spare moved its tree name to the new file). The one opener the lease cannot see is
/// one that looked the old tree name up before that exchange and is still inside `open(2)` (between its lookup and
/// the kernel counting it as a reader): a window of microseconds inside one system call, while a spare is reused only
/// by a later chunk of writes than the one whose swap made it (a chunk takes all its temporaries before its first swap), at
/// least one file written, exchanged and closed later, and among spares of its size the oldest first.
/// While the lease is held a racing opener would break it, and the kernel would signal the lease holder: the signal
/// is set to `SIGURG` first (`F_SETSIG`), whose default action is to be ignored, so the daemon is never killed by the
/// default `SIGIO`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn overwrite_spare(path: &Path, bytes: &[u8]) -> Result<std::fs::File, ReuseError> {
    use std::os::unix::fs::FileExt;
    let file = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReuseError::Gone),
        Err(e) => return Err(ReuseError::Io(e)),
    };
    take_lease(&file)?;
    file.write_all_at(bytes, 0).map_err(ReuseError::Io)?;
    file.set_len(bytes.len() as u64).map_err(ReuseError::Io)?;
    Ok(file)
}

/// Takes and releases a write lease on `file` (see [`overwrite_spare`]): `Ok` when no other open file description
/// refers to its inode.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn take_lease(file: &std::fs::File) -> Result<(), ReuseError> {
    use std::os::fd::AsRawFd;
    /// `F_SETSIG` of `<asm-generic/fcntl.h>` (the same on every Linux architecture), which the `libc` crate lacks.
    const F_SETSIG: libc::c_int = 10;
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open descriptor `file` owns for the whole call; `F_SETSIG` only sets which signal the
    // kernel sends this process about this open file description (none is sent unless a lease breaks).
    if unsafe { libc::fcntl(fd, F_SETSIG, libc::SIGURG) } != 0 {
        return Err(ReuseError::Io(std::io::Error::last_os_error()));
    }
    // SAFETY: as above; `F_SETLEASE` with `F_WRLCK` takes a lease on `fd`'s open file description or fails.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_WRLCK) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EAGAIN) => ReuseError::InUse,
            Some(libc::EACCES) if !owned_by_us(file) => ReuseError::InUse,
            Some(libc::EINVAL | libc::EACCES | libc::ENOLCK) => ReuseError::NoLeases,
            _ => ReuseError::Io(e),
        });
    }
    // SAFETY: as above; `F_UNLCK` releases the lease just taken.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) } != 0 {
        return Err(ReuseError::Io(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether `file` belongs to this process's effective user (who may take a lease on it without `CAP_LEASE`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn owned_by_us(file: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    file.metadata().is_ok_and(|m| m.uid() == euid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spare is taken by size: one as large (in blocks), else the largest smaller one (growing it frees nothing),
    /// else the smallest larger one; never one cut down while a better one waits.
    #[test]
    fn a_spare_of_the_contents_size_is_taken_first_then_a_smaller_one_then_the_smallest_larger_one() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::new(dir.path().to_path_buf(), 8);
        let spare = |name: &str, len: usize| {
            let path = dir.path().join(name);
            std::fs::write(&path, vec![b'x'; len]).unwrap();
            spares.returned(path.clone(), Outcome::Swapped);
            path
        };
        let small = spare("small", 100);
        let three = spare("three", 3 * 4096);
        let big = spare("big", 300 * 4096);
        let other_small = spare("other small", 4000);
        assert_eq!(spares.idle(), 4);
        assert_eq!(spares.take(50), Some(small), "as large, the oldest first");
        assert_eq!(spares.take(5000), Some(other_small), "two blocks: the largest smaller one");
        assert_eq!(spares.take(5000), Some(three), "then the smallest larger one");
        assert_eq!(spares.take(10), Some(big));
        assert_eq!(spares.take(10), None);
        assert_eq!(spares.idle(), 0);
    }
}
