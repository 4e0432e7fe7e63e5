//! The hot tier of projection reads (design.md §5): a byte-budgeted, scan-resistant cache of projections, so warm
//! `get`, `get_all` and `query` run at memory speed. Reads look a whole batch up under one read lock, send only the
//! misses to `BatchIo` and emit hits and misses in key order (`reader.rs`).
//!
//! An entry is the projection as clients see it, the `"item"` object of `projection.get_all`'s item lines
//! ([`super::ItemJson`], made from the file by [`super::ItemJson::from_file`]), not the file: the
//! server streams a hit by copying it between a line's prefix and suffix, with no parsing or serialising (measured
//! with 5,000 cached ~700 B projections: re-parsing and re-framing the files cost about 10 ms of the daemon's CPU per
//! `get_all`, copying the bodies well under 1 ms). `get` and the library's iterators decode the body instead of the
//! file. It is about as long as the file, so the budget holds one copy of each projection.
//!
//! # Policy
//! CLOCK (second chance): a hit sets the entry's `referenced` bit (an atomic, so hits need only the read lock); to
//! make room the hand clears set bits and evicts the first entry whose bit is clear. Plain CLOCK is not scan
//! resistant — one `get_all` over a projection larger than the budget would push out everything hot — so admission
//! differs by source:
//! - **writes admit directly**: the writer thread holds the exact bytes it just made durable, and a projection just
//!   written is the likeliest to be read;
//! - **read misses admit on their second touch**: the first miss of a file only records a hash of its name in a fixed
//!   table of "ghosts" (one `u64` per [`GHOST_BUDGET_BYTES_PER_SLOT`] bytes of budget, collisions just forget); a
//!   miss whose ghost is still there is admitted. A one-off scan therefore leaves the cached set alone; a projection
//!   read again and again (a working set) is admitted on its second read.
//!
//! # Coherence (ARCHITECTURE.md, invariant 14)
//! - **Our writes** go through [`ProjectionCache::commit_writes`] after the durable write batch and before the reply:
//!   written files are replaced, deleted ones evicted.
//! - **The race with in-flight readers**: a reader that read a file from disk before a concurrent put renamed the new
//!   version must not insert the old bytes after the writer inserted the new ones. Every projection has a generation,
//!   bumped (under the write lock) by every write commit and every change reported by inotify; a reader snapshots it
//!   with its lookups ([`Token`]) and inserts its misses only if it has not moved.
//! - **Other processes** (Linux): one inotify descriptor, one watch per projection directory, drained without
//!   blocking before every lookup batch and before the writer applies a commit. fsnotify queues an event in the
//!   modifying syscall, so every change completed before a read began has been applied (and its generation bumped)
//!   before the read looks anything up. An event naming `<stem>.json` evicts that stem; a queue overflow clears the
//!   whole cache; a lost watch (directory deleted or moved) clears its projection, and a projection that cannot be
//!   watched is never cached. Watches are added before a projection's first lookup or write, so nothing read from
//!   disk predates its watch. Not covered: writes through a shared `mmap` (they make no event).
//!   Elsewhere there is no watcher, so [`PROJECTION_CACHE_BYTES_DEFAULT`] is 0 there (see [`watch`]).
//!
//! Lock order: the watcher mutex, then the entry lock. Neither is held across file I/O.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::{ItemJson, Paths};

/// Default byte budget: 128 MiB holds ~150,000 typical (~700 B) projection files with their item JSON's room, a
/// small fraction of a server's memory; the daemon's flag `--projection-cache-bytes` changes it, `0` turns the cache
/// off. Off (0) where there is no inotify to keep it coherent with other writers.
pub const PROJECTION_CACHE_BYTES_DEFAULT: usize = if watch::AVAILABLE { 128 * 1024 * 1024 } else { 0 };
/// Files larger than `budget / ENTRY_BUDGET_FRACTION` are never cached (one file must not flush a large share).
pub const ENTRY_BUDGET_FRACTION: usize = 8;
/// Bytes charged per entry on top of its file's bytes (map slot, names, ring slot).
pub const ENTRY_OVERHEAD_BYTES: usize = 128;
/// One ghost slot (8 bytes) per this many bytes of budget: 128 MiB → 262,144 remembered first misses (2 MiB).
pub const GHOST_BUDGET_BYTES_PER_SLOT: usize = 512;

