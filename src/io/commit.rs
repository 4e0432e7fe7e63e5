//! The commit protocol: the order in which a write batch's files reach their final names and become durable
//! (`BatchIo::write_files`, per [`WriteMode`]). Both backends write through one [`CommitWriter`]; they differ only in
//! how a barrier's fsyncs run (`barrier::FsyncRunner`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use super::barrier::{fsync_dir, Barriers, SyncTarget};
use super::spares::{Outcome, Spares};
use super::{tmp_path, FileWrite, IoError, IoOp, WriteMode};
use crate::limits::{IN_PLACE_RECORD_BYTES_MAX, WRITE_CREATE_DIR_FDS_MAX, WRITE_OPEN_FILES_MAX};

/// Smaller durable write batches create their files on the calling thread: creates in one directory serialise on its
/// lock anyway (~50 µs each here), and waking the pool costs CPU the commit needs: its idle threads spin in
/// `sched_yield` (~3,000 calls per thread per 4 s under a 16-client append load, `perf trace -s`).
///
/// Non-durable batches (the journal's mirror, `--durability none`, reconciles) always create their files on the
/// calling thread: with nothing to overlap, the pool's threads only contend for the directory's lock and for ext4's
/// inode allocator (32 threads creating in one directory spent most of their time spinning in `find_inode_bit`,
/// and the mirror created 4,900 files/s at 64 clients against 25,000-37,000 from one thread).
const PARALLEL_WRITE_MIN_FILES: usize = 64;

/// Writes batches of files in the order `BatchIo::write_files` promises.
pub(crate) struct CommitWriter {
    barriers: Barriers,
    /// Creates and writes the files of durable batches of [`PARALLEL_WRITE_MIN_FILES`] or more in parallel (files
    /// mode's bulk appends: their fsyncs and path lookups overlap).
    pool: Arc<rayon::ThreadPool>,
}

impl CommitWriter {
    pub(crate) fn new(barriers: Barriers, pool: Arc<rayon::ThreadPool>) -> CommitWriter {
        CommitWriter { barriers, pool }
    }

