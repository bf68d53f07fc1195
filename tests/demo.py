"""The first five minutes with smcroute.py: route multicast in a lab.

    sudo ./build.sh demo            (or: sudo python3 tests/demo.py)

Builds a sender, a router and two receivers as network namespaces
(tests/netbed.py), runs the daemon in the router on a small config, sends
IPv4 and IPv6 multicast, shows what each receiver got and the daemon's
routes table, adds a route at runtime and shows it take effect, then stops
the daemon and removes the lab.  Every command it runs is printed.

Standard library only.  It always removes what it built, on Ctrl-C and
SIGTERM too, and exits non-zero when any step does not happen as told, so
that CI catches a broken demo: 0 done, 1 a step failed, 77 not root,
128+N interrupted by signal N.
"""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from netbed import DAEMON, HOSTS, PEER, SOURCE4, SOURCE6, Daemon, NetBed, new_port

COUNT = 5           # packets sent to each group
TTL = 8             # the senders' TTL: it must be above the outbound interfaces' threshold (1)
GROUP4, GROUP6, NEW_GROUP = "225.1.2.3", "ff2e::42", "225.1.2.4"

CONFIG = """\
# IPv4 (S,G) route: what 10.0.0.1 sends to 225.1.2.3 on a1 goes out b1 and b2.
mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1 b2

# IPv6 (*,G) rule, a template: traffic from any source to ff2e::42 goes
# out b1 only; the daemon learns an (S,G) route per source as it arrives.
mroute from a1 group ff2e::42 to b1

# Join 225.1.2.3 on a1, so that IGMP-snooping switches send it this way.
mgroup from a1 group 225.1.2.3
"""


class StepFailed(Exception):
    pass


class Interrupted(BaseException):
    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def on_signal(signum, frame):
    raise Interrupted(signum)


def say(text=""):
    print(text, flush=True)


def step(number, title):
    say()
    say("%d. %s" % (number, title))
    say("-" * (len(title) + 3))


def shown(args):
    """A command line as a newcomer would type it, from the project root."""
    words = []
    for word in args:
        if word == sys.executable:
            word = "python3"
        elif word in (DAEMON, PEER):
            word = os.path.relpath(word)
        words.append(word)
    return shlex.join(words)


def command(args, background=False):
    say("  $ " + shown(args) + (" &" if background else ""))


def indented(text):
    for line in text.rstrip("\n").splitlines():
        say(("    " + line).rstrip())


def expect(condition, failure):
    if not condition:
        raise StepFailed(failure)


def traffic(bed, groups, show_commands=True):
    """Receivers in rx1 and rx2 join `groups`; snd sends COUNT packets to
    each, from its first address; returns {host: {group: received}}."""
    port = new_port()
    with bed.receivers(port, groups) as receivers:
        for proc in receivers.procs.values():
            if show_commands:
                command(proc.args, background=True)
        for group in groups:
            args = [sys.executable, PEER, "send", "eth0", group, str(port), str(COUNT),
                    "--ttl", str(TTL), "--source", SOURCE6 if ":" in group else SOURCE4]
            if show_commands:
                command(["ip", "netns", "exec", bed.ns("snd")] + args)
            bed.exec("snd", *args)
        time.sleep(0.3)
    return receivers.counts


def report(counts, *lines):
    """Print what each receiver got, then fail if any line is not as told:
    lines are (host, group, routed?, why)."""
    wrong = []
    for host, group, routed, why in lines:
        got = counts.get(host, {}).get(group, 0)
        say("  %s got %d of %d to %-10s %s" % (host, got, COUNT, group, why))
        if routed and got < COUNT - 1:
            wrong.append("%s should have got the packets to %s, got %d of %d" % (host, group, got, COUNT))
        elif not routed and got:
            wrong.append("%s should not have got packets to %s, got %d" % (host, group, got))
    expect(not wrong, "; ".join(wrong))


def client(daemon, *args):
    """The daemon's own client, smcroute.py -u SOCK ..., in the router."""
    command(daemon.command_line(*args))
    result = daemon.cli(*args)
    if result.stdout.strip():
        indented(result.stdout)
    expect(result.returncode == 0, "`%s` failed (%d): %s"
           % (" ".join(args), result.returncode, result.stderr.strip()))
    return result.stdout


