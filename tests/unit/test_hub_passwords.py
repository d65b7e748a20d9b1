"""The hub's demo logins: werkzeug.security hashes, made the way scripts/stack makes them."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from werkzeug.security import generate_password_hash

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "images" / "hub"))

from sandbox_hub.passwords import PASSWORD_METHOD, hash_password, verify_password  # noqa: E402


def test_hashes_from_scripts_stack_verify() -> None:
    stack = (REPO / "scripts" / "stack").read_text()
    assert f'method="{PASSWORD_METHOD}"' in stack  # scripts/stack hashes with the method the hub checks
    encoded = generate_password_hash("s3cret-pw", method=PASSWORD_METHOD)
    assert verify_password("s3cret-pw", encoded)
    assert not verify_password("wrong", encoded) and not verify_password("", encoded)


def test_malformed_or_legacy_hashes_never_match() -> None:
    assert not verify_password("pw", "garbage")
    assert not verify_password("pw", "")
    assert not verify_password("pw", "pbkdf2_sha256$200000$c2FsdA==$ZGlnZXN0")  # the old hand-written format
    assert verify_password("pw", hash_password("pw"))
    assert hash_password("pw") != hash_password("pw")  # salted


def test_the_demo_authenticator_checks_with_these_helpers() -> None:
    """hub_config (which needs Docker to load) authenticates through sandbox_hub.passwords.verify_password."""
    tree = ast.parse((REPO / "hub_config.py").read_text())
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("sandbox_hub.passwords", "verify_password") in imported
    auth = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "DemoPasswordAuthenticator")
    calls = {n.func.id for n in ast.walk(auth) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "verify_password" in calls
    assert not any(isinstance(n, ast.FunctionDef) and n.name in ("hash_password", "verify_password")
                   for n in tree.body)  # no second, hand-written copy
