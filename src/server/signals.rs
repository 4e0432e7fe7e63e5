//! What the operating system asks of the daemon, one place per platform.
//!
//! - Unix: SIGTERM and SIGINT stop gracefully; SIGHUP reloads the configuration.
//! - Windows: Ctrl+C / Ctrl+Break in a console, closing the console window, and logoff/shutdown stop gracefully
//!   (a service stopped with `sc.exe stop` gets no console event: see README, Windows). There is no reload signal:
//!   restart the daemon to apply a changed configuration.

use std::io;

/// What a signal asks for.
pub(super) enum Signal {
    /// Stop gracefully; the text names the signal for the log.
    Stop(&'static str),
    /// Re-read the configuration (Unix only: Windows has no such signal).
    #[cfg_attr(windows, allow(dead_code))]
    Reload,
}

#[cfg(unix)]
pub(super) struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    /// Installs the handlers (inside the runtime).
    pub(super) fn install() -> io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal (cancel-safe).
    pub(super) async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.terminate.recv() => Signal::Stop("SIGTERM"),
            _ = self.interrupt.recv() => Signal::Stop("SIGINT"),
            _ = self.hangup.recv() => Signal::Reload,
        }
    }
}

#[cfg(windows)]
pub(super) struct Signals {
    ctrl_c: tokio::signal::windows::CtrlC,
    ctrl_break: tokio::signal::windows::CtrlBreak,
    ctrl_close: tokio::signal::windows::CtrlClose,
    ctrl_shutdown: tokio::signal::windows::CtrlShutdown,
    ctrl_logoff: tokio::signal::windows::CtrlLogoff,
}

#[cfg(windows)]
impl Signals {
    /// Installs the handlers (inside the runtime).
    pub(super) fn install() -> io::Result<Signals> {
        use tokio::signal::windows;
        Ok(Signals {
            ctrl_c: windows::ctrl_c()?,
            ctrl_break: windows::ctrl_break()?,
            ctrl_close: windows::ctrl_close()?,
            ctrl_shutdown: windows::ctrl_shutdown()?,
            ctrl_logoff: windows::ctrl_logoff()?,
        })
    }

    /// The next signal (cancel-safe). Windows has none that asks for a reload.
    pub(super) async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.ctrl_c.recv() => Signal::Stop("Ctrl+C"),
            _ = self.ctrl_break.recv() => Signal::Stop("Ctrl+Break"),
            _ = self.ctrl_close.recv() => Signal::Stop("console closed"),
            _ = self.ctrl_shutdown.recv() => Signal::Stop("system shutdown"),
            _ = self.ctrl_logoff.recv() => Signal::Stop("logoff"),
        }
    }
}
