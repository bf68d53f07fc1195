"""End to end: the control socket's line protocol and its commands, and the
client flags of the command line."""

import grp
import json
import os
import resource
import socket
import stat
import subprocess
import tempfile
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from netbed import SLOWER
from test_forwarding import ALL, reached


def raw_connection(daemon):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(daemon.socket)
    sock.settimeout(10)
    return sock


# The protocol -------------------------------------------------------------

def test_socket_is_private_to_root(start):
    daemon = start()
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600


def as_user(daemon, line, *caps):
    """`line` sent by nobody, in group nogroup, with the capabilities `caps`."""
    setpriv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    if caps:
        setpriv += ["--inh-caps=" + ",".join("+" + c for c in caps),
                    "--ambient-caps=" + ",".join("+" + c for c in caps)]
    client = "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); " \
             "s.sendall(sys.argv[2].encode() + b'\\n'); s.shutdown(1); " \
             "sys.stdout.write(s.makefile().read())"
    ran = subprocess.run(setpriv + ["/usr/bin/python3", "-I", "-c", client, daemon.socket, line],
                         capture_output=True, text=True, timeout=30)
    return ran.stdout.splitlines() or [ran.stderr.strip().splitlines()[-1]]


def open_way_to(folder):
    """Let others reach the files in a test's folder (not list them)."""
    while folder != tempfile.gettempdir() and len(folder) > 1:
        os.chmod(folder, os.stat(folder).st_mode | 0o111)
        folder = os.path.dirname(folder)


def test_a_group_may_look_but_only_root_or_cap_net_admin_may_change(start):
    daemon = start("", "-G", "nogroup")
    open_way_to(daemon.dir)
    info = os.stat(daemon.socket)
    assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == grp.getgrnam("nogroup").gr_gid
    assert as_user(daemon, "version") == ["smcroute.py 0.1.0", "ok"]
    assert as_user(daemon, "show interfaces")[-1] == "ok"
    for line in ("add a1 10.0.0.1 225.1.2.3 b1", "join a1 225.1.2.3", "flush", "reload",
                 "check /etc/shadow", "kill"):
        word = line.split()[0]
        assert as_user(daemon, line) == ["error: not allowed: %s takes root or CAP_NET_ADMIN" % word]
    assert daemon.ctl("show")[-1] == "ok" and "225.1.2.3" not in "".join(daemon.ctl("show"))
    assert as_user(daemon, "add a1 10.0.0.1 225.1.2.3 b1", "net_admin") == ["ok"]
    assert "225.1.2.3" in "".join(daemon.ctl("show"))


def test_without_a_group_the_socket_is_roots_alone(start):
    daemon = start()
    open_way_to(daemon.dir)
    assert "Permission denied" in as_user(daemon, "version")[0]


def test_each_reply_ends_in_ok_or_error(start):
    daemon = start()
    assert daemon.ctl("version") == ["smcroute.py 0.1.0", "ok"]
    assert daemon.ctl("frobnicate")[-1].startswith("error: unknown command 'frobnicate'")
    assert daemon.ctl("help")[-1] == "ok"


def test_pipelined_commands_are_answered_in_order(start):
    daemon = start()
    reply = daemon.ctl("version", "add a1 225.1.1.1 b1", "bogus", "del a1 225.1.1.1", "version")
    assert reply == ["smcroute.py 0.1.0", "ok", "ok",
                     "error: unknown command 'bogus', try 'help'", "ok",
                     "smcroute.py 0.1.0", "ok"]


def test_last_line_without_newline_is_answered(start):
    daemon = start()
    sock = raw_connection(daemon)
    sock.sendall(b"version")
    sock.shutdown(socket.SHUT_WR)
    assert sock.makefile().read() == "smcroute.py 0.1.0\nok\n"


def test_malformed_lines_get_errors_and_the_daemon_serves_on(start):
    daemon = start()
    assert daemon.ctl("add")[-1].startswith("error: usage: add IIF")
    assert daemon.ctl("add a1 1.2.3.4 b1") == ["error: 1.2.3.4 is not a multicast group"]
    assert daemon.ctl("add a1 300.1.1.1 225.1.1.1 b1") == ["error: source '300.1.1.1' is not an IP address"]
    assert daemon.ctl("add a1 10.0.0.1 ff2e::1 b1")[-1].startswith("error: source 10.0.0.1 and group")
    assert daemon.ctl("add a1 225.1.1.1/33 b1")[-1].startswith("error: group '225.1.1.1/33': the prefix")
    assert daemon.ctl("add a/1 225.1.1.1 b1") == ["error: 'a/1' is not a valid interface name"]
    assert daemon.ctl("join a1 225.1.1.1 extra")[-1].startswith("error: usage: join")
    assert daemon.ctl("show nonsense")[-1].startswith("error: usage: show")
    assert daemon.ctl("\xff\x01garbage")[-1].startswith("error: unknown command")
    # NUL bytes up front mean SMCRoute's binary protocol: garbage there is malformed.
    assert daemon.ctl("\x00\xff\x01garbage") == ["Malformed IPC message: bad request length "
                                                   "7093839458100822784\x00"]
    assert daemon.ctl("version") == ["smcroute.py 0.1.0", "ok"]


