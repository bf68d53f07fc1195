"""Start-up cost of smcroute.pyz beside the plain smcroute.py.

    sudo python3 bench/startup.py [--runs N] [--python PATH]

Builds nothing: run ./build.sh pyz first.  For each form, interleaved so
that machine noise hits both alike: the time to print the version (-v),
the time from exec to ready (PID file written) for the daemon in a network
namespace of its own, and the daemon's RSS once ready.  Prints medians.
"""

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMS = {"smcroute.py": os.path.join(ROOT, "smcroute.py"),
         "smcroute.pyz": os.path.join(ROOT, "smcroute.pyz")}


def time_version(python, program):
    started = time.perf_counter()
    subprocess.run([python, program, "-v"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for %d" % pid)


def time_ready(python, program, netns, workdir):
    """Seconds from exec to the PID file, and the RSS then, in KiB."""
    pidfile = os.path.join(workdir, "pid")
    started = time.perf_counter()
    proc = subprocess.Popen(["ip", "netns", "exec", netns, python, program, "-n",
                             "-f", os.path.join(workdir, "empty.conf"),
                             "-u", os.path.join(workdir, "sock"), "-P", pidfile],
                            stderr=subprocess.DEVNULL)
    while not os.path.exists(pidfile):
        if proc.poll() is not None:
            raise RuntimeError("daemon exited with %d" % proc.returncode)
        time.sleep(0.0005)
    elapsed = time.perf_counter() - started
    rss = rss_kib(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    return elapsed, rss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--python", default="python3")
    args = parser.parse_args()
    netns = "smcbench-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", netns], check=True)
    results = {form: {"version": [], "ready": [], "rss": []} for form in FORMS}
    try:
        with tempfile.TemporaryDirectory() as workdir:
            open(os.path.join(workdir, "empty.conf"), "w").close()
            for _ in range(args.runs):
                for form, program in FORMS.items():
                    results[form]["version"].append(time_version(args.python, program))
                    ready, rss = time_ready(args.python, program, netns, workdir)
                    results[form]["ready"].append(ready)
                    results[form]["rss"].append(rss)
    finally:
        subprocess.run(["ip", "netns", "del", netns])
    python = subprocess.run([args.python, "-V"], capture_output=True, text=True).stdout.strip()
    print("%s, medians of %d interleaved runs" % (python, args.runs))
    print("%-14s %10s %12s %12s %10s" % ("", "size", "to -v", "to ready", "RSS"))
    for form, program in FORMS.items():
        r = results[form]
        print("%-14s %8.1f kB %9.1f ms %9.1f ms %7.1f MB"
              % (form, os.path.getsize(program) / 1000, statistics.median(r["version"]) * 1000,
                 statistics.median(r["ready"]) * 1000, statistics.median(r["rss"]) / 1024))


if __name__ == "__main__":
    main()
