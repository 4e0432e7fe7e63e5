#!/usr/bin/env bash
# The whole test suite, as CI runs it: every test over the default backend (io_uring where the kernel allows it),
# the store suite again over the portable thread-pool backend. Benchmarks run as quick smoke tests under
# `cargo test --all-targets` (they only measure for real under `cargo bench`).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== tests, io backend: uring"
OPOSSUM_TEST_IO_BACKEND=uring cargo test --all-targets

echo "== store tests again, io backend: threads"
OPOSSUM_TEST_IO_BACKEND=threads cargo test --test store



