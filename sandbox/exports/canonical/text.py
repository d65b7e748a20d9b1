"""Text canonicalization: UTF-8, NFC, one newline, and no invisible or control characters.

Invisible characters are a channel a reviewer cannot see: zero-width characters, bidi overrides,
the Unicode tag block (U+E0000-U+E007F, which spells out ASCII invisibly), variation selectors,
private-use and unassigned code points, and every other format (Cf) or control (Cc) character
except tab and newline. They are removed from the canonical file and counted for the checks.
"""

from __future__ import annotations

import unicodedata
from collections import Counter

REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Cn"})
KEPT = frozenset({"\t", "\n"})
# invisible although not in a removed category: variation selectors and Hangul fillers
INVISIBLE_RANGES = ((0xFE00, 0xFE0F), (0xE0100, 0xE01EF), (0x115F, 0x1160), (0x3164, 0x3164),
                    (0xFFA0, 0xFFA0), (0x180B, 0x180F))


def is_invisible(ch: str) -> bool:
    if ch in KEPT:
        return False
    if unicodedata.category(ch) in REMOVED_CATEGORIES:
        return True
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in INVISIBLE_RANGES)


def clean(text: str, removed: Counter[str] | None = None) -> str:
    """``text`` with newlines as ``\\n``, invisible characters removed (counted in ``removed``), NFC."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    kept = []
    for ch in text:
        if is_invisible(ch):
            if removed is not None:
                removed[f"U+{ord(ch):04X}"] += 1
        else:
            kept.append(ch)
    return unicodedata.normalize("NFC", "".join(kept))


def decode(data: bytes) -> str:
    """UTF-8 text (a leading byte-order mark dropped); the file gates already refused anything else."""
    text = data.decode("utf-8")
    return text[1:] if text.startswith("\ufeff") else text


def describe(removed: Counter[str], limit: int = 8) -> str:
    total = sum(removed.values())
    parts = [f"{cp} ×{n}" for cp, n in removed.most_common(limit)]
    more = f", … {len(removed) - limit} more kinds" if len(removed) > limit else ""
    return f"{total} invisible or control character(s) removed ({', '.join(parts)}{more})"


def invisible_result(removed: Counter[str]) -> dict:
    from sandbox.exports.checks import result

    if not removed:
        return result("canonical.invisible", "pass", "no invisible or control characters")
    return result("canonical.invisible", "review",
                  describe(removed) + ": they are not in the released file, but someone put them there",
                  removed=dict(removed))


def canonical_text(data: bytes) -> tuple[bytes, str, list[dict]]:
    """(canonical bytes, canonical text, findings) of a text, Markdown or code file.

    Spaces and tabs at the end of a line are removed too (counted as ``trailing whitespace``):
    invisible in every viewer, they are a classic place to hide bits."""
    removed: Counter[str] = Counter()
    text = clean(decode(data), removed)
    lines = text.split("\n")
    trailing = sum(len(line) - len(line.rstrip(" \t")) for line in lines)
    if trailing:
        removed["trailing whitespace"] += trailing
        text = "\n".join(line.rstrip(" \t") for line in lines)
    return text.encode("utf-8"), text, [invisible_result(removed)]
