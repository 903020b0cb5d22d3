"""The README's two set-up commands, the scripts behind them and CI's use of them.

The README has exactly two set-up commands: one installs virtio-msg and runs
``virtio-msg run``, one installs the test dependencies and runs the suite;
neither installs into the system Python (Debian's is externally managed), and
``.ci/run`` runs the second.  ``scripts/install.sh`` is run here against stub
``python3``, ``apt-get`` and ``sudo`` programs that record what they are asked,
so its decisions on a fresh Debian (no ``python3-venv``) are tested without
touching the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_readme_has_exactly_two_set_up_commands_that_use_a_virtual_environment() -> None:
    commands = _setup_commands()
    assert len(commands) == 2, commands
    run, tests = commands
    assert all("\n" not in c for c in commands)  # one command line each
    assert run.endswith("virtio-msg run") and tests.endswith("-m pytest")
    for command in commands:
        for word in command.replace("&&", " ").split():
            if re.search(r"(^|/)(pip3?|python3?|virtio-msg)$", word):
                # never the system Python (externally managed on Debian 12)
                assert word.startswith(".venv/bin/"), (command, word)
        for script in re.findall(r"scripts/\S+\.sh", command):
            assert (ROOT / script).is_file(), script
            subprocess.run(["sh", "-n", str(ROOT / script)], check=True, timeout=30)


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    lines = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.startswith("#")]
    parts = [p.strip() for p in _setup_commands()[1].split("&&")]
    found = [next(i for i, ln in enumerate(lines) if ln.split()[:len(p.split())] == p.split())
             for p in parts]
    assert found == sorted(found), (parts, lines)  # the same commands, in the same order
    assert "scripts/install.sh" in (ROOT / "scripts" / "install-test-deps.sh").read_text()
    assert "python3 -m pip" not in (ROOT / "scripts" / "install-test-deps.sh").read_text()


STUB_PYTHON = """#!/bin/sh
echo "python3 $*" >> "$LOG"
case "$1 $2" in
  "-c import ensurepip") [ -e "$STATE/venv-installed" ] ;;
  "-m venv") mkdir -p "$3/bin"; printf '#!/bin/sh\\necho "venv-python $*" >> "$LOG"\\n' \
      > "$3/bin/python"; chmod +x "$3/bin/python" ;;
  "-V ") echo "Python 3.11.2" ;;
  *) exit 0 ;;
esac
"""
STUB_APT = """#!/bin/sh
echo "apt-get $*" >> "$LOG"
case " $* " in *" python3-venv "*) touch "$STATE/venv-installed" ;; esac
"""
STUB_SUDO = """#!/bin/sh
echo "sudo $1" >> "$LOG"
exec "$@"
"""


def _run_install(tmp: Path, *, venv_module: bool, args: list[str]) -> tuple[str, list[str]]:
    clone, bin_dir, state = tmp / "clone", tmp / "bin", tmp / "state"
    (clone / "scripts").mkdir(parents=True)
    bin_dir.mkdir()
    state.mkdir()
    shutil.copy(ROOT / "scripts" / "install.sh", clone / "scripts" / "install.sh")
    for name, text in [("python3", STUB_PYTHON), ("apt-get", STUB_APT), ("sudo", STUB_SUDO),
                       ("id", "#!/bin/sh\necho 1000\n")]:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    if venv_module:
        (state / "venv-installed").touch()
    log = tmp / "log"
    log.touch()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(log), "STATE": str(state),
           "HOME": str(tmp)}
    proc = subprocess.run(
        ["/bin/sh", str(clone / "scripts" / "install.sh"), *args], cwd=tmp, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (clone / ".venv" / "bin" / "python").exists()
    return proc.stdout, log.read_text().splitlines()


def test_install_on_a_fresh_debian_takes_python3_venv_from_apt_then_installs_in_the_venv(
    tmp_path: Path,
) -> None:
    out, calls = _run_install(tmp_path, venv_module=False, args=[])
    apt = [c for c in calls if c.startswith("apt-get")]
    assert apt[0] == "apt-get update -qq"
    assert apt[1].startswith("apt-get install") and apt[1].endswith(" python3-venv")
    assert "sudo apt-get" in calls  # not root (the stub id says uid 1000)
    assert calls.index("python3 -m venv .venv") > calls.index(apt[1])
    assert calls[-1] == "venv-python -m pip install -q ."  # the package, into .venv only
    assert not any(c.startswith("python3 -m pip") for c in calls)
    assert "install: apt-get install python3-venv" in out
    assert "install: creating the virtual environment .venv" in out
    assert "install: pip install . into .venv" in out


def test_install_with_python3_venv_present_leaves_apt_alone_and_passes_its_arguments(
    tmp_path: Path,
) -> None:
    _out, calls = _run_install(tmp_path, venv_module=True, args=["-e", ".[test]"])
    assert not any(c.startswith("apt-get") for c in calls)
    assert calls[-1] == "venv-python -m pip install -q -e .[test]"


def test_install_refuses_an_old_python(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(
        '#!/bin/sh\ncase "$1 $2" in "-c import sys"*) exit 1 ;; "-V ") echo Python 3.9.2 ;; '
        "esac\nexit 0\n"
    )
    (bin_dir / "python3").chmod(stat.S_IRWXU)
    proc = subprocess.run(
        ["/bin/sh", str(ROOT / "scripts" / "install.sh")],
        env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 1
    assert "Python 3.11 or newer is needed; python3 is Python 3.9.2" in proc.stderr
