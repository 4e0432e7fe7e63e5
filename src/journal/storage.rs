//! The journal's view of its directory: a handful of positional file operations, so crash tests can put the
//! simulated disk (`io::sim::SimDisk`) under the journal in place of the real one.
//!
//! Contract (both implementations): `write_at` lands in the page cache only; after `sync_data(name)` returns `Ok`,
//! the file's bytes and length survive a power loss; a newly created file's *name* survives only after
//! `sync_dir`; `replace` is atomic and durable when it returns. Reads see everything written so far.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::io::sim::SimDisk;

pub trait JournalStorage: Send + Sync {
    /// Where this storage lives, for error messages (`<store>/.opossumd/journal`).
    fn dir(&self) -> &Path;
    /// The names of the files in the directory.
    fn list(&self) -> std::io::Result<Vec<String>>;
    /// Creates `name` empty (truncating nothing: an existing file is kept).
    fn create(&self, name: &str) -> std::io::Result<()>;
    fn remove(&self, name: &str) -> std::io::Result<()>;
    fn len(&self, name: &str) -> std::io::Result<u64>;
    /// Reads exactly `buf.len()` bytes at `offset`; `UnexpectedEof` when the file is shorter.
    fn read_at(&self, name: &str, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    fn write_at(&self, name: &str, bytes: &[u8], offset: u64) -> std::io::Result<()>;
    /// Writes `len` zeros at `offset` and `fdatasync`s them: real, initialised blocks, so later writes inside change
    /// no metadata (neither the length nor unwritten extents, as `fallocate` would leave) and their `fdatasync`
    /// flushes data alone. One call, so a fault-injecting wrapper can tell it from a group's write and sync.
    fn zero_fill(&self, name: &str, offset: u64, len: u64) -> std::io::Result<()>;
    /// [`JournalStorage::zero_fill`] of a file nothing else reads or writes meanwhile (the spare segment): it may
    /// bypass the page cache (`O_DIRECT` on Linux), so its zeros cost no copy and no cached pages. `offset` and
    /// `len` are multiples of 4096 (else, or where direct writes are refused, it is `zero_fill`).
    fn zero_fill_uncached(&self, name: &str, offset: u64, len: u64) -> std::io::Result<()> {
        self.zero_fill(name, offset, len)
    }
    /// Renames `from` to `to` (replacing nothing: `to` does not exist); the new name survives a power loss only
    /// after `sync_dir`, until then a crash leaves the old one.
    fn rename(&self, from: &str, to: &str) -> std::io::Result<()>;
    /// Cuts or extends the file to `len` bytes.
    fn set_len(&self, name: &str, len: u64) -> std::io::Result<()>;
    fn sync_data(&self, name: &str) -> std::io::Result<()>;
    fn sync_dir(&self) -> std::io::Result<()>;
    /// Atomically and durably replaces a small file.
    fn replace(&self, name: &str, bytes: &[u8]) -> std::io::Result<()>;
    /// The open descriptor of `name`, for batched positional reads through `BatchIo` (real files only).
    fn file(&self, name: &str) -> Option<Arc<File>>;

    fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }
}

/// The real directory. Segment descriptors stay open (reads and appends reuse them). On Windows the same code runs:
/// positional reads and writes are `seek_read`/`seek_write` (they also move the handle's file pointer, which
/// nothing here uses), zero-filling is writing zeros as everywhere, and removing a segment another handle still
/// has open works because std opens every file with `FILE_SHARE_DELETE`.
pub struct DiskStorage {
    dir: PathBuf,
    open: Mutex<std::collections::HashMap<String, Arc<File>>>,
}

impl DiskStorage {
    /// Opens (creating) the directory `dir`.
    pub fn open(dir: &Path) -> std::io::Result<DiskStorage> {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent() {
                crate::io::fsync_dir(parent)?;
                if let Some(grand) = parent.parent() {
                    crate::io::fsync_dir(grand)?;
                }
            }
        }
        Ok(DiskStorage { dir: dir.to_path_buf(), open: Mutex::new(Default::default()) })
    }

    fn handle(&self, name: &str) -> std::io::Result<Arc<File>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = open.get(name) {
            return Ok(f.clone());
        }
        let f = Arc::new(std::fs::OpenOptions::new().read(true).write(true).open(self.dir.join(name))?);
        open.insert(name.to_string(), f.clone());
        Ok(f)
    }
}

impl JournalStorage for DiskStorage {
    fn dir(&self) -> &Path {
        &self.dir
    }

    fn list(&self) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn create(&self, name: &str) -> std::io::Result<()> {
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(self.dir.join(name))?;
        Ok(())
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        std::fs::remove_file(self.dir.join(name))
    }

    fn len(&self, name: &str) -> std::io::Result<u64> {
        Ok(self.handle(name)?.metadata()?.len())
    }

    fn read_at(&self, name: &str, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        read_exact_at(&*self.handle(name)?, buf, offset)
    }

    fn write_at(&self, name: &str, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        write_all_at(&*self.handle(name)?, bytes, offset)
    }

    fn zero_fill(&self, name: &str, offset: u64, len: u64) -> std::io::Result<()> {
        let file = self.handle(name)?;
        write_zeros(&file, offset, len)?;
        file.sync_data()
    }