def test_line_too_long_is_refused_and_the_next_line_served(start):
    daemon = start()
    reply = daemon.ctl("add a1 225.1.1.1 " + "b1 " * 400, "version")
    assert reply == ["error: line too long, at most 1024 bytes", "smcroute.py 0.1.0", "ok"]


def test_a_line_that_never_ends_is_bounded(start):
    daemon = start()
    sock = raw_connection(daemon)
    sock.sendall(b"x" * (1 << 20))          # a MiB, and no newline
    assert sock.recv(100) == b"error: line too long, at most 1024 bytes\n"
    sock.sendall(b"\nversion\n")
    assert sock.makefile().readline() == "smcroute.py 0.1.0\n"
    assert daemon.ctl("version")[-1] == "ok"


def test_client_that_hangs_up_early_does_not_hurt(start):
    daemon = start("mroute from a1 group 225.0.0.0/8 to b1 b2\n")
    for _ in range(20):
        sock = raw_connection(daemon)
        sock.sendall(b"show\nshow groups\nshow interfaces json\nhelp\n" * 50)
        sock.close()
    sock = raw_connection(daemon)
    sock.sendall(b"show\n")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()                    # a reset, not a FIN
    assert daemon.ctl("version")[-1] == "ok"
    assert daemon.proc.poll() is None


def test_idle_clients_do_not_block_others(start):
    daemon = start()
    idle = [raw_connection(daemon) for _ in range(5)]
    idle[0].sendall(b"vers")        # half a line, never finished
    assert daemon.ctl("version")[-1] == "ok"
    for sock in idle:
        sock.close()


def test_a_thousand_idle_connections_never_lock_an_operator_out(start):
    """Idle and half-written connections, however many: the one idle the
    longest is told and closed to make room, and a new client is answered."""
    daemon = start()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    held = []
    try:
        for n in range(1000):
            held.append(raw_connection(daemon))
            if n % 2:
                held[-1].sendall(b"sho")            # half a line, never finished
        begun = time.monotonic()
        assert daemon.ctl("version") == ["smcroute.py 0.1.0", "ok"]
        answered = time.monotonic() - begun
        assert held[0].makefile().read() == "error: closed to make room for another client\n"
        assert held[1].makefile().read() == "error: closed to make room for another client\n"
        assert answered < 0.1 * SLOWER, "answered in %.3f s" % answered
        held[-1].sendall(b"w\n")                    # the newest were kept
        assert held[-1].recv(100).endswith(b"ok\n")
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_client_that_says_nothing_for_30_seconds_is_closed(start):
    """...and one that takes nothing of its replies for 30 seconds."""
    daemon = start()
    quiet, greedy, talking, monitor = (raw_connection(daemon) for _ in range(4))
    for sock in (quiet, greedy, talking, monitor):
        sock.settimeout(45)
    monitor.sendall(b"monitor\n")
    assert monitor.recv(100) == b"ok\n"
    begun = time.monotonic()
    quiet.sendall(b"vers")
    greedy.sendall(b"help\n" * 2000)           # more replies than the socket holds
    for _ in range(5):
        time.sleep(6)
        talking.sendall(b"version\n")
        assert talking.recv(100) == b"smcroute.py 0.1.0\nok\n"
    assert quiet.makefile().read() == "error: idle for 30 seconds, closed\n"
    assert 30 <= time.monotonic() - begun
    assert greedy.makefile().read().startswith("add IIF")   # its replies so far, then the end
    talking.sendall(b"version\n")                  # active ones stay, and monitors
    assert talking.recv(100) == b"smcroute.py 0.1.0\nok\n"
    daemon.ok("reload")
    assert monitor.recv(1000).startswith(b"reload ")
    for sock in (greedy, talking, monitor):
        sock.close()


