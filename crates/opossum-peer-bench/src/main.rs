//! `opossum-peer-bench`: opossumd beside UmaDB, same workloads, same run (issue 14). `scripts/bench-peers.sh`
//! installs UmaDB's server, builds opossumd and this driver, and runs it.
//!
//! Every round runs every system in turn (A B C, A B C, ...), each in its own process on a fresh store under one
//! bench directory, so all of them see the same minutes of disk noise. Per system and round:
//!
//! 1. fill: N events (1,000,000; `--quick` 100,000), 1,000 per request from 4 clients, one `item:<k>` tag each
//!    (N/10 tags x 10 events); opossumd fills with its configuration (in files commit mode with `--durability none
//!    --index-writes deferred`) and is restarted with its measured configuration, UmaDB (always durable) is restarted
//!    too, so both measure a reopened store; after the fill of an opossum that writes the Opossum tree, while no server
//!    runs, the layout's floor: `--floor-files` event files (default: the events filled, at most 200,000) created in
//!    one new directory from one thread, no fsync, the least any mirror of this layout does per event;
//! 2. tag queries returning 10 of N events, 1 and 16 clients (a count other than 10 fails the run);
//! 3. read-all of the N events, warm (after one unmeasured read) and cold (servers restarted, then the page cache
//!    dropped), 1 and 4 clients, every event decoded into the client library's event type; the count must be N;
//! 4. durable conditional appends, 1 event/request, 1 / 16 / 64 clients onto the filled store: each client appends
//!    to its own tag with `fail_if_events_match {tags:[it]}` after its last position (a rejection fails the run:
//!    nobody else writes that tag);
//! 5. durable unconditional appends, 1,000 events/request, 1 and 4 clients;
//! 6. server RSS after the fill and after the reads, bytes on disk per million events after the server stopped.
//!
//! CPU: around each append phase (4 and 5) the driver reads the server process's CPU time (`/proc/<pid>/stat`, all
//! its threads) and the whole machine's busy time (`/proc/stat`: the driver's own clients and the kernel's threads,
//! writeback and interrupts, included), and records both per event in the measurement's `details.cpu`; a second
//! table under the main one shows their medians. On a machine the clients share, once the CPUs are saturated the
//! CPU a system spends per event is what sets its rate there.
//!
//! Reads come before the appends, so that every system reads the same N events (the timed appends add a different
//! number of events to each store).
//!
//! Any error or count mismatch on either side ends the run with the error and no numbers.
//!
//! Parts of a run: `--phases fill,tags,read,conditional,batched` (default: all) picks the phases (tags and read
//! need the filled store and imply the fill; without all three the store starts empty and only the appends run),
//! `--systems opossum,umadb,opossum-mirror-off` (default: all three) the systems, `--opossumd PATH` the daemon. The
//! conditional appends run `--conditional-seconds` each (full: 30 s sustained, so that the mirror's cost counts;
//! quick: `--seconds`), every other timed phase `--seconds`.
//!
//! The opossum configurations: `opossum` (opossumd's defaults plus OPOSSUMD_ARGS) and `opossum-mirror-off`
//! (`--commit journal --mirror off`: the journal alone, no Opossum tree). The commit mode and mirror each one ran
//! with are read back from the daemon (`hello`, `stats`) when it reports them, else taken from its flags and the
//! defaults `opossumd --help` prints, and recorded in the JSON (`systems[].commit_mode`, `.mirror`, `.modes_from`).
//!
//! Disk: before each system's store the free space of the bench directory (statvfs) is checked against an estimate
//! for the run, and the run stops with a clear message if it is short. Stores are deleted at the end of the run
//! (unless `--keep`), not between systems (a deletion on a `discard`-mounted disk slows the next system's file
//! creation for minutes); when the next store would not fit, the measured ones are deleted first, and the log
//! says so.
//!
//! Disk check (`disk.rs`): on the benchmark machine (ext4 without a journal, mounted `discard`) creating a file costs
//! ~700 µs instead of ~25-40 µs for minutes after a mass deletion (deleting a store of ~1,000,000 files):
//! `ext4_new_inode -> find_inode_bit -> recently_deleted()` skips recently freed inodes, reading the inode-table
//! buffer of each (perf, session 13). Runs that followed a deletion were 2-10x slower, p99 tens of ms. So before
//! each system's file-creating phases (fill, conditional, batched; the first of them is the run's first phase) the
//! driver creates 2,000 files of 500 bytes (O_CREAT|O_EXCL, like an event file) in a fresh directory under the run's
//! directory, times them and keeps them with the stores (removing them made the next check slower). Above
//! `--disk-quiet-us` (default 150 µs per file: ~4x a quiet disk's cost, a fifth of a degraded one's) it logs the
//! cost and waits, re-checking every 30 s, at most `--disk-quiet-wait-secs` (default 600; 0: check and record
//! only). Every check is in the JSON (`disk_checks`: system, round, phase, µs per file of every probe, seconds
//! waited, quiet) and summed up under the Markdown table;
//! a phase that ran after the wait ran out is measured anyway, logged as SLOW DISK, and its measurements say
//! `slow_disk` (JSON) and "(slow disk)" (table).
//!
//! Deleting the stores at the end (the default; `--keep` keeps them) happens after the results are written, so it
//! slows nothing this run measures, but it slows file creation for whatever runs next on the disk for minutes: the
//! driver says so when it deletes. To avoid it, run with `--keep` and delete the stores (`find DIR -type f -print0 |
//! xargs -0 -P16 -n 2000 rm -f`) when nobody measures.

mod disk;
mod peers;
mod plot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use opossum_bench::daemon::Daemon;
use opossum_bench::data::{mix, sized_data};
use opossum_bench::load::{closed_loop, LoadReport, Outcome};
use opossum_bench::report::peers::{Better, DiskCheck, Measurement, PeerDocument, Row};
use opossum_bench::report::{num, utc_timestamp, Latency};
use opossum_bench::suite;
use opossum_bench::sys::{self, Evict};
use serde_json::json;

