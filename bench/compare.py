"""smcroute.py beside SMCRoute's C daemon (Debian's smcrouted 2.5.6), on the same work.

    sudo ./build.sh bench [--quick] [--runs N] [--sizes 10k,100k] [--reloads N]
                          [--c-timeout SEC] [--only GROUPS] [--no-pyz] [--json FILE]

Builds its own network namespaces (snd -- rtr -- rx, over veth pairs), runs
each daemon in rtr one after the other, interleaved run by run so that the
noise of a busy machine hits them alike, and prints one table of medians
beside smcroute.py's targets.  The daemons run under Debian's
/usr/bin/python3: a pyenv or venv Python may load .pth hooks that cost
memory and start-up time.  Not a test: the figures depend on the machine.

Every measurement is bounded by --c-timeout (C 2.5.6 needs minutes for
100k routes, and its reloads grow with n squared); a case that timed out is
shown as "> N s" and not run again.  Groups of sessions (--only): scale
(figures 1-6), add (7), first (8), flood (9).
"""

import argparse
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = "/usr/bin/python3"
SMCROUTED = "/usr/sbin/smcrouted"
SMCROUTECTL = "/usr/sbin/smcroutectl"
VENV = os.path.join(ROOT, os.environ.get("VENV", ".venv"))  # as build.sh finds it

# snd eth0 ---- a1 rtr b1 ---- eth0 rx
HOSTS = {"snd": [("eth0", "10.0.0.1/24")],
         "rtr": [("a1", "10.0.0.2/24"), ("b1", "10.0.1.1/24")],
         "rx": [("eth0", "10.0.1.2/24")]}
LINKS = [("rtr", "a1", "snd", "eth0"), ("rtr", "b1", "rx", "eth0")]
SENDER = "10.0.0.1"             # the source of every configured (S,G) route
ROUTE_GROUPS = "225.1.0.0"      # configured (S,G) routes: SENDER -> ROUTE_GROUPS + i
ADDED_GROUPS = "228.1.0.0"      # routes added over the control socket
PROCESS_GROUPS = "228.2.0.0"    # routes added with one smcroutectl process each
FRESH_TEMPLATE = "226.0.0.0/8"  # (*,G) template for the first-packet figure
FLOOD_TEMPLATE = "227.0.0.0/8"  # (*,G) template for the flood
FLOOD_SOURCES = "10.128.0.0"    # forged sources, one per new flow
FLOOD_GROUPS = "227.1.0.0"
PORT = 5000
FIRST_PACKET_RULES = (10, 1000, 10000)

SIOCGETSGCNT = 0x89E1
SG_COUNTERS = bytes(24)         # struct sioc_sg_req '@4s4sLLL' after src and grp
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
CLONE_NEWNET = 0x40000000
PR_SET_TIMERSLACK = 29
LIBC = ctypes.CDLL(None, use_errno=True)

POLL = 0.0005                   # how often the kernel is asked for the last route
SETTLE = 1.0                    # after a flood, for the daemon to drain its upcalls


# ---------------------------------------------------------------------------
# Namespaces
# ---------------------------------------------------------------------------


def run(*args, **kwargs):
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if result.returncode:
        raise RuntimeError("%s failed: %s" % (" ".join(args), result.stderr.strip()))
    return result.stdout


def setns(fd):
    if LIBC.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, "setns: " + os.strerror(code))


