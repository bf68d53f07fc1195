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
#   ./build.sh soak [--minutes N]   churn the daemon for N minutes (10), report its RSS and fds
#
# test, bench and soak run in a VM (tests/vm) where this kernel has no
# multicast routing.
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
# What the test VM needs, on a kernel without multicast routing.
VM_PACKAGES="qemu-system-x86_64:qemu-system-x86 cpio:cpio depmod:kmod"
VM_CACHE=/var/cache/smcroute-ci

install_packages() {
    missing=""
    for entry in $1; do
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

# Can this kernel route multicast (IPv4 and IPv6)?  Asked in a network
# namespace of its own: MRT_INIT on raw IGMP and ICMPv6 sockets.
kernel_routes_multicast() {
    unshare --net "$PYTHON" -c 'import socket
for family, proto, level in ((socket.AF_INET, socket.IPPROTO_IGMP, socket.IPPROTO_IP),
                             (socket.AF_INET6, socket.IPPROTO_ICMPV6, socket.IPPROTO_IPV6)):
    socket.socket(family, socket.SOCK_RAW, proto).setsockopt(level, 200, (1).to_bytes(4, "little"))
' 2>/dev/null
}

# Debian's kernel (IPv4 and IPv6 multicast routing with tables, veth, 9p)
# unpacked in $VM_CACHE/kernel, and an initramfs that mounts the host's
# root over 9p and hands over to the job's init (tests/vm/init).
vm_kernel() {
    kernel=$VM_CACHE/kernel
    if [ ! -f "$kernel/version" ]; then
        rm -rf "$kernel" && mkdir -p "$kernel"
        package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
        (cd "$kernel" && apt-get download -q "$package" 2>/dev/null && dpkg-deb -x ./*.deb root && rm ./*.deb)
        ls "$kernel/root/lib/modules" >"$kernel/version.new"
        depmod -b "$kernel/root" "$(cat "$kernel/version.new")"
        mv "$kernel/version.new" "$kernel/version"
    fi
    version=$(cat "$kernel/version")
    vmlinuz=$kernel/root/boot/vmlinuz-$version
    initrd=$kernel/initrd.gz
    [ -f "$initrd" ] && [ "$initrd" -nt build.sh ] && return
    tree=$(mktemp -d)
    mkdir -p "$tree/bin" "$tree/root" "$tree/mod"
    busybox=$(command -v busybox)
    cp "$busybox" "$tree/bin/busybox"
    for lib in $(ldd "$busybox" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}'); do
        mkdir -p "$tree$(dirname "$lib")" && cp "$lib" "$tree$lib"
    done
    modules=""
    for module in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
                  9pnet 9pnet_virtio netfs fscache 9p; do
        cp "$(find "$kernel/root/lib/modules/$version" -name "$module.ko")" "$tree/mod/"
        modules="$modules $module"
    done
    {
        echo '#!/bin/busybox sh'
        echo "for module in$modules; do /bin/busybox insmod /mod/\$module.ko; done"
        echo '/bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose host /root'
        # shellcheck disable=SC2016  # $job is the kernel's, in the VM
        echo 'exec /bin/busybox switch_root /root /bin/sh "$job/init" "$job"'
    } >"$tree/init"
    chmod 0755 "$tree/init"
    (cd "$tree" && find . | cpio -o -H newc --quiet | gzip -1) >"$initrd"
    rm -rf "$tree"
}

# Run "$@" in a VM on that kernel, with this machine's root as its root:
# emulated (TCG), so slower, but the same programs and files.
run_in_vm() {
    install_packages "$VM_PACKAGES"
    vm_kernel
    job=$(mktemp -d "$VM_CACHE/job.XXXXXX")
    cp tests/vm/init "$job/init"
    ln -s "$kernel/root/lib/modules" "$job/modules"
    {
        echo "cd '$(pwd)'"
        for name in CI VENV PYTHON; do
            eval "value=\${$name-}"
            [ -n "$value" ] && printf "export %s='%s'\n" "$name" "$value"
        done
        echo "export SMCROUTE_EMULATED=1"      # for the bounds of the timed tests
        printf "'%s' " "$@"
        echo
    } >"$job/job.sh"
    echo "build.sh: this kernel has no multicast routing: running $* in a VM on Debian's $version"
    qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp "$(nproc)" -m 6G -nographic -no-reboot \
        -monitor none -kernel "$vmlinuz" -initrd "$initrd" \
        -virtfs local,path=/,mount_tag=host,security_model=passthrough,multidevs=remap,id=host \
        -append "console=ttyS0 quiet panic=-1 job=$job" </dev/null
    status=$(cat "$job/status" 2>/dev/null || echo 1)
    rm -rf "$job"
    return "$status"
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
        if kernel_routes_multicast; then
            exec python3 tests/demo.py
        fi
        run_in_vm python3 tests/demo.py
        ;;
    test)
        shift
        install_packages "$PACKAGES"
        make_venv
        build_pyz smcroute.pyz
        if kernel_routes_multicast; then
            run_tests "$@"
        else
            # The VM has no network: the container tests' Debian base is
            # made here first.
            PYTHONPATH=tests "$VENV/bin/python" -c 'import test_container; test_container.base_tarball()'
            # Emulated, a test may take ten times its usual bound.
            run_in_vm ./build.sh vm-tests --timeout=1200 "$@"
        fi
        ;;
    vm-tests)
        shift
        run_tests "$@"
        ;;
    soak)
        shift
        install_packages "$PACKAGES"
        if kernel_routes_multicast; then
            /usr/bin/python3 bench/soak.py "$@"
        else
            run_in_vm /usr/bin/python3 bench/soak.py "$@"
        fi
        ;;
    bench)
        shift
        # Debian's Python: a venv or pyenv one may load .pth hooks that
        # cost the memory and start-up figures.
        if [ "$(id -u)" != 0 ]; then
            echo "build.sh: bench builds network namespaces: run it as root" >&2
            exit 1
        fi
        install_packages "python3:python3 smcroutectl:smcroute"
        if kernel_routes_multicast; then
            exec /usr/bin/python3 bench/compare.py "$@"
        fi
        # Emulated, the times say little on their own: the same Python work
        # timed here natively tells how much slower the VM runs.
        pace=$(/usr/bin/python3 bench/compare.py --pace)
        run_in_vm /usr/bin/python3 bench/compare.py --native-pace "$pace" "$@"
        # And the daemon's own work natively, the kernel's part stubbed out.
        /usr/bin/python3 bench/native.py
        ;;
    *)
        echo "usage: $0 pyz [OUTPUT] | install [PREFIX] | uninstall [PREFIX] | demo | test [PYTEST ARGS]" \
            "| bench [ARGS] | soak [--minutes N]" >&2
        exit 64
        ;;
esac
