"""The ports the local S3 and the test services listen on: below the kernel's ephemeral range.

A client that polls a port before anything listens there (a health check while a server starts) could be
handed that very port as its own source port and be connected to itself: it then reads its own request back
as the answer. That made `test_main.py::test_the_command_end_to_end` fail once in five fresh-clone CI runs
("BadStatusLine: GET /healthz HTTP/1.1"). No port of the ephemeral range is ever chosen.
"""

from __future__ import annotations

from s3backup_syncer.local_s3 import GRPC_OFFSET, free_port


def ephemeral_start() -> int:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
        return int(ranges.read().split()[0])


def test_ports_and_their_grpc_twins_stay_below_the_ephemeral_range():
    taken: set[int] = set()
    for _ in range(200):
        port = free_port(taken, grpc_twin=True)
        assert port >= 10000 and port + GRPC_OFFSET < ephemeral_start()
    assert len(taken) == 400  # every port and twin handed out once
