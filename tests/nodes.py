"""Server processes and a private Redis for tests that kill or restart them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from tests.support import ADMIN_TOKEN, eventually, eventually_sync, free_port

ORGCAST = str(Path(sys.executable).with_name("orgcast"))


class NodeProcess:
    """``orgcast serve`` in a subprocess, on its own port."""

    def __init__(self, database_url: str, data_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / f"node-{self.port}.log"
        environment = {
            **os.environ,
            "ORGCAST_DATABASE__URL": database_url,
            "ORGCAST_ADMIN__TOKEN": ADMIN_TOKEN,
            "ORGCAST_DATA_DIR": str(data_dir),
            "ORGCAST_LOG__LEVEL": "WARNING",
            **env,
        }
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [ORGCAST, "serve", "--port", str(self.port), "--migrate"],
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def ready(self, within: float = 20.0) -> None:
        """Poll /readyz until it answers 200 (bounded)."""
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                if self.process.poll() is not None:
                    raise RuntimeError(f"node exited: {self.log.read_text()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(self.url + "/readyz") as response:
                        return response.status == 200
                return False

            try:
                await eventually(ready, within)
            except AssertionError:
                raise TimeoutError(
                    f"node on {self.port} not ready: {self.log.read_text()[-2000:]}"
                ) from None

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers run, as when a machine dies."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class RedisProcess:
    """A private redis-server on a free port, so a test may stop and restart it. With
    ``data_dir``, a restart keeps the data (as a failover to a replica does); without, Redis comes
    back empty, as ``.ci/run`` starts it."""

    def __init__(self, data_dir: Path | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *(["--dir", str(self.data_dir)] if self.data_dir else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        def answers() -> bool:
            with contextlib.suppress(redis.RedisError):
                with redis.Redis(port=self.port, socket_connect_timeout=0.5) as client:
                    return bool(client.ping())
            return False

        eventually_sync(answers, within=10)
        if self.process.poll() is not None:
            raise AssertionError(f"redis-server on {self.port} exited: another process answers")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            if self.data_dir is not None:
                import redis

                with redis.Redis(port=self.port, socket_timeout=10) as client:
                    client.save()
            self.process.kill()
            self.process.wait(10)


@contextlib.contextmanager
def private_redis(data_dir: Path | None = None) -> Iterator[RedisProcess]:
    server = RedisProcess(data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
