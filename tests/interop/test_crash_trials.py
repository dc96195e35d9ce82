"""The crash-trial script (scripts/crash_trials.py) in a bounded run: kill -9 during
concurrent STOW-RS, C-STORE and offline uploads, then verify. Zero acknowledged instances
lost, zero index rows without objects, zero hash mismatches."""

import json
import subprocess
import sys

import pytest

from pacs import ROOT


def test_crash_trials(backend):
    pytest.importorskip("pynetdicom")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "crash_trials.py"), "--rounds", "3",
                        "--backend", backend.name, "--seed", "5"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["lost"] == 0 and summary["missing_rows"] == 0 and summary["mismatched"] == 0
    assert summary["acknowledged"] > 50 and all(n > 0 for n in summary["by_entry"].values()), summary
