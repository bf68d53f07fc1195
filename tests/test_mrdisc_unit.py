"""RFC 4286 messages and schedule, without the network."""

import socket
import struct

import pytest

from smcroute import (
    ADVERT_JITTER,
    IGMP_MRDISC_ADV,
    IGMP_MRDISC_SOL,
    IGMP_MRDISC_TERM,
    MAX_INITIAL_ADVERT_INTERVAL,
    MAX_INITIAL_ADVERTISEMENTS,
    MAX_RESPONSE_DELAY,
    MRDISC_INTERVAL,
    MRDISC_INTERVALS,
    MRDISC_MSG,
    ROUTER_ALERT,
    RouterDiscovery,
    advert_delay,
    igmp_checksum,
    mrdisc_message,
    parse_igmp,
)

# Checksums ---------------------------------------------------------------


def test_checksum_of_rfc1071_example():
    # RFC 1071 section 3: these bytes sum to 0xddf2.
    assert igmp_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


def test_checksum_pads_odd_lengths_and_folds_carries():
    assert igmp_checksum(b"\x01") == 0xFEFF
    assert igmp_checksum(b"") == 0xFFFF
    assert igmp_checksum(b"\xff\xff\x00\x02") == 0xFFFD     # 0x10001 folds to 0x0002


def test_checksum_verifies_kernel_made_igmp():
    # An IGMPv3 report for 224.0.0.2 as Linux sent it on a test veth.
    assert igmp_checksum(bytes.fromhex("2200f9fb0000000104000000e0000002")) == 0


# Messages ------------------------------------------------------------------


def test_advertisement_layout():
    message = mrdisc_message(IGMP_MRDISC_ADV, 20)
    assert len(message) == 8
    msgtype, interval, checksum, query_interval, robustness = MRDISC_MSG.unpack(message)
    assert (msgtype, interval, query_interval, robustness) == (0x30, 20, 0, 0)
    assert igmp_checksum(message) == 0
    assert message == bytes.fromhex("3014cfeb00000000")


@pytest.mark.parametrize("interval", [4, 20, 180])
def test_advertisement_code_is_the_interval(interval):
    message = mrdisc_message(IGMP_MRDISC_ADV, interval)
    assert message[0] == 0x30 and message[1] == interval and igmp_checksum(message) == 0


def test_termination_layout():
    message = mrdisc_message(IGMP_MRDISC_TERM)
    assert message[:2] == b"\x32\x00" and message[4:] == bytes(4)
    assert igmp_checksum(message) == 0


def test_interval_range_and_default_are_rfc_4286s():
    assert MRDISC_INTERVAL == 20
    assert (MRDISC_INTERVALS[0], MRDISC_INTERVALS[-1]) == (4, 180)
    assert ROUTER_ALERT == bytes([0x94, 0x04, 0x00, 0x00])


# Parsing what a raw socket reads --------------------------------------------


def ip_packet(igmp, options=ROUTER_ALERT, protocol=2, total=None, version=4):
    """An IPv4 packet as a Linux raw socket returns it: header, then payload."""
    ihl = (20 + len(options)) // 4
    total = 20 + len(options) + len(igmp) if total is None else total
    header = struct.pack("!BBHHHBBH4s4s", version << 4 | ihl, 0xC0, total, 0, 0, 1,
                         protocol, 0, socket.inet_aton("10.99.0.2"),
                         socket.inet_aton("224.0.0.2")) + options
    header = header[:10] + struct.pack("!H", igmp_checksum(header)) + header[12:]
    return header + igmp


def solicitation(size=4):
    message = bytearray(size)
    message[0] = IGMP_MRDISC_SOL
    struct.pack_into("!H", message, 2, igmp_checksum(bytes(message)))
    return bytes(message)


def test_parses_solicitations_of_rfc_and_struct_igmp_size():
    assert solicitation(4) == bytes.fromhex("3100ceff")
    assert parse_igmp(ip_packet(solicitation(4))) == IGMP_MRDISC_SOL
    assert parse_igmp(ip_packet(solicitation(8))) == IGMP_MRDISC_SOL
    assert parse_igmp(ip_packet(solicitation(4), options=b"")) == IGMP_MRDISC_SOL


def test_parse_ignores_bytes_past_the_ip_total_length():
    assert parse_igmp(ip_packet(solicitation(4)) + b"\xaa" * 18) == IGMP_MRDISC_SOL