use peers::{Appended, PeerClient, PeerEvent, Server, UmadbServer};

/// UmaDB's version the script installs (and this driver's client speaks).
const UMADB_VERSION: &str = "0.7.8";
/// Events per fill request and per unconditional-append request.
const BATCH_EVENTS: u64 = 1_000;
/// Events per fill tag: a tag query returns this many.
const EVENTS_PER_TAG: u64 = 10;
/// Connections filling a store.
const FILL_CLIENTS: usize = 4;
/// Event files the layout floor creates by default at most (~1 GB of 4 KiB blocks; the rate is steady well before).
const FLOOR_FILES_DEFAULT_MAX: u64 = 200_000;

#[derive(Parser, Debug)]
#[command(name = "opossum-peer-bench", about = "opossumd and UmaDB: same workloads, same run")]
struct Args {
    /// Smoke run: 100,000 events and short phases (≤ 5 minutes once built)
    #[arg(long)]
    quick: bool,
    /// Events to fill each store with [default: 1000000; quick: 100000]
    #[arg(long)]
    events: Option<u64>,
    /// Rounds; each runs every system once, in turn
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Seconds per timed phase (appends, tag queries) [default: 5; quick: 1.5]
    #[arg(long)]
    seconds: Option<f64>,
    /// Seconds per conditional-append phase (sustained, so the mirror's lag counts) [default: 30; quick: --seconds]
    #[arg(long)]
    conditional_seconds: Option<f64>,
    /// Client counts of the conditional appends
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    append_clients: Vec<usize>,
    /// Client counts of the unconditional appends of 1,000 events
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    batch_clients: Vec<usize>,
    /// Phases to run, comma-separated (they always run in this order): fill, tags (tag queries), read (read-all
    /// warm and cold), conditional (1-event conditional appends), batched (1,000-event appends). tags and read need
    /// the filled store and imply fill; with none of the three the appends run on an empty store
    #[arg(long, value_delimiter = ',', value_enum, default_value = "fill,tags,read,conditional,batched")]
    phases: Vec<Phase>,
    /// Systems to run, comma-separated: opossum (opossumd's defaults + --opossumd-arg), umadb, opossum-mirror-off
    /// (`--commit journal --mirror off` + --opossumd-arg)
    #[arg(long, value_delimiter = ',', value_enum, default_value = "opossum,umadb,opossum-mirror-off")]
    systems: Vec<SystemName>,
    /// The opossumd binary [default: target/release/opossumd]
    #[arg(long)]
    opossumd: Option<PathBuf>,
    /// Extra opossumd arguments for every opossum configuration (repeatable; also OPOSSUMD_ARGS, split on spaces),
    /// e.g. a commit mode that lands later: --opossumd-arg=--commit-mode --opossumd-arg=journal
    #[arg(long = "opossumd-arg", allow_hyphen_values = true)]
    opossumd_args: Vec<String>,
    /// Leave out the second opossum configuration (`--commit journal --mirror off`); same as leaving it out of
    /// --systems
    #[arg(long)]
    defaults_only: bool,
    /// The UmaDB server binary [default: target/peers/umadb-0.7.8/bin/umadb]
    #[arg(long)]
    umadb: Option<PathBuf>,
    /// Extra umadb arguments (repeatable)
    #[arg(long = "umadb-arg", allow_hyphen_values = true)]
    umadb_args: Vec<String>,
    /// The bench directory holding every store of the run [default: target/bench/peers-tmp]
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where the JSON and the PNG go [default: target/bench]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Event files the layout floor creates after the mirror-live opossum's fill (0: skip it) [default: the
    /// events filled, at most 200,000]
    #[arg(long)]
    floor_files: Option<u64>,
    /// Keep the stores (and leave their deletion, which slows file creation on this disk for minutes, to a time
    /// when nobody measures)
    #[arg(long)]
    keep: bool,
    /// Longest wait, in seconds, before a file-creating phase (fill, conditional, batched) for file creation to be
    /// quiet again (re-checked every 30 s); when it runs out the phase is measured anyway and marked slow_disk. 0:
    /// check and record only
    #[arg(long, default_value_t = disk::QUIET_WAIT_DEFAULT_SECS)]
    disk_quiet_wait_secs: u64,
    /// The disk check's threshold: at or under this many µs per file created (2,000 files of 500 bytes) the disk is
    /// quiet (here ~25-40 when quiet, ~700 right after a mass deletion)
    #[arg(long, default_value_t = disk::QUIET_US_PER_FILE)]
    disk_quiet_us: f64,
}

/// A phase of a system's run (`--phases`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum Phase {
    Fill,
    Tags,
    Read,
    Conditional,
    Batched,
}

/// The systems `--systems` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SystemName {
    Opossum,
    Umadb,
    OpossumMirrorOff,
}

/// One system under test: a name (the table's column) and how to start it.
#[derive(Debug, Clone)]
enum System {
    Opossum { name: String, flags: Vec<String> },
    Umadb { name: String, flags: Vec<String> },
}

impl System {
    fn name(&self) -> &str {
        match self {
            System::Opossum { name, .. } | System::Umadb { name, .. } => name,
        }
    }

    /// An opossumd that writes the Opossum tree (not told `--mirror off`): the layout floor applies to it.
    fn mirrors(&self) -> bool {
        match self {
            System::Opossum { flags, .. } => {
                !flags.windows(2).any(|w| w[0] == "--mirror" && w[1] == "off")
                    && !flags.iter().any(|f| f == "--mirror=off")
            }
            System::Umadb { .. } => false,
        }
    }
}

