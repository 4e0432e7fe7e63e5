//! Helpers shared by the integration-test crates (each includes this file with `#[path]`; Cargo builds no test
//! crate from a subdirectory's `mod.rs`).

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

/// Copies the directory tree `from` into `to` (created): fixture stores are copied before a test opens them, so
/// the checked-in fixture is never changed.
pub fn copy_dir(from: &Path, to: &Path) {
    copy_dir_except(from, to, &[]);
}

/// [`copy_dir`] leaving out the files (at any depth) named in `skip`.
pub fn copy_dir_except(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_dir_except(&entry.path(), &target, skip);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// How often [`spawn_retrying`] tries before it fails the test.
const SPAWN_ATTEMPTS_MAX: u32 = 20;

/// Spawns `command`, retrying a failed spawn with a short pause. Why: under Wine, `CreateProcess` now and then fails
/// with `ERROR_INTERNAL_ERROR` (1359) right after the crash tests have killed a child (CI, session 9: one spawn in a
/// 50-cycle run). A spawn that fails has started nothing, so trying again changes nothing the test checks; a spawn
/// that keeps failing still fails the test, with the last error.
pub fn spawn_retrying(command: &mut Command) -> Child {
    let mut attempt = 1;
    loop {
        match command.spawn() {
            Ok(child) => return child,
            Err(e) if attempt < SPAWN_ATTEMPTS_MAX => {
                eprintln!("spawn attempt {attempt} failed ({e}); trying again");
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
            }
            Err(e) => panic!("spawning {command:?} failed {attempt} times, last: {e}"),
        }
    }
}

/// Opens `.store.lock` the way .NET Opossum holds it for an append: `FileShare.None` on Windows (share mode 0),
/// an exclusive `flock` on Unix. `Err` when another process (or store) holds it. Dropping the handle releases it.
#[allow(dead_code)] // not every test crate that includes this file takes the lock
pub fn hold_like_dotnet(root: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(windows)]
    std::os::windows::fs::OpenOptionsExt::share_mode(&mut options, 0);
    let file = options.open(root.join(opossum::format::LOCK_FILE))?;
    #[cfg(not(windows))]
    file.try_lock().map_err(std::io::Error::from)?;
    Ok(file)
}