    /// `BatchIo::write_files`: commit records (`Commit`) are written first but renamed last, in-place records
    /// (`CommitInPlace`) overwritten after everything else; the other files go in chunks of at most
    /// [`WRITE_OPEN_FILES_MAX`] (see [`CommitWriter::write_chunk`]). Where temporaries are written and how they
    /// take their final names is `temps`'s ([`Temporaries`]).
    pub(crate) fn write_files(
        &self,
        files: &[FileWrite<'_>],
        durable: bool,
        temps: Temporaries<'_>,
    ) -> Result<(), IoError> {
        // Only where names can be swapped; elsewhere temporaries stay beside their final names and replace them.
        let temps = if SWAPS_NAMES { temps } else { Temporaries::Beside };
        // Spares are overwritten without an fsync of their own: never for a durable batch (`BatchIo::write_files_recycling`).
        let temps = match temps {
            Temporaries::Recycle { trash, .. } if durable => Temporaries::Trash(trash),
            temps => temps,
        };
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
            match temps.write(f.path, f.bytes) {
                Ok((tmp, handle)) => {
                    commit_handles.push(handle);
                    commit_tmps.push(tmp);
                }
                Err(e) => {
                    temps.discard(&commit_tmps);
                    return Err(e);
                }
            }
        }
        let commit_targets: Vec<SyncTarget<'_>> =
            commit_handles.iter().zip(&commit_tmps).map(|(h, tmp)| SyncTarget::File(h, tmp)).collect();
        let chunks: Vec<&[FileWrite<'_>]> =
            if others.is_empty() { vec![&[]] } else { others.chunks(WRITE_OPEN_FILES_MAX).collect() };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let extra = if i == last { &commit_targets[..] } else { &[] };
            if let Err(e) = self.write_chunk(chunk, durable, extra, temps) {
                temps.discard(&commit_tmps);
                return Err(e);
            }
        }
        for (i, (f, tmp)) in commits.iter().zip(&commit_tmps).enumerate() {
            if let Err(e) = temps.place(tmp, f.path) {
                temps.discard(&commit_tmps[i..]);
                return Err(IoError::new(IoOp::Rename, f.path, e));
            }
        }
        if durable && !commits.is_empty() {
            let dirs: Vec<SyncTarget<'_>> = commit_dirs.iter().map(|d| SyncTarget::Dir(d)).collect();
            self.barriers.run(&dirs, &commit_dirs)?;
        }
        for f in &in_place {
            overwrite_in_place(f, durable)?;
        }
        Ok(())
    }

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
    fn write_chunk(
        &self,
        files: &[FileWrite<'_>],
        durable: bool,
        extra: &[SyncTarget<'_>],
        temps: Temporaries<'_>,
    ) -> Result<(), IoError> {
        if files.is_empty() {
            return if durable { self.barriers.run(extra, &[]) } else { Ok(()) };
        }
        let dirs = parent_dirs(files);
        if durable {
            self.barriers.prepare(&dirs)?;
        }
        let create_dirs = CreateDirs::open(files);
        // Each file written where it goes first: its final name (`CreateNew`) or a temporary.
        let write_first = |f: &FileWrite<'_>| -> Result<(PathBuf, std::fs::File), IoError> {
            if f.mode == WriteMode::CreateNew {
                create_dirs.write_new(f.path, f.bytes).map(|file| (f.path.to_path_buf(), file))
            } else {
                temps.write(f.path, f.bytes)
            }
        };
        let written: Vec<Result<(PathBuf, std::fs::File), IoError>> =
            if !durable || files.len() < PARALLEL_WRITE_MIN_FILES {
                files.iter().map(write_first).collect()
            } else {
                self.pool.install(|| files.par_iter().map(write_first).collect())
            };
        let mut handles = Vec::with_capacity(files.len());
        let mut first_names = Vec::with_capacity(files.len());
        let mut failure = None;
        for result in written {
            match result {
                Ok((name, file)) => {
                    handles.push(file);
                    first_names.push(name);
                }
                Err(err) => failure = failure.or(Some(err)),
            }
        }
        if let Some(err) = failure {
            // Only what this call created: an existing `CreateNew` target (`AlreadyExists`) is not ours.
            temps.discard(&first_names);
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
            if let Err(e) = self.barriers.run(&replaced, &dirs) {
                temps.discard(&first_names);
                return Err(e);
            }
        }
        for (i, (f, tmp)) in files.iter().zip(&first_names).enumerate() {
            if f.mode == WriteMode::CreateNew {
                continue;
            }
            if let Err(e) = temps.place(tmp, f.path) {
                let rest: Vec<PathBuf> = files[i..]
                    .iter()
                    .zip(&first_names[i..])
                    .filter(|(f, _)| f.mode != WriteMode::CreateNew)
                    .map(|(_, tmp)| tmp.clone())
                    .collect();
                temps.discard(&rest);
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
        self.barriers.run(&targets, &dirs)
    }
}

/// Whether this build swaps a temporary with the file it replaces (`renameat2(RENAME_EXCHANGE)`, glibc's Linux).
const SWAPS_NAMES: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// Where the temporaries of a write batch go (every file but a `CreateNew` one is written to a temporary first) and
/// how they take their final names.
#[derive(Clone, Copy)]
pub(crate) enum Temporaries<'a> {
    /// A fresh name beside the final name, renamed over it (`BatchIo::write_files`).
    Beside,
    /// A fresh name in this trash directory (same file name, so an error names what it was for), swapped with the
    /// file at the final name (`BatchIo::write_files_with_trash`).
    Trash(&'a Path),
    /// A spare of this pool overwritten when one is free of readers, else a fresh name in the pool's directory while it
    /// has room, else in `trash`; swapped with the file at the final name, which leaves a spare at the temporary's
    /// name (`BatchIo::write_files_recycling`). Non-durable batches only.
    Recycle { trash: &'a Path, spares: &'a Spares },
}

impl Temporaries<'_> {
    /// Writes `bytes` to a temporary for `final_path`; returns its name and an open handle.
    fn write(&self, final_path: &Path, bytes: &[u8]) -> Result<(PathBuf, std::fs::File), IoError> {
        let fresh = |dir: &Path| match final_path.file_name() {
            Some(name) => tmp_path(&dir.join(name)),
            None => tmp_path(final_path),
        };
        let new_temporary = |tmp: PathBuf| write_new(&tmp, bytes).map(|file| (tmp, file));
        let (trash, spares) = match *self {
            Temporaries::Beside => return new_temporary(tmp_path(final_path)),
            Temporaries::Trash(trash) => return new_temporary(fresh(trash)),
            Temporaries::Recycle { trash, spares } => (trash, spares),
        };
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        while let Some(spare) = spares.take(bytes.len()) {
            use super::spares::{overwrite_spare, ReuseError};
            match overwrite_spare(&spare, bytes) {
                Ok(file) => {
                    spares.count_reused();
                    return Ok((spare, file));
                }
                // A reader holds it open (or another user owns it): its old bytes stay as they are until the
                // trash's owner deletes it.
                Err(ReuseError::InUse) => spares.send_to_trash(&spare, trash),
                Err(ReuseError::Gone) => spares.returned(spare, Outcome::Gone),
                Err(ReuseError::NoLeases) => {
                    spares.no_leases(spare);
                    break;
                }
                Err(ReuseError::Io(e)) => {
                    spares.returned(spare.clone(), Outcome::Gone);
                    return Err(IoError::new(IoOp::Write, spare, e));
                }
            }
        }
        spares.count_created();
        match spares.reserve(final_path) {
            Some(tmp) => match write_new(&tmp, bytes) {
                Ok(file) => Ok((tmp, file)),
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    spares.returned(tmp, Outcome::Gone);
                    Err(e)
                }
            },
            None => {
                spares.count_to_trash();
                new_temporary(fresh(trash))
            }
        }
    }

    /// Gives the temporary `tmp` the name `final_path` ([`rename_into_place`]); a pool's temporary that was swapped
    /// with an old file is a spare again.
    fn place(&self, tmp: &Path, final_path: &Path) -> std::io::Result<()> {
        let swapped = rename_into_place(tmp, final_path, !matches!(self, Temporaries::Beside))?;
        if let Temporaries::Recycle { spares, .. } = self {
            if spares.owns(tmp) {
                spares.returned(tmp.to_path_buf(), if swapped { Outcome::Swapped } else { Outcome::Gone });
            }
        }
        Ok(())
    }

    /// Removes the temporaries (and `CreateNew` files) of a failed write; a pool's temporaries leave the pool.
    fn discard(&self, paths: &[PathBuf]) {
        remove_all(paths);
        if let Temporaries::Recycle { spares, .. } = self {
            for path in paths.iter().filter(|p| spares.owns(p)) {
                spares.returned(path.clone(), Outcome::Gone);
            }
        }
    }
}

/// Gives the temporary `tmp` the name `final_path`; `true` when it swapped names with an old file. With `swap`
/// (`tmp` is in a trash directory), a file already at `final_path` is swapped into `tmp`'s place (`RENAME_EXCHANGE`:
/// one atomic step, so readers of `final_path` see the old file or the new one, never none) instead of freed under
/// the directory's lock by a plain rename; its blocks are freed when the trash's owner deletes it. A missing final
/// name (`ENOENT`) or a filesystem that cannot swap (`EINVAL`) takes the plain rename.
fn rename_into_place(tmp: &Path, final_path: &Path, swap: bool) -> std::io::Result<bool> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if swap {
        use nix::errno::Errno;
        use nix::fcntl::{renameat2, RenameFlags};
        match renameat2(None, tmp, None, final_path, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => return Ok(true),
            Err(Errno::ENOENT | Errno::EINVAL) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let _ = swap;
    std::fs::rename(tmp, final_path).map(|()| false)
}

/// The distinct parent directories of a write batch, in first-seen order.
pub fn parent_dirs<'a>(files: &[FileWrite<'a>]) -> Vec<&'a Path> {
    let mut dirs: Vec<&Path> = Vec::new();
    for f in files {
        let dir = f.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

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

/// The directories of a chunk's `CreateNew` files, each opened once (`O_PATH`), so that each file is created by
/// its name relative to its directory's descriptor (`openat`) instead of by its whole path: the kernel walks one
/// component per file instead of every component of the store's path (the mirror creates one event file per
/// event; the walk was ~20 % of its `openat` time, perf at 16 clients, session 10). Linux; elsewhere, and for a
/// directory that cannot be opened (then the create by path fails with the file's name, as before), by path.
struct CreateDirs<'a> {
    #[cfg(target_os = "linux")]
    dirs: Vec<(&'a Path, std::os::fd::OwnedFd)>,
    #[cfg(not(target_os = "linux"))]
    dirs: std::marker::PhantomData<&'a Path>,
}

impl<'a> CreateDirs<'a> {
    /// Descriptors of the directories of `files`' `CreateNew` files, the first [`WRITE_CREATE_DIR_FDS_MAX`] of
    /// them (files in further directories are created by path).
    fn open(files: &[FileWrite<'a>]) -> CreateDirs<'a> {
        #[cfg(target_os = "linux")]
        {
            use nix::fcntl::OFlag;
            let mut dirs: Vec<(&'a Path, std::os::fd::OwnedFd)> = Vec::new();
            let mut tried: Vec<&'a Path> = Vec::new();
            for f in files.iter().filter(|f| f.mode == WriteMode::CreateNew) {
                if tried.len() == WRITE_CREATE_DIR_FDS_MAX {
                    break;
                }
                let dir = f.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                if tried.last().is_some_and(|d| d.as_os_str() == dir.as_os_str()) || tried.contains(&dir) {
                    continue;
                }
                tried.push(dir);
                let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
                if let Ok(fd) = nix::fcntl::open(dir, flags, nix::sys::stat::Mode::empty()) {
                    // SAFETY: `open` returned a new descriptor that nothing else owns.
                    dirs.push((dir, unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }));
                }
            }
            CreateDirs { dirs }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (files, WRITE_CREATE_DIR_FDS_MAX);
            CreateDirs { dirs: std::marker::PhantomData }
        }
    }

    /// Creates `path` (exclusively: `AlreadyExists` if it is there) and writes `bytes` to it.
    fn write_new(&self, path: &Path, bytes: &[u8]) -> Result<std::fs::File, IoError> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::{AsRawFd, FromRawFd};
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let dir = self.dirs.iter().find(|(dir, _)| dir.as_os_str() == parent.as_os_str());
            if let (Some((_, dir)), Some(name)) = (dir, path.file_name()) {
                use nix::fcntl::OFlag;
                let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC;
                let mode = nix::sys::stat::Mode::from_bits_truncate(0o666);
                let fd = nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags, mode)
                    .map_err(|e| IoError::new(IoOp::Open, path, e.into()))?;
                // SAFETY: `openat` returned a new descriptor that nothing else owns.
                let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
                file.write_all(bytes).map_err(|e| IoError::new(IoOp::Write, path, e))?;
                return Ok(file);
            }
        }
        write_new(path, bytes)
    }
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
    use crate::io::{BatchIo, ThreadPoolIo};
    use crate::limits::WRITE_CREATE_DIR_FDS_MAX;

    /// `CreateNew` files in more directories than a chunk opens descriptors for, interleaved: each lands at its own
    /// path with its own bytes and the permissions a create by path gives; an existing file fails the batch with
    /// `AlreadyExists` naming it and stays untouched; a missing directory fails with `NotFound` naming the file (the
    /// directory, for a durable batch);
    /// a failed batch leaves none of the files it created; and the batch leaves no descriptor open.
    fn create_new_checks(io: &dyn BatchIo, durable: bool) {
        let dir = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..WRITE_CREATE_DIR_FDS_MAX + 3).map(|d| dir.path().join(format!("d{d}"))).collect();
        for d in &dirs {
            std::fs::create_dir(d).unwrap();
        }
        let paths: Vec<PathBuf> = (0..200).map(|i| dirs[i % dirs.len()].join(format!("{i:010}.json"))).collect();
        let bodies: Vec<Vec<u8>> = (0..200).map(|i| format!("{{\"event\":{i}}}").into_bytes()).collect();
        let writes: Vec<FileWrite<'_>> = paths
            .iter()
            .zip(&bodies)
            .map(|(path, bytes)| FileWrite { path, bytes, mode: WriteMode::CreateNew })
            .collect();
        let fds_before = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).ok();
        io.write_files(&writes, durable).unwrap();
        for (path, bytes) in paths.iter().zip(&bodies) {
            assert_eq!(&std::fs::read(path).unwrap(), bytes, "{}: {}", io.name(), path.display());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let by_path = dir.path().join("by-path");
            std::fs::File::create_new(&by_path).unwrap();
            let want = std::fs::metadata(&by_path).unwrap().permissions().mode();
            assert_eq!(std::fs::metadata(&paths[0]).unwrap().permissions().mode(), want, "{}", io.name());
        }
        // An existing file: the batch fails naming it, and it keeps its bytes; the new files it created are gone.
        let fresh: Vec<PathBuf> = (0..5).map(|i| dirs[i].join("fresh.json")).collect();
        let mut again: Vec<FileWrite<'_>> =
            fresh.iter().map(|path| FileWrite { path, bytes: b"new", mode: WriteMode::CreateNew }).collect();
        again.push(FileWrite { path: &paths[7], bytes: b"overwritten", mode: WriteMode::CreateNew });
        let e = io.write_files(&again, durable).unwrap_err();
        assert_eq!(
            (e.kind(), e.op, e.path.as_path()),
            (std::io::ErrorKind::AlreadyExists, IoOp::Open, paths[7].as_path())
        );
        assert_eq!(std::fs::read(&paths[7]).unwrap(), bodies[7]);
        assert!(fresh.iter().all(|p| !p.exists()), "{}: a failed batch leaves its new files", io.name());
        // A directory that is not there: the file is named.
        let orphan = dir.path().join("missing").join("0000000001.json");
        let e = io.write_files(&[FileWrite { path: &orphan, bytes: b"x", mode: WriteMode::CreateNew }], durable);
        let e = e.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{}", io.name());
        // A durable batch's barrier opens the directory first and names it (on Linux: elsewhere there is no `syncfs`
        // to prepare, and the create names the file).
        let named = if durable && cfg!(target_os = "linux") { orphan.parent().unwrap() } else { orphan.as_path() };
        assert_eq!(e.path, named, "{}", io.name());
        let fds_after = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).ok();
        if let (Some(before), Some(after)) = (fds_before, fds_after) {
            // Tests run in parallel threads: allow a little noise from the others.
            assert!(after < before + 16, "{}: {before} -> {after} descriptors", io.name());
        }
    }

    #[test]
    fn created_files_land_whole_at_their_paths_in_any_number_of_directories() {
        for durable in [false, true] {
            create_new_checks(&ThreadPoolIo::new(2), durable);
            #[cfg(target_os = "linux")]
            if let Ok(io) = crate::io::uring::UringIo::new(crate::io::uring::UringConfig::default()) {
                create_new_checks(&io, durable);
            }
        }
    }
}
