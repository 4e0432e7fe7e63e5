//! The disk check: before a file-creating phase, time how much creating a small file costs right now, and wait
//! (for a bounded time) until that is quiet.
//!
//! Why: the benchmark machine's root filesystem is ext4 without a journal, mounted `discard`. For minutes after a
//! mass deletion (a store of ~1,000,000 small files) creating a file costs ~700 µs instead of ~25-40 µs:
//! `ext4_new_inode -> find_inode_bit -> recently_deleted()` (only without a journal) skips every free inode whose
//! deletion time is recent (a minute, several while its inode-table block is dirty), reading the inode-table buffer
//! of each, so every create scans the recently freed inodes again (perf, session 13). Runs that followed a deletion
//! were 2-10x slower with p99s of tens of ms. The probe does what an event file costs: [`PROBE_FILES`] files of
//! [`PROBE_BYTES`] bytes, `O_CREAT|O_EXCL`, in a fresh directory under the run's directory, and keeps them (they go
//! with the stores): a probe that removed its files made the next one slower (a run's waits measured 304, 529, then
//! 669 µs per file, 30 s apart, while a directory elsewhere on the disk measured 58).

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Files one probe creates (~0.1 s on a quiet disk, ~1.4 s on a slow one).
pub const PROBE_FILES: u64 = 2_000;
/// Bytes per probe file: an event file's size.
pub const PROBE_BYTES: usize = 500;
/// The default quiet threshold, µs per file created. A quiet disk here measures ~25-40 µs/file (up to ~60 with the
/// other users of the 2 cores busy); after a mass deletion ~700, decaying through 70-230 over minutes. 150 sits at
/// ~4x the quiet cost, so the noise of a shared machine does not hold a run back, and at a fifth of the degraded
/// cost, so a disk still paying for a deletion is caught.
pub const QUIET_US_PER_FILE: f64 = 150.0;
/// Seconds between probes while waiting.
pub const RECHECK: Duration = Duration::from_secs(30);
/// Default for `--disk-quiet-wait-secs`: the degraded state lasted "many minutes"; ten is the most a run waits.
pub const QUIET_WAIT_DEFAULT_SECS: u64 = 600;

/// When the disk counts as quiet and how long to wait for it.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// At or under this many µs per file the disk is quiet.
    pub quiet_us_per_file: f64,
    /// The longest wait; zero: probe once and only record.
    pub max_wait: Duration,
    /// Time between probes.
    pub recheck: Duration,
}

/// Time, for [`wait_until_quiet`]: the real one, or a test's.
pub trait Clock {
    /// Time since some fixed start.
    fn now(&self) -> Duration;
    fn sleep(&mut self, d: Duration);
}

/// The wall clock.
pub struct RealClock(Instant);

impl RealClock {
    pub fn new() -> RealClock {
        RealClock(Instant::now())
    }
}

impl Clock for RealClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// What a check found.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Every probe's µs per file, in order; the last one is the state the phase starts in.
    pub probes: Vec<f64>,
    /// From the end of the first probe to the end of the last: 0 when the first found the disk quiet.
    pub waited: Duration,
    /// The last probe was at or under the threshold.
    pub quiet: bool,
}

impl Outcome {
    pub fn us_per_file(&self) -> f64 {
        self.probes.last().copied().unwrap_or(f64::NAN)
    }
}

/// Whether one probe's cost counts as quiet.
pub fn is_quiet(policy: &Policy, us_per_file: f64) -> bool {
    us_per_file <= policy.quiet_us_per_file
}