def logged(daemon, word):
    """The daemon's log lines with `word` (the log is at debug level)."""
    return [line for line in daemon.log().splitlines() if word in line]


def route(daemon, source, group):
    rows = [r for r in daemon.show() if r.get("source") == source and r["group"] == group]
    return rows[0] if rows else {}


def lab(bed):
    step(1, "The lab: four network namespaces joined by veth pairs")
    say("""
      snd eth0 ------ a1 rtr b1 ------ eth0 rx1
                             b2 ------ eth0 rx2
""")
    for host, interfaces in HOSTS.items():
        for ifname, addr4, addr6 in interfaces:
            say("  %-3s %-4s %-12s %-11s (namespace %s)" % (host, ifname, addr4, addr6, bed.ns(host)))
    say()
    say("  snd sends, rtr runs the daemon, rx1 and rx2 receive. Built by tests/netbed.py with")
    say("  `ip netns add`, `ip link add a1 type veth peer name eth0 netns ...` and `ip addr add`;")
    say("  multicast from snd reaches rx1 and rx2 only if the daemon routes it.")


def start(daemon):
    step(2, "Start the daemon in rtr, on this config")
    say()
    indented(CONFIG)
    say()
    began = time.monotonic()
    daemon.start()
    command(daemon.proc.args, background=True)
    say("  -n foreground, -f the config, -u the control socket (for the client commands below),")
    say("  -P the PID file, which it writes once the config is applied: here %.1f s after start."
        % (time.monotonic() - began))


def send(bed, daemon):
    step(3, "Send multicast from snd, and count what rx1 and rx2 receive")
    say("  Each receiver joins both groups; the sender sends %d packets to each with TTL %d: the router"
        % (COUNT, TTL))
    say("  forwards only packets whose TTL is above the threshold (default 1), so TTL 1 never gets through.")
    counts = traffic(bed, [GROUP4, GROUP6])
    say()
    report(counts, ("rx1", GROUP4, True, "the (S,G) route goes out b1 ..."),
           ("rx2", GROUP4, True, "... and b2"),
           ("rx1", GROUP6, True, "the (*,G) rule goes out b1 ..."),
           ("rx2", GROUP6, False, "... not b2"))


def show(daemon):
    step(4, "Ask the daemon what it routes")
    client(daemon, "show")
    say()
    say("  static:   the (S,G) route from the config, in the kernel since start-up.")
    say("  learned:  an (S,G) route the daemon made from the (*,G) template when fd00::1's")
    say("            first packet to ff2e::42 arrived; the template stays, for other sources.")
    say("  PACKETS, BYTES: counted by the kernel as packets arrive on the inbound interface.")
    expect(route(daemon, SOURCE4, GROUP4).get("kind") == "static", "no static route for %s" % GROUP4)
    expect(route(daemon, SOURCE6, GROUP6).get("kind") == "learned",
           "no learned route for (%s, %s)" % (SOURCE6, GROUP6))
    expect(route(daemon, None, GROUP6).get("kind") == "template", "no template for %s" % GROUP6)
    expect(route(daemon, SOURCE6, GROUP6).get("packets", 0) >= COUNT - 1, "the learned route counted nothing")
    say()
    say("  The daemon logs each route it learns, with the rule that made it:")
    learned = logged(daemon, "learned")
    expect(learned, "the daemon logged no learned route")
    indented("\n".join(learned))
    say()
    client(daemon, "show", "groups")


