#!/usr/bin/env python3
"""smcroute.py -- a static multicast routing daemon for Linux.

Keeps static (S,G) routes in the kernel's multicast forwarding cache (MFC),
learns (S,G) entries on demand for (*,G) and range rules, joins groups so
that snooping switches open up, and is driven by a config file, signals and
a line-per-command UNIX socket.  Standard library only.

    smcroute.py [-f FILE] [-u SOCK] [-P PIDFILE]      run the daemon
    smcroute.py [-u SOCK] COMMAND [ARG ...]           talk to it

The module is laid out in sections, in the order data flows:
constants and kernel ABI, config, kernel/MFC, group joins, routing state,
IPC, daemon loop, CLI.
"""

import errno
import fcntl
import getopt
import glob
import os
import selectors
import signal
import socket
import struct
import sys
import syslog
import time
import traceback
from collections import namedtuple

VERSION = "0.1.0"

USAGE = """\
usage: smcroute.py [OPTIONS]                    run the daemon
       smcroute.py [-u SOCK] -a IIF SRC GRP OIF...  add a route
       smcroute.py [-u SOCK] -r IIF SRC GRP         remove a route
       smcroute.py [-u SOCK] -j IIF [SRC] GRP       join a group
       smcroute.py [-u SOCK] -l IIF [SRC] GRP       leave a group
       smcroute.py [-u SOCK] -k                     stop the daemon
       smcroute.py [-u SOCK] COMMAND [ARG...]       any control command
       smcroute.py -F FILE                          check a config file

options:
  -f FILE            config file (default /etc/smcroute.conf)
  -u SOCK            control socket (default /run/smcroute)
  -P FILE            PID file, written when ready (default /run/smcroute.pid)
  -c SEC             expire idle learned routes after SEC..2*SEC s (default 60, 0: never)
  -d                 detach into the background, log to syslog
  -n                 stay in the foreground (the default)
  -D                 debug log, same as --log-level debug
  --log-level LEVEL  error, warning, notice (default), info or debug
  -F FILE            check FILE, print its problems, exit 0 or 78
  -v                 print the version
  -h                 print this help
"""

# Exit codes, from sysexits.h as SMCRoute uses them.
EX_OK, EX_FAIL, EX_USAGE, EX_UNAVAILABLE, EX_OSERR = 0, 1, 64, 69, 71
EX_NOKERNEL, EX_NOPERM, EX_CONFIG = 76, 77, 78

DEFAULT_CONFIG = "/etc/smcroute.conf"
DEFAULT_SOCKET = "/run/smcroute"
DEFAULT_PIDFILE = "/run/smcroute.pid"
DEFAULT_EXPIRE = 60

# ---------------------------------------------------------------------------
# Constants and kernel ABI (linux/mroute.h, linux/mroute6.h, linux/in.h)
# ---------------------------------------------------------------------------

MAXVIFS = 32            # MAXMIFS is the same

# Socket options; MRT6_* have the same numbers at level IPPROTO_IPV6.
MRT_INIT, MRT_DONE = 200, 201
MRT_ADD_VIF, MRT_DEL_VIF = 202, 203
MRT_ADD_MFC, MRT_DEL_MFC = 204, 205
MRT_PIM = 208           # also turns on asserts: WRONGVIF upcalls

SIOCGETSGCNT = 0x89E1   # SIOCGETSGCNT_IN6 is the same number
SIOCGIFFLAGS = 0x8913
IFF_LOOPBACK, IFF_MULTICAST = 0x8, 0x1000
VIFF_USE_IFINDEX = 0x8
ICMP6_FILTER = 1

UPCALL_NOCACHE, UPCALL_WRONGVIF = 1, 2

MCAST_JOIN_GROUP, MCAST_LEAVE_GROUP = 42, 45
MCAST_JOIN_SOURCE_GROUP, MCAST_LEAVE_SOURCE_GROUP = 46, 47

# Struct layouts in native byte order and alignment, as the C headers
# define them; the '0I'/'0P' codes reproduce the compiler's padding.
VIFCTL = struct.Struct("@HBBIi4s")        # vifi flags threshold rate ifindex rmt
MFCCTL = struct.Struct("@4s4sH32sIIIi")   # origin group parent ttls[32] pkt byte wrong expire
SIOC_SG_REQ = struct.Struct("@4s4sLLL")   # src group pktcnt bytecnt wrong_if
IGMPMSG = struct.Struct("@8xBBBB4s4s")    # msgtype mbz vif vif_hi src dst
MIF6CTL = struct.Struct("@HBBHI")         # mifi flags threshold pifi rate
MF6CCTL = struct.Struct("@28s28sH0I32s")  # origin group parent if_set
SIOC_SG_REQ6 = struct.Struct("@28s28sLLL")
MRT6MSG = struct.Struct("@BBHI16s16s")    # mbz msgtype mif pad src dst
SOCKADDR_IN = struct.Struct("@HH4s8x")
SOCKADDR_IN6 = struct.Struct("@HHI16sI")
GROUP_REQ = struct.Struct("@I0P128s")
GROUP_SOURCE_REQ = struct.Struct("@I0P128s128s")
IFREQ_FLAGS = struct.Struct("@16sH22x")
MIFI = struct.Struct("@H")

# Upcalls are at most a header long; the buffer is reused for every read.
UPCALL_BUFSIZE = 256

MC_FORWARDING_V6 = "/proc/sys/net/ipv6/conf/all/mc_forwarding"

# ---------------------------------------------------------------------------
# Logging: stderr in the foreground, syslog when detached
# ---------------------------------------------------------------------------

LOG_LEVELS = {"error": syslog.LOG_ERR, "warning": syslog.LOG_WARNING,
              "notice": syslog.LOG_NOTICE, "info": syslog.LOG_INFO,
              "debug": syslog.LOG_DEBUG}
LOG_NAMES = {prio: name for name, prio in LOG_LEVELS.items()}


class Log:
    """Level-filtered messages to stderr or to syslog."""

    def __init__(self):
        self.level = syslog.LOG_NOTICE
        self.to_syslog = False

    def use_syslog(self):
        syslog.openlog("smcroute", syslog.LOG_PID, syslog.LOG_DAEMON)
        self.to_syslog = True

    def write(self, prio, msg):
        if prio > self.level:
            return
        if self.to_syslog:
            syslog.syslog(prio, msg)
        else:
            sys.stderr.write("smcroute: %s: %s\n" % (LOG_NAMES[prio], msg))
            sys.stderr.flush()

    def error(self, msg):
        self.write(syslog.LOG_ERR, msg)

    def warning(self, msg):
        self.write(syslog.LOG_WARNING, msg)

    def notice(self, msg):
        self.write(syslog.LOG_NOTICE, msg)

    def info(self, msg):
        self.write(syslog.LOG_INFO, msg)

    def debug(self, msg):
        self.write(syslog.LOG_DEBUG, msg)


log = Log()

# ---------------------------------------------------------------------------
# Config: addresses, rules, and the smcroute.conf parser
# ---------------------------------------------------------------------------


class Net:
    """An address prefix with its host bits cleared; addresses are packed bytes."""

    __slots__ = ("addr", "len", "_top", "_shift")

    def __init__(self, addr, length):
        self._shift = len(addr) * 8 - length
        self._top = int.from_bytes(addr, "big") >> self._shift
        self.addr = (self._top << self._shift).to_bytes(len(addr), "big")
        self.len = length

    def __eq__(self, other):
        return isinstance(other, Net) and (self.addr, self.len) == (other.addr, other.len)

    def __hash__(self):
        return hash((self.addr, self.len))

    def __contains__(self, addr):
        return (len(addr) == len(self.addr)
                and int.from_bytes(addr, "big") >> self._shift == self._top)

    @property
    def is_host(self):
        return self._shift == 0

    @property
    def size(self):
        return 1 << self._shift

    def covers(self, other):
        return other.len >= self.len and other.addr in self

    def __iter__(self):
        width = len(self.addr)
        first = self._top << self._shift
        for value in range(first, first + self.size):
            yield value.to_bytes(width, "big")

    def __str__(self):
        text = ntop(self.addr)
        return text if self.is_host else "%s/%d" % (text, self.len)


