"""A test network of namespaces joined by veth pairs, and the daemon in it.

    snd eth0 ---- a1 rtr b1 ---- eth0 rx1
                         b2 ---- eth0 rx2

snd has two IPv4 sources (10.0.0.1 and 10.0.0.9) and two IPv6 ones
(fd00::1 and fd00::9); every namespace has a unique name, and close()
removes them all.
"""

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
DAEMON = os.path.join(os.path.dirname(HERE), "smcroute.py")
PEER = os.path.join(HERE, "peer.py")

SOURCE4, OTHER_SOURCE4 = "10.0.0.1", "10.0.0.9"
SOURCE6, OTHER_SOURCE6 = "fd00::1", "fd00::9"

# namespace -> [(ifname, IPv4 address, IPv6 address)]; links are
# (namespace, ifname, namespace, ifname).
HOSTS = {
    "snd": [("eth0", "10.0.0.1/24", "fd00::1/64")],
    "rtr": [("a1", "10.0.0.2/24", "fd00::2/64"), ("b1", "10.0.1.1/24", "fd01::1/64"),
            ("b2", "10.0.2.1/24", "fd02::1/64")],
    "rx1": [("eth0", "10.0.1.2/24", "fd01::2/64")],
    "rx2": [("eth0", "10.0.2.2/24", "fd02::2/64")],
}
LINKS = [("rtr", "a1", "snd", "eth0"), ("rtr", "b1", "rx1", "eth0"), ("rtr", "b2", "rx2", "eth0")]
EXTRA_ADDRESSES = [("snd", "eth0", "10.0.0.9/24"), ("snd", "eth0", "fd00::9/64")]

# Under emulation (build.sh test's VM, without KVM) everything takes
# several times longer: the bounds of the few timed checks stretch by this.
SLOWER = 10 if os.environ.get("SMCROUTE_EMULATED") else 1

_ports = itertools.count(20000 + os.getpid() % 20000)


def run(*args, check=True):
    result = subprocess.run(args, capture_output=True, text=True)
    if check and result.returncode:
        raise RuntimeError("%s failed: %s" % (" ".join(args), result.stderr.strip()))
    return result


def new_port():
    return next(_ports)


def wait_for(predicate, timeout=5, why=lambda: "timed out"):
    """Poll until predicate() is true; fail with why() after `timeout` s."""
    deadline = time.monotonic() + timeout * SLOWER
    while not predicate():
        assert time.monotonic() < deadline, why()
        time.sleep(0.02)


