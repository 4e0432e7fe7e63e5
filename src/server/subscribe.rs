//! The `subscribe` op: the connection becomes one subscription's stream.
//!
//! A [`Subscription`] (store side) hands out the matching events after a position: the catch-up and then, as the
//! writer announces commits, the events they added — exact at the handover by construction (see
//! `store/subscribe.rs`). This task moves it to the blocking pool for each step, which reads and encodes item lines
//! until [`SUBSCRIPTION_BUFFER_BYTES_MAX`] (the per-subscriber buffer) or the head; the task writes them to the
//! socket while the next step reads (a catch-up keeps the disk and the socket busy at once, as a `read` does).
//! While the socket is full the task simply waits: it holds two buffers and no thread, appends never wait for it,
//! and when the client reads again the next steps read what was committed meanwhile.
//!
//! When caught up, it waits for the next commit, sends a heartbeat after [`SUBSCRIPTION_HEARTBEAT_INTERVAL_MS`] of
//! silence (only while everything through the head it names was sent, so a client can tell it has caught up with
//! that head), and watches the client: end of input (the client closed or shut down its writing side) or any further
//! line ends the stream, as does the daemon's shutdown. The final line is
//! `{"id":..,"ok":true,"count":N,"last":P,"head":H}`: every match at or below `P` was written.
//!
//! A caught-up subscription takes a commit's events from the store's live tail (read once for all subscribers,
//! see `store/subscribe.rs`) and encodes them on this task: no blocking step per subscriber per commit. Only the
//! subscriber that fills the tail, and one that fell behind it, use the blocking pool.
//!
//! A subscription is not an in-flight request: a stopping daemon first lets in-flight appends finish (so their
//! events can still be delivered), then ends every subscription with its final line.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::connection::BoxedWrite;
use tokio::io::AsyncWriteExt;

use super::frame::LineReader;
use super::Context;
use crate::limits::{
    SUBSCRIPTION_BUFFER_BYTES_MAX, SUBSCRIPTION_FINAL_WRITE_TIMEOUT_MS, SUBSCRIPTION_HEARTBEAT_INTERVAL_MS,
};
use crate::store::{Live, StoreError, Subscription};
use crate::wire::{self, ErrorCode, ProtocolError, RequestId, SubscribeDone, SubscribeRequest};

/// Parses a `subscribe` request and opens its subscription; an error is answered like any other request's.
pub(super) fn start(ctx: &Context, line: &[u8]) -> Result<Subscription, ProtocolError> {
    if ctx.shutdown.stopping.load(Ordering::SeqCst) {
        return Err(ProtocolError::new(ErrorCode::ShuttingDown, "the server is shutting down; no new requests"));
    }
    let body: SubscribeRequest = wire::parse_body("subscribe", line)?;
    Ok(ctx.store.subscribe(body.query, body.after.unwrap_or(0))?)
}

/// One step on the blocking pool: the item lines of the next matches, up to the buffer limit or the head.
struct Step {
    subscription: Subscription,
    lines: Vec<u8>,
    events: u64,
    /// `Subscription::through` once these lines are written.
    through: u64,
    caught_up: bool,
    failed: Option<StoreError>,
}