/// A cached projection.
#[derive(Debug)]
pub struct CachedItem {
    /// Its item object as clients see it.
    pub body: ItemJson,
}

/// Counters and sizes, for `stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// 0 when the cache is off.
    pub budget_bytes: u64,
    /// Bytes charged (item bodies, stems and [`ENTRY_OVERHEAD_BYTES`] each); never above the budget.
    pub bytes: u64,
    pub entries: u64,
    /// Projections served from memory and projection files read from disk by `get`, `get_all` and `query`.
    pub hits: u64,
    pub misses: u64,
    /// Entries pushed out to make room.
    pub evictions: u64,
    /// Entries dropped because another process changed their file (inotify), or all of them after a queue overflow.
    pub invalidations: u64,
}

/// What a reader saw when it looked a batch up: inserts of its misses are refused if the projection changed since.
#[derive(Debug, Clone, Copy)]
pub struct Token {
    generation: u64,
}

/// A change reported by the watcher (only the Linux inotify watcher reports any).
#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) enum Change {
    /// `<stem>.json` in this projection's directory was modified, replaced, renamed or deleted.
    File { projection: String, stem: String },
    /// The projection's watch is gone (its directory was deleted or moved): forget everything about it.
    Projection(String),
    /// Events were lost (queue overflow or a read error): forget everything.
    All,
}

pub struct ProjectionCache {
    budget: usize,
    paths: Paths,
    watcher: Mutex<watch::Watcher>,
    inner: RwLock<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct Inner {
    projections: HashMap<String, Slots>,
    /// The CLOCK ring: the key of each entry (or a hole), swept by `hand`.
    ring: Vec<Option<RingKey>>,
    free: Vec<usize>,
    hand: usize,
    bytes: usize,
    entries: usize,
    ghosts: Box<[u64]>,
    evictions: u64,
    invalidations: u64,
}

struct RingKey {
    projection: Arc<str>,
    stem: Box<str>,
}

struct Slots {
    name: Arc<str>,
    generation: u64,
    /// Cached only while a watch covers the directory.
    watched: bool,
    /// Adding the watch failed: never cached (and not retried on every read).
    unwatchable: bool,
    entries: HashMap<Box<str>, Slot>,
}

struct Slot {
    file: Arc<CachedItem>,
    referenced: AtomicBool,
    ring: usize,
    charge: usize,
}

impl ProjectionCache {
    /// A cache of at most `budget` bytes over the projections under `paths`; `None` when `budget` is 0 or the
    /// watcher cannot be set up (then reads go to disk, as without a cache).
    pub(crate) fn new(budget: usize, paths: Paths) -> Option<ProjectionCache> {
        if budget == 0 {
            return None;
        }
        let watcher = match watch::Watcher::new() {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("projection cache off: cannot watch projection directories: {e}");
                return None;
            }
        };
        let ghost_slots = (budget / GHOST_BUDGET_BYTES_PER_SLOT).max(64);
        Some(ProjectionCache {
            budget,
            paths,
            watcher: Mutex::new(watcher),
            inner: RwLock::new(Inner {
                projections: HashMap::new(),
                ring: Vec::new(),
                free: Vec::new(),
                hand: 0,
                bytes: 0,
                entries: 0,
                ghosts: vec![0; ghost_slots].into_boxed_slice(),
                evictions: 0,
                invalidations: 0,
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    pub fn stats(&self) -> CacheStats {
        let inner = self.inner.read().unwrap();
        CacheStats {
            budget_bytes: self.budget as u64,
            bytes: inner.bytes as u64,
            entries: inner.entries as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: inner.evictions,
            invalidations: inner.invalidations,
        }
    }

    /// Looks up `stems` of `projection` after applying every change other processes made so far; `out[i]` is the
    /// cached file of `stems[i]` or `None`. One read lock for the whole batch.
    pub fn lookup<'a>(
        &self,
        projection: &str,
        stems: impl Iterator<Item = &'a str>,
        out: &mut Vec<Option<Arc<CachedItem>>>,
    ) -> Token {
        self.drain();
        self.ensure_watched(projection);
        let inner = self.inner.read().unwrap();
        let slots = inner.projections.get(projection);
        let start = out.len();
        out.extend(stems.map(|stem| {
            let slot = slots?.entries.get(stem)?;
            slot.referenced.store(true, Ordering::Relaxed);
            Some(slot.file.clone())
        }));
        let hits = out[start..].iter().filter(|f| f.is_some()).count();
        self.hits.fetch_add(hits as u64, Ordering::Relaxed);
        self.misses.fetch_add((out.len() - start - hits) as u64, Ordering::Relaxed);
        Token { generation: slots.map_or(0, |s| s.generation) }
    }

    /// Which of the files a reader read from disk after `token`'s lookup should be admitted: none if `projection`
    /// changed since; otherwise those missed before (second touch, see the module docs), while the others are
    /// remembered as ghosts. The caller makes their bodies (outside any lock) and hands them to [`admit`](Self::admit).
    pub fn second_touch<'a>(&self, token: Token, projection: &str, stems: impl Iterator<Item = &'a str>) -> Vec<bool> {
        let mut inner = self.inner.write().unwrap();
        let inner = &mut *inner;
        let Some(slots) = inner.projections.get(projection) else { return Vec::new() };
        if slots.generation != token.generation || !slots.watched {
            return Vec::new();
        }
        stems
            .map(|stem| {
                if slots.entries.contains_key(stem) {
                    return false;
                }
                let h = ghost_hash(projection, stem);
                let slot = (h % inner.ghosts.len() as u64) as usize;
                let admit = inner.ghosts[slot] == h;
                inner.ghosts[slot] = if admit { 0 } else { h };
                admit
            })
            .collect()
    }

    /// Inserts the bodies of projections a reader read from disk after `token`'s lookup, unless `projection` changed
    /// since (then none: the reader may have read a file an acknowledged write or another process has replaced).
    /// One write lock.
    pub fn admit<'a>(&self, token: Token, projection: &str, items: impl Iterator<Item = (&'a str, ItemJson)>) {
        let mut inner = self.inner.write().unwrap();
        let inner = &mut *inner;
        let Some(slots) = inner.projections.get(projection) else { return };
        if slots.generation != token.generation || !slots.watched {
            return;
        }
        let name = slots.name.clone();
        for (stem, body) in items {
            inner.insert(self.budget, &name, stem, body);
        }
    }

