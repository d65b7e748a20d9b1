"""The signed-in forms' CSRF tokens (gateway.csrf, Flask-WTF): keyed outside the state directory,
bound to the browser's session cookie, and never asked of the bearer-token JSON API."""

from __future__ import annotations

import io
import re
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from gateway.app import create_app
from sandbox.errors import SandboxError
from sandbox.services import Services, Settings
from sandbox.state.chain import head_message
from sandbox.state.keys import MacKey

GRANT = "g-2026-001"


def _submit(client, headers) -> str:  # noqa: ANN001
    data = {"grant": GRANT, "title": "t", "justification": "j", "files": [(io.BytesIO(b"a,n\nx,40\n"), "t.csv")]}
    r = client.post("/v1/exports", headers=headers, data=data, content_type="multipart/form-data")
    assert r.status_code == 201, r.json
    return str(r.json["id"])


def _token(client, headers, rid: str) -> str:  # noqa: ANN001
    html = client.get(f"/review/exports/{rid}", headers=headers).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match
    return match.group(1)


def test_tokens_are_keyed_outside_the_state_and_bound_to_the_session(services: Services, app, tmp_path: Path,
                                                                     demo_data_root: Path) -> None:  # noqa: ANN001
    alice = {"Authorization": f"Bearer {services.tokens.create('alice')}"}
    carol = {"Authorization": f"Bearer {services.tokens.create('carol')}"}
    client = app.test_client()
    rid = _submit(client, alice)
    token = _token(client, carol, rid)
    assert not any("csrf" in p.name for p in services.db.dir.rglob("*"))  # no CSRF key in the state

    # the same token from a browser without the session cookie: refused
    cookieless = app.test_client()
    r = cookieless.post(f"/review/exports/{rid}/decision", headers=carol,
                        data={"csrf_token": token, "decision": "return", "comment": "no"})
    assert r.status_code == 403
    # another gateway over a copy of the state, with other keys, cannot mint a valid token
    state = tmp_path / "copy" / "state"
    shutil.copytree(services.db.dir, state, ignore=shutil.ignore_patterns("engine"))
    other_services = Services(Settings(state_dir=state, data_root=demo_data_root, keys_dir=tmp_path / "other-keys"))
    with pytest.raises(SandboxError, match="cannot be trusted"):  # the copied log's MACs are not its keys'
        create_app(services=other_services)
    _remac(state, other_services.db.keyring.current())  # what its owner would do: MAC the copy anew
    other_services = Services(Settings(state_dir=state, data_root=demo_data_root, keys_dir=tmp_path / "other-keys"))
    other = create_app(services=other_services)
    foreign = other.test_client()
    # carol's token rows are MACed under the real key: the copy with other keys refuses them, so the
    # other gateway signs her in with a token of its own
    assert foreign.get(f"/review/exports/{rid}", headers=carol).status_code == 302  # to the sign-in page
    foreign_carol = {"Authorization": f"Bearer {other_services.tokens.create('carol')}"}
    foreign_token = _token(foreign, foreign_carol, rid)
    cookie = foreign.get_cookie("session")
    assert cookie is not None
    replayed = app.test_client()  # that session cookie and its token, presented to the real gateway
    replayed.set_cookie("session", cookie.value)
    r = replayed.post(f"/review/exports/{rid}/decision", headers=carol,
                      data={"csrf_token": foreign_token, "decision": "return", "comment": "no"})
    assert r.status_code == 403
    r = foreign.post(f"/review/exports/{rid}/decision", headers=foreign_carol,  # (valid where it was minted)
                     data={"csrf_token": foreign_token, "decision": "return", "comment": "no"})
    assert r.status_code == 303
    # the genuine token, with its session: accepted
    r = client.post(f"/review/exports/{rid}/decision", headers=carol,
                    data={"csrf_token": token, "decision": "return", "comment": "fix it"})
    assert r.status_code == 303


def test_the_json_api_needs_no_csrf_token(services: Services, client) -> None:  # noqa: ANN001
    alice = {"Authorization": f"Bearer {services.tokens.create('alice')}"}
    carol = {"Authorization": f"Bearer {services.tokens.create('carol')}"}
    rid = _submit(client, alice)
    r = client.post(f"/v1/exports/{rid}/reviews", headers=carol, json={"decision": "return", "comment": "fix it"})
    assert r.status_code in (200, 201), r.json


def _remac(state: Path, key: MacKey) -> None:
    """MAC every entry and the head of a copied state under ``key`` (the copy's own gateway's key)."""
    with closing(sqlite3.connect(state / "sandbox.db", isolation_level=None)) as conn:
        for seq, digest in conn.execute("SELECT seq, hash FROM audit").fetchall():
            conn.execute("UPDATE audit SET key_id = ?, mac = ? WHERE seq = ?", (key.id, key.mac(digest), seq))
        seq, digest = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        conn.execute("UPDATE audit_head SET key_id = ?, mac = ?", (key.id, key.mac(head_message(seq, digest))))
