//! Page-cache eviction and the raw sequential-read baseline shared by the projection benchmarks.

use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
pub enum Evict {
    DropCaches,
    Fadvise,
}

pub fn evict_method() -> Evict {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok() {
        Evict::DropCaches
    } else {
        Evict::Fadvise
    }
}

pub fn evict(method: Evict, files: &[PathBuf]) {
    match method {
        Evict::DropCaches => {
            // SAFETY: sync has no preconditions.
            unsafe { libc::sync() };
            std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches");
        }
        Evict::Fadvise => {
            use std::os::fd::AsRawFd;
            for f in files {
                let file = std::fs::File::open(f).expect("open");
                // SAFETY: the descriptor is open for the duration of the call; fadvise only drops clean pages.
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            }
        }
    }
}

pub fn raw_read(files: &[PathBuf]) -> (Duration, usize) {
    let t = Instant::now();
    let mut bytes = 0;
    for f in files {
        bytes += std::fs::read(f).expect("read").len();
    }
    (t.elapsed(), bytes)
}
