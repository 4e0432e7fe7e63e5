//! Bad input: each case gets a clear error line, the connection (or, for oversize frames, the daemon) survives,
//! and nothing is written.

use std::io::Write;

use opossum::model::{Query, ReadOptions};
use opossum::store::EVENT_BYTES_MAX;
use serde_json::json;

use crate::harness::*;

/// Sends `line`, expects an error with `code` whose message mentions `needle`, then checks the same connection
/// still works and the head did not move.
#[track_caller]
fn refused(raw: &mut Raw, line: &str, code: &str, needle: &str, head: u64) {
    raw.send(line);
    let answer = raw.recv().expect("an error line");
    let message = assert_error(&answer, code);
    assert!(message.contains(needle), "{line}\n-> {message:?} should mention {needle:?}");
    assert_eq!(raw.call(r#"{"id":"after","op":"head"}"#), json!({"id":"after","ok":true,"head":head}));
}

#[test]
fn malformed_and_invalid_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    let mut c = daemon.client();
    c.append(vec![event("A", &[("k", "v")])], None).unwrap();
    let mut raw = daemon.raw();
    let ev = |e: &str| format!(r#"{{"id":7,"op":"append","events":[{e}]}}"#);

    refused(&mut raw, "{\"id\":1,\"op\":", "invalid_request", "malformed JSON", 1);
    refused(&mut raw, "not json at all", "invalid_request", "malformed JSON", 1);
    refused(&mut raw, "[1,2,3]", "invalid_request", "JSON object", 1);
    refused(&mut raw, r#"{"id":1,"op":"frobnicate"}"#, "unknown_op", "frobnicate", 1);
    refused(&mut raw, r#"{"op":"head"}"#, "invalid_request", "missing \"id\"", 1);
    refused(&mut raw, r#"{"id":null,"op":"head"}"#, "invalid_request", "string or a number", 1);
    refused(&mut raw, r#"{"id":1}"#, "invalid_request", "missing \"op\"", 1);
    refused(&mut raw, r#"{"id":1,"op":"head","extra":true}"#, "invalid_request", "extra", 1);
    refused(&mut raw, r#"{"id":7,"op":"append","events":[]}"#, "invalid_request", "at least one event", 1);
    refused(&mut raw, r#"{"id":7,"op":"append"}"#, "invalid_request", "events", 1);
    refused(&mut raw, &ev(r#"{"type":"","data":{}}"#), "invalid_request", "must not be empty", 1);
    refused(&mut raw, &ev(r#"{"type":"A"}"#), "invalid_request", "data", 1);
    let tag = |v: &str| ev(&format!(r#"{{"type":"A","data":{{}},"tags":[{{"key":"k","value":{v}}}]}}"#));
    refused(&mut raw, &tag("5"), "invalid_request", "expected a string", 1);
    refused(&mut raw, &tag(r#""a/b""#), "invalid_request", "a/b", 1);
    refused(&mut raw, &tag(r#""..""#), "invalid_request", "..", 1);
    refused(&mut raw, &tag(r#""""#), "invalid_request", "empty", 1);
    refused(&mut raw, &ev(r#"{"type":"A","data":{},"metadata":[1]}"#), "invalid_request", "metadata", 1);
    // A misspelt condition is refused rather than taken as an unconditional append.
    let typo = r#"{"id":7,"op":"append","events":[{"type":"A","data":{}}],"condtion":{"fail_if_events_match":"all"}}"#;
    refused(&mut raw, typo, "invalid_request", "condtion", 1);
    let no_item = r#"{"id":7,"op":"append","events":[{"type":"A","data":{}}],"condition":{"fail_if_events_match":{"items":[{}]}}}"#;
    refused(&mut raw, no_item, "invalid_request", "at least one type or tag", 1);
    refused(
        &mut raw,
        r#"{"id":8,"op":"read","query":{"items":[{"types":[],"tags":[]}]}}"#,
        "invalid_request",
        "at least one type or tag",
        1,
    );
    refused(&mut raw, r#"{"id":8,"op":"read","query":{"items":[]}}"#, "invalid_request", "at least one item", 1);
    refused(&mut raw, r#"{"id":8,"op":"read","query":"everything"}"#, "invalid_request", "everything", 1);
    refused(&mut raw, r#"{"id":8,"op":"read","after":-1}"#, "invalid_request", "-1", 1);
    refused(&mut raw, r#"{"id":8,"op":"read","before":2.5}"#, "invalid_request", "2.5", 1);
    refused(&mut raw, r#"{"id":8,"op":"read","limit":"3"}"#, "invalid_request", "limit", 1);
    let neg_after = r#"{"id":7,"op":"append","events":[{"type":"A","data":{}}],"condition":{"fail_if_events_match":"all","after":-3}}"#;
    refused(&mut raw, neg_after, "invalid_request", "-3", 1);
    let frac_after = r#"{"id":7,"op":"append","events":[{"type":"A","data":{}}],"condition":{"fail_if_events_match":"all","after":1.5}}"#;
    refused(&mut raw, frac_after, "invalid_request", "1.5", 1);
    // Append lines are read from their `{"id":..,"op":"append",` prefix first: the rest still gets the whole
    // line's errors (malformed JSON answered with id null, a second id refused), and nothing is written.
    raw.send(r#"{"id":5,"op":"append","events":[{"type":"A","data":{}}"#);
    let answer = raw.recv().unwrap();
    assert_eq!(answer["id"], serde_json::Value::Null, "{answer}");
    assert!(assert_error(&answer, "invalid_request").contains("malformed JSON"), "{answer}");
    let second_id = r#"{"id":5,"op":"append","events":[{"type":"A","data":{}}],"id":6}"#;
    refused(&mut raw, second_id, "invalid_request", "duplicate field", 1);
    refused(
        &mut raw,
        r#"{"id":5,"op":"append","events":[{"type":"A","data":{"x":1,}}]}"#,
        "invalid_request",
        "malformed JSON",
        1,
    );
    // The id of an otherwise bad request is echoed.
    raw.send(r#"{"id":"mine","op":"append","events":[]}"#);
    assert_eq!(raw.recv().unwrap()["id"], "mine");

    // Non-object data is fine.
    for data in ["5", "\"text\"", "[1,2]", "null", "true"] {
        let a = raw.call(&ev(&format!(r#"{{"type":"Scalar","data":{data}}}"#)));
        assert_eq!(a["ok"], true, "{data}: {a}");
    }
    assert_eq!(c.head().unwrap(), 6);
    let back = read_all(&mut c, &Query::All, ReadOptions { after: Some(1), ..Default::default() });
    let datas: Vec<&str> = back.iter().map(|e| e.data.get()).collect();
    assert_eq!(datas, ["5", "\"text\"", "[1,2]", "null", "true"]);
}

#[test]
fn oversize_events_and_frames_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    let mut raw = daemon.raw();
    // An event over the store's limit, in a frame under the frame limit: refused, connection fine.
    let big = "x".repeat(EVENT_BYTES_MAX + 1024);
    let line = format!(r#"{{"id":1,"op":"append","events":[{{"type":"Big","data":"{big}"}}]}}"#);
    refused(&mut raw, &line, "limit_exceeded", "limit", 0);

    // A 20 MiB line: over the 16 MiB frame limit. Error line, then the connection closes; the daemon lives on.
    let huge = "y".repeat(20 * 1024 * 1024);
    let line = format!("{{\"id\":2,\"op\":\"append\",\"events\":[{{\"type\":\"Huge\",\"data\":\"{huge}\"}}]}}\n");
    let mut raw = daemon.raw();
    let mut writer = raw.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        // The daemon stops reading after 16 MiB and closes: the rest of the write may fail.
        let _ = writer.write_all(line.as_bytes());
    });
    let answer = raw.recv().expect("an error line before the close");
    let message = assert_error(&answer, "frame_too_large");
    assert!(message.contains("max_frame_bytes"), "{message}");
    assert_eq!(answer["id"], serde_json::Value::Null);
    assert!(raw.recv().is_none(), "the connection is closed after frame_too_large");
    sender.join().unwrap();

    let mut c = daemon.client();
    assert_eq!(c.head().unwrap(), 0, "nothing was written");
    assert_eq!(c.hello().unwrap().server, "opossumd");
}

#[test]
fn configured_frame_limit_applies() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none", "--max-frame-bytes", "4096"]);
    let mut raw = daemon.raw();
    let data = "z".repeat(3000);
    let a = raw.call(&format!(r#"{{"id":1,"op":"append","events":[{{"type":"Fits","data":"{data}"}}]}}"#));
    assert_eq!(a["ok"], true);
    let data = "z".repeat(5000);
    raw.send(&format!(r#"{{"id":2,"op":"append","events":[{{"type":"Big","data":"{data}"}}]}}"#));
    assert_error(&raw.recv().unwrap(), "frame_too_large");
    assert!(raw.recv().is_none());
    assert_eq!(daemon.client().head().unwrap(), 1);
}

#[test]
fn client_disconnecting_mid_stream_leaves_the_daemon_serving() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    let mut c = daemon.client();
    seed(&mut c, 30_000, 5_000);
    for _ in 0..3 {
        let mut raw = daemon.raw();
        raw.send(r#"{"id":1,"op":"read","query":"all"}"#);
        for _ in 0..10 {
            assert!(raw.recv().unwrap()["event"]["position"].is_u64());
        }
        drop(raw);
    }
    // The abandoned reads end; the daemon keeps serving complete reads.
    eventually("abandoned reads to finish", || {
        c.stats().unwrap()["server"]["in_flight"].as_u64() == Some(1) // this stats request itself
    });
    let events = read_all(&mut c, &Query::All, ReadOptions::default());
    assert_eq!(events.len(), 30_000);
    assert_eq!(c.head().unwrap(), 30_000);
}

/// A small append line is parsed on the connection's own task, a large one (over `APPEND_INLINE_LINE_BYTES_MAX`)
/// on a blocking thread: the same line padded with JSON whitespace past that bound gets the same answer either
/// way, good or bad, and a refused one writes nothing.
#[test]
fn append_lines_get_the_same_answers_on_the_connection_task_and_on_a_blocking_thread() {
    use opossum::limits::APPEND_INLINE_LINE_BYTES_MAX;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    let mut raw = daemon.raw();
    let ev = |e: &str| format!(r#"{{"id":7,"op":"append","events":[{e}]}}"#);
    // The line with whitespace before its last byte (`}` for whole lines), past the inline bound.
    let padded = |line: &str| {
        let (body, last) = line.split_at(line.len() - 1);
        format!("{body}{}{last}", " ".repeat(APPEND_INLINE_LINE_BYTES_MAX))
    };
    // serde_json's "at line 1 column N" moves with the padding; nothing else may differ.
    let without_column = |v: &serde_json::Value| {
        let text = v.to_string();
        match text.find(" column ") {
            Some(at) => {
                let digits = text[at + 8..].chars().take_while(char::is_ascii_digit).count();
                format!("{}{}", &text[..at], &text[at + 8 + digits..])
            }
            None => text,
        }
    };
    let bad = [
        ev(r#"{"type":"","data":{}}"#),
        ev(r#"{"type":"A"}"#),
        ev(r#"{"type":"A","data":{},"tag":[]}"#),
        ev(r#"{"type":"A","data":{},"tags":[{"key":"k","value":"a/b"}]}"#),
        ev(r#"{"type":"A","data":{},"metadata":[1]}"#),
        r#"{"id":7,"op":"append","events":[]}"#.to_string(),
        r#"{"id":7,"op":"append","events":[{"type":"A","data":{}}],"condtion":{"fail_if_events_match":"all"}}"#
            .to_string(),
        r#"{"id":7,"op":"append","events":[{"type":"A","data":{}}],"condition":{"fail_if_events_match":"all","after":-3}}"#
            .to_string(),
        r#"{"id":5,"op":"append","events":[{"type":"A","data":{}}],"id":6}"#.to_string(),
        r#"{"id":5,"op":"append","events":[{"type":"A","data":{"x":1,}}]}"#.to_string(),
        // Malformed: answered with id null.
        r#"{"id":5,"op":"append","events":[{"type":"A","data":{}}]"#.to_string(),
    ];
    for line in &bad {
        let small = raw.call(line);
        let large = raw.call(&padded(line));
        assert_eq!(small["ok"], false, "{line}: {small}");
        assert_eq!(without_column(&small), without_column(&large), "{line}");
    }
    assert_eq!(raw.call(r#"{"id":"h","op":"head"}"#)["head"], 0, "a refused append wrote nothing");
    let good = ev(r#"{"type":"A","data":{"s":"\u00e9\"\\"},"tags":[{"key":"k","value":"v"}]}"#);
    assert_eq!(raw.call(&good), json!({"id":7,"ok":true,"first":1,"last":1,"head":1}));
    assert_eq!(raw.call(&padded(&good)), json!({"id":7,"ok":true,"first":2,"last":2,"head":2}));
    let mut c = daemon.client();
    let back = read_all(&mut c, &Query::All, ReadOptions::default());
    assert_eq!(back.len(), 2);
    assert_eq!(back[0].data.get(), back[1].data.get());
    assert_eq!(back[0].tags, back[1].tags);
}
