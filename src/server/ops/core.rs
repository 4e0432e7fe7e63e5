//! The core ops: hello, head, stats, append, read, tracking.get. Each handler parses its body from `req.line` and answers through
//! the [`Responder`]. A new op family follows the same shape in its own module.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;

use crate::limits::{APPEND_INLINE_LINE_BYTES_MAX, READ_INLINE_BYTES_MAX, READ_INLINE_EVENTS_MAX};
use crate::server::connection::{OpError, Request, Responder};
use crate::server::Context;
use crate::store::{CachedStep, Store, StoreStats, Submitted, WriteStatus};
use crate::wire::{
    self, AppendResponse, EmptyRequest, ErrorCode, HeadResponse, HelloResponse, ProtocolError, ReadDone, ReadRequest,
    RequestId, TrackingGetRequest, TrackingGetResponse, PROTOCOL_VERSION, SERVER_NAME,
};

pub(in crate::server) fn hello(ctx: &Context, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<(), OpError> {
    wire::parse_body::<EmptyRequest>(&req.op, req.line)?;
    let unwritable_reason = match ctx.store.write_status() {
        WriteStatus::Writable => None,
        WriteStatus::Unwritable { reason } => Some(reason),
    };
    let body = HelloResponse {
        server: SERVER_NAME.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: PROTOCOL_VERSION,
        io_backend: ctx.store.io_backend().to_string(),
        head: ctx.store.head(),
        writable: unwritable_reason.is_none(),
        unwritable_reason,
    };
    wire::encode_ok(resp.out, &req.id, &body);
    Ok(())
}

pub(in crate::server) fn head(ctx: &Context, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<(), OpError> {
    wire::parse_body::<EmptyRequest>(&req.op, req.line)?;
    wire::encode_ok(resp.out, &req.id, &HeadResponse { head: ctx.store.head() });
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
    /// Whether the store takes appends now, and why not.
    writable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    unwritable_reason: Option<String>,
    io_backend: String,
    uptime_ms: u64,
    server: ServerStats,
    store: StoreStats,
    projections: super::projection::ProjectionStats,
}

pub(in crate::server) fn stats(ctx: &Context, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<(), OpError> {
    wire::parse_body::<EmptyRequest>(&req.op, req.line)?;
    let store = ctx.store.stats();
    let uptime_ms = ctx.started.elapsed().as_millis() as u64;
    let c = &ctx.counters;
    let unwritable_reason = match ctx.store.write_status() {
        WriteStatus::Writable => None,
        WriteStatus::Unwritable { reason } => Some(reason),
    };
    let body = StatsResponse {
        head: store.head,
        writable: unwritable_reason.is_none(),
        unwritable_reason,
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
        projections: super::projection::stats(ctx),
    };
    wire::encode_ok(resp.out, &req.id, &body);
    Ok(())
}

pub(in crate::server) async fn append(
    ctx: &Arc<Context>,
    req: &Request<'_>,
    resp: &mut Responder<'_>,
) -> Result<(), OpError> {
    // Answers to earlier pipelined requests should not wait for this commit.
    resp.flush().await?;
    // `Err((Some(id), e))`: the line fails its envelope, which `parse_envelope` read from its prefix only.
    let result = if req.line.len() <= APPEND_INLINE_LINE_BYTES_MAX {
        // A small request is parsed, encoded and queued right here: a hop to a blocking thread and back costs two
        // thread wake-ups, more CPU than all of a one-event append's own work. Only a full writer queue (the
        // backpressure) waits on a blocking thread.
        match submit_append(&ctx.store, &req.op, req.line) {
            Ok(Submitted::Queued(pending)) => Ok(pending),
            Ok(Submitted::QueueFull(full)) => {
                let store = ctx.store.clone();
                tokio::task::spawn_blocking(move || full.submit(&store))
                    .await
                    .map_err(|e| ProtocolError::new(ErrorCode::StorageError, format!("append task failed: {e}")))?
                    .map_err(|e| (None, e.into()))
            }
            Err(e) => Err(e),
        }
    } else {
        // A large one (a batch's megabyte of events: its parse takes a good part of a millisecond) is parsed on a
        // blocking thread, so the connection tasks sharing this worker are not held up behind it.
        let line = req.line.to_vec();
        let op = req.op.clone();
        let store = ctx.store.clone();
        // The events are encoded straight from the line (`Store::append_refs`), which lives until the answer.
        tokio::task::spawn_blocking(move || match submit_append(&store, &op, &line)? {
            Submitted::Queued(pending) => Ok(pending),
            // Queued for the writer; the answer is awaited below, so no blocking thread waits through the commit.
            Submitted::QueueFull(full) => full.submit(&store).map_err(|e| (None, e.into())),
        })
        .await
        .map_err(|e| ProtocolError::new(ErrorCode::StorageError, format!("append task failed: {e}")))?
    };
    let result = match result {
        Ok(pending) => pending.await.map_err(|e| (None, e.into())),
        Err(e) => Err(e),
    };
    match result {
        Ok(appended) => {
            let head = appended.last.max(ctx.store.head());
            let answer =
                AppendResponse { first: appended.first, last: appended.last, head, replayed: appended.replayed };
            wire::encode_ok(resp.out, &req.id, &answer)
        }
        Err((None, e)) => return Err(e.into()),
        Err((Some(id), e)) => {
            // As the connection answers a line whose envelope it could not read: with the id it could (or null).
            ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
            wire::encode_error(resp.out, &id, &e);
        }
    }
    Ok(())
}

/// Parses an append line and hands it to the store without blocking ([`Store::try_submit_refs`]).
/// `Err((Some(id), e))`: the line fails its envelope, which `parse_envelope` read from its prefix only.
fn submit_append(store: &Store, op: &str, line: &[u8]) -> Result<Submitted, (Option<RequestId>, ProtocolError)> {
    let body = match wire::parse_append(op, line) {
        Ok(body) => body,
        Err(e) => {
            return Err(match wire::parse_envelope_whole(line) {
                Err((id, envelope)) => (Some(id), envelope),
                Ok(_) => (None, e),
            })
        }
    };
    store.try_submit_refs(&body.events, body.condition, body.tracking).map_err(|e| (None, e.into()))
}

pub(in crate::server) async fn read(
    ctx: &Arc<Context>,
    req: &Request<'_>,
    resp: &mut Responder<'_>,
) -> Result<(), OpError> {
    let body: ReadRequest = wire::parse_body(&req.op, req.line)?;
    let id = req.id.clone();
    // A small read of cached journal records is answered right here, on the connection's task: handing it to a
    // blocking thread and its lines back cost more than the read (two thread wake-ups per request). Anything larger
    // or not cached streams from a blocking thread, from where this left off.
    let mut count = 0u64;
    let started = match ctx.store.try_read_now(&body.query, body.options()) {
        None => None,
        Some(Err(e)) => {
            wire::encode_error(resp.out, &id, &ProtocolError::from(e));
            return Ok(());
        }
        Some(Ok(mut reader)) => match reader.next_views_cached(READ_INLINE_EVENTS_MAX, READ_INLINE_BYTES_MAX) {
            CachedStep::WouldWait => Some(reader),
            CachedStep::Batch(batch) => {
                for event in batch.views() {
                    count += 1;
                    wire::encode_item_view(resp.out, &id, &event);
                }
                if !reader.is_done() {
                    Some(reader)
                } else {
                    wire::encode_ok(resp.out, &id, &ReadDone { count, head: reader.head() });
                    return Ok(());
                }
            }
            CachedStep::End => {
                wire::encode_ok(resp.out, &id, &ReadDone { count, head: reader.head() });
                return Ok(());
            }
            CachedStep::Failed(e) => {
                tracing::error!("read failed after {count} events: {e}");
                wire::encode_error(resp.out, &id, &ProtocolError::from(e));
                return Ok(());
            }
        },
    };
    let store = ctx.store.clone();
    // The producer reads batches of journal records (or event files) and frames them as item lines.
    crate::server::stream::stream_blocking(ctx, resp, "read", move |sink| {
        let mut reader = match started {
            Some(reader) => reader,
            None => match store.read(&body.query, body.options()) {
                Ok(reader) => reader,
                Err(e) => return sink.finish(|buf| wire::encode_error(buf, &id, &ProtocolError::from(e))),
            },
        };
        while let Some(batch) = reader.next_views() {
            match batch {
                Ok(batch) => {
                    // Lines are framed from the records' own bytes: nothing is decoded into owned events.
                    for event in batch.views() {
                        count += 1;
                        if !sink.item(|buf| wire::encode_item_view(buf, &id, &event)) {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!("read failed after {count} events: {e}");
                    return sink.finish(|buf| wire::encode_error(buf, &id, &ProtocolError::from(e)));
                }
            }
        }
        sink.finish(|buf| wire::encode_ok(buf, &id, &ReadDone { count, head: reader.head() }));
    })
    .await
}

/// `tracking.get {source}`: the source's last tracked position (0 when none).
pub(in crate::server) fn tracking_get(
    ctx: &Context,
    req: &Request<'_>,
    resp: &mut Responder<'_>,
) -> Result<(), OpError> {
    let body: TrackingGetRequest = wire::parse_body(&req.op, req.line)?;
    let position = ctx.store.tracking_position(&body.source);
    wire::encode_ok(resp.out, &req.id, &TrackingGetResponse { source: body.source, position });
    Ok(())
}
