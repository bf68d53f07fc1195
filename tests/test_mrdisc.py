"""Multicast Router Discovery (RFC 4286), as a snooping switch sees it.

    snd eth0 ---- a1 rtr b1 ---- eth0 rx1      phyint b1 mrdisc
                         b2 ---- eth0 rx2      phyint b2 (routes, no mrdisc)

With `phyint IF mrdisc` the daemon sends IGMP Multicast Router
Advertisements (type 0x30, code = the -m interval) to 224.0.0.106 out of
IF: three at start, then every interval; it answers a Solicitation (0x31
to 224.0.0.2) at once; and it sends a Termination (0x32) when IF stops
routing or the daemon exits.  igmpcap.py captures in rx1 and rx2 with an
AF_PACKET socket and decodes every field.
"""

import signal
import subprocess
import sys
import time

from igmpcap import Capture, expected
from netbed import DAEMON

INTERVAL = 4                        # -m 4, the shortest RFC 4286 allows
SLACK = 0.3                         # seconds of scheduling and capture latency
CONFIG = "phyint b1 mrdisc\nphyint b2\n"
ADVERTISEMENT = dict(expected(0x30, INTERVAL), src="10.0.1.1")    # from b1's address
TERMINATION = dict(expected(0x32, 0), src="10.0.1.1")


def fields(frame, wanted):
    return {key: frame.get(key) for key in wanted} if frame else None


def test_advertises_answers_solicitations_and_terminates_on_exit(bed, start):
    with Capture(bed.ns("rx1")) as rx1, Capture(bed.ns("rx2")) as rx2:
        daemon = start(CONFIG, "-m", str(INTERVAL))

        # At start: MAX_INITIAL_ADVERTISEMENTS (3), the first at once, the
        # others at most MAX_INITIAL_ADVERT_INTERVAL (2 s) apart.
        burst = [rx1.next(2)] + [rx1.next(2 + SLACK) for _ in range(2)]
        assert [fields(f, ADVERTISEMENT) for f in burst] == [ADVERTISEMENT] * 3
        assert all(b["time"] - a["time"] <= 2 + 0.05 for a, b in zip(burst, burst[1:]))

        # A solicitation is answered at once when no advertisement went out
        # in the last MAX_RESPONSE_DELAY (2 s), the rate limit.
        time.sleep(max(0.0, burst[-1]["time"] + 2.2 - time.monotonic()))
        asked = rx1.solicit()
        answer = rx1.next(1)
        assert fields(answer, ADVERTISEMENT) == ADVERTISEMENT
        assert answer["time"] - asked < SLACK

        # Then every interval, plus up to 2.5 % jitter (AdvertisementJitter).
        periodic = rx1.next(INTERVAL * 1.025 + SLACK)
        assert fields(periodic, ADVERTISEMENT) == ADVERTISEMENT
        assert INTERVAL - 0.05 <= periodic["time"] - answer["time"] <= INTERVAL * 1.025 + SLACK

        # On SIGTERM, a termination; b2 has no mrdisc and saw nothing.
        assert daemon.stop() == 0
        assert fields(rx1.next(1), TERMINATION) == TERMINATION
        assert rx2.frames(0.1) == []


def test_reload_without_mrdisc_terminates_and_with_it_starts_over(bed, start):
    with Capture(bed.ns("rx1")) as rx1:
        daemon = start(CONFIG, "-m", str(INTERVAL))
        assert fields(rx1.next(2), ADVERTISEMENT) == ADVERTISEMENT
        daemon.write_config("phyint b1\nphyint b2\n")
        daemon.signal(signal.SIGHUP)
        *before, last = rx1.frames(1) or [None]
        assert [f["type"] for f in before] in ([], [0x30])    # a burst timer may beat the HUP
        assert fields(last, TERMINATION) == TERMINATION
        daemon.write_config(CONFIG)
        daemon.signal(signal.SIGHUP)
        assert fields(rx1.next(1), ADVERTISEMENT) == ADVERTISEMENT


def test_an_interface_back_up_starts_over_at_once(bed, start):
    """Coming back up is a start: an advertisement at once, where the
    schedule would have had the next one INTERVAL after the last."""
    with Capture(bed.ns("rx1")) as rx1:
        start(CONFIG, "-m", str(INTERVAL))
        burst = [rx1.next(2)] + [rx1.next(2 + SLACK) for _ in range(2)]
        assert None not in burst
        bed.exec("rtr", "ip", "link", "set", "b1", "down")
        try:
            time.sleep(0.3)
        finally:
            bed.exec("rtr", "ip", "link", "set", "b1", "up")
        again = rx1.next(1)
        assert fields(again, ADVERTISEMENT) == ADVERTISEMENT
        assert again["time"] - burst[-1]["time"] < INTERVAL - 0.5


def test_the_interval_must_be_4_to_180_seconds():
    def status(value):
        return subprocess.run([sys.executable, DAEMON, "-m", value, "-F", "/dev/null"],
                              capture_output=True).returncode
    assert [status(v) for v in ("4", "20", "180")] == [0, 0, 0]
    assert [status(v) for v in ("3", "181", "x", "")] == [64] * 4
