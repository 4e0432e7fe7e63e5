//! io_uring backend: batch reads of many small files through one ring per worker thread.
//!
//! # Read engine
//! A batch is split between up to `rings` workers (the calling thread plus scoped helper threads), each owning one
//! ring. Workers claim request indices from a shared cursor in small chunks, so a slow (cold) region of the batch
//! never leaves the other ring idle. Every ring keeps `depth` files in flight, each file in a *slot* that walks:
//!
//! ```text
//! openat ──► read(first 4 KiB buffer) ══hardlink══► close ──► slot free
//!                  └─ buffer filled? ─► (after the close) openat again ─► read … until EOF ─► close
//! ```
//!
//! Opens are submitted unlinked (a linked open→read→close chain serialises on io-wq when the open blocks, which
//! measured ~3x slower cold); once an open completes its read and close are submitted together as a hard-linked
//! pair, so a small file costs two round trips. Buffered reads of regular files are retried by the kernel until
//! they are complete, so a short first read means end of file; a file that fills the first buffer is read again
//! until `read` returns 0.
//!
//! Descriptors: each slot holds at most one descriptor, so a ring holds at most `depth` descriptors and a
//! backend at most `rings × depth ≤` [`MAX_FDS_IN_FLIGHT`], whatever the batch size. With
//! `direct_descriptors` the files are opened into the ring's fixed file table (slot *i* → fixed index *i*) and
//! take no process descriptors at all.
//!
//! Memory: the first reads land in a per-ring buffer of `depth × 4 KiB` (registered with the kernel when
//! `registered_buffers` is set) and are copied out at their exact size; files larger than 4 KiB grow their own
//! buffer, and a ring stops starting new files while those buffers exceed [`MAX_BYTES_IN_FLIGHT_PER_RING`].
//!
//! Writes go through the thread pool's blocking protocol (`ThreadPoolIo::write_files`): group commits are
//! a handful of files dominated by fsync, where a ring measured no gain (see docs/io-engine.md).

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use super::threads::{read_file, FsyncRunner, SyncTarget, ThreadPoolIo, THREADS_DEFAULT};
use super::{BatchIo, FileWrite, IoError, IoOp};

/// Bytes of the first read of every file; event files are 300–800 B, so almost every file is read in one go.
pub const FIRST_READ_BYTES: usize = 4096;
/// Upper bound on descriptors (plain or direct) one `UringIo` keeps open at once, over all its rings. The process
/// limit here is 20,000 and the store, the server and other backends need their own.
pub const MAX_FDS_IN_FLIGHT: usize = 4096;
/// Per ring: a ring starts no new file while the grown buffers of large files in flight exceed this (a single
/// file larger than the limit is still read whole).
pub const MAX_BYTES_IN_FLIGHT_PER_RING: usize = 64 << 20;
/// A helper ring (and thread) is only started for every this many files of a batch; smaller batches run on the
/// calling thread alone, where a thread spawn would cost more than it saves.
pub const MIN_FILES_PER_RING: usize = 128;
/// Request indices a ring claims from the shared cursor at once.
const CLAIM_FILES: usize = 32;
/// Batches at least this large open files relative to a cached directory descriptor (shorter path walks).
const RELATIVE_OPEN_MIN_FILES: usize = 64;
/// At most this many directory descriptors per ring and batch for relative opens; further directories use full paths.
const MAX_DIR_FDS: usize = 16;

/// Tuning knobs of the io_uring backend. `Default` is the measured best on the 2-core dev machine.
#[derive(Debug, Clone)]
pub struct UringConfig {
    /// Rings (worker threads, the caller included); 0 = available cores.
    pub rings: usize,
    /// Files in flight per ring.
    pub depth: usize,
    /// Register each ring's first-read buffer with the kernel (`READ_FIXED`).
    pub registered_buffers: bool,
    /// Open into the ring's fixed file table instead of the process descriptor table.
    pub direct_descriptors: bool,
    /// Open `dir/name` relative to a per-batch descriptor of `dir` (large batches only).
    pub relative_opens: bool,
    /// `IORING_SETUP_COOP_TASKRUN`: completions of async work run when the worker next enters the kernel
    /// rather than interrupting it.
    pub coop_taskrun: bool,
    /// `io_uring_register_iowq_max_workers` `[bounded, unbounded]`; 0 leaves the kernel default.
    pub iowq_max_workers: [u32; 2],
    /// Durability barriers of write batches (which run on the thread pool's protocol).
    pub sync: super::SyncStrategy,
}

impl Default for UringConfig {
    fn default() -> Self {
        UringConfig {
            rings: 0,
            depth: 128,
            registered_buffers: true,
            direct_descriptors: false,
            relative_opens: true,
            coop_taskrun: true,
            iowq_max_workers: [0, 0],
            sync: super::SyncStrategy::default(),
        }
    }
}

pub struct UringIo {
    rings: Vec<Mutex<Ring>>,
    /// Round-robin start for ring acquisition by concurrent callers.
    next_ring: AtomicUsize,
    config: UringConfig,
    writer: ThreadPoolIo,
}

