"""The directory and the public forms in a real browser (Debian's chromium, no JavaScript) against a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.services import Services

pytestmark = pytest.mark.browser


def test_directory_renders_and_a_request_can_be_filed(browser, live_server: str, services: Services,  # noqa: ANN001
                                                      tmp_path: Path) -> None:
    open_ds = services.policies.datasets()["adult_income"].model_copy(
        update={"id": "adult_open", "classification": "L1", "title": "Adult census (open)"})
    services.policies.apply_dataset(open_ds, "test")
    context = browser.new_context(java_script_enabled=False, accept_downloads=True)
    try:
        page = context.new_page()
        page.goto(f"{live_server}/public/datasets")
        assert page.locator("html").get_attribute("lang") == "en"
        table = page.get_by_role("table", name="Data resources (3)")
        assert table.is_visible()
        row = table.get_by_role("row", name="NHANES 2017-2018 demographics and examination")
        assert row.get_by_role("cell", name="not downloadable").is_visible()
        assert row.get_by_text("L2 Conditionally open").is_visible()
        with page.expect_download() as info:
            page.get_by_role("link", name="Download Adult census (open) as CSV").click()
        saved = tmp_path / "adult_open.csv"
        info.value.save_as(saved)
        assert saved.read_text().splitlines()[0].startswith('"age","workclass"')
        assert len(saved.read_text().splitlines()) == 48843
        page.screenshot(path=str(tmp_path / "directory.png"), full_page=True)
        # ask for NHANES to be opened, through the form, without JavaScript
        page.get_by_role("link", name="ask for a resource to be opened").click()
        page.get_by_label("Resource").select_option("nhanes_2017")
        page.get_by_label("Subject (published)").fill("Please open NHANES ages")
        page.get_by_label("Your message").fill("For a class on public health.")
        page.get_by_role("button", name="Send the request").click()
        assert "/public/cases/c-" in page.url
        assert page.get_by_role("heading", name="Request to open a data resource: Please open NHANES ages").is_visible()
        assert page.get_by_role("status").is_visible()
        page.goto(f"{live_server}/public/requests")
        req = page.get_by_role("table", name="Requests (1)").get_by_role("row", name="Please open NHANES ages")
        assert req.get_by_text("open", exact=True).is_visible()
    finally:
        context.close()


def test_grant_record_prices_and_feedback_render(browser, live_server: str, services: Services, alice) -> None:  # noqa: ANN001
    from sandbox import offerings

    oid = offerings.declare(services, "alice", {"grant": "g-2026-001", "kind": "product", "name": "Clinic atlas",
                                                "description": "Maps of demand", "free_to_public": True})
    offerings.act(services, oid, "admin", "approve")
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(f"{live_server}/public/grants")
        page.get_by_role("link", name="products, services and use of g-2026-001").click()
        assert page.get_by_role("heading", name="Grant g-2026-001: Acme Health Analytics Ltd.").is_visible()
        table = page.get_by_role("table", name="Products and service capabilities declared by the operator")
        row = table.get_by_role("row", name="Clinic atlas")
        assert row.get_by_role("cell", name="free to the public").is_visible()
        assert page.get_by_role("table", name="Use of the resources per quarter").is_visible()
        page.goto(f"{live_server}/public/prices")
        prices = page.get_by_role("table", name="Ceilings of operators' prices (CNY)")
        assert prices.get_by_role("row", name="product").get_by_role("cell", name="50000.00").is_visible()
        page.goto(f"{live_server}/public/feedback")
        page.get_by_label("Complaint").check()
        page.get_by_label("Subject (published)").fill("Register is slow")
        page.get_by_label("Your message").fill("It took a minute to load.")
        page.get_by_role("button", name="Send", exact=True).click()
        assert page.get_by_role("heading", name="Complaint: Register is slow").is_visible()
        page.goto(f"{live_server}/public/feedback")
        stats = page.get_by_role("table", name="Cases and how fast they are closed")
        assert stats.get_by_role("row", name="Complaint").get_by_role("cell", name="1").first.is_visible()
    finally:
        context.close()
