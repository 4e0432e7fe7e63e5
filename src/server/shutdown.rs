//! Graceful-stop bookkeeping: refuse new requests, wait for the ones in flight, close idle connections.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

/// Graceful-stop bookkeeping: a `stopping` flag, a count of requests in flight, and a signal that closes idle
/// connections once the in-flight ones are done.
pub(super) struct Shutdown {
    pub(super) stopping: AtomicBool,
    pub(super) in_flight: AtomicUsize,
    pub(super) idle: Notify,
    pub(super) close: watch::Sender<bool>,
    pub(super) connections_gone: Notify,
}

impl Shutdown {
    pub(super) fn new() -> Shutdown {
        Shutdown {
            stopping: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            close: watch::channel(false).0,
            connections_gone: Notify::new(),
        }
    }

    /// Registers a request as in flight, or `None` when the server is stopping.
    pub(super) fn enter(&self) -> Option<InFlight<'_>> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self);
        (!self.stopping.load(Ordering::SeqCst)).then_some(guard)
    }

    pub(super) async fn wait_idle(&self) {
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

pub(super) struct InFlight<'a>(&'a Shutdown);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Waits until `shared` is the last handle (blocking work still holding it ends soon), up to `deadline`.
pub(super) fn wait_unshared<T>(mut shared: Arc<T>, deadline: Instant) -> Option<T> {
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