def ntop(addr):
    return socket.inet_ntop(socket.AF_INET6 if len(addr) == 16 else socket.AF_INET, addr)


def parse_net(text):
    """'225.1.2.0/24', '10.0.0.1' or 'ff2e::/16' -> Net."""
    addr, slash, length = text.partition("/")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        packed = socket.inet_pton(family, addr)
    except OSError:
        raise ValueError("%r is not an IP address" % text) from None
    bits = len(packed) * 8
    if not slash:
        return Net(packed, bits)
    if not (length.isdigit() and int(length) <= bits):
        raise ValueError("%r: the prefix length must be 0 to %d" % (text, bits))
    return Net(packed, int(length))


MULTICAST = {4: parse_net("224.0.0.0/4"), 16: parse_net("ff00::/8")}
ANY_SOURCE = {parse_net("0.0.0.0"), parse_net("::")}

# How many memberships one mgroup line or join command may expand into.
MAX_EXPANSION = 4096
IFNAMSIZ = 16


def is_address(text):
    try:
        parse_net(text)
    except ValueError:
        return False
    return True


def is_group(text):
    try:
        parse_group(text)
    except ValueError:
        return False
    return True


def parse_group(text):
    net = parse_net(text)
    if not MULTICAST[len(net.addr)].covers(net):
        raise ValueError("%s is not a multicast group" % text)
    return net


def parse_source(text, group):
    """A source prefix for `group`; None for 0.0.0.0 and :: (any source)."""
    net = parse_net(text)
    if len(net.addr) != len(group.addr):
        raise ValueError("source %s and group %s are not the same IP version" % (text, group))
    if net.len and MULTICAST[len(net.addr)].covers(net):
        raise ValueError("source %s is a multicast address" % text)
    if Net(net.addr, len(net.addr) * 8) in ANY_SOURCE:
        return None
    return net


def check_ifname(name):
    """Interface names as Linux allows them, plus a trailing '+' wildcard."""
    if (len(name) >= IFNAMSIZ or "/" in name or name in (".", "..")
            or "+" in name[:-1] or not name.isprintable()):
        raise ValueError("%r is not a valid interface name" % name)
    return name


def is_pattern(name):
    return name.endswith("+")


def name_matches(pattern, name):
    return name.startswith(pattern[:-1]) if is_pattern(pattern) else name == pattern


def pairs_text(source, group):
    return "(%s, %s)" % ("*" if source is None else source, group)


class Route:
    """An mroute rule: packets to `group` from `source` arriving on `iif` go out `oifs`.

    A rule naming one source and one group on a named interface is exact and
    goes straight into the kernel; every other rule is a template from which
    (S,G) entries are learned when the kernel reports traffic.
    """

    __slots__ = ("iif", "source", "group", "oifs", "origin", "seq")

    def __init__(self, iif, source, group, oifs, origin):
        self.iif, self.source, self.group = iif, source, group
        self.oifs = list(dict.fromkeys(oifs))
        self.origin = origin
        self.seq = 0

    @property
    def key(self):
        return (self.iif, self.source, self.group)

    @property
    def is_exact(self):
        return (self.source is not None and self.source.is_host
                and self.group.is_host and not is_pattern(self.iif))

    @property
    def specificity(self):
        """Templates are tried in this order: longest group prefix, then
        longest source prefix, then a named inbound interface before a
        wildcard, then config order."""
        source_len = self.source.len if self.source is not None else -1
        return (-self.group.len, -source_len, is_pattern(self.iif), self.seq)

    def __str__(self):
        return "%s from %s to %s" % (pairs_text(self.source, self.group), self.iif,
                                     " ".join(self.oifs) or "nowhere (stop filter)")


class Membership:
    """An mgroup rule: join `group` (from `source`, for SSM) on `iif`."""

    __slots__ = ("iif", "source", "group", "origin")

    def __init__(self, iif, source, group, origin):
        self.iif, self.source, self.group, self.origin = iif, source, group, origin
        count = group.size * (source.size if source is not None else 1)
        if count > MAX_EXPANSION:
            raise ValueError("%s expands to %d memberships, at most %d are allowed"
                             % (pairs_text(source, group), count, MAX_EXPANSION))

    @property
    def key(self):
        return (self.iif, self.source, self.group)

    def __str__(self):
        return "%s on %s" % (pairs_text(self.source, self.group), self.iif)


Phyint = namedtuple("Phyint", "name enabled ttl mrdisc origin")


def make_route(iif, source, group, oifs, origin):
    """Validate the words of an mroute line or an `add` command."""
    grp = parse_group(group)
    src = parse_source(source, grp) if source is not None else None
    return Route(check_ifname(iif), src, grp, [check_ifname(o) for o in oifs], origin)


def make_membership(iif, source, group, origin):
    grp = parse_group(group)
    src = parse_source(source, grp) if source is not None else None
    return Membership(check_ifname(iif), src, grp, origin)


class ConfigError(ValueError):
    pass


class Config:
    """What a config file asks for, as plain values, with its problems."""

    def __init__(self):
        self.phyints = {}
        self.routes = []
        self.memberships = []
        self.errors = []
        self.warnings = []


def keyword_args(words, keywords):
    """Split 'keyword value' pairs, in any order; 'to' takes the rest."""
    found = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word not in keywords:
            raise ConfigError("unknown keyword %r, expected one of: %s"
                              % (word, ", ".join(keywords)))
        if word in found:
            raise ConfigError("%r given twice" % word)
        if word == "to":
            found[word] = words[i + 1:]
            if not found[word]:
                raise ConfigError("'to' needs at least one interface")
            break
        if i + 1 == len(words):
            raise ConfigError("%r needs a value" % word)
        found[word] = words[i + 1]
        i += 2
    for required in ("from", "group"):
        if required not in found:
            raise ConfigError("missing '%s'" % required)
    return found


def parse_phyint(config, words, origin):
    if not words:
        raise ConfigError("phyint needs an interface name")
    name = check_ifname(words[0])
    enabled, ttl, mrdisc = True, 1, False
    rest = iter(words[1:])
    for word in rest:
        if word in ("enable", "disable"):
            enabled = word == "enable"
        elif word == "mrdisc":
            mrdisc = True
        elif word == "ttl-threshold":
            value = next(rest, "")
            if not (value.isdigit() and 1 <= int(value) <= 255):
                raise ConfigError("ttl-threshold needs a number from 1 to 255")
            ttl = int(value)
        else:
            raise ConfigError("phyint: unknown option %r, expected enable, disable, "
                              "ttl-threshold N or mrdisc" % word)
    if mrdisc:
        config.warnings.append("%s: mrdisc is not supported by smcroute.py, ignored" % origin)
    config.phyints[name] = Phyint(name, enabled, ttl, mrdisc, origin)


def parse_mroute(config, words, origin):
    args = keyword_args(words, ("from", "source", "group", "to"))
    config.routes.append(make_route(args["from"], args.get("source"), args["group"],
                                    args.get("to", ()), origin))


def parse_mgroup(config, words, origin):
    args = keyword_args(words, ("from", "source", "group"))
    config.memberships.append(make_membership(args["from"], args.get("source"),
                                              args["group"], origin))


DIRECTIVES = {"phyint": parse_phyint, "mroute": parse_mroute,
              "mgroup": parse_mgroup, "ssmgroup": parse_mgroup}
