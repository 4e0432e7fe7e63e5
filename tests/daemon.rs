//! Integration tests against the real `opossumd` binary on temporary stores, over its Unix socket.
//!
//! Every test starts its own daemon (`harness::Daemon`) and waits for its `READY=1` notification (the same
//! `$NOTIFY_SOCKET` protocol systemd uses) instead of sleeping.

#[path = "daemon/harness.rs"]
mod harness;

#[path = "daemon/bad_input.rs"]
mod bad_input;
#[path = "daemon/cli.rs"]
mod cli;
#[path = "daemon/connections.rs"]
mod connections;
#[path = "daemon/crash.rs"]
mod crash;
#[path = "daemon/dcb.rs"]
mod dcb;
#[path = "daemon/hardening_store.rs"]
mod hardening_store;
#[path = "daemon/hardening_wire.rs"]
mod hardening_wire;
#[path = "daemon/lifecycle.rs"]
mod lifecycle;
#[path = "daemon/projection.rs"]
mod projection;
#[path = "daemon/subscribe.rs"]
mod subscribe;
