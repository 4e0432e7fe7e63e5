//! The DCB scenarios of the store, over the socket.

use std::sync::{Arc, Barrier};

use opossum::model::{AppendCondition, Query, ReadOptions};
use opossum::wire::ErrorCode;
use serde_json::json;

use crate::harness::*;

fn cond(query: Query, after: Option<u64>) -> Option<AppendCondition> {
    Some(AppendCondition { fail_if_events_match: query, after })
}

#[test]
fn hello_head_append_read_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    let mut c = daemon.client();
    let hello = c.hello().unwrap();
    assert_eq!((hello.server.as_str(), hello.protocol, hello.head), ("opossumd", 1, 0));
    assert!(["uring", "threads"].contains(&hello.io_backend.as_str()), "{hello:?}");
    assert_eq!(c.head().unwrap(), 0);
    let a = c.append(vec![event("A", &[("k", "1")]), event("B", &[])], None).unwrap();
    assert_eq!((a.first, a.last, a.head), (1, 2, 2));
    let events = read_all(&mut c, &Query::All, ReadOptions::default());
    assert_eq!(positions(&events), [1, 2]);
    assert_eq!(events[0].event_type, "A");
    assert_eq!(events[0].data.get(), r#"{"v":1}"#);
    assert_eq!(events[0].tags[0].value, "1");
    assert!(events[0].metadata.get().contains("timestamp"));

    // The wire form, byte for byte where it matters: ids echoed (string or number), item lines, final line.
    let mut raw = daemon.raw();
    raw.send(r#"{"id":"r-1","op":"read","query":{"items":[{"types":["A"]}]}}"#);
    let item = raw.recv().unwrap();
    assert_eq!(item["id"], "r-1");
    assert_eq!(item["event"]["position"], 1);
    assert_eq!(item["event"]["type"], "A");
    assert_eq!(item["event"]["tags"], json!([{"key":"k","value":"1"}]));
    assert_eq!(raw.recv().unwrap(), json!({"id":"r-1","ok":true,"count":1,"head":2}));
    assert_eq!(raw.call(r#"{"id":12.5,"op":"head"}"#), json!({"id":12.5,"ok":true,"head":2}));
    let stats = raw.call(r#"{"id":3,"op":"stats"}"#);
    assert_eq!(stats["head"], 2);
    assert_eq!(stats["store"]["events_appended"], 2);
    assert!(stats["uptime_ms"].is_u64());
    // The modes the daemon runs in, as this run started it (unset: the defaults, journal with the mirror live).
    let commit = std::env::var("OPOSSUM_TEST_COMMIT").unwrap_or_else(|_| "journal".into());
    let mirror = match commit.as_str() {
        "files" => "n/a".to_string(),
        _ => std::env::var("OPOSSUM_TEST_MIRROR").unwrap_or_else(|_| "live".into()),
    };
    assert_eq!(
        (stats["store"]["commit_mode"].as_str(), stats["store"]["mirror"].as_str()),
        (Some(&*commit), Some(&*mirror))
    );
}

/// The server encodes a request's events straight from its line: strings keep every byte (spaces, escapes,
/// non-ASCII text), whitespace outside them is dropped, escaped names are decoded, and a batch's repeated types and
/// tags come back on every event.
#[test]
fn appended_payloads_and_names_round_trip_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    let mut raw = daemon.raw();
    let line = r#"{"id":1,"op":"append","events":[
        {"type":"T\u00e9st \"q\"","data":{ "a" : "x  y\t", "b":"\u00e9 \"q\" é\\", "c":[ 1 , 2.5e3 ] },"tags":[{"key":"k\u0041","value":"v w"}]},
        {"type":"Tést \"q\"","data":"  spaced  ","tags":[{"key":"kA","value":"v w"}]},
        {"type":"B","data":[],"tags":[],"metadata":{ "timestamp" : "t 1" }},
        {"type":"B","data":{"n":null},"tags":[{"key":"kA","value":"v w"},{"key":"z","value":"1"}]}]}"#
        .replace('\n', "");
    assert_eq!(raw.call(&line)["last"], 4, "{line}");
    let mut c = daemon.client();
    let events = read_all(&mut c, &Query::All, ReadOptions::default());
    type Pairs<'a> = Vec<(&'a str, &'a str)>;
    let got: Vec<(&str, &str, Pairs<'_>)> = events
        .iter()
        .map(|e| {
            let tags = e.tags.iter().map(|t| (t.key.as_str(), t.value.as_str())).collect();
            (e.event_type.as_str(), e.data.get(), tags)
        })
        .collect();
    assert_eq!(
        got,
        [
            ("Tést \"q\"", r#"{"a":"x  y\t","b":"\u00e9 \"q\" é\\","c":[1,2.5e3]}"#, vec![("kA", "v w")]),
            ("Tést \"q\"", r#""  spaced  ""#, vec![("kA", "v w")]),
            ("B", "[]", vec![]),
            ("B", r#"{"n":null}"#, vec![("kA", "v w"), ("z", "1")]),
        ]
    );
    assert_eq!(events[2].metadata.get(), r#"{"timestamp":"t 1"}"#);
    assert_eq!(events[0].metadata.get(), events[1].metadata.get(), "one timestamp per append");
}

#[test]
fn conditional_appends_boundaries_and_uniqueness() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut c = daemon.client();
    let course = query(&["CourseCreated", "StudentEnrolled"], &[("course", "c1")]);
    // Decide on an empty store: nothing matches, so the append goes through.
    let a = c.append(vec![event("CourseCreated", &[("course", "c1")])], cond(course.clone(), None)).unwrap();
    assert_eq!(a.first, 1);
    // An unrelated event moves the head but not the boundary.
    c.append(vec![event("CourseCreated", &[("course", "c2")])], None).unwrap();
    // The narrow boundary: after = the last matching position succeeds even though the head has moved.
    let b =
        c.append(vec![event("StudentEnrolled", &[("course", "c1"), ("student", "s1")])], cond(course.clone(), Some(1)));
    assert_eq!(b.unwrap().first, 3);
    // A decision based on position 2 is stale now: event 3 matches and 3 > 2.
    let err = c.append(vec![event("StudentEnrolled", &[("course", "c1")])], cond(course.clone(), Some(2))).unwrap_err();
    assert!(err.is(ErrorCode::AppendConditionFailed), "{err}");
    assert!(err.to_string().contains('3'), "the message names the conflicting position: {err}");
    // after = 3 is exactly at the boundary: succeeds.
    let d = c.append(vec![event("StudentEnrolled", &[("course", "c1"), ("student", "s2")])], cond(course, Some(3)));
    assert_eq!(d.unwrap().first, 4);
    // Positions of a failed append are not used.
    assert_eq!(c.head().unwrap(), 4);

    // Uniqueness with `after` absent: any matching event fails the append.
    let email = query(&[], &[("email", "ada@example.com")]);
    let first = c.append(vec![event("UserRegistered", &[("email", "ada@example.com")])], cond(email.clone(), None));
    assert_eq!(first.unwrap().first, 5);
    let again = c.append(vec![event("UserRegistered", &[("email", "ada@example.com")])], cond(email.clone(), None));
    assert!(again.unwrap_err().is(ErrorCode::AppendConditionFailed));
    // Same over the raw wire, with `"after": null` spelled out.
    let mut raw = daemon.raw();
    let line = raw.call(
        r#"{"id":1,"op":"append","events":[{"type":"UserRegistered","data":{},"tags":[{"key":"email","value":"ada@example.com"}]}],"condition":{"fail_if_events_match":{"items":[{"tags":[{"key":"email","value":"ada@example.com"}]}]},"after":null}}"#,
    );
    assert_error(&line, "append_condition_failed");
    assert_eq!(c.head().unwrap(), 5);
    // A multi-event append is all-or-nothing and contiguous.
    let many = c.append((0..5).map(|i| event("X", &[("n", &i.to_string())])).collect(), None).unwrap();
    assert_eq!((many.first, many.last), (6, 10));
}

#[test]
fn reads_honour_after_before_limit_and_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    let mut c = daemon.client();
    for i in 1..=10 {
        let t = if i % 2 == 0 { "Even" } else { "Odd" };
        c.append(vec![event(t, &[("n", &i.to_string())])], None).unwrap();
    }
    let all = Query::All;
    let read = |c: &mut opossum::client::Client, q: &Query, o: ReadOptions| positions(&read_all(c, q, o));
    let o = |after, before, limit, backwards| ReadOptions { after, before, limit, backwards };
    assert_eq!(read(&mut c, &all, o(Some(3), None, None, false)), [4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(read(&mut c, &all, o(None, Some(5), None, false)), [1, 2, 3, 4]);
    assert_eq!(read(&mut c, &all, o(Some(3), Some(7), None, false)), [4, 5, 6]);
    assert_eq!(read(&mut c, &all, o(None, None, Some(2), false)), [1, 2]);
    assert_eq!(read(&mut c, &all, o(None, None, Some(3), true)), [10, 9, 8]);
    assert_eq!(read(&mut c, &all, o(Some(5), Some(9), None, true)), [8, 7, 6]);
    assert_eq!(read(&mut c, &all, o(Some(10), None, None, false)), Vec::<u64>::new());
    assert_eq!(read(&mut c, &all, o(Some(7), Some(3), None, false)), Vec::<u64>::new());
    assert_eq!(read(&mut c, &all, o(None, None, Some(0), false)), Vec::<u64>::new());
    let evens = query(&["Even"], &[]);
    assert_eq!(read(&mut c, &evens, o(None, None, None, false)), [2, 4, 6, 8, 10]);
    assert_eq!(read(&mut c, &evens, o(Some(4), None, Some(2), false)), [6, 8]);
    assert_eq!(read(&mut c, &evens, o(None, None, Some(1), true)), [10]);
    let items: Query = serde_json::from_str(
        r#"{"items":[{"types":["Odd"],"tags":[{"key":"n","value":"3"}]},{"tags":[{"key":"n","value":"8"}]}]}"#,
    )
    .unwrap();
    assert_eq!(read(&mut c, &items, o(None, None, None, false)), [3, 8]);
    let mut stream = c.read(&all, o(None, None, Some(4), true)).unwrap();
    let got: Vec<u64> = stream.by_ref().map(|e| e.unwrap().position).collect();
    assert_eq!(got, [10, 9, 8, 7]);
    let done = stream.done().unwrap();
    assert_eq!((done.count, done.head), (4, 10));
}

/// K clients see one free seat, all decide at the same head, all try to take it: exactly one wins, and the
/// positions stay contiguous.
#[test]
fn concurrent_clients_race_for_one_seat() {
    const K: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let socket = daemon.socket.clone();
    for round in 0..5 {
        let course = format!("course-{round}");
        let barrier = Arc::new(Barrier::new(K));
        let handles: Vec<_> = (0..K)
            .map(|k| {
                let (socket, course, barrier) = (socket.clone(), course.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut c = opossum::client::Client::connect(&socket).unwrap();
                    c.set_timeout(Some(DEADLINE)).unwrap();
                    let seats = query(&["SeatBooked"], &[("course", &course)]);
                    // Decide: read the boundary, see the seat free.
                    let head = c.head().unwrap();
                    let taken = read_all(&mut c, &seats, ReadOptions::default());
                    assert!(taken.is_empty());
                    barrier.wait();
                    let student = format!("s{k}");
                    let e = event("SeatBooked", &[("course", &course), ("student", &student)]);
                    match c.append(vec![e], cond(seats, Some(head))) {
                        Ok(a) => Some(a.first),
                        Err(e) if e.is(ErrorCode::AppendConditionFailed) => None,
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                })
            })
            .collect();
        let results: Vec<Option<u64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<u64> = results.iter().flatten().copied().collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one client wins: {results:?}");
        // Unrelated traffic between rounds.
        daemon.client().append(vec![event("Noise", &[("round", &round.to_string())])], None).unwrap();
    }
    let mut c = daemon.client();
    let all = read_all(&mut c, &Query::All, ReadOptions::default());
    let head = c.head().unwrap();
    assert_eq!(positions(&all), (1..=head).collect::<Vec<_>>(), "positions are contiguous");
    assert_eq!(head, 10);
    let booked = read_all(&mut c, &query(&["SeatBooked"], &[]), ReadOptions::default());
    assert_eq!(booked.len(), 5);
}

/// Pipelined requests (one write, many lines) are answered in order, each seeing the effects of the ones before.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    let mut raw = daemon.raw();
    let mut batch = String::new();
    for i in 0..100 {
        batch.push_str(&format!(
            "{{\"id\":{},\"op\":\"append\",\"events\":[{{\"type\":\"P\",\"data\":{i},\"tags\":[]}}]}}\n",
            3 * i
        ));
        batch.push_str(&format!("{{\"id\":\"h{i}\",\"op\":\"head\"}}\n"));
        batch.push_str(&format!("{{\"id\":{},\"op\":\"read\",\"after\":{i}}}\n", 3 * i + 2));
    }
    raw.send(&batch);
    for i in 0..100u64 {
        let a = raw.recv().unwrap();
        assert_eq!(a, json!({"id": 3 * i, "ok": true, "first": i + 1, "last": i + 1, "head": i + 1}));
        assert_eq!(raw.recv().unwrap(), json!({"id": format!("h{i}"), "ok": true, "head": i + 1}));
        let item = raw.recv().unwrap();
        assert_eq!((item["id"].as_u64(), item["event"]["data"].as_u64()), (Some(3 * i + 2), Some(i)));
        assert_eq!(raw.recv().unwrap(), json!({"id": 3 * i + 2, "ok": true, "count": 1, "head": i + 1}));
    }
}
