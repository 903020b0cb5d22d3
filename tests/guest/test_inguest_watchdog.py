"""The in-guest watchdog: a stuck check ends the run with a verdict, never a hang.

The watchdog runs inside the guest; here it runs on the host in a child process
whose "check" blocks forever, with a stand-in backend process that also blocks.
"""

from __future__ import annotations

import subprocess
import sys

from virtio_msg.guest.boot import guest_budget, parse_console

STUCK = """
import sys, threading, time
from virtio_msg.guest.inguest import Backend, Watchdog
dog = Watchdog(float(sys.argv[1]))
dog.backend = Backend([], argv=[sys.executable, "-X", "faulthandler", "-c",
                                "import time; print('backend up', flush=True); time.sleep(600)"])
dog.enter("blk")
threading.Event().wait(600)  # a check that never returns
"""


def test_watchdog_ends_a_stuck_check_with_a_failed_complete_verdict() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", STUCK, "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    checks = parse_console(proc.stdout)
    assert [(c.name, c.ok) for c in checks] == [("complete", False)]
    assert "within 2 s: the blk step was stuck" in checks[0].detail
    # the backend's threads were dumped (faulthandler on SIGABRT) and its output kept
    assert "VMSG-LOG backend output" in proc.stdout
    assert "backend up" in proc.stdout
    assert "Current thread" in proc.stdout or "Thread 0x" in proc.stdout
    # the watchdog's own process shows where its threads were
    assert "VMSG-LOG inguest threads:" in proc.stdout


def test_watchdog_stays_quiet_when_the_run_finishes() -> None:
    code = (
        "from virtio_msg.guest.inguest import Watchdog\n"
        "import time\n"
        "dog = Watchdog(1.0)\n"
        "dog.stop()\n"
        "time.sleep(2.5)\n"
        "print('finished')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "finished", proc.stdout


def test_guest_budget_leaves_room_for_boot_and_the_kernel_log() -> None:
    assert guest_budget(300) == 240
    assert guest_budget(600) == 510
    assert guest_budget(5) == 10  # never below ten seconds
