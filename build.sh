#!/bin/sh
# build.sh -- check and test smcroute.py.
#
#   ./build.sh pyz [OUTPUT]         build the zipapp, smcroute.pyz by default
#   ./build.sh install [PREFIX]     install it as PREFIX/sbin/smcroute (PREFIX /usr/local),
#                                   with smcrouted and smcroutectl, man page, systemd unit;
#                                   DESTDIR=ROOT installs below ROOT
#   ./build.sh uninstall [PREFIX]   undo that
#   ./build.sh demo                 route multicast in a namespace lab, and tell how
#   ./build.sh test [PYTEST ARGS]   build it, lint, check Python 3.8 compatibility, run all tests
#   ./build.sh bench [ARGS]         compare smcroute.py with SMCRoute's C daemon (bench/compare.py --help)
#
# The test tools go into a virtualenv (.venv, or $VENV); Debian packages the
# tests need are installed when missing.  Building the zipapp needs only shiv:
# the test venv's, one on PATH, or a venv of its own (.venv-build) made once.
# The end-to-end tests build network namespaces, so run them as root.
set -eu
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
BUILD_VENV=${BUILD_VENV:-.venv-build}
PYTHON=${PYTHON:-python3}

# The commands the build and tests run, and the Debian packages that have them.
PACKAGES="python3:python3 ip:iproute2 setpriv:util-linux unshare:util-linux nsenter:util-linux
make:make dockerd:docker.io debootstrap:debootstrap busybox:busybox script:bsdutils xxd:xxd
smcroutectl:smcroute socat:socat man:man-db groff:groff-base"

install_packages() {
    missing=""
    for entry in $PACKAGES; do
        command -v "${entry%%:*}" >/dev/null || missing="$missing ${entry#*:}"
    done
    if command -v python3 >/dev/null && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        missing="$missing python3-venv"
    fi
    [ -z "$missing" ] && return
    if [ "$(id -u)" != 0 ]; then
        echo "build.sh: missing Debian packages:$missing (run as root to install them)" >&2
        exit 1
    fi
    # No service may start on install: docker.io's daemon with its default
    # options would add a bridge and firewall rules to the host's network.
    policy=/usr/sbin/policy-rc.d
    [ -e "$policy" ] && policy=""
    [ -n "$policy" ] && printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy"
    apt-get update -qq
    # shellcheck disable=SC2086  # a list of package names
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    [ -n "$policy" ] && rm -f "$policy"
    return 0
}

make_venv() {
    stamp="$VENV/.requirements-dev.txt"
    if [ -f "$stamp" ] && cmp -s requirements-dev.txt "$stamp"; then
        return
    fi
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-dev.txt
    cp requirements-dev.txt "$stamp"
}

# shiv, without the test tools: offline once it is there.
find_shiv() {
    for shiv in "$VENV/bin/shiv" "$BUILD_VENV/bin/shiv" "$(command -v shiv || true)"; do
        [ -n "$shiv" ] && [ -x "$shiv" ] && return
    done
    python3 -m venv "$BUILD_VENV"
    "$BUILD_VENV/bin/pip" install -q --disable-pip-version-check "$(grep '^shiv==' requirements-dev.txt)"
    shiv="$BUILD_VENV/bin/shiv"
}

# shiv builds the archive: fixed timestamps, shebang, site-packages layout.
# Its __main__ would first extract site-packages under ~/.shiv (or
# SHIV_ROOT): that needs a writable home, costs start-up time and memory,
# and a root daemon would run code from a directory others may have
# written.  smcroute.py needs no extraction, so the archive gets a __main__
# that imports it in place, and drops shiv's then unused bootstrap.  The
# module goes in compiled too, for the Python that builds it: zipimport
# cannot cache bytecode, and compiling 100 kB at every start costs time and
# memory; another Python finds the .pyc's magic wrong and reads the source.
# The launcher runs the interpreter isolated and without site (-I -S).
build_pyz() {
    output=$1
    find_shiv
    src=$(mktemp -d)
    trap 'rm -rf "$src"' EXIT
    mkdir "$src/site-packages"
    install -m 0644 smcroute.py "$src/site-packages/smcroute.py"
    SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 315532800)}
    export SOURCE_DATE_EPOCH
    "$shiv" --site-packages "$src/site-packages" --entry-point smcroute:main \
        --python "/usr/bin/env python3" --reproducible --compressed --output-file "$src/shiv.pyz"
    "$PYTHON" - "$src/shiv.pyz" "$output" <<'PY'
import importlib.util
import marshal
import sys
import zipfile