struct Ctx {
    events: u64,
    seconds: f64,
    conditional_seconds: f64,
    append_clients: Vec<usize>,
    batch_clients: Vec<usize>,
    phases: Vec<Phase>,
    opossumd: PathBuf,
    umadb: PathBuf,
    evict: Evict,
    /// `--floor-files`.
    floor_files: Option<u64>,
    /// The disk check's threshold and wait (`--disk-quiet-us`, `--disk-quiet-wait-secs`).
    disk: disk::Policy,
    /// The run's directory: disk probes run in fresh directories under it.
    work: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Ctx {
    fn runs(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }

    /// Whether the store is filled first: asked for, or needed by the tag queries or the reads.
    fn fills(&self) -> bool {
        self.runs(Phase::Fill) || self.runs(Phase::Tags) || self.runs(Phase::Read)
    }
}

fn step(what: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!("-- [{:>6.1} s] {what}", start.elapsed().as_secs_f64());
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let started_at = utc_timestamp(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs());
    let target = std::env::current_dir()?.join("target");
    let opossumd = args.opossumd.clone().unwrap_or_else(|| target.join("release/opossumd"));
    let umadb = args.umadb.clone().unwrap_or_else(|| target.join(format!("peers/umadb-{UMADB_VERSION}/bin/umadb")));
    for binary in [&opossumd, &umadb] {
        anyhow::ensure!(binary.exists(), "{} not found (scripts/bench-peers.sh builds both)", binary.display());
    }
    let mut opossumd_args = args.opossumd_args.clone();
    if let Ok(extra) = std::env::var("OPOSSUMD_ARGS") {
        opossumd_args.extend(extra.split_whitespace().map(String::from));
    }
    let mut systems = Vec::new();
    // The table's column order: opossum, umadb, opossum-mirror-off, whatever order --systems names them in.
    if args.systems.contains(&SystemName::Opossum) {
        systems.push(System::Opossum { name: "opossum".into(), flags: opossumd_args.clone() });
    }
    if args.systems.contains(&SystemName::Umadb) {
        systems.push(System::Umadb { name: "umadb".into(), flags: args.umadb_args.clone() });
    }
    if args.systems.contains(&SystemName::OpossumMirrorOff) && !args.defaults_only {
        let mut flags: Vec<String> = MIRROR_OFF_FLAGS.map(String::from).to_vec();
        flags.extend(opossumd_args.iter().cloned());
        systems.push(System::Opossum { name: "opossum-mirror-off".into(), flags });
    }
    anyhow::ensure!(!systems.is_empty(), "--systems (and --defaults-only) left no system to run");
    let mut phases = args.phases.clone();
    phases.sort();
    phases.dedup();
    let seconds = args.seconds.unwrap_or(if args.quick { 1.5 } else { 5.0 });
    let out = args.out.clone().unwrap_or_else(|| target.join("bench"));
    let bench_dir = args.dir.clone().unwrap_or_else(|| target.join("bench/peers-tmp"));
    let work = bench_dir.join(format!("run-{}-{}", std::process::id(), started_at.replace([':', '-'], "")));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    std::fs::create_dir_all(&out)?;
    let work = std::fs::canonicalize(&work)?;
    // Declared before everything the run measures: dropped (the stores deleted) after the results are written.
    let _cleanup = Cleanup(Some(suite::Cleanup { dir: work.clone(), keep: args.keep }));
    let ctx = Ctx {
        events: args.events.unwrap_or(if args.quick { 100_000 } else { 1_000_000 }).max(BATCH_EVENTS),
        seconds,
        conditional_seconds: args.conditional_seconds.unwrap_or(if args.quick { seconds } else { 30.0 }),
        append_clients: args.append_clients.iter().copied().filter(|&c| c > 0).collect(),
        batch_clients: args.batch_clients.iter().copied().filter(|&c| c > 0).collect(),
        phases,
        opossumd: opossumd.clone(),
        umadb: umadb.clone(),
        evict: Evict::detect(),
        floor_files: args.floor_files,
        disk: disk::Policy {
            quiet_us_per_file: args.disk_quiet_us,
            max_wait: Duration::from_secs(args.disk_quiet_wait_secs),
            recheck: disk::RECHECK,
        },
        work: work.clone(),
        rt: tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?,
    };
    eprintln!(
        "opossum-peer-bench ({}): {} events, {} rounds of {}, phases {:?}, {} s phases ({} s conditional), stores \
         under {}, cold cache: {}",
        if args.quick { "quick" } else { "full" },
        ctx.events,
        args.rounds,
        systems.iter().map(System::name).collect::<Vec<_>>().join(", "),
        ctx.phases,
        ctx.seconds,
        ctx.conditional_seconds,
        work.display(),
        ctx.evict.describe()
    );

    let mut rows: Vec<Row> = Vec::new();
    let mut load_average = vec![sys::load_average()];
    let mut modes: BTreeMap<String, Modes> = BTreeMap::new();
    // Stores measured so far, deleted at the end of the run (`suite::Cleanup`), not right after their system: on a
    // disk mounted with `discard`, deleting a mirror-live tree (~300,000 files per 100,000 events) slowed the file
    // creation of whatever ran next for minutes (the same opossumd binary: 17,133 then 4,547 events/s at 64 clients).
    let mut measured_stores: Vec<PathBuf> = Vec::new();
    // Every disk check, in order (the first one runs before the run's first phase: every system's run starts with a
    // file-creating phase, the fill or the appends on an empty store).
    let mut disk_checks: Vec<DiskCheck> = Vec::new();
    for round in 1..=args.rounds.max(1) {
        for system in &systems {
            let store = work.join(format!("round-{round}-{}", system.name()));
            let need = estimated_store_bytes(system, &ctx);
            if !args.keep && check_disk_space(&work, need).is_err() {
                // Measured stores stay until the end of the run (see `measured_stores`) unless the next one would
                // not fit: then they go now, and the next system's file creation may pay for their deletion.
                for old in measured_stores.drain(..) {
                    remove_store(&old)?;
                }
                eprintln!(
                    "   (stores removed before {} for disk space: the disk check before its first phase waits \
                     until file creation is quiet again)",
                    system.name()
                );
            }
            check_disk_space(&work, need)?;
            let measured = run_system(&ctx, system, round, &store, &mut modes, &mut disk_checks)
                .with_context(|| format!("{} failed in round {round}", system.name()))?;
            measured_stores.push(store);
            for (row, m) in measured {
                match rows.iter_mut().find(|r| r.name == row.name) {
                    Some(r) => r.measurements.push(m),
                    None => {
                        let mut row = row;
                        row.measurements.push(m);
                        rows.push(row);
                    }
                }
            }
            load_average.push(sys::load_average());
        }
    }

    let doc = PeerDocument {
        tool: "opossum-peer-bench".into(),
        started_at,
        duration_seconds: started.elapsed().as_secs_f64(),
        mode: if args.quick { "quick" } else { "full" }.into(),
        rounds: args.rounds.max(1),
        machine: sys::machine_info(&work),
        load_average,
        systems: systems
            .iter()
            .map(|s| match s {
                System::Opossum { name, flags } => {
                    let m = modes.get(name).cloned().unwrap_or_else(|| Modes::from_flags(&opossumd, flags));
                    json!({
                        "name": name,
                        "binary": opossumd,
                        "version": version_of(&opossumd),
                        "commit": sys::git_commit(),
                        "args": flags,
                        "fill_args": fill_flags(&opossumd, flags),
                        "commit_mode": m.commit,
                        "mirror": m.mirror,
                        "modes_from": m.from,
                    })
                }
                System::Umadb { name, flags } => json!({
                    "name": name,
                    "binary": umadb,
                    "version": version_of(&umadb),
                    "crate_version": UMADB_VERSION,
                    "args": flags,
                }),
            })
            .collect(),
        peer: "umadb".into(),
        params: json!({
            "events": ctx.events,
            "seconds_per_phase": ctx.seconds,
            "conditional_seconds": ctx.conditional_seconds,
            "phases": ctx.phases.iter().map(|p| format!("{p:?}").to_lowercase()).collect::<Vec<_>>(),
            "append_clients": ctx.append_clients,
            "batch_clients": ctx.batch_clients,
            "batch_events": BATCH_EVENTS,
            "events_per_tag": EVENTS_PER_TAG,
            "fill_clients": FILL_CLIENTS,
            "event_data_bytes": [opossum_bench::data::SIZED_DATA_MIN, opossum_bench::data::SIZED_DATA_MAX],
            "cold_cache_method": ctx.evict.describe(),
            "disk_quiet_us_per_file": ctx.disk.quiet_us_per_file,
            "disk_quiet_wait_secs": ctx.disk.max_wait.as_secs(),
            "disk_probe_files": disk::PROBE_FILES,
            "disk_probe_bytes": disk::PROBE_BYTES,
        }),
        rows,
        disk_checks,
    };
    let stem = format!("peers-{}-{}", doc.started_at.replace([':', '-'], ""), doc.mode);
    let json_path = out.join(format!("{stem}.json"));
    std::fs::write(&json_path, serde_json::to_vec_pretty(&doc)?)?;
    // The plot is of the conditional appends: none without them.
    let png_path = out.join(format!("{stem}.png"));
    let plotted = if ctx.runs(Phase::Conditional) && !ctx.append_clients.is_empty() {
        plot::draw(&doc, &png_path).context("drawing the plot")?;
        png_path.display().to_string()
    } else {
        "none (no conditional appends)".to_string()
    };

    println!();
    println!(
        "opossum-peer-bench, {} mode: {} events filled, {} rounds (medians), {} cores, load average {}",
        doc.mode,
        if ctx.fills() { num(ctx.events as f64) } else { "no".to_string() },
        doc.rounds,
        sys::cores(),
        doc.load_average.iter().map(|l| format!("{:.2}", l[0])).collect::<Vec<_>>().join(" → ")
    );
    for system in &systems {
        if let System::Opossum { name, flags } = system {
            let m = modes.get(name).cloned().unwrap_or_else(|| Modes::from_flags(&opossumd, flags));
            println!(
                "{name} = opossumd {}: commit {}, mirror {} (as {})",
                if flags.is_empty() { "defaults".to_string() } else { format!("defaults + {}", flags.join(" ")) },
                m.commit,
                m.mirror,
                m.from
            );
        }
    }
    println!("at commit {}", sys::git_commit().unwrap_or_default());
    println!();
    print!("{}", doc.table());
    println!();
    let cpu = doc.cpu_table();
    if !cpu.is_empty() {
        print!("{cpu}");
        println!();
    }
    let notes = doc.disk_notes();
    if !notes.is_empty() {
        print!("{notes}");
        println!();
    }
    println!("total {:.0} s; results: {}; plot: {plotted}", doc.duration_seconds, json_path.display());
    Ok(())
}

/// The run's directory, deleted when dropped unless `--keep` ([`suite::Cleanup`]: at the end of the run, after the
/// results are written, or on an error), then a note on what the deletion does: it comes after every measurement,
/// but it slows whatever creates files on this disk next, for minutes (see [`disk`]).
struct Cleanup(Option<suite::Cleanup>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some(stores) = self.0.take() else { return };
        let (keep, dir) = (stores.keep, stores.dir.clone());
        drop(stores);
        if keep {
            eprintln!(
                "   (deleting it later slows file creation on this disk for minutes: do it when nobody measures, e.g. \
                 find DIR -type f -print0 | xargs -0 -P16 -n 2000 rm -f)"
            );
            return;
        }
        // One probe beside the deleted directory, for the record (its own 2,000 deletions are harmless).
        let now = dir.parent().map(|p| disk::probe(&p.join(format!("disk-check-end-{}", std::process::id())), true));
        eprintln!(
            "note: file creates on this filesystem may be slow for a few minutes after a deletion of many files \
             (ext4 without a journal: ~700 instead of ~25 µs per file; right now: {}); a benchmark started now may \
             measure a slow disk (this driver waits for a quiet one: --disk-quiet-wait-secs). To avoid it, run with \
             --keep and delete the stores when nobody measures",
            match now {
                Some(Ok(us)) => format!("{us:.0} µs per file"),
                Some(Err(e)) => format!("not measured: {e:#}"),
                None => "not measured".to_string(),
            }
        );
    }
}

