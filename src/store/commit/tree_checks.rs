//! Journal mode's checks of the Opossum tree at open, before the journal imports from it or the mirror rewrites it:
//! a tree event contradicting the journal stops the open; a crashed tree writer's leftovers beyond the ledger and
//! the journal are set aside. Called from `journal::open`.

use crate::io::IoOp;
use crate::journal::Journal;
use crate::store::StoreError;

/// Journal mode at open, before anything is imported or re-derived: a tree event file at a position the journal
/// also holds must be that event. Checked where the tree may have moved without the journal — positions the ledger
/// covers beyond the mirror's durable mark (a .NET writer appended while the daemon was stopped, with the mirror
/// off or behind) — and the ledger's own head (one file, the cheap witness of a tree swapped under the store).
/// A missing or torn file is not a contradiction (the mirror had not written it, or a crash tore it: it is
/// re-derived); a whole event file of another event stops the open, naming both the file and the record.
pub(super) fn refuse_tree_contradicting_journal(
    layout: &crate::format::Layout,
    io: &dyn crate::io::BatchIo,
    journal: &Journal,
    ledger: u64,
) -> Result<(), StoreError> {
    use crate::store::tools::{compare_event_file, EventFileMismatch};
    let head = journal.head();
    let mut positions: Vec<u64> = (journal.marks().mirror_durable + 1..=ledger.min(head)).collect();
    if (1..=head).contains(&ledger) && positions.last() != Some(&ledger) {
        positions.push(ledger);
    }
    for chunk in positions.chunks(crate::store::READ_BATCH_FILES_DEFAULT) {
        let paths: Vec<std::path::PathBuf> = chunk.iter().map(|&p| layout.event_file(p)).collect();
        let records = journal.read(chunk)?;
        for ((record, path), file) in records.iter().zip(&paths).zip(io.read_files(&paths)) {
            let bytes = match file {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            match compare_event_file(&bytes, &record) {
                Ok(()) => {}
                Err(EventFileMismatch::Unreadable(reason)) => {
                    tracing::warn!(file = %path.display(), "a torn tree event file (re-derived from the journal): {reason}")
                }
                Err(EventFileMismatch::Differs(what)) => {
                    let (segment, location) = journal.locate(record.position).expect("a read position is located");
                    return Err(StoreError::Corrupt {
                        path: path.clone(),
                        reason: format!(
                            "the Opossum tree contradicts the journal at position {}: {what} (journal segment {} \
                             offset {}). Another writer appended to the tree at positions the journal already holds; \
                             move one of the two aside",
                            record.position,
                            segment.display(),
                            location.offset
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Journal mode at open, before the journal takes positions beyond `top` (the ledger or the journal head, whichever
/// is higher): leftovers of a tree writer that crashed mid-commit (files mode or .NET: event files are created and
/// index files renamed before the ledger) lie beyond it. Files mode's recovery sets them aside at its next open;
/// journal mode does not run it, so here their event files go to quarantine and index files listing their positions
/// are clipped — else an index file would name events that later take those positions. A crash can keep any of a
/// group's files and lose the others (top + 1 missing, top + 3 there), so `TREE_LEFTOVER_PROBE_POSITIONS_MAX`
/// positions after `top` are looked at (a `stat` each), not only top + 1; with `look_everywhere` (after an unsynced
/// run, `store/unsynced.rs`) the whole directory is listed.
pub(super) fn set_aside_tree_leftovers(
    layout: &crate::format::Layout,
    io: &dyn crate::io::BatchIo,
    top: u64,
    durable: bool,
    look_everywhere: bool,
) -> Result<(), StoreError> {
    use crate::format;
    use crate::limits::TREE_LEFTOVER_PROBE_POSITIONS_MAX;
    use crate::store::{recovery, READ_BATCH_FILES_DEFAULT};
    let absent = |p: u64| matches!(std::fs::symlink_metadata(layout.event_file(p)), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    if !look_everywhere && (top + 1..=top + TREE_LEFTOVER_PROBE_POSITIONS_MAX).all(absent) {
        return Ok(());
    }
    tracing::warn!(
        beyond = top,
        "the Opossum tree holds leftovers of a writer that crashed mid-commit: setting them aside"
    );
    let list = |dir: &std::path::Path| -> Result<Vec<(String, std::path::PathBuf)>, StoreError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io(IoOp::Open, dir, e))? {
            let entry = entry.map_err(|e| StoreError::io(IoOp::Read, dir, e))?;
            if let Some(name) = entry.file_name().to_str() {
                out.push((name.to_string(), entry.path()));
            }
        }
        Ok(out)
    };
    let mut strays: Vec<std::path::PathBuf> = list(&layout.events)?
        .into_iter()
        .filter(|(name, _)| format::parse_event_file_name(name).is_some_and(|p| p > top))
        .map(|(_, path)| path)
        .collect();
    strays.sort();
    recovery::quarantine(layout, &strays, durable)?;
    let mut index_files = list(&layout.tag_index)?;
    index_files.extend(list(&layout.type_index)?);
    let paths: Vec<std::path::PathBuf> = index_files
        .into_iter()
        .filter(|(name, _)| format::parse_index_file_name(name).is_some())
        .map(|(_, path)| path)
        .collect();
    let mut clipped = Vec::new();
    for chunk in paths.chunks(READ_BATCH_FILES_DEFAULT) {
        for (path, read) in chunk.iter().zip(io.read_files(chunk)) {
            // A corrupt index file is the mirror's to rewrite (derived data), not a reason to stop here.
            if let Ok(mut positions) = format::decode_index(&read?) {
                if positions.last().is_some_and(|&p| p > top) {
                    positions.retain(|&p| p <= top);
                    clipped.push((path.clone(), format::encode_index(&positions)));
                }
            }
        }
    }
    for chunk in clipped.chunks(READ_BATCH_FILES_DEFAULT) {
        io.write_files(&recovery::replace_all(chunk), durable)?;
    }
    Ok(())
}