    /// The writer thread, before its write batch: makes sure `projection`'s directory is watched, so that other
    /// processes' changes after our write reach the cache.
    pub(crate) fn prepare_write(&self, projection: &str) {
        self.ensure_watched(projection);
    }

    /// The writer thread, after its write batch and before replying: `Some(body)` is the item body of the file now
    /// on disk at `(projection, stem)`, `None` a deleted file (or, after a failed batch, an unknown one). Applies pending
    /// changes of other processes first, and bumps the touched projections' generations so no reader that read
    /// before our renames can insert what it read.
    pub(crate) fn commit_writes(&self, changes: impl Iterator<Item = (String, String, Option<ItemJson>)>) {
        let mut watcher = self.watcher.lock().unwrap();
        let pending = watcher.drain();
        let mut inner = self.inner.write().unwrap();
        inner.apply(pending);
        let inner = &mut *inner;
        for (projection, stem, bytes) in changes {
            let Some(slots) = inner.projections.get_mut(&projection) else { continue };
            slots.generation += 1;
            let name = slots.name.clone();
            inner.remove(&projection, &stem);
            if let Some(bytes) = bytes {
                if inner.projections[&projection].watched {
                    inner.insert(self.budget, &name, &stem, bytes);
                }
            }
        }
    }

    /// Applies every change the watcher has queued.
    fn drain(&self) {
        let mut watcher = self.watcher.lock().unwrap();
        let pending = watcher.drain();
        if !pending.is_empty() {
            self.inner.write().unwrap().apply(pending);
        }
    }

    fn ensure_watched(&self, projection: &str) {
        if self.inner.read().unwrap().projections.get(projection).is_some_and(|s| s.watched || s.unwatchable) {
            return;
        }
        let mut watcher = self.watcher.lock().unwrap();
        let watched = match watcher.add(projection, &self.paths.projection_dir(projection)) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(projection, "projection not cached: cannot watch its directory: {e}");
                false
            }
        };
        let mut inner = self.inner.write().unwrap();
        let slots = inner.slots(projection);
        slots.watched = watched;
        slots.unwatchable = !watched;
        slots.generation += 1;
    }
}

