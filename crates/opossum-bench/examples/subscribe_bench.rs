//! Subscription benchmark: starts its own `opossumd` on temporary stores and measures, side by side in one run,
//!
//! 1. catch-up: `subscribe` from position 0 over N events (default 200,000) into the Rust client, next to a plain
//!    `read` of all of them on the same daemon (alternating, best of `--rounds`);
//! 2. live delivery under 16 concurrent single-event durable appenders (`--durability fsync`): append throughput
//!    and append-to-delivery latency (from sending the append to the subscriber decoding the event) with 0, 1 and
//!    100 subscribers to `"all"`, with 100 subscribers each to its own tag (1 % of the events), and with one
//!    subscriber that stops reading (its latency then counts the stall; the appends/s and the daemon's peak RSS
//!    are the point). Each level runs `--seconds`, or until `--level-events` events were appended.
//!
//! Every daemon gets `--daemon-arg`s (the commit mode, e.g. `--daemon-arg=--commit --daemon-arg=journal
//! --daemon-arg=--mirror --daemon-arg=off`); the catch-up store is filled with `--durability none`.
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! target/release/examples/subscribe_bench                    # defaults
//! target/release/examples/subscribe_bench --events 1000000 --seconds 10 --appenders 16
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use opossum::client::{Client, ClientError, Subscription, SubscriptionMessage};
use opossum::model::{Event, Query, QueryItem, ReadOptions, Tag};
use opossum_bench::daemon::Daemon;

struct Args {
    events: u64,
    rounds: usize,
    seconds: f64,
    appenders: usize,
    dir: PathBuf,
    daemon: PathBuf,
    skip_catch_up: bool,
    skip_live: bool,
    /// Extra daemon flags for every daemon (`--daemon-arg --sync-strategy --daemon-arg per-file`).
    daemon_args: Vec<String>,
    /// End each live level once this many events were appended (and at least `seconds` passed) instead.
    level_events: Option<u64>,
    /// The live levels, in order (`--levels none,all1,all100,tag100,stalled,none`).
    levels: Vec<Subscribers>,
}