impl UringIo {
    /// Builds the rings, which doubles as the kernel probe: `io_uring_setup` fails with ENOSYS/EPERM under
    /// seccomp or `kernel.io_uring_disabled`, and kernels lacking an opcode the engine needs are refused, so
    /// `open_backend(Auto)` can fall back to the thread pool.
    pub fn new(config: UringConfig) -> Result<UringIo, IoError> {
        let mut config = config;
        if config.rings == 0 {
            config.rings = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        config.rings = config.rings.clamp(1, 64);
        config.depth = config.depth.clamp(1, (MAX_FDS_IN_FLIGHT / config.rings).max(1));
        let mut rings = Vec::with_capacity(config.rings);
        for _ in 0..config.rings {
            rings.push(Mutex::new(Ring::new(&config).map_err(|e| IoError::new(IoOp::Open, "io_uring", e))?));
        }
        let fsyncs = RingFsyncs::new().map_err(|e| IoError::new(IoOp::Open, "io_uring", e))?;
        let writer = ThreadPoolIo::with_sync_strategy(THREADS_DEFAULT, config.sync).with_fsync_runner(Box::new(fsyncs));
        Ok(UringIo { rings, next_ring: AtomicUsize::new(0), config, writer })
    }

    /// The effective configuration (rings and depth resolved and clamped).
    pub fn config(&self) -> &UringConfig {
        &self.config
    }

    /// Locks up to `want` idle rings (at least one, waiting for it if all are busy). Poisoned rings are skipped.
    fn acquire(&self, want: usize) -> Vec<MutexGuard<'_, Ring>> {
        let n = self.rings.len();
        let start = self.next_ring.fetch_add(1, Ordering::Relaxed);
        let mut got = Vec::with_capacity(want);
        for k in 0..n {
            if got.len() == want {
                break;
            }
            if let Ok(g) = self.rings[(start + k) % n].try_lock() {
                if !g.broken {
                    got.push(g);
                }
            }
        }
        if got.is_empty() {
            for k in 0..n {
                let g = match self.rings[(start + k) % n].lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                if !g.broken {
                    got.push(g);
                    break;
                }
            }
        }
        got
    }
}

impl BatchIo for UringIo {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn read_files(&self, paths: &[PathBuf]) -> Vec<Result<Vec<u8>, IoError>> {
        if paths.is_empty() {
            return Vec::new();
        }
        let want = paths.len().div_ceil(MIN_FILES_PER_RING).clamp(1, self.rings.len());
        let mut rings = self.acquire(want);
        let results: Vec<OnceLock<Result<Vec<u8>, IoError>>> = (0..paths.len()).map(|_| OnceLock::new()).collect();
        let batch =
            Batch { paths, cursor: AtomicUsize::new(0), results: &results, relative: self.config.relative_opens };
        if let Some((first, rest)) = rings.split_first_mut() {
            std::thread::scope(|s| {
                for ring in rest {
                    let batch = &batch;
                    let ring: &mut Ring = ring;
                    s.spawn(move || ring.read_batch(batch));
                }
                first.read_batch(&batch);
            });
        }
        drop(rings);
        // Every claimed index is filled by its ring (or by the blocking fallback when a ring fails); anything still
        // empty (no usable ring at all) is read here.
        results
            .into_iter()
            .zip(paths)
            .map(|(cell, path)| cell.into_inner().unwrap_or_else(|| read_file(path)))
            .collect()
    }

    fn write_files(&self, files: &[FileWrite<'_>], durable: bool) -> Result<(), IoError> {
        self.writer.write_files(files, durable)
    }
}

/// Fsyncs in one durability barrier submitted to a ring at once (`IORING_OP_FSYNC`), so the kernel's io-wq
/// workers run them in parallel while the caller sleeps in one `io_uring_enter`: no pool of user threads to wake.
/// Each barrier holds the ring's lock; barriers come from one group-committing writer per store.
pub(crate) struct RingFsyncs {
    ring: Mutex<IoUring>,
}

/// Entries of the fsync ring: barriers with more targets are submitted in rounds of this many.
const FSYNC_RING_ENTRIES: u32 = 256;

impl RingFsyncs {
    fn new() -> std::io::Result<RingFsyncs> {
        Ok(RingFsyncs { ring: Mutex::new(IoUring::new(FSYNC_RING_ENTRIES)?) })
    }

    /// Submits one round and waits for all of its completions; `Err` only when the ring itself failed.
    fn round(ring: &mut IoUring, fds: &[(i32, bool)], results: &mut Vec<i32>) -> std::io::Result<()> {
        for (i, &(fd, datasync)) in fds.iter().enumerate() {
            let flags = if datasync { types::FsyncFlags::DATASYNC } else { types::FsyncFlags::empty() };
            let entry = opcode::Fsync::new(types::Fd(fd)).flags(flags).build().user_data(i as u64);
            // SAFETY: an fsync entry points at no user memory; its descriptor stays open until this call has reaped
            // every completion (the caller owns it for longer), and a stale descriptor could only fsync another file.
            unsafe { ring.submission().push(&entry) }.expect("a round never exceeds the ring");
        }
        results.clear();
        results.resize(fds.len(), i32::MIN);
        let mut done = 0;
        while done < fds.len() {
            match ring.submit_and_wait(fds.len() - done) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)) => {}
                Err(e) => return Err(e),
            }
            for cqe in ring.completion() {
                results[cqe.user_data() as usize] = cqe.result();
                done += 1;
            }
        }
        Ok(())
    }
}