class NetBed:
    def __init__(self):
        self.prefix = "smc%s" % uuid.uuid4().hex[:10]
        self.names = {}
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def ns(self, host):
        return self.names[host]

    def _build(self):
        for host in HOSTS:
            self.names[host] = "%s-%s" % (self.prefix, host)
            run("ip", "netns", "add", self.names[host])
            self.sysctl(host, "net.ipv4.conf.all.rp_filter", "0")
            self.sysctl(host, "net.ipv4.conf.default.rp_filter", "0")
            self.sysctl(host, "net.ipv6.conf.all.accept_dad", "0")
            self.sysctl(host, "net.ipv6.conf.default.accept_dad", "0")
            self.exec(host, "ip", "link", "set", "lo", "up")
        for host, ifname, peer_host, peer_ifname in LINKS:
            self.exec(host, "ip", "link", "add", "name", ifname, "type", "veth",
                      "peer", "name", peer_ifname, "netns", self.names[peer_host])
        for host, interfaces in HOSTS.items():
            for ifname, addr4, addr6 in interfaces:
                self.exec(host, "ip", "addr", "add", addr4, "dev", ifname)
                self.exec(host, "ip", "addr", "add", addr6, "dev", ifname, "nodad")
                self.exec(host, "ip", "link", "set", ifname, "up")
        for host, ifname, addr in EXTRA_ADDRESSES:
            self.exec(host, "ip", "addr", "add", addr, "dev", ifname, *(["nodad"] if ":" in addr else []))
        for host, interfaces in HOSTS.items():
            self.wait_ipv6_multicast(host, [ifname for ifname, _, _ in interfaces])

    def wait_ipv6_multicast(self, host, ifnames, timeout=5):
        """IPv6 drops multicast on a link until its ff00::/8 route exists,
        which Linux adds on the carrier event, up to a second late."""
        deadline = time.monotonic() + timeout * SLOWER
        while True:
            routes = self.exec(host, "ip", "-6", "route", "show", "table", "local").stdout
            missing = [i for i in ifnames if "multicast ff00::/8 dev %s " % i not in routes]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("IPv6 multicast not ready on %s in %s" % (missing, host))
            time.sleep(0.05)

    def sysctl(self, host, key, value):
        self.exec(host, "sysctl", "-qw", "%s=%s" % (key, value))

    def exec(self, host, *args, check=True):
        return run("ip", "netns", "exec", self.names[host], *args, check=check)

    def read(self, host, path):
        return self.exec(host, "cat", path).stdout

    def add_link(self, host, ifname, peer_host, peer_ifname):
        self.exec(host, "ip", "link", "add", "name", ifname, "type", "veth",
                  "peer", "name", peer_ifname, "netns", self.names[peer_host])
        self.exec(host, "ip", "link", "set", ifname, "up")
        self.exec(peer_host, "ip", "link", "set", peer_ifname, "up")

    def vifs(self, version=4):
        """{interface: VIF} as the kernel has them in the router."""
        path = "/proc/net/ip_mr_vif" if version == 4 else "/proc/net/ip6_mr_vif"
        return {f[1]: int(f[0]) for f in (line.split() for line in self.read("rtr", path).splitlines()[1:])}

    def mroutes(self, version=4):
        return self.exec("rtr", "ip", "-%d" % version, "mroute", "show").stdout

    def close(self):
        for name in self.names.values():
            for pid in run("ip", "netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            run("ip", "netns", "del", name, check=False)

    # Traffic -----------------------------------------------------------------

    def receivers(self, port, groups, hosts=("rx1", "rx2"), ifname="eth0"):
        return Receivers(self, port, groups, hosts, ifname)

    def send(self, group, port, count=5, ttl=8, source=None, host="snd", ifname="eth0", gap=0.02):
        args = [sys.executable, PEER, "send", ifname, group, str(port), str(count),
                "--ttl", str(ttl), "--gap", str(gap)]
        if source:
            args += ["--source", source]
        self.exec(host, *args)

    def traffic(self, groups, count=5, source=None, ttl=8, hosts=("rx1", "rx2"), settle=0.3,
                ifname="eth0"):
        """Send `count` packets to each group from `source` (by default
        snd's first address) and return {host: {group: received}}, as
        received on `ifname`."""
        port = new_port()
        with self.receivers(port, groups, hosts, ifname) as receivers:
            for group in groups:
                default = SOURCE6 if ":" in group else SOURCE4
                self.send(group, port, count=count, ttl=ttl, source=source or default)
            time.sleep(settle)
        return receivers.counts


class Receivers:
    """peer.py recv in each host; counts are read when the block ends."""

    def __init__(self, bed, port, groups, hosts, ifname):
        self.procs = {}
        self.counts = {}
        for host in hosts:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", bed.ns(host), sys.executable, PEER, "recv",
                 ifname, str(port)] + list(groups),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.procs[host] = proc
        for host, proc in self.procs.items():
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("receiver in %s did not start" % host)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for host, proc in self.procs.items():
            out, _ = proc.communicate(timeout=10 * SLOWER)
            self.counts[host] = json.loads(out) if out.strip() else {}


