#!/usr/bin/env python3
"""smcroute.py -- a static multicast routing daemon for Linux.

Keeps static (S,G) routes in the kernel's multicast forwarding cache (MFC),
learns (S,G) entries on demand for (*,G) and range rules, joins groups so
that snooping switches open up, follows interfaces as they come and go, and
is driven by a config file, signals and a line-per-command UNIX socket.
Standard library only.

    smcroute.py [-f FILE] [-u SOCK] [-P PIDFILE]      run the daemon
    smcroute.py [-u SOCK] COMMAND [ARG ...]           talk to it

The module is laid out in sections, in the order data flows:
constants and kernel ABI, logging and events, config, kernel/MFC, group
joins, interfaces and their events, router discovery, routing state,
supervision (script hook, systemd), IPC, daemon loop, CLI.
"""

# _socket and _signal, not socket and signal: those wrap these in enums,
# a megabyte of memory that a router need not spend.
import _signal
import _socket
import bisect
import errno
import fcntl
import gc
import os
import select
import selectors
import stat
import struct
import sys
import syslog
import time
from collections import deque, namedtuple
from itertools import chain

VERSION = "0.1.0"

# Exit codes, from sysexits.h as SMCRoute uses them.
EX_OK, EX_FAIL, EX_USAGE, EX_UNAVAILABLE, EX_OSERR = 0, 1, 64, 69, 71
EX_NOKERNEL, EX_NOPERM, EX_CONFIG = 76, 77, 78

IDENTITY = "smcroute"
DEFAULT_SOCKET = "/run/smcroute"
DEFAULT_EXPIRE = 60
# Learned entries (forwarding and stop filters) kept at most: an upcall
# flood of forged sources must not take the router's memory.
DEFAULT_MAX_LEARNED = 32768

# ---------------------------------------------------------------------------
# Constants and kernel ABI (linux/mroute.h, mroute6.h, in.h, rtnetlink.h)
# ---------------------------------------------------------------------------

MAXVIFS = 32            # MAXMIFS is the same

# Socket options; MRT6_* have the same numbers at level IPPROTO_IPV6.
MRT_INIT, MRT_DONE = 200, 201
MRT_ADD_VIF, MRT_DEL_VIF = 202, 203
MRT_ADD_MFC, MRT_DEL_MFC = 204, 205
MRT_PIM = 208           # also turns on asserts: WRONGVIF upcalls
MRT_TABLE = 209
RT_TABLE_DEFAULT = 253  # the table MRT_INIT takes without MRT_TABLE

SIOCGETSGCNT = 0x89E1   # SIOCGETSGCNT_IN6 is the same number
IFF_UP, IFF_LOOPBACK, IFF_MULTICAST = 0x1, 0x8, 0x1000
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
UCRED = struct.Struct("@iII")             # SO_PEERCRED: pid uid gid
CAP_NET_ADMIN = 12                        # its bit in /proc/PID/status CapEff
SIOC_SG_REQ6 = struct.Struct("@28s28sLLL")
MRT6MSG = struct.Struct("@BBHI16s16s")    # mbz msgtype mif pad src dst
SOCKADDR_IN = struct.Struct("@HH4s8x")
SOCKADDR_IN6 = struct.Struct("@HHI16sI")
GROUP_REQ = struct.Struct("@I0P128s")
GROUP_SOURCE_REQ = struct.Struct("@I0P128s128s")
MIFI = struct.Struct("@H")
TABLE_ID = struct.Struct("@I")

# rtnetlink: interfaces and their addresses.
NLMSGHDR = struct.Struct("@IHHII")        # len type flags seq pid
IFINFOMSG = struct.Struct("@BxHiII")      # family type index flags change
IFADDRMSG = struct.Struct("@BBBBI")       # family prefixlen flags scope index
RTATTR = struct.Struct("@HH")             # len type
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR = 20, 21
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFLA_IFNAME = 3
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100
NETLINK_RCVBUF = 1 << 20  # room for a burst of events (a VLAN trunk coming up)

# Upcalls are at most a header long; the buffer is reused for every read.
UPCALL_BUFSIZE = 256
# Upcalls handled at one turn of the loop: a flood keeps coming as fast as
# they are read, and clients are served between turns.
UPCALLS_PER_TURN = 64
NETLINK_BUFSIZE = 65536

MC_FORWARDING_V6 = "/proc/sys/net/ipv6/conf/all/mc_forwarding"

class Socket(_socket.socket):
    """What the daemon and its clients use of socket.socket."""

    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def accept(self):
        fd, address = self._accept()
        return Socket(self.family, self.type, self.proto, fd), address


def socketpair():
    return tuple(Socket(s.family, s.type, s.proto, s.detach()) for s in _socket.socketpair())


SIGNAL_NAMES = {_signal.SIGINT: "SIGINT", _signal.SIGTERM: "SIGTERM"}

# ---------------------------------------------------------------------------
# Logging and events: stderr in the foreground, syslog when detached; events
# also go to `monitor` connections and the script hook
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
        self.ident = IDENTITY

    def use_syslog(self):
        syslog.openlog(self.ident, syslog.LOG_PID, syslog.LOG_DAEMON)
        self.to_syslog = True

    def write(self, prio, msg):
        if prio > self.level:
            return
        if self.to_syslog:
            syslog.syslog(prio, msg)
        else:
            sys.stderr.write("%s: %s: %s\n" % (self.ident, LOG_NAMES[prio], msg))
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

    def internal_error(self, where):
        """The exception being handled, with its traceback: a bug."""
        import traceback  # a module and a half a megabyte that only a bug needs
        self.error("internal error %s, please report:\n%s" % (where, traceback.format_exc()))


log = Log()


class Events:
    """What happens to routes, interfaces and VIFs: each event is one line,
    its kind then what happened ("learned (10.0.0.1, 225.1.2.3) from ..."),
    logged and handed to the listeners (monitor connections, the script
    hook) as (kind, line, details)."""

    def __init__(self):
        self.listeners = []

    def emit(self, prio, kind, text, **details):
        line = "%s %s" % (kind, text)
        log.write(prio, line)
        for listener in list(self.listeners):
            listener(kind, line, details)


events = Events()

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
    return _socket.inet_ntop(_socket.AF_INET6 if len(addr) == 16 else _socket.AF_INET, addr)


def parse_net(text, role="address"):
    """'225.1.2.0/24', '10.0.0.1' or 'ff2e::/16' -> Net; `role` names it in errors."""
    addr, slash, length = text.partition("/")
    family = _socket.AF_INET6 if ":" in addr else _socket.AF_INET
    try:
        packed = _socket.inet_pton(family, addr)
    except OSError:
        raise ValueError("%s %r is not an IP address" % (role, text)) from None
    bits = len(packed) * 8
    if not slash:
        return Net(packed, bits)
    if not (length.isdigit() and int(length) <= bits):
        raise ValueError("%s %r: the prefix length must be 0 to %d" % (role, text, bits))
    if int(length) == 0 and any(packed):
        # SMCRoute takes /0 for "no length": this one address.
        raise ValueError("%s %r: /0 would be any address, SMCRoute takes it for %s alone; "
                         "write which is meant" % (role, text, addr))
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
    net = parse_net(text, "group")
    if not MULTICAST[len(net.addr)].covers(net):
        raise ValueError("%s is not a multicast group" % text)
    return net


def parse_source(text, group):
    """A source prefix for `group`; None for 0.0.0.0 and :: (any source)."""
    net = parse_net(text, "source")
    if len(net.addr) != len(group.addr):
        raise ValueError("source %s and group %s are not the same IP version" % (text, group))
    if net.len and MULTICAST[len(net.addr)].covers(net):
        raise ValueError("source %s is a multicast address" % text)
    if Net(net.addr, len(net.addr) * 8) in ANY_SOURCE:
        return None
    return net


VALID_NAMES = {}        # name -> the same, interned: thousands of rules name the same few


def check_ifname(name):
    """Interface names as Linux allows them, plus a trailing '+' wildcard."""
    valid = VALID_NAMES.get(name)
    if valid is not None:
        return valid
    if (len(name) >= IFNAMSIZ or "/" in name or name in (".", "..")
            or "+" in name[:-1] or not name.isprintable()):
        raise ValueError("%r is not a valid interface name" % name)
    if "#" in name:
        raise ValueError("%r: '#' starts a comment only at the start of a word, in SMCRoute too"
                         % name)
    valid = VALID_NAMES[name] = sys.intern(name)
    return valid


def is_pattern(name):
    return name.endswith("+")


def name_matches(pattern, name):
    return name.startswith(pattern[:-1]) if is_pattern(pattern) else name == pattern


def pairs_text(source, group):
    return "(%s, %s)" % ("*" if source is None else source, group)


def split_key(key):
    """An (S,G) key, the source and group addresses end to end -> (src, grp)."""
    half = len(key) >> 1
    return key[:half], key[half:]


def host_net(addr):
    return Net(addr, len(addr) * 8)


def key_text(key):
    src, grp = split_key(key)
    return pairs_text(ntop(src), ntop(grp))


class Origins:
    """Where rules come from, each as one number: the position of its line
    in the config as read, included files inline.  The numbers order rules
    as the config lists them, cost one int a rule, and text() turns them
    back into file:line."""

    def __init__(self):
        self.starts = []        # the first number of each run of lines from one file
        self.runs = []          # (path, the line number of that first line)
        self.next = 0

    def run(self, path, lineno=None):
        """Lines of `path` from `lineno` on (no line numbers: `ipc`) follow."""
        self.starts.append(self.next)
        self.runs.append((path, lineno))

    def take(self):
        self.next += 1
        return self.next - 1

    def text(self, origin):
        run = bisect.bisect_right(self.starts, origin) - 1
        path, first = self.runs[run]
        return path if first is None else "%s:%d" % (path, first + origin - self.starts[run])


class Route:
    """A template: traffic to `group` from `source` (None: any) arriving on
    `iif` (maybe a pattern) is learned as (S,G) entries out of `oifs`."""

    __slots__ = ("iif", "source", "group", "oifs", "origin")

    def __init__(self, iif, source, group, oifs, origin):
        self.iif, self.source, self.group = iif, source, group
        self.oifs, self.origin = oifs, origin

    @property
    def specificity(self):
        """Templates are tried in this order: longest group prefix, then
        longest source prefix, then a named inbound interface before a
        wildcard, then config order."""
        source_len = self.source.len if self.source is not None else -1
        return (-self.group.len, -source_len, is_pattern(self.iif), self.origin)

    def covers(self, key):
        src, grp = split_key(key)
        return grp in self.group and (self.source is None or src in self.source)


# An exact rule: one source, one group, a named inbound interface.  Most of
# a big config is these, so they are plain tuples in a table keyed by
# (S,G), with interned names and shared OIF tuples.
ExactRoute = namedtuple("ExactRoute", "iif oifs origin")


def route_text(iif, source, group, oifs):
    return "%s from %s to %s" % (pairs_text(source, group), iif, oifs_text(oifs))


def oifs_text(oifs):
    return " ".join(oifs) or "nowhere (stop filter)"


class Rules:
    """The mroute rules: exact ones in `exact`, {src+grp: ExactRoute} in
    config order, and templates, per address size in order of specificity.

    The kernel keys its entries by (S,G) alone, so a second exact rule for
    an (S,G) from another inbound interface waits in `alternates`; it takes
    over when the first one's interface is missing.

    A reload mostly reads the same rules, in the same order, as the rules
    it replaces (`previous`): those rules' key and rule objects then serve
    again, so the new table costs little more than its dict, and the
    kernel mirror, keyed by the same objects, needs no new ones."""

    def __init__(self, previous=None):
        self.exact = {}
        self.alternates = {}
        self.templates = {4: [], 16: []}
        self.shared = {} if previous is None else previous.shared
        self.previous = previous
        self.lent = iter(previous.exact.items()) if previous is not None else None
        self.next_lent = next(self.lent, None) if previous is not None else None

    def share(self, value):
        """One object for equal OIF tuples, however many rules have them."""
        return self.shared.setdefault(value, value)

    def oifs(self, words):
        """The validated, shared tuple of outbound interfaces `words` name."""
        words = tuple(words)
        oifs = self.shared.get(words)
        if oifs is None:
            oifs = self.share(tuple(dict.fromkeys(check_ifname(word) for word in words)))
            self.shared[words] = oifs
        return oifs

    def find(self, iif, source, group):
        if self.is_exact(iif, source, group):
            for rule in self.candidates(source.addr + group.addr):
                if rule.iif == iif:
                    return rule
            return None
        for route in self.templates[len(group.addr)]:
            if (route.iif, route.source, route.group) == (iif, source, group):
                return route
        return None

    @staticmethod
    def is_exact(iif, source, group):
        return source is not None and source.is_host and group.is_host and not is_pattern(iif)

    def candidates(self, key):
        """The exact rules for `key`, the one the kernel gets first."""
        rule = self.exact.get(key)
        if rule is None:
            return ()
        others = self.alternates.get(key)
        return (rule,) + tuple(others) if others else (rule,)

    def add_exact(self, key, iif, oifs, origin):
        """Store an exact rule, merging its OIFs into one for the same
        inbound interface and (S,G); returns (stored rule, the rule it
        replaced)."""
        first = self.exact.get(key)
        if first is None:
            key, rule = self.lend(key, ExactRoute(iif, oifs, origin))
            self.exact[key] = rule
            return rule, None
        others = self.alternates.setdefault(key, [])
        for n, before in enumerate([first] + others):
            if before.iif == iif:
                merged = before.oifs + tuple(o for o in oifs if o not in before.oifs)
                rule = ExactRoute(iif, self.share(merged), before.origin)
                if n == 0:
                    self.exact[key] = rule
                else:
                    others[n - 1] = rule
                return rule, before
        rule = ExactRoute(iif, oifs, origin)
        others.append(rule)
        return rule, None

    def lend(self, key, rule):
        """The previous table's key object for `key`, and its rule when it
        is this one."""
        if self.next_lent is not None and self.next_lent[0] == key:
            key, lent = self.next_lent
            try:
                self.next_lent = next(self.lent, None)
            except RuntimeError:            # the table changed meanwhile: lend no more
                self.next_lent = None
            return key, lent if lent == rule else rule
        if self.previous is not None:
            lent = self.previous.exact.get(key)
            if lent == rule:
                return key, lent
        return key, rule

    def add(self, iif, source, group, oifs, origin):
        """Store any rule, as add_exact() does."""
        if self.is_exact(iif, source, group):
            return self.add_exact(source.addr + group.addr, iif, self.share(oifs), origin)
        before = self.find(iif, source, group)
        if before is not None:
            oifs = before.oifs + tuple(o for o in oifs if o not in before.oifs)
            origin = before.origin
        return self.put(iif, source, group, self.share(oifs), origin), before

    def put(self, iif, source, group, oifs, origin):
        """Store a rule as it is given, in place of one for the same
        inbound interface and (S,G)."""
        self.remove(iif, source, group)
        if self.is_exact(iif, source, group):
            return self.add_exact(source.addr + group.addr, iif, oifs, origin)[0]
        route = Route(iif, source, group, oifs, origin)
        templates = self.templates[len(group.addr)]
        templates.append(route)
        templates.sort(key=lambda r: r.specificity)
        return route

    def remove(self, iif, source, group):
        """Take a rule out; returns it, or None if there was none."""
        rule = self.find(iif, source, group)
        if rule is None:
            return None
        if isinstance(rule, ExactRoute):
            key = source.addr + group.addr
            others = self.alternates.pop(key, [])
            if self.exact[key] is rule:
                if others:
                    self.exact[key] = others.pop(0)
                else:
                    del self.exact[key]
            else:
                others.remove(rule)
            if others:
                self.alternates[key] = others
        else:
            self.templates[len(group.addr)].remove(rule)
        return rule

    def restore(self, iif, source, group, rule):
        """Put back what add() replaced (None: nothing)."""
        if rule is None:
            self.remove(iif, source, group)
        else:
            self.put(iif, source, group, rule.oifs, rule.origin)

    def all_exact(self):
        """(key, rule) for every exact rule, alternates included."""
        for key, rule in self.exact.items():
            yield key, rule
            for other in self.alternates.get(key, ()):
                yield key, other

    def each_exact(self, keys):
        """(key, rule) for the exact rules of `keys`, alternates included:
        a snapshot of keys, walked while rules come and go, leaves out those
        gone meanwhile."""
        for key in keys:
            rule = self.exact.get(key)
            if rule is not None:
                yield key, rule
                for other in self.alternates.get(key, ()):
                    yield key, other

    def all_templates(self):
        """Templates in config order."""
        return sorted(self.templates[4] + self.templates[16], key=lambda r: r.origin)

    def table(self):
        """{rule id: oifs} in config order, to compare two Rules; an id is
        (iif, src+grp) for an exact rule, (iif, source, group) else."""
        rules = {(rule.iif, key): rule.oifs for key, rule in self.all_exact()}
        rules.update(((r.iif, r.source, r.group), r.oifs) for r in self.all_templates())
        return rules

    def listing(self):
        """Every rule as (iif, source, group, oifs, origin), in config order."""
        rules = [(rule.iif, host_net(src), host_net(grp), rule.oifs, rule.origin)
                 for src, grp, rule in ((*split_key(key), rule) for key, rule in self.all_exact())]
        rules += [(r.iif, r.source, r.group, r.oifs, r.origin) for r in self.all_templates()]
        return sorted(rules, key=lambda rule: rule[4])


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


def link_local(group):
    """Is a group (packed address) or prefix (Net) one the kernel never
    routes: 224.0.0.0/24, or an IPv6 scope of 1 or 2 (ff01::, ff02::)?"""
    addr, length = (group.addr, group.len) if isinstance(group, Net) else (group, len(group) * 8)
    if len(addr) == 4:
        return length >= 24 and addr[:3] == b"\xe0\0\0"
    return length >= 16 and addr[1] & 0x0F in (1, 2)


def host_key(source, group):
    """The (S,G) key of an exact rule's plain source and group addresses,
    or None for anything else (prefixes, any source, mistakes), which the
    general path then parses or refuses.  Most lines of a big config are
    exact rules: they need no Net objects."""
    if "/" in source or "/" in group:
        return None
    family = _socket.AF_INET6 if ":" in group else _socket.AF_INET
    try:
        src, grp = _socket.inet_pton(family, source), _socket.inet_pton(family, group)
    except OSError:
        return None
    multicast = (grp[0] & 0xF0 == 0xE0) if family == _socket.AF_INET else grp[0] == 0xFF
    source_multicast = (src[0] & 0xF0 == 0xE0) if family == _socket.AF_INET else src[0] == 0xFF
    if not multicast or source_multicast or not any(src):
        return None
    return src + grp


def route_words(iif, source, group, oifs):
    """Validate the words of an mroute line or an `add` command:
    (iif, source Net or None, group Net, oifs tuple)."""
    grp = parse_group(group)
    src = parse_source(source, grp) if source is not None else None
    return (check_ifname(iif), src, grp,
            tuple(dict.fromkeys(check_ifname(o) for o in oifs)))


def membership_words(iif, source, group):
    grp = parse_group(group)
    src = parse_source(source, grp) if source is not None else None
    return check_ifname(iif), src, grp


class ConfigError(ValueError):
    pass


# Problems shown per file, of each severity; the rest are counted, so that
# a file that is no config at all (include /etc/shadow) is never echoed.
MAX_SHOWN = 10


