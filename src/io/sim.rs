//! A crash-simulating, in-memory directory of files for crash tests without killing processes.
//!
//! Every file keeps two copies of its bytes: what was *written* (what reads see while the "machine" runs) and
//! what is *durable* (what survives a power loss). Writes land in the written copy and are remembered, sector by
//! sector, as pending; `sync_data` makes a file's pending sectors durable, `sync_dir` its name. At a chosen crash
//! point (the n-th mutating call) the disk stops: that call and every later one fail. [`SimDisk::reboot`] then
//! builds the disk a restarted machine would find: the durable bytes and names, plus — chosen by the seeded
//! generator — any subset of the pending sectors, some of them torn at a random byte, in any order, as a real
//! disk may write back a dirty page cache. Runs are deterministic per seed, so a failing crash point replays.
//!
//! It knows nothing of what the files hold; the journal puts it under its segments through its storage trait.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Error, ErrorKind, Result};
use std::sync::{Arc, Mutex, MutexGuard};

/// The unit a disk writes atomically-or-not: pending writes are split at these boundaries, and each piece
/// survives a crash whole, torn or not at all, independently of the others.
pub const SIM_SECTOR_BYTES: u64 = 512;

/// A seeded xorshift generator: deterministic, no dependency.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[derive(Debug, Clone, Default)]
struct SimFile {
    written: Vec<u8>,
    durable: Vec<u8>,
    /// Pieces written since the last `sync_data`, in order: (offset, bytes). A length change is a piece too.
    pending: Vec<Pending>,
    /// Byte ranges `write_at` has written (sorted, disjoint): what a filesystem has real, initialised blocks for.
    /// The rest of the length (grown by `set_len`, as `ftruncate` or `fallocate` grow a file) is a hole or an
    /// unwritten extent, and the first write there changes block metadata.
    initialised: Vec<(u64, u64)>,
    /// Whether the next `sync_data` must also make metadata durable (a length change, or blocks newly initialised):
    /// on a real filesystem, a journal commit rather than a data flush alone.
    metadata_dirty: bool,
}

impl SimFile {
    /// Notes a write of `[from, to)`: a metadata change when it grows the file or initialises blocks.
    fn note_write(&mut self, from: u64, to: u64) {
        if to > self.written.len() as u64 {
            self.metadata_dirty = true;
        }
        if !self.initialised.iter().any(|&(a, b)| a <= from && to <= b) {
            self.metadata_dirty = true;
            self.initialised.push((from, to));
            self.initialised.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.initialised.len());
            for &(a, b) in &self.initialised {
                match merged.last_mut() {
                    Some(last) if a <= last.1 => last.1 = last.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            self.initialised = merged;
        }
    }
}

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug)]
struct SimState {
    files: BTreeMap<String, SimFile>,
    /// Names that survive a crash (created or removed before the last `sync_dir`).
    durable_names: BTreeSet<String>,
    /// Files removed since the last `sync_dir` whose names were durable: a crash brings them back.
    removed: BTreeMap<String, SimFile>,
    /// Mutating calls so far.
    ops: u64,
    crash_at: Option<u64>,
    crashed: bool,
    rng: SimRng,
    /// `sync_data` calls that had metadata to make durable (see `SimFile::metadata_dirty`).
    metadata_syncs: u64,
}

/// A simulated disk holding one flat directory. Clones share the disk.
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

fn crash_error() -> Error {
    Error::other("simulated crash: the disk is gone")
}

