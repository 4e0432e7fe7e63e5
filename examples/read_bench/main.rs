//! Batch-read benchmark: N small event files (300–800 B) read with sequential `std::fs::read`, the thread pool
//! and io_uring, warm and cold, all in one run. Driven by `scripts/read-bench.sh`.
//!
//! ```text
//! cargo run --release --example read_bench -- --n 100000 --mode both [--dir D] [--keep] [--rounds 3]
//!     [--threads 32] [--seq-cold-max 50000] [--uring "name:depth=256,rings=2,direct=1,regbuf=1,relative=1,coop=1;..."]
//! ```

#[cfg(target_os = "linux")]
mod linux;

fn main() {
    #[cfg(target_os = "linux")]
    linux::main();
    #[cfg(not(target_os = "linux"))]
    eprintln!("read_bench compares io_uring with the thread pool: it runs on Linux only");
}
