"""End to end: starting, reloading and stopping the daemon, and what it
leaves behind."""

import json
import os
import signal
import subprocess
import sys

import pytest
from netbed import DAEMON, wait_for
from test_forwarding import ALL, reached
from test_groups import igmp_groups

EXAMPLE_CONFIG = os.path.join(os.path.dirname(DAEMON), "smcroute.conf")
SG = "mroute from a1 source 10.0.0.1 group 225.1.2.3 to %s\n"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_exit_leaves_the_host_as_it_was(bed, start, signum):
    daemon = start(SG % "b1 b2" + "mroute from a1 group ff2e::/16 to b1\n"
                   "mgroup from b1 group 225.9.9.9\nmgroup from b1 group ff2e::99\n")
    bed.traffic(["ff2e::5"], hosts=())
    assert bed.mroutes(4) and bed.mroutes(6) and "225.9.9.9" in igmp_groups(bed, "b1")
    daemon.signal(signum)
    assert daemon.proc.wait(5) == 0
    assert bed.mroutes(4) == "" and bed.mroutes(6) == ""
    assert len(bed.read("rtr", "/proc/net/ip_mr_vif").splitlines()) == 1
    assert len(bed.read("rtr", "/proc/net/ip6_mr_vif").splitlines()) == 1
    assert "225.9.9.9" not in igmp_groups(bed, "b1")
    assert "ff2e0000000000000000000000000099" not in bed.read("rtr", "/proc/net/igmp6")
    assert not os.path.exists(daemon.socket) and not os.path.exists(daemon.pidfile)


def test_second_router_in_the_namespace_exits_69(start):
    first = start(SG % "b1")
    second = start(wait=False)
    second.expected_status = 69
    assert second.proc.wait(10) == 69
    assert "another multicast router owns the IPv4 multicast routing table (the default table)" \
        in second.log()
    assert first.ok("version")


def test_example_config_runs_with_missing_interfaces_as_warnings(bed, start):
    daemon = start(open(EXAMPLE_CONFIG).read())
    assert "warning:" in daemon.log() and "eth0" in daemon.log()
    assert daemon.ok("version") == ["smcroute.py 0.1.0"]
    assert daemon.proc.poll() is None


def test_config_errors_at_start_are_logged_and_the_rest_applies(bed, start):
    daemon = start("mroute from a1 group 225.1.2.3 to b1\n"
                   "mroute from a1 group 1.2.3.4 to b1\n"
                   "bogus line\n" + SG % "b2")
    log = daemon.log()
    assert "smcroute.conf:2: 1.2.3.4 is not a multicast group" in log
    assert "smcroute.conf:3: unknown directive 'bogus'" in log
    assert reached(bed.traffic(["225.1.2.3"]), "225.1.2.3") == {"rx2"}


def test_sighup_applies_the_edited_config(bed, start):
    daemon = start(SG % "b1 b2" + "mgroup from b1 group 225.9.9.1\n")
    assert reached(bed.traffic(["225.1.2.3"]), "225.1.2.3") == ALL
    daemon.write_config(SG % "b2" + "mroute from a1 group 225.4.0.0/16 to b1\n"
                        "mgroup from b1 group 225.9.9.2\n")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "225.9.9.2" in igmp_groups(bed, "b1"))
    assert "225.9.9.1" not in igmp_groups(bed, "b1")
    counts = bed.traffic(["225.1.2.3", "225.4.1.1"])
    assert reached(counts, "225.1.2.3") == {"rx2"}        # the stale OIF b1 is gone
    assert reached(counts, "225.4.1.1", 4) == {"rx1"}


def test_reload_keeps_unchanged_entries_and_their_counters(bed, start):
    daemon = start(SG % "b1")
    bed.traffic(["225.1.2.3"], hosts=())
    assert daemon.ok("reload") == []
    assert [r["packets"] for r in daemon.show()] == [5]


def test_reload_drops_run_time_changes(start):
    daemon = start(SG % "b1")
    daemon.ok("add a1 225.7.7.7 b2")
    daemon.ok("reload")
    assert [r["group"] for r in daemon.show()] == ["225.1.2.3"]


def test_reload_with_a_broken_config_changes_nothing(bed, start):
    daemon = start(SG % "b1")
    daemon.write_config(SG % "b2" + "mroute from a1 group 10.1.1.1 to b1\n")
    reply = daemon.ctl("reload")
    assert reply[-1].startswith("error: reload refused, nothing changed: ")
    assert "smcroute.conf:2: 10.1.1.1 is not a multicast group" in reply[-1]
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: daemon.log().count("reload refused") == 2)
    assert [r["oifs"] for r in daemon.show()] == [["b1"]]
    assert reached(bed.traffic(["225.1.2.3"]), "225.1.2.3") == {"rx1"}


