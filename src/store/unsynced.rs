//! The "unsynced writes may exist" marker, `.opossumd/unsynced` (`format::Layout::unsynced_marker`): the one module
//! that makes, reads and removes it.
//!
//! A run under `--durability none` writes the tree (and the journal) through the page cache only. A machine crash
//! can then leave any subset of those writes on disk, in any order: a ledger claiming event files that never
//! reached it, torn event files, a type index file newer than the tag files, an index file holding another file's
//! old blocks, tree files beyond a journal whose tail was lost. The open cannot tell such a tree from a whole one by
//! looking at it cheaply, so a run says so in advance:
//!
//! 1. before its first non-durable write (at open, `.store.lock` held, before recovery writes anything) it makes the
//!    marker durably (temporary file, fsync, rename, directory fsync), holding P: the tree's event files through P
//!    were durable then (the previous run stopped cleanly, or wrote durably);
//! 2. a clean close makes everything durable (`sync_store`: one `syncfs`) and only then removes the marker durably;
//!    elsewhere than Linux there is no such sync, and the marker stays: every later open checks the tree;
//! 3. an open that finds it repairs instead of trusting (files mode: `recovery::recover`; journal mode:
//!    `commit::journal::open`): event files after P are kept only when every one up to the ledger is there and whole
//!    (the ledger is only ever written at a group boundary, after its group's files), else the tree is cut back to P
//!    (or the journal's head, if higher) and the rest set aside (quarantine, never deleted), logged as lost; index
//!    files are checked against the events instead of trusted; then the repaired tree is made durable and the marker
//!    says so (or goes, under `--durability fsync`).
//!
//! Runs under `--durability fsync` make no marker (their writes are durable before they count) but repair one they
//! find. .NET Opossum never looks in `.opossumd/`.

use super::{recovery, Durability, StoreError};
use crate::format::Layout;
use crate::io::{self, IoOp};

/// The marker's contents: `durable-through <P>`.
const PREFIX: &str = "durable-through ";

/// The position the marker at `layout` holds, `None` when there is none. A marker that cannot be read or parsed
/// still says the last run did not stop cleanly: nothing after position 0 is taken as durable.
pub(crate) fn read(layout: &Layout) -> Option<u64> {
    let path = layout.unsynced_marker();
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().strip_prefix(PREFIX).and_then(|p| p.parse().ok()).unwrap_or_else(|| {
            tracing::warn!(file = %path.display(), "unreadable unsynced-writes marker: taking nothing after position 0 as durable");
            0
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(file = %path.display(), "cannot read the unsynced-writes marker, taking it as there: {e}");
            Some(0)
        }
    }
}

/// Makes (or replaces) the marker durably, saying the tree's event files through `durable_through` are durable.
pub(crate) fn write(layout: &Layout, durable_through: u64) -> Result<(), StoreError> {
    let path = layout.unsynced_marker();
    let dir = path.parent().expect("the marker lies in .opossumd").to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(IoOp::CreateDir, &dir, e))?;
    let tmp = io::tmp_path(&path);
    let written = (|| {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(format!("{PREFIX}{durable_through}\n").as_bytes())?;
        file.sync_all()
    })();
    written.map_err(|e| StoreError::io(IoOp::Write, &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(IoOp::Rename, &tmp, e))?;
    io::fsync_dir(&dir).map_err(|e| StoreError::io(IoOp::FsyncDir, &dir, e))?;
    // The first marker also makes `.opossumd` itself durable in the store's root.
    io::fsync_dir(&layout.root).map_err(|e| StoreError::io(IoOp::FsyncDir, &layout.root, e))
}

/// Removes the marker durably (nothing when there is none). Only after a `sync_store` (Linux).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn remove(layout: &Layout) -> Result<(), StoreError> {
    let path = layout.unsynced_marker();
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(IoOp::Write, &path, e)),
    }
    let dir = path.parent().expect("the marker lies in .opossumd");
    io::fsync_dir(dir).map_err(|e| StoreError::io(IoOp::FsyncDir, dir, e))
}

/// Makes every write to the store durable: one `syncfs(2)` (Linux). Elsewhere there is no cheap way to sync every
/// file a run wrote (an fsync per file of a bulk load took minutes under Wine), so there the marker is never taken
/// back: every open after a run under `none` checks the tree ([`SYNCS_STORE`]).
#[cfg(target_os = "linux")]
pub(crate) fn sync_store(layout: &Layout) -> Result<(), StoreError> {
    use std::os::fd::AsRawFd;
    let root = &layout.root;
    let dir = std::fs::File::open(root).map_err(|e| StoreError::io(IoOp::Open, root, e))?;
    nix::unistd::syncfs(dir.as_raw_fd()).map_err(|e| StoreError::io(IoOp::Fsync, root, e.into()))
}

