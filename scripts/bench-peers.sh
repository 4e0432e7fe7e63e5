#!/usr/bin/env bash
# The peer benchmark (issue 14): opossumd beside UmaDB, same workloads, same run, alternating A B A B.
#
#   scripts/bench-peers.sh              # full: 1,000,000 events per store, 2 rounds
#   scripts/bench-peers.sh --quick      # smoke: 100,000 events, short phases (≤ 5 minutes once built)
#   scripts/bench-peers.sh --help       # every parameter of the driver (rounds, clients, directories, ...)
#   OPOSSUMD_ARGS="--sync-strategy syncfs" scripts/bench-peers.sh --quick   # extra opossumd flags for every
#                                       # opossum configuration (or --opossumd-arg=FLAG, repeatable)
#   scripts/bench-peers.sh --phases conditional --systems opossum,umadb --rounds 1
#                                       # one part of a run: --phases fill,tags,read,conditional,batched (default
#                                       # all; tags and read imply fill; without them the appends start on an empty
#                                       # store), --systems opossum,umadb,opossum-mirror-off (default all),
#                                       # --conditional-seconds (full: 30 s sustained), --seconds (other phases),
#                                       # --append-clients 1,16,64, --batch-clients 1,4, --events N
#
# To run the driver without this script (another opossumd, say), call it directly with absolute paths:
#   target/peer-bench/release/opossum-peer-bench --opossumd /path/to/opossumd \
#     --umadb target/peers/umadb-0.7.8/bin/umadb --dir /big/disk/dir --out /results/dir --phases batched ...
#
# What it needs it installs: protoc (apt-get install protobuf-compiler, as root) when missing, then UmaDB's server
# from crates.io into target/peers/umadb-<version>/ (reused when present; the first build takes ~12 minutes on 2
# cores). It builds opossumd (release) and the driver (crates/opossum-peer-bench: its own workspace and target
# directory, target/peer-bench, so UmaDB's gRPC client never enters the daemon's build), then runs the driver from
# the repository root: stores under target/bench/peers-tmp (one bench directory, one disk), results in
# target/bench/peers-<time>-<mode>.json and .png. Run it as root for cold reads after
# `echo 3 > /proc/sys/vm/drop_caches`; otherwise cold means posix_fadvise(DONTNEED) per file (the output says which).
#
# Disk state: on ext4 without a journal (this benchmark machine: mounted `discard`) creating a file costs ~700 µs
# instead of ~25-40 µs for minutes after a mass deletion (kernel: recently_deleted() skips recently freed inodes), and
# runs after one were 2-10x slower. Before every file-creating phase (fill, conditional, batched) the driver times
# 2,000 file creates in the bench directory and waits until they cost at most --disk-quiet-us (default 150 µs per
# file), re-checking every 30 s, for at most --disk-quiet-wait-secs (default 600; 0 only records). Every check is in
# the JSON (disk_checks) and under the table; a phase measured after the wait ran out is marked slow_disk /
# "(slow disk)". The stores are deleted at the end of the run (after the results are written), which slows the
# next run's file creation for minutes: --keep keeps them, to delete when nobody measures.
set -euo pipefail
cd "$(dirname "$0")/.."
umadb_version=0.7.8
target="${CARGO_TARGET_DIR:-target}"
umadb_root="$target/peers/umadb-$umadb_version"

if [[ ! -x "$umadb_root/bin/umadb" ]]; then
  if ! command -v protoc >/dev/null; then
    echo "== installing protobuf-compiler (UmaDB's build needs protoc)"
    if [[ $(id -u) -ne 0 ]]; then
      echo "protoc is missing and this is not root: apt-get install protobuf-compiler, then run again" >&2
      exit 1
    fi
    apt-get update -qq && apt-get install -y -qq protobuf-compiler
  fi
  echo "== cargo install umadb $umadb_version into $umadb_root (~12 minutes on 2 cores, once)"
  cargo install umadb --version "$umadb_version" --locked --root "$umadb_root" \
    || cargo install umadb --version "$umadb_version" --root "$umadb_root"
fi

echo "== building opossumd (release) and the driver"
cargo build --release --bin opossumd
cargo build --release --manifest-path crates/opossum-peer-bench/Cargo.toml --target-dir "$target/peer-bench"

exec "$target/peer-bench/release/opossum-peer-bench" \
  --opossumd "$target/release/opossumd" --umadb "$umadb_root/bin/umadb" \
  --out "$target/bench" --dir "$target/bench/peers-tmp" "$@"
