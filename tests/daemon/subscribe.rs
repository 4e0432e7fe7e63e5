//! `subscribe` against the real daemon: the catch-up/live handover under concurrent appends, a consumer that stops
//! reading, heartbeats and the final line, and resuming across SIGTERM and SIGKILL + restart.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use opossum::client::{Client, Subscription, SubscriptionMessage};
use opossum::model::{Event, Query, QueryItem, ReadOptions, SequencedEvent, Tag};
use serde_json::Value;

use crate::harness::*;

fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap()
}

/// The queries the handover's subscribers use, by subscriber number.
fn handover_query(i: usize) -> Query {
    let tag = |k: usize| Tag::new("k", k.to_string());
    match i % 6 {
        0 => Query::All,
        1 => Query::Items(vec![QueryItem { types: vec!["A".into()], tags: vec![] }]),
        2 => Query::Items(vec![QueryItem { types: vec![], tags: vec![tag(i % 5)] }]),
        3 => Query::Items(vec![QueryItem { types: vec!["B".into()], tags: vec![tag(i % 5)] }]),
        4 => Query::Items(vec![
            QueryItem { types: vec!["C".into()], tags: vec![] },
            QueryItem { types: vec![], tags: vec![tag(1)] },
        ]),
        _ => Query::Items(vec![QueryItem { types: vec!["Never".into()], tags: vec![] }]),
    }
}

/// Reads messages until a heartbeat says the subscription has everything through `head`.
fn drain_to(sub: &mut Subscription, head: u64, events: &mut Vec<SequencedEvent>) {
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < DEADLINE, "subscription did not catch up with {head}");
        match sub.next_message().unwrap() {
            SubscriptionMessage::Event(e) => events.push(e),
            SubscriptionMessage::Heartbeat { head: h } if h >= head => return,
            SubscriptionMessage::Heartbeat { .. } => {}
        }
    }
}

