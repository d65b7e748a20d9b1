"""The airlock in a real browser (Debian's chromium through Playwright, JavaScript off).

A reviewer sees the canonical preview (the rows, picture and sizes of what would leave, never
what was hidden in the upload) and has no override control; the admin outside the grant has
one, overrides with a reason, and the reviewer can then approve.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, PngImagePlugin

pytestmark = pytest.mark.browser

HIDDEN = json.dumps([{"seqn": s, "age": 40} for s in range(93703, 93903)])


def _login(browser, base: str, token: str):  # noqa: ANN001, ANN202
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(f"{base}/review/login")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    return context, page


def _files() -> list[tuple[io.BytesIO, str]]:
    table = pa.table({"sex": ["female", "male"], "n": [3, 4016]}).replace_schema_metadata({"rows": HIDDEN})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    info = PngImagePlugin.PngInfo()
    info.add_text("rows", HIDDEN)
    png = io.BytesIO()
    Image.new("RGB", (6, 5), (20, 90, 160)).save(png, format="PNG", pnginfo=info)
    return [(io.BytesIO(sink.getvalue()), "by_sex.parquet"), (io.BytesIO(png.getvalue()), "plot.png")]


def test_reviewer_sees_the_canonical_preview_and_only_the_admin_can_override(  # noqa: PLR0915
        services, client, live_server, browser) -> None:  # noqa: ANN001
    alice = services.tokens.create("alice")
    r = client.post("/v1/exports", headers={"Authorization": f"Bearer {alice}"}, content_type="multipart/form-data",
                    data={"grant": "g-2026-001", "title": "Counts with a picture", "justification": "planning",
                          "files": _files()})
    assert r.status_code == 201, r.json
    rid = r.json["id"]
    parquet = r.json["files"][0]

    context, page = _login(browser, live_server, services.tokens.create("carol"))
    try:
        page.goto(f"{live_server}/review/exports/{rid}")
        content = page.content()
        assert "93703" not in content and "93902" not in content  # the hidden rows
        assert page.locator("table.preview td", has_text="4016").count() == 1
        assert page.locator("img.preview").evaluate("img => img.naturalWidth") == 6
        sizes = page.locator("p.sizes").first
        assert sizes.locator(".canonical-size").inner_text() == f"{parquet['size']:,} bytes"
        assert sizes.locator(".uploaded-size").inner_text() == f"{parquet['uploaded_size']:,} bytes"
        assert parquet["uploaded_size"] > parquet["size"]
        # the preview image is the canonical picture: no text chunk
        shown = page.request.get(f"{live_server}/review/exports/{rid}/files/plot.png/preview")
        assert b"93703" not in shown.body() and shown.body()[:8] == b"\x89PNG\r\n\x1a\n"
        # a check failed (3 < 10): no approve option, no override control for a reviewer
        assert page.locator(".blocked").count() == 1
        assert page.get_by_label("Approve: release these files").count() == 0
        assert page.get_by_role("button", name="Override failed checks").count() == 0
        resp = page.request.post(f"{live_server}/review/exports/{rid}/override", form={"reason": "x"})
        assert resp.status == 403
    finally:
        context.close()

    context, page = _login(browser, live_server, services.tokens.create("admin"))
    try:
        page.goto(f"{live_server}/review/exports/{rid}")
        page.get_by_label("Reason for the override").fill("3 is the published national figure")
        page.get_by_role("button", name="Override failed checks").click()
        assert "published national figure" in page.locator("ul.overrides").inner_text()
        assert page.get_by_role("button", name="Override failed checks").count() == 0
    finally:
        context.close()

    context, page = _login(browser, live_server, services.tokens.create("carol"))
    try:
        page.goto(f"{live_server}/review/exports/{rid}")
        page.get_by_label("Approve: release these files").check()
        page.get_by_label("Comment").fill("published figure, admin override noted")
        page.get_by_role("button", name="Submit review").click()
        assert page.locator("#status").inner_text() == "partially reviewed"
    finally:
        context.close()
    assert [e["action"] for e in services.audit.entries() if e["action"] == "export.override"] == ["export.override"]
