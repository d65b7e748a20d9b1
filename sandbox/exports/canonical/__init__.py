"""Canonical release: the airlock never releases uploaded bytes.

At submit each accepted file is parsed into its visible content and a canonical file is rendered
from that content alone (one small module per kind: :mod:`.tables`, :mod:`.images`, :mod:`.text`).
Checks, the reviewer's preview, the sha256 recorded at approval and the download all use the
canonical bytes; the uploaded bytes are hashed for the audit log and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandbox.exports.canonical.images import canonical_image
from sandbox.exports.canonical.tables import canonical_table
from sandbox.exports.canonical.text import canonical_text

TABLE_KINDS = ("csv", "tsv", "parquet")
IMAGE_KINDS = ("png", "jpeg")
TEXT_KINDS = ("text",)
# a canonical file this much smaller than the upload is flagged: the difference was not visible content
GAP_RATIO = 2.0
GAP_BYTES = 4096


@dataclass
class Canonical:
    """One file as the airlock keeps it: kind, canonical bytes and what canonicalization found."""

    name: str
    kind: str
    data: bytes
    uploaded_size: int
    uploaded_sha256: str
    findings: list[dict[str, Any]] = field(default_factory=list)


def render(kind: str, data: bytes, max_rows: int | None = None) -> tuple[bytes, list[dict[str, Any]]]:
    """(canonical bytes, findings) of an upload whose kind the file gates established."""
    if kind in TABLE_KINDS:
        return canonical_table(kind, data, max_rows)
    if kind in IMAGE_KINDS:
        return canonical_image(kind, data)
    if kind in TEXT_KINDS:
        out, _text, findings = canonical_text(data)
        return out, findings
    raise ValueError(f"no canonical form for {kind}")  # the gates never let one through


def size_result(uploaded: int, canonical: int) -> dict[str, Any]:
    from sandbox.exports.checks import result

    detail = f"uploaded {uploaded:,} bytes, released {canonical:,} bytes (canonical rendering)"
    if uploaded > GAP_RATIO * canonical + GAP_BYTES:
        return result("canonical.size", "review", detail + ": most of the upload was not visible content; "
                      "ask the requester what it was", uploaded=uploaded, canonical=canonical)
    return result("canonical.size", "pass", detail, uploaded=uploaded, canonical=canonical)
