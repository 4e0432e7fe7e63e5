//! Exactly-once consumers over the wire (docs/PROTOCOL.md, "Tracking" and "Idempotent retry"): tracking positions
//! that only move forward and survive SIGKILL, a subscription worker killed at random points (and its daemon
//! SIGKILLed and restarted) that still applies every source event exactly once, and appends retried after their
//! answer was lost that return the first attempt's positions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opossum::client::{Client, ClientError, Subscription, SubscriptionMessage};
use opossum::model::{AppendCondition, Event, EventId, ReadOptions, Tracking};
use opossum::wire::ErrorCode;
use serde_json::json;

use crate::harness::{assert_error, event, eventually, query, read_all, Daemon, CLI};

const JOURNAL: &[&str] = &["--commit", "journal"];

struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
        println!("seed {seed}");
        Rng(seed)
    }

    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn restart(daemon: &mut Daemon, dir: &Path) {
    daemon.kill();
    *daemon = Daemon::start(dir, JOURNAL);
}

fn tracked(source: &str, position: u64) -> Option<Tracking> {
    Some(Tracking::new(source, position))
}

#[test]
fn tracking_positions_only_move_forward_and_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), JOURNAL);
    let mut c = daemon.client();
    assert_eq!(c.tracking_get("orders").unwrap(), 0, "an unknown source is at 0");
    let a = c.append_tracked(vec![event("Applied", &[])], None, tracked("orders", 5).as_ref()).unwrap();
    assert_eq!((a.first, a.last, a.replayed), (1, 1, false));
    assert_eq!(c.tracking_get("orders").unwrap(), 5);
    for refused in [5, 4, 0] {
        let e = c.append_tracked(vec![event("Applied", &[])], None, tracked("orders", refused).as_ref()).unwrap_err();
        assert!(e.is(ErrorCode::TrackingConflict), "{refused}: {e}");
        assert!(e.to_string().contains("at position 5"), "{e}");
    }
    assert_eq!(c.head().unwrap(), 1, "a refused tracking writes nothing");
    // A new source must start above 0; other sources are independent.
    let e = c.append_tracked(vec![event("Applied", &[])], None, tracked("fresh", 0).as_ref()).unwrap_err();
    assert!(e.is(ErrorCode::TrackingConflict), "{e}");
    c.append_tracked(vec![event("A", &[]), event("B", &[])], None, tracked("orders", 9).as_ref()).unwrap();
    c.append_tracked(vec![event("C", &[])], None, tracked("invoices", 1).as_ref()).unwrap();
    // A tracking conflict wins over a condition that holds; a failing condition with a good tracking writes nothing.
    let holds = AppendCondition { fail_if_events_match: query(&["Nothing"], &[]), after: None };
    let e = c.append_tracked(vec![event("D", &[])], Some(holds), tracked("orders", 9).as_ref()).unwrap_err();
    assert!(e.is(ErrorCode::TrackingConflict), "{e}");
    let fails = AppendCondition { fail_if_events_match: query(&["C"], &[]), after: None };
    let e = c.append_tracked(vec![event("D", &[])], Some(fails), tracked("orders", 10).as_ref()).unwrap_err();
    assert!(e.is(ErrorCode::AppendConditionFailed), "{e}");
    assert_eq!(c.tracking_get("orders").unwrap(), 9, "the failed append's tracking was not kept");
    assert_eq!(c.head().unwrap(), 4);

    // Bad sources are refused with their own codes, and change nothing.
    let mut raw = daemon.raw();
    let long = "s".repeat(opossum::limits::TRACKING_SOURCE_BYTES_MAX + 1);
    let line = json!({"id":1,"op":"append","events":[{"type":"X","data":{}}],"tracking":{"source":long,"position":1}});
    assert_error(&raw.call(&line.to_string()), "limit_exceeded");
    let line = json!({"id":2,"op":"append","events":[{"type":"X","data":{}}],"tracking":{"source":"","position":1}});
    assert_error(&raw.call(&line.to_string()), "invalid_request");
    let line = json!({"id":3,"op":"append","events":[{"type":"X","data":{}}],"tracking":{"source":"s","position":-1}});
    assert_error(&raw.call(&line.to_string()), "invalid_request");
    let line = json!({"id":4,"op":"tracking.get","source":"orders","extra":1});
    assert_error(&raw.call(&line.to_string()), "invalid_request");
    let answer = raw.call(&json!({"id":5,"op":"tracking.get","source":"orders"}).to_string());
    assert_eq!((answer["source"].as_str(), answer["position"].as_u64()), (Some("orders"), Some(9)), "{answer}");
    assert_eq!(c.head().unwrap(), 4);

    // Committed with the events: a SIGKILL keeps every acknowledged tracking, and the check goes on after it.
    drop((c, raw));
    restart(&mut daemon, dir.path());
    let mut c = daemon.client();
    assert_eq!((c.tracking_get("orders").unwrap(), c.tracking_get("invoices").unwrap()), (9, 1));
    let e = c.append_tracked(vec![event("E", &[])], None, tracked("orders", 9).as_ref()).unwrap_err();
    assert!(e.is(ErrorCode::TrackingConflict), "{e}");
    assert_eq!(c.append_tracked(vec![event("E", &[])], None, tracked("orders", 10).as_ref()).unwrap().first, 5);
    // And a clean restart too.
    drop(c);
    daemon.terminate();
    let mut daemon = Daemon::start(dir.path(), JOURNAL);
    assert_eq!(daemon.client().tracking_get("orders").unwrap(), 10);
    daemon.terminate();
}

