#!/bin/sh
# Install virtio-msg into a virtual environment inside the clone (.venv), so
# that Debian's externally managed system Python is never touched.  Python 3
# and its venv module (Debian's python3-venv, missing on a fresh machine) come
# from apt-get when they are missing (with sudo unless run as root).  Then pip
# installs the arguments into .venv (default: the package itself, `.`; the
# test script passes `-e .[test]`).  Every step is printed before it runs.
# Afterwards: .venv/bin/virtio-msg, .venv/bin/python.
set -eu
cd "$(dirname "$0")/.."
VENV=.venv
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

step() {
    echo "install: $*"
}

missing=""
if ! command -v python3 >/dev/null 2>&1; then
    missing="python3 python3-venv"
elif ! python3 -c 'import ensurepip' 2>/dev/null; then
    missing="python3-venv"
fi
if [ -n "$missing" ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install: error: Python 3.11 or newer with its venv module is needed ($missing)" >&2
        exit 1
    fi
    step "apt-get update"
    $SUDO apt-get update -qq
    step "apt-get install $missing (python3 -m venv needs them)"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        $missing >/dev/null
fi
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install: error: Python 3.11 or newer is needed; python3 is $(python3 -V 2>&1)" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    step "creating the virtual environment $VENV ($(python3 -V 2>&1))"
    python3 -m venv "$VENV"
fi
[ $# -gt 0 ] || set -- .
step "pip install $* into $VENV (the dependencies come from the package index)"
"$VENV/bin/python" -m pip install -q "$@"
step "done: $VENV/bin/virtio-msg and $VENV/bin/python are ready"
