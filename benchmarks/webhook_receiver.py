"""A fast webhook receiver for the benchmarks: answers 204 at once and keeps, per event, when it
was created (the event's ``created_at``) and how long after that it arrived.

    python benchmarks/webhook_receiver.py --port 9000

``GET /samples`` returns ``{"created_at": [...], "lag_ms": [...], "requests": N}``,
``GET /count`` just ``{"events": N}`` (cheap enough to poll); ``POST /reset`` forgets them.
Signatures are not checked: the suite does that; this measures.
"""

from __future__ import annotations

import argparse
import time

import orjson
from aiohttp import web

created: list[int] = []
lags: list[int] = []
requests = 0


async def receive(request: web.Request) -> web.Response:
    global requests
    body = await request.read()
    now = int(time.time() * 1000)
    requests += 1
    for event in orjson.loads(body)["events"]:
        created.append(event["created_at"])
        lags.append(now - event["created_at"])
    return web.Response(status=204)


async def samples(_: web.Request) -> web.Response:
    data = {"created_at": created, "lag_ms": lags, "requests": requests}
    return web.Response(body=orjson.dumps(data), content_type="application/json")


async def count(_: web.Request) -> web.Response:
    body = orjson.dumps({"events": len(created)})
    return web.Response(body=body, content_type="application/json")


async def reset(_: web.Request) -> web.Response:
    global requests
    created.clear()
    lags.clear()
    requests = 0
    return web.Response(status=204)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/hook", receive)
    app.router.add_get("/samples", samples)
    app.router.add_get("/count", count)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
