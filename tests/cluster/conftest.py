"""Fixtures of the cluster tests: one native CeleryExecutor cluster per test module (tests/cluster/harness.py).

The cluster needs this machine's PostgreSQL and Redis (``MLOPS_TEST_PG_DSN``, ``MLOPS_TEST_REDIS_URL``
override where they are); without them the cluster tests are skipped, with the reason. Teardown kills
every process group and drops the databases whatever happened; a failed test keeps the processes' logs
and prints where they are.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import PG_DSN, REDIS_URL, NativeCluster


def services_available() -> str | None:
    """Why the cluster cannot start here (``None`` if it can)."""
    try:
        import psycopg2

        psycopg2.connect(PG_DSN, connect_timeout=3).close()
    except Exception as err:
        return f"PostgreSQL at {PG_DSN} is not reachable: {err}"
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as err:
        return f"Redis at {REDIS_URL} is not reachable: {err}"
    return None


FAILED = pytest.StashKey[list[str]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """Remember failures (the cluster then keeps its logs) and show the cluster's log tails with them."""
    report: pytest.TestReport = yield
    if report.failed:
        item.session.stash.setdefault(FAILED, []).append(item.nodeid)
        native = getattr(item, "funcargs", {}).get("cluster")
        if isinstance(native, NativeCluster):
            report.sections.append(("cluster processes", native.describe()))
    return report


# Module scope: only test_ct_cluster.py uses it, and the cluster's processes must not idle through the rest
# of the suite (the end-to-end tests that follow would compete with them for the CPUs).
@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[NativeCluster]:
    """A running cluster with two Celery workers (``worker1``, ``worker2``, one task slot each)."""
    reason = services_available()
    if reason:
        pytest.skip(reason)
    native = NativeCluster(workers=2, worker_concurrency=1)
    started = False
    try:
        native.start()
        started = True
        yield native
    finally:
        if not started:
            print(native.describe(), file=sys.stderr)
        native.stop(keep_logs=not started or bool(request.session.stash.get(FAILED, [])))