MAX_INCLUDE_DEPTH = 16


def read_config(path):
    """Parse `path` and everything it includes into a Config."""
    config = Config()
    try:
        read_config_file(config, path, [])
    except OSError as exc:
        config.errors.append("%s: %s" % (path, exc.strerror))
    return config


def read_config_file(config, path, including):
    real = os.path.realpath(path)
    if real in including:
        raise ConfigError("include cycle: %s" % " -> ".join(including + [real]))
    if len(including) >= MAX_INCLUDE_DEPTH:
        raise ConfigError("includes nested deeper than %d" % MAX_INCLUDE_DEPTH)
    with open(path, encoding="utf-8", errors="replace") as lines:
        for lineno, line in enumerate(lines, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            origin = "%s:%d" % (path, lineno)
            try:
                if words[0] == "include":
                    include(config, path, words[1:], including + [real])
                elif words[0] in DIRECTIVES:
                    DIRECTIVES[words[0]](config, words[1:], origin)
                else:
                    raise ConfigError("unknown directive %r, expected one of: %s"
                                      % (words[0], ", ".join(["include"] + list(DIRECTIVES))))
            except ValueError as exc:
                config.errors.append("%s: %s" % (origin, exc))


def include(config, path, words, including):
    """`include GLOB`: files relative to the including file, in sorted order."""
    if len(words) != 1:
        raise ConfigError("include needs exactly one file name or pattern")
    pattern = os.path.join(os.path.dirname(path), words[0])
    names = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    for name in names:
        try:
            read_config_file(config, name, including)
        except OSError as exc:
            raise ConfigError("cannot include %s: %s" % (name, exc.strerror)) from None

# ---------------------------------------------------------------------------
# Kernel/MFC: the routing sockets, VIFs and forwarding cache entries
# ---------------------------------------------------------------------------


class KernelError(Exception):
    """The kernel cannot do what a rule needs (no free VIF, say)."""


class Fatal(Exception):
    """The daemon cannot start; `code` is its exit status."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class Interface(namedtuple("Interface", "name index flags")):
    @property
    def multicast(self):
        return self.flags & IFF_MULTICAST and not self.flags & IFF_LOOPBACK


class Interfaces:
    """The network namespace's interfaces, as of the last refresh()."""

    def __init__(self):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.by_name = {}
        self.by_index = {}

    def refresh(self):
        found = {}
        for index, name in socket.if_nameindex():
            try:
                reply = fcntl.ioctl(self._sock, SIOCGIFFLAGS,
                                    IFREQ_FLAGS.pack(name.encode(), 0))
            except OSError:
                continue            # gone between the listing and the ioctl
            found[name] = Interface(name, index, IFREQ_FLAGS.unpack(reply)[1])
        self.by_name = found
        self.by_index = {iface.index: iface for iface in found.values()}

    def matching(self, pattern):
        if not is_pattern(pattern):
            iface = self.by_name.get(pattern)
            return [iface] if iface else []
        return sorted((i for i in self.by_name.values() if name_matches(pattern, i.name)),
                      key=lambda i: i.index)

    def close(self):
        self._sock.close()


class Mroute:
    """One IP version's multicast routing socket, its VIF table, and a mirror
    of every MFC entry this daemon installed: {(src, grp): (parent, oifs)}
    with oifs a sorted tuple of (vif, ttl)."""

    family = level = proto = None
    name = vif_name = ""

    def __init__(self):
        self.sock = socket.socket(self.family, socket.SOCK_RAW, self.proto)
        try:
            self.sock.setsockopt(self.level, MRT_INIT, 1)
        except OSError as exc:
            self.sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise Fatal(EX_UNAVAILABLE, "another multicast router owns the %s routing "
                            "table in this network namespace" % self.name) from None
            raise
        self.sock.setsockopt(self.level, MRT_PIM, 1)
        self.sock.setblocking(False)
        self.vifs = [None] * MAXVIFS          # vif -> ifindex
        self.vif_of = {}                      # ifindex -> vif
        self.refs = [0] * MAXVIFS             # MFC entries using each vif
        self.mfc = {}
        self.buf = bytearray(UPCALL_BUFSIZE)

    def close(self):
        """Leave the table: the kernel drops our VIFs and MFC entries."""
        try:
            self.sock.setsockopt(self.level, MRT_DONE, 1)
        except OSError:
            pass
        self.sock.close()

    # VIFs --------------------------------------------------------------

    def vif(self, iface, ttl):
        """The VIF of `iface`, registered on first use."""
        vif = self.vif_of.get(iface.index)
        if vif is not None:
            return vif
        try:
            vif = self.vifs.index(None)
        except ValueError:
            raise KernelError("no free %s for %s: all %d are in use"
                              % (self.vif_name, iface.name, MAXVIFS)) from None
        self.sock.setsockopt(self.level, MRT_ADD_VIF, self.pack_vif(vif, iface.index, ttl))
        self.vifs[vif] = iface.index
        self.vif_of[iface.index] = vif
        log.info("%s %d is %s" % (self.vif_name, vif, iface.name))
        return vif

    def release_vifs(self, keep):
        """Unregister every VIF that no entry uses and whose ifindex is not in `keep`."""
        for vif, index in enumerate(self.vifs):
            if index is not None and not self.refs[vif] and index not in keep:
                try:
                    self.sock.setsockopt(self.level, MRT_DEL_VIF, self.pack_vif_del(vif))
                except OSError as exc:
                    if exc.errno != errno.EADDRNOTAVAIL:   # the device went away
                        raise
                self.vifs[vif] = None
                self.vif_of.pop(index, None)
                log.info("%s %d released" % (self.vif_name, vif))

    def forget_vifs(self, present):
        """Treat VIFs of interfaces no longer `present` as unusable: the
        kernel dropped them with the device."""
        for index in [i for i in self.vif_of if i not in present]:
            del self.vif_of[index]

    # MFC ---------------------------------------------------------------

    def apply(self, key, want):
        """Make the kernel's entry for `key` = (src, grp) be `want`:
        (parent, oifs), or None for no entry."""
        have = self.mfc.get(key)
        if want == have:
            return
        if want is None:
            try:
                self.sock.setsockopt(self.level, MRT_DEL_MFC, self.pack_mfc(key, 0, ()))
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
            del self.mfc[key]
        else:
            self.sock.setsockopt(self.level, MRT_ADD_MFC, self.pack_mfc(key, *want))
            self.mfc[key] = want
            self._count(want, 1)
        if have is not None:
            self._count(have, -1)

    def _count(self, entry, step):
        parent, oifs = entry
        self.refs[parent] += step
        for vif, _ in oifs:
            self.refs[vif] += step

    def counters(self, key):
        """(packets, bytes, wrong_if) the kernel counted for an entry."""
        try:
            reply = fcntl.ioctl(self.sock, SIOCGETSGCNT, self.pack_sg_req(key))
        except OSError:
            return (0, 0, 0)
        return self.SG_REQ.unpack(reply)[2:]

    # Upcalls -----------------------------------------------------------

    def upcalls(self):
        """Yield (msgtype, vif, src, grp) for each upcall waiting on the socket."""
        while True:
            try:
                size = self.sock.recv_into(self.buf)
            except (BlockingIOError, InterruptedError):
                return
            upcall = self.parse_upcall(size)
            if upcall is not None:
                yield upcall


class MrouteV4(Mroute):
    family, level, proto = socket.AF_INET, socket.IPPROTO_IP, socket.IPPROTO_IGMP
    name, vif_name = "IPv4", "VIF"
    SG_REQ = SIOC_SG_REQ

    @staticmethod
    def pack_vif(vif, ifindex, ttl):
        return VIFCTL.pack(vif, VIFF_USE_IFINDEX, ttl, 0, ifindex, bytes(4))

    @staticmethod
    def pack_vif_del(vif):
        return VIFCTL.pack(vif, 0, 0, 0, 0, bytes(4))

    @staticmethod
    def pack_mfc(key, parent, oifs):
        ttls = bytearray(MAXVIFS)
        for vif, ttl in oifs:
            ttls[vif] = ttl
        return MFCCTL.pack(key[0], key[1], parent, bytes(ttls), 0, 0, 0, 0)

    @staticmethod
    def pack_sg_req(key):
        return SIOC_SG_REQ.pack(key[0], key[1], 0, 0, 0)

    def parse_upcall(self, size):
        # The raw IGMP socket also receives real IGMP, whose IP protocol
        # byte sits where an upcall has its zero mbz.
        if size < IGMPMSG.size:
            return None
        msgtype, mbz, vif, vif_hi, src, grp = IGMPMSG.unpack_from(self.buf)
        if mbz or msgtype not in (UPCALL_NOCACHE, UPCALL_WRONGVIF):
            return None
        return msgtype, vif | vif_hi << 8, src, grp


def sockaddr_in6(addr):
    return SOCKADDR_IN6.pack(socket.AF_INET6, 0, 0, addr, 0)


class MrouteV6(Mroute):
    family, level, proto = socket.AF_INET6, socket.IPPROTO_IPV6, socket.IPPROTO_ICMPV6
    name, vif_name = "IPv6", "MIF"
    SG_REQ = SIOC_SG_REQ6

    def __init__(self):
        super().__init__()
        # Upcalls bypass the ICMPv6 filter; real ICMPv6 traffic need not reach us.
        self.sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, b"\xff" * 32)
        self.switched_on = switch_on(MC_FORWARDING_V6)

    def close(self):
        super().close()
        if self.switched_on:
            write_sysctl(MC_FORWARDING_V6, "0")

    @staticmethod
    def pack_vif(vif, ifindex, ttl):
        return MIF6CTL.pack(vif, 0, ttl, ifindex, 0)

    @staticmethod
    def pack_vif_del(vif):
        return MIFI.pack(vif)

    @staticmethod
    def pack_mfc(key, parent, oifs):
        mask = 0
        for vif, _ in oifs:
            mask |= 1 << vif
        if_set = struct.pack("@I", mask).ljust(32, b"\0")
        return MF6CCTL.pack(sockaddr_in6(key[0]), sockaddr_in6(key[1]), parent, if_set)

    @staticmethod
    def pack_sg_req(key):
        return SIOC_SG_REQ6.pack(sockaddr_in6(key[0]), sockaddr_in6(key[1]), 0, 0, 0)

    def parse_upcall(self, size):
        if size < MRT6MSG.size:
            return None
        mbz, msgtype, mif, _, src, grp = MRT6MSG.unpack_from(self.buf)
        if mbz or msgtype not in (UPCALL_NOCACHE, UPCALL_WRONGVIF):
            return None
        return msgtype, mif, src, grp