class Daemon:
    """smcroute.py running in the router namespace.  `patch` sets module
    constants first (a test needs a script timeout of a second, not a
    minute), `env` adds to its environment."""

    expected_status = 0

    def __init__(self, bed, config="", args=(), workdir=None, patch=None, env=None):
        self.bed = bed
        self.dir = workdir or tempfile.mkdtemp(prefix="smcroute-test-")
        os.makedirs(self.dir, exist_ok=True)
        self.config = os.path.join(self.dir, "smcroute.conf")
        self.socket = os.path.join(self.dir, "sock")
        self.pidfile = os.path.join(self.dir, "pid")
        self.logfile = os.path.join(self.dir, "log")
        self.write_config(config)
        self.proc = None
        self.args = list(args)
        self.patch = patch or {}
        self.env = dict(os.environ, **(env or {}))

    def write_config(self, text):
        with open(self.config, "w") as conf:
            conf.write(text)

    def command_line(self, *extra):
        program = [DAEMON]
        if self.patch:
            program = ["-c", "import sys; sys.path.insert(0, %r); import smcroute; "
                             "smcroute.__dict__.update(%r); sys.exit(smcroute.main())"
                       % (os.path.dirname(DAEMON), self.patch)]
        return ["ip", "netns", "exec", self.bed.ns("rtr"), sys.executable] + program + \
            ["-u", self.socket] + list(extra)

    def start(self, wait=True):
        with open(self.logfile, "a") as log:
            self.proc = subprocess.Popen(
                self.command_line("-n", "-f", self.config, "-P", self.pidfile,
                                  "--log-level", "debug", *self.args),
                stdout=log, stderr=log, env=self.env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=10):
        deadline = time.monotonic() + timeout * SLOWER
        while not os.path.exists(self.pidfile):
            if self.proc.poll() is not None:
                raise RuntimeError("daemon exited with %s:\n%s" % (self.proc.returncode, self.log()))
            if time.monotonic() > deadline:
                raise RuntimeError("daemon not ready:\n" + self.log())
            time.sleep(0.01)

    def usage(self):
        """(RSS in kB, open file descriptors) of the daemon."""
        with open("/proc/%d/status" % self.proc.pid) as status:
            rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        return rss, len(os.listdir("/proc/%d/fd" % self.proc.pid))

    def log(self):
        with open(self.logfile) as log:
            return log.read()

    def ctl(self, *lines):
        """Send command lines on one connection; returns the reply lines."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.socket)
        sock.settimeout(10 * SLOWER)
        sock.sendall("".join(line + "\n" for line in lines).encode())
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        sock.close()
        return b"".join(chunks).decode().splitlines()

    def ok(self, line):
        """Send one command that must succeed; returns its data lines."""
        reply = self.ctl(line)
        assert reply and reply[-1] == "ok", (line, reply)
        return reply[:-1]

    def json(self, table="routes"):
        """`show TABLE json`: one line of JSON, in SMCRoute 2.6.0's layout."""
        [line] = self.ctl("show %s json" % table)
        return json.loads(line)[table]

    def show(self, table="routes"):
        """The table as a list; routes as every kernel entry, then the exact
        rules not in the kernel, then the templates, each a dict with a kind
        (static, learned, stop, waiting or template)."""
        if table != "routes":
            shown = self.json(table)
            return shown["kernel"] if table == "groups" else shown
        routes = self.json("routes")
        exact = {(r["source"], r["group"]) for r in routes["ssm"]}
        installed = {(r["source"], r["group"]) for r in routes["kernel"]}
        rows = [dict(r, kind="static" if (r["source"], r["group"]) in exact else
                     "learned" if r["oifs"] else "stop") for r in routes["kernel"]]
        rows += [dict(r, kind="waiting") for r in routes["ssm"] if (r["source"], r["group"]) not in installed]
        return rows + [dict(r, kind="template") for r in routes["asm"]]

    def cli(self, *args):
        """smcroute.py as a client, in the router namespace."""
        return self.bed.exec("rtr", *self.command_line(*args)[4:], check=False)

    def signal(self, signum):
        self.proc.send_signal(signum)

    def stop(self, timeout=10):
        """SIGTERM, and the exit status."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout * SLOWER)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
