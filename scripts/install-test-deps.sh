#!/bin/sh
# Install everything the test suite needs: the package with its test extras,
# and the Debian tools some tests drive (device-tree compiler, QEMU tools).
set -eu
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        device-tree-compiler qemu-system-arm qemu-utils >/dev/null
fi
python3 -m pip install -q -e '.[test]'
