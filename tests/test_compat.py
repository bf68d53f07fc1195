"""SMCRoute 2.6.0 compatibility, byte for byte.

captures-2.6.0/ holds what SMCRoute 2.6.0's smcroutectl printed, and what
its smcrouted replied, for a known lab state, and capture.sh, the script
that made them.  Here capture.sh runs the same lab again:

- against our smcrouted and smcroutectl (smcroute.py under those names), as
  a plain file for the main lab and as the zipapp for the variants;
- with Debian's C smcroutectl (2.5.6) driving our daemon over SMCRoute's
  binary protocol.

Every capture must equal its fixture, but where 2.6.0 has a bug that we do
not copy: FIXED says which, why, and what we print instead.  Our JSON has
extra keys (counters, interface state, what a pending rule waits for) after
2.6.0's; they are compared without them.
"""

import json
import os
import shutil
import subprocess

import pytest
from conftest import require_root
from netbed import DAEMON
from test_pyz import build

HERE = os.path.dirname(os.path.abspath(__file__))
CAPTURES = os.path.join(HERE, "captures-2.6.0")
C_CLIENT = "/usr/sbin/smcroutectl"
NOT_FIXTURES = (".hex", ".log", ".txt", ".sh", ".md", ".conf")
VARIANTS = {
    "variant-long": ["-s", "long"],
    "variant-unused-longif": ["-s", "basic", "-b", "b2-long-ifname0", "-c",
                              os.path.join(CAPTURES, "variant-unused-longif", "smcroute.conf")],
    "variant-empty": ["-s", "basic", "-c", "/dev/null"],
    "variant-ssm-only": ["-s", "basic", "-c", os.path.join(CAPTURES, "variant-ssm-only", "smcroute.conf")],
}
JSON_CAPTURES = ("j-", "jd-", "jp-", "raw-reply-J")
EXTRA_KEYS = {"packets", "bytes", "state", "multicast", "ttl", "origin", "waits_for"}
NOTHING_PENDING = "No pending routes or groups\n\n"
LEARNED = ("(10.0.0.1, 225.3.1.1)", "(10.0.0.1, 225.4.4.7)", "(fd00::1, ff2e::2)", "(10.0.0.1, 225.5.5.5)")

# capture -> (what 2.6.0 does wrong, a check of what we print instead)
FIXED = {
    "after-flush-p-show.out": ("its first `flush` leaves the learned routes",
                               lambda out: not any(pair in out for pair in LEARNED)
                               and "(10.0.0.1, 225.1.2.3)" in out),
    "after-reload-p-show.out": ("(the flush before it took the learned routes)",
                                lambda out: not any(pair in out for pair in LEARNED)),
    "cmd-add-unknown-iif.err": ("its error reply is its last log line",
                                lambda out: out == "smcroutectl: no interface nosuch0\n"),
    "cmd-remove-missing.err": ("its error reply is its last log line",
                               lambda out: out == "smcroutectl: no such route: (10.0.0.1, 225.6.6.6) "
                                                  "from a1\n"),
    "cmd-leave-missing.err": ("its error reply is its last log line",
                              lambda out: out == "smcroutectl: not joined: (*, 225.7.7.10) on a1\n"),
    "raw-reply-r-missing.bin": ("its error reply is its last log line",
                                lambda out: out == "no such route: (10.0.0.1, 225.6.6.6) from a1\0"),
    "cmd-bogus.out": ("an unknown command is taken for `show`, exit 0", lambda out: out == ""),
    "cmd-bogus.err": ("an unknown command is taken for `show`, exit 0",
                      lambda out: out == "smcroutectl: unknown command 'bogus', see smcroutectl -h\n"),
    # With nothing pending, 2.6.0 adds its last log line to the reply.
    "p-show-pending.out": ("a stale log line after 'No pending ...'", lambda out: out == NOTHING_PENDING),
    "raw-reply-s-pending.bin": ("a stale log line after 'No pending ...'",
                                lambda out: out == NOTHING_PENDING[:-1] + "\0"),
}


def capture(out, daemon, client, *args):
    """Run capture.sh into `out` with these programs; the capture names."""
    ran = subprocess.run(["bash", os.path.join(CAPTURES, "capture.sh")] + list(args)
                         + [daemon, client, out], capture_output=True, text=True, timeout=180)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return out


