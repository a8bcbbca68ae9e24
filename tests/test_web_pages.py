"""The console and chat files over plain HTTP: security headers, content types, caching, the
redirects, unknown files; the vendored socket.io-client bundle matches its pinned npm release;
a built wheel carries every file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from orgcast.web import CSP, load_assets
from tests.support import ROOT, Server, node_or_skip

WEB = ROOT / "src" / "orgcast" / "web"
BUNDLE = WEB / "static" / "vendor" / "socket.io-client" / "socket.io.esm.min.js"
NPM_DIST = ROOT / "node_modules" / "socket.io-client" / "dist" / "socket.io.esm.min.js"

EXPECTED_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


async def get(server: Server, path: str, **headers: str) -> tuple[int, Any, bytes]:
    async with server.http.get(server.url + path, headers=headers, allow_redirects=False) as r:
        return r.status, r.headers.copy(), await r.read()


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/console/", "text/html; charset=utf-8"),
        ("/console/index.html", "text/html; charset=utf-8"),
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
        ("/chat/", "text/html; charset=utf-8"),
        ("/chat/chat.js", "text/javascript; charset=utf-8"),
        ("/static/common.css", "text/css; charset=utf-8"),
        ("/static/icon.svg", "image/svg+xml"),
        ("/static/vendor/socket.io-client/socket.io.esm.min.js", "text/javascript; charset=utf-8"),
        ("/static/vendor/socket.io-client/LICENSE", "text/plain; charset=utf-8"),
    ],
)
async def test_page_files_are_served_with_their_type_a_strict_csp_and_revalidation(
    server: Server, path: str, content_type: str
) -> None:
    status, headers, body = await get(server, path)
    assert status == 200 and body
    assert headers["Content-Type"] == content_type
    assert headers["Content-Security-Policy"] == EXPECTED_CSP == CSP
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert re.fullmatch(r'"[0-9a-f]{32}"', headers["ETag"])

    status, again, body = await get(server, path, **{"If-None-Match": headers["ETag"]})
    assert (status, body) == (304, b"")
    assert again["ETag"] == headers["ETag"]
    assert again["Content-Security-Policy"] == EXPECTED_CSP


async def test_pages_have_no_inline_script_or_style() -> None:
    for page in ("console/index.html", "chat/index.html"):
        html = (WEB / page).read_text()
        assert re.findall(r"<script(?![^>]*\bsrc=)", html) == [], page
        assert "<style" not in html and "style=" not in html, page
        assert not re.search(r"\son[a-z]+=", html), page
    for script in [*WEB.glob("*/*.js")]:
        text = script.read_text()
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text, script
        assert "eval(" not in text and "document.write" not in text, script


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/chat", "/chat/"),
        ("/chat?tenant=demo&token=abc&room=lobby", "/chat/?tenant=demo&token=abc&room=lobby"),
        ("/console", "/console/"),
    ],
)
async def test_pages_without_the_slash_redirect_keeping_the_query(
    server: Server, path: str, location: str
) -> None:
    status, headers, _ = await get(server, path)
    assert (status, headers["Location"]) == (308, location)


async def test_unknown_page_files_are_a_json_404(server: Server) -> None:
    for path in ("/console/nope.js", "/static/../app.py", "/static/vendor/", "/chat/chat.js.map"):
        status, body = await server.request("GET", path, token=None)
        assert status == 404, path
        assert body["error"]["code"] == "not_found", path


def test_the_vendored_socket_io_client_is_the_pinned_release() -> None:
    pinned = json.loads((ROOT / "package.json").read_text())["dependencies"]["socket.io-client"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), "package.json pins an exact version"
    assert BUNDLE.read_bytes().startswith(f"/*!\n * Socket.IO v{pinned}\n".encode())
    licence = (BUNDLE.parent / "LICENSE").read_text()
    assert licence.startswith("The MIT License (MIT)")


def test_the_vendored_bundle_equals_the_installed_npm_file() -> None:
    node_or_skip()  # node_modules present: required in CI, optional locally
    pinned = json.loads((ROOT / "package.json").read_text())["dependencies"]["socket.io-client"]
    installed = json.loads((NPM_DIST.parents[1] / "package.json").read_text())["version"]
    assert installed == pinned
    assert BUNDLE.read_bytes() == NPM_DIST.read_bytes()
    licence = (NPM_DIST.parents[1] / "LICENSE").read_bytes()
    assert (BUNDLE.parent / "LICENSE").read_bytes() == licence


def test_a_built_wheel_carries_every_page_file(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PIP_NO_INPUT": "1"},
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("orgcast-*.whl")
    target = tmp_path / "installed"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    # Loaded from the unpacked wheel, in a process that cannot see the source tree.
    probe = subprocess.run(
        [sys.executable, "-I", "-c",
         "import sys, json; sys.path.insert(0, sys.argv[1]); import orgcast.web as w; "
         "print(json.dumps([w.__file__, sorted(w.load_assets())]))", str(target)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-2000:]
    origin, served = json.loads(probe.stdout)
    assert origin.startswith(str(target))
    assert served == sorted(load_assets())
    assert "/static/vendor/socket.io-client/LICENSE" in served
