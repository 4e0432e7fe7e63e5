//! A `BatchIo` wrapper that injects write and fsync failures (ENOSPC, EIO) into chosen write batches, so tests
//! can prove that a failed commit is reported, poisons the writer and never becomes half visible; and a read error
//! into one extent of a `read_extents` call (a bad sector under one journal record).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{BatchIo, Extent, FileWrite, IoError, IoOp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The batch fails with `errno` on a write after its first `files_written` files reached their final names
    /// (a disk that fills up half way through a batch).
    Write { errno: i32, files_written: usize },
    /// The whole batch reaches its final names, then an fsync reports `errno` (the "fsyncgate" case: the data
    /// may or may not be on disk).
    Fsync { errno: i32 },
}

pub struct FaultyIo<T> {
    inner: T,
    /// (write batches to let through first, fault), consumed when it fires.
    armed: Mutex<Option<(usize, Fault)>>,
    write_batches: AtomicUsize,
    /// (entry of the next `read_extents` call to fail, errno), consumed when it fires.
    extent_fault: Mutex<Option<(usize, i32)>>,
}

impl<T: BatchIo> FaultyIo<T> {
    pub fn new(inner: T) -> FaultyIo<T> {
        FaultyIo { inner, armed: Mutex::new(None), write_batches: AtomicUsize::new(0), extent_fault: Mutex::new(None) }
    }

    /// Makes the write batch after the next `skip_batches` ones fail with `fault`.
    pub fn arm(&self, skip_batches: usize, fault: Fault) {
        *self.armed.lock().unwrap() = Some((skip_batches, fault));
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
        self.inner.read_files(paths)
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
        self.write_batches.fetch_add(1, Ordering::SeqCst);
        match self.take_fault() {
            None => self.inner.write_files(files, durable),
            Some(Fault::Write { errno, files_written }) => {
                let n = files_written.min(files.len());
                self.inner.write_files(&files[..n], durable)?;
                let path = files.get(n).map_or_else(|| PathBuf::from("<batch>"), |f| f.path.to_path_buf());
                Err(IoError::new(IoOp::Write, path, std::io::Error::from_raw_os_error(errno)))
            }
            Some(Fault::Fsync { errno }) => {
                self.inner.write_files(files, durable)?;
                let path = files.first().map_or_else(|| PathBuf::from("<batch>"), |f| f.path.to_path_buf());
                Err(IoError::new(IoOp::Fsync, path, std::io::Error::from_raw_os_error(errno)))
            }
        }
    }
}