def named(folder, program, source):
    """A copy of `source` called `program` (capture.sh resolves symlinks, and
    the name chooses the personality)."""
    path = os.path.join(folder, program)
    shutil.copy(source, path)
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """{"file"|"pyz": (smcrouted, smcroutectl)}"""
    require_root()
    folder = tmp_path_factory.mktemp("programs")
    pyz = str(folder / "smcroute.pyz")
    build(pyz)
    found = {}
    for form, source in (("file", DAEMON), ("pyz", pyz)):
        os.mkdir(str(folder / form))
        found[form] = tuple(named(str(folder / form), name, source) for name in ("smcrouted", "smcroutectl"))
    return found


def without_extras(data):
    if isinstance(data, dict):
        return {key: without_extras(value) for key, value in data.items() if key not in EXTRA_KEYS}
    if isinstance(data, list):
        return [without_extras(item) for item in data]
    return data


def json_text(raw):
    """2.6.0's JSON text from ours: the same document without our extra keys."""
    end = raw.rindex("}") + 1
    return json.dumps(without_extras(json.loads(raw[:end])), separators=(",", ":")) + raw[end:]


def differences(fixtures, out, skip=()):
    """[(capture, what is wrong)] between a fixture folder and a capture run."""
    wrong = []
    for name in sorted(os.listdir(fixtures)):
        path = os.path.join(fixtures, name)
        if os.path.isdir(path) or name.endswith(NOT_FIXTURES) or name == "index.tsv" or name in skip:
            continue
        with open(path, "rb") as fixture:
            expected = fixture.read().decode("utf-8", "surrogateescape")
        try:
            with open(os.path.join(out, name), "rb") as ours:
                got = ours.read().decode("utf-8", "surrogateescape")
        except FileNotFoundError:
            wrong.append((name, "not captured"))
            continue
        if got == expected or (name.startswith(JSON_CAPTURES) and json_text(got) == expected):
            continue
        if name in FIXED:
            bug, check = FIXED[name]
            if not check(got):
                wrong.append((name, "2.6.0 %s; ours printed %r" % (bug, got)))
        else:
            wrong.append((name, "expected %r, got %r" % (expected, got)))
    return wrong


def exit_codes(folder):
    with open(os.path.join(folder, "index.tsv")) as index:
        return {line.split("\t")[0]: line.split("\t")[1] for line in index.read().splitlines()[1:]}


def test_our_smcrouted_and_smcroutectl_print_what_2_6_0_printed(programs, tmp_path):
    out = capture(str(tmp_path / "out"), *programs["file"])
    requests = [name for name in os.listdir(CAPTURES) if name.startswith("req-")]
    assert differences(CAPTURES, out, skip=requests) == []
    with open(os.path.join(out, "req-add.bin")) as request:     # ours speaks the text protocol
        assert request.read() == "add a1 10.0.0.1 225.7.7.7 b1 b2\n"
    codes = exit_codes(out)
    expected = {name: code for name, code in exit_codes(CAPTURES).items() if not name.startswith("req-")}
    expected.update({"cmd-bogus": "1"})             # an unknown command is an error
    assert {name: codes.get(name) for name in expected} == expected


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_zipapp_prints_the_variants_as_2_6_0_did(programs, tmp_path, variant):
    fixtures = os.path.join(CAPTURES, variant)
    out = capture(str(tmp_path / variant), *programs["pyz"], *VARIANTS[variant])
    assert differences(fixtures, out) == []


def test_debians_c_smcroutectl_drives_our_daemon(programs, tmp_path):
    """SMCRoute's own client, speaking its binary protocol, gets the same
    bytes from our daemon as from SMCRoute 2.6.0's.  It is 2.5.6: it has no
    -j, and takes an unknown command for `show`."""
    out = capture(str(tmp_path / "c"), programs["file"][0], C_CLIENT)
    json_captures = [name for name in os.listdir(CAPTURES) if name.startswith(("j-", "jd-", "jp-", "req-j"))]
    assert differences(CAPTURES, out, skip=json_captures + ["cmd-bogus.out", "cmd-bogus.err"]) == []
    with open(os.path.join(out, "j-show.err")) as err:
        assert "invalid option -- 'j'" in err.read()
