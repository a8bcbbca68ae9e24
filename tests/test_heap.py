"""The heap trimmer (heap.py): when it trims, that real sockets keep working across a trim, and
that ``server.malloc_trim = false`` starts none.

The decision tests drive ``HeapTrimmer.check`` with a hand-moved clock, CPU time and socket
count, and count the calls of the trim function in place of the C library's."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from orgcast.heap import (
    CHECK_SECONDS,
    MIN_INTERVAL_SECONDS,
    QUIET_CPU_SHARE,
    HeapTrimmer,
    find_malloc_trim,
)
from orgcast.settings import ServerSettings
from orgcast.state import HEAP_TRIMMER
from tests.support import Inbox, call, eventually, joined, node_settings, start_server

WITHIN = 10.0


class Node:
    """What the trimmer reads, moved by hand: socket count, monotonic time, CPU time."""

    def __init__(self, sockets: int = 0) -> None:
        self.sockets = sockets
        self.now = 1000.0
        self.cpu = 5.0
        self.trims: list[int] = []

    def trim(self, pad: int) -> int:
        self.trims.append(pad)
        return 1

    def trimmer(self, after_sockets: int = 100) -> HeapTrimmer:
        return HeapTrimmer(
            lambda: self.sockets, self.trim, after_sockets,
            clock=lambda: self.now, cpu=lambda: self.cpu,
        )  # fmt: skip

    def tick(self, sockets: int | None = None, cpu_share: float = 0.0) -> None:
        """One check interval passes, with ``cpu_share`` of a CPU used in it."""
        if sockets is not None:
            self.sockets = sockets
        self.now += CHECK_SECONDS
        self.cpu += cpu_share * CHECK_SECONDS


BUSY = QUIET_CPU_SHARE * 2


def test_a_burst_is_trimmed_once_when_the_node_is_quiet_again() -> None:
    node = Node(sockets=10)
    trimmer = node.trimmer(after_sockets=100)
    for count in range(100, 2001, 300):  # connecting: busy and the count moving
        node.tick(count, BUSY)
        assert trimmer.check() is False
    node.tick(2000, BUSY)  # the last joins: busy at a steady count
    assert trimmer.check() is False
    node.tick()
    assert trimmer.check() is True
    assert node.trims == [0]
    for _ in range(int(3 * MIN_INTERVAL_SECONDS / CHECK_SECONDS)):  # steady: no more trims
        node.tick()
        assert trimmer.check() is False
    assert trimmer.trims == 1


def test_a_count_that_moved_less_than_after_sockets_is_never_trimmed() -> None:
    node = Node(sockets=50)
    trimmer = node.trimmer(after_sockets=100)
    for count in (60, 80, 149, 120, 51, 149):
        node.tick(count)
        node.tick()
        assert trimmer.check() is False
    assert node.trims == []


def test_a_burst_of_disconnects_is_trimmed_too() -> None:
    node = Node(sockets=1000)
    trimmer = node.trimmer(after_sockets=100)
    node.tick(400, BUSY)
    assert trimmer.check() is False
    node.tick()
    assert trimmer.check() is True
    assert node.trims == [0]


def test_trims_are_at_least_min_interval_apart() -> None:
    node = Node(sockets=0)
    trimmer = node.trimmer(after_sockets=100)
    node.tick(500, BUSY)
    trimmer.check()
    node.tick()
    assert trimmer.check() is True
    first = node.now
    node.tick(1000, BUSY)  # a second burst right after the first trim
    trimmer.check()
    while node.now + CHECK_SECONDS - first < MIN_INTERVAL_SECONDS:
        node.tick()
        assert trimmer.check() is False, node.now - first
    node.tick()
    assert trimmer.check() is True
    assert trimmer.trims == 2


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_has_malloc_trim_and_it_runs() -> None:
    trim = find_malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)


# -- a real node ----------------------------------------------------------------------------------

SOCKETS = 6


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
async def test_the_node_trims_after_a_burst_of_real_sockets_and_they_keep_working(
    database_url: str, tmp_path: Path
) -> None:
    server_settings = ServerSettings(port=0, malloc_trim_after_sockets=SOCKETS - 1)
    settings = node_settings(database_url, tmp_path, server=server_settings)
    async with start_server(settings) as node:
        trimmer = node.app[HEAP_TRIMMER]
        assert trimmer.trims == 0
        tenant = await node.create_tenant()
        clients = [await joined(node, tenant, f"u{i}") for i in range(SOCKETS)]

        async def trimmed() -> bool:
            return trimmer.trims >= 1

        await eventually(trimmed, WITHIN)
        inbox = Inbox(clients[1], "message", f"/{tenant.slug}")
        ack = await call(clients[0], tenant.slug, "message", {"room": "lobby", "body": "after"})
        assert ack["ok"] is True, ack
        message = await inbox.get(WITHIN)
        assert (message["seq"], message["body"]) == (ack["seq"], "after")
        again = await call(clients[-1], tenant.slug, "join", {"room": "second"})
        assert (again["ok"], again["room"]) == (True, "second")


async def test_malloc_trim_false_starts_no_trimmer(database_url: str, tmp_path: Path) -> None:
    server_settings = ServerSettings(port=0, malloc_trim=False, malloc_trim_after_sockets=1)
    settings = node_settings(database_url, tmp_path, server=server_settings)
    async with start_server(settings) as node:
        tenant = await node.create_tenant()
        client = await joined(node, tenant, "alice")
        assert HEAP_TRIMMER not in node.app
        ack = await call(client, tenant.slug, "message", {"room": "lobby", "body": "hi"})
        assert ack["ok"] is True, ack