impl Inner {
    fn slots(&mut self, projection: &str) -> &mut Slots {
        if !self.projections.contains_key(projection) {
            let slots = Slots {
                name: projection.into(),
                generation: 0,
                watched: false,
                unwatchable: false,
                entries: HashMap::new(),
            };
            self.projections.insert(projection.to_string(), slots);
        }
        self.projections.get_mut(projection).expect("just inserted")
    }

    fn apply(&mut self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::File { projection, stem } => {
                    if let Some(slots) = self.projections.get_mut(&projection) {
                        slots.generation += 1;
                        if self.remove(&projection, &stem) {
                            self.invalidations += 1;
                        }
                    }
                }
                Change::Projection(projection) => {
                    if let Some(slots) = self.projections.get_mut(&projection) {
                        slots.generation += 1;
                        slots.watched = false;
                        let stems: Vec<Box<str>> = slots.entries.keys().cloned().collect();
                        for stem in stems {
                            self.remove(&projection, &stem);
                            self.invalidations += 1;
                        }
                    }
                }
                Change::All => {
                    self.invalidations += self.entries as u64;
                    for slots in self.projections.values_mut() {
                        slots.generation += 1;
                        slots.entries.clear();
                    }
                    self.ring.clear();
                    self.free.clear();
                    self.hand = 0;
                    self.bytes = 0;
                    self.entries = 0;
                }
            }
        }
    }

    /// Inserts (or replaces) an entry, evicting with the CLOCK hand until it fits. Too-large files are not cached.
    fn insert(&mut self, budget: usize, projection: &Arc<str>, stem: &str, bytes: ItemJson) {
        self.remove(projection, stem);
        let charge = bytes.len() + stem.len() + ENTRY_OVERHEAD_BYTES;
        if charge > budget / ENTRY_BUDGET_FRACTION {
            return;
        }
        while self.bytes + charge > budget {
            if !self.evict_one() {
                return;
            }
        }
        let key = RingKey { projection: projection.clone(), stem: stem.into() };
        let ring = match self.free.pop() {
            Some(i) => {
                self.ring[i] = Some(key);
                i
            }
            None => {
                self.ring.push(Some(key));
                self.ring.len() - 1
            }
        };
        let file = Arc::new(CachedItem { body: bytes });
        let slot = Slot { file, referenced: AtomicBool::new(false), ring, charge };
        self.projections.get_mut(&**projection).expect("slots exist").entries.insert(stem.into(), slot);
        self.bytes += charge;
        self.entries += 1;
    }

    /// Advances the hand to the first entry not referenced since it last passed (clearing bits on the way) and
    /// evicts it. At most two turns of the ring; `false` when there is nothing to evict.
    fn evict_one(&mut self) -> bool {
        if self.entries == 0 {
            return false;
        }
        for _ in 0..2 * self.ring.len() {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.ring.len();
            let Some(key) = &self.ring[i] else { continue };
            let slot = &self.projections[&*key.projection].entries[&key.stem];
            if slot.referenced.swap(false, Ordering::Relaxed) {
                continue;
            }
            let (projection, stem) = (key.projection.clone(), key.stem.clone());
            self.remove(&projection, &stem);
            self.evictions += 1;
            return true;
        }
        false
    }

    /// Removes one entry; whether it was there.
    fn remove(&mut self, projection: &str, stem: &str) -> bool {
        let Some(slots) = self.projections.get_mut(projection) else { return false };
        let Some(slot) = slots.entries.remove(stem) else { return false };
        self.ring[slot.ring] = None;
        self.free.push(slot.ring);
        self.bytes -= slot.charge;
        self.entries -= 1;
        true
    }
}

/// Never 0 (0 marks an empty ghost slot).
fn ghost_hash(projection: &str, stem: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    projection.hash(&mut h);
    stem.hash(&mut h);
    h.finish() | 1
}

/// Watching projection directories for other processes' changes: the one platform difference of the cache.
#[cfg(target_os = "linux")]
pub(crate) mod watch {
    use std::collections::HashMap;
    use std::path::Path;

    use nix::errno::Errno;
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

    use super::Change;
    use crate::projection::format;

    pub const AVAILABLE: bool = true;

    pub struct Watcher {
        inotify: Inotify,
        dirs: HashMap<WatchDescriptor, String>,
    }

