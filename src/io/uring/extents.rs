//! `read_extents` on io_uring: positional reads (`IORING_OP_READ` at an offset) of descriptors the caller holds open.
//!
//! Unlike whole-file reads there is nothing to open or close, so every extent is a single operation: up to
//! [`EXTENT_READS_PER_RING_MAX`] reads are in flight per ring, each into the extent's own result buffer, allocated
//! at its exact length before submission. A short read (a page-cache miss on a part of a large extent, or a read
//! capped at [`EXTENT_READ_OP_BYTES_MAX`]) is resubmitted for the rest; a read of 0 bytes before the extent is full
//! means the file ends inside it (`UnexpectedEof`). A ring starts no new extent while the buffers of unfinished ones
//! exceed [`EXTENT_BYTES_IN_FLIGHT_MAX`].
//!
//! As in `files.rs`, rings claim extent indices from a shared cursor and a guard drains the ring in `Drop`, so no
//! buffer is freed while the kernel may still write into it.

use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicUsize;
use std::sync::OnceLock;

use io_uring::{opcode, squeue, types};

use super::ring::Ring;
use crate::io::{read_extent, Extent, IoError, IoOp};
#[cfg(doc)]
use crate::limits::EXTENT_READ_OP_BYTES_MAX;
use crate::limits::{EXTENT_BYTES_IN_FLIGHT_MAX, EXTENT_READS_PER_RING_MAX};

/// Extent indices a ring claims from the shared cursor at once.
const CLAIM_EXTENTS: usize = 32;

/// One `read_extents` call shared by its rings.
pub(super) struct ExtentBatch<'a> {
    pub(super) extents: &'a [Extent<'a>],
    pub(super) cursor: AtomicUsize,
    pub(super) results: &'a [OnceLock<Result<Vec<u8>, IoError>>],
    /// Bytes one read operation asks for at most: [`EXTENT_READ_OP_BYTES_MAX`], smaller in tests of resubmission.
    pub(super) op_bytes_max: u32,
}

impl ExtentBatch<'_> {
    fn set(&self, idx: usize, r: Result<Vec<u8>, IoError>) {
        let _ = self.results[idx].set(r);
    }
}

/// One extent being read: its result buffer (allocated at `len`, filled up to `done`).
struct ExtentRead {
    req: usize,
    buf: Vec<u8>,
    done: usize,
}

/// The state of one ring during one call. Its `Drop` waits for every read still in flight.
struct ExtentPump<'r, 'b> {
    ring: &'r mut Ring,
    batch: &'r ExtentBatch<'b>,
    /// Slot `i` is the read with `user_data == i`; `None` when free.
    reads: Vec<Option<ExtentRead>>,
    free: Vec<usize>,
    in_flight: usize,
    /// Bytes of the buffers of unfinished extents.
    bytes_in_flight: usize,
    claimed: std::ops::Range<usize>,
    exhausted: bool,
}

impl Ring {
    /// Reads claimed extents of `batch` until the cursor is exhausted. Never returns with a read in flight.
    pub(super) fn read_extents(&mut self, batch: &ExtentBatch<'_>) {
        // One SQE per read; the queue sizes of `Ring::new` are at least this large for the default depth, and smaller
        // rings just keep fewer in flight.
        let slots = EXTENT_READS_PER_RING_MAX.min(self.sq_entries()).min(batch.extents.len().max(1));
        let mut pump = ExtentPump {
            ring: self,
            batch,
            reads: (0..slots).map(|_| None).collect(),
            free: (0..slots).rev().collect(),
            in_flight: 0,
            bytes_in_flight: 0,
            claimed: 0..0,
            exhausted: false,
        };
        if let Err(e) = pump.run() {
            tracing::warn!("io_uring extent read failed, finishing the call with blocking reads: {e}");
            pump.abandon();
        }
    }
}

impl ExtentPump<'_, '_> {
    fn run(&mut self) -> std::io::Result<()> {
        loop {
            while !self.exhausted && !self.free.is_empty() && self.bytes_in_flight <= EXTENT_BYTES_IN_FLIGHT_MAX {
                let Some(req) = self.next_request() else {
                    self.exhausted = true;
                    break;
                };
                let len = self.batch.extents[req].len as usize;
                if len == 0 {
                    self.batch.set(req, Ok(Vec::new()));
                    continue;
                }
                let slot = self.free.pop().expect("checked non-empty");
                debug_assert!(self.reads[slot].is_none(), "slot {slot} claimed while busy");
                self.reads[slot] = Some(ExtentRead { req, buf: Vec::with_capacity(len), done: 0 });
                self.bytes_in_flight += len;
                self.submit_read(slot)?;
            }
            if self.in_flight == 0 {
                return Ok(());
            }
            self.ring.submit_and_wait(1)?;
            self.reap()?;
        }
    }

    fn next_request(&mut self) -> Option<usize> {
        super::ring::next_claimed(&mut self.claimed, &self.batch.cursor, self.batch.extents.len(), CLAIM_EXTENTS)
    }