impl FsyncRunner for RingFsyncs {
    fn sync_all(&self, targets: &[SyncTarget<'_>]) -> Result<(), IoError> {
        use std::os::fd::AsRawFd;
        // Directories are opened here and closed when `dirs` drops, after every completion is reaped.
        let mut dirs = Vec::new();
        for t in targets {
            if let SyncTarget::Dir(dir) = t {
                dirs.push(std::fs::File::open(dir).map_err(|e| IoError::new(IoOp::FsyncDir, *dir, e))?);
            }
        }
        let mut dir_fds = dirs.iter();
        let fds: Vec<(i32, bool)> = targets
            .iter()
            .map(|t| match t {
                SyncTarget::File(f, _) => (f.as_raw_fd(), true),
                SyncTarget::Dir(_) => (dir_fds.next().expect("one per directory").as_raw_fd(), false),
            })
            .collect();
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let mut results = Vec::with_capacity(fds.len().min(FSYNC_RING_ENTRIES as usize));
        for (round, chunk) in fds.chunks(FSYNC_RING_ENTRIES as usize).enumerate() {
            let chunk_targets = &targets[round * FSYNC_RING_ENTRIES as usize..][..chunk.len()];
            if let Err(e) = Self::round(&mut ring, chunk, &mut results) {
                // The ring itself failed mid-round. Some fsyncs may have completed with an error we never reaped, and
                // a retried fsync can report success after a failed one lost the data (fsyncgate): fail the barrier
                // (the store poisons itself) and give later barriers a fresh ring.
                if let Ok(fresh) = IoUring::new(FSYNC_RING_ENTRIES) {
                    *ring = fresh;
                }
                let path = match &chunk_targets[0] {
                    SyncTarget::File(_, path) => path,
                    SyncTarget::Dir(dir) => dir,
                };
                return Err(IoError::new(IoOp::Fsync, *path, e));
            }
            for (res, t) in results.iter().zip(chunk_targets) {
                if *res < 0 {
                    let e = std::io::Error::from_raw_os_error(-res);
                    return Err(match t {
                        SyncTarget::File(_, path) => IoError::new(IoOp::Fsync, *path, e),
                        SyncTarget::Dir(dir) => IoError::new(IoOp::FsyncDir, *dir, e),
                    });
                }
            }
        }
        Ok(())
    }
}

/// One `read_files` call shared by its rings.
struct Batch<'a> {
    paths: &'a [PathBuf],
    cursor: AtomicUsize,
    results: &'a [OnceLock<Result<Vec<u8>, IoError>>],
    relative: bool,
}

impl Batch<'_> {
    fn set(&self, idx: usize, r: Result<Vec<u8>, IoError>) {
        let _ = self.results[idx].set(r);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    /// First open submitted.
    Opening,
    /// Hard-linked first read + close submitted.
    Reading,
    /// The first read filled the buffer; waiting for the linked close before reopening.
    NeedReopen,
    /// Reopened to read the rest.
    Reopening,
    /// Reading the rest into `big`.
    ReadingMore,
    /// Final close (after `ReadingMore`) submitted.
    Closing,
}

struct Slot {
    req: usize,
    state: State,
    /// Plain descriptor (unused with direct descriptors).
    fd: i32,
    /// NUL-terminated path (or name relative to `dirfd`) for `openat`.
    cpath: Vec<u8>,
    dirfd: i32,
    /// Buffer of a file larger than the first read.
    big: Vec<u8>,
    /// Whether the read or close CQE (of the hard-linked pair) is still expected.
    read_pending: bool,
    close_pending: bool,
}

const OP_OPEN: u64 = 1;
const OP_READ: u64 = 2;
const OP_CLOSE: u64 = 3;

fn user_data(op: u64, slot: usize) -> u64 {
    (op << 32) | slot as u64
}

struct Ring {
    // Field order matters: `uring` is dropped (the ring closed, its buffer registration and fixed files released)
    // before `first_bufs` and `slots` are freed.
    uring: IoUring,
    /// `depth` buffers of `FIRST_READ_BYTES`, one per slot. Never reallocated while the ring lives.
    first_bufs: Box<[u8]>,
    slots: Vec<Slot>,
    registered_buffers: bool,
    direct: bool,
    /// A batch could not drain its operations: buffers may still be referenced by the kernel, so the ring is never
    /// used again and its memory is leaked on drop.
    broken: bool,
    cqes: Vec<(u64, i32)>,
}

impl Ring {
    fn new(config: &UringConfig) -> std::io::Result<Ring> {
        let depth = config.depth;
        // Per file at most 2 SQEs are queued at once (read + close) and opens for free slots.
        let sq = (depth * 3).next_power_of_two().max(8) as u32;
        let mut builder = IoUring::builder();
        builder.setup_cqsize(sq * 2);
        if config.coop_taskrun {
            builder.setup_coop_taskrun();
        }
        let uring = match builder.build(sq) {
            Ok(u) => u,
            // COOP_TASKRUN needs 5.19; retry without it before giving up.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && config.coop_taskrun => IoUring::new(sq)?,
            Err(e) => return Err(e),
        };
        let mut probe = Probe::new();
        uring.submitter().register_probe(&mut probe)?;
        for (code, name) in [
            (opcode::OpenAt::CODE, "openat"),
            (opcode::Read::CODE, "read"),
            (opcode::Close::CODE, "close"),
            (opcode::ReadFixed::CODE, "read_fixed"),
        ] {
            if !probe.is_supported(code) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    format!("io_uring lacks the {name} operation"),
                ));
            }
        }
        if config.iowq_max_workers != [0, 0] {
            let mut max = config.iowq_max_workers;
            uring.submitter().register_iowq_max_workers(&mut max)?;
        }
        let mut first_bufs = vec![0u8; depth * FIRST_READ_BYTES].into_boxed_slice();
        let mut registered_buffers = false;
        if config.registered_buffers {
            let iov = libc::iovec { iov_base: first_bufs.as_mut_ptr().cast(), iov_len: first_bufs.len() };
            // SAFETY: `first_bufs` is a heap allocation owned by this `Ring` and never reallocated; field order drops
            // `uring` (which releases the registration) before `first_bufs`, so the kernel never holds a
            // registration to freed memory.
            registered_buffers = unsafe { uring.submitter().register_buffers(&[iov]) }.is_ok();
        }
        let direct = config.direct_descriptors && uring.submitter().register_files_sparse(depth as u32).is_ok();
        let slots = (0..depth)
            .map(|_| Slot {
                req: 0,
                state: State::Free,
                fd: -1,
                cpath: Vec::with_capacity(128),
                dirfd: libc::AT_FDCWD,
                big: Vec::new(),
                read_pending: false,
                close_pending: false,
            })
            .collect();
        Ok(Ring {
            uring,
            first_bufs,
            slots,
            registered_buffers,
            direct,
            broken: false,
            cqes: Vec::with_capacity(sq as usize * 2),
        })
    }

    /// Reads claimed files of `batch` until the cursor is exhausted. Never returns with an operation in flight.
    fn read_batch(&mut self, batch: &Batch<'_>) {
        let mut pump = Pump {
            ring: self,
            batch,
            in_flight: 0,
            free: Vec::new(),
            claimed: 0..0,
            exhausted: false,
            big_bytes: 0,
            dirs: Vec::new(),
        };
        if let Err(e) = pump.run() {
            tracing::warn!("io_uring read failed, finishing the batch with blocking reads: {e}");
            pump.abandon();
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.broken {
            // The kernel may still write into these buffers: leak them rather than free memory it references.
            std::mem::forget(std::mem::take(&mut self.slots));
            std::mem::forget(std::mem::take(&mut self.first_bufs));
        }
    }
}