/// The disk check before `before` (a file-creating phase) of `system` in `round`: waits until file creation is
/// quiet, at most `--disk-quiet-wait-secs`, and records the check. Returns whether the phase runs on a slow disk.
fn disk_check(
    ctx: &Ctx,
    system: &System,
    round: usize,
    before: Phase,
    checks: &mut Vec<DiskCheck>,
) -> anyhow::Result<bool> {
    let before = format!("{before:?}").to_lowercase();
    step(&format!("round {round}, {}: disk check before {before}", system.name()));
    let mut probes = 0;
    let outcome = disk::wait_until_quiet(
        &ctx.disk,
        &mut disk::RealClock::new(),
        || {
            probes += 1;
            disk::probe(&ctx.work.join(format!("disk-check-{}-{probes}", checks.len() + 1)), false)
        },
        |line| eprintln!("   {line}"),
    )?;
    let (us, waited) = (outcome.us_per_file(), outcome.waited.as_secs_f64());
    if outcome.quiet {
        eprintln!(
            "   disk quiet: {us:.0} µs per file created (≤ {:.0}), waited {waited:.0} s",
            ctx.disk.quiet_us_per_file
        );
    } else {
        eprintln!(
            "   SLOW DISK: {us:.0} µs per file created (quiet: ≤ {:.0}) after waiting {waited:.0} s \
             (--disk-quiet-wait-secs {}): {} {before} is measured anyway, on a slow disk, and marked so (JSON: \
             slow_disk, disk_checks; table: \"(slow disk)\")",
            ctx.disk.quiet_us_per_file,
            ctx.disk.max_wait.as_secs(),
            system.name()
        );
    }
    checks.push(DiskCheck {
        system: system.name().into(),
        round,
        before,
        us_per_file: us,
        probes_us_per_file: outcome.probes.clone(),
        quiet_us_per_file: ctx.disk.quiet_us_per_file,
        waited_seconds: waited,
        quiet: outcome.quiet,
    });
    Ok(!outcome.quiet)
}