/// Probes until the disk is quiet or `policy.max_wait` has passed since the first probe (a last probe at the
/// deadline decides), sleeping `policy.recheck` between probes and telling `progress` before each sleep.
pub fn wait_until_quiet(
    policy: &Policy,
    clock: &mut impl Clock,
    mut probe: impl FnMut() -> anyhow::Result<f64>,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Outcome> {
    // The wait starts when the first probe has said "slow": a quiet disk is waited on for 0 s.
    let mut start = None;
    let mut probes = Vec::new();
    loop {
        let us = probe()?;
        probes.push(us);
        let now = clock.now();
        let waited = now.saturating_sub(*start.get_or_insert(now));
        let quiet = is_quiet(policy, us);
        if quiet || waited >= policy.max_wait {
            return Ok(Outcome { probes, waited, quiet });
        }
        let next = policy.recheck.min(policy.max_wait - waited).max(Duration::from_millis(1));
        progress(&format!(
            "disk slow: {us:.0} µs per file created (quiet: ≤ {:.0}); waited {:.0} s of {:.0} s, re-checking in {:.0} s",
            policy.quiet_us_per_file,
            waited.as_secs_f64(),
            policy.max_wait.as_secs_f64(),
            next.as_secs_f64()
        ));
        clock.sleep(next);
    }
}

/// One probe: [`PROBE_FILES`] files of [`PROBE_BYTES`] bytes created (`O_CREAT|O_EXCL`, written, closed, no fsync)
/// in the new directory `dir`, timed; then removed with the directory if `remove` (only once nothing is measured
/// after it: recently freed inodes are what makes creates slow), else kept. Returns µs per file created.
pub fn probe(dir: &Path, remove: bool) -> anyhow::Result<f64> {
    std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let body = vec![b'x'; PROBE_BYTES];
    let path = |i: u64| dir.join(format!("{:010}.json", i + 1));
    let started = Instant::now();
    for i in 0..PROBE_FILES {
        let p = path(i);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .with_context(|| format!("creating {}", p.display()))?;
        file.write_all(&body).with_context(|| format!("writing {}", p.display()))?;
    }
    let us = started.elapsed().as_secs_f64() * 1e6 / PROBE_FILES as f64;
    if !remove {
        return Ok(us);
    }
    for i in 0..PROBE_FILES {
        std::fs::remove_file(path(i)).with_context(|| format!("removing {}", path(i).display()))?;
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A clock that moves when slept on and by [`PROBE_SECS`] per probe (see [`run`]).
    struct FakeClock {
        now: Rc<Cell<Duration>>,
        sleeps: Vec<Duration>,
    }

    impl Clock for FakeClock {
        fn now(&self) -> Duration {
            self.now.get()
        }

        fn sleep(&mut self, d: Duration) {
            self.sleeps.push(d);
            self.now.set(self.now.get() + d);
        }
    }

    /// Fake seconds one probe takes.
    const PROBE_SECS: u64 = 2;

    fn policy(max_wait_secs: u64) -> Policy {
        Policy {
            quiet_us_per_file: QUIET_US_PER_FILE,
            max_wait: Duration::from_secs(max_wait_secs),
            recheck: Duration::from_secs(30),
        }
    }

    /// Runs the loop over `costs` (µs per file of successive probes, each taking [`PROBE_SECS`]); returns the
    /// outcome, the sleeps and the progress lines. A probe more than `costs` has fails the test.
    fn run(policy: &Policy, costs: &[f64]) -> (Outcome, Vec<Duration>, Vec<String>) {
        let now = Rc::new(Cell::new(Duration::from_secs(1_000)));
        let mut clock = FakeClock { now: now.clone(), sleeps: Vec::new() };
        let mut next = costs.iter().copied();
        let mut lines = Vec::new();
        let outcome = wait_until_quiet(
            policy,
            &mut clock,
            || {
                now.set(now.get() + Duration::from_secs(PROBE_SECS));
                next.next().context("probed more often than the test expected")
            },
            |line| lines.push(line.to_string()),
        )
        .unwrap();
        (outcome, clock.sleeps, lines)
    }

    #[test]
    fn the_threshold_is_inclusive_and_a_quiet_disk_is_probed_once_and_not_waited_for() {
        let p = policy(600);
        assert!(is_quiet(&p, 25.0) && is_quiet(&p, 150.0));
        assert!(!is_quiet(&p, 150.5) && !is_quiet(&p, 700.0));
        let (outcome, sleeps, lines) = run(&p, &[31.0]);
        assert_eq!(outcome, Outcome { probes: vec![31.0], waited: Duration::ZERO, quiet: true });
        assert!(sleeps.is_empty() && lines.is_empty());
    }

    #[test]
    fn a_slow_disk_is_waited_for_until_it_is_quiet() {
        let (outcome, sleeps, lines) = run(&policy(600), &[700.0, 400.0, 149.0]);
        assert_eq!(outcome.probes, vec![700.0, 400.0, 149.0]);
        assert!(outcome.quiet);
        assert_eq!(outcome.us_per_file(), 149.0);
        // Two sleeps of 30 s and the two probes after them.
        assert_eq!(outcome.waited, Duration::from_secs(2 * (30 + PROBE_SECS)));
        assert_eq!(sleeps, vec![Duration::from_secs(30); 2]);
        assert_eq!(lines.len(), 2, "a progress line before each wait: {lines:?}");
        assert!(lines[0].contains("700 µs") && lines[0].contains("waited 0 s of 600 s"), "{lines:?}");
        assert!(lines[1].contains("400 µs") && lines[1].contains("waited 32 s of 600 s"), "{lines:?}");
    }

    #[test]
    fn the_wait_ends_at_the_maximum_with_a_last_probe_and_says_slow() {
        // 100 s at most, every 30 s, 2 s a probe: probes end at 0, 32, 64 and 96 s into the wait, then one after a
        // 4 s sleep, at 102 s: past the deadline, it gives up.
        let (outcome, sleeps, lines) = run(&policy(100), &[700.0, 650.0, 600.0, 500.0, 400.0]);
        assert!(!outcome.quiet);
        assert_eq!(outcome.probes.len(), 5);
        assert_eq!(outcome.us_per_file(), 400.0);
        assert_eq!(outcome.waited, Duration::from_secs(102));
        let secs: Vec<u64> = sleeps.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![30, 30, 30, 4]);
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn no_wait_means_one_probe_recorded() {
        let (outcome, sleeps, lines) = run(&policy(0), &[700.0]);
        assert_eq!(outcome, Outcome { probes: vec![700.0], waited: Duration::ZERO, quiet: false });
        assert!(sleeps.is_empty() && lines.is_empty());
    }

    #[test]
    fn a_probe_creates_its_files_and_keeps_or_removes_them() {
        let base = std::env::temp_dir().join(format!("opossum-disk-probe-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let dir = base.join("probe");
        let us = probe(&dir, true).unwrap();
        assert!(us > 0.0 && us.is_finite(), "{us}");
        assert!(!dir.exists(), "asked to, the probe removes its directory");
        assert!(probe(&dir, false).is_ok(), "and can run again in the same place");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count() as u64, PROBE_FILES, "kept: every file is there");
        assert!(probe(&dir, false).is_err(), "a directory that exists is not fresh");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
