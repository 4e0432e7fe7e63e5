//! The core ops: hello, head, stats, append, read. Each handler parses its body from `req.line` and answers through
//! the [`Responder`]. A new op family follows the same shape in its own module.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;

use super::{Context, OpError, Request, Responder, READ_CHUNKS_IN_FLIGHT, READ_CHUNK_BYTES};
use crate::protocol::{
    self, AppendRequest, AppendResponse, EmptyRequest, ErrorCode, HeadResponse, HelloResponse, ProtocolError, ReadDone,
    ReadRequest, PROTOCOL_VERSION, SERVER_NAME,
};
use crate::store::StoreStats;

pub(super) fn hello(ctx: &Context, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<(), OpError> {
    protocol::parse_body::<EmptyRequest>(&req.op, req.line)?;
    let body = HelloResponse {
        server: SERVER_NAME.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: PROTOCOL_VERSION,
        io_backend: ctx.store.io_backend().to_string(),
        head: ctx.store.head(),
    };
    protocol::encode_ok(resp.out, &req.id, &body);
    Ok(())
}

pub(super) fn head(ctx: &Context, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<(), OpError> {
    protocol::parse_body::<EmptyRequest>(&req.op, req.line)?;
    protocol::encode_ok(resp.out, &req.id, &HeadResponse { head: ctx.store.head() });
    Ok(())
}

#[derive(Serialize)]
struct ServerStats {
    version: &'static str,
    uptime_ms: u64,
    connections: usize,
    max_connections: usize,
    connections_total: u64,
    connections_refused: u64,
    requests: u64,
    errors: u64,
    in_flight: usize,
}

#[derive(Serialize)]
struct StatsResponse {
    head: u64,
    io_backend: String,
    uptime_ms: u64,
    server: ServerStats,
    store: StoreStats,
    projections: super::projection_ops::ProjectionStats,
}

pub(super) fn stats(ctx: &Context, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<(), OpError> {
    protocol::parse_body::<EmptyRequest>(&req.op, req.line)?;
    let store = ctx.store.stats();
    let uptime_ms = ctx.started.elapsed().as_millis() as u64;
    let c = &ctx.counters;
    let body = StatsResponse {
        head: store.head,
        io_backend: store.io_backend.clone(),
        uptime_ms,
        server: ServerStats {
            version: env!("CARGO_PKG_VERSION"),
            uptime_ms,
            connections: ctx.connections.load(Ordering::Relaxed),
            max_connections: ctx.max_connections.load(Ordering::Relaxed),
            connections_total: c.connections_total.load(Ordering::Relaxed),
            connections_refused: c.connections_refused.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            in_flight: ctx.shutdown.in_flight.load(Ordering::Relaxed),
        },
        store,
        projections: super::projection_ops::stats(ctx),
    };
    protocol::encode_ok(resp.out, &req.id, &body);
    Ok(())
}

pub(super) async fn append(ctx: &Arc<Context>, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<(), OpError> {
    // Answers to earlier pipelined requests should not wait for this commit.
    resp.flush().await?;
    let line = req.line.to_vec();
    let op = req.op.clone();
    let store = ctx.store.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<AppendResponse, ProtocolError> {
        let body: AppendRequest = protocol::parse_body(&op, &line)?;
        drop(line);
        let appended = store.append(body.events, body.condition)?;
        Ok(AppendResponse { first: appended.first, last: appended.last, head: appended.last })
    })
    .await
    .map_err(|e| ProtocolError::new(ErrorCode::StorageError, format!("append task failed: {e}")))?;
    protocol::encode_ok(resp.out, &req.id, &result?);
    Ok(())
}

/// What a read's producer hands to the socket.
enum Chunk {
    /// Item lines.
    Items(Vec<u8>),
    /// Item lines (possibly none) followed by the final line.
    Final(Vec<u8>),
}

pub(super) async fn read(ctx: &Arc<Context>, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<(), OpError> {
    let body: ReadRequest = protocol::parse_body(&req.op, req.line)?;
    let store = ctx.store.clone();
    let id = req.id.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(READ_CHUNKS_IN_FLIGHT);
    // The producer reads batches of event files and encodes them; it blocks when the channel is full and stops
    // when the receiver is gone (client disconnected).
    let producer = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(READ_CHUNK_BYTES + 4096);
        let mut reader = match store.read(&body.query, body.options()) {
            Ok(reader) => reader,
            Err(e) => {
                protocol::encode_error(&mut buf, &id, &ProtocolError::from(e));
                let _ = tx.blocking_send(Chunk::Final(buf));
                return;
            }
        };
        let mut count = 0u64;
        while let Some(batch) = reader.next_batch() {
            match batch {
                Ok(events) => {
                    for event in &events {
                        protocol::encode_item(&mut buf, &id, event);
                        count += 1;
                        if buf.len() >= READ_CHUNK_BYTES {
                            let full = std::mem::replace(&mut buf, Vec::with_capacity(READ_CHUNK_BYTES + 4096));
                            if tx.blocking_send(Chunk::Items(full)).is_err() {
                                return;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::error!("read failed after {count} events: {e}");
                    protocol::encode_error(&mut buf, &id, &ProtocolError::from(e));
                    let _ = tx.blocking_send(Chunk::Final(buf));
                    return;
                }
            }
        }
        protocol::encode_ok(&mut buf, &id, &ReadDone { count, head: reader.head() });
        let _ = tx.blocking_send(Chunk::Final(buf));
    });
    resp.flush().await?;
    let mut finished = false;
    while let Some(chunk) = rx.recv().await {
        match chunk {
            Chunk::Items(bytes) => resp.write(&bytes).await?,
            Chunk::Final(bytes) => {
                resp.write(&bytes).await?;
                finished = true;
            }
        }
    }
    if !finished {
        let reason = match producer.await {
            Err(e) => format!("read task failed: {e}"),
            Ok(()) => "read task ended without a result".to_string(),
        };
        return Err(ProtocolError::new(ErrorCode::StorageError, reason).into());
    }
    Ok(())
}
