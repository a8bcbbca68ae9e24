"""Browser test helpers: Debian's Chromium driven by Playwright, never a downloaded browser.

Chromium comes from the system package (``apt-get install chromium``, which ``.ci/run`` does);
Playwright only drives it. Without it the browser tests skip locally with the reason, and fail
in CI. Screenshots go to ``test-artifacts/`` (gitignored) for people to look at.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("ORGCAST_TEST_CHROMIUM", "/usr/bin/chromium")
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 740}


def chromium_or_skip() -> str:
    """The Chromium executable; skip locally without it, fail in CI."""
    path = shutil.which(CHROMIUM)
    if path is None:
        reason = f"the browser tests need Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}: CI requires it", pytrace=False)
        pytest.skip(reason)
    return path


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """One headless Chromium for a test module."""
    executable = chromium_or_skip()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


class PageErrors:
    """Uncaught page errors, console errors and dialogs of a page: a test asserts there are none
    (an ``alert`` from an injected body would land here)."""

    def __init__(self, page: Any) -> None:
        self.items: list[str] = []
        self.accept_confirm = False  # a test that clicks a confirmed action sets this
        page.on("pageerror", lambda error: self.items.append(f"pageerror: {error}"))
        page.on("dialog", self._dialog)
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # An HTTP error status the page handles (401, 404) is logged by Chromium as a console
        # error; what matters here is script errors and CSP violations.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.items.append(f"console: {message.text}")

    async def _dialog(self, dialog: Any) -> None:
        if self.accept_confirm and dialog.type == "confirm":
            await dialog.accept()
            return
        self.items.append(f"dialog: {dialog.type} {dialog.message}")
        await dialog.dismiss()


class Pages:
    """Pages of one test, each in a browser context of its own (its own sessionStorage), all
    closed at the end of the test so that their sockets leave before the server stops."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.contexts: list[Any] = []
        self.errors: dict[Any, PageErrors] = {}

    async def new(self, viewport: dict[str, int] = DESKTOP) -> Any:
        context = await self.browser.new_context(viewport=viewport)
        self.contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(10_000)
        self.errors[page] = PageErrors(page)
        return page

    def all_errors(self) -> list[str]:
        return [item for errors in self.errors.values() for item in errors.items]

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()
        self.contexts.clear()


@contextlib.asynccontextmanager
async def open_pages(browser: Any) -> AsyncIterator[Pages]:
    pages = Pages(browser)
    try:
        yield pages
    finally:
        await pages.close()


async def screenshot(page: Any, name: str, *, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page)
    return path


UNLABELLED = """() => [
  ...[...document.querySelectorAll("input, select, textarea")]
    .filter((e) => !(e.labels?.length || e.getAttribute("aria-label")))
    .map((e) => `field ${e.id || e.name}`),
  ...[...document.querySelectorAll("button, a")]
    .filter((e) => !(e.textContent.trim() || e.getAttribute("aria-label")))
    .map((e) => `${e.tagName} ${e.outerHTML.slice(0, 80)}`),
]"""


async def unlabelled(page: Any) -> list[str]:
    """Form fields without a label and buttons or links without a name, on the page now."""
    return list(await page.evaluate(UNLABELLED))