/// Whether [`sync_store`] exists here: only then does a clean close (or a repair) take the marker back.
pub(crate) const SYNCS_STORE: bool = cfg!(target_os = "linux");

/// One run's dealings with the marker, from open to close.
#[derive(Debug)]
pub(crate) struct Run {
    /// The marker the open found (its position): the last run did not stop cleanly with unsynced writes.
    found: Option<u64>,
    /// This run has made (or kept) a marker that its clean close removes.
    armed: bool,
    /// The marker could not be made (a full disk): this run writes durably instead, as under `fsync`.
    durable_instead: bool,
}

impl Run {
    /// At open, with `.store.lock` held and before anything is written: reads the marker and, for a run that will
    /// write without syncing (`Durability::None`) and finds none, makes one saying the tree is durable through its
    /// ledger (the last run stopped cleanly or wrote durably). When the marker cannot be made (a full disk: an open
    /// never fails for want of space for its own writes), the run writes durably instead ([`Run::durable_instead`]).
    pub fn begin(layout: &Layout, durability: Durability) -> Run {
        let found = read(layout);
        let mut armed = durability == Durability::None;
        let mut durable_instead = false;
        if armed && found.is_none() {
            // Only a run that makes a marker needs the ledger: an open under `fsync` reads nothing more here.
            let ledger = recovery::read_ledger(layout).unwrap_or(0);
            if let Err(e) = write(layout, ledger) {
                tracing::warn!(
                    "cannot make the unsynced-writes marker, so this run writes durably (as --durability fsync): {e}"
                );
                (armed, durable_instead) = (false, true);
            }
        }
        if let Some(through) = found {
            tracing::warn!(
                marker = %layout.unsynced_marker().display(),
                durable_through = through,
                "the last run wrote without syncing (--durability none) and did not stop cleanly: the tree after \
                 position {through} may have lost writes or kept torn ones; checking it instead of trusting it"
            );
        }
        Run { found, armed, durable_instead }
    }

    /// The marker could not be made: the run must write durably (`Durability::Fsync`) whatever it was asked.
    pub fn durable_instead(&self) -> bool {
        self.durable_instead
    }

    /// The position through which the tree was durable, when the open must repair (a marker was found).
    pub fn repair_from(&self) -> Option<u64> {
        self.found
    }

    /// At the end of an open that found a marker: the repaired tree (through `head`, its ledger) made durable, then
    /// the marker says so (a run under `--durability none`) or is removed. A failure leaves the marker as it was
    /// (logged): it still says what was durable, and the next open repairs again.
    pub fn opened(&mut self, layout: &Layout, head: u64) {
        if self.found.is_none() {
            return;
        }
        if !SYNCS_STORE {
            tracing::info!("no filesystem sync here: the marker stays, and the next open checks the tree again");
            return;
        }
        #[cfg(target_os = "linux")]
        let settled = sync_store(layout).and_then(|()| match self.armed {
            true => write(layout, head),
            false => remove(layout),
        });
        #[cfg(not(target_os = "linux"))]
        let settled: Result<(), StoreError> = {
            let _ = layout;
            Ok(())
        };
        match settled {
            Ok(()) => {
                tracing::info!(durable_through = head, "the repaired tree is durable");
                self.found = None;
            }
            Err(e) => tracing::warn!("could not make the repaired tree durable (the next open checks it again): {e}"),
        }
    }

    /// At a clean close, after every writer of the store has stopped: everything made durable, then the marker
    /// removed. Not when `whole` is false (a write failed: the next open repairs).
    pub fn close(&mut self, layout: &Layout, whole: bool) {
        if !self.armed {
            return;
        }
        if !whole {
            tracing::warn!("closing with unsynced writes after a failure: the next open checks the tree");
            return;
        }
        if !SYNCS_STORE {
            tracing::debug!("no filesystem sync here: the unsynced-writes marker stays, the next open checks the tree");
            return;
        }
        let started = std::time::Instant::now();
        #[cfg(target_os = "linux")]
        let synced = sync_store(layout).and_then(|()| remove(layout));
        #[cfg(not(target_os = "linux"))]
        let synced: Result<(), StoreError> = {
            let _ = layout;
            Ok(())
        };
        match synced {
            Ok(()) => {
                self.armed = false;
                tracing::info!(took_ms = started.elapsed().as_millis() as u64, "unsynced writes made durable at close");
            }
            Err(e) => {
                tracing::warn!("could not make the run's writes durable at close (the next open checks the tree): {e}")
            }
        }
    }
}
