//! One connection: requests read line by line (`frame`), run in order through the op table
//! (`ops`), answers batched into few writes; `busy` for connections over the limit.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::frame::{LineError, LineReader};
use super::Context;
use crate::limits::LINE_BUFFERS_BYTES_TOTAL_MAX;
use crate::wire::{self, ErrorCode, ProtocolError, RequestId};

/// Pending response bytes that force a write even while more pipelined requests are buffered.
const OUT_FLUSH_BYTES: usize = 64 * 1024;

/// The reading half of a connection, whatever the transport.
pub(super) type BoxedRead = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a connection, whatever the transport.
pub(super) type BoxedWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A client connection of any transport the listener serves (a Unix socket, a Windows named pipe): the connection
/// code below is the same for all of them.
pub(super) trait ServedStream: Send + 'static {
    /// Writes what fits without waiting (the `busy` answer of a refused connection).
    fn try_write_now(&self, bytes: &[u8]) -> io::Result<usize>;
    /// Splits it into halves the request loop reads and writes independently.
    fn into_halves(self) -> (BoxedRead, BoxedWrite);
}

pub(super) fn accept(ctx: &Arc<Context>, stream: impl ServedStream) {
    ctx.counters.connections_total.fetch_add(1, Ordering::Relaxed);
    let max = ctx.max_connections.load(Ordering::SeqCst);
    if ctx.connections.fetch_add(1, Ordering::SeqCst) >= max {
        release_connection(ctx);
        ctx.counters.connections_refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(max, "connection refused: busy");
        // Answered and closed at once, without a task: a fresh socket's send buffer takes the short line, and a
        // refused connection must not hold a descriptor while a flood of them arrives.
        let mut out = Vec::new();
        let message = format!("the server is at its limit of {max} connections; retry later");
        wire::encode_error(&mut out, &RequestId::null(), &ProtocolError::new(ErrorCode::Busy, message));
        let _ = stream.try_write_now(&out);
        drop(stream);
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
    pub(super) writer: &'a mut BoxedWrite,
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

async fn connection(ctx: &Arc<Context>, stream: impl ServedStream) -> io::Result<()> {
    let (reader, mut writer) = stream.into_halves();
    let mut lines = LineReader::new(reader, ctx.max_frame_bytes, ctx.line_buffers.clone(), ctx.line_timeout);
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
                wire::encode_error(
                    &mut out,
                    &RequestId::null(),
                    &ProtocolError::new(ErrorCode::FrameTooLarge, message),
                );
                ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Err(LineError::Timeout) => {
                let message = format!(
                    "request line incomplete after {} ms; closing (a request must arrive within line_timeout_ms)",
                    ctx.line_timeout.as_millis()
                );
                wire::encode_error(&mut out, &RequestId::null(), &ProtocolError::invalid(message));
                ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Err(LineError::MemoryBusy) => {
                let message = format!(
                    "the server's request buffers are full ({} MiB over all connections); retry later",
                    LINE_BUFFERS_BYTES_TOTAL_MAX >> 20
                );
                wire::encode_error(&mut out, &RequestId::null(), &ProtocolError::new(ErrorCode::Busy, message));
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
        let envelope = match wire::parse_envelope(line) {
            Ok(envelope) => envelope,
            Err((id, error)) => {
                ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                wire::encode_error(&mut out, &id, &error);
                continue;
            }
        };
        if super::ops::lookup(&envelope.op) == Some(super::ops::Op::Subscribe) {
            // The connection becomes the subscription's stream and ends with it (not an in-flight request: see
            // `server::subscribe`).
            match super::subscribe::start(ctx, line) {
                Ok(subscription) => {
                    return super::subscribe::serve(ctx, envelope.id, subscription, lines, writer, out).await;
                }
                Err(error) => {
                    ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                    wire::encode_error(&mut out, &envelope.id, &error);
                    continue;
                }
            }
        }
        let Some(_in_flight) = ctx.shutdown.enter() else {
            ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
            let error = ProtocolError::new(ErrorCode::ShuttingDown, "the server is shutting down; no new requests");
            wire::encode_error(&mut out, &envelope.id, &error);
            continue;
        };
        let request = Request { id: envelope.id, op: envelope.op, line };
        let mut responder = Responder { out: &mut out, writer: &mut writer };
        match super::ops::dispatch(ctx, &request, &mut responder).await {
            Ok(()) => {}
            Err(OpError::Protocol(error)) => {
                ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                wire::encode_error(&mut out, &request.id, &error);
            }
            Err(OpError::Disconnected(e)) => return Err(e),
        }
    }
    if !out.is_empty() {
        writer.write_all(&out).await?;
    }
    writer.shutdown().await
}
