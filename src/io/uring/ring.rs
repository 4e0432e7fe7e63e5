//! One ring and its plumbing: pushing entries (submitting first when the queue is full), waiting, reaping, and
//! draining every operation still in flight.
//!
//! The drain is what keeps buffers alive under the kernel: every pump (`files.rs`, `extents.rs`) calls
//! [`Ring::drain`] from its `Drop`, so an error or a panic that unwinds through a reap loop still waits for the kernel
//! to finish with every buffer before the pump's buffers are freed or reused. A ring whose drain fails is marked
//! `broken`: it is never lent out again and its buffers are leaked on drop rather than freed under the kernel.

use io_uring::{squeue, IoUring};

use super::files::FileSlots;

pub(super) struct Ring {
    // Field order matters: `uring` is dropped (the ring closed, its buffer registration and fixed files released)
    // before the buffers of `files` are freed.
    pub(super) uring: IoUring,
    /// The whole-file read machine's slots and first-read buffers (`files.rs`).
    pub(super) files: FileSlots,
    /// A call could not drain its operations: buffers may still be referenced by the kernel, so the ring is never
    /// used again and its memory is leaked on drop.
    pub(super) broken: bool,
    /// Reused buffer of reaped completions, `(user_data, result)`.
    cqes: Vec<(u64, i32)>,
}

/// The next request index a pump should start, from a batch that several rings share: a pump claims `chunk`
/// indices at a time from the batch's `cursor` (so rings split the batch without a lock) and hands them out one by
/// one from `claimed`. `None` once the batch is exhausted.
pub(super) fn next_claimed(
    claimed: &mut std::ops::Range<usize>,
    cursor: &std::sync::atomic::AtomicUsize,
    total: usize,
    chunk: usize,
) -> Option<usize> {
    if claimed.start >= claimed.end {
        let start = cursor.fetch_add(chunk, std::sync::atomic::Ordering::Relaxed);
        if start >= total {
            return None;
        }
        *claimed = start..(start + chunk).min(total);
    }
    claimed.next()
}

/// `io_uring_enter` errors after which the caller just reaps and comes back: an interrupted wait, or a completion
/// queue that is backed up.
pub(super) fn is_retryable(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN))
}

impl Ring {
    pub(super) fn new(uring: IoUring, files: FileSlots) -> Ring {
        let cq = uring.params().cq_entries() as usize;
        Ring { uring, files, broken: false, cqes: Vec::with_capacity(cq) }
    }

    /// Entries of the submission queue.
    pub(super) fn sq_entries(&self) -> usize {
        self.uring.params().sq_entries() as usize
    }

    /// Pushes entries (all or none), submitting first when the submission queue lacks room.
    ///
    /// # Safety
    /// Every buffer, path and descriptor the entries point to must stay valid until their CQEs are reaped.
    pub(super) unsafe fn push(&mut self, entries: &[squeue::Entry]) -> std::io::Result<()> {
        loop {
            {
                let mut sq = self.uring.submission();
                if sq.capacity() - sq.len() >= entries.len() {
                    // SAFETY: forwarded from the caller's contract.
                    unsafe { sq.push_multiple(entries) }.expect("room checked");
                    return Ok(());
                }
            }
            self.submit_and_wait(0)?;
        }
    }

    /// Submits what is queued and waits for `want` completions; returns early (for the caller to reap) when the
    /// completion queue is backed up.
    pub(super) fn submit_and_wait(&mut self, want: usize) -> std::io::Result<()> {
        loop {
            match self.uring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if is_retryable(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Every completion available now, as `(user_data, result)`; hand the vector back with
    /// [`Ring::return_completions`] to reuse its allocation.
    pub(super) fn take_completions(&mut self) -> Vec<(u64, i32)> {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.uring.completion().map(|c| (c.user_data(), c.result())));
        cqes
    }

    pub(super) fn return_completions(&mut self, cqes: Vec<(u64, i32)>) {
        self.cqes = cqes;
    }

    /// Waits until none of the caller's `in_flight` operations is left, passing each completion to `on_cqe` (to
    /// release what it holds, such as a descriptor an open returned). Returns how many are still in flight: 0, or,
    /// when the kernel refuses to wait, the rest — the ring is then marked broken and the caller must leak every
    /// buffer those operations may still write into.
    pub(super) fn drain(&mut self, mut in_flight: usize, mut on_cqe: impl FnMut(u64, i32)) -> usize {
        if self.broken {
            return in_flight;
        }
        while in_flight > 0 {
            match self.uring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if is_retryable(&e) => {}
                Err(_) => {
                    self.broken = true;
                    return in_flight;
                }
            }
            for c in self.uring.completion() {
                in_flight -= 1;
                on_cqe(c.user_data(), c.result());
            }
        }
        in_flight
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.broken {
            // The kernel may still write into these buffers: leak them rather than free memory it references.
            std::mem::forget(std::mem::replace(&mut self.files, FileSlots::empty()));
        }
    }
}
