//! The projection ops (`projection.*`): the daemon's [`ProjectionStore`] over the wire (docs/PROTOCOL.md,
//! "Projections"). Writes wait for their group commit and reads do file I/O, so both run on tokio's blocking pool;
//! `get_all` and `query` stream like event reads: a blocking producer encodes item lines into chunks of
//! [`READ_CHUNK_BYTES`] and hands at most [`READ_CHUNKS_IN_FLIGHT`] of them to the socket at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use super::Op;
use crate::projection::cache::CachedItem;
use crate::projection::{decode_view, ItemSource, ProjectionError, ProjectionReader, ProjectionStore};
use crate::server::connection::{OpError, Request, Responder};
use crate::server::Context;
use crate::wire::{
    self, EmptyRequest, ErrorCode, ProjectionCheckpointRequest, ProjectionCheckpointResponse, ProjectionDeleteResponse,
    ProjectionItemOut, ProjectionKeyRequest, ProjectionListResponse, ProjectionNameRequest, ProjectionPutManyRequest,
    ProjectionPutManyResponse, ProjectionPutRequest, ProjectionPutResponse, ProjectionQueryRequest, ProjectionReadDone,
    ProtocolError,
};

/// Counters of the projection ops, reported by `stats`.
#[derive(Debug, Default)]
pub(in crate::server) struct Counters {
    puts: AtomicU64,
    gets: AtomicU64,
    deletes: AtomicU64,
    reads: AtomicU64,
    items_read: AtomicU64,
    version_conflicts: AtomicU64,
}

#[derive(Debug, Serialize)]
pub(in crate::server) struct ProjectionStats {
    /// Projections (directories) and the keys they hold.
    projections: usize,
    keys: u64,
    /// Projections written (each element of a `put_many` counts).
    puts: u64,
    gets: u64,
    deletes: u64,
    /// `get_all` and `query` requests, and the items they streamed.
    reads: u64,
    items_read: u64,
    version_conflicts: u64,
    /// The hot tier: budget, bytes and entries held, hits and misses of `get`, `get_all` and `query`, evictions and
    /// invalidations (all 0 when off).
    cache: crate::projection::CacheStats,
}

pub(in crate::server) fn stats(ctx: &Context) -> ProjectionStats {
    let list = ctx.projections.list();
    let c = &ctx.projection_counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    ProjectionStats {
        projections: list.len(),
        keys: list.iter().map(|s| s.count as u64).sum(),
        puts: get(&c.puts),
        gets: get(&c.gets),
        deletes: get(&c.deletes),
        reads: get(&c.reads),
        items_read: get(&c.items_read),
        version_conflicts: get(&c.version_conflicts),
        cache: ctx.projections.cache_stats(),
    }
}

pub(in crate::server) async fn dispatch(
    ctx: &Arc<Context>,
    op: Op,
    req: &Request<'_>,
    resp: &mut Responder<'_>,
) -> Result<(), OpError> {
    let result = match op {
        Op::ProjectionPut => put(ctx, req, resp).await,
        Op::ProjectionPutMany => put_many(ctx, req, resp).await,
        Op::ProjectionGet => get(ctx, req, resp).await,
        Op::ProjectionDelete => delete(ctx, req, resp).await,
        Op::ProjectionGetAll => get_all(ctx, req, resp).await,
        Op::ProjectionQuery => query(ctx, req, resp).await,
        Op::ProjectionList => list(ctx, req, resp),
        Op::ProjectionCheckpoint => checkpoint(ctx, req, resp).await,
        Op::Hello | Op::Head | Op::Stats | Op::Append | Op::Read | Op::Subscribe | Op::TrackingGet => {
            unreachable!("{op:?} is a core op (ops::dispatch)")
        }
    };
    if let Err(OpError::Protocol(e)) = &result {
        if e.code == ErrorCode::VersionConflict {
            ctx.projection_counters.version_conflicts.fetch_add(1, Ordering::Relaxed);
        }
    }
    result
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, ProtocolError> + Send + 'static,
) -> Result<T, OpError> {
    let joined = tokio::task::spawn_blocking(f).await;
    let result = joined.map_err(|e| ProtocolError::new(ErrorCode::StorageError, format!("{what} task failed: {e}")))?;
    Ok(result?)
}

