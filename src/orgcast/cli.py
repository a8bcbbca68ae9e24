"""``orgcast tenants ...``, ``orgcast token`` and ``orgcast webhooks ...``: tenant
administration from the shell.

These commands work directly against the database named by the settings, through the same
services the server uses; no server needs to be running. The embedded SQLite file is created and
migrated on first use, exactly as ``orgcast serve`` does; a PostgreSQL schema that is not at the
Alembic head is refused with the command that fixes it.

Running nodes and the command line are separate processes. A node caches tenant records and drops
them when the control bus announces a change, so:

- with ``redis.url`` set, each change made here is published on ``<redis.channel>:control`` in the
  control bus's own message shape, and every node applies it at once (a suspended or deleted
  tenant's sockets are disconnected, new limits and origins apply to the next event);
- without Redis, every node still finds the change in the tenant table within
  ``database.watch_interval_seconds`` (1 s by default; see ``TenantWatcher``).

Output is for people by default and one JSON document with ``--json``. Plain secrets are printed
only by ``tenants create`` and ``webhooks add`` (once; they cannot be shown again) and never by
``tenants apply``.
``tenants show`` reports what the database holds; live connection and room counts belong to the
nodes and are on the admin API (``GET /api/v1/tenants/{slug}``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from .errors import (
    Invalid,
    NotConfirmed,
    SchemaBehind,
    TenantNotFound,
    Unavailable,
    readable_message,
)
from .output import EXIT_OK, emit, note
from .services.auth import MAX_TTL, mint_token
from .services.control import ControlBus
from .services.manifests import ManifestService, load_directory
from .services.tenants import Tenant, TenantCreate, TenantLimits, TenantPatch, TenantService
from .services.webhooks import EVENT_TYPES, EndpointCreate, WebhookService
from .settings import Settings

# -- the database, as the server would open it ------------------------------------------------


class _Announcer:
    """Collects the slugs the services announce, to publish them on Redis at the end."""

    def __init__(self, control: ControlBus) -> None:
        self.node_id = control.node_id
        self.slugs: dict[str, None] = {}
        control.subscribe(self._remember)

    async def _remember(self, slug: str) -> None:
        self.slugs[slug] = None

    async def publish(self, settings: Settings) -> None:
        if not settings.redis.url or not self.slugs:
            return
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        channel = f"{settings.redis.channel}:control"
        client = aioredis.Redis.from_url(settings.redis.url, socket_connect_timeout=3)
        try:
            for slug in self.slugs:
                # The same shape ControlBus publishes; our node id is nobody else's.
                await client.publish(channel, json.dumps({"node": self.node_id, "slug": slug}))
        except (RedisError, OSError) as exc:
            note(
                f"warning: the change is saved but could not be announced on Redis "
                f"({exc}); running nodes apply it when they restart"
            )
        finally:
            await client.aclose()


@asynccontextmanager
async def tenant_service(settings: Settings) -> AsyncIterator[TenantService]:
    """A ``TenantService`` on the configured database, schema checked; announces changes after."""
    async with services(settings) as (tenants, _):
        yield tenants


@asynccontextmanager
async def services(settings: Settings) -> AsyncIterator[tuple[TenantService, WebhookService]]:
    """The tenant and webhook services on the configured database, schema checked; changes
    are announced after."""
    from .store import schema
    from .store.engine import DB_ERRORS, create_engine, create_sessions

    engine = create_engine(settings)
    control = ControlBus()
    announcer = _Announcer(control)
    try:
        try:
            await schema.prepare(settings.database_url, engine, migrate=False)
        except SchemaBehind as exc:
            raise SchemaBehind(
                f"{exc}: run: orgcast db upgrade (or alembic upgrade head)"
            ) from None
        sessions = create_sessions(engine)
        yield (
            TenantService(sessions, settings.limits, control),
            WebhookService(sessions, settings.webhooks, control),
        )
    except DB_ERRORS as exc:
        raise Unavailable(f"database unreachable: {exc.__class__.__name__}: {exc}") from None
    finally:
        await engine.dispose()
    await announcer.publish(settings)


def _validated(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Invalid.from_validation(exc, subject="tenant", message=readable_message) from None


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def _command(
    handler: Callable[[argparse.Namespace, Settings], Any],
) -> Callable[[argparse.Namespace, Settings], int]:
    """Run an async handler to completion; handlers print their own output."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        asyncio.run(handler(args, settings))
        return EXIT_OK

    return run


