"""Allow ``python -m virtio_msg``."""

from __future__ import annotations

import sys

from virtio_msg.cli import main

sys.exit(main())
