//! `read_files` on io_uring: the whole-file read machine.
//!
//! A call is split between up to `rings` workers (the calling thread plus scoped helper threads), each owning one
//! ring. Workers claim request indices from a shared cursor in small chunks, so a slow (cold) region of the batch
//! never leaves the other ring idle. Every ring keeps `depth` files in flight, each file in a *slot*:
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
//! # Slot transitions
//! Every change of a slot's [`State`] goes through `Slot::advance`, which `debug_assert!`s the from-state against
//! this table; completions assert the state they expect too. A slot's path and buffers are reused only from `Free`:
//! in any other state the kernel may hold them until that state's completions are in.
//!
//! | from          | event                                              | to            |
//! |---------------|----------------------------------------------------|---------------|
//! | `Free`        | a request is claimed: `openat` submitted           | `Opening`     |
//! | `Opening`     | open failed (the request fails with `IoOp::Open`)  | `Free`        |
//! | `Opening`     | opened: hard-linked first read + close submitted   | `Reading`     |
//! | `Reading`     | read short or failed, or close in: wait for both   | `Reading`     |
//! | `Reading`     | read filled the first buffer                       | `NeedReopen`  |
//! | `Reading`     | both read and close in                             | `Free`        |
//! | `NeedReopen`  | both read and close in: `openat` submitted again   | `Reopening`   |
//! | `Reopening`   | open failed                                        | `Free`        |
//! | `Reopening`   | opened: read of the rest submitted                 | `ReadingMore` |
//! | `ReadingMore` | read returned bytes: read of the rest submitted    | `ReadingMore` |
//! | `ReadingMore` | read returned 0 (EOF) or failed: close submitted   | `Closing`     |
//! | `Closing`     | close in                                           | `Free`        |
//!
//! After a ring error or a panic, `Pump::drop` drains the ring and only then resets the slots to `Free`.
//!
//! Descriptors: each slot holds at most one descriptor, so a ring holds at most `depth` descriptors and a backend
//! at most `rings × depth ≤` [`crate::limits::URING_FDS_IN_FLIGHT_MAX`], whatever the batch size. With `direct_descriptors` the
//! files are opened into the ring's fixed file table (slot *i* → fixed index *i*) and take no process descriptors.
//!
//! Memory: the first reads land in a per-ring buffer of `depth × 4 KiB` (registered with the kernel when
//! `registered_buffers` is set) and are copied out at their exact size; files larger than 4 KiB grow their own
//! buffer, and a ring stops starting new files while those buffers exceed [`URING_RING_BYTES_IN_FLIGHT_MAX`].

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::OnceLock;

use io_uring::{opcode, squeue, types, IoUring};

use super::ring::Ring;
use super::UringConfig;
use crate::io::threads::read_file;
use crate::io::{IoError, IoOp};
use crate::limits::{URING_DIR_FDS_PER_RING_MAX, URING_RING_BYTES_IN_FLIGHT_MAX};

/// Bytes of the first read of every file; event files are 300–800 B, so almost every file is read in one go.
pub const FIRST_READ_BYTES: usize = 4096;
/// Request indices a ring claims from the shared cursor at once.
const CLAIM_FILES: usize = 32;
/// Batches at least this large open files relative to a cached directory descriptor (shorter path walks).
const RELATIVE_OPEN_MIN_FILES: usize = 64;

/// The slots and first-read buffers of one ring (owned by [`Ring`], which frees them only after the ring is closed).
pub(super) struct FileSlots {
    /// `depth` buffers of `FIRST_READ_BYTES`, one per slot. Never reallocated while the ring lives.
    first_bufs: Box<[u8]>,
    slots: Vec<Slot>,
    registered_buffers: bool,
    direct: bool,
}