def test_reload_without_a_config_file_changes_nothing(start):
    daemon = start(SG % "b1")
    os.unlink(daemon.config)
    reply = daemon.ctl("reload")
    assert reply[-1].startswith("error: reload refused, nothing changed: ")
    assert "No such file or directory" in reply[-1]
    assert [r["oifs"] for r in daemon.show()] == [["b1"]]


def test_a_missing_interface_is_used_once_it_exists_at_reload(bed, start):
    daemon = start(SG % "b1 c1" + "mroute from c1 group 225.6.6.6 to b1\n")
    assert "waits for interface c1" in daemon.log()
    assert [r["oifs"] for r in daemon.show() if r["kind"] == "static"] == [["b1"]]
    bed.add_link("rtr", "c1", "rx2", "c1")
    try:
        daemon.ok("reload")
        assert [r["oifs"] for r in daemon.show() if r["kind"] == "static"] == [["b1", "c1"]]
        assert {i["name"]: i["vif"] for i in daemon.show("interfaces")}["c1"] is not None
        # Re-created with a new ifindex, it gets a fresh VIF at the next reload.
        bed.exec("rtr", "ip", "link", "del", "c1")
        bed.add_link("rtr", "c1", "rx2", "c1")
        daemon.ok("reload")
        vifs = bed.read("rtr", "/proc/net/ip_mr_vif")
        assert "c1" in vifs and [r["oifs"] for r in daemon.show() if r["kind"] == "static"] == \
            [["b1", "c1"]]
    finally:
        bed.exec("rtr", "ip", "link", "del", "c1", check=False)
    daemon.ok("reload")
    assert [r["oifs"] for r in daemon.show() if r["kind"] == "static"] == [["b1"]]


@pytest.fixture
def thirty_more_interfaces(bed):
    """x0..x14 and y0..y14 in the router: 33 with a1, b1 and b2."""
    for n in range(15):
        bed.exec("rtr", "ip", "link", "add", "name", "x%d" % n, "type", "veth",
                 "peer", "name", "y%d" % n)
    yield
    for n in range(15):
        bed.exec("rtr", "ip", "link", "del", "x%d" % n, check=False)


def test_running_out_of_vifs_fails_only_that_rule(bed, start, thirty_more_interfaces):
    daemon = start(SG % "b1 b2 x+" + "mroute from a1 source 10.0.0.1 group 225.1.2.4 to y+\n")
    assert ("smcroute.conf:2: (10.0.0.1, 225.1.2.4) from a1 to y+: "
            "no free VIF for y14: all 32 are in use") in daemon.log()
    assert [r["kind"] for r in daemon.show()] == ["static", "waiting"]
    reply = daemon.ctl("add a1 10.0.0.1 225.1.2.5 y+")
    assert reply[-1].startswith("error: ") and "no free VIF" in reply[-1]
    assert [r["group"] for r in daemon.show()] == ["225.1.2.3", "225.1.2.4"]
    assert reached(bed.traffic(["225.1.2.3"]), "225.1.2.3") == ALL


def test_a_rule_short_of_vifs_does_not_block_other_changes(start, thirty_more_interfaces):
    daemon = start("phyint x+\nphyint y+\nphyint a1\nphyint b+\n")
    assert "no free VIF for b2: all 32 are in use" in daemon.log()
    assert daemon.ctl("add a1 10.0.0.1 225.1.2.3 b1") == ["ok"]


def test_check_config_exit_status(tmp_path):
    good, bad = tmp_path / "good.conf", tmp_path / "bad.conf"
    good.write_text(SG % "b1")
    bad.write_text(SG % "b1" + "mroute from a1 group 225.1.1.1 to b1 # b2\n")
    run = [sys.executable, DAEMON, "-F"]
    assert subprocess.run(run + [str(good)], capture_output=True).returncode == 0
    checked = subprocess.run(run + [str(bad)], capture_output=True, text=True)
    assert checked.returncode == 78
    assert checked.stdout.splitlines()[0] == "error: %s:2: '#' after 'to' is no comment: SMCRoute " \
        "takes '#', 'b2' for outbound interfaces; put the comment on a line of its own" % bad


def test_detach_returns_once_ready(bed, tmp_path):
    sock, pidfile = str(tmp_path / "sock"), str(tmp_path / "pid")
    conf = tmp_path / "conf"
    conf.write_text(SG % "b1")
    base = ["ip", "netns", "exec", bed.ns("rtr"), sys.executable, DAEMON, "-u", sock]
    started = subprocess.run(base + ["-d", "-f", str(conf), "-P", pidfile], timeout=10)
    assert started.returncode == 0
    pid = int(open(pidfile).read())
    try:
        assert "225.1.2.3" in bed.mroutes(4)
        assert subprocess.run(base + ["-k"]).returncode == 0
        wait_for(lambda: not os.path.exists("/proc/%d" % pid))
    finally:
        if os.path.exists("/proc/%d" % pid):
            os.kill(pid, signal.SIGKILL)
    assert bed.mroutes(4) == ""


