"""PostgreSQL fixtures shared by the whole test suite.

One throwaway cluster is started per test run (``pg_cluster``), from the local
PostgreSQL binaries, on a free loopback port, in a temporary directory that is
removed at the end. ``demo_target`` provisions the demo database on it (tables,
grant roles, the marker role and the least-privilege ``dbaccess_admin``), and
``admin_conn`` hands each test a fresh autocommit superuser connection to the
demo database for setting things up and checking what happened.
``pg_tmp_dir`` is a test's own temporary directory the ``postgres`` OS user can
reach (``make_tmp_dir``), removed when the test ends.

The machine's own PostgreSQL (if any) is never touched: everything goes through
the cluster started here.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from server.demo.provision import DemoTarget, provision_demo
from server.pgcluster import LocalCluster


def make_tmp_dir(prefix: str) -> Path:
    """A fresh temporary directory that the ``postgres`` OS user can traverse.

    mkdtemp creates 0700 directories; when the tests run as root the cluster runs
    as ``postgres``, which must be able to reach the data directory inside.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


@pytest.fixture
def pg_tmp_dir() -> Iterator[Path]:
    """A fresh ``make_tmp_dir`` for one test (a broker's data, a policy, a cluster's
    files), removed with all it holds when the test ends."""
    path = make_tmp_dir("dbaccess-test-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[LocalCluster]:
    """A started LocalCluster (superuser ``postgres``), stopped and removed after the run."""
    base = make_tmp_dir("dbaccess-pg-")
    cluster = LocalCluster(base / "cluster")
    try:
        with cluster:
            yield cluster
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_target(pg_cluster: LocalCluster) -> DemoTarget:
    """The demo database on ``pg_cluster``, with the admin DSN the issuer uses."""
    return provision_demo(pg_cluster)


@pytest.fixture
def admin_conn(
    pg_cluster: LocalCluster, demo_target: DemoTarget
) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit superuser connection to the demo database, closed after the test."""
    with psycopg.connect(pg_cluster.dsn(dbname=demo_target.database), autocommit=True) as conn:
        yield conn
