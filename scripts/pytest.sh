#!/usr/bin/env bash
# The black-box suite (tests/interop) in a Python environment of its own: a venv in
# target/pytest-venv installed from the pinned tests/requirements.txt. It is made on the
# first run and reused while its stamp (the SHA-256 of requirements.txt and the Python
# version) still matches and it still imports pytest; otherwise it is made again. Only
# python3 with its venv module is needed (Debian: the python3-venv package).
#
# scripts/test.sh runs this after the Rust tests. On its own it tests the binary at
# PACS_BIN (default: target/release/pacs-lite, as `cargo build --release` leaves it).
# Arguments go to pytest (e.g. `scripts/pytest.sh -k stow -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=target/pytest-venv
stamp=$venv/requirements.stamp

mkdir -p target
exec 9>target/pytest-venv.lock
flock 9   # two runs at once make the venv once
want="$(sha256sum tests/requirements.txt | cut -d' ' -f1) python $("$python" -c 'import platform; print(platform.python_version())')"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] || ! "$venv/bin/python" -c 'import pytest' 2>/dev/null; then
    echo "== making the test environment $venv from tests/requirements.txt"
    rm -rf "$venv"
    if ! "$python" -m venv "$venv"; then
        echo "$python -m venv failed: on Debian or Ubuntu install python3-venv (apt-get install python3-venv)" >&2
        exit 1
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r tests/requirements.txt
    echo "$want" > "$stamp"
fi
flock -u 9
exec 9>&-

# tests/pytest.ini names tests/interop; the repository's top is the root directory.
exec "$venv/bin/python" -m pytest -c tests/pytest.ini --rootdir . "$@"
