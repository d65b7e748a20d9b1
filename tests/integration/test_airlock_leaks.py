"""The airlock after an attacker's review: channels that survived the first canonical release.

Each test goes through the real API (a member submits, two reviewers approve, the requester
downloads) and shows that the hidden content is not in the downloaded bytes, or that the upload
is refused, or that the check does not pass.
"""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from PIL import Image

GRANT = "g-2026-001"
SEQNS = list(range(93703, 95703))  # real NHANES respondent numbers (public codebook range)


@pytest.fixture
def auth(services) -> dict[str, dict[str, str]]:  # noqa: ANN001
    return {u: {"Authorization": f"Bearer {services.tokens.create(u)}"}
            for u in ("alice", "bob", "carol", "dave", "admin", "erin")}


def submit(client, headers, files, grant=GRANT, **fields):  # noqa: ANN001, ANN003, ANN201
    data = {"grant": grant, "title": "Results", "justification": "planning",
            "files": [(io.BytesIO(b), n) for n, b in files], **fields}
    return client.post("/v1/exports", headers=headers, data=data, content_type="multipart/form-data")


def vote(client, headers, rid, decision="approve", comment="looked at it"):  # noqa: ANN001, ANN201
    return client.post(f"/v1/exports/{rid}/reviews", headers=headers, json={"decision": decision, "comment": comment})


def release(client, auth, name: str, data: bytes, override: bool = False) -> tuple[dict, bytes]:  # noqa: ANN001
    """Submit, two approvals, download: (the request as the reviewer saw it, downloaded bytes)."""
    r = submit(client, auth["alice"], [(name, data)])
    assert r.status_code == 201, r.json
    rid = r.json["id"]
    seen = client.get(f"/v1/exports/{rid}", headers=auth["carol"]).json
    if override:
        client.post(f"/v1/exports/{rid}/override", headers=auth["admin"], json={"reason": "test"})
    for reviewer in ("carol", "dave"):
        assert vote(client, auth[reviewer], rid).status_code == 200
    got = client.get(f"/v1/exports/{rid}/files/{name}", headers=auth["alice"])
    assert got.status_code == 200, got.json
    assert got.headers["X-Content-SHA256"] == hashlib.sha256(got.data).hexdigest() == seen["files"][0]["sha256"]
    return seen, got.data


def outcomes(seen: dict, i: int = 0) -> dict[str, str]:
    return {c["rule"]: c["outcome"] for c in seen["files"][i]["checks"]}


def _rows(n: int) -> bytes:
    return json.dumps([{"seqn": s, "age": 20 + s % 60} for s in SEQNS[:n]]).encode()


