#!/bin/sh
# Install everything the test suite needs: the package with its test extras,
# and the Debian tools some tests drive: the device-tree compiler, QEMU's
# tools (qemu-img/qemu-io for NBD; qemu-storage-daemon and virtiofsd, from
# qemu-system-common, as real vhost-user back ends; qemu-system-arm for the
# `virt` machine's device tree) and DPDK's testpmd (vhost-user net).
set -eu
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

install_testpmd() {
    # dpdk-dev from apt pulls 166 packages; extract just the package and
    # install the libraries testpmd links against (see docs/vhost-user.md).
    if [ ! -x /opt/dpdk-dev/usr/bin/dpdk-testpmd ]; then
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
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        $libs "librte-net-vhost$abi" "librte-mempool-ring$abi" libpcap0.8 ibverbs-providers \
        >/dev/null
    $SUDO ln -sf "$tp" /usr/local/bin/dpdk-testpmd
}

if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        device-tree-compiler qemu-system-arm qemu-system-common qemu-utils >/dev/null
    # testpmd is optional: its tests skip, naming the binary, when it is missing.
    install_testpmd || echo "warning: DPDK testpmd not installed; its tests will skip" >&2
fi
python3 -m pip install -q -e '.[test]'
