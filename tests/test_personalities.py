"""The three personalities, chosen by the name the program runs as, each
with its own options, as the plain file and inside the zipapp:

    smcrouted     SMCRoute 2.6.0's daemon
    smcroutectl   SMCRoute 2.6.0's client; it never starts a daemon
    smcroute      our own interface, and SMCRoute 1.99's client options
"""

import os
import signal
import socket
import subprocess
import time

import pytest
from netbed import DAEMON, wait_for
from test_groups import igmp_groups
from test_pyz import build

SG = "mroute from a1 source 10.0.0.1 group 225.1.2.3 to b1\n"


@pytest.fixture(scope="module", params=["file", "pyz"])
def names(request, tmp_path_factory):
    """A folder of symlinks, smcrouted, smcroutectl and smcroute, to the
    plain file or to the zipapp."""
    folder = tmp_path_factory.mktemp(request.param)
    target = DAEMON
    if request.param == "pyz":
        target = str(folder / "smcroute.pyz")
        build(target)
    for name in ("smcrouted", "smcroutectl", "smcroute"):
        os.symlink(target, str(folder / name))
    return folder


class Run:
    """Programs run in the router namespace, with paths in a test folder."""

    def __init__(self, bed, names, folder):
        self.bed, self.names, self.folder = bed, names, folder
        self.socket = str(folder / "sock")
        self.pidfile = str(folder / "pid")
        self.config = str(folder / "smcroute.conf")
        self.procs = []
        with open(self.config, "w") as conf:
            conf.write(SG)

    def argv(self, program, *args):
        return ["ip", "netns", "exec", self.bed.ns("rtr"), str(self.names / program)] + list(args)

    def __call__(self, program, *args, stdin=None, timeout=20):
        return subprocess.run(self.argv(program, *args), input=stdin, capture_output=True, text=True,
                              timeout=timeout)

    def daemon(self, program="smcrouted", *args):
        """The daemon in the foreground, ready."""
        proc = subprocess.Popen(self.argv(program, "-n", "-f", self.config, "-u", self.socket,
                                          "-P", self.pidfile, *args),
                                stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        wait_for(lambda: os.path.exists(self.pidfile) or proc.poll() is not None, timeout=10)
        assert proc.poll() is None, proc.stderr.read()
        return proc

    def ctl(self, *args, **options):
        return self("smcroutectl", "-u", self.socket, *args, **options)

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
        if os.path.exists(self.pidfile):        # a detached one
            try:
                os.kill(int(open(self.pidfile).read()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
            wait_for(lambda: not os.path.exists(self.pidfile))


@pytest.fixture
def run(bed, names, tmp_path):
    run = Run(bed, names, tmp_path)
    yield run
    run.stop()


# smcrouted ---------------------------------------------------------------------

def test_smcrouted_runs_in_the_foreground_with_a_log_level(run):
    proc = run.daemon("smcrouted", "-l", "debug")
    assert "225.1.2.3" in run.bed.mroutes(4)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert "smcroute: info: VIF 0 is a1" in proc.stderr.read()


def test_smcrouted_detaches_unless_told_not_to(run):
    started = time.monotonic()
    ran = run("smcrouted", "-f", run.config, "-u", run.socket, "-P", run.pidfile)
    assert ran.returncode == 0 and time.monotonic() - started < 5
    assert "225.1.2.3" in run.bed.mroutes(4)
    assert run.ctl("kill").returncode == 0
    wait_for(lambda: run.bed.mroutes(4) == "")


@pytest.mark.parametrize("level, shown", [("err", False), ("warn", False), ("notice", True),
                                          ("3", False), ("7", True), ("none", False)])
def test_smcrouted_log_levels_by_name_prefix_or_number(run, level, shown):
    proc = run.daemon("smcrouted", "-l", level)
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    assert ("smcroute.py 0.1.0 ready" in proc.stderr.read()) is shown


def test_smcrouted_waits_with_dash_d_and_exits_by_itself_with_dash_cap_d(run):
    started = time.monotonic()
    proc = run.daemon("smcrouted", "-d", "1", "-D", "2", "-N")
    assert time.monotonic() - started >= 1
    assert proc.wait(10) == 0
    assert time.monotonic() - started >= 3


def test_smcrouted_refuses_to_run_half_dropped(run):
    ran = run("smcrouted", "-n", "-p", "nobody", "-f", run.config, "-u", run.socket, "-P", run.pidfile)
    assert ran.returncode == 64
    assert "cannot drop to a user and keep CAP_NET_ADMIN and CAP_NET_RAW" in ran.stderr
    assert run.bed.mroutes(4) == "" and not os.path.exists(run.pidfile)
    assert "-p USER    not available" in run("smcrouted", "-h").stdout


def test_smcrouted_identity_and_its_sockets_default(run):
    name = "smctest-%d" % os.getpid()
    proc = subprocess.Popen(run.argv("smcrouted", "-n", "-I", name, "-f", run.config, "-P", run.pidfile),
                            stderr=subprocess.PIPE)
    try:
        wait_for(lambda: os.path.exists("/run/%s.sock" % name))
        assert run("smcroutectl", "-i", name, "show").returncode == 0
    finally:
        proc.terminate()
        proc.wait(10)


def test_smcrouted_says_what_is_wrong_with_the_socket_path(run):
    os.mkdir(str(run.folder / "dir"))
    missing = run.folder / "none"
    for path, error in ((str(run.folder / "dir"), "is a directory: give -u the name of a socket file"),
                        (str(missing / "sock"), "there is no directory %s" % missing)):
        ran = run("smcrouted", "-n", "-f", run.config, "-u", path, "-P", run.pidfile)
        assert ran.returncode == 71 and error in ran.stderr
    assert run("smcrouted", "-v").stdout == "smcroute.py 0.1.0 (SMCRoute 2.6.0 compatible)\n"


# smcroutectl -----------------------------------------------------------------------

def test_smcroutectl_never_starts_a_daemon(run):
    for args in (["-d"], [], ["-p", "show"]):
        ran = run.ctl(*args)
        assert ran.returncode == 1
        assert ran.stderr == ("smcroutectl: Cannot find IPC socket %s\n"
                              "smcroutectl: Failed connecting to daemon: No such file or directory\n"
                              % run.socket)
    assert run.bed.mroutes(4) == "" and not os.path.exists(run.socket)


def test_smcroutectl_shows_routes_by_default(run):
    run.daemon()
    assert "(10.0.0.1, 225.1.2.3)" in run.ctl("-p").stdout


def test_smcroutectl_takes_options_anywhere_and_commands_by_prefix(run):
    run.daemon()
    assert run("smcroutectl", "add", "a1", "10.0.0.1", "225.11.1.1", "b1", "-u", run.socket).returncode == 0
    assert "(10.0.0.1,225.11.1.1)" in run.bed.mroutes(4)
    assert run("smcroutectl", "rem", "a1", "10.0.0.1", "225.11.1.1", "-u", run.socket).returncode == 0
    assert "225.11.1.1" not in run.bed.mroutes(4)
    run.ctl("j", "b1", "225.12.1.1")
    assert "225.12.1.1" in igmp_groups(run.bed, "b1")
    assert "(*, 225.12.1.1)" in run.ctl("-p", "s", "g").stdout
    run.ctl("l", "b1", "225.12.1.1")
    assert "225.12.1.1" not in igmp_groups(run.bed, "b1")
    with open(run.config, "a") as conf:
        conf.write("mroute from a1 source 10.0.0.1 group 225.13.1.1 to b1\n")
    assert run.ctl("r").returncode == 0                 # r is reload
    assert "225.13.1.1" in run.bed.mroutes(4)
    assert '"group":"225.13.1.1"' in run.ctl("-j", "sh").stdout


def test_smcroutectl_exit_codes_and_errors(run):
    run.daemon()
    failed = run.ctl("remove", "a1", "10.0.0.1", "225.6.6.6")
    assert (failed.returncode, failed.stdout) == (1, "")
    assert failed.stderr == "smcroutectl: no such route: (10.0.0.1, 225.6.6.6) from a1\n"
    assert run.ctl("bogus").returncode == 1
    assert run.ctl("-x").returncode == 1 and "invalid option -- 'x'" in run.ctl("-x").stderr
    assert run.ctl("help").stdout.startswith("usage: smcroutectl")


def test_smcroutectl_batch_reads_commands_from_stdin(run):
    run.daemon()
    batch = "# routes\nadd a1 10.0.0.1 225.14.1.1 b1\n\nadd a1 10.0.0.1 225.14.1.2 b1\njoin b1 225.14.1.3\n"
    assert run.ctl("-b", stdin=batch).returncode == 0
    assert "225.14.1.1" in run.bed.mroutes(4) and "225.14.1.2" in run.bed.mroutes(4)
    assert "225.14.1.3" in igmp_groups(run.bed, "b1")


def test_smcroutectl_waits_for_a_daemon_that_is_starting(run):
    """A socket file nobody answers on yet (ECONNREFUSED): smcroutectl
    tries for 3 s, as SMCRoute's does, and the daemon takes the file over."""
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(run.socket)
    stale.close()
    client = subprocess.Popen(run.argv("smcroutectl", "-u", run.socket, "-p", "show"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    run.daemon()
    out, err = client.communicate(timeout=10)
    assert client.returncode == 0 and "(10.0.0.1, 225.1.2.3)" in out, err


def test_clients_find_the_daemon_at_either_default_socket(bed, names, tmp_path):
    """smcroutectl's default is /run/smcroute.sock, smcroute.py's
    /run/smcroute: each finds a daemon at the other's.  In a private /run."""
    script = """
exec 3</run/netns/{ns}
mount -t tmpfs none /run
in_ns() {{ nsenter --net=/proc/$$/fd/3 "$@"; }}
in_ns {names}/smcroute -f {conf} -P /run/smcroute.pid 2>/dev/null &
while [ ! -e /run/smcroute.pid ]; do sleep 0.05; done
in_ns {names}/smcroutectl -p show
in_ns {names}/smcroute -k
wait
in_ns {names}/smcrouted -n -f {conf} -P /run/smcroute.pid 2>/dev/null &
while [ ! -e /run/smcroute.pid ]; do sleep 0.05; done
in_ns {names}/smcroute show
in_ns {names}/smcroutectl kill
wait
""".format(ns=bed.ns("rtr"), names=names, conf=tmp_path / "smcroute.conf")
    (tmp_path / "smcroute.conf").write_text(SG)
    ran = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
                         capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0, ran.stderr
    assert "(10.0.0.1, 225.1.2.3)" in ran.stdout          # smcroutectl found /run/smcroute
    assert "static  10.0.0.1  225.1.2.3" in ran.stdout      # smcroute found /run/smcroute.sock


# smcroute (our own name) -----------------------------------------------------------

def test_smcroute_takes_several_1_99_client_options_in_a_row(run):
    run.daemon("smcroute")
    ran = run("smcroute", "-u", run.socket, "-a", "a1", "10.0.0.1", "225.15.1.1", "b1",
              "-j", "b1", "225.15.1.2")
    assert ran.returncode == 0, ran.stderr
    assert "Oifs: b1 " in [line for line in run.bed.mroutes(4).splitlines() if "225.15.1.1" in line][0]
    assert "225.15.1.2" in igmp_groups(run.bed, "b1")
    assert run("smcroute", "-u", run.socket, "-r", "a1", "10.0.0.1", "225.15.1.1",
               "-l", "b1", "225.15.1.2").returncode == 0
    assert "225.15.1.1" not in run.bed.mroutes(4)


def test_smcroute_help_names_itself_and_lists_commands_signals_and_exit_codes(run):
    shown = run("smcroute", "-h").stdout
    assert shown.startswith("usage: smcroute [OPTIONS]")
    for text in ("Commands", "show [routes|groups|interfaces|pending]", "monitor", "Signals: HUP",
                 "Exit codes: 0", "69", "78"):
        assert text in shown


def test_smcroute_takes_smcroutes_log_level_names(run):
    proc = run.daemon("smcroute", "--log-level", "err")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0 and proc.stderr.read() == ""
