"""virtio-rng device model: fills each writable buffer with random bytes."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

from virtio_msg.spec import DeviceId
from virtio_msg.transport.model import RING_FEATURES, DeviceModel
from virtio_msg.virtqueue import DeviceRing


class RngDevice(DeviceModel):
    """Entropy device (device id 4); ``seed`` makes it deterministic for tests."""

    device_id = DeviceId.ENTROPY
    name = "rng"

    def __init__(
        self, *, seed: int | None = None, queue_max_size: int = 256, ring_features: int = ~0
    ) -> None:
        """Use os.urandom, or a seeded generator when ``seed`` is given."""
        super().__init__(
            num_queues=1, queue_max_size=queue_max_size, ring_features=ring_features & RING_FEATURES
        )
        self.source: Callable[[int], bytes]
        if seed is None:
            self.source = os.urandom
        else:
            self.source = random.Random(seed).randbytes
        self.bytes_served = 0

    def queue_notify(self, index: int, queue: DeviceRing) -> None:
        """Serve every available request of the queue."""
        served = False
        while (chain := queue.pop()) is not None:
            written = chain.write(self.source(chain.writable_len)) if chain.writable_len else 0
            self.bytes_served += written
            queue.add_used(chain.head, written)
            served = True
        if served:
            self.notify_used(index)


__all__ = ["RngDevice"]
