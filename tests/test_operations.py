"""End to end: running the daemon as an operator does, under scripts,
systemd and beside other instances: the -e hook, -t tables, -i
identities, failed second instances, sd_notify, the pid file, logs."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid

import pytest
from netbed import DAEMON, SLOWER, new_port, wait_for
from test_forwarding import reached

SG = "mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1\n"
STAR_G = "mroute from a1 group 225.3.0.0/16 to b1\n"


def hook(tmp_path, body=""):
    """An -e script that logs `ACTION source group NOTIFY_SOCKET` to a file
    (then runs `body`); returns (path, function reading the log lines)."""
    log = tmp_path / "hook.log"
    script = tmp_path / "hook.sh"
    script.write_text("#!/bin/sh\n"
                      'echo "$1 ${source-} ${group-} ${NOTIFY_SOCKET-none}" >> %s\n%s' % (log, body))
    script.chmod(0o755)
    return str(script), lambda: log.read_text().splitlines() if log.exists() else []


# The -e script hook -----------------------------------------------------------

def test_hook_runs_at_start_reload_and_for_each_learned_route(bed, start, tmp_path):
    script, ran = hook(tmp_path)
    daemon = start(STAR_G, "-e", script, env={"NOTIFY_SOCKET": "@smc-test-unused"})
    wait_for(lambda: ran() == ["start   none"])
    bed.traffic(["225.3.1.1", "225.9.9.9"], hosts=())     # learned, and a stop filter
    wait_for(lambda: len(ran()) == 2)
    assert ran()[1] == "install 10.0.0.1 225.3.1.1 none"
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: len(ran()) == 3)
    assert ran()[2] == "reload   none"
    time.sleep(0.3)
    assert len(ran()) == 3              # the stop filter ran nothing


def test_hooks_never_block_the_daemon_and_at_most_four_run_at_once(bed, start, tmp_path):
    spans = tmp_path / "spans"
    script, ran = hook(tmp_path, 'echo "+ $(date +%%s.%%N)" >> %s\nsleep %s\n'
                                 'echo "- $(date +%%s.%%N)" >> %s\n' % (spans, 0.5 * SLOWER, spans))
    daemon = start(STAR_G, "-e", script)
    bed.traffic(["225.3.0.%d" % n for n in range(1, 11)], count=1, hosts=())
    started = time.monotonic()
    assert daemon.ok("version") and time.monotonic() - started < 0.5 * SLOWER
    wait_for(lambda: len(ran()) == 11, timeout=10)
    assert sorted(line.split()[2] for line in ran()[1:]) == sorted("225.3.0.%d" % n for n in range(1, 11))
    wait_for(lambda: spans.read_text().count("-") == 11)
    running, most = 0, 0
    for _, sign in sorted((float(at), sign == "+") for sign, at in
                          (line.split() for line in spans.read_text().splitlines())):
        running += 1 if sign else -1
        most = max(most, running)
    assert most == 4


def test_a_failing_or_hanging_hook_is_logged_and_killed(bed, start, tmp_path):
    script, ran = hook(tmp_path, '[ "$1" = start ] && exit 3\nsleep 30\n')
    daemon = start(STAR_G, "-e", script, patch={"SCRIPT_TIMEOUT": 1.0})
    wait_for(lambda: "%s start exited with 3" % script in daemon.log())
    bed.traffic(["225.3.1.1"], count=1, hosts=())
    wait_for(lambda: "%s install still runs after 1 s, killed" % script in daemon.log(), timeout=5)
    wait_for(lambda: "%s install was killed by signal 9" % script in daemon.log())
    assert daemon.ok("version")


def test_the_hook_must_be_an_executable_file(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("echo\n")
    result = subprocess.run([sys.executable, DAEMON, "-e", str(plain)], capture_output=True, text=True)
    assert result.returncode == 64 and "-e %s: not an executable file" % plain in result.stderr


# -t: multicast routing tables ---------------------------------------------------

@pytest.fixture
def mrules(bed):
    """Traffic from a1 is looked up in table 10, from b2 in table 20."""
    for iif, table in (("a1", "10"), ("b2", "20")):
        bed.exec("rtr", "ip", "mrule", "add", "iif", iif, "lookup", table)
    yield
    for iif, table in (("a1", "10"), ("b2", "20")):
        bed.exec("rtr", "ip", "mrule", "del", "iif", iif, "lookup", table, check=False)


def test_two_daemons_on_two_tables_both_route(bed, start, mrules):
    first = start("mroute from a1 source 10.0.0.1 group 225.1.1.1 to b1\n", "-t", "10")
    second = start("mroute from b2 source 10.0.2.2 group 225.2.2.2 to b1\n", "-t", "20")
    assert reached(bed.traffic(["225.1.1.1"], hosts=("rx1",)), "225.1.1.1") == {"rx1"}
    port = new_port()
    with bed.receivers(port, ["225.2.2.2"], hosts=("rx1",)) as receivers:
        bed.send("225.2.2.2", port, source="10.0.2.2", host="rx2")
        time.sleep(0.3)
    assert receivers.counts["rx1"]["225.2.2.2"] == 5
    assert "225.1.1.1" in bed.exec("rtr", "ip", "mroute", "show", "table", "10").stdout
    assert "225.2.2.2" in bed.exec("rtr", "ip", "mroute", "show", "table", "20").stdout
    third = start("", "-t", "10", wait=False)
    third.expected_status = 69
    assert third.proc.wait(10) == 69
    assert "another multicast router owns the IPv4 multicast routing table (table 10)" in third.log()
    assert first.ok("version") and second.ok("version")


# -i: identities, and instances that fail ---------------------------------------

@pytest.fixture
def identity():
    """A unique identity; its /etc and /run files are removed afterwards."""
    name = "smctest-" + uuid.uuid4().hex[:8]
    yield name
    for path in ("/etc/%s.conf", "/run/%s.sock", "/run/%s.pid"):
        if os.path.exists(path % name):
            os.unlink(path % name)


def test_an_identity_names_config_socket_pid_file_and_log(bed, identity):
    with open("/etc/%s.conf" % identity, "w") as conf:
        conf.write(SG)
    base = ["ip", "netns", "exec", bed.ns("rtr"), sys.executable, DAEMON, "-i", identity]
    proc = subprocess.Popen(base + ["-n"], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: os.path.exists("/run/%s.pid" % identity))
        assert open("/run/%s.pid" % identity).read() == "%d\n" % proc.pid
        assert stat.S_ISSOCK(os.stat("/run/%s.sock" % identity).st_mode)
        assert "225.1.2.3" in bed.mroutes(4)
        shown = subprocess.run(base + ["show"], capture_output=True, text=True)
        assert "225.1.2.3" in shown.stdout
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert err.startswith("%s: " % identity)        # what syslog would show as the ident
    assert not os.path.exists("/run/%s.pid" % identity)


def test_options_override_what_the_identity_implies(bed, start, identity, tmp_path):
    daemon = start(SG, "-i", identity)     # with -f, -u and -P of its own
    assert "225.1.2.3" in bed.mroutes(4)
    assert os.path.exists(daemon.socket) and os.path.exists(daemon.pidfile)
    assert not os.path.exists("/run/%s.sock" % identity)


def test_a_second_daemon_on_the_same_socket_exits_69_and_touches_nothing(bed, start, tmp_path):
    first = start(SG)
    pid = open(first.pidfile).read()
    loser = bed.exec("rtr", sys.executable, DAEMON, "-n", "-f", first.config, "-P", first.pidfile,
                     "-u", first.socket, "-t", "20", check=False)
    assert loser.returncode == 69 and "another daemon answers on %s" % first.socket in loser.stderr
    assert open(first.pidfile).read() == pid and first.ok("version")
    assert "225.1.2.3" in bed.mroutes(4)


def test_a_second_daemon_on_the_same_table_exits_69_and_touches_nothing(bed, start, tmp_path):
    first = start(SG)
    pid = open(first.pidfile).read()
    loser = bed.exec("rtr", sys.executable, DAEMON, "-n", "-f", first.config, "-P", first.pidfile,
                     "-u", str(tmp_path / "other.sock"), check=False)
    assert loser.returncode == 69
    assert "another multicast router owns the IPv4 multicast routing table" in loser.stderr
    assert open(first.pidfile).read() == pid
    assert os.path.exists(first.socket) and first.ok("version")
    assert "225.1.2.3" in bed.mroutes(4)


def test_after_sigkill_a_new_start_takes_over_and_brings_back_routes_and_joins(bed, start):
    first = start(SG + "mgroup from b1 group 225.9.9.9\n")
    assert "225.9.9.9" in bed.exec("rtr", "ip", "maddr", "show", "dev", "b1").stdout
    first.proc.kill()
    first.proc.wait()
    first.expected_status = -9
    assert os.path.exists(first.socket) and os.path.exists(first.pidfile)
    wait_for(lambda: bed.mroutes(4) == "")          # the kernel cleaned up after it
    assert "225.9.9.9" not in bed.exec("rtr", "ip", "maddr", "show", "dev", "b1").stdout
    second = start(SG + "mgroup from b1 group 225.9.9.9\n")
    assert open(second.pidfile).read() == "%d\n" % second.proc.pid
    assert "225.1.2.3" in bed.mroutes(4) and second.ok("version")
    assert "225.9.9.9" in bed.exec("rtr", "ip", "maddr", "show", "dev", "b1").stdout


# systemd -------------------------------------------------------------------------

LISTEN = """
import json, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(sys.argv[1].replace("@", "\\0", 1))
print("ready", flush=True)
while True:
    print(json.dumps(sock.recv(4096).decode()), flush=True)
