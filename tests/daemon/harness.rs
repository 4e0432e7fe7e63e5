//! Starting and stopping the real daemon binary.

#![allow(dead_code)]

use std::fs::File;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use opossum::client::Client;
use opossum::model::{Event, Query, QueryItem, ReadOptions, SequencedEvent, Tag};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_opossumd");
pub const CLI: &str = env!("CARGO_BIN_EXE_opossum");
/// Longest any single wait in these tests may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct Daemon {
    pub child: Child,
    pub data: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    notify: UnixDatagram,
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A `Command` for the daemon on `data`/`socket` with `args`, logging to a file next to the store.
pub fn command(data: &Path, socket: &Path, args: &[&str]) -> (Command, PathBuf) {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = data.with_file_name(format!("opossumd-{}-{n}.log", data.file_name().unwrap().to_string_lossy()));
    let mut cmd = Command::new(BIN);
    cmd.arg("--data").arg(data).arg("--socket").arg(socket).args(args);
    // CI runs the suite once per backend (scripts/test.sh).
    if let Ok(backend) = std::env::var("OPOSSUM_TEST_IO_BACKEND") {
        if !args.contains(&"--io-backend") {
            cmd.arg("--io-backend").arg(backend);
        }
    }
    if let Ok(sync) = std::env::var("OPOSSUM_TEST_SYNC_STRATEGY") {
        cmd.arg("--sync-strategy").arg(sync);
    }
    // ... and once per commit mode and mirror.
    if let Ok(commit) = std::env::var("OPOSSUM_TEST_COMMIT") {
        if !args.contains(&"--commit") {
            cmd.arg("--commit").arg(commit);
        }
    }
    if let Ok(mirror) = std::env::var("OPOSSUM_TEST_MIRROR") {
        if !args.contains(&"--mirror") {
            cmd.arg("--mirror").arg(mirror);
        }
    }
    cmd.env("RUST_LOG", "info").env_remove("LISTEN_FDS").env_remove("LISTEN_PID");
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(File::create(&log).unwrap()));
    (cmd, log)
}

impl Daemon {
    /// Starts the daemon with store `dir/store` and socket `dir/s.sock`.
    pub fn start(dir: &Path, args: &[&str]) -> Daemon {
        Daemon::start_at(&dir.join("store"), &dir.join("s.sock"), args)
    }

    pub fn start_at(data: &Path, socket: &Path, args: &[&str]) -> Daemon {
        let (cmd, log) = command(data, socket, args);
        match Daemon::spawn(cmd, data, socket, log) {
            Ok(d) => d,
            Err(e) => panic!("daemon did not start: {e}"),
        }
    }

    /// Spawns `cmd` with `$NOTIFY_SOCKET` set and waits for `READY=1`; `Err` carries the log if it exited first.
    pub fn spawn(mut cmd: Command, data: &Path, socket: &Path, log: PathBuf) -> Result<Daemon, String> {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let notify_path = data.with_file_name(format!("notify-{n}.sock"));
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        cmd.env("NOTIFY_SOCKET", &notify_path);
        // Until READY=1 the child is owned by a guard: a panic below (or an early return) kills and reaps it
        // instead of leaving a daemon serving after the test run.
        let mut child = KillOnDrop(Some(cmd.spawn().unwrap()));
        let start = Instant::now();
        let mut buf = [0u8; 512];
        loop {
            match notify.recv(&mut buf) {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") => break,
                Ok(_) => {}
                // EINTR: a signal reached this thread (the crash tests SIGKILL daemons from other threads): retry.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("notify socket: {e}"),
            }
            if let Some(status) = child.get().try_wait().unwrap() {
                return Err(format!("exited with {status}: {}", std::fs::read_to_string(&log).unwrap_or_default()));
            }
            if start.elapsed() > DEADLINE {
                return Err(format!("not ready after {DEADLINE:?}: {}", std::fs::read_to_string(&log).unwrap()));
            }
        }
        let child = child.0.take().expect("the guard holds the child until here");
        Ok(Daemon { child, data: data.to_path_buf(), socket: socket.to_path_buf(), log, notify })
    }