def test_random_bytes_on_the_socket_never_hurt(bed, start):
    daemon = start("mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1\n")

    @settings(max_examples=2000, deadline=None, derandomize=True)
    @given(st.binary(max_size=3000))
    def send(data):
        sock = raw_connection(daemon)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass                    # a binary request it refused and hung up on
        finally:
            sock.close()
    send()
    assert daemon.ctl("version") == ["smcroute.py 0.1.0", "ok"]
    assert "(10.0.0.1,225.1.2.3)" in bed.mroutes(4)


def test_a_client_that_never_reads_a_big_reply_holds_up_no_one(start, tmp_path):
    rules = "".join("mroute from a1 source 10.0.0.1 group 225.%d.%d.%d to b1\n"
                    % (n >> 16, n >> 8 & 255, n & 255) for n in range(65536, 65536 + 100000))
    daemon = start(rules)
    rss, _ = daemon.usage()
    greedy = [raw_connection(daemon) for _ in range(4)]
    for sock in greedy:
        sock.sendall(b"show\n" + b"help\n" * 2000)   # megabytes of replies, never read
    for _ in range(20):
        begun = time.monotonic()
        assert daemon.ctl("version") == ["smcroute.py 0.1.0", "ok"]
        assert time.monotonic() - begun < 0.1 * SLOWER
    assert daemon.usage()[0] - rss < 8 << 10    # kB: the replies are made as they are taken
    for sock in greedy:
        sock.close()                            # hang up in the middle of their replies
    assert daemon.ok("add a1 10.0.0.1 225.1.2.3 b1") == []
    assert daemon.proc.poll() is None


# Routes at run time ---------------------------------------------------------

def test_add_and_del_a_route_at_run_time(bed, start):
    daemon = start()
    assert daemon.ok("add a1 10.0.0.1 225.1.2.3 b1 b2") == []
    assert reached(bed.traffic(["225.1.2.3"]), "225.1.2.3") == ALL
    assert daemon.ok("del a1 10.0.0.1 225.1.2.3") == []
    assert reached(bed.traffic(["225.1.2.3"]), "225.1.2.3", 1) == set()
    assert "225.1.2.3" not in bed.mroutes(4)


def test_add_and_del_ipv6_and_star_g_at_run_time(bed, start):
    daemon = start()
    daemon.ok("add a1 fd00::1 ff2e::42 b1")
    daemon.ok("add a1 ff2e::100/120 b2")
    counts = bed.traffic(["ff2e::42", "ff2e::105"])
    assert reached(counts, "ff2e::42") == {"rx1"}
    assert reached(counts, "ff2e::105", 4) == {"rx2"}
    daemon.ok("del a1 ff2e::100/120")
    assert reached(bed.traffic(["ff2e::105"]), "ff2e::105", 1) == set()


def test_add_merges_outbound_interfaces_and_del_removes_some(bed, start):
    daemon = start("mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1\n")
    daemon.ok("add a1 10.0.0.1 225.1.2.3 b2")
    assert reached(bed.traffic(["225.1.2.3"]), "225.1.2.3") == ALL
    daemon.ok("del a1 10.0.0.1 225.1.2.3 b1")
    assert reached(bed.traffic(["225.1.2.3"]), "225.1.2.3") == {"rx2"}
    assert [r["oifs"] for r in daemon.show()] == [["b2"]]


def test_adding_a_template_turns_stop_filters_into_routes(bed, start):
    daemon = start("phyint a1\n")
    assert reached(bed.traffic(["225.2.2.2"]), "225.2.2.2", 1) == set()
    assert [r["kind"] for r in daemon.show()] == ["stop"]
    daemon.ok("add a1 225.2.2.0/24 b1")
    assert [r["kind"] for r in daemon.show() if r["source"] == "10.0.0.1"] == ["learned"]
    assert reached(bed.traffic(["225.2.2.2"]), "225.2.2.2") == {"rx1"}


def test_deleting_a_template_stops_its_learned_routes(bed, start):
    daemon = start("mroute from a1 group 225.2.2.0/24 to b1\n")
    assert reached(bed.traffic(["225.2.2.2"]), "225.2.2.2", 4) == {"rx1"}
    daemon.ok("del a1 225.2.2.0/24")
    assert reached(bed.traffic(["225.2.2.2"]), "225.2.2.2", 1) == set()


def test_errors_for_routes_that_do_not_exist(start):
    daemon = start("mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1\n")
    assert daemon.ctl("del a1 10.0.0.1 225.9.9.9")[-1].startswith("error: no such route")
    assert daemon.ctl("del a1 10.0.0.1 225.1.2.3 b2")[-1].startswith("error: ")
    assert [r["oifs"] for r in daemon.show()] == [["b1"]]


