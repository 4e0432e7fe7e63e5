//! io_uring backend: batch reads through one ring per worker thread, and per-file fsyncs through a ring of their own.
//!
//! - `mod.rs` (here): [`UringIo`], [`UringConfig`], the ring pool (rings lent to concurrent callers) and the kernel
//!   probe.
//! - `ring.rs`: one ring's submit/reap plumbing and the drain every pump runs in its `Drop`.
//! - `files.rs`: `read_files`, the whole-file slot machine (open → read + close → …), with its transition table.
//! - `extents.rs`: `read_extents`, positional reads of descriptors the caller holds.
//! - `fsync.rs`: `RingFsyncs`, the per-file durability barriers of the commit path.
//!
//! Writes follow the shared commit protocol (`io::commit`), with `RingFsyncs` for per-file barriers. The backend
//! keeps a thread pool only to create the files of large write batches in parallel (bulk imports), as the thread
//! backend does: a ring path for open + write + close was never measured to beat it, and group commits are a
//! handful of files dominated by fsync (docs/io-engine.md).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use io_uring::{opcode, IoUring, Probe};

use super::barrier::Barriers;
use super::commit::{CommitWriter, Temporaries};
use super::threads::{io_pool, read_file};
use super::{read_extent, BatchIo, Extent, FileWrite, IoError, IoOp, Spares};
use crate::limits::{
    EXTENTS_PER_RING_MIN, EXTENT_READ_OP_BYTES_MAX, FILES_PER_RING_MIN, IO_THREADS_DEFAULT, URING_FDS_IN_FLIGHT_MAX,
};

mod extents;
mod files;
mod fsync;
mod ring;

use extents::ExtentBatch;
use files::{Batch, FileSlots};
pub(crate) use fsync::RingFsyncs;
use ring::Ring;