def add(bed, daemon):
    step(5, "Add a route while the daemon runs")
    say("  Before: the same receivers and sender, to %s, which no rule takes." % NEW_GROUP)
    before = traffic(bed, [NEW_GROUP], show_commands=False)
    report(before, ("rx2", NEW_GROUP, False, "(the daemon put a stop filter on it)"))
    expect(route(daemon, SOURCE4, NEW_GROUP).get("kind") == "stop", "no stop filter for %s" % NEW_GROUP)
    say()
    client(daemon, "add", "a1", SOURCE4, NEW_GROUP, "b2")
    say("  No output, exit status 0: done. Changes made at runtime last until the next reload,")
    say("  which makes the config file the whole truth again.")
    say()
    say("  After: the same again.")
    after = traffic(bed, [NEW_GROUP], show_commands=False)
    report(after, ("rx2", NEW_GROUP, True, "the new route goes out b2 ..."),
           ("rx1", NEW_GROUP, False, "... not b1"))
    say()
    client(daemon, "show")
    packets = route(daemon, SOURCE4, NEW_GROUP).get("packets") or 0
    expect(route(daemon, SOURCE4, NEW_GROUP).get("kind") == "static", "no static route for %s" % NEW_GROUP)
    if packets > after["rx2"][NEW_GROUP]:
        say()
        say("  PACKETS is %d for (%s, %s), though rx2 got %d: counters count packets that arrived"
            % (packets, SOURCE4, NEW_GROUP, after["rx2"][NEW_GROUP]))
        say("  at the router (here also the ones the stop filter dropped before the add), not ones")
        say("  that went out.")


def stop(bed, daemon):
    step(6, "Stop the daemon and remove the lab")
    client(daemon, "kill")
    try:
        status = daemon.proc.wait(10)
    except subprocess.TimeoutExpired:
        raise StepFailed("the daemon did not exit on `kill`") from None
    expect(status == 0, "the daemon exited with status %d" % status)
    for version in (4, 6):
        routes = bed.mroutes(version).strip()
        expect(not routes, "IPv%d routes left in the kernel after the daemon exited:\n%s" % (version, routes))
    say("  The daemon exited with status 0 and left no route behind (`ip mroute show` in rtr is empty).")
    for name in bed.names.values():
        command(["ip", "netns", "del", name])
    bed.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    left = set(listed) & set(bed.names.values())
    expect(not left, "namespaces left behind: %s" % " ".join(sorted(left)))


def next_steps(elapsed):
    say()
    say("Next steps")
    say("----------")
    say("  README.md, \"Config file\": the whole grammar (phyint, mgroup, ssmgroup, mroute, include).")
    say("  README.md, \"Control socket\": every command (show, add, del, join, reload, check, monitor).")
    say("  README.md, \"Drop-in for SMCRoute\": running it as smcrouted and smcroutectl.")
    say("  README.md, \"Troubleshooting\": when packets do not arrive.")
    say("  On your own router:  sudo python3 smcroute.py -f smcroute.conf   (edit the example first)")
    say()
    say("Demo done in %.1f s." % elapsed)


def main():
    if os.geteuid() != 0:
        print("demo: it builds network namespaces, so it needs root: sudo ./build.sh demo", file=sys.stderr)
        return 77
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    began = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="smcroute-demo-")
    bed = daemon = None
    status = 1
    try:
        say("smcroute.py demo: a sender, a router running the daemon, two receivers.")
        bed = NetBed()
        lab(bed)
        daemon = Daemon(bed, CONFIG, workdir=workdir)
        start(daemon)
        send(bed, daemon)
        show(daemon)
        add(bed, daemon)
        stop(bed, daemon)
        next_steps(time.monotonic() - began)
        status = 0
    except Interrupted as interrupted:
        status = 128 + interrupted.signum
        print("\ndemo: interrupted by %s; cleaning up" % signal.Signals(interrupted.signum).name,
              file=sys.stderr, flush=True)
    except Exception as exc:
        what = str(exc) if isinstance(exc, StepFailed) else "%s: %s" % (type(exc).__name__, exc)
        print("\ndemo FAILED: " + what, file=sys.stderr, flush=True)
        if daemon is not None and os.path.exists(daemon.logfile):
            print("the daemon's log:\n" + daemon.log(), file=sys.stderr, flush=True)
        print("README.md, \"Troubleshooting\", lists the usual causes.", file=sys.stderr, flush=True)
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        try:
            if daemon is not None and daemon.proc is not None:
                try:
                    daemon.stop()
                except Exception:
                    pass
        finally:
            if bed is not None:
                bed.close()
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