/// The state of one ring during one batch. Its `Drop` waits for every operation still in flight, so no buffer is
/// freed or reused under the kernel, even when a panic unwinds through the loop.
struct Pump<'r, 'b> {
    ring: &'r mut Ring,
    batch: &'r Batch<'b>,
    /// CQEs still expected.
    in_flight: usize,
    free: Vec<usize>,
    claimed: std::ops::Range<usize>,
    exhausted: bool,
    /// Capacity of grown buffers of large files in flight.
    big_bytes: usize,
    /// (directory path, O_PATH descriptor) opened for relative opens during this batch.
    dirs: Vec<(Vec<u8>, i32)>,
}

impl Pump<'_, '_> {
    fn run(&mut self) -> std::io::Result<()> {
        let depth = self.ring.slots.len();
        self.free = (0..depth).rev().collect();
        let relative = self.batch.relative && self.batch.paths.len() >= RELATIVE_OPEN_MIN_FILES;
        loop {
            while !self.exhausted && self.big_bytes <= MAX_BYTES_IN_FLIGHT_PER_RING && !self.free.is_empty() {
                let Some(req) = self.next_request() else {
                    self.exhausted = true;
                    break;
                };
                let slot = self.free.pop().expect("checked non-empty");
                self.start_open(slot, req, relative, false)?;
            }
            if self.in_flight == 0 {
                return Ok(());
            }
            self.submit_and_wait(1)?;
            self.reap()?;
        }
    }

    fn next_request(&mut self) -> Option<usize> {
        if self.claimed.is_empty() {
            let n = self.batch.paths.len();
            let start = self.batch.cursor.fetch_add(CLAIM_FILES, Ordering::Relaxed);
            if start >= n {
                return None;
            }
            self.claimed = start..(start + CLAIM_FILES).min(n);
        }
        self.claimed.next()
    }

    /// Queues the `openat` of request `req` into `slot` (a reopen keeps the slot's path).
    fn start_open(&mut self, slot: usize, req: usize, relative: bool, reopen: bool) -> std::io::Result<()> {
        if !reopen {
            let path = &self.batch.paths[req];
            let bytes = path.as_os_str().as_bytes();
            if bytes.contains(&0) {
                let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte");
                self.batch.set(req, Err(IoError::new(IoOp::Open, path, e)));
                self.free.push(slot);
                return Ok(());
            }
            let (dirfd, name) = if relative { self.split_relative(bytes) } else { (libc::AT_FDCWD, bytes) };
            let s = &mut self.ring.slots[slot];
            s.req = req;
            s.dirfd = dirfd;
            s.cpath.clear();
            s.cpath.extend_from_slice(name);
            s.cpath.push(0);
            s.state = State::Opening;
        } else {
            self.ring.slots[slot].state = State::Reopening;
        }
        let s = &self.ring.slots[slot];
        let mut open = opcode::OpenAt::new(types::Fd(s.dirfd), s.cpath.as_ptr().cast());
        if self.ring.direct {
            // Direct descriptors are never inherited; the kernel rejects O_CLOEXEC for them.
            let target = types::DestinationSlot::try_from_slot_target(slot as u32).expect("slot < 2^32");
            open = open.flags(libc::O_RDONLY | libc::O_NOCTTY).file_index(Some(target));
        } else {
            open = open.flags(libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY);
        }
        let entry = open.build().user_data(user_data(OP_OPEN, slot));
        // SAFETY: the path pointer is the slot's `cpath`, which is not touched again until this open's CQE is reaped
        // (the slot is busy until then), and slots outlive every operation (`Pump::drop` drains the ring). The
        // directory descriptor stays open until the batch has drained (`Pump::drop` closes it after draining).
        unsafe { self.push(&[entry]) }?;
        self.in_flight += 1;
        Ok(())
    }