class Bed:
    """The three namespaces; close() deletes them."""

    def __init__(self):
        suffix = uuid.uuid4().hex[:8]
        self.names = {}
        try:
            for host in HOSTS:
                self.names[host] = "bnch-%s-%s" % (suffix, host)
                run("ip", "netns", "add", self.names[host])
                # Before the links exist, so that they inherit it: the flood's
                # forged sources have no route back.
                run("ip", "netns", "exec", self.names[host], "sysctl", "-qw",
                    "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                    "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
                run("ip", "-n", self.names[host], "link", "set", "lo", "up")
            for host, ifname, peer_host, peer_ifname in LINKS:
                run("ip", "-n", self.names[host], "link", "add", ifname, "type", "veth",
                    "peer", "name", peer_ifname, "netns", self.names[peer_host])
            for host, interfaces in HOSTS.items():
                for ifname, address in interfaces:
                    run("ip", "-n", self.names[host], "addr", "add", address, "dev", ifname)
                    run("ip", "-n", self.names[host], "link", "set", ifname, "up")
        except BaseException:
            self.close()
            raise

    @contextlib.contextmanager
    def inside(self, host):
        """Sockets made, and processes started, in the block belong to
        `host`'s namespace: setns moves only the calling thread, a socket
        keeps the namespace it was made in, and a child inherits it."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open("/run/netns/" + self.names[host], os.O_RDONLY)
        try:
            setns(target)
            yield
        finally:
            setns(home)
            os.close(target)
            os.close(home)

    def ifindex(self, host, ifname):
        with self.inside(host):
            return socket.if_nametoindex(ifname)

    def close(self):
        for name in self.names.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


# ---------------------------------------------------------------------------
# Addresses, configs, and the kernel's view of the routes
# ---------------------------------------------------------------------------


def address(base, offset):
    value = struct.unpack("!I", socket.inet_aton(base))[0] + offset
    return socket.inet_ntoa(struct.pack("!I", value))


def sg_key(source, group):
    return socket.inet_aton(source) + socket.inet_aton(group)


def route_pairs(count, base=ROUTE_GROUPS):
    return [(SENDER, address(base, i)) for i in range(count)]


def write_config(path, routes, templates=()):
    # smcrouted 2.5.6 runs with -N, so only the phyint lines get VIFs; they
    # must come before the rules.  smcroute.py reads the same file.
    lines = ["phyint a1 enable", "phyint b1 enable"]
    lines += ["mroute from a1 source %s group %s to b1" % pair for pair in routes]
    lines += ["mroute from a1 group %s to b1" % group for group in templates]
    with open(path, "w") as conf:
        conf.write("\n".join(lines) + "\n")
    return path


class Mfc:
    """Single (S,G) lookups in the router's multicast forwarding cache.

    SIOCGETSGCNT on any raw IGMP socket in the namespace answers in
    microseconds; reading /proc/net/ip_mr_cache with 100k entries takes a
    second, and would slow the daemon being timed."""

    def __init__(self, bed):
        with bed.inside("rtr"):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # it reads nothing

    def has(self, key):
        try:
            fcntl.ioctl(self.sock.fileno(), SIOCGETSGCNT, key + SG_COUNTERS)
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.EADDRNOTAVAIL):
                return False
            raise
        return True

    def missing(self, keys):
        return [key for key in keys if not self.has(key)]

    def wait_all(self, keys, deadline, daemon):
        """The time every key was in the kernel, or None at the deadline.
        Polls the last key only, then checks them all, in case a daemon
        installs them out of order."""
        pending = list(keys)
        while True:
            if self.has(pending[-1]):
                seen = time.perf_counter()
                pending = self.missing(pending)
                if not pending:
                    return seen
            elif time.perf_counter() > deadline:
                return None
            daemon.check_alive()
            time.sleep(POLL)

    def close(self):
        self.sock.close()


# ---------------------------------------------------------------------------
# The daemons
# ---------------------------------------------------------------------------


def c_request(cmd, words):
    """SMCRoute's binary control request (one per connection)."""
    body = b"".join(word.encode() + b"\0" for word in words) + b"\0"
    return struct.pack("=QHH4x", 16 + len(body), ord(cmd), len(words)) + body


class PyKind:
    """smcroute.py, or its zipapp, under Debian's Python."""

    is_c = False
    probe = b"version\n"            # answered by "smcroute.py X\nok\n"

    def __init__(self, name, program):
        self.name = name
        self.program = program

    def command(self, config, sock, pidfile):
        return [PYTHON, self.program, "-n", "-f", config, "-u", sock, "-P", pidfile]

    @staticmethod
    def answered(data):
        return data.endswith(b"ok\n")


class CKind:
    """Debian's smcrouted.  -N: only `phyint IF enable` interfaces get VIFs."""

    is_c = True
    probe = c_request("s", ["groups"])  # cheap: no groups are joined

    def __init__(self, version):
        self.name = "C smcrouted %s" % version

    @staticmethod
    def command(config, sock, pidfile):
        return [SMCROUTED, "-n", "-N", "-f", config, "-u", sock, "-P", pidfile, "-l", "notice"]

    @staticmethod
    def answered(data):
        return data.endswith(b"\0")


STARTED = set()                     # our processes not yet reaped, for the last clean-up


class Daemon:
    """One daemon in the router's namespace, its log in a file."""

    def __init__(self, bed, kind, config, workdir):
        self.kind = kind
        self.socket = os.path.join(workdir, "sock")
        self.pidfile = os.path.join(workdir, "pid")
        self.logfile = os.path.join(workdir, "daemon.log")
        for path in (self.socket, self.pidfile):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        with open(self.logfile, "w") as log:
            self.started = time.perf_counter()
            with bed.inside("rtr"):
                self.proc = subprocess.Popen(kind.command(config, self.socket, self.pidfile),
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        STARTED.add(self.proc)

    def check_alive(self):
        if self.proc.poll() is not None:
            with open(self.logfile, errors="replace") as log:
                tail = "".join(log.readlines()[-10:])
            raise RuntimeError("%s exited with %d:\n%s" % (self.kind.name, self.proc.returncode, tail))

    def pid_written(self):
        try:
            with open(self.pidfile) as pidfile:
                return pidfile.read().endswith("\n")   # not just created
        except FileNotFoundError:
            return False

    def wait_ready(self, deadline):
        """Has it written its PID file by the deadline?"""
        while not self.pid_written():
            self.check_alive()
            if time.perf_counter() > deadline:
                return False
            time.sleep(POLL)
        return True

    def hup(self):
        """Ask for a reload.  Both daemons touch their PID file when a
        reload is done, so its time stamp is cleared first."""
        os.utime(self.pidfile, (0, 0))
        sent = time.perf_counter()
        self.proc.send_signal(signal.SIGHUP)
        return sent

    def wait_reloaded(self, deadline):
        """When the PID file was seen touched, or None at the deadline."""
        while os.stat(self.pidfile).st_mtime_ns == 0:
            self.check_alive()
            if time.perf_counter() > deadline:
                return None
            time.sleep(POLL)
        return time.perf_counter()

    def memory(self):
        """{"rss": KiB now, "hwm": peak KiB} from /proc."""
        found = {}
        with open("/proc/%d/status" % self.proc.pid) as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    found[line[2:5].lower()] = int(line.split()[1])
        return found

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()    # smcrouted may still be busy with its config
                self.proc.wait()
        STARTED.discard(self.proc)


class Prober(threading.Thread):
    """A client that asks a cheap question every `interval` seconds, each on
    a fresh connection (the C daemon takes one request per connection), and
    keeps when each was asked and answered.  The gaps between answers are
    the stretches in which the daemon's loop served nobody."""

    def __init__(self, kind, path, interval, timeout):
        super().__init__(daemon=True)
        self.kind, self.path = kind, path
        self.interval, self.timeout = interval, timeout
        self.first_connect = None   # when the socket first took a connection
        self.answers = []           # (asked, answered)
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            self.ask()
            self.stopping.wait(self.interval)

    def ask(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            asked = time.perf_counter()
            try:
                sock.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError):
                return              # not listening yet
            if self.first_connect is None:
                self.first_connect = asked
            sock.sendall(self.kind.probe)
            data = b""
            while not self.kind.answered(data):
                chunk = sock.recv(4096)
                if not chunk:
                    return
                data += chunk
            self.answers.append((asked, time.perf_counter()))
        except OSError:
            return                  # timed out, or the daemon went away
        finally:
            sock.close()

    def wait_answer_after(self, when, timeout=2.0):
        """So that a stall running past `when` is measured to its end."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.answers and self.answers[-1][1] >= when:
                return
            time.sleep(self.interval / 2)

    def longest_gap(self, start, end):
        """The longest time between `start` and the first answer after `end`
        in which no answer came."""
        self.wait_answer_after(end)
        longest, last = 0.0, start
        for _, answered in list(self.answers):
            if answered <= start:
                continue
            longest = max(longest, answered - last)
            last = answered
            if answered >= end:
                return longest
        return max(longest, time.perf_counter() - last)

    def slowest_answer(self, start, end):
        """The longest wait for an answer to a question asked in [start, end]."""
        self.wait_answer_after(end)
        waits = [answered - asked for asked, answered in list(self.answers) if start <= asked <= end]
        return max(waits) if waits else None

    def stop(self):
        self.stopping.set()


# ---------------------------------------------------------------------------
# Traffic
# ---------------------------------------------------------------------------


def receiver(bed, port, groups, bind_group=None):
    with bed.inside("rx"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        index = socket.if_nametoindex("eth0")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)  # a slow reader loses nothing
    sock.bind((bind_group or "", port))
    for group in groups:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                        struct.pack("@4s4si", socket.inet_aton(group), bytes(4), index))
    return sock


def sender(bed):
    with bed.inside("snd"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        index = socket.if_nametoindex("eth0")
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 8)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                    struct.pack("@4s4si", bytes(4), bytes(4), index))
    sock.bind((SENDER, 0))
    return sock


class Flow:
    """About `rate` packets a second through one configured (S,G) route,
    sent from snd and counted in rx: what a reload loses shows."""

    def __init__(self, bed, group, rate=1000):
        self.group, self.rate = group, rate
        self.rx = receiver(bed, PORT, [group], bind_group=group)
        self.rx.settimeout(0.1)
        self.tx = sender(bed)
        self.sent = self.received = 0
        self.sending, self.receiving = threading.Event(), threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._receive, daemon=True)]

    def start(self):
        self.sending.set()
        self.receiving.set()
        for thread in self.threads:
            thread.start()

    def _send(self):
        due = time.perf_counter()
        while self.sending.is_set():
            self.tx.sendto(b"bench flow", (self.group, PORT))
            self.sent += 1
            due += 1 / self.rate
            time.sleep(max(0.0, due - time.perf_counter()))

    def _receive(self):
        while self.receiving.is_set():
            try:
                self.rx.recv(64)
                self.received += 1
            except socket.timeout:
                pass

    def stop(self):
        """Packets lost."""
        self.sending.clear()
        self.threads[0].join()
        time.sleep(0.2)             # the last ones in flight
        self.receiving.clear()
        self.threads[1].join()
        self.rx.close()
        self.tx.close()
        return self.sent - self.received


def receive_time(sock, tag, timeout):
    """The kernel's arrival time (CLOCK_REALTIME, ns) of the datagram
    `tag`, or None if it does not come."""
    deadline = time.perf_counter() + timeout
    while True:
        sock.settimeout(max(0.001, deadline - time.perf_counter()))
        try:
            data, ancillary, _, _ = sock.recvmsg(256, socket.CMSG_SPACE(16))
        except socket.timeout:
            return None
        if data != tag:
            continue                # a late one from an earlier group
        for level, kind, cdata in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = struct.unpack("@qq", cdata[:16])
                return seconds * 10**9 + nanoseconds


def first_packet_delays(bed, groups):
    """For each fresh group a template takes: the delay from sending its
    first packet in snd to its arrival in rx (through the daemon's upcall),
    then the same for a second packet (the route now in the kernel).  The
    sender's clock and the receiver's kernel time stamp are the same host
    clock.  None for a packet that never came."""
    rx = receiver(bed, PORT, groups)
    rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    tx = sender(bed)
    firsts, seconds = [], []
    try:
        for group in groups:
            for delays, tag in ((firsts, b"first " + group.encode()), (seconds, b"next " + group.encode())):
                sent = time.time_ns()
                tx.sendto(tag, (group, PORT))
                arrived = receive_time(rx, tag, timeout=1.0)
                delays.append(None if arrived is None else (arrived - sent) / 1e9)
            time.sleep(0.02)
    finally:
        rx.close()
        tx.close()
    return firsts, seconds


def ip_checksum(header):
    total = sum(struct.unpack("!%dH" % (len(header) // 2), header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def flood_frame(source, group, number):
    """An Ethernet frame with a UDP datagram from a forged source."""
    payload = b"smcroute bench flood"
    udp = struct.pack("!HHHH", PORT, PORT, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), number & 0xFFFF, 0, 8,
                         socket.IPPROTO_UDP, 0, socket.inet_aton(source), socket.inet_aton(group))
    header = header[:10] + struct.pack("!H", ip_checksum(header)) + header[12:]
    grp = socket.inet_aton(group)
    mac = b"\x01\x00\x5e" + bytes([grp[1] & 0x7F, grp[2], grp[3]])
    return mac + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + header + udp


def send_paced(sock, frames, rate):
    """Send the frames `1 / rate` s apart; after a delay, catch up at no
    more than twice the rate.  (started, ended)."""
    # Sleep most of each gap (with no timer slack a sleep ends ~20 us late,
    # not ~80), spin the rest: exact enough, and it leaves the CPU to the
    # daemon.  Higher priority, so that the sender is seldom preempted.
    LIBC.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    os.nice(-10)
    interval = 1 / rate
    started = due = time.perf_counter()
    for frame in frames:
        ahead = due - time.perf_counter()
        if ahead > 0.00006:
            time.sleep(ahead - 0.00004)
        while time.perf_counter() < due:
            pass
        sock.send(frame)
        due = max(due + interval, time.perf_counter() + interval / 2)
    return started, time.perf_counter()


class Flood:
    """A child process in snd that sends one packet for each new (S,G) flow,
    evenly spaced at `rate` flows a second, through an AF_PACKET socket so
    that the sources can be forged.  Never in bursts: a burst would
    overflow the kernel's queue of unresolved entries (10) whatever the
    daemon does."""

    def __init__(self, bed, pairs, rate):
        frames = [flood_frame(source, group, n) for n, (source, group) in enumerate(pairs)]
        with bed.inside("snd"):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        sock.bind(("eth0", 0))
        go_read, self.go = os.pipe()
        self.done, done_write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(self.go)
                os.close(self.done)
                if os.read(go_read, 1):     # nothing: closed without a go
                    times = send_paced(sock, frames, rate)
                    os.write(done_write, struct.pack("dd", *times))
            finally:
                os._exit(0)
        sock.close()
        os.close(go_read)
        os.close(done_write)

    def run(self):
        """(started, ended) of the flood."""
        os.write(self.go, b"g")
        data = os.read(self.done, 16)
        if len(data) != 16:
            raise RuntimeError("the flood sender died")
        return struct.unpack("dd", data)

    def close(self):
        os.close(self.go)
        os.close(self.done)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


# ---------------------------------------------------------------------------
# Sessions: one daemon started, measured and stopped
# ---------------------------------------------------------------------------


class Recorder:
    """Where one daemon's figures go."""

    def __init__(self, results, kind, limit):
        self.results, self.kind, self.limit = results, kind.name, limit

    def add(self, figure, value):
        self.results["samples"].setdefault(figure, {}).setdefault(self.kind, []).append(value)

    def timed_out(self, figure):
        self.results["timeouts"].setdefault(figure, {})[self.kind] = self.limit

    def not_reached(self, *figures):
        for figure in figures:
            self.results["unreached"].setdefault(figure, {})[self.kind] = True


RELOAD_FIGURES = ("reload.%d", "lost.%d", "gap.reload.%d", "rss.reloaded.%d")


class Bench:
    """The test bed, the kernel lookups, and one method per kind of session."""

    def __init__(self, args, bed, workdir):
        self.args, self.bed, self.workdir = args, bed, workdir
        self.timeout = args.c_timeout
        self.mfc = Mfc(bed)
        self.configs = {}

    def config(self, name, routes, templates=()):
        if name not in self.configs:
            self.configs[name] = write_config(os.path.join(self.workdir, name + ".conf"),
                                              routes, templates)
        return self.configs[name]

    @contextlib.contextmanager
    def daemon(self, kind, config, keys=(), probe=True):
        """A daemon started on `config`, whose routes `keys` must not be in
        the kernel yet, and a Prober asking it (or None)."""
        if keys and self.mfc.has(keys[-1]):
            raise RuntimeError("a route from an earlier run is still in the kernel")
        daemon = Daemon(self.bed, kind, config, self.workdir)
        prober = None
        try:
            if probe:
                prober = Prober(kind, daemon.socket, self.args.probe_interval, self.timeout + 10)
                prober.start()
            yield daemon, prober
        finally:
            if prober:
                prober.stop()
            daemon.stop()
            if prober:
                prober.join(self.timeout + 10)

    def start(self, daemon, keys):
        """Wait until every key is in the kernel and the PID file is
        written; the time the last route went in, or None at the timeout."""
        deadline = daemon.started + self.timeout
        done = self.mfc.wait_all(keys, deadline, daemon) if keys else daemon.started
        if done is None or not daemon.wait_ready(deadline):
            return None
        return done

    # Figures 1-6 -----------------------------------------------------------

    def scale(self, kind, size, rec):
        """Start on `size` (S,G) routes, then reload them unchanged: the
        time to the kernel, RSS, reload times, packets lost by a flow
        through an unchanged route, and the longest stalls of the loop."""
        pairs = route_pairs(size)
        keys = [sg_key(*pair) for pair in pairs]
        config = self.config("routes-%d" % size, pairs)
        with self.daemon(kind, config, keys) as (daemon, prober):
            done = self.start(daemon, keys)
            if done is None:
                for figure in ("start.%d", "gap.start.%d", "rss.ready.%d"):
                    rec.timed_out(figure % size)
                rec.not_reached(*(figure % size for figure in RELOAD_FIGURES))
                return False
            rec.add("rss.ready.%d" % size, daemon.memory())
            if not size:
                return True
            rec.add("start.%d" % size, done - daemon.started)
            rec.add("gap.start.%d" % size, prober.longest_gap(prober.first_connect or daemon.started, done))
            return self.reloads(kind, size, daemon, prober, rec)

    def reloads(self, kind, size, daemon, prober, rec):
        flow = Flow(self.bed, address(ROUTE_GROUPS, 0))    # through the first configured route
        flow.start()
        time.sleep(0.1)
        gaps, completed = [], True
        try:
            for _ in range(self.args.reloads):
                hup = daemon.hup()
                done = daemon.wait_reloaded(hup + self.timeout)
                if done is None:
                    rec.timed_out("reload.%d" % size)
                    rec.timed_out("gap.reload.%d" % size)
                    rec.not_reached("lost.%d" % size, "rss.reloaded.%d" % size)
                    completed = False
                    break
                rec.add("reload.%d" % size, done - hup)
                gaps.append(prober.longest_gap(hup, done))
                time.sleep(0.1)
        finally:
            lost = flow.stop()
        if completed:
            rec.add("lost.%d" % size, lost)
            rec.add("gap.reload.%d" % size, max(gaps))
            rec.add("rss.reloaded.%d" % size, daemon.memory())
        return completed

    # Figure 7 --------------------------------------------------------------

    def adds(self, kind, rec):
        """1k routes added with 10k installed: pipelined on one connection
        (smcroute.py), `smcroutectl -b` and one smcroutectl each (C)."""
        pairs = route_pairs(10000)
        keys = [sg_key(*pair) for pair in pairs]
        with self.daemon(kind, self.config("routes-10000", pairs), keys, probe=False) as (daemon, _):
            if self.start(daemon, keys) is None:
                rec.timed_out("add.batch")
                return False
            added = route_pairs(1000, ADDED_GROUPS)
            lines = ["add a1 %s %s b1" % pair for pair in added]
            if kind.is_c:
                seconds = self.timed_ctl(["-u", daemon.socket, "-b"], "\n".join(lines) + "\n")
            else:
                seconds = add_pipelined(daemon.socket, lines, self.timeout)
            if seconds is None:
                rec.timed_out("add.batch")
                return False
            self.check_installed(added, daemon)
            rec.add("add.batch", seconds / len(lines))
            if kind.is_c:
                rec.add("add.process", self.add_one_by_one(daemon) / len(lines))
        return True

    def timed_ctl(self, args, stdin):
        started = time.perf_counter()
        try:
            subprocess.run([SMCROUTECTL] + args, input=stdin, text=True, check=True,
                           stdout=subprocess.DEVNULL, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            return None
        return time.perf_counter() - started

    def add_one_by_one(self, daemon):
        pairs = route_pairs(1000, PROCESS_GROUPS)
        started = time.perf_counter()
        for source, group in pairs:
            subprocess.run([SMCROUTECTL, "-u", daemon.socket, "add", "a1", source, group, "b1"],
                           check=True, stdout=subprocess.DEVNULL, timeout=self.timeout)
        seconds = time.perf_counter() - started
        self.check_installed(pairs, daemon)
        return seconds

    def check_installed(self, pairs, daemon):
        keys = [sg_key(*pair) for pair in pairs]
        if self.mfc.wait_all(keys, time.perf_counter() + 5, daemon) is None:
            raise RuntimeError("%s: %d added routes are not in the kernel"
                               % (daemon.kind.name, len(self.mfc.missing(keys))))

    # Figure 8 --------------------------------------------------------------

    def first_packet(self, kind, rules, run, rec):
        """(*,G): first packet sent -> forwarded, with `rules` rules: one
        template and rules - 1 (S,G) routes."""
        pairs = route_pairs(rules - 1)
        config = self.config("first-%d" % rules, pairs, [FRESH_TEMPLATE])
        groups = [address(FRESH_TEMPLATE.split("/")[0], (run % 250 + 1) * 256 + n + 1) for n in range(10)]
        keys = [sg_key(*pair) for pair in pairs]
        with self.daemon(kind, config, keys, probe=False) as (daemon, _):
            if self.start(daemon, keys) is None:
                rec.timed_out("first.%d" % rules)
                return False
            time.sleep(0.2)
            firsts, nexts = first_packet_delays(self.bed, groups)
        rec.add("first.%d" % rules, median_of_received(firsts))
        rec.add("next.%d" % rules, median_of_received(nexts))
        rec.add("first-lost.%d" % rules, firsts.count(None))
        return True

    # Figure 9 --------------------------------------------------------------

    def flood(self, kind, rec):
        """New (S,G) flows at --flood-rate a second, one packet each, into a
        (*,G) template: how many the daemon learned, and how long its
        control socket made a client wait meanwhile."""
        count = int(self.args.flood_rate * self.args.flood_seconds)
        pairs = [(address(FLOOD_SOURCES, n), address(FLOOD_GROUPS, n % 256)) for n in range(count)]
        config = self.config("flood", [], [FLOOD_TEMPLATE])
        flood = Flood(self.bed, pairs, self.args.flood_rate)
        try:
            with self.daemon(kind, config) as (daemon, prober):
                if self.start(daemon, []) is None:
                    rec.timed_out("learned")
                    return False
                time.sleep(0.2)
                started, ended = flood.run()
                time.sleep(SETTLE)
                learned = count - len(self.mfc.missing([sg_key(*pair) for pair in pairs]))
                rec.add("learned", 100.0 * learned / count)
                rec.add("flood.answer", prober.slowest_answer(started, ended + SETTLE))
                rec.add("flood.rate", count / (ended - started))
        finally:
            flood.close()
        return True


def median_of_received(delays):
    arrived = [d for d in delays if d is not None]
    return statistics.median(arrived) if arrived else None


def add_pipelined(path, lines, timeout):
    """Seconds from sending every `add` line on one connection to the last
    answer; every answer must be ok."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    started = time.perf_counter()
    sock.sendall("".join(line + "\n" for line in lines).encode())
    sock.shutdown(socket.SHUT_WR)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        return None
    finally:
        sock.close()
    seconds = time.perf_counter() - started
    answers = data.decode().splitlines()
    if answers != ["ok"] * len(lines):
        raise RuntimeError("adds not all ok: %s" % [a for a in answers if a != "ok"][:3])
    return seconds


# ---------------------------------------------------------------------------
# The schedule
# ---------------------------------------------------------------------------


def interleaved(kinds, run):
    """Each run starts with the next daemon, so that neither always goes first."""
    shift = run % len(kinds)
    return kinds[shift:] + kinds[:shift]


def run_sessions(name, runs, kinds, session, results, limit):
    """`session(kind, run, recorder)` for every run and daemon, interleaved;
    a daemon that timed out is not run again in this session."""
    given_up = set()
    for run in range(runs):
        for kind in interleaved(kinds, run):
            if kind.name in given_up:
                continue
            print("  %s: run %d/%d, %s" % (name, run + 1, runs, kind.name), file=sys.stderr, flush=True)
            try:
                completed = session(kind, run, Recorder(results, kind, limit))
                why = "timed out after %g s" % limit
            except Exception as exc:    # one broken run should not cost the others
                traceback.print_exc()
                completed, why = False, "failed (%s)" % exc
            if not completed:
                given_up.add(kind.name)
                results["notes"].append("%s, %s: %s in run %d; not run again"
                                        % (name, kind.name, why, run + 1))


def measure(args, bench, kinds, results):
    py, pyz, c = kinds
    memory_kinds = [k for k in (py, pyz, c) if k is not None]
    limit = args.c_timeout
    if "scale" in args.only:
        for size in [0] + args.sizes:
            name = "scale %s" % (size_text(size) if size else "idle")
            run_sessions(name, args.runs, memory_kinds,
                         lambda kind, run, rec, size=size: bench.scale(kind, size, rec), results, limit)
    if "add" in args.only:
        run_sessions("add 1k", args.runs, [py, c], lambda kind, run, rec: bench.adds(kind, rec),
                     results, limit)
    if "first" in args.only:
        for rules in FIRST_PACKET_RULES:
            run_sessions("first packet %s" % size_text(rules), args.runs, [py, c],
                         lambda kind, run, rec, rules=rules: bench.first_packet(kind, rules, run, rec),
                         results, limit)
    if "flood" in args.only:
        run_sessions("flood", args.runs, [py, c], lambda kind, run, rec: bench.flood(kind, rec),
                     results, limit)


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------


def size_text(n):
    return "%dk" % (n // 1000) if n >= 1000 and n % 1000 == 0 else str(n)


def seconds_text(value):
    if value >= 10:
        return "%.0f s" % value
    if value >= 1:
        return "%.2f s" % value
    if value >= 0.01:
        return "%.0f ms" % (value * 1e3)
    if value >= 0.001:
        return "%.1f ms" % (value * 1e3)
    if value >= 0.0001:
        return "%.2f ms" % (value * 1e3)
    return "%.0f µs" % (value * 1e6)


UNITS = {
    "MB": lambda kib: "%.1f MB" % (kib / 1024),
    "s": seconds_text,
    "%": lambda value: "%.1f %%" % value,
    "packets": lambda value: "%d" % value,
}


class Row:
    """One line of the table.  `ratio`: "c/py" for times (how many times
    faster smcroute.py is), "py/c" for memory and the share learned, or
    None; `field` picks one number out of a dict sample; `per_run` is how
    many samples a run gives."""

    def __init__(self, key, label, unit, target=None, ratio="c/py", pyz=False, field=None, per_run=1):
        self.key, self.label, self.unit = key, label, unit
        self.target, self.ratio, self.pyz = target, ratio, pyz
        self.field, self.per_run = field, per_run

    def values(self, results, kind):
        values = results["samples"].get(self.key, {}).get(kind, [])
        if self.field:
            values = [v[self.field] for v in values]
        return [v for v in values if v is not None]

    def median(self, results, kind):
        values = self.values(results, kind)
        return statistics.median(values) if values else None

    def cell(self, results, kind, runs):
        values = self.values(results, kind)
        if values:
            text = UNITS[self.unit](statistics.median(values))
            return text + (" (n=%d)" % len(values) if len(values) < runs * self.per_run else "")
        if kind in results["timeouts"].get(self.key, {}):
            limit = results["timeouts"][self.key][kind]
            return "> %g s (timeout)" % limit if self.unit == "s" else "timeout"
        if kind in results["unreached"].get(self.key, {}):
            return "not reached"
        return "—"

    def target_text(self):
        if self.target is None:
            return "—"
        op, value = self.target
        if self.unit == "MB":
            return "%s %g MB" % (op, value)
        return "%s %s" % (op, UNITS[self.unit](value))

    def met(self, results, kind):
        if self.target is None:
            return "—"
        value = self.median(results, kind)
        if value is None:
            return "NO"
        op, target = self.target
        if self.unit == "MB":
            value /= 1024
        good = {"≤": value <= target, "≥": value >= target, "=": value == target}[op]
        return "yes" if good else "NO"

    def ratio_text(self, results, py, c):
        mine, theirs = self.median(results, py), self.median(results, c)
        if self.ratio is None or not mine:
            return "—"
        if theirs is None:
            limit = results["timeouts"].get(self.key, {}).get(c)
            return "> %.0f×" % (limit / mine) if limit and self.ratio == "c/py" else "—"
        if not theirs:
            return "—"
        ratio = theirs / mine if self.ratio == "c/py" else mine / theirs
        return ("%.1f×" if ratio < 10 else "%.0f×") % ratio


def reloads_text(args):
    return "1 reload" if args.reloads == 1 else "%d reloads" % args.reloads


def at_most(value):
    return None if value is None else ("≤", value)


RSS_TARGETS = {10000: (14, 16), 100000: (45, 60)}      # MB at ready, after the reloads
START_TARGETS = {10000: 0.12, 100000: 1.0}
RELOAD_TARGETS = {10000: 0.1, 100000: 1.0}
STALL_TARGET = 0.05                                     # for 100k and more


def scale_rows(args):
    rows = [Row("rss.ready.0", "1 RSS idle", "MB", at_most(10.5), "py/c", True, "rss")]
    for size in args.sizes:
        figure, n = 2 if size <= 10000 else 3, size_text(size)
        ready, reloaded = RSS_TARGETS.get(size, (None, None))
        rows += [Row("rss.ready.%d" % size, "%d RSS, %s (S,G), at ready" % (figure, n),
                     "MB", at_most(ready), "py/c", True, "rss"),
                 Row("rss.reloaded.%d" % size, "%d RSS, %s (S,G), after %s"
                     % (figure, n, reloads_text(args)), "MB", at_most(reloaded), "py/c", True, "rss")]
    rows += [Row("start.%d" % size, "4 start -> %s routes in the kernel" % size_text(size), "s",
                 at_most(START_TARGETS.get(size)), pyz=True) for size in args.sizes]
    for size in args.sizes:
        n = size_text(size)
        rows += [Row("reload.%d" % size, "5 reload (SIGHUP), %s unchanged" % n, "s",
                     at_most(RELOAD_TARGETS.get(size)), pyz=True, per_run=args.reloads),
                 Row("lost.%d" % size, "5 packets lost, unchanged (S,G) at 1k/s, %s of %s"
                     % (reloads_text(args), n), "packets", ("=", 0), None, pyz=True)]
    for size in args.sizes:
        n, target = size_text(size), at_most(STALL_TARGET) if size >= 100000 else None
        rows += [Row("gap.start.%d" % size, "6 longest no answer, start on %s" % n, "s", target, pyz=True),
                 Row("gap.reload.%d" % size, "6 longest no answer, reload of %s" % n, "s", target,
                     pyz=True)]
    return rows


def table_rows(args):
    rows = scale_rows(args) if "scale" in args.only else []
    if "add" in args.only:
        rows += [Row("add.batch", "7 add 1k on 10k: py 1 connection, C smcroutectl -b (per route)", "s",
                     at_most(30e-6)),
                 Row("add.process", "7 add 1k on 10k: one smcroutectl each (C, reference)", "s", None, None)]
    if "first" in args.only:
        rows += [Row("first.%d" % rules, "8 (*,G) first packet -> forwarded, %s rules" % size_text(rules),
                     "s", at_most(0.0003)) for rules in FIRST_PACKET_RULES]
        rows.append(Row("next.10", "8 next packet, (S,G) in the kernel (reference)", "s"))
    if "flood" in args.only:
        rows += [Row("learned", "9 new (*,G) flows learned at %s/s" % size_text(int(args.flood_rate)), "%",
                     ("≥", 95), "py/c"),
                 Row("flood.answer", "9 slowest control answer during the flood", "s", at_most(0.05))]
    return rows


def print_table(args, results, kinds):
    py, pyz, c = kinds
    header = ["figure", py.name]
    if pyz:
        header.append(pyz.name)
    header += [c.name, "ratio", "target", "met?"]
    lines = [header]
    for row in table_rows(args):
        line = [row.label, row.cell(results, py.name, args.runs)]
        if pyz:
            line.append(row.cell(results, pyz.name, args.runs) if row.pyz else "")
        shipped = pyz.name if pyz and row.pyz else py.name
        line += [row.cell(results, c.name, args.runs), row.ratio_text(results, shipped, c.name),
                 row.target_text(), row.met(results, shipped)]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        print("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(line, widths))).rstrip())
        if n == 0:
            print("  ".join("-" * width for width in widths))


def print_notes(args, results):
    samples = results["samples"]
    print()
    print("ratio: C / smcroute.py for times (how many times faster smcroute.py is), smcroute.py / C")
    print("  for memory and for the share learned.  Medians of %d runs per daemon, interleaved;" % args.runs)
    print("  (n=N): fewer samples.  MB = MiB of VmRSS.  Ratio and met?: the pyz's figure where it")
    print("  has one, as it is the form that ships.")
    if "scale" in args.only:
        print("1-6: configs of (S,G) routes, two phyint lines first.  4: exec to the last route answering")
        print("  SIOCGETSGCNT.  5: every reload counts (%d a run); it ends when the PID file is touched"
              % args.reloads)
        print("  (both daemons touch it then).")
        print("6: a client asks a cheap question every %g ms on a fresh connection (smcroute.py: version,"
              % (args.probe_interval * 1e3))
        print("  C: show groups); the longest time without an answer, from the first connect (start) or")
        print("  the SIGHUP (reload) to the end of the work; for reloads the worst of each run.")
    if "first" in args.only:
        print("8: one template (%s) and N-1 (S,G) routes; a run's median of 10 fresh groups: send time"
              % FRESH_TEMPLATE)
        print("  in snd vs. the kernel's arrival stamp in rx (SO_TIMESTAMPNS, the same clock).")
        lost = sum(sum(v) for rules in FIRST_PACKET_RULES
                   for v in samples.get("first-lost.%d" % rules, {}).values())
        if lost:
            print("  First packets never forwarded, left out: %d." % lost)
    if "flood" in args.only:
        rates = ", ".join("%s %.0f/s" % (kind, statistics.median(v))
                          for kind, v in samples.get("flood.rate", {}).items())
        print("9: %d new (S,G) flows from forged sources, one packet each, evenly spaced"
              % int(args.flood_rate * args.flood_seconds))
        print("  (achieved: %s);" % rates)
        print("  learned = in the kernel %g s after the flood; answers as in 6." % SETTLE)
    for note in results["notes"]:
        print("note: " + note)


# ---------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------


def ensure_smcrouted():
    """Debian's smcroute package, installed if missing; its version."""
    if not (os.path.exists(SMCROUTED) and os.path.exists(SMCROUTECTL)):
        print("installing Debian's smcroute", file=sys.stderr)
        # No service may start on install: it would route the host's own namespace.
        policy = "/usr/sbin/policy-rc.d"
        ours = not os.path.exists(policy)
        if ours:
            with open(policy, "w") as script:
                script.write("#!/bin/sh\nexit 101\n")
            os.chmod(policy, 0o755)
        try:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
            subprocess.run(["apt-get", "install", "-y", "-qq", "smcroute"], check=True, env=env,
                           stdout=subprocess.DEVNULL)
        finally:
            if ours:
                os.unlink(policy)
    version = run("dpkg-query", "-W", "-f=${Version}", "smcroute").strip()
    return version.split("-")[0]


def build_pyz(workdir, notes):
    """smcroute.pyz built from the work tree, or None (with a note) when the
    project's venv, which has shiv, is missing."""
    if not os.path.exists(os.path.join(VENV, "bin", "shiv")):
        notes.append("no venv with shiv at %s: pyz rows skipped (./build.sh test makes it)" % VENV)
        return None
    path = os.path.join(workdir, "smcroute.pyz")
    result = subprocess.run([os.path.join(ROOT, "build.sh"), "pyz", path], capture_output=True, text=True)
    if result.returncode:
        notes.append("./build.sh pyz failed, pyz rows skipped: %s" % result.stderr.strip()[-200:])
        return None
    return path


def source_text(program):
    """Its version and the commit it comes from."""
    git = ["git", "-C", ROOT]
    commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if commit.returncode:
        return run(PYTHON, program, "-v").strip()
    changed = subprocess.run(git + ["diff", "--quiet", "HEAD", "--", "smcroute.py"]).returncode
    return "%s at %s%s" % (run(PYTHON, program, "-v").strip(), commit.stdout.strip(),
                           " + uncommitted changes" if changed else "")


def machine_header(program, c_version):
    with open("/proc/cpuinfo") as cpuinfo:
        models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    daemon_python = run(PYTHON, "-c", "import sys; print(sys.version.split()[0])").strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "kernel": os.uname().release + (" (build.sh's VM, emulated: times are several times native)"
                                        if os.environ.get("SMCROUTE_EMULATED") else ""),
        "cpu": "%d × %s" % (len(models), models[0] if models else "?"),
        "daemon python": "%s %s" % (PYTHON, daemon_python),
        "bench python": "%s %s" % (sys.executable, sys.version.split()[0]),
        "smcroute.py": source_text(program),
        "smcrouted": c_version,
    }


PACE_ROUTES = 10000


def python_pace(workdir):
    """Seconds Debian's python3 takes to parse a config of 10k (S,G) routes
    with smcroute.py's parser, median of 7 processes: pure Python work,
    which says how much slower build.sh's VM runs Python than this machine
    does natively."""
    path = write_config(os.path.join(workdir, "pace.conf"), route_pairs(PACE_ROUTES))
    code = ("import sys, time; sys.path.insert(0, %r); import smcroute; "
            "started = time.perf_counter(); smcroute.read_config(%r); "
            "print(time.perf_counter() - started)" % (ROOT, path))
    return statistics.median(float(run(PYTHON, "-c", code)) for _ in range(7))


def pace_text(pace):
    here = "Python pace: %s to parse %s routes" % (UNITS["s"](pace["here"]), size_text(PACE_ROUTES))
    if pace.get("native") is None:
        return here
    return "%s here, %s natively on the VM's host: Python runs %.1f× slower here" \
        % (here, UNITS["s"](pace["native"]), pace["here"] / pace["native"])


def parse_size(text):
    text = text.strip().lower()
    return int(float(text[:-1]) * 1000) if text.endswith("k") else int(text)


FULL = {"runs": 5, "reloads": 5, "sizes": "10k,100k", "c_timeout": 120, "flood_seconds": 2}
QUICK = {"runs": 3, "reloads": 1, "sizes": "10k", "c_timeout": 60, "flood_seconds": 1}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a short run: %s" % " ".join("--%s %s" % (name.replace("_", "-"), value)
                                                         for name, value in QUICK.items()))
    parser.add_argument("--runs", type=int, help="runs per daemon and figure (default 5)")
    parser.add_argument("--sizes", help="route counts for figures 2-6 (default 10k,100k)")
    parser.add_argument("--reloads", type=int, help="reloads per run (default 5)")
    parser.add_argument("--c-timeout", "--timeout", type=float, dest="c_timeout",
                        help="seconds any one measurement may take, for either daemon (default 120)")
    parser.add_argument("--only", default="scale,add,first,flood",
                        help="session groups: scale (1-6), add (7), first (8), flood (9)")
    parser.add_argument("--no-pyz", action="store_true", help="leave out the pyz rows")
    parser.add_argument("--probe-interval", type=float, default=0.005,
                        help="seconds between control-socket questions (default 0.005)")
    parser.add_argument("--flood-rate", type=float, default=10000, help="new flows a second (default 10000)")
    parser.add_argument("--flood-seconds", type=float, help="length of the flood (default 2)")
    parser.add_argument("--json", metavar="FILE", help="save the raw numbers")
    parser.add_argument("--pace", action="store_true",
                        help="print only the Python pace (seconds to parse %s routes) and exit"
                        % size_text(PACE_ROUTES))
    parser.add_argument("--native-pace", type=float, metavar="SEC",
                        help="the pace measured outside build.sh's VM, to compare with this one's")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.sizes = [parse_size(size) for size in args.sizes.split(",") if size.strip()]
    args.only = set(args.only.split(","))
    unknown = args.only - {"scale", "add", "first", "flood"}
    if unknown:
        parser.error("unknown --only groups: %s" % ", ".join(sorted(unknown)))
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.pace:
        with tempfile.TemporaryDirectory(prefix="smcroute-pace-") as workdir:
            print("%.6f" % python_pace(workdir))
        return
    if os.geteuid() != 0:
        sys.exit("compare.py: run as root (network namespaces, multicast routing)")
    began = time.monotonic()
    c_version = ensure_smcrouted()
    results = {"samples": {}, "timeouts": {}, "unreached": {}, "notes": [], "options": vars(args).copy()}
    results["options"]["only"] = sorted(args.only)
    workdir = tempfile.mkdtemp(prefix="smcroute-bench-")
    bed = bench = None
    try:
        # A copy, so that every run measures the same code even if the work
        # tree changes meanwhile; the pyz is built from it at the same moment.
        program = shutil.copy(os.path.join(ROOT, "smcroute.py"), workdir)
        pyz_path = None if args.no_pyz else build_pyz(workdir, results["notes"])
        kinds = (PyKind("smcroute.py", program),
                 pyz_path and PyKind("smcroute.pyz", pyz_path),
                 CKind(c_version))
        results["header"] = machine_header(program, c_version)
        results["pace"] = {"here": python_pace(workdir), "native": args.native_pace}
        bed = Bed()
        bench = Bench(args, bed, workdir)
        measure(args, bench, kinds, results)
    except KeyboardInterrupt:
        results["notes"].append("interrupted: the table has what was measured until then")
    finally:
        for proc in list(STARTED):
            proc.kill()
            proc.wait()
        if bench:
            bench.mfc.close()
        if bed:
            bed.close()
        shutil.rmtree(workdir, ignore_errors=True)
    results["seconds"] = time.monotonic() - began
    header = results["header"]
    print()
    print("%s; kernel %s; %s" % (header["date"], header["kernel"], header["cpu"]))
    print("daemons under %s; bench under %s; %s; smcrouted %s"
          % (header["daemon python"], header["bench python"], header["smcroute.py"], header["smcrouted"]))
    if "pace" in results:
        print(pace_text(results["pace"]))
    print()
    print_table(args, results, kinds)
    print_notes(args, results)
    print("run took %.1f min" % (results["seconds"] / 60))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
