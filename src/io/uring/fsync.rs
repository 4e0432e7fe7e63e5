//! `RingFsyncs`: the io_uring backend's per-file durability barriers (`barrier::FsyncRunner`). It serves the commit
//! path, not reads: a barrier's fsyncs go to one ring at once instead of waking a pool of threads.

use std::sync::Mutex;

use io_uring::{opcode, types, IoUring};

use super::ring::is_retryable;
use crate::io::barrier::{FsyncRunner, SyncTarget};
use crate::io::{IoError, IoOp};
use crate::limits::URING_FSYNC_ENTRIES_MAX;

/// Fsyncs in one durability barrier submitted to a ring at once (`IORING_OP_FSYNC`), so the kernel's io-wq
/// workers run them in parallel while the caller sleeps in one `io_uring_enter`: no pool of user threads to wake.
/// Each barrier holds the ring's lock; barriers come from one group-committing writer per store.
pub(crate) struct RingFsyncs {
    ring: Mutex<IoUring>,
}

impl RingFsyncs {
    pub(super) fn new() -> std::io::Result<RingFsyncs> {
        Ok(RingFsyncs { ring: Mutex::new(IoUring::new(URING_FSYNC_ENTRIES_MAX)?) })
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
                Err(e) if is_retryable(&e) => {}
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
        let mut results = Vec::with_capacity(fds.len().min(URING_FSYNC_ENTRIES_MAX as usize));
        for (round, chunk) in fds.chunks(URING_FSYNC_ENTRIES_MAX as usize).enumerate() {
            let chunk_targets = &targets[round * URING_FSYNC_ENTRIES_MAX as usize..][..chunk.len()];
            if let Err(e) = Self::round(&mut ring, chunk, &mut results) {
                // The ring itself failed mid-round. Some fsyncs may have completed with an error we never reaped, and
                // a retried fsync can report success after a failed one lost the data (fsyncgate): fail the barrier
                // (the store poisons itself) and give later barriers a fresh ring.
                if let Ok(fresh) = IoUring::new(URING_FSYNC_ENTRIES_MAX) {
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