"""


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, bed, tmp_path):
    """A listening datagram socket as systemd has, in the router's network
    namespace (abstract names are per namespace); (NOTIFY_SOCKET, receive())."""
    if request.param == "path":
        value = str(tmp_path / "notify")
    else:
        value = "@smc-notify-" + uuid.uuid4().hex[:8]
    listener = subprocess.Popen(["ip", "netns", "exec", bed.ns("rtr"), sys.executable, "-c", LISTEN, value],
                                stdout=subprocess.PIPE, text=True)
    assert listener.stdout.readline() == "ready\n"

    def receive():
        text = json.loads(listener.stdout.readline())
        return dict(line.split("=", 1) for line in text.split("\n"))
    yield value, receive
    listener.kill()
    listener.wait()


def test_systemd_is_told_ready_reloading_and_stopping(start, notify_socket, tmp_path):
    value, receive = notify_socket
    script, ran = hook(tmp_path)
    daemon = start(SG, "-e", script, env={"NOTIFY_SOCKET": value})
    ready = receive()
    assert ready["READY"] == "1" and ready["MAINPID"] == str(daemon.proc.pid)
    assert ready["STATUS"] == "1 routes, 0 learned, 0 joins"
    daemon.signal(signal.SIGHUP)
    reloading = receive()
    assert reloading["RELOADING"] == "1"
    assert abs(int(reloading["MONOTONIC_USEC"]) / 1e6 - time.monotonic()) < 5
    assert receive()["READY"] == "1"
    daemon.signal(signal.SIGTERM)
    assert receive() == {"STOPPING": "1"}
    assert daemon.proc.wait(5) == 0
    assert all(line.endswith(" none") for line in ran())    # the hook never sees NOTIFY_SOCKET


def test_systemd_gets_the_detached_daemons_pid(bed, notify_socket, tmp_path):
    value, receive = notify_socket
    pidfile = tmp_path / "pid"
    started = subprocess.run(["ip", "netns", "exec", bed.ns("rtr"), sys.executable, DAEMON, "-d",
                              "-f", "/dev/null", "-u", str(tmp_path / "sock"), "-P", str(pidfile)],
                             env=dict(os.environ, NOTIFY_SOCKET=value), capture_output=True, timeout=10)
    assert started.returncode == 0
    pid = int(pidfile.read_text())
    try:
        assert receive()["MAINPID"] == str(pid)
    finally:
        os.kill(pid, signal.SIGTERM)
    assert receive() == {"STOPPING": "1"}


def test_a_reload_touches_the_pid_file(start):
    daemon = start(SG)
    os.utime(daemon.pidfile, (1000000000, 1000000000))
    daemon.ok("reload")
    assert os.stat(daemon.pidfile).st_mtime > time.time() - 60


# Logs ----------------------------------------------------------------------------

def test_a_learned_route_is_logged_with_the_rule_that_took_it(bed, start):
    daemon = start(SG + STAR_G)
    bed.traffic(["225.3.4.5"], hosts=())
    assert "learned (10.0.0.1, 225.3.4.5) from a1 to b1, by rule %s:2" % daemon.config in daemon.log()


def without_syslog(command):
    """Run `command` where nothing listens on /dev/log."""
    hide = "[ -e /dev/log ] && mount --bind /dev/null /dev/log; "
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           hide + command], capture_output=True, text=True, timeout=10 * SLOWER)


def test_detaching_without_syslog_says_so_first(bed, tmp_path):
    pidfile = tmp_path / "pid"
    started = without_syslog("ip netns exec %s %s %s -d -f /dev/null -u %s -P %s"
                             % (bed.ns("rtr"), sys.executable, DAEMON, tmp_path / "sock", pidfile))
    assert started.returncode == 0
    os.kill(int(pidfile.read_text()), signal.SIGTERM)
    assert "nothing listens on /dev/log, so the daemon's log messages will be lost" in started.stderr


def test_syslog_in_the_foreground_without_a_listener_says_so(bed, tmp_path):
    ran = without_syslog("ip netns exec %s %s %s -s -v" % (bed.ns("rtr"), sys.executable, DAEMON))
    assert ran.returncode == 0 and ran.stderr == ""     # -v runs no daemon
    ran = without_syslog("ip netns exec %s timeout -s TERM %d %s %s -n -s -f /dev/null -u %s -P ''"
                         % (bed.ns("rtr"), SLOWER, sys.executable, DAEMON, tmp_path / "sock"))
    assert "nothing listens on /dev/log" in ran.stderr
    assert "ready" not in ran.stderr            # the log itself went to syslog


def test_every_option_works_detached_too(bed, tmp_path, identity, mrules):
    """-d with -i, -t, -e, -m, -c and -s: the options mean the same."""
    script, ran = hook(tmp_path)
    with open("/etc/%s.conf" % identity, "w") as conf:
        conf.write("phyint b1 mrdisc\n" + STAR_G)
    started = subprocess.run(["ip", "netns", "exec", bed.ns("rtr"), sys.executable, DAEMON, "-d", "-s",
                              "-i", identity, "-t", "10", "-e", script, "-m", "4", "-c", "1"],
                             capture_output=True, text=True, timeout=10)
    assert started.returncode == 0, started.stderr
    pid = int(open("/run/%s.pid" % identity).read())
    try:
        wait_for(lambda: ran() == ["start   none"])
        bed.traffic(["225.3.1.1"], hosts=())
        wait_for(lambda: "install 10.0.0.1 225.3.1.1 none" in ran())
        assert "225.3.1.1" in bed.exec("rtr", "ip", "mroute", "show", "table", "10").stdout
        wait_for(lambda: "225.3.1.1" not in bed.exec("rtr", "ip", "mroute", "show", "table", "10").stdout,
                 timeout=5)                                    # -c 1
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not os.path.exists("/proc/%d" % pid))
    assert not os.path.exists("/run/%s.sock" % identity)