fn parse_args() -> anyhow::Result<Args> {
    let exe = std::env::current_exe()?;
    let default_daemon = exe.parent().and_then(Path::parent).map(|p| p.join("opossumd")).unwrap_or_default();
    let mut a = Args {
        events: 200_000,
        rounds: 2,
        seconds: 5.0,
        appenders: 16,
        dir: std::env::temp_dir(),
        daemon: default_daemon,
        skip_catch_up: false,
        skip_live: false,
        daemon_args: Vec::new(),
        level_events: None,
        levels: vec![
            Subscribers::None,
            Subscribers::All(1),
            Subscribers::All(100),
            Subscribers::OwnTag(100),
            Subscribers::Stalled,
            Subscribers::None,
        ],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--events" => a.events = value()?.parse()?,
            "--rounds" => a.rounds = value()?.parse()?,
            "--seconds" => a.seconds = value()?.parse()?,
            "--appenders" => a.appenders = value()?.parse()?,
            "--dir" => a.dir = value()?.into(),
            "--daemon" => a.daemon = value()?.into(),
            "--skip-catch-up" => a.skip_catch_up = true,
            "--skip-live" => a.skip_live = true,
            "--daemon-arg" => a.daemon_args.push(value()?),
            "--level-events" => a.level_events = Some(value()?.parse()?),
            "--levels" => {
                a.levels = value()?
                    .split(',')
                    .map(|level| match level {
                        "none" => Ok(Subscribers::None),
                        "stalled" => Ok(Subscribers::Stalled),
                        l if l.starts_with("all") => Ok(Subscribers::All(l[3..].parse()?)),
                        l if l.starts_with("tag") => Ok(Subscribers::OwnTag(l[3..].parse()?)),
                        other => bail!("unknown level {other}: none, allN, tagN, stalled"),
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            "--help" | "-h" => {
                println!(
                    "subscribe_bench [--events N] [--rounds R] [--seconds S] [--appenders A] [--dir DIR] \
                     [--daemon PATH] [--skip-catch-up] [--skip-live] [--daemon-arg FLAG]... \
                     [--levels none,all1,all100,tag100,stalled,none] [--level-events N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if !a.daemon.exists() {
        bail!("{} not found: build it (cargo build --release --bins) or pass --daemon", a.daemon.display());
    }
    Ok(a)
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let work = tempfile::Builder::new().prefix("opossum-subscribe-bench-").tempdir_in(&args.dir)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("# opossum subscription benchmark ({cores} cores, store under {})", work.path().display());
    if !args.skip_catch_up {
        catch_up(&args, work.path())?;
    }
    if !args.skip_live {
        live(&args, work.path())?;
    }
    Ok(())
}

fn catch_up(args: &Args, dir: &Path) -> anyhow::Result<()> {
    let n = args.events;
    let flags =
        [&["--durability", "none"][..], &args.daemon_args.iter().map(String::as_str).collect::<Vec<_>>()].concat();
    println!(
        "\n## catch-up from 0 over {n} events against a plain read (same daemon, alternating; opossumd {})",
        flags.join(" ")
    );
    let daemon = Daemon::start(&args.daemon, &dir.join("catch-up-store"), &dir.join("catch-up.sock"), &flags)?;
    let mut client = Client::connect(&daemon.socket)?;
    let mut i = 0;
    while i < n {
        let m = (n - i).min(1000);
        let events = (i..i + m)
            .map(|j| {
                let data = format!(r#"{{"studentId":{j},"name":"Student {j}","credits":12}}"#);
                Event::new("StudentRegistered", &data, vec![Tag::new("studentId", j.to_string())]).unwrap()
            })
            .collect();
        client.append(events, None)?;
        i += m;
    }
    let (mut best_read, mut best_sub) = (Duration::MAX, Duration::MAX);
    for round in 0..args.rounds {
        let t = Instant::now();
        let mut count = 0u64;
        for event in client.read(&Query::All, ReadOptions::default())? {
            event?;
            count += 1;
        }
        let read = t.elapsed();
        assert_eq!(count, n);
        let t = Instant::now();
        let mut sub = Subscription::new(&daemon.socket, Query::All, 0);
        let mut count = 0u64;
        while count < n {
            if let SubscriptionMessage::Event(_) = sub.next_message()? {
                count += 1;
            }
        }
        let caught_up = t.elapsed();
        sub.close()?;
        println!(
            "round {round}: read {:.0} events/s ({:.2} s), subscribe catch-up {:.0} events/s ({:.2} s)",
            rate(n, read),
            read.as_secs_f64(),
            rate(n, caught_up),
            caught_up.as_secs_f64()
        );
        best_read = best_read.min(read);
        best_sub = best_sub.min(caught_up);
    }
    println!(
        "best: read {:.0} events/s, catch-up {:.0} events/s: catch-up/read = {:.2}",
        rate(n, best_read),
        rate(n, best_sub),
        best_read.as_secs_f64() / best_sub.as_secs_f64()
    );
    daemon.stop()?;
    std::fs::remove_dir_all(dir.join("catch-up-store"))?;
    Ok(())
}

/// The daemon's resident memory in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[derive(Clone, Copy)]
enum Subscribers {
    None,
    All(usize),
    OwnTag(usize),
    /// One subscriber to all that takes one event and then stops reading until the appenders stop.
    Stalled,
}

impl Subscribers {
    fn count(self) -> usize {
        match self {
            Subscribers::None => 0,
            Subscribers::Stalled => 1,
            Subscribers::All(n) | Subscribers::OwnTag(n) => n,
        }
    }

    fn label(self) -> String {
        match self {
            Subscribers::None => "no subscribers".into(),
            Subscribers::All(n) => format!("{n} subscribers to all"),
            Subscribers::OwnTag(n) => format!("{n} subscribers, each to its own tag"),
            Subscribers::Stalled => "1 subscriber to all that stops reading".into(),
        }
    }
}

/// Tags of the appended events: `k` cycles through this many values, one per tag subscriber.
const TAG_VALUES: u64 = 100;

fn live(args: &Args, dir: &Path) -> anyhow::Result<()> {
    let flags =
        [&["--durability", "fsync"][..], &args.daemon_args.iter().map(String::as_str).collect::<Vec<_>>()].concat();
    println!(
        "\n## live delivery under {} concurrent single-event appenders (opossumd {}; {} s per level{})",
        args.appenders,
        flags.join(" "),
        args.seconds,
        args.level_events.map_or(String::new(), |n| format!(" and at least {n} events"))
    );
    println!("| subscribers | appends/s | events | append p50 / p99 ms | delivery p50 / p99 ms | deliveries | daemon RSS MiB before / peak |");
    println!("|---|---|---|---|---|---|---|");
    for (k, &level) in args.levels.iter().enumerate() {
        let daemon = Daemon::start(
            &args.daemon,
            &dir.join(format!("live-store-{k}")),
            &dir.join(format!("live-{k}.sock")),
            &flags,
        )?;
        let pid = daemon.pid().context("daemon not running")?;
        let epoch = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let final_head = Arc::new(AtomicU64::new(0));
        let ready = Arc::new(Barrier::new(level.count() + 1));
        let subscribers: Vec<_> = (0..level.count())
            .map(|i| {
                let (socket, final_head, ready) = (daemon.socket.clone(), final_head.clone(), ready.clone());
                std::thread::spawn(move || -> anyhow::Result<(Histogram<u64>, u64)> {
                    let query = match level {
                        Subscribers::OwnTag(_) => Query::Items(vec![QueryItem {
                            types: vec![],
                            tags: vec![Tag::new("k", (i as u64 % TAG_VALUES).to_string())],
                        }]),
                        _ => Query::All,
                    };
                    let mut sub = Subscription::new(&socket, query, 0);
                    sub.set_timeout(Some(Duration::from_millis(100)))?;
                    ready.wait();
                    let mut latency = Histogram::<u64>::new(3)?;
                    let mut delivered = 0;
                    loop {
                        let target = final_head.load(Ordering::SeqCst);
                        match sub.next_message() {
                            Ok(SubscriptionMessage::Event(event)) => {
                                if matches!(level, Subscribers::Stalled) && delivered == 1 && target == 0 {
                                    // Stop reading (the socket buffers fill) until the appenders are done.
                                    while final_head.load(Ordering::SeqCst) == 0 {
                                        std::thread::sleep(Duration::from_millis(10));
                                    }
                                }
                                let now = epoch.elapsed().as_micros() as u64;
                                let sent: u64 = event.data.get()[5..].trim_end_matches('}').parse()?;
                                latency.record(now.saturating_sub(sent))?;
                                delivered += 1;
                            }
                            Ok(SubscriptionMessage::Heartbeat { head }) if target > 0 && head >= target => {
                                return Ok((latency, delivered));
                            }
                            Ok(SubscriptionMessage::Heartbeat { .. }) => {}
                            Err(ClientError::Io(e))
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                })
            })
            .collect();
        ready.wait();
        let rss_before = rss_kib(pid);
        let appended = Arc::new(AtomicU64::new(0));
        let appenders: Vec<_> = (0..args.appenders)
            .map(|a| {
                let (socket, stop, appended) = (daemon.socket.clone(), stop.clone(), appended.clone());
                std::thread::spawn(move || -> anyhow::Result<Histogram<u64>> {
                    let mut client = Client::connect(&socket)?;
                    let mut latency = Histogram::<u64>::new(3)?;
                    let mut n = a as u64;
                    while !stop.load(Ordering::Relaxed) {
                        let sent = epoch.elapsed().as_micros() as u64;
                        let data = format!(r#"{{"t":{sent}}}"#);
                        let tag = Tag::new("k", (n % TAG_VALUES).to_string());
                        client.append(vec![Event::new("Tick", &data, vec![tag])?], None)?;
                        latency.record(epoch.elapsed().as_micros() as u64 - sent)?;
                        appended.fetch_add(1, Ordering::Relaxed);
                        n += 7;
                    }
                    Ok(latency)
                })
            })
            .collect();
        let started = Instant::now();
        let mut rss_peak = rss_before;
        while started.elapsed().as_secs_f64() < args.seconds
            || args.level_events.is_some_and(|n| appended.load(Ordering::Relaxed) < n)
        {
            std::thread::sleep(Duration::from_millis(100));
            rss_peak = rss_peak.max(rss_kib(pid));
        }
        stop.store(true, Ordering::Relaxed);
        let mut appends = Histogram::<u64>::new(3)?;
        for a in appenders {
            appends.add(a.join().expect("appender panicked")?)?;
        }
        let took = started.elapsed();
        final_head.store(Client::connect(&daemon.socket)?.head()?.max(1), Ordering::SeqCst);
        let mut deliveries = Histogram::<u64>::new(3)?;
        let mut delivered = 0;
        for s in subscribers {
            let (h, n) = s.join().expect("subscriber panicked")?;
            if matches!(level, Subscribers::All(_) | Subscribers::Stalled) {
                let head = final_head.load(Ordering::SeqCst);
                anyhow::ensure!(n == head, "a subscriber to all got {n} events, the head is {head}");
            }
            deliveries.add(h)?;
            delivered += n;
        }
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let delivery = if delivered == 0 {
            "-".to_string()
        } else {
            format!("{:.2} / {:.2}", ms(&deliveries, 0.5), ms(&deliveries, 0.99))
        };
        println!(
            "| {} | {:.0} | {} | {:.2} / {:.2} | {delivery} | {delivered} | {:.1} / {:.1} |",
            level.label(),
            rate(appends.len(), took),
            appends.len(),
            ms(&appends, 0.5),
            ms(&appends, 0.99),
            rss_before as f64 / 1024.0,
            rss_peak as f64 / 1024.0
        );
        daemon.stop()?;
        std::fs::remove_dir_all(dir.join(format!("live-store-{k}")))?;
    }
    Ok(())
}
