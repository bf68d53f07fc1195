"""End to end: mgroup/ssmgroup joins from the config, as the kernel shows
them in /proc/net/igmp, igmp6, mcfilter and mcfilter6."""


def igmp_groups(bed, ifname):
    """IPv4 groups joined on `ifname`, as dotted quads, from /proc/net/igmp."""
    groups, current = set(), None
    for line in bed.read("rtr", "/proc/net/igmp").splitlines()[1:]:
        fields = line.split()
        if not line.startswith((" ", "\t")):
            current = fields[1].rstrip(":")
        elif current == ifname:
            groups.add(".".join(str(b) for b in bytes.fromhex(fields[0])[::-1]))
    return groups


def igmp6_groups(bed, ifname):
    return {f[2] for f in (line.split() for line in bed.read("rtr", "/proc/net/igmp6").splitlines())
            if f[1] == ifname}


def mcfilter(bed, version=4):
    path = "/proc/net/mcfilter" if version == 4 else "/proc/net/mcfilter6"
    return {(f[1], f[2], f[3]) for f in (line.split() for line in bed.read("rtr", path).splitlines()[1:])}


def test_asm_and_ssm_joins_from_the_config(bed, start):
    start("mgroup from b1 group 225.1.1.1\n"
          "ssmgroup from b1 source 10.0.0.1 group 232.1.1.1\n"
          "mgroup from b2 group ff2e::11\n"
          "ssmgroup from b2 source fd00::1 group ff3e::11\n")
    assert "225.1.1.1" in igmp_groups(bed, "b1")
    assert ("b1", "0xe8010101", "0x0a000001") in mcfilter(bed)
    assert "ff2e0000000000000000000000000011" in igmp6_groups(bed, "b2")
    assert ("b2", "ff3e0000000000000000000000000011", "fd000000000000000000000000000001") \
        in mcfilter(bed, 6)


def test_group_and_source_ranges_are_expanded(bed, start):
    start("mgroup from b1 group 225.2.2.0/30\n"
          "mgroup from b1 source 10.0.0.0/31 group 232.2.2.2\n"
          "mgroup from b2 group ff2e::20/126\n")
    assert {"225.2.2.0", "225.2.2.1", "225.2.2.2", "225.2.2.3"} <= igmp_groups(bed, "b1")
    assert {("b1", "0xe8020202", "0x0a000000"), ("b1", "0xe8020202", "0x0a000001")} <= mcfilter(bed)
    assert {"ff2e00000000000000000000000000%02x" % n for n in range(0x20, 0x24)} <= \
        igmp6_groups(bed, "b2")


def test_thirty_joins_on_one_interface(bed, start):
    """The kernel allows 20 memberships per socket; the daemon opens more."""
    daemon = start("mgroup from b1 group 225.3.3.0/27\n"
                   "mgroup from b1 source 10.0.0.0/27 group 232.3.3.3\n")
    assert {"225.3.3.%d" % n for n in range(30)} <= igmp_groups(bed, "b1")
    assert len({f for f in mcfilter(bed) if f[1] == "0xe8030303"}) == 32
    assert len(daemon.show("groups")) == 64


def test_joins_on_a_wildcard_interface(bed, start):
    start("mgroup from b+ group 225.4.4.4\n")
    assert "225.4.4.4" in igmp_groups(bed, "b1")
    assert "225.4.4.4" in igmp_groups(bed, "b2")


def test_membership_on_a_missing_interface_waits(bed, start):
    daemon = start("mgroup from eth7 group 225.5.5.5\n")
    assert daemon.show("groups") == []
    assert [(p["kind"], p["iif"], p["group"]) for p in daemon.show("pending")] == \
        [("mgroup", "eth7", "225.5.5.5")]
    assert "eth7" in daemon.log()
