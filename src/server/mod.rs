//! The daemon's socket server: tokio on a Unix stream socket, one [`Store`] and one [`ProjectionStore`] (on the same
//! root and `BatchIo`) per daemon.
//!
//! - **Connections**: at most `max_connections` at once (default [`crate::config::MAX_CONNECTIONS_DEFAULT`]); an
//!   excess connection gets one `busy` error line and is closed.
//! - **Requests** on one connection run one after another, so responses come back in request order and every
//!   request sees the effects of the ones before it. Clients may pipeline: the server reads ahead and batches the
//!   small responses of pipelined requests into few writes. Concurrency (and group commit) comes from connections.
//! - **Blocking work** (appends wait for their group commit; reads do file I/O) runs on tokio's blocking pool.
//!   A read streams: a blocking producer encodes item lines into chunks of [`READ_CHUNK_BYTES`] and hands them over
//!   a channel of [`READ_CHUNKS_IN_FLIGHT`] chunks, so memory stays bounded however many events match, and a client
//!   that reads slowly stalls only its own producer (backpressure).
//! - **Ops**: the op table (`ops`) maps each op name to its handler in a family module (`ops::core`,
//!   `ops::projection`); `unknown_op` lists the table's names. A handler gets the parsed [`Request`] and a
//!   [`Responder`] that can write one final line or stream item lines ([`stream`]).
//! - **Layout**: [`listener`] (binding, stale sockets), [`connection`] (accept, `busy`, the request loop), `frame`
//!   (request lines), [`stream`] (streaming answers), `ops`, `shutdown` (graceful stop), [`fds`] (the
//!   descriptor budget), [`systemd`].
//! - **Signals**: SIGTERM/SIGINT = graceful stop: stop accepting (the socket file is removed), answer new requests
//!   with `shutting_down`, let in-flight requests finish (up to `shutdown_timeout`), flush the store, exit 0.
//!   SIGHUP re-reads the config file and applies the log filter and `max_connections` (see [`Hooks`]).
//! - **systemd**: `READY=1` via `$NOTIFY_SOCKET` once serving; socket activation via `$LISTEN_FDS` ([`systemd`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::limits::READ_STREAMS_MAX;
use crate::projection::ProjectionStore;
use crate::store::Store;

pub mod connection;
pub mod fds;
mod frame;
pub mod listener;
mod ops;
mod shutdown;
mod signals;
pub mod stream;
mod subscribe;
pub mod systemd;

pub use crate::limits::{READ_CHUNKS_IN_FLIGHT, READ_CHUNK_BYTES};
pub use connection::{OpError, Request, Responder};
pub use listener::{remove_stale_socket, Listener, ServerError};
use shutdown::{wait_unshared, Shutdown};

/// After in-flight requests finished at shutdown, how long idle connections get to close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Callbacks into the binary.
#[derive(Default)]
pub struct Hooks {
    /// SIGHUP: reload the configuration (the binary re-reads the file, re-applies its flags and swaps the log
    /// filter) and return it; the server then applies `max_connections`. `None` keeps the current settings.
    pub reload: Option<Box<dyn FnMut() -> Option<Config> + Send>>,
}

#[derive(Debug, Default)]
struct ServerCounters {
    connections_total: AtomicU64,
    connections_refused: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
}

/// State shared by the accept loop, the connections and the op handlers.
pub struct Context {
    pub store: Arc<Store>,
    pub projections: Arc<ProjectionStore>,
    pub started: Instant,
    pub max_frame_bytes: usize,
    /// How long a started request line may take to arrive.
    line_timeout: Duration,
    /// Grown request-buffer bytes of all connections, at most [`LINE_BUFFERS_BYTES_TOTAL_MAX`].
    line_buffers: Arc<AtomicUsize>,
    /// Permits of streaming reads, [`READ_STREAMS_MAX`].
    read_streams: Arc<tokio::sync::Semaphore>,
    /// What the descriptor limit allows ([`fds::plan_connections`]); SIGHUP cannot raise `max_connections` past it.
    descriptor_limit: u64,
    max_connections: AtomicUsize,
    connections: AtomicUsize,
    counters: ServerCounters,
    projection_counters: ops::projection::Counters,
    shutdown: Shutdown,
}

impl Context {
    pub fn new(store: Arc<Store>, projections: Arc<ProjectionStore>, config: &Config) -> Context {
        Context {
            store,
            projections,
            started: Instant::now(),
            max_frame_bytes: config.max_frame_bytes,
            line_timeout: config.line_timeout,
            line_buffers: Arc::new(AtomicUsize::new(0)),
            read_streams: Arc::new(tokio::sync::Semaphore::new(READ_STREAMS_MAX)),
            descriptor_limit: fds::nofile_soft_limit(),
            max_connections: AtomicUsize::new(config.max_connections),
            connections: AtomicUsize::new(0),
            counters: ServerCounters::default(),
            projection_counters: ops::projection::Counters::default(),
            shutdown: Shutdown::new(),
        }
    }
}