def test_detach_reports_a_failed_start(bed, start, tmp_path):
    start()
    failed = subprocess.run(["ip", "netns", "exec", bed.ns("rtr"), sys.executable, DAEMON,
                             "-d", "-u", str(tmp_path / "s2"), "-P", str(tmp_path / "p2")],
                            capture_output=True, text=True, timeout=10)
    assert failed.returncode == 69 and "another multicast router" in failed.stderr


def test_without_privileges_exits_77(bed, tmp_path):
    result = bed.exec("rtr", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                      sys.executable, DAEMON, "-u", str(tmp_path / "s"), "-P", "", check=False)
    assert result.returncode == 77
    assert "run as root, or with CAP_NET_ADMIN and CAP_NET_RAW" in result.stderr


def many_routes(count):
    return "".join("mroute from a1 source 10.0.0.1 group 225.%d.%d.%d to b1\n"
                   % (1 + n // 65536, n // 256 % 256, n % 256) for n in range(count))


def test_clients_are_answered_while_a_big_config_loads(bed, start):
    """Reading and applying a config goes a slice at a time: a client asks
    during a reload and is answered before it ends, with the old routes
    still in place."""
    daemon = start(many_routes(40000))
    daemon.write_config(many_routes(40000).replace("to b1", "to b2"))
    os.utime(daemon.pidfile, (1000000000, 1000000000))
    daemon.signal(signal.SIGHUP)
    assert daemon.ok("version") == ["smcroute.py 0.1.0"]
    assert os.stat(daemon.pidfile).st_mtime == 1000000000       # the reload goes on
    wait_for(lambda: os.stat(daemon.pidfile).st_mtime != 1000000000, timeout=30)
    assert "(10.0.0.1,225.1.156.63)" in [line.split()[0] for line in bed.mroutes(4).splitlines()
                                         if "Oifs: b2" in line]


def log_size(daemon):
    return os.path.getsize(daemon.logfile)


def logged_since(daemon, offset, *words):
    """Has a line of the daemon's log from `offset` on all of `words`?"""
    with open(daemon.logfile, "rb") as log:
        log.seek(offset)
        return any(all(w in line for w in words)
                   for line in log.read().decode("utf-8", "replace").splitlines())


def answered_in_between(daemon, offset, first, last):
    """Once the log shows the `first` words, is a question answered before
    it shows the `last` ones?  Work done at once would log both first.
    Then waits for the last."""
    wait_for(lambda: logged_since(daemon, offset, *first), timeout=60)
    assert daemon.ok("version") == ["smcroute.py 0.1.0"]
    between = not logged_since(daemon, offset, *last)
    wait_for(lambda: logged_since(daemon, offset, *last), timeout=60)
    return between


def test_a_reload_of_100k_rules_that_wait_tells_them_a_slice_at_a_time(start):
    daemon = start(many_routes(100000))
    daemon.write_config(many_routes(100000).replace("to b1", "to c9"))
    offset = log_size(daemon)
    daemon.signal(signal.SIGHUP)
    assert answered_in_between(daemon, offset, (":1: ", "waits for interface c9"),
                               (":100000: ", "waits for interface c9"))


def test_the_rules_on_an_interface_that_stops_and_resumes_multicast_are_synced_a_slice_at_a_time(
        bed, start):
    daemon = start(many_routes(100000))
    try:
        for state, news in (("off", "waits for b1 to be multicast-capable"), ("on", "is in effect")):
            offset = log_size(daemon)
            bed.exec("rtr", "ip", "link", "set", "b1", "multicast", state)
            assert answered_in_between(daemon, offset, ("interface b1 ",), (":100000: ", news))
    finally:
        bed.exec("rtr", "ip", "link", "set", "b1", "multicast", "on")


def test_a_reload_command_is_answered_when_it_is_done_and_in_order(start):
    daemon = start(SG % "b1")
    daemon.write_config(SG % "b2" + "mroute from a1 group 225.9.9.9 to c9\n")
    reply = daemon.ctl("reload", "show pending json", "version")
    assert reply[0].startswith("warning: ") and "waits for interface c9" in reply[0]
    assert reply[1] == "ok"
    assert json.loads(reply[2])["pending"][0]["group"] == "225.9.9.9"
    assert reply[3:] == ["smcroute.py 0.1.0", "ok"]