fn step(mut subscription: Subscription, id: &RequestId, mut lines: Vec<u8>) -> Step {
    let mut events = 0;
    let mut failed = None;
    let mut caught_up = false;
    while lines.len() < SUBSCRIPTION_BUFFER_BYTES_MAX {
        match subscription.next_event() {
            Ok(Some(event)) => {
                wire::encode_item(&mut lines, id, &event);
                events += 1;
            }
            Ok(None) => {
                caught_up = true;
                break;
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let through = subscription.through();
    Step { subscription, lines, events, through, caught_up, failed }
}

/// Item lines a step read, not yet written.
struct Written {
    lines: Vec<u8>,
    events: u64,
    /// `Subscription::through` once they are written.
    through: u64,
}

enum End {
    /// The client closed (or sent something after `subscribe`), or the daemon is stopping: send the final line.
    Final,
    /// A read failed: send this error as the final line.
    Failed(ProtocolError),
    /// The daemon is stopping while the client's socket is full: drop the connection (the client resumes from
    /// the last event it received).
    Abandon,
}

/// Serves `subscription` on this connection until the client closes or the daemon stops; `out` holds earlier
/// pipelined answers not yet written.
pub(super) async fn serve(
    ctx: &Arc<Context>,
    id: RequestId,
    subscription: Subscription,
    mut lines: LineReader,
    mut writer: BoxedWrite,
    out: Vec<u8>,
) -> io::Result<()> {
    writer.write_all(&out).await?;
    let mut close = ctx.shutdown.close.subscribe();
    let mut commits = subscription.commits();
    let mut tail_fills = subscription.tail_fills();
    // The next step reads its own window (after a failed fill of the live tail).
    let mut read_next = false;
    let heartbeat_every = Duration::from_millis(SUBSCRIPTION_HEARTBEAT_INTERVAL_MS);
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat_every, heartbeat_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut count = 0u64;
    let mut sent_through = subscription.through();
    let mut subscription = Some(subscription);
    let mut caught_up = false;
    // Lines read by the last step, written while the next step reads (two buffers at most: the per-subscriber
    // bound is twice SUBSCRIPTION_BUFFER_BYTES_MAX plus two events).
    let mut unwritten = Written { lines: Vec::new(), events: 0, through: sent_through };
    let mut spare = out;
    let end = loop {
        if *close.borrow() {
            // The daemon is stopping (in-flight appends are done): end here rather than finish a long catch-up.
            break End::Final;
        }
        if !caught_up || !unwritten.lines.is_empty() {
            // Commits published from here on wake the wait below; the step reads up to the head it sees.
            commits.borrow_and_update();
            let mut sub = subscription.take().expect("the subscription is back from its last step");
            if unwritten.lines.is_empty() && !caught_up && !read_next {
                // Live delivery from the shared tail of recent commits, without a blocking step.
                tail_fills.borrow_and_update();
                let mut live_lines = std::mem::take(&mut spare);
                live_lines.clear();
                let mut events = 0;
                let live = sub.next_live(|event| {
                    wire::encode_item(&mut live_lines, &id, event);
                    events += 1;
                    live_lines.len() < SUBSCRIPTION_BUFFER_BYTES_MAX
                });
                match live {
                    Live::CaughtUp | Live::Stopped => {
                        caught_up = live == Live::CaughtUp;
                        if events == 0 {
                            sent_through = sub.through();
                            spare = live_lines;
                        } else {
                            unwritten = Written { lines: live_lines, events, through: sub.through() };
                        }
                        subscription = Some(sub);
                        continue;
                    }
                    Live::NeedsFill => {
                        spare = live_lines;
                        let fill = sub.claim_tail_fill();
                        subscription = Some(sub);
                        match fill {
                            Some(fill) => {
                                // Finished even when the daemon is stopping (a fill reads at most the live tail's
                                // bound of recent commits): the loop's top then sees the close and the stream ends
                                // with its final line. Racing it against the close abandoned caught-up subscribers
                                // without one (sigterm_mid_stream_ends_with_a_final_line_..., intermittently).
                                let filled = tokio::task::spawn_blocking(move || fill.run()).await;
                                // A failed fill: the subscription's own step reads (and reports the error).
                                read_next = !matches!(filled, Ok(Ok(())));
                            }
                            None => tokio::select! {
                                biased;
                                _ = close.wait_for(|closing| *closing) => break End::Final,
                                _ = tail_fills.changed() => {}
                            },
                        }
                        continue;
                    }
                    Live::Behind => {
                        spare = live_lines;
                        if sub.skip_unmatched() {
                            // Nothing new matches: no blocking step.
                            sent_through = sub.through();
                            subscription = Some(sub);
                            caught_up = true;
                            continue;
                        }
                    }
                }
            }
            read_next = false;
            // The next step reads (unless caught up) while the last one's lines are written.
            let read = async {
                if caught_up {
                    return Ok(Err(sub));
                }
                let step_id = id.clone();
                spare.clear();
                let lines = std::mem::take(&mut spare);
                tokio::task::spawn_blocking(move || step(sub, &step_id, lines)).await.map(Ok)
            };
            let write = async {
                if !unwritten.lines.is_empty() {
                    writer.write_all(&unwritten.lines).await?;
                }
                io::Result::Ok(())
            };
            let (read, written) = tokio::select! {
                biased;
                both = async { tokio::join!(read, write) } => both,
                _ = close.wait_for(|closing| *closing) => break End::Abandon,
            };
            written?;
            let wrote = std::mem::replace(&mut unwritten, Written { lines: Vec::new(), events: 0, through: 0 });
            if !wrote.lines.is_empty() {
                heartbeat.reset();
            }
            count += wrote.events;
            sent_through = wrote.through;
            unwritten.through = sent_through;
            spare = wrote.lines;
            let done = match read {
                Ok(Ok(done)) => done,
                Ok(Err(sub)) => {
                    // Caught up before: only the write ran.
                    subscription = Some(sub);
                    continue;
                }
                Err(e) => {
                    break End::Failed(ProtocolError::new(
                        ErrorCode::StorageError,
                        format!("subscription task failed: {e}"),
                    ))
                }
            };
            subscription = Some(done.subscription);
            caught_up = done.caught_up;
            unwritten = Written { lines: done.lines, events: done.events, through: done.through };
            if let Some(e) = done.failed {
                // Send what was read before the failure, then the error.
                tokio::select! {
                    biased;
                    written = writer.write_all(&unwritten.lines) => written?,
                    _ = close.wait_for(|closing| *closing) => break End::Abandon,
                }
                count += unwritten.events;
                tracing::error!("subscription read failed after {count} events: {e}");
                break End::Failed(ProtocolError::from(e));
            }
            if unwritten.lines.is_empty() {
                sent_through = unwritten.through;
            }
            continue;
        }
        tokio::select! {
            biased;
            _ = close.wait_for(|closing| *closing) => break End::Final,
            changed = commits.changed() => match changed {
                Ok(()) => caught_up = false,
                Err(_) => break End::Final,
            },
            _ = heartbeat.tick() => {}
            // End of input, a further line, or a broken connection: the client is done.
            _ = lines.next_line() => break End::Final,
        }
        if caught_up {
            // The heartbeat's turn. Steps read what this daemon published; once per heartbeat, look for events
            // another process (a .NET writer) appended, so they reach subscribers too.
            let store = ctx.store.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.notice_other_writers()).await {
                tracing::debug!("subscription: looking for other writers' events failed: {e}");
            }
            // A heartbeat promises that everything through its head was sent: if a commit slipped in since the
            // last step, deliver first.
            let head = ctx.store.head();
            if head > sent_through {
                caught_up = false;
                continue;
            }
            spare.clear();
            wire::encode_heartbeat(&mut spare, &id, head);
            tokio::select! {
                biased;
                written = writer.write_all(&spare) => written?,
                _ = close.wait_for(|closing| *closing) => break End::Abandon,
            }
        }
    };
    drop(subscription);
    let mut buffer = spare;
    buffer.clear();
    match end {
        End::Abandon => return Ok(()),
        End::Failed(error) => {
            ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
            wire::encode_error(&mut buffer, &id, &error);
        }
        End::Final => {
            let done = SubscribeDone { count, last: sent_through, head: ctx.store.head() };
            wire::encode_ok(&mut buffer, &id, &done);
        }
    }
    let final_write = async {
        writer.write_all(&buffer).await?;
        writer.shutdown().await
    };
    match tokio::time::timeout(Duration::from_millis(SUBSCRIPTION_FINAL_WRITE_TIMEOUT_MS), final_write).await {
        Ok(written) => written,
        Err(_) => Ok(()),
    }
}