    impl Watcher {
        pub fn new() -> Result<Watcher, Errno> {
            let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
            Ok(Watcher { inotify, dirs: HashMap::new() })
        }

        /// Watches `dir` for changes of the files directly in it. Writes, truncations and renames or deletions of a
        /// name are all an in-place or replacing change of a file we may hold; creations of new names are not (a
        /// cached name exists), nor are attribute changes.
        pub fn add(&mut self, projection: &str, dir: &Path) -> Result<(), Errno> {
            let mask = AddWatchFlags::IN_MODIFY
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_DELETE_SELF
                | AddWatchFlags::IN_MOVE_SELF
                | AddWatchFlags::IN_ONLYDIR;
            let wd = self.inotify.add_watch(dir, mask)?;
            self.dirs.insert(wd, projection.to_string());
            Ok(())
        }

        /// Every change queued so far, without blocking.
        pub fn drain(&mut self) -> Vec<Change> {
            let mut out = Vec::new();
            loop {
                let events = match self.inotify.read_events() {
                    Ok(events) => events,
                    Err(Errno::EAGAIN) => return out,
                    Err(Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::warn!("reading projection directory events failed, clearing the cache: {e}");
                        out.push(Change::All);
                        return out;
                    }
                };
                for event in events {
                    if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                        tracing::info!("projection directory events overflowed: clearing the projection cache");
                        out.push(Change::All);
                        continue;
                    }
                    let gone = AddWatchFlags::IN_IGNORED | AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF;
                    if event.mask.intersects(gone) {
                        if let Some(projection) = self.dirs.remove(&event.wd) {
                            if !event.mask.contains(AddWatchFlags::IN_IGNORED) {
                                // Moved away: its events no longer concern the projection's path.
                                let _ = self.inotify.rm_watch(event.wd);
                            }
                            out.push(Change::Projection(projection));
                        }
                        continue;
                    }
                    let Some(projection) = self.dirs.get(&event.wd) else { continue };
                    let Some(name) = event.name.as_ref().and_then(|n| n.to_str()) else { continue };
                    if let Some(stem) = format::parse_json_file_name(name) {
                        out.push(Change::File { projection: projection.clone(), stem: stem.to_string() });
                    }
                }
            }
        }
    }
}

/// No watcher here: the cache is off by default ([`PROJECTION_CACHE_BYTES_DEFAULT`] is 0); a budget set anyway
/// caches with no coherence with other processes.
#[cfg(not(target_os = "linux"))]
pub(crate) mod watch {
    use std::path::Path;

    use super::Change;

    pub const AVAILABLE: bool = false;

    pub struct Watcher;

    impl Watcher {
        pub fn new() -> Result<Watcher, std::io::Error> {
            Ok(Watcher)
        }
        pub fn add(&mut self, _projection: &str, _dir: &Path) -> Result<(), std::io::Error> {
            Ok(())
        }
        pub fn drain(&mut self) -> Vec<Change> {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE_BYTES: usize = 500;
    /// What one test entry (stem `kN`, N < 10) is charged.
    const CHARGE: usize = FILE_BYTES + 2 + ENTRY_OVERHEAD_BYTES;

    /// A cache over a temporary `Projections/` with a directory for projection `P`.
    fn cache(budget: usize) -> (tempfile::TempDir, ProjectionCache) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("P")).unwrap();
        let cache = ProjectionCache::new(budget, Paths { root: dir.path().to_path_buf() }).expect("cache on");
        cache.prepare_write("P");
        (dir, cache)
    }

    fn file(tag: u8) -> Vec<u8> {
        vec![tag; FILE_BYTES]
    }

    fn write(cache: &ProjectionCache, stem: &str, bytes: Option<Vec<u8>>) {
        let bytes = bytes.map(ItemJson::from_test_bytes);
        cache.commit_writes(std::iter::once(("P".to_string(), stem.to_string(), bytes)));
    }

    /// The cached bytes of `stem`'s first byte, or `None` on a miss (and the token of that lookup).
    fn get(cache: &ProjectionCache, stem: &str) -> (Option<u8>, Token) {
        let mut out = Vec::new();
        let token = cache.lookup("P", std::iter::once(stem), &mut out);
        (out[0].as_ref().map(|f| f.body.as_bytes()[0]), token)
    }

