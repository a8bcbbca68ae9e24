"""A webhook receiver: checks each delivery with the standardwebhooks package, prints events."""

import os

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

webhook = Webhook(os.environ["ORGCAST_WEBHOOK_SECRET"])  # the whsec_... shown at creation


async def receive(request: web.Request) -> web.Response:
    body = await request.text()
    try:
        payload = webhook.verify(body, dict(request.headers))
    except WebhookVerificationError:
        return web.Response(status=401)
    for event in payload["events"]:  # oldest first; at-least-once, so dedupe by event["id"]
        print(event["type"], event["id"], event["data"], flush=True)
    return web.Response(status=204)


app = web.Application()
app.router.add_post("/orgcast", receive)
web.run_app(app, host="127.0.0.1", port=int(os.environ.get("PORT", "9000")), print=None)