@pytest.mark.parametrize("packet", [
    ip_packet(b"\x31\x00\xce\xfe"),                             # bad IGMP checksum
    ip_packet(solicitation(4), protocol=17),                    # not IGMP
    ip_packet(solicitation(4), version=6),
    ip_packet(solicitation(4))[:26],                            # truncated
    ip_packet(solicitation(4), total=26),                       # IGMP shorter than 4
    b"\x46",
], ids=["checksum", "protocol", "version", "truncated", "short", "tiny"])
def test_parse_rejects(packet):
    assert parse_igmp(packet) is None


# Schedule ------------------------------------------------------------------


@pytest.mark.parametrize("interval", [4, 20, 180])
def test_periodic_delay_is_interval_plus_jitter(interval):
    delays = [advert_delay(interval) for _ in range(2000)]
    assert all(interval <= d <= interval * (1 + ADVERT_JITTER) for d in delays)
    assert max(delays) - min(delays) > interval * ADVERT_JITTER / 2     # it does vary


def test_initial_delays_are_at_most_max_initial_advert_interval():
    delays = [advert_delay(20, initial=True) for _ in range(2000)]
    assert all(0 <= d <= MAX_INITIAL_ADVERT_INTERVAL for d in delays)
    assert max(delays) - min(delays) > 1


class Offline(RouterDiscovery):
    """RouterDiscovery with its socket calls recorded instead of made."""

    def __init__(self, interval=4):
        self.interval, self.links = interval, {}
        self.sent, self.memberships, self.logged = [], [], []
        self.log = self.logged.append

    def _send(self, ifindex, message):
        self.sent.append((ifindex, message[0]))

    def _membership(self, option, ifindex):
        self.memberships.append((option, ifindex))


def run_until(rd, end, now):
    """Fire on_timer at each deadline until `end`; returns the send times."""
    times = []
    while rd.deadline() is not None and rd.deadline() <= end:
        now = max(now, rd.deadline())
        before = len(rd.sent)
        rd.on_timer(now)
        times += [now] * (len(rd.sent) - before)
    return times


def test_start_sends_at_once_then_an_initial_burst_then_periodically():
    rd = Offline(interval=4)
    rd.start(7)
    start = rd.deadline()
    assert rd.memberships == [(socket.IP_ADD_MEMBERSHIP, 7)]
    times = run_until(rd, start + 30, start)
    assert times[0] == start
    gaps = [b - a for a, b in zip(times, times[1:])]
    initial = MAX_INITIAL_ADVERTISEMENTS - 1
    assert all(0 <= g <= MAX_INITIAL_ADVERT_INTERVAL for g in gaps[:initial])
    assert all(4 <= g <= 4 * (1 + ADVERT_JITTER) for g in gaps[initial:])
    assert set(rd.sent) == {(7, IGMP_MRDISC_ADV)}


def test_start_twice_is_one_start():
    rd = Offline()
    rd.start(7)
    rd.start(7)
    assert len(rd.memberships) == 1 and list(rd.links) == [7]


def test_solicitation_is_answered_at_once_or_within_max_response_delay():
    rd = Offline(interval=20)
    rd.start(7)
    now = rd.deadline()
    run_until(rd, now + 10, now)                # past the initial burst
    last = rd.links[7].sent
    # Quiet for longer than MAX_RESPONSE_DELAY: answered at once.
    rd.prompt(7, last + 5)
    assert rd.deadline() == last + 5
    rd.on_timer(last + 5)
    # A burst of solicitations right after: one answer, MAX_RESPONSE_DELAY later.
    for t in (0.1, 0.5, 1.0, 1.9):
        rd.prompt(7, last + 5 + t)
    assert rd.deadline() == last + 5 + MAX_RESPONSE_DELAY
    assert run_until(rd, last + 5 + 10, last + 5.1) == [last + 5 + MAX_RESPONSE_DELAY]


def test_solicitation_on_an_interface_not_started_changes_nothing():
    rd = Offline()
    rd.prompt(9, 100.0)
    assert rd.deadline() is None and rd.sent == []


def test_stop_terminates_and_leaves_and_close_stops_all():
    rd = Offline()
    rd.start(7)
    rd.start(8)
    rd.stop(7)
    rd.stop(7)                                  # already stopped: nothing
    assert rd.sent == [(7, IGMP_MRDISC_TERM)]
    assert rd.memberships[-1] == (socket.IP_DROP_MEMBERSHIP, 7)
    rd.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rd.close()
    assert rd.sent[-1] == (8, IGMP_MRDISC_TERM) and rd.links == {}
    assert rd.sock.fileno() == -1