class Config:
    """What a config file asks for, as plain values, with its problems in
    line order."""

    def __init__(self, previous=None):
        self.phyints = {}
        self.rules = Rules(previous)
        self.memberships = {}
        self.origins = Origins()
        self.problems = []          # ("error" | "warning", "file:line: text")
        self.error_count = 0
        self.shown = {}             # (path, severity) -> how many shown
        self.unshown = {}           # (path, severity) -> [line numbers]

    @property
    def errors(self):
        return [text for severity, text in self.problems if severity == "error"]

    @property
    def warnings(self):
        return [text for severity, text in self.problems if severity == "warning"]

    def problem(self, severity, path, lineno, text):
        if severity == "error":
            self.error_count += 1
        count = self.shown.get((path, severity), 0)
        if count < MAX_SHOWN:
            self.shown[(path, severity)] = count + 1
            where = path if lineno is None else "%s:%d" % (path, lineno)
            self.problems.append((severity, "%s: %s" % (where, text)))
        else:
            self.unshown.setdefault((path, severity), []).append(lineno)

    def count_unshown(self, path):
        for severity in ("error", "warning"):
            lines = self.unshown.pop((path, severity), None)
            if lines:
                self.problems.append((severity, "%s: %d more %s%s not shown, on lines %s%s" % (
                    path, len(lines), severity, "s" if len(lines) > 1 else "",
                    ", ".join(str(n) for n in lines[:10]), ", ..." if len(lines) > 10 else "")))


class Line:
    """The config line being parsed: its words, and where to report."""

    def __init__(self, config, path):
        self.config, self.path = config, path
        self.lineno = self.words = self.origin = None

    def warn(self, text):
        self.config.problem("warning", self.path, self.lineno, text)


# SMCRoute takes any word that begins with a directive or keyword for it:
# "mroutes" is mroute, "fromage" is from, "enabled" is enable.
def keyword(word, keywords):
    if word in keywords:
        return word
    for candidate in keywords:
        if word.startswith(candidate):
            return candidate
    return None


def shown(word):
    """A word quoted in a message, cut short: it may come from a file that
    is no config at all."""
    return repr(word if len(word) <= 32 else word[:32] + "...")


def keyword_args(line, keywords):
    """SMCRoute's `keyword value` pairs, in any order: a word that begins
    with `#` where a keyword belongs ends the line, `to` takes the rest of
    it, a repeated keyword's last value counts, and an unknown word is
    skipped -- each of the last two with a warning, since SMCRoute says
    nothing."""
    words = line.words
    found = {}
    i = 1
    while i < len(words) and not words[i].startswith("#"):
        word = words[i]
        name = word if word in keywords else keyword(word, keywords)
        if name == "to":
            found["to"] = to_words(words[i + 1:])
            break
        if name is None:
            line.warn("unknown word %s ignored, as SMCRoute does" % shown(word))
            i += 1
            continue
        if i + 1 == len(words):
            raise ConfigError("%r needs a value" % name)
        if name in found:
            line.warn("%r given twice: the last one counts, as in SMCRoute" % name)
        found[name] = words[i + 1]
        i += 2
    for required in ("from", "group"):
        if required not in found:
            taken = [k for k, v in found.items() if k != "to" and keyword(v, keywords) == required]
            raise ConfigError("missing '%s'%s" % (required, "" if not taken else (
                ": SMCRoute, and so smcroute.py, reads %r as the value of %r" % (found[taken[0]], taken[0]))))
    return found


def to_words(oifs):
    """The outbound interfaces after `to`.  SMCRoute reads every word there
    as one, a `#` and what follows it too: refused, rather than taken either
    for a comment or for interfaces."""
    for word in oifs:
        if word.startswith("#"):
            raise ConfigError("'#' after 'to' is no comment: SMCRoute takes %s for outbound "
                              "interfaces; put the comment on a line of its own"
                              % ", ".join(shown(w) for w in oifs[oifs.index(word):]))
        if word == "to":
            raise ConfigError("'to' given twice: SMCRoute would take the second for an interface")
    if len(oifs) > MAXVIFS:
        raise ConfigError("%d words after 'to', at most %d (SMCRoute crashes beyond)" % (len(oifs), MAXVIFS))
    return oifs


PHYINT_OPTIONS = ("enable", "disable", "mrdisc", "ttl-threshold")


def parse_phyint(line):
    words = before_comment(line.words[1:])
    if not words:
        raise ConfigError("phyint needs an interface name")
    if keyword(words[0], PHYINT_OPTIONS):
        raise ConfigError("phyint %s: the interface name comes first" % words[0])
    name = check_ifname(words[0])
    enabled, ttl, mrdisc = True, 1, False
    rest = iter(words[1:])
    for word in rest:
        option = keyword(word, PHYINT_OPTIONS)
        if option in ("enable", "disable"):
            enabled = option == "enable"
        elif option == "mrdisc":
            mrdisc = True
        elif option == "ttl-threshold":
            value = next(rest, "")
            if not (value.isdigit() and 1 <= int(value) <= 255):
                raise ConfigError("ttl-threshold %s: a number from 1 to 255 is needed"
                                  % (shown(value) if value else "without a value"))
            ttl = int(value)
        else:
            line.warn("phyint: unknown option %s ignored, as SMCRoute does; expected enable, "
                      "disable, ttl-threshold N or mrdisc" % shown(word))
    line.config.phyints[name] = Phyint(name, enabled, ttl, mrdisc, line.origin)


def parse_mroute(line):
    args = keyword_args(line, ("from", "source", "group", "to"))
    rules = line.config.rules
    iif, source, group = check_ifname(args["from"]), args.get("source"), args["group"]
    oifs = rules.oifs(args.get("to", ()))
    if iif in oifs:
        line.warn("%s is both the inbound and an outbound interface: this may loop" % iif)
    key = host_key(source, group) if source is not None and not is_pattern(iif) else None
    if key is not None:
        rule, _ = rules.add_exact(key, iif, oifs, line.origin)
        grp = key[len(key) >> 1:]
    else:
        iif, src, grp, oifs = route_words(iif, source, group, oifs)
        rules.add(iif, src, grp, oifs, line.origin)
    if link_local(grp):
        line.warn("%s is link-local: the kernel never routes it" % group)


def parse_mgroup(line):
    args = keyword_args(line, ("from", "source", "group"))
    membership = Membership(*membership_words(args["from"], args.get("source"), args["group"]),
                            line.origin)
    line.config.memberships.setdefault(membership.key, membership)


DIRECTIVES = {"phyint": parse_phyint, "mroute": parse_mroute,
              "mgroup": parse_mgroup, "ssmgroup": parse_mgroup}
DIRECTIVE_WORDS = ("include",) + tuple(DIRECTIVES)
MAX_INCLUDE_DEPTH = 16
MAX_CONFIG_BYTES = 64 << 20     # read of a file at most: a million rules fit, /dev/zero does not
GLOB_MAGIC = "*?["
MAX_LINE_BYTES = 511            # SMCRoute reads lines into 512 bytes, NUL included


def read_config(path, previous=None):
    """Parse `path` and everything it includes into a Config at once."""
    return drain(reading(path, previous))


def reading(path, previous=None):
    """Parse `path` and everything it includes into a Config, a slice of
    lines at a time (it yields between slices); `previous` rules lend it the
    objects of the rules that did not change."""
    config = Config(previous)
    try:
        yield from reading_file(config, path, [])
    except (OSError, ConfigError) as exc:
        config.problem("error", path, None, describe(exc))
    config.rules.previous = None
    return config


def config_lines(stream):
    """(line number, text or None) for each line; None for a line longer
    than MAX_LINE_BYTES, which is never read whole.  Past MAX_CONFIG_BYTES
    it is no config: OSError."""
    lineno = read = 0
    while True:
        data = stream.readline(MAX_LINE_BYTES + 2)
        if not data:
            return
        lineno += 1
        read += len(data)
        if len(data.rstrip(b"\n")) > MAX_LINE_BYTES:
            while not data.endswith(b"\n") and read <= MAX_CONFIG_BYTES:
                data = stream.readline(1 << 16)
                if not data:
                    break
                read += len(data)
            yield lineno, None
        else:
            yield lineno, data.decode("utf-8", "replace")
        if read > MAX_CONFIG_BYTES:
            raise OSError(errno.EFBIG, "larger than %d MiB, no config" % (MAX_CONFIG_BYTES >> 20))


def reading_file(config, path, including):
    real = os.path.realpath(path)
    if real in including:
        raise ConfigError("include cycle: %s" % " -> ".join(including + [real]))
    if len(including) >= MAX_INCLUDE_DEPTH:
        raise ConfigError("includes nested deeper than %d" % MAX_INCLUDE_DEPTH)
    origins = config.origins
    line = Line(config, path)
    with open_config_file(path) as stream:
        origins.run(path, 1)
        for lineno, text in config_lines(stream):
            line.lineno, line.origin = lineno, origins.take()
            if lineno % SLICE == 0:
                yield
            try:
                if text is None:
                    raise ConfigError("line longer than %d bytes: SMCRoute cuts it there and reads "
                                      "the rest as another line" % MAX_LINE_BYTES)
                words = line.words = text.split()
                if not words or words[0].startswith("#"):
                    continue
                directive = keyword(words[0], DIRECTIVE_WORDS)
                if directive == "include":
                    try:
                        yield from including_files(config, path, words[1:], including + [real])
                    finally:
                        origins.run(path, lineno + 1)
                elif directive is not None:
                    DIRECTIVES[directive](line)
                else:
                    raise ConfigError("unknown directive %s, expected one of: %s"
                                      % (shown(words[0]), ", ".join(["include"] + list(DIRECTIVES))))
            except ValueError as exc:
                config.problem("error", path, lineno, str(exc))
    config.count_unshown(path)


def open_config_file(path):
    """A file or device (/dev/null) opened for reading; a FIFO or socket
    would block the reader."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return os.fdopen(fd, "rb")
    os.close(fd)
    if stat.S_ISDIR(mode):
        raise OSError(errno.EISDIR, "Is a directory")
    raise OSError(errno.EINVAL, "not a file")


def before_comment(words):
    """The words before one that begins with `#`."""
    for i, word in enumerate(words):
        if word.startswith("#"):
            return words[:i]
    return words


def including_files(config, path, words, including):
    """`include GLOB`: files relative to the including file, in sorted order."""
    words = before_comment(words)
    if len(words) != 1:
        raise ConfigError("include needs exactly one file name or pattern")
    pattern = os.path.join(os.path.dirname(path), words[0])
    names = [pattern]
    if any(char in pattern for char in GLOB_MAGIC):
        import glob  # and with it re: only for the configs that need it
        names = sorted(glob.glob(pattern))
    for name in names:
        try:
            yield from reading_file(config, name, including)
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


def table_text(table):
    return "the default table" if table is None else "table %d" % table


class Mroute:
    """One IP version's multicast routing socket and its VIF table.  MFC
    entries are (parent, oifs): the inbound VIF and a sorted tuple of
    (vif, ttl); the Router keeps the mirror of what is installed."""

    family = level = proto = size = None
    name = vif_name = ""

    def __init__(self, table=None):
        self.sock = Socket(self.family, _socket.SOCK_RAW, self.proto)
        try:
            if table is not None:
                self.sock.setsockopt(self.level, MRT_TABLE, TABLE_ID.pack(table))
            self.sock.setsockopt(self.level, MRT_INIT, 1)
        except OSError as exc:
            self.sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise Fatal(EX_UNAVAILABLE, "another multicast router owns the %s multicast "
                            "routing table (%s) in this network namespace"
                            % (self.name, table_text(table))) from None
            if exc.errno == errno.ENOPROTOOPT and table is not None:
                raise Fatal(EX_NOKERNEL, "this kernel has no %s multicast routing tables "
                            "other than the default (CONFIG_IP_MROUTE_MULTIPLE_TABLES)"
                            % self.name) from None
            raise
        self.sock.setsockopt(self.level, MRT_PIM, 1)
        self.sock.setblocking(False)
        self.vifs = [None] * MAXVIFS          # vif -> ifindex
        self.vif_of = {}                      # ifindex -> vif
        self.refs = [0] * MAXVIFS             # MFC entries using each vif
        self.unused = False                   # a VIF's last entry went: release_vifs() may free it
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
        events.emit(syslog.LOG_INFO, self.vif_name, "%d is %s" % (vif, iface.name))
        return vif

    def release_vifs(self, keep):
        """Unregister every VIF that no entry uses and whose ifindex is not
        in `keep`; returns how many went."""
        released = 0
        self.unused = False
        for vif, index in enumerate(self.vifs):
            if index is not None and not self.refs[vif] and index not in keep:
                try:
                    self.sock.setsockopt(self.level, MRT_DEL_VIF, self.pack_vif_del(vif))
                except OSError as exc:
                    if exc.errno != errno.EADDRNOTAVAIL:   # the device went away
                        raise
                self.vifs[vif] = None
                if self.vif_of.get(index) == vif:
                    del self.vif_of[index]
                released += 1
                events.emit(syslog.LOG_INFO, self.vif_name, "%d released" % vif)
        return released

    def forget_vifs(self, present):
        """VIFs of interfaces no longer `present` are unusable: the kernel
        dropped them with the device.  Their slots stay taken until no
        entry refers to them."""
        for index in [i for i in self.vif_of if i not in present]:
            del self.vif_of[index]

    def slots_of(self, indexes):
        return {vif for vif, index in enumerate(self.vifs) if index in indexes}

    # MFC ---------------------------------------------------------------

    def apply(self, key, have, want):
        """Change the kernel's entry for `key` from `have` to `want`
        (None: no entry)."""
        src, grp = split_key(key)
        if want is None:
            try:
                self.sock.setsockopt(self.level, MRT_DEL_MFC, self.pack_mfc(src, grp, 0, ()))
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
        else:
            self.sock.setsockopt(self.level, MRT_ADD_MFC, self.pack_mfc(src, grp, *want))
            self._count(want, 1)
        if have is not None:
            self._count(have, -1)

    def _count(self, entry, step):
        parent, oifs = entry
        refs = self.refs
        refs[parent] += step
        for vif, _ in oifs:
            refs[vif] += step
        if step < 0 and (not refs[parent] or any(not refs[vif] for vif, _ in oifs)):
            self.unused = True

    def counters(self, key):
        """(packets, bytes, wrong_if) the kernel counted for an entry."""
        try:
            reply = fcntl.ioctl(self.sock, SIOCGETSGCNT, self.pack_sg_req(*split_key(key)))
        except OSError:
            return (0, 0, 0)
        return self.SG_REQ.unpack(reply)[2:]

    # Upcalls -----------------------------------------------------------

    def upcalls(self):
        """Yield (msgtype, vif, src, grp) for the upcalls waiting on the
        socket, at most UPCALLS_PER_TURN of them."""
        for _ in range(UPCALLS_PER_TURN):
            try:
                size = self.sock.recv_into(self.buf)
            except (BlockingIOError, InterruptedError):
                return
            upcall = self.parse_upcall(size)
            if upcall is not None:
                yield upcall


class MrouteV4(Mroute):
    family, level, proto = _socket.AF_INET, _socket.IPPROTO_IP, _socket.IPPROTO_IGMP
    size, name, vif_name = 4, "IPv4", "VIF"
    SG_REQ = SIOC_SG_REQ

    @staticmethod
    def pack_vif(vif, ifindex, ttl):
        return VIFCTL.pack(vif, VIFF_USE_IFINDEX, ttl, 0, ifindex, bytes(4))

    @staticmethod
    def pack_vif_del(vif):
        return VIFCTL.pack(vif, 0, 0, 0, 0, bytes(4))

    @staticmethod
    def pack_mfc(src, grp, parent, oifs):
        return MFCCTL.pack(src, grp, parent, ttl_vector(oifs), 0, 0, 0, 0)

    @staticmethod
    def pack_sg_req(src, grp):
        return SIOC_SG_REQ.pack(src, grp, 0, 0, 0)

    def parse_upcall(self, size):
        # The raw IGMP socket also receives real IGMP, whose IP protocol
        # byte sits where an upcall has its zero mbz.
        if size < IGMPMSG.size:
            return None
        msgtype, mbz, vif, vif_hi, src, grp = IGMPMSG.unpack_from(self.buf)
        if mbz or msgtype not in (UPCALL_NOCACHE, UPCALL_WRONGVIF):
            return None
        return msgtype, vif | vif_hi << 8, src, grp


TTL_VECTORS = {}    # oifs -> mfcc_ttls: a few distinct ones serve every entry


def ttl_vector(oifs):
    vector = TTL_VECTORS.get(oifs)
    if vector is None:
        ttls = bytearray(MAXVIFS)
        for vif, ttl in oifs:
            ttls[vif] = ttl
        vector = TTL_VECTORS[oifs] = bytes(ttls)
    return vector


def sockaddr_in6(addr):
    return SOCKADDR_IN6.pack(_socket.AF_INET6, 0, 0, addr, 0)


class MrouteV6(Mroute):
    family, level, proto = _socket.AF_INET6, _socket.IPPROTO_IPV6, _socket.IPPROTO_ICMPV6
    size, name, vif_name = 16, "IPv6", "MIF"
    SG_REQ = SIOC_SG_REQ6

    def __init__(self, table=None):
        super().__init__(table)
        # Upcalls bypass the ICMPv6 filter; real ICMPv6 traffic need not reach us.
        self.sock.setsockopt(_socket.IPPROTO_ICMPV6, ICMP6_FILTER, b"\xff" * 32)
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
    def pack_mfc(src, grp, parent, oifs):
        mask = 0
        for vif, _ in oifs:
            mask |= 1 << vif
        if_set = struct.pack("@I", mask).ljust(32, b"\0")
        return MF6CCTL.pack(sockaddr_in6(src), sockaddr_in6(grp), parent, if_set)

    @staticmethod
    def pack_sg_req(src, grp):
        return SIOC_SG_REQ6.pack(sockaddr_in6(src), sockaddr_in6(grp), 0, 0, 0)

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


def open_kernels(table=None):
    """{address size: Mroute} for each IP version the kernel routes."""
    kernels = {}
    try:
        for cls in (MrouteV4, MrouteV6):
            try:
                kernels[cls.size] = cls(table)
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.EACCES):
                    raise
                log.warning("%s multicast routing is not available: %s" % (cls.name, exc.strerror))
    except BaseException:
        for kernel in kernels.values():
            kernel.close()
        raise
    return kernels

# ---------------------------------------------------------------------------
# Group joins
# ---------------------------------------------------------------------------


def sockaddr(addr):
    if len(addr) == 4:
        return SOCKADDR_IN.pack(_socket.AF_INET, 0, addr)
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
                    if not self._members(sock):
                        self._close(family, sock)
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
            self._close(len(key[2]), sock)

    def forget(self, indexes):
        """Memberships on interfaces that are gone went with them."""
        for key in [k for k in self.held if k[0] in indexes]:
            self.leave(key)

    def _open(self, family):
        sock = Socket(_socket.AF_INET if family == 4 else _socket.AF_INET6,
                             _socket.SOCK_DGRAM)
        self.sockets[family].append(sock)
        return sock

    def _close(self, family, sock):
        self.sockets[family].remove(sock)
        sock.close()

    def _members(self, sock):
        return [key for key, held in self.held.items() if held is sock]

    @staticmethod
    def _set(sock, option, key):
        index, src, grp = key
        level = _socket.IPPROTO_IP if len(grp) == 4 else _socket.IPPROTO_IPV6
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
# Interfaces and their events (rtnetlink)
# ---------------------------------------------------------------------------


class Interface(namedtuple("Interface", "name index flags")):
    @property
    def multicast(self):
        return bool(self.flags & IFF_MULTICAST and not self.flags & IFF_LOOPBACK)

    @property
    def up(self):
        return bool(self.flags & IFF_UP)


def netlink_messages(buf, size):
    """Yield (type, offset, length) for each message in buf[:size]."""
    offset = 0
    while offset + NLMSGHDR.size <= size:
        length, kind = NLMSGHDR.unpack_from(buf, offset)[:2]
        if length < NLMSGHDR.size or offset + length > size:
            return
        yield kind, offset, length
        offset += (length + 3) & ~3


def parse_link(buf, offset, length):
    """An RTM_NEWLINK/DELLINK message -> Interface."""
    _, _, index, flags, _ = IFINFOMSG.unpack_from(buf, offset + NLMSGHDR.size)
    name = ""
    attr = offset + NLMSGHDR.size + IFINFOMSG.size
    while attr + RTATTR.size <= offset + length:
        size, kind = RTATTR.unpack_from(buf, attr)
        if size < RTATTR.size:
            break
        if kind == IFLA_IFNAME:
            name = bytes(buf[attr + RTATTR.size:attr + size]).split(b"\0", 1)[0].decode(
                "utf-8", "replace")
        attr += (size + 3) & ~3
    return Interface(sys.intern(name), index, flags)


def netlink_error(buf, offset):
    code = struct.unpack_from("@i", buf, offset + NLMSGHDR.size)[0]
    return OSError(-code, os.strerror(-code))


class Interfaces:
    """The namespace's interfaces: read once with an rtnetlink dump, then
    kept current by the link and address events the socket delivers."""

    def __init__(self):
        self.by_name = {}
        self.by_index = {}
        self.buf = bytearray(NETLINK_BUFSIZE)
        self.sock = Socket(_socket.AF_NETLINK, _socket.SOCK_RAW, _socket.NETLINK_ROUTE)
        self.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, NETLINK_RCVBUF)
        self.sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        self.sock.setblocking(False)

    def close(self):
        self.sock.close()

    def matching(self, pattern):
        if not is_pattern(pattern):
            iface = self.by_name.get(pattern)
            return [iface] if iface else []
        return sorted((i for i in self.by_name.values() if name_matches(pattern, i.name)),
                      key=lambda i: i.index)

    def refresh(self):
        """Read every interface anew; returns the changes [(before, after)]."""
        found = {}
        with Socket(_socket.AF_NETLINK, _socket.SOCK_RAW, _socket.NETLINK_ROUTE) as dump:
            dump.send(NLMSGHDR.pack(NLMSGHDR.size + IFINFOMSG.size, RTM_GETLINK,
                                    NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
                      + IFINFOMSG.pack(_socket.AF_UNSPEC, 0, 0, 0, 0))
            done = False
            while not done:
                size = dump.recv_into(self.buf)
                for kind, offset, length in netlink_messages(self.buf, size):
                    if kind == RTM_NEWLINK:
                        iface = parse_link(self.buf, offset, length)
                        found[iface.index] = iface
                    elif kind == NLMSG_ERROR:
                        raise netlink_error(self.buf, offset)
                    elif kind == NLMSG_DONE:
                        done = True
        changes = [(self.by_index.get(i), found.get(i))
                   for i in set(self.by_index) | set(found)
                   if self.by_index.get(i) != found.get(i)]
        self.by_index = found
        self.by_name = {iface.name: iface for iface in found.values()}
        return changes

    def read_events(self):
        """Apply the events waiting on the socket: returns (changes, ifindexes
        whose addresses changed).  An overflow, when the kernel had to drop
        events, costs one refresh()."""
        changes, addressed = [], set()
        while True:
            try:
                size = self.sock.recv_into(self.buf)
            except (BlockingIOError, InterruptedError):
                return changes, addressed
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                log.warning("interface events overflowed, reading every interface anew")
                return changes + self.refresh(), set(self.by_index)
            for kind, offset, length in netlink_messages(self.buf, size):
                if kind in (RTM_NEWLINK, RTM_DELLINK):
                    iface = parse_link(self.buf, offset, length)
                    change = self._apply(iface if kind == RTM_NEWLINK else None, iface.index)
                    if change:
                        changes.append(change)
                elif kind in (RTM_NEWADDR, RTM_DELADDR):
                    addressed.add(IFADDRMSG.unpack_from(self.buf, offset + NLMSGHDR.size)[4])

    def _apply(self, iface, index):
        before = self.by_index.get(index)
        if before == iface:
            return None
        if before is not None:
            del self.by_index[index]
            if self.by_name.get(before.name) is before:
                del self.by_name[before.name]
        if iface is not None:
            self.by_index[index] = iface
            self.by_name[iface.name] = iface
        return before, iface

# ---------------------------------------------------------------------------
# Multicast Router Discovery (RFC 4286), IPv4
# ---------------------------------------------------------------------------

IGMP_MRDISC_ADV, IGMP_MRDISC_SOL, IGMP_MRDISC_TERM = 0x30, 0x31, 0x32
ALL_ROUTERS = "224.0.0.2"           # snoopers solicit here
ALL_SNOOPERS = "224.0.0.106"        # routers advertise and terminate here
ROUTER_ALERT = b"\x94\x04\x00\x00"   # IP option 148, length 4, value 0 (RFC 2113)

# AdvertisementInterval, seconds: RFC 4286's range and default, which
# SMCRoute's -m takes too.
MRDISC_INTERVAL = 20
MRDISC_INTERVALS = range(4, 181)
# The rest of RFC 4286's configuration variables and protocol constants:
# periodic advertisements are AdvertisementInterval plus a random time up
# to AdvertisementJitter (0.025 of the interval) apart; the first
# MAX_INITIAL_ADVERTISEMENTS after an interface starts routing are at most
# MAX_INITIAL_ADVERT_INTERVAL apart, so that a lost one is soon made up
# for; a solicitation is answered within MAX_RESPONSE_DELAY.  SMCRoute
# itself has neither jitter nor an initial burst.
ADVERT_JITTER = 0.025
MAX_INITIAL_ADVERT_INTERVAL = 2
MAX_INITIAL_ADVERTISEMENTS = 3
MAX_RESPONSE_DELAY = 2

IP_PKTINFO = 8                      # linux/in.h; not in every Python's socket module
IP_MULTICAST_ALL = 49

# Type, Advertisement Interval (the code field), Checksum, Query Interval,
# Robustness Variable.  RFC 4286 makes Solicitations and Terminations 4
# bytes, but Linux takes IGMP to be at least 8 (ip_mc_check_igmp), and
# SMCRoute sends all three as a struct igmp: so do we, the rest zero.
MRDISC_MSG = struct.Struct("!BBHHH")
IP_MREQN = struct.Struct("@4s4si")          # multiaddr address ifindex
IN_PKTINFO = struct.Struct("@i4s4s")        # ifindex spec_dst addr
MRDISC_RECV_SIZE = 1500
# Errors that mean the interface is gone or down: a termination that
# cannot go out then is no news.
LINK_GONE = (errno.ENODEV, errno.ENXIO, errno.ENETDOWN, errno.ENETUNREACH, errno.EADDRNOTAVAIL)


def igmp_checksum(data):
    """The Internet checksum (RFC 1071): 0 over data that carries a valid one."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def mrdisc_message(msgtype, interval=0):
    """An 8-byte message.  Query Interval and Robustness Variable are 0:
    RFC 4286 asks for that when the router runs no IGMP querier."""
    checksum = igmp_checksum(MRDISC_MSG.pack(msgtype, interval, 0, 0, 0))
    return MRDISC_MSG.pack(msgtype, interval, checksum, 0, 0)