# -- 1. colour under transparent pixels ----------------------------------------------------------
def test_colour_under_fully_transparent_pixels_does_not_leave(client, auth) -> None:  # noqa: ANN001
    secret = _rows(260)
    assert len(secret) > 7000
    w = h = 64
    px = bytearray(w * h * 4)
    for i, b in enumerate(secret):  # payload in the RGB of alpha-0 pixels
        px[(i // 3) * 4 + i % 3] = b
    im = Image.frombytes("RGBA", (w, h), bytes(px))
    for x in range(40, 60):  # visible part: a square with a gradient of alpha
        for y in range(40, 60):
            im.putpixel((x, y), (0, 0, 255, 60 + 9 * (x - 40)))
    sink = io.BytesIO()
    im.save(sink, format="PNG")
    seen, got = release(client, auth, "plot.png", sink.getvalue())
    assert outcomes(seen)["canonical.metadata"] == "review"  # the reviewer is told colour was dropped
    out = Image.open(io.BytesIO(got)).convert("RGBA")
    raw = out.tobytes()
    recovered = bytes(raw[(i // 3) * 4 + i % 3] for i in range(len(secret)))
    assert recovered != secret and b"9370" not in recovered and set(recovered) == {0}
    assert all(raw[i * 4: i * 4 + 3] == b"\0\0\0" for i in range(w * h) if raw[i * 4 + 3] == 0)
    assert out.getpixel((50, 50))[:3] == (0, 0, 255) and out.getpixel((50, 50))[3] > 100


def test_palette_colours_behind_transparency_do_not_leave(client, auth) -> None:  # noqa: ANN001
    secret = _rows(40)[:765]
    p = Image.new("P", (16, 16), 0)
    p.putpalette(list(secret) + [0] * (768 - len(secret)))
    for i in range(256):
        p.putpixel((i % 16, i // 16), i)
    sink = io.BytesIO()
    p.save(sink, format="PNG", transparency=bytes([0] * 255 + [255]))
    _seen, got = release(client, auth, "pal.png", sink.getvalue())
    raw = Image.open(io.BytesIO(got)).convert("RGBA").tobytes()
    colours = bytes(b for i, b in enumerate(raw) if i % 4 != 3)
    assert secret[:60] not in colours and b"9370" not in colours
    assert set(colours[:-3]) == {0}


# -- 2. whitespace inside cells ------------------------------------------------------------------
def _bits_as_whitespace(secret: str) -> str:
    return "".join(" " if b == "0" else "\t" for b in "".join(f"{ord(c):08b}" for c in secret))


def test_whitespace_runs_inside_csv_cells_do_not_leave(client, auth) -> None:  # noqa: ANN001
    ws = _bits_as_whitespace("93703")
    upload = f'sex,"n{ws}all"\n"Fe{ws}male",4180\n"  male\n\n ",4016\n'.encode()
    seen, got = release(client, auth, "ws.csv", upload)
    assert got == b"sex,n all\nFe male,4180\nmale,4016\n"
    check = next(c for c in seen["files"][0]["checks"] if c["rule"] == "canonical.whitespace")
    assert check["outcome"] == "review" and len(check["cells"]) == 3  # two cells and a column name


def test_whitespace_in_parquet_strings_does_not_leave(client, auth) -> None:  # noqa: ANN001
    import pyarrow as pa
    import pyarrow.parquet as pq

    ws = _bits_as_whitespace(",".join(map(str, SEQNS[:20])))
    sink = io.BytesIO()
    pq.write_table(pa.table({"sex": ["female" + ws, "  male"], "n": [4180, 4016]}), sink)
    seen, got = release(client, auth, "ws.parquet", sink.getvalue())
    assert pq.read_table(io.BytesIO(got)).column("sex").to_pylist() == ["female", "male"]
    assert outcomes(seen)["canonical.whitespace"] == "review"


# -- 3. non-finite floats and NaN payloads ---------------------------------------------------------
def _parquet(columns: dict) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


def test_ids_in_nan_payloads_do_not_leave(client, auth) -> None:  # noqa: ANN001
    import struct

    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = SEQNS[:60]
    nans = [struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000000 | i))[0] for i in ids]
    upload = _parquet({"grp": [f"g{k}" for k in range(60)], "mean": pa.array(nans, pa.float64()),
                       "low_bits": [35.4 + i * 1e-13 for i in ids]})
    seen, got = release(client, auth, "nan.parquet", upload)
    table = pq.read_table(io.BytesIO(got))
    assert table.column("mean").to_pylist() == [None] * 60
    low = [struct.unpack("<Q", struct.pack("<d", v))[0] for v in table.column("low_bits").to_pylist()]
    assert len(set(low)) < 60  # the low-order digits no longer tell the rows apart
    assert outcomes(seen)["canonical.numbers"] == "review"


@pytest.mark.parametrize(("name", "data"), [
    ("nan.parquet", _parquet({"grp": ["a", "b", "c"], "mean": [float("nan"), float("inf"), 2.5]})),
    ("inf.parquet", _parquet({"grp": ["a", "b"], "n": [float("-inf"), 12.0]})),
    ("big.csv", b"grp,mean\na,1e999\nb,2.5\n"),
])
def test_non_finite_floats_are_released_as_empty_cells_not_a_500(client, auth, name, data) -> None:  # noqa: ANN001
    seen, got = release(client, auth, name, data, override=True)
    assert b"inf" not in got.lower() and b"nan" not in got.lower()
    assert outcomes(seen)["canonical.numbers"] == "review"


def test_an_unexpected_error_in_canonicalization_is_a_refused_and_audited_upload(client, auth, services,  # noqa: ANN001
                                                                                monkeypatch) -> None:
    from sandbox.exports import canonical

    def broken(*_a: object, **_k: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(canonical, "render", broken)
    r = submit(client, auth["alice"], [("t.csv", b"a,n\nx,12\n")])
    assert (r.status_code, r.json["error"]["code"]) == (400, "file_refused")
    refused = [e for e in services.audit.entries() if e["action"] == "export.upload_refused"]
    assert len(refused) == 1 and refused[0]["detail"]["files"][0]["name"] == "t.csv"
    exports = services.db.dir / "exports"
    assert not exports.exists() or not any(exports.rglob("*"))


# -- 4. request metadata is unreleased content too -------------------------------------------------
REQUESTER_PATHS = ("/v1/exports/{rid}", "/review/exports/{rid}?format=json", "/review/exports/{rid}",
                   "/review/mine?format=json", "/review/mine", "/v1/exports")


def _requester_sees(client, auth, rid: str) -> str:  # noqa: ANN001
    return "".join(client.get(p.format(rid=rid), headers=auth["alice"]).get_data(as_text=True)
                   for p in REQUESTER_PATHS)


def test_metadata_cannot_carry_unreviewed_text_back_to_the_requester(client, auth) -> None:  # noqa: ANN001
    rows = "\n".join(f"{s},{20 + s % 60}" for s in SEQNS[:300])
    title, justification = rows[:200], rows[200:1200]
    assert len(rows) > 2400
    withdraw_reason, resubmit_comment = rows[1200:1800], rows[1800:2400]
    r = submit(client, auth["alice"], [("t.csv", b"sex,n\nfemale,4180\nmale,4016\n")], title=title,
               justification=justification, count_columns="n")
    assert r.status_code == 201, r.json
    rid = r.json["id"]
    for reviewer in ("carol", "dave"):
        assert vote(client, auth[reviewer], rid, "return", "why").status_code == 200
    assert client.post(f"/v1/exports/{rid}/resubmit", headers=auth["alice"],
                       json={"comment": resubmit_comment}).status_code == 200
    assert client.post(f"/v1/exports/{rid}/withdraw", headers=auth["alice"],
                       json={"reason": withdraw_reason}).status_code == 200
    seen = _requester_sees(client, auth, rid) + json.dumps(r.json)
    for secret in (title, justification, withdraw_reason, resubmit_comment):
        for line in secret.splitlines()[1:-1]:
            assert line not in seen
    reviewer = client.get(f"/v1/exports/{rid}", headers=auth["carol"]).json
    assert reviewer["title"] == title and reviewer["justification"] == justification
    comments = [e["comment"] for e in reviewer["history"] if e["comment"]]
    assert comments[-2:] == [resubmit_comment.strip(), withdraw_reason.strip()]


def test_digest_size_and_outcomes_cannot_carry_bits_back_to_the_requester(client, auth) -> None:  # noqa: ANN001
    """Inside the sandbox the requester chooses the file: by padding it to an exact size, grinding a
    sha256 prefix or steering check outcomes they could encode bits; read back from outside before any
    review, those would leave around the airlock. Later reads are sealed until approval."""
    secret_size = 93703  # e.g. a respondent number, as the exact length of the canonical file
    body = b"sex,note\nfemale," + b"x" * (secret_size - len(b"sex,note\nfemale,") - 1) + b"\n"
    named = "QmlyLmU6MTk4Mi0wNC0xMnxzZXg6ZnxpbmM6MS4y.csv"  # base64 of a record, past the identifier scan
    r = submit(client, auth["alice"], [(named, body)])
    assert r.status_code == 201, r.json
    rid, digest = r.json["id"], r.json["files"][0]["sha256"]
    assert r.json["files"][0]["size"] == secret_size  # the answer to the upload itself, inside the sandbox
    later = client.get(f"/v1/exports/{rid}", headers=auth["alice"]).json
    assert later["files"][0]["size"] is None and later["files"][0]["uploaded_size"] is None
    assert later["files"][0]["sha256"] is None and later["files"][0]["checks"] == []
    listing = client.get("/v1/exports", headers=auth["alice"]).json
    assert all(m["outcome"] is None for m in listing["mine"])
    seen = _requester_sees(client, auth, rid) + json.dumps(listing)
    assert digest not in seen and digest[:16] not in seen and named[:-4] not in seen
    assert later["files"][0]["name"] == "file-1.csv"
    assert f"{secret_size:,}" not in seen and str(secret_size) not in seen
    for reviewer in ("carol", "dave"):
        vote(client, auth[reviewer], rid)
    approved = client.get(f"/v1/exports/{rid}", headers=auth["alice"]).json
    assert (approved["files"][0]["sha256"], approved["files"][0]["size"]) == (digest, secret_size)
    assert approved["files"][0]["name"] == named


def test_a_returned_request_takes_file_changes_by_the_sealed_name(client, auth) -> None:  # noqa: ANN001
    r = submit(client, auth["alice"], [("counts.csv", b"sex,n\nfemale,4180\n"), ("more.csv", b"sex,n\nmale,4016\n")])
    rid = r.json["id"]
    for reviewer in ("carol", "dave"):
        assert vote(client, auth[reviewer], rid, "return", "split it").status_code == 200
    sealed = client.get(f"/v1/exports/{rid}", headers=auth["alice"]).json
    assert [f["name"] for f in sealed["files"]] == ["file-1.csv", "file-2.csv"]
    r = client.post(f"/v1/exports/{rid}/files", headers=auth["alice"], data={"remove": ["file-2.csv"]},
                    content_type="multipart/form-data")
    assert r.status_code == 200, r.json
    assert [f["name"] for f in r.json["files"]] == ["counts.csv"]  # the answer to the change itself


def test_approved_metadata_is_shown_to_the_requester(client, auth) -> None:  # noqa: ANN001
    r = submit(client, auth["alice"], [("t.csv", b"sex,n\nfemale,4180\n")], title="Counts by sex",
               justification="for the planning report")
    rid = r.json["id"]
    assert "Counts by sex" not in _requester_sees(client, auth, rid)
    for reviewer in ("carol", "dave"):
        vote(client, auth[reviewer], rid)
    view = client.get(f"/v1/exports/{rid}", headers=auth["alice"]).json
    assert (view["title"], view["justification"]) == ("Counts by sex", "for the planning report")


@pytest.mark.parametrize(("fields", "code"), [
    ({"title": "x" * 201}, "bad_title"),
    ({"justification": "x" * 1001}, "bad_justification"),
    ({"count_columns": "n," + "x" * 65}, "bad_count_columns"),
    ({"count_columns": "n,not_a_column"}, "bad_count_columns"),
])
def test_metadata_caps_are_refused_and_audited(client, auth, services, fields, code) -> None:  # noqa: ANN001
    r = submit(client, auth["alice"], [("t.csv", b"sex,n\nfemale,4180\n")], **fields)
    assert (r.status_code, r.json["error"]["code"]) == (400, code)
    assert [e for e in services.audit.entries() if e["action"] == "export.upload_refused"]


def test_requester_comments_are_capped(client, auth) -> None:  # noqa: ANN001
    rid = submit(client, auth["alice"], [("t.csv", b"sex,n\nfemale,4180\n")]).json["id"]
    r = client.post(f"/v1/exports/{rid}/withdraw", headers=auth["alice"], json={"reason": "x" * 1001})
    assert (r.status_code, r.json["error"]["code"]) == (400, "bad_reason")


# -- 5. duplicate and empty column names ----------------------------------------------------------
@pytest.mark.parametrize(("name", "data"), [
    ("dup.csv", ("grp,n,n\n" + "".join(f"g{k},{100 + k},{i}\n" for k, i in enumerate(SEQNS[:60]))).encode()),
    ("dup_after_squeeze.csv", ("grp,n,\" n \"\n" + "".join(f"g{k},{100 + k},{i}\n"
                                                          for k, i in enumerate(SEQNS[:60]))).encode()),
    ("unnamed.csv", ("grp,,n\n" + "".join(f"g{k},{i},{100 + k}\n" for k, i in enumerate(SEQNS[:60]))).encode()),
    ("dup.parquet", None),
])
def test_duplicate_or_empty_column_names_are_refused_and_audited(client, auth, services, name, data) -> None:  # noqa: ANN001, E501
    if data is None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(pa.Table.from_arrays([pa.array([100, 101]), pa.array(SEQNS[:2])], names=["n", "n"]), sink)
        data = sink.getvalue()
    r = submit(client, auth["alice"], [(name, data)])
    assert (r.status_code, r.json["error"]["code"]) == (400, "file_refused"), r.json
    assert "column" in r.json["error"]["message"]
    refused = [e for e in services.audit.entries() if e["action"] == "export.upload_refused"]
    assert len(refused) == 1 and refused[0]["detail"]["files"][0]["name"] == name


# -- 6 and 11. identifier tokenizer gaps ----------------------------------------------------------
def _identifiers(client, auth, name: str, data: bytes) -> dict:  # noqa: ANN001
    r = submit(client, auth["alice"], [(name, data)])
    assert r.status_code == 201, r.json
    seen = client.get(f"/v1/exports/{r.json['id']}", headers=auth["carol"]).json
    return next(c for c in seen["files"][0]["checks"] if c["rule"] == "identifiers")


@pytest.mark.parametrize(("name", "data"), [
    ("floats.csv", ("grp,mean\n" + "".join(f"g{i},{s}.5\n" for i, s in enumerate(SEQNS[:60]))).encode()),
    ("concatenated.csv", ("grp,code\n" + "".join(f"g{i},{''.join(str(s + k) for k in range(4))}\n"
                                                 for i, s in enumerate(SEQNS[:60]))).encode()),
    ("concatenated.txt", ("codes: " + " ".join("".join(str(s + k) for k in range(4)) for s in SEQNS[:60])).encode()),
])
def test_ids_in_floats_and_long_digit_runs_fail(client, auth, name, data) -> None:  # noqa: ANN001
    check = _identifiers(client, auth, name, data)
    assert check["outcome"] == "fail", check
    assert "spelled out" in check["detail"]  # reviewers are told what no check catches


def test_an_identifier_scan_that_stops_early_never_passes(client, auth) -> None:  # noqa: ANN001
    decoys = " ".join(str(n) for n in range(1_000_000, 1_020_001))
    text = f"Appendix\n{decoys}\n" + " ".join(f"id{s}" for s in SEQNS[:200]) + "\n"
    check = _identifiers(client, auth, "notes.txt", text.encode())
    assert check["outcome"] != "pass" and "did not finish" in json.dumps(check)


def test_ids_in_a_file_name_fail(client, auth) -> None:  # noqa: ANN001
    name = "-".join(str(s) for s in SEQNS[:7]) + ".csv"
    check = _identifiers(client, auth, name, b"sex,n\nfemale,4180\nmale,4016\n")
    assert check["outcome"] == "fail" and any(c.get("column") == "(file name)" for c in check["cells"])


# -- 7. invisible characters outside the removed categories ----------------------------------------
def test_default_ignorable_characters_do_not_leave_a_text(client, auth) -> None:  # noqa: ANN001
    bits = "".join(f"{ord(c):08b}" for c in "93703,44,female")
    hidden = "".join("\u034f" if b == "1" else "\u17b4" for b in bits)
    upload = f"Mean age 35.4{hidden}\na\u2028b\u3164c\u2800d\u00a0e\u2062f\u3000g\u2009h\u2029i\u180fj\n"
    seen, got = release(client, auth, "notes.txt", upload.encode())
    assert got == b"Mean age 35.4\na\nbc d ef g h\nij\n"
    assert outcomes(seen)["canonical.invisible"] == "review"


def test_default_ignorable_and_unicode_spaces_do_not_leave_a_table(client, auth) -> None:  # noqa: ANN001
    hidden = "".join("\u034f" if b == "1" else "\u17b5" for b in f"{93703:017b}")
    upload = f"sex,n\nfe{hidden}male,4180\nma\u00a0le\u2028x\u3000y,4016\n".encode()
    seen, got = release(client, auth, "t.csv", upload)
    assert got == b"sex,n\nfemale,4180\nma le x y,4016\n"
    assert outcomes(seen)["canonical.invisible"] == "review"


def test_combining_mark_stacks_are_flagged(client, auth) -> None:  # noqa: ANN001
    stacked = "e" + "\u0301\u0300\u0302\u0303" * 4
    seen, got = release(client, auth, "notes.txt", f"R{stacked}sult\n".encode())
    assert outcomes(seen)["canonical.marks"] == "review"
    seen, _ = release(client, auth, "plain.txt", "Résumé, naïve, Việt Nam\n".encode())
    assert outcomes(seen)["canonical.marks"] == "pass"


# -- 8. no canonical bytes of a refused change or submit stay on disk --------------------------------
def _blobs(services) -> set[str]:  # noqa: ANN001
    root = services.db.dir / "exports"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def test_a_refused_file_change_leaves_no_bytes_behind(client, auth, services) -> None:  # noqa: ANN001
    rid = submit(client, auth["alice"], [("t.csv", b"sex,n\nfemale,4180\n")]).json["id"]
    for reviewer in ("carol", "dave"):
        vote(client, auth[reviewer], rid, "return", "x")
    before = _blobs(services)
    payload = ("grp,v\n" + "".join(f"g{i},{s}\n" for i, s in enumerate(SEQNS[:50]))).encode()
    r = client.post(f"/v1/exports/{rid}/files", headers=auth["alice"], content_type="multipart/form-data",
                    data={"files": [(io.BytesIO(payload), "new.csv")], "remove": ["does-not-exist"]})
    assert (r.status_code, r.json["error"]["code"]) == (404, "unknown_file")
    assert _blobs(services) == before
    assert [e for e in services.audit.entries() if e["action"] == "export.upload_refused"]


def test_a_submit_that_fails_in_its_transaction_leaves_no_bytes_behind(client, auth, services,  # noqa: ANN001
                                                                      monkeypatch) -> None:
    from sandbox.errors import SandboxError
    from sandbox.state import exports_repo

    def broken(*_a: object, **_k: object) -> None:
        raise SandboxError("the disk is full", code="storage_error")

    monkeypatch.setattr(exports_repo, "insert_file", broken)
    r = submit(client, auth["alice"], [("t.csv", b"sex,n\nfemale,4180\n")])
    assert r.status_code >= 400
    assert _blobs(services) == set()


# -- 9. the identifier lookup table is keyed with a key outside the engine file -------------------------
def test_the_id_table_cannot_be_enumerated_from_the_engine_file(services, client, auth, tmp_path) -> None:  # noqa: ANN001
    import hmac
    import shutil

    import duckdb

    from sandbox.engine import ID_TABLE_PREFIX

    engine_file = next(services.engine.engine_dir.glob("catalog-*.duckdb"))
    key = services.engine.bounding_key()
    ids_key = services.engine.ids_key()
    data = engine_file.read_bytes()
    assert key not in data and ids_key not in data and key.hex().encode() not in data
    assert ids_key.hex().encode() not in data
    copy = tmp_path / "engine.duckdb"
    shutil.copy(engine_file, copy)
    con = duckdb.connect(str(copy), read_only=True)
    table = f'"{ID_TABLE_PREFIX}nhanes_2017"'
    meta_cols = [r[0] for r in con.execute("DESCRIBE __meta").fetchall()]
    assert "salt" not in meta_cols
    enumerate_sql = (f"SELECT COUNT(*) FROM (SELECT CAST(i AS VARCHAR) AS v FROM range(90000, 110000) t(i)) "
                     f"WHERE {{}} IN (SELECT h FROM {table})")
    assert con.execute(enumerate_sql.format("CAST(hash(v) AS VARCHAR)")).fetchone()[0] == 0
    # with the key (outside the file) the same enumeration finds them: the test could fail
    keyed = [hmac.new(ids_key, str(i).encode(), "sha256").hexdigest() for i in range(93703, 93803)]
    found = con.execute(f"SELECT COUNT(*) FROM (SELECT UNNEST(?::VARCHAR[]) AS h) f "
                        f"WHERE f.h IN (SELECT h FROM {table})", [keyed]).fetchone()[0]
    assert found > 50
    con.close()
    assert services.engine.unit_id_matches("nhanes_2017", [str(s) for s in SEQNS[:100]]) == found
    assert services.engine.unit_id_matches("nhanes_2017", ["93703.0", " 93704 "]) == 2


# -- 10. requests over the multipart limits are audited ------------------------------------------------
def test_an_oversize_upload_is_refused_and_audited_by_size(app, client, auth, services) -> None:  # noqa: ANN001
    app.config["MAX_CONTENT_LENGTH"] = 10_000
    body = b"sex,n\n" + b"female,4180\n" * 2000
    r = submit(client, auth["alice"], [("big.csv", body)])
    assert r.status_code == 413 and r.json["error"]["code"]
    refused = [e for e in services.audit.entries() if e["action"] == "export.upload_refused"]
    assert len(refused) == 1
    e = refused[0]
    assert e["actor"] == "alice" and e["detail"]["size"] > 10_000 and e["detail"]["reason"]["code"]
    assert "female" not in json.dumps(e["detail"])
    exports = services.db.dir / "exports"
    assert not exports.exists() or not any(exports.rglob("*"))


def test_too_many_parts_is_refused_and_audited(client, auth, services) -> None:  # noqa: ANN001
    files = [(io.BytesIO(b"a\n1\n"), f"a{i}.csv") for i in range(1200)]
    r = client.post("/v1/exports", headers=auth["alice"], content_type="multipart/form-data",
                    data={"grant": GRANT, "title": "t", "justification": "j", "files": files})
    assert r.status_code == 413
    assert [e for e in services.audit.entries() if e["action"] == "export.upload_refused"]


def test_a_key_that_does_not_match_the_engine_file_is_an_error_not_silent_zeros(services, client, auth) -> None:  # noqa: ANN001, E501
    from sandbox.engine import EngineError

    services.engine._ids_key = b"\x01" * 32  # e.g. the state directory's key file was replaced
    with pytest.raises(EngineError):
        services.engine.unit_id_matches("nhanes_2017", [str(s) for s in SEQNS[:10]])
    table = "k,v\n" + "".join(f"r{i},{s}\n" for i, s in enumerate(SEQNS[:60]))
    check = _identifiers(client, auth, "t.csv", table.encode())
    assert check["outcome"] == "review" and "could not run" in check["detail"]
