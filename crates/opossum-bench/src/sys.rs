//! The machine side of a benchmark: cache eviction, machine description, raw-filesystem baselines.

use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evict {
    DropCaches,
    Fadvise,
}

impl Evict {
    /// `drop_caches` when we may write it (root), else per-file `posix_fadvise(DONTNEED)`.
    pub fn detect() -> Evict {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if root && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok() {
            Evict::DropCaches
        } else {
            Evict::Fadvise
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Evict::DropCaches => "sync; echo 3 > /proc/sys/vm/drop_caches",
            Evict::Fadvise => "posix_fadvise(DONTNEED) per file",
        }
    }

    /// Evicts `files` (all of the page cache, with `DropCaches`) from the cache.
    pub fn evict(self, files: &[PathBuf]) -> anyhow::Result<()> {
        match self {
            Evict::DropCaches => {
                // SAFETY: sync has no preconditions.
                unsafe { libc::sync() };
                std::fs::write("/proc/sys/vm/drop_caches", "3")?;
            }
            Evict::Fadvise => {
                for f in files {
                    let Some(file) = gone_is_none(std::fs::File::open(f))? else { continue };
                    // SAFETY: the descriptor is open for the call; DONTNEED only drops clean cached pages.
                    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
                }
            }
        }
        Ok(())
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU model, cores, memory, kernel, the filesystem holding `dir`, git commit.
pub fn machine_info(dir: &Path) -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_string(), |(_, v)| v.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    serde_json::json!({
        "cpu": cpu,
        "cores": cores(),
        "memory_gib": (mem_kb as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kernel": kernel,
        "filesystem": filesystem_of(dir),
        "hostname": std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim(),
    })
}

/// The mount (device, type, options) holding `dir`, from /proc/mounts (longest matching mount point).
fn filesystem_of(dir: &Path) -> serde_json::Value {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let best = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && dir.starts_with(f[1])).then(|| (f[1].len(), f[0], f[1], f[2], f[3]))
        })
        .max_by_key(|m| m.0);
    match best {
        Some((_, device, mount, fstype, options)) => {
            serde_json::json!({"device": device, "mount": mount, "type": fstype, "options": options})
        }
        None => serde_json::Value::Null,
    }
}

/// `git rev-parse HEAD` (with `-dirty` when the tree has changes) in the current directory, if it is a checkout.
pub fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git").args(["rev-parse", "HEAD"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let mut commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    if dirty {
        commit.push_str("-dirty");
    }
    Some(commit)
}

