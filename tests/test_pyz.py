"""The zipapp: built reproducibly by build.sh with shiv, and run where
routers run it: read-only root, no home, `python3 -I`."""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from netbed import DAEMON

ROOT = os.path.dirname(DAEMON)


def build(output, umask=0o022):
    env = dict(os.environ, VENV=sys.prefix)
    subprocess.run(["sh", "-c", "umask %o && exec ./build.sh pyz %s" % (umask, output)],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    with open(output, "rb") as pyz:
        return pyz.read()


@pytest.fixture(scope="module")
def pyz(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pyz") / "smcroute.pyz")
    build(path)
    return path


def test_build_is_reproducible(pyz, tmp_path):
    again = build(str(tmp_path / "again.pyz"), umask=0o077)
    with open(pyz, "rb") as first:
        assert hashlib.sha256(first.read()).digest() == hashlib.sha256(again).digest()


def test_runs_by_its_shebang(pyz):
    with open(pyz, "rb") as archive:
        assert archive.readline() == b"#!/usr/bin/env python3\n"
    assert os.access(pyz, os.X_OK)
    assert subprocess.run([pyz, "-v"], capture_output=True, text=True).stdout == "smcroute.py 0.1.0\n"


def read_only_root(script):
    """Run a shell script in a private mount namespace whose root, /tmp
    included, is read-only; /mnt is the one writable place."""
    require = "mount -o remount,ro,bind / && mount -t tmpfs none /mnt && "
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec",
                           require + script], capture_output=True, text=True, timeout=30)


def test_runs_on_a_read_only_root_without_home_isolated(pyz, tmp_path):
    conf = tmp_path / "ok.conf"
    conf.write_text("mgroup from lo group 225.1.2.3\n")
    ran = read_only_root("! touch /tmp/probe 2>/dev/null; env -u HOME %s -I %s -v; "
                         "env -u HOME %s -I %s -F %s"
                         % (sys.executable, pyz, sys.executable, pyz, conf))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "smcroute.py 0.1.0\n"


def test_runs_as_a_user_without_a_home(pyz):
    """nobody, with no HOME, and the system's python3 (ours lives under /root)."""
    shared = tempfile.mkdtemp()
    try:
        os.chmod(shared, 0o755)
        copy = shutil.copy(pyz, shared)
        ran = subprocess.run(["env", "-u", "HOME", "setpriv", "--reuid=65534", "--regid=65534",
                              "--clear-groups", "/usr/bin/python3", "-I", copy, "-v"],
                             capture_output=True, text=True)
    finally:
        shutil.rmtree(shared)
    assert (ran.returncode, ran.stdout) == (0, "smcroute.py 0.1.0\n"), ran.stderr


def test_the_daemon_runs_from_the_pyz_on_a_read_only_root(bed, pyz, tmp_path):
    conf = tmp_path / "smcroute.conf"
    conf.write_text("mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1 b2\n")
    python = "env -u HOME %s -I %s" % (sys.executable, pyz)
    ran = read_only_root(
        "ip netns exec {ns} {py} -f {conf} -u /mnt/sock -P /mnt/pid & "
        "while [ ! -e /mnt/pid ]; do sleep 0.05; done; "
        "{py} -u /mnt/sock show; ip netns exec {ns} ip mroute; {py} -u /mnt/sock -k; wait"
        .format(ns=bed.ns("rtr"), py=python, conf=conf))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[1].split() == \
        ["static", "10.0.0.1", "225.1.2.3", "a1", "0", "0", "b1", "b2"]
    assert "(10.0.0.1,225.1.2.3)" in ran.stdout
