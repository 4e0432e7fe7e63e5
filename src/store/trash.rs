//! The trash: where the old contents of replaced index files and ledgers go instead of being freed by the rename
//! that replaces them, and the thread that deletes them later.
//!
//! Why: on a filesystem that discards freed blocks synchronously (ext4 mounted `discard`, as here), a rename over
//! an existing file frees the old file's blocks before it releases the directory's lock: ~0.3 ms per file that no
//! other rename into that directory overlaps, so a mirror checkpoint replacing 9,000 tag files took 3 s and a stop
//! right after a bulk fill 27 s. Deleting the same files from several threads frees them outside any directory
//! lock, many at once.
//!
//! How: the store's writes that replace files (the mirror's ledgers and its checkpoints' index files, index-file
//! flushes) go through [`Trash::write_files`]: `BatchIo::write_files_with_trash` writes each temporary in the
//! current generation's directory (`.opossumd/trash/<n>/`, `format::Layout::trash_generation`) and swaps it with the
//! file it replaces, so the old contents stay there under the temporary's name. A write pins its generation for its
//! duration. The emptier thread starts a new generation at least every [`TRASH_EMPTY_INTERVAL_MAX`] and deletes the
//! files of every other generation no write pins, oldest first, from [`TRASH_EMPTY_THREADS_MAX`] threads, then its
//! directory. A close stops it (its threads ask before every file) and empties what is left for at most
//! [`TRASH_EMPTY_AT_CLOSE_TIME_MAX`]; the rest, and whatever a crash left, the next open's emptier deletes in the
//! background.
//!
//! When: deleting frees inodes, and on ext4 without a journal (as here) every inode allocation then scans past the
//! inodes freed in the last minutes, so deletions slow the mirror's own file creation. While writes go through the
//! trash (the store is busy, until [`TRASH_EMPTY_IDLE_MIN`] after the last) the emptier deletes at most
//! [`TRASH_EMPTY_BUSY_FILES_PER_SEC_MAX`]; once the store is idle, or the trash holds more than
//! [`TRASH_DEFERRED_FILES_MAX`] files, it deletes at full speed ([`emptying_budget`]); always at the lowest CPU
//! priority ([`TRASH_EMPTY_NICE`]).
//!
//! Spares: the old files the mirror's checkpoints swap out are not left for the emptier but kept, at most
//! [`TRASH_SPARE_FILES_MAX`], in a generation of their own that the emptier leaves alone until close, and the next
//! checkpoints write their index files into them ([`Trash::write_files_recycling`], `io/spares.rs`): once warm, no
//! inode is created or freed per index file, and the trash stays near empty during a bulk load.
//!
//! Nothing in the trash is ever read, so a crash at any point leaves only junk there; and a trash that cannot be used
//! (its directory cannot be made, or lies on another filesystem) only means writes replace files the old way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::StoreError;
use crate::format::Layout;
use crate::io::{BatchIo, FileWrite, IoError, IoOp, Spares};
use crate::limits::{
    TRASH_DEFERRED_FILES_MAX, TRASH_EMPTY_AT_CLOSE_TIME_MAX, TRASH_EMPTY_BATCH_FILES_MAX,
    TRASH_EMPTY_BUSY_FILES_PER_SEC_MAX, TRASH_EMPTY_IDLE_MIN, TRASH_EMPTY_INTERVAL_MAX, TRASH_EMPTY_NICE,
    TRASH_EMPTY_THREADS_MAX, TRASH_SPARE_FILES_MAX,
};

/// A store's trash (see the module documentation).
pub(crate) struct Trash {
    layout: Layout,
    state: Mutex<State>,
    /// The emptier looks: the store is closing.
    wake: Condvar,
    /// Read by emptying rounds without the lock: a stopping emptier returns after its current round.
    stopping: AtomicBool,
    /// Files deleted from the trash since open.
    emptied: AtomicU64,
    /// Spare inodes for [`Trash::write_files_recycling`], in a generation directory of their own that the emptier
    /// leaves alone until close (`State::spares_generation`).
    spares: Spares,
}