/// `m`, marked as measured on a slow disk when `slow`.
fn on_disk(mut m: Measurement, slow: bool) -> Measurement {
    m.slow_disk = slow;
    m
}

/// `binary --version`'s first line.
fn version_of(binary: &Path) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

/// The flags opossumd fills with. Journal mode (the default): the configuration's own flags, durability included, so
/// the fill and the stop right after it measure what a new user gets (a clean stop makes the tree durable: after a
/// fill under `--durability none` that is one `syncfs` of every event file the fill wrote). Files commit mode:
/// `--durability none` instead of any durability they name and `--index-writes deferred` (a file per event made
/// durable per commit, and every-commit index writes at O(index size) per commit: a fill of 100,000 events took
/// minutes; the option exists only in files mode).
fn fill_flags(opossumd: &Path, flags: &[String]) -> Vec<String> {
    if Modes::from_flags(opossumd, flags).commit != "files" {
        return flags.to_vec();
    }
    let mut all: Vec<String> = ["--durability", "none"].map(String::from).to_vec();
    if !flags.iter().any(|f| f == "--index-writes" || f.starts_with("--index-writes=")) {
        all.extend(["--index-writes", "deferred"].map(String::from));
    }
    let mut it = flags.iter();
    while let Some(f) = it.next() {
        if f == "--durability" {
            it.next();
        } else if !f.starts_with("--durability=") {
            all.push(f.clone());
        }
    }
    all
}

/// The commit mode and mirror an opossum configuration ran with, and where they were read.
#[derive(Debug, Clone)]
struct Modes {
    commit: String,
    mirror: String,
    /// `daemon` (its `hello` or `stats` said) or `flags` (its flags, else the defaults `opossumd --help` prints).
    from: &'static str,
}

impl Modes {
    /// From the flags, else from the `[default: X]` of `opossumd --help` for `--commit` and `--mirror`.
    fn from_flags(opossumd: &Path, flags: &[String]) -> Modes {
        let help = std::process::Command::new(opossumd)
            .arg("--help")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let value = |flag: &str| -> String {
            let mut found = None;
            let mut it = flags.iter();
            while let Some(f) = it.next() {
                if f == flag {
                    found = it.next().cloned();
                } else if let Some(v) = f.strip_prefix(&format!("{flag}=")) {
                    found = Some(v.to_string());
                }
            }
            found.or_else(|| help_default(&help, flag)).unwrap_or_else(|| "unknown".into())
        };
        let commit = value("--commit");
        // The mirror exists only in journal mode (the Opossum tree is the record in files mode).
        let mirror = if commit == "files" { "n/a".to_string() } else { value("--mirror") };
        Modes { commit, mirror, from: "flags" }
    }

    /// What the daemon reports in `hello` or `stats` (top level or under `store`), if it reports both.
    fn from_daemon(hello: &serde_json::Value, stats: &serde_json::Value) -> Option<Modes> {
        let find = |keys: &[&str]| -> Option<String> {
            for doc in [hello, stats, &stats["store"]] {
                for key in keys {
                    if let Some(v) = doc.get(*key).and_then(|v| v.as_str()) {
                        return Some(v.to_string());
                    }
                }
            }
            None
        };
        Some(Modes { commit: find(&["commit_mode", "commit"])?, mirror: find(&["mirror"])?, from: "daemon" })
    }
}

/// `[default: X]` on the help line of `flag`.
fn help_default(help: &str, flag: &str) -> Option<String> {
    let line = help.lines().find(|l| l.trim_start().starts_with(&format!("{flag} ")))?;
    let rest = &line[line.find("[default: ")? + "[default: ".len()..];
    Some(rest[..rest.find(']')?].to_string())
}

