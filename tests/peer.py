"""A multicast sender or receiver, run inside a test namespace.

    peer.py send IFNAME GROUP PORT COUNT [--ttl N] [--source ADDR] [--gap SEC]
    peer.py recv IFNAME PORT GROUP...

`recv` joins the groups on IFNAME, prints "ready", counts the datagrams
that arrive, and when its standard input closes prints the count per
group as JSON.
"""

import argparse
import json
import selectors
import socket
import struct
import sys
import time


def family_of(group):
    return socket.AF_INET6 if ":" in group else socket.AF_INET


def send(args):
    family = family_of(args.group)
    index = socket.if_nametoindex(args.ifname)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, args.ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                        struct.pack("@4s4si", bytes(4), bytes(4), index))
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, args.ttl)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    if args.source:
        sock.bind((args.source, 0))
    for n in range(args.count):
        sock.sendto(b"smcroute test %d" % n, (args.group, args.port))
        time.sleep(args.gap)


def membership(group, index):
    if family_of(group) == socket.AF_INET:
        req = struct.pack("@4s4si", socket.inet_aton(group), bytes(4), index)
        return socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, req
    req = struct.pack("@16sI", socket.inet_pton(socket.AF_INET6, group), index)
    return socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, req


def receive(args):
    index = socket.if_nametoindex(args.ifname)
    selector = selectors.DefaultSelector()
    counts = {}
    for group in args.groups:
        sock = socket.socket(family_of(group), socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.ifname.encode())
        sock.bind((group, args.port))
        sock.setsockopt(*membership(group, index))
        selector.register(sock, selectors.EVENT_READ, group)
        counts[group] = 0
    selector.register(sys.stdin, selectors.EVENT_READ, None)
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            if key.data is None:
                if not sys.stdin.readline():
                    print(json.dumps(counts), flush=True)
                    return
                continue
            key.fileobj.recv(2048)
            counts[key.data] += 1


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("send")
    s.add_argument("ifname")
    s.add_argument("group")
    s.add_argument("port", type=int)
    s.add_argument("count", type=int)
    s.add_argument("--ttl", type=int, default=8)
    s.add_argument("--source")
    s.add_argument("--gap", type=float, default=0.02)
    r = sub.add_parser("recv")
    r.add_argument("ifname")
    r.add_argument("port", type=int)
    r.add_argument("groups", nargs="+")
    args = parser.parse_args()
    send(args) if args.mode == "send" else receive(args)


if __name__ == "__main__":
    main()