#[test]
fn pipelined_appends_for_one_source_see_each_other() {
    // Appends pipelined on one connection run in order, each seeing the ones before it (concurrent connections,
    // whose appends share group commits, are `concurrent_appends_share_groups_and_still_see_each_other`).
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), JOURNAL);
    let mut raw = daemon.raw();
    let mut lines = String::new();
    for (id, position) in [(1, 1), (2, 1), (3, 2), (4, 2), (5, 1), (6, 3)] {
        let line = json!({"id":id,"op":"append","events":[{"type":"X","data":{"p":position}}],
                          "tracking":{"source":"s","position":position}});
        lines.push_str(&format!("{line}\n"));
    }
    raw.send(&lines);
    let answers: Vec<bool> = (0..6).map(|_| raw.recv().unwrap()["ok"].as_bool().unwrap()).collect();
    assert_eq!(answers, [true, false, true, false, false, true]);
    let mut c = daemon.client();
    assert_eq!((c.head().unwrap(), c.tracking_get("s").unwrap()), (3, 3));
}

#[test]
fn concurrent_appends_share_groups_and_still_see_each_other() {
    // Appends from many connections at once share group commits: of those tracking one source at one position,
    // exactly one commits; of those repeating one append's ids, all answer its positions and it commits once.
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), JOURNAL);
    let clients = 8;
    for round in 1..=5u64 {
        let ids: Vec<String> = (0..3).map(|_| EventId::random().to_string()).collect();
        let mut raws: Vec<_> = (0..2 * clients).map(|_| daemon.raw()).collect();
        for (n, raw) in raws.iter_mut().enumerate() {
            let line = if n % 2 == 0 {
                json!({"id":n,"op":"append","events":[{"type":"T","data":{}}],"tracking":{"source":"s","position":round}})
            } else {
                let events: Vec<_> = ids.iter().map(|id| json!({"type":"Paid","data":{},"id":id})).collect();
                json!({"id":n,"op":"append","events":events})
            };
            raw.send(&line.to_string());
        }
        let answers: Vec<_> = raws.iter_mut().map(|raw| raw.recv().unwrap()).collect();
        let tracked: Vec<_> = answers.iter().step_by(2).collect();
        assert_eq!(tracked.iter().filter(|a| a["ok"] == true).count(), 1, "{tracked:?}");
        assert!(tracked.iter().filter(|a| a["ok"] == false).all(|a| a["error"]["code"] == "tracking_conflict"));
        let repeated: Vec<_> = answers.iter().skip(1).step_by(2).collect();
        assert!(repeated.iter().all(|a| a["ok"] == true && a["first"] == repeated[0]["first"]), "{repeated:?}");
        assert_eq!(repeated.iter().filter(|a| a["replayed"] != true).count(), 1, "{repeated:?}");
    }
    let mut c = daemon.client();
    assert_eq!((c.head().unwrap(), c.tracking_get("s").unwrap()), (5 * 4, 5));
}

#[test]
fn files_mode_refuses_tracking_and_event_ids() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--commit", "files"]);
    let mut c = daemon.client();
    let e = c.append_tracked(vec![event("A", &[])], None, tracked("s", 1).as_ref()).unwrap_err();
    assert!(e.is(ErrorCode::InvalidRequest) && e.to_string().contains("--commit journal"), "{e}");
    let e = c.append(vec![event("A", &[]).with_id(EventId::random())], None).unwrap_err();
    assert!(e.is(ErrorCode::InvalidRequest) && e.to_string().contains("--commit journal"), "{e}");
    assert_eq!(c.head().unwrap(), 0);
    assert_eq!(c.tracking_get("s").unwrap(), 0);
}

