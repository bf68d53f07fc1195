"""The smcroute.conf parser: every directive, and every error with its line."""

import os
import socket

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import smcroute
from smcroute import parse_net, read_config


@pytest.fixture
def parse(tmp_path, monkeypatch):
    """parse(text, {name: text of other files}) -> Config, read from
    smcroute.conf in an empty working directory."""
    monkeypatch.chdir(tmp_path)

    def parse(text, files=()):
        for name, body in dict(files).items():
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
        (tmp_path / "smcroute.conf").write_text(text)
        return read_config("smcroute.conf")
    return parse


def routes(config):
    return [(iif, source and str(source), str(group), list(oifs))
            for iif, source, group, oifs, _ in config.rules.listing()]


def exact(config):
    return [config.rules.is_exact(iif, source, group)
            for iif, source, group, _, _ in config.rules.listing()]


def memberships(config):
    return [(m.iif, m.source and str(m.source), str(m.group)) for m in config.memberships.values()]


# Directives -----------------------------------------------------------------

def test_mroute_forms(parse):
    config = parse("mroute from eth0 source 10.0.0.1 group 225.1.2.3 to eth1 eth2\n"
                   "mroute from eth0 group 225.1.2.3 to eth1\n"
                   "mroute from eth0 source 0.0.0.0 group 225.1.0.0/16 to eth1\n"
                   "mroute from eth0 source 10.0.0.0/24 group 225.1.2.3/32 to eth1\n"
                   "mroute group ff2e::1 from eth0 to eth1\n"
                   "mroute from eth0 source :: group ff2e::/16 to eth+\n"
                   "mroute from eth0 source 10.0.0.1 group 225.1.2.4\n")
    assert config.errors == []
    assert routes(config) == [
        ("eth0", "10.0.0.1", "225.1.2.3", ["eth1", "eth2"]),
        ("eth0", None, "225.1.2.3", ["eth1"]),
        ("eth0", None, "225.1.0.0/16", ["eth1"]),
        ("eth0", "10.0.0.0/24", "225.1.2.3", ["eth1"]),
        ("eth0", None, "ff2e::1", ["eth1"]),
        ("eth0", None, "ff2e::/16", ["eth+"]),
        ("eth0", "10.0.0.1", "225.1.2.4", []),
    ]
    assert exact(config) == [True, False, False, False, False, False, True]


def test_host_bits_of_a_prefix_are_cleared(parse):
    config = parse("mroute from eth0 source 10.1.2.3/8 group 225.1.2.3/24 to eth1\n")
    assert routes(config) == [("eth0", "10.0.0.0/8", "225.1.2.0/24", ["eth1"])]


def test_mgroup_and_ssmgroup(parse):
    config = parse("mgroup from eth0 group 225.1.2.3\n"
                   "ssmgroup from eth0 source 10.0.0.1 group 232.1.1.1\n"
                   "mgroup from eth1 source fd00::1 group ff3e::1\n"
                   "mgroup from eth+ group 225.1.2.0/30\n")
    assert config.errors == []
    assert memberships(config) == [("eth0", None, "225.1.2.3"), ("eth0", "10.0.0.1", "232.1.1.1"),
                                   ("eth1", "fd00::1", "ff3e::1"), ("eth+", None, "225.1.2.0/30")]


def test_phyint(parse):
    config = parse("phyint eth0\n"
                   "phyint eth1 disable\n"
                   "phyint eth2 enable ttl-threshold 8\n"
                   "phyint eth3 ttl-threshold 255 enable\n")
    assert config.errors == []
    assert [(p.name, p.enabled, p.ttl) for p in config.phyints.values()] == [
        ("eth0", True, 1), ("eth1", False, 1), ("eth2", True, 8), ("eth3", True, 255)]


def test_phyint_mrdisc(parse):
    config = parse("phyint eth0 enable mrdisc\n")
    assert config.errors == [] and config.warnings == []
    assert config.phyints["eth0"].mrdisc