/// Sequential `std::fs::read` of every file, one thread: (time, bytes).
pub fn read_files(files: &[PathBuf]) -> anyhow::Result<(Duration, u64)> {
    let t = Instant::now();
    let mut bytes = 0u64;
    for f in files {
        bytes += std::fs::read(f)?.len() as u64;
    }
    Ok((t.elapsed(), bytes))
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// A new, empty directory `dir/<prefix>-<n>`. Baselines leave their files in it: the run's work directory is
/// removed once, at the end. Deleting files mid-run would slow every later create on this machine's ext4 without a
/// journal: its inode allocator skips (and scans past, on every create) inodes freed in the last 60 s, or 360 s
/// while their inode table block is dirty (`recently_deleted` in fs/ext4/ialloc.c); after deleting a few thousand
/// files, creates cost ~1 ms instead of ~50 µs.
pub fn fresh_dir(dir: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    for n in 0.. {
        let d = dir.join(format!("{prefix}-{n}"));
        match std::fs::create_dir(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("an unbounded range")
}

/// Raw durable batches: `batch` new files written, each `fdatasync`ed, then the directory fsynced; for `seconds`.
/// Returns files/s.
pub fn batch_write_loop(dir: &Path, batch: usize, bytes: usize, seconds: f64) -> anyhow::Result<f64> {
    let d = fresh_dir(dir, "raw-batches")?;
    let payload = vec![b'x'; bytes];
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < seconds {
        let mut open = Vec::with_capacity(batch);
        for _ in 0..batch {
            let mut f = std::fs::File::create(d.join(format!("{n:010}.json")))?;
            f.write_all(&payload)?;
            open.push(f);
            n += 1;
        }
        for f in &open {
            f.sync_data()?;
        }
        std::fs::File::open(&d)?.sync_all()?;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    Ok(rate)
}

/// How a [`commit_floor`] commit makes its new files durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloorBarrier {
    /// `fdatasync` of every new file, then `fsync` of the directory.
    PerFile,
    /// One `syncfs`: a single device flush, but it writes back everything dirty on the filesystem.
    Syncfs,
}

/// The layout's floor for durable group commits: what any store that keeps Opossum's one-file-per-event layout and
/// design.md §3.2's contract ("acknowledged only after its event files, the ledger and the directory entries are
/// on stable storage") must do per commit of `group` events, with no store around it. Per commit: create `group`
/// new files (`O_EXCL`) holding `bytes` bytes each, make them and their directory entries durable (`barrier`), then
/// overwrite the ledger in place and `fdatasync` it: the commit record comes after the files it covers, so two
/// ordered flush rounds. Runs for `seconds`, one thread. Returns (events/s, per-commit latency in µs).
pub fn commit_floor(
    dir: &Path,
    group: usize,
    bytes: usize,
    barrier: FloorBarrier,
    seconds: f64,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    use std::os::unix::fs::FileExt as _;
    let d = fresh_dir(dir, "raw-commit-floor")?;
    let events = d.join("events");
    std::fs::create_dir(&events)?;
    let events_handle = std::fs::File::open(&events)?;
    let ledger = std::fs::File::create(d.join(".ledger"))?;
    let payload = vec![b'x'; bytes];
    let mut hist = new_histogram();
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < seconds {
        let s = Instant::now();
        let mut created = Vec::with_capacity(group);
        for _ in 0..group {
            n += 1;
            let mut f =
                std::fs::OpenOptions::new().write(true).create_new(true).open(events.join(format!("{n:010}.json")))?;
            f.write_all(&payload)?;
            created.push(f);
        }
        match barrier {
            FloorBarrier::PerFile => {
                for f in &created {
                    f.sync_data()?;
                }
                events_handle.sync_all()?;
            }
            FloorBarrier::Syncfs => {
                // SAFETY: the descriptor is open for the duration of the call.
                if unsafe { libc::syncfs(events_handle.as_raw_fd()) } != 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
            }
        }
        ledger.write_all_at(format!("{{\"LastSequencePosition\":{n},\"EventCount\":{n}}}").as_bytes(), 0)?;
        ledger.sync_data()?;
        hist.record(s.elapsed().as_micros().max(1) as u64)?;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    Ok((rate, hist))
}

/// [`commit_floor`] with each barrier for half of `seconds`; the faster one: (events/s, per-commit latency in µs,
/// the barrier).
pub fn best_commit_floor(
    dir: &Path,
    group: usize,
    bytes: usize,
    seconds: f64,
) -> anyhow::Result<(f64, Histogram<u64>, FloorBarrier)> {
    let mut best = (0.0, new_histogram(), FloorBarrier::PerFile);
    for barrier in [FloorBarrier::PerFile, FloorBarrier::Syncfs] {
        let (rate, hist) = commit_floor(dir, group, bytes, barrier, seconds / 2.0)?;
        if rate > best.0 {
            best = (rate, hist, barrier);
        }
    }
    Ok(best)
}

/// Writes each `(name, bytes)` into a new directory under `dir`, then one `syncfs`: (time).
pub fn write_files_syncfs(dir: &Path, files: &[(String, Vec<u8>)]) -> anyhow::Result<Duration> {
    let d = fresh_dir(dir, "raw-projection-writes")?;
    let t = Instant::now();
    for (name, bytes) in files {
        std::fs::write(d.join(name), bytes)?;
    }
    let handle = std::fs::File::open(&d)?;
    // SAFETY: the descriptor is open for the duration of the call.
    if unsafe { libc::syncfs(handle.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let took = t.elapsed();
    Ok(took)
}

/// The `events` directory of a store (its name's case varies between Opossum versions).
pub fn events_dir(store: &Path) -> anyhow::Result<PathBuf> {
    for entry in std::fs::read_dir(store)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().eq_ignore_ascii_case("events") {
            return Ok(entry.path());
        }
    }
    anyhow::bail!("no events directory in {}", store.display())
}

/// The event file of `position`.
pub fn event_file(events_dir: &Path, position: u64) -> PathBuf {
    events_dir.join(format!("{position:010}.json"))
}

/// Every `*.json` file directly in `dir`, sorted.
pub fn json_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// `/proc/loadavg`'s 1, 5 and 15 minute load averages (zeros where it cannot be read).
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut fields = text.split_whitespace().map(|f| f.parse().unwrap_or(0.0));
    [(); 3].map(|()| fields.next().unwrap_or(0.0))
}

/// The resident set of process `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// The CPU time, in seconds, process `pid` has used in all its threads so far (`utime + stime` of
/// `/proc/<pid>/stat`, in clock ticks: 10 ms resolution, so only phases of seconds are worth measuring).
pub fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = process_cpu_ticks(&stat).ok_or_else(|| anyhow::anyhow!("no utime/stime in /proc/{pid}/stat"))?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

/// The CPU time, in seconds, every core of the machine together has been busy so far: user, nice, system, irq and
/// softirq of `/proc/stat`'s `cpu` line (not idle, iowait or steal). Over a phase it counts what the server, the
/// benchmark's own clients and the kernel's threads (writeback, interrupts) cost together.
pub fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let ticks = machine_busy_ticks(&stat).ok_or_else(|| anyhow::anyhow!("no cpu line in /proc/stat"))?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

/// `utime + stime` from the text of a `/proc/<pid>/stat`: fields 14 and 15, counted after the command name, which
/// is in parentheses and may itself hold spaces and parentheses.
fn process_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `after_name` starts at field 3 (the state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// user + nice + system + irq + softirq from the text of `/proc/stat` (its first line, `cpu ...`).
fn machine_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq [steal guest guest_nice]
    Some(v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: `sysconf` reads a configuration value; it takes no pointers and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let (mut files, mut stack) = (Vec::new(), vec![dir.to_path_buf()]);
    while let Some(d) = stack.pop() {
        // A running daemon deletes files while this walks (its trash): what vanished is skipped.
        let Some(entries) = gone_is_none(std::fs::read_dir(&d))? else { continue };
        for e in entries {
            let Some(e) = gone_is_none(e)? else { continue };
            let Some(file_type) = gone_is_none(e.file_type())? else { continue };
            if file_type.is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    Ok(files)
}

/// `Ok(None)` for a file or directory that is not there (any more), the result otherwise.
fn gone_is_none<T>(result: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Bytes the files and directories under `dir` occupy on disk (allocated blocks, as `du` counts them: a 300-byte
/// file takes a 4 KiB block).
pub fn allocated_bytes(dir: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let (mut total, mut stack) = (0, vec![dir.to_path_buf()]);
    while let Some(d) = stack.pop() {
        let Some(dir_meta) = gone_is_none(std::fs::symlink_metadata(&d))? else { continue };
        total += dir_meta.blocks() * 512;
        let Some(entries) = gone_is_none(std::fs::read_dir(&d))? else { continue };
        for e in entries {
            let Some(e) = gone_is_none(e)? else { continue };
            let Some(meta) = gone_is_none(e.metadata())? else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_average_rss_and_allocated_bytes_read_the_real_system() {
        assert!(load_average().iter().all(|l| *l >= 0.0));
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), [b'x'; 300]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub").join("b.json"), [b'y'; 5000]).unwrap();
        let bytes = allocated_bytes(dir.path()).unwrap();
        assert!(bytes >= 300 + 5000, "{bytes}");
        assert_eq!(files_under(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn cpu_times_are_read_from_the_fields_proc_defines() {
        // A command name with a space and parentheses: fields are counted after its last ')'.
        let stat = "4242 (opossum (w) x) S 1 4242 4242 0 -1 4194560 300 0 0 0 1234 567 0 0 20 0 9 0 100 1 2";
        assert_eq!(process_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(process_cpu_ticks("4242 (cut) S 1 2"), None);
        let machine = "cpu  100 20 300 9000 50 6 7 8 0 0\ncpu0 50 10 150 4500 25 3 3 4 0 0\nintr 1\n";
        assert_eq!(machine_busy_ticks(machine), Some(100 + 20 + 300 + 6 + 7), "idle, iowait and steal left out");
        assert_eq!(machine_busy_ticks("cpu0 1 2 3 4 5 6 7\n"), None, "only the all-CPU line");
        // The real files: this process has used some CPU by now, and the machine at least as much.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        let ours = process_cpu_seconds(std::process::id()).unwrap();
        assert!(ours > 0.0, "{ours}");
        assert!(machine_busy_seconds().unwrap() >= ours);
    }
}
