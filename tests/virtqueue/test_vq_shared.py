"""The driver and the device on two mappings of one memfd (as two processes have).

First within one process (two independent mmaps of the same memfd), then
with the device side in a real child process that inherits the fd.  Ring
contents are bus addresses, not pointers, so each side may map the pages
anywhere in its own address space; both use the base the bus announces.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from virtio_msg.memory import DmaPool, Region
from virtio_msg.spec import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC
from virtio_msg.virtqueue import DeviceQueue, DriverQueue

FEATURES = (1 << VIRTIO_F_INDIRECT_DESC) | (1 << VIRTIO_F_EVENT_IDX)


def test_driver_and_device_on_two_mappings_of_one_memfd() -> None:
    with Region(1024 * 1024) as driver_side:
        pool = DmaPool(driver_side)
        drv = DriverQueue(pool, 0, 64, FEATURES)
        with Region.from_fd(driver_side.fd, driver_side.base, driver_side.size) as device_side:
            dev = DeviceQueue.create(
                device_side, 64, drv.desc_addr, drv.driver_addr, drv.device_addr, FEATURES
            )
            for round_ in range(3):
                for i in range(40):
                    drv.add([b"ping", f"{round_}:{i}".encode()], [16], (round_, i))
                assert drv.kick_prepare()
                served = 0
                while (chain := dev.pop()) is not None:
                    reply = chain.read().upper()
                    chain.write(reply)
                    dev.add_used(chain.head, len(reply))
                    served += 1
                assert served == 40
                assert dev.needs_notification()
                used = drv.get_used()
                assert [token for token, _ in used] == [(round_, i) for i in range(40)]
                assert [data for _, data in used] == [
                    f"PING{round_}:{i}".encode() for i in range(40)
                ]
        drv.close()
        assert pool.stats().slots_used == 0


DEVICE_PROCESS = textwrap.dedent(
    """
    import json, sys
    from virtio_msg.memory import Region
    from virtio_msg.virtqueue import DeviceQueue

    fd, base, size, qsize, desc, avail, used, features = map(int, sys.argv[1:])
    with Region.from_fd(fd, base, size) as region:
        dev = DeviceQueue.create(region, qsize, desc, avail, used, features)
        served = 0
        while (chain := dev.pop()) is not None:
            reply = chain.read()[::-1]
            chain.write(reply)
            dev.add_used(chain.head, len(reply))
            served += 1
        print(json.dumps({"served": served, "notify": dev.needs_notification()}))
    """
)


def test_device_side_in_another_process_receives_the_memfd() -> None:
    with Region(1024 * 1024) as region:
        pool = DmaPool(region)
        drv = DriverQueue(pool, 0, 32, FEATURES)
        for i in range(20):
            drv.add([f"message {i:02d}".encode()], [5, 5], i)
        assert drv.kick_prepare()
        args = [region.fd, region.base, region.size, drv.size]
        args += [drv.desc_addr, drv.driver_addr, drv.device_addr, FEATURES]
        result = subprocess.run(
            [sys.executable, "-c", DEVICE_PROCESS, *map(str, args)],
            pass_fds=[region.fd],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert json.loads(result.stdout) == {"served": 20, "notify": True}
        used = drv.get_used()
        assert used == [(i, f"message {i:02d}".encode()[::-1]) for i in range(20)]
        drv.close()
