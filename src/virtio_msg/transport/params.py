"""Bus-instance transport parameters, shared by both transport engines.

The spec makes the bus advertise revision, maximum message size and transport
feature bits before any transport message (BUS-08); the engines read them
from this one immutable object (open question 23's ``BusParams``).
"""

from __future__ import annotations

from dataclasses import dataclass

import virtio_msg.spec as C
from virtio_msg.wire import Profile, profile_limits

RING_KINDS = ("auto", "split", "packed")
"""Values of :attr:`BusParams.ring`."""


@dataclass(frozen=True, init=False)
class BusParams:
    """Parameters of one bus instance.

    ``max_msg_size`` None means the profile's default (264 for ``spec``, 44 for
    ``linux-rfc1``).  ``timeout_ms`` bounds every request.
    """

    profile: Profile
    max_msg_size: int
    transport_features: int
    revision: int
    timeout_ms: int
    reset_poll_limit: int
    """How many GET_DEVICE_STATUS polls a driver makes waiting for a reset to finish."""
    config_retries: int
    """How often a multi-chunk config read is retried while generations differ."""
    polling_only: bool
    """Endpoints agreed to poll the rings: no EVENT_AVAIL / EVENT_USED (open question 11)."""
    ring: str
    """Ring kind drivers use: ``auto`` (packed when offered), ``split`` or ``packed`` (forced)."""

    def __init__(
        self,
        profile: Profile | str = Profile.SPEC,
        max_msg_size: int | None = None,
        transport_features: int = 0,
        *,
        revision: int = C.REVISION_1,
        timeout_ms: int = 5000,
        reset_poll_limit: int = 1000,
        config_retries: int = 5,
        polling_only: bool = False,
        ring: str = "auto",
    ) -> None:
        """Validate and store the parameters (ValueError names the bad one)."""
        try:
            wire = Profile(profile)
        except ValueError:
            raise ValueError(f"unknown wire profile {profile!r}") from None
        lo, hi, default = profile_limits(wire)
        size = default if max_msg_size is None else max_msg_size
        if not lo <= size <= hi:
            raise ValueError(
                f"maximum message size {size} outside {lo}..{hi} for profile {wire.value}"
            )
        if revision != C.REVISION_1:
            raise ValueError(f"transport revision {revision} is not supported (only 1)")
        if transport_features < 0 or transport_features >> 64:
            raise ValueError(f"transport feature bits {transport_features:#x} out of range")
        if timeout_ms <= 0:
            raise ValueError(f"timeout {timeout_ms} ms must be positive")
        if reset_poll_limit <= 0 or config_retries <= 0:
            raise ValueError("reset_poll_limit and config_retries must be positive")
        if ring not in RING_KINDS:
            raise ValueError(f"ring kind {ring!r} is not one of {', '.join(RING_KINDS)}")
        for name, value in (
            ("profile", wire),
            ("max_msg_size", size),
            ("transport_features", transport_features),
            ("revision", revision),
            ("timeout_ms", timeout_ms),
            ("reset_poll_limit", reset_poll_limit),
            ("config_retries", config_retries),
            ("polling_only", polling_only),
            ("ring", ring),
        ):
            object.__setattr__(self, name, value)

    @property
    def max_size(self) -> int:
        """The maximum message size."""
        return self.max_msg_size

    @property
    def notification_data(self) -> bool:
        """Whether EVENT_AVAIL can carry notification data on this bus (BUS-51).

        The linux-rfc1 profile cannot: the seed decodes ``next_offset_wrap``
        with ``|`` instead of ``&`` (linux-rfc1.md defect 23), so with it
        VIRTIO_F_NOTIFICATION_DATA is never negotiated.
        """
        return not self.rfc1

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