#[test]
fn event_ids_must_be_uuids() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), JOURNAL);
    let mut raw = daemon.raw();
    for bad in [
        json!("not-a-uuid"),
        json!("0123456789abcdef0123456789abcdef"),
        json!(7),
        json!("{6ba7b810-9dad-11d1-80b4-00c04fd430c8}"),
    ] {
        let line = json!({"id":1,"op":"append","events":[{"type":"X","data":{},"id":bad}]});
        let message = assert_error(&raw.call(&line.to_string()), "invalid_request");
        assert!(message.contains("UUID") || message.contains("string"), "{message}");
    }
    let line =
        json!({"id":2,"op":"append","events":[{"type":"X","data":{},"id":"6BA7B810-9DAD-11D1-80B4-00C04FD430C8"}]});
    assert_eq!(raw.call(&line.to_string())["first"], 1);
}

/// Events with fresh ids and a tag naming the attempt, so a read can count them.
fn attempt_events(attempt: usize, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| event("Paid", &[("attempt", &attempt.to_string()), ("i", &i.to_string())]).with_id(EventId::random()))
        .collect()
}

fn append_line(id: u64, events: &[Event], after: u64) -> String {
    json!({"id":id,"op":"append","events":events,
           "condition":{"fail_if_events_match":{"items":[{"types":["Paid"]}]},"after":after}})
    .to_string()
}

#[test]
fn a_retry_after_a_lost_answer_returns_the_first_attempts_positions() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), JOURNAL);
    let paid = query(&["Paid"], &[]);
    let condition = |after: u64| AppendCondition { fail_if_events_match: paid.clone(), after: Some(after) };

    // Committed, answer lost: the first attempt commits (we read its answer only to know its positions), the
    // connection drops and the daemon is SIGKILLed; the retry's condition now fails because of exactly those
    // events, so it is answered with their positions and writes nothing.
    daemon.client().append(vec![event("Noise", &[])], None).unwrap();
    let events = attempt_events(0, 3);
    let mut raw = daemon.raw();
    let first = raw.call(&append_line(1, &events, 1));
    let (first_pos, last_pos) = (first["first"].as_u64().unwrap(), first["last"].as_u64().unwrap());
    assert_eq!((first_pos, last_pos), (2, 4));
    drop(raw);
    restart(&mut daemon, dir.path());
    let mut c = daemon.client();
    let retry = c.append(events.clone(), Some(condition(1))).unwrap();
    assert_eq!((retry.first, retry.last, retry.replayed), (2, 4, true));
    assert_eq!(c.head().unwrap(), 4, "a replay writes nothing");
    // Not a replay: another `after`, the events in another order, or an event without its id.
    let e = c.append(events.clone(), Some(condition(0))).unwrap_err();
    assert!(e.is(ErrorCode::AppendConditionFailed), "{e}");
    let reversed: Vec<Event> = events.iter().rev().cloned().collect();
    assert!(c.append(reversed, Some(condition(1))).unwrap_err().is(ErrorCode::AppendConditionFailed));
    let mut no_id = events.clone();
    no_id[2].id = None;
    assert!(c.append(no_id, Some(condition(1))).unwrap_err().is(ErrorCode::AppendConditionFailed));
    // Never sent: the daemon died before the first attempt reached it; the retry commits, once.
    let events = attempt_events(1, 2);
    restart(&mut daemon, dir.path());
    let mut c = daemon.client();
    let retry = c.append(events.clone(), Some(condition(4))).unwrap();
    assert_eq!((retry.first, retry.last, retry.replayed), (5, 6, false));
    assert!(c.append(events, Some(condition(4))).unwrap().replayed, "and a second retry replays it");
    assert_eq!(c.head().unwrap(), 6);
    let all = read_all(&mut c, &paid, ReadOptions::default());
    assert_eq!(all.len(), 5, "every attempt's events once");
}

