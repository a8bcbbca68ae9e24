"""The webhook delivery worker: every node runs one; rows are claimed with a lease.

Each round is one transaction (``store.webhooks.claim``): it leases due retries and batches
outbox events into new deliveries, at most ``endpoint_concurrency`` deliveries per endpoint at a
time on this node, so one slow endpoint holds only its own slots: other endpoints and tenants keep
their own pace, and the message path never waits on any of it. A round runs when this node
wrote outbox rows, when a delivery finishes, or every ``poll_interval_seconds`` (rows written by
other nodes, retries coming due); none runs while no endpoint is enabled anywhere (as of the last
refresh of the endpoint set), so an idle node without webhooks runs no transaction for them. A
node that dies holding leases loses them after ``timeout_seconds`` + 15 s; another node (or the
restarted one) then retries those deliveries.

The worker shares the node's event loop with the message path, so it is built to cost that path
as few loop turns and as little CPU per event as it can:

- A round that filled no batch (the worker keeps up) is followed by a pause of
  ``GATHER_SECONDS`` before the next one, so that under a steady stream of messages rounds come
  at most ~40 times a second with batches that grow with the load (up to ``max_batch``), instead
  of one small batch per message write. A round that filled one runs again as soon as a slot is
  free: there is a backlog. The pause adds at most ``GATHER_SECONDS`` to an event's lag.
- A successful attempt is recorded in the next round's transaction, all of them in one
  statement, instead of in a transaction of its own; the slot frees when the POST returns. A
  record lost in a crash means the delivery is attempted again (at-least-once). Failed attempts
  (rare, and they may disable the endpoint) are still recorded at once.
- Due retries are looked for once every ``poll_interval_seconds`` rather than in every round:
  retries are at least seconds apart and a dead node's leases last longer than that, so the
  extra wait is at most one poll interval, as it was for a node with nothing else to do.

An attempt is one POST with ``allow_redirects=False`` and a total timeout. A 2xx is success; a
410 fails the delivery and disables the endpoint; anything else (another status, a redirect,
a timeout, a reset, a response that is not HTTP) is a failed attempt, retried after the next
delay of ``retry_schedule_seconds`` (spread by ``retry_jitter``) until the delivery is older than
``max_age_hours``, when it is marked failed. An endpoint without a success for
``disable_after_hours`` is disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from functools import partial
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from ..metrics import Metrics, NullMetrics
from ..settings import WebhooksSettings
from ..store import webhooks as store
from ..store.engine import DB_ERRORS, Sessions
from ..tasks import cancel_and_wait
from .webhooks import WebhookService, forbidden_address, literal_ip, now_ms, sign

log = logging.getLogger(__name__)

LEASE_MARGIN_SECONDS = 15.0
PRUNE_INTERVAL_SECONDS = 600.0
PRUNE_BATCH = 5000
MIN_ROUND_INTERVAL = 0.005  # rounds are transactions: at most ~200 a second per node
GATHER_SECONDS = 0.025  # after a round that filled no batch: let events gather
USER_AGENT = "orgcast-webhooks"
STOP_GRACE_SECONDS = 1.0


class TargetRefused(OSError):
    """The target resolved to an address webhooks may not call."""


class GuardedResolver(AbstractResolver):
    """Resolves as aiohttp does, then refuses forbidden addresses: checked at every connection,
    so a name that resolved to a public address at creation cannot be pointed inward later."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            if forbidden_address(result["host"]):
                raise TargetRefused(f"{host} resolves to {result['host']}, a private address")
        return results

    async def close(self) -> None:
        await self._inner.close()