# -- tenants apply ------------------------------------------------------------------------------


async def tenants_apply(args: argparse.Namespace, settings: Settings) -> None:
    manifests = load_directory(args.directory)  # every file checked before the database
    async with services(settings) as (tenants, webhooks):
        changes = await ManifestService(tenants, webhooks).apply(manifests, dry_run=args.dry_run)
    lines = []
    for change in changes:
        what: str = change.action
        if change.fields:
            what += f" ({', '.join(change.fields)})"
        if args.dry_run and change.action != "unchanged":
            what = f"would be {what}"
        lines.append(f"{change.slug}: {what}")
    if not changes:
        lines.append(f"no manifests in {args.directory}")
    emit(
        args,
        {"dry_run": args.dry_run, "tenants": [change.to_dict() for change in changes]},
        "\n".join(lines),
    )


# -- tenants create / list / show ---------------------------------------------------------------


def _limit(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


async def tenants_create(args: argparse.Namespace, settings: Settings) -> None:
    limits = dict(args.limit or [])
    spec = _validated(
        TenantCreate,
        {
            "slug": args.slug,
            "name": args.name,
            "limits": limits or None,
            "ephemeral_events": args.ephemeral,
            "allowed_origins": args.origin,
        },
    )
    async with tenant_service(settings) as tenants:
        tenant, signing_key, api_key = await tenants.create(spec)
    text = (
        f"created tenant {tenant.slug} ({tenant.name}), namespace /{tenant.slug}\n"
        f"  signing key: kid {signing_key['kid']}, secret {signing_key['secret']}\n"
        f"  API key:     {api_key['key']} (id {api_key['id']})\n"
        "Store both now: they are not shown again."
    )
    emit(args, {**tenant.to_dict(), "signing_key": signing_key, "api_key": api_key}, text)


async def tenants_list(args: argparse.Namespace, settings: Settings) -> None:
    found: list[Tenant] = []
    async with tenant_service(settings) as tenants:
        cursor: int | None = 0
        while cursor is not None:
            page, cursor = await tenants.list_page(status=args.status, cursor=cursor, limit=200)
            found.extend(page)
    if found:
        width = max(len("SLUG"), *(len(t.slug) for t in found))
        rows = [f"{'SLUG':<{width}}  {'STATUS':<9}  NAME"]
        rows += [f"{t.slug:<{width}}  {t.status:<9}  {t.name}" for t in found]
        text = "\n".join(rows)
    else:
        text = "no tenants" + (f" with status {args.status}" if args.status else "")
    emit(args, {"tenants": [t.to_dict() for t in found]}, text)


async def tenants_show(args: argparse.Namespace, settings: Settings) -> None:
    async with tenant_service(settings) as tenants:
        tenant = await tenants.get(args.slug)
        effective = tenants.limits_for(tenant).__dict__
        signing_keys = await tenants.signing_keys(args.slug)
        api_keys = await tenants.api_keys(args.slug)
    data = {
        **tenant.to_dict(),
        "effective_limits": effective,
        "signing_keys": signing_keys,
        "api_keys": api_keys,
    }
    limits = ", ".join(
        f"{key}={value}" + (" (override)" if key in tenant.limits else "")
        for key, value in effective.items()
    )

    def state(key: dict[str, Any]) -> str:
        revoked = key["revoked_at"]
        if revoked:
            return f"revoked {_when(revoked)}"
        return f"active since {_when(key['created_at'])}"

    lines = [
        f"{tenant.slug}: {tenant.name}",
        f"  status:           {tenant.status}",
        f"  namespace:        /{tenant.slug}",
        f"  limits:           {limits}",
        f"  ephemeral events: {', '.join(sorted(tenant.ephemeral_events)) or '(none)'}",
        f"  allowed origins:  {', '.join(tenant.allowed_origins) or '(any)'}",
        f"  created:          {_when(tenant.created_at)}",
        f"  updated:          {_when(tenant.updated_at)}",
        "  signing keys:",
        *(f"    {key['kid']}  {state(key)}" for key in signing_keys),
        "  API keys:",
        *(f"    {key['id']}  {key['prefix']}...  {state(key)}" for key in api_keys),
    ]
    emit(args, data, "\n".join(lines))


# -- tenants suspend / resume / delete ----------------------------------------------------------


async def _set_status(
    args: argparse.Namespace, settings: Settings, status: Literal["active", "suspended"]
) -> None:
    async with tenant_service(settings) as tenants:
        tenant = await tenants.update(args.slug, TenantPatch(status=status))
    emit(args, tenant.to_dict(), f"{tenant.slug}: {tenant.status}")


async def tenants_suspend(args: argparse.Namespace, settings: Settings) -> None:
    await _set_status(args, settings, "suspended")


async def tenants_resume(args: argparse.Namespace, settings: Settings) -> None:
    await _set_status(args, settings, "active")


def _confirmed(slug: str) -> bool:
    if not sys.stdin.isatty():
        return False
    try:
        answer = input(f"Delete tenant {slug}, its keys and all its messages? Type the slug: ")
    except EOFError:
        return False
    return answer.strip() == slug


async def tenants_delete(args: argparse.Namespace, settings: Settings) -> None:
    async with tenant_service(settings) as tenants:
        await tenants.get(args.slug)  # an unknown slug fails before any question is asked
        if not args.yes and not _confirmed(args.slug):
            raise NotConfirmed(
                f"not deleting {args.slug}: confirm with --yes (needed when not on a terminal)"
            )
        await tenants.delete(args.slug)
    emit(args, {"slug": args.slug, "deleted": True}, f"{args.slug}: deleted")


# -- token ----------------------------------------------------------------------------------------


async def token(args: argparse.Namespace, settings: Settings) -> None:
    async with tenant_service(settings) as tenants:
        keys = await tenants.load_keys(args.slug)
    if keys is None:
        raise TenantNotFound(f"tenant {args.slug!r} not found")
    minted = mint_token(keys, sub=args.sub, name=args.name, rooms=args.rooms, ttl_seconds=args.ttl)
    if not keys.tenant.active:
        note(f"note: {args.slug} is suspended; connects are refused until it is resumed")
    emit(args, {"slug": args.slug, **minted}, minted["token"])


# -- webhooks -------------------------------------------------------------------------------------


async def webhooks_list(args: argparse.Namespace, settings: Settings) -> None:
    async with services(settings) as (tenants, webhooks):
        tenant = await tenants.get(args.slug)
        endpoints = await webhooks.list_endpoints(tenant.id)
    lines = [
        f"{e['id']}  {'enabled ' if e['enabled'] else 'disabled'}  {e['url']}  "
        f"[{', '.join(e['events'])}]"
        + (f"  ({e['disabled_reason']})" if e["disabled_reason"] else "")
        for e in endpoints
    ]
    emit(args, {"webhooks": endpoints}, "\n".join(lines) or f"{args.slug}: no webhook endpoints")


async def webhooks_add(args: argparse.Namespace, settings: Settings) -> None:
    spec = _validated(
        EndpointCreate,
        {"url": args.url, "events": args.events, "description": args.description},
    )
    async with services(settings) as (tenants, webhooks):
        tenant = await tenants.get(args.slug)
        endpoint = await webhooks.create(tenant.id, tenant.slug, spec)
    text = (
        f"added webhook endpoint {endpoint['id']} to {args.slug}: {endpoint['url']}\n"
        f"  events: {', '.join(endpoint['events'])}\n"
        f"  secret: {endpoint['secret']}\n"
        "Store the secret now: it is not shown again."
    )
    emit(args, endpoint, text)


async def webhooks_remove(args: argparse.Namespace, settings: Settings) -> None:
    async with services(settings) as (tenants, webhooks):
        tenant = await tenants.get(args.slug)
        await webhooks.delete(tenant.id, tenant.slug, args.id)
    emit(args, {"id": args.id, "deleted": True}, f"{args.slug}: removed webhook {args.id}")


async def webhooks_deliveries(args: argparse.Namespace, settings: Settings) -> None:
    async with services(settings) as (tenants, webhooks):
        tenant = await tenants.get(args.slug)
        page, next_cursor = await webhooks.deliveries(
            tenant.id, args.id, cursor=args.cursor, limit=args.limit
        )
    lines = [
        f"{d['id']}  {d['status']:<9}  attempt {d['attempt']}  "
        f"{d['http_status'] or '-'}  {len(d['event_ids'])} event(s)  {_when(d['created_at'])}"
        + (f"  {d['error']}" if d["error"] else "")
        for d in page
    ]
    if next_cursor:
        lines.append(f"more: --cursor {next_cursor}")
    emit(
        args,
        {"deliveries": page, "next_cursor": next_cursor},
        "\n".join(lines) or f"no deliveries for {args.id}",
    )


async def webhooks_redeliver(args: argparse.Namespace, settings: Settings) -> None:
    async with services(settings) as (tenants, webhooks):
        tenant = await tenants.get(args.slug)
        copy = await webhooks.redeliver(tenant.id, args.id, args.delivery_id)
    emit(args, copy, f"queued delivery {copy['id']} with the events of {args.delivery_id}")


def _add_webhook_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    webhooks = commands.add_parser(
        "webhooks", parents=[common], help="webhook endpoints and their deliveries"
    )
    actions = webhooks.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="a tenant's endpoints")
    listing.add_argument("slug")
    listing.set_defaults(handler=_command(webhooks_list))

    add = actions.add_parser("add", parents=[common], help="add an endpoint; prints its secret")
    add.add_argument("slug")
    add.add_argument("url")
    add.add_argument(
        "--events",
        nargs="+",
        default=["*"],
        metavar="TYPE",
        help=f"event types (default *): {', '.join(EVENT_TYPES)}",
    )
    add.add_argument("--description")
    add.set_defaults(handler=_command(webhooks_add))

    remove = actions.add_parser("remove", parents=[common], help="delete an endpoint")
    remove.add_argument("slug")
    remove.add_argument("id")
    remove.set_defaults(handler=_command(webhooks_remove))

    log = actions.add_parser("deliveries", parents=[common], help="an endpoint's delivery log")
    log.add_argument("slug")
    log.add_argument("id")
    log.add_argument("--limit", type=int, default=50, choices=range(1, 201), metavar="1..200")
    log.add_argument("--cursor", help="next_cursor of the previous page")
    log.set_defaults(handler=_command(webhooks_deliveries))

    again = actions.add_parser("redeliver", parents=[common], help="send a delivery's events again")
    again.add_argument("slug")
    again.add_argument("id")
    again.add_argument("delivery_id")
    again.set_defaults(handler=_command(webhooks_redeliver))


