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
//! - **Op families**: [`dispatch`] is one `match` on the op name; each family is one arm and one module (`ops` for
//!   the core ops, `projection_ops` for `projection.*`). A family handler gets the parsed [`Request`] and a [`Responder`] that can write one final line
//!   or stream item lines.
//! - **Signals**: SIGTERM/SIGINT = graceful stop: stop accepting (the socket file is removed), answer new requests
//!   with `shutting_down`, let in-flight requests finish (up to `shutdown_timeout`), flush the store, exit 0.
//!   SIGHUP re-reads the config file and applies the log filter and `max_connections` (see [`Hooks`]).
//! - **systemd**: `READY=1` via `$NOTIFY_SOCKET` once serving; socket activation via `$LISTEN_FDS` ([`systemd`]).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::projection::ProjectionStore;
use crate::protocol::{self, ErrorCode, ProtocolError, RequestId};
use crate::store::Store;

mod ops;
mod projection_ops;
mod subscribe;
pub mod systemd;

/// Bytes of encoded item lines handed from a read's producer to the socket at a time.
pub const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Encoded chunks a read may have waiting for the socket; the producer blocks beyond that (backpressure).
pub const READ_CHUNKS_IN_FLIGHT: usize = 2;
/// Initial (and idle) size of a connection's read buffer; it grows up to `max_frame_bytes` for a long line.
const LINE_BUFFER_INITIAL: usize = 8 * 1024;
/// Pending response bytes that force a write even while more pipelined requests are buffered.
const OUT_FLUSH_BYTES: usize = 64 * 1024;
/// How long a refused (`busy`) connection gets to take its error line.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// After in-flight requests finished at shutdown, how long idle connections get to close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("socket {0} is in use by a running server")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("socket {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn socket_err(path: &Path) -> impl FnOnce(io::Error) -> ServerError + '_ {
    move |source| ServerError::Socket { path: path.to_path_buf(), source }
}

/// A socket file this server bound: its path and (device, inode), to remove it at exit only if it is still ours.
type BoundSocket = (PathBuf, (u64, u64));

/// Where the server listens.
pub enum Listener {
    /// A socket file this server bound; removed at exit if it is still the same file.
    Bound { listener: std::os::unix::net::UnixListener, path: PathBuf, dev_ino: (u64, u64) },
    /// A socket systemd passed (socket activation); systemd owns the file.
    Activated(std::os::unix::net::UnixListener),
}

impl Listener {
    /// Binds `path` with `mode` permissions, after removing a stale socket file there (one nothing listens on).
    /// Refuses if a server answers on `path` or if `path` is not a socket.
    pub fn bind(path: &Path, mode: u32) -> Result<Listener, ServerError> {
        remove_stale_socket(path)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(socket_err(path))?;
        }
        // The socket is created with 0777 & !umask: narrow the umask around bind so it never exists with wider
        // permissions than asked, then set the mode exactly.
        // SAFETY: umask only swaps the process's file-creation mask.
        let old = unsafe { libc::umask(!(mode as libc::mode_t) & 0o777) };
        let bound = std::os::unix::net::UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(socket_err(path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(socket_err(path))?;
        let meta = std::fs::symlink_metadata(path).map_err(socket_err(path))?;
        Ok(Listener::Bound { listener, path: path.to_path_buf(), dev_ino: (meta.dev(), meta.ino()) })
    }

    fn into_parts(self) -> (std::os::unix::net::UnixListener, Option<BoundSocket>) {
        match self {
            Listener::Bound { listener, path, dev_ino } => (listener, Some((path, dev_ino))),
            Listener::Activated(listener) => (listener, None),
        }
    }
}

/// Removes `path` if it is a socket file nobody listens on. Leaves a live socket (error) and non-sockets (error).
pub fn remove_stale_socket(path: &Path) -> Result<(), ServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(socket_err(path)(e)),
        Ok(meta) => meta,
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServerError::SocketInUse(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "removing stale socket file");
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(socket_err(path)(e)),
                _ => Ok(()),
            }
        }
        Err(e) => Err(socket_err(path)(e)),
    }
}

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
    max_connections: AtomicUsize,
    connections: AtomicUsize,
    counters: ServerCounters,
    projection_counters: projection_ops::Counters,
    shutdown: Shutdown,
}

impl Context {
    pub fn new(store: Arc<Store>, projections: Arc<ProjectionStore>, config: &Config) -> Context {
        Context {
            store,
            projections,
            started: Instant::now(),
            max_frame_bytes: config.max_frame_bytes,
            max_connections: AtomicUsize::new(config.max_connections),
            connections: AtomicUsize::new(0),
            counters: ServerCounters::default(),
            projection_counters: projection_ops::Counters::default(),
            shutdown: Shutdown::new(),
        }
    }
}

