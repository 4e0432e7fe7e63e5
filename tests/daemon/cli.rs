//! The `opossum` CLI and the Python client against a real daemon.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::harness::*;

fn cli(daemon: &Daemon, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(CLI)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[track_caller]
fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn cli_append_read_head_export_import() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    let out = ok(cli(
        &daemon,
        &["append", "--type", "StudentRegistered", "--data", r#"{"name":"Ada"}"#, "--tag", "studentId=42"],
        "",
    ));
    assert_eq!(lines(&out)[0]["first"], 1);
    // Uniqueness through CLI flags: the second registration fails with the server's code.
    let dup = cli(
        &daemon,
        &["append", "--type", "StudentRegistered", "--tag", "studentId=42", "--fail-if-tag", "studentId=42"],
        "",
    );
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("append_condition_failed"));
    let stdin = "{\"type\":\"CourseCreated\",\"data\":{\"c\":1},\"tags\":[{\"key\":\"courseId\",\"value\":\"7\"}]}\n\
                 {\"type\":\"StudentEnrolled\",\"data\":{},\"tags\":[{\"key\":\"courseId\",\"value\":\"7\"},{\"key\":\"studentId\",\"value\":\"42\"}]}\n";
    let out = ok(cli(&daemon, &["append", "--fail-if-type", "CourseCreated", "--fail-if-tag", "courseId=7"], stdin));
    assert_eq!((lines(&out)[0]["first"].as_u64(), lines(&out)[0]["last"].as_u64()), (Some(2), Some(3)));
    assert_eq!(lines(&ok(cli(&daemon, &["head"], "")))[0]["head"], 3);
    let read = lines(&ok(cli(&daemon, &["read", "--tag", "studentId=42"], "")));
    assert_eq!(read.iter().map(|e| e["position"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 3]);
    let newest = lines(&ok(cli(&daemon, &["read", "--backwards", "--limit", "1"], "")));
    assert_eq!(newest[0]["type"], "StudentEnrolled");
    assert_eq!(lines(&ok(cli(&daemon, &["stats"], "")))[0]["store"]["head"], 3);
    assert_eq!(lines(&ok(cli(&daemon, &["hello"], "")))[0]["server"], "opossumd");

    let export = dir.path().join("export.ndjson");
    ok(cli(&daemon, &["export", export.to_str().unwrap()], ""));
    let other_dir = tempfile::tempdir().unwrap();
    let other = Daemon::start(other_dir.path(), &["--durability", "none"]);
    let imported = lines(&ok(cli(&other, &["import", export.to_str().unwrap(), "--batch", "2"], "")));
    assert_eq!(imported[0]["imported"], 3);
    let a = ok(cli(&daemon, &["read"], ""));
    let b = ok(cli(&other, &["read"], ""));
    let strip = |text: &str| -> Vec<Value> {
        lines(text)
            .into_iter()
            .map(|mut e| {
                e.as_object_mut().unwrap().remove("metadata");
                e
            })
            .collect()
    };
    assert_eq!(strip(&a), strip(&b), "export then import reproduces the events");
    // Metadata (timestamps) travel too.
    assert_eq!(lines(&a)[0]["metadata"], lines(&b)[0]["metadata"]);
}

#[test]
fn python_client_speaks_the_protocol() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 not found: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/client.py");
    let out = Command::new("python3").arg(script).arg("--socket").arg(&daemon.socket).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("condition failed as expected"), "{stdout}");
    let mut c = daemon.client();
    assert_eq!(c.head().unwrap(), 2);
}
