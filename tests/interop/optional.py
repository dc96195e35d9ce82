"""The optional parts of the suite — the OHIF end-to-end test, the dcmtk DIMSE tests,
Orthanc as the forwarding upstream, the PostgreSQL + S3 backend — what each needs, whether
this machine has it, and whether the run requires it (CI sets PACS_TEST_REQUIRE_OHIF,
PACS_TEST_REQUIRE_DCMTK, PACS_TEST_REQUIRE_ORTHANC and PACS_TEST_BACKENDS). The tests skip or fail from these answers; conftest prints one line
per part at the top of the run."""

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
E2E = ROOT / "tests" / "e2e"
VIEWER = ROOT / "viewer-dist"


def dcmtk(tool):
    """dcmtk's own tool (pynetdicom installs Python apps of the same names)."""
    return f"/usr/bin/{tool}" if Path(f"/usr/bin/{tool}").exists() else shutil.which(tool)


def dcmtk_missing() -> str | None:
    if dcmtk("storescu"):
        return None
    return "dcmtk is not installed (Debian: apt-get install dcmtk)"


def dciodvfy_missing() -> str | None:
    if shutil.which("dciodvfy"):
        return None
    return "dciodvfy is not installed (Debian: apt-get install dicom3tools)"


def ohif_missing() -> str | None:
    missing = []
    if not (VIEWER / "index.html").exists():
        missing.append("viewer-dist (scripts/fetch-ohif.sh)")
    if not (E2E / "node_modules" / "playwright-core").exists():
        missing.append("playwright-core (npm ci in tests/e2e)")
    if not shutil.which("node") or not Path(os.environ.get("CHROMIUM", "/usr/bin/chromium")).exists():
        missing.append("node and chromium")
    return f"missing {', '.join(missing)}" if missing else None


def orthanc_missing() -> str | None:
    if not Path("/usr/sbin/Orthanc").exists():
        return "Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)"
    if not Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so").exists():
        return "Orthanc's DICOMweb plugin is not installed (Debian: apt-get install orthanc-dicomweb)"
    return None


def postgres_s3_missing() -> str | None:
    missing = []
    if not os.environ.get("PACS_TEST_PG_URL"):
        missing.append("PACS_TEST_PG_URL is not set")
    if not shutil.which("s3s-fs"):
        missing.append("s3s-fs is not installed (cargo install s3s-fs --version 0.14.1 --features binary)")
    return "; ".join(missing) or None


def backend_names() -> list[str]:
    """The backends every test runs on: PACS_TEST_BACKENDS, or what this machine has."""
    names = os.environ.get("PACS_TEST_BACKENDS")
    if names:
        return [n.strip() for n in names.split(",") if n.strip()]
    return ["sqlite-fs"] + ([] if postgres_s3_missing() else ["postgres-s3"])


def summary() -> list[str]:
    """One line per optional part: runs, skipped and why, or required but missing."""
    def line(part, missing, required_by):
        if not missing:
            return f"optional {part}: runs"
        if required_by:
            return f"optional {part}: required by {required_by}, but {missing}: its tests fail"
        return f"optional {part}: skipped, {missing}"

    explicit = os.environ.get("PACS_TEST_BACKENDS")
    if explicit and "postgres-s3" not in backend_names():
        postgres = f"optional PostgreSQL + S3 backend: skipped, PACS_TEST_BACKENDS={explicit}"
    else:
        postgres = line("PostgreSQL + S3 backend", postgres_s3_missing(), "PACS_TEST_BACKENDS" if explicit else None)
    return [
        line("OHIF end-to-end test", ohif_missing(),
             "PACS_TEST_REQUIRE_OHIF" if os.environ.get("PACS_TEST_REQUIRE_OHIF") else None),
        line("dcmtk DIMSE tests", dcmtk_missing(),
             "PACS_TEST_REQUIRE_DCMTK" if os.environ.get("PACS_TEST_REQUIRE_DCMTK") else None),
        line("dciodvfy checks of the objects we write", dciodvfy_missing(),
             "PACS_TEST_REQUIRE_DCMTK" if os.environ.get("PACS_TEST_REQUIRE_DCMTK") else None),
        line("Orthanc as the forwarding upstream", orthanc_missing(),
             "PACS_TEST_REQUIRE_ORTHANC" if os.environ.get("PACS_TEST_REQUIRE_ORTHANC") else None),
        postgres,
    ]