def test_seed_v1_99_lines(parse):
    config = parse("mgroup from eth0 group 239.1.1.1\n"
                   "mroute from eth0 source 192.168.1.2 group 239.1.1.1 to eth1 eth2\n"
                   "mroute from eth0 group 239.1.1.2 to eth1\n")
    assert config.errors == []
    assert len(routes(config)) == 2 and len(config.memberships) == 1


def test_comments_and_blank_lines(parse):
    config = parse("# a comment\n\n   \t\n"
                   "mroute from eth0 group 225.1.2.3 # to eth1 is a stop filter\n"
                   "  #mroute from eth0 group 225.1.2.4 to eth1\n"
                   "phyint eth0 enable #ttl-threshold 5\n")
    assert config.problems == []
    assert routes(config) == [("eth0", None, "225.1.2.3", [])]
    assert config.phyints["eth0"].ttl == 1


def test_a_hash_after_to_is_refused_not_guessed(parse):
    """SMCRoute takes every word after `to` for an interface, `#` too."""
    config = parse("mroute from eth0 group 225.1.2.3 to eth1 # eth2 is off\n")
    assert config.errors == ["smcroute.conf:1: '#' after 'to' is no comment: SMCRoute takes '#', 'eth2', "
                             "'is', 'off' for outbound interfaces; put the comment on a line of its own"]


def test_keywords_as_smcroute_matches_them(parse):
    """Any word that begins with a directive or keyword is it; keywords in
    any order; an unknown word is skipped, a repeated keyword's last value
    counts: each as SMCRoute does, with a warning."""
    config = parse("mroutes fromage eth0 groups 225.1.2.3 sources 10.0.0.1 tomorrow eth1\n"
                   "phyints eth1 enabled ttl-thresholds 9 mrdiscovery\n"
                   "mroute from eth0 src 10.0.0.2 group 225.1.2.4 to eth1\n"
                   "mroute from eth0 bogus source 10.0.0.3 group 225.1.2.7 to eth1\n"
                   "mroute from eth9 from eth0 group 225.1.2.5 to eth1\n"
                   "mgroups from eth0 group 225.1.2.6 to eth1\n"
                   "phyint eth2 fast ENABLE\n")
    assert config.errors == []
    assert routes(config) == [("eth0", "10.0.0.1", "225.1.2.3", ["eth1"]),
                              ("eth0", None, "225.1.2.4", ["eth1"]),
                              ("eth0", "10.0.0.3", "225.1.2.7", ["eth1"]),
                              ("eth0", None, "225.1.2.5", ["eth1"])]
    assert config.phyints["eth1"][1:4] == (True, 9, True)
    assert memberships(config) == [("eth0", None, "225.1.2.6")]
    assert config.warnings == [
        "smcroute.conf:3: unknown word 'src' ignored, as SMCRoute does",
        "smcroute.conf:3: unknown word '10.0.0.2' ignored, as SMCRoute does",
        "smcroute.conf:4: unknown word 'bogus' ignored, as SMCRoute does",
        "smcroute.conf:5: 'from' given twice: the last one counts, as in SMCRoute",
        "smcroute.conf:6: unknown word 'to' ignored, as SMCRoute does",
        "smcroute.conf:6: unknown word 'eth1' ignored, as SMCRoute does",
        "smcroute.conf:7: phyint: unknown option 'fast' ignored, as SMCRoute does; expected enable, "
        "disable, ttl-threshold N or mrdisc",
        "smcroute.conf:7: phyint: unknown option 'ENABLE' ignored, as SMCRoute does; expected enable, "
        "disable, ttl-threshold N or mrdisc"]


def test_lines_longer_than_smcroute_reads_are_refused(parse):
    """SMCRoute reads a line into 512 bytes: it cuts a longer one and reads
    the rest as a line of its own."""
    route = "mroute from eth0 group 225.1.2.3 to eth1"
    config = parse(route.ljust(511) + "\n" + route.ljust(512) + "\n"
                   + "mroute from eth0 group 225.1.2.4 to eth1\n")
    assert config.errors == ["smcroute.conf:2: line longer than 511 bytes: SMCRoute cuts it there and "
                             "reads the rest as another line"]
    assert [r[2] for r in routes(config)] == ["225.1.2.3", "225.1.2.4"]


