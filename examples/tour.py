"""The 60-second tour with python-socketio: connect to /demo, join "lobby", send a message."""

import asyncio
import os

import socketio


async def main() -> None:
    client = socketio.AsyncClient()
    client.on("message", lambda msg: print("message", msg), namespace="/demo")
    token = os.environ["ORGCAST_TOKEN"]
    await client.connect(os.environ["ORGCAST_URL"], namespaces=["/demo"], auth={"token": token})
    joined = await client.call("join", {"room": "lobby"}, namespace="/demo")
    message = {"room": "lobby", "body": {"text": "hello"}}
    ack = await client.call("message", message, namespace="/demo")
    print(joined["seq"], ack)
    await client.disconnect()


asyncio.run(main())
