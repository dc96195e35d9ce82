#!/usr/bin/env bash
# pacs-lite against Orthanc in one run (scripts/bench.py; `scripts/bench.sh --help`), in the
# Python environment of the test suite (target/pytest-venv). When that environment is
# missing, scripts/pytest.sh makes it (asked only for pytest's version, so no tests run).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$root/target/pytest-venv/bin/python"
if [ ! -x "$py" ]; then
    "$root/scripts/pytest.sh" --version >&2
fi
exec "$py" "$root/scripts/bench.py" "$@"
