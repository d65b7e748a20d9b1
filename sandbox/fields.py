"""Free-text fields of requests (titles, justifications, case messages): one check for all of them."""

from __future__ import annotations

from sandbox.errors import BadRequest


def text_field(value: object, field: str, limit: int, required: bool = True) -> str:
    """``value`` stripped, or a 400 naming ``field``: missing, longer than ``limit``, or not valid
    Unicode text (a lone surrogate from JSON ``"\\ud800"`` cannot be stored or shown)."""
    text = value.strip() if isinstance(value, str) else ""
    if required and not text:
        raise BadRequest(f"`{field}` is required", code=f"missing_{field}")
    if len(text) > limit:
        raise BadRequest(f"`{field}` is longer than {limit} characters", code=f"bad_{field}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"`{field}` is not valid Unicode text", code="bad_text") from None
    return text