#[test]
fn subscribers_joining_under_concurrent_appends_get_exactly_what_read_returns() {
    const WRITERS: usize = 4;
    const SUBSCRIBERS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    seed(&mut daemon.client(), 300, 100);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (socket, stop) = (daemon.socket.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(&socket).unwrap();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let size = 1 + n % 4;
                    let events: Vec<Event> = (0..size)
                        .map(|j| {
                            let t = ["A", "B", "C"][(n + j + w) % 3];
                            event(t, &[("k", &((n * 7 + j) % 5).to_string())])
                        })
                        .collect();
                    client.append(events, None).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    // Subscribers join one after another while the writers run: from 0, from the middle, from the head.
    let final_head = Arc::new(AtomicU64::new(0));
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(20));
            let head = daemon.client().head().unwrap();
            let after = match i % 3 {
                0 => 0,
                1 => head / 2,
                _ => head,
            };
            let (socket, final_head) = (daemon.socket.clone(), final_head.clone());
            std::thread::spawn(move || {
                let query = handover_query(i);
                let mut sub = Subscription::new(&socket, query.clone(), after).reconnect_for(Duration::ZERO);
                let mut events = Vec::new();
                // Live until the writers stop, then up to the final head.
                while final_head.load(Ordering::SeqCst) == 0 {
                    sub.set_timeout(Some(Duration::from_millis(200))).unwrap();
                    match sub.next_message() {
                        Ok(SubscriptionMessage::Event(e)) => events.push(e),
                        Ok(SubscriptionMessage::Heartbeat { .. }) => {}
                        Err(opossum::client::ClientError::Io(_)) => {}
                        Err(e) => panic!("subscriber {i}: {e}"),
                    }
                }
                sub.set_timeout(Some(DEADLINE)).unwrap();
                drain_to(&mut sub, final_head.load(Ordering::SeqCst), &mut events);
                let (late, done) = sub.close().unwrap();
                assert!(late.is_empty(), "subscriber {i}: events after the final head: {:?}", positions(&late));
                assert!(done.is_some(), "subscriber {i}: no final line");
                (i, query, after, events)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let appends: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
    let mut client = daemon.client();
    let head = client.head().unwrap();
    final_head.store(head, Ordering::SeqCst);
    let mut delivered = 0;
    for s in subscribers {
        let (i, query, after, events) = s.join().unwrap();
        let expected = read_all(&mut client, &query, ReadOptions { after: Some(after), ..Default::default() });
        assert_eq!(positions(&events), positions(&expected), "subscriber {i} (after {after}, {query:?})");
        assert_eq!(json(&events), json(&expected), "subscriber {i}: the events themselves");
        delivered += events.len();
    }
    println!("handover: {appends} appends while {SUBSCRIBERS} subscribers joined; head {head}; {delivered} deliveries");
}

/// The daemon's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_consumer_that_stops_reading_costs_bounded_memory_and_then_gets_everything() {
    // 100,000 events in journal mode; in files mode (a file per event, slow in a debug build under load) fewer,
    // larger ones for the same ~80-100 MB of payload.
    let files = std::env::var("OPOSSUM_TEST_COMMIT").map_or(true, |m| m == "files");
    let (events, data_bytes) = if files { (20_000, 4000) } else { (100_000, 1000) };
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none", "--index-writes", "deferred"]);
    let mut client = daemon.client();
    client.append(vec![event("Slow", &[])], None).unwrap();
    // A raw subscriber: takes its first line, then stops reading while the socket buffers fill.
    let stream = UnixStream::connect(&daemon.socket).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    writer
        .write_all(b"{\"id\":\"slow\",\"op\":\"subscribe\",\"query\":{\"items\":[{\"types\":[\"Slow\"]}]}}\n")
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("\"position\":1"), "{line}");
    let rss_before = rss_kib(daemon.child.id());
    let data = format!("{{\"pad\":\"{}\"}}", "x".repeat(data_bytes));
    let mut rss_max = rss_before;
    for chunk in 0..events / 500 {
        let events = (0..500).map(|_| Event::new("Slow", &data, vec![]).unwrap()).collect();
        client.append(events, None).unwrap();
        if chunk % 4 == 0 {
            rss_max = rss_max.max(rss_kib(daemon.child.id()));
        }
    }
    let head = client.head().unwrap();
    rss_max = rss_max.max(rss_kib(daemon.child.id()));
    let payload_kib = (events * data_bytes / 1024) as u64;
    println!(
        "slow consumer: daemon VmRSS {rss_before} KiB before, at most {rss_max} KiB while {events} events \
         ({payload_kib} KiB of data) were appended"
    );
    // Everything queued for the stalled subscriber would be ~80 MB; its buffer is bounded far below that (the rest
    // of the growth is the appends' own request buffers, kept by the allocator).
    assert!(rss_max < rss_before + payload_kib / 2, "RSS grew from {rss_before} to {rss_max} KiB");
    let stats = client.stats().unwrap();
    assert_eq!(stats["store"]["subscriptions_active"], 1, "{stats}");
    // Only what fits its socket and its buffers was handed out while it stalled.
    let delivered = stats["store"]["subscription_events_delivered"].as_u64().unwrap();
    assert!(delivered < head / 2, "{stats}");
    // Now it reads again: everything, in order, then a heartbeat at the head.
    let mut next = 2;
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the daemon closed the subscription");
        let value: Value = serde_json::from_str(&line).unwrap();
        if let Some(event) = value.get("event") {
            assert_eq!(event["position"], next, "positions in order, none missing");
            next += 1;
        } else {
            assert_eq!(value["heartbeat"], true, "{line}");
            if value["head"] == head {
                break;
            }
        }
    }
    assert_eq!(next - 1, head);
    // Closing our side ends the stream with the final line.
    reader.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    let done: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(done["ok"], true, "{line}");
    assert_eq!((done["count"].as_u64(), done["last"].as_u64()), (Some(head), Some(head)), "{line}");
    // It had caught up before it stalled, and fell back to catch-up reads after it.
    let stats = client.stats().unwrap();
    assert_eq!(stats["store"]["subscription_catch_up_fallbacks"], 1, "{stats}");
    assert_eq!(stats["store"]["subscription_events_delivered"], head, "{stats}");
}

