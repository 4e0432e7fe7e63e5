//! A [`JournalStorage`] wrapper that injects the faults a disk reports under the journal, so tests can prove that a
//! failed group write or `fdatasync` fails every appender of that group, poisons the journal (fsyncgate: a retried
//! `fdatasync` may report success for pages the kernel already dropped), leaves every acknowledged event readable,
//! and that a reopen keeps the failed group whole or drops it, never half of it.
//!
//! Faults count calls of their own kind (`write_at` or `sync_data`), so a test arms "the next group write" with
//! `skip = 0` right after an append it let through. Like [`crate::io::FaultyIo`], it is always built: the
//! integration tests (`tests/store/journal_faults.rs`) link the library as users do.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::storage::JournalStorage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalFault {
    /// A `write_at` fails with `errno` after its first `bytes_written` bytes reached the file (a disk that fills up
    /// half way through a group: ENOSPC; or a failing device: EIO).
    Write { errno: i32, bytes_written: usize },
    /// An `fdatasync` fails with `errno` after the write it should make durable landed in the page cache (the
    /// fsyncgate case: the bytes may or may not be on disk).
    SyncData { errno: i32 },
}

#[derive(Debug, Default)]
struct Armed {
    /// (calls of the fault's kind to let through first, fault), consumed when it fires.
    fault: Option<(usize, JournalFault)>,
    writes: usize,
    syncs: usize,
}

pub struct FaultyStorage {
    inner: Arc<dyn JournalStorage>,
    armed: Mutex<Armed>,
}

impl FaultyStorage {
    pub fn new(inner: Arc<dyn JournalStorage>) -> FaultyStorage {
        FaultyStorage { inner, armed: Mutex::new(Armed::default()) }
    }

    /// Makes the call of `fault`'s kind after the next `skip` ones fail.
    pub fn arm(&self, skip: usize, fault: JournalFault) {
        self.armed.lock().unwrap_or_else(|e| e.into_inner()).fault = Some((skip, fault));
    }

    /// `write_at` and `sync_data` calls seen so far (failed or not).
    pub fn calls(&self) -> (usize, usize) {
        let armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        (armed.writes, armed.syncs)
    }

    /// Counts a call and returns the fault it must fail with, if it is the armed one.
    fn take(&self, is_kind: impl Fn(&JournalFault) -> bool, count: impl Fn(&mut Armed)) -> Option<JournalFault> {
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        count(&mut armed);
        match armed.fault.as_mut() {
            Some((0, fault)) if is_kind(fault) => {
                let fault = *fault;
                armed.fault = None;
                Some(fault)
            }
            Some((skip, fault)) if is_kind(fault) => {
                *skip -= 1;
                None
            }
            _ => None,
        }
    }
}

impl JournalStorage for FaultyStorage {
    fn dir(&self) -> &Path {
        self.inner.dir()
    }
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.inner.list()
    }
    fn create(&self, name: &str) -> std::io::Result<()> {
        self.inner.create(name)
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.inner.remove(name)
    }
    fn len(&self, name: &str) -> std::io::Result<u64> {
        self.inner.len(name)
    }
    fn read_at(&self, name: &str, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(name, buf, offset)
    }
    fn write_at(&self, name: &str, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        match self.take(|f| matches!(f, JournalFault::Write { .. }), |a| a.writes += 1) {
            Some(JournalFault::Write { errno, bytes_written }) => {
                let n = bytes_written.min(bytes.len());
                if n > 0 {
                    self.inner.write_at(name, &bytes[..n], offset)?;
                }
                Err(std::io::Error::from_raw_os_error(errno))
            }
            _ => self.inner.write_at(name, bytes, offset),
        }
    }
    /// Not counted and never failed: faults are armed by counting the group writes and syncs of the commit path,
    /// which a background zero-fill must not shift.
    fn zero_fill(&self, name: &str, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.zero_fill(name, offset, len)
    }
    fn zero_fill_uncached(&self, name: &str, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.zero_fill_uncached(name, offset, len)
    }
    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn set_len(&self, name: &str, len: u64) -> std::io::Result<()> {
        self.inner.set_len(name, len)
    }
    fn sync_data(&self, name: &str) -> std::io::Result<()> {
        match self.take(|f| matches!(f, JournalFault::SyncData { .. }), |a| a.syncs += 1) {
            Some(JournalFault::SyncData { errno }) => Err(std::io::Error::from_raw_os_error(errno)),
            _ => self.inner.sync_data(name),
        }
    }
    fn sync_dir(&self) -> std::io::Result<()> {
        self.inner.sync_dir()
    }
    fn replace(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.replace(name, bytes)
    }
    fn file(&self, name: &str) -> Option<Arc<File>> {
        self.inner.file(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sim::SimDisk;
    use crate::journal::storage::SimStorage;

    #[test]
    fn the_armed_call_of_its_kind_fails_and_only_it() {
        let storage = FaultyStorage::new(Arc::new(SimStorage::new(SimDisk::new(1))));
        storage.create("a").unwrap();
        storage.arm(1, JournalFault::Write { errno: libc::ENOSPC, bytes_written: 2 });
        storage.sync_data("a").unwrap();
        storage.write_at("a", b"xx", 0).unwrap();
        let err = storage.write_at("a", b"abcd", 2).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        let mut buf = [0u8; 4];
        storage.read_at("a", &mut buf, 0).unwrap();
        assert_eq!(&buf, b"xxab", "the bytes before the fault landed");
        storage.write_at("a", b"cd", 4).unwrap();
        storage.arm(0, JournalFault::SyncData { errno: libc::EIO });
        assert_eq!(storage.sync_data("a").unwrap_err().raw_os_error(), Some(libc::EIO));
        storage.sync_data("a").unwrap();
        assert_eq!(storage.calls(), (3, 3));
    }
}
