"""The ``orgcast`` command: serve, db, tenants, token.

Exit codes: 0 ok, 1 failure, 2 usage. ``--json`` makes the output a single JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import CommandError, OrgcastError, SettingsError
from .output import EXIT_FAILURE, EXIT_OK, emit, fail
from .settings import Settings


def configure_logging(settings: Settings) -> None:
    from . import logs

    logs.configure(settings.log)


# -- serve --------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from aiohttp import web

    from .app import StartupError, create_app
    from .services.admin import resolve_admin_token

    if args.host:
        settings.server.host = args.host
    if args.port is not None:
        settings.server.port = args.port
    configure_logging(settings)
    if settings.server.use_uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    _token, token_path = resolve_admin_token(settings)
    host, port = settings.server.host, settings.server.port
    where = f"in {token_path}" if token_path else "from settings (admin.token)"
    public = settings.server.public_url.rstrip("/") or f"http://{host}:{port}"
    banner = (
        f"orgcast serving on http://{host}:{port}\n"
        f"  database: {_safe_url(settings.database_url)}\n"
        f"  admin token: {where}\n"
        f"  console: {public}/console/ (sign in with the admin token)\n"
        f"  OpenAPI: {public}/api/v1/openapi.json"
    )
    app = create_app(settings, migrate=args.migrate)
    if settings.server.gc_young_threshold:
        app.cleanup_ctx.append(_tuned_gc(settings.server.gc_young_threshold))
    try:
        web.run_app(
            app,
            host=host,
            port=port,
            print=lambda _: print(banner, flush=True),
            access_log=None,  # orgcast.access logs route templates instead (see logs.py)
            # Whatever is still in flight (a long-polling request that never ends) is cut here.
            shutdown_timeout=settings.server.shutdown_timeout_seconds,
        )
    except StartupError as exc:
        return fail(None, exc.message)
    except OSError as exc:
        return fail(None, f"cannot listen on {host}:{port}: {exc.strerror}")
    return EXIT_OK


def _tuned_gc(young: int) -> Callable[[Any], AsyncIterator[None]]:
    """Once every service has started: collect, freeze what exists (it lives as long as the
    process) so full collections no longer walk it, and collect the youngest generation every
    ``young`` allocations. Short-lived objects of in-flight messages then die young instead of
    being promoted into the old generation, whose growth is what triggers a full collection."""

    async def tune(_app: Any) -> AsyncIterator[None]:
        thresholds = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(young, thresholds[1], thresholds[2])
        yield
        gc.set_threshold(*thresholds)
        gc.unfreeze()

    return tune


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# -- db -----------------------------------------------------------------------------------------


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from .store import schema
    from .store.engine import DB_ERRORS, create_engine

    url = settings.database_url
    try:
        if args.db_command == "upgrade":
            asyncio.run(schema.upgrade(url, args.revision))
        elif args.db_command == "downgrade":
            asyncio.run(schema.downgrade(url, args.revision))

        async def current() -> str | None:
            engine = create_engine(settings)
            try:
                return await schema.current_revision(engine)
            finally:
                await engine.dispose()

        revision = asyncio.run(current())
    except DB_ERRORS as exc:
        raise CommandError(f"database unreachable: {exc.__class__.__name__}: {exc}") from None
    head = schema.head_revision()
    emit(
        args,
        {"current": revision, "head": head, "at_head": revision == head},
        f"database at {revision or 'nothing (empty)'}; head is {head}",
    )
    return EXIT_OK


# -- argument parsing ---------------------------------------------------------------------------


Handler = Callable[[argparse.Namespace, Settings], int]


def build_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(add_help=False)
    top.add_argument("--config", type=Path, help="a TOML file layered over config/*.toml")
    top.add_argument("--json", action="store_true", help="machine-readable output")
    # Sub-commands repeat the options without defaults of their own: a sub-parser's default would
    # reset `orgcast --json db current` to json=False.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="a TOML overlay")
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )

    parser = argparse.ArgumentParser(prog="orgcast", description=__doc__, parents=[top])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run a node")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--migrate", action="store_true", help="upgrade a PostgreSQL schema to head at start-up"
    )
    serve.set_defaults(handler=cmd_serve)

    db = commands.add_parser("db", parents=[common], help="schema migrations")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = db_commands.add_parser("upgrade", parents=[common], help="migrate to a revision (head)")
    up.add_argument("revision", nargs="?", default="head")
    down = db_commands.add_parser("downgrade", parents=[common], help="migrate down (-1)")
    down.add_argument("revision", nargs="?", default="-1")
    db_commands.add_parser("current", parents=[common], help="show the schema revision")
    db.set_defaults(handler=cmd_db)

    from . import cli

    cli.add_commands(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        settings = Settings.load(config=args.config)
    except SettingsError as exc:
        return fail(None, exc)
    handler: Handler = args.handler
    try:
        return handler(args, settings)
    except OrgcastError as exc:
        return fail(args, exc)
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