def switch_on(path):
    """Write 1 to a sysctl that reads 0; True when it did, to undo at exit.
    Linux sets mc_forwarding itself on MRT6_INIT (and makes it read-only);
    older kernels left it to the routing daemon."""
    try:
        with open(path) as knob:
            if knob.read().strip() != "0":
                return False
    except OSError:
        return False
    return write_sysctl(path, "1")


def write_sysctl(path, value):
    try:
        with open(path, "w") as knob:
            knob.write(value)
    except OSError as exc:
        log.warning("cannot write %s: %s" % (path, exc.strerror))
        return False
    return True


def open_kernels():
    """{address length: Mroute} for each IP version the kernel routes."""
    kernels = {}
    for size, cls in ((4, MrouteV4), (16, MrouteV6)):
        try:
            kernels[size] = cls()
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise
            log.warning("%s multicast routing is not available: %s" % (cls.name, exc.strerror))
    return kernels

# ---------------------------------------------------------------------------
# Group joins
# ---------------------------------------------------------------------------


def sockaddr(addr):
    if len(addr) == 4:
        return SOCKADDR_IN.pack(socket.AF_INET, 0, addr)
    return sockaddr_in6(addr)


class Joins:
    """Group memberships, {(ifindex, src or None, grp): socket}.

    The kernel caps memberships per socket (igmp_max_memberships, 20 by
    default, and igmp_max_msf sources per group): when a socket says
    ENOBUFS it is full, and the next membership goes to another socket.
    """

    def __init__(self):
        self.held = {}
        self.sockets = {4: [], 16: []}
        self.full = set()

    def join(self, key):
        index, src, grp = key
        family = len(grp)
        for sock in self.sockets[family] + [None]:
            if sock in self.full:
                continue
            if sock is None:
                sock = self._open(family)
            try:
                self._set(sock, MCAST_JOIN_SOURCE_GROUP if src else MCAST_JOIN_GROUP, key)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS or len(self._members(sock)) == 0:
                    raise
                self.full.add(sock)
                continue
            self.held[key] = sock
            return

    def leave(self, key):
        sock = self.held.pop(key)
        try:
            self._set(sock, MCAST_LEAVE_SOURCE_GROUP if key[1] else MCAST_LEAVE_GROUP, key)
        except OSError as exc:          # the interface is gone, and the membership with it
            if exc.errno not in (errno.ENODEV, errno.EADDRNOTAVAIL):
                raise
        self.full.discard(sock)
        if not self._members(sock):
            self.sockets[len(key[2])].remove(sock)
            sock.close()

    def _open(self, family):
        sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6,
                             socket.SOCK_DGRAM)
        self.sockets[family].append(sock)
        return sock

    def _members(self, sock):
        return [key for key, held in self.held.items() if held is sock]

    @staticmethod
    def _set(sock, option, key):
        index, src, grp = key
        level = socket.IPPROTO_IP if len(grp) == 4 else socket.IPPROTO_IPV6
        if src:
            req = GROUP_SOURCE_REQ.pack(index, sockaddr(grp), sockaddr(src))
        else:
            req = GROUP_REQ.pack(index, sockaddr(grp))
        sock.setsockopt(level, option, req)

    def close(self):
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()
        self.held.clear()

# ---------------------------------------------------------------------------
# Routing state: desired rules, learned entries, and the one reconcile path
# ---------------------------------------------------------------------------


class NotFound(LookupError):
    """A rule or membership to remove that is not there."""


class Learned:
    """An (S,G) the kernel asked about: where it came in, and its last count."""

    __slots__ = ("iif", "seen")

    def __init__(self, iif):
        self.iif = iif          # ifindex
        self.seen = None        # valid packets at the last expiry check


