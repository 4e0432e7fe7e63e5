//! Integration tests against the real `opossumd` binary on temporary stores, over its Unix socket.
//!
//! Every test starts its own daemon (`harness::Daemon`) and waits for its `READY=1` notification (the same
//! `$NOTIFY_SOCKET` protocol systemd uses) instead of sleeping.
//!
//! Unix only: the harness waits on `$NOTIFY_SOCKET`, stops daemons with SIGTERM/SIGKILL, and the suites check socket
//! files, permissions, umask and descriptor limits. On Windows the daemon is tested over its named pipe by
//! `tests/portable.rs`; this suite reports one ignored test there, saying so.

#[cfg(unix)]
mod harness;

#[cfg(unix)]
mod bad_input;
#[cfg(unix)]
mod cli;
#[cfg(unix)]
mod connections;
#[cfg(unix)]
mod crash;
#[cfg(unix)]
mod dcb;
#[cfg(unix)]
mod hardening_store;
#[cfg(unix)]
mod hardening_wire;
#[cfg(unix)]
mod journal_crash;
#[cfg(unix)]
mod lifecycle;
#[cfg(unix)]
mod projection;
#[cfg(unix)]
mod subscribe;
#[cfg(unix)]
mod tracking;

#[test]
#[cfg_attr(
    windows,
    ignore = "the daemon suite needs Unix (NOTIFY_SOCKET readiness, signals, socket files); tests/portable.rs covers Windows"
)]
fn daemon_suite_runs_on_unix_only() {
    assert_eq!(std::env::consts::FAMILY, "unix", "this suite is compiled out here");
}