#[test]
fn bad_subscribe_requests_are_answered_and_the_connection_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    let mut raw = daemon.raw();
    let answer = raw.call(r#"{"id":1,"op":"subscribe","query":{"items":[{}]}}"#);
    assert_error(&answer, "invalid_request");
    let answer = raw.call(r#"{"id":2,"op":"subscribe","afterr":3}"#);
    assert!(assert_error(&answer, "invalid_request").contains("afterr"));
    let answer = raw.call(r#"{"id":3,"op":"head"}"#);
    assert_eq!(answer["head"], 0);
}

#[test]
fn an_idle_subscription_gets_heartbeats_and_a_final_line_when_the_client_closes() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    let mut client = daemon.client();
    seed(&mut client, 5, 5);
    let mut raw = daemon.raw();
    raw.send(r#"{"id":"s","op":"subscribe","after":3}"#);
    assert_eq!(raw.recv().unwrap()["event"]["position"], 4);
    assert_eq!(raw.recv().unwrap()["event"]["position"], 5);
    let beat = raw.recv().unwrap();
    assert_eq!(beat, serde_json::json!({"id":"s","heartbeat":true,"head":5}));
    client.append(vec![event("Live", &[])], None).unwrap();
    assert_eq!(raw.recv().unwrap()["event"]["type"], "Live");
    // Anything after `subscribe` ends the stream: the final line says where to resume.
    raw.send(r#"{"id":"x","op":"head"}"#);
    let done = raw.recv().unwrap();
    assert_eq!(done, serde_json::json!({"id":"s","ok":true,"count":3,"last":6,"head":6}));
    assert!(raw.recv().is_none(), "the connection closes after the final line");
}

/// A consumer thread: follows a subscription from 0 until it has `want` events, then returns them.
fn follow(socket: std::path::PathBuf, want: Arc<AtomicU64>) -> std::thread::JoinHandle<(Vec<SequencedEvent>, u64)> {
    std::thread::spawn(move || {
        let mut sub = Subscription::new(&socket, Query::All, 0).reconnect_for(DEADLINE);
        let mut events: Vec<SequencedEvent> = Vec::new();
        let started = Instant::now();
        loop {
            let want_now = want.load(Ordering::SeqCst);
            if want_now != 0 && events.last().map_or(0, |e| e.position) >= want_now {
                return (events, sub.reconnects());
            }
            assert!(started.elapsed() < 4 * DEADLINE, "consumer stuck at {:?}", events.last().map(|e| e.position));
            match sub.next_message() {
                Ok(SubscriptionMessage::Event(e)) => events.push(e),
                Ok(SubscriptionMessage::Heartbeat { .. }) => {}
                Err(e) => panic!("subscription failed: {e}"),
            }
        }
    })
}

/// Appends batches of uniquely tagged events until `stop`; returns every acknowledged (first, batch tag).
fn append_until(
    name: &str,
    socket: std::path::PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(u64, String)>> {
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut acked = Vec::new();
        let Ok(mut client) = Client::connect(&socket) else { return acked };
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let batch = format!("{name}-{n}");
            n += 1;
            let events = (0..3).map(|k| event("Resume", &[("batch", &batch), ("k", &k.to_string())])).collect();
            match client.append(events, None) {
                Ok(a) => acked.push((a.first, batch)),
                Err(_) => return acked, // the daemon went away under us
            }
        }
        acked
    })
}

fn check_exact_sequence(daemon: &Daemon, events: &[SequencedEvent]) {
    let stored = read_all(&mut daemon.client(), &Query::All, ReadOptions::default());
    let head = stored.len() as u64;
    assert_eq!(positions(events), (1..=head).collect::<Vec<_>>(), "every position once, in order");
    for (got, want) in events.iter().zip(&stored) {
        assert_eq!(json(got), json(want), "a delivered event is the stored one (nothing unacknowledged was delivered)");
    }
}

#[test]
fn sigterm_mid_stream_ends_with_a_final_line_and_the_client_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    seed(&mut daemon.client(), 2000, 500);
    // The final line of a SIGTERM'd subscription, seen on a raw connection.
    let mut raw = daemon.raw();
    raw.send(r#"{"id":"t","op":"subscribe","query":{"items":[{"types":["Seed"]}]},"after":1990}"#);
    for _ in 0..10 {
        assert!(raw.recv().unwrap().get("event").is_some());
    }
    let want = Arc::new(AtomicU64::new(0));
    let consumer = follow(daemon.socket.clone(), want.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let appender = append_until("a", daemon.socket.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    daemon.signal(Signal::SIGTERM);
    // No Seed event is appended meanwhile; heartbeats may come first (a second passes under load), then the final
    // line.
    let done = std::iter::from_fn(|| raw.recv()).find(|line| line.get("heartbeat").is_none()).unwrap();
    assert_eq!(done["ok"], true, "{done}");
    assert!(done["last"].as_u64().unwrap() >= 2000, "{done}");
    assert!(daemon.wait().success());
    stop.store(true, Ordering::Relaxed);
    appender.join().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    seed(&mut daemon.client(), 100, 50);
    want.store(daemon.client().head().unwrap(), Ordering::SeqCst);
    let (events, reconnects) = consumer.join().unwrap();
    assert!(reconnects >= 1, "the consumer reconnected");
    check_exact_sequence(&daemon, &events);
}

#[test]
fn after_sigkill_and_restart_the_client_resumes_and_nothing_unacknowledged_was_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), &["--durability", "fsync"]);
    seed(&mut daemon.client(), 50, 10);
    let want = Arc::new(AtomicU64::new(0));
    let consumer = follow(daemon.socket.clone(), want.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let appenders: Vec<_> =
        (0..2).map(|w| append_until(&format!("w{w}"), daemon.socket.clone(), stop.clone())).collect();
    std::thread::sleep(Duration::from_millis(500));
    daemon.kill();
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<(u64, String)> = appenders.into_iter().flat_map(|a| a.join().unwrap()).collect();
    let daemon = Daemon::start(dir.path(), &["--durability", "fsync"]);
    // Every acknowledged append survived, at its position.
    let mut client = daemon.client();
    for (first, batch) in &acked {
        let got = read_all(&mut client, &query(&[], &[("batch", batch)]), ReadOptions::default());
        assert_eq!(got.first().map(|e| e.position), Some(*first), "acknowledged batch {batch}");
    }
    seed(&mut client, 20, 10);
    want.store(client.head().unwrap(), Ordering::SeqCst);
    let (events, _) = consumer.join().unwrap();
    check_exact_sequence(&daemon, &events);
}

#[test]
fn the_cli_and_the_python_client_follow_a_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    let mut client = daemon.client();
    for i in 0..6 {
        let t = if i % 2 == 0 { "X" } else { "Y" };
        client.append(vec![event(t, &[("k", if i < 3 { "v" } else { "w" })])], None).unwrap();
    }
    let out = std::process::Command::new(CLI)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["subscribe", "--type", "X", "--tag", "k=v", "--after", "0", "--stop-at-head"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let got: Vec<u64> = printed.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert_eq!(got, [1, 3]);

    if std::process::Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 not found: skipping the Python part");
        return;
    }
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts");
    let program = format!(
        "import sys, json; sys.path.insert(0, {scripts:?}); from client import subscribe\n\
         for m in subscribe({socket:?}, {{'items': [{{'types': ['Y']}}]}}, after=2, heartbeats=True):\n\
         \x20   if m.get('heartbeat'): break\n\
         \x20   print(m['position'])\n",
        socket = daemon.socket.to_str().unwrap()
    );
    let out = std::process::Command::new("python3").arg("-c").arg(program).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "4\n6\n");
}

