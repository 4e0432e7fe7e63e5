//! Faults under the journal (`--commit journal`), whatever mode the rest of the suite runs in: ENOSPC and EIO on a
//! group's write or `fdatasync` through `journal::FaultyStorage`, and a read error under a journal read through
//! `io::FaultyIo`. The files protocol's fault tests are in `main.rs`.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use opossum::io::FaultyIo;
use opossum::journal::{journal_dir, DiskStorage, FaultyStorage, JournalFault, JournalStorage};
use opossum::model::{Query, ReadOptions};
use opossum::store::{CommitMode, Durability, MirrorMode, Store, StoreError, StoreOptions, WriteStatus};

use super::{backend, ev, positions};

fn journal_options(mirror: MirrorMode) -> StoreOptions {
    StoreOptions {
        commit: CommitMode::Journal,
        mirror,
        durability: Durability::Fsync,
        io: Some(backend()),
        ..StoreOptions::default()
    }
}

pub fn faulty_journal_store(dir: &std::path::Path, mirror: MirrorMode) -> (Arc<Store>, Arc<FaultyStorage>) {
    let disk: Arc<dyn JournalStorage> = Arc::new(DiskStorage::open(&journal_dir(dir)).unwrap());
    let storage = Arc::new(FaultyStorage::new(disk));
    let options = StoreOptions { journal_storage: Some(storage.clone()), ..journal_options(mirror) };
    (Arc::new(Store::open(dir, options).unwrap()), storage)
}

