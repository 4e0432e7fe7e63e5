#!/usr/bin/env bash
# The whole test suite, as CI runs it: every test over io_uring with the default durability barriers (auto: syncfs
# while little else is dirty), then the store and daemon suites over the portable thread-pool backend with syncfs
# barriers, the store and daemon suites in journal commit mode with the mirror live and off, and the store suite over
# io_uring with per-file fsyncs (the projection and io suites loop over both
# backends themselves). Benchmarks run as quick smoke tests under `cargo test --all-targets`; they only measure for
# real under `cargo bench`.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== tests, io backend: uring, durability barriers: auto"
OPOSSUM_TEST_IO_BACKEND=uring OPOSSUM_TEST_SYNC_STRATEGY=auto cargo test --all-targets

echo "== store and daemon suites again, io backend: threads, durability barriers: syncfs"
OPOSSUM_TEST_IO_BACKEND=threads OPOSSUM_TEST_SYNC_STRATEGY=syncfs cargo test --test store --test daemon

echo "== store suite again, io backend: uring, durability barriers: per-file"
OPOSSUM_TEST_IO_BACKEND=uring OPOSSUM_TEST_SYNC_STRATEGY=per-file cargo test --test store

echo "== store and daemon suites again, commit mode: journal, mirror: live"
OPOSSUM_TEST_IO_BACKEND=uring OPOSSUM_TEST_COMMIT=journal OPOSSUM_TEST_MIRROR=live cargo test --test store --test daemon

echo "== store and daemon suites again, commit mode: journal, mirror: off"
OPOSSUM_TEST_IO_BACKEND=threads OPOSSUM_TEST_COMMIT=journal OPOSSUM_TEST_MIRROR=off cargo test --test store --test daemon

echo "== systemd units"
bash scripts/verify-systemd.sh
