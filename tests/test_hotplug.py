"""End to end: interfaces that come and go while the daemon runs (PPP,
VLANs, USB, containers' veths).  Rules that name a missing interface are
pending; the daemon follows rtnetlink and brings exactly the affected
rules, joins and VIFs in line within a second, with no reload and no
command to poke it."""

import signal

import pytest
from netbed import wait_for
from test_forwarding import ALL, reached
from test_groups import igmp_groups

SG = "mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1 c1\n"
STAR_G = "mroute from c1 group 225.6.6.6 to b1\n"
JOIN = "mgroup from c1 group 225.8.8.8\n"


@pytest.fixture
def links(bed):
    """links.add(ifname): a veth from the router to rx2, named ifname on
    both ends, with addresses on rx2's end; removed after the test."""
    class Links:
        made = []

        def add(self, ifname="c1"):
            bed.add_link("rtr", ifname, "rx2", ifname)
            bed.exec("rx2", "ip", "addr", "add", "10.0.3.2/24", "dev", ifname)
            bed.exec("rx2", "ip", "addr", "add", "fd03::2/64", "dev", ifname, "nodad")
            bed.wait_ipv6_multicast("rx2", [ifname])
            self.made.append(ifname)

        def delete(self, ifname="c1"):
            bed.exec("rtr", "ip", "link", "del", ifname)

    yield Links()
    for ifname in Links.made:
        bed.exec("rtr", "ip", "link", "del", ifname, check=False)


def oifs_of(bed, group, version=4):
    """The outbound interfaces of the kernel's entry for `group`."""
    for line in bed.mroutes(version).splitlines():
        if group in line:
            if "Oifs:" not in line:
                return []
            oifs = line.split("Oifs:")[1].split("State:")[0]
            return sorted(word.split("(")[0] for word in oifs.split())
    return None


def within_a_second(predicate, why=lambda: "not within a second"):
    wait_for(predicate, timeout=1.0, why=why)


def test_rules_wait_for_a_missing_interface_and_say_what_for(start):
    daemon = start("mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1 c1\n"
                   + STAR_G + JOIN + "mroute from a1 group 225.7.0.0/16 to eth+\n")
    pending = daemon.show("pending")
    assert [(p["kind"], p["iif"], p["group"], p["waits_for"]) for p in pending] == [
        ("mroute", "a1", "225.1.2.3", ["interface c1"]),
        ("mroute", "c1", "225.6.6.6", ["interface c1"]),
        ("mgroup", "c1", "225.8.8.8", ["interface c1"]),
        ("mroute", "a1", "225.7.0.0/16", ["an interface matching eth+"])]
    assert pending[0]["origin"].endswith("smcroute.conf:1") and pending[0]["oifs"] == ["b1", "c1"]
    table = daemon.ok("show pending")
    assert table[0].split() == ["ORIGIN", "RULE", "WAITS", "FOR"]
    assert table[1].split()[1:] == "mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1 c1 " \
                                   "interface c1".split()
    assert len(table) == 5
    # The route already forwards to the outputs that exist, and says which one it waits for.
    [static] = [r for r in daemon.show() if r["kind"] == "static"]
    assert static["oifs"] == ["b1"]
    assert daemon.ok("show")[1].split()[-2:] == ["b1", "(c1)"]


def test_a_new_interface_takes_effect_within_a_second(bed, start, links):
    daemon = start(SG + STAR_G + JOIN)
    links.add("c1")
    # No reload, no command: the daemon follows the kernel's link events.
    within_a_second(lambda: oifs_of(bed, "225.1.2.3") == ["b1", "c1"], lambda: bed.mroutes())
    within_a_second(lambda: "225.8.8.8" in igmp_groups(bed, "c1"))
    assert "c1" in bed.vifs(4)      # for the (*,G) rule from c1
    assert daemon.show("pending") == []
    counts = bed.traffic(["225.1.2.3"], hosts=("rx2",), ifname="c1")
    assert reached(counts, "225.1.2.3") == {"rx2"}
    assert "active %s:1: mroute (10.0.0.1, 225.1.2.3) from a1 to b1 c1 is in effect" % daemon.config \
        in daemon.log()


def test_a_deleted_interface_frees_its_vif_and_its_rules_wait_again(bed, start, links):
    links.add("c1")
    daemon = start(SG + STAR_G + JOIN)
    assert oifs_of(bed, "225.1.2.3") == ["b1", "c1"]
    vif = bed.vifs(4)["c1"]
    links.delete("c1")
    within_a_second(lambda: oifs_of(bed, "225.1.2.3") == ["b1"], lambda: bed.mroutes())
    within_a_second(lambda: "c1" not in bed.vifs(4))
    assert {p["group"] for p in daemon.show("pending")} == {"225.1.2.3", "225.6.6.6", "225.8.8.8"}
    # The freed slot is reused by the next interface that needs one.
    daemon.ok("add b2 10.0.2.2 225.4.4.4 a1")
    assert bed.vifs(4)["b2"] == vif
    assert reached(bed.traffic(["225.1.2.3"]), "225.1.2.3") == {"rx1"}


def test_a_re_created_interface_is_used_again(bed, start, links):
    """SMCRoute 2.6.0 does not put it back as an outbound interface."""
    links.add("c1")
    start(SG + STAR_G + JOIN)
    links.delete("c1")
    within_a_second(lambda: oifs_of(bed, "225.1.2.3") == ["b1"])
    links.add("c1")                 # the same name, a new ifindex
    within_a_second(lambda: oifs_of(bed, "225.1.2.3") == ["b1", "c1"], lambda: bed.mroutes())
    within_a_second(lambda: "225.8.8.8" in igmp_groups(bed, "c1"))
    counts = bed.traffic(["225.1.2.3"], hosts=("rx2",), ifname="c1")
    assert reached(counts, "225.1.2.3") == {"rx2"}