/// The second opossum configuration: the journal alone.
const MIRROR_OFF_FLAGS: [&str; 4] = ["--commit", "journal", "--mirror", "off"];

/// Disk one system's store may take in a run: the fill, plus what the timed appends add (generously: 20,000
/// events/s in each conditional phase, 1 event a durable request; 150,000 events/s in each batched phase).
fn estimated_store_bytes(system: &System, ctx: &Ctx) -> u64 {
    // Per event: a file in the Opossum tree takes a block (4 KiB) plus index entries; the journal (mirror off) and
    // UmaDB take well under 1 KiB (measured: disk_per_million rows).
    let per_event: u64 = match system {
        System::Opossum { flags, .. } if flags.windows(2).any(|w| w[0] == "--mirror" && w[1] == "off") => 1536,
        System::Opossum { .. } => 5 * 1024,
        System::Umadb { .. } => 1536,
    };
    let conditional = if ctx.runs(Phase::Conditional) {
        ctx.append_clients.len() as f64 * 20_000.0 * ctx.conditional_seconds
    } else {
        0.0
    };
    let batched = if ctx.runs(Phase::Batched) { ctx.batch_clients.len() as f64 * 150_000.0 * ctx.seconds } else { 0.0 };
    let filled = if ctx.fills() { ctx.events } else { 0 };
    (filled + (conditional + batched) as u64) * per_event
}

/// Stops the run before a store is made if the bench directory's filesystem has less room than `need`.
/// Removes a measured store, its files unlinked from many threads (a mirror-live tree has millions of files; one
/// thread unlinks ~560/s here).
fn remove_store(store: &Path) -> anyhow::Result<()> {
    let t = Instant::now();
    opossum_bench::suite::remove_tree(store).with_context(|| format!("removing {}", store.display()))?;
    eprintln!("   removed {} in {:.1} s", store.display(), t.elapsed().as_secs_f64());
    Ok(())
}

fn check_disk_space(dir: &Path, need: u64) -> anyhow::Result<()> {
    let fs = nix::sys::statvfs::statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    let free = fs.blocks_available() as u64 * fs.fragment_size() as u64;
    anyhow::ensure!(
        free >= need,
        "not enough disk space under {}: {:.1} GB free, this system's store may take up to {:.1} GB \
         (fewer events with --events, or another --dir)",
        dir.display(),
        free as f64 / 1e9,
        need as f64 / 1e9
    );
    Ok(())
}

fn start(ctx: &Ctx, system: &System, store: &Path, fill: bool) -> anyhow::Result<Server> {
    match system {
        System::Opossum { flags, .. } => {
            let all = if fill { fill_flags(&ctx.opossumd, flags) } else { flags.clone() };
            let socket = store.with_extension("sock");
            Ok(Server::Opossum(Daemon::start(&ctx.opossumd, store, &socket, &all)?))
        }
        System::Umadb { flags, .. } => Ok(Server::Umadb(UmadbServer::start(&ctx.umadb, store, flags, &ctx.rt)?)),
    }
}

fn fill_tag(i: u64, tags: u64) -> (String, String) {
    ("item".into(), format!("{:07}", i % tags))
}

fn rate_row(name: &str, title: &str, clients: usize, unit: &str) -> Row {
    Row::new(name, title, clients, unit, Better::Higher)
}

fn measurement(system: &System, round: usize, load: &LoadReport, unit_events: bool) -> Measurement {
    let value = if unit_events {
        load.events_per_second()
    } else {
        load.requests as f64 / load.elapsed.as_secs_f64().max(1e-9)
    };
    Measurement {
        system: system.name().into(),
        round,
        value,
        latency: Some(Latency::from_us(&load.latency_us)),
        details: json!({
            "clients": load.clients,
            "requests": load.requests,
            "events": load.events,
            "rejected": load.rejected,
            "seconds": load.elapsed.as_secs_f64(),
        }),
        slow_disk: false,
    }
}

/// The CPU time used so far at a phase's start, in seconds: the server process's (every thread) and the whole
/// machine's (`sys::machine_busy_seconds`: the benchmark's clients and the kernel's threads too).
struct CpuMark {
    server: f64,
    machine: f64,
}

impl CpuMark {
    fn take(server: &Server) -> anyhow::Result<CpuMark> {
        let pid = server.pid().context("server not running")?;
        Ok(CpuMark { server: sys::process_cpu_seconds(pid)?, machine: sys::machine_busy_seconds()? })
    }

    /// What the phase since this mark cost, in all and per event: the measurement's `details.cpu`.
    fn per_event(&self, server: &Server, events: u64) -> anyhow::Result<serde_json::Value> {
        let now = CpuMark::take(server)?;
        let (server_s, machine_s) = (now.server - self.server, now.machine - self.machine);
        let per_event = |seconds: f64| seconds * 1e6 / events.max(1) as f64;
        Ok(json!({
            "server_seconds": server_s,
            "machine_seconds": machine_s,
            "server_us_per_event": per_event(server_s),
            "machine_us_per_event": per_event(machine_s),
        }))
    }
}

fn with_cpu(mut m: Measurement, cpu: serde_json::Value) -> Measurement {
    m.details["cpu"] = cpu;
    m
}

fn plain(system: &System, round: usize, value: f64, details: serde_json::Value) -> Measurement {
    Measurement { system: system.name().into(), round, value, latency: None, details, slow_disk: false }
}

