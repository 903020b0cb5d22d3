"""A backend process for the socket tests, driven by one command per stdin line.

Usage: ``python sockbus_backend_proc.py SOCKET``.  Prints one JSON line when
connected (with the announcement) and one per command:

    serve N rng|stall   ADD device N (stall: a device that never completes buffers)
    withdraw N          REMOVE device N
    notified N          how many kicks device N has seen
    hash                sha256 of this process's whole view of the region
    write OFF HEX       write bytes at region offset OFF
    read OFF LEN        read bytes at region offset OFF
    ping                PING the bus
    quit                hang up and exit
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

from virtio_msg.bus.client import connect
from virtio_msg.devices.rng import RngDevice
from virtio_msg.errors import VirtioMsgError
from virtio_msg.virtqueue import DeviceRing


class StallingRng(RngDevice):
    """An rng that takes requests and never completes them (I/O stays in flight)."""

    def __init__(self) -> None:
        super().__init__(seed=1)
        self.kicks = 0

    def queue_notify(self, index: int, queue: DeviceRing) -> None:
        self.kicks += 1


def say(**facts: Any) -> None:
    print(json.dumps(facts), flush=True)


def main() -> int:
    try:
        client = connect(sys.argv[1])
    except VirtioMsgError as exc:
        say(ok=False, error=str(exc))
        return 1
    ann = client.announcement
    say(ok=True, announcement={
        "profile": ann.profile.value, "max_msg_size": ann.max_msg_size,
        "base": ann.region_base, "size": ann.region_size, "timeout_ms": ann.timeout_ms,
        "max_devices": ann.max_devices, "features": ann.transport_features,
    })
    models: dict[int, RngDevice] = {}
    region = client.region
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        op, args = words[0], words[1:]
        try:
            if op == "serve":
                n = int(args[0])
                model = StallingRng() if args[1] == "stall" else RngDevice()
                client.serve(n, model)
                models[n] = model
                say(ok=True)
            elif op == "withdraw":
                client.withdraw(int(args[0]))
                say(ok=True)
            elif op == "notified":
                model = models[int(args[0])]
                say(ok=True, kicks=getattr(model, "kicks", 0))
            elif op == "hash":
                data = region.read(region.base, region.size)
                say(ok=True, sha256=hashlib.sha256(data).hexdigest())
            elif op == "write":
                region.write(region.base + int(args[0]), bytes.fromhex(args[1]))
                say(ok=True)
            elif op == "read":
                say(ok=True, hex=region.read(region.base + int(args[0]), int(args[1])).hex())
            elif op == "ping":
                client.ping()
                say(ok=True)
            elif op == "quit":
                client.close()
                say(ok=True)
                return 0
            else:
                say(ok=False, error=f"unknown command {op}")
        except (VirtioMsgError, ValueError, KeyError, IndexError) as exc:
            say(ok=False, error=str(exc), kind=type(exc).__name__,
                status=getattr(getattr(exc, "status", None), "name", None))
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