def test_problems_come_in_line_order_and_a_foreign_file_is_not_echoed(parse):
    config = parse("mroute from eth0 group 225.1.2.3 via eth1\nbogus\ninclude secret\n",
                   {"secret": "".join("user%d:$6$hash%d:19000:0:99999:7:::\n" % (n, n) for n in range(40))})
    assert [text.split(":")[1] for _, text in config.problems[:3]] == ["1", "1", "2"]
    assert [severity for severity, _ in config.problems] == ["warning"] * 2 + ["error"] * 12
    assert config.problems[-1] == ("error", "secret: 30 more errors not shown, on lines 11, 12, 13, 14, "
                                            "15, 16, 17, 18, 19, 20, ...")
    assert config.error_count == 41
    assert not any("hash39" in text for _, text in config.problems)


# Include ----------------------------------------------------------------------

def test_include_is_relative_to_the_including_file_and_sorted(parse):
    config = parse("include smcroute.d/*.conf\nmgroup from eth0 group 225.0.0.9\n", {
        "smcroute.d/b.conf": "mgroup from eth0 group 225.0.0.2\n",
        "smcroute.d/a.conf": "mgroup from eth0 group 225.0.0.1\ninclude ../more\n",
        "smcroute.d/ignored.txt": "nonsense\n",
        "more": "mgroup from eth0 group 225.0.0.3\n"})
    assert config.errors == []
    assert [g for _, _, g in memberships(config)] == \
        ["225.0.0.1", "225.0.0.3", "225.0.0.2", "225.0.0.9"]


def test_include_errors_name_the_included_file_and_line(parse):
    config = parse("include other.conf\n", {"other.conf": "\nmroute from eth0 group 1.1.1.1\n"})
    assert config.errors == ["other.conf:2: 1.1.1.1 is not a multicast group"]


def test_include_of_a_glob_that_matches_nothing_is_fine(parse):
    assert parse("include nothing.d/*.conf\n").errors == []


def test_include_of_a_missing_file_is_an_error(parse):
    config = parse("include missing.conf\n")
    assert len(config.errors) == 1
    assert config.errors[0].startswith("smcroute.conf:1: cannot include")
    assert "missing.conf: No such file or directory" in config.errors[0]


def test_include_cycles_are_refused(parse):
    config = parse("include a.conf\n", {"a.conf": "include b.conf\n", "b.conf": "include a.conf\n"})
    assert len(config.errors) == 1
    assert config.errors[0].startswith("b.conf:1: include cycle: ")


def test_a_file_that_includes_itself(parse):
    config = parse("include smcroute.conf\nmgroup from eth0 group 225.1.1.1\n")
    assert len(config.errors) == 1 and "include cycle" in config.errors[0]
    assert len(config.memberships) == 1


# Errors ---------------------------------------------------------------------