class Router:
    """What the user wants (phyints, rules, memberships) and what the
    kernel has; every change goes through sync(), which computes the wanted
    MFC entry of each affected (S,G) and lets Mroute.apply() diff it."""

    def __init__(self, kernels):
        self.kernels = kernels          # {4: MrouteV4, 16: MrouteV6}
        self.ifaces = Interfaces()
        self.joins = Joins()
        self.phyints = {}
        self.routes = {}                # Route.key -> Route, config order
        self.exact = {}                 # (src, grp) -> [Route]
        self.templates = {4: [], 16: []}
        self.learned = {}               # (src, grp) -> Learned
        self.memberships = {}           # Membership.key -> Membership
        self.seq = 0

    def close(self):
        self.joins.close()
        self.ifaces.close()

    # Interfaces ----------------------------------------------------------

    def phyint(self, name):
        phyint = self.phyints.get(name)
        if phyint is None:
            for pattern, candidate in self.phyints.items():
                if is_pattern(pattern) and name_matches(pattern, name):
                    return candidate
        return phyint

    def ttl(self, name):
        phyint = self.phyint(name)
        return phyint.ttl if phyint else 1

    def usable(self, pattern):
        """The interfaces named by `pattern` that may route multicast."""
        result = []
        for iface in self.ifaces.matching(pattern):
            phyint = self.phyint(iface.name)
            if iface.multicast and (phyint is None or phyint.enabled):
                result.append(iface)
        return result

    def route_problems(self, route):
        """Why `route` is not fully in effect yet, as warnings."""
        if len(route.group.addr) not in self.kernels:
            return ["%s: IPv%d multicast routing is not available, %s waits"
                    % (route.origin, 4 if len(route.group.addr) == 4 else 6, route)]
        return ["%s: no usable interface %s yet, %s waits" % (route.origin, name, route)
                for name in [route.iif] + route.oifs if not self.usable(name)]

    def membership_problems(self, membership):
        if self.ifaces.matching(membership.iif):
            return []
        return ["%s: no interface %s yet, %s waits"
                % (membership.origin, membership.iif, membership)]

    # Desired entries -------------------------------------------------------

    def match(self, src, grp, iif):
        """The most specific template for (src, grp) arriving on interface `iif`."""
        for route in self.templates[len(grp)]:
            if (grp in route.group and (route.source is None or src in route.source)
                    and name_matches(route.iif, iif.name)):
                return route
        return None

    def resolve(self, route, iif):
        """The MFC entry (parent, oifs) that `route` gives to traffic on `iif`."""
        kernel = self.kernels[len(route.group.addr)]
        try:
            parent = kernel.vif(iif, self.ttl(iif.name))
            oifs = set()
            for name in route.oifs:
                for oif in self.usable(name):
                    if oif.index != iif.index or not is_pattern(name):
                        ttl = self.ttl(oif.name)
                        oifs.add((kernel.vif(oif, ttl), ttl))
        except KernelError as exc:
            raise KernelError("%s: %s: %s" % (route.origin, route, exc)) from None
        return parent, tuple(sorted(oifs))

    def wanted(self, key):
        for route in self.exact.get(key, ()):
            for iif in self.usable(route.iif):
                return self.resolve(route, iif)
        learned = self.learned.get(key)
        if learned is None:
            return None
        iif = self.ifaces.by_index.get(learned.iif)
        if iif is None:
            return None
        route = self.match(key[0], key[1], iif)
        if route is not None:
            return self.resolve(route, iif)
        return self.kernels[len(key[1])].vif(iif, self.ttl(iif.name)), ()

    def sync(self, keys):
        """Bring the kernel's entries for `keys` in line; returns problems."""
        problems = []
        for key in keys:
            kernel = self.kernels.get(len(key[1]))
            if kernel is None:
                continue
            try:
                kernel.apply(key, self.wanted(key))
            except KernelError as exc:
                problems.append(str(exc))
            except OSError as exc:
                problems.append("%s: %s" % (pairs_text(ntop(key[0]), ntop(key[1])), describe(exc)))
        for problem in problems:
            log.error(problem)
        return problems

    def sync_vifs(self):
        """Register the VIFs that templates and phyints need before any
        traffic, and release the ones nothing needs any more; returns
        [(rule, problem)]."""
        problems = []
        for size, kernel in self.kernels.items():
            keep = set()
            wanted = [(t.iif, t) for t in self.templates[size]]
            wanted += [(p.name, p) for p in self.phyints.values() if p.enabled]
            for pattern, rule in wanted:
                for iface in self.usable(pattern):
                    keep.add(iface.index)
                    try:
                        kernel.vif(iface, self.ttl(iface.name))
                    except (KernelError, OSError) as exc:
                        problems.append((rule, "%s: %s" % (rule.origin, describe(exc))))
            kernel.release_vifs(keep)
        for _, problem in problems:
            log.error(problem)
        return problems

    def keys_for(self, route):
        """The (S,G) keys whose entries a change of `route` can alter."""
        if route.is_exact:
            return [(route.source.addr, route.group.addr)]
        return [key for key in self.learned
                if key[1] in route.group and (route.source is None or key[0] in route.source)]

    # Rules ---------------------------------------------------------------

    def _index(self, route):
        if route.is_exact:
            self.exact.setdefault((route.source.addr, route.group.addr), []).append(route)
        else:
            templates = self.templates[len(route.group.addr)]
            templates.append(route)
            templates.sort(key=lambda r: r.specificity)

    def _unindex(self, route):
        if route.is_exact:
            key = (route.source.addr, route.group.addr)
            self.exact[key].remove(route)
            if not self.exact[key]:
                del self.exact[key]
        else:
            self.templates[len(route.group.addr)].remove(route)

    def _insert(self, route):
        """Store `route`, merging its OIFs into an existing rule with the same key."""
        old = self.routes.get(route.key)
        if old is not None:
            old.oifs.extend(o for o in route.oifs if o not in old.oifs)
            return old
        self.seq += 1
        route.seq = self.seq
        self.routes[route.key] = route
        self._index(route)
        return route

    def add_route(self, route):
        """Add or extend a rule at run time; returns warnings.  A rule the
        kernel refuses (no free VIF, say) is taken back and raises."""
        self.ifaces.refresh()
        existed = self.routes.get(route.key)
        before = list(existed.oifs) if existed else None
        stored = self._insert(route)
        problems = self.sync(self.keys_for(stored))
        problems += [problem for rule, problem in self.sync_vifs() if rule is stored]
        if problems:
            self._drop(stored, before)
            raise KernelError("; ".join(problems))
        return self.route_problems(stored)

    def _drop(self, route, oifs_before):
        if oifs_before is None:
            del self.routes[route.key]
            self._unindex(route)
        else:
            route.oifs[:] = oifs_before
        self.sync(self.keys_for(route))
        self.sync_vifs()

    def del_route(self, key, oifs):
        """Remove `oifs` from a rule, or the whole rule when none are given
        or none are left."""
        route = self.routes.get(key)
        if route is None:
            raise NotFound("no such route: %s from %s" % (pairs_text(key[1], key[2]), key[0]))
        missing = [o for o in oifs if o not in route.oifs]
        if missing:
            raise NotFound("%s does not go out %s" % (route, " ".join(missing)))
        remaining = [o for o in route.oifs if o not in oifs] if oifs else []
        self.ifaces.refresh()
        if remaining:
            route.oifs[:] = remaining
        else:
            del self.routes[key]
            self._unindex(route)
        self.sync(self.keys_for(route))
        self.sync_vifs()

    # Learned entries -------------------------------------------------------

    def upcall(self, kernel, msgtype, vif, src, grp):
        index = kernel.vifs[vif] if vif < MAXVIFS else None
        iif = self.ifaces.by_index.get(index)
        if iif is None:
            return
        key = (src, grp)
        learned = self.learned.get(key)
        if msgtype == UPCALL_NOCACHE:
            if learned is None:
                self.learned[key] = Learned(index)
            else:
                learned.iif = index
        elif self.rehome(key, learned, iif):
            learned.iif = index
        else:
            return
        log.debug("%s on %s" % (pairs_text(ntop(src), ntop(grp)), iif.name))
        self.sync([key])

    def rehome(self, key, learned, iif):
        """Should a WRONGVIF on `iif` move a learned entry there?  Only a
        stop filter moves, and only to an interface a rule accepts: a flow
        that matches a rule where it is keeps its interface, so a second
        feed of the same (S,G) cannot steal it."""
        if learned is None or learned.iif == iif.index or key in self.exact:
            return False
        if self.match(key[0], key[1], iif) is None:
            return False
        here = self.ifaces.by_index.get(learned.iif)
        return here is None or self.match(key[0], key[1], here) is None

    def expire(self):
        """Drop learned entries that saw no packet since the last call."""
        stale = []
        for key, learned in self.learned.items():
            kernel = self.kernels[len(key[1])]
            packets, _, wrong_if = kernel.counters(key)
            valid = packets - wrong_if
            if learned.seen == valid:
                stale.append(key)
            learned.seen = valid
        self.forget(stale)

    def forget(self, keys):
        for key in keys:
            del self.learned[key]
        self.sync(keys)
        self.sync_vifs()
        return len(keys)

    # Memberships -----------------------------------------------------------

    def wanted_joins(self):
        """{(ifindex, src, grp): Membership} for every usable membership."""
        wanted = {}
        for membership in self.memberships.values():
            sources = membership.source if membership.source is not None else [None]
            for iface in self.ifaces.matching(membership.iif):
                for src in sources:
                    for grp in membership.group:
                        wanted.setdefault((iface.index, src, grp), membership)
        return wanted

    def sync_joins(self):
        problems = []
        wanted = self.wanted_joins()
        for key in [k for k in self.joins.held if k not in wanted]:
            try:
                self.joins.leave(key)
            except OSError as exc:
                problems.append("leave %s: %s" % (pairs_text(key[1] and ntop(key[1]), ntop(key[2])),
                                                  exc.strerror))
        for key, membership in wanted.items():
            if key not in self.joins.held:
                try:
                    self.joins.join(key)
                except OSError as exc:
                    problems.append("%s: join %s: %s" % (membership.origin, membership, exc.strerror))
        for problem in problems:
            log.error(problem)
        return problems

    def join(self, membership):
        self.ifaces.refresh()
        if membership.key in self.memberships:
            raise ValueError("already joined: %s" % membership)
        self.memberships[membership.key] = membership
        problems = self.sync_joins()
        if problems:
            del self.memberships[membership.key]
            self.sync_joins()
            raise KernelError("; ".join(problems))
        return self.membership_problems(membership)

    def leave(self, key):
        if self.memberships.pop(key, None) is None:
            raise NotFound("not joined: %s on %s" % (pairs_text(key[1], key[2]), key[0]))
        self.ifaces.refresh()
        self.sync_joins()

    # The whole state at once --------------------------------------------

    def load(self, config):
        """Make `config` the desired state; entries that do not change are
        not touched, so their flows go on undisturbed."""
        self.ifaces.refresh()
        present = set(self.ifaces.by_index)
        for kernel in self.kernels.values():
            kernel.forget_vifs(present)
        self.learned = {k: v for k, v in self.learned.items() if v.iif in present}
        self.phyints = dict(config.phyints)
        self.routes, self.exact = {}, {}
        self.templates = {4: [], 16: []}
        for route in config.routes:
            self._insert(route)
        self.memberships = {}
        for membership in config.memberships:
            self.memberships.setdefault(membership.key, membership)
        # Config order decides which rules get the last free VIFs.
        keys = dict.fromkeys(self.exact)
        keys.update(dict.fromkeys(self.learned))
        for kernel in self.kernels.values():
            keys.update(dict.fromkeys(kernel.mfc))
        warnings = []
        for route in self.routes.values():
            warnings += self.route_problems(route)
        for membership in self.memberships.values():
            warnings += self.membership_problems(membership)
        for warning in warnings:
            log.warning(warning)
        vif_problems = [problem for _, problem in self.sync_vifs()]
        return warnings + self.sync(keys) + vif_problems + self.sync_joins()

    # Reports -------------------------------------------------------------

    def route_rows(self):
        """Every rule and kernel entry, as dicts for `show routes`."""
        rows = []
        installed = set()
        for _, kernel in sorted(self.kernels.items()):
            names = {vif: self.ifaces.by_index.get(index) for vif, index in enumerate(kernel.vifs)}
            for key, (parent, oifs) in sorted(kernel.mfc.items(), key=lambda i: (i[0][1], i[0][0])):
                installed.add(key)
                packets, octets, _ = kernel.counters(key)
                kind = "static" if key in self.exact else "learned" if oifs else "stop"
                rows.append(dict(kind=kind, source=ntop(key[0]), group=ntop(key[1]),
                                 iif=iface_name(names[parent]),
                                 oifs=[iface_name(names[vif]) for vif, _ in oifs],
                                 packets=packets, bytes=octets))
        for route in self.routes.values():
            if route.is_exact and (route.source.addr, route.group.addr) in installed:
                continue
            rows.append(dict(kind="template" if not route.is_exact else "waiting",
                             source=str(route.source) if route.source else None,
                             group=str(route.group), iif=route.iif, oifs=list(route.oifs),
                             packets=None, bytes=None))
        return rows

    def group_rows(self):
        rows = []
        for (index, src, grp), _ in sorted(self.joins.held.items(), key=lambda i: (i[0][2], i[0][0])):
            rows.append(dict(kind="joined", iif=iface_name(self.ifaces.by_index.get(index)),
                             source=src and ntop(src), group=ntop(grp)))
        joined = set(self.wanted_joins().values())
        for membership in self.memberships.values():
            if membership not in joined:
                rows.append(dict(kind="waiting", iif=membership.iif,
                                 source=membership.source and str(membership.source),
                                 group=str(membership.group)))
        return rows

    def interface_rows(self):
        rows = []
        for iface in sorted(self.ifaces.by_name.values(), key=lambda i: i.index):
            vifs = {size: k.vif_of.get(iface.index) for size, k in self.kernels.items()}
            rows.append(dict(name=iface.name, index=iface.index, vif=vifs.get(4), mif=vifs.get(16),
                             ttl=self.ttl(iface.name), multicast=bool(iface.multicast)))
        return rows


