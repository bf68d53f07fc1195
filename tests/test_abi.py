"""The kernel structs, as linux/mroute.h, mroute6.h and in.h lay them out
on x86_64 (sizes and offsets checked against a compiled C program), and
the parsing of upcalls."""

import socket
import struct

import pytest

import smcroute as s

ADDR = socket.inet_aton("10.0.0.1")
GROUP = socket.inet_aton("225.1.2.3")
ADDR6 = socket.inet_pton(socket.AF_INET6, "fd00::1")
GROUP6 = socket.inet_pton(socket.AF_INET6, "ff2e::42")


@pytest.mark.parametrize("layout, size", [
    (s.VIFCTL, 16), (s.MFCCTL, 60), (s.SIOC_SG_REQ, 32), (s.IGMPMSG, 20),
    (s.MIF6CTL, 12), (s.MF6CCTL, 92), (s.SIOC_SG_REQ6, 80), (s.MRT6MSG, 40),
    (s.GROUP_REQ, 136), (s.GROUP_SOURCE_REQ, 264), (s.SOCKADDR_IN, 16), (s.SOCKADDR_IN6, 28),
])
def test_struct_sizes(layout, size):
    assert layout.size == size


def test_vifctl_by_ifindex():
    raw = s.MrouteV4.pack_vif(3, 7, 5)
    assert struct.unpack_from("@H", raw, 0) == (3,)                  # vifc_vifi
    assert raw[2] == s.VIFF_USE_IFINDEX and raw[3] == 5              # flags, threshold
    assert struct.unpack_from("@i", raw, 8) == (7,)                  # vifc_lcl_ifindex


def test_mfcctl_ttls_at_offset_10():
    raw = s.MrouteV4.pack_mfc(ADDR, GROUP, 2, ((0, 1), (5, 9)))
    assert raw[0:4] == ADDR and raw[4:8] == GROUP
    assert struct.unpack_from("@H", raw, 8) == (2,)                  # mfcc_parent
    ttls = raw[10:42]
    assert ttls[0] == 1 and ttls[5] == 9 and ttls.count(0) == 30


def test_mif6ctl_and_mf6cctl():
    raw = s.MrouteV6.pack_vif(4, 9, 1)
    assert struct.unpack_from("@HBBH", raw) == (4, 0, 1, 9)          # mifi flags threshold pifi
    raw = s.MrouteV6.pack_mfc(ADDR6, GROUP6, 1, ((0, 1), (3, 1)))
    assert struct.unpack_from("@H", raw, 0) == (socket.AF_INET6,)
    assert raw[8:24] == ADDR6 and raw[28 + 8:28 + 24] == GROUP6      # sin6_addr at 8
    assert struct.unpack_from("@H", raw, 56) == (1,)                 # mf6cc_parent
    assert struct.unpack_from("@I", raw, 60) == (0b1001,)            # mf6cc_ifset
    assert s.MrouteV6.pack_vif_del(4) == struct.pack("@H", 4)


def test_sioc_sg_req_counters_at_8_and_56():
    assert s.SIOC_SG_REQ.unpack(ADDR + GROUP + struct.pack("@QQQ", 1, 2, 3))[2:] == (1, 2, 3)
    raw = bytes(56) + struct.pack("@QQQ", 4, 5, 6)
    assert s.SIOC_SG_REQ6.unpack(raw)[2:] == (4, 5, 6)


def test_group_req_sockaddr_at_8_and_source_at_136():
    raw = s.GROUP_SOURCE_REQ.pack(7, s.sockaddr(GROUP), s.sockaddr(ADDR))
    assert struct.unpack_from("@I", raw) == (7,)
    assert struct.unpack_from("@H", raw, 8) == (socket.AF_INET,) and raw[12:16] == GROUP
    assert struct.unpack_from("@H", raw, 136) == (socket.AF_INET,) and raw[140:144] == ADDR


class Upcalls:
    """An Mroute with only its buffer, to parse crafted upcalls."""

    def __init__(self, cls, data):
        self.buf = bytearray(s.UPCALL_BUFSIZE)
        self.buf[:len(data)] = data
        self.parse = lambda: cls.parse_upcall(self, len(data))


def test_igmpmsg_nocache_is_parsed():
    upcall = bytes(8) + bytes([s.UPCALL_NOCACHE, 0, 2, 0]) + ADDR + GROUP
    assert Upcalls(s.MrouteV4, upcall).parse() == (s.UPCALL_NOCACHE, 2, ADDR, GROUP)


def test_real_igmp_is_not_an_upcall():
    # An IP header: protocol 2 (IGMP) sits where an upcall has mbz == 0.
    packet = bytes([0x46, 0, 0, 32, 0, 0, 0, 0, 1, 2, 0, 0]) + ADDR + GROUP
    assert Upcalls(s.MrouteV4, packet).parse() is None
    assert Upcalls(s.MrouteV4, bytes(12)).parse() is None


def test_mrt6msg_wrongmif_is_parsed():
    upcall = bytes([0, s.UPCALL_WRONGVIF]) + struct.pack("@H", 3) + bytes(4) + ADDR6 + GROUP6
    assert Upcalls(s.MrouteV6, upcall).parse() == (s.UPCALL_WRONGVIF, 3, ADDR6, GROUP6)
    icmp6 = bytes([135]) + upcall[1:]                                # a neighbour solicitation
    assert Upcalls(s.MrouteV6, icmp6).parse() is None


def test_mc_forwarding_is_switched_on_only_when_off(tmp_path):
    knob = tmp_path / "mc_forwarding"
    knob.write_text("0\n")
    assert s.switch_on(str(knob)) is True and knob.read_text() == "1"
    assert s.switch_on(str(knob)) is False                  # already on: not ours to undo
    assert s.switch_on(str(tmp_path / "missing")) is False


def test_ipv6_forwarding_is_on_while_the_daemon_runs(bed, start):
    start()
    assert bed.read("rtr", s.MC_FORWARDING_V6).strip() == "1"
