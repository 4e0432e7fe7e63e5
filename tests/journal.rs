//! The journal over the simulated disk (`io::sim`): thousands of seeded crash points, torn and corrupt tails,
//! sealed segments; and over real files. Deterministic: a failing seed replays.

use std::sync::Arc;

use opossum::format::encode_event;
use opossum::io::sim::{SimDisk, SimRng};
use opossum::journal::format::{self, padded, segment_name};
use opossum::journal::{DiskStorage, Journal, JournalError, JournalOptions, NewRecord, SimStorage, ZeroFill};
use opossum::model::Tag;
use serde_json::value::RawValue;

/// The event file, tags and JSON ranges of position `p`: a pure function of `p`, so any record read back can be
/// checked without remembering what was written.
struct Made {
    event_type: String,
    tags: Vec<Tag>,
    file: Vec<u8>,
    data: String,
    metadata: String,
}

fn make(p: u64) -> Made {
    let pad = "x".repeat((p * 37 % 300) as usize);
    let data = format!(r#"{{"p":{p},"pad":"{pad}"}}"#);
    let metadata = format!(r#"{{"timestamp":"t{p}"}}"#);
    let event_type = format!("Type{}", p % 5);
    let tags = (0..p % 3).map(|i| Tag::new(format!("k{i}"), format!("v{p}"))).collect::<Vec<_>>();
    let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
    let file = encode_event(p, &event_type, &raw(&data), &tags, &raw(&metadata));
    Made { event_type, tags, file, data, metadata }
}

fn record(m: &Made) -> NewRecord<'_> {
    NewRecord::for_event_file(&m.event_type, &m.tags, &m.file, &m.data, &m.metadata)
}

fn append_group(j: &Journal, first: u64, n: u64) -> Result<(), JournalError> {
    let made: Vec<Made> = (first..first + n).map(make).collect();
    let records: Vec<NewRecord<'_>> = made.iter().map(record).collect();
    j.append(first, &records).map(|_| ())
}

/// Every position 1..=head reads back as `make` made it.
fn check_contents(j: &Journal) {
    let head = j.head();
    j.scan(1, head, |v| -> Result<(), JournalError> {
        let m = make(v.position);
        assert_eq!(&v.event_file()[..], &m.file[..], "position {}", v.position);
        assert_eq!((v.event_type, v.data, v.metadata), (m.event_type.as_str(), m.data.as_str(), m.metadata.as_str()));
        assert_eq!(v.owned_tags(), m.tags);
        Ok(())
    })
    .unwrap();
    let mut seen = 0;
    j.scan(1, head, |v| -> Result<(), JournalError> {
        seen += 1;
        assert_eq!(v.position, seen);
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, head);
}

fn sim_open(disk: &SimDisk, options: JournalOptions) -> Result<Journal, JournalError> {
    Journal::open(Arc::new(SimStorage::new(disk.clone())), options).map(|(j, _)| j)
}

/// Durable, zero-filled by the appending thread in steps of 1 KiB (so crash points land inside zero-fills too,
/// and every run replays).
fn sim_options(segment_bytes: u64) -> JournalOptions {
    JournalOptions { durable: true, segment_bytes, zero_chunk_bytes: 1024, zero_fill: ZeroFill::Inline }
}

/// Big enough for every test's records in one segment, small enough to copy quickly.
fn one_segment() -> JournalOptions {
    sim_options(64 << 10)
}

fn small_segments() -> JournalOptions {
    sim_options(4096)
}

/// Appends random groups until the disk crashes (or `groups` are done); returns the acknowledged head and every
/// group end attempted (acknowledged or not).
fn run_until_crash(j: &Journal, rng: &mut SimRng, groups: usize) -> (u64, Vec<u64>) {
    let mut acked = j.head();
    let mut ends = vec![acked];
    for _ in 0..groups {
        let n = 1 + rng.below(6);
        ends.push(acked + n);
        match append_group(j, acked + 1, n) {
            Ok(()) => acked += n,
            Err(_) => break,
        }
    }
    (acked, ends)
}

#[test]
fn thousands_of_crash_points_keep_every_acknowledged_group_and_no_half_group() {
    let mut crash_points = 0;
    let mut recovered_beyond_ack = 0;
    for seed in 0..3000u64 {
        let mut rng = SimRng::new(seed);
        let disk = SimDisk::new(seed);
        let j = sim_open(&disk, small_segments()).unwrap();
        // A history before the crash point, sometimes across seals, then a crash somewhere in the next groups.
        let history = rng.below(12) as usize;
        let (before, _) = run_until_crash(&j, &mut rng, history);
        disk.crash_after(1 + rng.below(60));
        let (acked, ends) = run_until_crash(&j, &mut rng, 30);
        assert!(acked >= before);
        if !disk.crashed() {
            continue;
        }
        crash_points += 1;
        drop(j);
        let after = disk.reboot(seed, true);
        let j = sim_open(&after, small_segments()).unwrap_or_else(|e| panic!("seed {seed}: reopen failed: {e}"));
        let head = j.head();
        assert!(head >= acked, "seed {seed}: acknowledged up to {acked}, recovered only {head}");
        assert!(ends.contains(&head), "seed {seed}: head {head} is inside a group (group ends {ends:?})");
        recovered_beyond_ack += u64::from(head > acked);
        check_contents(&j);
        // The recovered journal takes appends, and they survive a clean reopen.
        append_group(&j, head + 1, 3).unwrap_or_else(|e| panic!("seed {seed}: append after recovery: {e}"));
        j.close().unwrap();
        drop(j);
        let j = sim_open(&after.reboot(seed, false), small_segments()).unwrap();
        assert_eq!(j.head(), head + 3, "seed {seed}");
        check_contents(&j);
    }
    assert!(crash_points > 2500, "only {crash_points} runs crashed");
    // Some crashes land after the fdatasync but before the answer: those groups may survive, whole.
    assert!(recovered_beyond_ack > 0);
}

#[test]
fn crashes_during_recovery_are_recovered_from_too() {
    for seed in 0..500u64 {
        let mut rng = SimRng::new(seed);
        let disk = SimDisk::new(seed);
        let j = sim_open(&disk, small_segments()).unwrap();
        disk.crash_after(1 + rng.below(40));
        let (acked, ends) = run_until_crash(&j, &mut rng, 20);
        drop(j);
        let first = disk.reboot(seed, true);
        // Crash the recovery itself (cutting the torn tail) at its first write or sync.
        first.crash_after(1 + rng.below(3));
        let _ = sim_open(&first, small_segments());
        let second = first.reboot(seed + 1, true);
        let j = sim_open(&second, small_segments()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(j.head() >= acked && ends.contains(&j.head()), "seed {seed}");
        check_contents(&j);
    }
}

/// A journal of `groups` groups of 3 in one segment, cleanly synced but not closed (no durable-head mark).
fn one_segment_journal(groups: u64) -> (SimDisk, Journal) {
    let disk = SimDisk::new(7);
    let j = sim_open(&disk, one_segment()).unwrap();
    for g in 0..groups {
        append_group(&j, g * 3 + 1, 3).unwrap();
    }
    (disk, j)
}

#[test]
fn a_torn_tail_cut_at_any_offset_recovers_to_the_last_whole_group() {
    let (disk, j) = one_segment_journal(4);
    let name = segment_name(1);
    let (_, first_of_last) = j.locate(10).unwrap();
    let (_, last) = j.locate(12).unwrap();
    let end = last.offset as u64 + padded(last.size as usize) as u64;
    drop(j);
    for cut in first_of_last.offset as u64..end {
        let copy = disk.reboot(0, false);
        // Everything from `cut` on never reached the disk: zeros, as in the preallocated file.
        copy.poke(&name, cut, &vec![0u8; (end - cut) as usize]);
        let j = sim_open(&copy, one_segment()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let expect = if cut >= last.offset as u64 + last.size as u64 { 12 } else { 9 };
        assert_eq!(j.head(), expect, "cut at {cut}");
        check_contents(&j);
        // Also as a file cut short (no preallocation).
        let copy = disk.reboot(0, false);
        copy.truncate(&name, cut);
        let j = sim_open(&copy, one_segment()).unwrap();
        assert_eq!(j.head(), expect, "truncated at {cut}");
    }
}

#[test]
fn random_bytes_flipped_in_the_last_group_recover_to_the_group_before() {
    let (disk, j) = one_segment_journal(4);
    let name = segment_name(1);
    // The bytes of the last group's records (the zero padding between them is no record's: a flip there damages
    // nothing).
    let records: Vec<_> = (10..=12).map(|p| j.locate(p).unwrap().1).collect();
    drop(j);
    let mut rng = SimRng::new(99);
    for _ in 0..300 {
        let copy = disk.reboot(0, false);
        let r = records[rng.below(3) as usize];
        let at = r.offset as u64 + rng.below(r.size as u64);
        let old = copy.contents(&name).unwrap()[at as usize];
        copy.poke(&name, at, &[old ^ (1 + rng.below(255) as u8)]);
        let j = sim_open(&copy, one_segment()).unwrap_or_else(|e| panic!("flip at {at}: {e}"));
        assert_eq!(j.head(), 9, "flip at {at}");
        check_contents(&j);
    }
}

#[test]
fn a_flipped_byte_below_the_durable_mark_is_an_error_naming_segment_and_offset() {
    let (disk, j) = one_segment_journal(4);
    let name = segment_name(1);
    let record5 = j.locate(5).unwrap().1;
    let record11 = j.locate(11).unwrap().1;
    drop(j);
    // A damaged record with whole groups after it: it was acknowledged.
    let mut rng = SimRng::new(5);
    for _ in 0..100 {
        let copy = disk.reboot(0, false);
        let at = record5.offset as u64 + rng.below(record5.size as u64);
        let old = copy.contents(&name).unwrap()[at as usize];
        copy.poke(&name, at, &[old ^ 0x20]);
        let err = sim_open(&copy, one_segment()).err().unwrap_or_else(|| panic!("flip at {at} went unnoticed"));
        match &err {
            JournalError::Corrupt { segment, offset, .. } => {
                assert!(segment.ends_with(&name), "{err}");
                assert_eq!(*offset, record5.offset as u64, "{err}");
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains(&name) && err.to_string().contains(&record5.offset.to_string()), "{err}");
    }
    // After a clean close the last group is below the durable head too: damage there is an error, not a cut.
    let j = sim_open(&disk, one_segment()).unwrap();
    j.close().unwrap();
    drop(j);
    let copy = disk.reboot(0, false);
    let at = record11.offset as u64 + 60;
    let old = copy.contents(&name).unwrap()[at as usize];
    copy.poke(&name, at, &[old ^ 1]);
    let err = sim_open(&copy, one_segment()).err().expect("damage below the durable head");
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
}

#[test]
fn sealed_segments_resolve_positions_from_their_offset_table_and_fail_loudly_when_damaged() {
    let disk = SimDisk::new(3);
    let j = sim_open(&disk, small_segments()).unwrap();
    for g in 0..40 {
        append_group(&j, g * 2 + 1, 2).unwrap();
    }
    let segments = j.segments();
    assert!(segments > 5, "{segments} segments");
    let (path, l) = j.locate(3).unwrap();
    assert!(path.ends_with(segment_name(1)));
    j.close().unwrap();
    drop(j);
    let j = sim_open(&disk, small_segments()).unwrap();
    assert_eq!((j.head(), j.segments()), (80, segments));
    check_contents(&j);
    // Every sealed segment ends in a valid trailer.
    let names: Vec<String> = disk.list().unwrap().into_iter().filter(|n| n.ends_with(".seg")).collect();
    for name in &names[..names.len() - 1] {
        let bytes = disk.contents(name).unwrap();
        let trailer = format::decode_trailer(&bytes[bytes.len() - format::TRAILER_BYTES..]);
        assert!(trailer.is_ok(), "{name} not sealed");
    }
    drop(j);
    disk.poke(&segment_name(1), l.offset as u64 + 70, b"!");
    let j = sim_open(&disk, small_segments()).unwrap();
    let err = j.read(&[3]).err().expect("a damaged sealed record is an error");
    let text = err.to_string();
    assert!(text.contains(&segment_name(1)) && text.contains(&l.offset.to_string()), "{text}");
}

#[test]
fn reads_coalesce_and_return_records_in_the_order_asked() {
    let (_disk, j) = one_segment_journal(10);
    let batch = j.read(&[30, 29, 1, 2, 3, 17]).unwrap();
    let got: Vec<u64> = batch.iter().map(|v| v.position).collect();
    assert_eq!(got, vec![30, 29, 1, 2, 3, 17]);
}

#[test]
fn the_journal_on_real_files_zero_fills_ahead_in_the_background_and_trims_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions { segment_bytes: 64 << 10, zero_chunk_bytes: 4096, ..JournalOptions::default() };
    assert_eq!(options.zero_fill, ZeroFill::Background);
    let (j, opened) = Journal::open_dir(dir.path(), options).unwrap();
    assert_eq!(opened.head, 0);
    for g in 0..200 {
        append_group(&j, g * 4 + 1, 4).unwrap();
    }
    let segments = j.segments();
    assert!(segments > 2);
    let journal = opossum::journal::journal_dir(dir.path());
    let active = journal.join(segment_name(j_last_first(&journal)));
    let (_, last) = j.locate(800).unwrap();
    let end = last.offset as u64 + padded(last.size as usize) as u64;
    // How far the zeros reach depends on the thread's progress; the records never go past them.
    let len = std::fs::metadata(&active).unwrap().len();
    assert!(len >= end, "{len} bytes, records end at {end}");
    let tail = &std::fs::read(&active).unwrap()[end as usize..];
    assert!(tail.iter().all(|&b| b == 0), "only zeros after the records");
    // The zero-fill thread notes each seal's durable head in the marks (off the commit path), so an open finding
    // less than the sealed segments is an error.
    let sealed_through = j_last_first(&journal) - 1;
    let waited = std::time::Instant::now();
    while j.marks().durable_head < sealed_through {
        assert!(waited.elapsed() < std::time::Duration::from_secs(60), "seals not noted in the marks");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // It prepares the next segment's spare meanwhile (only the spare's own zeros: 64 KiB).
    let spare = journal.join(format::SPARE_SEGMENT_FILE);
    while std::fs::metadata(&spare).map(|m| m.len()).unwrap_or(0) < options.segment_bytes {
        assert!(waited.elapsed() < std::time::Duration::from_secs(60), "no spare segment");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    j.close().unwrap();
    drop(j);
    assert_eq!(std::fs::metadata(&active).unwrap().len(), end, "a clean close trims the zeros");
    assert!(!spare.exists(), "a clean close removes the spare");
    let (j, opened) = Journal::open(Arc::new(DiskStorage::open(&journal).unwrap()), options).unwrap();
    assert_eq!((opened.head, opened.segments), (800, segments));
    check_contents(&j);
    // Appends go on after the trim: the segment is zero-filled again ahead of them.
    for g in 200..220 {
        append_group(&j, g * 4 + 1, 4).unwrap();
    }
    check_contents(&j);
}

fn j_last_first(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| format::parse_segment_name(e.unwrap().file_name().to_str()?))
        .max()
        .unwrap()
}

/// A group commit's `fdatasync` must make data durable and nothing else: no length change, no blocks initialised
/// for the first time (unwritten extents of `fallocate`, or holes). On ext4 either turns the `fdatasync` into a
/// journal commit that also carries every file the mirror created since the last one.
#[test]
fn group_commits_sync_data_only_while_zeros_are_written_ahead_of_them() {
    let disk = SimDisk::new(11);
    // Zero-fill steps of 64 KiB, each of which syncs a length change of its own.
    let options = JournalOptions { zero_chunk_bytes: 64 << 10, ..sim_options(1 << 20) };
    let j = sim_open(&disk, options).unwrap();
    append_group(&j, 1, 1).unwrap();
    let before = disk.metadata_syncs();
    let groups = 400;
    for p in 2..2 + groups {
        append_group(&j, p, 1).unwrap();
    }
    let metadata_syncs = disk.metadata_syncs() - before;
    // ~160 KiB of records: the zero-fill steps sync a length change each (a handful), the commits none.
    assert!(metadata_syncs <= 8, "{metadata_syncs} of {groups} commits made metadata durable");
    check_contents(&j);
}

/// Crashes the simulated disk inside the `nth` zero-fill (at its write or at its sync): the storage under a journal
/// whose crash lands in the middle of zero-filling ahead of the head, or a new segment's first zeros (or the
/// spare's, which a new segment is made from). Notes the file of every zero-fill.
struct CrashInZeroFill {
    inner: SimStorage,
    nth: std::sync::atomic::AtomicU64,
    at_sync: bool,
    /// The crash landed in a new segment's first zeros (written right after its header, or into the spare).
    in_new_segment: std::sync::atomic::AtomicBool,
    zero_filled: std::sync::Mutex<Vec<String>>,
}

impl CrashInZeroFill {
    fn new(disk: &SimDisk, nth: u64, at_sync: bool) -> CrashInZeroFill {
        CrashInZeroFill {
            inner: SimStorage::new(disk.clone()),
            nth: std::sync::atomic::AtomicU64::new(nth),
            at_sync,
            in_new_segment: Default::default(),
            zero_filled: Default::default(),
        }
    }
}

impl opossum::journal::JournalStorage for CrashInZeroFill {
    fn dir(&self) -> &std::path::Path {
        self.inner.dir()
    }
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.inner.list()
    }
    fn create(&self, name: &str) -> std::io::Result<()> {
        self.inner.create(name)
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.inner.remove(name)
    }
    fn len(&self, name: &str) -> std::io::Result<u64> {
        self.inner.len(name)
    }
    fn read_at(&self, name: &str, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(name, buf, offset)
    }
    fn write_at(&self, name: &str, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(name, bytes, offset)
    }
    fn zero_fill(&self, name: &str, offset: u64, len: u64) -> std::io::Result<()> {
        if self.nth.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            // The write lands in the page cache (or not), the sync never happens; or the write is the crash.
            self.inner.disk.crash_after(if self.at_sync { 2 } else { 1 });
            let new_segment = offset == format::SEGMENT_HEADER_BYTES as u64 || name == format::SPARE_SEGMENT_FILE;
            self.in_new_segment.store(new_segment, std::sync::atomic::Ordering::SeqCst);
        }
        self.zero_filled.lock().unwrap().push(name.to_string());
        self.inner.zero_fill(name, offset, len)
    }
    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn set_len(&self, name: &str, len: u64) -> std::io::Result<()> {
        self.inner.set_len(name, len)
    }
    fn sync_data(&self, name: &str) -> std::io::Result<()> {
        self.inner.sync_data(name)
    }
    fn sync_dir(&self) -> std::io::Result<()> {
        self.inner.sync_dir()
    }
    fn replace(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.replace(name, bytes)
    }
    fn file(&self, _name: &str) -> Option<Arc<std::fs::File>> {
        None
    }
}

#[test]
fn a_crash_in_the_middle_of_a_zero_fill_loses_no_acknowledged_group() {
    let mut crashed_in_new_segment = 0;
    for nth in 1..40u64 {
        for at_sync in [false, true] {
            let seed = nth * 2 + u64::from(at_sync);
            let disk = SimDisk::new(seed);
            let storage = CrashInZeroFill::new(&disk, nth, at_sync);
            // Segments of 4 KiB zero-filled 512 bytes at a time: crashes inside new segments' first zeros and
            // inside zero-fills ahead of the head.
            let options = JournalOptions { zero_chunk_bytes: 512, ..sim_options(4096) };
            let storage = Arc::new(storage);
            let j = Journal::open(storage.clone(), options).unwrap().0;
            let mut rng = SimRng::new(seed);
            let (acked, ends) = run_until_crash(&j, &mut rng, 200);
            assert!(disk.crashed(), "nth {nth}: no crash");
            crashed_in_new_segment += u64::from(storage.in_new_segment.load(std::sync::atomic::Ordering::SeqCst));
            drop(j);
            for tear in [false, true] {
                let after = disk.reboot(seed, tear);
                let j = sim_open(&after, options).unwrap_or_else(|e| panic!("nth {nth} sync {at_sync}: {e}"));
                let head = j.head();
                assert!(head >= acked && ends.contains(&head), "nth {nth}: acked {acked}, head {head}");
                check_contents(&j);
                append_group(&j, head + 1, 5).unwrap();
                check_contents(&j);
            }
        }
    }
    assert!(crashed_in_new_segment > 0, "no crash landed in a new segment's creation");
}

/// A new segment is made whole from the spare (zeros written and synced in a file of its own, then its header, then
/// renamed): no zeros are ever written into a segment while it takes groups, so the writer is its only writer and a
/// commit's `fdatasync` flushes its group alone. A group bigger than a segment still gets a segment of its own.
#[test]
fn new_segments_are_made_from_a_spare_so_no_segment_is_zero_filled_while_it_takes_groups() {
    let disk = SimDisk::new(5);
    let storage = Arc::new(CrashInZeroFill::new(&disk, u64::MAX, false));
    let segment_bytes = 16 << 10;
    let options = JournalOptions { zero_chunk_bytes: 4096, ..sim_options(segment_bytes) };
    let j = Journal::open(storage.clone(), options).unwrap().0;
    let mut head = 0;
    while j.segments() < 4 {
        append_group(&j, head + 1, 4).unwrap();
        head += 4;
    }
    let before = disk.metadata_syncs();
    let filled = storage.zero_filled.lock().unwrap().clone();
    assert!(!filled.is_empty());
    assert!(filled.iter().all(|name| name == format::SPARE_SEGMENT_FILE), "zero-filled: {filled:?}");
    // The active segment (just started: the last group opened it) has its whole size from the start, so the groups
    // that follow change no metadata.
    let last_first = disk.list().unwrap().iter().filter_map(|n| format::parse_segment_name(n)).max().unwrap();
    assert_eq!(disk.len(&segment_name(last_first)).unwrap(), segment_bytes);
    for _ in 0..3 {
        append_group(&j, head + 1, 2).unwrap();
        head += 2;
    }
    assert_eq!(disk.metadata_syncs(), before, "commits into a segment made from a spare sync no metadata");
    check_contents(&j);
    // One group bigger than a segment: a segment of its own, stretched, zero-filled in place.
    append_group(&j, head + 1, 200).unwrap();
    head += 200;
    assert!(storage.zero_filled.lock().unwrap().iter().any(|name| format::parse_segment_name(name).is_some()));
    drop(j);
    let j = sim_open(&disk.reboot(1, true), options).unwrap();
    assert_eq!(j.head(), head);
    check_contents(&j);
}

/// A journal written by the build before format version 3 (`tests/fixtures/journal-v2`: positions 1..=15 as `make`
/// makes them, groups of 3, a sealed segment 1..=9 and an active one, closed cleanly): read as it is, then appended
/// to in version 3 segments only, and read whole again after a reopen.
#[test]
fn a_version_2_journal_is_read_and_appended_to_in_a_new_version_3_segment() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-v2");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let version =
        |name: &str| u32::from_le_bytes(std::fs::read(dir.path().join(name)).unwrap()[8..12].try_into().unwrap());
    assert_eq!((version(&segment_name(1)), version(&segment_name(10))), (2, 2));
    let options = JournalOptions { segment_bytes: 4096, zero_chunk_bytes: 512, ..JournalOptions::default() };
    let open = || Journal::open(Arc::new(DiskStorage::open(dir.path()).unwrap()), options).unwrap().0;
    let j = open();
    assert_eq!((j.head(), j.segments()), (15, 2));
    check_contents(&j);
    append_group(&j, 16, 3).unwrap();
    // The version 2 active segment was sealed; the group went to a new segment of this build's version.
    assert_eq!(j.segments(), 3);
    assert_eq!(j.locate(16).unwrap().0, dir.path().join(segment_name(16)));
    assert_eq!(version(&segment_name(16)), format::FORMAT_VERSION);
    let sealed = std::fs::read(dir.path().join(segment_name(10))).unwrap();
    assert!(format::decode_trailer(&sealed[sealed.len() - format::TRAILER_BYTES..]).is_ok());
    for g in 0..10 {
        append_group(&j, 19 + g * 3, 3).unwrap();
    }
    check_contents(&j);
    j.close().unwrap();
    drop(j);
    let j = open();
    assert_eq!(j.head(), 48);
    check_contents(&j);
}

/// A segment header of a version this build does not know is refused with a clear error naming the segment.
#[test]
fn a_segment_of_a_newer_format_version_is_refused_naming_it() {
    let disk = SimDisk::new(5);
    let j = sim_open(&disk, one_segment()).unwrap();
    append_group(&j, 1, 3).unwrap();
    j.close().unwrap();
    drop(j);
    let mut header = disk.contents(&segment_name(1)).unwrap()[..format::SEGMENT_HEADER_BYTES].to_vec();
    header[8..12].copy_from_slice(&(format::FORMAT_VERSION + 1).to_le_bytes());
    let crc = opossum::journal::format::segment_header_crc(&header);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    disk.poke(&segment_name(1), 0, &header);
    let err = sim_open(&disk, one_segment()).err().expect("a newer version is refused");
    let text = err.to_string();
    assert!(
        text.contains(&segment_name(1)) && text.contains(&format!("version {}", format::FORMAT_VERSION + 1)),
        "{text}"
    );
}
