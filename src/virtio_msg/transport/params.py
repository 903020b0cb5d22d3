"""Bus-instance transport parameters, shared by both transport engines.

The spec makes the bus advertise revision, maximum message size and transport
feature bits before any transport message (BUS-08); the engines read them
from this one immutable object (open question 23's ``BusParams``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import virtio_msg.spec as C
from virtio_msg.wire import Profile, profile_limits


@dataclass(frozen=True)
class BusParams:
    """Parameters of one bus instance.

    ``max_msg_size`` None means the profile's default (264 for ``spec``, 44 for
    ``linux-rfc1``).  ``timeout_ms`` bounds every request.
    """

    profile: Profile = Profile.SPEC
    max_msg_size: int | None = None
    transport_features: int = 0
    revision: int = C.REVISION_1
    timeout_ms: int = 5000
    reset_poll_limit: int = 1000
    """How many GET_DEVICE_STATUS polls a driver makes waiting for a reset to finish."""
    config_retries: int = 5
    """How often a multi-chunk config read is retried while generations differ."""
    polling_only: bool = field(default=False)
    """Endpoints agreed to poll the rings: no EVENT_AVAIL / EVENT_USED (open question 11)."""

    def __post_init__(self) -> None:
        """Normalise the profile and validate every limit."""
        object.__setattr__(self, "profile", Profile(self.profile))
        lo, hi, default = profile_limits(self.profile)
        if self.max_msg_size is None:
            object.__setattr__(self, "max_msg_size", default)
        if not lo <= self.max_size <= hi:
            raise ValueError(
                f"maximum message size {self.max_msg_size} outside {lo}..{hi} "
                f"for profile {self.profile.value}"
            )
        if self.revision != C.REVISION_1:
            raise ValueError(f"transport revision {self.revision} is not supported (only 1)")
        if self.transport_features < 0 or self.transport_features >> 64:
            raise ValueError(f"transport feature bits {self.transport_features:#x} out of range")
        if self.timeout_ms <= 0:
            raise ValueError(f"timeout {self.timeout_ms} ms must be positive")
        if self.reset_poll_limit <= 0 or self.config_retries <= 0:
            raise ValueError("reset_poll_limit and config_retries must be positive")

    @property
    def max_size(self) -> int:
        """The maximum message size, resolved."""
        return cast(int, self.max_msg_size)

    @property
    def rfc1(self) -> bool:
        """True for the seed kernel's profile."""
        return self.profile is Profile.LINUX_RFC1

    @property
    def strict_config(self) -> bool:
        """True when the bus selected the strict configuration-generation profile."""
        return bool(self.transport_features & C.VIRTIO_MSG_F_STRICT_CONFIG_GENERATION)

    @property
    def header_size(self) -> int:
        """Header size of the profile."""
        return C.RFC1_HEADER_SIZE if self.rfc1 else C.SPEC_HEADER_SIZE
