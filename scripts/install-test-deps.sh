#!/bin/sh
# Install everything the test suite needs: the package with its test extras
# (into the clone's virtual environment .venv, by scripts/install.sh), and
# the Debian tools some tests drive: the device-tree compiler, a C compiler
# and Python's headers (pip builds pylibfdt, which dtschema needs, from
# source), QEMU's tools (qemu-img/qemu-io for NBD; qemu-storage-daemon and virtiofsd, from
# qemu-system-common, as real vhost-user back ends; qemu-system-arm for the
# `virt` machine's device tree and the guest harness's boots) and DPDK's
# testpmd (vhost-user net). For `virtio-msg guest`, Debian arm64 packages
# (busybox-static, the Python 3.11 runtime, the stock arm64 kernel) are
# downloaded into a cache folder (VIRTIO_MSG_ARM64_CACHE, default
# ~/.cache/virtio-msg/arm64-debs) and the stock kernel's Image is unpacked there.
set -eu
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

step() {
    echo "install-test-deps: $*"
}

ARM64_PACKAGES="busybox-static python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
libc6 zlib1g libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libgcc-s1 libcrypt1"

install_arm64_guest() {
    # Packages for the guest harness's initramfs, downloaded (not installed).
    cache=${VIRTIO_MSG_ARM64_CACHE:-$HOME/.cache/virtio-msg/arm64-debs}
    mkdir -p "$cache"
    step "adding the arm64 architecture to apt"
    $SUDO dpkg --add-architecture arm64
    step "apt-get update (with arm64)"
    $SUDO apt-get update -qq
    for p in $ARM64_PACKAGES; do
        if ! ls "$cache/${p}_"*_arm64.deb >/dev/null 2>&1; then
            step "downloading $p:arm64 into $cache"
            (cd "$cache" && apt-get download -qq "$p:arm64" 2>/dev/null)
        fi
    done
    kpkg=$(apt-cache depends linux-image-arm64:arm64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    kpkg=${kpkg%:arm64}
    if ! ls "$cache/${kpkg}_"*_arm64.deb >/dev/null 2>&1; then
        step "downloading the stock arm64 kernel $kpkg into $cache"
        (cd "$cache" && apt-get download -qq "$kpkg:arm64" 2>/dev/null)
    fi
    if [ ! -s "$cache/stock-kernel/Image" ]; then
        step "unpacking $kpkg's Image into $cache/stock-kernel"
        mkdir -p "$cache/stock-kernel"
        dpkg-deb --fsys-tarfile "$cache/${kpkg}_"*_arm64.deb | tar -x -O --wildcards './boot/vmlinuz-*' \
            > "$cache/stock-kernel/Image"
    fi
}

install_testpmd() {
    # dpdk-dev from apt pulls 166 packages; extract just the package and
    # install the libraries testpmd links against (see docs/vhost-user.md).
    if [ ! -x /opt/dpdk-dev/usr/bin/dpdk-testpmd ]; then
        step "downloading dpdk-dev and unpacking it into /opt/dpdk-dev"
        tmp=$(mktemp -d)
        (cd "$tmp" && apt-get download -qq dpdk-dev)
        $SUDO mkdir -p /opt/dpdk-dev
        $SUDO dpkg -x "$tmp"/dpdk-dev_*.deb /opt/dpdk-dev
        rm -rf "$tmp"
    fi
    tp=/opt/dpdk-dev/usr/bin/dpdk-testpmd
    abi=$(ldd "$tp" | sed -n 's/.*librte_eal\.so\.\([0-9]*\).*/\1/p' | head -1)
    libs=$(ldd "$tp" | awk '/not found/ && /librte_/ {print $1}' \
        | sed -E 's/^librte_(.*)\.so\.[0-9]+$/\1/' | tr _ - \
        | while read -r n; do
            case "$n" in *[0-9]) echo "librte-$n-$abi" ;; *) echo "librte-$n$abi" ;; esac
        done)
    step "installing the DPDK $abi libraries testpmd links against"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        $libs "librte-net-vhost$abi" "librte-mempool-ring$abi" libpcap0.8 ibverbs-providers \
        >/dev/null
    $SUDO ln -sf "$tp" /usr/local/bin/dpdk-testpmd
}

if command -v apt-get >/dev/null 2>&1; then
    step "apt-get update"
    $SUDO apt-get update -qq
    step "installing device-tree-compiler qemu-system-arm qemu-system-common qemu-utils cpio" \
        "(dtc, qemu-img/qemu-io, qemu-storage-daemon, virtiofsd, the arm64 guest)"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        device-tree-compiler qemu-system-arm qemu-system-common qemu-utils cpio >/dev/null
    # dtschema (a test extra) needs pylibfdt, which PyPI ships as source only.
    # The compiled pool prototype's tests (tests/memory/test_bounce_native.py) use them too.
    step "installing gcc libc6-dev python3-dev (pip builds pylibfdt, which dtschema needs;" \
        "the compiled pool prototype's tests build benchmarks/native/_bounce.c)"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        gcc libc6-dev python3-dev >/dev/null
    install_arm64_guest
    # tshark reads the captures with the shipped Lua dissector; answer its debconf
    # question (setuid dumpcap) beforehand so the install never prompts.
    step "installing tshark (Wireshark's terminal reader, for the capture tests)"
    echo "wireshark-common wireshark-common/install-setuid boolean false" \
        | $SUDO debconf-set-selections
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        tshark >/dev/null
    # testpmd is optional: its tests skip, naming the binary, when it is missing.
    step "installing DPDK's testpmd into /opt/dpdk-dev (vhost-user net tests)"
    install_testpmd || echo "warning: DPDK testpmd not installed; its tests will skip" >&2
else
    step "no apt-get: skipping the Debian tools (tests that need them skip, naming them)"
fi
step "installing virtio-msg with its test extras into .venv (scripts/install.sh)"
sh scripts/install.sh -e '.[test]'
step "done: run the suite with .venv/bin/python -m pytest"