def iface_name(iface):
    return iface.name if iface else "?"


def describe(exc):
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)

# ---------------------------------------------------------------------------
# IPC: the control socket's line protocol
# ---------------------------------------------------------------------------

MAX_LINE = 1024             # bytes in one command line
MAX_CLIENTS = 64


class CommandError(Exception):
    """A command that cannot be done; its text is the `error:` reply."""


def split_source_group(words, usage):
    """[SRC] GRP [rest...] -> (src or None, grp, rest); the first word is a
    source when it is not a group and an address follows it."""
    if not words:
        raise CommandError("usage: " + usage)
    if is_group(words[0]) or len(words) == 1 or not is_address(words[1]):
        return None, words[0], words[1:]
    return words[0], words[1], words[2:]


def format_table(columns, rows, formats):
    lines = [formats % tuple(c.upper() for c in columns)]
    for row in rows:
        values = []
        for column in columns:
            value = row[column]
            if isinstance(value, list):
                value = " ".join(value) or "-"
            values.append("-" if value is None else value)
        lines.append((formats % tuple(values)).rstrip())
    return lines


class Control:
    """The daemon's commands, one method per command word, each returning
    data lines or raising CommandError."""

    HELP = [
        "add IIF [SRC[/LEN]] GRP[/LEN] [OIF ...]   add a route, or OIFs to one",
        "del IIF [SRC[/LEN]] GRP[/LEN] [OIF ...]   remove OIFs, or the whole route",
        "join IIF [SRC[/LEN]] GRP[/LEN]            join a group",
        "leave IIF [SRC[/LEN]] GRP[/LEN]           leave a group",
        "show [routes|groups|interfaces] [json]    show state, with counters",
        "flush                                     drop learned routes now",
        "reload                                    re-read the config file",
        "kill                                      stop the daemon",
        "version                                   print the version",
        "help                                      this list",
    ]
    SHOW = {
        "routes": (("kind", "source", "group", "iif", "packets", "bytes", "oifs"),
                   "%-8s %-24s %-24s %-12s %10s %12s  %s", "route_rows"),
        "groups": (("kind", "source", "group", "iif"), "%-8s %-24s %-24s %s", "group_rows"),
        "interfaces": (("name", "index", "vif", "mif", "ttl"), "%-15s %6s %4s %4s %4s",
                       "interface_rows"),
    }

    def __init__(self, daemon):
        self.daemon = daemon
        self.router = daemon.router
        self.commands = {"add": self.add, "del": self.delete, "remove": self.delete,
                         "join": self.join, "leave": self.leave, "show": self.show,
                         "flush": self.flush, "reload": self.reload, "kill": self.kill,
                         "version": self.version, "help": self.help}

    def execute(self, line):
        """Run one command line; returns its reply lines, the last being
        `ok` or `error: ...`."""
        words = line.split()
        try:
            command = self.commands.get(words[0].lower())
            if command is None:
                raise CommandError("unknown command %r, try 'help'" % words[0])
            return command(words[1:]) + ["ok"]
        except CommandError as exc:
            return ["error: %s" % exc]
        except (ValueError, NotFound, KernelError, OSError) as exc:
            return ["error: %s" % describe(exc)]
        except Exception:
            log.error("internal error on %r, please report:\n%s" % (line, traceback.format_exc()))
            return ["error: internal error, see the daemon's log"]

    @staticmethod
    def _split(args, usage):
        """IIF [SRC[/LEN]] GRP[/LEN] REST... -> (iif, src or None, grp, rest)"""
        if not args:
            raise CommandError("usage: " + usage)
        return (args[0],) + split_source_group(args[1:], usage)

    def _route(self, args, usage):
        iif, source, group, oifs = self._split(args, usage)
        return make_route(iif, source, group, oifs, "ipc")

    def _membership(self, args, usage):
        iif, source, group, rest = self._split(args, usage)
        if rest:
            raise CommandError("usage: " + usage)
        return make_membership(iif, source, group, "ipc")

    def add(self, args):
        route = self._route(args, "add IIF [SRC[/LEN]] GRP[/LEN] [OIF ...]")
        return ["warning: " + w for w in self.router.add_route(route)]

    def delete(self, args):
        route = self._route(args, "del IIF [SRC[/LEN]] GRP[/LEN] [OIF ...]")
        self.router.del_route(route.key, route.oifs)
        return []

    def join(self, args):
        membership = self._membership(args, "join IIF [SRC[/LEN]] GRP[/LEN]")
        return ["warning: " + w for w in self.router.join(membership)]

    def leave(self, args):
        membership = self._membership(args, "leave IIF [SRC[/LEN]] GRP[/LEN]")
        self.router.leave(membership.key)
        return []

    def show(self, args):
        words = [a.lower() for a in args]
        as_json = "json" in words
        words = [w for w in words if w != "json"]
        table = words[0] if words else "routes"
        if table not in self.SHOW or len(words) > 1:
            raise CommandError("usage: show [routes|groups|interfaces] [json]")
        columns, formats, rows_of = self.SHOW[table]
        self.router.ifaces.refresh()
        rows = getattr(self.router, rows_of)()
        if as_json:
            try:
                import json  # Debian's python3-minimal lacks it; the rest runs there
            except ImportError:
                raise CommandError("JSON output needs Python's json module") from None
            return [json.dumps({table: rows}, sort_keys=True)]
        return format_table(columns, rows, formats)

    def flush(self, args):
        count = self.router.forget(list(self.router.learned))
        return ["%d learned routes dropped" % count]

    def reload(self, args):
        return self.daemon.reload()

    def kill(self, args):
        self.daemon.running = False
        return []

    def version(self, args):
        return ["smcroute.py %s" % VERSION]

    def help(self, args):
        return list(self.HELP)