def parse_igmp(packet):
    """The IGMP type of an IPv4 packet as a raw socket reads it (IP header
    included), or None unless it is IGMP with a valid checksum."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != _socket.IPPROTO_IGMP:
        return None
    igmp = packet[(packet[0] & 0xF) * 4:struct.unpack_from("!H", packet, 2)[0]]
    if len(igmp) < 4 or igmp_checksum(igmp):
        return None
    return igmp[0]


def jitter(limit):
    """A random time from 0 to `limit`; os.urandom spares us the random
    module, its import and its memory."""
    return limit * int.from_bytes(os.urandom(2), "big") / 0xFFFF


def advert_delay(interval, initial=False):
    """Seconds until the next unsolicited advertisement."""
    if initial:
        return jitter(MAX_INITIAL_ADVERT_INTERVAL)
    return interval + jitter(ADVERT_JITTER * interval)


def ifname(index):
    try:
        return _socket.if_indextoname(index)
    except OSError:
        return "ifindex %d" % index


class MrdiscLink:
    """One interface's advertisement schedule, in time.monotonic() seconds."""

    __slots__ = ("due", "initial", "sent", "error")

    def __init__(self, now):
        self.due = now                  # the first advertisement goes out at once
        self.initial = MAX_INITIAL_ADVERTISEMENTS
        self.sent = float("-inf")
        self.error = None               # errno of the last failed advertisement


class RouterDiscovery:
    """Tells IGMP snooping switches that multicast routing is on, so that
    they send all multicast our way: advertisements to All-Snoopers out of
    every started interface, answers to solicitations, and a termination
    when an interface stops.  One raw socket serves every interface."""

    def __init__(self, interval=MRDISC_INTERVAL, log=lambda msg: None):
        self.interval = interval
        self.log = log
        self.links = {}                 # ifindex -> MrdiscLink
        self.sock = Socket(_socket.AF_INET, _socket.SOCK_RAW, _socket.IPPROTO_IGMP)
        try:
            # Link-local, with router alert as RFC 4286 requires; PKTINFO
            # tells where a solicitation came in; with MULTICAST_ALL off only
            # our own 224.0.0.2 memberships wake us, not every IGMP report
            # for the groups this host has joined.
            for option, value in ((_socket.IP_MULTICAST_TTL, 1), (_socket.IP_MULTICAST_LOOP, 0),
                                  (_socket.IP_OPTIONS, ROUTER_ALERT), (IP_PKTINFO, 1),
                                  (IP_MULTICAST_ALL, 0)):
                self.sock.setsockopt(_socket.IPPROTO_IP, option, value)
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise

    def start(self, ifindex):
        """`ifindex` routes multicast now: listen for solicitations there
        and send the initial advertisements."""
        if ifindex in self.links:
            return
        try:
            self._membership(_socket.IP_ADD_MEMBERSHIP, ifindex)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return
            # ENOBUFS: more interfaces than net.ipv4.igmp_max_memberships.
            self.log("mrdisc: %s: cannot hear solicitations: %s" % (ifname(ifindex), exc.strerror))
        self.links[ifindex] = MrdiscLink(time.monotonic())

    def stop(self, ifindex):
        """`ifindex` routes no more: say so there, if it still exists."""
        if self.links.pop(ifindex, None) is None:
            return
        exc = self._send(ifindex, mrdisc_message(IGMP_MRDISC_TERM))
        if exc and exc.errno not in LINK_GONE:
            self.log("mrdisc: %s: cannot send a termination: %s" % (ifname(ifindex), exc.strerror))
        try:
            self._membership(_socket.IP_DROP_MEMBERSHIP, ifindex)
        except OSError:
            pass        # never joined (see start); a vanished interface's goes all the same

    def on_readable(self, mask=None):
        """Read every waiting packet, then send what is due now."""
        while True:
            try:
                packet, ancdata, _, _ = self.sock.recvmsg(
                    MRDISC_RECV_SIZE, _socket.CMSG_SPACE(IN_PKTINFO.size))
            except (BlockingIOError, InterruptedError):
                break
            if parse_igmp(packet) == IGMP_MRDISC_SOL:
                self.prompt(self._arrival(ancdata), time.monotonic())
        self.on_timer()

    def prompt(self, ifindex, now):
        """Advertise on `ifindex` soon: a solicitation came in there, or its
        address changed.  SMCRoute answers at once; RFC 4286 allows up to
        MAX_RESPONSE_DELAY and wants answers rate-limited.  So: at once,
        unless an advertisement went out there less than MAX_RESPONSE_DELAY
        ago, then as soon as that has passed: however many snoopers ask,
        one answer per 2 s per interface."""
        link = self.links.get(ifindex)
        if link is not None:
            link.due = min(link.due, max(now, link.sent + MAX_RESPONSE_DELAY))

    def deadline(self):
        """When on_timer() has something to send, or None."""
        return min((link.due for link in self.links.values()), default=None)

    def on_timer(self, now=None):
        now = time.monotonic() if now is None else now
        for ifindex, link in self.links.items():
            if link.due <= now:
                self._advertise(ifindex, link, now)

    def close(self):
        for ifindex in list(self.links):
            self.stop(ifindex)
        self.sock.close()

    def _advertise(self, ifindex, link, now):
        exc = self._send(ifindex, mrdisc_message(IGMP_MRDISC_ADV, self.interval))
        error = exc.errno if exc else None
        if error and error != link.error:       # once per failure, not every interval
            self.log("mrdisc: %s: cannot advertise: %s" % (ifname(ifindex), exc.strerror))
        link.error = error
        link.sent = now
        link.initial = max(0, link.initial - 1)
        link.due = now + advert_delay(self.interval, link.initial > 0)

    def _send(self, ifindex, message):
        """Send to All-Snoopers out of `ifindex`; the OSError, or None."""
        pktinfo = IN_PKTINFO.pack(ifindex, bytes(4), bytes(4))
        try:
            self.sock.sendmsg([message], [(_socket.IPPROTO_IP, IP_PKTINFO, pktinfo)],
                              0, (ALL_SNOOPERS, 0))
        except OSError as exc:
            return exc
        return None

    def _membership(self, option, ifindex):
        self.sock.setsockopt(_socket.IPPROTO_IP, option,
                             IP_MREQN.pack(_socket.inet_aton(ALL_ROUTERS), bytes(4), ifindex))

    @staticmethod
    def _arrival(ancdata):
        """The ifindex a packet came in on, from its IP_PKTINFO."""
        for level, kind, data in ancdata:
            if level == _socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= IN_PKTINFO.size:
                return IN_PKTINFO.unpack_from(data)[0]
        return None

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


def describe(exc):
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


