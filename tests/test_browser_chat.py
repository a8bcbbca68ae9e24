"""The demo chat at /chat/ in headless Chromium, against a real node and real Socket.IO clients:
two users in two pages (one at 375 px), history, live messages both ways, presence, typing,
bodies rendered as text, refusals in words, the form, and suspension then resumption driven from
the console.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import pytest_asyncio
from playwright.async_api import expect

from orgcast.settings import ServerSettings
from tests.browser import DESKTOP, PHONE, Pages, screenshot, unlabelled
from tests.support import (
    ADMIN_TOKEN,
    Inbox,
    Server,
    eventually,
    node_settings,
    start_server,
)

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

XSS = "<img src=x onerror=alert(1)>"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(
    browser: Any, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server]:
    settings = node_settings(database_url, tmp_path_factory.mktemp("chat"))
    async with start_server(settings) as server:
        yield server


def chat_url(server: Server, **params: str) -> str:
    return f"{server.url}/chat/?{urlencode(params)}"


async def open_chat(
    pages: Pages, server: Server, slug: str, token: str, room: str, viewport: dict[str, int]
) -> Any:
    page = await pages.new(viewport)
    await page.goto(chat_url(server, tenant=slug, token=token, room=room))
    await expect(page.locator("body")).to_have_attribute("data-state", "joined")
    return page


async def publish(server: Server, slug: str, room: str, text: str, sender: dict[str, str]) -> int:
    status, body = await server.request(
        "POST",
        f"/api/v1/tenants/{slug}/rooms/{room}/messages",
        json={"body": {"text": text}, "sender": sender},
    )
    assert status == 201, body
    return int(body["seq"])


def texts(page: Any) -> Any:
    return page.locator("#messages li[data-seq] .text")


async def test_two_users_chat_live_with_history_presence_typing_and_text_only_bodies(
    node: Server, pages: Pages
) -> None:
    tenant = await node.create_tenant(ephemeral_events=["typing"])
    slug = tenant.slug
    await publish(node, slug, "lobby", "welcome", {"id": "bot", "name": "Bot"})
    await publish(node, slug, "lobby", XSS, {"id": "mallory", "name": "<b>Mallory</b>"})

    alice = await open_chat(
        pages, node, slug, await node.token(slug, "alice", name="Alice"), "lobby", DESKTOP
    )
    bob = await open_chat(
        pages, node, slug, await node.token(slug, "bob", name="Bob"), "lobby", PHONE
    )

    # History on join, the injected markup shown as its characters.
    for page in (alice, bob):
        await expect(texts(page)).to_have_text(["welcome", XSS])
        await expect(page.locator("#messages .who").nth(1)).to_have_text("<b>Mallory</b>")
        assert await page.locator("#messages img, #messages b").count() == 0

    # The websocket upgrade passes the page's CSP (connect-src 'self').
    await expect(alice.locator("body")).to_have_attribute("data-transport", "websocket")

    # Presence: each page lists both users, itself marked.
    await expect(alice.locator("#members li")).to_have_text(["Alice (you)", "Bob"])
    await expect(bob.locator("#members li")).to_have_text(["Alice", "Bob (you)"])

    # Typing in one page shows in the other, and the message clears it.
    field = alice.get_by_label("Message")
    await field.press_sequentially("hello b")
    await expect(bob.locator("#typing")).to_have_text("Alice is typing…")
    await field.press_sequentially("ob")
    await field.press("Enter")
    await expect(texts(bob)).to_have_text(["welcome", XSS, "hello bob"])
    await expect(bob.locator("#typing")).to_have_text("")
    await expect(texts(alice)).to_have_text(["welcome", XSS, "hello bob"])
    await expect(alice.locator("#messages li.pending")).to_have_count(0)
    await expect(alice.get_by_label("Message")).to_have_value("")

    # A markup body typed by a user travels and renders as text.
    await bob.get_by_label("Message").fill(XSS)
    await bob.get_by_label("Message").press("Enter")
    await expect(texts(alice)).to_have_text(["welcome", XSS, "hello bob", XSS])

    # A socket.io-client user in the same room talks with the pages both ways.
    carol = await node.connect(slug, await node.token(slug, "carol", name="Carol"))
    inbox = Inbox(carol, "message", f"/{slug}")
    joined = await carol.call("join", {"room": "lobby"}, namespace=f"/{slug}")
    assert joined["ok"] and {m["id"] for m in joined["members"]} == {"alice", "bob", "carol"}
    await expect(alice.locator("#members li")).to_have_text(["Alice (you)", "Bob", "Carol"])
    await bob.get_by_label("Message").fill("hi carol")
    await bob.get_by_label("Message").press("Enter")
    received = await inbox.get()
    assert received["sender"] == {"id": "bob", "name": "Bob"}
    assert received["body"] == {"text": "hi carol"}
    ack = await carol.call(
        "message", {"room": "lobby", "body": {"text": "hi pages"}}, namespace=f"/{slug}"
    )
    assert ack["ok"]
    expected = ["welcome", XSS, "hello bob", XSS, "hi carol", "hi pages"]
    await expect(texts(alice)).to_have_text(expected)
    await expect(texts(bob)).to_have_text(expected)
    await carol.disconnect()
    await expect(bob.locator("#members li")).to_have_text(["Alice", "Bob (you)"])

    assert await unlabelled(alice) == []
    # Keyboard: from the field, Tab reaches Send.
    await alice.get_by_label("Message").focus()
    await alice.keyboard.press("Tab")
    await expect(alice.get_by_role("button", name="Send")).to_be_focused()
    await screenshot(alice, "chat-desktop")
    await screenshot(bob, "chat-375px")
    # Nothing on the page overflows a 375 px screen sideways.
    assert await bob.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert pages.all_errors() == []


async def test_typing_indicator_is_left_out_when_the_tenant_has_no_typing_event(
    node: Server, pages: Pages
) -> None:
    tenant = await node.create_tenant()
    page = await open_chat(
        pages, node, tenant.slug, await node.token(tenant.slug, "dan"), "lobby", DESKTOP
    )
    await page.get_by_label("Message").press_sequentially("x")
    await expect(page.locator("body")).to_have_attribute("data-typing", "unsupported")
    await page.get_by_label("Message").press("Enter")
    await expect(texts(page)).to_have_text(["x"])
    assert pages.all_errors() == []


async def test_chat_refusals_are_shown_in_words(node: Server, pages: Pages) -> None:
    tenant = await node.create_tenant()
    token = await node.token(tenant.slug, "erin")
    cases = [
        ({"tenant": "no-such-tenant", "token": token}, "tenant_not_found", "does not exist"),
        ({"tenant": tenant.slug, "token": "not-a-jwt"}, "auth_invalid", "token was refused"),
        (
            {"tenant": tenant.slug, "token": await node.token(tenant.slug, "erin", rooms=["a*"])},
            "room_forbidden",
            "does not allow this room",
        ),
    ]
    page = await pages.new()
    for params, code, words in cases:
        await page.goto(chat_url(node, room="lobby", **params))
        notice = page.locator("#notice")
        await expect(notice).to_have_attribute("data-code", code)
        await expect(notice).to_contain_text(words)
        await expect(notice).to_contain_text(code)
    await screenshot(page, "chat-refused")


async def test_chat_without_parameters_shows_a_form_that_opens_the_room(
    node: Server, pages: Pages
) -> None:
    tenant = await node.create_tenant()
    token = await node.token(tenant.slug, "fay", name="Fay")
    page = await pages.new(PHONE)
    await page.goto(f"{node.url}/chat")  # redirected to /chat/
    await expect(page.locator("body")).to_have_attribute("data-state", "form")
    await screenshot(page, "chat-form-375px")
    assert await unlabelled(page) == []
    await page.get_by_label("Tenant").fill(tenant.slug)
    await page.get_by_label("Client token").fill(token)
    await page.get_by_label("Room", exact=True).fill("side")
    await page.get_by_role("button", name="Open chat").click()
    await expect(page.locator("body")).to_have_attribute("data-state", "joined")
    await expect(page.locator("#members li")).to_have_text(["Fay (you)"])
    assert "room=side" in page.url


async def test_suspending_from_the_console_shows_in_both_chats_and_resuming_reconnects(
    node: Server, pages: Pages
) -> None:
    tenant = await node.create_tenant(ephemeral_events=["typing"])
    slug = tenant.slug
    opened = []
    for sub, viewport in (("gus", DESKTOP), ("hal", PHONE)):
        token = await node.token(slug, sub, name=sub.title())
        opened.append(await open_chat(pages, node, slug, token, "lobby", viewport))
    gus, hal = opened
    await gus.get_by_label("Message").fill("before")
    await gus.get_by_label("Message").press("Enter")
    await expect(texts(hal)).to_have_text(["before"])

    console = await pages.new()
    await console.goto(f"{node.url}/console/#/t/{slug}")
    await console.get_by_label("Admin token").fill(ADMIN_TOKEN)
    await console.get_by_role("button", name="Sign in").click()
    await console.get_by_role("button", name="Suspend").click()
    await expect(console.locator("#tenant-status")).to_have_text("suspended")

    for page in (gus, hal):
        await expect(page.locator("#notice")).to_have_attribute("data-code", "tenant_suspended")
        await expect(page.locator("#notice")).to_contain_text("This organization is suspended.")
    await screenshot(hal, "chat-suspended-375px")

    await console.get_by_role("button", name="Resume").click()
    await expect(console.locator("#tenant-status")).to_have_text("active")
    # Published right after the resumption: it reaches each page once, whether through the
    # rejoin's `since` replay or live, depending on when the page's retry comes.
    await publish(node, slug, "lobby", "after", {"id": "bot", "name": "Bot"})
    for page in (gus, hal):
        await expect(page.locator("body")).to_have_attribute("data-state", "joined", timeout=15_000)
        await expect(page.locator("#notice")).to_be_hidden()
        await expect(texts(page)).to_have_text(["before", "after"])
    await hal.get_by_label("Message").fill("back")
    await hal.get_by_label("Message").press("Enter")
    await expect(texts(gus)).to_have_text(["before", "after", "back"])
    assert pages.all_errors() == []


async def test_a_chat_that_lost_its_network_rejoins_with_since_and_shows_what_it_missed_once(
    browser: Any, pages: Pages, database_url: str, tmp_path: Path
) -> None:
    # Short pings, so that both ends notice the lost network within about two seconds.
    settings = node_settings(
        database_url, tmp_path, server=ServerSettings(port=0, ping_interval=1, ping_timeout=1)
    )
    async with start_server(settings) as server:
        tenant = await server.create_tenant()
        slug = tenant.slug
        await publish(server, slug, "lobby", "one", {"id": "bot", "name": "Bot"})
        token = await server.token(slug, "ivy", name="Ivy")
        page = await open_chat(pages, server, slug, token, "lobby", DESKTOP)
        await expect(texts(page)).to_have_text(["one"])
        await publish(server, slug, "lobby", "two", {"id": "bot", "name": "Bot"})
        await expect(texts(page)).to_have_text(["one", "two"])

        await page.context.set_offline(True)
        await expect(page.locator("body")).not_to_have_attribute("data-state", "joined")
        await eventually(lambda: no_members(server, slug))
        await publish(server, slug, "lobby", "three", {"id": "bot", "name": "Bot"})
        await page.context.set_offline(False)

        await expect(page.locator("body")).to_have_attribute("data-state", "joined", timeout=15_000)
        await expect(texts(page)).to_have_text(["one", "two", "three"])
        vias = await page.locator("#messages li[data-seq]").evaluate_all(
            "items => items.map(item => item.dataset.via)"
        )
        assert vias == ["history", "live", "missed"]
        await pages.close()
    assert pages.all_errors() == []


async def no_members(server: Server, slug: str) -> bool:
    status, body = await server.request("GET", f"/api/v1/tenants/{slug}")
    return status == 200 and body["connections"] == 0
