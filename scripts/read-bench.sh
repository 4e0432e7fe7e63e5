#!/usr/bin/env bash
# Batch-read benchmark at N = 100,000 and 1,000,000 files (300–800 B), warm and cold, all from one run:
# files/s for sequential std::fs::read, the 32-thread pool and the io_uring backend, and the uring/threads ratios.
#
#   scripts/read-bench.sh                 # N = 100000 and 1000000
#   scripts/read-bench.sh --quick         # N = 2000 only (smoke test)
#   scripts/read-bench.sh -n 50000 [-n …] # explicit sizes
#   READ_BENCH_DIR=/path scripts/read-bench.sh   (default target/bench/read-bench; deleted afterwards)
#   READ_BENCH_ARGS="--rounds 5 --uring 'a:depth=64;b:depth=256'" scripts/read-bench.sh
#
# Cold cache: `sync; echo 3 > /proc/sys/vm/drop_caches` when root, else posix_fadvise(DONTNEED) on every file;
# the output says which. Cold sequential is measured on the first 50,000 files (it runs at ~10k files/s).
set -euo pipefail
cd "$(dirname "$0")/.."

sizes=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) sizes=(2000) ;;
    -n|--n) sizes+=("$2"); shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[[ ${#sizes[@]} -gt 0 ]] || sizes=(100000 1000000)
dir="${READ_BENCH_DIR:-${CARGO_TARGET_DIR:-target}/bench/read-bench}"
trap 'rm -rf "$dir"' EXIT

cargo build --release -p opossum-bench --example read_bench
bin="${CARGO_TARGET_DIR:-target}/release/examples/read_bench"
echo "kernel $(uname -r), $(nproc) cores, open-file limit $(ulimit -n), user $(id -un)"
for n in "${sizes[@]}"; do
  # shellcheck disable=SC2086
  eval "\"$bin\" --n $n --mode both --dir \"$dir\" ${READ_BENCH_ARGS:-}"
done
