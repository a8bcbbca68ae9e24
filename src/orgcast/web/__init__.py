"""The browser pages: the operator console at ``/console/`` and the demo chat at ``/chat/``.

Both are static files shipped inside this package (``console/``, ``chat/``, and ``static/`` for
what they share, among it the official socket.io-client browser bundle at a pinned version). They
talk to the server only through the public HTTP API and Socket.IO, like any other client.

Every file is read once at start-up and served from memory under its own exact route, so no
request path ever reaches the file system. Each response carries:

- a strict Content-Security-Policy: scripts, styles and connections from this origin only (no
  inline script or style, no plugins, no framing, no ``<base>``);
- ``Cache-Control: no-cache`` with a strong ``ETag`` (a hash of the content): the browser keeps its
  copy and revalidates it with a cheap 304, so an upgraded server never runs against stale
  scripts (the file names carry no version to bust a long max-age);
- ``Referrer-Policy: no-referrer``, since a chat URL carries its token in the query string, and
  ``X-Content-Type-Options: nosniff`` with an explicit, correct ``Content-Type``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from aiohttp import web

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        # 'self' covers ws:// and wss:// on this origin (CSP level 3), which Socket.IO needs.
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    "LICENSE": "text/plain; charset=utf-8",
}

# URL prefix -> folder of this package. "console", "chat" and "static" are reserved slugs.
MOUNTS = {"/console/": "console", "/chat/": "chat", "/static/": "static"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _content_type(name: str) -> str | None:
    if name in CONTENT_TYPES:
        return CONTENT_TYPES[name]
    dot = name.rfind(".")
    return CONTENT_TYPES.get(name[dot:]) if dot > 0 else None


def _walk(folder: Traversable, prefix: str) -> dict[str, Asset]:
    found: dict[str, Asset] = {}
    for entry in folder.iterdir():
        if entry.is_dir():
            if entry.name != "__pycache__":
                found.update(_walk(entry, f"{prefix}{entry.name}/"))
            continue
        content_type = _content_type(entry.name)
        if content_type is None:
            continue  # source maps, editor files: not served
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        found[prefix + entry.name] = Asset(body, content_type, etag)
    return found


def load_assets() -> dict[str, Asset]:
    """Every servable file of the pages, by URL path; ``.../index.html`` also answers ``.../``."""
    root = resources.files(__name__)
    assets: dict[str, Asset] = {}
    for prefix, folder in MOUNTS.items():
        assets.update(_walk(root / folder, prefix))
    for path in [p for p in assets if p.endswith("/index.html")]:
        assets[path[: -len("index.html")]] = assets[path]
    return assets


def _handler(asset: Asset) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def serve(request: web.Request) -> web.Response:
        headers = {
            "Content-Security-Policy": CSP,
            "Cache-Control": "no-cache",
            "ETag": asset.etag,
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        }
        if asset.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = asset.content_type
        return web.Response(body=asset.body, headers=headers)

    return serve


async def _redirect(request: web.Request) -> web.Response:
    # Keeps the query string: /chat?tenant=... must open the chat, not the empty form.
    query = request.query_string
    raise web.HTTPPermanentRedirect(request.path + "/" + (f"?{query}" if query else ""))


def setup_pages(app: web.Application) -> None:
    """Register ``/console/``, ``/chat/`` and their shared ``/static/`` files."""
    for path, asset in sorted(load_assets().items()):
        app.router.add_get(path, _handler(asset))
    for page in ("/console", "/chat"):
        app.router.add_get(page, _redirect)
