"""The control protocol's framing, without a kernel: one Client on a
socketpair, with a command table that echoes."""

import selectors
import socket

import pytest

from smcroute import MAX_LINE, Client, CommandError, split_source_group


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