struct State {
    /// The generation writes use now.
    current: u64,
    /// Its directory exists (its first write made it).
    created: bool,
    /// Writes under way per generation: their temporaries must stay until they are swapped into place.
    pins: HashMap<u64, usize>,
    /// The trash cannot be used (said once in the log): writes go without it until the next open.
    unusable: bool,
    /// Files written through each generation not yet emptied, an upper bound (a write that replaced nothing leaves
    /// nothing there): what [`TRASH_DEFERRED_FILES_MAX`] counts. What an earlier run left is not counted.
    deferred: HashMap<u64, u64>,
    /// When a write last went through the trash: the store is busy until [`TRASH_EMPTY_IDLE_MIN`] after it.
    last_write: Option<Instant>,
    /// The generation whose directory holds the spares, never emptied while the store is open; `None` once closed.
    spares_generation: Option<u64>,
    /// The spares' directory exists (made by the first recycling write): `Some(false)` when it cannot be made.
    spares_usable: Option<bool>,
}

/// How many files an emptying round may delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    /// Everything (the store is idle or closing, or the trash is over its cap).
    All,
    /// At most this many more (the store is busy).
    Files(usize),
}

/// What a round of the emptier may delete: everything when the store has been idle for [`TRASH_EMPTY_IDLE_MIN`]
/// (`idle_for`: since the last write through the trash, `None` when there was none) or the trash holds more than
/// [`TRASH_DEFERRED_FILES_MAX`] files (`deferred`); else [`TRASH_EMPTY_BUSY_FILES_PER_SEC_MAX`] for the time
/// `since_last_round` (at least one file, so a busy store's trash still shrinks).
fn emptying_budget(idle_for: Option<Duration>, deferred: u64, since_last_round: Duration) -> Budget {
    if idle_for.is_none_or(|idle| idle >= TRASH_EMPTY_IDLE_MIN) || deferred > TRASH_DEFERRED_FILES_MAX {
        return Budget::All;
    }
    let files = (TRASH_EMPTY_BUSY_FILES_PER_SEC_MAX as f64 * since_last_round.as_secs_f64()) as usize;
    Budget::Files(files.clamp(1, TRASH_EMPTY_BATCH_FILES_MAX))
}

/// A write's hold on its generation: the emptier leaves that generation alone until it drops.
pub(crate) struct Pin<'a> {
    trash: &'a Trash,
    generation: u64,
    dir: PathBuf,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut state = self.trash.lock();
        if let Some(n) = state.pins.get_mut(&self.generation) {
            *n -= 1;
            if *n == 0 {
                state.pins.remove(&self.generation);
            }
        }
    }
}