/// Issue 13, Must show: ENOSPC / EIO on a journal write or `fdatasync` → an error to every appender of that group,
/// the store poisoned for appends with the reason, reads continue with every acknowledged event; a reopen keeps the
/// failed group whole or drops it, never half of it.
#[test]
fn a_failed_journal_write_or_fdatasync_fails_its_group_poisons_appends_and_reopens_whole_or_absent() {
    const APPENDERS: usize = 4;
    const BATCH: usize = 3;
    let faults = [
        JournalFault::Write { errno: libc::ENOSPC, bytes_written: 0 },
        JournalFault::Write { errno: libc::ENOSPC, bytes_written: 100 },
        JournalFault::Write { errno: libc::EIO, bytes_written: usize::MAX },
        JournalFault::SyncData { errno: libc::EIO },
        JournalFault::SyncData { errno: libc::ENOSPC },
    ];
    for mirror in [MirrorMode::Off, MirrorMode::Live] {
        for fault in faults {
            let case = format!("{mirror:?} {fault:?}");
            let dir = tempfile::tempdir().unwrap();
            let (store, storage) = faulty_journal_store(dir.path(), mirror);
            store.append(vec![ev("A", &[("k", "v")])], None).unwrap();
            let (writes, syncs) = storage.calls();
            storage.arm(0, fault);
            // Several appenders at once: whichever share the failing group get its error, the rest are refused.
            let start = Arc::new(Barrier::new(APPENDERS));
            let results: Vec<Result<_, StoreError>> = (0..APPENDERS)
                .map(|_| {
                    let (store, start) = (store.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        store.append(vec![ev("B", &[("k", "v")]); BATCH], None)
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect();
            assert!(storage.calls() > (writes, syncs), "{case}: the fault was reached");
            let errno = match fault {
                JournalFault::Write { errno, .. } | JournalFault::SyncData { errno } => errno,
            };
            let mut failed_with_the_fault = 0;
            for r in &results {
                match r {
                    Err(StoreError::Io(e)) if e.source.raw_os_error() == Some(errno) => failed_with_the_fault += 1,
                    Err(StoreError::Poisoned(reason)) => assert!(reason.contains("failed"), "{case}: {reason}"),
                    other => panic!("{case}: an appender of the failed group or after it got {other:?}"),
                }
            }
            assert!(failed_with_the_fault >= 1, "{case}: {results:?}");
            // Poisoned with a reason, for every later append too.
            let WriteStatus::Unwritable { reason } = store.write_status() else { panic!("{case}: still writable") };
            assert!(reason.contains("group commit"), "{case}: {reason}");
            let stats = store.stats();
            assert!(!stats.writable && stats.unwritable_reason.is_some(), "{case}: {stats:?}");
            let refused = store.append(vec![ev("C", &[])], None);
            assert!(matches!(&refused, Err(StoreError::Poisoned(r)) if r == &reason), "{case}: {refused:?}");
            // Reads go on and show every acknowledged event, nothing of the failed group.
            assert_eq!(store.head(), 1, "{case}");
            let all = store.read_to_vec(&Query::All, ReadOptions::default()).unwrap();
            assert_eq!(positions(&all), vec![1], "{case}");
            let tagged = store.read_to_vec(&super::tags(&[("k", "v")]), ReadOptions::default()).unwrap();
            assert_eq!(positions(&tagged), vec![1], "{case}");
            assert!(matches!(Arc::try_unwrap(store).ok().unwrap().close(), Err(StoreError::Poisoned(_))), "{case}");
            drop(storage);

            // Reopen without faults: every group whole or absent, positions contiguous, writable again.
            let store = Store::open(dir.path(), journal_options(mirror)).unwrap();
            let all = store.read_to_vec(&Query::All, ReadOptions::default()).unwrap();
            assert_eq!(positions(&all), (1..=store.head()).collect::<Vec<_>>(), "{case}");
            let bs = all.iter().filter(|e| e.event_type == "B").count();
            assert_eq!(bs % BATCH, 0, "{case}: half a batch after reopen: {:?}", positions(&all));
            assert!(bs <= failed_with_the_fault * BATCH, "{case}: a refused append appeared");
            if matches!(fault, JournalFault::Write { bytes_written: 0, .. }) {
                assert_eq!(bs, 0, "{case}: nothing was written, nothing may appear");
            }
            let next = store.append(vec![ev("D", &[])], None).unwrap();
            assert_eq!(next.first, all.len() as u64 + 1, "{case}");
            store.close().unwrap();
            if mirror == MirrorMode::Live {
                let report =
                    super::when_released(|| opossum::store::tools::verify(dir.path(), 5, &mut |_, _| {})).unwrap();
                assert!(report.is_consistent(), "{case}: {report:?}");
            }
        }
    }
}

/// A read error under one journal record (through `io::FaultyIo`'s `read_extents`) fails that read; the store stays
/// writable and the next read of the same events succeeds.
#[test]
fn a_journal_read_error_fails_that_read_and_the_store_stays_writable() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultyIo::new(backend()));
    let options = StoreOptions { io: Some(io.clone()), ..journal_options(MirrorMode::Off) };
    let store = Store::open(dir.path(), options).unwrap();
    for _ in 0..5 {
        store.append(vec![ev("A", &[("k", "v")])], None).unwrap();
    }
    io.arm_extent_read(0, libc::EIO);
    let refused = store.read_to_vec(&Query::All, ReadOptions::default());
    assert!(matches!(&refused, Err(StoreError::Io(e)) if e.source.raw_os_error() == Some(libc::EIO)), "{refused:?}");
    assert_eq!(store.write_status(), WriteStatus::Writable);
    assert_eq!(store.append(vec![ev("B", &[])], None).unwrap().first, 6);
    let all = store.read_to_vec(&Query::All, ReadOptions::default()).unwrap();
    assert_eq!(positions(&all), (1..=6).collect::<Vec<_>>());
    store.close().unwrap();
}

/// The journal's own seal of a full segment goes through the same storage: a failed `fdatasync` there poisons too,
/// and the reopen still serves every acknowledged event.
#[test]
fn a_failed_sync_while_a_segment_rolls_over_poisons_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (store, storage) = faulty_journal_store(dir.path(), MirrorMode::Off);
    let mut acknowledged = 0u64;
    // Fail some later fdatasync: a group's, a seal's or a new segment's, whichever comes.
    storage.arm(7, JournalFault::SyncData { errno: libc::EIO });
    let mut failed = false;
    for _ in 0..20 {
        match store.append(vec![ev("A", &[])], None) {
            Ok(a) => acknowledged = a.last,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the armed fault fired");
    assert!(matches!(store.append(vec![ev("A", &[])], None), Err(StoreError::Poisoned(_))));
    drop(store);
    drop(storage);
    std::thread::sleep(Duration::from_millis(1));
    let store = Store::open(dir.path(), journal_options(MirrorMode::Off)).unwrap();
    assert!(store.head() >= acknowledged && store.head() <= acknowledged + 1, "{} vs {acknowledged}", store.head());
    let all = store.read_to_vec(&Query::All, ReadOptions::default()).unwrap();
    assert_eq!(positions(&all), (1..=store.head()).collect::<Vec<_>>());
}
