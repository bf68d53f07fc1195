"""smcroute.py's own work, timed natively on a kernel without multicast routing.

    sudo python3 bench/native.py [--runs N] [--sizes 10k,100k] [--reloads N]

Where the kernel cannot route multicast, compare.py runs in build.sh's VM,
emulated, and its times are many times native.  This runs the daemon here,
natively, with the multicast routing socket options stubbed out
(bench/stubbed.py): everything else is real -- the config, the reconcile
path, the control socket, rtnetlink.  So it times the
Python side of figures 4-8 of compare.py (8: in-process, from the upcall);
the kernel's own work is left out.  Not a test, and no stand-in for
compare.py on a kernel that routes multicast.
"""

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time

import compare
from compare import Bed, Daemon, Prober, PyKind, add_pipelined, route_pairs, write_config
from stubbed import stubbed_smcroute

STUBBED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stubbed.py")


class StubbedKind(PyKind):
    def command(self, config, sock, pidfile):
        return [compare.PYTHON, STUBBED] + super().command(config, sock, pidfile)[2:]


def scale(bed, kind, workdir, size, reloads, samples):
    config = write_config(os.path.join(workdir, "routes-%d.conf" % size), route_pairs(size))
    daemon = Daemon(bed, kind, config, workdir)
    prober = Prober(kind, daemon.socket, 0.005, 10)
    prober.start()
    try:
        if not daemon.wait_ready(daemon.started + 120):
            raise RuntimeError("not ready in 120 s")
        ready = time.perf_counter()
        samples.setdefault("start.%d" % size, []).append(ready - daemon.started)
        samples.setdefault("gap.start.%d" % size, []).append(
            prober.longest_gap(prober.first_connect or daemon.started, ready))
        for _ in range(reloads):
            hup = daemon.hup()
            done = daemon.wait_reloaded(hup + 120)
            if done is None:
                raise RuntimeError("reload not done in 120 s")
            samples.setdefault("reload.%d" % size, []).append(done - hup)
            samples.setdefault("gap.reload.%d" % size, []).append(prober.longest_gap(hup, done))
        if size == 10000:
            lines = ["add a1 %s %s b1" % pair for pair in route_pairs(1000, compare.ADDED_GROUPS)]
            samples.setdefault("add.batch", []).append(add_pipelined(daemon.socket, lines, 60) / len(lines))
    finally:
        prober.stop()
        daemon.stop()


def upcall_cost(bed, workdir, rules):
    """Seconds from an upcall handed to the Router to its MFC entry made
    (and the event told), median of 2000 new sources to a (*,G) template,
    with `rules` rules: the template and rules - 1 (S,G) routes."""
    smcroute = stubbed_smcroute()
    config = write_config(os.path.join(workdir, "first-%d.conf" % rules), route_pairs(rules - 1),
                          [compare.FRESH_TEMPLATE])
    # In the router's namespace throughout: the Router reads its interfaces
    # on fresh netlink sockets.
    with bed.inside("rtr"):
        kernels, interfaces = smcroute.open_kernels(), smcroute.Interfaces()
        try:
            router = smcroute.Router(kernels, interfaces)
            router.max_learned = 100000
            router.load(smcroute.read_config(config))
            kernel = kernels[4]
            vif = kernel.vif_of[interfaces.by_name["a1"].index]
            group = socket.inet_aton(compare.address(compare.FRESH_TEMPLATE.split("/")[0], 1))
            waits = []
            for n in range(2000):
                source = socket.inet_aton(compare.address(compare.FLOOD_SOURCES, n))
                started = time.perf_counter()
                router.upcall(kernel, smcroute.UPCALL_NOCACHE, vif, source, group)
                waits.append(time.perf_counter() - started)
            return statistics.median(waits)
        finally:
            for kernel in kernels.values():
                kernel.close()
            interfaces.sock.close()


ROWS = [("start.%d", "4 start -> ready, %s routes", compare.START_TARGETS),
        ("reload.%d", "5 reload (SIGHUP), %s unchanged", compare.RELOAD_TARGETS),
        ("gap.start.%d", "6 longest no answer, start on %s", {100000: compare.STALL_TARGET}),
        ("gap.reload.%d", "6 longest no answer, reload of %s", {100000: compare.STALL_TARGET})]


def print_table(samples, sizes):
    lines = [("figure", "smcroute.py, stubbed (bytecode cached)", "target", "met?")]
    rows = [(key % size, label % compare.size_text(size), targets.get(size))
            for key, label, targets in ROWS for size in sizes]
    if 10000 in sizes:
        rows.append(("add.batch", "7 add 1k on 10k, 1 connection (per route)", 30e-6))
    rows += [("upcall.%d" % rules, "8 upcall -> its MFC entry, %s rules (the daemon's part)"
              % compare.size_text(rules), None) for rules in compare.FIRST_PACKET_RULES]
    for key, label, target in rows:
        value = statistics.median(samples[key])
        lines.append((label, compare.seconds_text(value),
                      "≤ " + compare.seconds_text(target) if target else "—",
                      "—" if not target else "yes" if value <= target else "NO"))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    for n, line in enumerate(lines):
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(line, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per size (default 5)")
    parser.add_argument("--sizes", default="10k,100k", help="route counts (default 10k,100k)")
    parser.add_argument("--reloads", type=int, default=5, help="reloads per run (default 5)")
    args = parser.parse_args(argv)
    sizes = [compare.parse_size(size) for size in args.sizes.split(",")]
    if os.geteuid() != 0:
        sys.exit("native.py: run as root (network namespaces)")
    samples = {}
    bed = Bed()
    kind = StubbedKind("smcroute.py", None)
    try:
        with tempfile.TemporaryDirectory(prefix="smcroute-native-") as workdir:
            for run in range(args.runs):
                for size in sizes:
                    print("  run %d/%d, %s" % (run + 1, args.runs, compare.size_text(size)),
                          file=sys.stderr, flush=True)
                    scale(bed, kind, workdir, size, args.reloads, samples)
                for rules in compare.FIRST_PACKET_RULES:
                    samples.setdefault("upcall.%d" % rules, []).append(upcall_cost(bed, workdir, rules))
    finally:
        bed.close()
    print()
    print("%s; kernel %s, natively, the MRT socket options stubbed; %s %s; medians of %d runs"
          % (time.strftime("%Y-%m-%d %H:%M:%S %z"), os.uname().release, compare.PYTHON,
             compare.run(compare.PYTHON, "-c", "import sys; print(sys.version.split()[0])").strip(),
             args.runs))
    print()
    print_table(samples, sizes)
    print()
    print("The kernel's side is left out: MRT_ADD_MFC costs about 2 µs a route natively, and")
    print("8 leaves out the packet's way to the upcall and back out.")


if __name__ == "__main__":
    main()