pub use files::FIRST_READ_BYTES;

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
    /// Durability barriers of write batches (the shared commit protocol, per-file fsyncs on a ring).
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
    writer: CommitWriter,
    /// [`EXTENT_READ_OP_BYTES_MAX`]; tests lower it to make every large extent take several reads.
    extent_op_bytes_max: u32,
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
        config.depth = config.depth.clamp(1, (URING_FDS_IN_FLIGHT_MAX / config.rings).max(1));
        let mut rings = Vec::with_capacity(config.rings);
        for _ in 0..config.rings {
            rings.push(Mutex::new(build_ring(&config).map_err(|e| IoError::new(IoOp::Open, "io_uring", e))?));
        }
        let fsyncs = RingFsyncs::new().map_err(|e| IoError::new(IoOp::Open, "io_uring", e))?;
        let writer =
            CommitWriter::new(Barriers::new(config.sync, Box::new(fsyncs)), Arc::new(io_pool(IO_THREADS_DEFAULT)?));
        Ok(UringIo {
            rings,
            next_ring: AtomicUsize::new(0),
            config,
            writer,
            extent_op_bytes_max: EXTENT_READ_OP_BYTES_MAX,
        })
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
        let want = paths.len().div_ceil(FILES_PER_RING_MIN).clamp(1, self.rings.len());
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

    fn read_extents(&self, extents: &[Extent<'_>]) -> Vec<Result<Vec<u8>, IoError>> {
        if extents.is_empty() {
            return Vec::new();
        }
        let want = extents.len().div_ceil(EXTENTS_PER_RING_MIN).clamp(1, self.rings.len());
        let mut rings = self.acquire(want);
        let results: Vec<OnceLock<Result<Vec<u8>, IoError>>> = (0..extents.len()).map(|_| OnceLock::new()).collect();
        let batch = ExtentBatch {
            extents,
            cursor: AtomicUsize::new(0),
            results: &results,
            op_bytes_max: self.extent_op_bytes_max,
        };
        if let Some((first, rest)) = rings.split_first_mut() {
            std::thread::scope(|s| {
                for ring in rest {
                    let batch = &batch;
                    let ring: &mut Ring = ring;
                    s.spawn(move || ring.read_extents(batch));
                }
                first.read_extents(&batch);
            });
        }
        drop(rings);
        // As in `read_files`: whatever no ring finished (a failed ring, or no usable ring) is read here.
        results
            .into_iter()
            .zip(extents)
            .map(|(cell, extent)| cell.into_inner().unwrap_or_else(|| read_extent(extent)))
            .collect()
    }

    /// Plain `preadv2(RWF_NOWAIT)` calls: a cached read completes within the call, so a ring would only add the
    /// wait for a ring a blocking reader may hold.
    fn read_extents_cached(&self, extents: &[Extent<'_>]) -> Option<Vec<Result<Vec<u8>, IoError>>> {
        super::read_extents_nowait(extents)
    }

    fn write_files(&self, files: &[FileWrite<'_>], durable: bool) -> Result<(), IoError> {
        self.writer.write_files(files, durable, Temporaries::Beside)
    }

    fn write_files_with_trash(&self, files: &[FileWrite<'_>], durable: bool, trash: &Path) -> Result<(), IoError> {
        self.writer.write_files(files, durable, Temporaries::Trash(trash))
    }

    fn write_files_recycling(&self, files: &[FileWrite<'_>], trash: &Path, spares: &Spares) -> Result<(), IoError> {
        self.writer.write_files(files, false, Temporaries::Recycle { trash, spares })
    }
}

/// Builds one ring for `config`: the queues, the opcode probe (the kernel must support every operation the engines
/// submit) and the whole-file slots.
fn build_ring(config: &UringConfig) -> std::io::Result<Ring> {
    // Per file at most 2 SQEs are queued at once (read + close) and opens for free slots.
    let sq = (config.depth * 3).next_power_of_two().max(8) as u32;
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
        (opcode::Fsync::CODE, "fsync"),
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
    let files = FileSlots::new(&uring, config);
    Ok(Ring::new(uring, files))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::barrier::{FsyncRunner, SyncTarget};
    use crate::io::{ThreadPoolIo, WriteMode};
    use crate::limits::URING_FSYNC_ENTRIES_MAX;
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

    /// The default backend, or skip the test (printing why) where the kernel refuses io_uring: seccomp filters
    /// and `kernel.io_uring_disabled` make `io_uring_setup` fail, which is an environment, not a bug.
    macro_rules! require_uring {
        () => {
            match UringIo::new(UringConfig::default()) {
                Ok(io) => io,
                Err(e) => {
                    eprintln!("skipped: io_uring unavailable: {e}");
                    return;
                }
            }
        };
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
        let default_io = require_uring!();
        parity_checks(&ThreadPoolIo::new(4));
        parity_checks(&default_io);
        for c in small_configs() {
            parity_checks(&UringIo::new(c).unwrap());
        }
    }

    #[test]
    fn results_in_request_order_with_shuffled_requests() {
        let default_io = require_uring!();
        let dir = tempfile::tempdir().unwrap();
        let paths = write_files(dir.path(), 2000, |i| 300 + i % 500);
        let mut order: Vec<usize> = (0..paths.len()).collect();
        // A fixed permutation (reverse interleaved) so completion order differs from request order.
        order.sort_by_key(|&i| (i % 7, std::cmp::Reverse(i)));
        let shuffled: Vec<PathBuf> = order.iter().map(|&i| paths[i].clone()).collect();
        for io in [default_io].into_iter().chain(small_configs().into_iter().map(|c| UringIo::new(c).unwrap())) {
            let results = io.read_files(&shuffled);
            for (r, &i) in results.iter().zip(&order) {
                assert_eq!(r.as_ref().unwrap(), &expected(i, 300 + i % 500), "file {i}");
            }
        }
    }

    #[test]
    fn missing_file_fails_only_its_entry_with_its_path() {
        let default_io = require_uring!();
        let dir = tempfile::tempdir().unwrap();
        let mut paths = write_files(dir.path(), 500, |_| 400);
        let gone = dir.path().join("gone.json");
        paths[250] = gone.clone();
        let results = default_io.read_files(&paths);
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
        let e = default_io.read_files(&[PathBuf::from("rel\0ative")]).pop().unwrap().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn large_and_empty_files_are_read_whole() {
        let default_io = require_uring!();
        let dir = tempfile::tempdir().unwrap();
        let sizes = [0usize, 4096, 4097, 1 << 20, 5 * (1 << 20) + 17, 0, 10];
        let paths = write_files(dir.path(), sizes.len(), |i| sizes[i]);
        for io in [default_io].into_iter().chain(small_configs().into_iter().map(|c| UringIo::new(c).unwrap())) {
            for (i, r) in io.read_files(&paths).iter().enumerate() {
                let data = r.as_ref().unwrap();
                assert_eq!(data.len(), sizes[i]);
                assert!(*data == expected(i, sizes[i]));
            }
        }
    }

    #[test]
    fn batch_beyond_fd_limit_and_ring_size() {
        let default_io = require_uring!();
        let dir = tempfile::tempdir().unwrap();
        let n = 25_000; // > the 20,000 open-file limit and far more than any ring's depth
        let paths = write_files(dir.path(), n, |i| 300 + i % 500);
        let fds_before = std::fs::read_dir("/proc/self/fd").unwrap().count();
        for io in
            [default_io, UringIo::new(UringConfig { direct_descriptors: true, ..UringConfig::default() }).unwrap()]
        {
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
        let _available = require_uring!();
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
        let _available = require_uring!();
        let io = UringIo::new(UringConfig { rings: 4, depth: 100_000, ..UringConfig::default() }).unwrap();
        assert!(io.config().rings * io.config().depth <= URING_FDS_IN_FLIGHT_MAX);
        assert_eq!(io.name(), "uring");
    }

    #[test]
    fn ring_fsyncs_cover_every_target_over_several_rounds_and_name_a_failing_one() {
        let _available = require_uring!();
        let dir = tempfile::tempdir().unwrap();
        let n = URING_FSYNC_ENTRIES_MAX as usize + 44;
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

    #[test]
    fn extent_reads_keep_the_contract_on_every_ring_shape() {
        let default_io = require_uring!();
        crate::io::tests::extent_checks(&default_io);
        for c in small_configs() {
            crate::io::tests::extent_checks(&UringIo::new(c).unwrap());
        }
        // Reads capped at an odd size: every extent longer than that completes only through resubmitted short reads.
        let mut capped = UringIo::new(UringConfig { rings: 2, depth: 8, ..UringConfig::default() }).unwrap();
        capped.extent_op_bytes_max = 4093;
        crate::io::tests::extent_checks(&capped);
        capped.extent_op_bytes_max = 1 << 20;
        crate::io::tests::extent_checks(&capped);
    }

    #[test]
    fn concurrent_extent_reads_share_the_rings() {
        let default_io = require_uring!();
        drop(default_io);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let io = UringIo::new(UringConfig { rings: 2, depth: 32, ..UringConfig::default() }).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (io, file, path, bytes) = (&io, &file, &path, &bytes);
                s.spawn(move || {
                    let extents: Vec<Extent<'_>> = (0..3000u64)
                        .map(|i| Extent { file, path, offset: (i * 331 + t * 7) % 990_000, len: 1 + (i % 700) as u32 })
                        .collect();
                    for (e, r) in extents.iter().zip(io.read_extents(&extents)) {
                        let start = e.offset as usize;
                        assert_eq!(r.unwrap(), &bytes[start..start + e.len as usize], "extent {e:?}");
                    }
                });
            }
        });
    }
}
