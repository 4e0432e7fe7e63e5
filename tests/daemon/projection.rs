//! The projection ops over the socket: every op, tag changes, delete, restart persistence, version conflicts,
//! case-insensitive tag queries, hostile names, and a SIGKILL crash test.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use opossum::client::Client;
use opossum::model::Tag;
use opossum::projection::format::{decode_projection, parse_json_file_name};
use opossum::projection::{ProjectionItem, ProjectionSummary, Put};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::harness::*;

fn put(projection: &str, key: &str, state: &str, tags: &[(&str, &str)]) -> Put {
    Put {
        projection: projection.into(),
        key: key.into(),
        state: RawValue::from_string(state.into()).unwrap(),
        tags: tags.iter().map(|(k, v)| Tag::new(*k, *v)).collect(),
        expected_version: None,
    }
}

fn tags(pairs: &[(&str, &str)]) -> Vec<Tag> {
    pairs.iter().map(|(k, v)| Tag::new(*k, *v)).collect()
}

fn keys(items: &[ProjectionItem]) -> Vec<&str> {
    items.iter().map(|i| i.key.as_str()).collect()
}

fn get_all(c: &mut Client, projection: &str) -> Vec<ProjectionItem> {
    c.projection_get_all(projection).unwrap().into_vec().unwrap()
}

fn query(c: &mut Client, projection: &str, pairs: &[(&str, &str)]) -> Vec<ProjectionItem> {
    c.projection_query(projection, &tags(pairs)).unwrap().into_vec().unwrap()
}