MAIN = b"""\
# Run smcroute.py from inside this archive, with no extraction, and
# isolated (-I -S): no site-packages, .pth file or PYTHON* variable can put
# code into a daemon that runs as root, and the interpreter's site
# machinery costs no memory.
import os
import sys

if not (sys.flags.isolated and sys.flags.no_site) and sys.executable:
    os.execv(sys.executable, [sys.executable, "-I", "-S"] + sys.argv)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "site-packages"))
import smcroute  # noqa: E402

sys.exit(smcroute.main())
"""
MODULE = "site-packages/smcroute.py"


def compiled(source):
    """The module's .pyc, unchecked-hash based: the same bytes for the same
    source, and no timestamps for zipimport to compare."""
    code = compile(source, "smcroute.py", "exec", dont_inherit=True, optimize=0)
    return (importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little")
            + importlib.util.source_hash(source) + marshal.dumps(code))


source, target = sys.argv[1:]
with open(source, "rb") as built:
    shebang = built.readline()
with zipfile.ZipFile(source) as shiv, open(target, "wb") as out:
    out.write(shebang)
    with zipfile.ZipFile(out, "w") as pyz:
        for info in shiv.infolist():
            if info.filename.startswith("site-packages/"):
                pyz.writestr(info, shiv.read(info))
            elif info.filename == "__main__.py":
                pyz.writestr(info, MAIN)
            if info.filename == MODULE:
                # Stored: no decompression, whose buffers stay in the
                # daemon's memory, for the file that is read.
                pyc = zipfile.ZipInfo(MODULE[:-3] + ".pyc", info.date_time)
                pyc.compress_type, pyc.external_attr = zipfile.ZIP_STORED, info.external_attr
                pyz.writestr(pyc, compiled(shiv.read(MODULE)))
PY
    chmod 0755 "$output"
    rm -rf "$src"
    trap - EXIT
}

# Where `install` puts things: PREFIX (default /usr/local) for programs and
# the man page, /etc for the unit and the config, all below DESTDIR.
set_paths() {
    prefix=${1:-/usr/local}
    root=${DESTDIR:-}
    sbin=$root$prefix/sbin
    man8=$root$prefix/share/man/man8
    unit=$root/etc/systemd/system/smcroute.service
    conf=$root/etc/smcroute.conf
}

install_all() {
    set_paths "$@"
    build_pyz "${TMPDIR:-/tmp}/smcroute.pyz.$$"
    install -D -m 0755 "${TMPDIR:-/tmp}/smcroute.pyz.$$" "$sbin/smcroute"
    rm -f "${TMPDIR:-/tmp}/smcroute.pyz.$$"
    ln -sf smcroute "$sbin/smcrouted"
    ln -sf smcroute "$sbin/smcroutectl"
    install -D -m 0644 smcroute.8 "$man8/smcroute.8"
    ln -sf smcroute.8 "$man8/smcrouted.8"
    ln -sf smcroute.8 "$man8/smcroutectl.8"
    mkdir -p "$(dirname "$unit")"
    sed "s|@SBINDIR@|$prefix/sbin|g" smcroute.service >"$unit"
    chmod 0644 "$unit"
    if [ ! -e "$conf" ]; then
        install -D -m 0644 smcroute.conf "$conf"
    fi
    echo "installed $sbin/smcroute (also smcrouted, smcroutectl), $man8/smcroute.8, $unit"
}

uninstall_all() {
    set_paths "$@"
    rm -f "$sbin/smcroute" "$sbin/smcrouted" "$sbin/smcroutectl"
    rm -f "$man8/smcroute.8" "$man8/smcrouted.8" "$man8/smcroutectl.8" "$unit"
    # The config is the operator's once edited: only the untouched example goes.
    if cmp -s smcroute.conf "$conf"; then
        rm -f "$conf"
    fi
}

run_tests() {
    "$VENV/bin/ruff" check smcroute.py tests
    "$VENV/bin/shellcheck" build.sh .ci/run
    "$VENV/bin/vermin" -q -t=3.8- --violations --no-tips smcroute.py
    "$VENV/bin/python" -m pytest "$@"
}

case "${1:-}" in
    pyz)
        build_pyz "${2:-smcroute.pyz}"
        ;;
    install)
        shift
        install_all "$@"
        ;;
    uninstall)
        shift
        uninstall_all "$@"
        ;;
    demo)
        exec python3 tests/demo.py
        ;;
    test)
        shift
        install_packages
        make_venv
        build_pyz smcroute.pyz
        run_tests "$@"
        ;;
    bench)
        shift
        # Debian's Python: a venv or pyenv one may load .pth hooks that
        # cost the memory and start-up figures.
        if [ "$(id -u)" != 0 ]; then
            echo "build.sh: bench builds network namespaces: run it as root" >&2
            exit 1
        fi
        exec /usr/bin/python3 bench/compare.py "$@"
        ;;
    *)
        echo "usage: $0 pyz [OUTPUT] | install [PREFIX] | uninstall [PREFIX] | demo | test [PYTEST ARGS]" \
            "| bench [ARGS]" >&2
        exit 64
        ;;
esac
