"""The bare reference server every benchmark ratio is measured against.

Plain python-socketio on aiohttp with the same wire contract as orgcast for the events the
benchmarks use, and nothing else: no database, no tenants, no rate limits, no presence.

- connect to any namespace with ``auth: {token}``; the token is an HS256 JWT checked against
  ``--jwt-secret`` (when given), so the connect storm pays for the same signature check;
- ``join {room, since?}`` -> ``{ok, room, seq, members, missed?}``;
- ``message {room, body}`` -> broadcast ``{id, room, seq, ts, sender, body}`` to the room except
  the sender, ack ``{ok, id, room, seq, ts}``.

``join {since}`` replays from an in-memory log (bounded per room), so the recovery scenario has a
baseline for the cost of encoding and sending the replay without the cost of reading it back.
Engine settings match orgcast's configured defaults: uvloop when installed, no compression of any
kind. python-engineio builds aiohttp's ``WebSocketResponse`` with aiohttp's default
``compress=True`` (and has no option for it), so permessage-deflate is negotiated with every client
that offers it, as the Node client does; ``PlainWebSocket`` below turns it off, unless
``--websocket-compression`` asks for it.

Run: ``python benchmarks/reference_server.py --port 8091 [--jwt-secret S] [--loop asyncio]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import time
from typing import Any

import jwt
import socketio
from aiohttp import web
from engineio.async_drivers import aiohttp as eio_aiohttp

LOG_LIMIT = 20_000


class PlainWebSocket(eio_aiohttp.WebSocket):  # type: ignore[misc]
    """The engine's aiohttp websocket, without permessage-deflate."""

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        request = environ["aiohttp.request"]
        self._sock = web.WebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size, compress=False
        )
        await self._sock.prepare(request)
        self.environ = environ
        await self.handler(self)
        return self._sock


def build(jwt_secret: str | None, compression: bool = False) -> web.Application:
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        namespaces="*",
        cors_allowed_origins="*",
        ping_interval=25.0,
        ping_timeout=20.0,
        max_http_buffer_size=1 << 20,
        http_compression=False,
        compression_threshold=1 << 30,
        websocket_compression=False,
        logger=False,
        engineio_logger=False,
    )
    if not compression:
        # A private table of the engine, copied so that the module-level one stays untouched.
        sio.eio._async = {**sio.eio._async, "websocket": PlainWebSocket}
    seqs: dict[tuple[str, str], int] = collections.defaultdict(int)
    logs: dict[tuple[str, str], collections.deque[dict[str, Any]]] = {}
    ids = itertools.count(1)

    async def connect(namespace: str, sid: str, environ: dict[str, Any], auth: Any) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        if jwt_secret is not None:
            try:
                claims = jwt.decode(
                    token, jwt_secret, algorithms=["HS256"], options={"verify_aud": False}
                )
            except (jwt.PyJWTError, TypeError):
                raise socketio.exceptions.ConnectionRefusedError("auth_invalid") from None
            user = str(claims.get("sub", sid))
        else:
            user = sid
        await sio.save_session(sid, {"user": user}, namespace=namespace)

    async def join(namespace: str, sid: str, data: Any) -> dict[str, Any]:
        room = data.get("room") if isinstance(data, dict) else None
        if not isinstance(room, str):
            return {"ok": False, "error": {"code": "bad_request"}}
        await sio.enter_room(sid, "r:" + room, namespace=namespace)
        ack: dict[str, Any] = {"ok": True, "room": room, "seq": seqs[namespace, room]}
        ack["members"] = []
        since = data.get("since")
        if isinstance(since, int):
            log = logs.get((namespace, room), ())
            ack["missed"] = [m for m in log if m["seq"] > since]
            ack["truncated"] = False
        return ack

    async def message(namespace: str, sid: str, data: Any) -> dict[str, Any]:
        room = data.get("room") if isinstance(data, dict) else None
        if not isinstance(room, str) or "body" not in data:
            return {"ok": False, "error": {"code": "bad_request"}}
        session = await sio.get_session(sid, namespace=namespace)
        key = (namespace, room)
        seqs[key] += 1
        row = {
            "id": f"m{next(ids)}",
            "room": room,
            "seq": seqs[key],
            "ts": int(time.time() * 1000),
            "sender": {"id": session["user"], "name": session["user"]},
            "body": data["body"],
        }
        if key not in logs:
            logs[key] = collections.deque(maxlen=LOG_LIMIT)
        logs[key].append(row)
        await sio.emit("message", row, room="r:" + room, skip_sid=sid, namespace=namespace)
        return {"ok": True, "id": row["id"], "room": room, "seq": row["seq"], "ts": row["ts"]}

    sio.on("connect", connect, namespace="*")
    sio.on("join", join, namespace="*")
    sio.on("message", message, namespace="*")
    app = web.Application(client_max_size=1 << 20)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/healthz", healthz)
    sio.attach(app)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--jwt-secret", default=None)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument(
        "--websocket-compression", action="store_true", help="negotiate permessage-deflate"
    )
    args = parser.parse_args()
    if args.loop == "uvloop":
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    web.run_app(
        build(args.jwt_secret, args.websocket_compression),
        host=args.host,
        port=args.port,
        print=lambda _: print(f"reference serving on http://{args.host}:{args.port}", flush=True),
        access_log=None,
    )


if __name__ == "__main__":
    main()