#[test]
fn every_projection_op_over_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut c = daemon.client();
    const P: &str = "StudentShortInfo";

    // put / get
    let v = c.projection_put(&put(P, "s1", r#"{ "Name": "Ada", "Tier": "Basic" }"#, &[("EnrollmentTier", "Basic")]));
    assert_eq!(v.unwrap(), 1);
    let item = c.projection_get(P, "s1").unwrap().expect("s1 exists");
    assert_eq!(item.key, "s1");
    assert_eq!(item.state.get(), r#"{"Name":"Ada","Tier":"Basic"}"#, "state is stored minified");
    assert_eq!(item.metadata.version, 1);
    assert!(item.metadata.size_in_bytes > 0);
    assert_eq!(item.tags, Some(tags(&[("EnrollmentTier", "Basic")])));
    let file = daemon.data.join("Projections").join(P).join("s1.json");
    assert_eq!(item.metadata.size_in_bytes, std::fs::metadata(&file).unwrap().len());
    assert_eq!(c.projection_get(P, "nobody").unwrap().map(|i| i.key), None);

    // The raw wire forms.
    let mut raw = daemon.raw();
    let line = raw.call(r#"{"id":"g","op":"projection.get","projection":"StudentShortInfo","key":"s1"}"#);
    assert_eq!(line["ok"], true, "{line}");
    assert_eq!(line["id"], "g");
    assert_eq!(line["state"], json!({"Name":"Ada","Tier":"Basic"}));
    assert_eq!(line["metadata"]["version"], 1);
    assert!(line["metadata"]["created_at"].as_str().unwrap().len() > 10, "{line}");
    assert_eq!(line["tags"], json!([{"key":"EnrollmentTier","value":"Basic"}]));
    let line = raw.call(r#"{"id":2,"op":"projection.get","projection":"StudentShortInfo","key":"nobody"}"#);
    assert_error(&line, "not_found");
    let line = raw.call(r#"{"id":3,"op":"projection.get","projection":"NoSuchProjection","key":"s1"}"#);
    assert_error(&line, "not_found");

    // A put replaces state and tags: the old tag no longer finds the key.
    let v = c.projection_put(&put(P, "s1", r#"{"Name":"Ada","Tier":"Premium"}"#, &[("EnrollmentTier", "Premium")]));
    assert_eq!(v.unwrap(), 2);
    assert!(query(&mut c, P, &[("EnrollmentTier", "Basic")]).is_empty(), "old tag removed from the index");
    assert_eq!(keys(&query(&mut c, P, &[("EnrollmentTier", "Premium")])), ["s1"]);
    let item = c.projection_get(P, "s1").unwrap().unwrap();
    assert_eq!((item.metadata.version, item.state.get()), (2, r#"{"Name":"Ada","Tier":"Premium"}"#));
    let index = daemon.data.join("Projections").join(P).join("Indices");
    assert!(!index.join("enrollmenttier_basic.json").exists());
    assert!(index.join("enrollmenttier_premium.json").exists());

    // put_many: one group commit, versions in order.
    let many = vec![
        put(P, "s3", r#"{"Name":"Cy"}"#, &[("EnrollmentTier", "Basic"), ("Campus", "North")]),
        put(P, "s2", r#"{"Name":"Bo"}"#, &[("EnrollmentTier", "Basic"), ("Campus", "South")]),
        put(P, "s1", r#"{"Name":"Ada","Tier":"Basic"}"#, &[("EnrollmentTier", "Basic"), ("Campus", "North")]),
    ];
    assert_eq!(c.projection_put_many(&many).unwrap(), [1, 1, 3]);
    assert_eq!(c.projection_put_many(&[]).unwrap(), Vec::<u64>::new());

    // get_all streams every key, by key; query ANDs its tags and ignores case.
    let all = get_all(&mut c, P);
    assert_eq!(keys(&all), ["s1", "s2", "s3"]);
    assert_eq!(all[1].state.get(), r#"{"Name":"Bo"}"#);
    assert_eq!(keys(&query(&mut c, P, &[("EnrollmentTier", "Basic")])), ["s1", "s2", "s3"]);
    assert_eq!(keys(&query(&mut c, P, &[("enrollmenttier", "BASIC"), ("CAMPUS", "north")])), ["s1", "s3"]);
    assert_eq!(keys(&query(&mut c, P, &[("Campus", "South"), ("EnrollmentTier", "Premium")])), Vec::<&str>::new());
    assert!(get_all(&mut c, "NoSuchProjection").is_empty());
    let mut stream = c.projection_get_all(P).unwrap();
    assert_eq!(stream.by_ref().count(), 3);
    assert_eq!(stream.done().unwrap().count, 3);
    drop(stream);
    // The raw stream: item lines, then the final count.
    raw.send(
        r#"{"id":7,"op":"projection.query","projection":"StudentShortInfo","tags":[{"key":"CAMPUS","value":"NORTH"}]}"#,
    );
    let (first, second, last) = (raw.recv().unwrap(), raw.recv().unwrap(), raw.recv().unwrap());
    assert_eq!((first["id"].clone(), first["item"]["key"].clone()), (json!(7), json!("s1")), "{first}");
    assert_eq!(second["item"]["key"], "s3");
    assert_eq!(second["item"]["state"], json!({"Name":"Cy"}));
    assert_eq!(last, json!({"id":7,"ok":true,"count":2}));
    assert_error(&raw.call(r#"{"id":8,"op":"projection.query","projection":"P","tags":[]}"#), "invalid_request");

    // Version conflicts: nothing written.
    let mut stale = put(P, "s2", r#"{"Name":"Stale"}"#, &[]);
    stale.expected_version = Some(7);
    let e = c.projection_put(&stale).unwrap_err();
    assert_eq!(e.code(), Some("version_conflict"), "{e}");
    stale.expected_version = Some(0);
    assert_eq!(c.projection_put(&stale).unwrap_err().code(), Some("version_conflict"));
    let mut batch = vec![put(P, "s9", "{}", &[]), stale.clone()];
    assert_eq!(c.projection_put_many(&batch).unwrap_err().code(), Some("version_conflict"));
    assert_eq!(c.projection_get(P, "s9").unwrap().map(|i| i.key), None, "a rejected batch writes nothing");
    assert_eq!(c.projection_get(P, "s2").unwrap().unwrap().state.get(), r#"{"Name":"Bo"}"#);
    stale.expected_version = Some(1);
    assert_eq!(c.projection_put(&stale).unwrap(), 2);
    batch[1].expected_version = Some(2);
    batch[0].expected_version = Some(0);
    assert_eq!(c.projection_put_many(&batch).unwrap(), [1, 3]);
    let line = raw.call(
        r#"{"id":9,"op":"projection.put","projection":"StudentShortInfo","key":"s9","state":1,"expected_version":5}"#,
    );
    let message = assert_error(&line, "version_conflict");
    assert!(message.contains("expected version 5"), "{message}");

    // list
    c.projection_put(&put("Courses", "c1", r#"{"Capacity":10}"#, &[])).unwrap();
    let list = c.projection_list().unwrap();
    let summary = |name: &str, count| ProjectionSummary { name: name.into(), count };
    assert_eq!(list, [summary("Courses", 1), summary(P, 4)]);

    // delete: true once, then false; the key is gone from get, get_all and the tag indices.
    assert!(c.projection_delete(P, "s3").unwrap());
    assert!(!c.projection_delete(P, "s3").unwrap());
    assert!(!c.projection_delete("NoSuchProjection", "s3").unwrap());
    assert_eq!(c.projection_get(P, "s3").unwrap().map(|i| i.key), None);
    assert_eq!(keys(&get_all(&mut c, P)), ["s1", "s2", "s9"]);
    assert_eq!(keys(&query(&mut c, P, &[("campus", "north")])), ["s1"]);
    assert!(!daemon.data.join("Projections").join(P).join("s3.json").exists());
    let line = raw.call(r#"{"id":10,"op":"projection.delete","projection":"StudentShortInfo","key":"s9"}"#);
    assert_eq!(line, json!({"id":10,"ok":true,"deleted":true}));

    // checkpoints: never beyond the store's head (a worker cannot have processed an event that does not exist)
    assert_eq!(c.projection_checkpoint(P).unwrap(), None);
    let line = raw.call(r#"{"id":11,"op":"projection.checkpoint","projection":"StudentShortInfo","position":1}"#);
    assert!(assert_error(&line, "invalid_request").contains("beyond the store's head 0"), "{line}");
    assert_eq!(c.projection_checkpoint(P).unwrap(), None, "a refused checkpoint writes nothing");
    c.append((0..43).map(|_| event("Processed", &[])).collect(), None).unwrap();
    c.projection_set_checkpoint(P, 42).unwrap();
    assert_eq!(c.projection_checkpoint(P).unwrap(), Some(42));
    let line = raw.call(r#"{"id":11,"op":"projection.checkpoint","projection":"StudentShortInfo"}"#);
    assert_eq!(line["position"], 42, "{line}");
    assert!(line["last_updated"].is_string(), "{line}");
    let line = raw.call(r#"{"id":12,"op":"projection.checkpoint","projection":"StudentShortInfo","position":43}"#);
    assert_eq!(line, json!({"id":12,"ok":true,"position":43}));
    assert_eq!(c.projection_checkpoint(P).unwrap(), Some(43));
    let line = raw.call(r#"{"id":13,"op":"projection.checkpoint","projection":"StudentShortInfo","position":44}"#);
    assert!(assert_error(&line, "invalid_request").contains("beyond the store's head 43"), "{line}");
    assert_eq!(c.projection_checkpoint(P).unwrap(), Some(43));

    // Malformed bodies and unknown ops.
    for bad in [
        r#"{"id":20,"op":"projection.put","projection":"P","key":"k"}"#,
        r#"{"id":21,"op":"projection.put","projection":"P","key":"k","state":{},"tag":[]}"#,
        r#"{"id":22,"op":"projection.put","projection":"P","key":"k","state":{},"expected_version":-1}"#,
        r#"{"id":23,"op":"projection.put_many","puts":[{"projection":"P","key":"k","state":{},"extra":1}]}"#,
        r#"{"id":24,"op":"projection.get","projection":"P"}"#,
        r#"{"id":25,"op":"projection.list","projection":"P"}"#,
        r#"{"id":26,"op":"projection.checkpoint","projection":"P","position":"x"}"#,
        r#"{"id":27,"op":"projection.put","projection":"P","key":"k","state":{},"tags":[{"key":"a"}]}"#,
    ] {
        assert_error(&raw.call(bad), "invalid_request");
    }
    assert_error(&raw.call(r#"{"id":28,"op":"projection.frobnicate"}"#), "unknown_op");

    // stats carries the projection counters.
    let stats = c.stats().unwrap();
    let p = &stats["projections"];
    assert_eq!(p["projections"], 2, "{stats}");
    assert_eq!(p["keys"], 3, "{stats}");
    assert!(p["puts"].as_u64().unwrap() >= 9, "{stats}");
    assert_eq!(p["deletes"], 2, "{stats}");
    assert!(p["version_conflicts"].as_u64().unwrap() >= 4, "{stats}");
    assert!(p["items_read"].as_u64().unwrap() >= 10, "{stats}");
}

#[test]
fn projections_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), &[]);
    let mut c = daemon.client();
    let puts: Vec<Put> = (0..50)
        .map(|i| {
            let tier = ["Basic", "Premium"][i % 2];
            put("Students", &format!("k{i:03}"), &format!(r#"{{"n":{i}}}"#), &[("Tier", tier)])
        })
        .collect();
    c.projection_put_many(&puts).unwrap();
    c.projection_put(&put("Students", "k000", r#"{"n":"zero"}"#, &[("Tier", "Gold")])).unwrap();
    assert!(c.projection_delete("Students", "k049").unwrap());
    c.append((0..1234).map(|_| event("Processed", &[])).collect(), None).unwrap();
    c.projection_set_checkpoint("Students", 1234).unwrap();
    drop(c);
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
    let marker = daemon.data.join("Projections/Students/Metadata/opossumd.dirty");
    assert!(!marker.exists(), "a clean stop leaves the indices current");

    let daemon = Daemon::start(dir.path(), &[]);
    let mut c = daemon.client();
    assert!(!daemon.log_text().contains("rebuilt projection indices"), "{}", daemon.log_text());
    let all = get_all(&mut c, "Students");
    assert_eq!(all.len(), 49);
    assert_eq!((all[0].key.as_str(), all[0].state.get(), all[0].metadata.version), ("k000", r#"{"n":"zero"}"#, 2));
    assert_eq!(all[0].tags, Some(tags(&[("Tier", "Gold")])));
    assert_eq!(keys(&query(&mut c, "Students", &[("tier", "gold")])), ["k000"]);
    assert_eq!(query(&mut c, "Students", &[("TIER", "premium")]).len(), 24);
    assert_eq!(query(&mut c, "Students", &[("Tier", "Basic")]).len(), 24);
    assert_eq!(c.projection_get("Students", "k049").unwrap().map(|i| i.key), None);
    assert_eq!(c.projection_checkpoint("Students").unwrap(), Some(1234));
    assert_eq!(c.projection_list().unwrap(), [ProjectionSummary { name: "Students".into(), count: 49 }]);
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        out.push(path.clone());
        if entry.file_type().unwrap().is_dir() {
            walk(&path, out);
        }
    }
}

#[test]
fn hostile_names_and_keys_are_refused_and_nothing_escapes_the_store() {
    let dir = tempfile::tempdir().unwrap();
    // The store sits two levels down so that `../` and `../../` land inside the temporary directory we walk.
    let data = dir.path().join("a").join("store");
    std::fs::create_dir(dir.path().join("a")).unwrap();
    let daemon = Daemon::start_at(&data, &dir.path().join("s.sock"), &[]);
    let mut raw = daemon.raw();
    let mut c = daemon.client();
    let before: BTreeSet<PathBuf> = {
        let mut files = Vec::new();
        walk(dir.path(), &mut files);
        files.into_iter().filter(|p| !p.starts_with(&data)).collect()
    };

    let names = ["..", ".", "../evil", "../../evil", "a/b", "/tmp/evil-abs", "evil\u{0}nul", "", " ", "_checkpoints"];
    let hostile_keys =
        ["..", ".", "../evil", "../../evil", "x/../../evil", "/tmp/evil-abs", "evil\u{0}nul", "", "x.tmp.1"];
    let name_json = |s: &str| serde_json::to_string(s).unwrap();
    let mut requests = Vec::new();
    for name in names {
        let n = name_json(name);
        requests.push(format!(r#"{{"id":1,"op":"projection.put","projection":{n},"key":"k","state":{{}}}}"#));
        requests.push(format!(
            r#"{{"id":1,"op":"projection.put_many","puts":[{{"projection":{n},"key":"k","state":{{}}}}]}}"#
        ));
        requests.push(format!(r#"{{"id":1,"op":"projection.get","projection":{n},"key":"k"}}"#));
        requests.push(format!(r#"{{"id":1,"op":"projection.delete","projection":{n},"key":"k"}}"#));
        requests.push(format!(r#"{{"id":1,"op":"projection.get_all","projection":{n}}}"#));
        requests
            .push(format!(r#"{{"id":1,"op":"projection.query","projection":{n},"tags":[{{"key":"a","value":"b"}}]}}"#));
        requests.push(format!(r#"{{"id":1,"op":"projection.checkpoint","projection":{n}}}"#));
        requests.push(format!(r#"{{"id":1,"op":"projection.checkpoint","projection":{n},"position":5}}"#));
    }
    for key in hostile_keys {
        let k = name_json(key);
        requests.push(format!(r#"{{"id":1,"op":"projection.put","projection":"P","key":{k},"state":{{}}}}"#));
        requests.push(format!(
            r#"{{"id":1,"op":"projection.put_many","puts":[{{"projection":"P","key":"ok","state":{{}}}},{{"projection":"P","key":{k},"state":{{}}}}]}}"#
        ));
        requests.push(format!(r#"{{"id":1,"op":"projection.get","projection":"P","key":{k}}}"#));
        requests.push(format!(r#"{{"id":1,"op":"projection.delete","projection":"P","key":{k}}}"#));
    }
    for request in &requests {
        let line = raw.call(request);
        assert_error(&line, "invalid_request");
        assert!(line.get("item").is_none());
    }

    // Keys with separators are sanitised as Opossum does and stay inside their directory; tags too.
    let v = c.projection_put(&put("P", "a/b", r#"{"x":1}"#, &[("../k", "/v/../w")])).unwrap();
    assert_eq!(v, 1);
    assert_eq!(c.projection_get("P", "a/b").unwrap().unwrap().state.get(), r#"{"x":1}"#);
    assert_eq!(c.projection_get("P", "a_b").unwrap().map(|i| i.key), None, "a_b is not a/b");
    assert!(data.join("Projections/P/a_b.json").is_file());
    assert_eq!(keys(&query(&mut c, "P", &[("../K", "/V/../W")])), ["a/b"]);
    // A second key that would share the file name is refused.
    let line = raw.call(r#"{"id":2,"op":"projection.put","projection":"P","key":"a_b","state":{}}"#);
    let message = assert_error(&line, "invalid_request");
    assert!(message.contains("share the file name"), "{message}");

    // Nothing was created outside the store, and inside it only P's files.
    let mut files = Vec::new();
    walk(dir.path(), &mut files);
    for path in &files {
        let text = path.to_string_lossy();
        assert!(!text.contains("evil"), "{text} was created");
        if !path.starts_with(&data) {
            let harness = text.ends_with(".log") || text.contains("notify-") || text.ends_with("s.sock");
            assert!(before.contains(path) || harness, "unexpected file outside the store: {text}");
        }
    }
    assert!(!Path::new("/tmp/evil-abs").exists() && !Path::new("/tmp/evil-abs.json").exists());
    let projections = data.join("Projections");
    let mut dirs: Vec<String> = std::fs::read_dir(&projections)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, ["P"], "only the valid projection exists (no checkpoints were written)");
    let mut in_p: Vec<String> = std::fs::read_dir(projections.join("P"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    in_p.sort();
    assert_eq!(in_p, ["Indices", "Metadata", "a_b.json"]);
    assert_eq!(c.projection_list().unwrap(), [ProjectionSummary { name: "P".into(), count: 1 }]);
}

#[test]
fn cli_projection_subcommands() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    let run = |args: &[&str]| {
        let out = Command::new(CLI).arg("--socket").arg(&daemon.socket).arg("projection").args(args).output().unwrap();
        (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let (ok, out, err) = run(&["put", "Students", "42", r#"{"Name":"Ada"}"#, "--tag", "Tier=Basic"]);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"version":1}));
    let (ok, out, _) = run(&["put", "Students", "42", "{}", "--expected-version", "5"]);
    assert!(!ok && out.is_empty());
    let (ok, out, err) = run(&["get", "Students", "42"]);
    assert!(ok, "{err}");
    let item: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((item["state"].clone(), item["metadata"]["version"].clone()), (json!({"Name":"Ada"}), json!(1)));
    let (ok, out, _) = run(&["query", "Students", "--tag", "tier=BASIC"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 1);
    let (ok, out, _) = run(&["get-all", "Students"]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(out.trim()).unwrap()["key"], "42");
    let (ok, out, _) = run(&["list"]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([{"name":"Students","count":1}]));
    assert!(!run(&["checkpoint", "Students", "--set", "9"]).0, "beyond the store's head");
    daemon.client().append((0..9).map(|_| event("Processed", &[])).collect(), None).unwrap();
    assert!(run(&["checkpoint", "Students", "--set", "9"]).0);
    assert_eq!(serde_json::from_str::<Value>(&run(&["checkpoint", "Students"]).1).unwrap(), json!({"position":9}));
    assert_eq!(serde_json::from_str::<Value>(&run(&["delete", "Students", "42"]).1).unwrap(), json!({"deleted":true}));
    assert!(!run(&["get", "Students", "42"]).0);
}

// ---------------------------------------------------------------------------------------------------------------
// Crash test.

const CRASH_CYCLES: usize = 10;
const CRASH_CLIENTS: usize = 3;
/// Keys each client cycles through (so keys are overwritten, with changing tags, across puts and cycles).
const KEYS_PER_CLIENT: usize = 12;
const CRASH_PROJECTION: &str = "Crash";

/// What a client wrote to one key: the put's sequence number (in the state) and its tags.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    seq: u64,
    tags: Vec<Tag>,
}

#[derive(Debug, Default)]
struct KeyModel {
    /// The last acknowledged put (or what was found on disk at the last verification).
    acked: Option<Written>,
    /// A put sent but not acknowledged (the daemon died before answering): it may or may not be on disk.
    pending: Option<Written>,
}

fn crash_tags(client: usize, seq: u64, cycle: usize) -> Vec<Tag> {
    let mut tags =
        vec![Tag::new("Client", format!("c{client}")), Tag::new("Parity", ["even", "odd"][seq as usize % 2])];
    if seq.is_multiple_of(3) {
        tags.push(Tag::new("Cycle", format!("C{cycle}")));
    }
    tags
}

fn crash_put(client: usize, key: usize, seq: u64, cycle: usize) -> (String, Put, Written) {
    let name = format!("c{client}-k{key:02}");
    let state = format!(r#"{{"client":{client},"seq":{seq},"pad":"{}"}}"#, "x".repeat(100 + (seq as usize * 37) % 300));
    let tags = crash_tags(client, seq, cycle);
    let p = Put {
        projection: CRASH_PROJECTION.into(),
        key: name.clone(),
        state: RawValue::from_string(state).unwrap(),
        tags: tags.clone(),
        expected_version: None,
    };
    (name, p, Written { seq, tags })
}

#[test]
fn sigkill_during_projection_puts_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let model: Arc<Mutex<BTreeMap<String, KeyModel>>> = Arc::default();
    let mut total_acks = 0;
    for cycle in 0..CRASH_CYCLES {
        let mut daemon = Daemon::start(dir.path(), &["--durability", "fsync"]);
        verify_crash(&daemon, &mut model.lock().unwrap(), cycle);
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..CRASH_CLIENTS)
            .map(|client| {
                let (socket, model, stop, acks) = (daemon.socket.clone(), model.clone(), stop.clone(), acks.clone());
                std::thread::spawn(move || {
                    let Ok(mut c) = Client::connect(&socket) else { return };
                    c.set_timeout(Some(DEADLINE)).unwrap();
                    let mut seq = (cycle * 1_000_000) as u64;
                    while !stop.load(Ordering::Relaxed) {
                        // Client 0 writes batches of 3 keys with put_many, the others single puts.
                        let n = if client == 0 { 3 } else { 1 };
                        let batch: Vec<(String, Put, Written)> = (0..n)
                            .map(|i| {
                                seq += 1;
                                crash_put(client, (seq as usize + i) % KEYS_PER_CLIENT, seq, cycle)
                            })
                            .collect();
                        {
                            let mut m = model.lock().unwrap();
                            for (key, _, written) in &batch {
                                m.entry(key.clone()).or_default().pending = Some(written.clone());
                            }
                        }
                        let puts: Vec<Put> = batch.iter().map(|(_, p, _)| p.clone()).collect();
                        let result = if n == 1 {
                            c.projection_put(&puts[0]).map(|v| vec![v])
                        } else {
                            c.projection_put_many(&puts)
                        };
                        match result {
                            Ok(versions) => {
                                assert!(versions.iter().all(|&v| v >= 1));
                                let mut m = model.lock().unwrap();
                                for (key, _, written) in batch {
                                    let entry = m.get_mut(&key).unwrap();
                                    entry.acked = Some(written);
                                    entry.pending = None;
                                }
                                acks.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => return, // the daemon died under us: this put is unacknowledged
                        }
                    }
                })
            })
            .collect();
        // Kill once some puts were acknowledged (and more are in flight), or after a while regardless.
        let t = Instant::now();
        while acks.load(Ordering::Relaxed) < 10 + (cycle * 7) % 30 && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis((5 * cycle as u64) % 17));
        daemon.signal(Signal::SIGKILL);
        daemon.wait();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        let n = acks.load(Ordering::Relaxed);
        assert!(n > 0, "cycle {cycle}: no put was acknowledged");
        total_acks += n;
    }
    let mut daemon = Daemon::start(dir.path(), &[]);
    verify_crash(&daemon, &mut model.lock().unwrap(), CRASH_CYCLES);
    assert!(daemon.terminate().success());
    eprintln!(
        "projection crash test: {CRASH_CYCLES} cycles, {total_acks} acknowledged requests, {:?}",
        started.elapsed()
    );
}

fn seq_of(item_state: &str) -> u64 {
    let v: Value = serde_json::from_str(item_state).unwrap();
    v["seq"].as_u64().unwrap()
}

/// After a restart: every acknowledged put (or the unacknowledged one after it) is readable with its tags, and
/// `get_all`, `get` and `query` agree with the projection files on disk.
fn verify_crash(daemon: &Daemon, model: &mut BTreeMap<String, KeyModel>, cycle: usize) {
    let mut c = daemon.client();
    let all = get_all(&mut c, CRASH_PROJECTION);
    let served: BTreeMap<&str, &ProjectionItem> = all.iter().map(|i| (i.key.as_str(), i)).collect();
    assert_eq!(served.len(), all.len(), "cycle {cycle}: get_all repeats a key");

    // 1. The model: acknowledged puts survive, with their tags.
    for (key, m) in model.iter_mut() {
        let found = served.get(key.as_str()).map(|item| Written {
            seq: seq_of(item.state.get()),
            tags: item.tags.clone().expect("our files carry their tags"),
        });
        let ok = match (&found, &m.acked, &m.pending) {
            (Some(f), _, Some(p)) if f == p => true,
            (Some(f), Some(a), _) => f == a,
            (None, None, Some(_)) => true, // never acknowledged, never written
            (None, None, None) => true,
            _ => false,
        };
        assert!(ok, "cycle {cycle}: key {key}: found {found:?}, acknowledged {:?}, pending {:?}", m.acked, m.pending);
        m.acked = found;
        m.pending = None;
    }
    assert_eq!(
        served.keys().copied().collect::<BTreeSet<_>>(),
        model.iter().filter(|(_, m)| m.acked.is_some()).map(|(k, _)| k.as_str()).collect::<BTreeSet<_>>(),
        "cycle {cycle}: get_all serves exactly the written keys"
    );

    // 2. The files on disk are the truth: get_all and get serve exactly them.
    let dir = daemon.data.join("Projections").join(CRASH_PROJECTION);
    let mut on_disk: BTreeMap<String, (u64, String, Vec<Tag>)> = BTreeMap::new();
    if dir.exists() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if !entry.file_type().unwrap().is_file() || parse_json_file_name(&name).is_none() {
                continue;
            }
            let d = decode_projection(&std::fs::read(entry.path()).unwrap()).unwrap();
            let key = d.key.expect("our files name their key");
            on_disk.insert(key, (d.metadata.version, d.state.get().to_string(), d.tags.unwrap()));
        }
    }
    assert_eq!(on_disk.len(), served.len(), "cycle {cycle}: files on disk vs get_all");
    for (key, (version, state, tags)) in &on_disk {
        let item = served.get(key.as_str()).unwrap_or_else(|| panic!("cycle {cycle}: {key} on disk, not served"));
        assert_eq!(
            (item.metadata.version, item.state.get(), item.tags.as_ref()),
            (*version, state.as_str(), Some(tags))
        );
        let got = c.projection_get(CRASH_PROJECTION, key).unwrap().unwrap();
        assert_eq!((got.metadata.version, got.state.get()), (*version, state.as_str()), "cycle {cycle}: get {key}");
    }

    // 3. query agrees with the tags in the files, for every tag any file carries (and in another case).
    let mut by_tag: HashMap<Tag, BTreeSet<&str>> = HashMap::new();
    for (key, (_, _, tags)) in &on_disk {
        for t in tags {
            by_tag.entry(t.clone()).or_default().insert(key);
        }
    }
    for t in (0..CRASH_CLIENTS).map(|i| Tag::new("Client", format!("c{i}"))) {
        by_tag.entry(t).or_default();
    }
    for (tag, expected) in &by_tag {
        let shouted = Tag::new(tag.key.to_uppercase(), tag.value.to_uppercase());
        for t in [tag.clone(), shouted] {
            let items = c.projection_query(CRASH_PROJECTION, std::slice::from_ref(&t)).unwrap().into_vec().unwrap();
            let got: BTreeSet<&str> = items.iter().map(|i| i.key.as_str()).collect();
            assert_eq!(&got, expected, "cycle {cycle}: query {t:?}");
        }
    }
}

/// The hot tier over the socket: warm reads are hits in `stats`, and cached items are the very items read from the
/// files (compared with a daemon that has the cache off). Another process's in-place rewrite is seen (Linux).
#[test]
fn the_projection_cache_serves_warm_reads_and_reports_them_in_stats() {
    let dir = tempfile::tempdir().unwrap();
    let as_json = |items: &[ProjectionItem]| serde_json::to_value(items).unwrap();
    let mut daemon = Daemon::start(dir.path(), &["--projection-cache-bytes", "1048576"]);
    let mut c = daemon.client();
    let puts: Vec<Put> = (0..20)
        .map(|i| put("P", &format!("k{i:02}"), &format!(r#"{{"n":{i},"s":"é\u00e9\"q\""}}"#), &[("T", "x")]))
        .collect();
    c.projection_put_many(&puts).unwrap();
    let first = get_all(&mut c, "P");
    assert_eq!(first.len(), 20);
    let cache = c.stats().unwrap()["projections"]["cache"].clone();
    assert_eq!(cache["budget_bytes"], 1048576, "{cache}");
    assert_eq!(cache["entries"], 20, "{cache}");
    assert_eq!(cache["hits"], 20, "{cache}");
    assert_eq!(cache["misses"], 0, "{cache}");
    assert!(cache["bytes"].as_u64().unwrap() > 20 * 40, "{cache}");
    assert_eq!(c.projection_get("P", "k03").unwrap().unwrap().state.get(), r#"{"n":3,"s":"é\u00e9\"q\""}"#);
    let queried = c.projection_query("P", &tags(&[("t", "X")])).unwrap().into_vec().unwrap();
    assert_eq!(as_json(&queried), as_json(&first));
    assert_eq!(c.stats().unwrap()["projections"]["cache"]["hits"], 41);

    #[cfg(target_os = "linux")]
    {
        let path = dir.path().join("store/Projections/P/k05.json");
        let text = std::fs::read_to_string(&path).unwrap().replace(r#""n":5"#, r#""n":"external""#);
        std::fs::write(&path, text).unwrap();
        assert_eq!(
            c.projection_get("P", "k05").unwrap().unwrap().state.get(),
            r#"{"n":"external","s":"é\u00e9\"q\""}"#
        );
        let all = get_all(&mut c, "P");
        assert_eq!(all[5].state.get(), r#"{"n":"external","s":"é\u00e9\"q\""}"#);
        assert_eq!(c.stats().unwrap()["projections"]["cache"]["invalidations"], 1);
    }
    let cached = as_json(&get_all(&mut c, "P"));
    drop(c);
    assert!(daemon.terminate().success(), "{}", daemon.log_text());

    // The same store without the cache: the same items, and zeros in stats.
    let mut daemon = Daemon::start(dir.path(), &["--projection-cache-bytes", "0"]);
    let mut c = daemon.client();
    assert_eq!(as_json(&get_all(&mut c, "P")), cached);
    let cache = c.stats().unwrap()["projections"]["cache"].clone();
    assert_eq!((cache["budget_bytes"].as_u64(), cache["hits"].as_u64()), (Some(0), Some(0)), "{cache}");
    drop(c);
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
}