# -- argument parsing -----------------------------------------------------------------------------


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register ``tenants ...`` and ``token`` on the top-level sub-command set."""
    tenants = commands.add_parser(
        "tenants",
        parents=[common],
        help="tenant administration",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = tenants.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")

    apply = actions.add_parser(
        "apply", parents=[common], help="create or update tenants from tenants/<slug>.toml"
    )
    apply.add_argument("directory", nargs="?", type=Path, default=Path("tenants"))
    apply.add_argument("--dry-run", action="store_true", help="show the changes, make none")
    apply.set_defaults(handler=_command(tenants_apply))

    create = actions.add_parser(
        "create", parents=[common], help="create a tenant; prints its first keys once"
    )
    create.add_argument("slug")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--limit",
        type=_limit,
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help=f"a limit override: {', '.join(TenantLimits.model_fields)}",
    )
    create.add_argument("--ephemeral", nargs="+", action="extend", metavar="EVENT")
    create.add_argument("--origin", nargs="+", action="extend", metavar="URL")
    create.set_defaults(handler=_command(tenants_create))

    listing = actions.add_parser("list", parents=[common], help="list tenants")
    listing.add_argument("--status", choices=["active", "suspended"])
    listing.set_defaults(handler=_command(tenants_list))

    for name, handler, text in (
        ("show", tenants_show, "one tenant with its keys (never their secrets)"),
        ("suspend", tenants_suspend, "refuse new connections and disconnect live ones"),
        ("resume", tenants_resume, "make a suspended tenant active again"),
    ):
        action = actions.add_parser(name, parents=[common], help=text)
        action.add_argument("slug")
        action.set_defaults(handler=_command(handler))

    delete = actions.add_parser(
        "delete", parents=[common], help="delete a tenant, its keys and its messages"
    )
    delete.add_argument("slug")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(handler=_command(tenants_delete))

    mint = commands.add_parser(
        "token", parents=[common], help="mint a client JWT signed with the tenant's newest key"
    )
    mint.add_argument("slug")
    mint.add_argument("--sub", required=True, help="the user id")
    mint.add_argument("--name", help="the display name")
    mint.add_argument("--ttl", type=int, default=3600, help=f"seconds, 1..{MAX_TTL} (3600)")
    mint.add_argument(
        "--rooms", nargs="+", action="extend", metavar="PATTERN", help="glob patterns to allow"
    )
    mint.set_defaults(handler=_command(token))

    _add_webhook_commands(commands, common)
