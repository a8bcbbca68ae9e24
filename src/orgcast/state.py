"""Typed application keys: what the app factory builds and the edges read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from .metrics import Metrics
from .services.access import AccessControl
from .services.control import ControlBus
from .services.directory import TenantDirectory
from .services.health import HealthService
from .services.hub import Hub
from .services.limits import ApiRateLimiter
from .services.messages import MessageService
from .services.tenants import TenantService
from .services.webhooks import WebhookService
from .settings import Settings

if TYPE_CHECKING:
    from .heap import HeapTrimmer
    from .realtime.server import Realtime
    from .services.deliveries import DeliveryWorker
    from .services.webhook_presence import PresenceWebhooks


@dataclass
class Services:
    """Everything a request or an event handler may call, built once per application."""

    settings: Settings
    admin_token: str
    control: ControlBus
    tenants: TenantService
    directory: TenantDirectory
    messages: MessageService
    health: HealthService
    hub: Hub
    webhooks: WebhookService
    access: AccessControl
    api_limits: ApiRateLimiter


SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
REALTIME: web.AppKey[Realtime] = web.AppKey("realtime")
METRICS = web.AppKey("metrics", Metrics)
WEBHOOK_WORKER: web.AppKey[DeliveryWorker] = web.AppKey("webhook_worker")
PRESENCE_WEBHOOKS: web.AppKey[PresenceWebhooks] = web.AppKey("presence_webhooks")
HEAP_TRIMMER: web.AppKey[HeapTrimmer] = web.AppKey("heap_trimmer")