def test_add_or_join_naming_a_missing_interface_is_refused_and_changes_nothing(bed, start):
    """A typo must not look like success; config rules wait instead."""
    daemon = start()
    assert daemon.ctl("add a1 10.0.0.1 225.1.2.3 b1 eth9") == ["error: no interface eth9"]
    assert daemon.ctl("add eth9 10.0.0.1 225.1.2.3 b1") == ["error: no interface eth9"]
    assert daemon.ctl("join eth9 225.6.6.6") == ["error: no interface eth9"]
    assert daemon.show() == [] and daemon.show("groups") == []
    assert bed.mroutes(4) == ""
    assert daemon.ctl("add a1 10.0.0.1 225.1.2.3 eth+")[-1] == "ok"     # a wildcard may match nothing yet


def test_flush_drops_learned_routes_now(bed, start):
    daemon = start("mroute from a1 group 225.3.3.3 to b1\n"
                   "mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1\n")
    bed.traffic(["225.3.3.3"], hosts=())
    assert {r["kind"] for r in daemon.show()} == {"static", "learned", "template"}
    assert daemon.ok("flush") == ["1 learned routes dropped"]
    assert {r["kind"] for r in daemon.show()} == {"static", "template"}
    assert "225.3.3.3" not in bed.mroutes(4)


def test_idle_learned_routes_expire(bed, start):
    daemon = start("mroute from a1 group 225.3.3.3 to b1\n", "-c", "1")
    bed.traffic(["225.3.3.3"], hosts=())
    assert "learned" in {r["kind"] for r in daemon.show()}
    time.sleep(3.5)                 # idle routes live between 1 and 2 checks
    assert {r["kind"] for r in daemon.show()} == {"template"}


# Show -------------------------------------------------------------------------

def test_show_routes_with_counters(bed, start):
    daemon = start("mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1 b2\n")
    bed.traffic(["225.1.2.3"], hosts=())
    lines = daemon.ok("show")
    assert lines[0].split() == ["KIND", "SOURCE", "GROUP", "IIF", "PACKETS", "BYTES", "OIFS"]
    assert lines[1].split() == ["static", "10.0.0.1", "225.1.2.3", "a1", "5", "215", "b1", "b2"]
    rule = {"source": "10.0.0.1", "group": "225.1.2.3", "iif": "a1", "oifs": ["b1", "b2"],
            "packets": 5, "bytes": 215}
    assert daemon.json("routes") == {"asm": [], "ssm": [rule], "kernel": [rule]}


def test_long_ipv6_addresses_keep_the_columns_straight(start):
    source, group = "fd00:1234:5678:9abc:def0:1234:5678:9abc", "ff3e:1234:5678:9abc:def0:1234:5678:9abc"
    daemon = start("mroute from a1 source %s group %s to b1\n" % (source, group)
                   + "mroute from a1 group 225.1.0.0/16 to b2\n")
    lines = daemon.ok("show")
    assert [line.split()[:4] for line in lines] == [["KIND", "SOURCE", "GROUP", "IIF"],
                                                   ["static", source, group, "a1"],
                                                   ["template", "-", "225.1.0.0/16", "a1"]]
    assert len({line.index(" a1 ") for line in lines[1:]} | {lines[0].index(" IIF ")}) == 1


def test_show_interfaces_and_groups(start):
    daemon = start("mroute from a1 group 225.1.0.0/16 to b1\n"
                   "mgroup from b2 source 10.0.0.1 group 232.1.1.1\n")
    interfaces = {i["name"]: i for i in daemon.show("interfaces")}
    assert (interfaces["a1"]["vif"], interfaces["a1"]["mif"]) == (0, None)
    assert interfaces["b1"]["vif"] is None       # no VIF until a learned route needs it
    assert interfaces["lo"]["multicast"] is False
    joined = [{"source": "10.0.0.1", "group": "232.1.1.1", "iif": "b2"}]
    assert daemon.json("groups") == {"conf": joined, "kernel": joined}
    assert daemon.ok("show groups")[1].split() == ["10.0.0.1", "232.1.1.1", "b2"]


def test_show_json_is_the_whole_reply_so_socat_gives_valid_json(start):
    """`echo 'show json' | socat - UNIX:...` must print one JSON document,
    errors included."""
    daemon = start()
    for table in ("routes", "groups", "interfaces", "pending"):
        [line] = daemon.ctl("show %s json" % table)
        assert list(json.loads(line)) == [table]
    assert json.loads(daemon.ctl("show json")[0]) == {"routes": {"asm": [], "ssm": [], "kernel": []}}
    assert daemon.ctl("show routes json please") == [
        '{"error":"usage: show [routes|groups|interfaces|pending] [json|smcroute [detail]]"}']


