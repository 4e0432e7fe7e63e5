//! The connection limit: excess connections get `busy`; many idle connections are fine.

use std::os::unix::net::UnixStream;

use serde_json::json;

use crate::harness::*;

#[test]
fn connections_over_the_limit_get_busy_and_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none", "--max-connections", "50"]);
    let mut held: Vec<Raw> = (0..50).map(|_| daemon.raw()).collect();
    // All 50 are served (the hello also proves each was accepted before the next one is counted).
    for (i, raw) in held.iter_mut().enumerate() {
        assert_eq!(raw.call(&format!(r#"{{"id":{i},"op":"head"}}"#)), json!({"id":i,"ok":true,"head":0}));
    }
    for _ in 0..3 {
        let mut extra = daemon.raw();
        let line = extra.recv().expect("a busy line");
        let message = assert_error(&line, "busy");
        assert!(message.contains("50"), "{message}");
        assert!(extra.recv().is_none(), "closed after busy");
    }
    // Freeing a slot lets a new client in (once the daemon has noticed the close).
    drop(held.pop());
    eventually("a free slot", || {
        // Until the daemon noticed, a new connection is told busy and closed: the send may meet EPIPE.
        let mut raw = daemon.raw();
        raw.try_send(r#"{"id":"x","op":"head"}"#).is_ok() && raw.recv().is_some_and(|l| l["ok"] == true)
    });
    // The held connections still work.
    assert_eq!(held[0].call(r#"{"id":1,"op":"head"}"#)["ok"], true);
    let stats = held[1].call(r#"{"id":2,"op":"stats"}"#);
    assert_eq!(stats["server"]["max_connections"], 50);
    assert!(stats["server"]["connections_refused"].as_u64().unwrap() >= 3);
}

#[test]
fn a_thousand_idle_connections_under_the_default_limit() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    let idle: Vec<UnixStream> = (0..1000).map(|_| UnixStream::connect(&daemon.socket).unwrap()).collect();
    let mut c = daemon.client();
    let a = c.append(vec![event("A", &[])], None).unwrap();
    assert_eq!(a.head, 1);
    eventually("all connections accepted", || c.stats().unwrap()["server"]["connections"].as_u64() == Some(1001));
    // Some of the idle ones wake up and are served.
    for stream in idle.iter().step_by(97) {
        let mut raw = Raw::from_stream(stream.try_clone().unwrap());
        assert_eq!(raw.call(r#"{"id":1,"op":"head"}"#), json!({"id":1,"ok":true,"head":1}));
    }
    drop(idle);
    eventually("idle connections closed", || c.stats().unwrap()["server"]["connections"].as_u64() == Some(1));
    assert_eq!(c.hello().unwrap().head, 1);
}