#[test]
fn appends_raced_against_sigkill_commit_exactly_once_when_retried() {
    // The first attempt is sent and the daemon SIGKILLed right away, without reading the answer: it committed or
    // it did not. Either way the retry ends with the events stored once, at the positions it answers.
    let rounds: usize = std::env::var("OPOSSUM_RETRY_ROUNDS").ok().map_or(8, |s| s.parse().unwrap());
    let mut rng = Rng::seeded();
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), JOURNAL);
    let paid = query(&["Paid"], &[]);
    let (mut replayed, mut fresh) = (0, 0);
    for round in 0..rounds {
        let mut c = daemon.client();
        let after = c.head().unwrap();
        let events = attempt_events(round, 1 + rng.next(3) as usize);
        let mut raw = daemon.raw();
        raw.send(&append_line(1, &events, after));
        std::thread::sleep(Duration::from_micros(rng.next(3000)));
        drop((c, raw));
        restart(&mut daemon, dir.path());
        let mut c = daemon.client();
        let condition = AppendCondition { fail_if_events_match: paid.clone(), after: Some(after) };
        let answer = c.append(events.clone(), Some(condition)).unwrap();
        if answer.replayed {
            replayed += 1;
        } else {
            fresh += 1;
        }
        let round_query = query(&["Paid"], &[("attempt", &round.to_string())]);
        let stored = read_all(&mut c, &round_query, ReadOptions::default());
        assert_eq!(stored.len(), events.len(), "round {round}: stored once ({answer:?})");
        assert_eq!((stored[0].position, stored[stored.len() - 1].position), (answer.first, answer.last));
        assert_eq!(answer.first, after + 1);
    }
    println!("{rounds} rounds: {replayed} answered as replays, {fresh} committed by the retry");
}

#[test]
fn unconditional_repeats_are_deduplicated_only_when_exact() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), JOURNAL);
    let mut c = daemon.client();
    let events = attempt_events(0, 2);
    let a = c.append(events.clone(), None).unwrap();
    c.append(vec![event("Between", &[])], None).unwrap();
    let again = c.append(events.clone(), None).unwrap();
    assert_eq!((again.first, again.last, again.replayed), (a.first, a.last, true));
    assert_eq!(c.head().unwrap(), 3);
    // A partial repeat (one of the ids, or another order) is a new append: ids are not unique keys.
    let b = c.append(events[1..].to_vec(), None).unwrap();
    assert_eq!((b.first, b.replayed), (2, true), "the second event alone sits at 2: still an exact repeat");
    let reversed: Vec<Event> = events.iter().rev().cloned().collect();
    let r = c.append(reversed, None).unwrap();
    assert_eq!((r.first, r.last, r.replayed), (4, 5, false));
    // ... after which an id stands for its newest position.
    let again = c.append(vec![events[1].clone(), events[0].clone()], None).unwrap();
    assert_eq!((again.first, again.replayed), (4, true));
}

const SOURCE: &str = "payments-worker";

