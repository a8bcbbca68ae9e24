"""The application factory: builds one aiohttp application and owns every resource's lifetime.

Nothing is created at import time. ``create_app(settings)`` wires the routes and the Socket.IO
server; the database engine, the Redis connections and the background tasks (message writer,
retention, control bus) start and stop in ``cleanup_ctx`` generators, in that order, and the
webhook delivery worker and the heap trimmer in ones of their own after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from . import api
from .errors import OrgcastError, SchemaBehind
from .heap import HeapTrimmer, find_malloc_trim
from .logs import access_middleware
from .metrics import create_metrics, sample_loop_lag
from .realtime.guards import polling_body_limit
from .realtime.server import Realtime
from .services.access import AccessControl
from .services.admin import resolve_admin_token
from .services.cluster import RedisPresence
from .services.control import ControlBus
from .services.deliveries import DeliveryWorker
from .services.directory import TenantDirectory, TenantWatcher
from .services.health import HealthService
from .services.hub import Hub
from .services.hub_metrics import HubMetrics
from .services.limits import ApiRateLimiter
from .services.messages import MessageService
from .services.retention import RetentionTask
from .services.tenants import TenantService
from .services.webhook_presence import (
    Announcements,
    LocalAnnouncements,
    PresenceWebhooks,
    RedisAnnouncements,
)
from .services.webhooks import WebhookService
from .settings import Settings
from .state import (
    HEAP_TRIMMER,
    METRICS,
    PRESENCE_WEBHOOKS,
    REALTIME,
    SERVICES,
    SETTINGS,
    WEBHOOK_WORKER,
    Services,
)
from .store import schema
from .store.engine import DB_ERRORS, create_autocommit_sessions, create_engine, create_sessions
from .tasks import cancel_and_wait
from .web import setup_pages

log = logging.getLogger(__name__)


class StartupError(OrgcastError):
    """The node cannot start; the message says what to do."""

    code = "startup"


def create_app(settings: Settings, *, migrate: bool = False) -> web.Application:
    """Build the application. ``migrate`` upgrades a PostgreSQL schema to head at start-up
    (the embedded SQLite file is always migrated)."""
    header_limit = settings.server.max_header_bytes
    app = web.Application(
        client_max_size=settings.server.max_packet_bytes,
        middlewares=[
            access_middleware,
            polling_body_limit(settings.server.max_packet_bytes),
            *api.middlewares(),
        ],
        handler_args={"max_line_size": header_limit, "max_field_size": header_limit},
    )
    app[SETTINGS] = settings
    app[METRICS] = create_metrics(settings.metrics)
    realtime = Realtime(settings, app[METRICS])
    app[REALTIME] = realtime
    realtime.attach(app)
    api.setup_routes(app)
    setup_pages(app)
    app.cleanup_ctx.append(_services_ctx(migrate))
    app.cleanup_ctx.append(_loop_lag_ctx)
    app.cleanup_ctx.append(_webhook_worker_ctx)
    app.cleanup_ctx.append(_heap_trim_ctx)
    app.on_shutdown.append(_drain_messages)
    return app


async def _drain_messages(app: web.Application) -> None:
    """On shutdown, while the web server still runs: store what is queued (its senders still get
    their acks), then close every socket, long-polling ones included."""
    services = app.get(SERVICES)
    if services is not None:
        await services.messages.drain()
        await app[REALTIME].close_sockets()


async def _loop_lag_ctx(app: web.Application) -> AsyncIterator[None]:
    """The event-loop lag sampler, while metrics are on."""
    metrics = app[METRICS]
    if not metrics.enabled:
        yield
        return
    interval = app[SETTINGS].metrics.loop_lag_interval_seconds
    task = asyncio.create_task(sample_loop_lag(metrics, interval), name="orgcast-loop-lag")
    try:
        yield
    finally:
        await cancel_and_wait([task])


async def _heap_trim_ctx(app: web.Application) -> AsyncIterator[None]:
    """The heap trimmer (heap.py), unless ``server.malloc_trim`` is off or the C library has no
    ``malloc_trim``."""
    server = app[SETTINGS].server
    trim = find_malloc_trim() if server.malloc_trim else None
    if trim is None:
        yield
        return
    trimmer = HeapTrimmer(app[REALTIME].engine_sockets, trim, server.malloc_trim_after_sockets)
    app[HEAP_TRIMMER] = trimmer
    task = asyncio.create_task(trimmer.run(), name="orgcast-heap-trim")
    try:
        yield
    finally:
        await cancel_and_wait([task])


def _services_ctx(migrate: bool):  # type: ignore[no-untyped-def]
    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        engine = create_engine(settings)
        try:
            await _prepare_schema(settings, engine, migrate)
        except BaseException:
            await engine.dispose()
            raise
        sessions = create_sessions(engine)
        token, _ = resolve_admin_token(settings)
        control = ControlBus()
        tenants = TenantService(sessions, settings.limits, control)
        webhooks = WebhookService(sessions, settings.webhooks, control)
        await _load_webhooks(webhooks)
        messages = MessageService(
            sessions,
            settings.messages,
            create_autocommit_sessions(engine),
            app[METRICS],
            outbox=webhooks,
        )
        directory = TenantDirectory(tenants, control)
        realtime = app[REALTIME]
        redis, listener = _redis_clients(settings)
        hub = Hub(settings, directory, messages, control, realtime, redis)
        if app[METRICS].enabled:
            hub.add_listener(HubMetrics(app[METRICS]))
            hub.ordering.on_repair = app[METRICS].gap_repair
        app[PRESENCE_WEBHOOKS] = _presence_webhooks(settings, webhooks, directory, hub, redis)
        access = AccessControl(control, directory, realtime, settings.auth.refresh_window_seconds)
        hub.add_listener(access)
        app[PRESENCE_WEBHOOKS].connections = access.connections
        app[PRESENCE_WEBHOOKS].live = access.live
        services = Services(
            settings=settings,
            admin_token=token,
            control=control,
            tenants=tenants,
            directory=directory,
            messages=messages,
            health=HealthService(engine),
            hub=hub,
            webhooks=webhooks,
            access=access,
            api_limits=ApiRateLimiter(redis, settings.redis.channel),
        )
        app[SERVICES] = services
        realtime.start(hub)
        watcher = TenantWatcher(
            tenants,
            control,
            lambda: directory.cached_slugs() | hub.live_slugs(),
            settings.database.watch_interval_seconds,
        )
        tasks = [
            asyncio.create_task(messages.run(), name="orgcast-writer"),
            asyncio.create_task(access.run(), name="orgcast-expiry"),
            asyncio.create_task(watcher.run(), name="orgcast-tenant-watcher"),
            asyncio.create_task(
                RetentionTask(tenants, messages, settings).run(), name="orgcast-retention"
            ),
        ]
        tasks.append(asyncio.create_task(hub.ordering.run(), name="orgcast-ordering"))
        if isinstance(hub.presence, RedisPresence):
            tasks.append(asyncio.create_task(hub.presence.run(), name="orgcast-heartbeat"))
        if redis is not None:
            tasks.append(asyncio.create_task(hub.user_rates.run(), name="orgcast-user-rates"))
        if listener is not None:
            ready = asyncio.Event()
            tasks.append(
                asyncio.create_task(
                    control.run(listener, settings.redis.channel, ready), name="orgcast-control"
                )
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.wait(), 5)
        try:
            yield
        finally:
            await realtime.stop()
            await hub.close()
            await cancel_and_wait(tasks)
            for client in (redis, listener):
                if client is not None:
                    await client.aclose()
            await engine.dispose()

    return services_ctx


async def _load_webhooks(webhooks: WebhookService) -> None:
    try:
        await webhooks.refresh()
    except DB_ERRORS as exc:
        raise StartupError(
            f"database unreachable at start-up: {exc.__class__.__name__}: {exc}"
        ) from None


def _presence_webhooks(
    settings: Settings,
    webhooks: WebhookService,
    directory: TenantDirectory,
    hub: Hub,
    redis: Redis | None,
) -> PresenceWebhooks:
    """Presence-like webhook events, from the Hub's presence transitions."""

    async def tenant_id(slug: str) -> int | None:
        keys = directory.cached(slug) or await directory.lookup(slug)
        return None if keys is None else keys.tenant.id

    announcements: Announcements = (
        LocalAnnouncements() if redis is None else RedisAnnouncements(redis, settings.redis.channel)
    )
    listener = PresenceWebhooks(
        webhooks,
        tenant_id,
        lambda: hub.presence,
        announcements,
        settings.webhooks.presence_grace_seconds,
    )
    hub.add_listener(listener)
    return listener


