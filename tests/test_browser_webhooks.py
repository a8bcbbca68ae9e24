"""The console's webhooks panel in headless Chromium, against a real node and a real receiver on
127.0.0.1: add an endpoint (its secret shown once), see its deliveries, redeliver one, disable,
rotate the secret, delete.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import expect

from tests.browser import Pages, screenshot, unlabelled
from tests.support import ADMIN_TOKEN, Server, eventually, node_settings, start_server
from tests.webhooks_support import FAST, Receiver, quiet_endpoints, receiver

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(
    browser: Any, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server]:
    settings = node_settings(database_url, tmp_path_factory.mktemp("hooks"), webhooks=FAST)
    async with start_server(settings) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="module")
async def target(database_url: str) -> AsyncIterator[Receiver]:
    async with receiver() as running:
        yield running
    await quiet_endpoints(database_url)  # whatever a failed test left must not be retried


async def test_console_adds_an_endpoint_lists_its_deliveries_and_redelivers_one(
    node: Server, pages: Pages, target: Receiver
) -> None:
    tenant = await node.create_tenant()
    slug = tenant.slug
    page = await pages.new()
    await page.goto(f"{node.url}/console/#/t/{slug}")
    await page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    await page.get_by_label("Admin token").press("Enter")
    await expect(page.locator("#tenant-name")).to_have_text(f"Tenant {slug}")

    await page.get_by_label("Endpoint URL").fill(target.url)
    await page.get_by_label("Events", exact=True).fill("message.created")
    await page.get_by_label("Description").fill("the test receiver")
    await page.get_by_role("button", name="Add endpoint").click()
    secret = page.locator("#secrets .secret")
    await expect(secret).to_have_count(1)
    assert (await secret.inner_text()).startswith("whsec_")
    status, listed = await node.request("GET", f"/api/v1/tenants/{slug}/webhooks")
    (endpoint,) = listed["webhooks"]
    assert (endpoint["url"], endpoint["events"]) == (target.url, ["message.created"])
    row = page.locator(f"#webhooks tr[data-id='{endpoint['id']}']")
    await expect(row).to_contain_text("the test receiver")
    await expect(row).to_contain_text("enabled")

    status, _ = await node.request(
        "POST", f"/api/v1/tenants/{slug}/rooms/lobby/messages", json={"body": {"text": "hi"}}
    )
    assert status == 201
    await eventually(lambda: received(target, 1))

    # The delivery is listed (the list is read again on each click) and can be sent again.
    deliveries = page.locator("#deliveries tbody tr")

    async def delivered_rows(count: int) -> bool:
        await row.get_by_role("button", name="Deliveries").click()
        await expect(page.locator("#deliveries h3")).to_be_visible()
        texts = await deliveries.all_inner_texts()
        return len(texts) == count and all("delivered" in text for text in texts)

    await eventually(lambda: delivered_rows(1))
    await deliveries.get_by_role("button").click()
    await eventually(lambda: received(target, 2))
    await eventually(lambda: delivered_rows(2))
    first, second = target.received
    assert [e["id"] for e in first.events] == [e["id"] for e in second.events]
    assert first.headers["webhook-id"] != second.headers["webhook-id"]
    assert await unlabelled(page) == []
    await screenshot(page, "console-webhooks")

    # Disable, rotate the secret (shown once), delete.
    await row.get_by_role("button", name="Disable").click()
    await expect(row).to_contain_text("disabled")
    await row.get_by_role("button", name="Rotate secret").click()
    await expect(page.locator("#secrets .secret")).to_have_count(2)
    pages.errors[page].accept_confirm = True
    await row.get_by_role("button", name="Delete").click()
    await expect(page.locator("#webhooks-body")).to_have_text("No endpoints yet.")
    status, listed = await node.request("GET", f"/api/v1/tenants/{slug}/webhooks")
    assert listed == {"webhooks": []}
    assert pages.all_errors() == []


async def received(target: Receiver, count: int) -> bool:
    return len(target.received) >= count