impl SimDisk {
    pub fn new(seed: u64) -> SimDisk {
        SimDisk {
            state: Arc::new(Mutex::new(SimState {
                files: BTreeMap::new(),
                durable_names: BTreeSet::new(),
                removed: BTreeMap::new(),
                ops: 0,
                crash_at: None,
                crashed: false,
                rng: SimRng::new(seed),
                metadata_syncs: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Crash at the `op`-th mutating call from now on (1 = the next one), which then fails like every call after it.
    pub fn crash_after(&self, op: u64) {
        let mut s = self.lock();
        s.crash_at = Some(s.ops + op);
    }

    /// `sync_data` calls so far that had metadata to make durable besides data: a length change, or blocks written
    /// for the first time (into a hole or a preallocated, unwritten range). On ext4 each is a journal commit, which
    /// also carries every other file's pending metadata (the mirror's creations).
    pub fn metadata_syncs(&self) -> u64 {
        self.lock().metadata_syncs
    }

    /// Mutating calls made so far (to size a crash-point sweep).
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Counts a mutating call; fails it (and marks the disk crashed) at the crash point.
    fn step(s: &mut SimState) -> Result<()> {
        if s.crashed {
            return Err(crash_error());
        }
        s.ops += 1;
        if s.crash_at.is_some_and(|at| s.ops >= at) {
            s.crashed = true;
            return Err(crash_error());
        }
        Ok(())
    }

    /// The disk a restarted machine finds: durable bytes and names, plus a seeded choice of pending sectors (kept,
    /// torn at a random byte, or lost, each independently). `tear == false` keeps only the durable state.
    pub fn reboot(&self, seed: u64, tear: bool) -> SimDisk {
        let s = self.lock();
        let mut rng = SimRng::new(seed ^ 0x5EED);
        let mut files = BTreeMap::new();
        for name in &s.durable_names {
            // A durable name removed without a directory sync since comes back with its durable bytes.
            let Some(f) = s.files.get(name).or_else(|| s.removed.get(name)) else { continue };
            let mut bytes = f.durable.clone();
            if tear {
                for piece in &f.pending {
                    match piece {
                        Pending::SetLen(len) => {
                            if rng.below(2) == 0 {
                                bytes.resize(*len as usize, 0);
                            }
                        }
                        Pending::Write { offset, bytes: data } => match rng.below(3) {
                            0 => {}
                            choice => {
                                let keep =
                                    if choice == 1 { data.len() } else { rng.below(data.len() as u64 + 1) as usize };
                                let end = *offset as usize + keep;
                                if bytes.len() < end {
                                    bytes.resize(end, 0);
                                }
                                bytes[*offset as usize..end].copy_from_slice(&data[..keep]);
                            }
                        },
                    }
                }
            }
            // What a restarted machine finds is taken as written blocks throughout.
            let initialised = vec![(0, bytes.len() as u64)];
            files.insert(
                name.clone(),
                SimFile {
                    written: bytes.clone(),
                    durable: bytes,
                    pending: Vec::new(),
                    initialised,
                    metadata_dirty: false,
                },
            );
        }
        SimDisk {
            state: Arc::new(Mutex::new(SimState {
                durable_names: files.keys().cloned().collect(),
                files,
                removed: BTreeMap::new(),
                ops: 0,
                crash_at: None,
                crashed: false,
                rng,
                metadata_syncs: 0,
            })),
        }
    }

    pub fn list(&self) -> Result<Vec<String>> {
        let s = self.lock();
        if s.crashed {
            return Err(crash_error());
        }
        Ok(s.files.keys().cloned().collect())
    }

    pub fn exists(&self, name: &str) -> bool {
        self.lock().files.contains_key(name)
    }

    /// Creates an empty file (its name durable only after `sync_dir`); an existing file is left as it is.
    pub fn create(&self, name: &str) -> Result<()> {
        let mut s = self.lock();
        Self::step(&mut s)?;
        s.files.entry(name.to_string()).or_default();
        Ok(())
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        let mut s = self.lock();
        Self::step(&mut s)?;
        let f = s.files.remove(name).ok_or_else(|| Error::from(ErrorKind::NotFound))?;
        if s.durable_names.contains(name) {
            s.removed.insert(name.to_string(), f);
        }
        Ok(())
    }

    /// Renames `from` to `to` (an existing `to` is replaced); a crash before the next `sync_dir` leaves the names
    /// as they were durably: `from` with its durable bytes (when its name was durable), no `to`.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let mut s = self.lock();
        Self::step(&mut s)?;
        let f = s.files.remove(from).ok_or_else(|| Error::from(ErrorKind::NotFound))?;
        if s.durable_names.contains(from) {
            s.removed.insert(from.to_string(), f.clone());
        }
        if let Some(old) = s.files.insert(to.to_string(), f) {
            if s.durable_names.contains(to) {
                s.removed.entry(to.to_string()).or_insert(old);
            }
        }
        Ok(())
    }

    pub fn len(&self, name: &str) -> Result<u64> {
        let s = self.lock();
        Ok(s.files.get(name).ok_or_else(|| Error::from(ErrorKind::NotFound))?.written.len() as u64)
    }

    /// Reads exactly `buf.len()` bytes at `offset` of the written copy; `UnexpectedEof` past the end.
    pub fn read_at(&self, name: &str, buf: &mut [u8], offset: u64) -> Result<()> {
        let s = self.lock();
        if s.crashed {
            return Err(crash_error());
        }
        let f = s.files.get(name).ok_or_else(|| Error::from(ErrorKind::NotFound))?;
        let end = offset as usize + buf.len();
        let src = f.written.get(offset as usize..end).ok_or_else(|| Error::from(ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    pub fn write_at(&self, name: &str, bytes: &[u8], offset: u64) -> Result<()> {
        let mut s = self.lock();
        Self::step(&mut s)?;
        let f = s.files.get_mut(name).ok_or_else(|| Error::from(ErrorKind::NotFound))?;
        let end = offset as usize + bytes.len();
        f.note_write(offset, end as u64);
        if f.written.len() < end {
            f.written.resize(end, 0);
        }
        f.written[offset as usize..end].copy_from_slice(bytes);
        // Split at sector boundaries: each sector reaches the platter, or not, on its own.
        let mut at = offset;
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = ((SIM_SECTOR_BYTES - at % SIM_SECTOR_BYTES) as usize).min(rest.len());
            f.pending.push(Pending::Write { offset: at, bytes: rest[..n].to_vec() });
            at += n as u64;
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Sets the length (zero-filled when growing): preallocation and truncation.
    pub fn set_len(&self, name: &str, len: u64) -> Result<()> {
        let mut s = self.lock();
        Self::step(&mut s)?;
        let f = s.files.get_mut(name).ok_or_else(|| Error::from(ErrorKind::NotFound))?;
        if len != f.written.len() as u64 {
            f.metadata_dirty = true;
        }
        f.written.resize(len as usize, 0);
        f.pending.push(Pending::SetLen(len));
        for range in &mut f.initialised {
            range.1 = range.1.min(len);
        }
        f.initialised.retain(|&(a, b)| a < b);
        Ok(())
    }

    /// `fdatasync`: the file's written bytes become durable.
    pub fn sync_data(&self, name: &str) -> Result<()> {
        let mut s = self.lock();
        Self::step(&mut s)?;
        let f = s.files.get_mut(name).ok_or_else(|| Error::from(ErrorKind::NotFound))?;
        f.durable = f.written.clone();
        f.pending.clear();
        let metadata = std::mem::take(&mut f.metadata_dirty);
        s.metadata_syncs += u64::from(metadata);
        Ok(())
    }

    /// `fsync` of the directory: the current set of names becomes durable.
    pub fn sync_dir(&self) -> Result<()> {
        let mut s = self.lock();
        Self::step(&mut s)?;
        s.durable_names = s.files.keys().cloned().collect();
        s.removed.clear();
        Ok(())
    }

    /// Atomically replaces `name` with `bytes`, durably (temp file + fsync + rename + directory fsync).
    pub fn replace(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let mut s = self.lock();
        Self::step(&mut s)?;
        let initialised = vec![(0, bytes.len() as u64)];
        s.files.insert(
            name.to_string(),
            SimFile {
                written: bytes.to_vec(),
                durable: bytes.to_vec(),
                pending: Vec::new(),
                initialised,
                metadata_dirty: false,
            },
        );
        s.durable_names.insert(name.to_string());
        Ok(())
    }

    /// Test surgery: overwrite bytes of both copies (corruption the "disk" did on its own).
    pub fn poke(&self, name: &str, offset: u64, bytes: &[u8]) {
        let mut s = self.lock();
        let f = s.files.get_mut(name).expect("poke an existing file");
        for copy in [&mut f.written, &mut f.durable] {
            let end = offset as usize + bytes.len();
            if copy.len() < end {
                copy.resize(end, 0);
            }
            copy[offset as usize..end].copy_from_slice(bytes);
        }
    }

    /// Test surgery: cut both copies of a file to `len` bytes.
    pub fn truncate(&self, name: &str, len: u64) {
        let mut s = self.lock();
        let f = s.files.get_mut(name).expect("truncate an existing file");
        f.written.truncate(len as usize);
        f.durable.truncate(len as usize);
    }

    /// The written copy of a whole file (tests).
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        self.lock().files.get(name).map(|f| f.written.clone())
    }

    /// A random number from the disk's generator (tests that want one stream of randomness per seed).
    pub fn random(&self, n: u64) -> u64 {
        self.lock().rng.below(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_bytes_and_names_are_lost_in_a_crash() {
        let disk = SimDisk::new(1);
        disk.create("a").unwrap();
        disk.write_at("a", b"hello", 0).unwrap();
        disk.sync_data("a").unwrap();
        assert!(disk.reboot(1, false).list().unwrap().is_empty(), "the name was never made durable");
        disk.sync_dir().unwrap();
        disk.write_at("a", b"HELLO world", 0).unwrap();
        let after = disk.reboot(1, false);
        assert_eq!(after.contents("a").unwrap(), b"hello");
        // With tearing, every sector survives whole, torn or not at all: the result is one of those mixes.
        for seed in 0..50 {
            let torn = disk.reboot(seed, true).contents("a").unwrap();
            assert!(torn.len() == 5 || torn.len() <= 11, "{torn:?}");
            assert!(torn.starts_with(b"hello") || torn.starts_with(b"HELLO") || torn.starts_with(b"H"));
        }
    }

    #[test]
    fn a_sync_carries_metadata_after_a_length_change_or_a_first_write_into_unwritten_space() {
        let disk = SimDisk::new(3);
        disk.create("a").unwrap();
        disk.write_at("a", &[0; 1024], 0).unwrap();
        disk.sync_data("a").unwrap();
        assert_eq!(disk.metadata_syncs(), 1, "the file grew");
        disk.write_at("a", b"records", 100).unwrap();
        disk.sync_data("a").unwrap();
        assert_eq!(disk.metadata_syncs(), 1, "over written zeros: data alone");
        disk.set_len("a", 4096).unwrap();
        disk.sync_data("a").unwrap();
        disk.write_at("a", b"records", 2000).unwrap();
        disk.sync_data("a").unwrap();
        assert_eq!(disk.metadata_syncs(), 3, "set_len, then a first write into the space it added");
    }

    #[test]
    fn the_crash_point_fails_that_call_and_every_later_one() {
        let disk = SimDisk::new(2);
        disk.create("a").unwrap();
        disk.crash_after(2);
        disk.write_at("a", b"x", 0).unwrap();
        assert!(disk.sync_data("a").is_err());
        assert!(disk.crashed());
        assert!(disk.write_at("a", b"y", 1).is_err());
        assert!(disk.read_at("a", &mut [0], 0).is_err());
    }
}