/// Graceful-stop bookkeeping: a `stopping` flag, a count of requests in flight, and a signal that closes idle
/// connections once the in-flight ones are done.
struct Shutdown {
    stopping: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
    close: watch::Sender<bool>,
    connections_gone: Notify,
}

impl Shutdown {
    fn new() -> Shutdown {
        Shutdown {
            stopping: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            close: watch::channel(false).0,
            connections_gone: Notify::new(),
        }
    }

    /// Registers a request as in flight, or `None` when the server is stopping.
    fn enter(&self) -> Option<InFlight<'_>> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self);
        (!self.stopping.load(Ordering::SeqCst)).then_some(guard)
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct InFlight<'a>(&'a Shutdown);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
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
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;

    let (std_listener, bound) = listener.into_parts();
    std_listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(std_listener)?;
    let ctx = Arc::new(Context::new(Arc::new(store), Arc::new(projections), &config));
    match &bound {
        Some((path, _)) => tracing::info!(socket = %path.display(), "listening"),
        None => tracing::info!("listening on the socket systemd passed"),
    }
    if let Err(e) = systemd::notify("READY=1\nSTATUS=serving") {
        tracing::warn!("sd_notify READY=1 failed: {e}");
    }

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => accept(&ctx, stream),
                Err(e) => {
                    // EMFILE/ENFILE and friends: back off instead of spinning; the connection waits in the backlog.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading configuration");
                if let Some(new) = hooks.reload.as_mut().and_then(|reload| reload()) {
                    ctx.max_connections.store(new.max_connections, Ordering::SeqCst);
                    tracing::info!(max_connections = new.max_connections, log = %new.log, "configuration reloaded");
                }
            }
        }
    }

    // Graceful stop.
    // Refuse new requests before the socket disappears, so a client that sees the socket gone knows that.
    ctx.shutdown.stopping.store(true, Ordering::SeqCst);
    let _ = systemd::notify("STOPPING=1\nSTATUS=stopping");
    drop(listener);
    if let Some((path, dev_ino)) = &bound {
        remove_socket_if_ours(path, *dev_ino);
    }
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
        if let Err(e) = store.sync() {
            tracing::error!("flushing the store at shutdown failed: {e}");
        }
        let deadline = Instant::now() + CLOSE_GRACE;
        // Projection reads hold no handle on the projection store; writes in flight hold one until they commit.
        match wait_unshared(projections, deadline) {
            Some(projections) => {
                if let Err(e) = projections.close() {
                    tracing::error!("closing the projection store: {e}");
                }
            }
            None => tracing::warn!("projection store still in use at exit; its indices are rebuilt at the next start"),
        }
        match wait_unshared(store, deadline) {
            Some(store) => store.close(),
            None => {
                tracing::warn!("store still in use at exit; it was flushed, not closed");
                Ok(())
            }
        }
    })
    .await;
    match closed {
        Ok(Ok(())) => tracing::info!("stopped"),
        Ok(Err(e)) => tracing::error!("closing the store: {e}"),
        Err(e) => tracing::error!("closing the store panicked: {e}"),
    }
    Ok(())
}

/// Waits until `shared` is the last handle (blocking work still holding it ends soon), up to `deadline`.
fn wait_unshared<T>(mut shared: Arc<T>, deadline: Instant) -> Option<T> {
    loop {
        match Arc::try_unwrap(shared) {
            Ok(value) => return Some(value),
            Err(still) if Instant::now() < deadline => {
                shared = still;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return None,
        }
    }
}

fn remove_socket_if_ours(path: &Path, dev_ino: (u64, u64)) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if (meta.dev(), meta.ino()) == dev_ino => {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(socket = %path.display(), "removing the socket file: {e}");
            }
        }
        _ => {}
    }
}

fn accept(ctx: &Arc<Context>, stream: UnixStream) {
    ctx.counters.connections_total.fetch_add(1, Ordering::Relaxed);
    let max = ctx.max_connections.load(Ordering::SeqCst);
    if ctx.connections.fetch_add(1, Ordering::SeqCst) >= max {
        release_connection(ctx);
        ctx.counters.connections_refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(max, "connection refused: busy");
        tokio::spawn(async move {
            let mut stream = stream;
            let mut out = Vec::new();
            let message = format!("the server is at its limit of {max} connections; retry later");
            protocol::encode_error(&mut out, &RequestId::null(), &ProtocolError::new(ErrorCode::Busy, message));
            let _ = tokio::time::timeout(BUSY_WRITE_TIMEOUT, async {
                stream.write_all(&out).await?;
                stream.shutdown().await
            })
            .await;
        });
        return;
    }
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let result = connection(&ctx, stream).await;
        if let Err(e) = result {
            tracing::debug!("connection ended: {e}");
        }
        release_connection(&ctx);
    });
}

