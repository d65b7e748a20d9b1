"""The reviewer UI in a real browser: Debian's chromium driven by Playwright against a real server.

Two reviewers approve in browsers with JavaScript switched off (the UI needs none); the
requester then downloads the released file and gets its canonical rendering (this table is
written in the canonical dialect already, so those are also the submitted bytes).
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import pytest

from sandbox.exports.canonical import render

pytestmark = pytest.mark.browser

TABLE = b"sex,n\nfemale,4180\nmale,4016\n"


def _png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + b"\x20\x60\xa0" * 4 for _ in range(4))
    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _login(browser, base: str, token: str, javascript: bool):  # noqa: ANN001, ANN202
    context = browser.new_context(java_script_enabled=javascript, accept_downloads=True)
    page = context.new_page()
    page.goto(f"{base}/review/")
    assert "/review/login" in page.url
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    return context, page


def _approve(browser, base: str, token: str, title: str, comment: str) -> str:  # noqa: ANN001
    context, page = _login(browser, base, token, javascript=False)
    try:
        page.get_by_role("link", name=title).first.click()
        page.wait_for_load_state("load")  # the click returns at navigation; the picture may still be loading
        # the table is rendered and the image is shown
        assert page.locator("table.preview td", has_text="4180").count() == 1
        assert page.locator("img.preview").evaluate("img => img.naturalWidth") == 4
        page.get_by_label("Approve: release these files").check()
        page.get_by_label("Comment").fill(comment)
        page.get_by_role("button", name="Submit review").click()
        return page.locator("#status").inner_text()
    finally:
        context.close()


def test_reviewers_approve_and_requester_downloads_the_canonical_bytes(services, client, live_server, browser) -> None:  # noqa: ANN001, E501
    alice = services.tokens.create("alice")
    r = client.post(
        "/v1/exports", headers={"Authorization": f"Bearer {alice}"}, content_type="multipart/form-data",
        data={"grant": "g-2026-001", "title": "Counts by sex", "justification": "planning",
              "files": [(io.BytesIO(TABLE), "counts.csv"), (io.BytesIO(_png()), "plot.png")]},
    )
    assert r.status_code == 201, r.json
    rid = r.json["id"]

    assert _approve(browser, live_server, services.tokens.create("carol"), "Counts by sex",
                    "counts are large") == "partially reviewed"
    assert _approve(browser, live_server, services.tokens.create("dave"), "Counts by sex",
                    "fine") == "approved"

    context, page = _login(browser, live_server, alice, javascript=True)
    try:
        page.goto(f"{live_server}/review/mine")
        with page.expect_download() as info:
            page.get_by_role("link", name="Download counts.csv").click()
        path = info.value.path()
        got = Path(path).read_bytes()
    finally:
        context.close()
    assert got == render("csv", TABLE)[0] == TABLE
    assert hashlib.sha256(got).hexdigest() == r.json["files"][0]["sha256"]
    assert client.get(f"/v1/exports/{rid}", headers={"Authorization": f"Bearer {alice}"}).json["status"] == "released"


def test_requester_sees_no_review_form_and_errors_are_pages(services, live_server, browser) -> None:  # noqa: ANN001
    context, page = _login(browser, live_server, services.tokens.create("carol"), javascript=False)
    try:
        resp = page.goto(f"{live_server}/review/exports/exp-0000000000000000")
        assert resp.status == 404
        assert page.get_by_role("heading", level=1).inner_text().startswith("404")
        assert "Traceback" not in page.content()
        page.goto(f"{live_server}/review/")
        assert page.get_by_role("heading", name="Review queue").is_visible()
    finally:
        context.close()
