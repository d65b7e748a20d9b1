"""Text canonicalization: UTF-8, NFC, one newline, and no invisible or control characters.

Invisible characters are a channel a reviewer cannot see: zero-width characters, bidi overrides,
the Unicode tag block (U+E0000-U+E007F, which spells out ASCII invisibly), variation selectors,
private-use and unassigned code points, and every other format (Cf) or control (Cc) character
except tab and newline. They are removed from the canonical file and counted for the checks.
So is every Default_Ignorable_Code_Point (rendered as nothing whatever its category: U+034F,
U+17B4/17B5, Hangul fillers...). Other spaces (category Zs: NBSP, U+2000-200A, U+3000...) and the
blank U+2800 become U+0020, line and paragraph separators (Zl, Zp) a newline; both are counted.
Stacks of two or more combining marks on one character are flagged (``canonical.marks``): they can
pile up invisibly or unreadably, although some scripts use them honestly.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from typing import Any

REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Cn"})
KEPT = frozenset({"\t", "\n"})
# Default_Ignorable_Code_Point, from Unicode's DerivedCoreProperties.txt (15.1), as ranges: code
# points a renderer shows as nothing whatever their category (some are Mn, Lo or Cn, not Cf).
DEFAULT_IGNORABLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
                     (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
                     (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8),
                     (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))
BLANKS = frozenset({"\u2800"})  # shown as a space, not in Zs
MAX_MARKS = 1  # combining marks on one character before it is flagged


def is_invisible(ch: str) -> bool:
    if ch in KEPT:
        return False
    if unicodedata.category(ch) in REMOVED_CATEGORIES:
        return True
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in DEFAULT_IGNORABLE)


def replacement(ch: str, line_sep: str = "\n") -> str | None:
    """U+0020 for another space, ``line_sep`` for a line or paragraph separator, else None."""
    if ch == " ":
        return None
    cat = unicodedata.category(ch)
    if cat == "Zs" or ch in BLANKS:
        return " "
    if cat in ("Zl", "Zp"):
        return line_sep
    return None


def mark_stacks(text: str) -> int:
    """How many characters carry two or more combining marks (after NFC)."""
    stacks, run = 0, 0
    for ch in text:
        if unicodedata.category(ch) in ("Mn", "Me", "Mc"):
            run += 1
            if run == MAX_MARKS + 1:
                stacks += 1
        else:
            run = 0
    return stacks


def marks_result(stacks: int) -> dict[str, Any]:
    from sandbox.exports.checks import result

    if not stacks:
        return result("canonical.marks", "pass", "no character carries a stack of combining marks")
    return result("canonical.marks", "review", f"{stacks:,} character(s) carry two or more combining marks: "
                  "some scripts do, but stacked marks can also hide or blur content; look closely", stacks=stacks)


def clean(text: str, removed: Counter[str] | None = None, line_sep: str = "\n") -> str:
    """``text`` with newlines as ``\\n``, invisible characters removed (counted in ``removed``), NFC."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    kept = []
    for ch in text:
        if is_invisible(ch):
            if removed is not None:
                removed[f"U+{ord(ch):04X}"] += 1
            continue
        other = replacement(ch, line_sep)
        if other is not None:
            if removed is not None:
                removed[f"U+{ord(ch):04X} as {'newline' if other == chr(10) else 'space'}"] += 1
            ch = other
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
    return f"{total} invisible, control or special space character(s) removed or replaced ({', '.join(parts)}{more})"


def invisible_result(removed: Counter[str]) -> dict[str, Any]:
    from sandbox.exports.checks import result

    if not removed:
        return result("canonical.invisible", "pass", "no invisible or control characters")
    return result("canonical.invisible", "review",
                  describe(removed) + ": they are not in the released file, but someone put them there",
                  removed=dict(removed))


def canonical_text(data: bytes) -> tuple[bytes, str, list[dict[str, Any]]]:
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
    return text.encode("utf-8"), text, [invisible_result(removed), marks_result(mark_stacks(text))]