fn release_connection(ctx: &Context) {
    if ctx.connections.fetch_sub(1, Ordering::SeqCst) == 1 {
        ctx.shutdown.connections_gone.notify_waiters();
    }
}

/// One request, as op handlers see it.
pub struct Request<'a> {
    pub id: RequestId,
    pub op: String,
    /// The whole request line (without `\n`), for the handler to parse its body from.
    pub line: &'a [u8],
}

/// How an op handler answers: append a complete final line to `out` (written soon, batched with the responses of
/// other pipelined requests), or stream item lines with [`Responder::write`].
pub struct Responder<'a> {
    pub out: &'a mut Vec<u8>,
    writer: &'a mut OwnedWriteHalf,
}

impl Responder<'_> {
    /// Writes `out` (if anything is pending) and then `bytes` to the socket.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.flush().await?;
        self.writer.write_all(bytes).await
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.writer.write_all(self.out).await?;
            self.out.clear();
        }
        Ok(())
    }
}

/// Why an op handler stopped.
#[derive(Debug)]
pub enum OpError {
    /// Answer with this error line.
    Protocol(ProtocolError),
    /// The client went away (a socket write failed): close the connection.
    Disconnected(io::Error),
}

impl From<ProtocolError> for OpError {
    fn from(e: ProtocolError) -> Self {
        OpError::Protocol(e)
    }
}

impl From<io::Error> for OpError {
    fn from(e: io::Error) -> Self {
        OpError::Disconnected(e)
    }
}

