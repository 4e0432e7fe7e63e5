#!/usr/bin/env bash
# The benchmark suite (issue 6): builds the release binaries, then `opossum-bench` (crates/opossum-bench) starts
# target/release/opossumd on
# a fresh temporary store under target/bench/tmp, seeds the course-management data set (1,000,000 events; --quick:
# 20,000), runs every workload over the socket beside raw-filesystem baselines, prints a Markdown table and writes
# target/bench/bench-<time>-<mode>.json.
#
#   scripts/bench.sh              # full run (~10 minutes on 2 cores)
#   scripts/bench.sh --quick      # smoke test (well under a minute)
#   scripts/bench.sh --help       # every parameter (events, clients, seconds, directories, ...)
#
# Run it as root to measure cold reads after `echo 3 > /proc/sys/vm/drop_caches`; otherwise cold means
# posix_fadvise(DONTNEED) on every file. The output says which.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
exec "${CARGO_TARGET_DIR:-target}/release/opossum-bench" "$@"