# Groups at run time -----------------------------------------------------------

def test_join_and_leave_at_run_time(bed, start):
    daemon = start()
    daemon.ok("join b1 225.6.6.6")
    daemon.ok("join b1 10.0.0.1 232.6.6.6")
    daemon.ok("join b2 ff2e::6")
    daemon.ok("join b2 fd00::1 ff3e::6")
    assert "e1060606" in bed.read("rtr", "/proc/net/igmp").lower() or \
        "060606e1" in bed.read("rtr", "/proc/net/igmp").lower()
    assert "ff2e0000000000000000000000000006" in bed.read("rtr", "/proc/net/igmp6")
    assert "0xe8060606 0x0a000001" in bed.read("rtr", "/proc/net/mcfilter")
    assert "ff3e0000000000000000000000000006 fd000000000000000000000000000001" in \
        bed.read("rtr", "/proc/net/mcfilter6")
    for line in ("leave b1 225.6.6.6", "leave b1 10.0.0.1 232.6.6.6",
                 "leave b2 ff2e::6", "leave b2 fd00::1 ff3e::6"):
        daemon.ok(line)
    assert "0xe8060606" not in bed.read("rtr", "/proc/net/mcfilter")
    assert "ff3e0000000000000000000000000006" not in bed.read("rtr", "/proc/net/mcfilter6")
    assert "ff2e0000000000000000000000000006" not in bed.read("rtr", "/proc/net/igmp6")
    assert daemon.show("groups") == []


def test_join_errors(start):
    daemon = start("mgroup from b1 group 225.6.6.6\n")
    assert daemon.ctl("join b1 225.6.6.6")[-1].startswith("error: already joined")
    assert daemon.ctl("leave b1 225.7.7.7")[-1].startswith("error: not joined")
    assert daemon.ctl("join b1 225.0.0.0/8")[-1].startswith("error: (*, 225.0.0.0/8) expands to")


# The command-line client ------------------------------------------------------

def test_client_flags_add_remove_join_leave(bed, start):
    daemon = start()
    assert daemon.cli("-a", "a1", "10.0.0.1", "225.1.2.3", "b1", "b2").returncode == 0
    assert reached(bed.traffic(["225.1.2.3"]), "225.1.2.3") == ALL
    assert daemon.cli("-r", "a1", "10.0.0.1", "225.1.2.3").returncode == 0
    assert reached(bed.traffic(["225.1.2.3"]), "225.1.2.3", 1) == set()
    assert daemon.cli("-j", "b1", "225.6.6.6").returncode == 0
    assert daemon.cli("-j", "b1", "10.0.0.1", "232.6.6.6").returncode == 0
    assert "0xe8060606 0x0a000001" in bed.read("rtr", "/proc/net/mcfilter")
    assert len(daemon.show("groups")) == 2
    assert daemon.cli("-l", "b1", "225.6.6.6").returncode == 0
    assert daemon.cli("-l", "b1", "10.0.0.1", "232.6.6.6").returncode == 0
    assert daemon.show("groups") == []


def test_client_prints_data_and_reports_errors(start):
    daemon = start()
    shown = daemon.cli("show", "interfaces")
    assert shown.returncode == 0
    assert shown.stdout.split()[:6] == ["NAME", "INDEX", "STATE", "VIF", "MIF", "TTL"]
    failed = daemon.cli("-r", "a1", "10.0.0.1", "225.1.2.3")
    assert failed.returncode == 1
    assert failed.stderr.startswith("smcroute.py: error: no such route")


def test_client_kill_stops_the_daemon(start):
    daemon = start()
    assert daemon.cli("-k").returncode == 0
    assert daemon.proc.wait(5) == 0
    assert not os.path.exists(daemon.socket)


def test_socat_pipes_the_json_reply_as_a_valid_document(bed, start):
    """What the README shows: echo 'show ... json' | socat - UNIX:SOCK."""
    daemon = start("mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1\n")
    for table in ("routes", "groups", "interfaces", "pending"):
        piped = bed.exec("rtr", "sh", "-c",       # -t 5: time for a reply in an emulated VM
                         "echo 'show %s json' | socat -t 5 - UNIX:%s" % (table, daemon.socket))
        assert list(json.loads(piped.stdout)) == [table]
