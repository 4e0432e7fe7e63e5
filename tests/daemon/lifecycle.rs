//! Start-up and shutdown: graceful SIGTERM, requests during shutdown, exclusive stores, stale and live sockets,
//! socket permissions, socket activation, SIGHUP reloads.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::Signal;
use opossum::model::{Query, ReadOptions};
use serde_json::json;

use crate::harness::*;

#[test]
fn sigterm_stops_gracefully_and_the_data_survives() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), &[]);
    let mut c = daemon.client();
    c.append(vec![event("A", &[]), event("B", &[])], None).unwrap();
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status}: {}", daemon.log_text());
    assert!(!daemon.socket.exists(), "the socket file is removed at exit");
    assert!(daemon.log_text().contains("stopped"));
    let mut daemon = Daemon::start(dir.path(), &[]);
    assert_eq!(daemon.client().head().unwrap(), 2);
    assert!(daemon.terminate().success());
}

/// The stop writes the index checkpoint beside its last sync and no longer waits for the in-memory index to be
/// freed: everything durable must still be done before the exit. After SIGTERM: every acknowledged event is there
/// (by position, by tag and by type), the next open loads the index from the checkpoint the stop wrote (nothing
/// left to scan), and the real `opossum verify` finds the tree equal to the journal.
#[test]
fn sigterm_leaves_every_acknowledged_event_a_current_index_checkpoint_and_a_verified_store() {
    if files_mode("sigterm_leaves_every_acknowledged_event_a_current_index_checkpoint", "no index checkpoint") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), &[]);
    let mut c = daemon.client();
    let mut last = 0;
    for batch in 0..12u64 {
        let events: Vec<_> = (0..50u64)
            .map(|i| {
                let n = batch * 50 + i;
                event(["A", "B", "C"][(n % 3) as usize], &[("own", &n.to_string()), ("group", &(n % 7).to_string())])
            })
            .collect();
        last = c.append(events, None).unwrap().last;
    }
    assert_eq!(last, 600);
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status}: {}", daemon.log_text());
    let log = daemon.log_text();
    let line = |log: &str, all: &[&str]| log.lines().any(|l| all.iter().all(|w| l.contains(w)));
    assert!(line(&log, &["index checkpoint written", "through=600"]), "{log}");
    let mut daemon = Daemon::start(dir.path(), &[]);
    let log = daemon.log_text();
    assert!(line(&log, &["index loaded", "checkpoint=600", "scanned=0"]), "the open scanned the journal: {log}");
    let mut c = daemon.client();
    assert_eq!(c.head().unwrap(), 600);
    let all = read_all(&mut c, &Query::All, ReadOptions::default());
    assert_eq!(positions(&all), (1..=600).collect::<Vec<_>>());
    let group = read_all(&mut c, &query(&[], &[("group", "3")]), ReadOptions::default());
    assert_eq!(positions(&group), (1..=600).filter(|p| (p - 1) % 7 == 3).collect::<Vec<_>>());
    let own = read_all(&mut c, &query(&["B"], &[("own", "598")]), ReadOptions::default());
    assert_eq!(positions(&own), vec![599]);
    drop(c);
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
    if std::env::var("OPOSSUM_TEST_MIRROR").is_ok_and(|m| m == "off") {
        // No tree for new events: `verify` reports it behind, as it should.
        return;
    }
    let out = Command::new(CLI).arg("verify").arg("--store").arg(&daemon.data).output().unwrap();
    assert!(
        out.status.success(),
        "opossum verify failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// While a read is in flight (its client reads slowly), SIGTERM stops new connections and answers new requests with
/// `shutting_down`; the in-flight read completes; then the daemon exits 0.
#[test]
fn requests_during_shutdown_are_refused_and_in_flight_ones_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), &["--durability", "none", "--index-writes", "deferred"]);
    let mut c = daemon.client();
    seed(&mut c, 40_000, 10_000);
    let mut idle = daemon.raw();
    assert_eq!(idle.call(r#"{"id":0,"op":"head"}"#)["head"], 40_000);
    // A slow reader: the read cannot finish until we consume it (backpressure keeps it in flight).
    let mut slow = daemon.raw();
    slow.send(r#"{"id":"slow","op":"read"}"#);
    assert_eq!(slow.recv().unwrap()["event"]["position"], 1);

    daemon.signal(Signal::SIGTERM);
    eventually("the socket file to disappear", || !daemon.socket.exists());
    assert!(std::os::unix::net::UnixStream::connect(&daemon.socket).is_err(), "no new connections");
    let refused = idle.call(r#"{"id":"late","op":"append","events":[{"type":"Late","data":{}}]}"#);
    assert_eq!(refused["id"], "late");
    assert_error(&refused, "shutting_down");
    assert_error(&idle.call(r#"{"id":"late2","op":"head"}"#), "shutting_down");
    assert!(daemon.child.try_wait().unwrap().is_none(), "still finishing the in-flight read");

    let mut count = 1;
    let last = loop {
        let line = slow.recv().expect("the read completes");
        if line.get("ok").is_some() {
            break line;
        }
        count += 1;
    };
    assert_eq!(last, json!({"id":"slow","ok":true,"count":40_000,"head":40_000}));
    assert_eq!(count, 40_000);
    let status = daemon.wait();
    assert!(status.success(), "{status}: {}", daemon.log_text());
    assert!(idle.recv().is_none(), "idle connections are closed at exit");

    // Nothing from the refused append was written.
    let mut daemon = Daemon::start(dir.path(), &[]);
    let mut c = daemon.client();
    assert_eq!(c.head().unwrap(), 40_000);
    assert!(read_all(&mut c, &query(&["Late"], &[]), ReadOptions::default()).is_empty());
    assert!(daemon.terminate().success());
}

#[test]
fn a_second_daemon_on_the_same_store_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let other_socket = dir.path().join("other.sock");
    let (cmd, log) = command(&daemon.data, &other_socket, &[]);
    let err = Daemon::spawn(cmd, &daemon.data, &other_socket, log).err().expect("the second daemon must fail");
    assert!(err.contains("in use by another opossumd"), "{err}");
    assert!(!other_socket.exists(), "the refused daemon created no socket");
    assert_eq!(daemon.client().head().unwrap(), 0, "the first daemon is unaffected");
}

#[test]
fn a_live_socket_is_not_stolen_and_a_stale_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), &[]);
    // Another store, same socket path: refused, the first daemon keeps its socket.
    let other = dir.path().join("other-store");
    let (cmd, log) = command(&other, &daemon.socket, &[]);
    let err = Daemon::spawn(cmd, &other, &daemon.socket, log).err().expect("must refuse a live socket");
    assert!(err.contains("in use by a running server"), "{err}");
    assert_eq!(daemon.client().head().unwrap(), 0);

    // SIGKILL leaves the socket file behind; the next start removes it (nothing listens) and serves.
    daemon.signal(Signal::SIGKILL);
    daemon.wait();
    assert!(std::fs::symlink_metadata(&daemon.socket).unwrap().file_type().is_socket());
    let mut again = Daemon::start(dir.path(), &[]);
    assert_eq!(again.client().head().unwrap(), 0);
    assert!(again.log_text().contains("stale socket"));
    assert!(again.terminate().success());

    // A regular file at the socket path is never removed.
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, "precious").unwrap();
    let (cmd, log) = command(&dir.path().join("store"), &path, &[]);
    let err = Daemon::spawn(cmd, &dir.path().join("store"), &path, log).err().expect("must refuse");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

#[test]
fn the_socket_file_has_the_configured_mode() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mode = std::fs::metadata(&daemon.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let other = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(other.path(), &["--socket-mode", "0600"]);
    let mode = std::fs::metadata(&daemon.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// The listener arrives as fd 3 with LISTEN_FDS=1 and LISTEN_PID=<the daemon's pid>, as systemd passes it.
#[test]
fn socket_activation_serves_the_passed_listener() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let data = dir.path().join("store");
    let ignored_socket = dir.path().join("ignored.sock");
    let (cmd, log) = command(&data, &ignored_socket, &[]);
    // LISTEN_PID must be the daemon's own pid: set it in a shell that then execs the daemon (same pid).
    let args: Vec<std::ffi::OsString> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut sh = Command::new("sh");
    sh.arg("-c").arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"").arg(BIN).args(&args);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    sh.stderr(std::fs::File::create(&log).unwrap());
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    // SAFETY: dup2 is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        sh.pre_exec(move || {
            // dup2 onto itself keeps FD_CLOEXEC: clear it explicitly in that case.
            let ok = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if ok < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    drop(cmd);
    let mut daemon = Daemon::spawn(sh, &data, &socket, log).unwrap();
    drop(listener);
    let mut c = daemon.client();
    assert_eq!(c.append(vec![event("A", &[])], None).unwrap().head, 1);
    assert!(!ignored_socket.exists(), "--socket is ignored under socket activation");
    assert!(daemon.terminate().success());
    assert!(socket.exists(), "the activated socket belongs to systemd and stays");
}

#[test]
fn sighup_reloads_max_connections_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("opossumd.toml");
    std::fs::write(&config, "durability = \"none\"\nmax_connections = 1\n").unwrap();
    let daemon = Daemon::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let mut first = daemon.raw();
    assert_eq!(first.call(r#"{"id":1,"op":"head"}"#)["ok"], true);
    assert_error(&daemon.raw().recv().unwrap(), "busy");

    std::fs::write(&config, "durability = \"none\"\nmax_connections = 3\nlog = \"debug\"\n").unwrap();
    daemon.signal(Signal::SIGHUP);
    eventually("the reload", || first.call(r#"{"id":2,"op":"stats"}"#)["server"]["max_connections"] == 3);
    let mut second = daemon.raw();
    assert_eq!(second.call(r#"{"id":3,"op":"head"}"#)["ok"], true);

    // A broken file keeps the running configuration.
    std::fs::write(&config, "max_connections = \"many\"\n").unwrap();
    daemon.signal(Signal::SIGHUP);
    eventually("the failed reload to be logged", || daemon.log_text().contains("keeping the current configuration"));
    assert_eq!(first.call(r#"{"id":4,"op":"stats"}"#)["server"]["max_connections"], 3);
    let all = read_all(&mut daemon.client(), &Query::All, ReadOptions::default());
    assert!(all.is_empty());
}

#[test]
fn relative_data_and_socket_paths_work_from_a_fresh_directory() {
    // The README's first command: defaults relative to the working directory, store not there yet.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("opossumd.log");
    let mut cmd = Command::new(BIN);
    cmd.args(["--data", "rel-store", "--socket", "rel.sock"]).current_dir(dir.path());
    cmd.env("RUST_LOG", "info").env_remove("LISTEN_FDS").env_remove("LISTEN_PID");
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    cmd.stderr(std::fs::File::create(&log).unwrap());
    let mut daemon = Daemon::spawn(cmd, &dir.path().join("rel-store"), &dir.path().join("rel.sock"), log)
        .unwrap_or_else(|e| panic!("daemon did not start on a relative path: {e}"));
    let mut client = daemon.client();
    let appended = client.append(vec![event("A", &[])], None).unwrap();
    assert_eq!(appended.first, 1);
    assert!(daemon.terminate().success());
    // Written to the tree by the journal's mirror at its pace, current once the daemon stopped cleanly.
    assert!(dir.path().join("rel-store/events/0000000001.json").is_file());
}
