//! `opossum export --opossum DIR`: a complete Opossum tree written from the journal of a stopped store.
//!
//! The tree is exactly what files mode writes for the same events: every event file with its record's bytes
//! (`events/`), one index file per event type and per tag (`Indices/`), and `.ledger`. Order, so that a crash
//! midway never leaves a ledger vouching for missing files: event files (without fsyncs), then one barrier for
//! all of them, then index files and the ledger, durably. An empty journal writes the directories only (files
//! mode writes no ledger before the first event). Where there is no `syncfs` (not Linux) the event files are
//! written durably in the first pass instead (each batch's barrier), so no file is written twice.

use std::path::{Path, PathBuf};

use super::{io_error, IndexLists, OfflineStore, ToolError};
use crate::format::{Layout, Ledger};
use crate::io::{FileWrite, WriteMode};
use crate::store::{recovery, READ_BATCH_FILES_DEFAULT};

/// What [`export_tree`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exported {
    pub events: u64,
    pub index_files: u64,
    pub bytes: u64,
}

/// Writes the tree of the store at `store_root` into `target` (created; refused unless absent or an empty
/// directory). `progress(done, total)` is called after each batch of event files, positions as units.
pub fn export_tree(
    store_root: &Path,
    target: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Exported, ToolError> {
    let store = OfflineStore::open(store_root)?;
    if target.exists() {
        let mut entries = std::fs::read_dir(target).map_err(|_| ToolError::NotEmpty(target.to_path_buf()))?;
        if entries.next().is_some() {
            return Err(ToolError::NotEmpty(target.to_path_buf()));
        }
    }
    std::fs::create_dir_all(target).map_err(io_error("create", target))?;
    let target = std::fs::canonicalize(target).map_err(io_error("open", target))?;
    if target.starts_with(&store.layout.root) || store.layout.root.starts_with(&target) {
        let _ = std::fs::remove_dir(&target);
        return Err(ToolError::Overlaps(target));
    }
    let out = Layout::new(&target);
    recovery::create_layout(&out, true)?;
    let head = store.journal.head();
    let mut lists = IndexLists::default();
    let mut exported = Exported::default();
    let mut next = 1;
    // One `syncfs` after the pass on Linux; elsewhere each batch is made durable as it is written.
    let durable_batches = !cfg!(target_os = "linux");
    progress(0, head);
    while next <= head {
        let last = (next + READ_BATCH_FILES_DEFAULT as u64 - 1).min(head);
        let positions: Vec<u64> = (next..=last).collect();
        let batch = store.journal.read(&positions)?;
        let paths: Vec<PathBuf> = positions.iter().map(|&p| out.event_file(p)).collect();
        let files = batch.event_files();
        let writes: Vec<FileWrite<'_>> = batch
            .iter()
            .zip(files.iter())
            .zip(&paths)
            .map(|((record, bytes), path)| {
                lists.add(&out, &record);
                exported.bytes += bytes.len() as u64;
                FileWrite { path, bytes, mode: WriteMode::CreateNew }
            })
            .collect();
        store.io.write_files(&writes, durable_batches)?;
        exported.events += positions.len() as u64;
        next = last + 1;
        progress(exported.events, head);
    }
    if head == 0 {
        return Ok(exported);
    }
    sync_tree(&out)?;
    // Tag files before type files, as every flush writes them (type coverage never runs ahead of tag coverage).
    let (tags, types): (Vec<_>, Vec<_>) =
        lists.files.into_iter().partition(|(path, _)| path.starts_with(&out.tag_index));
    for files in [tags, types] {
        let encoded: Vec<(PathBuf, Vec<u8>)> =
            files.into_iter().map(|(path, positions)| (path, crate::format::encode_index(&positions))).collect();
        exported.index_files += encoded.len() as u64;
        exported.bytes += encoded.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        for chunk in encoded.chunks(READ_BATCH_FILES_DEFAULT) {
            store.io.write_files(&recovery::replace_all(chunk), true)?;
        }
    }
    let ledger = Ledger { last_sequence_position: head, event_count: head }.encode();
    let ledger_path = out.ledger();
    store.io.write_files(&[FileWrite { path: &ledger_path, bytes: &ledger, mode: WriteMode::Commit }], true)?;
    Ok(exported)
}

/// Makes every event file written so far durable before any index file or the ledger names them: one `syncfs` of
/// the target's filesystem on Linux. Elsewhere the first pass already wrote them durably: nothing is left to do.
fn sync_tree(out: &Layout) -> Result<(), ToolError> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let dir = std::fs::File::open(&out.root).map_err(io_error("open", &out.root))?;
        nix::unistd::syncfs(dir.as_raw_fd()).map_err(|e| io_error("syncfs", &out.root)(e.into()))?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = out;
    Ok(())
}