async def _webhook_worker_ctx(app: web.Application) -> AsyncIterator[None]:
    """The webhook delivery worker (claims due deliveries, on every node) and the decisions of
    presence-like events after their grace."""
    services = app[SERVICES]
    settings = app[SETTINGS]
    worker = DeliveryWorker(
        services.webhooks.sessions,
        settings.webhooks,
        services.webhooks,
        settings.database.watch_interval_seconds,
        app[METRICS],
    )
    app[WEBHOOK_WORKER] = worker
    presence = app[PRESENCE_WEBHOOKS]
    tasks = [
        asyncio.create_task(worker.run(), name="orgcast-webhooks"),
        asyncio.create_task(presence.run(), name="orgcast-webhook-presence"),
    ]
    try:
        yield
    finally:
        # Stopped between transactions, not cancelled inside one; cancelled if that takes long.
        await worker.stop()
        presence.stop()
        _, late = await asyncio.wait(tasks, timeout=5)
        await cancel_and_wait(late)
        await asyncio.gather(*tasks, return_exceptions=True)


def _redis_clients(settings: Settings) -> tuple[Redis | None, Redis | None]:
    """Two clients: one for commands (short timeouts, so a dead Redis degrades fast) and one
    for the control bus subscription (no read timeout: it waits on an idle channel)."""
    if not settings.redis.url:
        return None, None
    # A failed command is retried once, on a fresh connection (after a restart or a failover the
    # pooled ones fail their first command), then the caller falls back at once: redis-py's
    # default would retry ten times with back-off, holding events for seconds.
    commands = Redis.from_url(
        settings.redis.url, decode_responses=True, socket_connect_timeout=1, socket_timeout=2,
        retry=Retry(NoBackoff(), 1),
    )  # fmt: skip
    listener = Redis.from_url(settings.redis.url, decode_responses=True, socket_connect_timeout=1)
    return commands, listener


async def _prepare_schema(settings: Settings, engine, migrate: bool) -> None:  # type: ignore[no-untyped-def]
    try:
        await schema.prepare(settings.database_url, engine, migrate=migrate)
    except SchemaBehind as exc:
        raise StartupError(
            f"{exc}: run: alembic upgrade head (or orgcast db upgrade), or start with --migrate"
        ) from None
    except DB_ERRORS as exc:
        raise StartupError(
            f"database unreachable at start-up: {exc.__class__.__name__}: {exc}"
        ) from None
