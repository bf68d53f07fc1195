#!/bin/sh
# build.sh -- check and test smcroute.py.
#
#   ./build.sh test [PYTEST ARGS]   lint, check Python 3.8 compatibility, run all tests
#
# The test tools go into a virtualenv (.venv, or $VENV); Debian packages the
# tests need are installed when missing.  The end-to-end tests build network
# namespaces, so run this as root.
set -eu
cd "$(dirname "$0")"
VENV=${VENV:-.venv}

install_packages() {
    missing=""
    command -v python3 >/dev/null || missing="$missing python3"
    command -v ip >/dev/null || missing="$missing iproute2"
    command -v setpriv >/dev/null || missing="$missing util-linux"
    if command -v python3 >/dev/null && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        missing="$missing python3-venv"
    fi
    [ -z "$missing" ] && return
    if [ "$(id -u)" != 0 ]; then
        echo "build.sh: missing Debian packages:$missing (run as root to install them)" >&2
        exit 1
    fi
    apt-get update -qq
    # shellcheck disable=SC2086  # a list of package names
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
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

run_tests() {
    "$VENV/bin/ruff" check smcroute.py tests
    "$VENV/bin/vermin" -q -t=3.8- --violations --no-tips smcroute.py
    "$VENV/bin/python" -m pytest "$@"
}

case "${1:-}" in
    test)
        shift
        install_packages
        make_venv
        run_tests "$@"
        ;;
    *)
        echo "usage: $0 test [PYTEST ARGS]" >&2
        exit 64
        ;;
esac
