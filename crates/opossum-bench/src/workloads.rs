//! The workloads of `opossum-bench`, each measured over the socket beside a raw-filesystem baseline.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::daemon::Daemon;
use crate::data::{self, DataSet, Rng, StudentShortInfo};
use crate::load::{closed_loop, Outcome};
use crate::report::{num, Latency, Workload};
use crate::suite::{secs, Params};
use crate::sys::{self, new_histogram, Evict};
use opossum::client::Client;
use opossum::model::{AppendCondition, Query, QueryItem, ReadOptions};
use opossum::projection::{ProjectionOptions, ProjectionStore, Put};
use opossum::wire::ErrorCode;

const PROJECTION: &str = data::STUDENT_SHORT_INFO;
const PUT_BATCH: usize = 1_000;

pub struct Ctx<'a> {
    pub params: &'a Params,
    pub daemon: &'a Daemon,
    pub data: &'a Path,
    pub work: &'a Path,
    pub evict: Evict,
}

impl Ctx<'_> {
    fn client(&self) -> anyhow::Result<Client> {
        connect(&self.daemon.socket)
    }
}

fn connect(socket: &Path) -> anyhow::Result<Client> {
    Client::connect(socket).with_context(|| format!("connecting to {}", socket.display()))
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Prints a progress line, with the time since the first one.
fn step(what: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!("-- [{:>6.1} s] {what}", start.elapsed().as_secs_f64());
}

/// Appends the data set in batches from several connections, with a progress bar.
pub fn seed(socket: &Path, params: &Params) -> anyhow::Result<()> {
    let ds = params.data_set;
    step(&format!("seeding {} events", ds.events));
    let bar = ProgressBar::new(ds.events);
    bar.set_style(
        ProgressStyle::with_template("seeding [{bar:40}] {pos}/{len} events {per_sec} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    // Courses and students first (as the sample creates them), then the mixed history.
    let head = ds.courses + ds.students;
    for (lo, hi) in [(0, head), (head, ds.events)] {
        seed_range(socket, params, ds, lo, hi, &bar)?;
    }
    bar.finish_and_clear();
    Ok(())
}

fn seed_range(socket: &Path, params: &Params, ds: DataSet, lo: u64, hi: u64, bar: &ProgressBar) -> anyhow::Result<()> {
    let batch = params.seed_batch as u64;
    let next = AtomicU64::new(lo);
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..params.seed_connections)
            .map(|_| {
                let next = &next;
                s.spawn(move || -> anyhow::Result<()> {
                    let mut client = connect(socket)?;
                    loop {
                        let start = next.fetch_add(batch, Ordering::Relaxed);
                        if start >= hi {
                            return Ok(());
                        }
                        let end = (start + batch).min(hi);
                        client.append((start..end).map(|n| ds.event(n)).collect(), None)?;
                        bar.inc(end - start);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("seeder panicked")?;
        }
        Ok(())
    })
}

/// Every event file of the store, by position.
fn event_files(data: &Path, head: u64) -> anyhow::Result<Vec<PathBuf>> {
    let dir = sys::events_dir(data)?;
    Ok((1..=head).map(|p| sys::event_file(&dir, p)).collect())
}

fn read_all_once(client: &mut Client) -> anyhow::Result<(Duration, u64, u64)> {
    let t = Instant::now();
    let (mut count, mut bytes) = (0u64, 0u64);
    for event in client.read(&Query::All, ReadOptions::default())? {
        let event = event?;
        count += 1;
        bytes += event.data.get().len() as u64;
    }
    Ok((t.elapsed(), count, bytes))
}

/// 1. read-all, warm and cold, beside sequential `std::fs::read` of the same event files.
pub fn read_all(ctx: &Ctx) -> anyhow::Result<Vec<Workload>> {
    let mut client = ctx.client()?;
    let head = client.head()?;
    let files = event_files(ctx.data, head)?;
    let anchors = "UmaDB 1.91M events/s (1M events); .NET Opossum Query.All() 10k events in 869 ms (11.5k events/s)";

    step("read-all, warm");
    let mut warm_runs = Vec::new();
    for _ in 0..2 {
        let (d, count, _) = read_all_once(&mut client)?;
        anyhow::ensure!(count == head, "read-all returned {count} events, head is {head}");
        warm_runs.push(d);
    }
    let warm = *warm_runs.iter().min().expect("two runs");
    let (raw_warm, raw_bytes) = sys::read_files(&files)?;
    let warm_w = Workload::rate(
        "read_all_warm",
        format!("read-all {} events, warm", num(head as f64)),
        "events/s",
        rate(head, warm),
        rate(head, raw_warm),
        "sequential std::fs::read of every event file, 1 thread",
    )
    .anchor(anchors)
    .details(json!({
        "events": head,
        "runs_seconds": warm_runs.iter().map(|d| secs(*d)).collect::<Vec<_>>(),
        "raw_seconds": secs(raw_warm),
        "raw_bytes": raw_bytes,
    }));

    step(&format!("read-all, cold ({})", ctx.evict.describe()));
    ctx.evict.evict(&files)?;
    let (cold, count, _) = read_all_once(&mut client)?;
    anyhow::ensure!(count == head, "cold read-all returned {count} events, head is {head}");
    let sample: Vec<PathBuf> = files.iter().take(ctx.params.cold_raw_sample_files).cloned().collect();
    ctx.evict.evict(&sample)?;
    let (raw_cold, _) = sys::read_files(&sample)?;
    // Warm the cache again for what follows.
    let _ = read_all_once(&mut client)?;
    let cold_w = Workload::rate(
        "read_all_cold",
        format!("read-all {} events, cold", num(head as f64)),
        "events/s",
        rate(head, cold),
        rate(sample.len() as u64, raw_cold),
        "sequential std::fs::read of the first event files (a sample), 1 thread, after the same eviction",
    )
    .anchor(anchors)
    .details(json!({
        "events": head,
        "seconds": secs(cold),
        "cold_cache_method": ctx.evict.describe(),
        "raw_sample_files": sample.len(),
        "raw_seconds": secs(raw_cold),
    }));
    Ok(vec![warm_w, cold_w])
}

/// 2. Tag queries: one random student's (or course's) events per request, for `query_seconds` each.
pub fn tag_queries(ctx: &Ctx) -> anyhow::Result<Vec<Workload>> {
    let ds = ctx.params.data_set;
    let events = sys::events_dir(ctx.data)?;
    let mut out = Vec::new();
    for (kind, population) in [("student", ds.students), ("course", ds.courses)] {
        step(&format!("tag query: one {kind}'s events"));
        let mut client = ctx.client()?;
        let mut rng = Rng::new(if kind == "student" { 1 } else { 2 });
        let mut hist = new_histogram();
        let (mut queries, mut returned) = (0u64, 0u64);
        let mut samples: Vec<Vec<u64>> = Vec::new();
        let t = Instant::now();
        while t.elapsed().as_secs_f64() < ctx.params.query_seconds || queries < 10 {
            let i = rng.below(population);
            let query = if kind == "student" { data::student_query(i) } else { data::course_query(i) };
            let s = Instant::now();
            let mut positions = Vec::new();
            for event in client.read(&query, ReadOptions::default())? {
                positions.push(event?.position);
            }
            hist.record(s.elapsed().as_micros().max(1) as u64)?;
            queries += 1;
            returned += positions.len() as u64;
            if samples.len() < 200 {
                samples.push(positions);
            }
        }
        let elapsed = t.elapsed();
        // Raw: read the same queries' event files (positions known, no index) with std::fs::read.
        let mut raw_hist = new_histogram();
        let raw_t = Instant::now();
        for positions in &samples {
            let s = Instant::now();
            for &p in positions {
                std::fs::read(sys::event_file(&events, p))?;
            }
            raw_hist.record(s.elapsed().as_micros().max(1) as u64)?;
        }
        let raw_elapsed = raw_t.elapsed();
        let avg = returned as f64 / queries as f64;
        out.push(
            Workload::rate(
                &format!("tag_query_{kind}"),
                format!("tag query: one {kind}'s events (avg {avg:.0} events)"),
                "queries/s",
                rate(queries, elapsed),
                rate(samples.len() as u64, raw_elapsed),
                "sequential std::fs::read of the same queries' event files (positions known), warm",
            )
            .latency(Some(Latency::from_us(&hist)), Some(Latency::from_us(&raw_hist)))
            .anchor("UmaDB 2,341 queries/s for a 10-event tag query (p99 0.68 ms)")
            .details(json!({
                "queries": queries,
                "events_returned_avg": avg,
                "seconds": secs(elapsed),
                "raw_queries": samples.len(),
                "connections": 1,
            })),
        );
    }
    Ok(out)
}

/// The projection store the workloads use: the daemon's (over the socket) when it serves `projection.*`, else an
/// in-process [`ProjectionStore`] on a separate directory.
enum Projections {
    Socket { client: Client, root: PathBuf },
    InProcess { store: ProjectionStore, root: PathBuf },
}

impl Projections {
    fn open(ctx: &Ctx, backend: &str) -> anyhow::Result<Projections> {
        let mut client = ctx.client()?;
        match client.projection_list() {
            Ok(_) => Ok(Projections::Socket { client, root: ctx.data.to_path_buf() }),
            Err(e) if e.is(ErrorCode::UnknownOp) => {
                eprintln!("   the daemon does not serve projection.* ({e}): measuring the in-process ProjectionStore");
                let root = ctx.work.join("projections-in-process");
                let io = opossum::io::open_backend(backend.parse().map_err(anyhow::Error::msg)?)?;
                let store = ProjectionStore::open(&root, io, ProjectionOptions::default())?;
                Ok(Projections::InProcess { store, root })
            }
            Err(e) => Err(e.into()),
        }
    }

    fn via(&self) -> &'static str {
        match self {
            Projections::Socket { .. } => "socket",
            Projections::InProcess { .. } => "in-process",
        }
    }

    fn files(&self, name: &str) -> anyhow::Result<Vec<PathBuf>> {
        let root = match self {
            Projections::Socket { root, .. } | Projections::InProcess { root, .. } => root,
        };
        sys::json_files(&root.join("Projections").join(name))
    }

    fn put_many(&mut self, puts: Vec<Put>) -> anyhow::Result<()> {
        match self {
            Projections::Socket { client, .. } => {
                client.projection_put_many(&puts)?;
            }
            Projections::InProcess { store, .. } => {
                store.put_many(puts)?;
            }
        }
        Ok(())
    }

    fn get_all(&mut self, name: &str) -> anyhow::Result<(Duration, usize)> {
        let t = Instant::now();
        let mut n = 0;
        match self {
            Projections::Socket { client, .. } => {
                for item in client.projection_get_all(name)? {
                    item?;
                    n += 1;
                }
            }
            Projections::InProcess { store, .. } => {
                let mut reader = store.get_all(name)?;
                while let Some(batch) = reader.next_batch() {
                    n += batch?.len();
                }
            }
        }
        Ok((t.elapsed(), n))
    }

    /// Empties the projection store's in-memory hot tier: restarts the daemon (and reconnects), or reopens the
    /// in-process store.
    fn drop_caches(&mut self, ctx: &Ctx, backend: &str) -> anyhow::Result<()> {
        match self {
            Projections::Socket { client, .. } => {
                ctx.daemon.restart()?;
                *client = ctx.client()?;
            }
            Projections::InProcess { store, root } => {
                let io = opossum::io::open_backend(backend.parse().map_err(anyhow::Error::msg)?)?;
                let fresh = ProjectionStore::open(&*root, io, ProjectionOptions::default())?;
                std::mem::replace(store, fresh).close()?;
            }
        }
        Ok(())
    }

    fn close(self) -> anyhow::Result<()> {
        if let Projections::InProcess { store, .. } = self {
            store.close()?;
        }
        Ok(())
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// 3. `get_all` of StudentShortInfo, warm and cold; 4. the projection rebuild.
pub fn projections(ctx: &Ctx) -> anyhow::Result<Vec<Workload>> {
    let count = ctx.params.projections;
    let mut store = Projections::open(ctx, &ctx.params.io_backend)?;
    let via = store.via();

    step(&format!("projection get_all: populating {count} {PROJECTION} projections"));
    let t = Instant::now();
    for lo in (0..count).step_by(PUT_BATCH) {
        let hi = (lo + PUT_BATCH).min(count);
        let puts = (lo..hi).map(|i| data::student_short_info(i as u64)).collect();
        store.put_many(puts)?;
    }
    let populate = t.elapsed();
    let files = store.files(PROJECTION)?;
    anyhow::ensure!(files.len() == count, "{} projection files, expected {count}", files.len());

    step("projection get_all, warm and cold");
    let mut out = Vec::new();
    for cold in [false, true] {
        let runs = if cold { 3 } else { 5 };
        let (mut ours, mut raw) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            if cold {
                // Cold means nothing in memory: neither the page cache nor the projection store's hot tier.
                store.drop_caches(ctx, &ctx.params.io_backend)?;
                ctx.evict.evict(&files)?;
            }
            let (d, n) = store.get_all(PROJECTION)?;
            anyhow::ensure!(n == count, "get_all returned {n} projections, expected {count}");
            ours.push(d);
            if cold {
                ctx.evict.evict(&files)?;
            }
            raw.push(sys::read_files(&files)?.0);
        }
        let (ours_m, raw_m) = (median(ours.clone()), median(raw.clone()));
        let label = if cold { "cold" } else { "warm" };
        out.push(
            Workload::rate(
                &format!("projection_get_all_{label}"),
                format!("projection get_all, {} StudentShortInfo, {label}", num(count as f64)),
                "projections/s",
                rate(count as u64, ours_m),
                rate(count as u64, raw_m),
                "sequential std::fs::read of the projection files, 1 thread",
            )
            .via(via)
            .anchor(if cold {
                "the seed: 60 s for 5,000 projections cold (83/s)"
            } else {
                "the seed: 1 s for 5,000 projections warm (5,000/s)"
            })
            .details(json!({
                "projections": count,
                "median_ms": ours_m.as_secs_f64() * 1e3,
                "runs_ms": ours.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
                "raw_median_ms": raw_m.as_secs_f64() * 1e3,
                "cold_cache_method": if cold { ctx.evict.describe() } else { "" },
                "populate_seconds": secs(populate),
            })),
        );
    }

    out.push(rebuild(ctx, &mut store)?.via(via));
    store.close()?;
    Ok(out)
}

/// 4. Rebuild StudentShortInfo: read every event of its types over the socket, fold per student, write one
///    projection per student back with `put_many`.
fn rebuild(ctx: &Ctx, store: &mut Projections) -> anyhow::Result<Workload> {
    step("projection rebuild");
    let mut client = ctx.client()?;
    let types = data::STUDENT_SHORT_INFO_TYPES.iter().map(|t| t.to_string()).collect();
    let query = Query::Items(vec![QueryItem { types, tags: Vec::new() }]);
    // Cold, as after a restart, and on both sides: the get_all cold runs just dropped the page cache anyway, while
    // the baseline used to read the files after us, warm (24 s against 8 s, a 0.3x that measured the cache).
    let head = client.head()?;
    ctx.evict.evict(&event_files(ctx.data, head)?)?;
    let t = Instant::now();
    let mut states: HashMap<String, StudentShortInfo> = HashMap::with_capacity(ctx.params.data_set.students as usize);
    let mut positions = Vec::new();
    for event in client.read(&query, ReadOptions::default())? {
        let event = event?;
        positions.push(event.position);
        let Some(student) = event.tags.iter().find(|t| t.key == "studentId") else { continue };
        if let Some(state) = states.get_mut(&student.value) {
            state.apply(&event.event_type, event.data.get());
        } else {
            let mut state = StudentShortInfo::default();
            state.apply(&event.event_type, event.data.get());
            states.insert(student.value.clone(), state);
        }
    }
    let read = t.elapsed();
    let mut keys: Vec<&String> = states.keys().collect();
    keys.sort();
    let written = keys.len();
    let mut encoded = Vec::with_capacity(written);
    for chunk in keys.chunks(PUT_BATCH) {
        let puts: Vec<Put> = chunk.iter().map(|k| states[*k].to_put(k)).collect();
        encoded.extend(puts.iter().map(|p| (format!("{}.json", p.key), p.state.get().as_bytes().to_vec())));
        store.put_many(puts)?;
    }
    let total = t.elapsed();

    // Raw: the first of the same event files (a sample, as for read-all cold) read sequentially after the same
    // eviction, scaled to all of them; then as many files written as we wrote, and one syncfs.
    let events = sys::events_dir(ctx.data)?;
    let sample: Vec<PathBuf> =
        positions.iter().take(ctx.params.cold_raw_sample_files).map(|&p| sys::event_file(&events, p)).collect();
    ctx.evict.evict(&sample)?;
    let (raw_sample_read, _) = sys::read_files(&sample)?;
    let raw_read = raw_sample_read.mul_f64(positions.len() as f64 / sample.len().max(1) as f64);
    let raw_write = sys::write_files_syncfs(ctx.work, &encoded)?;
    let raw = raw_read + raw_write;
    Ok(Workload::seconds(
        "projection_rebuild",
        format!(
            "projection rebuild, cold: read {} events, write {} StudentShortInfo",
            num(positions.len() as f64),
            num(written as f64)
        ),
        secs(total),
        secs(raw),
        "sequential std::fs::read of the first of the same event files (a sample, scaled), cold, + write of as many projection files and one syncfs",
    )
    .anchor("the seed: 8-10 s for 5,000 events")
    .details(json!({
        "events_read": positions.len(),
        "projections_written": written,
        "read_seconds": secs(read),
        "write_seconds": secs(total - read),
        "raw_read_seconds": secs(raw_read),
        "raw_sample_files": sample.len(),
        "raw_sample_read_seconds": secs(raw_sample_read),
        "cold_cache_method": ctx.evict.describe(),
        "raw_write_seconds": secs(raw_write),
    })))
}

fn store_counters(client: &mut Client) -> anyhow::Result<(u64, u64, u64)> {
    let stats = client.stats()?;
    let get = |k: &str| stats["store"][k].as_u64().unwrap_or(0);
    Ok((get("commits"), get("events_appended"), get("commit_latency_us_total")))
}

/// 5. Durable single-event conditional appends, "one seat left": each client reads its course's head (the
///    decision's consistency boundary P) and appends an enrollment on that course with
///    `fail_if_events_match: {courseId}` after P.
pub fn conditional_appends(ctx: &Ctx) -> anyhow::Result<Vec<Workload>> {
    let params = ctx.params;
    let anchors: HashMap<usize, &str> = [
        (1, "UmaDB 1,990 events/s (p99 1.2 ms); .NET Opossum ~55 events/s"),
        (16, "UmaDB 20,164 events/s (p99 2.3 ms)"),
        (64, "UmaDB 30,944 events/s (p99 3.6 ms)"),
    ]
    .into_iter()
    .collect();
    let mut out = Vec::new();
    let mut stats_client = ctx.client()?;
    for &clients in &params.clients {
        step(&format!("conditional appends, {clients} clients, {} s", params.append_seconds));
        let before = store_counters(&mut stats_client)?;
        let ds = params.data_set;
        let load = closed_loop(
            clients,
            Duration::from_secs_f64(params.append_seconds),
            |c| {
                let course = c as u64 % ds.courses;
                Ok((ctx.client()?, course, data::course_query(course), Rng::new(1000 + c as u64)))
            },
            |(client, course, seat, rng)| {
                let newest = ReadOptions { limit: Some(1), backwards: true, ..Default::default() };
                let boundary = {
                    let mut read = client.read(seat, newest)?;
                    for event in read.by_ref() {
                        event?;
                    }
                    read.done().map(|d| d.head).context("read without a final line")?
                };
                let condition = AppendCondition { fail_if_events_match: seat.clone(), after: Some(boundary) };
                let event = data::enrolled(*course, rng.below(ds.students));
                let s = Instant::now();
                let (events, rejected) = match client.append(vec![event], Some(condition)) {
                    Ok(_) => (1, false),
                    Err(e) if e.is(ErrorCode::AppendConditionFailed) => (0, true),
                    Err(e) => return Err(e.into()),
                };
                Ok(Outcome { events, rejected, latency: Some(s.elapsed()) })
            },
        )?;
        let after = store_counters(&mut stats_client)?;
        let (elapsed, appended, conflicts) = (load.elapsed, load.events, load.rejected);
        let commits = (after.0 - before.0).max(1);
        // The baseline, right after the level: the layout's floor for commits of `clients` events (each client has
        // one event in flight), with the cheaper of the two barriers.
        step(&format!("raw fs baseline: the layout's commit floor, {clients} events/commit"));
        let (raw_rate, raw_hist, raw_barrier) = sys::best_commit_floor(ctx.work, clients, 250, params.raw_seconds)?;
        let raw_latency = Latency::from_us(&raw_hist);
        out.push(
            Workload::rate(
                &format!("append_conditional_{clients}"),
                format!("durable conditional append, 1 event, {clients} client{}", if clients == 1 { "" } else { "s" }),
                "events/s",
                rate(appended, elapsed),
                raw_rate,
                &format!(
                    "the layout's commit floor: commits of {clients} new 250 B files ({raw_barrier:?} barrier) + ledger fdatasync, 1 thread"
                ),
            )
            .latency(Some(Latency::from_us(&load.latency_us)), Some(raw_latency))
            .anchor(anchors.get(&clients).copied().unwrap_or(""))
            .details(json!({
                "clients": clients,
                "appended": appended,
                "conflicts": conflicts,
                "seconds": secs(elapsed),
                "latency": "the append request; the read of the course's head before it is in cycle_latency",
                "cycle_latency": Latency::from_us(&load.cycle_us),
                "commits": after.0 - before.0,
                "events_per_commit": (after.1 - before.1) as f64 / commits as f64,
                "commit_ms_avg": (after.2 - before.2) as f64 / commits as f64 / 1000.0,
            })),
        );
    }
    Ok(out)
}

/// 6. Durable unconditional appends of 100 events per request from a few clients.
pub fn batched_appends(ctx: &Ctx) -> anyhow::Result<Workload> {
    let params = ctx.params;
    let (clients, batch) = (params.batch_clients, params.batch_events);
    step(&format!("raw fs baseline: {batch} new files written, each fdatasynced, dir fsynced"));
    let raw = sys::batch_write_loop(ctx.work, batch, 250, params.raw_seconds)?;
    step(&format!("batched appends, {batch} events/request, {clients} clients, {} s", params.append_seconds));
    let mut stats_client = ctx.client()?;
    let before = store_counters(&mut stats_client)?;
    let ds = params.data_set;
    let load = closed_loop(
        clients,
        Duration::from_secs_f64(params.append_seconds),
        |c| Ok((ctx.client()?, (c as u64) << 40)),
        |(client, n)| {
            let events = (0..batch as u64).map(|k| ds.event(ds.courses + ds.students + *n + k)).collect();
            client.append(events, None)?;
            *n += batch as u64;
            Ok(Outcome::events(batch as u64))
        },
    )?;
    let after = store_counters(&mut stats_client)?;
    let (n, elapsed) = (load.events, load.elapsed);
    let commits = (after.0 - before.0).max(1);
    Ok(Workload::rate(
        "append_batched_100",
        format!("durable unconditional append, {batch} events/request, {clients} clients"),
        "events/s",
        rate(n, elapsed),
        raw,
        "batches of 100 new files: write, fdatasync each, fsync dir; 1 thread",
    )
    .latency(Some(Latency::from_us(&load.latency_us)), None)
    .anchor("UmaDB 580k events/s (1,000 events/request)")
    .details(json!({
        "clients": clients,
        "events_per_request": batch,
        "events": n,
        "seconds": secs(elapsed),
        "latency": "per request of 100 events",
        "commits": after.0 - before.0,
        "events_per_commit": (after.1 - before.1) as f64 / commits as f64,
    })))
}
