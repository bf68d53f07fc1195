"""The man page, smcroute.8: it renders without a warning from man or
groff, and it keeps up with the code -- every option that a personality's
-h lists is in that personality's OPTIONS (and every option there is one
the personality takes), every command the daemon's `help` lists is in the
CONTROL SOCKET section, and so on.  No root needed."""

import inspect
import os
import re
import shutil
import subprocess
import sys
import types

import pytest
from netbed import DAEMON

import smcroute

ROOT = os.path.dirname(DAEMON)
PAGE = os.path.join(ROOT, "smcroute.8")
PERSONALITIES = ("smcroute", "smcrouted", "smcroutectl")
WIDTHS = (60, 80, 120)


def require(tool):
    if shutil.which(tool):
        return
    message = "%s is not installed (Debian: apt-get install man-db groff-base)" % tool
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: this test must run)")
    pytest.skip(message)


def render(width, *options):
    """man's own rendering of the page at `width` columns: (stdout, stderr)."""
    require("man")
    env = dict(os.environ, MANWIDTH=str(width), LC_ALL="C.UTF-8", MANPAGER="cat", PAGER="cat")
    env.pop("MANOPT", None)
    ran = subprocess.run(["man"] + list(options) + ["-l", PAGE], capture_output=True, env=env,
                         timeout=60)
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.decode(), ran.stderr.decode()


# Rendering -------------------------------------------------------------------

@pytest.mark.parametrize("width", WIDTHS)
def test_man_renders_without_warnings(width):
    out, err = render(width, "--warnings")
    assert err == ""
    assert "SMCROUTE(8)" in out


def test_groff_finds_nothing_to_warn_about():
    require("groff")
    ran = subprocess.run(["groff", "-man", "-ww", "-z", PAGE], capture_output=True, text=True,
                         timeout=60)
    assert (ran.returncode, ran.stderr) == (0, "")


def test_rendered_lines_fit_80_columns():
    out, _ = render(80)
    text = re.sub(r".\x08", "", out)        # overstrike bold and underline
    wide = [line for line in text.splitlines() if len(line) > 80]
    assert wide == []


def test_source_lines_are_plain():
    """man(7) as man(7) has it: no tabs, no trailing blanks, no text line
    that troff would take for a request, and no hyphen left bare in an
    option (\\- in roff, so that it renders as a minus and can be searched)."""
    with open(PAGE) as page:
        lines = page.read().splitlines()
    for number, line in enumerate(lines, 1):
        where = "smcroute.8:%d: %r" % (number, line)
        assert "\t" not in line and line == line.rstrip(), where
        assert not line.startswith("'"), where
        if not line.startswith('.\\"'):
            assert not re.search(r"(?<![\\\w-])-[A-Za-z]", line), where


# Parsing the page ------------------------------------------------------------

def plain(line):
    """The text of one roff line, without its macro, fonts and escapes."""
    line = re.sub(r"^\.(B|I|BI|BR|IB|IR|RB|RI)\s+", "", line)
    line = re.sub(r"\\f[BIRP]", "", line)
    for escape, text in (("\\-", "-"), ("\\(aq", "'"), ("\\(dq", '"'), ("\\(ti", "~"),
                         ("\\(mu", "x"), ("\\(em", "--"), ("\\ ", " "), ("\\&", ""), ("\\c", "")):
        line = line.replace(escape, text)
    return line.replace('"', "")


def sections():
    """{(SH title, SS title or ""): [roff lines]}, comments left out."""
    parts, current = {}, ("", "")
    with open(PAGE) as page:
        for line in page.read().splitlines():
            if line.startswith('.\\"'):
                continue
            if line.startswith(".SH "):
                current = (line[4:].strip('"'), "")
            elif line.startswith(".SS "):
                current = (current[0], line[4:].strip('"'))
            parts.setdefault(current, []).append(line)
    return parts


PARTS = sections()


def part(title, subtitle=None):
    """The roff lines of a section, or of one of its subsections."""
    found = [lines for (sh, ss), lines in PARTS.items()
             if sh == title and (subtitle is None or ss == subtitle)]
    assert found, "no section %s %s in smcroute.8" % (title, subtitle or "")
    return [line for lines in found for line in lines]


def tags(lines):
    """The plain text of every .TP tag."""
    return [plain(lines[i + 1]) for i, line in enumerate(lines[:-1]) if line.startswith(".TP")]


def text(lines):
    return " ".join(plain(line) for line in lines if not line.startswith((".TP", ".PP", ".IP")))


OPTION = re.compile(r"(?<![\w-])(--[a-z][\w-]*|-[A-Za-z](?![\w-]))")


def page_options(personality):
    """The options that the tags of OPTIONS / personality describe."""
    return {option for tag in tags(part("OPTIONS", personality)) for option in OPTION.findall(tag)}


# What the program says of itself ----------------------------------------------

@pytest.fixture(scope="module")
def helps(tmp_path_factory):
    """{personality: its -h output}, each run through a symlink by its name."""
    folder = tmp_path_factory.mktemp("names")
    texts = {}
    for name in PERSONALITIES:
        link = str(folder / name)
        os.symlink(DAEMON, link)
        ran = subprocess.run([sys.executable, link, "-h"], capture_output=True, text=True,
                             timeout=30)
        assert ran.returncode == 0, ran.stderr
        texts[name] = ran.stdout
    return texts