impl FileSlots {
    /// `config.depth` slots for `uring`, registering the first-read buffers and a sparse fixed file table where the
    /// config asks for them and the kernel allows it.
    pub(super) fn new(uring: &IoUring, config: &UringConfig) -> FileSlots {
        let depth = config.depth;
        let mut first_bufs = vec![0u8; depth * FIRST_READ_BYTES].into_boxed_slice();
        let mut registered_buffers = false;
        if config.registered_buffers {
            let iov = libc::iovec { iov_base: first_bufs.as_mut_ptr().cast(), iov_len: first_bufs.len() };
            // SAFETY: `first_bufs` is a heap allocation owned by these slots and never reallocated (moving the `Box`
            // does not move it); `Ring` drops its `uring` (which releases the registration) before its `files`, and
            // leaks them if the ring broke, so the kernel never holds a registration to freed memory.
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
        FileSlots { first_bufs, slots, registered_buffers, direct }
    }

    /// No slots (what a broken ring keeps after leaking its real ones).
    pub(super) fn empty() -> FileSlots {
        FileSlots { first_bufs: Box::new([]), slots: Vec::new(), registered_buffers: false, direct: false }
    }
}

/// One `read_files` call shared by its rings.
pub(super) struct Batch<'a> {
    pub(super) paths: &'a [PathBuf],
    pub(super) cursor: AtomicUsize,
    pub(super) results: &'a [OnceLock<Result<Vec<u8>, IoError>>],
    pub(super) relative: bool,
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

impl Slot {
    /// The one place a slot changes state during a batch: `from` lists the legal from-states of this transition
    /// (the table in the module docs), checked in debug builds, where a wrong one would otherwise surface as a
    /// buffer reused under the kernel instead of a failing test.
    fn advance(state: &mut State, from: &[State], to: State) {
        debug_assert!(from.contains(state), "slot transition {state:?} -> {to:?}, legal only from {from:?}");
        *state = to;
    }
}

const OP_OPEN: u64 = 1;
const OP_READ: u64 = 2;
const OP_CLOSE: u64 = 3;

fn user_data(op: u64, slot: usize) -> u64 {
    (op << 32) | slot as u64
}

impl Ring {
    /// Reads claimed files of `batch` until the cursor is exhausted. Never returns with an operation in flight.
    pub(super) fn read_batch(&mut self, batch: &Batch<'_>) {
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
        let depth = self.ring.files.slots.len();
        self.free = (0..depth).rev().collect();
        let relative = self.batch.relative && self.batch.paths.len() >= RELATIVE_OPEN_MIN_FILES;
        loop {
            while !self.exhausted && self.big_bytes <= URING_RING_BYTES_IN_FLIGHT_MAX && !self.free.is_empty() {
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
            self.ring.submit_and_wait(1)?;
            self.reap()?;
        }
    }

    fn next_request(&mut self) -> Option<usize> {
        super::ring::next_claimed(&mut self.claimed, &self.batch.cursor, self.batch.paths.len(), CLAIM_FILES)
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
            let s = &mut self.ring.files.slots[slot];
            s.req = req;
            s.dirfd = dirfd;
            s.cpath.clear();
            s.cpath.extend_from_slice(name);
            s.cpath.push(0);
            Slot::advance(&mut s.state, &[State::Free], State::Opening);
        } else {
            Slot::advance(&mut self.ring.files.slots[slot].state, &[State::NeedReopen], State::Reopening);
        }
        let s = &self.ring.files.slots[slot];
        let mut open = opcode::OpenAt::new(types::Fd(s.dirfd), s.cpath.as_ptr().cast());
        if self.ring.files.direct {
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
        if self.dirs.len() >= URING_DIR_FDS_PER_RING_MAX {
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
        let direct = self.ring.files.direct;
        let s = &self.ring.files.slots[slot];
        // SAFETY: slot `slot` owns bytes [slot*4K, slot*4K+4K) of `first_bufs`, which is never reallocated.
        let buf = unsafe { self.ring.files.first_bufs.as_mut_ptr().add(slot * FIRST_READ_BYTES) };
        let len = FIRST_READ_BYTES as u32;
        let (read, close) = match (direct, self.ring.files.registered_buffers) {
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
        let s = &mut self.ring.files.slots[slot];
        Slot::advance(&mut s.state, &[State::Opening], State::Reading);
        s.read_pending = true;
        s.close_pending = true;
        // SAFETY: the read targets this slot's region of `first_bufs` (registered as buffer 0 when READ_FIXED is
        // used), which outlives the operation: the slot stays busy until both CQEs are reaped and `Pump::drop`
        // drains the ring before anything is freed. The descriptor is closed only by the linked close.
        unsafe { self.push(&[read, close]) }?;
        Ok(())
    }

    /// Queues a read of the rest of a large file into the slot's growing buffer.
    fn read_more(&mut self, slot: usize) -> std::io::Result<()> {
        let direct = self.ring.files.direct;
        let s = &mut self.ring.files.slots[slot];
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
        Slot::advance(&mut s.state, &[State::Reopening, State::ReadingMore], State::ReadingMore);
        let entry = entry.user_data(user_data(OP_READ, slot));
        // SAFETY: the read writes into the spare capacity of `s.big`, which is neither reallocated nor dropped until
        // this read's CQE is reaped (`big` is only grown here, before submitting), and `Pump::drop` drains the ring
        // before any slot is freed.
        unsafe { self.push(&[entry]) }?;
        Ok(())
    }

    fn close_slot(&mut self, slot: usize) -> std::io::Result<()> {
        let s = &mut self.ring.files.slots[slot];
        let entry = if self.ring.files.direct {
            opcode::Close::new(types::Fixed(slot as u32)).build()
        } else {
            opcode::Close::new(types::Fd(s.fd)).build()
        };
        Slot::advance(&mut s.state, &[State::ReadingMore], State::Closing);
        s.close_pending = true;
        // SAFETY: a close references no memory; the descriptor belongs to this slot and nothing else closes it.
        unsafe { self.push(&[entry.user_data(user_data(OP_CLOSE, slot))]) }?;
        Ok(())
    }

    /// # Safety
    /// Every buffer and path the entries point to must stay valid until their CQEs are reaped.
    unsafe fn push(&mut self, entries: &[squeue::Entry]) -> std::io::Result<()> {
        // SAFETY: forwarded from the caller's contract.
        unsafe { self.ring.push(entries) }?;
        self.in_flight += entries.len();
        Ok(())
    }

    fn reap(&mut self) -> std::io::Result<()> {
        let cqes = self.ring.take_completions();
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
        self.ring.return_completions(cqes);
        Ok(())
    }

    fn fail(&mut self, slot: usize, op: IoOp, errno: i32) {
        let req = self.ring.files.slots[slot].req;
        self.batch.set(req, Err(IoError::new(op, &self.batch.paths[req], std::io::Error::from_raw_os_error(errno))));
    }

    fn release_big(&mut self, slot: usize) -> Vec<u8> {
        let big = std::mem::take(&mut self.ring.files.slots[slot].big);
        self.big_bytes -= big.capacity();
        big
    }

    fn on_open(&mut self, slot: usize, res: i32) -> std::io::Result<()> {
        let state = self.ring.files.slots[slot].state;
        debug_assert!(matches!(state, State::Opening | State::Reopening), "open completion in state {state:?}");
        let reopen = state == State::Reopening;
        if res < 0 {
            self.fail(slot, IoOp::Open, -res);
            if reopen {
                self.release_big(slot);
            }
            Slot::advance(&mut self.ring.files.slots[slot].state, &[State::Opening, State::Reopening], State::Free);
            self.free.push(slot);
            return Ok(());
        }
        self.ring.files.slots[slot].fd = res;
        if reopen {
            self.read_more(slot)
        } else {
            self.start_first_read(slot)
        }
    }

    fn on_read(&mut self, slot: usize, res: i32) -> std::io::Result<()> {
        let state = self.ring.files.slots[slot].state;
        debug_assert!(matches!(state, State::Reading | State::ReadingMore), "read completion in state {state:?}");
        match self.ring.files.slots[slot].state {
            State::Reading => {
                self.ring.files.slots[slot].read_pending = false;
                if res < 0 {
                    // With a hard link the close still runs; -ECANCELED cannot happen for the head of the link.
                    self.fail(slot, IoOp::Read, -res);
                } else if (res as usize) < FIRST_READ_BYTES {
                    let start = slot * FIRST_READ_BYTES;
                    let data = self.ring.files.first_bufs[start..start + res as usize].to_vec();
                    self.batch.set(self.ring.files.slots[slot].req, Ok(data));
                } else {
                    // Filled the first buffer: the file may be larger. Reopen after the linked close has completed.
                    let start = slot * FIRST_READ_BYTES;
                    let mut big = Vec::with_capacity(FIRST_READ_BYTES * 4);
                    big.extend_from_slice(&self.ring.files.first_bufs[start..start + FIRST_READ_BYTES]);
                    self.big_bytes += big.capacity();
                    self.ring.files.slots[slot].big = big;
                    Slot::advance(&mut self.ring.files.slots[slot].state, &[State::Reading], State::NeedReopen);
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
                    self.batch.set(self.ring.files.slots[slot].req, Ok(data));
                    return self.close_slot(slot);
                }
                let s = &mut self.ring.files.slots[slot];
                // SAFETY: the kernel wrote `res` bytes into the spare capacity starting at `len`.
                unsafe { s.big.set_len(s.big.len() + res as usize) };
                self.read_more(slot)
            }
            other => unreachable!("read completion in state {other:?}"),
        }
    }

    fn on_close(&mut self, slot: usize) -> std::io::Result<()> {
        // A failed close of a read-only file loses nothing; the descriptor is released either way.
        let s = &mut self.ring.files.slots[slot];
        s.close_pending = false;
        debug_assert!(
            matches!(s.state, State::Reading | State::NeedReopen | State::Closing),
            "close completion in state {:?}",
            s.state
        );
        if s.state == State::Closing {
            Slot::advance(&mut s.state, &[State::Closing], State::Free);
            self.free.push(slot);
            return Ok(());
        }
        self.maybe_free(slot)
    }

    /// After either CQE of the hard-linked read + close: once both are in, free the slot or reopen a large file.
    fn maybe_free(&mut self, slot: usize) -> std::io::Result<()> {
        let s = &self.ring.files.slots[slot];
        if s.read_pending || s.close_pending {
            return Ok(());
        }
        if s.state == State::NeedReopen {
            let req = s.req;
            return self.start_open(slot, req, false, true);
        }
        Slot::advance(&mut self.ring.files.slots[slot].state, &[State::Reading], State::Free);
        self.free.push(slot);
        Ok(())
    }

    /// After a ring error: drain what is in flight (done by `drop`), then finish every claimed but unfinished
    /// request with blocking reads and stop claiming (other rings keep going; the caller reads leftovers).
    fn abandon(&mut self) {
        self.drain();
        if self.in_flight > 0 {
            // The ring is broken and the kernel may still write into the slots' buffers: keep them (the ring leaks
            // them on drop) and let the caller read this ring's requests.
            return;
        }
        for s in 0..self.ring.files.slots.len() {
            if self.ring.files.slots[s].state != State::Free {
                let req = self.ring.files.slots[s].req;
                self.batch.set(req, read_file(&self.batch.paths[req]));
                self.ring.files.slots[s].state = State::Free;
                self.ring.files.slots[s].big = Vec::new();
            }
        }
        self.big_bytes = 0;
        for req in self.claimed.clone() {
            self.batch.set(req, read_file(&self.batch.paths[req]));
        }
        self.claimed = 0..0;
        self.exhausted = true;
    }

    /// Waits until no operation is in flight; if the kernel refuses, the ring is marked broken and `in_flight`
    /// stays above 0 (the slots' buffers must then never be freed).
    fn drain(&mut self) {
        let direct = self.ring.files.direct;
        self.in_flight = self.ring.drain(self.in_flight, |user_data, res| {
            // An open that succeeded while draining: close it synchronously (plain descriptors) so none leaks.
            // (A direct descriptor stays in the fixed table and is replaced by the slot's next open.)
            if user_data >> 32 == OP_OPEN && res >= 0 && !direct {
                // SAFETY: the descriptor was just returned to us by the kernel and is owned by nobody else.
                unsafe { libc::close(res) };
            }
        });
    }
}

impl Drop for Pump<'_, '_> {
    fn drop(&mut self) {
        // On the normal path `in_flight` is already 0; on an error or a panic this waits for the kernel to finish
        // with every buffer before the slots can be reused or freed.
        self.drain();
        if std::thread::panicking() && self.in_flight == 0 {
            for s in &mut self.ring.files.slots {
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
