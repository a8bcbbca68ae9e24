"""The deploy kit (DESIGN §13): the image's install and start steps are scripts, run here in a
fresh virtualenv (there is no container runtime in the suite); the Dockerfile, the compose file
and the proxy are checked for what they promise; the dashboard's every query names a series a
running server exports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from orgcast.settings import MetricsSettings, RedisSettings
from tests.support import (
    ADMIN_TOKEN,
    ROOT,
    Inbox,
    eventually,
    free_port,
    node_settings,
    run_process,
    start_server,
)

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "orgcast-dashboard.json"
METRICS_TOKEN = "deploy-test-metrics-token-0123"
SERIES = re.compile(r"\b((?:orgcast|process|python)_[a-zA-Z0-9_]+)")


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment a fresh host would have: no ORGCAST_* settings of the test run."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("ORGCAST_", "VIRTUAL_ENV"))}
    keep["PATH"] = os.pathsep.join(
        p for p in keep.get("PATH", "").split(os.pathsep) if ".venv" not in p
    )
    return {**keep, **extra}


@pytest.mark.timeout(900)
async def test_install_script_installs_a_node_that_migrates_starts_and_serves(
    tmp_path: Path,
) -> None:
    prefix = tmp_path / "opt" / "orgcast"
    env = _clean_env(PYTHON=sys.executable)
    code, out, err = await _run(["bash", str(DEPLOY / "install.sh"), str(prefix)], env, 600)
    assert code == 0, out + err
    assert f"orgcast installed in {prefix}" in out
    # The package runs from the installed tree, not from this checkout.
    code, out, err = await _run(
        [str(prefix / "venv" / "bin" / "python"), "-c", "import orgcast; print(orgcast.__file__)"],
        env,
        60,
    )
    assert (code, out.strip()) == (0, str(prefix / "app" / "src" / "orgcast" / "__init__.py"))

    port = free_port()
    node_env = _clean_env(
        ORGCAST_SERVER__HOST="127.0.0.1",
        ORGCAST_SERVER__PORT=str(port),
        ORGCAST_DATA_DIR=str(tmp_path / "data"),
        ORGCAST_ADMIN__TOKEN=ADMIN_TOKEN,
        ORGCAST_METRICS__TOKEN=METRICS_TOKEN,
        ORGCAST_LOG__FORMAT="json",
    )
    start = str(prefix / "bin" / "orgcast-start")
    code, out, err = await _run([start, "db", "upgrade"], node_env, 120)
    assert code == 0, out + err
    assert "database at" in out and "head is" in out

    process = await asyncio.create_subprocess_exec(
        start,
        env=node_env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def healthy() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url + "/healthz") as response:
                        return response.status == 200
                assert process.returncode is None, "the node exited"
                return False

            await eventually(healthy, within=60)
            async with http.get(url + "/metrics") as response:
                assert response.status == 401
            headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
            async with http.get(url + "/metrics", headers=headers) as response:
                assert response.status == 200
                assert "orgcast_node_info" in await response.text()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        out_bytes, err_bytes = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err_bytes.decode()
    assert f"orgcast serving on http://127.0.0.1:{port}" in out_bytes.decode()
    # Logs are JSON lines, and the access log names the route template.
    lines = [json.loads(line) for line in err_bytes.decode().splitlines() if line.strip()]
    access = [line for line in lines if line["logger"] == "orgcast.access"]
    assert {(a["method"], a["route"], a["status"]) for a in access} >= {
        ("GET", "/healthz", 200),
        ("GET", "/metrics", 401),
        ("GET", "/metrics", 200),
    }


async def _run(argv: list[str], env: dict[str, str], within: float) -> tuple[int, str, str]:
    # run_process layers env over os.environ; a clean environment needs the keys removed too.
    removed = {k: "" for k in os.environ if k not in env}
    return await run_process(*argv, env={**removed, **env}, within=within)


def _final_stage(dockerfile: str) -> str:
    return dockerfile[dockerfile.rindex("\nFROM ") :]


def test_dockerfile_installs_by_script_into_a_slim_non_root_stage_with_a_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert stages == ["python:${PYTHON_VERSION}-slim", "python:${PYTHON_VERSION}-slim"]
    assert "RUN ./deploy/install.sh /opt/orgcast" in text
    assert "COPY pyproject.toml README.md requirements.lock ./" in text
    final = _final_stage(text)
    assert re.search(r"^USER orgcast$", final, re.MULTILINE)
    assert "useradd --system --uid 10001" in final
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", final, re.MULTILINE)
    assert 'ENTRYPOINT ["/opt/orgcast/bin/orgcast-start"]' in final
    assert "COPY --from=build /opt/orgcast /opt/orgcast" in final
    for tool in ("apt-get", "gcc", "build-essential", "pip install"):
        assert tool not in final, tool
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "data", "deploy/.env", "deploy/secrets"} <= set(ignored)


def test_compose_runs_two_nodes_postgres_redis_and_a_sticky_websocket_proxy() -> None:
    compose = (DEPLOY / "compose.yaml").read_text()
    services = re.findall(r"^  ([a-z0-9-]+):$", compose, re.MULTILINE)
    assert {"postgres", "redis", "migrate", "orgcast-1", "orgcast-2", "proxy"} <= set(services)
    assert "./nginx.conf:/etc/nginx/conf.d/default.conf:ro" in compose
    assert "condition: service_completed_successfully" in compose
    nginx = (DEPLOY / "nginx.conf").read_text()
    live = "\n".join(line for line in nginx.splitlines() if not line.lstrip().startswith("#"))
    assert "ip_hash;" in live
    assert "server orgcast-1:8080" in live and "server orgcast-2:8080" in live
    assert "proxy_set_header Upgrade $http_upgrade;" in live
    assert "proxy_set_header Connection $connection_upgrade;" in live
    assert "proxy_http_version 1.1;" in live
    prometheus = (DEPLOY / "prometheus.yml").read_text()
    assert "type: Bearer" in prometheus
    assert "credentials_file: /etc/prometheus/orgcast_metrics_token" in prometheus
    # No secret is written into a manifest: compose reads them from deploy/.env.
    assert "${ORGCAST_ADMIN_TOKEN:?" in compose and "${ORGCAST_METRICS_TOKEN:?" in compose


def dashboard_series() -> dict[str, set[str]]:
    """Every series each panel's queries name (``orgcast_*``, ``process_*``, ``python_*``)."""
    dashboard = json.loads(DASHBOARD.read_text())
    named: dict[str, set[str]] = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            found = set(SERIES.findall(target["expr"]))
            assert found, (panel["title"], target["expr"])
            named.setdefault(panel["title"], set()).update(found)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            named.setdefault("variables", set()).update(SERIES.findall(variable["definition"]))
    return named