def help_options(help_text):
    """Every option a help text names: alone (-f FILE, --log-level) or in
    a cluster ([-hnNsv])."""
    options = set(OPTION.findall(help_text))
    for cluster in re.findall(r"\[-([A-Za-z]+)\]", help_text):
        options.update("-" + letter for letter in cluster)
    return options


def accepted_options(personality):
    """The options a personality's code takes: its getopt specification,
    and our own interface's 1.99 client flags."""
    main = {"smcroute": smcroute.smcroute_main, "smcrouted": smcroute.smcrouted_main,
            "smcroutectl": smcroute.smcroutectl_main}[personality]
    call = re.search(r'getopt\(\w+, "([^"]+)"(?:, \(([^)]*)\))?', inspect.getsource(main))
    options = {"-" + letter for letter in call.group(1).replace(":", "")}
    options.update("--" + name.rstrip("=") for name in re.findall(r'"([^"]+)"', call.group(2) or ""))
    if personality == "smcroute":
        options.update(smcroute.CLIENT_FLAGS)
    return options


def control():
    """The daemon's command table, without a daemon."""
    return smcroute.Control(types.SimpleNamespace(router=None))


def help_commands():
    """The command words of the daemon's `help` reply."""
    return [line.split()[0] for line in smcroute.Control.HELP if not line.startswith(" ")]


# Keeping up with the code ---------------------------------------------------

def test_help_texts_name_options(helps):
    """The parsing below finds what it should, so that the checks are real."""
    assert {"-f", "-a", "-k", "-F", "--log-level"} <= help_options(helps["smcroute"])
    assert {"-h", "-N", "-p", "-I", "-l"} <= help_options(helps["smcrouted"])
    assert {"-b", "-j", "-t", "-I"} <= help_options(helps["smcroutectl"])
    assert {"-i", "-I"} <= page_options("smcroutectl")


@pytest.mark.parametrize("personality", PERSONALITIES)
def test_every_option_in_help_is_in_the_page(helps, personality):
    missing = help_options(helps[personality]) - page_options(personality)
    assert not missing, "OPTIONS / %s lacks %s" % (personality, " ".join(sorted(missing)))


@pytest.mark.parametrize("personality", PERSONALITIES)
def test_every_option_in_the_page_is_taken(personality):
    extra = page_options(personality) - accepted_options(personality)
    assert not extra, "OPTIONS / %s describes %s, which %s does not take" % (
        personality, " ".join(sorted(extra)), personality)


@pytest.mark.parametrize("personality", PERSONALITIES)
def test_synopsis_names_every_personality(personality):
    synopsis = text(part("SYNOPSIS"))
    assert re.search(r"(^| )%s " % personality, synopsis)
    assert personality in text(part("NAME"))


def test_every_command_in_help_is_in_the_page():
    commands = help_commands()
    assert {"add", "show", "monitor", "check", "help"} <= set(commands)
    described = {tag.split()[0] for tag in tags(part("CONTROL SOCKET", "Text protocol"))}
    missing = [command for command in commands if command not in described]
    assert not missing, "CONTROL SOCKET lacks %s" % " ".join(missing)


def test_every_command_word_is_in_the_page():
    """Aliases too (remove): every word the daemon takes as a command."""
    words = set(text(part("CONTROL SOCKET", "Text protocol")).split())
    missing = sorted(set(control().commands) - words)
    assert not missing, "CONTROL SOCKET lacks %s" % " ".join(missing)


def test_show_tables_and_forms_are_in_the_page():
    shows = " ".join(tag for tag in tags(part("CONTROL SOCKET", "Text protocol"))
                     if tag.startswith("show"))
    for word in smcroute.TABLES + ("json", "smcroute", "detail"):
        assert word in shows, word


def test_smcroutectl_commands_are_in_the_page():
    words = set(re.findall(r"[a-z]+", text(part("OPTIONS", "smcroutectl"))))
    missing = [c for c in smcroute.SMCROUTECTL_COMMANDS if c not in words]
    assert not missing, "OPTIONS / smcroutectl lacks %s" % " ".join(missing)


def test_binary_requests_are_in_the_page():
    lines = part("CONTROL SOCKET", "SMCRoute's binary protocol")
    letters = {line[3:].strip() for line in lines if line.startswith(".B ")}
    requests = set(smcroute.Control.BINARY) | set(smcroute.Control.BINARY_SHOW)
    missing = sorted(requests - letters)
    assert not missing, "the binary protocol lacks %s" % " ".join(missing)


def test_every_exit_status_is_in_the_page():
    codes = {value for name, value in vars(smcroute).items() if name.startswith("EX_")}
    described = {int(tag) for tag in tags(part("EXIT STATUS")) if tag.strip().isdigit()}
    assert codes - described == set()


def test_files_are_in_the_page():
    files = text(part("FILES"))
    for path in ("/etc/smcroute.conf", smcroute.DEFAULT_SOCKET + " ", smcroute.SMCROUTE_SOCKET,
                 "/run/smcroute.pid", "/etc/name.conf", "/run/name.sock", "/run/name.pid"):
        assert path in files + " ", path
