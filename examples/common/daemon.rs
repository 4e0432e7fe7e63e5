//! A real `opossumd` for the wire benchmarks (`wire_bench`, `projection_wire_bench`): started on a store and socket,
//! ready when it says `READY=1` on `$NOTIFY_SOCKET`, stopped with SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;

/// How long seeding-sized stores may take to open.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
}

impl Daemon {
    pub fn start(binary: &Path, data: &Path, socket: &Path, args: &[&str]) -> anyhow::Result<Daemon> {
        let notify_path = data.with_extension("notify");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)?;
        notify.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut child = Command::new(binary)
            .arg("--data")
            .arg(data)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()?;
        let start = Instant::now();
        let mut buf = [0u8; 256];
        loop {
            if let Ok(n) = notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                    break;
                }
            }
            if let Some(status) = child.try_wait()? {
                bail!("opossumd exited: {status}");
            }
            if start.elapsed() > READY_TIMEOUT {
                let _ = child.kill();
                bail!("opossumd not ready after {READY_TIMEOUT:?}");
            }
        }
        let _ = std::fs::remove_file(&notify_path);
        Ok(Daemon { child, socket: socket.to_path_buf() })
    }

    pub fn stop(mut self) -> anyhow::Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("opossumd exited with {status}");
        }
        Ok(())
    }
}

/// A benchmark that fails half way does not leave its daemon behind.
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