    /// `(dirfd, name)` for a path whose directory has (or gets) a descriptor in this batch; else the full path.
    fn split_relative<'p>(&mut self, bytes: &'p [u8]) -> (i32, &'p [u8]) {
        let Some(pos) = bytes.iter().rposition(|&b| b == b'/') else { return (libc::AT_FDCWD, bytes) };
        let (dir, name) = (&bytes[..pos.max(1)], &bytes[pos + 1..]);
        if name.is_empty() {
            return (libc::AT_FDCWD, bytes);
        }
        if let Some((_, fd)) = self.dirs.iter().rev().find(|(d, _)| d.as_slice() == dir) {
            return (*fd, name);
        }
        if self.dirs.len() >= MAX_DIR_FDS {
            return (libc::AT_FDCWD, bytes);
        }
        let mut c = Vec::with_capacity(dir.len() + 1);
        c.extend_from_slice(dir);
        c.push(0);
        // SAFETY: `c` is a NUL-terminated byte string that lives across the call; the returned descriptor is owned by
        // `self.dirs` and closed in `Pump::drop` after every open using it has completed.
        let fd = unsafe { libc::open(c.as_ptr().cast(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            // Let the full-path open report the error for this file.
            return (libc::AT_FDCWD, bytes);
        }
        c.pop();
        self.dirs.push((c, fd));
        (fd, name)
    }

    /// Queues the hard-linked first read + close of an opened slot.
    fn start_first_read(&mut self, slot: usize) -> std::io::Result<()> {
        let direct = self.ring.direct;
        let s = &self.ring.slots[slot];
        // SAFETY: slot `slot` owns bytes [slot*4K, slot*4K+4K) of `first_bufs`, which is never reallocated.
        let buf = unsafe { self.ring.first_bufs.as_mut_ptr().add(slot * FIRST_READ_BYTES) };
        let len = FIRST_READ_BYTES as u32;
        let (read, close) = match (direct, self.ring.registered_buffers) {
            (true, true) => (
                opcode::ReadFixed::new(types::Fixed(slot as u32), buf, len, 0).build(),
                opcode::Close::new(types::Fixed(slot as u32)).build(),
            ),
            (true, false) => (
                opcode::Read::new(types::Fixed(slot as u32), buf, len).build(),
                opcode::Close::new(types::Fixed(slot as u32)).build(),
            ),
            (false, true) => (
                opcode::ReadFixed::new(types::Fd(s.fd), buf, len, 0).build(),
                opcode::Close::new(types::Fd(s.fd)).build(),
            ),
            (false, false) => {
                (opcode::Read::new(types::Fd(s.fd), buf, len).build(), opcode::Close::new(types::Fd(s.fd)).build())
            }
        };
        // A hard link runs the close even when the read fails or is short, so no descriptor leaks.
        let read = read.flags(squeue::Flags::IO_HARDLINK).user_data(user_data(OP_READ, slot));
        let close = close.user_data(user_data(OP_CLOSE, slot));
        let s = &mut self.ring.slots[slot];
        s.state = State::Reading;
        s.read_pending = true;
        s.close_pending = true;
        // SAFETY: the read targets this slot's region of `first_bufs` (registered as buffer 0 when READ_FIXED is
        // used), which outlives the operation: the slot stays busy until both CQEs are reaped and `Pump::drop`
        // drains the ring before anything is freed. The descriptor is closed only by the linked close.
        unsafe { self.push(&[read, close]) }?;
        self.in_flight += 2;
        Ok(())
    }

    /// Queues a read of the rest of a large file into the slot's growing buffer.
    fn read_more(&mut self, slot: usize) -> std::io::Result<()> {
        let direct = self.ring.direct;
        let s = &mut self.ring.slots[slot];
        if s.big.len() == s.big.capacity() {
            let before = s.big.capacity();
            s.big.reserve(before);
            self.big_bytes += s.big.capacity() - before;
        }
        let off = s.big.len();
        let spare = (s.big.capacity() - off).min(u32::MAX as usize >> 1) as u32;
        // SAFETY: `off <= capacity`, so the pointer is within (or one past) the allocation.
        let buf = unsafe { s.big.as_mut_ptr().add(off) };
        let entry = if direct {
            opcode::Read::new(types::Fixed(slot as u32), buf, spare).offset(off as u64).build()
        } else {
            opcode::Read::new(types::Fd(s.fd), buf, spare).offset(off as u64).build()
        };
        s.state = State::ReadingMore;
        let entry = entry.user_data(user_data(OP_READ, slot));
        // SAFETY: the read writes into the spare capacity of `s.big`, which is neither reallocated nor dropped until
        // this read's CQE is reaped (`big` is only grown here, before submitting), and `Pump::drop` drains the ring
        // before any slot is freed.
        unsafe { self.push(&[entry]) }?;
        self.in_flight += 1;
        Ok(())
    }

    fn close_slot(&mut self, slot: usize) -> std::io::Result<()> {
        let s = &mut self.ring.slots[slot];
        let entry = if self.ring.direct {
            opcode::Close::new(types::Fixed(slot as u32)).build()
        } else {
            opcode::Close::new(types::Fd(s.fd)).build()
        };
        s.state = State::Closing;
        s.close_pending = true;
        // SAFETY: a close references no memory; the descriptor belongs to this slot and nothing else closes it.
        unsafe { self.push(&[entry.user_data(user_data(OP_CLOSE, slot))]) }?;
        self.in_flight += 1;
        Ok(())
    }

    /// Pushes entries, submitting first when the submission queue is full.
    ///
    /// # Safety
    /// Every buffer and path the entries point to must stay valid until their CQEs are reaped.
    unsafe fn push(&mut self, entries: &[squeue::Entry]) -> std::io::Result<()> {
        loop {
            {
                let mut sq = self.ring.uring.submission();
                if sq.capacity() - sq.len() >= entries.len() {
                    // SAFETY: forwarded from the caller's contract.
                    unsafe { sq.push_multiple(entries) }.expect("room checked");
                    return Ok(());
                }
            }
            self.submit_and_wait(0)?;
        }
    }

    fn submit_and_wait(&mut self, want: usize) -> std::io::Result<()> {
        loop {
            match self.ring.uring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The completion queue is backed up: the caller reaps and comes back.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    fn reap(&mut self) -> std::io::Result<()> {
        let mut cqes = std::mem::take(&mut self.ring.cqes);
        cqes.clear();
        cqes.extend(self.ring.uring.completion().map(|c: cqueue::Entry| (c.user_data(), c.result())));
        for &(ud, res) in &cqes {
            self.in_flight -= 1;
            let slot = (ud & 0xffff_ffff) as usize;
            match ud >> 32 {
                OP_OPEN => self.on_open(slot, res)?,
                OP_READ => self.on_read(slot, res)?,
                OP_CLOSE => self.on_close(slot)?,
                _ => unreachable!("unknown user_data {ud:#x}"),
            }
        }
        self.ring.cqes = cqes;
        Ok(())
    }

    fn fail(&mut self, slot: usize, op: IoOp, errno: i32) {
        let req = self.ring.slots[slot].req;
        self.batch.set(req, Err(IoError::new(op, &self.batch.paths[req], std::io::Error::from_raw_os_error(errno))));
    }

    fn release_big(&mut self, slot: usize) -> Vec<u8> {
        let big = std::mem::take(&mut self.ring.slots[slot].big);
        self.big_bytes -= big.capacity();
        big
    }

    fn on_open(&mut self, slot: usize, res: i32) -> std::io::Result<()> {
        let reopen = self.ring.slots[slot].state == State::Reopening;
        if res < 0 {
            self.fail(slot, IoOp::Open, -res);
            if reopen {
                self.release_big(slot);
            }
            self.ring.slots[slot].state = State::Free;
            self.free.push(slot);
            return Ok(());
        }
        self.ring.slots[slot].fd = res;
        if reopen {
            self.read_more(slot)
        } else {
            self.start_first_read(slot)
        }
    }

    fn on_read(&mut self, slot: usize, res: i32) -> std::io::Result<()> {
        match self.ring.slots[slot].state {
            State::Reading => {
                self.ring.slots[slot].read_pending = false;
                if res < 0 {
                    // With a hard link the close still runs; -ECANCELED cannot happen for the head of the link.
                    self.fail(slot, IoOp::Read, -res);
                } else if (res as usize) < FIRST_READ_BYTES {
                    let start = slot * FIRST_READ_BYTES;
                    let data = self.ring.first_bufs[start..start + res as usize].to_vec();
                    self.batch.set(self.ring.slots[slot].req, Ok(data));
                } else {
                    // Filled the first buffer: the file may be larger. Reopen after the linked close has completed.
                    let start = slot * FIRST_READ_BYTES;
                    let mut big = Vec::with_capacity(FIRST_READ_BYTES * 4);
                    big.extend_from_slice(&self.ring.first_bufs[start..start + FIRST_READ_BYTES]);
                    self.big_bytes += big.capacity();
                    self.ring.slots[slot].big = big;
                    self.ring.slots[slot].state = State::NeedReopen;
                }
                self.maybe_free(slot)
            }
            State::ReadingMore => {
                if res < 0 {
                    self.fail(slot, IoOp::Read, -res);
                    self.release_big(slot);
                    return self.close_slot(slot);
                }
                if res == 0 {
                    let mut data = self.release_big(slot);
                    if data.capacity() > data.len() + data.len() / 4 {
                        data.shrink_to_fit();
                    }
                    self.batch.set(self.ring.slots[slot].req, Ok(data));
                    return self.close_slot(slot);
                }
                let s = &mut self.ring.slots[slot];
                // SAFETY: the kernel wrote `res` bytes into the spare capacity starting at `len`.
                unsafe { s.big.set_len(s.big.len() + res as usize) };
                self.read_more(slot)
            }
            other => unreachable!("read completion in state {other:?}"),
        }
    }

    fn on_close(&mut self, slot: usize) -> std::io::Result<()> {
        // A failed close of a read-only file loses nothing; the descriptor is released either way.
        let s = &mut self.ring.slots[slot];
        s.close_pending = false;
        if s.state == State::Closing {
            s.state = State::Free;
            self.free.push(slot);
            return Ok(());
        }
        self.maybe_free(slot)
    }

    /// After either CQE of the hard-linked read + close: once both are in, free the slot or reopen a large file.
    fn maybe_free(&mut self, slot: usize) -> std::io::Result<()> {
        let s = &self.ring.slots[slot];
        if s.read_pending || s.close_pending {
            return Ok(());
        }
        if s.state == State::NeedReopen {
            let req = s.req;
            return self.start_open(slot, req, false, true);
        }
        self.ring.slots[slot].state = State::Free;
        self.free.push(slot);
        Ok(())
    }

    /// After a ring error: drain what is in flight (done by `drop`), then finish every claimed but unfinished
    /// request with blocking reads and stop claiming (other rings keep going; the caller reads leftovers).
    fn abandon(&mut self) {
        self.drain();
        for s in 0..self.ring.slots.len() {
            if self.ring.slots[s].state != State::Free {
                let req = self.ring.slots[s].req;
                self.batch.set(req, read_file(&self.batch.paths[req]));
                self.ring.slots[s].state = State::Free;
                self.ring.slots[s].big = Vec::new();
            }
        }
        self.big_bytes = 0;
        for req in self.claimed.clone() {
            self.batch.set(req, read_file(&self.batch.paths[req]));
        }
        self.claimed = 0..0;
        self.exhausted = true;
    }

    /// Waits until no operation is in flight. If the kernel refuses, marks the ring broken (its buffers leak).
    fn drain(&mut self) {
        while self.in_flight > 0 {
            match self.ring.uring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)) => {}
                Err(_) => {
                    self.ring.broken = true;
                    return;
                }
            }
            let ring = &mut *self.ring;
            for c in ring.uring.completion() {
                self.in_flight -= 1;
                // An open that succeeded while draining: close it synchronously (plain descriptors) so none leaks.
                // (A direct descriptor stays in the fixed table and is replaced by the slot's next open.)
                if c.user_data() >> 32 == OP_OPEN && c.result() >= 0 && !ring.direct {
                    // SAFETY: the descriptor was just returned to us by the kernel and is owned by nobody else.
                    unsafe { libc::close(c.result()) };
                }
            }
        }
    }
}

