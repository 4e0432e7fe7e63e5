//! Latency probe for durable conditional appends (issue 13's p99): N closed-loop clients against a running
//! `opossumd`, each appending 1 event with `fail_if_events_match {stream tag}` after its last position (as the peer
//! benchmark does), recording every request's start (µs since the Unix epoch) and latency into a CSV; with `--pid`,
//! samples every thread of the daemon (`/proc/PID/task/*/stat` utime+stime and `schedstat` run-queue delay) every
//! `--sample-ms` into a second CSV, so slow requests can be lined up with what each thread did at the time.
//!
//! ```text
//! target/release/examples/p99_probe --socket S --clients 64 --seconds 10 --out lat.csv --pid PID --threads thr.csv
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use opossum::client::Client;
use opossum::model::{AppendCondition, Event, Query, QueryItem, Tag};
use opossum_bench::data::sized_data;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long)]
    threads: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    sample_ms: u64,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// (tid, name, utime+stime ticks, run-queue delay ns, on-cpu ns) of every thread of `pid`.
fn sample(pid: u32) -> Vec<(u32, String, u64, u64, u64)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for entry in dir.flatten() {
        let tid: u32 = entry.file_name().to_string_lossy().parse().unwrap_or(0);
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(open) = stat.find('(') else { continue };
        let Some(close) = stat.rfind(')') else { continue };
        let name = stat[open + 1..close].replace(',', ";");
        let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks = rest.get(11).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
            + rest.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let sched = std::fs::read_to_string(entry.path().join("schedstat")).unwrap_or_default();
        let f: Vec<u64> = sched.split_whitespace().filter_map(|s| s.parse().ok()).collect();
        out.push((tid, name, ticks, f.get(1).copied().unwrap_or(0), f.first().copied().unwrap_or(0)));
    }
    out
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = match (args.pid, &args.threads) {
        (Some(pid), Some(path)) => {
            let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
            let stop = stop.clone();
            let every = Duration::from_millis(args.sample_ms);
            Some(std::thread::spawn(move || {
                writeln!(file, "t_us,tid,name,ticks,rq_delay_ns,cpu_ns").unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = now_us();
                    for (tid, name, ticks, delay, cpu) in sample(pid) {
                        writeln!(file, "{t},{tid},{name},{ticks},{delay},{cpu}").unwrap();
                    }
                    std::thread::sleep(every);
                }
                file.flush().unwrap();
            }))
        }
        _ => None,
    };
    let rows: Arc<Mutex<Vec<(u64, u64, usize)>>> = Arc::new(Mutex::new(Vec::new()));
    let run = now_us();
    let mut handles = Vec::new();
    for c in 0..args.clients {
        let socket = args.socket.clone();
        let rows = rows.clone();
        handles.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut client = Client::connect(&socket)?;
            let tag = Tag::new("client", format!("probe-{run}-{c}"));
            let query = Query::items(vec![QueryItem::new(Vec::new(), vec![tag.clone()])?])?;
            let mut after = None;
            let mut mine = Vec::new();
            let mut i = c as u64 * 1_000_000_000;
            while Instant::now() < deadline {
                let event = Event::new("PeerEvent", &sized_data(i), vec![tag.clone()])?;
                let condition = AppendCondition { fail_if_events_match: query.clone(), after };
                let t = now_us();
                let started = Instant::now();
                after = Some(client.append(vec![event], Some(condition))?.last);
                mine.push((t, started.elapsed().as_micros() as u64, c));
                i += 1;
            }
            rows.lock().unwrap().extend(mine);
            Ok(())
        }));
    }
    for h in handles {
        h.join().unwrap()?;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(s) = sampler {
        s.join().unwrap();
    }
    let mut rows = Arc::try_unwrap(rows).unwrap().into_inner().unwrap();
    rows.sort();
    let mut file = std::io::BufWriter::new(std::fs::File::create(&args.out)?);
    writeln!(file, "start_us,latency_us,client")?;
    for (t, l, c) in &rows {
        writeln!(file, "{t},{l},{c}")?;
    }
    let mut lat: Vec<u64> = rows.iter().map(|r| r.1).collect();
    lat.sort_unstable();
    let q = |f: f64| lat[((lat.len() as f64 * f) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    println!(
        "clients {} requests {} events/s {:.0} p50 {:.2} ms p99 {:.2} ms p999 {:.2} ms max {:.2} ms",
        args.clients,
        lat.len(),
        lat.len() as f64 / args.seconds,
        q(0.5),
        q(0.99),
        q(0.999),
        *lat.last().unwrap() as f64 / 1000.0
    );
    Ok(())
}