@pytest.mark.parametrize("line, error", [
    ("bogus eth0", "unknown directive 'bogus', expected one of: include, phyint, mroute, "
                   "mgroup, ssmgroup"),
    ("mroute group 225.1.2.3 to eth1", "missing 'from'"),
    ("mroute from eth0 to eth1", "missing 'group'"),
    ("mroute from eth0 group 225.1.2.3 to eth1 to eth2",
     "'to' given twice: SMCRoute would take the second for an interface"),
    ("mroute from eth0 group 225.1.2.3 to " + " ".join("e%d" % n for n in range(33)),
     "33 words after 'to', at most 32 (SMCRoute crashes beyond)"),
    ("mroute from eth0 group", "'group' needs a value"),
    ("mroute from eth0 source 10.0.0.1/0 group 225.1.2.3", "source '10.0.0.1/0': /0 would be any "
                                                           "address, SMCRoute takes it for 10.0.0.1 alone"),
    ("mroute from eth0 group 225.1.2.3 to eth1#x", "'eth1#x': '#' starts a comment only at the start "
                                                   "of a word"),
    ("phyint enable eth0", "phyint enable: the interface name comes first"),
    ("mroute from eth0 # group 225.1.2.3", "missing 'group'"),
    ("mroute from group 225.1.2.3", "missing 'group': SMCRoute, and so smcroute.py, reads 'group' as "
                                    "the value of 'from'"),
    ("mroute from eth0 group 10.1.2.3 to eth1", "10.1.2.3 is not a multicast group"),
    ("mroute from eth0 group 224.0.0.0/3 to eth1", "224.0.0.0/3 is not a multicast group"),
    ("mroute from eth0 group 225.1.2 to eth1", "group '225.1.2' is not an IP address"),
    ("mroute from eth0 group 225.1.2.3/40 to eth1", "group '225.1.2.3/40': the prefix length must be 0 "
                                                    "to 32"),
    ("mroute from eth0 group ff2e::1/x to eth1", "group 'ff2e::1/x': the prefix length must be 0 to 128"),
    ("mroute from eth0 source 225.1.1.1 group 225.1.2.3 to eth1", "source 225.1.1.1 is a multicast address"),
    ("mroute from eth0 source fd00::1 group 225.1.2.3 to eth1",
     "source fd00::1 and group 225.1.2.3 are not the same IP version"),
    ("mroute from eth0/1 group 225.1.2.3 to eth1", "'eth0/1' is not a valid interface name"),
    ("mroute from eth0 group 225.1.2.3 to averyveryverylongname",
     "'averyveryverylongname' is not a valid interface name"),
    ("mroute from e+th group 225.1.2.3 to eth1", "'e+th' is not a valid interface name"),
    ("mgroup from eth0 group 225.0.0.0/8", "(*, 225.0.0.0/8) expands to 16777216 memberships, "
                                            "at most 4096 are allowed"),
    ("mgroup from eth0 source 10.0.0.0/24 group 232.1.1.0/27",
     "(10.0.0.0/24, 232.1.1.0/27) expands to 8192"),
    ("phyint", "phyint needs an interface name"),
    ("phyint eth0 ttl-threshold", "ttl-threshold without a value: a number from 1 to 255 is needed"),
    ("phyint eth0 ttl-threshold 0", "ttl-threshold '0': a number from 1 to 255 is needed"),
    ("phyint eth0 ttl-threshold 256", "ttl-threshold '256': a number from 1 to 255 is needed"),
    ("include", "include needs exactly one file name or pattern"),
    ("include a b", "include needs exactly one file name or pattern"),
])
def test_each_error_names_file_line_and_what_is_wrong(parse, line, error):
    config = parse("# line 1\nmgroup from eth0 group 225.1.1.1\n" + line + "\n")
    [problem] = config.errors
    assert problem.startswith("smcroute.conf:3: " + error)
    assert len(config.memberships) == 1          # the good line still counts


def test_every_bad_line_is_reported(parse):
    config = parse("bogus\nmroute from eth0 group 1.1.1.1\nphyint\n")
    assert [e.split(":")[1] for e in config.errors] == ["1", "2", "3"]


def test_unreadable_config(tmp_path):
    config = read_config(str(tmp_path / "missing.conf"))
    assert config.errors == ["%s: No such file or directory" % (tmp_path / "missing.conf")]


# Addresses --------------------------------------------------------------------

ipv4 = st.binary(min_size=4, max_size=4).flatmap(lambda a: st.tuples(st.just(a), st.integers(0, 32)))
ipv6 = st.binary(min_size=16, max_size=16).flatmap(lambda a: st.tuples(st.just(a), st.integers(0, 128)))