    /// Queues the read of the rest of slot `slot`'s extent into its buffer.
    fn submit_read(&mut self, slot: usize) -> std::io::Result<()> {
        let read = self.reads[slot].as_mut().expect("submitting a read of a busy slot");
        let extent = &self.batch.extents[read.req];
        debug_assert!(read.done < extent.len as usize, "read of a full extent");
        let want = (extent.len as usize - read.done).min(self.batch.op_bytes_max as usize) as u32;
        // SAFETY: `done < len == capacity`, so the pointer is inside the allocation, and `want` bytes from it fit.
        let buf = unsafe { read.buf.as_mut_ptr().add(read.done) };
        let entry = opcode::Read::new(types::Fd(extent.file.as_raw_fd()), buf, want)
            .offset(extent.offset + read.done as u64)
            .build()
            .user_data(slot as u64);
        // SAFETY: the read writes into the spare capacity of this slot's `buf`, which is not touched, moved out or
        // dropped until the read's CQE is reaped (the slot stays `Some` until then, and `ExtentPump::drop` drains the
        // ring before `reads` is dropped); the descriptor is borrowed from the caller for the whole call.
        unsafe { self.push(&entry) }?;
        self.in_flight += 1;
        Ok(())
    }

    /// # Safety
    /// Every buffer the entry points to must stay valid until its CQE is reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> std::io::Result<()> {
        // SAFETY: forwarded from the caller's contract.
        unsafe { self.ring.push(std::slice::from_ref(entry)) }
    }

    fn reap(&mut self) -> std::io::Result<()> {
        let mut cqes = self.ring.take_completions();
        for &(ud, res) in &cqes {
            self.in_flight -= 1;
            self.on_read(ud as usize, res)?;
        }
        cqes.clear();
        self.ring.return_completions(cqes);
        Ok(())
    }

    fn on_read(&mut self, slot: usize, res: i32) -> std::io::Result<()> {
        let read = self.reads[slot].as_mut().expect("a completion for a free extent slot");
        let extent = &self.batch.extents[read.req];
        let len = extent.len as usize;
        if res == -libc::EINTR || res == -libc::EAGAIN {
            return self.submit_read(slot);
        }
        if res < 0 {
            let e = std::io::Error::from_raw_os_error(-res);
            self.finish(slot, Err(IoError::new(IoOp::Read, extent.path, e)));
            return Ok(());
        }
        if res == 0 {
            let e = std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file ends inside the extent ({} of {len} bytes at offset {})", read.done, extent.offset),
            );
            self.finish(slot, Err(IoError::new(IoOp::Read, extent.path, e)));
            return Ok(());
        }
        let n = res as usize;
        debug_assert!(read.done + n <= len, "the kernel read more than was asked");
        read.done += n;
        // SAFETY: the kernel initialised `n` more bytes after the first `done`, all within the capacity (`len`).
        unsafe { read.buf.set_len(read.done) };
        if read.done < len {
            return self.submit_read(slot);
        }
        let bytes = std::mem::take(&mut read.buf);
        self.finish(slot, Ok(bytes));
        Ok(())
    }

    /// Records the result of slot `slot`'s extent and frees the slot (no read of it is in flight).
    fn finish(&mut self, slot: usize, result: Result<Vec<u8>, IoError>) {
        let read = self.reads[slot].take().expect("finishing a free extent slot");
        self.bytes_in_flight -= self.batch.extents[read.req].len as usize;
        self.batch.set(read.req, result);
        self.free.push(slot);
    }

    /// After a ring error: drain what is in flight, then finish every claimed but unfinished extent with blocking
    /// reads and stop claiming (other rings keep going; the caller reads leftovers).
    fn abandon(&mut self) {
        self.in_flight = self.ring.drain(self.in_flight, |_, _| {});
        if self.in_flight > 0 {
            // The ring is broken and the kernel may still write into these buffers: `drop` leaks them.
            return;
        }
        for slot in 0..self.reads.len() {
            if let Some(read) = self.reads[slot].take() {
                self.batch.set(read.req, read_extent(&self.batch.extents[read.req]));
                self.free.push(slot);
            }
        }
        self.bytes_in_flight = 0;
        for req in self.claimed.clone() {
            self.batch.set(req, read_extent(&self.batch.extents[req]));
        }
        self.claimed = 0..0;
        self.exhausted = true;
    }
}

impl Drop for ExtentPump<'_, '_> {
    fn drop(&mut self) {
        // On the normal path nothing is in flight; on an error or a panic this waits for the kernel to finish with
        // every buffer before `reads` is dropped.
        self.in_flight = self.ring.drain(self.in_flight, |_, _| {});
        if self.in_flight > 0 {
            // Draining failed (the ring is now marked broken): the kernel may still write into these buffers.
            std::mem::forget(std::mem::take(&mut self.reads));
        }
    }
}
