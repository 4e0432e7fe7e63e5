//! `opossumd`: serves one opossum store over a Unix socket (docs/PROTOCOL.md).
//!
//! Exit status: 0 after a graceful stop (SIGTERM/SIGINT), 1 when it cannot start (bad config, store in use by
//! another daemon, socket in use, ...) or when the stop could not flush or close the store. Logs go to stderr
//! (journald-friendly), filtered by RUST_LOG or `log`.
//!
//! At start, before it creates any file, the daemon sets its umask (`--umask`, default 0027, as the unit's
//! `UMask=`) and raises its soft descriptor limit to the hard one (`server::fds`).

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use opossum::config::{Config, DaemonArgs};
use opossum::projection::{ProjectionOptions, ProjectionStore};
use opossum::server::{self, Hooks, Listener};
use opossum::store::{Store, StoreOptions};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter};

use opossum::limits::BLOCKING_THREADS_MAX;

fn filter_for(log: &str) -> EnvFilter {
    match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(env).unwrap_or_else(|_| EnvFilter::new(log)),
        _ => EnvFilter::new(log),
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("opossumd: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = DaemonArgs::parse();
    let config = Config::load(&args)?;

    let (filter, filter_handle) = reload::Layer::new(filter_for(&config.log));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    if under_journald {
        tracing_subscriber::registry().with(filter).with(fmt.without_time()).init();
    } else {
        tracing_subscriber::registry().with(filter).with(fmt).init();
    }

    // Before any thread exists: socket activation edits the environment.
    let activated = server::systemd::take_activated_listener().context("socket activation")?;

    // Before any file is created: a shell's umask (022, or 000) must not make event data world-readable or the
    // store writable by others.
    // SAFETY: umask only swaps the process's file-creation mask.
    let inherited = unsafe { libc::umask(config.umask as libc::mode_t) };
    tracing::info!(
        umask = format!("{:04o}", config.umask),
        inherited = format!("{inherited:04o}"),
        "file-creation mask"
    );
    match server::fds::raise_nofile_limit() {
        Ok(limit) if limit.soft > limit.before => {
            tracing::info!(from = limit.before, to = limit.soft, "raised the descriptor limit to the hard limit")
        }
        Ok(limit) => tracing::info!(limit = limit.soft, "descriptor limit"),
        Err(e) => tracing::warn!("cannot raise the descriptor limit: {e}"),
    }
    if activated.is_none() {
        if config.socket_mode & 0o600 != 0o600 {
            tracing::warn!(
                socket_mode = format!("{:04o}", config.socket_mode),
                "the socket's owner cannot both read and write it: clients (this user's included) will be refused"
            );
        }
        // A live daemon on the socket: refuse before the store directory is created or opened.
        server::remove_stale_socket(&config.socket)?;
    }

    let options = StoreOptions {
        durability: config.durability,
        commit: config.commit,
        mirror: config.mirror,
        io_backend: config.io_backend,
        sync_strategy: config.sync_strategy,
        index_writes: config.index_writes,
        exclusive: true,
        ..StoreOptions::default()
    };
    tracing::info!(data = %config.data.display(), ?options, "opening store");
    let store =
        Store::open(&config.data, options).with_context(|| format!("opening store {}", config.data.display()))?;
    // Same root, same I/O backend; after the event store, whose `.opossumd.lock` keeps a second daemon out.
    let projection_options = ProjectionOptions {
        durability: config.durability,
        cache_bytes: config.projection_cache_bytes,
        ..ProjectionOptions::default()
    };
    let projections = ProjectionStore::open(store.root(), store.io(), projection_options)
        .with_context(|| format!("opening the projections of {}", config.data.display()))?;
    let report = projections.open_report();
    for (name, reason) in &report.rebuilt {
        tracing::warn!(projection = %name, "rebuilt projection indices: {reason}");
    }
    for path in &report.skipped_files {
        tracing::warn!(file = %path.display(), "projection file could not be parsed; not served");
    }
    let listener = match activated {
        Some(listener) => {
            if args.socket.is_some() {
                tracing::info!("socket activation: ignoring --socket");
            }
            Listener::Activated(listener)
        }
        None => Listener::bind(&config.socket, config.socket_mode)?,
    };

    let reload_args = args.clone();
    let filter_handle = Arc::new(filter_handle);
    let hooks = Hooks {
        reload: Some(Box::new(move || match Config::load(&reload_args) {
            Ok(new) => {
                if let Err(e) = filter_handle.reload(filter_for(&new.log)) {
                    tracing::error!("reloading the log filter: {e}");
                }
                Some(new)
            }
            Err(e) => {
                tracing::error!("SIGHUP: keeping the current configuration: {e}");
                None
            }
        })),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS_MAX)
        .thread_name("opossumd")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(server::run(config, store, projections, listener, hooks))?;
    Ok(())
}
