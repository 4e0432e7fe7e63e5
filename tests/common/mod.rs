//! Helpers shared by the integration-test crates (each includes this file with `#[path]`; Cargo builds no test
//! crate from a subdirectory's `mod.rs`).

use std::path::Path;

/// Copies the directory tree `from` into `to` (created): fixture stores are copied before a test opens them, so
/// the checked-in fixture is never changed.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
