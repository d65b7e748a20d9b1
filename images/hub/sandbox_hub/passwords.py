"""The demo logins' password hashes: werkzeug.security, the format scripts/stack writes."""

from __future__ import annotations

from werkzeug.security import check_password_hash, generate_password_hash

PASSWORD_METHOD = "pbkdf2:sha256:600000"  # werkzeug's format: method$salt$hash


def hash_password(password: str) -> str:
    return generate_password_hash(password, method=PASSWORD_METHOD)


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check with werkzeug.security; a malformed hash never matches."""
    try:
        return check_password_hash(encoded, password)
    except (ValueError, TypeError):
        return False
