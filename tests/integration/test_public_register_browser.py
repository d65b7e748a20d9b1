"""The public register in a real browser: Debian's chromium, driven by Playwright, against a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.browser



def test_register_renders_without_javascript(browser, live_server: str, tmp_path: Path) -> None:  # noqa: ANN001
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(f"{live_server}/public/")  # redirects to the register
        assert page.url.endswith("/public/grants")
        assert page.locator("html").get_attribute("lang") == "en"
        table = page.get_by_role("table", name="Grants (1)")
        assert table.is_visible()
        row = table.get_by_role("row", name="g-2026-001")
        assert row.get_by_role("cell", name="Acme Health Analytics Ltd.").is_visible()
        assert row.get_by_role("cell", name="Community health service planning").is_visible()
        assert row.get_by_role("cell", name="Public welfare").is_visible()
        # the skip link is the first thing a keyboard reaches, and it leads to the content
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.textContent")
        assert focused.strip() == "Skip to content"
        page.keyboard.press("Enter")
        assert page.evaluate("document.activeElement.id") == "content"
        shot = tmp_path / "public-register.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 1000
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        context.close()