    /// A reader offering what it read: the cache picks the second touches, the reader hands their bodies over.
    fn read_misses(cache: &ProjectionCache, token: Token, stems: &[&str], body: Vec<u8>) {
        let admit = cache.second_touch(token, "P", stems.iter().copied());
        let bodies =
            stems.iter().zip(admit).filter(|(_, a)| *a).map(|(s, _)| (*s, ItemJson::from_test_bytes(body.clone())));
        cache.admit(token, "P", bodies);
    }

    fn read_miss(cache: &ProjectionCache, token: Token, stem: &str, body: Vec<u8>) {
        read_misses(cache, token, &[stem], body);
    }

    #[test]
    fn the_budget_is_never_exceeded() {
        let budget = 64 * 1024;
        let (_dir, cache) = cache(budget);
        for i in 0..1000 {
            write(&cache, &format!("k{i}"), Some(file(1)));
            assert!(cache.stats().bytes as usize <= budget);
        }
        let s = cache.stats();
        assert!(s.entries >= (budget / (FILE_BYTES + 4 + ENTRY_OVERHEAD_BYTES)) as u64 - 1, "{s:?}");
        assert!(s.evictions > 0);
        // One file above budget / ENTRY_BUDGET_FRACTION is not cached at all.
        write(&cache, "big", Some(vec![7; budget / ENTRY_BUDGET_FRACTION]));
        assert_eq!(get(&cache, "big").0, None);
        assert!(cache.stats().bytes as usize <= budget);
    }

    #[test]
    fn clock_gives_referenced_entries_a_second_chance() {
        // Room for exactly 8 entries.
        let (_dir, cache) = cache(8 * CHARGE);
        for i in 0..8 {
            write(&cache, &format!("k{i}"), Some(file(i)));
        }
        assert_eq!(cache.stats().entries, 8);
        assert_eq!(get(&cache, "k0").0, Some(0));
        write(&cache, "k8", Some(file(8)));
        // The hand passes k0 (referenced: spared, bit cleared) and evicts k1, the oldest unreferenced.
        assert_eq!(get(&cache, "k1").0, None);
        for i in [0, 2, 3, 4, 5, 6, 7, 8] {
            assert_eq!(get(&cache, &format!("k{i}")).0, Some(i as u8), "k{i}");
        }
        // Every entry is referenced now; the next insert clears all bits in one turn and evicts where the hand is.
        write(&cache, "k9", Some(file(9)));
        assert_eq!(cache.stats().entries, 8);
        assert_eq!(cache.stats().evictions, 2);
    }

    #[test]
    fn a_scan_larger_than_the_budget_leaves_the_hot_set_alone() {
        let (_dir, cache) = cache(8 * CHARGE);
        for i in 0..4 {
            write(&cache, &format!("h{i}"), Some(file(i)));
            assert!(get(&cache, &format!("h{i}")).0.is_some());
        }
        let scan = |cache: &ProjectionCache| {
            // Two-character stems (charged CHARGE each), none of them `hN`.
            let stems: Vec<String> = (0..100u8).map(|i| format!("{}{}", (b'A' + i / 10) as char, i % 10)).collect();
            let mut out = Vec::new();
            let token = cache.lookup("P", stems.iter().map(String::as_str), &mut out);
            read_misses(cache, token, &stems.iter().map(String::as_str).collect::<Vec<_>>(), file(9));
        };
        scan(&cache);
        // A first read admits nothing: the hot set is intact and nothing of the scan is cached.
        for i in 0..4 {
            assert_eq!(get(&cache, &format!("h{i}")).0, Some(i as u8));
        }
        assert_eq!(cache.stats().entries, 4);
        // Read again, the scanned files are a working set: admitted (the budget still holds).
        scan(&cache);
        assert_eq!(cache.stats().entries, 8);
        assert!(cache.stats().bytes as usize <= 8 * CHARGE);
    }

    #[test]
    fn a_read_miss_is_admitted_on_its_second_touch() {
        let (_dir, cache) = cache(1 << 20);
        let (hit, token) = get(&cache, "k1");
        assert_eq!(hit, None);
        read_miss(&cache, token, "k1", file(1));
        let (hit, token) = get(&cache, "k1");
        assert_eq!(hit, None);
        read_miss(&cache, token, "k1", file(1));
        assert_eq!(get(&cache, "k1").0, Some(1));
        let s = cache.stats();
        assert_eq!((s.hits, s.misses), (1, 2));
    }