/// Routes a request to its op. To add an op family: one arm here and one module (see `ops` for the pattern),
/// e.g. `op if op.starts_with("projection.") => projection_ops::dispatch(ctx, req, resp).await,`.
async fn dispatch(ctx: &Arc<Context>, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<(), OpError> {
    match req.op.as_str() {
        "hello" => ops::hello(ctx, req, resp),
        "head" => ops::head(ctx, req, resp),
        "stats" => ops::stats(ctx, req, resp),
        "append" => ops::append(ctx, req, resp).await,
        "read" => ops::read(ctx, req, resp).await,
        op if op.starts_with("projection.") => projection_ops::dispatch(ctx, req, resp).await,
        other => Err(ProtocolError::new(
            ErrorCode::UnknownOp,
            format!(
                "unknown op {other:?}; this server knows hello, head, append, read, subscribe, stats and projection.*"
            ),
        )
        .into()),
    }
}

async fn connection(ctx: &Arc<Context>, stream: UnixStream) -> io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut lines = LineReader::new(reader, ctx.max_frame_bytes);
    let mut out = Vec::new();
    let mut close = ctx.shutdown.close.subscribe();
    loop {
        if !out.is_empty() && (out.len() >= OUT_FLUSH_BYTES || !lines.has_line()) {
            writer.write_all(&out).await?;
            out.clear();
        }
        let next = tokio::select! {
            next = lines.next_line() => next,
            _ = close.wait_for(|closing| *closing) => break,
        };
        let (start, end) = match next {
            Ok(Some(range)) => range,
            Ok(None) => break,
            Err(LineError::TooLarge) => {
                let message = format!("request line exceeds max_frame_bytes ({} bytes); closing", ctx.max_frame_bytes);
                protocol::encode_error(
                    &mut out,
                    &RequestId::null(),
                    &ProtocolError::new(ErrorCode::FrameTooLarge, message),
                );
                ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Err(LineError::Io(e)) => return Err(e),
        };
        let line = lines.buf[start..end].trim_ascii();
        if line.is_empty() {
            continue;
        }
        ctx.counters.requests.fetch_add(1, Ordering::Relaxed);
        let envelope = match protocol::parse_envelope(line) {
            Ok(envelope) => envelope,
            Err((id, error)) => {
                ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                protocol::encode_error(&mut out, &id, &error);
                continue;
            }
        };
        if envelope.op == "subscribe" {
            // The connection becomes the subscription's stream and ends with it (not an in-flight request: see
            // `subscribe`).
            match subscribe::start(ctx, line) {
                Ok(subscription) => {
                    return subscribe::serve(ctx, envelope.id, subscription, lines, writer, out).await;
                }
                Err(error) => {
                    ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                    protocol::encode_error(&mut out, &envelope.id, &error);
                    continue;
                }
            }
        }
        let Some(_in_flight) = ctx.shutdown.enter() else {
            ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
            let error = ProtocolError::new(ErrorCode::ShuttingDown, "the server is shutting down; no new requests");
            protocol::encode_error(&mut out, &envelope.id, &error);
            continue;
        };
        let request = Request { id: envelope.id, op: envelope.op, line };
        let mut responder = Responder { out: &mut out, writer: &mut writer };
        match dispatch(ctx, &request, &mut responder).await {
            Ok(()) => {}
            Err(OpError::Protocol(error)) => {
                ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                protocol::encode_error(&mut out, &request.id, &error);
            }
            Err(OpError::Disconnected(e)) => return Err(e),
        }
    }
    if !out.is_empty() {
        writer.write_all(&out).await?;
    }
    writer.shutdown().await
}

enum LineError {
    TooLarge,
    Io(io::Error),
}

/// Splits a byte stream into `\n`-terminated lines of at most `max` bytes.
struct LineReader {
    reader: OwnedReadHalf,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`; `buf[start..scanned]` holds no `\n`.
    start: usize,
    scanned: usize,
    end: usize,
    max: usize,
}

impl LineReader {
    fn new(reader: OwnedReadHalf, max: usize) -> LineReader {
        LineReader { reader, buf: vec![0; LINE_BUFFER_INITIAL], start: 0, scanned: 0, end: 0, max }
    }

    /// Whether a complete line is already buffered (more pipelined requests to answer before writing).
    fn has_line(&self) -> bool {
        self.buf[self.scanned..self.end].contains(&b'\n')
    }

    /// The next line's range in `buf` (valid until the next call), or `None` at end of stream. Bytes after the last
    /// `\n` at end of stream count as a final line.
    async fn next_line(&mut self) -> Result<Option<(usize, usize)>, LineError> {
        loop {
            if let Some(i) = self.buf[self.scanned..self.end].iter().position(|&b| b == b'\n') {
                let newline = self.scanned + i;
                let range = (self.start, newline);
                self.start = newline + 1;
                self.scanned = self.start;
                if newline - range.0 > self.max {
                    return Err(LineError::TooLarge);
                }
                return Ok(Some(range));
            }
            self.scanned = self.end;
            if self.end - self.start > self.max {
                return Err(LineError::TooLarge);
            }
            if self.start == self.end {
                self.start = 0;
                self.scanned = 0;
                self.end = 0;
                if self.buf.len() > 16 * LINE_BUFFER_INITIAL {
                    self.buf = vec![0; LINE_BUFFER_INITIAL];
                }
            } else if self.end == self.buf.len() && self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.scanned -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                let grown = (self.buf.len() * 2).min(self.max + 2).max(self.buf.len() + 1);
                self.buf.resize(grown, 0);
            }
            let n = self.reader.read(&mut self.buf[self.end..]).await.map_err(LineError::Io)?;
            if n == 0 {
                if self.start == self.end {
                    return Ok(None);
                }
                let range = (self.start, self.end);
                self.start = self.end;
                self.scanned = self.end;
                return Ok(Some(range));
            }
            self.end += n;
        }
    }
}

/// Where a streaming op's blocking producer puts its output: item lines are gathered into chunks of
/// [`READ_CHUNK_BYTES`] and handed to the socket task, at most [`READ_CHUNKS_IN_FLIGHT`] at a time.
pub(crate) struct ChunkSink {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    finished: bool,
}

impl ChunkSink {
    /// Appends one item line (`encode` writes it into the buffer). Blocks while the client is behind (backpressure);
    /// `false` once the client is gone, and the producer should stop.
    pub fn item(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> bool {
        encode(&mut self.buf);
        if self.buf.len() < READ_CHUNK_BYTES {
            return true;
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(READ_CHUNK_BYTES + 4096));
        self.tx.blocking_send(full).is_ok()
    }

    /// Appends the final line and sends what is left.
    pub fn finish(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        encode(&mut self.buf);
        self.finished = true;
        let rest = std::mem::take(&mut self.buf);
        let _ = self.tx.blocking_send(rest);
    }
}

/// Runs `produce` on tokio's blocking pool and streams what it writes into its [`ChunkSink`] to the client. Memory
/// stays bounded however much it produces; a producer that ends without a final line is a `storage_error`.
pub(crate) async fn stream_blocking(
    resp: &mut Responder<'_>,
    what: &'static str,
    produce: impl FnOnce(&mut ChunkSink) + Send + 'static,
) -> Result<(), OpError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(READ_CHUNKS_IN_FLIGHT);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let producer = tokio::task::spawn_blocking(move || {
        let mut sink = ChunkSink { buf: Vec::with_capacity(READ_CHUNK_BYTES + 4096), tx, finished: false };
        produce(&mut sink);
        if sink.finished {
            let _ = done_tx.send(());
        }
    });
    resp.flush().await?;
    while let Some(chunk) = rx.recv().await {
        resp.write(&chunk).await?;
    }
    let reason = match producer.await {
        Err(e) => format!("{what} task failed: {e}"),
        Ok(()) if done_rx.await.is_ok() => return Ok(()),
        Ok(()) => format!("{what} task ended without a result"),
    };
    Err(ProtocolError::new(ErrorCode::StorageError, reason).into())
}
