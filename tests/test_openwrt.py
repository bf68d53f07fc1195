"""The OpenWrt package: its Makefile installs the right files, and its procd
init script, run by busybox sh against stand-ins for rc.common and procd
(tests/openwrt/), starts, reloads and stops the real daemon."""

import os
import shutil
import subprocess
import sys

import pytest
from netbed import DAEMON, HERE, run

ROOT = os.path.dirname(DAEMON)
PACKAGE = os.path.join(ROOT, "openwrt")
INIT = os.path.join(PACKAGE, "files", "smcroute.init")
STANDIN = os.path.join(HERE, "openwrt")
SHELLCHECK = shutil.which("shellcheck", path=os.path.dirname(sys.executable)) or "shellcheck"


def make(*args):
    return run("make", "-s", "-C", PACKAGE, "TOPDIR=" + STANDIN, *args).stdout


def test_shell_scripts_are_clean_for_busybox_ash():
    result = run(SHELLCHECK, "-s", "busybox", INIT, os.path.join(STANDIN, "rc.common"),
                 os.path.join(STANDIN, "procd.sh"), check=False)
    assert result.returncode == 0, result.stdout


def test_package_metadata():
    assert make("info").splitlines() == \
        ["PKGARCH=all", "DEPENDS=+python3-light", "CONFFILES=/etc/smcroute.conf"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package's files, as its install recipe puts them."""
    work = tmp_path_factory.mktemp("openwrt")
    make("BUILD_DIR=%s" % (work / "build"), "DESTDIR=%s" % (work / "root"), "install")
    return work / "root"


def test_install_recipe_puts_the_right_files_with_the_right_modes(installed):
    files = {str(p.relative_to(installed)): oct(p.stat().st_mode & 0o7777)
             for p in installed.rglob("*") if p.is_file()}
    assert files == {"usr/sbin/smcroute": "0o755", "etc/init.d/smcroute": "0o755",
                     "etc/smcroute.conf": "0o600"}
    for installed_file, source in [("usr/sbin/smcroute", DAEMON), ("etc/init.d/smcroute", INIT),
                                   ("etc/smcroute.conf", os.path.join(ROOT, "smcroute.conf"))]:
        with open(source, "rb") as original:
            assert (installed / installed_file).read_bytes() == original.read()


# In a private mount namespace: the installed package over /etc and
# /usr/sbin, the stand-in rc.common at /etc/rc.common, the config a file of
# the test's, and a /var/run of its own that still shows the test's
# network namespaces.  Then the init script, run as procd would run it.
SCENARIO = r"""
root=$1 work=$2
mkdir -p "$work/etc" "$work/netns"
cp "$PROCD_STANDIN/rc.common" "$work/etc/rc.common"
mount -t overlay overlay -o "lowerdir=$root/etc:$work/etc:/etc" /etc
mount -t overlay overlay -o "lowerdir=$root/usr/sbin:/usr/sbin" /usr/sbin
mount --bind "$work/smcroute.conf" /etc/smcroute.conf
mount --rbind /run/netns "$work/netns"
mount -t tmpfs tmpfs /run
mkdir /run/netns
mount --move "$work/netns" /run/netns

rc() { busybox sh /etc/rc.common /etc/init.d/smcroute "$1"; }
mroutes() { ip netns exec "$NETNS" ip mroute; }
wait_for() {
    tries=0
    until eval "$1"; do
        tries=$((tries + 1))
        [ $tries -lt 200 ] || { echo "timed out: $1"; cat "$PROCD_STATE/log"; exit 1; }
        sleep 0.05
    done
}

rc start
wait_for '[ -S /var/run/smcroute ]'
echo "== start $(cat "$PROCD_STATE/pid")"
mroutes

echo 'mroute from a1 source 10.0.0.1 group 225.2.2.2 to b1' >/etc/smcroute.conf
rc reload
wait_for 'mroutes | grep -q 225.2.2.2'
echo "== reload $(cat "$PROCD_STATE/pid")"
mroutes

echo 'mroute from a1 source 10.0.0.1 group 225.3.3.3 to b2' >/etc/smcroute.conf
rc start
wait_for 'mroutes | grep -q 225.3.3.3'
echo "== start-again $(cat "$PROCD_STATE/pid")"
mroutes
/usr/sbin/smcroute -u /var/run/smcroute show groups >/dev/null

rc stop
echo "== stop"
mroutes
ls /var/run
"""


def sections(output):
    """'== name arg' headed sections -> {name: (arg, [lines])}."""
    found, name = {}, None
    for line in output.splitlines():
        if line.startswith("== "):
            name, _, arg = line[3:].partition(" ")
            found[name] = (arg, [])
        elif name:
            found[name][1].append(line)
    return found


def test_init_script_starts_reloads_and_stops_the_daemon(bed, installed, tmp_path):
    (tmp_path / "smcroute.conf").write_text("mroute from a1 source 10.0.0.1 group 225.1.1.1 to b1 b2\n")
    state = tmp_path / "procd"
    state.mkdir()
    env = dict(os.environ, NETNS=bed.ns("rtr"), PROCD_STANDIN=STANDIN, PROCD_STATE=str(state))
    ran = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", SCENARIO,
                          "scenario", str(installed), str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=60)
    daemon_log = (state / "log").read_text() if (state / "log").exists() else ""
    assert ran.returncode == 0, ran.stdout + ran.stderr + daemon_log
    steps = sections(ran.stdout)

    pid, routes = steps["start"]
    assert [r.split()[0] for r in routes] == ["(10.0.0.1,225.1.1.1)"]
    assert "Oifs: b1 b2" in routes[0]
    # reload and a start with an edited config both HUP the same process
    assert steps["reload"][0] == pid and steps["start-again"][0] == pid
    assert [r.split()[0] for r in steps["reload"][1]] == ["(10.0.0.1,225.2.2.2)"]
    assert [r.split()[0] for r in steps["start-again"][1]] == ["(10.0.0.1,225.3.3.3)"]
    left = steps["stop"][1]                         # ip mroute, then ls /var/run
    assert not [line for line in left if line.startswith("(") or "smcroute" in line]

    calls = (state / "calls").read_text().splitlines()
    assert calls[:9] == [
        "open_instance",
        "set_param command /usr/sbin/smcroute -n -f /etc/smcroute.conf -u /var/run/smcroute "
        "-P /var/run/smcroute.pid",
        "set_param file /etc/smcroute.conf",
        "set_param reload_signal HUP",
        "set_param respawn",
        "set_param stdout 1",
        "set_param stderr 1",
        "close_instance",
        "started " + pid,
    ]
    assert not [c for c in calls if c.startswith("add_raw_trigger")]   # it follows interfaces itself
    assert "send_signal smcroute * HUP" in calls
    assert calls.count("signal HUP") == 1 and calls[-1] == "kill"
    assert "smcroute: notice: reload /etc/smcroute.conf: 1 routes" in daemon_log
