#!/usr/bin/env bash
# Run every test: the Rust unit tests, the layer check, then the black-box suite
# (tests/interop, through scripts/pytest.sh, which makes and reuses its own Python
# environment in target/pytest-venv) that drives the release binary with real clients
# (dicomweb-client, requests, pynetdicom, dcmtk, the CLI).
#
# Backends: SQLite + filesystem always; PostgreSQL + S3 (s3s-fs) too when
# PACS_TEST_PG_URL is set and s3s-fs is installed, or as PACS_TEST_BACKENDS lists them.
# Optional parts (OHIF, dcmtk, PostgreSQL + S3) that cannot run here are skipped, each
# with one line saying why at the top of pytest's output, unless PACS_TEST_REQUIRE_OHIF /
# PACS_TEST_REQUIRE_DCMTK / PACS_TEST_BACKENDS require them (CI: .ci/run).
# Extra arguments go to pytest (e.g. `scripts/test.sh -k stow -x`).
#
# With PACS_TEST_FUZZ_SECONDS=N (CI: 60) every fuzz target then runs for N seconds
# (scripts/fuzz.sh; needs cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
cargo test --locked
python3 scripts/check_layers.py
fuzz_seconds=${PACS_TEST_FUZZ_SECONDS:-0}
if [ "$fuzz_seconds" = 0 ]; then
    echo "optional fuzzing: skipped, PACS_TEST_FUZZ_SECONDS is not set (CI runs every target 60 s)"
fi
scripts/pytest.sh "$@"
if [ "$fuzz_seconds" != 0 ]; then
    scripts/fuzz.sh "$fuzz_seconds"
fi
