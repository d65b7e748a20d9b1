"""An attacker's second review of the record (write access to --state, no access to the keys).

Real gateway (Flask test client), real SQLite, the real CLI. Each test is one attack that used to
succeed; the attacker writes the state database through a connection of their own.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager

from sandbox.services import Services

CASE = {"grant": "g-2026-001", "dataset": "nhanes_2017", "subject": "forged", "message": "filed by the attacker"}


@contextmanager
def attacker(services: Services) -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(services.db.path, isolation_level=None)) as conn:
        conn.row_factory = sqlite3.Row
        yield conn


# -- 1. a token row planted in the table does not authenticate -------------------------------------
def test_a_planted_token_row_is_refused_at_the_request(services: Services, client) -> None:  # noqa: ANN001
    token = "sbx_attacker_chosen_token"
    digest = hashlib.sha256(token.encode()).hexdigest()
    with attacker(services) as conn:
        conn.execute("INSERT INTO tokens (token_hash, user, created_at, scope) VALUES (?, 'alice', 'x', 'api')",
                     (digest,))
    r = client.post("/v1/cases/data-quality", headers={"Authorization": f"Bearer {token}"}, json=CASE)
    assert r.status_code == 401, r.json
    assert client.get("/v1/catalog", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_a_copied_mac_does_not_move_a_token_to_another_user(services: Services, client) -> None:  # noqa: ANN001
    token = services.tokens.create("mallory")
    with attacker(services) as conn:
        conn.execute("UPDATE tokens SET user = 'alice' WHERE user = 'mallory'")
    assert client.get("/v1/catalog", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_an_unrevoked_row_is_refused(services: Services, client) -> None:  # noqa: ANN001
    token = services.tokens.create("alice")
    services.tokens.revoke_user("alice", actor="admin")
    with attacker(services) as conn:
        conn.execute("UPDATE tokens SET revoked_at = NULL")
    assert client.get("/v1/catalog", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_genuine_tokens_still_work(services: Services, client, alice) -> None:  # noqa: ANN001
    assert client.get("/v1/catalog", headers=alice).status_code == 200


# -- 5. a revoked admin credential does not come back when its row is deleted ---------------------
def test_a_revoked_admin_credential_is_not_registered_again(services: Services, monkeypatch) -> None:  # noqa: ANN001
    from sandbox.cli.serve import ensure_admin
    from sandbox.state.tokens import token_hash

    leaked = "sbxadm_" + "ab" * 32
    monkeypatch.setenv("SANDBOX_ADMIN_TOKEN", leaked)
    ensure_admin(services)
    assert services.tokens.admin_for(leaked) == "admin"
    services.tokens.revoke_user("admin", actor="admin", scope="admin")
    with attacker(services) as conn:
        conn.execute("DELETE FROM tokens WHERE token_hash = ?", (token_hash(leaked),))
    ensure_admin(services)  # the next start
    assert services.tokens.admin_for(leaked) is None


def test_tokens_from_before_the_row_mac_are_kept_only_when_their_event_verifies(services: Services) -> None:
    from sandbox.services import Services as Fresh
    from sandbox.state.tokens import token_hash

    genuine = services.tokens.create("alice")
    planted = "sbx_planted_before_the_upgrade"
    with attacker(services) as conn:
        conn.execute("UPDATE tokens SET key_id = NULL, mac = NULL")  # as a file from before the row MAC
        conn.execute("INSERT INTO tokens (token_hash, user, created_at, scope) VALUES (?, 'bob', 'x', 'api')",
                     (token_hash(planted),))
    reopened = Fresh(services.settings)
    assert reopened.tokens.user_for(genuine) == "alice"
    assert reopened.tokens.user_for(planted) is None
