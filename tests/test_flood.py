"""End to end: an upcall flood, many forged sources into a (*,G) range,
cannot take the router's memory: learned routes and stop filters are
capped (-L), the oldest idle ones make room, and the socket answers on."""

import subprocess
import sys
import time
from collections import Counter

from netbed import SLOWER, wait_for
from test_forwarding import reached

# One UDP packet from each of COUNT sources 10.0.0.0 + FIRST.. to GROUPS in
# turn, TTL 8, built whole (IP_HDRINCL) on a raw socket bound to eth0.
FLOOD = """
import socket, struct, sys
groups, first, count = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
udp = struct.pack("!HHHH", 4000, 5000, 8 + 4, 0) + b"hey!"
for n in range(first, first + count):
    group = groups[n % len(groups)]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 8, 17, 0,
                         struct.pack("!I", 0x0A000000 + n), socket.inet_aton(group))
    sock.sendto(header + udp, (group, 0))
"""


def flooding(bed, groups, first, count):
    """The sender, started: forged sources to the comma-separated groups."""
    return subprocess.Popen(["ip", "netns", "exec", bed.ns("snd"), sys.executable, "-c", FLOOD,
                             groups, str(first), str(count)])


def flood(bed, groups, first, count):
    assert flooding(bed, groups, first, count).wait(60 * SLOWER) == 0


def learned(daemon):
    return [r for r in daemon.show() if r["kind"] in ("learned", "stop")]


def test_learned_routes_and_stop_filters_are_capped_the_oldest_idle_going_first(bed, start):
    daemon = start("mroute from a1 group 225.5.0.0/16 to b1\n", "-L", "40")
    bed.traffic(["225.5.9.9"])                      # a flow that stays active
    for first in range(100, 400, 50):               # 300 forged sources, in waves
        flood(bed, "225.5.0.1", first, 50)
        begun = time.monotonic()
        assert daemon.ctl("version")[-1] == "ok"
        assert time.monotonic() - begun < 2
        bed.traffic(["225.5.9.9"], count=2)
    wait_for(lambda: ("10.0.1.143", "225.5.0.1") in {(r["source"], r["group"])
                                                    for r in learned(daemon)}, timeout=10)
    entries = {(r["source"], r["group"]) for r in learned(daemon)}
    assert len(entries) <= 40
    assert ("10.0.0.1", "225.5.9.9") in entries     # active: kept though it came first
    assert ("10.0.0.100", "225.5.0.1") not in entries
    assert len(bed.mroutes(4).splitlines()) <= 40
    assert "evicted" in daemon.log()
    assert reached(bed.traffic(["225.5.9.9"]), "225.5.9.9", 4) == {"rx1"}


def test_a_flood_of_100k_sources_is_capped_and_the_socket_answers_within_100_ms(bed, start):
    daemon = start("mroute from a1 group 225.5.0.0/16 to b1\n", "-L", "1000")
    rss_before, _ = daemon.usage()
    sender = flooding(bed, "225.5.0.1,226.6.6.6", 1000, 100000)   # learned, stop filters
    slowest, answers = 0, 0
    while sender.poll() is None:
        begun = time.monotonic()
        assert daemon.ctl("version")[-1] == "ok"
        slowest = max(slowest, time.monotonic() - begun)
        answers += 1
        time.sleep(0.01)
    assert sender.returncode == 0
    assert answers >= 10                            # asked while the flood went on
    assert slowest < 0.1 * SLOWER
    kinds = Counter(r["kind"] for r in learned(daemon))
    assert kinds["learned"] and kinds["stop"]
    assert sum(kinds.values()) <= 1000
    assert len(bed.mroutes(4).splitlines()) <= 1000
    assert daemon.usage()[0] - rss_before < 5 * 1024
    assert reached(bed.traffic(["225.5.9.9"]), "225.5.9.9", 4) == {"rx1"}


def test_the_cap_must_be_a_positive_number(bed, start):
    daemon = start("", "-L", "0", wait=False)
    daemon.expected_status = 64
    assert daemon.proc.wait(30) == 64
    assert "-L needs a number of routes" in daemon.log()
