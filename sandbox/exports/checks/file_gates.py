"""File gates: what may enter the airlock at all, decided by content, never by name alone.

Accepted: only what can be rebuilt from its visible content (see :mod:`sandbox.exports.canonical`):
tables (csv, tsv, parquet), pictures (png, jpg/jpeg) and text (txt, md and code: py, r, sql).
Everything else (PDF, archives, notebooks, office files, unknown) is refused with a message that
names the accepted formats. Archives and executables are recognised by their magic bytes whatever
the file is called; a file whose content does not match its extension is refused. Gates run at
upload: a failing gate refuses the file (the bytes are not stored).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

from sandbox.exports.checks import result

ALLOWED_EXTENSIONS = {"csv": "csv", "tsv": "tsv", "parquet": "parquet", "png": "png", "jpg": "jpeg",
                      "jpeg": "jpeg", "txt": "text", "md": "text", "py": "text", "r": "text", "sql": "text"}
ACCEPTED = ("tables (.csv, .tsv, .parquet), pictures (.png, .jpg, .jpeg) and text "
            "(.txt, .md, .py, .r, .sql)")
WHY = ("the airlock releases only a file it rebuilt from the visible content the reviewers saw, "
       "and it can rebuild only these")
REFUSED_KINDS = {"pdf": "a PDF", "ipynb": "a notebook (outputs and metadata)", "docx": "an office file",
                 "xlsx": "an office file", "pptx": "an office file", "odt": "an office file",
                 "ods": "an office file", "doc": "an office file", "xls": "an office file",
                 "zip": "an archive", "gz": "an archive", "tar": "an archive", "7z": "an archive",
                 "html": "a web page (scripts, hidden elements)", "svg": "a vector image (scripts, hidden elements)",
                 "json": "structured data (save tables as CSV or Parquet, prose as .txt)"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

# magic bytes of things that must never leave: archives/compressed containers and executables
ARCHIVE_MAGIC = {
    b"PK\x03\x04": "zip archive (also docx/xlsx/jar)",
    b"PK\x05\x06": "zip archive (empty)",
    b"PK\x07\x08": "zip archive (spanned)",
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"7z\xbc\xaf\x27\x1c": "7-zip archive",
    b"Rar!\x1a\x07": "rar archive",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x04\x22\x4d\x18": "lz4",
    b"MSCF": "cabinet archive",
    b"!<arch>": "ar archive / .deb",
    b"\xed\xab\xee\xdb": "rpm package",
    b"SQLite format 3\x00": "SQLite database",
    b"\x89HDF\r\n\x1a\n": "HDF5 container",
    b"\x93NUMPY": "numpy array",
    b"\x80\x04\x95": "python pickle",
    b"\x80\x05\x95": "python pickle",
}
EXECUTABLE_MAGIC = {
    b"\x7fELF": "ELF executable",
    b"MZ": "Windows executable",
    b"\xfe\xed\xfa\xce": "Mach-O executable",
    b"\xfe\xed\xfa\xcf": "Mach-O executable",
    b"\xce\xfa\xed\xfe": "Mach-O executable",
    b"\xcf\xfa\xed\xfe": "Mach-O executable",
    b"\xca\xfe\xba\xbe": "Mach-O universal binary / Java class",
    b"\x00asm": "WebAssembly module",
    b"#!": "script with an interpreter line",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Limits:
    """Caps applied to every file (documented in the reviewer UI)."""

    max_file_bytes: int = 5_000_000
    max_rows: int = 10_000
    max_columns: int = 200
    max_files: int = 20


DEFAULT_LIMITS = Limits()


def extension(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def sniff(data: bytes) -> tuple[str, str]:
    """(kind, description) from content: csv-or-text kinds are 'text'; refused ones 'archive'/'executable'."""
    for magic, what in EXECUTABLE_MAGIC.items():
        if data.startswith(magic):
            return "executable", what
    for magic, what in ARCHIVE_MAGIC.items():
        if data.startswith(magic):
            return "archive", what
    if len(data) > 262 and data[257:262] == b"ustar":
        return "archive", "tar archive"
    if data.startswith(PNG_MAGIC):
        return "png", "PNG image"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg", "JPEG image"
    if data.startswith(b"%PDF-"):
        return "pdf", "PDF document"
    if data.startswith(b"PAR1") and data.endswith(b"PAR1") and len(data) >= 12:
        return "parquet", "Parquet file"
    if b"\x00" in data:
        return "binary", "unknown binary content"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "binary", "not UTF-8 text"
    return "text", "UTF-8 text"


def png_trailing_bytes(data: bytes) -> int | None:
    """Bytes after the IEND chunk (data smuggled behind an image), or None if the PNG is malformed."""
    pos = len(PNG_MAGIC)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        pos += 12 + length
        if ctype == b"IEND":
            return len(data) - pos if pos <= len(data) else None
    return None


def gate(name: str, data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[str | None, list[dict[str, Any]]]:
    """Run the gates; returns (kind or None when refused, results). Kind: csv|tsv|parquet|png|jpeg|text."""
    out: list[dict[str, Any]] = []
    if not NAME_RE.match(name):
        out.append(result("file.name", "fail", "file names are letters, digits, '.', '_' or '-' (no paths)"))
        return None, out
    ext = extension(name)
    wanted = ALLOWED_EXTENSIONS.get(ext)
    if wanted is None:
        what = REFUSED_KINDS.get(ext, f"'.{ext}'" if ext else "a file without extension")
        out.append(result("file.type", "fail", f"{what} cannot be released: accepted are {ACCEPTED}; {WHY}"))
        return None, out
    if len(data) > limits.max_file_bytes:
        out.append(result("file.size", "fail", f"{len(data):,} bytes is over the cap of {limits.max_file_bytes:,}"))
        return None, out
    if not data:
        out.append(result("file.size", "fail", "the file is empty"))
        return None, out
    out.append(result("file.size", "pass", f"{len(data):,} bytes (cap {limits.max_file_bytes:,})"))
    sniffed, what = sniff(data)
    if sniffed in ("archive", "executable"):
        out.append(result("file.content", "fail", f"the content is a {what}; {sniffed}s never leave"))
        return None, out
    content_kind = wanted if (sniffed == "text" and wanted in ("csv", "tsv")) else sniffed
    if content_kind != wanted:
        out.append(result("file.content", "fail", f"named .{ext} but the content is {what}"))
        return None, out
    problem = _kind_specific(wanted, data)
    if problem:
        out.append(result("file.content", "fail", problem))
        return None, out
    out.append(result("file.content", "pass", f"content is {what}, as the name says"))
    return wanted, out


def _kind_specific(kind: str, data: bytes) -> str | None:
    if kind == "png":
        trailing = png_trailing_bytes(data)
        if trailing is None:
            return "malformed PNG (no IEND chunk)"
        if trailing > 0:
            return f"{trailing} bytes hidden after the end of the PNG image"
    return None


def row_gate(n_rows: int, n_columns: int, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The row and column caps for tables (refusing when over)."""
    if n_rows > limits.max_rows:
        return result("file.rows", "fail", f"more than {limits.max_rows:,} rows")
    if n_columns > limits.max_columns:
        return result("file.rows", "fail", f"{n_columns} columns is over the cap of {limits.max_columns}")
    return result("file.rows", "pass", f"{n_rows:,} rows, {n_columns} columns (caps {limits.max_rows:,} rows)")
