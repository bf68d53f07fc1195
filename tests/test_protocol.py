"""The control protocol's framing, without a kernel: one Client on a
socketpair, with a command table that echoes."""

import os
import selectors
import socket
import struct

import pytest

from smcroute import MAX_LINE, Client, CommandError, pack_request, parse_request, split_source_group


class Echo:
    def execute(self, line, client):
        return ["you said " + line, "ok"]


class Server:
    """What a Client needs of the ControlServer."""

    def __init__(self):
        self.control = Echo()
        self.events = None
        self.forgotten = False
        self.monitors = set()

    def watch(self, client):
        self.events = selectors.EVENT_WRITE if client.outbuf else selectors.EVENT_READ

    def forget(self, client):
        self.forgotten = True


@pytest.fixture
def pair():
    """(client, peer socket, server)"""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(5)
    server = Server()
    yield Client(ours, server), peer, server
    peer.close()


def talk(client, peer, data):
    peer.sendall(data)
    client.on_event(selectors.EVENT_READ)
    peer.setblocking(False)
    try:
        return peer.recv(65536).decode()
    except BlockingIOError:
        return ""
    finally:
        peer.setblocking(True)


def test_commands_in_one_read_are_answered_in_order(pair):
    client, peer, _ = pair
    assert talk(client, peer, b"a\nb\n") == "you said a\nok\nyou said b\nok\n"


def test_a_partial_line_waits_for_its_newline(pair):
    client, peer, _ = pair
    assert talk(client, peer, b"ver") == ""
    assert talk(client, peer, b"sion\n") == "you said version\nok\n"


def test_blank_and_comment_lines_get_no_reply(pair):
    client, peer, _ = pair
    assert talk(client, peer, b"\n   \n# note\nx\n") == "you said x\nok\n"


def test_a_too_long_line_gets_one_error_and_the_next_line_is_served(pair):
    client, peer, _ = pair
    reply = talk(client, peer, b"y" * (MAX_LINE * 3))
    assert reply == "error: line too long, at most %d bytes\n" % MAX_LINE
    assert talk(client, peer, b"y" * 500 + b"\nnext\n") == "you said next\nok\n"


def test_a_line_of_exactly_the_limit_is_served(pair):
    client, peer, _ = pair
    line = b"z" * MAX_LINE
    assert talk(client, peer, line + b"\n") == "you said %s\nok\n" % line.decode()


def test_the_last_line_is_answered_at_end_of_input_then_closed(pair):
    client, peer, server = pair
    peer.sendall(b"last")
    peer.shutdown(socket.SHUT_WR)
    client.on_event(selectors.EVENT_READ)
    client.on_event(selectors.EVENT_READ)
    assert peer.recv(100) == b"you said last\nok\n"
    assert server.forgotten and client.sock is None


def test_no_reading_while_a_reply_is_unsent(pair):
    client, peer, server = pair
    client.outbuf += b"x" * (1 << 20)          # a reply the peer has not taken yet
    client.flush()
    assert client.outbuf and server.events is None
    client.on_event(selectors.EVENT_WRITE)
    assert server.events == selectors.EVENT_WRITE
    peer.sendall(b"queued\n")
    client.on_event(selectors.EVENT_READ)      # spurious: the loop only asks for writes now
    assert b"queued" not in client.inbuf


def test_a_peer_that_vanished_is_dropped(pair):
    client, peer, server = pair
    peer.close()
    client.reply(["anything"])
    assert server.forgotten and client.sock is None


@pytest.mark.parametrize("words, split", [
    (["225.1.2.3", "eth1"], (None, "225.1.2.3", ["eth1"])),
    (["10.0.0.1", "225.1.2.3", "eth1"], ("10.0.0.1", "225.1.2.3", ["eth1"])),
    (["10.0.0.0/24", "225.1.0.0/16"], ("10.0.0.0/24", "225.1.0.0/16", [])),
    (["fd00::1", "ff2e::1"], ("fd00::1", "ff2e::1", [])),
    (["1.2.3.4", "eth1"], (None, "1.2.3.4", ["eth1"])),     # so the error says 1.2.3.4 is no group
    (["225.1.2.3"], (None, "225.1.2.3", [])),
])
def test_the_source_is_optional(words, split):
    assert split_source_group(words, "usage") == split


def test_no_group_is_a_usage_error():
    with pytest.raises(CommandError, match="usage: add IIF"):
        split_source_group([], "add IIF ...")


# SMCRoute's binary requests, on the same socket -------------------------------

class Binary(Echo):
    def execute_binary(self, cmd, words, client):
        return "%s %s" % (cmd, " ".join(words))


@pytest.fixture
def binary_pair(pair):
    client, peer, server = pair
    server.control = Binary()
    return client, peer, server


CAPTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "captures-2.6.0")


@pytest.mark.parametrize("capture, cmd, words", [
    ("req-add", "a", ["a1", "10.0.0.1", "225.7.7.7", "b1", "b2"]),
    ("req-add-len", "a", ["a1", "10.0.0.0/24", "225.4.4.0/24", "b1"]),
    ("req-show", "s", []),
    ("req-d-show", "S", []),
    ("req-p-show-groups", "s", ["groups"]),
    ("req-join-ssm", "j", ["a1", "10.0.0.1", "232.1.1.1"]),
])
def test_requests_are_packed_and_parsed_as_smcroutectl_sends_them(capture, cmd, words):
    with open(os.path.join(CAPTURES, capture + ".bin"), "rb") as sent:
        request = sent.read()
    assert pack_request(cmd, words) == request
    assert parse_request(request) == (cmd, words, len(request))


def test_binary_requests_are_told_from_text_and_answered_with_a_nul(binary_pair):
    client, peer, _ = binary_pair
    assert talk(client, peer, pack_request("j", ["a1", "225.1.1.1"])) == "j a1 225.1.1.1\0"


def test_concatenated_requests_each_get_a_reply_then_the_connection_closes(binary_pair):
    client, peer, server = binary_pair
    both = pack_request("F", []) + pack_request("s", ["groups"])
    assert talk(client, peer, both) == "F \0s groups\0"
    assert server.forgotten and client.sock is None


def test_a_request_split_across_reads_waits_for_its_end(binary_pair):
    client, peer, _ = binary_pair
    request = pack_request("l", ["a1", "225.1.1.1"])
    assert talk(client, peer, request[:20]) == ""
    assert talk(client, peer, request[20:]) == "l a1 225.1.1.1\0"


@pytest.mark.parametrize("request_, error", [
    (struct.pack("=Q", 5000) + bytes(8), "bad request length 5000"),
    (struct.pack("=QHH4x", 18, 7, 0) + b"\0\0", "no command 0x7"),
    (struct.pack("=QHH4x", 18, ord("s"), 0) + b"x\0", "words not NUL-terminated"),
    (struct.pack("=QHH4x", 18, ord("a"), 1) + b"ab", "words not NUL-terminated"),
    (struct.pack("=QHH4x", 21, ord("a"), 1) + b"a\0b\0\0", "request of 2 words says 1"),
])
def test_a_malformed_request_gets_an_error_and_is_closed(binary_pair, request_, error):
    client, peer, server = binary_pair
    assert talk(client, peer, request_) == "Malformed IPC message: %s\0" % error
    assert server.forgotten