impl Drop for Pump<'_, '_> {
    fn drop(&mut self) {
        // On the normal path `in_flight` is already 0; on an error or a panic this waits for the kernel to finish
        // with every buffer before the slots can be reused or freed.
        self.drain();
        if std::thread::panicking() && self.in_flight == 0 {
            for s in &mut self.ring.slots {
                s.state = State::Free;
                s.big = Vec::new();
            }
        }
        for (_, fd) in self.dirs.drain(..) {
            // SAFETY: `fd` was opened by `split_relative`, is owned by `dirs`, and no open using it is in flight.
            unsafe { libc::close(fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::WriteMode;
    use std::path::Path;

    fn write_files(dir: &Path, n: usize, size: impl Fn(usize) -> usize) -> Vec<PathBuf> {
        (0..n)
            .map(|i| {
                let p = dir.join(format!("{i:010}.json"));
                let len = size(i);
                let body: Vec<u8> = (0..len).map(|k| b'a' + ((i + k) % 26) as u8).collect();
                std::fs::write(&p, body).unwrap();
                p
            })
            .collect()
    }

    fn expected(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|k| b'a' + ((i + k) % 26) as u8).collect()
    }

    fn uring() -> UringIo {
        UringIo::new(UringConfig::default()).expect("io_uring available on the dev machine")
    }

    fn small_configs() -> Vec<UringConfig> {
        let base = UringConfig { rings: 2, depth: 8, ..UringConfig::default() };
        vec![
            base.clone(),
            UringConfig { direct_descriptors: true, registered_buffers: false, ..base.clone() },
            UringConfig { relative_opens: false, coop_taskrun: false, ..base },
        ]
    }

    /// The parity checks every backend must pass: order, per-file errors with paths, sizes 0..1 MiB.
    fn parity_checks(io: &dyn BatchIo) {
        let dir = tempfile::tempdir().unwrap();
        let sizes = [0usize, 1, 300, 799, 4095, 4096, 4097, 12_288, 1 << 20, 3 * (1 << 20) + 5];
        let mut paths = write_files(dir.path(), 300, |i| sizes[i % sizes.len()]);
        let missing = dir.path().join("missing.json");
        paths.insert(7, missing.clone());
        let not_dir = dir.path().join("0000000003.json/x");
        paths.push(not_dir.clone());
        let results = io.read_files(&paths);
        assert_eq!(results.len(), paths.len(), "{}", io.name());
        for (k, (p, r)) in paths.iter().zip(&results).enumerate() {
            if *p == missing || *p == not_dir {
                let e = r.as_ref().expect_err("missing file must fail");
                assert_eq!(&e.path, p, "{}", io.name());
                let want = if *p == missing { std::io::ErrorKind::NotFound } else { std::io::ErrorKind::NotADirectory };
                assert_eq!(e.kind(), want, "{}: {e}", io.name());
                assert!(e.to_string().contains(p.to_str().unwrap()));
                continue;
            }
            let i = if k < 7 { k } else { k - 1 };
            let data = r.as_ref().unwrap_or_else(|e| panic!("{}: {e}", io.name()));
            assert_eq!(data.len(), sizes[i % sizes.len()], "{} file {i}", io.name());
            assert!(*data == expected(i, data.len()), "{}: wrong bytes for file {i}", io.name());
        }
        assert!(io.read_files(&[]).is_empty());
        let one = io.read_files(&paths[..1]);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].as_ref().unwrap().len(), 0);
        // Writes obey the shared contract.
        let target = dir.path().join("w.json");
        io.write_files(&[FileWrite { path: &target, bytes: b"x", mode: WriteMode::CreateNew }], true).unwrap();
        let again = io.write_files(&[FileWrite { path: &target, bytes: b"y", mode: WriteMode::CreateNew }], false);
        assert_eq!(again.unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&target).unwrap(), b"x");
    }

