"""End to end: multicast sent from snd is forwarded by the daemon in rtr to
rx1 and rx2 exactly as the config says, for IPv4 and IPv6."""

from netbed import OTHER_SOURCE4, OTHER_SOURCE6, new_port

ALL = {"rx1", "rx2"}


def reached(counts, group, minimum=5):
    """The receivers that got at least `minimum` packets for `group`."""
    return {host for host, groups in counts.items() if groups.get(group, 0) >= minimum}


def test_sg_route_forwards_ipv4_to_both_receivers(bed, start):
    start("mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1 b2\n")
    assert reached(bed.traffic(["225.1.2.3"]), "225.1.2.3") == ALL


def test_sg_route_forwards_ipv6_to_both_receivers(bed, start):
    start("mroute from a1 source fd00::1 group ff2e::42 to b1 b2\n")
    assert reached(bed.traffic(["ff2e::42"]), "ff2e::42") == ALL


def test_sg_route_does_not_forward_another_source(bed, start):
    start("mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1 b2\n"
          "mroute from a1 source fd00::1 group ff2e::42 to b1 b2\n")
    assert reached(bed.traffic(["225.1.2.3"], source=OTHER_SOURCE4), "225.1.2.3", 1) == set()
    assert reached(bed.traffic(["ff2e::42"], source=OTHER_SOURCE6), "ff2e::42", 1) == set()


def test_ttl_1_is_not_forwarded(bed, start):
    start("mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1 b2\n")
    assert reached(bed.traffic(["225.1.2.3"], ttl=1), "225.1.2.3", 1) == set()
    assert reached(bed.traffic(["225.1.2.3"], ttl=2), "225.1.2.3") == ALL


def test_ttl_threshold_of_an_outbound_interface(bed, start):
    start("phyint b2 ttl-threshold 5\n"
          "mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1 b2\n")
    assert reached(bed.traffic(["225.1.2.3"], ttl=4), "225.1.2.3") == {"rx1"}
    assert reached(bed.traffic(["225.1.2.3"], ttl=6), "225.1.2.3") == ALL


def test_star_g_learns_and_forwards_ipv4(bed, start):
    start("mroute from a1 group 225.3.3.3 to b1 b2\n")
    assert reached(bed.traffic(["225.3.3.3"]), "225.3.3.3", 4) == ALL
    assert "(10.0.0.1,225.3.3.3)" in bed.mroutes(4)


def test_star_g_learns_and_forwards_ipv6(bed, start):
    start("mroute from a1 group ff2e::3:3 to b1 b2\n")
    assert reached(bed.traffic(["ff2e::3:3"]), "ff2e::3:3", 4) == ALL
    assert "(fd00::1,ff2e::3:3)" in bed.mroutes(6)


def test_star_g_learns_each_source_separately(bed, start):
    daemon = start("mroute from a1 group 225.3.3.3 to b1\n")
    bed.traffic(["225.3.3.3"])
    bed.traffic(["225.3.3.3"], source=OTHER_SOURCE4)
    learned = {(r["source"], r["group"]) for r in daemon.show() if r["kind"] == "learned"}
    assert learned == {("10.0.0.1", "225.3.3.3"), ("10.0.0.9", "225.3.3.3")}


def test_unrouted_group_gets_a_stop_filter(bed, start):
    daemon = start("mroute from a1 group 225.3.3.3 to b1\n")
    assert reached(bed.traffic(["225.4.4.4"]), "225.4.4.4", 1) == set()
    stops = [r for r in daemon.show() if r["kind"] == "stop"]
    assert [(r["source"], r["group"], r["iif"], r["oifs"]) for r in stops] == \
        [("10.0.0.1", "225.4.4.4", "a1", [])]
    assert "(10.0.0.1,225.4.4.4)" in bed.mroutes(4)


def test_unrouted_ipv6_group_gets_a_stop_filter(bed, start):
    daemon = start("mroute from a1 group ff2e::3:3 to b1\n")
    assert reached(bed.traffic(["ff2e::4:4"]), "ff2e::4:4", 1) == set()
    assert [r["group"] for r in daemon.show() if r["kind"] == "stop"] == ["ff2e::4:4"]


def test_group_range_template(bed, start):
    start("mroute from a1 group 225.5.0.0/16 to b1\n"
          "mroute from a1 group ff2e::100/120 to b2\n")
    counts = bed.traffic(["225.5.7.7", "225.6.0.1", "ff2e::1ff", "ff2e::200"])
    assert reached(counts, "225.5.7.7", 4) == {"rx1"}
    assert reached(counts, "ff2e::1ff", 4) == {"rx2"}
    assert reached(counts, "225.6.0.1", 1) == set()
    assert reached(counts, "ff2e::200", 1) == set()


def test_source_range_template(bed, start):
    start("mroute from a1 source 10.0.0.0/29 group 225.7.7.7 to b1\n"
          "mroute from a1 source fd00::/125 group ff2e::7 to b1\n")
    counts = bed.traffic(["225.7.7.7", "ff2e::7"])
    assert reached(counts, "225.7.7.7", 4) == {"rx1"}
    assert reached(counts, "ff2e::7", 4) == {"rx1"}
    assert reached(bed.traffic(["225.7.7.7"], source=OTHER_SOURCE4), "225.7.7.7", 1) == set()
    assert reached(bed.traffic(["ff2e::7"], source=OTHER_SOURCE6), "ff2e::7", 1) == set()


def test_most_specific_template_wins(bed, start):
    start("mroute from a1 group 225.8.0.0/16 to b1\n"
          "mroute from a1 group 225.8.8.0/24 to b2\n"
          "mroute from a1 source 10.0.0.9 group 225.8.0.0/16 to b1 b2\n")
    counts = bed.traffic(["225.8.8.8", "225.8.9.9"])
    assert reached(counts, "225.8.8.8", 4) == {"rx2"}
    assert reached(counts, "225.8.9.9", 4) == {"rx1"}
    counts = bed.traffic(["225.8.9.9"], source=OTHER_SOURCE4)
    assert reached(counts, "225.8.9.9", 4) == ALL


def test_wildcard_outbound_interfaces(bed, start):
    start("mroute from a1 group 225.9.0.1 to b+\n")
    assert reached(bed.traffic(["225.9.0.1"]), "225.9.0.1", 4) == ALL


def test_stop_filter_moves_to_the_interface_a_rule_accepts(bed, start):
    """The same (S,G) seen first where no rule takes it, then where one
    does: the WRONGVIF upcall moves the entry and traffic flows."""
    daemon = start("phyint a1\n"
                   "mroute from b1 group 225.9.9.9 to b2\n")
    bed.traffic(["225.9.9.9"], hosts=())
    assert [r["iif"] for r in daemon.show() if r["kind"] == "stop"] == ["a1"]
    bed.exec("rx1", "ip", "addr", "add", "10.0.0.1/32", "dev", "eth0")
    try:
        port = new_port()
        with bed.receivers(port, ["225.9.9.9"], hosts=("rx2",)) as receivers:
            bed.send("225.9.9.9", port, count=10, source="10.0.0.1", host="rx1")
    finally:
        bed.exec("rx1", "ip", "addr", "del", "10.0.0.1/32", "dev", "eth0")
    assert receivers.counts["rx2"]["225.9.9.9"] >= 5
    assert [r["iif"] for r in daemon.show() if r["kind"] == "learned"] == ["b1"]
