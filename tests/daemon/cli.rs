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
    let out = Command::new("python3").arg(script).arg("--demo").arg("--socket").arg(&daemon.socket).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("condition failed as expected"), "{stdout}");
    let mut c = daemon.client();
    assert_eq!(c.head().unwrap(), 2);
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("an exit code")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Issue 11, usability: exit codes a script can use, no doubled error text, a hint when the socket is missing.
#[test]
fn cli_exit_codes_say_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    assert_eq!(code(&cli(&daemon, &["append", "--type", "A", "--tag", "k=v"], "")), 0);
    let dup = cli(&daemon, &["append", "--type", "A", "--fail-if-tag", "k=v"], "");
    assert_eq!(code(&dup), 1, "{}", stderr(&dup));
    let missing = cli(&daemon, &["projection", "get", "P", "nope"], "");
    assert_eq!(code(&missing), 1, "{}", stderr(&missing));
    let bad = cli(&daemon, &["append", "--type", "A", "--data", "{nope"], "");
    assert_eq!(code(&bad), 2, "{}", stderr(&bad));
    let refused = cli(&daemon, &["append", "--type", "", "--data", "{}"], "");
    assert_eq!(code(&refused), 2, "{}", stderr(&refused));
    let help = Command::new(CLI).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit status"));

    let gone = Command::new(CLI).arg("--socket").arg(dir.path().join("nothing.sock")).arg("head").output().unwrap();
    assert_eq!(code(&gone), 3);
    let message = stderr(&gone);
    assert!(message.contains("is opossumd running on"), "{message}");
    assert_eq!(message.matches("No such file or directory").count(), 1, "doubled: {message}");
}

/// Issue 11, usability: a bad line stops `import` with its line number, how many were imported, and how to resume.
#[test]
fn cli_import_names_the_bad_line_and_how_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    let good = r#"{"type":"A","data":{}}"#;
    let input = format!("{good}\n{good}\n{good}\n{{\"type\":\"A\",\"data\":{{}},\"tag\":[]}}\n{good}\n");
    let file = dir.path().join("in.ndjson");
    std::fs::write(&file, &input).unwrap();
    let out = cli(&daemon, &["import", file.to_str().unwrap(), "--batch", "2"], "");
    assert_eq!(code(&out), 2);
    let message = stderr(&out);
    assert!(message.contains("line 4"), "{message}");
    assert!(message.contains("2 events imported"), "{message}");
    assert!(message.contains("--skip-lines 2"), "{message}");
    assert_eq!(lines(&ok(cli(&daemon, &["head"], "")))[0]["head"], 2);
    // Fixed, resumed where it said: every event once.
    std::fs::write(&file, input.replace(r#","tag":[]"#, "")).unwrap();
    let resumed = lines(&ok(cli(&daemon, &["import", file.to_str().unwrap(), "--skip-lines", "2"], "")));
    assert_eq!(resumed[0]["imported"], 3);
    assert_eq!(resumed[0]["head"], 5);
}

/// Issue 11, usability: scripts/client.py reads request lines from stdin (the demo is behind --demo) and says
/// clearly when the socket is missing.
#[test]
fn python_client_is_interactive_and_explains_a_missing_socket() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 not found: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--durability", "none"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/client.py");
    let run = |socket: &std::path::Path, stdin: &str| {
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--socket")
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(&daemon.socket, "{\"op\":\"append\",\"events\":[{\"type\":\"A\",\"data\":{}}]}\n{\"op\":\"read\"}\n");
    let answers = lines(&ok(out));
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert_eq!(answers[1]["event"]["type"], "A");
    assert_eq!(answers[2]["count"], 1);
    let out = run(&dir.path().join("nothing.sock"), "");
    assert_eq!(code(&out), 3);
    assert!(stderr(&out).contains("is opossumd running on"), "{}", stderr(&out));
}
