//! A `BatchIo` wrapper that injects failures so tests can prove that a failed commit is reported, poisons the writer
//! only when it may have left unknown state, and never becomes half visible: refused creates (EMFILE, ENFILE, ENOSPC),
//! failed writes and fsyncs (ENOSPC, EIO) in chosen write batches; a failed whole-file read; and a read error in one
//! extent of a `read_extents` call (a bad sector under one journal record).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{BatchIo, Extent, FileWrite, IoError, IoOp, Spares};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The batch fails with `errno` on a write after its first `files_written` files reached their final names
    /// (a disk that fills up half way through a batch).
    Write { errno: i32, files_written: usize },
    /// Creating a file fails with `errno` (EMFILE, ENFILE, ENOSPC for inodes) after the first `files_written` files
    /// were written: nothing of the failing file is written, and nothing of the batch is renamed or fsynced.
    Open { errno: i32, files_written: usize },
    /// The next read batch fails every file with `errno` (EMFILE: the process ran out of descriptors). Armed read
    /// faults count read batches, not write batches.
    Read { errno: i32 },
    /// The whole batch reaches its final names, then an fsync reports `errno` (the "fsyncgate" case: the data
    /// may or may not be on disk).
    Fsync { errno: i32 },
}

pub struct FaultyIo<T> {
    inner: T,
    /// (write batches to let through first, fault), consumed when it fires.
    armed: Mutex<Option<(usize, Fault)>>,
    armed_read: Mutex<Option<i32>>,
    write_batches: AtomicUsize,
    /// (entry of the next `read_extents` call to fail, errno), consumed when it fires.
    extent_fault: Mutex<Option<(usize, i32)>>,
}

impl<T: BatchIo> FaultyIo<T> {
    pub fn new(inner: T) -> FaultyIo<T> {
        FaultyIo {
            inner,
            armed: Mutex::new(None),
            armed_read: Mutex::new(None),
            write_batches: AtomicUsize::new(0),
            extent_fault: Mutex::new(None),
        }
    }

    /// Makes the write batch after the next `skip_batches` ones fail with `fault`.
    pub fn arm(&self, skip_batches: usize, fault: Fault) {
        match fault {
            Fault::Read { errno } => *self.armed_read.lock().unwrap() = Some(errno),
            _ => *self.armed.lock().unwrap() = Some((skip_batches, fault)),
        }
    }

    /// Makes entry `entry` of the next `read_extents` call that has one fail with `errno` (a bad sector under one
    /// journal record); the other entries of that call are read as usual.
    pub fn arm_extent_read(&self, entry: usize, errno: i32) {
        *self.extent_fault.lock().unwrap() = Some((entry, errno));
    }

    /// Write batches seen so far (successful or not).
    pub fn write_batches(&self) -> usize {
        self.write_batches.load(Ordering::SeqCst)
    }

    fn take_fault(&self) -> Option<Fault> {
        let mut armed = self.armed.lock().unwrap();
        match armed.as_mut() {
            Some((0, fault)) => {
                let fault = *fault;
                *armed = None;
                Some(fault)
            }
            Some((skip, _)) => {
                *skip -= 1;
                None
            }
            None => None,
        }
    }
}

impl<T: BatchIo> BatchIo for FaultyIo<T> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn read_files(&self, paths: &[PathBuf]) -> Vec<Result<Vec<u8>, IoError>> {
        match self.armed_read.lock().unwrap().take() {
            None => self.inner.read_files(paths),
            Some(errno) => paths
                .iter()
                .map(|p| Err(IoError::new(IoOp::Open, p, std::io::Error::from_raw_os_error(errno))))
                .collect(),
        }
    }

    fn read_extents(&self, extents: &[Extent<'_>]) -> Vec<Result<Vec<u8>, IoError>> {
        let mut results = self.inner.read_extents(extents);
        let mut armed = self.extent_fault.lock().unwrap();
        if let Some((entry, errno)) = *armed {
            if let Some(result) = results.get_mut(entry) {
                *result = Err(IoError::new(IoOp::Read, extents[entry].path, std::io::Error::from_raw_os_error(errno)));
                *armed = None;
            }
        }
        results
    }

    fn write_files(&self, files: &[FileWrite<'_>], durable: bool) -> Result<(), IoError> {
        self.write_faulty(files, |files| self.inner.write_files(files, durable))
    }

    fn write_files_with_trash(&self, files: &[FileWrite<'_>], durable: bool, trash: &Path) -> Result<(), IoError> {
        self.write_faulty(files, |files| self.inner.write_files_with_trash(files, durable, trash))
    }

    fn write_files_recycling(&self, files: &[FileWrite<'_>], trash: &Path, spares: &Spares) -> Result<(), IoError> {
        self.write_faulty(files, |files| self.inner.write_files_recycling(files, trash, spares))
    }
}

impl<T: BatchIo> FaultyIo<T> {
    /// A write batch through `write` (the inner backend's `write_files` or `write_files_with_trash`), failing as the
    /// armed fault says.
    fn write_faulty<'a>(
        &self,
        files: &[FileWrite<'a>],
        write: impl Fn(&[FileWrite<'a>]) -> Result<(), IoError>,
    ) -> Result<(), IoError> {
        self.write_batches.fetch_add(1, Ordering::SeqCst);
        match self.take_fault() {
            None | Some(Fault::Read { .. }) => write(files),
            Some(Fault::Write { errno, files_written }) => {
                let n = files_written.min(files.len());
                write(&files[..n])?;
                let path = files.get(n).map_or_else(|| PathBuf::from("<batch>"), |f| f.path.to_path_buf());
                Err(IoError::new(IoOp::Write, path, std::io::Error::from_raw_os_error(errno)))
            }
            Some(Fault::Open { errno, files_written }) => {
                // Written but not renamed or synced: the backends create every file of a batch before any rename.
                let n = files_written.min(files.len());
                for f in &files[..n] {
                    if f.mode == super::WriteMode::CreateNew {
                        std::fs::write(f.path, f.bytes).map_err(|e| IoError::new(IoOp::Write, f.path, e))?;
                    }
                }
                let path = files.get(n).map_or_else(|| PathBuf::from("<batch>"), |f| f.path.to_path_buf());
                Err(IoError::new(IoOp::Open, path, std::io::Error::from_raw_os_error(errno)))
            }
            Some(Fault::Fsync { errno }) => {
                write(files)?;
                let path = files.first().map_or_else(|| PathBuf::from("<batch>"), |f| f.path.to_path_buf());
                Err(IoError::new(IoOp::Fsync, path, std::io::Error::from_raw_os_error(errno)))
            }
        }
    }
}