fn is_timeout(e: &ClientError) -> bool {
    matches!(e, ClientError::Io(io) if matches!(io.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

/// A projection worker: subscribes to `Src` events after its tracking position and appends one `Result` per
/// source event with tracking. It "dies" at random points — before applying an event, after sending the append
/// but before its answer, after the answer — by dropping every connection and starting again from `tracking.get`,
/// as a SIGKILLed worker process would; it also dies whenever the daemon does.
fn worker(socket: PathBuf, stop: Arc<AtomicBool>, mut rng: Rng, deaths: Arc<AtomicU64>) {
    let die = || {
        deaths.fetch_add(1, Ordering::Relaxed);
    };
    'incarnation: while !stop.load(Ordering::Relaxed) {
        let Ok(mut client) = Client::connect(&socket) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        client.set_timeout(Some(Duration::from_secs(10))).unwrap();
        let Ok(last) = client.tracking_get(SOURCE) else { continue };
        let mut sub = Subscription::new(&socket, query(&["Src"], &[]), last).reconnect_for(Duration::ZERO);
        sub.set_timeout(Some(Duration::from_millis(100))).unwrap();
        while !stop.load(Ordering::Relaxed) {
            let source = match sub.next_message() {
                Ok(SubscriptionMessage::Event(e)) => e.position,
                Ok(SubscriptionMessage::Heartbeat { .. }) => continue,
                Err(e) if is_timeout(&e) => continue,
                Err(_) => continue 'incarnation,
            };
            let result = event("Result", &[("src", &source.to_string())]);
            match rng.next(16) {
                0 => {
                    die();
                    continue 'incarnation;
                }
                1 => {
                    let body = json!({"events":[result],"tracking":{"source":SOURCE,"position":source}});
                    let _ = client.send("append", &body);
                    die();
                    continue 'incarnation;
                }
                _ => {}
            }
            match client.append_tracked(vec![result], None, tracked(SOURCE, source).as_ref()) {
                Ok(_) => {}
                // An earlier incarnation's append, whose answer it never read, applied this event already.
                Err(e) if e.is(ErrorCode::TrackingConflict) => {}
                Err(_) => continue 'incarnation,
            }
            if rng.next(16) == 0 {
                die();
                continue 'incarnation;
            }
        }
    }
}

#[test]
fn a_worker_killed_at_random_points_applies_every_source_event_once() {
    let mut rng = Rng::seeded();
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), JOURNAL);
    let stop = Arc::new(AtomicBool::new(false));
    let deaths = Arc::new(AtomicU64::new(0));
    let handle = {
        let (socket, stop, deaths) = (daemon.socket.clone(), stop.clone(), deaths.clone());
        let rng = Rng(rng.next(u64::MAX) | 1);
        std::thread::spawn(move || worker(socket, stop, rng, deaths))
    };
    let mut daemon_kills = 0;
    for round in 0..6 {
        let mut c = daemon.client();
        for batch in 0..10 {
            let events =
                (0..1 + rng.next(4)).map(|i| event("Src", &[("b", &format!("{round}.{batch}.{i}"))])).collect();
            c.append(events, None).unwrap();
            std::thread::sleep(Duration::from_millis(rng.next(15)));
        }
        if round < 5 {
            // The daemon dies mid-stream: the worker's connections break wherever it was.
            drop(c);
            std::thread::sleep(Duration::from_millis(rng.next(40)));
            restart(&mut daemon, dir.path());
            daemon_kills += 1;
        }
    }
    let mut c = daemon.client();
    let sources: Vec<u64> =
        read_all(&mut c, &query(&["Src"], &[]), ReadOptions::default()).iter().map(|e| e.position).collect();
    let last_source = *sources.last().unwrap();
    eventually("the worker to catch up", || c.tracking_get(SOURCE).unwrap() == last_source);
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
    let mut applied: BTreeMap<u64, usize> = BTreeMap::new();
    for e in read_all(&mut c, &query(&["Result"], &[]), ReadOptions::default()) {
        let src: u64 = e.tags.iter().find(|t| t.key == "src").unwrap().value.parse().unwrap();
        *applied.entry(src).or_default() += 1;
    }
    let twice: Vec<(&u64, &usize)> = applied.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "source events applied more than once: {twice:?}");
    assert_eq!(applied.keys().copied().collect::<Vec<_>>(), sources, "every source event applied");
    let deaths = deaths.load(Ordering::Relaxed);
    println!("{} source events, worker deaths {deaths}, daemon SIGKILLs {daemon_kills}", sources.len());
    assert!(deaths > 0 && daemon_kills > 0);
}

#[test]
fn the_cli_appends_with_ids_and_tracking() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), JOURNAL);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(CLI).arg("--socket").arg(&daemon.socket).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let id = "6ba7b810-9dad-41d1-80b4-00c04fd430c8";
    let (code, out) = cli(&["append", "--type", "A", "--id", id, "--tracking", "w=2"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = cli(&["append", "--type", "A", "--id", id]);
    assert!(code == Some(0) && out.contains("\"replayed\":true"), "{out}");
    assert_eq!(cli(&["append", "--type", "B", "--tracking", "w=2"]).0, Some(1), "a tracking conflict exits 1");
    let (code, out) = cli(&["tracking", "w"]);
    assert!(code == Some(0) && out.contains("\"position\":2"), "{out}");
    assert_eq!(cli(&["append", "--type", "A", "--id", "nope"]).0, Some(2));
    assert_eq!(daemon.client().head().unwrap(), 1);
}

#[test]
fn the_python_client_tracks_and_retries() {
    if std::process::Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 not found: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), JOURNAL);
    let program = r#"
import sys
sys.path.insert(0, sys.argv[1])
import client
c = client.Client(sys.argv[2])
events = [{"type": "X", "data": {}, "id": client.new_event_id()}]
first = c.append(events, tracking=("w", 3))
again = c.append(events, tracking=("w", 4))
assert (again["first"], again.get("replayed")) == (first["first"], True), again
try:
    c.append([{"type": "X", "data": {}}], tracking=("w", 3))
    raise SystemExit("no tracking conflict")
except client.OpossumError as e:
    assert e.code == "tracking_conflict", e.code
print(c.tracking_get("w"), c.tracking_get("other"), c.head())
"#;
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts");
    let out =
        std::process::Command::new("python3").arg("-c").arg(program).arg(scripts).arg(&daemon.socket).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), "3 0 1");
}
