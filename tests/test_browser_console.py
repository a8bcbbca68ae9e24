"""The operator console at /console/ in headless Chromium against a real node: sign in, create a
tenant (its secrets shown once), rotate and revoke keys, edit settings, mint a token and open
the chat as that user, watch a room live, the webhooks panel, delete with confirmation; names
render as text; the token lives in sessionStorage only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import expect

from tests.browser import DESKTOP, PHONE, Pages, screenshot, unlabelled
from tests.support import ADMIN_TOKEN, Server, node_settings, start_server, unique_slug

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

XSS = "<img src=x onerror=alert(1)>"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(
    browser: Any, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server]:
    settings = node_settings(database_url, tmp_path_factory.mktemp("console"))
    async with start_server(settings) as server:
        yield server


async def sign_in(page: Any, server: Server) -> None:
    await page.goto(f"{server.url}/console/")
    await page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    await page.get_by_label("Admin token").press("Enter")
    await expect(page.locator("body")).to_have_attribute("data-state", "tenants")


async def test_console_signs_in_with_the_admin_token_kept_in_session_storage_only(
    node: Server, pages: Pages
) -> None:
    page = await pages.new()
    await page.goto(f"{node.url}/console")  # redirected to /console/
    await expect(page.locator("body")).to_have_attribute("data-state", "signed-out")
    await screenshot(page, "console-sign-in")
    await page.get_by_label("Admin token").fill("not-the-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#sign-in-error")).to_have_text(
        "That admin token was refused. (auth_invalid)"
    )
    # Keyboard only: the field has the focus, Enter submits.
    await page.get_by_label("Admin token").fill("")
    await expect(page.get_by_label("Admin token")).to_be_focused()
    await page.keyboard.type(ADMIN_TOKEN)
    await page.keyboard.press("Enter")
    await expect(page.locator("body")).to_have_attribute("data-state", "tenants")
    assert await page.evaluate("sessionStorage.getItem('orgcast.adminToken')") == ADMIN_TOKEN
    assert await page.evaluate("localStorage.length") == 0
    assert ADMIN_TOKEN not in await page.evaluate("document.cookie")
    await page.reload()
    await expect(page.locator("body")).to_have_attribute("data-state", "tenants")
    # Another tab (another session) is not signed in.
    other = await pages.new()
    await other.goto(f"{node.url}/console/")
    await expect(other.locator("body")).to_have_attribute("data-state", "signed-out")
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.locator("body")).to_have_attribute("data-state", "signed-out")
    assert await page.evaluate("sessionStorage.length") == 0
    assert pages.all_errors() == []


async def test_console_creates_a_tenant_rotates_keys_edits_it_and_opens_chat_as_a_user(
    node: Server, pages: Pages
) -> None:
    page = await pages.new()
    await sign_in(page, node)
    slug = unique_slug("c")

    # Create: the secrets are shown once and work.
    await page.get_by_label("Slug").fill(slug)
    await page.get_by_label("Name", exact=True).fill(XSS)
    await page.get_by_label("Ephemeral events").fill("typing")
    await page.get_by_label("Messages per second").fill("30")
    await page.get_by_role("button", name="Create tenant").click()
    await expect(page.locator("body")).to_have_attribute("data-state", "tenant")
    await expect(page.locator("#tenant-name")).to_have_text(XSS)
    secrets = page.locator("#secrets .secret")
    await expect(secrets).to_have_count(2)
    signing_secret, api_key = await secrets.all_inner_texts()
    status, rooms = await node.request("GET", f"/api/v1/tenants/{slug}/rooms", token=api_key)
    assert (status, rooms) == (200, {"rooms": [], "next_cursor": None})
    status, tenant = await node.request("GET", f"/api/v1/tenants/{slug}")
    assert tenant["name"] == XSS and tenant["ephemeral_events"] == ["typing"]
    assert tenant["limits"] == {"messages_per_second": 30}
    first_kid = tenant["signing_keys"][0]["kid"]
    await page.get_by_role("button", name="Done, hide it").click()
    await expect(page.locator("#secrets .secret")).to_have_count(0)
    await page.reload()
    assert signing_secret not in await page.content() and api_key not in await page.content()

    # Rotate the signing key: the new secret is shown once; then revoke the first key.
    await page.get_by_role("button", name="Rotate signing key").click()
    await expect(page.locator("#keys tbody tr")).to_have_count(3)  # 2 signing keys, 1 API key
    status, tenant = await node.request("GET", f"/api/v1/tenants/{slug}")
    new_kid = tenant["signing_keys"][-1]["kid"]
    await expect(page.locator("#secrets dt")).to_have_text([f"Signing key {new_kid}"])
    pages.errors[page].accept_confirm = True
    await page.get_by_role("button", name=f"Revoke signing key {first_kid}").click()
    await expect(page.locator(f"#keys tr[data-kid='{first_kid}']")).to_contain_text("revoked")
    status, tenant = await node.request("GET", f"/api/v1/tenants/{slug}")
    revoked = {k["kid"]: k["revoked_at"] is not None for k in tenant["signing_keys"]}
    assert revoked == {first_kid: True, new_kid: False}

    # An API key added and revoked.
    await page.get_by_role("button", name="Add API key").click()
    await expect(page.locator("#keys tr[data-id]")).to_have_count(2)
    new_api_key = (await page.locator("#secrets .secret").all_inner_texts())[0]
    assert new_api_key.startswith("oc_")
    prefix = (await node.request("GET", f"/api/v1/tenants/{slug}"))[1]["api_keys"][0]["prefix"]
    await page.get_by_role("button", name=f"Revoke API key {prefix}").click()
    await expect(page.locator("#keys tr[data-id]").first).to_contain_text("revoked")
    status, _ = await node.request("GET", f"/api/v1/tenants/{slug}/rooms", token=api_key)
    assert status == 401

    # Settings: name, origins, ephemeral events, limits.
    await page.locator("#edit-name").fill("Acme Browser Test")
    await page.locator("#edit-origins").fill("https://app.example.com\nhttps://www.example.com")
    await page.locator("#edit-ephemeral").fill("typing, cursor")
    await page.locator("#edit-max_connections").fill("25")
    await page.get_by_role("button", name="Save settings").click()
    await expect(page.locator("#flash")).to_have_text("Settings saved.")
    status, tenant = await node.request("GET", f"/api/v1/tenants/{slug}")
    assert tenant["name"] == "Acme Browser Test"
    assert tenant["allowed_origins"] == ["https://app.example.com", "https://www.example.com"]
    assert tenant["ephemeral_events"] == ["cursor", "typing"]
    assert tenant["limits"] == {"max_connections": 25, "messages_per_second": 30}
    # The console's own origin is needed for the chat and the tail in a browser.
    await page.locator("#edit-origins").fill("")
    await page.get_by_role("button", name="Save settings").click()
    await expect(page.locator("#flash")).to_have_text("Settings saved.")

    # Mint a token and open the chat as that user.
    await page.get_by_label("User id").fill("bob")
    await page.get_by_label("Display name").fill("Bob")
    await page.get_by_role("button", name="Mint token").click()
    link = page.get_by_role("link", name="Open chat as Bob")
    async with page.context.expect_page() as popup_info:
        await link.click()
    chat = await popup_info.value
    await expect(chat.locator("body")).to_have_attribute("data-state", "joined")
    await expect(chat.locator("#members li")).to_have_text(["Bob (you)"])

    # Rooms and the live tail: history, then live messages and members.
    status, _ = await node.request(
        "POST", f"/api/v1/tenants/{slug}/rooms/lobby/messages", json={"body": {"text": "first"}}
    )
    assert status == 201
    await page.get_by_role("button", name="Refresh rooms").click()
    await expect(page.locator("#rooms tr[data-room='lobby']")).to_contain_text("lobby")
    await page.get_by_role("button", name="Watch lobby").click()
    await expect(page.locator("#tail .text")).to_have_text(["first"])
    await expect(page.locator("#tail-members")).to_have_text("Present: Bob, Operator console")
    await chat.get_by_label("Message").fill(XSS)
    await chat.get_by_label("Message").press("Enter")
    await expect(page.locator("#tail .text")).to_have_text(["first", XSS])
    assert await page.locator("#tail img").count() == 0
    await expect(page.locator("#stat-connections")).to_have_text("2", timeout=15_000)

    # Webhooks: the routes of the contract, or a plain statement that this server has none.
    await expect(page.locator("#webhooks")).not_to_contain_text("Loading")
    assert await unlabelled(page) == []
    await screenshot(page, "console-tenant-desktop")
    await page.set_viewport_size(PHONE)
    await screenshot(page, "console-tenant-375px")
    await page.locator("#keys").scroll_into_view_if_needed()
    await screenshot(page, "console-keys-375px", full_page=False)
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await page.set_viewport_size(DESKTOP)

    # Delete, with confirmation by typing the slug.
    await page.get_by_role("button", name="Delete…").click()
    delete = page.get_by_role("button", name="Delete tenant")
    await expect(delete).to_be_disabled()
    await page.get_by_label(f"Type {slug} to confirm").fill(slug)
    await delete.click()
    await expect(page.locator("body")).to_have_attribute("data-state", "tenants")
    status, body = await node.request("GET", f"/api/v1/tenants/{slug}")
    assert status == 404, body
    # The server says why before it disconnects (closing { code: "tenant_deleted" }).
    await expect(chat.locator("#notice")).to_have_attribute("data-code", "tenant_deleted")
    await expect(chat.locator("#notice")).to_contain_text("This organization was deleted.")
    assert pages.all_errors() == []


async def test_console_lists_tenants_with_status_and_live_counts(
    node: Server, pages: Pages
) -> None:
    tenant = await node.create_tenant(name=XSS)
    status, _ = await node.request(
        "PATCH", f"/api/v1/tenants/{tenant.slug}", json={"status": "suspended"}
    )
    assert status == 200
    page = await pages.new(PHONE)
    await sign_in(page, node)
    row = page.locator(f"tr[data-slug='{tenant.slug}']")
    # The list is in creation order, 50 a page; other tests' tenants may come first.
    more = page.get_by_role("button", name="More")
    for _ in range(50):
        await expect(page.locator("#view tbody tr").first).to_be_visible()
        if await row.count() or not await more.is_visible():
            break
        rows = await page.locator("#view tbody tr").count()
        await more.click()
        await expect(page.locator("#view tbody tr")).not_to_have_count(rows)
    await expect(row).to_contain_text(XSS)
    await expect(row.locator(".badge")).to_have_text("suspended")
    await expect(row.locator("td").nth(3)).to_have_text("0")
    await screenshot(page, "console-tenants-375px")
    assert await unlabelled(page) == []
    await page.get_by_label("Status").select_option("active")
    await expect(row).to_have_count(0)
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert pages.all_errors() == []