impl Trash {
    /// The trash of the store laid out as `layout`. Touches no file: the first write makes its directory.
    pub fn new(layout: &Layout) -> Trash {
        // A generation number no earlier open used (they are only compared for equality): what a previous run left
        // in the trash is never the current generation, so the emptier deletes it.
        // The spares take the first number, writes the ones after it.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Trash {
            layout: layout.clone(),
            state: Mutex::new(State {
                current: now + 1,
                created: false,
                pins: HashMap::new(),
                unusable: false,
                deferred: HashMap::new(),
                last_write: None,
                spares_generation: Some(now),
                spares_usable: None,
            }),
            wake: Condvar::new(),
            stopping: AtomicBool::new(false),
            emptied: AtomicU64::new(0),
            spares: Spares::new(layout.trash_generation(now), TRASH_SPARE_FILES_MAX),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Files deleted from the trash since open.
    pub fn emptied(&self) -> u64 {
        self.emptied.load(Ordering::Relaxed)
    }

    /// `io.write_files(files, durable)`, the files it replaces left in the trash (`BatchIo::write_files_with_trash`)
    /// when the trash can be used.
    pub fn write_files(&self, io: &dyn BatchIo, files: &[FileWrite<'_>], durable: bool) -> Result<(), IoError> {
        match self.pin() {
            Some(pin) => {
                {
                    let mut state = self.lock();
                    *state.deferred.entry(pin.generation).or_default() += files.len() as u64;
                    state.last_write = Some(Instant::now());
                }
                io.write_files_with_trash(files, durable, &pin.dir)
            }
            None => io.write_files(files, durable),
        }
    }

    /// `io.write_files(files, false)` through the trash, its temporaries the spare inodes earlier replacements left
    /// (`BatchIo::write_files_recycling`): no inode created or freed per file once the spares are warm. Never
    /// durable, and only for files the store rewrites after a crash before its next durable mark (journal mode's
    /// mirror checkpoints: `mirror::reconcile_tree` rewrites every index file touched after the mark): after a crash
    /// a final name may hold another file's old bytes. Without spares (their directory cannot be made) as
    /// [`Trash::write_files`].
    pub fn write_files_recycling(&self, io: &dyn BatchIo, files: &[FileWrite<'_>]) -> Result<(), IoError> {
        let Some(pin) = self.pin() else { return io.write_files(files, false) };
        if !self.spares_ready() {
            drop(pin);
            return self.write_files(io, files, false);
        }
        let to_trash = self.spares.sent_to_trash();
        self.lock().last_write = Some(Instant::now());
        let result = io.write_files_recycling(files, &pin.dir, &self.spares);
        // What went to the trash instead of the pool: an upper bound, like every count of `deferred`.
        let sent = self.spares.sent_to_trash().saturating_sub(to_trash);
        *self.lock().deferred.entry(pin.generation).or_default() += sent;
        result
    }

    /// The spares' directory exists, made now if needed: `false` when it cannot be made or the store closes.
    fn spares_ready(&self) -> bool {
        let mut state = self.lock();
        if state.spares_generation.is_none() {
            return false;
        }
        if state.spares_usable.is_none() {
            let made = self.make_generation(self.spares.dir());
            if let Err(e) = &made {
                tracing::warn!(dir = %self.spares.dir().display(), "no spare inodes, replaced files are not reused: {e}");
            }
            state.spares_usable = Some(made.is_ok());
        }
        state.spares_usable == Some(true)
    }

    /// The spare inodes (`io/spares.rs`).
    pub fn spares(&self) -> &Spares {
        &self.spares
    }

    /// Files the trash holds now, an upper bound (see `State::deferred`).
    pub fn deferred_files(&self) -> u64 {
        self.lock().deferred.values().sum()
    }

    /// What the emptier's next round may delete, `since_last_round` after the last one began.
    fn budget(&self, since_last_round: Duration) -> Budget {
        let state = self.lock();
        let idle_for = state.last_write.map(|at| at.elapsed());
        emptying_budget(idle_for, state.deferred.values().sum(), since_last_round)
    }

    /// The current generation's directory, made if needed, pinned until the pin drops; `None` when the trash cannot
    /// be used.
    pub fn pin(&self) -> Option<Pin<'_>> {
        let mut state = self.lock();
        if state.unusable {
            return None;
        }
        let dir = self.layout.trash_generation(state.current);
        if !state.created {
            if let Err(e) = self.make_generation(&dir) {
                tracing::warn!(dir = %dir.display(), "the trash cannot be used, replaced files are freed at once: {e}");
                state.unusable = true;
                return None;
            }
            state.created = true;
        }
        let generation = state.current;
        *state.pins.entry(generation).or_default() += 1;
        Some(Pin { trash: self, generation, dir })
    }

    /// Makes a generation's directory; it must lie on the store's filesystem (a swap cannot cross filesystems).
    fn make_generation(&self, dir: &Path) -> Result<(), IoError> {
        std::fs::create_dir_all(dir).map_err(|e| IoError::new(IoOp::CreateDir, dir, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let device =
                |path: &Path| std::fs::metadata(path).map(|m| m.dev()).map_err(|e| IoError::new(IoOp::Open, path, e));
            if device(dir)? != device(&self.layout.root)? {
                let e = std::io::Error::new(std::io::ErrorKind::Unsupported, "the trash is on another filesystem");
                return Err(IoError::new(IoOp::CreateDir, dir, e));
            }
        }
        Ok(())
    }

    /// Starts the emptier thread: it deletes what a previous run left at once, then every other generation at
    /// least every [`TRASH_EMPTY_INTERVAL_MAX`], until [`Trash::close`].
    pub fn spawn_emptier(self: &Arc<Self>) -> Result<std::thread::JoinHandle<()>, StoreError> {
        let trash = self.clone();
        std::thread::Builder::new()
            .name("opossum-trash".into())
            .spawn(move || trash.run_emptier())
            .map_err(|e| StoreError::io(IoOp::Spawn, Path::new("trash emptier thread"), e))
    }

    fn run_emptier(&self) {
        lower_this_threads_priority();
        let mut last_round = Instant::now();
        loop {
            let (current, pinned) = self.next_generation();
            let mut budget = self.budget(last_round.elapsed());
            last_round = Instant::now();
            self.empty_others(current, &pinned, None, &mut budget);
            let state = self.lock();
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            let _ = self.wake.wait_timeout(state, TRASH_EMPTY_INTERVAL_MAX);
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
        }
    }

    /// Starts a new generation if the current one was used; returns it and the generations writes still pin (and
    /// the spares', until close).
    fn next_generation(&self) -> (u64, Vec<u64>) {
        let mut state = self.lock();
        if state.created {
            state.current += 1;
            state.created = false;
        }
        let mut pinned: Vec<u64> = state.pins.keys().copied().collect();
        pinned.extend(state.spares_generation);
        (state.current, pinned)
    }

    /// Close, after every writer of the store stopped: stops the emptier (it returns after its current round), then
    /// deletes what is left for at most [`TRASH_EMPTY_AT_CLOSE_TIME_MAX`]. The rest waits for the next open.
    pub fn close(&self, emptier: Option<std::thread::JoinHandle<()>>) {
        self.stopping.store(true, Ordering::Relaxed);
        {
            let _state = self.lock();
            self.wake.notify_all();
        }
        if let Some(thread) = emptier {
            if thread.join().is_err() {
                tracing::error!("the trash emptier panicked");
            }
        }
        let started = Instant::now();
        let before = self.emptied();
        // Every writer has stopped: the spares are junk now, emptied with the rest.
        self.lock().spares_generation = None;
        let (current, pinned) = self.next_generation();
        let until = Some(started + TRASH_EMPTY_AT_CLOSE_TIME_MAX);
        let done = self.empty_others(current, &pinned, until, &mut Budget::All);
        let files = self.emptied() - before;
        if files > 0 || !done {
            tracing::debug!(files, done, took_us = super::elapsed_us(started), "trash emptied at close");
        }
    }

    /// Deletes every generation but `current` and the `pinned` ones, and anything else in the trash, oldest
    /// generation first, until done (`true`), or `budget` is spent, or, with `until`, that instant (else until the
    /// emptier stops).
    fn empty_others(&self, current: u64, pinned: &[u64], until: Option<Instant>, budget: &mut Budget) -> bool {
        let root = self.layout.trash();
        let entries = match std::fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(e) => {
                tracing::debug!(dir = %root.display(), "the trash cannot be listed: {e}");
                return false;
            }
        };
        // Junk that is no generation first, then generations by age (their numbers grow).
        let mut entries: Vec<(Option<u64>, std::fs::DirEntry)> =
            entries.flatten().map(|e| (Layout::trash_generation_of(&e.file_name()), e)).collect();
        entries.sort_by_key(|(generation, _)| *generation);
        let mut done = true;
        for (generation, entry) in entries {
            if generation.is_some_and(|g| g == current || pinned.contains(&g)) {
                continue;
            }
            if !self.keep_going(until) || *budget == Budget::Files(0) {
                return false;
            }
            let path = entry.path();
            let removed = match entry.file_type() {
                Ok(t) if t.is_dir() => {
                    self.empty_dir(&path, generation, until, budget) && std::fs::remove_dir(&path).is_ok()
                }
                _ => {
                    if let Budget::Files(n) = budget {
                        *n -= 1;
                    }
                    std::fs::remove_file(&path).is_ok()
                }
            };
            if let (true, Some(generation)) = (removed, generation) {
                self.lock().deferred.remove(&generation);
            }
            done &= removed;
        }
        done
    }

    /// Deletes the files of `dir` (generation `generation`'s, if it is one) in rounds of at most
    /// [`TRASH_EMPTY_BATCH_FILES_MAX`] and what is left of `budget`, each from up to [`TRASH_EMPTY_THREADS_MAX`]
    /// threads, until it is empty (`true`) or it should stop, or the budget is spent, or a round deletes nothing.
    fn empty_dir(&self, dir: &Path, generation: Option<u64>, until: Option<Instant>, budget: &mut Budget) -> bool {
        let mut first = true;
        loop {
            let round = match *budget {
                Budget::All => TRASH_EMPTY_BATCH_FILES_MAX,
                Budget::Files(0) => return false,
                Budget::Files(n) => n.min(TRASH_EMPTY_BATCH_FILES_MAX),
            };
            let names: Vec<PathBuf> = match std::fs::read_dir(dir) {
                Ok(entries) => entries.flatten().take(round).map(|e| e.path()).collect(),
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), "a trash generation cannot be listed: {e}");
                    return false;
                }
            };
            if names.is_empty() {
                return true;
            }
            // A full-speed round of the emptier (a previous run's leftovers, an idle store) yields as soon as the
            // store writes again; its next round deletes at the busy rate.
            if !first && until.is_none() && *budget == Budget::All && self.budget(Duration::ZERO) != Budget::All {
                *budget = Budget::Files(0);
                return false;
            }
            let removed = remove_files(&names, &|| self.keep_going(until));
            self.emptied.fetch_add(removed as u64, Ordering::Relaxed);
            if let Budget::Files(n) = budget {
                *n -= names.len();
            }
            if let Some(generation) = generation {
                if let Some(left) = self.lock().deferred.get_mut(&generation) {
                    *left = left.saturating_sub(removed as u64);
                }
            }
            if !self.keep_going(until) {
                return false;
            }
            if removed == 0 {
                tracing::debug!(dir = %dir.display(), "nothing in a trash generation could be deleted");
                return false;
            }
            first = false;
        }
    }

    /// Whether an emptying round may start: before `until`, or while the emptier runs.
    fn keep_going(&self, until: Option<Instant>) -> bool {
        match until {
            Some(until) => Instant::now() < until,
            None => !self.stopping.load(Ordering::Relaxed),
        }
    }
}