class Router:
    """What the user wants (phyints, rules, memberships) and what the
    kernel has; every change goes through sync(), which computes the wanted
    MFC entry of each affected (S,G) and applies the difference to what is
    installed."""

    def __init__(self, kernels, interfaces):
        self.kernels = kernels          # {4: MrouteV4, 16: MrouteV6}
        self.ifaces = interfaces
        self.joins = Joins()
        self.phyints = {}
        self.rules = Rules()
        self.memberships = {}           # Membership.key -> Membership
        self.origins = Origins()
        self.learned = {}               # src+grp -> Learned, oldest first
        self.max_learned = DEFAULT_MAX_LEARNED
        self.mfc = {}                   # src+grp -> entry, as installed, in install order
        self.entries = {}               # (size, iif index, oif names) -> entry, shared
        self.routing = {}               # Interface -> routes_on(); both memos go with any change
        self.starved = set()            # keys whose entry needs a VIF there is none of
        self.vif_problems = {}          # origin -> why a template or phyint has no VIF
        self.waiting = {}               # origin -> pending() row, as last reported
        self.discovery = None           # RouterDiscovery, when the daemon runs one

    def close(self):
        self.joins.close()
        if self.discovery is not None:
            self.discovery.close()

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

    def routes_on(self, iface):
        """May multicast be routed on `iface`?"""
        routes = self.routing.get(iface)
        if routes is None:
            phyint = self.phyint(iface.name)
            routes = self.routing[iface] = iface.multicast and (phyint is None or phyint.enabled)
        return routes

    def usable(self, pattern):
        """The interfaces named by `pattern` that may route multicast."""
        return [i for i in self.ifaces.matching(pattern) if self.routes_on(i)]

    def why_unusable(self, name):
        """None when `name` names an interface that may route multicast,
        else what it waits for."""
        found = self.ifaces.matching(name)
        if not found:
            return ("an interface matching %s" if is_pattern(name) else "interface %s") % name
        if any(self.routes_on(i) for i in found):
            return None
        iface = found[0]
        if not iface.multicast:
            return "%s to be multicast-capable" % iface.name
        return "%s, disabled by phyint at %s" % (iface.name,
                                                 self.origins.text(self.phyint(iface.name).origin))

    def missing(self, names):
        """What the interfaces `names` wait for, [(name, reason)]."""
        return [(name, why) for name, why in ((n, self.why_unusable(n)) for n in names) if why]

    def require(self, names):
        """Refuse interface names that match nothing: at run time a typo
        must not look like success."""
        for name in names:
            if not is_pattern(name) and name not in self.ifaces.by_name:
                raise NotFound("no interface %s" % name)

    # Desired entries -------------------------------------------------------

    def match(self, key, iif):
        """The most specific template for `key` arriving on interface `iif`."""
        for route in self.rules.templates[len(key) >> 1]:
            if route.covers(key) and name_matches(route.iif, iif.name):
                return route
        return None

    def entry(self, kernel, iif, oif_names):
        """The MFC entry (parent, oifs) for traffic on `iif` going out
        `oif_names`; equal entries are one shared object."""
        memo = (kernel.size, iif.index, oif_names)
        entry = self.entries.get(memo)
        if entry is None:
            parent = kernel.vif(iif, self.ttl(iif.name))
            oifs = set()
            for name in oif_names:
                for oif in self.usable(name):
                    if oif.index != iif.index or not is_pattern(name):
                        ttl = self.ttl(oif.name)
                        oifs.add((kernel.vif(oif, ttl), ttl))
            entry = self.entries[memo] = (parent, tuple(sorted(oifs)))
        return entry

    def wanted(self, key, kernel):
        for rule in self.rules.candidates(key):
            iif = self.ifaces.by_name.get(rule.iif)
            if iif is not None and self.routes_on(iif):
                return self.entry(kernel, iif, rule.oifs)
        learned = self.learned.get(key)
        if learned is None:
            return None
        iif = self.ifaces.by_index.get(learned.iif)
        if iif is None or not self.routes_on(iif):
            return None
        route = self.match(key, iif)
        return self.entry(kernel, iif, route.oifs if route is not None else ())

    def sync(self, keys):
        """Bring the kernel's entries for `keys` in line; returns problems."""
        problems = []
        for key in keys:
            kernel = self.kernels.get(len(key) >> 1)
            if kernel is None:
                continue
            have = self.mfc.get(key)
            try:
                want = self.wanted(key, kernel)
                if want is have:
                    continue
                kernel.apply(key, have, want)
            except KernelError as exc:
                self.starved.add(key)
                problems.append("%s: %s" % (self.blame(key), exc))
                continue
            except OSError as exc:
                problems.append("%s: %s" % (self.blame(key), describe(exc)))
                continue
            self.starved.discard(key)
            if want is None:
                del self.mfc[key]
            else:
                self.mfc[key] = want
        for problem in problems:
            log.error(problem)
        return problems

    def blame(self, key):
        """The rule behind `key`'s entry, for a message."""
        for rule in self.rules.candidates(key):
            return "%s: %s" % (self.origins.text(rule.origin),
                               route_text(rule.iif, *split_key_text(key), rule.oifs))
        return key_text(key)

    def sync_vifs(self):
        """Register the VIFs that templates and phyints need before any
        traffic, and release the ones nothing needs any more; a freed VIF
        goes to the entries that waited for one."""
        problems = {}               # origin -> [problem]
        released = 0
        for size, kernel in self.kernels.items():
            keep = set()
            # In config order, as SMCRoute 2.6.0 numbers them.
            wanted = [(t.iif, t) for t in self.rules.templates[size]]
            wanted += [(p.name, p) for p in self.phyints.values() if p.enabled]
            for pattern, rule in sorted(wanted, key=lambda want: want[1].origin):
                for iface in self.usable(pattern):
                    keep.add(iface.index)
                    try:
                        kernel.vif(iface, self.ttl(iface.name))
                    except (KernelError, OSError) as exc:
                        problems.setdefault(rule.origin, []).append(
                            "%s: %s" % (self.origins.text(rule.origin), describe(exc)))
            released += kernel.release_vifs(keep)
        for origin, texts in problems.items():
            if self.vif_problems.get(origin) != texts:
                for text in texts:
                    log.error(text)
        self.vif_problems = problems
        if released:
            self.entries = {}
            if self.starved:
                self.sync(list(self.starved))
        self.sync_discovery()
        return [text for texts in problems.values() for text in texts]

    def sync_discovery(self):
        """Advertise (RFC 4286) on the IPv4 VIFs that are up and whose
        phyint says mrdisc; stop, with a termination, where that ends."""
        kernel = self.kernels.get(4)
        if self.discovery is None or kernel is None:
            return
        wanted = set()
        for index in kernel.vif_of:
            iface = self.ifaces.by_index.get(index)
            phyint = iface and self.phyint(iface.name)
            if phyint and phyint.mrdisc and iface.up:
                wanted.add(index)
        for index in [i for i in self.discovery.links if i not in wanted]:
            self.discovery.stop(index)
        for index in wanted:
            self.discovery.start(index)

    def vifs_to_release(self):
        """Does a VIF no entry uses wait to be released?  An exact rule's
        change needs sync_vifs() only then."""
        return any(kernel.unused for kernel in self.kernels.values())

    def keys_for(self, route):
        """The learned (S,G) keys a template's change can alter."""
        return [key for key in self.learned if route.covers(key)]

    # Rules ---------------------------------------------------------------

    def keys_of(self, rule, source, group):
        if isinstance(rule, ExactRoute):
            return [source.addr + group.addr]
        return self.keys_for(rule)

    def add_route(self, iif, source, group, oifs):
        """Add or extend a rule at run time; returns warnings.  A rule the
        kernel refuses (no free VIF, say) is taken back and raises."""
        rule, before = self.rules.add(iif, source, group, oifs, self.origins.take())
        keys = self.keys_of(rule, source, group)
        problems = self.sync(keys)
        if not isinstance(rule, ExactRoute) or self.vifs_to_release():
            self.sync_vifs()
        problems += self.vif_problems.get(rule.origin, [])
        if problems:
            self.rules.restore(iif, source, group, before)
            self.sync(keys)
            self.sync_vifs()
            raise KernelError("; ".join(problems))
        return ["%s waits for %s" % (route_text(iif, source, group, rule.oifs), why)
                for _, why in self.missing((iif,) + rule.oifs)]

    def del_route(self, iif, source, group, oifs):
        """Remove `oifs` from a rule, or the whole rule when none are given
        or none are left."""
        route = self.rules.find(iif, source, group)
        if route is None:
            raise NotFound("no such route: %s from %s" % (pairs_text(source, group), iif))
        missing = [o for o in oifs if o not in route.oifs]
        if missing:
            raise NotFound("%s does not go out %s"
                           % (route_text(iif, source, group, route.oifs), " ".join(missing)))
        remaining = tuple(o for o in route.oifs if o not in oifs) if oifs else ()
        if remaining:
            self.rules.put(iif, source, group, self.rules.share(remaining), route.origin)
        else:
            self.rules.remove(iif, source, group)
        self.sync(self.keys_of(route, source, group))
        if not isinstance(route, ExactRoute) or self.vifs_to_release():
            self.sync_vifs()

    # Learned entries -------------------------------------------------------

    def upcall(self, kernel, msgtype, vif, src, grp):
        index = kernel.vifs[vif] if vif < MAXVIFS else None
        iif = self.ifaces.by_index.get(index)
        if iif is None:
            return
        key = src + grp
        learned = self.learned.get(key)
        if msgtype == UPCALL_NOCACHE:
            if learned is None:
                if len(self.learned) >= self.max_learned:
                    self.evict()
                self.learned[key] = Learned(index)
            else:
                learned.iif = index
        elif self.rehome(key, learned, iif):
            learned.iif = index
        else:
            return
        self.sync([key])
        self.report_learned(key, iif)

    def report_learned(self, key, iif):
        entry = self.mfc.get(key)
        if entry is None or key in self.rules.exact:
            return
        src, grp = split_key(key)
        route = self.match(key, iif)
        if route is None:
            events.emit(syslog.LOG_INFO, "stop-filter", "%s from %s: no rule takes it"
                        % (key_text(key), iif.name), source=ntop(src), group=ntop(grp))
            return
        oifs = " ".join(self.vif_names(len(grp), [vif for vif, _ in entry[1]])) or "nowhere"
        events.emit(syslog.LOG_INFO, "learned", "%s from %s to %s, by rule %s"
                    % (key_text(key), iif.name, oifs, self.origins.text(route.origin)),
                    source=ntop(src), group=ntop(grp))

    def rehome(self, key, learned, iif):
        """Should a WRONGVIF on `iif` move a learned entry there?  Only a
        stop filter moves, and only to an interface a rule accepts: a flow
        that matches a rule where it is keeps its interface, so a second
        feed of the same (S,G) cannot steal it."""
        if learned is None or learned.iif == iif.index or key in self.rules.exact:
            return False
        if self.match(key, iif) is None:
            return False
        here = self.ifaces.by_index.get(learned.iif)
        return here is None or self.match(key, here) is None

    EVICTION_LOOKS = 8

    def evict(self):
        """Room for one more learned entry: of the oldest few, the first
        that saw no packet since it was last looked at (a flood's forged
        sources, a flow that ended), else the oldest.  Active ones go to
        the back of the line."""
        first = None
        for key in [k for k, _ in zip(self.learned, range(self.EVICTION_LOOKS))]:
            learned = self.learned[key]
            packets, _, wrong_if = self.kernels[len(key) >> 1].counters(key)
            # A new entry's count includes the packet it was learned from.
            if packets - wrong_if <= (1 if learned.seen is None else learned.seen):
                break
            learned.seen = packets - wrong_if
            self.learned[key] = self.learned.pop(key)
            first = first or key
        else:
            key = first
        events.emit(syslog.LOG_INFO, "evicted", "%s: %d learned routes, the most -L allows"
                    % (key_text(key), self.max_learned))
        del self.learned[key]
        self.sync([key])

    def expire(self):
        """Drop learned entries that saw no packet since the last call."""
        stale = []
        for key, learned in self.learned.items():
            packets, _, wrong_if = self.kernels[len(key) >> 1].counters(key)
            valid = packets - wrong_if
            if learned.seen == valid:
                stale.append(key)
            learned.seen = valid
        for key in stale:
            events.emit(syslog.LOG_INFO, "expired", key_text(key))
        self.forget(stale)

    def forget(self, keys):
        for key in keys:
            del self.learned[key]
        self.sync(keys)
        self.sync_vifs()
        return len(keys)

    # Memberships -----------------------------------------------------------

    def wanted_joins(self):
        """{(ifindex, src, grp): Membership} for every membership whose
        interface exists."""
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
                    problems.append("%s: join %s: %s" % (self.origins.text(membership.origin),
                                                         membership, exc.strerror))
        for problem in problems:
            log.error(problem)
        return problems

    def join(self, iif, source, group):
        membership = Membership(iif, source, group, self.origins.take())
        if membership.key in self.memberships:
            raise ValueError("already joined: %s" % membership)
        self.memberships[membership.key] = membership
        problems = self.sync_joins()
        if problems:
            del self.memberships[membership.key]
            self.sync_joins()
            raise KernelError("; ".join(problems))

    def leave(self, iif, source, group):
        if self.memberships.pop((iif, source, group), None) is None:
            raise NotFound("not joined: %s on %s" % (pairs_text(source, group), iif))
        self.sync_joins()

    # Interfaces that come and go -------------------------------------------

    def interfaces_changed(self, changes):
        """Take the interface `changes` [(before, after)] in at once: they
        are told, and what was worked out from the interfaces before is
        forgotten, so that every sync from now on sees them.  Returns the
        job (a generator: it yields between slices, as an interface of
        100k routes may go) that brings in line what they touch: the rules
        that name them, the entries that use their VIFs, and the
        memberships on them."""
        names, indexes = set(), set()
        for before, after in changes:
            self.report_interface(before, after)
            for iface in (before, after):
                if iface is not None:
                    names.add(iface.name)
            if before is not None:
                indexes.add(before.index)
        slots = {size: kernel.slots_of(indexes) for size, kernel in self.kernels.items()}
        for kernel in self.kernels.values():
            kernel.forget_vifs(self.ifaces.by_index)
        gone = {i for i in indexes if i not in self.ifaces.by_index}
        if gone:
            self.learned = {k: v for k, v in self.learned.items() if v.iif not in gone}
            self.joins.forget(gone)
        self.entries, self.routing = {}, {}
        return self.bringing_in_line(names, slots)

    def bringing_in_line(self, names, slots):
        """The job of interfaces_changed: `names` changed, and the VIFs
        `slots` {size: vifs} were theirs."""
        keys = yield from self.keys_naming(names)
        for size, vifs in slots.items():
            if vifs:
                for chunk in slices(list(self.mfc), SLICE):
                    keys.update(k for k in chunk if len(k) >> 1 == size
                                and uses_vifs(self.mfc.get(k), vifs))
                    yield
        for chunk in slices(keys, SLICE):
            yield                   # before: the last slice and the VIFs go together
            self.sync(chunk)
        self.sync_vifs()
        self.sync_joins()
        yield from self.report_waiting(names)

    def report_interface(self, before, after):
        """An event for a change of an interface: a notice for one that
        routes (it has a VIF), else just information."""
        iface = before or after
        routes = any(iface.index in kernel.vif_of for kernel in self.kernels.values())
        if before is None:
            text = "%s (%d) appeared" % (after.name, after.index)
        elif after is None:
            text = "%s (%d) is gone" % (before.name, before.index)
        elif before.name != after.name:
            text = "%s (%d) is now %s" % (before.name, before.index, after.name)
        elif before.up != after.up:
            text = "%s is %s" % (after.name, "up" if after.up else "down")
        elif before.multicast != after.multicast:
            text = "%s is %smulticast-capable" % (after.name, "" if after.multicast else "no longer ")
        else:
            return
        events.emit(syslog.LOG_NOTICE if routes else syslog.LOG_INFO, "interface", text)

    def keys_naming(self, names):
        """The keys whose entries may change when interfaces `names` come
        or go: exact rules naming them, and what templates naming them
        learned; a slice of the exact rules at a time."""
        keys = set()
        hits = {}
        for chunk in slices(list(self.rules.exact), SLICE):
            for key, rule in self.rules.each_exact(chunk):
                hit = hits.get((rule.iif, rule.oifs))
                if hit is None:
                    hit = hits[(rule.iif, rule.oifs)] = names_any(rule.iif, rule.oifs, names)
                if hit:
                    keys.add(key)
            yield
        for size in self.kernels:
            for route in self.rules.templates[size]:
                if names_any(route.iif, route.oifs, names):
                    keys.update(self.keys_for(route))
        return keys

    # Pending: rules that wait for interfaces --------------------------------

    def pending(self, names=None):
        """[(origin, kind, iif, source, group, oifs, waits for)] for every
        rule that is not wholly in effect, in config order; only those
        naming one of `names` when given."""
        return drain(self.finding_pending(names))

    def finding_pending(self, names=None):
        """pending(), a slice of the exact rules at a time (it yields
        between slices)."""
        def named(iif, oifs):
            return names is None or names_any(iif, oifs, names)

        def waits_for(iif, oifs, size, starved):
            # Thousands of rules share an inbound interface and OIF tuple.
            why = memo.get((iif, oifs, size, starved))
            if why is None:
                why = [why for _, why in self.missing((iif,) + oifs)]
                if size not in self.kernels:
                    why.append("IPv%d multicast routing" % (4 if size == 4 else 6))
                if starved and not why:
                    why.append("a free VIF")
                memo[(iif, oifs, size, starved)] = why
            return why
        memo = {}
        found = []
        for chunk in slices(list(self.rules.exact), SLICE):
            for key, rule in self.rules.each_exact(chunk):
                if named(rule.iif, rule.oifs):
                    why = waits_for(rule.iif, rule.oifs, len(key) >> 1, key in self.starved)
                    if why:
                        found.append((rule.origin, "mroute", rule.iif) + split_key_text(key)
                                     + (rule.oifs, why))
            yield
        for route in self.rules.all_templates():
            if named(route.iif, route.oifs):
                why = waits_for(route.iif, route.oifs, len(route.group.addr),
                                route.origin in self.vif_problems)
                if why:
                    found.append((route.origin, "mroute", route.iif,
                                  route.source and str(route.source), str(route.group),
                                  route.oifs, why))
        for membership in self.memberships.values():
            if named(membership.iif, ()) and not self.ifaces.matching(membership.iif):
                found.append((membership.origin, "mgroup", membership.iif,
                              membership.source and str(membership.source), str(membership.group),
                              (), [self.why_unusable(membership.iif)]))
        found.sort(key=lambda row: row[0])
        return found

    def report_waiting(self, names):
        """Tell which rules naming `names` now wait, or are in effect; a
        slice at a time."""
        after = {row[0]: row for row in (yield from self.finding_pending(names))}
        before, hits = {}, {}
        for chunk in slices(list(self.waiting.items()), SLICE):
            for origin, row in chunk:
                hit = hits.get((row[2], row[5]))
                if hit is None:
                    hit = hits[(row[2], row[5])] = names_any(row[2], row[5], names)
                if hit:
                    before[origin] = row
            yield
        for chunk in slices(after.items(), SLICE):
            for origin, row in chunk:
                if origin not in before or before[origin][6] != row[6]:
                    events.emit(syslog.LOG_NOTICE, "pending", "%s: %s waits for %s"
                                % (self.origins.text(origin), pending_text(row), ", ".join(row[6])))
            yield
        for chunk in slices(before.items(), SLICE):
            for origin, row in chunk:
                del self.waiting[origin]
                if origin not in after:
                    events.emit(syslog.LOG_NOTICE, "active", "%s: %s is in effect"
                                % (self.origins.text(origin), pending_text(row)))
            yield
        self.waiting.update(after)

    def warnings(self):
        """What the config asks for that cannot be done yet, as warnings,
        a slice at a time."""
        self.waiting = {row[0]: row for row in (yield from self.finding_pending())}
        return ["%s: %s waits for %s" % (self.origins.text(row[0]), pending_text(row), ", ".join(row[6]))
                for row in self.waiting.values()]

    # The whole state at once --------------------------------------------

    def load(self, config):
        """Make `config` the desired state at once; returns its warnings
        and problems."""
        return drain(self.loading(config))

    def loading(self, config):
        """Make `config` the desired state, a slice at a time (it yields
        between slices).  Only the entries whose rules changed are synced,
        unless interfaces or phyints changed; entries that do not change
        are not touched, so their flows go on undisturbed.  Returns the
        warnings and problems."""
        everything = bool(self.ifaces.refresh())
        present = self.ifaces.by_index
        for kernel in self.kernels.values():
            kernel.forget_vifs(present)
        self.learned = {k: v for k, v in self.learned.items() if v.iif in present}
        self.joins.forget({k[0] for k in self.joins.held if k[0] not in present})
        old = self.rules
        everything = everything or phyint_settings(self.phyints) != phyint_settings(config.phyints)
        relearn = everything or template_ids(old) != template_ids(config.rules)
        self.phyints = config.phyints
        self.rules = config.rules
        self.memberships = config.memberships
        self.origins = config.origins
        self.origins.run("ipc")
        starved, self.starved = self.starved, set()
        new = self.rules
        # (keys, the test of those to sync): 100k keys are tested a slice at
        # a time too.
        if everything:
            self.entries, self.routing = {}, {}
            parts = [(list(new.exact), None)]
        else:
            parts = [(list(new.exact), lambda k: old.exact.get(k) is not new.exact.get(k)),
                     (list(old.exact), lambda k: k not in new.exact),
                     (list(set(old.alternates) | set(new.alternates)),
                      lambda k: old.alternates.get(k) != new.alternates.get(k))]
        # Then what else is installed, or waits: learned entries, and those
        # of the rules that are gone.
        parts += [(list(self.mfc), lambda k: k not in new.exact and k not in self.learned),
                  (list(self.learned) if relearn else [], None), (list(starved), None)]
        # Config order decides which rules get the last free VIFs.
        problems = self.sync_vifs()
        for keys, wanted in parts:
            for chunk in slices(keys, SLICE):
                problems += self.sync(chunk if wanted is None else list(filter(wanted, chunk)))
                yield
        problems += self.sync_vifs() + self.sync_joins()
        warnings = yield from self.warnings()
        for chunk in slices(warnings, SLICE):
            for warning in chunk:
                log.warning(warning)
            yield
        # What a config leaves lives long, and a full pass of the cycle
        # collector over 100k rules stops the loop for tens of ms: it need
        # not look at them again.  Replaced rules go by reference count;
        # the young garbage is collected first, so that little is frozen.
        gc.collect(1)
        gc.freeze()
        return warnings + problems

    def changes(self, config):
        """What loading `config` would change, as lines: + added, - removed,
        ~ changed; nothing is applied."""
        lines = []
        old, new = self.rules.table(), config.rules.table()
        for rule, oifs in new.items():
            if rule not in old:
                lines.append("+ mroute %s to %s" % (rule_id_text(rule), oifs_text(oifs)))
            elif old[rule] != oifs:
                lines.append("~ mroute %s: outputs %s" % (rule_id_text(rule),
                                                          list_changes(old[rule], oifs)))
        lines += ["- mroute %s to %s" % (rule_id_text(rule), oifs_text(oifs))
                  for rule, oifs in old.items() if rule not in new]
        lines += ["+ mgroup %s" % m for key, m in config.memberships.items()
                  if key not in self.memberships]
        lines += ["- mgroup %s" % m for key, m in self.memberships.items()
                  if key not in config.memberships]
        for name, phyint in config.phyints.items():
            before = self.phyints.get(name)
            if before is None:
                lines.append("+ phyint " + phyint_text(phyint))
            elif before[:4] != phyint[:4]:
                lines.append("~ phyint %s, was %s" % (phyint_text(phyint), phyint_text(before)))
        lines += ["- phyint " + phyint_text(p) for n, p in self.phyints.items() if n not in config.phyints]
        return lines

    # Reports -------------------------------------------------------------

    def vif_names(self, size, vifs):
        kernel = self.kernels[size]
        names = []
        for vif in vifs:
            iface = self.ifaces.by_index.get(kernel.vifs[vif])
            names.append(iface.name if iface else "?")
        return names

    def present_oifs(self, names):
        """The interfaces a rule's OIF names stand for now, in its order."""
        return list(dict.fromkeys(iface.name for name in names for iface in self.usable(name)))

    # Rows are made one at a time from a snapshot of the keys, as a reply
    # takes them: a table of 100k routes is never held whole, and an entry
    # gone meanwhile is left out.

    def kernel_rows(self, keep=lambda oifs: True):
        """Installed entries whose OIF list `keep` takes, in install order,
        as RouteRows."""
        for key in list(self.mfc):
            entry = self.mfc.get(key)
            if entry is None or not keep(entry[1]):
                continue
            parent, oifs = entry
            size = len(key) >> 1
            packets, octets, _ = self.kernels[size].counters(key)
            rule = self.rules.exact.get(key)
            kind = "static" if rule is not None else "learned" if oifs else "stop"
            yield RouteRow(kind, *split_key_text(key), self.vif_names(size, [parent])[0],
                           self.vif_names(size, [vif for vif, _ in oifs]), packets, octets,
                           [name for name, _ in self.missing(rule.oifs)] if rule else [])

    def template_rows(self):
        """Templates as RouteRows, in config order, with no counters."""
        return [RouteRow("template", route.source and str(route.source), str(route.group),
                         route.iif, self.present_oifs(route.oifs), 0, 0, [])
                for route in self.rules.all_templates()]

    def exact_rows(self, keep=lambda key, rule: True):
        """Exact rules that `keep` takes, alternates included, as RouteRows
        in config order; counters are the kernel's for a rule's entry, else
        0."""
        for key in list(self.rules.exact):
            rule = self.rules.exact.get(key)
            if rule is None:
                continue
            for other in [rule] + self.rules.alternates.get(key, []):
                if not keep(key, other):
                    continue
                counters = (0, 0)
                if other is rule and key in self.mfc:
                    counters = self.kernels[len(key) >> 1].counters(key)[:2]
                yield RouteRow("rule", *split_key_text(key), other.iif,
                               self.present_oifs(other.oifs), *counters, [])

    def iif_present(self, key, rule):
        """Does a rule's inbound interface exist now?  SMCRoute shows only
        those."""
        return rule.iif in self.ifaces.by_name

    def group_rows(self):
        """(memberships wanted, memberships held) as (source, group, iif) rows."""
        def row(index, src, grp):
            iface = self.ifaces.by_index.get(index)
            return (src and ntop(src), ntop(grp), iface.name if iface else "?")
        return ([row(*key) for key in self.wanted_joins()], [row(*key) for key in self.joins.held])

    def interface_rows(self):
        """Every interface in the namespace, in ifindex order."""
        rows = []
        for iface in sorted(self.ifaces.by_index.values(), key=lambda i: i.index):
            vifs = {size: k.vif_of.get(iface.index) for size, k in self.kernels.items()}
            rows.append(InterfaceRow(iface.index, iface.name, vifs.get(4), vifs.get(16),
                                     "up" if iface.up else "down", iface.multicast,
                                     self.ttl(iface.name)))
        return rows

    def pending_rows(self):
        return [PendingRow(kind, iif, source, group, list(oifs), self.origins.text(origin), why)
                for origin, kind, iif, source, group, oifs, why in self.pending()]