def test_a_renamed_interface_is_followed(bed, start, links):
    links.add("c1")
    daemon = start(SG)
    bed.exec("rtr", "ip", "link", "set", "c1", "down")
    bed.exec("rtr", "ip", "link", "set", "c1", "name", "c9")
    links.made.append("c9")
    within_a_second(lambda: oifs_of(bed, "225.1.2.3") == ["b1"], lambda: bed.mroutes())
    assert "c9" not in bed.vifs(4)      # no rule names c9: its VIF is gone
    assert [p["waits_for"] for p in daemon.show("pending")] == [["interface c1"]]
    bed.exec("rtr", "ip", "link", "set", "c9", "name", "c1")
    bed.exec("rtr", "ip", "link", "set", "c1", "up")
    within_a_second(lambda: oifs_of(bed, "225.1.2.3") == ["b1", "c1"], lambda: bed.mroutes())
    assert "interface c1 (%d) is now c9" % daemon.show("interfaces")[-1]["index"] in daemon.log()


def test_an_interface_that_stops_multicast_loses_its_vif(bed, start):
    """SMCRoute 2.6.0 exits at the next `show` when a (*,G) rule's inbound
    interface loses its VIF like this."""
    daemon = start("mroute from b2 group 225.6.6.6 to b1\n"
                   "mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1 b2\n")
    assert "b2" in bed.vifs(4)
    bed.exec("rtr", "ip", "link", "set", "b2", "multicast", "off")
    try:
        within_a_second(lambda: "b2" not in bed.vifs(4) and oifs_of(bed, "225.1.2.3") == ["b1"])
        assert [p["waits_for"] for p in daemon.show("pending")] == \
            [["b2 to be multicast-capable"], ["b2 to be multicast-capable"]]
        assert daemon.ok("show")
    finally:
        bed.exec("rtr", "ip", "link", "set", "b2", "multicast", "on")
    within_a_second(lambda: "b2" in bed.vifs(4) and oifs_of(bed, "225.1.2.3") == ["b1", "b2"])
    assert daemon.show("pending") == []


def test_a_link_going_down_and_up_keeps_its_routes(bed, start):
    """A flapping link is no reason to rewrite routes: the kernel does not
    forward out of a down link, and does again once it is up."""
    daemon = start("mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1 b2\n")
    bed.traffic(["225.1.2.3"], hosts=())
    bed.exec("rtr", "ip", "link", "set", "b2", "down")
    within_a_second(lambda: {i["name"]: i["state"] for i in daemon.show("interfaces")}["b2"] == "down")
    assert reached(bed.traffic(["225.1.2.3"]), "225.1.2.3") == {"rx1"}
    bed.exec("rtr", "ip", "link", "set", "b2", "up")
    bed.wait_ipv6_multicast("rtr", ["b2"])
    within_a_second(lambda: "interface b2 is up" in daemon.log())
    assert reached(bed.traffic(["225.1.2.3"]), "225.1.2.3") == ALL
    assert [r["packets"] for r in daemon.show()] == [15]      # the same entry all along
    assert "interface b2 is down" in daemon.log()


def test_wildcards_pick_up_new_interfaces_and_drop_vanished_ones(bed, start, links):
    daemon = start("mroute from a1 group 225.9.0.0/16 to b1 c+\n"
                   "mroute from a1 source 10.0.0.1 group 225.1.2.3 to c+\n"
                   "mgroup from c+ group 225.8.8.8\n")
    bed.traffic(["225.9.1.1"], hosts=())
    assert oifs_of(bed, "225.9.1.1") == ["b1"]
    assert oifs_of(bed, "225.1.2.3") == []
    links.add("c1")
    within_a_second(lambda: oifs_of(bed, "225.9.1.1") == ["b1", "c1"], lambda: bed.mroutes())
    within_a_second(lambda: oifs_of(bed, "225.1.2.3") == ["c1"], lambda: bed.mroutes())
    within_a_second(lambda: "225.8.8.8" in igmp_groups(bed, "c1"))
    counts = bed.traffic(["225.9.1.1"], hosts=("rx2",), ifname="c1")
    assert reached(counts, "225.9.1.1") == {"rx2"}
    links.delete("c1")
    within_a_second(lambda: oifs_of(bed, "225.9.1.1") == ["b1"], lambda: bed.mroutes())
    assert daemon.proc.poll() is None


def test_missed_events_cost_one_full_re_read(bed, start):
    """When the kernel drops interface events (ENOBUFS: the daemon did not
    read them in time), the daemon reads every interface anew."""
    daemon = start("mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1 z1\n")
    bed.exec("rtr", "ip", "link", "add", "z0", "type", "veth", "peer", "name", "zp0")
    daemon.signal(signal.SIGSTOP)
    try:
        # Thousands of events while it sleeps, among them the one it waits for.
        churn = "".join("link set z0 mtu %d\n" % (1400 + n % 100) for n in range(6000))
        bed.exec("rtr", "sh", "-c", "printf '%s' | ip -batch -" % churn)
        bed.exec("rtr", "ip", "link", "add", "z1", "type", "veth", "peer", "name", "zp1")
    finally:
        daemon.signal(signal.SIGCONT)
    try:
        within_a_second(lambda: oifs_of(bed, "225.1.2.3") == ["b1", "z1"], lambda: daemon.log())
        assert "interface events overflowed, reading every interface anew" in daemon.log()
        assert daemon.ok("version")
    finally:
        bed.exec("rtr", "ip", "link", "del", "z0", check=False)
        bed.exec("rtr", "ip", "link", "del", "z1", check=False)
