import os
import shutil

import pytest

import optional
from pacs import Backend, Pacs, S3Server


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
        return p.start() if start else p

    yield make
    for p in servers:
        p.cleanup()


@pytest.fixture
def pacs(make_pacs):
    return make_pacs()
