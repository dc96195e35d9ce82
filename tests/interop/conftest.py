import os
import shutil

import pytest

import optional
from pacs import Backend, Pacs, S3Server


# Servers of the test running now, so that a failure's report can show their logs.
_running: list[Pacs] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report ends with the last lines of each of its servers' logs: a
    failure seen only in CI can then be read from CI's output."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for n, p in enumerate(_running):
        try:
            lines = (p.dir / "server.log").read_text(errors="replace").splitlines()
        except OSError:
            continue
        report.sections.append((f"pacs-lite server {n} log (last 80 lines)", "\n".join(lines[-80:])))


def pytest_report_header(config):
    """One line per optional part of the suite, before the tests: runs, or why not."""
    return optional.summary()


@pytest.fixture(scope="session")
def s3():
    if not shutil.which("s3s-fs"):
        pytest.fail("s3s-fs is not installed (cargo install s3s-fs --version 0.14.1 --features binary)")
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture(params=optional.backend_names())
def backend(request):
    if request.param == "sqlite-fs":
        return Backend("sqlite-fs")
    if request.param == "postgres-s3":
        url = os.environ.get("PACS_TEST_PG_URL")
        if not url:
            pytest.fail("PACS_TEST_PG_URL is not set")
        return Backend("postgres-s3", pg_url=url, s3=request.getfixturevalue("s3"))
    raise ValueError(f"unknown backend {request.param}")


@pytest.fixture
def make_pacs(backend):
    """Factory for servers on the test's backend; all are stopped at the end."""
    servers = []

    def make(extra_env=None, start=True):
        p = Pacs(backend, extra_env)
        servers.append(p)
        _running.append(p)
        return p.start() if start else p

    yield make
    # Every server is cleaned up and forgotten, even when one's cleanup fails.
    errors = []
    for p in servers:
        try:
            p.cleanup()
        except Exception as e:  # noqa: BLE001 - raised below, after the others
            errors.append(e)
        finally:
            _running.remove(p)
    if errors:
        raise errors[0]


@pytest.fixture
def pacs(make_pacs):
    return make_pacs()