class DeliveryWorker:
    """Claims and delivers webhook batches until cancelled (one per node)."""

    def __init__(self, sessions: Sessions, settings: WebhooksSettings, webhooks: WebhookService,
                 refresh_interval: float, metrics: Metrics | None = None) -> None:  # fmt: skip
        self._sessions = sessions
        self._settings = settings
        self._webhooks = webhooks
        self._refresh_interval = refresh_interval
        self._metrics = metrics or NullMetrics()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: dict[str, int] = {}  # endpoint id -> deliveries in flight here
        self._delivered: list[store.Delivered] = []  # successes the next round records
        self._backlog = False
        self._due_now = False  # a redeliver made a delivery due: look in the next round
        self._lease_ms = int((settings.timeout_seconds + LEASE_MARGIN_SECONDS) * 1000)
        self._warned_at = 0.0
        self._stopping = False
        self.attempts = 0
        webhooks.on_written(self.wake)

    def wake(self, due: bool = False) -> None:
        """Run a round soon; with ``due``, one that also looks for due deliveries."""
        self._due_now = self._due_now or due
        self._wake.set()

    async def run(self) -> None:
        settings = self._settings
        connector = aiohttp.TCPConnector(
            limit=settings.max_in_flight,
            resolver=None if settings.allow_private_targets else GuardedResolver(),
        )
        timeout = aiohttp.ClientTimeout(total=settings.timeout_seconds)
        next_refresh = next_prune = next_due = 0.0
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            try:
                while not self._stopping:
                    self._wake.clear()
                    now = time.monotonic()
                    backlog = False
                    try:
                        if now >= next_refresh:
                            await self._webhooks.refresh()
                            if self._metrics.enabled:
                                async with self._sessions() as session:
                                    found = await store.backlog(session, now_ms())
                                self._metrics.webhook_queue(*found)
                            next_refresh = now + self._refresh_interval
                        if now >= next_prune:
                            await self.prune()
                            next_prune = now + PRUNE_INTERVAL_SECONDS
                        # No enabled endpoint anywhere (as of the last refresh): nothing can
                        # be claimed, so an idle node without webhooks runs no transaction.
                        if self._webhooks.event_tenants or self._delivered:
                            due = now >= next_due or self._due_now
                            if due:
                                next_due = now + settings.poll_interval_seconds
                                self._due_now = False
                            backlog = await self._round(http, due)
                    except DB_ERRORS:
                        self._degraded()
                    except Exception:
                        log.exception("webhook worker round failed; retrying")
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(settings.poll_interval_seconds):
                            await self._wake.wait()
                    await asyncio.sleep(MIN_ROUND_INTERVAL if backlog else GATHER_SECONDS)
            finally:
                # Attempts under way finish (and are recorded) if they can within a second; the
                # rest are cancelled, and their leases run out for another node to retry them.
                if self._tasks:
                    await asyncio.wait(set(self._tasks), timeout=STOP_GRACE_SECONDS)
                await cancel_and_wait(list(self._tasks))
                await self._flush()

    async def stop(self) -> None:
        """Finish the round under way instead of cancelling it inside a transaction."""
        self._stopping = True
        self._wake.set()

    def _degraded(self) -> None:
        now = time.monotonic()
        if now - self._warned_at > 10:
            self._warned_at = now
            log.warning("webhook worker: database unavailable; retrying")

    async def _round(self, http: aiohttp.ClientSession, due: bool) -> bool:
        """Record the successes since the last round and claim what there is room for; returns
        whether the last round that claimed anything filled a batch (there is a backlog)."""
        room = self._settings.max_in_flight - len(self._tasks)
        if not self._webhooks.event_tenants:
            room = 0
        delivered, self._delivered = self._delivered, []
        if room <= 0 and not delivered:
            return self._backlog
        claimed: list[store.Claimed] = []
        try:
            async with self._sessions.begin() as session:
                await store.relaxed_commit(session)
                await store.record_delivered(session, delivered, now_ms())
                if room > 0:
                    claimed = await store.claim(
                        session,
                        now=now_ms(),
                        lease_ms=self._lease_ms,
                        busy=self._busy,
                        per_endpoint=self._settings.endpoint_concurrency,
                        limit=room,
                        max_batch=self._settings.max_batch,
                        due=due,
                    )
        except BaseException:
            self._delivered[:0] = delivered  # not recorded: the next round tries again
            raise
        for delivery in claimed:
            task = asyncio.create_task(self._deliver(http, delivery))
            self._tasks.add(task)
            self._busy[delivery.endpoint_id] = self._busy.get(delivery.endpoint_id, 0) + 1
            task.add_done_callback(partial(self._done, delivery.endpoint_id))
        if claimed:
            self._backlog = any(d.events >= self._settings.max_batch for d in claimed)
        return self._backlog

    async def _flush(self) -> None:
        """Record the successes no round has recorded yet (at shutdown)."""
        delivered, self._delivered = self._delivered, []
        if not delivered:
            return
        try:
            async with self._sessions.begin() as session:
                await store.relaxed_commit(session)
                await store.record_delivered(session, delivered, now_ms())
        except DB_ERRORS:
            self._degraded()  # their leases run out: delivered again, at-least-once

    def _done(self, endpoint_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        left = self._busy.pop(endpoint_id, 1) - 1
        if left > 0:
            self._busy[endpoint_id] = left
        self._wake.set()

    async def _deliver(self, http: aiohttp.ClientSession, delivery: store.Claimed) -> None:
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            status = await self._post(http, delivery)
            if status == 410:
                error = "HTTP 410 Gone: the endpoint is disabled"
            elif 300 <= status < 400:
                error = f"HTTP {status}: redirects are not followed"
            elif not 200 <= status < 300:
                error = f"HTTP {status}"
        except TimeoutError:
            error = f"no response within {self._settings.timeout_seconds:g} s"
        except TargetRefused as exc:
            error = str(exc)
        except aiohttp.ClientConnectorError as exc:
            error = f"connection failed: {exc.os_error or exc}"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            error = f"{exc.__class__.__name__}: {exc}"[:500]
        except Exception as exc:
            log.exception("webhook delivery %s failed unexpectedly", delivery.id)
            error = f"internal: {exc.__class__.__name__}"
        elapsed = time.monotonic() - started
        latency_ms = int(elapsed * 1000)
        self.attempts += 1
        if error is None and status is not None and not delivery.failing:
            # Nothing to clear on the endpoint: the next round records it with the others.
            self._delivered.append(store.Delivered(delivery.id, status, latency_ms))
            self._metrics.webhook_delivery(delivery.slug, "delivered", elapsed)
            return
        try:
            result = await self._record(delivery, status, error, latency_ms)
            self._metrics.webhook_delivery(
                delivery.slug, result, elapsed if status is not None else None
            )
        except DB_ERRORS:
            # The lease runs out and the delivery is attempted again: at-least-once.
            self._degraded()
        except Exception:
            log.exception("webhook delivery %s: could not record the attempt", delivery.id)

    async def _post(self, http: aiohttp.ClientSession, delivery: store.Claimed) -> int:
        host = urlsplit(delivery.url).hostname or ""
        literal = literal_ip(host)
        if (
            literal is not None
            and not self._settings.allow_private_targets
            and forbidden_address(literal)
        ):
            raise TargetRefused(f"{host} is a private address")
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(delivery.secrets, delivery.id, timestamp, delivery.body),
        }
        async with http.post(
            delivery.url, data=delivery.body, headers=headers, allow_redirects=False
        ) as response:
            return response.status

    async def _record(
        self, delivery: store.Claimed, status: int | None, error: str | None, latency_ms: int
    ) -> str:
        """Record the attempt; returns its outcome as the metrics count it: ``delivered``,
        ``retry``, ``failed`` or ``disabled`` (the endpoint was disabled by it)."""
        settings = self._settings
        now = now_ms()
        disabled = False
        next_attempt: int | None = None
        if error is None:
            outcome = "delivered"
        elif status == 410:
            outcome = "failed"
        else:
            attempt = delivery.attempt + 1
            schedule = settings.retry_schedule_seconds
            delay = schedule[min(attempt, len(schedule)) - 1]
            delay *= 1 + random.uniform(-settings.retry_jitter, settings.retry_jitter)
            next_attempt = now + int(delay * 1000)
            if next_attempt > delivery.created_at + int(settings.max_age_hours * 3600_000):
                outcome, next_attempt = "failed", None
            else:
                outcome = "pending"
        async with self._sessions.begin() as session:
            await store.relaxed_commit(session)
            await store.record_attempt(
                session, delivery, now=now, status=outcome, http_status=status,
                latency_ms=latency_ms, error=error, next_attempt_at=next_attempt,
            )  # fmt: skip
            if error is None:
                if delivery.failing:  # else there is nothing to clear: save the round trip
                    await store.endpoint_succeeded(session, delivery.endpoint_id)
            elif status == 410:
                await store.disable_endpoint(session, delivery.endpoint_id, "gone (HTTP 410)", now)
                disabled = True
            else:
                disabled = await store.endpoint_failed(
                    session,
                    delivery.endpoint_id,
                    now=now,
                    disable_after_ms=int(settings.disable_after_hours * 3600_000),
                )
        if disabled:
            log.warning("webhook endpoint %s disabled: %s", delivery.endpoint_id, error)
            await self._webhooks.refresh()
            return "disabled"
        return "retry" if outcome == "pending" else outcome

    async def prune(self) -> int:
        """Delete finished deliveries older than ``keep_days`` (bounded batches)."""
        now = now_ms()
        total = 0
        while True:
            async with self._sessions.begin() as session:
                deleted = await store.prune(
                    session,
                    finished_before=now - int(self._settings.keep_days * 86_400_000),
                    stale_before=now - int(self._settings.max_age_hours * 3600_000),
                    limit=PRUNE_BATCH,
                )
            total += deleted
            if deleted < PRUNE_BATCH:
                return total
            await asyncio.sleep(0)