/// Gives the calling thread, and the threads it starts from now on (they inherit it), the lowest CPU priority
/// ([`TRASH_EMPTY_NICE`]): deleting a bulk load's trash once the store is idle took 20-50 s of CPU on 2 cores, and at
/// normal priority it halved the read-all and tag queries that ran meanwhile (read-all warm 0.84 against 2.0-2.4
/// million events/s). Linux only (a thread's nice value is its own there); elsewhere a no-op.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `gettid` has no preconditions; `setpriority` on our own thread id changes only its nice value.
        let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, TRASH_EMPTY_NICE) };
        if result != 0 {
            tracing::debug!("the trash emptier keeps its priority: {}", std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = TRASH_EMPTY_NICE;
}

/// Deletes `paths` (a directory among them with everything in it) from up to [`TRASH_EMPTY_THREADS_MAX`] threads,
/// each asking `keep_going` before every file, so a close waits for at most one deletion per thread; returns how
/// many went.
fn remove_files(paths: &[PathBuf], keep_going: &(dyn Fn() -> bool + Sync)) -> usize {
    let next = AtomicUsize::new(0);
    let removed = AtomicUsize::new(0);
    let work = || loop {
        if !keep_going() {
            return;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(path) = paths.get(i) else { return };
        let gone = match std::fs::remove_file(path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(_) => std::fs::remove_dir_all(path).is_ok(),
        };
        if gone {
            removed.fetch_add(1, Ordering::Relaxed);
        }
    };
    let threads = TRASH_EMPTY_THREADS_MAX.min(paths.len());
    std::thread::scope(|scope| {
        // A thread that cannot start leaves its share to the others and to this one.
        for _ in 1..threads {
            let _ = std::thread::Builder::new().name("opossum-trash-rm".into()).spawn_scoped(scope, work);
        }
        work();
    });
    removed.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{ThreadPoolIo, WriteMode};

    fn files_in(dir: &Path) -> Vec<Vec<u8>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().unwrap().is_dir() {
                found.extend(files_in(&entry.path()));
            } else {
                found.push(std::fs::read(entry.path()).unwrap());
            }
        }
        found
    }

    fn replace(trash: &Trash, io: &dyn BatchIo, path: &Path, bytes: &[u8], durable: bool) {
        trash.write_files(io, &[FileWrite { path, bytes, mode: WriteMode::Replace }], durable).unwrap();
    }

    #[test]
    fn a_replaced_file_stays_in_the_trash_until_it_is_emptied_and_a_pinned_generation_is_never_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let io = ThreadPoolIo::new(2);
        let trash = Trash::new(&layout);
        let target = dir.path().join("Tags.json");
        // A new file: nothing to keep.
        replace(&trash, &io, &target, b"old", true);
        assert_eq!(files_in(&layout.trash()), Vec::<Vec<u8>>::new());
        replace(&trash, &io, &target, b"new", false);
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        let swaps = cfg!(all(target_os = "linux", target_env = "gnu"));
        let kept = if swaps { vec![b"old".to_vec()] } else { vec![] };
        assert_eq!(files_in(&layout.trash()), kept, "the old contents wait in the trash");
        // A write in progress pins its generation: neither the emptier nor a close deletes its temporaries.
        let pin = trash.pin().unwrap();
        std::fs::write(pin.dir.join("temporary"), b"being written").unwrap();
        let (current, pinned) = trash.next_generation();
        assert_ne!(current, pin.generation, "the emptier starts a new generation");
        assert!(trash.empty_others(current, &pinned, None, &mut Budget::All));
        let mut left = kept.clone();
        left.push(b"being written".to_vec());
        left.sort();
        let mut found = files_in(&layout.trash());
        found.sort();
        assert_eq!(found, left, "the pinned generation is left whole");
        drop(pin);
        trash.close(None);
        assert_eq!(files_in(&layout.trash()), Vec::<Vec<u8>>::new(), "a close empties the trash");
        assert_eq!(trash.emptied(), left.len() as u64);
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
    }

    #[test]
    fn a_busy_stores_trash_is_emptied_at_the_busy_rate_and_an_idle_or_overfull_ones_at_once() {
        let half = Duration::from_millis(500);
        assert_eq!(emptying_budget(None, 10, half), Budget::All, "nothing written through the trash yet");
        assert_eq!(emptying_budget(Some(TRASH_EMPTY_IDLE_MIN), 10, half), Budget::All, "idle");
        assert_eq!(
            emptying_budget(Some(Duration::ZERO), 10, half),
            Budget::Files(TRASH_EMPTY_BUSY_FILES_PER_SEC_MAX / 2)
        );
        assert_eq!(emptying_budget(Some(Duration::ZERO), 10, Duration::ZERO), Budget::Files(1), "a busy trash shrinks");
        assert_eq!(
            emptying_budget(Some(Duration::ZERO), TRASH_DEFERRED_FILES_MAX + 1, half),
            Budget::All,
            "over the cap"
        );

        // Ten files replaced through the trash: it holds their old contents (where names can be swapped) and counts
        // ten; a round with a budget of three deletes three, a round with no budget the rest.
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let io = ThreadPoolIo::new(2);
        let trash = Trash::new(&layout);
        let targets: Vec<PathBuf> = (0..10).map(|i| dir.path().join(format!("t{i}.json"))).collect();
        for target in &targets {
            std::fs::write(target, b"old").unwrap();
            replace(&trash, &io, target, b"new", false);
        }
        assert_eq!(trash.deferred_files(), 10);
        if !cfg!(all(target_os = "linux", target_env = "gnu")) {
            // Elsewhere a replace swaps nothing into the trash: the rounds below would have nothing to delete.
            return;
        }
        assert_eq!(files_in(&layout.trash()).len(), 10);
        let (current, pinned) = trash.next_generation();
        assert!(!trash.empty_others(current, &pinned, None, &mut Budget::Files(3)), "the budget ran out first");
        assert_eq!(files_in(&layout.trash()).len(), 7);
        assert_eq!(trash.deferred_files(), 7);
        assert!(trash.empty_others(current, &pinned, None, &mut Budget::All));
        assert_eq!(files_in(&layout.trash()).len(), 0);
        assert_eq!(trash.deferred_files(), 0, "an emptied generation counts nothing");
        for target in &targets {
            assert_eq!(std::fs::read(target).unwrap(), b"new");
        }
    }

    #[test]
    fn the_emptier_deletes_what_an_earlier_run_left_and_junk_of_any_name() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let old = layout.trash_generation(7);
        std::fs::create_dir_all(old.join("nested")).unwrap();
        for i in 0..3 * TRASH_EMPTY_BATCH_FILES_MAX / 2 {
            std::fs::write(old.join(format!("f{i}")), b"x").unwrap();
        }
        std::fs::write(old.join("nested").join("g"), b"y").unwrap();
        std::fs::write(layout.trash().join("stray file"), b"z").unwrap();
        std::fs::create_dir_all(layout.trash().join("not a generation")).unwrap();
        let trash = Arc::new(Trash::new(&layout));
        let emptier = trash.spawn_emptier().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::read_dir(layout.trash()).unwrap().next().is_some() {
            assert!(Instant::now() < deadline, "the emptier never emptied the trash");
            std::thread::sleep(Duration::from_millis(10));
        }
        trash.close(Some(emptier));
        assert!(trash.emptied() > TRASH_EMPTY_BATCH_FILES_MAX as u64);
    }

    /// Every file under `dir`, recursively, by identity: inode number and birth time (a new inode that got a freed
    /// inode's number is not the same file).
    #[cfg(unix)]
    fn inodes_under(dir: &Path) -> std::collections::BTreeSet<(u64, Option<std::time::SystemTime>)> {
        use std::os::unix::fs::MetadataExt;
        let mut found = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                found.extend(inodes_under(&entry.path()));
            } else {
                found.insert((meta.ino(), meta.created().ok()));
            }
        }
        found
    }

    /// `round`'s bytes for file `i`: lengths differ from round to round, so a reused spare must grow or shrink.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn round_bytes(round: usize, i: usize) -> Vec<u8> {
        format!("[{}{round}]", format!("{i},").repeat(1 + (round * 7 + i) % 5)).into_bytes()
    }

    /// Replaces (or creates) every one of `targets` with `round`'s bytes through the spares.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn recycle_round(trash: &Trash, io: &dyn BatchIo, targets: &[PathBuf], round: usize) {
        let bytes: Vec<Vec<u8>> = (0..targets.len()).map(|i| round_bytes(round, i)).collect();
        let writes: Vec<FileWrite<'_>> = targets
            .iter()
            .zip(&bytes)
            .map(|(path, bytes)| FileWrite { path, bytes, mode: WriteMode::Replace })
            .collect();
        trash.write_files_recycling(io, &writes).unwrap();
        for (target, bytes) in targets.iter().zip(&bytes) {
            assert_eq!(&std::fs::read(target).unwrap(), bytes, "round {round}: {}", target.display());
        }
    }

    /// Once the first replacement has swapped the old files out, later replacements of the same files write into
    /// those inodes: the tree and the trash hold the same inodes after two more rounds, none created or freed.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn replacing_the_same_files_again_reuses_the_inodes_earlier_swaps_left_and_creates_none() {
        let mut backends: Vec<Box<dyn BatchIo>> = vec![Box::new(ThreadPoolIo::new(2))];
        // Both backends write through `io::commit::CommitWriter`; io_uring where this kernel gives it.
        backends
            .extend(crate::io::uring::UringIo::new(Default::default()).ok().map(|io| Box::new(io) as Box<dyn BatchIo>));
        for io in backends {
            let dir = tempfile::tempdir().unwrap();
            let layout = Layout::new(dir.path());
            let tags = dir.path().join("Tags");
            std::fs::create_dir_all(&tags).unwrap();
            let targets: Vec<PathBuf> = (0..20).map(|i| tags.join(format!("t_{i}.json"))).collect();
            let trash = Trash::new(&layout);
            recycle_round(&trash, io.as_ref(), &targets, 0);
            recycle_round(&trash, io.as_ref(), &targets, 1);
            let warm = inodes_under(dir.path());
            let created = trash.spares().created();
            assert_eq!(trash.spares().idle(), targets.len(), "each swap left a spare");
            for round in 2..5 {
                recycle_round(&trash, io.as_ref(), &targets, round);
                assert_eq!(inodes_under(dir.path()), warm, "round {round}: an inode was created or freed");
            }
            assert_eq!(trash.spares().created(), created, "no temporary created once the spares are warm");
            assert_eq!(trash.spares().reused(), 3 * targets.len() as u64);
            assert_eq!(trash.deferred_files(), 0, "nothing went to the emptier");
            trash.close(None);
            assert_eq!(files_in(&layout.trash()), Vec::<Vec<u8>>::new(), "a close deletes the spares");
        }
    }

    /// A reader that holds a replaced file open (a lockless .NET reader) reads its old bytes, unchanged, however
    /// often the files are replaced after it: its inode is never overwritten as a spare (a write lease fails on it),
    /// it goes to the emptier instead.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_reader_holding_a_replaced_file_keeps_reading_its_old_bytes_through_later_replacements() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let io = ThreadPoolIo::new(2);
        let trash = Trash::new(&layout);
        let targets: Vec<PathBuf> = (0..8).map(|i| dir.path().join(format!("t_{i}.json"))).collect();
        recycle_round(&trash, &io, &targets, 0);
        recycle_round(&trash, &io, &targets, 1);
        let reader = std::fs::File::open(&targets[3]).unwrap();
        let held = round_bytes(1, 3);
        for round in 2..8 {
            recycle_round(&trash, &io, &targets, round);
            let mut found = vec![0; held.len() + 16];
            let n = reader.read_at(&mut found, 0).unwrap();
            assert_eq!(&found[..n], &held[..], "round {round}: the reader's file was overwritten");
        }
        assert_eq!(trash.spares().sent_to_trash(), 1, "the held spare went to the emptier");
        assert_eq!(trash.deferred_files(), 1);
        assert_eq!(trash.spares().idle(), targets.len(), "a new temporary took its place in the pool");
        drop(reader);
        trash.close(None);
    }

    /// A close waits for at most one deletion per emptier thread: every file is deleted only after the emptier was
    /// told to keep going (`remove_files` asks before each one).
    #[test]
    fn the_emptier_asks_before_every_file_so_a_close_stops_it_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..100).map(|i| dir.path().join(format!("f{i}"))).collect();
        for path in &paths {
            std::fs::write(path, b"x").unwrap();
        }
        let allowed = AtomicUsize::new(10);
        let keep_going = || allowed.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        assert_eq!(remove_files(&paths, &keep_going), 10, "one file per yes");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 90);
        assert_eq!(remove_files(&paths, &|| true), 90);
    }

    /// The emptier runs at the lowest CPU priority, so deleting a bulk load's trash never slows the reads beside it.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_emptier_thread_runs_at_the_lowest_cpu_priority() {
        let dir = tempfile::tempdir().unwrap();
        let trash = Arc::new(Trash::new(&Layout::new(dir.path())));
        let emptier = trash.spawn_emptier().unwrap();
        // The nice value of the thread named `opossum-trash` (field 19 of its `stat`; 17th after the name).
        let nice_of_emptier = || -> Option<i32> {
            for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
                let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                if comm.trim() == "opossum-trash" {
                    let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
                    let after_name = &stat[stat.rfind(')')? + 2..];
                    return after_name.split(' ').nth(16)?.parse().ok();
                }
            }
            None
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while nice_of_emptier() != Some(TRASH_EMPTY_NICE) {
            assert!(Instant::now() < deadline, "the emptier's nice value: {:?}", nice_of_emptier());
            std::thread::sleep(Duration::from_millis(10));
        }
        trash.close(Some(emptier));
    }
}