RouteRow = namedtuple("RouteRow", "kind source group iif oifs packets bytes waiting")
InterfaceRow = namedtuple("InterfaceRow", "index name vif mif state multicast ttl")
PendingRow = namedtuple("PendingRow", "kind iif source group oifs origin waits_for")


SLICE = 500                # entries synced, or config lines read, between two looks at the sockets


def slices(items, size):
    """`items`, an iterable, in lists of `size`."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def drain(steps):
    """Run a job's steps at once; returns its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def phyint_settings(phyints):
    return {name: phyint[1:4] for name, phyint in phyints.items()}


def template_ids(rules):
    return [(r.iif, r.source, r.group, r.oifs) for r in rules.all_templates()]


def rule_id_text(rule):
    """A Rules.table() id as text: (S, G) from IIF."""
    if len(rule) == 2:
        iif, key = rule
        source, group = split_key_text(key)
    else:
        iif, source, group = rule
    return "%s from %s" % (pairs_text(source, group), iif)


def list_changes(old, new):
    return " ".join(["+" + name for name in new if name not in old]
                    + ["-" + name for name in old if name not in new])


def phyint_text(phyint):
    return "%s %s ttl-threshold %d%s" % (phyint.name, "enable" if phyint.enabled else "disable",
                                         phyint.ttl, " mrdisc" if phyint.mrdisc else "")


def names_any(iif, oifs, names):
    """Does a rule from `iif` to `oifs` name one of the interfaces `names`?"""
    return any(name_matches(p, n) for p in (iif,) + tuple(oifs) for n in names)


def uses_vifs(entry, slots):
    """Does an MFC entry (None: gone) take or send on one of the VIFs `slots`?"""
    return entry is not None and (entry[0] in slots or any(vif in slots for vif, _ in entry[1]))


def split_key_text(key):
    return tuple(ntop(addr) for addr in split_key(key))


def pending_text(row):
    _, kind, iif, source, group, oifs, _ = row
    if kind == "mgroup":
        return "mgroup %s on %s" % (pairs_text(source, group), iif)
    return "mroute " + route_text(iif, source, group, oifs)

# ---------------------------------------------------------------------------
# Show: SMCRoute's tables and JSON, byte for byte as smcrouted 2.6.0 sends
# them to smcroutectl, and our own readable tables
# ---------------------------------------------------------------------------

TITLE_MARK = "_"            # a reply line ending in it is a section title
HEADER_MARK = "="           # ... a column header

ADDR_COLUMN = 42            # "(S, G)" in route and group tables; longer text overflows it
COUNTER_COLUMN = 10         # packets and bytes, in detail
GROUP_IIF_COLUMN = 16       # the groups header only: rows are not padded

ROUTE_HEADER = ("ROUTE (S,G)", "IIF", ("PACKETS", "BYTES"), "OIFS")
GROUP_HEADER = ("GROUP (S,G)", "IIF")
INTERFACE_HEADER = ("INDEX", "PHYINT", "VIF", "MIF")
NO_NUMBER = "N/A"           # an interface without VIF or MIF

ROUTE_TITLES = ("(*,G) Template Rules", "(S,G) Rules", "Kernel MFC Table")
GROUP_TITLES = ("Group Memberships Table", "Kernel Group Membership Table")
PENDING_TITLE = "PENDING ROUTES AND GROUPS"     # no marker: smcroutectl -t keeps it
# 2.6.0 follows this with its last log line, a bug: not copied.
PENDING_NONE = "No pending routes or groups"

TABLES = ("routes", "groups", "interfaces", "pending")


def column_width(names, header):
    """SMCRoute's IIF and PHYINT columns are as wide as the longest interface
    name in the namespace, used by a rule or not, and never narrower than
    their header."""
    return max([len(header)] + [len(name) for name in names])


def section(title, header, lines):
    """A titled table's lines, or none when it has no rows: 2.6.0 leaves
    empty tables out of a reply."""
    lines = iter(lines)
    first = next(lines, None)
    if first is None:
        return
    yield title + TITLE_MARK
    if header is not None:
        yield header + HEADER_MARK
    yield first
    yield from lines


def route_line(pair, iif, width, counters, oifs):
    # The space after the IIF and after each counter is always there, so a
    # row without OIFs ends in spaces, as in 2.6.0.
    line = "%-*s %-*s " % (ADDR_COLUMN, pair, width, iif)
    if counters is not None:
        line += "%*s %*s " % (COUNTER_COLUMN, counters[0], COUNTER_COLUMN, counters[1])
    return line + "".join(" " + oif for oif in oifs)


def route_lines(rows, width, detail):
    return (route_line(pairs_text(row.source, row.group), row.iif, width,
                       (row.packets, row.bytes) if detail else None, row.oifs) for row in rows)


def smcroute_routes(router, detail):
    """`s` (and `S`, with counters): templates and exact rules whose inbound
    interface exists, then the kernel's entries in install order, stop
    filters last."""
    tables = ([r for r in router.template_rows() if router.ifaces.matching(r.iif)],
              router.exact_rows(router.iif_present),
              chain(router.kernel_rows(bool), router.kernel_rows(lambda oifs: not oifs)))
    width = column_width(router.ifaces.by_name, ROUTE_HEADER[1])
    name, iif, counters, oifs = ROUTE_HEADER
    header = route_line(name, iif, width, counters if detail else None, [oifs])
    for title, rows in zip(ROUTE_TITLES, tables):
        yield from section(title, header, route_lines(rows, width, detail))


def group_lines(rows):
    return ["%-*s %s" % (ADDR_COLUMN, pairs_text(source, group), iif) for source, group, iif in rows]


def smcroute_groups(router, detail):
    """`s groups`; in detail also the kernel's memberships, titled but
    with no header."""
    wanted, held = router.group_rows()
    header = "%-*s %-*s" % (ADDR_COLUMN, GROUP_HEADER[0], GROUP_IIF_COLUMN, GROUP_HEADER[1])
    yield from section(GROUP_TITLES[0], header, group_lines(wanted))
    if detail:
        yield from section(GROUP_TITLES[1], None, group_lines(held))


def interface_line(index, name, vif, mif, width):
    return "%6s %-*s %4s %4s" % (index, width, name, vif, mif)


def number_text(number):
    return NO_NUMBER if number is None else number


def smcroute_interfaces(router, detail):
    """`s interfaces`: a header and no title, every interface in the
    namespace, with or without a VIF."""
    rows = router.interface_rows()
    if not rows:
        return []
    width = column_width([row.name for row in rows], INTERFACE_HEADER[1])
    return [interface_line(*INTERFACE_HEADER, width=width) + HEADER_MARK] + \
        [interface_line(row.index, row.name, number_text(row.vif), number_text(row.mif), width)
         for row in rows]


def pending_line(row):
    line = "%s  from %s" % (row.kind, row.iif)
    if row.source is not None:
        line += " source " + row.source
    line += " group " + row.group
    if row.oifs:
        line += " to " + " ".join(row.oifs)
    return line


def smcroute_pending(router, detail):
    """`s pending`: rules that wait for an interface, in config order, with
    every OIF of the config line."""
    rows = router.pending_rows()
    if not rows:
        return [PENDING_NONE]
    return [PENDING_TITLE] + [pending_line(row) for row in rows]


SMCROUTE_TABLES = {"routes": smcroute_routes, "groups": smcroute_groups,
                   "interfaces": smcroute_interfaces, "pending": smcroute_pending}


def smcroute_topic(words):
    """The table a show request asks for: 2.6.0 looks at the first letter
    of the first word only, and anything else means the routes."""
    letter = words[0][:1] if words else ""
    return {"g": "groups", "i": "interfaces", "p": "pending"}.get(letter, "routes")

# JSON: one line, 2.6.0's keys in its order; our own extras come after them
# (route counters, interface state, what a pending rule waits for), so its
# readers still work.


def json_module():
    try:
        import json  # Debian's python3-minimal lacks it; the rest runs there
    except ImportError:
        raise CommandError("JSON output needs Python's json module") from None
    return json


def json_encoder():
    """json.dumps(obj, separators=(",", ":")), without the new encoder
    dumps makes at each call."""
    return json_module().JSONEncoder(separators=(",", ":")).encode


def json_line(obj):
    return json_encoder()(obj)


def json_array(objects):
    """A JSON list's text, an element at a time."""
    encode = json_encoder()
    yield "["
    for n, obj in enumerate(objects):
        yield ("," if n else "") + encode(obj)
    yield "]"


def route_objects(rows):
    return ({"source": row.source, "group": row.group, "iif": row.iif, "oifs": row.oifs,
             "packets": row.packets, "bytes": row.bytes} for row in rows)


def json_routes(router):
    """The routes table, streamed: the same text as one json.dumps."""
    yield '{"routes":{"asm":'
    yield from json_array(route_objects(r for r in router.template_rows()
                                        if router.ifaces.matching(r.iif)))
    yield ',"ssm":'
    yield from json_array(route_objects(router.exact_rows(router.iif_present)))
    yield ',"kernel":'
    yield from json_array(route_objects(router.kernel_rows()))
    yield "}}"


def json_groups(router):
    return [json_line({"groups": {key: [{"source": source, "group": group, "iif": iif}
                                        for source, group, iif in rows]
                                  for key, rows in zip(("conf", "kernel"), router.group_rows())}})]


def json_interfaces(router):
    return [json_line({"interfaces": [{"index": row.index, "name": row.name, "vif": row.vif,
                                       "mif": row.mif, "state": row.state,
                                       "multicast": row.multicast, "ttl": row.ttl}
                                      for row in router.interface_rows()]})]


def json_pending(router):
    return [json_line({"pending": [{"kind": row.kind, "iif": row.iif, "source": row.source,
                                    "group": row.group, "oifs": row.oifs, "origin": row.origin,
                                    "waits_for": row.waits_for}
                                   for row in router.pending_rows()]})]


# Each gives the table's JSON text in pieces.
JSON_TABLES = {"routes": json_routes, "groups": json_groups,
               "interfaces": json_interfaces, "pending": json_pending}

# Our own tables: a column per field, as wide as its widest value, so
# long IPv6 addresses do not break them.


def text_table(columns, rows):
    """columns: (header, right-aligned?); rows: a function that makes the
    rows, tuples of text, afresh.  A pass over them finds the widths (a
    None for each row: no text yet), a second one makes the lines, so a big
    table is never held whole; a counter that grows in between may push
    the rest of its row right.  The last column is not padded."""
    headers = tuple(header for header, _ in columns)
    widths = [len(header) for header in headers]
    for row in rows():
        widths = [max(width, len(value)) for width, value in zip(widths, row)]
        yield None
    for values in chain([headers], rows()):
        cells = [value.rjust(width) if right else value.ljust(width)
                 for value, width, (_, right) in zip(values[:-1], widths, columns)]
        yield "  ".join(cells + [values[-1]]).rstrip()


def dash(value):
    return "-" if value is None else str(value)


def readable_routes(router):
    """Every kernel entry, then the exact rules not in the kernel, then the
    templates."""
    def rows():
        waiting = router.exact_rows(lambda key, rule: key not in router.mfc)
        for row in chain(router.kernel_rows(),
                         (row._replace(kind="waiting", packets=None, bytes=None) for row in waiting),
                         (row._replace(packets=None, bytes=None) for row in router.template_rows())):
            yield (row.kind, dash(row.source), row.group, row.iif, dash(row.packets),
                   dash(row.bytes), " ".join(row.oifs + ["(%s)" % n for n in row.waiting]) or "-")
    return text_table((("KIND", False), ("SOURCE", False), ("GROUP", False), ("IIF", False),
                       ("PACKETS", True), ("BYTES", True), ("OIFS", False)), rows)


def readable_groups(router):
    return text_table((("SOURCE", False), ("GROUP", False), ("IIF", False)),
                      lambda: ((dash(source), group, iif) for source, group, iif in router.group_rows()[1]))


def readable_interfaces(router):
    return text_table((("NAME", False), ("INDEX", True), ("STATE", False), ("VIF", True),
                       ("MIF", True), ("TTL", True)),
                      lambda: ((row.name, str(row.index), row.state, dash(row.vif), dash(row.mif),
                                str(row.ttl)) for row in router.interface_rows()))


def readable_pending(router):
    return text_table((("ORIGIN", False), ("RULE", False), ("WAITS FOR", False)),
                      lambda: ((row.origin, pending_line(row).replace("  ", " ", 1),
                                ", ".join(row.waits_for)) for row in router.pending_rows()))


READABLE_TABLES = {"routes": readable_routes, "groups": readable_groups,
                   "interfaces": readable_interfaces, "pending": readable_pending}

# ---------------------------------------------------------------------------
# Supervision: the -e script hook and systemd's notify socket
# ---------------------------------------------------------------------------

SCRIPT_MAX_RUNNING = 4      # hooks at once; the rest wait their turn
SCRIPT_MAX_WAITING = 1000
SCRIPT_TIMEOUT = 60.0       # seconds before a hook that hangs is killed


def exit_text(status):
    if os.WIFSIGNALED(status):
        return "was killed by signal %d" % os.WTERMSIG(status)
    return "exited with %d" % os.WEXITSTATUS(status)


