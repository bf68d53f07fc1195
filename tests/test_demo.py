"""`./build.sh demo` (python3 tests/demo.py, as root, from the project root)
tells its whole story in under 20 s, exits 0, and leaves nothing behind:
not when it is done, not when it fails, not when it is interrupted."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import require_root
from netbed import SLOWER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = [sys.executable, "tests/demo.py"]


def namespaces():
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                              check=True).stdout.split())


def processes_mentioning(text):
    """PIDs whose command line mentions `text`."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as cmdline:
                if text.encode() in cmdline.read():
                    found.add(int(pid))
        except OSError:
            pass
    return found


def demo_names(output):
    """The namespaces and the work directory the demo said it used."""
    return (set(re.findall(r"\(namespace (\S+)\)", output)),
            re.findall(r" -u (/\S+)/sock ", output)[:1])


def assert_left_nothing(output, before):
    names, workdirs = demo_names(output)
    assert names, output
    prefix = os.path.commonprefix(sorted(names))
    new = {name for name in namespaces() - before if name.startswith(prefix)}
    assert not new, "namespaces left behind: %s" % new
    for workdir in workdirs:
        assert not os.path.exists(workdir)
        assert not processes_mentioning(workdir), "processes left behind"


@pytest.fixture
def before():
    require_root()
    return namespaces()


def test_demo_tells_the_whole_story_in_under_20_s(before):
    began = time.monotonic()
    result = subprocess.run(DEMO, cwd=ROOT, capture_output=True, text=True, timeout=60 * SLOWER)
    elapsed = time.monotonic() - began
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert elapsed < 20 * SLOWER, "the demo took %.1f s" % elapsed
    assert result.stderr == ""

    # The lab and the config, with the command that starts the daemon.
    assert "snd eth0 ------ a1 rtr b1 ------ eth0 rx1" in out
    assert "mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1 b2" in out
    assert "mroute from a1 group ff2e::42 to b1" in out
    assert re.search(r"\$ ip netns exec \S+-rtr python3 smcroute\.py -u \S+ -n -f \S+ ", out)

    # IPv4 to both receivers, IPv6 (*,G) to rx1 only.
    assert re.search(r"rx1 got [45] of 5 to 225\.1\.2\.3 ", out), out
    assert re.search(r"rx2 got [45] of 5 to 225\.1\.2\.3 ", out), out
    assert re.search(r"rx1 got [45] of 5 to ff2e::42 ", out), out
    assert "rx2 got 0 of 5 to ff2e::42 " in out

    # The show table, through the daemon's own client: the static route,
    # the (S,G) learned from the template, the template, counters.
    story = out.split("\n4. ")[1]
    assert re.search(r"\$ ip netns exec \S+-rtr python3 smcroute\.py -u \S+ show\n", story)
    assert re.search(r"KIND +SOURCE +GROUP +IIF +PACKETS +BYTES +OIFS", story)
    assert re.search(r"static +10\.0\.0\.1 +225\.1\.2\.3 +a1 +[45] +\d+ +b1 b2", story)
    assert re.search(r"learned +fd00::1 +ff2e::42 +a1 +[45] +\d+ +b1", story)
    assert re.search(r"template +- +ff2e::42 +a1 +- +- +b1", story)

    # The runtime add: rx2 gets 225.1.2.4 after it, not before.
    before_add, after_add = out.split("\n5. ")[1].split(" add a1 ")
    assert "rx2 got 0 of 5 to 225.1.2.4 " in before_add
    assert after_add.startswith("10.0.0.1 225.1.2.4 b2\n")
    assert re.search(r"rx2 got [45] of 5 to 225\.1\.2\.4 ", after_add)
    assert "rx1 got 0 of 5 to 225.1.2.4 " in after_add
    assert re.search(r"static +10\.0\.0\.1 +225\.1\.2\.4 +a1 +\d+ +\d+ +b2\n", after_add)

    # Clean-up, and where to go next.
    assert "The daemon exited with status 0" in out
    assert "Next steps" in out
    assert_left_nothing(out, before)


def test_a_demo_whose_story_breaks_fails_and_cleans_up(before):
    """A config that leaves b2 out: rx2 gets nothing, so the demo must say
    so and exit 1, not print a story that did not happen."""
    broken = ("import sys; sys.path.insert(0, 'tests'); import demo; "
              "demo.CONFIG = demo.CONFIG.replace('to b1 b2', 'to b1'); sys.exit(demo.main())")
    result = subprocess.run([sys.executable, "-c", broken], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "demo FAILED: rx2 should have got the packets to 225.1.2.3, got 0 of 5\n" in result.stderr
    assert "the daemon's log:" in result.stderr
    assert re.search(r"rx1 got [45] of 5 to ff2e::42 ", result.stdout)   # every count is shown first
    assert "4. " not in result.stdout
    assert_left_nothing(result.stdout, before)


@pytest.mark.parametrize("signum, whom, at", [
    (signal.SIGINT, "group", "3. Send multicast"),     # Ctrl-C: the terminal signals them all
    (signal.SIGTERM, "demo", "5. Add a route"),        # a CI job's time-out
])
def test_an_interrupted_demo_cleans_up(before, signum, whom, at):
    proc = subprocess.Popen(DEMO, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    out = ""
    try:
        for line in proc.stdout:
            out += line
            if line.startswith(at):
                break
        else:
            pytest.fail("the demo ended before %r:\n%s" % (at, out))
        if whom == "group":
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out += rest
    assert proc.returncode == 128 + signum, out + err
    assert "interrupted by %s; cleaning up" % signum.name in err
    assert "Next steps" not in out
    assert_left_nothing(out, before)
