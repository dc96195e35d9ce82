"""dicom3tools' dciodvfy, the IOD validator: the errors it reports for a file. Tests of the
objects pacs-lite writes itself use it; without it they are skipped (CI requires it with
PACS_TEST_REQUIRE_DCMTK, as it installs dicom3tools beside dcmtk)."""

import os
import shutil
import subprocess

import pytest

import optional


def errors(path) -> list[str]:
    """dciodvfy's error lines for a file."""
    missing = optional.dciodvfy_missing()
    if missing:
        if os.environ.get("PACS_TEST_REQUIRE_DCMTK"):
            raise RuntimeError(f"dciodvfy is required (PACS_TEST_REQUIRE_DCMTK), but {missing}")
        pytest.skip(missing)
    tool = shutil.which("dciodvfy")
    r = subprocess.run([tool, "-new", str(path)], capture_output=True, text=True)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]
