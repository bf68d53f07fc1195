"""IGMP on one interface, as a snooping switch there would see it.

    igmpcap.py IFNAME

Run inside a test namespace.  Captures with an AF_PACKET socket bound to
IFNAME, prints "ready", then one JSON object per IPv4 IGMP frame with
every header field decoded.  Commands on standard input:

    solicit [SIZE] [bad]    send an RFC 4286 Solicitation (SIZE 4 or 8
                            bytes, `bad`: with a wrong checksum) to
                            224.0.0.2 out of IFNAME, TTL 1, router alert
    (end of input)          exit

The test side is Capture, which runs this in a namespace and reads its
frames with timeouts.
"""

import json
import os
import queue
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time

ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
PACKET_OUTGOING = 4
ROUTER_ALERT = b"\x94\x04\x00\x00"


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def mac(raw):
    return ":".join("%02x" % b for b in raw)


def decode(frame, pkttype):
    """The fields of an Ethernet + IPv4 + IGMP frame, or None for others."""
    if len(frame) < 34 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0xF) * 4
    total = struct.unpack_from("!H", ip, 2)[0]
    if ip[9] != socket.IPPROTO_IGMP or len(ip) < total or total < ihl + 4:
        return None
    igmp = ip[ihl:total]
    fields = {
        "time": time.monotonic(), "outgoing": pkttype == PACKET_OUTGOING,
        "eth_dst": mac(frame[0:6]), "eth_src": mac(frame[6:12]),
        "version": ip[0] >> 4, "ihl": ip[0] & 0xF, "options": ip[20:ihl].hex(),
        "total_length": total, "ttl": ip[8], "protocol": ip[9],
        "src": socket.inet_ntoa(ip[12:16]), "dst": socket.inet_ntoa(ip[16:20]),
        "ip_checksum_ok": checksum(ip[:ihl]) == 0,
        "igmp": igmp.hex(), "type": igmp[0], "code": igmp[1],
        "igmp_checksum_ok": checksum(igmp) == 0,
    }
    if len(igmp) >= 8:
        fields["query_interval"], fields["robustness"] = struct.unpack_from("!HH", igmp, 4)
    return fields


def solicitation(size=4, bad=False):
    message = bytearray(size)
    message[0] = 0x31
    struct.pack_into("!H", message, 2, checksum(bytes(message)) ^ (0xFFFF if bad else 0))
    return bytes(message)


def solicit(ifname, size, bad):
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, ROUTER_ALERT)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                    struct.pack("@4s4si", bytes(4), bytes(4), socket.if_nametoindex(ifname)))
    sock.sendto(solicitation(size, bad), ("224.0.0.2", 0))
    sock.close()


def main():
    ifname = sys.argv[1]
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
    sock.bind((ifname, 0))
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    print("ready", flush=True)
    pending = b""                       # not sys.stdin: its buffer would hide lines from select
    while True:
        for key, _ in selector.select():
            if key.fileobj is sock:
                frame, address = sock.recvfrom(65535)
                fields = decode(frame, address[2])
                if fields is not None:
                    print(json.dumps(fields), flush=True)
                continue
            data = os.read(sys.stdin.fileno(), 4096)
            if not data:
                return
            *lines, pending = (pending + data).split(b"\n")
            for words in (line.split() for line in lines):
                if words and words[0] == b"solicit":
                    solicit(ifname, int(words[1]) if len(words) > 1 else 4, b"bad" in words)


# Test side -------------------------------------------------------------------

def expected(msgtype, code):
    """The fields of an RFC 4286 message from a router, as SMCRoute sends
    it: to All-Snoopers, link-local with router alert, 8 bytes of IGMP
    with no querier's Query Interval or Robustness Variable."""
    return {
        "eth_dst": "01:00:5e:00:00:6a",         # 224.0.0.106 mapped to MAC
        "version": 4, "ihl": 6, "options": "94040000",
        "total_length": 24 + 8, "ttl": 1, "protocol": 2, "dst": "224.0.0.106",
        "ip_checksum_ok": True,
        "type": msgtype, "code": code, "igmp_checksum_ok": True,
        "query_interval": 0, "robustness": 0,
    }


class Capture:
    """igmpcap.py running in namespace `netns` on `ifname`; frames() and
    next() return the frames it saw arrive (not those it sent)."""

    def __init__(self, netns, ifname="eth0"):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, __file__, ifname],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("igmpcap did not start in %s" % netns)
        self.lines = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def next(self, timeout, types=(0x30, 0x31, 0x32)):
        """The next incoming IGMP frame of one of `types` within `timeout`
        seconds, or None."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if item is None:
                return None
            if "type" in item and not item["outgoing"] and item["type"] in types:
                return item

    def frames(self, duration, types=(0x30, 0x31, 0x32)):
        """Every such frame that arrives within `duration` seconds."""
        deadline = time.monotonic() + duration
        found = []
        while True:
            item = self.next(deadline - time.monotonic(), types)
            if item is None:
                return found
            found.append(item)

    def solicit(self, size=4, bad=False):
        """Send a Solicitation; returns when it went out (time.monotonic())."""
        self.proc.stdin.write("solicit %d%s\n" % (size, " bad" if bad else ""))
        self.proc.stdin.flush()
        return time.monotonic()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    main()
