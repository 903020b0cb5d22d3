"""Ring indices are published with one store: a polling peer never sees a torn value.

struct.pack_into zero-fills its target before writing; a peer process that polls
``avail.idx`` between the two steps would read 0 and believe 65535 buffers were
posted.  Region.write_u16 stores an aligned u16 in one go.  The peer here is a
real second process mapping the same memfd, as a backend or a vhost-user daemon
would.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from virtio_msg.memory import Region

READER = textwrap.dedent(
    """
    import mmap, os, struct, sys
    fd, size, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    mm = mmap.mmap(fd, size)
    u16 = struct.Struct("<H")
    os.write(1, b"R")  # ready
    zeros = reads = 0
    while reads < rounds:
        value = u16.unpack_from(mm, 64)[0]
        reads += 1
        if value == 0:
            zeros += 1
        if value == 0xFFFF:
            break
    print(zeros, reads)
    """
)


def test_polling_peer_never_reads_a_torn_index() -> None:
    with Region(1 << 16) as region:
        addr = region.base + 64
        region.write_u16(addr, 1)
        child = subprocess.Popen(
            [sys.executable, "-c", READER, str(region.fd), str(region.size), "3000000"],
            pass_fds=(region.fd,),
            stdout=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.read(1) == b"R"
            for i in range(2_000_000):
                region.write_u16(addr, 1 + i % 0xFFFE)  # 1..0xFFFE: never 0, never the stop value
                if child.poll() is not None:
                    break
            region.write_u16(addr, 0xFFFF)
            out, _ = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
        zeros, reads = map(int, out.split())
        assert reads > 0
        assert zeros == 0, f"the peer read a torn 0 {zeros} times in {reads} reads"