    #[test]
    fn parity_between_thread_pool_and_uring() {
        parity_checks(&ThreadPoolIo::new(4));
        parity_checks(&uring());
        for c in small_configs() {
            parity_checks(&UringIo::new(c).unwrap());
        }
    }

    #[test]
    fn results_in_request_order_with_shuffled_requests() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_files(dir.path(), 2000, |i| 300 + i % 500);
        let mut order: Vec<usize> = (0..paths.len()).collect();
        // A fixed permutation (reverse interleaved) so completion order differs from request order.
        order.sort_by_key(|&i| (i % 7, std::cmp::Reverse(i)));
        let shuffled: Vec<PathBuf> = order.iter().map(|&i| paths[i].clone()).collect();
        for io in [uring()].into_iter().chain(small_configs().into_iter().map(|c| UringIo::new(c).unwrap())) {
            let results = io.read_files(&shuffled);
            for (r, &i) in results.iter().zip(&order) {
                assert_eq!(r.as_ref().unwrap(), &expected(i, 300 + i % 500), "file {i}");
            }
        }
    }

    #[test]
    fn missing_file_fails_only_its_entry_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = write_files(dir.path(), 500, |_| 400);
        let gone = dir.path().join("gone.json");
        paths[250] = gone.clone();
        let results = uring().read_files(&paths);
        for (i, r) in results.iter().enumerate() {
            if i == 250 {
                let e = r.as_ref().unwrap_err();
                assert_eq!(e.path, gone);
                assert_eq!(e.op, IoOp::Open);
                assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
            } else {
                assert_eq!(r.as_ref().unwrap().len(), 400);
            }
        }
        let e = uring().read_files(&[PathBuf::from("rel\0ative")]).pop().unwrap().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn large_and_empty_files_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = [0usize, 4096, 4097, 1 << 20, 5 * (1 << 20) + 17, 0, 10];
        let paths = write_files(dir.path(), sizes.len(), |i| sizes[i]);
        for io in [uring()].into_iter().chain(small_configs().into_iter().map(|c| UringIo::new(c).unwrap())) {
            for (i, r) in io.read_files(&paths).iter().enumerate() {
                let data = r.as_ref().unwrap();
                assert_eq!(data.len(), sizes[i]);
                assert!(*data == expected(i, sizes[i]));
            }
        }
    }

    #[test]
    fn batch_beyond_fd_limit_and_ring_size() {
        let dir = tempfile::tempdir().unwrap();
        let n = 25_000; // > the 20,000 open-file limit and far more than any ring's depth
        let paths = write_files(dir.path(), n, |i| 300 + i % 500);
        let fds_before = std::fs::read_dir("/proc/self/fd").unwrap().count();
        for io in [uring(), UringIo::new(UringConfig { direct_descriptors: true, ..UringConfig::default() }).unwrap()] {
            let results = io.read_files(&paths);
            assert_eq!(results.len(), n);
            for (i, r) in results.iter().enumerate() {
                assert_eq!(r.as_ref().unwrap().len(), 300 + i % 500, "file {i}");
            }
            assert_eq!(results[12_345].as_ref().unwrap(), &expected(12_345, 300 + 12_345 % 500));
        }
        // No descriptor leaks (tests run in parallel threads, so allow a little noise from other tests).
        let fds_after = std::fs::read_dir("/proc/self/fd").unwrap().count();
        assert!(fds_after < fds_before + 64, "{fds_before} -> {fds_after} descriptors");
    }

    #[test]
    fn concurrent_callers_share_the_rings() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_files(dir.path(), 3000, |i| 300 + i % 500);
        let io = UringIo::new(UringConfig { rings: 2, depth: 32, ..UringConfig::default() }).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (io, paths) = (&io, &paths);
                s.spawn(move || {
                    let part = &paths[t * 500..t * 500 + 1500];
                    for (k, r) in io.read_files(part).iter().enumerate() {
                        let i = t * 500 + k;
                        assert_eq!(r.as_ref().unwrap(), &expected(i, 300 + i % 500));
                    }
                });
            }
        });
    }

    #[test]
    fn config_is_clamped_to_the_fd_budget() {
        let io = UringIo::new(UringConfig { rings: 4, depth: 100_000, ..UringConfig::default() }).unwrap();
        assert!(io.config().rings * io.config().depth <= MAX_FDS_IN_FLIGHT);
        assert_eq!(io.name(), "uring");
    }

    #[test]
    fn ring_fsyncs_cover_every_target_over_several_rounds_and_name_a_failing_one() {
        let dir = tempfile::tempdir().unwrap();
        let n = FSYNC_RING_ENTRIES as usize + 44;
        let paths: Vec<PathBuf> = (0..n).map(|i| dir.path().join(format!("{i}.json"))).collect();
        let files: Vec<std::fs::File> = paths
            .iter()
            .map(|p| {
                let mut f = std::fs::File::create_new(p).unwrap();
                std::io::Write::write_all(&mut f, b"{}").unwrap();
                f
            })
            .collect();
        let mut targets: Vec<SyncTarget<'_>> = files.iter().zip(&paths).map(|(f, p)| SyncTarget::File(f, p)).collect();
        targets.push(SyncTarget::Dir(dir.path()));
        let fsyncs = RingFsyncs::new().unwrap();
        fsyncs.sync_all(&targets).unwrap();
        // A directory that cannot be opened fails the barrier, naming it.
        let gone = dir.path().join("gone");
        targets.push(SyncTarget::Dir(&gone));
        let err = fsyncs.sync_all(&targets).unwrap_err();
        assert_eq!((err.op, err.path.as_path()), (IoOp::FsyncDir, gone.as_path()));
        // A failed fsync is reported with its file (a socket cannot be fsynced: EINVAL).
        let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let sock_file = std::fs::File::from(std::os::fd::OwnedFd::from(sock));
        let sock_path = Path::new("socket");
        let err = fsyncs.sync_all(&[SyncTarget::File(&files[0], &paths[0]), SyncTarget::File(&sock_file, sock_path)]);
        let err = err.unwrap_err();
        assert_eq!((err.op, err.path.as_path()), (IoOp::Fsync, sock_path));
        // The ring still works afterwards.
        fsyncs.sync_all(&targets[..2]).unwrap();
    }
}
