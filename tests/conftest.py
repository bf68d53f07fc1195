"""Fixtures: the namespace test bed and the daemon inside it.

The end-to-end tests need root (network namespaces, multicast routing).
Under CI=true they must run: there, not being able to is a failure.
"""

import os

import pytest
from netbed import Daemon, NetBed


def require_root():
    if os.geteuid() == 0:
        return
    message = "end-to-end tests need root for network namespaces"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: they must run)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def bed():
    require_root()
    bed = NetBed()
    yield bed
    bed.close()


@pytest.fixture
def start(bed, tmp_path, request):
    """start(config, *args) runs the daemon in the router namespace; after
    the test it is stopped, and must exit with its expected_status."""
    daemons = request.node.daemons = []

    def start(config="", *args, wait=True, **options):
        daemon = Daemon(bed, config, args, workdir=str(tmp_path / str(len(daemons))), **options)
        daemons.append(daemon)
        return daemon.start(wait=wait)

    yield start
    for daemon in daemons:
        assert daemon.stop() == daemon.expected_status, daemon.log()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Show the daemons' logs with a failed test."""
    report = (yield).get_result()
    if report.failed:
        for n, daemon in enumerate(getattr(item, "daemons", ())):
            report.sections.append(("daemon %d log" % n, daemon.log()))