class Script:
    """The -e hook, run as `CMD start|reload|install` with no shell; the
    loop never waits for it: children are reaped on SIGCHLD, a few run at
    once, the rest queue, and one that hangs is killed."""

    def __init__(self, path):
        self.path = path
        self.running = {}           # pid -> (action, started)
        self.waiting = deque()

    def run(self, action, **env):
        if len(self.waiting) >= SCRIPT_MAX_WAITING:
            log.warning("%s %s not run: %d runs already wait" % (self.path, action, len(self.waiting)))
            return
        self.waiting.append((action, env))
        self._start()

    def _start(self):
        while self.waiting and len(self.running) < SCRIPT_MAX_RUNNING:
            action, extra = self.waiting.popleft()
            env = dict(os.environ)
            env.update(extra)
            try:
                pid = os.posix_spawn(self.path, [self.path, action], env, file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)])
            except OSError as exc:
                log.error("cannot run %s %s: %s" % (self.path, action, describe(exc)))
                continue
            self.running[pid] = (action, time.monotonic())

    def reap(self):
        for pid, (action, _) in list(self.running.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                del self.running[pid]
                if status:
                    log.warning("%s %s %s" % (self.path, action, exit_text(status)))
        self._start()

    def deadline(self):
        if not self.running:
            return None
        return min(started for _, started in self.running.values()) + SCRIPT_TIMEOUT

    def on_timer(self, now):
        for pid, (action, started) in self.running.items():
            if now - started >= SCRIPT_TIMEOUT:
                log.error("%s %s still runs after %d s, killed" % (self.path, action, SCRIPT_TIMEOUT))
                os.kill(pid, _signal.SIGKILL)
                self.running[pid] = (action, float("inf"))


class Notifier:
    """systemd's readiness protocol: datagrams to $NOTIFY_SOCKET, a path or
    an abstract name (@...).  The variable is taken out of the environment
    so that the script hook does not see it."""

    def __init__(self):
        path = os.environ.pop("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path

    def notify(self, *fields):
        if not self.address:
            return
        try:
            with Socket(_socket.AF_UNIX, _socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s" % (self.address.lstrip("\0"), describe(exc)))

    def ready(self, status):
        self.notify("READY=1", "STATUS=" + status, "MAINPID=%d" % os.getpid())

    def reloading(self):
        self.notify("RELOADING=1", "MONOTONIC_USEC=%d" % (time.monotonic() * 1e6))

    def stopping(self):
        self.notify("STOPPING=1")


class Periodic:
    """A timer for the loop: `action` every `interval` seconds."""

    def __init__(self, interval, action):
        self.interval = interval
        self.action = action
        self.next = time.monotonic() + interval

    def deadline(self):
        return self.next

    def on_timer(self, now):
        self.next = now + self.interval
        self.action()

# ---------------------------------------------------------------------------
# IPC: the control socket's line protocol
# ---------------------------------------------------------------------------

MAX_LINE = 1024             # bytes in one command line
MAX_CLIENTS = 64
CLIENT_TIMEOUT = 30         # seconds a client may neither send nor take a byte
MONITOR_BUFFER = 1 << 16    # bytes of events a monitor may fall behind
REPLY_BATCH = 1 << 14       # bytes of replies to pipelined commands sent at once
REPLY_SLICE = 0.005         # seconds spent making one reply between two looks at the sockets

# SMCRoute's binary request, in native layout: size_t length of the whole
# message, u16 command character, u16 word count, padding to size_t's
# alignment (16 bytes on x86_64), then NUL-terminated words and one more
# NUL.  The reply is text and one NUL, empty text for success.
REQUEST_LENGTH = struct.Struct("@N")
REQUEST_HEADER = struct.Struct("@NHH0N")
MAX_REQUEST = 1024          # bytes, header included; smcrouted's buffer
REPLY_END = b"\0"


def pack_request(cmd, words):
    body = b"".join(word.encode() + b"\0" for word in words) + b"\0"
    return REQUEST_HEADER.pack(REQUEST_HEADER.size + len(body), ord(cmd), len(words)) + body


def parse_request(buf):
    """(cmd, words, bytes used) for the first request in buf, or None until
    it is complete; ValueError for anything else."""
    if len(buf) < REQUEST_LENGTH.size:
        return None
    (length,) = REQUEST_LENGTH.unpack_from(buf)
    # Judged before waiting for more, so a bogus length cannot stall a client.
    if not REQUEST_HEADER.size < length <= MAX_REQUEST:
        raise ValueError("bad request length %d" % length)
    if len(buf) < length:
        return None
    _, cmd, count = REQUEST_HEADER.unpack_from(buf)
    if not 0x20 < cmd < 0x7f:
        raise ValueError("no command %#x" % cmd)
    words = bytes(buf[REQUEST_HEADER.size:length - 1])     # each NUL-terminated, then one more NUL
    if buf[length - 1] or (words and not words.endswith(b"\0")):
        raise ValueError("words not NUL-terminated")
    words = words.split(b"\0")[:-1]
    if len(words) != count:
        raise ValueError("request of %d words says %d" % (len(words), count))
    return chr(cmd), [word.decode("utf-8", "replace") for word in words], length


def binary_text(lines):
    """A text protocol reply as SMCRoute's: nothing for success, else the error."""
    return lines[-1][len("error: "):] if lines[-1].startswith("error: ") else ""


def pack_reply(text):
    return text.encode("utf-8", "replace") + REPLY_END


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


class Stream:
    """A reply made as it is sent: its text in pieces, taken while the
    client takes them, so that a table of 100k routes is never held whole
    and the loop serves others between pieces; a None piece is no text,
    only work done.  `end` follows in the text protocol; should
    making a piece fail, `failed(exc)` is sent instead of the rest."""

    __slots__ = ("pieces", "end", "failed")

    def __init__(self, pieces, end, failed):
        self.pieces = iter(pieces)
        self.end = end
        self.failed = failed

    def binary(self):
        """The same reply in SMCRoute's protocol: its text, then a NUL."""
        end = REPLY_END.decode()
        return Stream(self.pieces, end, lambda exc: self.failed(exc) + end)


class Control:
    """The daemon's commands, one method per command word, each returning
    data lines, or the whole reply as one line of JSON, or a Stream, or
    raising CommandError."""

    HELP = [
        "add IIF [SRC[/LEN]] GRP[/LEN] [OIF ...]   add a route, or OIFs to one",
        "del IIF [SRC[/LEN]] GRP[/LEN] [OIF ...]   remove OIFs, or the whole route (or: remove)",
        "join IIF [SRC[/LEN]] GRP[/LEN]            join a group",
        "leave IIF [SRC[/LEN]] GRP[/LEN]           leave a group",
        "show [routes|groups|interfaces|pending] [json|smcroute [detail]]",
        "                                          a table, one line of JSON, or",
        "                                          SMCRoute's table for smcroutectl",
        "flush                                     drop learned routes now",
        "reload                                    re-read the config file",
        "check [FILE]                              what a reload of FILE would change",
        "monitor                                   turn this connection into an event stream",
        "kill                                      stop the daemon",
        "version                                   print the version",
        "help                                      this list",
    ]
    SHOW_USAGE = "usage: show [routes|groups|interfaces|pending] [json|smcroute [detail]]"

    def __init__(self, daemon):
        self.daemon = daemon
        self.router = daemon.router
        self.commands = {"add": self.add, "del": self.delete, "remove": self.delete,
                         "join": self.join, "leave": self.leave, "show": self.show,
                         "flush": self.flush, "reload": self.reload, "kill": self.kill,
                         "check": self.check, "monitor": self.monitor,
                         "version": self.version, "help": self.help}

    def execute(self, line, client):
        """Run one command line for `client`; returns its reply lines: data
        lines then `ok` or `error: ...`, or one line of JSON, or a Stream."""
        words = line.split()
        try:
            return self.run(words, client)
        except Exception as exc:
            error = self.error_text(exc, line)
            if "json" in words[1:]:
                try:
                    return [json_line({"error": error})]
                except CommandError:
                    pass                # no json module: the error as text, then
            return ["error: " + error]

    # What any client may ask; everything else changes the daemon's state
    # (or, for check, reads a file as root) and takes root or CAP_NET_ADMIN.
    READ_ONLY = frozenset(("show", "version", "help", "monitor"))

    def run(self, words, client):
        name = words[0].lower()
        command = self.commands.get(name)
        if command is None:
            raise CommandError("unknown command %r, try 'help'" % words[0])
        if name not in self.READ_ONLY and not client.privileged:
            raise CommandError("not allowed: %s takes root or CAP_NET_ADMIN" % name)
        self.daemon.read_interface_events()     # a command sees every change made before it
        reply = command(words[1:], client)
        if reply is None or isinstance(reply, Stream):
            return reply        # a reply to come when a job is done, or made as it is sent
        return [reply] if isinstance(reply, str) else reply + ["ok"]

    @staticmethod
    def error_text(exc, line):
        if isinstance(exc, (CommandError, ValueError, NotFound, KernelError, OSError)):
            return describe(exc)
        log.internal_error("on %r" % line)
        return "internal error, see the daemon's log"

    @staticmethod
    def _split(args, usage):
        """IIF [SRC[/LEN]] GRP[/LEN] REST... -> (iif, src or None, grp, rest)"""
        if not args:
            raise CommandError("usage: " + usage)
        return (args[0],) + split_source_group(args[1:], usage)

    def _route(self, args, usage):
        return route_words(*self._split(args, usage))

    def _membership(self, args, usage):
        iif, source, group, rest = self._split(args, usage)
        if rest:
            raise CommandError("usage: " + usage)
        return membership_words(iif, source, group)

    def add(self, args, client):
        iif, source, group, oifs = self._route(args, "add IIF [SRC[/LEN]] GRP[/LEN] [OIF ...]")
        self.router.require((iif,) + oifs)
        return ["warning: " + w for w in self.router.add_route(iif, source, group, oifs)]

    def delete(self, args, client):
        self.router.del_route(*self._route(args, "del IIF [SRC[/LEN]] GRP[/LEN] [OIF ...]"))
        return []

    def join(self, args, client):
        iif, source, group = self._membership(args, "join IIF [SRC[/LEN]] GRP[/LEN]")
        self.router.require((iif,))
        self.router.join(iif, source, group)
        return []

    def leave(self, args, client):
        self.router.leave(*self._membership(args, "leave IIF [SRC[/LEN]] GRP[/LEN]"))
        return []

    def show(self, args, client):
        words = [a.lower() for a in args]
        table = words.pop(0) if words and words[0] in TABLES else "routes"
        form = words.pop(0) if words and words[0] in ("json", "smcroute") else "table"
        detail = form == "smcroute" and words == ["detail"]
        if words and not detail:
            raise CommandError(self.SHOW_USAGE)
        line = " ".join(["show"] + args)     # for the log, should a row fail
        if form == "json":
            json_module()           # or an error reply now, before any of the text
            return Stream(chain(JSON_TABLES[table](self.router), ["\n"]), "",
                          lambda exc: "\n%s\n" % json_line({"error": self.error_text(exc, line)}))
        if form == "smcroute":
            lines = SMCROUTE_TABLES[table](self.router, detail)
        else:
            lines = READABLE_TABLES[table](self.router)
        return Stream((text if text is None else text + "\n" for text in lines), "ok\n",
                      lambda exc: "error: %s\n" % self.error_text(exc, line))

    def flush(self, args, client):
        count = self.router.forget(list(self.router.learned))
        return ["%d learned routes dropped" % count]

    def reload(self, args, client):
        self.daemon.reload(client)
        return None

    def kill(self, args, client):
        self.daemon.running = False
        return []

    def check(self, args, client):
        """Check FILE (by default the config file) and tell what a reload of
        it would change, without applying anything."""
        if len(args) > 1:
            raise CommandError("usage: check [FILE]")
        path = args[0] if args else self.daemon.options.config
        config = read_config(path)
        if config.error_count:
            raise CommandError("%d errors in %s, a reload would be refused: %s"
                               % (config.error_count, path, "; ".join(config.errors)))
        return self.router.changes(config) or ["no changes"]

    def monitor(self, args, client):
        client.monitor()
        return []

    def version(self, args, client):
        return ["smcroute.py %s" % VERSION]

    def help(self, args, client):
        return list(self.HELP)

    # SMCRoute's binary requests ---------------------------------------------

    BINARY = {"a": "add", "r": "del", "j": "join", "l": "leave", "F": "flush",
              "H": "reload", "k": "kill"}
    BINARY_SHOW = {"s": "smcroute", "S": "smcroute detail", "J": "json"}

    def execute_binary(self, cmd, words, client):
        """An SMCRoute request: its reply text, empty on success, or a
        Stream of it; None for one to come."""
        if cmd in self.BINARY_SHOW:
            table = smcroute_topic(words)
            line = "show %s %s" % (table, self.BINARY_SHOW[cmd])
            reply = self.execute(line, client)
            if isinstance(reply, Stream):
                return reply.binary()
            if cmd == "J":
                return reply[0] + "\n"
            return "".join(text + "\n" for text in reply[:-1])
        if cmd not in self.BINARY:
            return "Unknown or malformed IPC message '%s' from client." % cmd
        try:
            reply = self.run([self.BINARY[cmd]] + words, client)
        except Exception as exc:
            return self.error_text(exc, " ".join([cmd] + words))
        return None if reply is None else binary_text(reply)


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
        self.monitoring = False     # events stream out, input is ignored
        self.closing = False        # close once the output is sent
        self.binary = None          # SMCRoute's requests, not text lines; None: not known yet
        self.waiting = False        # for the reply to a command that runs as a job
        self.stream = None          # the pieces of a reply still to be made
        self.last = time.monotonic()    # when it last sent or took a byte
        self.privileged = peer_may_change_state(sock)

    def idle_since(self):
        """When this client last sent or took a byte; None while a reply
        to it is in the making, and for a monitor that keeps up.  A client
        that does not take its reply is as idle as one that sends nothing."""
        if self.waiting or self.monitoring and not self.closing:
            return None
        return self.last

    def on_event(self, mask):
        if self.sock is None:
            return                      # closed by another's event in the same turn
        if mask & selectors.EVENT_WRITE:
            if self.stream is not None:
                self.fill()
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
        self.last = time.monotonic()

    def process(self):
        """Answer the complete requests received, while replies go out."""
        if self.waiting:
            return
        if self.monitoring:
            del self.inbuf[:]
            if self.eof:
                self.close()
            return
        if self.binary is None:
            self.binary = self.sniff()
        if self.binary:
            self.process_binary()
        elif self.binary is not None:
            self.process_lines()

    def sniff(self):
        """SMCRoute's requests start with their length, a size_t: NUL bytes
        among the first few, which a text line never has.  None: too early
        to tell."""
        head = bytes(self.inbuf[:REQUEST_LENGTH.size])
        if b"\0" in head:
            return True
        if len(head) == REQUEST_LENGTH.size or b"\n" in head or self.eof:
            return False
        return None

    def process_binary(self):
        """One reply for each request, then the connection closes, as
        smcroutectl expects."""
        while self.sock is not None and not self.outbuf and self.stream is None:
            try:
                request = parse_request(self.inbuf)
            except ValueError as exc:
                del self.inbuf[:]
                self.closing = True
                self.outbuf += pack_reply("Malformed IPC message: %s" % exc)
                return self.flush()
            if request is None:
                if self.eof:
                    self.close()
                return
            cmd, words, used = request
            del self.inbuf[:used]
            self.closing = not self.inbuf
            reply = self.server.control.execute_binary(cmd, words, self)
            if reply is None:
                self.waiting = True
                return
            if isinstance(reply, Stream):
                self.start_stream(reply)
            else:
                self.outbuf += pack_reply(reply)
            self.flush()

    def process_lines(self):
        """Answer the complete lines received; the replies go out together,
        up to REPLY_BATCH bytes, before more is read (backpressure)."""
        while (self.sock is not None and self.stream is None and not self.monitoring
               and len(self.outbuf) < REPLY_BATCH):
            end = self.inbuf.find(b"\n")
            if end < 0:
                if len(self.inbuf) > MAX_LINE:
                    self.too_long()
                    continue
                if not self.eof:
                    break
                if not self.inbuf:
                    self.closing = True     # once the replies are out
                    break
                end = len(self.inbuf)       # a last line with no newline
            line = bytes(self.inbuf[:end])
            del self.inbuf[:end + 1]
            if self.discarding:
                self.discarding = False
            elif len(line) > MAX_LINE:
                self.queue(["error: line too long, at most %d bytes" % MAX_LINE])
            else:
                text = line.decode("utf-8", "replace").strip()
                if text and not text.startswith("#"):
                    reply = self.server.control.execute(text, self)
                    if reply is None:
                        self.waiting = True
                        break
                    self.queue(reply)
        if self.sock is not None and (self.outbuf or self.closing):
            self.flush()

    def too_long(self):
        """Answer a line that never ends once, and skip it up to its newline."""
        if not self.discarding:
            self.queue(["error: line too long, at most %d bytes" % MAX_LINE])
        self.discarding = True
        del self.inbuf[:]

    def queue(self, reply):
        if isinstance(reply, Stream):
            self.start_stream(reply)
        else:
            self.outbuf += ("\n".join(reply) + "\n").encode()

    def start_stream(self, stream):
        self.stream = stream
        self.fill()

    def fill(self):
        """Make more of the reply in the making, up to REPLY_BATCH bytes
        waiting to be sent (no more than the client takes), for at most
        REPLY_SLICE seconds: the rest at the next turn of the loop."""
        self.last = time.monotonic()    # while its reply is made, a client is not idle
        deadline = self.last + REPLY_SLICE
        while self.stream is not None and len(self.outbuf) < REPLY_BATCH:
            try:
                piece = next(self.stream.pieces)
            except StopIteration:
                piece, self.stream = self.stream.end, None
            except Exception as exc:
                piece, self.stream = self.stream.failed(exc), None
            if piece is not None:
                self.outbuf += piece.encode("utf-8", "replace")
            if time.monotonic() > deadline:
                return

    def reply(self, lines):
        self.queue(lines)
        self.flush()

    def flush(self):
        if self.outbuf:
            try:
                sent = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return self.close()
            del self.outbuf[:sent]
            self.last = time.monotonic()
        if self.closing and not self.outbuf and self.stream is None:
            self.close()

    def answer(self, lines):
        """The reply to the command it waited for; then on with the rest."""
        if self.sock is None:
            return
        self.waiting = False
        if self.binary:
            self.outbuf += pack_reply(binary_text(lines))
            self.flush()
        else:
            self.reply(lines)
        if self.sock is not None:
            self.process()
        if self.sock is not None:
            self.server.watch(self)

    def monitor(self):
        self.monitoring = True
        self.server.monitors.add(self)

    def event(self, line):
        """One event for a monitor: a monitor that does not keep up never
        slows the daemon down; past MONITOR_BUFFER it is told and dropped."""
        if self.closing:
            return
        if len(self.outbuf) + len(line) > MONITOR_BUFFER:
            line = "error: events dropped: this monitor did not keep up\n"
            self.closing = True
        self.outbuf += line.encode()
        self.flush()
        if self.sock is not None:
            self.server.watch(self)

    def close(self):
        if self.sock is not None:
            self.server.forget(self)
            self.sock.close()
            self.sock = None


def peer_may_change_state(sock):
    """Is the process that connected root, or does it hold CAP_NET_ADMIN?
    Asked once, when it connects."""
    try:
        pid, uid, _ = UCRED.unpack(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED,
                                                   UCRED.size))
        if uid == 0:
            return True
        with open("/proc/%d/status" % pid) as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return False


def send_and_close(sock, text):
    """A last word to a client, if it takes it at once.  What it sent is
    read first: closing on unread input would reset the connection, and
    the client would never see the word."""
    sock.setblocking(False)
    try:
        for _ in range(16):
            if not sock.recv(1 << 16):
                break
    except OSError:
        pass
    try:
        sock.send(text)
    except OSError:
        pass
    sock.close()


def probe_socket(path):
    """Refuse to start when another daemon answers on `path`; a socket
    file nobody answers on is stale, left by a daemon that was killed."""
    probe = Socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.connect(path)
        raise Fatal(EX_UNAVAILABLE, "another daemon answers on %s" % path)
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    finally:
        probe.close()


class ControlServer:
    """The listening UNIX socket and its clients.  Clients that say nothing
    for CLIENT_TIMEOUT are closed, and when MAX_CLIENTS are connected the
    one idle the longest makes room for a new one: idle or half-written
    connections, however many, never lock an operator out.  A timer of
    the daemon loop."""

    def __init__(self, path, selector, control, group=None):
        self.path = path
        self.selector = selector
        self.control = control
        self.clients = set()
        self.monitors = set()
        self.sock = self._bind(path, group)
        selector.register(self.sock, selectors.EVENT_READ, self.accept)
        events.listeners.append(self.broadcast)

    def broadcast(self, kind, line, details):
        for client in list(self.monitors):
            client.event(line + "\n")

    @staticmethod
    def _bind(path, group):
        """The socket, mode 0600, or 0660 for the members of `group` (a gid)."""
        probe_socket(path)
        if os.path.isdir(path):
            raise Fatal(EX_OSERR, "the control socket %s is a directory: give -u the name of a "
                        "socket file, e.g. -u %s" % (path, os.path.join(path, "smcroute.sock")))
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise Fatal(EX_OSERR, "cannot create the control socket %s: there is no directory %s; "
                        "create it, or give -u another path" % (path, folder))
        if os.path.exists(path):
            os.unlink(path)
        sock = Socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise Fatal(EX_OSERR, "cannot create the control socket %s: %s"
                        % (path, describe(exc))) from None
        finally:
            os.umask(old_umask)
        if group is not None:
            os.chown(path, -1, group)
            os.chmod(path, 0o660)
        sock.listen(64)
        sock.setblocking(False)
        return sock

    def accept(self, mask):
        """Take every connection waiting, so the backlog never fills."""
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            if len(self.clients) >= MAX_CLIENTS and not self.make_room():
                send_and_close(sock, b"error: too many clients\n")
                continue
            sock.setblocking(False)
            client = Client(sock, self)
            self.clients.add(client)
            self.selector.register(sock, selectors.EVENT_READ, client.on_event)

    def idle(self):
        """(idle since, client) for the clients that are idle."""
        return [(since, client) for since, client in
                ((c.idle_since(), c) for c in self.clients) if since is not None]

    def make_room(self):
        idle = self.idle()
        if not idle:
            return False
        self.drop(min(idle, key=lambda pair: pair[0])[1], "closed to make room for another client")
        return True

    def drop(self, client, why):
        sock = client.sock
        self.forget(client)
        client.sock = None
        send_and_close(sock, ("error: %s\n" % why).encode())

    def deadline(self):
        idle = self.idle()
        return min(since for since, _ in idle) + CLIENT_TIMEOUT if idle else None

    def on_timer(self, now):
        for since, client in self.idle():
            if now >= since + CLIENT_TIMEOUT:
                self.drop(client, "idle for %d seconds, closed" % CLIENT_TIMEOUT)

    def watch(self, client):
        """Wait for what the client needs next: to write its reply, to read
        its next command, or nothing while its reply is being made."""
        registered = client.sock in self.selector.get_map()
        if client.waiting and not client.outbuf:
            if registered:
                self.selector.unregister(client.sock)
            return
        events = selectors.EVENT_WRITE if client.outbuf or client.stream else selectors.EVENT_READ
        if registered:
            self.selector.modify(client.sock, events, client.on_event)
        else:
            self.selector.register(client.sock, events, client.on_event)

    def forget(self, client):
        self.clients.discard(client)
        self.monitors.discard(client)
        if client.sock in self.selector.get_map():
            self.selector.unregister(client.sock)

    def close(self):
        events.listeners.remove(self.broadcast)
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
    """Sockets, signals and timers around a Router, in one select() loop.
    Reading and applying a config is a job that runs a slice at each turn
    of the loop, so that upcalls and clients are served meanwhile; so is
    bringing the routes in line after interfaces change."""

    def __init__(self, options, on_ready=None):
        self.options = options
        self.selector = selectors.DefaultSelector()
        self.running = True
        self.kernels = {}
        self.interfaces = None
        self.router = None
        self.server = None
        self.timers = []            # objects with deadline() and on_timer(now)
        self.jobs = deque()         # generators, a slice each turn of the loop
        self.reloads = []           # clients (None: SIGHUP) that wait for a reload
        self.script = Script(options.script) if options.script else None
        self.notifier = Notifier()
        self.on_ready = on_ready
        self.ready = False
        self._wakeup = None

    def start(self):
        # Nothing of another daemon's is touched when this one cannot
        # start: its socket is checked before anything is created here.
        probe_socket(self.options.daemon_socket())
        self.kernels = open_kernels(self.options.table)
        if not self.kernels:
            raise Fatal(EX_NOKERNEL, "the kernel has no multicast routing")
        self.interfaces = Interfaces()
        self.router = Router(self.kernels, self.interfaces)
        self.router.max_learned = self.options.max_learned
        if 4 in self.kernels:
            discovery = self.router.discovery = RouterDiscovery(self.options.mrdisc, log.warning)
            self.selector.register(discovery.sock, selectors.EVENT_READ, discovery.on_readable)
            self.timers.append(discovery)
        for kernel in self.kernels.values():
            self.selector.register(kernel.sock, selectors.EVENT_READ, self._upcall_reader(kernel))
        self.selector.register(self.interfaces.sock, selectors.EVENT_READ,
                               lambda mask: self.read_interface_events())
        self.server = ControlServer(self.options.daemon_socket(), self.selector, Control(self),
                                    self.options.socket_group)
        self.timers.append(self.server)
        self._catch_signals()
        events.listeners.append(self.on_event)
        self.jobs.append(self.starting())

    def starting(self):
        """The first load: the config is applied, then the daemon is ready."""
        if os.path.exists(self.options.config):
            config = yield from self.reading()
        else:
            log.warning("%s: no such file, starting with no rules" % self.options.config)
            config = Config()
        yield from self.router.loading(config)
        if self.options.expire:
            self.timers.append(Periodic(self.options.expire, self.router.expire))
        if self.script:
            self.timers.append(self.script)
        if self.options.lifetime is not None:
            self.timers.append(Periodic(self.options.lifetime, self.stop_at_the_end_of_life))
        if self.options.pidfile:
            # Whole or not at all: its existence says "ready" to supervisors.
            with open(self.options.pidfile + ".new", "w") as pidfile:
                pidfile.write("%d\n" % os.getpid())
            os.replace(self.options.pidfile + ".new", self.options.pidfile)
        self.ready = True
        self.notifier.ready(self.status())
        if self.script:
            self.script.run("start")
        log.notice("smcroute.py %s ready" % VERSION)
        if self.on_ready is not None:
            self.on_ready()

    def stop_at_the_end_of_life(self):
        log.notice("exiting after %d seconds (-D)" % self.options.lifetime)
        self.running = False

    def status(self):
        return "%d routes, %d learned, %d joins" % (len(self.router.rules.exact),
                                                    len(self.router.learned),
                                                    len(self.router.joins.held))

    def _upcall_reader(self, kernel):
        def read(mask):
            for msgtype, vif, src, grp in kernel.upcalls():
                self.router.upcall(kernel, msgtype, vif, src, grp)
        return read

    def read_interface_events(self):
        changes, addressed = self.interfaces.read_events()
        if changes:
            self.jobs.append(self.router.interfaces_changed(changes))
        discovery = self.router.discovery
        for index in addressed:
            if discovery is not None and index in discovery.links:
                discovery.prompt(index, time.monotonic())   # snoopers learn the new address

    def on_event(self, kind, line, details):
        if kind == "learned" and self.script:
            self.script.run("install", source=details["source"], group=details["group"])

    def _catch_signals(self):
        reader, writer = socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._wakeup = (reader, writer)
        _signal.set_wakeup_fd(writer.fileno())
        for signum in (_signal.SIGHUP, _signal.SIGINT, _signal.SIGTERM, _signal.SIGCHLD):
            _signal.signal(signum, lambda *_: None)
        self.selector.register(reader, selectors.EVENT_READ, self._on_signal)

    def _on_signal(self, mask):
        try:
            signums = self._wakeup[0].recv(64)
        except BlockingIOError:
            return
        for signum in signums:
            if signum == _signal.SIGHUP:
                self.reload(None)
            elif signum == _signal.SIGCHLD and self.script:
                self.script.reap()
            elif signum in (_signal.SIGINT, _signal.SIGTERM):
                log.notice("exiting on %s" % SIGNAL_NAMES[signum])
                self.running = False

    def reload(self, client):
        """Re-read the config, as a job; `client` (None: SIGHUP) gets the
        outcome.  A reload asked for while one runs follows it."""
        if not self.reloads:
            self.jobs.append(self.reloading())
        self.reloads.append(client)

    def reloading(self):
        """A config with errors, or none, changes nothing."""
        try:
            yield from self.reloading_rounds()
        except Exception:
            log.internal_error("in a reload")
            for client in self.reloads:
                if client is not None:
                    client.answer(["error: internal error, see the daemon's log"])
            self.reloads = []

    def reloading_rounds(self):
        while self.reloads:
            clients = list(self.reloads)
            self.notifier.reloading()
            try:
                config = yield from self.reading()
                if config.error_count:
                    log.error("reload refused: %d errors in %s, nothing changed"
                              % (config.error_count, self.options.config))
                    reply = ["error: reload refused, nothing changed: " + "; ".join(config.errors)]
                else:
                    problems = yield from self.router.loading(config)
                    self.reloaded()
                    reply = ["warning: " + p for p in problems] + ["ok"]
            finally:
                self.notifier.ready(self.status())
            del self.reloads[:len(clients)]
            for client in clients:
                if client is not None:
                    client.answer(reply)

    def reloaded(self):
        if self.options.pidfile:
            try:
                os.utime(self.options.pidfile)      # tells supervisors such as Finit
            except OSError as exc:
                log.warning("cannot touch %s: %s" % (self.options.pidfile, describe(exc)))
        events.emit(syslog.LOG_NOTICE, "reload", "%s: %s" % (self.options.config, self.status()))
        if self.script:
            self.script.run("reload")

    def reading(self):
        config = yield from reading(self.options.config, self.router.rules)
        for severity, text in config.problems:
            log.write(syslog.LOG_ERR if severity == "error" else syslog.LOG_WARNING, text)
        return config

    def run(self):
        while self.running:
            deadlines = [d for d in (t.deadline() for t in self.timers) if d is not None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            for key, mask in self.selector.select(0 if self.jobs else timeout):
                self.guarded(key.data, mask)
                if not self.running:
                    break
            if self.jobs:
                self.guarded(self.step)
            now = time.monotonic()
            for timer in self.timers:
                deadline = timer.deadline()
                if deadline is not None and now >= deadline:
                    self.guarded(timer.on_timer, now)

    def step(self):
        """One slice of the job at hand."""
        try:
            next(self.jobs[0])
        except StopIteration:
            self.jobs.popleft()
        except BaseException:
            self.jobs.popleft()
            raise

    @staticmethod
    def guarded(callback, *args):
        """A bug in one handler is logged; the routes stay and the daemon serves on."""
        try:
            callback(*args)
        except Exception:
            log.internal_error("")

    def close(self):
        if self.ready:
            self.notifier.stopping()
        if self.on_event in events.listeners:
            events.listeners.remove(self.on_event)
        if self.server is not None:
            self.server.close()
        if self.router is not None:
            self.router.close()
        if self.interfaces is not None:
            self.interfaces.close()
        for kernel in self.kernels.values():
            kernel.close()
        if self._wakeup is not None:
            _signal.set_wakeup_fd(-1)
            for sock in self._wakeup:
                sock.close()
        if self.ready and self.options.pidfile:
            try:
                os.unlink(self.options.pidfile)
            except FileNotFoundError:
                pass
        self.selector.close()


# ---------------------------------------------------------------------------
# CLI: one program, three personalities by the name it runs as
# ---------------------------------------------------------------------------
#
#   smcrouted     SMCRoute 2.6.0's daemon, its options and their meaning
#   smcroutectl   SMCRoute 2.6.0's client, its options, output and exit codes
#   anything else (smcroute.py, smcroute.pyz, smcroute): our own interface,
#                 the daemon in the foreground, and a client with SMCRoute
#                 1.99's -a -r -j -l -k

SMCROUTE_SOCKET = "/run/smcroute.sock"
OTHER_SOCKET = {DEFAULT_SOCKET: SMCROUTE_SOCKET, SMCROUTE_SOCKET: DEFAULT_SOCKET}

HELP = """\
usage: %(prog)s [OPTIONS]                          run the daemon, in the foreground
       %(prog)s [-u SOCK] COMMAND [ARG ...]        send the daemon a command
       %(prog)s [-u SOCK] -a IIF SRC GRP OIF ...   add a route      (SMCRoute 1.99's
       %(prog)s [-u SOCK] -r IIF SRC GRP           remove a route    client options;
       %(prog)s [-u SOCK] -j IIF [SRC] GRP         join a group      several may follow
       %(prog)s [-u SOCK] -l IIF [SRC] GRP         leave a group     one another)
       %(prog)s [-u SOCK] -k                       stop the daemon
       %(prog)s [-u SOCK] -F FILE                  check a config file, and preview a reload

Daemon options:
  -f FILE            config file (default /etc/smcroute.conf, or /etc/NAME.conf with -i)
  -u SOCK            control socket (default /run/smcroute, or /run/NAME.sock with -i)
  -P FILE            PID file, written when ready (default /run/smcroute.pid)
  -G GROUP           let GROUP use the control socket (mode 0660): its members
                     may show and monitor; changes take root or CAP_NET_ADMIN
  -i NAME            identity: config, socket, PID file and syslog name, so that
                     several daemons can run side by side
  -t ID              use multicast routing table ID (needs `ip mrule` rules)
  -m SEC             router discovery (RFC 4286) interval, 4..180 (default 20)
  -c SEC             expire idle learned routes after SEC..2*SEC s (default 60, 0: never)
  -L N               keep at most N learned routes and stop filters, dropping the
                     oldest idle one for a new one (default %(max_learned)d)
  -e CMD             run CMD start|reload|install, never through a shell
  -d                 detach into the background, log to syslog
  -n                 stay in the foreground (the default), log to stderr
  -s                 log to syslog, also in the foreground
  -D                 debug log, same as --log-level debug
  --log-level LEVEL  none, error, warning, notice (default), info or debug
  -F FILE            check FILE: its problems, and what a reload would change
  -v, --version      print the version
  -h, --help         print this help
  (-I NAME is -i NAME)

Commands (also over the socket, one a line; see README):
  add IIF [SRC[/LEN]] GRP[/LEN] [OIF ...]    del IIF [SRC[/LEN]] GRP[/LEN] [OIF ...]
  join IIF [SRC[/LEN]] GRP[/LEN]             leave IIF [SRC[/LEN]] GRP[/LEN]
  show [routes|groups|interfaces|pending] [json|smcroute [detail]]
  flush   reload   check [FILE]   monitor   kill   version   help

Signals: HUP reloads the config, INT and TERM stop the daemon.
Exit codes: 0 ok, 1 the daemon refused a command, 64 usage, 69 routing table or
socket taken (daemon) or no daemon answers (client), 71 OS error, 76 no multicast
routing in the kernel, 77 not allowed (run as root), 78 bad config (-F).
"""

SMCROUTED_HELP = """\
usage: %(prog)s [-hnNsv] [-c SEC] [-d SEC] [-D SEC] [-e CMD] [-f FILE] [-F FILE]
       %(pad)s [-i NAME] [-l LEVEL] [-m SEC] [-P FILE] [-t ID] [-u FILE]

smcroute.py as SMCRoute 2.6.0's smcrouted:
  -c SEC     expire idle learned (*,G) routes after SEC..2*SEC s (default 60, 0: never)
  -d SEC     wait SEC seconds before reading interfaces and the config
  -D SEC     exit after SEC seconds
  -e CMD     run CMD start|reload|install, never through a shell
  -f FILE    config file (default /etc/NAME.conf)
  -F FILE    check FILE, print its problems, exit 0 or 78
  -h         this help
  -i NAME    identity: /etc/NAME.conf, /run/NAME.pid, /run/NAME.sock, syslog name
             (default smcroute); -I NAME is the same
  -l LEVEL   log level: none, err, warn, notice (default), info, debug, or a number
  -m SEC     router discovery (RFC 4286) interval, 4..180 (default 20)
  -n         stay in the foreground, log to stderr (default: detach, log to syslog)
  -N         accepted: VIFs are always created only where rules need them
  -p USER    not available: see README (Python's standard library cannot keep
             CAP_NET_ADMIN across a change of user; give the user the
             capabilities from outside instead, e.g. systemd's AmbientCapabilities=)
  -P FILE    PID file (default /run/NAME.pid)
  -s         log to syslog, also in the foreground
  -t ID      multicast routing table ID (needs `ip mrule` rules)
  -u FILE    control socket (default /run/NAME.sock)
  -v         print the version
"""

SMCROUTECTL_HELP = """\
usage: %(prog)s [-bdhjptv] [-i NAME] [-u FILE] [COMMAND [ARG ...]]

smcroute.py as SMCRoute 2.6.0's smcroutectl:
  -b         batch: read commands from standard input, one a line
  -d         detail: packet and byte counters in show
  -h         this help
  -i NAME    the daemon's identity: its socket is /run/NAME.sock; -I NAME is the same
  -j         show as JSON
  -p         plain headings: no terminal control codes
  -t         no headings
  -u FILE    the daemon's socket (default /run/smcroute.sock, else /run/smcroute)
  -v         print the version

Commands (any prefix, the first in this order: r is reload, rem remove):
  help | version | flush | kill | reload | restart
  show [routes | groups | interfaces | pending]
  add    IIF [SRC[/LEN]] GRP[/LEN] OIF [OIF ...]
  remove IIF [SRC[/LEN]] GRP[/LEN] [OIF ...]      (or del)
  join   IIF [SRC[/LEN]] GRP[/LEN]
  leave  IIF [SRC[/LEN]] GRP[/LEN]
"""


class UsageError(Exception):
    pass


def getopt(argv, shortopts, longopts=(), permute=True):
    """Options as glibc's getopt takes them: clustered (-pd), values
    attached (-uSOCK) or following (-u SOCK), anywhere among the arguments
    unless `permute` is off, `--` to end them; long options (NAME= for a
    value) by any unique prefix.  Returns ([(flag, value)], arguments)."""
    opts, args = [], []
    words = iter(argv)
    for word in words:
        if word == "--":
            args += words
        elif word.startswith("--"):
            name, equals, value = word[2:].partition("=")
            found = [o for o in longopts if o.rstrip("=") == name] or \
                [o for o in longopts if o.startswith(name)]
            if len(found) != 1:
                raise UsageError("%s option '%s'" % ("ambiguous" if found else "unrecognized", word))
            option = found[0]
            if option.endswith("=") and not equals:
                value = next(words, None)
                if value is None:
                    raise UsageError("option '--%s' requires an argument" % option[:-1])
            elif equals and not option.endswith("="):
                raise UsageError("option '--%s' doesn't allow an argument" % option)
            opts.append(("--" + option.rstrip("="), value))
        elif word.startswith("-") and word != "-":
            letters = word[1:]
            while letters:
                letter, letters = letters[0], letters[1:]
                spec = shortopts.find(letter)
                if letter == ":" or spec < 0:
                    raise UsageError("invalid option -- '%s'" % letter)
                if shortopts[spec + 1:spec + 2] != ":":
                    opts.append(("-" + letter, ""))
                    continue
                value = letters or next(words, None)
                if value is None:
                    raise UsageError("option requires an argument -- '%s'" % letter)
                opts.append(("-" + letter, value))
                break
        elif permute:
            args.append(word)
        else:
            args += [word] + list(words)
    return opts, args


# syslog's priority names in glibc's order (prioritynames), as SMCRoute
# matches them: the first name that a word begins, or that begins the word.
SYSLOG_LEVELS = (("alert", 1), ("crit", 2), ("debug", 7), ("emerg", 0), ("err", 3), ("error", 3),
                 ("info", 6), ("none", -1), ("notice", 5), ("panic", 0), ("warn", 4),
                 ("warning", 4))


def parse_level(text):
    if text.isdigit():
        return min(int(text), syslog.LOG_DEBUG)
    word = text.lower()
    for name, level in SYSLOG_LEVELS:
        if word and (name.startswith(word) or word.startswith(name)):
            return level
    raise UsageError("unknown log level %r, expected none, error, warning, notice, info, debug "
                     "or a number" % text)


def parse_seconds(flag, value, allowed=None):
    if not value.isdigit() or (allowed is not None and int(value) not in allowed):
        raise UsageError("%s needs a number of seconds%s" % (
            flag, "" if allowed is None else " from %d to %d" % (allowed[0], allowed[-1])))
    return int(value)


def parse_group_id(text):
    if text.isdigit():
        return int(text)
    import grp  # only for a daemon that shares its socket
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise UsageError("-G %s: no such group" % text) from None


class Options:
    """How to run the daemon, or which command to send it."""

    def __init__(self, default_socket):
        self.identity = IDENTITY
        self.default_socket = default_socket
        self.config = None          # these three follow the identity unless given
        self.socket = None
        self.pidfile = None
        self.expire = DEFAULT_EXPIRE
        self.max_learned = DEFAULT_MAX_LEARNED
        self.socket_group = None    # gid that may use the control socket too
        self.table = None
        self.mrdisc = MRDISC_INTERVAL
        self.script = None
        self.detach = False
        self.syslog = False
        self.delay = 0              # smcrouted -d
        self.lifetime = None        # smcrouted -D
        self.check = None
        self.commands = []          # each the words of a control command

    def daemon_option(self, flag, value):
        """The options every personality's daemon takes alike; False for
        one that is not among them."""
        if flag == "-f":
            self.config = value
        elif flag == "-u":
            self.socket = value
        elif flag == "-P":
            self.pidfile = value
        elif flag == "-F":
            self.check = value
        elif flag == "-s":
            self.syslog = True
        elif flag in ("-i", "-I"):
            if not value or "/" in value:
                raise UsageError("%s needs a name without '/'" % flag)
            self.identity = log.ident = value
        elif flag == "-t":
            if not (value.isdigit() and int(value) < 1 << 32):
                raise UsageError("-t needs a routing table number")
            self.table = int(value)
        elif flag == "-e":
            if not (os.path.isfile(value) and os.access(value, os.X_OK)):
                raise UsageError("-e %s: not an executable file" % value)
            self.script = os.path.abspath(value)
        elif flag == "-m":
            self.mrdisc = parse_seconds(flag, value, MRDISC_INTERVALS)
        elif flag == "-c":
            self.expire = parse_seconds(flag, value)
        else:
            return False
        return True

    def resolve(self):
        """Fill in the paths the identity implies, as SMCRoute names them."""
        if self.config is None:
            self.config = "/etc/%s.conf" % self.identity
        if self.pidfile is None:
            self.pidfile = "/run/%s.pid" % self.identity
        return self

    def socket_paths(self):
        """Where a client looks for the daemon: the socket given, else this
        personality's default then the other one, so that smcroute.py and
        SMCRoute's names find each other."""
        if self.socket is not None:
            return [self.socket]
        if self.identity != IDENTITY:
            return ["/run/%s.sock" % self.identity]
        return [self.default_socket, OTHER_SOCKET[self.default_socket]]

    def daemon_socket(self):
        return self.socket_paths()[0]


# The client side of the text protocol ----------------------------------------

CONNECT_TRIES = 30          # a daemon that is starting: SMCRoute's client waits 3 s
CONNECT_PAUSE = 0.1


class NoDaemon(Exception):
    """No daemon answers; the text says where we looked and what to do."""


def connect(options):
    """(socket, path): a connection to the daemon at the first path where
    one answers, retrying while the daemon is still starting."""
    paths = options.socket_paths()
    for path in paths:
        sock = Socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        for attempt in range(CONNECT_TRIES):
            try:
                sock.connect(path)
                return sock, path
            except (ConnectionRefusedError, BlockingIOError) as exc:
                error = exc
                if os.path.isdir(path) or attempt + 1 == CONNECT_TRIES:
                    break
                time.sleep(CONNECT_PAUSE)
            except OSError as exc:
                error = exc
                break
        sock.close()
        if len(paths) > 1 and isinstance(error, (FileNotFoundError, ConnectionRefusedError)):
            continue
        raise NoDaemon(no_daemon_text(path, error, explicit=len(paths) == 1))
    raise NoDaemon(no_daemon_text(" nor ".join(paths), error, explicit=False))


def no_daemon_text(path, error, explicit):
    """SMCRoute 2.6.0's two lines for a path the user gave, then our hint."""
    lines = []
    if isinstance(error, FileNotFoundError):
        lines.append("Cannot find IPC socket %s" % path)
    lines.append("Failed connecting to daemon: %s" % describe(error))
    if os.path.isdir(path):
        lines.append("%s is a directory: give -u the daemon's socket file in it" % path)
    elif isinstance(error, PermissionError):
        lines.append("the daemon's socket is root's: run this as root")
    elif isinstance(error, ConnectionRefusedError):
        lines.append("nothing answers on %s: is the daemon running?" % path)
    elif not explicit:
        lines.append("is the daemon running? give its socket with -u FILE, or its identity "
                     "with -i NAME")
    return lines


def reply_error(final):
    """The error text of a reply's final line, or None when it succeeded."""
    if final.startswith("error:"):
        return final[len("error:"):].strip()
    if final.startswith('{"error":'):
        import json
        return json.loads(final)["error"]
    return None


def send_command(sock, words):
    """Send one command line; returns (data lines, final line)."""
    sock.sendall((" ".join(words) + "\n").encode())
    lines = []
    for line in reply_lines(sock):
        if line == "ok" or line.startswith(("error:", "{")):
            return lines, line
        lines.append(line)
    return lines, "error: the daemon closed the connection"


def reply_lines(sock):
    """The lines the daemon sends, as they come."""
    pending = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            yield str(line, "utf-8", "replace")


def run_commands(options, prog):
    """smcroute.py as a client: each command's data lines, in order; 1 at
    the first the daemon refuses, 69 when no daemon answers."""
    try:
        sock, _ = connect(options)
    except NoDaemon as exc:
        for line in exc.args[0]:
            sys.stderr.write("%s: %s\n" % (prog, line))
        return EX_UNAVAILABLE
    with sock:
        for words in options.commands:
            lines, final = send_command(sock, words)
            for line in lines:
                print(line)
            error = reply_error(final)
            if error is not None:
                sys.stderr.write("%s: error: %s\n" % (prog, error))
                return EX_FAIL
            if final != "ok":
                print(final)
    return EX_OK


def check_config(path, options):
    """Print a config file's problems; when a daemon answers, also what a
    reload of the file would change there."""
    config = read_config(path)
    for severity, text in config.problems:
        print("%s: %s" % (severity, text))
    for text in absent_interfaces(config):
        print("warning: " + text)
    if config.error_count:
        return EX_CONFIG
    try:
        sock, where = connect(options)
    except NoDaemon:
        return EX_OK                # no daemon: nothing to compare with
    with sock:
        lines, final = send_command(sock, ["check", os.path.abspath(path)])
    if final == "ok":
        print("a reload of %s would change, in the daemon at %s:" % (path, where))
        for line in lines:
            print("  " + line)
    return EX_OK


# smcroutectl's rendering of SMCRoute's tables ----------------------------------

DEFAULT_WIDTH = 79          # plain-mode rules, and the width when the terminal does not answer
UNDERLINE, REVERSE, NORMAL = "\033[4m", "\033[7m", "\033[0m"
# The cursor-position query: save the cursor, reset the scroll region, move
# as far right and down as the terminal goes, ask where the cursor is; then
# restore it.  The answer is ESC [ row ; column R.
CURSOR_QUERY = b"\0337\033[r\033[999;999H\033[6n"
CURSOR_RESTORE = b"\0338"
PROBE_TIMEOUT = 0.3         # seconds, as strace shows 2.6.0 waiting on stdin
ANSWER_MAX = 32


def heading(mark, text, plain, width):
    """A title (`_`) or column header (`=`) line as smcroutectl prints it."""
    if plain:
        # A header longer than the default gets a rule as long as itself;
        # title rules are always the default's length in 2.6.0.
        rule = mark * (max(DEFAULT_WIDTH, len(text)) if mark == HEADER_MARK else DEFAULT_WIDTH) + "\n"
        return rule + text + "\n" + (rule if mark == HEADER_MARK else "")
    if mark == TITLE_MARK:
        return UNDERLINE + " " * width() + NORMAL + "\n" + text + "\n"
    # abs(): a header wider than the terminal gets padded, not cut (2.6.0).
    return REVERSE + text + " " * abs(width() - len(text)) + NORMAL + "\n"


def render(reply, plain, headings, width):
    """smcroutectl's stdout for a show reply, a line at a time; `width` is
    called before each heading (unless plain), so that writing each piece
    before taking the next puts the terminal query where 2.6.0 does.  A
    non-empty reply ends in a blank line."""
    if not reply:
        return
    for line in reply.split("\n"):
        mark = line[-1:]
        if mark not in (TITLE_MARK, HEADER_MARK):
            yield line + "\n"
        elif headings:
            yield heading(mark, line[:-1], plain, width)


def cursor_column(data):
    """The column of the last ESC[row;colR in data, or None."""
    start = data.rfind(b"\033[")
    end = data.find(b"R", start)
    row, sep, col = data[start + 2:end].partition(b";")
    if start < 0 or end < 0 or not (sep and row.isdigit() and col.isdigit() and int(col)):
        return None
    return int(col)


def terminal_width(query_fd=2, answer_fd=0):
    """smcroutectl's width probe: the query goes to stderr with echo and
    canonical mode off, the answer is read from stdin; DEFAULT_WIDTH when
    none comes.  Neither COLUMNS nor the window size counts, as in 2.6.0."""
    import termios
    try:
        saved = termios.tcgetattr(query_fd)
        mode = termios.tcgetattr(query_fd)
        mode[3] &= ~(termios.ICANON | termios.ECHO)
        mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
        termios.tcsetattr(query_fd, termios.TCSANOW, mode)
    except (termios.error, OSError):
        saved = None
    answer = b""
    try:
        write_all(query_fd, CURSOR_QUERY)
        poller = select.poll()
        poller.register(answer_fd, select.POLLIN)
        deadline = time.monotonic() + PROBE_TIMEOUT
        while b"R" not in answer and len(answer) < ANSWER_MAX:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                break
            chunk = os.read(answer_fd, ANSWER_MAX)
            if not chunk:
                break               # stdin is /dev/null: no terminal answers
            answer += chunk
        write_all(query_fd, CURSOR_RESTORE)
    except OSError:
        pass
    finally:
        if saved is not None:
            try:
                termios.tcsetattr(query_fd, termios.TCSANOW, saved)
            except (termios.error, OSError):
                pass
    return cursor_column(answer) or DEFAULT_WIDTH


def write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def write_show(reply, plain, headings):
    """Print a show reply as smcroutectl does, asking the terminal for its
    width before each heading unless plain."""
    pending = []

    def flush():
        write_all(1, "".join(pending).encode("utf-8", "replace"))
        del pending[:]

    def width():
        flush()                     # what came before the heading is on the screen first
        return terminal_width()

    pending.extend(render(reply, plain, headings, width))
    flush()


# The personalities ----------------------------------------------------------------

def smcroute_main(prog, argv):
    """Our own interface: the daemon in the foreground (or -d), a client for
    any command, and SMCRoute 1.99's client options, each taking the words
    after it up to the next option."""
    options = Options(DEFAULT_SOCKET)
    rest, command = [], None
    for word in argv:
        if word in CLIENT_FLAGS:
            command = [CLIENT_FLAGS[word]]
            options.commands.append(command)
        elif command is not None and not word.startswith("-"):
            command.append(word)
        else:
            command = None          # another option ends the command's words
            rest.append(word)
    opts, args = getopt(rest, "hvdnsDf:u:P:F:c:i:I:t:e:m:L:G:", ("log-level=", "help", "version"))
    for flag, value in opts:
        if flag in ("-h", "--help"):
            sys.stdout.write(HELP % {"prog": prog, "max_learned": DEFAULT_MAX_LEARNED})
            return EX_OK
        if flag in ("-v", "--version"):
            print("smcroute.py %s" % VERSION)
            return EX_OK
        if options.daemon_option(flag, value):
            continue
        if flag == "-d":
            options.detach = True
        elif flag == "-D":
            log.level = syslog.LOG_DEBUG
        elif flag == "--log-level":
            log.level = parse_level(value)
        elif flag == "-G":
            options.socket_group = parse_group_id(value)
        elif flag == "-L":
            if not (value.isdigit() and int(value) > 0):
                raise UsageError("-L needs a number of routes, at least 1")
            options.max_learned = int(value)
    if args:
        if options.commands:
            raise UsageError("give a COMMAND or client options (-a -r -j -l -k), not both")
        options.commands.append(args)
    options.resolve()
    if options.check is not None:
        return check_config(options.check, options)
    if options.commands:
        return run_commands(options, prog)
    return run_daemon(options)


CLIENT_FLAGS = {"-a": "add", "-r": "del", "-j": "join", "-l": "leave", "-k": "kill"}


def smcrouted_main(prog, argv):
    options = Options(SMCROUTE_SOCKET)
    options.detach = True
    opts, args = getopt(argv, "c:d:D:e:f:F:hI:i:l:m:nNp:P:st:u:v")
    if args:
        raise UsageError("unexpected argument %r" % args[0])
    for flag, value in opts:
        if flag == "-h":
            sys.stdout.write(SMCROUTED_HELP % {"prog": prog, "pad": " " * len(prog)})
            return EX_OK
        if flag == "-v":
            print("smcroute.py %s (SMCRoute 2.6.0 compatible)" % VERSION)
            return EX_OK
        if options.daemon_option(flag, value):
            continue
        if flag == "-n":
            options.detach = False
        elif flag == "-l":
            log.level = parse_level(value)
        elif flag == "-d":
            options.delay = parse_seconds(flag, value)
        elif flag == "-D":
            options.lifetime = parse_seconds(flag, value)
        elif flag == "-p":
            raise UsageError(
                "-p %s: cannot drop to a user and keep CAP_NET_ADMIN and CAP_NET_RAW: that takes "
                "prctl() and capset(), which Python's standard library cannot call, and the daemon "
                "never runs half-dropped. Start it as that user with the capabilities instead, "
                "e.g. systemd's User= and AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW" % value)
    options.resolve()
    if options.check is not None:
        return check_config(options.check, options)
    return run_daemon(options)


# smcroutectl's commands in its table order, which decides prefixes: "r" is
# reload, "rem" remove, "s g" show groups.
SMCROUTECTL_COMMANDS = ("help", "version", "flush", "kill", "reload", "restart", "show", "add",
                        "remove", "del", "join", "leave")
SMCROUTECTL_TEXT = {"flush": "flush", "kill": "kill", "reload": "reload", "restart": "reload",
                    "add": "add", "remove": "del", "del": "del", "join": "join", "leave": "leave"}


def smcroutectl_main(prog, argv):
    options = Options(SMCROUTE_SOCKET)
    view = {"detail": False, "json": False, "plain": False, "headings": True}
    batch = False
    opts, args = getopt(argv, "bdhI:i:jptu:v")
    for flag, value in opts:
        if flag == "-h":
            sys.stdout.write(SMCROUTECTL_HELP % {"prog": prog})
            return EX_OK
        if flag == "-v":
            print("smcroute.py %s (SMCRoute 2.6.0 compatible)" % VERSION)
            return EX_OK
        if flag == "-b":
            batch = True
        elif flag in ("-u", "-i", "-I"):
            options.daemon_option(flag, value)
        else:
            view[{"-d": "detail", "-j": "json", "-p": "plain", "-t": "headings"}[flag]] = flag != "-t"
    if batch:
        commands = [line.split() for line in sys.stdin if line.strip() and not line.lstrip().startswith("#")]
    else:
        commands = [args or ["show"]]
    status = EX_OK
    for words in commands:
        status = max(status, smcroutectl_command(prog, options, words, view))
    return status


def smcroutectl_command(prog, options, words, view):
    names = [name for name in SMCROUTECTL_COMMANDS if name.startswith(words[0].lower())]
    if not names:
        sys.stderr.write("%s: unknown command %r, see %s -h\n" % (prog, words[0], prog))
        return EX_FAIL
    name, args = names[0], words[1:]
    if name == "help":
        sys.stdout.write(SMCROUTECTL_HELP % {"prog": prog})
        return EX_OK
    if name == "version":
        print("smcroute.py %s (SMCRoute 2.6.0 compatible)" % VERSION)
        return EX_OK
    if name == "show":
        form = "json" if view["json"] else "smcroute detail" if view["detail"] else "smcroute"
        text = ["show", smcroute_topic(args), form]
    else:
        text = [SMCROUTECTL_TEXT[name]] + args
    try:
        sock, _ = connect(options)
    except NoDaemon as exc:
        for line in exc.args[0]:
            sys.stderr.write("%s: %s\n" % (prog, line))
        return EX_FAIL
    with sock:
        lines, final = send_command(sock, text)
    error = reply_error(final)
    if error is not None:
        sys.stderr.write("%s: %s\n" % (prog, error))
        return EX_FAIL
    if final.startswith("{"):
        sys.stdout.write(final + "\n\n")
    elif name == "show":
        sys.stdout.flush()
        write_show("".join(line + "\n" for line in lines), view["plain"], view["headings"])
    return EX_OK


PERSONALITIES = {"smcrouted": smcrouted_main, "smcroutectl": smcroutectl_main}


def run_daemon(options):
    if options.detach or options.syslog:
        warn_without_syslog()
    if options.syslog:
        log.use_syslog()
    status_fd = detach() if options.detach else None
    if options.delay:
        time.sleep(options.delay)

    def ready():
        nonlocal status_fd
        if status_fd is not None:
            become_daemon(status_fd)
            status_fd = None
    daemon = Daemon(options, ready)
    status = EX_OK
    try:
        daemon.start()
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


def absent_interfaces(config):
    """What a config names that no interface here is: rules would wait for
    it, maybe for ever if it is a typo.  In config order."""
    present = [name for _, name in _socket.if_nameindex()]

    def absent(names):
        return [n for n in names if not any(name_matches(n, name) for name in present)]
    found = []
    checked = {}
    for key, rule in config.rules.all_exact():
        names = checked.get((rule.iif, rule.oifs))
        if names is None:
            names = checked[(rule.iif, rule.oifs)] = absent((rule.iif,) + rule.oifs)
        if names:
            found.append((rule.origin, "mroute " + route_text(rule.iif, *split_key_text(key), rule.oifs),
                          names))
    for route in config.rules.all_templates():
        found.append((route.origin, "mroute " + route_text(route.iif, route.source, route.group, route.oifs),
                      absent((route.iif,) + route.oifs)))
    for membership in config.memberships.values():
        found.append((membership.origin, "mgroup %s" % membership, absent((membership.iif,))))
    for phyint in config.phyints.values():
        found.append((phyint.origin, "phyint %s" % phyint.name, absent((phyint.name,))))
    return ["%s: %s: no interface %s here (yet): %s" % (
        config.origins.text(origin), what, " nor ".join(names),
        "it waits for it" if len(names) == 1 else "it waits for them")
        for origin, what, names in sorted(found, key=lambda item: item[0]) if names]


SYSLOG_SOCKET = "/dev/log"


def syslog_listens():
    with Socket(_socket.AF_UNIX, _socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(SYSLOG_SOCKET)
        except OSError:
            return False
    return True


def warn_without_syslog():
    """Logging to syslog where nothing listens (a container, a minimal
    system) loses every message: say so while a terminal still sees it."""
    if not syslog_listens():
        sys.stderr.write("%s: warning: nothing listens on %s, so the daemon's log messages will "
                         "be lost; run it in the foreground without -s to see them\n"
                         % (log.ident, SYSLOG_SOCKET))


def detach():
    """Fork into the background; the parent exits with the child's start-up
    status, so a failed start is visible where the daemon was started."""
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


def program_name(path):
    """The personality a path names: smcrouted, smcroutectl, or our own;
    an extension (.py, .pyz) does not count."""
    return os.path.basename(path).split(".")[0]


def main(argv=None):
    argv = sys.argv if argv is None else argv
    prog = os.path.basename(argv[0])
    personality = PERSONALITIES.get(program_name(argv[0]), smcroute_main)
    try:
        return personality(prog, argv[1:])
    except UsageError as exc:
        sys.stderr.write("%s: %s\n" % (prog, exc))
        sys.stderr.write("Try '%s -h' for more information.\n" % prog)
        return EX_FAIL if personality is smcroutectl_main else EX_USAGE


if __name__ == "__main__":
    sys.exit(main())
