//! Integration tests against the real `opossumd` binary on temporary stores, over its Unix socket.
//!
//! Every test starts its own daemon (`harness::Daemon`) and waits for its `READY=1` notification (the same
//! `$NOTIFY_SOCKET` protocol systemd uses) instead of sleeping.
//!
//! Unix only: the harness waits on `$NOTIFY_SOCKET`, stops daemons with SIGTERM/SIGKILL, and the suites check socket
//! files, permissions, umask and descriptor limits. On Windows the daemon is tested over its named pipe by
//! `tests/portable.rs`; this suite reports one ignored test there, saying so.

#[cfg(unix)]
#[path = "daemon/harness.rs"]
mod harness;

#[cfg(unix)]
#[path = "daemon/bad_input.rs"]
mod bad_input;
#[cfg(unix)]
#[path = "daemon/cli.rs"]
mod cli;
#[cfg(unix)]
#[path = "daemon/connections.rs"]
mod connections;
#[cfg(unix)]
#[path = "daemon/crash.rs"]
mod crash;
#[cfg(unix)]
#[path = "daemon/dcb.rs"]
mod dcb;
#[cfg(unix)]
#[path = "daemon/hardening_store.rs"]
mod hardening_store;
#[cfg(unix)]
#[path = "daemon/hardening_wire.rs"]
mod hardening_wire;
#[cfg(unix)]
#[path = "daemon/lifecycle.rs"]
mod lifecycle;
#[cfg(unix)]
#[path = "daemon/projection.rs"]
mod projection;
#[cfg(unix)]
#[path = "daemon/subscribe.rs"]
mod subscribe;

#[test]
#[cfg_attr(
    windows,
    ignore = "the daemon suite needs Unix (NOTIFY_SOCKET readiness, signals, socket files); tests/portable.rs covers Windows"
)]
fn daemon_suite_runs_on_unix_only() {
    assert_eq!(std::env::consts::FAMILY, "unix", "this suite is compiled out here");
}