@given(st.one_of(ipv4, ipv6))
def test_a_prefix_prints_as_it_parses_and_contains_its_address(prefix):
    addr, length = prefix
    assume(length or not any(addr))       # X/0 is refused: SMCRoute reads it as X alone
    net = smcroute.Net(addr, length)
    family = socket.AF_INET if len(addr) == 4 else socket.AF_INET6
    text = "%s/%d" % (socket.inet_ntop(family, addr), length)
    assert parse_net(text) == net
    assert parse_net(str(net)) == net
    assert addr in net
    assert net.covers(parse_net(socket.inet_ntop(family, addr)))
    assert len(list(net)) == net.size if net.size <= 256 else True


def test_prefix_membership():
    net = parse_net("225.1.2.0/24")
    assert socket.inet_aton("225.1.2.255") in net
    assert socket.inet_aton("225.1.3.0") not in net
    assert socket.inet_pton(socket.AF_INET6, "ff2e::1") not in net
    assert [socket.inet_ntoa(a) for a in parse_net("225.1.2.4/31")] == ["225.1.2.4", "225.1.2.5"]


# Whatever the file holds ------------------------------------------------------

@given(st.text(alphabet=st.sampled_from(list("mroute from group source to phyint mgroup include "
                                              "ssmgroup enable ttl-threshold #/:.0123456789abcdef+\t\n")),
               max_size=600))
def test_any_text_gives_rules_or_errors_with_file_and_line(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "smcroute.conf"
    path.write_text(text)
    config = read_config(str(path))
    assert all(t.startswith(str(path) + ":") for _, t in config.problems)


@given(st.binary(max_size=2000))
def test_any_bytes_give_rules_or_errors_with_file_and_line(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "smcroute.conf"
    path.write_bytes(data)
    config = read_config(str(path))
    assert all(t.startswith(str(path) + ":") for _, t in config.problems)


def test_a_binary_file_is_refused_in_a_few_lines(parse, tmp_path):
    (tmp_path / "blob").write_bytes(bytes(range(256)) * 4000 + b"\n\0\xff" * 5000)
    config = parse("include blob\nmroute from a1 group 225.1.2.3 to b1\n")
    assert config.error_count and len(config.problems) <= 22
    assert any(t.startswith("blob: ") and "more" in t for _, t in config.problems)
    assert routes(config) == [("a1", None, "225.1.2.3", ["b1"])]


def test_a_ten_megabyte_line_is_one_error_and_the_next_line_counts(parse):
    config = parse("mroute from a1 group 225.1.2.3 to " + "b1 " * (10 << 20 // 3) + "\n"
                   "mroute from a1 group 225.1.2.4 to b2\n")
    assert config.errors == ["smcroute.conf:1: line longer than 511 bytes: SMCRoute cuts it "
                             "there and reads the rest as another line"]
    assert routes(config) == [("a1", None, "225.1.2.4", ["b2"])]


@pytest.mark.parametrize("target, why", [("/dev/zero", "larger than 64 MiB, no config"),
                                         ("fifo", "not a file"), (".", "Is a directory")])
def test_endless_devices_fifos_and_directories_are_no_config(parse, tmp_path, target, why):
    os.mkfifo(tmp_path / "fifo")            # nobody ever writes it: opening it would block
    config = parse("include %s\nmroute from a1 group 225.1.2.3 to b1\n" % target)
    assert config.errors[-1].startswith("smcroute.conf:1: cannot include ")
    assert config.errors[-1].endswith(why)
    assert routes(config) == [("a1", None, "225.1.2.3", ["b1"])]


def test_dev_null_is_an_empty_config():
    assert read_config("/dev/null").problems == []


def test_a_huge_file_is_refused_past_64_mib(parse, tmp_path):
    with open(tmp_path / "huge.conf", "wb") as huge:
        huge.truncate(1 << 30)              # sparse: a gigabyte of NULs
    config = parse("include huge.conf\n")
    assert config.errors[-1] == "smcroute.conf:1: cannot include huge.conf: larger than 64 MiB, no config"