class Client:
    """One control connection: bounded input, replies in order, and no
    reading while a reply is still unsent (backpressure)."""

    def __init__(self, sock, server):
        self.sock = sock
        self.server = server
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.discarding = False     # inside a line that was too long
        self.eof = False

    def on_event(self, mask):
        if mask & selectors.EVENT_WRITE:
            self.flush()
        elif mask & selectors.EVENT_READ and not self.outbuf:
            self.receive()              # one read at most, so input stays bounded
        self.process()
        if self.sock is not None:
            self.server.watch(self)

    def receive(self):
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self.close()
        self.inbuf += data
        self.eof = not data

    def process(self):
        """Answer the complete lines received, while replies go out."""
        while self.sock is not None and not self.outbuf:
            end = self.inbuf.find(b"\n")
            if end < 0:
                if len(self.inbuf) > MAX_LINE:
                    self.too_long()
                    continue
                if not self.eof:
                    return
                if not self.inbuf:
                    return self.close()
                end = len(self.inbuf)       # a last line with no newline
            line = bytes(self.inbuf[:end])
            del self.inbuf[:end + 1]
            if self.discarding:
                self.discarding = False
            elif len(line) > MAX_LINE:
                self.reply(["error: line too long, at most %d bytes" % MAX_LINE])
            else:
                text = line.decode("utf-8", "replace").strip()
                if text and not text.startswith("#"):
                    self.reply(self.server.control.execute(text))

    def too_long(self):
        """Answer a line that never ends once, and skip it up to its newline."""
        if not self.discarding:
            self.reply(["error: line too long, at most %d bytes" % MAX_LINE])
        self.discarding = True
        del self.inbuf[:]

    def reply(self, lines):
        self.outbuf += ("\n".join(lines) + "\n").encode()
        self.flush()

    def flush(self):
        try:
            sent = self.sock.send(self.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self.close()
        del self.outbuf[:sent]

    def close(self):
        if self.sock is not None:
            self.server.forget(self)
            self.sock.close()
            self.sock = None


class ControlServer:
    """The listening UNIX socket and its clients."""

    def __init__(self, path, selector, control):
        self.path = path
        self.selector = selector
        self.control = control
        self.clients = set()
        self.sock = self._bind(path)
        selector.register(self.sock, selectors.EVENT_READ, self.accept)

    @staticmethod
    def _bind(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            raise Fatal(EX_UNAVAILABLE, "another daemon answers on %s" % path)
        except (FileNotFoundError, ConnectionRefusedError):
            pass                    # nothing there, or a stale file
        finally:
            probe.close()
        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        sock.listen(64)
        sock.setblocking(False)
        return sock

    def accept(self, mask):
        try:
            sock, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        if len(self.clients) >= MAX_CLIENTS:
            try:
                sock.send(b"error: too many clients\n")
            except OSError:
                pass
            sock.close()
            return
        sock.setblocking(False)
        client = Client(sock, self)
        self.clients.add(client)
        self.selector.register(sock, selectors.EVENT_READ, client.on_event)

    def watch(self, client):
        events = selectors.EVENT_WRITE if client.outbuf else selectors.EVENT_READ
        self.selector.modify(client.sock, events, client.on_event)

    def forget(self, client):
        self.clients.discard(client)
        self.selector.unregister(client.sock)

    def close(self):
        for client in list(self.clients):
            if client.outbuf:
                client.flush()
            client.close()
        self.selector.unregister(self.sock)
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

# ---------------------------------------------------------------------------
# Daemon loop
# ---------------------------------------------------------------------------


class Daemon:
    """Sockets, signals and timers around a Router, in one select() loop."""

    def __init__(self, options):
        self.options = options
        self.selector = selectors.DefaultSelector()
        self.running = True
        self.router = None
        self.server = None
        self.next_expire = None
        self._wakeup = None

    def start(self):
        kernels = open_kernels()
        if not kernels:
            raise Fatal(EX_NOKERNEL, "the kernel has no multicast routing")
        self.router = Router(kernels)
        for kernel in kernels.values():
            self.selector.register(kernel.sock, selectors.EVENT_READ, self._upcall_reader(kernel))
        self.server = ControlServer(self.options.socket, self.selector, Control(self))
        self._catch_signals()
        if os.path.exists(self.options.config):
            self.router.load(self.read_config())
        else:
            log.warning("%s: no such file, starting with no rules" % self.options.config)
        if self.options.expire:
            self.next_expire = time.monotonic() + self.options.expire
        if self.options.pidfile:
            with open(self.options.pidfile, "w") as pidfile:
                pidfile.write("%d\n" % os.getpid())
        log.notice("smcroute.py %s ready" % VERSION)

    def _upcall_reader(self, kernel):
        def read(mask):
            for msgtype, vif, src, grp in kernel.upcalls():
                self.router.upcall(kernel, msgtype, vif, src, grp)
        return read

    def _catch_signals(self):
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._wakeup = (reader, writer)
        signal.set_wakeup_fd(writer.fileno())
        for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: None)
        self.selector.register(reader, selectors.EVENT_READ, self._on_signal)

    def _on_signal(self, mask):
        try:
            signums = self._wakeup[0].recv(64)
        except BlockingIOError:
            return
        for signum in signums:
            if signum == signal.SIGHUP:
                try:
                    self.reload()
                except CommandError:
                    pass            # already logged; the old state stays
            elif signum in (signal.SIGINT, signal.SIGTERM):
                log.notice("exiting on %s" % signal.Signals(signum).name)
                self.running = False

    def reload(self):
        """Re-read the config; a config with errors, or none, changes nothing."""
        config = self.read_config()
        if config.errors:
            log.error("reload refused: %d errors in %s, nothing changed"
                      % (len(config.errors), self.options.config))
            raise CommandError("reload refused, nothing changed: " + "; ".join(config.errors))
        problems = self.router.load(config)
        log.notice("reloaded %s" % self.options.config)
        return ["warning: " + p for p in problems]

    def read_config(self):
        config = read_config(self.options.config)
        for problem in config.errors:
            log.error(problem)
        for warning in config.warnings:
            log.warning(warning)
        return config

    def run(self):
        while self.running:
            timeout = None
            if self.next_expire is not None:
                timeout = max(0.0, self.next_expire - time.monotonic())
            for key, mask in self.selector.select(timeout):
                self.guarded(key.data, mask)
                if not self.running:
                    break
            if self.next_expire is not None and time.monotonic() >= self.next_expire:
                self.guarded(self.router.expire)
                self.next_expire = time.monotonic() + self.options.expire

    @staticmethod
    def guarded(callback, *args):
        """A bug in one handler is logged; the routes stay and the daemon serves on."""
        try:
            callback(*args)
        except Exception:
            log.error("internal error, please report:\n" + traceback.format_exc())

    def close(self):
        if self.server is not None:
            self.server.close()
        if self.router is not None:
            self.router.close()
            for kernel in self.router.kernels.values():
                kernel.close()
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            for sock in self._wakeup:
                sock.close()
        if self.options.pidfile:
            try:
                os.unlink(self.options.pidfile)
            except FileNotFoundError:
                pass
        self.selector.close()


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


class Options:
    def __init__(self):
        self.config = DEFAULT_CONFIG
        self.socket = DEFAULT_SOCKET
        self.pidfile = DEFAULT_PIDFILE
        self.expire = DEFAULT_EXPIRE
        self.detach = False
        self.check = None
        self.command = None         # words of a control command


CLIENT_FLAGS = {"-a": "add", "-r": "del", "-j": "join", "-l": "leave", "-k": "kill"}


class UsageError(Exception):
    pass


def parse_args(argv):
    options = Options()
    try:
        opts, args = getopt.getopt(argv, "hvdnDf:u:P:F:c:arjlk",
                                   ["log-level=", "help", "version"])
    except getopt.GetoptError as exc:
        raise UsageError(str(exc)) from None
    for flag, value in opts:
        if flag in ("-h", "--help"):
            options.command = ["usage"]
        elif flag in ("-v", "--version"):
            options.command = ["local-version"]
        elif flag == "-d":
            options.detach = True
        elif flag == "-D":
            log.level = syslog.LOG_DEBUG
        elif flag == "--log-level":
            if value.lower() not in LOG_LEVELS:
                raise UsageError("unknown log level %r, expected one of: %s"
                                 % (value, ", ".join(LOG_LEVELS)))
            log.level = LOG_LEVELS[value.lower()]
        elif flag == "-f":
            options.config = value
        elif flag == "-u":
            options.socket = value
        elif flag == "-P":
            options.pidfile = value
        elif flag == "-F":
            options.check = value
        elif flag == "-c":
            if not value.isdigit():
                raise UsageError("-c needs a number of seconds")
            options.expire = int(value)
        elif flag in CLIENT_FLAGS:
            options.command = [CLIENT_FLAGS[flag]] + args
    if options.command is None and args:
        options.command = args
    return options


def send_command(path, words):
    """Send one command line; returns (data lines, final line)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        sock.sendall((" ".join(words) + "\n").encode())
        reader = sock.makefile("r", encoding="utf-8", errors="replace")
        lines = []
        for line in reader:
            line = line.rstrip("\n")
            if line == "ok" or line.startswith("error:"):
                return lines, line
            lines.append(line)
        return lines, "error: the daemon closed the connection"
    finally:
        sock.close()


def run_client(options):
    try:
        lines, final = send_command(options.socket, options.command)
    except OSError as exc:
        sys.stderr.write("smcroute: cannot reach the daemon at %s: %s\n"
                         % (options.socket, describe(exc)))
        return EX_UNAVAILABLE
    for line in lines:
        print(line)
    if final != "ok":
        sys.stderr.write("smcroute: %s\n" % final)
        return EX_FAIL
    return EX_OK


def check_config(path):
    config = read_config(path)
    for problem in config.errors:
        print("error: " + problem)
    for problem in config.warnings:
        print("warning: " + problem)
    return EX_CONFIG if config.errors else EX_OK


def detach():
    """Fork into the background; the parent exits with the child's start-up
    status, so `smcroute.py -d` fails visibly when the daemon cannot start."""
    reader, writer = os.pipe()
    if os.fork():
        os.close(writer)
        status = os.read(reader, 1)
        os._exit(status[0] if status else EX_OSERR)
    os.close(reader)
    os.setsid()
    if os.fork():
        os._exit(0)
    return writer


def become_daemon(status_fd):
    """Tell the waiting parent we are up; from now on log to syslog."""
    os.write(status_fd, bytes([EX_OK]))
    os.close(status_fd)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    log.use_syslog()


def run_daemon(options):
    status_fd = detach() if options.detach else None
    daemon = Daemon(options)
    status = EX_OK
    try:
        daemon.start()
        if status_fd is not None:
            become_daemon(status_fd)
            status_fd = None
        daemon.run()
    except Fatal as exc:
        log.error(str(exc))
        status = exc.code
    except PermissionError as exc:
        log.error("%s: run as root, or with CAP_NET_ADMIN and CAP_NET_RAW" % exc.strerror)
        status = EX_NOPERM
    except OSError as exc:
        log.error(describe(exc))
        status = EX_OSERR
    finally:
        daemon.close()
    if status_fd is not None:
        os.write(status_fd, bytes([status]))
    return status


def main(argv=None):
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        sys.stderr.write("smcroute: %s\n%s" % (exc, USAGE))
        return EX_USAGE
    if options.command == ["usage"]:
        sys.stdout.write(USAGE)
        return EX_OK
    if options.command == ["local-version"]:
        print("smcroute.py %s" % VERSION)
        return EX_OK
    if options.check is not None:
        return check_config(options.check)
    if options.command is not None:
        return run_client(options)
    return run_daemon(options)


if __name__ == "__main__":
    sys.exit(main())