#[test]
fn events_another_process_appends_reach_subscribers() {
    if !files_mode("events_another_process_appends_reach_subscribers", "the daemon holds the store lock throughout") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    seed(&mut daemon.client(), 2, 2);
    let mut raw = daemon.raw();
    raw.send(r#"{"id":"o","op":"subscribe"}"#);
    assert_eq!(raw.recv().unwrap()["event"]["position"], 1);
    assert_eq!(raw.recv().unwrap()["event"]["position"], 2);
    // Another writer (as a .NET Opossum process would) appends to the store under `.store.lock`.
    let options = opossum::store::StoreOptions { durability: opossum::store::Durability::None, ..Default::default() };
    let other = opossum::store::Store::open(&daemon.data, options).unwrap();
    other.append(vec![event("Elsewhere", &[])], None).unwrap();
    other.close().unwrap();
    loop {
        let line = raw.recv().unwrap();
        if line.get("heartbeat").is_none() {
            assert_eq!(line["event"]["position"], 3, "{line}");
            assert_eq!(line["event"]["type"], "Elsewhere", "{line}");
            break;
        }
    }
}

/// The client waits for data in `poll` (not in a blocking read): a read timeout still ends a read that gets
/// nothing, as an `Io` error that leaves the subscription usable, and a message that arrives later is still read.
#[test]
fn a_client_read_timeout_expires_while_waiting_for_data_and_the_subscription_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    let mut sub = Subscription::new(&daemon.socket, Query::All, 0).reconnect_for(Duration::ZERO);
    // Nothing to deliver, and the first heartbeat is a second away.
    sub.set_timeout(Some(Duration::from_millis(50))).unwrap();
    match sub.next_message() {
        Err(opossum::client::ClientError::Io(e)) => {
            assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e}")
        }
        other => panic!("expected a timed-out read, got {other:?}"),
    }
    sub.set_timeout(Some(Duration::from_secs(30))).unwrap();
    daemon.client().append(vec![event("Late", &[("k", "1")])], None).unwrap();
    loop {
        match sub.next_message().unwrap() {
            SubscriptionMessage::Event(e) => {
                assert_eq!(e.position, 1);
                break;
            }
            SubscriptionMessage::Heartbeat { .. } => {}
        }
    }
}