    /// The `$NOTIFY_SOCKET` messages received since `READY=1` (or the last call), waiting up to `wait` for the first.
    pub fn notifications(&self, wait: Duration) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let start = Instant::now();
        loop {
            match self.notify.recv(&mut buf) {
                Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(_) if !out.is_empty() || start.elapsed() >= wait => return out,
                Err(_) => {}
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn client(&self) -> Client {
        let client = Client::connect(&self.socket).unwrap();
        client.set_timeout(Some(DEADLINE)).unwrap();
        client
    }

    pub fn raw(&self) -> Raw {
        Raw::connect(&self.socket)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait()
    }

    pub fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "daemon did not exit: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw line-level connection, for malformed input and protocol details.
pub struct Raw {
    pub stream: UnixStream,
    reader: std::io::BufReader<UnixStream>,
}

impl Raw {
    pub fn connect(socket: &Path) -> Raw {
        Raw::from_stream(UnixStream::connect(socket).unwrap())
    }

    pub fn from_stream(stream: UnixStream) -> Raw {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let reader = std::io::BufReader::new(stream.try_clone().unwrap());
        Raw { stream, reader }
    }

    /// Sends `text` as one line, in one write: a server that answers an oversize line and closes the connection
    /// must not race a second write of ours (EPIPE).
    pub fn send(&mut self, text: &str) {
        self.try_send(text).unwrap();
    }

    /// Sends a line; an error (the daemon closed the connection: EPIPE) is returned, not a panic.
    pub fn try_send(&mut self, text: &str) -> std::io::Result<()> {
        use std::io::Write;
        let mut line = text.as_bytes().to_vec();
        if !text.ends_with('\n') {
            line.push(b'\n');
        }
        self.stream.write_all(&line)
    }

    /// The next line as JSON, or `None` at end of stream.
    pub fn recv(&mut self) -> Option<Value> {
        use std::io::BufRead;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("recv: {e}"),
        }
    }

    /// Sends one request line and returns its final line (item lines are skipped).
    pub fn call(&mut self, text: &str) -> Value {
        self.send(text);
        loop {
            let line = self.recv().expect("connection closed");
            if line.get("ok").is_some() {
                return line;
            }
        }
    }
}

/// Asserts `line` is an error line with `code`, and returns its message.
#[track_caller]
pub fn assert_error(line: &Value, code: &str) -> String {
    assert_eq!(line["ok"], Value::Bool(false), "expected an error, got {line}");
    assert_eq!(line["error"]["code"], code, "{line}");
    let message = line["error"]["message"].as_str().unwrap().to_string();
    assert!(!message.is_empty());
    message
}

pub fn event(event_type: &str, tags: &[(&str, &str)]) -> Event {
    Event::new(event_type, "{\"v\":1}", tags.iter().map(|(k, v)| Tag::new(*k, *v)).collect()).unwrap()
}

pub fn query(types: &[&str], tags: &[(&str, &str)]) -> Query {
    let item = QueryItem::new(
        types.iter().map(|t| t.to_string()).collect(),
        tags.iter().map(|(k, v)| Tag::new(*k, *v)).collect(),
    )
    .unwrap();
    Query::items(vec![item]).unwrap()
}

pub fn read_all(client: &mut Client, query: &Query, options: ReadOptions) -> Vec<SequencedEvent> {
    client.read(query, options).unwrap().collect::<Result<Vec<_>, _>>().unwrap()
}

pub fn positions(events: &[SequencedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

/// Polls `f` until it returns true (for conditions the daemon offers no notification of).
#[track_caller]
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Appends `n` small events of type `Seed` in batches of `batch`.
pub fn seed(client: &mut Client, n: usize, batch: usize) {
    let mut left = n;
    while left > 0 {
        let k = left.min(batch);
        let events = (0..k).map(|_| event("Seed", &[])).collect();
        client.append(events, None).unwrap();
        left -= k;
    }
}

/// Whether this run commits through the files (`OPOSSUM_TEST_COMMIT=files`; unset means the daemon's default,
/// journal). Tests of the files protocol's fault handling print why they skip in journal mode.
pub fn files_mode(test: &str, why: &str) -> bool {
    let commit = std::env::var("OPOSSUM_TEST_COMMIT")
        .ok()
        .map_or(opossum::store::CommitMode::default(), |m| m.parse().expect("OPOSSUM_TEST_COMMIT is files or journal"));
    let files = commit == opossum::store::CommitMode::Files;
    if !files {
        eprintln!("skipping {test} in journal mode: {why}");
    }
    files
}

/// A daemon child not yet handed to a [`Daemon`]: killed and reaped when dropped (a failed or panicking `spawn`).
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn get(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("taken only on success")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
