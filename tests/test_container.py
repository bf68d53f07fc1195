"""The container image, built from the Dockerfile on a base image made from
Debian packages, and run for real: in a network namespace of its own, and
as a sidecar in the namespace of another container.

The engine is Docker (Debian's docker.io, started with --iptables=false
--ip-forward=false --bridge=none so the host's network is left alone); if
no Docker engine can run here, this says so and uses podman.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest
from conftest import require_root
from netbed import DAEMON, PEER, SLOWER, Receivers, new_port, run, wait_for

ROOT = os.path.dirname(DAEMON)
BASE_IMAGE = "smcroute-ci-base:bookworm"
BASE_CACHE = "/var/cache/smcroute-ci/bookworm-python3-minimal.tar"
IMAGE = "smcroute:test"
SOCKET = "smcroute.sock"


def debian_mirror():
    """The Debian mirror this machine's apt uses (DEBIAN_MIRROR overrides)."""
    if os.environ.get("DEBIAN_MIRROR"):
        return os.environ["DEBIAN_MIRROR"]
    sources = []
    for path in ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"):
        if os.path.exists(path):
            with open(path) as listing:
                sources += listing.read().split()
    return next(word for word in sources if word.startswith("http") and word.endswith("/debian"))


def docker_runs():
    return shutil.which("docker") and run("docker", "info", check=False).returncode == 0


def start_dockerd():
    """Start Debian's dockerd leaving the host network alone; the reason
    when it cannot run."""
    if not shutil.which("dockerd"):
        return None, "dockerd is not installed"
    log = open(os.path.join(tempfile.gettempdir(), "smcroute-dockerd.log"), "w")
    proc = subprocess.Popen(["dockerd", "--iptables=false", "--ip-forward=false", "--bridge=none"],
                            stdout=log, stderr=log)
    for _ in range(100):
        if run("docker", "info", check=False).returncode == 0:
            return proc, None
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    return None, "dockerd did not start (see %s)" % log.name


@pytest.fixture(scope="module")
def engine():
    """'docker', started if need be, or 'podman' where Docker cannot run."""
    require_root()
    if docker_runs():
        yield "docker"
        return
    dockerd, why_not = start_dockerd()
    if dockerd is not None:
        yield "docker"
        dockerd.terminate()
        dockerd.wait(30)
        return
    print("no Docker engine can run here: %s; using podman instead" % why_not)
    if not shutil.which("podman"):
        pytest.fail("no Docker engine (%s) and no podman to fall back to" % why_not)
    yield "podman"


def base_tarball():
    """A debootstrap tree of Debian with python3-minimal, as a tarball
    cached between runs.  build.sh makes it before the test VM starts: the
    VM has no network."""
    if not os.path.exists(BASE_CACHE):
        os.makedirs(os.path.dirname(BASE_CACHE), exist_ok=True)
        tree = tempfile.mkdtemp()
        try:
            run("debootstrap", "--variant=minbase", "--include=python3-minimal",
                "bookworm", tree, debian_mirror())
            run("tar", "-C", tree, "-cf", BASE_CACHE + ".part", ".")
            os.rename(BASE_CACHE + ".part", BASE_CACHE)
        finally:
            shutil.rmtree(tree)
    return BASE_CACHE


