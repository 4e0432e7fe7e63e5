//! `.store.lock`, taken the way the other writers of the store take it, so this store and .NET Opossum exclude each
//! other: on Unix an exclusive `flock` on a handle kept open; on Windows a handle opened with share mode 0 (.NET's
//! `FileShare.None`), which no other process can open until it is closed. A Windows handle opened with the
//! default share mode would stop every .NET writer (a sharing violation at its open) for as long as it is open,
//! and .NET's own handle would stop this store from opening, so there it is opened per acquisition and closed on
//! release, as .NET does. (`LockFileEx`, std's `File::lock`, would not exclude .NET at all: .NET takes no byte
//! range lock.)

use std::fs::File;
use std::path::{Path, PathBuf};

use super::StoreError;
use crate::io::IoOp;

/// `.store.lock` of one store, ready to be taken ([`StoreLock::acquire`]).
pub(crate) struct LockFile {
    path: PathBuf,
    /// Unix: the handle `flock` is taken on, open for the store's life.
    #[cfg(not(windows))]
    file: File,
}

impl LockFile {
    /// Unix: opens (creating if needed: an empty file, as .NET Opossum creates it) the handle `flock` is taken on.
    pub fn open(path: &Path) -> Result<LockFile, StoreError> {
        #[cfg(not(windows))]
        {
            Ok(LockFile { path: path.to_path_buf(), file: open(path, false)? })
        }
        #[cfg(windows)]
        {
            // Not opened now: a .NET writer may hold it. Every acquisition creates it if needed.
            Ok(LockFile { path: path.to_path_buf() })
        }
    }

    /// Takes the lock until the returned handle is dropped (journal mode holds it from open to close).
    pub fn hold(&self) -> Result<File, StoreError> {
        #[cfg(not(windows))]
        {
            let file = open(&self.path, false)?;
            file.lock().map_err(|e| StoreError::io(IoOp::Lock, &self.path, e))?;
            Ok(file)
        }
        #[cfg(windows)]
        {
            open_exclusive(&self.path)
        }
    }
}

/// `.store.lock` held (around one group commit, or recovery), released on drop.
pub(crate) struct StoreLock<'a> {
    #[cfg(not(windows))]
    file: &'a File,
    #[cfg(windows)]
    _handle: File,
    #[cfg(windows)]
    _lock_file: std::marker::PhantomData<&'a LockFile>,
}

impl<'a> StoreLock<'a> {
    /// Blocks until no other writer holds the lock (a .NET writer holds it for one append).
    pub fn acquire(lock: &'a LockFile, _layout: &crate::format::Layout) -> Result<StoreLock<'a>, StoreError> {
        #[cfg(not(windows))]
        {
            lock.file.lock().map_err(|e| StoreError::io(IoOp::Lock, &lock.path, e))?;
            Ok(StoreLock { file: &lock.file })
        }
        #[cfg(windows)]
        {
            Ok(StoreLock { _handle: open_exclusive(&lock.path)?, _lock_file: std::marker::PhantomData })
        }
    }
}

#[cfg(not(windows))]
impl Drop for StoreLock<'_> {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

#[cfg(not(windows))]
fn open(path: &Path, exclusive: bool) -> Result<File, StoreError> {
    open_with_share_mode(path, exclusive).map_err(|e| StoreError::io(IoOp::Open, path, e))
}

fn open_with_share_mode(path: &Path, exclusive: bool) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(windows)]
    if exclusive {
        use std::os::windows::fs::OpenOptionsExt;
        options.share_mode(0);
    }
    #[cfg(not(windows))]
    let _ = exclusive;
    options.open(path)
}

/// Opens `path` with share mode 0, waiting while another process has it open (`ERROR_SHARING_VIOLATION`). A .NET
/// writer holds it for one append, so the wait is short; like `flock`, it waits as long as the holder holds,
/// backing off up to [`STORE_LOCK_RETRY_MS_MAX`](crate::limits::STORE_LOCK_RETRY_MS_MAX) between attempts.
#[cfg(windows)]
fn open_exclusive(path: &Path) -> Result<File, StoreError> {
    use crate::limits::STORE_LOCK_RETRY_MS_MAX;
    /// `ERROR_SHARING_VIOLATION`: another process has the file open and shares nothing with us.
    const SHARING_VIOLATION: i32 = 32;
    let mut wait_ms = 1;
    let mut warned = false;
    loop {
        match open_with_share_mode(path, true) {
            Err(e) if e.raw_os_error() == Some(SHARING_VIOLATION) => {
                if wait_ms == STORE_LOCK_RETRY_MS_MAX && !warned {
                    warned = true;
                    tracing::warn!(file = %path.display(), "waiting for another process to release the store lock");
                }
                std::thread::sleep(std::time::Duration::from_millis(wait_ms));
                wait_ms = (wait_ms * 2).min(STORE_LOCK_RETRY_MS_MAX);
            }
            other => return other.map_err(|e| StoreError::io(IoOp::Lock, path, e)),
        }
    }
}
