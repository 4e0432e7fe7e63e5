//! The commit protocol: the order in which a write batch's files reach their final names and become durable
//! (`BatchIo::write_files`, per [`WriteMode`]). Both backends write through one [`CommitWriter`]; they differ only in
//! how a barrier's fsyncs run (`barrier::FsyncRunner`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use super::barrier::{fsync_dir, Barriers, SyncTarget};
use super::{tmp_path, FileWrite, IoError, IoOp, WriteMode};
use crate::limits::{IN_PLACE_RECORD_BYTES_MAX, WRITE_OPEN_FILES_MAX};

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
    /// [`WRITE_OPEN_FILES_MAX`] (see [`CommitWriter::write_chunk`]). With a `trash` directory
    /// (`BatchIo::write_files_with_trash`), temporaries are written there and swapped into place ([`rename_into_place`]).
    pub(crate) fn write_files(
        &self,
        files: &[FileWrite<'_>],
        durable: bool,
        trash: Option<&Path>,
    ) -> Result<(), IoError> {
        // Only where names can be swapped; elsewhere temporaries stay beside their final names and replace them.
        let trash = trash.filter(|_| SWAPS_NAMES);
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
            let tmp = temporary(f.path, trash);
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
            if let Err(e) = self.write_chunk(chunk, durable, extra, trash) {
                remove_all(&commit_tmps);
                return Err(e);
            }
        }
        for (i, (f, tmp)) in commits.iter().zip(&commit_tmps).enumerate() {
            if let Err(e) = rename_into_place(tmp, f.path, trash.is_some()) {
                remove_all(&commit_tmps[i..]);
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
        trash: Option<&Path>,
    ) -> Result<(), IoError> {
        if files.is_empty() {
            return if durable { self.barriers.run(extra, &[]) } else { Ok(()) };
        }
        let dirs = parent_dirs(files);
        if durable {
            self.barriers.prepare(&dirs)?;
        }
        // Where each file is written first: its final name (`CreateNew`) or a temporary.
        let first_names: Vec<PathBuf> = files
            .iter()
            .map(|f| if f.mode == WriteMode::CreateNew { f.path.to_path_buf() } else { temporary(f.path, trash) })
            .collect();
        let written: Vec<Result<std::fs::File, IoError>> = if !durable || files.len() < PARALLEL_WRITE_MIN_FILES {
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
            if let Err(e) = self.barriers.run(&replaced, &dirs) {
                remove_all(&first_names);
                return Err(e);
            }
        }
        for (i, (f, tmp)) in files.iter().zip(&first_names).enumerate() {
            if f.mode == WriteMode::CreateNew {
                continue;
            }
            if let Err(e) = rename_into_place(tmp, f.path, trash.is_some()) {
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
        self.barriers.run(&targets, &dirs)
    }
}

/// Whether this build swaps a temporary with the file it replaces (`renameat2(RENAME_EXCHANGE)`, glibc's Linux).
const SWAPS_NAMES: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// Where a file that takes its final name by a rename is written first: a fresh temporary name beside its final
/// name, or in `trash` (same file name, so an error names what it was for).
fn temporary(final_path: &Path, trash: Option<&Path>) -> PathBuf {
    match (trash, final_path.file_name()) {
        (Some(trash), Some(name)) => tmp_path(&trash.join(name)),
        _ => tmp_path(final_path),
    }
}

/// Gives the temporary `tmp` the name `final_path`. With `swap` (`tmp` is in a trash directory), a file already at
/// `final_path` is swapped into `tmp`'s place (`RENAME_EXCHANGE`: one atomic step, so readers of `final_path` see the
/// old file or the new one, never none) instead of freed under the directory's lock by a plain rename; its
/// blocks are freed when the trash's owner deletes it. A missing final name (`ENOENT`) or a filesystem that cannot
/// swap (`EINVAL`) takes the plain rename.
fn rename_into_place(tmp: &Path, final_path: &Path, swap: bool) -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if swap {
        use nix::errno::Errno;
        use nix::fcntl::{renameat2, RenameFlags};
        match renameat2(None, tmp, None, final_path, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => return Ok(()),
            Err(Errno::ENOENT | Errno::EINVAL) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let _ = swap;
    std::fs::rename(tmp, final_path)
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