    #[test]
    fn a_reader_never_inserts_what_it_read_before_a_concurrent_write() {
        // Delete: a reader read the file, the writer deletes it, the reader offers what it read.
        let (_dir, cache) = cache(8 * CHARGE);
        let (_, token) = get(&cache, "k1");
        read_miss(&cache, token, "k1", file(1)); // first touch: a ghost
        let (_, token) = get(&cache, "k1");
        write(&cache, "k1", None);
        read_miss(&cache, token, "k1", file(1));
        assert_eq!(get(&cache, "k1").0, None, "a deleted file served from memory");

        // Put: the writer's new version is inserted and then evicted before the reader offers the old one.
        let (_, token) = get(&cache, "k2");
        read_miss(&cache, token, "k2", file(1));
        let (_, token) = get(&cache, "k2"); // the reader reads version 1 from disk ...
        write(&cache, "k2", Some(file(2))); // ... the writer renames version 2 into place and inserts it ...
        for i in 0..8 {
            write(&cache, &format!("x{i}"), Some(file(0))); // ... which other writes push out ...
        }
        assert_eq!(get(&cache, "k2").0, None);
        read_miss(&cache, token, "k2", file(1)); // ... before the reader offers version 1.
        let (_, token) = get(&cache, "k2");
        read_miss(&cache, token, "k2", file(2));
        assert_eq!(get(&cache, "k2").0, Some(2), "version 1 came back from memory");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn another_process_changing_a_file_evicts_it() {
        let (dir, cache) = cache(1 << 20);
        let path = dir.path().join("P").join("k1.json");
        std::fs::write(&path, file(1)).unwrap();
        write(&cache, "k1", Some(file(1)));
        assert_eq!(get(&cache, "k1").0, Some(1), "our own write's events do not evict what we inserted");
        // In place, as another process might.
        std::fs::write(&path, file(2)).unwrap();
        assert_eq!(get(&cache, "k1").0, None);
        assert_eq!(cache.stats().invalidations, 1);
        // A reader that read before the change cannot insert it afterwards.
        write(&cache, "k1", Some(file(2)));
        let (_, token) = get(&cache, "k2");
        read_miss(&cache, token, "k2", file(1));
        let (_, token) = get(&cache, "k2"); // reads version 1 of k2 ...
        std::fs::write(dir.path().join("P").join("k2.json"), file(3)).unwrap(); // ... replaced meanwhile ...
        assert_eq!(get(&cache, "k1").0, Some(2)); // ... and some other read drains the event ...
        read_miss(&cache, token, "k2", file(1)); // ... before this one offers version 1.
        assert_eq!(get(&cache, "k2").0, None);
        // Deleted and renamed names too.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(get(&cache, "k1").0, None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_lost_event_queue_clears_the_cache() {
        let (dir, cache) = cache(1 << 20);
        write(&cache, "k1", Some(file(1)));
        let queue: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .map_or(16384, |s| s.trim().parse().unwrap());
        // Alternate two names so that consecutive events are not merged.
        let (a, b) = (dir.path().join("P").join("a.json"), dir.path().join("P").join("b.json"));
        let (mut a, mut b) = (std::fs::File::create(a).unwrap(), std::fs::File::create(b).unwrap());
        use std::io::Write;
        for _ in 0..queue / 2 + 10 {
            a.write_all(b"x").unwrap();
            b.write_all(b"x").unwrap();
        }
        assert_eq!(get(&cache, "k1").0, None);
        assert_eq!(cache.stats().entries, 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_deleted_projection_directory_clears_its_entries_and_is_watched_again() {
        let (dir, cache) = cache(1 << 20);
        write(&cache, "k1", Some(file(1)));
        let p = dir.path().join("P");
        std::fs::rename(&p, dir.path().join("gone")).unwrap();
        std::fs::create_dir(&p).unwrap();
        assert_eq!(get(&cache, "k1").0, None);
        // The new directory is watched: a change there is seen.
        write(&cache, "k1", Some(file(1)));
        assert_eq!(get(&cache, "k1").0, Some(1));
        std::fs::write(p.join("k1.json"), file(2)).unwrap();
        assert_eq!(get(&cache, "k1").0, None);
    }
}
