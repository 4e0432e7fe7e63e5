//! Streaming answers: a blocking producer encodes item lines into chunks (`ChunkSink`) that the connection's task
//! writes as the client takes them; at most [`crate::limits::READ_STREAMS_MAX`] producers at once, and a client that stops reading
//! is closed after [`STREAM_WRITE_TIMEOUT_MS`].

use std::io;
use std::time::Duration;

use super::connection::{OpError, Responder};
use super::Context;
use crate::limits::{READ_CHUNKS_IN_FLIGHT, READ_CHUNK_BYTES, STREAM_WRITE_TIMEOUT_MS};
use crate::wire::{ErrorCode, ProtocolError};

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
    ctx: &Context,
    resp: &mut Responder<'_>,
    what: &'static str,
    produce: impl FnOnce(&mut ChunkSink) + Send + 'static,
) -> Result<(), OpError> {
    // At most READ_STREAMS_MAX producers hold blocking threads; more wait here, holding nothing.
    let _permit = ctx.read_streams.clone().acquire_owned().await.expect("the semaphore is never closed");
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
        // A client that stops reading is closed after a while: its producer (thread, permit, chunks) ends with it.
        match tokio::time::timeout(Duration::from_millis(STREAM_WRITE_TIMEOUT_MS), resp.write(&chunk)).await {
            Ok(written) => written?,
            Err(_) => {
                let message = format!("the client took no data for {STREAM_WRITE_TIMEOUT_MS} ms");
                return Err(OpError::Disconnected(io::Error::new(io::ErrorKind::TimedOut, message)));
            }
        }
    }
    let reason = match producer.await {
        Err(e) => format!("{what} task failed: {e}"),
        Ok(()) if done_rx.await.is_ok() => return Ok(()),
        Ok(()) => format!("{what} task ended without a result"),
    };
    Err(ProtocolError::new(ErrorCode::StorageError, reason).into())
}
