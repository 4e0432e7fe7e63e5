//! `opossum verify`: the journal against the Opossum tree of a stopped store.
//!
//! Checked, in order: `.ledger` names the journal's head; every position up to the head has an event file equal to
//! its record ([`super::compare_event_file`]) and no event file lies beyond it; every index file the events call
//! for exists and lists exactly their positions (nothing missing, nothing extra), and no other index file lists
//! any position. Every difference is counted; the first `max_differences` are kept, each naming its file, the
//! position when there is one, and what differs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{io_error, IndexLists, OfflineStore, ToolError};
use crate::format::{self, Layout};
use crate::store::READ_BATCH_FILES_DEFAULT;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub file: PathBuf,
    pub position: Option<u64>,
    pub what: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.position {
            Some(p) => write!(f, "{} (position {p}): {}", self.file.display(), self.what),
            None => write!(f, "{}: {}", self.file.display(), self.what),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The journal's head: the tree must hold positions 1 ..= head.
    pub head: u64,
    pub event_files: u64,
    pub index_files: u64,
    /// The first differences found (at most the `max_differences` asked for).
    pub differences: Vec<Difference>,
    /// Every difference found.
    pub differences_total: u64,
}

impl VerifyReport {
    pub fn is_consistent(&self) -> bool {
        self.differences_total == 0
    }

    fn differ(&mut self, max: usize, file: &Path, position: Option<u64>, what: impl Into<String>) {
        self.differences_total += 1;
        if self.differences.len() < max {
            self.differences.push(Difference { file: file.to_path_buf(), position, what: what.into() });
        }
    }
}

/// Compares the journal and the tree of the store at `store_root`. `progress(done, total)` is called after each
/// batch of event files (positions as units). `Err` only when the comparison itself cannot run (the store is in
/// use, a read fails, the journal is corrupt); differences are the report's.
pub fn verify(
    store_root: &Path,
    max_differences: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport, ToolError> {
    let store = OfflineStore::open(store_root)?;
    let layout = &store.layout;
    let head = store.journal.head();
    let mut report = VerifyReport { head, ..VerifyReport::default() };
    let max = max_differences;
    let ledger_path = layout.ledger();
    match std::fs::read(&ledger_path) {
        Ok(bytes) => match format::Ledger::decode(&bytes) {
            Ok(ledger) => {
                let ledger = ledger.unwrap_or_default();
                if ledger.last_sequence_position != head {
                    report.differ(
                        max,
                        &ledger_path,
                        None,
                        format!(
                            "says the last position is {}, the journal's head is {head}",
                            ledger.last_sequence_position
                        ),
                    );
                }
            }
            Err(e) => report.differ(max, &ledger_path, None, format!("not a ledger: {e}")),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if head > 0 {
                report.differ(max, &ledger_path, None, format!("missing; the journal's head is {head}"));
            }
        }
        Err(e) => return Err(io_error("read", &ledger_path)(e)),
    }

    let mut lists = IndexLists::default();
    let mut next = 1;
    progress(0, head);
    while next <= head {
        let last = (next + READ_BATCH_FILES_DEFAULT as u64 - 1).min(head);
        let positions: Vec<u64> = (next..=last).collect();
        let records = store.journal.read(&positions)?;
        let paths: Vec<PathBuf> = positions.iter().map(|&p| layout.event_file(p)).collect();
        let files = store.io.read_files(&paths);
        for ((record, path), file) in records.iter().zip(&paths).zip(files) {
            lists.add(layout, &record);
            report.event_files += 1;
            match file {
                Ok(bytes) => {
                    if let Err(mismatch) = super::compare_event_file(&bytes, &record) {
                        let (segment, at) = store
                            .journal
                            .locate(record.position)
                            .map_or((PathBuf::new(), 0), |(segment, l)| (segment, l.offset));
                        report.differ(
                            max,
                            path,
                            Some(record.position),
                            format!("{mismatch} (journal record at {} offset {at})", segment.display()),
                        );
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    report.differ(max, path, Some(record.position), "missing")
                }
                Err(e) => return Err(e.into()),
            }
        }
        next = last + 1;
        progress(last, head);
    }
    for (position, path) in event_files_beyond(layout, head)? {
        report.differ(max, &path, Some(position), format!("an event file beyond the journal's head {head}"));
    }
    check_index_files(&store, lists.files, &mut report, max)?;
    Ok(report)
}

/// Event files named for positions above `head`, in position order.
fn event_files_beyond(layout: &Layout, head: u64) -> Result<Vec<(u64, PathBuf)>, ToolError> {
    let mut beyond = Vec::new();
    let entries = match std::fs::read_dir(&layout.events) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(beyond),
        Err(e) => return Err(io_error("list", &layout.events)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error("list", &layout.events))?;
        let name = entry.file_name();
        if let Some(position) = name.to_str().and_then(format::parse_event_file_name) {
            if position > head {
                beyond.push((position, entry.path()));
            }
        }
    }
    beyond.sort();
    Ok(beyond)
}

/// Every expected index file lists exactly its positions; no other index file lists any.
fn check_index_files(
    store: &OfflineStore,
    expected: BTreeMap<PathBuf, Vec<u64>>,
    report: &mut VerifyReport,
    max: usize,
) -> Result<(), ToolError> {
    let layout = &store.layout;
    let mut present: Vec<PathBuf> = Vec::new();
    for dir in [&layout.type_index, &layout.tag_index] {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("list", dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_error("list", dir))?;
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| format::parse_index_file_name(n).is_some() && !format::is_tmp_file_name(n))
            {
                present.push(entry.path());
            }
        }
    }
    present.sort();
    let extra: Vec<PathBuf> = present.into_iter().filter(|p| !expected.contains_key(p)).collect();
    let wanted: Vec<(PathBuf, Option<Vec<u64>>)> =
        expected.into_iter().map(|(p, l)| (p, Some(l))).chain(extra.into_iter().map(|p| (p, None))).collect();
    for chunk in wanted.chunks(READ_BATCH_FILES_DEFAULT) {
        let paths: Vec<PathBuf> = chunk.iter().map(|(p, _)| p.clone()).collect();
        for ((path, expected), file) in chunk.iter().zip(store.io.read_files(&paths)) {
            report.index_files += 1;
            let listed = match file {
                Ok(bytes) => match format::decode_index(&bytes) {
                    Ok(listed) => listed,
                    Err(e) => {
                        report.differ(max, path, None, format!("not an index file: {e}"));
                        continue;
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let first = expected.as_ref().and_then(|l| l.first().copied());
                    report.differ(max, path, first, "missing (the events at these positions call for it)");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let expected = expected.as_deref().unwrap_or(&[]);
            if let Some(p) = expected.iter().find(|p| listed.binary_search(p).is_err()) {
                let missing = expected.iter().filter(|p| listed.binary_search(p).is_err()).count();
                report.differ(max, path, Some(*p), format!("does not list this position ({missing} missing in all)"));
            }
            if let Some(p) = listed.iter().find(|p| expected.binary_search(p).is_err()) {
                let extra = listed.iter().filter(|p| expected.binary_search(p).is_err()).count();
                report.differ(
                    max,
                    path,
                    Some(*p),
                    format!("lists this position, whose event does not call for this file ({extra} extra in all)"),
                );
            }
        }
    }
    Ok(())
}
