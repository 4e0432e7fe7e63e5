#!/usr/bin/env bash
# The whole test suite, as CI runs it: every test in files commit mode over io_uring with the default durability
# barriers (auto: syncfs while little else is dirty), then the store and daemon suites in files mode over the portable
# thread-pool backend with syncfs barriers, the store suite in files mode over io_uring with per-file fsyncs, and the
# store and daemon suites in journal commit mode (the default) with the mirror live and off (the projection and io
# suites loop over both backends themselves). Every pass names its commit mode: OPOSSUM_TEST_COMMIT unset means the
# library's default (journal, mirror live), and tests of the files protocol skip by name outside files mode. The first pass
# covers the workspace: the daemon's package and the benchmark crate (crates/opossum-bench: its unit tests,
# `opossum-bench --quick` against the real daemon, store_bench as a smoke run); the peer benchmark
# (crates/opossum-peer-bench) is outside the workspace and never built here. Benchmarks run as quick smoke tests
# under `cargo test --all-targets`; they only measure for real under `cargo bench`.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== tests, commit mode: files, io backend: uring, durability barriers: auto"
OPOSSUM_TEST_COMMIT=files OPOSSUM_TEST_IO_BACKEND=uring OPOSSUM_TEST_SYNC_STRATEGY=auto cargo test --workspace --all-targets

echo "== store and daemon suites again, commit mode: files, io backend: threads, durability barriers: syncfs"
OPOSSUM_TEST_COMMIT=files OPOSSUM_TEST_IO_BACKEND=threads OPOSSUM_TEST_SYNC_STRATEGY=syncfs cargo test --test store --test daemon

echo "== store suite again, commit mode: files, io backend: uring, durability barriers: per-file"
OPOSSUM_TEST_COMMIT=files OPOSSUM_TEST_IO_BACKEND=uring OPOSSUM_TEST_SYNC_STRATEGY=per-file cargo test --test store

echo "== store and daemon suites again, commit mode: journal, mirror: live"
OPOSSUM_TEST_IO_BACKEND=uring OPOSSUM_TEST_COMMIT=journal OPOSSUM_TEST_MIRROR=live cargo test --test store --test daemon

echo "== store and daemon suites again, commit mode: journal, mirror: off"
OPOSSUM_TEST_IO_BACKEND=threads OPOSSUM_TEST_COMMIT=journal OPOSSUM_TEST_MIRROR=off cargo test --test store --test daemon

echo "== systemd units"
bash scripts/verify-systemd.sh