/// Every workload on one system, on a fresh store: (row, this system's measurement) pairs.
fn run_system(
    ctx: &Ctx,
    system: &System,
    round: usize,
    store: &Path,
    modes: &mut BTreeMap<String, Modes>,
    disk_checks: &mut Vec<DiskCheck>,
) -> anyhow::Result<Vec<(Row, Measurement)>> {
    let mut out = Vec::new();
    let n = ctx.events;
    let tags = (n / EVENTS_PER_TAG).max(1);

    let mut server = if ctx.fills() {
        let slow = disk_check(ctx, system, round, Phase::Fill, disk_checks)?;
        step(&format!("round {round}, {}: fill {n} events", system.name()));
        let server = start(ctx, system, store, true)?;
        let t = Instant::now();
        fill(ctx, &server, n, tags)?;
        let fill_seconds = t.elapsed().as_secs_f64();
        let rss_fill = sys::rss_bytes(server.pid().context("server not running")?)?;
        let head = server.connect(&ctx.rt)?.head()?;
        anyhow::ensure!(head == n, "{}: head {head} after filling {n} events", system.name());
        let stop_seconds = timed_stop(server)?;
        out.push((
            rate_row(
                "fill",
                "fill, 1,000 events/request (opossum: its configuration; files mode: durability none)",
                FILL_CLIENTS,
                "events/s",
            ),
            on_disk(plain(system, round, n as f64 / fill_seconds, json!({"events": n, "seconds": fill_seconds})), slow),
        ));
        if system.mirrors() {
            let files = ctx.floor_files.unwrap_or(n.min(FLOOR_FILES_DEFAULT_MAX));
            if files > 0 {
                step(&format!("round {round}, {}: the layout floor, {files} event files", system.name()));
                let (rate, seconds) = layout_floor(&store.with_extension("floor"), files)?;
                out.push((
                    Row::new(
                        "fill_layout_floor",
                        "fill's layout floor: one event file created per event in one directory, no fsync (files/s)",
                        1,
                        "files/s",
                        Better::Higher,
                    ),
                    on_disk(plain(system, round, rate, json!({"files": files, "seconds": seconds})), slow),
                ));
            }
        }
        out.push((
            Row::new("rss_after_fill", "server RSS after the fill", 0, "MiB", Better::Lower),
            plain(system, round, rss_fill as f64 / 1048576.0, json!({"bytes": rss_fill})),
        ));
        out.push((
            Row::new("stop_after_fill", "graceful stop (SIGTERM to exit) right after the fill", 0, "s", Better::Lower),
            on_disk(plain(system, round, stop_seconds, json!({})), slow),
        ));
        start(ctx, system, store, false)?
    } else {
        step(&format!("round {round}, {}: no fill (an empty store)", system.name()));
        start(ctx, system, store, false)?
    };
    if let (Server::Opossum(daemon), System::Opossum { flags, .. }) = (&server, system) {
        let mut client = opossum::client::Client::connect(&daemon.socket)?;
        let hello = serde_json::to_value(client.hello()?)?;
        let stats = client.stats()?;
        let m = Modes::from_daemon(&hello, &stats).unwrap_or_else(|| Modes::from_flags(&ctx.opossumd, flags));
        modes.insert(system.name().to_string(), m);
    }

    let phase = Duration::from_secs_f64(ctx.seconds);
    let tag_clients: &[usize] = if ctx.runs(Phase::Tags) { &[1, 16] } else { &[] };
    for &clients in tag_clients {
        step(&format!("round {round}, {}: tag queries, {clients} clients", system.name()));
        let load = closed_loop(
            clients,
            phase,
            |c| Ok((server.connect(&ctx.rt)?, 7 + c as u64 * 1_000_003)),
            |(client, seed)| {
                *seed += 1;
                let tag = fill_tag(mix(*seed), tags);
                let count = client.query_tag(&tag)?;
                anyhow::ensure!(
                    count == EVENTS_PER_TAG,
                    "tag query {tag:?} returned {count} events, not {EVENTS_PER_TAG}"
                );
                Ok(Outcome::events(count))
            },
        )?;
        out.push((
            rate_row(
                &format!("tag_query_{clients}"),
                &format!("tag query returning 10 of {}", num(n as f64)),
                clients,
                "queries/s",
            ),
            measurement(system, round, &load, false),
        ));
    }

    let head = server.connect(&ctx.rt)?.head()?;
    let filled = if ctx.fills() { n } else { 0 };
    anyhow::ensure!(head == filled, "{}: head {head} after reopening a store of {filled} events", system.name());
    let read_modes: &[bool] = if ctx.runs(Phase::Read) { &[false, true] } else { &[] };
    for &cold in read_modes {
        for clients in [1, 4] {
            let label = if cold { "cold" } else { "warm" };
            step(&format!("round {round}, {}: read-all {label}, {clients} clients", system.name()));
            if cold {
                server.restart(&ctx.rt)?;
                ctx.evict.evict(&sys::files_under(store)?)?;
            } else {
                read_all(ctx, &server, 1, head)?;
            }
            let load = read_all(ctx, &server, clients, head)?;
            out.push((
                rate_row(
                    &format!("read_all_{label}_{clients}"),
                    &format!("read-all of {} events, {label}", num(head as f64)),
                    clients,
                    "events/s",
                ),
                measurement(system, round, &load, true),
            ));
        }
    }
    if ctx.runs(Phase::Read) {
        let rss_reads = sys::rss_bytes(server.pid().context("server not running")?)?;
        out.push((
            Row::new("rss_after_reads", "server RSS after the reads", 0, "MiB", Better::Lower),
            plain(system, round, rss_reads as f64 / 1048576.0, json!({"bytes": rss_reads})),
        ));
    }
    let conditional_clients: &[usize] = if ctx.runs(Phase::Conditional) { &ctx.append_clients } else { &[] };
    let conditional_phase = Duration::from_secs_f64(ctx.conditional_seconds);
    let slow = !conditional_clients.is_empty() && disk_check(ctx, system, round, Phase::Conditional, disk_checks)?;
    for &clients in conditional_clients {
        step(&format!("round {round}, {}: conditional appends, {clients} clients", system.name()));
        let cpu = CpuMark::take(&server)?;
        let load = closed_loop(
            clients,
            conditional_phase,
            |c| {
                let tag = ("client".to_string(), format!("{}-{round}-{clients}-{c}", system.name()));
                Ok((server.connect(&ctx.rt)?, tag, None::<u64>, c as u64 * 1_000_000_000))
            },
            |(client, tag, after, i)| {
                let event = PeerEvent { data: sized_data(*i), tags: vec![tag.clone()] };
                match client.append(std::slice::from_ref(&event), Some((&*tag, *after)))? {
                    Appended::At(last) => *after = Some(last),
                    Appended::Rejected => {
                        anyhow::bail!("append condition failed on {tag:?}, which only this client writes")
                    }
                }
                *i += 1;
                Ok(Outcome::events(1))
            },
        )?;
        out.push((
            rate_row(
                &format!("append_conditional_{clients}"),
                &format!("durable conditional append, 1 event/request, {} s sustained", ctx.conditional_seconds),
                clients,
                "events/s",
            ),
            on_disk(with_cpu(measurement(system, round, &load, true), cpu.per_event(&server, load.events)?), slow),
        ));
    }

    let batch_clients: &[usize] = if ctx.runs(Phase::Batched) { &ctx.batch_clients } else { &[] };
    let slow = !batch_clients.is_empty() && disk_check(ctx, system, round, Phase::Batched, disk_checks)?;
    for &clients in batch_clients {
        step(&format!("round {round}, {}: unconditional appends of {BATCH_EVENTS}, {clients} clients", system.name()));
        let cpu = CpuMark::take(&server)?;
        let load = closed_loop(
            clients,
            phase,
            |c| Ok((server.connect(&ctx.rt)?, c as u64 * 1_000_000_000 + 500_000_000)),
            |(client, i)| {
                let tag = ("bulk".to_string(), format!("{}", *i / 1_000_000_000));
                let events: Vec<PeerEvent> = (*i..*i + BATCH_EVENTS)
                    .map(|k| PeerEvent { data: sized_data(k), tags: vec![tag.clone()] })
                    .collect();
                client.append(&events, None)?;
                *i += BATCH_EVENTS;
                Ok(Outcome::events(BATCH_EVENTS))
            },
        )?;
        out.push((
            rate_row(
                &format!("append_batch_{clients}"),
                "durable unconditional append, 1,000 events/request",
                clients,
                "events/s",
            ),
            on_disk(with_cpu(measurement(system, round, &load, true), cpu.per_event(&server, load.events)?), slow),
        ));
    }

    let head = server.connect(&ctx.rt)?.head()?;
    let stop_seconds = timed_stop(server)?;
    out.push((
        Row::new("stop_at_end", "graceful stop (SIGTERM to exit) right after the last phase", 0, "s", Better::Lower),
        plain(system, round, stop_seconds, json!({})),
    ));
    let bytes = sys::allocated_bytes(store)?;
    anyhow::ensure!(head > 0, "{}: no phase wrote an event (--phases)", system.name());
    out.push((
        Row::new("disk_per_million", "bytes on disk per 1,000,000 events", 0, "MB", Better::Lower),
        plain(system, round, bytes as f64 / head as f64 * 1e6 / 1e6, json!({"allocated_bytes": bytes, "events": head})),
    ));
    Ok(out)
}

