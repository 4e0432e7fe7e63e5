//! Starting and stopping a real `opossumd` for a benchmark run: the suite, the wire examples and the peer
//! benchmark all start their daemons here. (`tests/daemon/harness.rs` keeps its own starter for the test suite,
//! with a test's short timeout.)

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

pub struct Daemon {
    /// `None` once stopped. A mutex so that workloads holding `&Daemon` can [`restart`](Daemon::restart) it.
    child: std::sync::Mutex<Option<Child>>,
    pub socket: PathBuf,
    /// From spawn to `READY=1` (the store opened and the socket bound).
    pub ready_after: Duration,
    binary: PathBuf,
    data: PathBuf,
    args: Vec<String>,
}

impl Daemon {
    /// Starts `binary` on `data`, serving `socket`, and waits for its `READY=1` notification.
    pub fn start(binary: &Path, data: &Path, socket: &Path, args: &[impl AsRef<str>]) -> anyhow::Result<Daemon> {
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        let (child, ready_after) = spawn(binary, data, socket, &args)?;
        Ok(Daemon {
            child: std::sync::Mutex::new(Some(child)),
            socket: socket.to_path_buf(),
            ready_after,
            binary: binary.to_path_buf(),
            data: data.to_path_buf(),
            args,
        })
    }

    /// Stops the daemon and starts it again on the same store and socket, so that nothing it keeps in memory (the
    /// projection cache) survives: for cold-cache measurements. Clients must reconnect.
    pub fn restart(&self) -> anyhow::Result<()> {
        let mut child = self.child.lock().unwrap();
        stop_child(child.take().context("the daemon is not running")?)?;
        *child = Some(spawn(&self.binary, &self.data, &self.socket, &self.args)?.0);
        Ok(())
    }

    /// The running daemon's process id (for its RSS), `None` once stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// SIGTERM and wait (the daemon flushes deferred index files and closes the store); returns how long it took.
    pub fn stop(self) -> anyhow::Result<Duration> {
        let child = self.child.lock().unwrap().take().context("the daemon is not running")?;
        stop_child(child)
    }

    /// SIGKILL and wait: a crash, for measuring the open after it.
    pub fn kill(self) -> anyhow::Result<()> {
        let mut child = self.child.lock().unwrap().take().context("the daemon is not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

/// Starts `binary` and waits for `READY=1`: the child and how long that took.
fn spawn(binary: &Path, data: &Path, socket: &Path, args: &[String]) -> anyhow::Result<(Child, Duration)> {
    let notify_path = socket.with_extension("notify");
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).with_context(|| format!("binding {}", notify_path.display()))?;
    notify.set_read_timeout(Some(Duration::from_millis(100)))?;
    let start = Instant::now();
    let mut child = Command::new(binary)
        .arg("--data")
        .arg(data)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("NOTIFY_SOCKET", &notify_path)
        // The daemon logs to our stderr; `OPOSSUM_BENCH_DAEMON_LOG=debug` shows its commits' and flushes' details.
        .env("RUST_LOG", std::env::var("OPOSSUM_BENCH_DAEMON_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut buf = [0u8; 256];
    loop {
        if let Ok(n) = notify.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                break;
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("opossumd exited before it was ready: {status}");
        }
        if start.elapsed() > Duration::from_secs(900) {
            let _ = child.kill();
            bail!("opossumd not ready after 900 s");
        }
    }
    let _ = std::fs::remove_file(&notify_path);
    Ok((child, start.elapsed()))
}

fn stop_child(mut child: Child) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
        let _ = child.kill();
        let _ = child.wait();
        bail!("signalling opossumd: {e}");
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("opossumd exited with {status}");
    }
    Ok(t.elapsed())
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.get_mut().ok().and_then(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