async fn put(ctx: &Arc<Context>, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<(), OpError> {
    // Answers to earlier pipelined requests should not wait for this commit.
    resp.flush().await?;
    let (line, op, store) = (req.line.to_vec(), req.op.clone(), ctx.projections.clone());
    let version = blocking("projection.put", move || {
        let body: ProjectionPutRequest = wire::parse_body(&op, &line)?;
        drop(line);
        Ok(store.put(body.into_put())?)
    })
    .await?;
    ctx.projection_counters.puts.fetch_add(1, Ordering::Relaxed);
    wire::encode_ok(resp.out, &req.id, &ProjectionPutResponse { version });
    Ok(())
}

async fn put_many(ctx: &Arc<Context>, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<(), OpError> {
    resp.flush().await?;
    let (line, op, store) = (req.line.to_vec(), req.op.clone(), ctx.projections.clone());
    let versions = blocking("projection.put_many", move || {
        let body: ProjectionPutManyRequest = wire::parse_body(&op, &line)?;
        drop(line);
        Ok(store.put_many(body.puts)?)
    })
    .await?;
    ctx.projection_counters.puts.fetch_add(versions.len() as u64, Ordering::Relaxed);
    wire::encode_ok(resp.out, &req.id, &ProjectionPutManyResponse { versions });
    Ok(())
}

async fn get(ctx: &Arc<Context>, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<(), OpError> {
    let body: ProjectionKeyRequest = wire::parse_body(&req.op, req.line)?;
    let store = ctx.projections.clone();
    let item = blocking("projection.get", move || Ok(store.get(&body.projection, &body.key)?)).await?;
    ctx.projection_counters.gets.fetch_add(1, Ordering::Relaxed);
    wire::encode_ok(resp.out, &req.id, &ProjectionItemOut::from(&item));
    Ok(())
}

async fn delete(ctx: &Arc<Context>, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<(), OpError> {
    resp.flush().await?;
    let body: ProjectionKeyRequest = wire::parse_body(&req.op, req.line)?;
    let store = ctx.projections.clone();
    let deleted = blocking("projection.delete", move || Ok(store.delete(&body.projection, &body.key)?)).await?;
    if deleted {
        ctx.projection_counters.deletes.fetch_add(1, Ordering::Relaxed);
    }
    wire::encode_ok(resp.out, &req.id, &ProjectionDeleteResponse { deleted });
    Ok(())
}

async fn get_all(ctx: &Arc<Context>, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<(), OpError> {
    let body: ProjectionNameRequest = wire::parse_body(&req.op, req.line)?;
    stream(ctx, req, resp, move |store| store.get_all(&body.projection)).await
}

async fn query(ctx: &Arc<Context>, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<(), OpError> {
    let body: ProjectionQueryRequest = wire::parse_body(&req.op, req.line)?;
    stream(ctx, req, resp, move |store| store.query(&body.projection, &body.tags)).await
}

fn list(ctx: &Context, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<(), OpError> {
    wire::parse_body::<EmptyRequest>(&req.op, req.line)?;
    wire::encode_ok(resp.out, &req.id, &ProjectionListResponse { projections: ctx.projections.list() });
    Ok(())
}

async fn checkpoint(ctx: &Arc<Context>, req: &Request<'_>, resp: &mut Responder<'_>) -> Result<(), OpError> {
    let body: ProjectionCheckpointRequest = wire::parse_body(&req.op, req.line)?;
    if body.position.is_some() {
        resp.flush().await?;
    }
    let store = ctx.projections.clone();
    let events = ctx.store.clone();
    let answer = blocking("projection.checkpoint", move || match body.position {
        Some(position) => {
            // A worker checkpoints the last event it processed, which exists: a position beyond the head is a
            // client bug (or a checkpoint meant for another store), and accepting it would make the worker skip
            // every event appended up to it.
            let head = events.head();
            if position > head {
                return Err(ProtocolError::invalid(format!("checkpoint {position} is beyond the store's head {head}")));
            }
            store.set_checkpoint(&body.projection, position)?;
            Ok(ProjectionCheckpointResponse { position: Some(position), last_updated: None })
        }
        None => {
            let checkpoint = store.checkpoint(&body.projection)?;
            Ok(ProjectionCheckpointResponse {
                position: checkpoint.as_ref().map(|c| c.last_processed_position),
                last_updated: checkpoint.map(|c| c.last_updated),
            })
        }
    })
    .await?;
    wire::encode_ok(resp.out, &req.id, &answer);
    Ok(())
}

/// Streams the projections `open` selects: item lines `{"id":..,"item":{..}}`, then `{"id":..,"ok":true,"count":N}`
/// (or an error line, after the items already sent).
async fn stream(
    ctx: &Arc<Context>,
    req: &Request<'_>,
    resp: &mut Responder<'_>,
    open: impl FnOnce(&ProjectionStore) -> Result<ProjectionReader, ProjectionError> + Send + 'static,
) -> Result<(), OpError> {
    ctx.projection_counters.reads.fetch_add(1, Ordering::Relaxed);
    let store = ctx.projections.clone();
    let counters = ctx.clone();
    let id = req.id.clone();
    crate::server::stream::stream_blocking(ctx, resp, "projection read", move |sink| {
        let opened = open(&store);
        // The reader needs no handle on the store: a slow client must not keep it from closing at shutdown.
        drop(store);
        let mut reader = match opened {
            Ok(reader) => reader,
            Err(e) => return sink.finish(|buf| wire::encode_error(buf, &id, &ProtocolError::from(e))),
        };
        let mut count = 0u64;
        // A cached projection is its item line's body already: copied between the line's prefix and suffix. A file is
        // parsed in place and re-framed as its item line (on the rayon pool for large batches): the state's bytes
        // are copied once, from the file into the line, never decoded into owned values.
        enum Line {
            Framed(Vec<u8>),
            Cached(Arc<CachedItem>),
        }
        let frame = |source: ItemSource<'_>| match source {
            ItemSource::Cached(item) => Ok(Line::Cached(item.clone())),
            ItemSource::File { key, path, bytes } => {
                let view = decode_view(key, path, bytes)?;
                let mut line = Vec::with_capacity(bytes.len() + key.len() + 96);
                wire::encode_projection_item(&mut line, &id, &ProjectionItemOut::from_view(key, &view, bytes.len()));
                Ok(Line::Framed(line))
            }
        };
        while let Some(batch) = reader.next_batch_map(frame) {
            match batch {
                Ok(lines) => {
                    for line in &lines {
                        count += 1;
                        let sent = match line {
                            Line::Framed(line) => sink.item(|buf| buf.extend_from_slice(line)),
                            Line::Cached(item) => {
                                sink.item(|buf| wire::encode_projection_item_line(buf, &id, &item.body))
                            }
                        };
                        if !sent {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!("projection read failed after {count} items: {e}");
                    counters.projection_counters.items_read.fetch_add(count, Ordering::Relaxed);
                    return sink.finish(|buf| wire::encode_error(buf, &id, &ProtocolError::from(e)));
                }
            }
        }
        counters.projection_counters.items_read.fetch_add(count, Ordering::Relaxed);
        sink.finish(|buf| wire::encode_ok(buf, &id, &ProjectionReadDone { count }));
    })
    .await
}
