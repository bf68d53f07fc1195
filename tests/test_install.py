"""Installing it like SMCRoute: `./build.sh install` into a temporary root
gives the programs, the man page, the systemd unit and the example config;
the installed daemon runs under the unit's own command lines; `uninstall`
undoes it.  And the zipapp needs nothing but shiv to build, even offline."""

import os
import shlex
import signal
import stat
import subprocess
import sys

import pytest
from netbed import DAEMON, wait_for

ROOT = os.path.dirname(DAEMON)
PREFIX = "/usr"
SG = "mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1\n"


def build_sh(*args, root, env=None):
    ran = subprocess.run(["./build.sh"] + list(args), cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, DESTDIR=str(root), VENV=sys.prefix, **(env or {})))
    assert ran.returncode == 0, ran.stderr
    return ran


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    build_sh("install", PREFIX, root=root)
    return root


def unit(root):
    """The [Service] settings of the installed unit."""
    settings = {}
    with open(str(root / "etc/systemd/system/smcroute.service")) as text:
        for line in text:
            key, equals, value = line.strip().partition("=")
            if equals and not line.startswith("#"):
                settings[key] = value
    return settings


def test_install_puts_everything_where_smcroute_has_it(installed):
    sbin = installed / "usr/sbin"
    assert stat.S_IMODE(os.stat(str(sbin / "smcroute")).st_mode) == 0o755
    assert os.readlink(str(sbin / "smcrouted")) == "smcroute"
    assert os.readlink(str(sbin / "smcroutectl")) == "smcroute"
    with open(str(sbin / "smcroute"), "rb") as pyz:
        assert pyz.readline() == b"#!/usr/bin/env python3\n"
    man8 = installed / "usr/share/man/man8"
    assert (man8 / "smcroute.8").read_bytes() == open(os.path.join(ROOT, "smcroute.8"), "rb").read()
    assert os.readlink(str(man8 / "smcrouted.8")) == "smcroute.8"
    assert (installed / "etc/smcroute.conf").read_text() == open(os.path.join(ROOT, "smcroute.conf")).read()
    service = unit(installed)
    assert service["Type"] == "notify"
    assert service["EnvironmentFile"] == "-/etc/default/smcroute"        # as Debian's
    assert service["ExecStart"] == "/usr/sbin/smcrouted -n -s $SMCROUTED_OPTS $SMCROUTED_ARGS"
    assert service["ExecReload"] == "/usr/sbin/smcroutectl reload"


def test_the_installed_daemon_runs_under_the_units_command_lines(bed, installed, tmp_path):
    """As systemd would: $SMCROUTED_OPTS from /etc/default/smcroute, the
    notify socket, then ExecReload, and SIGTERM to stop."""
    conf, sock, pid = tmp_path / "smcroute.conf", tmp_path / "smcroute.sock", tmp_path / "smcroute.pid"
    conf.write_text(SG)
    env = {"SMCROUTED_OPTS": "-f %s -P %s" % (conf, pid), "SMCROUTED_ARGS": ""}
    service = unit(installed)

    def command(line):
        words = [os.path.expandvars(word) if word.startswith("$") else word for word in shlex.split(line)]
        words = " ".join(words).split()          # systemd splits an unquoted $VAR at spaces
        return ["ip", "netns", "exec", bed.ns("rtr"), str(installed) + words[0]] + words[1:]

    os.environ.update(env)
    try:
        daemon = subprocess.Popen(command(service["ExecStart"]) + ["-u", str(sock)],
                                  stderr=subprocess.PIPE, text=True)
        wait_for(lambda: pid.exists() or daemon.poll() is not None, timeout=10)
        assert "225.1.2.3" in bed.mroutes(4)
        conf.write_text(SG.replace("225.1.2.3", "225.4.5.6"))
        reload = subprocess.run(command(service["ExecReload"]) + ["-u", str(sock)], capture_output=True)
        assert reload.returncode == 0
        assert "225.4.5.6" in bed.mroutes(4) and "225.1.2.3" not in bed.mroutes(4)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
    finally:
        for key in env:
            del os.environ[key]
    assert "nothing listens on /dev/log" in daemon.stderr.read()      # -s, and no syslog here


def test_uninstall_undoes_install_and_keeps_an_edited_config(tmp_path):
    build_sh("install", PREFIX, root=tmp_path)
    (tmp_path / "etc/default").mkdir(parents=True)
    build_sh("uninstall", PREFIX, root=tmp_path)
    left = [os.path.join(folder, name) for folder, _, names in os.walk(str(tmp_path)) for name in names]
    assert left == []
    build_sh("install", PREFIX, root=tmp_path)
    with open(str(tmp_path / "etc/smcroute.conf"), "a") as conf:
        conf.write("mgroup from eth0 group 225.9.9.9\n")
    build_sh("uninstall", PREFIX, root=tmp_path)
    left = [os.path.join(folder, name) for folder, _, names in os.walk(str(tmp_path)) for name in names]
    assert left == [str(tmp_path / "etc/smcroute.conf")]


def test_the_zipapp_builds_with_shiv_alone_and_offline(tmp_path):
    """No test venv, no network: shiv on PATH is all it takes."""
    output = tmp_path / "smcroute.pyz"
    env = dict(os.environ, VENV=str(tmp_path / "no-venv"), BUILD_VENV=str(tmp_path / "no-build-venv"),
               PATH=os.path.dirname(sys.executable) + ":/usr/bin:/bin")
    ran = subprocess.run(["unshare", "--net", "./build.sh", "pyz", str(output)], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert not (tmp_path / "no-venv").exists() and not (tmp_path / "no-build-venv").exists()
    shown = subprocess.run(["/usr/bin/python3", "-c", "import sys; sys.path.insert(0, %r); import smcroute; "
                            "print(smcroute.__file__)" % (str(output) + "/site-packages")],
                           capture_output=True, text=True)
    assert shown.stdout.endswith("site-packages/smcroute.pyc\n")        # its bytecode, not compiled again