    fn zero_fill_uncached(&self, name: &str, offset: u64, len: u64) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            if offset.is_multiple_of(DIRECT_ALIGN_BYTES as u64) && len.is_multiple_of(DIRECT_ALIGN_BYTES as u64) {
                use std::os::unix::fs::OpenOptionsExt;
                // A descriptor of its own: the cached one stays buffered for the segment's later life.
                let direct =
                    std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(self.dir.join(name));
                match direct.and_then(|file| write_zeros_direct(&file, offset, len).map(|()| file)) {
                    Ok(file) => return file.sync_data(),
                    // A filesystem without direct I/O (tmpfs before Linux 6.6, some FUSE): the buffered way.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.zero_fill(name, offset, len)
    }

    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.remove(from);
        open.remove(to);
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn set_len(&self, name: &str, len: u64) -> std::io::Result<()> {
        self.handle(name)?.set_len(len)
    }

    fn sync_data(&self, name: &str) -> std::io::Result<()> {
        self.handle(name)?.sync_data()
    }

    fn sync_dir(&self) -> std::io::Result<()> {
        crate::io::fsync_dir(&self.dir)
    }

    fn replace(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        // Our cached handle of the old file (`marks` is read through `handle` at open) goes first: it would read the
        // replaced bytes afterwards, and on Windows a rename over a file open elsewhere needs POSIX rename
        // semantics (NTFS on Windows 10 1809+; not Wine 8, not FAT), failing with ERROR_ACCESS_DENIED without them.
        self.open.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        let path = self.dir.join(name);
        let tmp = crate::io::tmp_path(&path);
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, bytes)?;
            f.sync_data()?;
            std::fs::rename(&tmp, &path)?;
            crate::io::fsync_dir(&self.dir)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    fn file(&self, name: &str) -> Option<Arc<File>> {
        self.handle(name).ok()
    }
}

/// Positional read of exactly `buf.len()` bytes.
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buf.len() {
            match std::os::windows::fs::FileExt::seek_read(file, &mut buf[done..], offset + done as u64)? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => done += n,
            }
        }
        Ok(())
    }
}

/// Zeros written in pieces of this size (one buffer, allocated zeroed by the allocator: no copy to make it).
const ZERO_WRITE_BYTES: usize = 1 << 20;

fn write_zeros(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; (len as usize).min(ZERO_WRITE_BYTES)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        write_all_at(file, &zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// What `O_DIRECT` writes align their buffer, offset and length to (the page size; a multiple of every block size
/// this runs on).
#[cfg(target_os = "linux")]
const DIRECT_ALIGN_BYTES: usize = 4096;

/// Writes `len` zeros at `offset` through an `O_DIRECT` descriptor, from a page-aligned buffer of zeros.
#[cfg(target_os = "linux")]
fn write_zeros_direct(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let piece = (len as usize).min(ZERO_WRITE_BYTES);
    // Aligned without `unsafe`: a buffer one alignment longer, used from its first aligned byte.
    let zeros = vec![0u8; piece + DIRECT_ALIGN_BYTES];
    let skip = zeros.as_ptr().align_offset(DIRECT_ALIGN_BYTES);
    let zeros = &zeros[skip..skip + piece];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(piece as u64) as usize;
        write_all_at(file, &zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

fn write_all_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < bytes.len() {
            done += std::os::windows::fs::FileExt::seek_write(file, &bytes[done..], offset + done as u64)?;
        }
        Ok(())
    }
}

/// The simulated disk under the journal (crash tests).
pub struct SimStorage {
    pub disk: SimDisk,
    dir: PathBuf,
}

impl SimStorage {
    pub fn new(disk: SimDisk) -> SimStorage {
        SimStorage { disk, dir: PathBuf::from("sim:/journal") }
    }
}

impl JournalStorage for SimStorage {
    fn dir(&self) -> &Path {
        &self.dir
    }
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.disk.list()
    }
    fn create(&self, name: &str) -> std::io::Result<()> {
        self.disk.create(name)
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.disk.remove(name)
    }
    fn len(&self, name: &str) -> std::io::Result<u64> {
        self.disk.len(name)
    }
    fn read_at(&self, name: &str, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.disk.read_at(name, buf, offset)
    }
    fn write_at(&self, name: &str, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        self.disk.write_at(name, bytes, offset)
    }
    fn zero_fill(&self, name: &str, offset: u64, len: u64) -> std::io::Result<()> {
        self.disk.write_at(name, &vec![0u8; len as usize], offset)?;
        self.disk.sync_data(name)
    }
    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.disk.rename(from, to)
    }
    fn set_len(&self, name: &str, len: u64) -> std::io::Result<()> {
        self.disk.set_len(name, len)
    }
    fn sync_data(&self, name: &str) -> std::io::Result<()> {
        self.disk.sync_data(name)
    }
    fn sync_dir(&self) -> std::io::Result<()> {
        self.disk.sync_dir()
    }
    fn replace(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.disk.replace(name, bytes)
    }
    fn file(&self, _name: &str) -> Option<Arc<File>> {
        None
    }
}
