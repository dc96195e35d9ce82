#!/usr/bin/env bash
# Run every test: the Rust unit tests, then the black-box suite (tests/interop) that
# drives the release binary with real clients (dicomweb-client, requests, the CLI).
#
# Backends: SQLite + filesystem always; PostgreSQL + S3 (s3s-fs) too when
# PACS_TEST_PG_URL is set and s3s-fs is installed, or as PACS_TEST_BACKENDS lists them.
# Extra arguments go to pytest (e.g. `scripts/test.sh -k stow -x`).
#
# With PACS_TEST_FUZZ_SECONDS=N (CI: 60) every fuzz target then runs for N seconds
# (scripts/fuzz.sh; needs cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
cargo test --locked
python3 -m pytest "$@"
if [ "${PACS_TEST_FUZZ_SECONDS:-0}" != 0 ]; then
    scripts/fuzz.sh "$PACS_TEST_FUZZ_SECONDS"
fi