def base_image(engine):
    """A Debian image with python3-minimal, imported from base_tarball()."""
    if run(engine, "image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return
    run(engine, "import", base_tarball(), BASE_IMAGE)


@pytest.fixture(scope="module")
def image(engine):
    base_image(engine)
    run(engine, "build", "-q", "--build-arg", "BASE=" + BASE_IMAGE, "-t", IMAGE, ROOT)
    return IMAGE


class Container:
    """The image running with no network but its own namespace (or the
    namespace `network` names), its socket directory and config shared
    with the host."""

    def __init__(self, engine, image, config, network="none"):
        self.engine = engine
        self.dir = tempfile.mkdtemp()
        self.config = os.path.join(self.dir, "smcroute.conf")
        self.rundir = os.path.join(self.dir, "run")
        os.mkdir(self.rundir)
        self.write_config(config)
        self.name = "smcroute-test-" + uuid.uuid4().hex[:10]
        run(engine, "run", "-d", "--name", self.name, "--network", network,
            "--cap-drop=ALL", "--cap-add=NET_ADMIN", "--cap-add=NET_RAW",
            "--health-interval=1s", "-v", self.rundir + ":/run/smcroute",
            "-v", self.config + ":/etc/smcroute.conf:ro", image)
        self.pid = self.inspect("{{.State.Pid}}")

    def write_config(self, text):
        with open(self.config, "w") as conf:    # in place: the bind mount follows the inode
            conf.write(text)

    def inspect(self, template):
        return run(self.engine, "inspect", "-f", template, self.name).stdout.strip()

    def netns(self, *args):
        return run("nsenter", "-t", self.pid, "-n", *args).stdout

    def add_interfaces(self, *names):
        """veth pairs inside the container's namespace."""
        for a, b in zip(names[::2], names[1::2]):
            run("ip", "link", "add", "name", a, "netns", self.pid, "type", "veth",
                "peer", "name", b, "netns", self.pid)
            self.netns("ip", "link", "set", a, "up")
            self.netns("ip", "link", "set", b, "up")

    def ctl(self, *words):
        """Our client on the host, through the shared socket."""
        return run("python3", DAEMON, "-u", os.path.join(self.rundir, SOCKET), *words)

    def wait_for(self, predicate):
        wait_for(predicate, 20, lambda: run(self.engine, "logs", self.name).stderr)

    def remove(self):
        run(self.engine, "rm", "-f", self.name, check=False)
        shutil.rmtree(self.dir)


@pytest.fixture
def container(engine, image):
    containers = []

    def start(config="", network="none"):
        containers.append(Container(engine, image, config, network))
        return containers[-1]

    yield start
    for c in containers:
        c.remove()


def test_image_runs_the_daemon_as_pid_1_stopped_by_sigterm(engine, image):
    config = run(engine, "image", "inspect", "-f",
                 "{{.Config.StopSignal}} {{json .Config.Healthcheck.Test}} {{json .Config.Entrypoint}}",
                 image).stdout
    assert config.startswith('SIGTERM ["CMD","python3","-I","/usr/sbin/smcroute","-u",'
                             '"/run/smcroute/smcroute.sock","show","interfaces"] ')
    assert '"-n","-u","/run/smcroute/smcroute.sock"]' in config


def test_becomes_healthy_and_takes_routes_through_the_shared_socket(container):
    c = container()
    c.wait_for(lambda: c.inspect("{{.State.Health.Status}}") == "healthy")
    assert oct(os.stat(os.path.join(c.rundir, SOCKET)).st_mode & 0o777) == "0o600"
    c.add_interfaces("a1", "b1")
    c.ctl("add", "a1", "10.0.0.1", "225.1.2.3", "b1")
    assert "(10.0.0.1,225.1.2.3)" in c.netns("ip", "mroute")
    assert "(10.0.0.1,225.1.2.3)" not in run("ip", "mroute").stdout   # not the host's table


def test_sighup_reloads_the_config_volume(engine, container):
    c = container("mroute from a1 source 10.0.0.1 group 225.1.1.1 to b1\n")
    c.wait_for(lambda: os.path.exists(os.path.join(c.rundir, SOCKET)))
    c.add_interfaces("a1", "b1")
    c.write_config("mroute from a1 source 10.0.0.1 group 225.2.2.2 to b1\n")
    run(engine, "kill", "-s", "HUP", c.name)
    c.wait_for(lambda: "225.2.2.2" in c.netns("ip", "mroute"))
    assert "225.1.1.1" not in c.netns("ip", "mroute")


def test_stop_exits_0_within_2_seconds_and_logs_went_to_stderr(engine, container):
    c = container()
    c.wait_for(lambda: os.path.exists(os.path.join(c.rundir, SOCKET)))
    started = time.monotonic()
    run(engine, "stop", c.name)
    assert time.monotonic() - started < 2 * SLOWER
    assert c.inspect("{{.State.ExitCode}}") == "0"
    logs = run(engine, "logs", c.name)
    assert "smcroute: notice: smcroute.py 0.1.0 ready" in logs.stderr
    assert "exiting on SIGTERM" in logs.stderr
    assert not os.path.exists(os.path.join(c.rundir, SOCKET))


class AppLab:
    """A plain container that owns interfaces, the way an application's
    container or pod does: the base image asleep, with a network namespace
    of its own and no network (so, as Docker makes it, no IPv6 either), and
    in it veths to a sender and a receiver namespace.  Every name is
    unique; close() removes it all.

        snd eth0 ---- a1 [app] b1 ---- eth0 rx
    """

    SOURCE, GROUP = "10.0.0.1", "225.1.2.3"
    # peer namespace: (its address on eth0, the app's interface, the app's address there)
    PEERS = {"snd": ("10.0.0.1/24", "a1", "10.0.0.2/24"), "rx": ("10.0.1.2/24", "b1", "10.0.1.1/24")}

    def __init__(self, engine):
        self.engine = engine
        prefix = "smc" + uuid.uuid4().hex[:10]
        self.app = prefix + "-app"
        self.names = {}
        try:
            self._build(prefix)
        except BaseException:
            self.close()
            raise

    def _build(self, prefix):
        run(self.engine, "run", "-d", "--name", self.app, "--network", "none", BASE_IMAGE,
            "python3", "-c", "import time; time.sleep(1e9)")
        self.pid = self.inspect("{{.State.Pid}}")
        for host, (address, ifname, app_address) in self.PEERS.items():
            self.names[host] = "%s-%s" % (prefix, host)
            run("ip", "netns", "add", self.names[host])
            self.exec(host, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")
            self.exec(host, "sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0")
            run("ip", "link", "add", "name", ifname, "netns", self.pid, "type", "veth",
                "peer", "name", "eth0", "netns", self.names[host])
            self.exec(host, "ip", "addr", "add", address, "dev", "eth0")
            self.exec(host, "ip", "link", "set", "eth0", "up")
            self.netns("ip", "addr", "add", app_address, "dev", ifname)
            self.netns("ip", "link", "set", ifname, "up")
        # The carrier comes up to a second later; then the namespace is settled.
        wait_for(lambda: all(" state UP " in self.netns("ip", "-o", "link", "show", ifname)
                             for _, ifname, _ in self.PEERS.values()))

    def ns(self, host):
        return self.names[host]

    def exec(self, host, *args):
        return run("ip", "netns", "exec", self.names[host], *args)

    def netns(self, *args):
        """A command in the app container's network namespace."""
        return run("nsenter", "-t", self.pid, "-n", *args).stdout

    def inspect(self, template):
        return run(self.engine, "inspect", "-f", template, self.app).stdout.strip()

    def network_state(self):
        """Everything of the app's namespace that a multicast router could
        change: links and their flags, addresses, routes, group
        memberships, multicast routes, VIFs and mc_forwarding."""
        return {" ".join(command): self.netns(*command) for command in (
            ("ip", "-o", "link"), ("ip", "-o", "addr"), ("ip", "route", "show", "table", "all"),
            ("ip", "-6", "route", "show", "table", "all"), ("ip", "maddr"),
            ("ip", "mroute"), ("ip", "-6", "mroute"), ("ip", "mrule"), ("ip", "-6", "mrule"),
            ("cat", "/proc/net/ip_mr_vif"), ("cat", "/proc/net/ip6_mr_vif"),
            ("sysctl", "-a", "-r", "mc_forwarding"))}

    def received(self, count=5):
        """Send `count` datagrams from snd to the group; how many reached rx."""
        port = new_port()
        with Receivers(self, port, [self.GROUP], ["rx"], "eth0") as receivers:
            self.exec("snd", sys.executable, PEER, "send", "eth0", self.GROUP, str(port), str(count),
                      "--source", self.SOURCE)
            time.sleep(0.3)
        return receivers.counts["rx"].get(self.GROUP, 0)

    def close(self):
        run(self.engine, "rm", "-f", self.app, check=False)
        for name in self.names.values():
            run("ip", "netns", "del", name, check=False)


@pytest.fixture
def lab(engine, image):
    lab = AppLab(engine)
    yield lab
    lab.close()


def test_sidecar_routes_in_the_app_containers_namespace_and_leaves_it_as_found(engine, lab, container):
    before = lab.network_state()

    # The image joins the app container's network namespace, with its own
    # socket directory and config, and only NET_ADMIN and NET_RAW.
    sidecar = container("", network="container:" + lab.app)
    sidecar.wait_for(lambda: sidecar.inspect("{{.State.Health.Status}}") == "healthy")

    # A route added through the shared socket is the app namespace's, and
    # forwards there.
    assert lab.received() == 0
    sidecar.ctl("add", "a1", lab.SOURCE, lab.GROUP, "b1")
    assert "(10.0.0.1,225.1.2.3)" in lab.netns("ip", "mroute")
    assert lab.received() == 5

    # Stopping the sidecar takes its routes and VIFs away and nothing else:
    # the app container runs on, as it was before the sidecar came.  (The
    # kernel drops a router's routes and VIFs when its sockets close, even
    # on SIGKILL; what this shows is that nothing else was touched.)
    run(engine, "stop", sidecar.name)
    assert sidecar.inspect("{{.State.ExitCode}}") == "0"
    assert lab.inspect("{{.State.Running}} {{.State.Pid}}") == "true " + lab.pid
    assert lab.netns("ip", "mroute") == ""
    assert lab.network_state() == before
    assert lab.received() == 0