/// Serves `store` and `projections` on `listener` until SIGTERM/SIGINT, then stops gracefully and closes both.
pub async fn run(
    config: Config,
    store: Store,
    projections: ProjectionStore,
    listener: Listener,
    mut hooks: Hooks,
) -> Result<(), ServerError> {
    let mut signals = signals::Signals::install()?;
    let mut listener = listener.serve()?;
    let ctx = Arc::new(Context::new(Arc::new(store), Arc::new(projections), &config));
    let (fit, warning) = fds::plan_connections(ctx.descriptor_limit, config.max_connections);
    match warning {
        Some(warning) => tracing::warn!("{warning}"),
        None => tracing::info!(
            descriptor_limit = ctx.descriptor_limit,
            max_connections = fit,
            "descriptor budget: connections, reads and writes fit"
        ),
    }
    ctx.max_connections.store(fit, Ordering::SeqCst);
    tracing::info!(on = %listener.describe(), "listening");
    // The status line follows every change of the store's write status (subscribed before the first read of it, so
    // none is missed in between).
    let mut status_changes = ctx.store.write_status_changes();
    let mut write_status = ctx.store.write_status();
    if let Err(e) = systemd::notify(&format!("READY=1\n{}", systemd::serving_status(&write_status))) {
        tracing::warn!("sd_notify READY=1 failed: {e}");
    }

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(stream) => connection::accept(&ctx, stream),
                Err(e) => {
                    // EMFILE/ENFILE and friends: back off instead of spinning; the connection waits in the backlog.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            changed = status_changes.recv() => {
                let now = match changed {
                    Ok(now) => now,
                    // Fell behind, or the store is gone (the loop ends with the shutdown anyway): read it afresh.
                    Err(_) => ctx.store.write_status(),
                };
                if now != write_status {
                    match &now {
                        crate::store::WriteStatus::Writable => tracing::info!("the store takes writes again"),
                        crate::store::WriteStatus::Unwritable { reason } => {
                            tracing::error!("the store takes no writes: {reason}")
                        }
                    }
                    let _ = systemd::notify(&systemd::serving_status(&now));
                    write_status = now;
                }
            }
            signal = signals.next() => {
                if let signals::Signal::Stop(name) = signal {
                    tracing::info!("{name}: stopping");
                    break;
                }
                tracing::info!("SIGHUP: reloading configuration");
                if let Some(new) = hooks.reload.as_mut().and_then(|reload| reload()) {
                    let (fit, warning) = fds::plan_connections(ctx.descriptor_limit, new.max_connections);
                    if let Some(warning) = warning {
                        tracing::warn!("{warning}");
                    }
                    ctx.max_connections.store(fit, Ordering::SeqCst);
                    tracing::info!(max_connections = fit, log = %new.log, "configuration reloaded");
                }
            }
        }
    }

    // Graceful stop.
    // Refuse new requests before the socket disappears, so a client that sees the socket gone knows that.
    ctx.shutdown.stopping.store(true, Ordering::SeqCst);
    let _ = systemd::notify("STOPPING=1\nSTATUS=stopping");
    listener.close();
    let in_flight = ctx.shutdown.in_flight.load(Ordering::SeqCst);
    tracing::info!(in_flight, connections = ctx.connections.load(Ordering::SeqCst), "waiting for in-flight requests");
    if tokio::time::timeout(config.shutdown_timeout, ctx.shutdown.wait_idle()).await.is_err() {
        tracing::warn!(
            "shutdown timeout: {} requests still in flight; closing anyway",
            ctx.shutdown.in_flight.load(Ordering::SeqCst)
        );
    }
    let _ = ctx.shutdown.close.send(true);
    let gone = async {
        loop {
            let notified = ctx.shutdown.connections_gone.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if ctx.connections.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, gone).await;

    // Flush (deferred index files) and close the store. Blocking work still holding the store (a read producer
    // whose client vanished) ends at its next chunk; wait for it briefly.
    let store = ctx.store.clone();
    let projections = ctx.projections.clone();
    drop(ctx);
    let closed = tokio::task::spawn_blocking(move || {
        let mut failures = Vec::new();
        // No client waits on an append any more: the mirror's last checkpoints (the sync's and the close's) may take
        // the fast way (a stop right after a 1M-event fill waited 26 s for them, in place, without this).
        store.begin_close();
        // No appends come any more: the index checkpoint the close would write after the mirror's last checkpoint
        // (~0.7 s of CPU at 1M events) is written now, beside it (the mirror mostly waits for the disk). A failed
        // checkpoint is logged and costs only a longer scan at the next open.
        let synced = std::thread::scope(|scope| {
            let checkpoint = std::thread::Builder::new()
                .name("opossum-stop-checkpoint".into())
                .spawn_scoped(scope, || store.checkpoint_index());
            let synced = store.sync();
            if checkpoint.is_err() {
                // No second thread: the close writes it.
                tracing::debug!("index checkpoint at stop left to the close (no thread for it)");
            }
            synced
        });
        if let Err(e) = synced {
            tracing::error!("flushing the store at shutdown failed: {e}");
            failures.push(format!("flushing the store: {e}"));
        }
        let deadline = Instant::now() + CLOSE_GRACE;
        // Projection reads hold no handle on the projection store; writes in flight hold one until they commit.
        match wait_unshared(projections, deadline) {
            Some(projections) => {
                if let Err(e) = projections.close() {
                    tracing::error!("closing the projection store: {e}");
                    failures.push(format!("closing the projection store: {e}"));
                }
            }
            None => tracing::warn!("projection store still in use at exit; its indices are rebuilt at the next start"),
        }
        match wait_unshared(store, deadline) {
            Some(store) => {
                if let Err(e) = store.close() {
                    failures.push(format!("closing the store: {e}"));
                }
            }
            None => tracing::warn!("store still in use at exit; it was flushed, not closed"),
        }
        failures
    })
    .await;
    match closed {
        Ok(failures) if failures.is_empty() => {
            tracing::info!("stopped");
            Ok(())
        }
        Ok(failures) => {
            tracing::error!("stopped after failures: {}", failures.join("; "));
            Err(ServerError::Stop(failures.join("; ")))
        }
        Err(e) => Err(ServerError::Stop(format!("closing the store panicked: {e}"))),
    }
}
