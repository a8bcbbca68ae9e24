"""Start ``orgcast`` with benchmark-only switches that have no setting, for A/B runs.

    python benchmarks/orgcast_variant.py serve --port 8080 --migrate

``ORGCAST_BENCH_CODEC=stdlib`` runs the Socket.IO server with the standard library's ``json``
instead of the orjson codec, and decodes every stored body per packet as before the codec existed.
``ORGCAST_BENCH_STORE=statements`` stores a PostgreSQL batch as before the one-statement write:
a transaction with a room upsert and a message insert. ``ORGCAST_BENCH_POLL=library`` leaves the
engine's own ``AsyncSocket.poll`` (a task per wake-up) on every socket.
``ORGCAST_BENCH_ORDERING=off`` sends stored messages straight to the room, without ordered
delivery's per-room state (the cost of DESIGN §11 on one node).
``ORGCAST_BENCH_OUTBOX=off`` stores messages with the statement of before webhooks (no outbox
CTEs, no endpoint generation check): what a node without webhooks would cost.
``ORGCAST_BENCH_SOCKETS=library`` leaves python-engineio's own per-socket queue, ping task,
reader task and writer task (no lean sockets, patches.py 8).
``ORGCAST_BENCH_COMMIT=timer`` restores the group commit before it became adaptive: every batch,
also one that found the writer idle, waits up to ``batch_max_delay_ms`` (set it, e.g. 2) for more.
``ORGCAST_BENCH_TRACEMALLOC=DIR`` traces allocations (8 frames) and writes a snapshot to
``DIR/snapshot-<n>.pickle`` for each file ``DIR/request-<n>`` (``benchmarks/idle.py --trace``
compares them).
``ORGCAST_BENCH_EXPIRY=off`` leaves sockets out of access control (no expiry entry, no index
entry), to measure what it costs.
``ORGCAST_BENCH_JOIN=before`` restores the join of before round 3: its seq always read from the
database by a query built per call, its member list copied and handed to the library as a list
of dicts. ``ORGCAST_BENCH_WRITER=session`` stores the writer's batches through a session per batch
(a pool checkout each), as before the writer kept a connection of its own.
``ORGCAST_BENCH_GC=off`` disables the cyclic garbage collector (reference counting still frees
most objects): to see what collections of a heap that grows with the sockets cost.
``ORGCAST_BENCH_WORKER=off`` starts no webhook delivery worker (outbox rows are still written):
what delivering costs the node, apart from writing the outbox.
``ORGCAST_BENCH_DRAIN_INTERVAL=SECONDS`` sets the webhook worker's pause between rounds while it
has a backlog (``deliveries.MIN_ROUND_INTERVAL``, 0.005): a slower drain, to see what draining
costs the message path.
``ORGCAST_BENCH_GC=library`` leaves Python's garbage collector as it is (no freeze after startup,
youngest threshold 700; the same as ``ORGCAST_SERVER__GC_YOUNG_THRESHOLD=0``).
``ORGCAST_BENCH_GCLOG=FILE`` appends a line per collection of generation 1 or 2 (generation,
pause in ms, Unix time) to FILE.
``ORGCAST_BENCH_PROBE=DIR`` answers each file ``DIR/request-<n>`` (its text: actions, one a line,
of ``stats``, ``trim``, ``collect``) with ``DIR/probe-<n>.json``: after each action, RSS and
``/proc/self/smaps_rollup``, glibc's ``mallinfo2`` and pymalloc's arena figures, and how long the
action took (``trim`` is ``malloc_trim(0)``; ``collect`` a full ``gc.collect()``).
``ORGCAST_BENCH_WIRE=aiohttp`` keeps aiohttp's connection handler, request and websocket response
for the life of every websocket (no hand-over to ``EngineWire``, patches.py 10).
Without any switch this is exactly ``orgcast``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any


def _stdlib_codec() -> None:
    # Must run before orgcast.realtime.server is imported: it binds these names at import time.
    from orgcast.realtime import codec

    class StdlibJson:
        @staticmethod
        def dumps(value: Any, **_: Any) -> str:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

        @staticmethod
        def loads(text: str | bytes, **_: Any) -> Any:
            return json.loads(text)

    codec.JsonCodec = StdlibJson
    codec.raw_json = json.loads


def _store_statements() -> None:
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    from orgcast.store import messages

    messages.batch_is_one_statement = lambda sessions: False
    messages.one_statement = lambda session: False
    # The transaction path is SQLite's; against PostgreSQL it needs PostgreSQL's ON CONFLICT.
    messages.sqlite_insert = pg_insert  # type: ignore[assignment]


def _unordered() -> None:
    from orgcast.services.ordering import OrderedDelivery

    def deliver(self: Any, tenant: str, row: Any, skip: Any = None) -> None:
        self._outlet.to_room(tenant, row, skip)

    def deliver_own(self: Any, tenant: str, row: Any, sid: str) -> None:
        self._outlet.to_room(tenant, row, sid)

    def nothing(self: Any, *args: Any) -> None:
        return None

    OrderedDelivery.deliver = deliver  # type: ignore[method-assign]
    OrderedDelivery.deliver_own = deliver_own  # type: ignore[method-assign,assignment]
    for name in ("joining", "joined", "left", "sending", "sent"):
        setattr(OrderedDelivery, name, nothing)


def _no_outbox() -> None:
    from orgcast.services import messages

    original = messages.MessageService.__init__

    def without_outbox(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["outbox"] = None
        original(self, *args, **kwargs)

    messages.MessageService.__init__ = without_outbox  # type: ignore[method-assign]


def _timer_commit() -> None:
    import asyncio
    import contextlib

    from orgcast.errors import Unavailable
    from orgcast.services.messages import MessageService

    async def run(self: Any) -> None:
        limit = self._settings.batch_max_size
        delay = self._settings.batch_max_delay_ms / 1000
        queue = self._queue
        while True:
            batch = [await queue.get()]
            try:
                while len(batch) < limit and not queue.empty():
                    batch.append(queue.get_nowait())
                if len(batch) < limit and delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            while len(batch) < limit:
                                batch.append(await queue.get())
                await self._flush(batch)
            except asyncio.CancelledError:
                self._fail(batch, Unavailable("server shutting down"))
                raise
            finally:
                for _ in batch:
                    queue.task_done()

    MessageService.run = run  # type: ignore[method-assign]


def _tracemalloc(directory: str) -> None:
    import threading
    import time
    import tracemalloc

    tracemalloc.start(8)

    def watch() -> None:
        # A file ``request-<n>`` asks for ``snapshot-<n>.pickle`` (signals wait for the loop).
        while True:
            for name in os.listdir(directory):
                if name.startswith("request-"):
                    n = name.removeprefix("request-")
                    os.unlink(os.path.join(directory, name))
                    target = os.path.join(directory, f"snapshot-{n}.pickle")
                    tracemalloc.take_snapshot().dump(target + ".tmp")
                    os.rename(target + ".tmp", target)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()


def _memory_stats() -> dict[str, Any]:
    """RSS and smaps_rollup in KiB, glibc's mallinfo2 and pymalloc's arena figures in bytes."""
    import ctypes
    import re
    import tempfile

    out: dict[str, Any] = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                out[key.strip().lower() + "_kb"] = int(rest.split()[0])

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost",
            )
        ]  # fmt: skip

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    out["glibc"] = {name: getattr(info, name) for name, _ in MallInfo2._fields_}
    # sys._debugmallocstats writes to C stderr: point fd 2 at a file for the call.
    with tempfile.TemporaryFile("w+") as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read()
    pymalloc = {}
    for key, pattern in (
        ("arenas", r"# arenas allocated current\s*=\s*([\d,]+)"),
        ("arenas_highwater", r"# arenas highwater mark\s*=\s*([\d,]+)"),
        ("allocated_bytes", r"# bytes in allocated blocks\s*=\s*([\d,]+)"),
        ("available_bytes", r"# bytes in available blocks\s*=\s*([\d,]+)"),
        ("unused_pool_bytes", r"unused pools \* \d+ bytes\s*=\s*([\d,]+)"),
        ("arena_bytes", r"arenas \* \d+ bytes/arena\s*=\s*([\d,]+)"),
    ):
        m = re.search(pattern, text)
        if m:
            pymalloc[key] = int(m.group(1).replace(",", ""))
    out["pymalloc"] = pymalloc
    import gc

    out["gc"] = {"stats": gc.get_stats(), "count": gc.get_count(), "frozen": gc.get_freeze_count()}
    return out


def _probe(directory: str) -> None:
    import ctypes
    import gc
    import threading
    import time

    libc = ctypes.CDLL("libc.so.6")

    def answer(actions: list[str]) -> list[dict[str, Any]]:
        steps = []
        for action in actions:
            t0 = time.perf_counter()
            if action == "trim":
                libc.malloc_trim(0)
            elif action == "collect":
                gc.collect()
            ms = (time.perf_counter() - t0) * 1000
            steps.append({"action": action, "ms": round(ms, 3), **_memory_stats()})
        return steps

    def watch() -> None:
        while True:
            for name in os.listdir(directory):
                if name.startswith("request-"):
                    n = name.removeprefix("request-")
                    path = os.path.join(directory, name)
                    with open(path) as f:
                        actions = f.read().split()
                    os.unlink(path)
                    target = os.path.join(directory, f"probe-{n}.json")
                    with open(target + ".tmp", "w") as f:
                        json.dump(answer(actions), f)
                    os.rename(target + ".tmp", target)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def _no_access_index() -> None:
    from orgcast.services.access import AccessControl

    async def nothing(self: Any, conn: Any) -> None:
        return None

    AccessControl.on_admitted = nothing  # type: ignore[method-assign]
    AccessControl.on_disconnected = nothing  # type: ignore[method-assign]


def _join_before() -> None:
    from orgcast.realtime import handlers
    from orgcast.services.ordering import OrderedDelivery
    from orgcast.services.presence import LocalPresence
    from orgcast.store import messages as store

    def unknown(self: Any, tenant: str, room: str) -> None:
        return None

    members = LocalPresence.members

    async def copies(self: Any, tenant: str, room: str) -> list[dict[str, str]]:
        return [dict(member) for member in await members(self, tenant, room)]

    async def room_state(session: Any, tenant_id: int, room: str) -> tuple[int, int] | None:
        from sqlalchemy import select

        from orgcast.store.models import Room

        query = select(Room.id, Room.last_seq).where(Room.tenant_id == tenant_id, Room.name == room)
        row = (await session.execute(query)).first()
        return None if row is None else (row[0], row[1])

    store.room_state = room_state
    OrderedDelivery.last_seq = unknown  # type: ignore[method-assign,assignment]
    LocalPresence.members = copies  # type: ignore[method-assign]
    handlers.members_json = lambda members: members


def _gc_log(path: str) -> None:
    """Append one line per collection of generation 1 or 2: generation, pause ms, time."""
    import gc
    import time

    out = open(path, "a", buffering=1)  # open for the life of the process
    started: list[float] = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 0:
            return
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pause = (time.perf_counter() - started[0]) * 1000
            out.write(f"{info['generation']} {pause:.2f} {time.time():.3f}\n")

    gc.callbacks.append(callback)


def main() -> int:
    if os.environ.get("ORGCAST_BENCH_SOCKETS") == "library":
        from orgcast.realtime import patches as lean

        lean.install_lean_sockets = lambda sio: None
    if os.environ.get("ORGCAST_BENCH_COMMIT") == "timer":
        _timer_commit()
    if os.environ.get("ORGCAST_BENCH_TRACEMALLOC"):
        _tracemalloc(os.environ["ORGCAST_BENCH_TRACEMALLOC"])
    if os.environ.get("ORGCAST_BENCH_PROBE"):
        _probe(os.environ["ORGCAST_BENCH_PROBE"])
    if os.environ.get("ORGCAST_BENCH_CODEC") == "stdlib":
        _stdlib_codec()
    if os.environ.get("ORGCAST_BENCH_STORE") == "statements":
        _store_statements()
    if os.environ.get("ORGCAST_BENCH_OUTBOX") == "off":
        _no_outbox()
    if os.environ.get("ORGCAST_BENCH_POLL") == "library":
        from orgcast.realtime import patches

        patches.fast_poll = lambda socket: None
    if os.environ.get("ORGCAST_BENCH_ORDERING") == "off":
        _unordered()
    if os.environ.get("ORGCAST_BENCH_EXPIRY") == "off":
        _no_access_index()
    if os.environ.get("ORGCAST_BENCH_JOIN") == "before":
        _join_before()
    if os.environ.get("ORGCAST_BENCH_GC") == "off":
        import gc

        gc.disable()
    if os.environ.get("ORGCAST_BENCH_WRITER") == "session":
        from orgcast.services.messages import MessageService

        MessageService.hold_connection = False
    if os.environ.get("ORGCAST_BENCH_WORKER") == "off":
        from orgcast.services.deliveries import DeliveryWorker

        async def idle(self: DeliveryWorker) -> None:
            await asyncio.Event().wait()

        DeliveryWorker.run = idle  # type: ignore[method-assign]
    if os.environ.get("ORGCAST_BENCH_DRAIN_INTERVAL"):
        from orgcast.services import deliveries

        deliveries.MIN_ROUND_INTERVAL = float(os.environ["ORGCAST_BENCH_DRAIN_INTERVAL"])
    if os.environ.get("ORGCAST_BENCH_GC") == "library":
        os.environ["ORGCAST_SERVER__GC_YOUNG_THRESHOLD"] = "0"
    if os.environ.get("ORGCAST_BENCH_WIRE") == "aiohttp":
        from orgcast.realtime import patches as wire

        wire.HAND_OVER = False
    if os.environ.get("ORGCAST_BENCH_GCLOG"):
        _gc_log(os.environ["ORGCAST_BENCH_GCLOG"])
    from orgcast.__main__ import main as orgcast_main

    return orgcast_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