def test_dashboard_has_the_panels_an_operator_needs() -> None:
    titles = set(dashboard_series())
    for wanted in (
        "Connections",
        "Messages stored /s",
        "Deliveries /s",
        "Ack latency (message)",
        "Errors /s",
        "Webhook backlog",
        "Top 10 tenants: messages /s",
    ):
        assert wanted in titles, wanted
    queries = json.dumps(json.loads(DASHBOARD.read_text())["panels"])
    assert "histogram_quantile(0.5," in queries and "histogram_quantile(0.99," in queries
    assert "topk(10," in queries


@pytest.mark.redis
async def test_every_series_the_dashboard_queries_is_exported_by_a_running_server(
    database_url: str, tmp_path: Path, redis_url: str, redis_channel: str
) -> None:
    settings = node_settings(
        database_url,
        tmp_path,
        metrics=MetricsSettings(token=METRICS_TOKEN),
        redis=RedisSettings(url=redis_url, channel=redis_channel),
    )
    async with start_server(settings) as server:
        # Some traffic: a connect, a refusal, a join, messages over both transports.
        tenant = await server.create_tenant()
        client = await server.connect(tenant.slug, await server.token(tenant.slug))
        other = await server.connect(tenant.slug, await server.token(tenant.slug, "bob"))
        ns = f"/{tenant.slug}"
        inbox = Inbox(other, "message", ns)
        for socket in (client, other):
            assert (await socket.call("join", {"room": "r"}, namespace=ns, timeout=5))["ok"]
        ack = await client.call("message", {"room": "r", "body": 1}, namespace=ns, timeout=5)
        assert ack["ok"] is True
        assert (await inbox.get())["body"] == 1
        assert await server.try_connect(tenant.slug, {"token": "bad"}) is not None
        headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        async with server.http.get(server.url + "/metrics", headers=headers) as response:
            assert response.status == 200
            text = await response.text()
    from prometheus_client.parser import text_string_to_metric_families

    exported = {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }
    missing = {
        panel: sorted(names - exported)
        for panel, names in dashboard_series().items()
        if names - exported
    }
    assert missing == {}
