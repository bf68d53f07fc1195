"""End to end on OpenWrt's python3-light: the daemon starts, routes, learns
from upcalls, joins, answers its socket (JSON too) and reloads with every
module that OpenWrt splits out of python3-light made unimportable."""

import signal

import pytest
from netbed import DAEMON, Daemon, wait_for
from test_forwarding import ALL, reached

# What OpenWrt packages apart from python3-light (python3-asyncio,
# python3-codecs, python3-ctypes, ...), C parts included.
NOT_IN_LIGHT = sorted({
    "asyncio", "_asyncio", "ctypes", "_ctypes", "dbm", "_dbm", "_gdbm", "decimal", "_decimal",
    "_pydecimal", "email", "logging", "lzma", "_lzma", "multiprocessing", "_multiprocessing",
    "curses", "_curses", "_curses_panel", "ssl", "_ssl", "hashlib", "_hashlib", "pydoc",
    "readline", "sqlite3", "_sqlite3", "unittest", "urllib", "uuid", "_uuid", "xml", "pyexpat",
    "unicodedata", "_codecs_cn", "_codecs_hk", "_codecs_iso2022", "_codecs_jp", "_codecs_kr",
    "_codecs_tw", "_multibytecodec"})

LAUNCHER = """\
import sys
LACKS = set(%r)
class Light:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in LACKS:
            raise ImportError("%%s is not in python3-light" %% name)
for name in list(sys.modules):
    if name.split(".")[0] in LACKS:
        raise SystemExit("%%s was imported before the daemon started" %% name)
sys.meta_path.insert(0, Light())
sys.argv[0] = %r
sys.path.insert(0, %r)
import smcroute
sys.exit(smcroute.main())
"""


class LightDaemon(Daemon):
    lacks = NOT_IN_LIGHT

    def command_line(self, *extra):
        line = super().command_line(*extra)
        program = ["-I", "-S", "-c", LAUNCHER % (self.lacks, DAEMON, DAEMON.rsplit("/", 1)[0])]
        return line[:5] + program + line[line.index("-u"):]


class MinimalDaemon(LightDaemon):
    """Debian's python3-minimal has no json module either."""
    lacks = NOT_IN_LIGHT + ["json", "_json"]


CONFIG = """\
mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1 b2
mroute from a1 group 225.3.0.0/16 to b2
mroute from a1 group ff2e::/112 to b1
mgroup from a1 group 225.1.2.3
"""


@pytest.fixture
def light(bed, tmp_path):
    daemon = LightDaemon(bed, CONFIG, workdir=str(tmp_path / "light"))
    yield daemon.start()
    assert daemon.stop() == 0, daemon.log()
    assert "is not in python3-light" not in daemon.log()
    assert "internal error" not in daemon.log(), daemon.log()


def test_the_daemon_routes_learns_and_answers_without_what_light_lacks(bed, light):
    counts = bed.traffic(["225.1.2.3", "225.3.4.5", "ff2e::7"])
    assert reached(counts, "225.1.2.3") == ALL
    assert reached(counts, "225.3.4.5", 4) == {"rx2"}
    assert reached(counts, "ff2e::7", 4) == {"rx1"}
    kinds = {(r["group"], r["kind"]) for r in light.show()}
    assert {("225.1.2.3", "static"), ("225.3.4.5", "learned"), ("ff2e::7", "learned")} <= kinds
    assert light.show("groups")[0]["group"] == "225.1.2.3"
    assert light.ctl("show interfaces")[-1] == "ok"
    assert light.ok("add a1 10.0.0.1 225.1.2.4 b1") == []


def test_the_daemon_reloads_without_what_light_lacks(bed, light):
    light.write_config(CONFIG.replace("to b1 b2", "to b2"))
    assert light.ctl("reload")[-1] == "ok"
    assert reached(bed.traffic(["225.1.2.3"]), "225.1.2.3") == {"rx2"}
    light.write_config(CONFIG)
    light.signal(signal.SIGHUP)
    wait_for(lambda: reached(bed.traffic(["225.1.2.3"]), "225.1.2.3") == ALL, timeout=20)
    assert light.ctl("check")[-2:] == ["no changes", "ok"]


def test_without_json_a_json_request_gets_a_plain_error(bed, tmp_path):
    daemon = MinimalDaemon(bed, CONFIG, workdir=str(tmp_path / "minimal")).start()
    assert daemon.ctl("show json") == ["error: JSON output needs Python's json module"]
    assert daemon.ctl("show routes smcroute")[-1] == "ok"
    assert daemon.stop() == 0, daemon.log()
