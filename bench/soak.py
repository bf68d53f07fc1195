"""Soak: the daemon under churn for minutes, and whether it grows.

    sudo ./build.sh soak [--minutes N]        (default 10)

Builds the test bed of tests/netbed.py (snd -- rtr -- rx1, rx2), runs the
daemon in rtr under Debian's /usr/bin/python3, and for N minutes, round
after round: adds and deletes runtime routes, joins and leaves, reloads
between two configs, brings a veth interface up and deletes it again,
sends (*,G) flows from new forged sources (learned, then expired by -c 5),
and opens and drops idle clients.  Prints the daemon's RSS and open file
descriptors after the first round and at the end, and their peaks.  Not a
test: it takes minutes and its figures depend on the machine.
"""

import argparse
import os
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from netbed import Daemon, NetBed  # noqa: E402
from test_flood import flood  # noqa: E402

CONFIGS = ["mroute from a1 group 225.5.0.0/16 to b1\n"
           "mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1 b2\n"
           "mroute from hot group 225.7.0.0/16 to b2\n"
           "mgroup from a1 group 225.1.2.3\n",
           "mroute from a1 group 225.5.0.0/16 to b1 b2\n"
           "mroute from a1 group ff2e::/112 to b1\n"
           "mgroup from a1 group 225.1.2.4\n"]


def one_round(bed, daemon, n):
    for i in range(50):
        daemon.ok("add a1 10.0.0.1 228.%d.%d.1 b1" % (n % 200, i))
    daemon.ok("join a1 225.9.%d.1" % (n % 250))
    for i in range(50):
        daemon.ok("del a1 10.0.0.1 228.%d.%d.1" % (n % 200, i))
    daemon.ok("leave a1 225.9.%d.1" % (n % 250))
    bed.add_link("rtr", "hot", "rx2", "hotpeer")
    daemon.write_config(CONFIGS[n % 2])
    daemon.ok("reload")
    flood(bed, "225.5.%d.1" % (n % 250), 100 + n % 100, 50)
    bed.traffic(["225.5.9.9", "ff2e::9"], count=2, settle=0.1)
    idle = [socket.socket(socket.AF_UNIX) for _ in range(20)]
    for sock in idle:
        sock.connect(daemon.socket)
    bed.exec("rtr", "ip", "link", "del", "hot")
    for sock in idle:
        sock.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    args = parser.parse_args()
    bed = NetBed()
    daemon = Daemon(bed, CONFIGS[0], ["-c", "5"])
    try:
        daemon.start()
        one_round(bed, daemon, 0)
        first = peak = daemon.usage()
        began, rounds = time.monotonic(), 1
        while time.monotonic() - began < args.minutes * 60:
            one_round(bed, daemon, rounds)
            rounds += 1
            now = daemon.usage()
            peak = (max(peak[0], now[0]), max(peak[1], now[1]))
        time.sleep(12)                      # learned routes expire (-c 5: 5 to 10 s)
        last = daemon.usage()
        print("%d rounds in %.1f minutes (Python %s)" % (rounds, args.minutes, sys.version.split()[0]))
        print("RSS  after round 1 %6.1f MB, at the end %6.1f MB, peak %6.1f MB"
              % (first[0] / 1024, last[0] / 1024, peak[0] / 1024))
        print("fds  after round 1 %6d,    at the end %6d,    peak %6d" % (first[1], last[1], peak[1]))
        print("routes at the end: %d kernel entries" % len(bed.mroutes(4).splitlines()))
        assert daemon.proc.poll() is None, daemon.log()
    finally:
        daemon.stop()
        bed.close()


if __name__ == "__main__":
    main()