/// SIGTERM to exit, in seconds: timed apart from the store's deletion, which on this disk takes far longer.
fn timed_stop(server: Server) -> anyhow::Result<f64> {
    let t = Instant::now();
    server.stop()?;
    let seconds = t.elapsed().as_secs_f64();
    eprintln!("   stopped in {seconds:.2} s");
    Ok(seconds)
}

/// Every client reads everything once; each read must return `head` events.
fn read_all(ctx: &Ctx, server: &Server, clients: usize, head: u64) -> anyhow::Result<LoadReport> {
    closed_loop(
        clients,
        Duration::ZERO,
        |_| server.connect(&ctx.rt),
        |client| {
            let count = client.read_all()?;
            anyhow::ensure!(count == head, "read-all returned {count} events, head is {head}");
            Ok(Outcome::events(count))
        },
    )
}

/// Appends `n` events in requests of [`BATCH_EVENTS`] from [`FILL_CLIENTS`] connections.
/// The Opossum tree's least work per event, timed: `files` event files (the fill's event data in the tree's JSON
/// framing, the tree's names) created in one new directory from one thread, written and closed, no fsync. Any
/// mirror of the layout creates at least this (plus index files and the ledger), so the fill with the mirror live
/// can run no faster on this disk. Run while no server runs; the directory stays for the run's cleanup (deleting
/// it now would slow the next system's file creation). Returns (files/s, seconds).
fn layout_floor(dir: &Path, files: u64) -> anyhow::Result<(f64, f64)> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = Instant::now();
    for i in 0..files {
        let path = dir.join(format!("{:010}.json", i + 1));
        let body = format!(
            r#"{{"event":{{"eventType":"StudentEnrolled","event":{},"tags":[{{"key":"item","value":"{i}"}}]}},"position":{},"metadata":{{"timestamp":"2026-11-30T00:00:00.0000000+00:00"}}}}"#,
            sized_data(i),
            i + 1
        );
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.write_all(body.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((files as f64 / seconds.max(1e-9), seconds))
}

fn fill(ctx: &Ctx, server: &Server, n: u64, tags: u64) -> anyhow::Result<()> {
    let next = AtomicU64::new(0);
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..FILL_CLIENTS)
            .map(|_| {
                let next = &next;
                s.spawn(move || -> anyhow::Result<()> {
                    let mut client: Box<dyn PeerClient> = server.connect(&ctx.rt)?;
                    loop {
                        let lo = next.fetch_add(BATCH_EVENTS, Ordering::Relaxed);
                        if lo >= n {
                            return Ok(());
                        }
                        let events: Vec<PeerEvent> = (lo..(lo + BATCH_EVENTS).min(n))
                            .map(|i| PeerEvent { data: sized_data(i), tags: vec![fill_tag(i, tags)] })
                            .collect();
                        client.append(&events, None)?;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("a fill client panicked")?;
        }
        Ok(())
    })
}
