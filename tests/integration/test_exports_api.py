"""The exports API end to end: real SQLite state, real engine, real Flask app, real policies."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from contextlib import closing

import pytest

from sandbox.exports import store
from sandbox.exports.workflow import withdraw_pending_for_grant
from sandbox.policy.models import Grant
from sandbox.services import Services
from sandbox.state import exports_repo
from sandbox.wiring import export_deps

GRANT = "g-2026-001"
TABLE = b"sex,n\nfemale,4180\nmale,4016\n"


@pytest.fixture
def auth(services: Services) -> dict[str, dict[str, str]]:
    """Authorization headers for the demo users: members alice, bob; reviewers carol, dave."""
    return {u: {"Authorization": f"Bearer {services.tokens.create(u)}"}
            for u in ("alice", "bob", "carol", "dave", "mallory", "admin")}


def submit(client, headers, files=None, grant=GRANT, **extra):  # noqa: ANN001, ANN201
    files = files if files is not None else [("table.csv", TABLE)]
    data = {"grant": grant, "title": "Sex by count", "justification": "service planning", **extra,
            "files": [(io.BytesIO(b), n) for n, b in files]}
    return client.post("/v1/exports", headers=headers, data=data, content_type="multipart/form-data")


def vote(client, headers, rid, decision="approve", comment="fine"):  # noqa: ANN001, ANN201
    return client.post(f"/v1/exports/{rid}/reviews", headers=headers,
                       json={"decision": decision, "comment": comment})


def approved(client, auth) -> str:  # noqa: ANN001
    rid = submit(client, auth["alice"]).json["id"]
    assert vote(client, auth["carol"], rid).json["status"] == "partially_reviewed"
    assert vote(client, auth["dave"], rid).json["status"] == "approved"
    return rid


def single_reviewer_grant(services: Services) -> None:
    body = services.policies.grant(GRANT).model_dump(mode="json")
    body.update(id="g-one", members=["alice", "carol"], exports={"reviewers_required": 1})
    services.policies.apply_grant(Grant.model_validate(body), "test")


def test_submit_returns_checks_per_file(client, auth) -> None:  # noqa: ANN001
    r = submit(client, auth["alice"], files=[("table.csv", TABLE), ("notes.md", b"# notes\n")])
    assert r.status_code == 201, r.json
    body = r.json
    assert body["status"] == "submitted" and body["id"].startswith("exp-")
    names = {f["name"]: f for f in body["files"]}
    assert names["table.csv"]["sha256"] == hashlib.sha256(TABLE).hexdigest()
    rules = {c["rule"] for c in names["table.csv"]["checks"]}
    assert {"file.content", "identifiers", "sdc.threshold", "sdc.dominance", "sdc.p_percent",
            "provenance", "differencing"} <= rules
    assert all(set(c) >= {"rule", "outcome", "detail"} for c in names["notes.md"]["checks"])


@pytest.mark.parametrize(
    ("form", "files", "status", "code"),
    [
        ({"title": ""}, None, 400, "missing_title"),
        ({"justification": ""}, None, 400, "missing_justification"),
        ({}, [], 400, "no_files"),
        ({}, [("a.csv", b"a\n1\n"), ("a.csv", b"a\n2\n")], 400, "duplicate_file"),
        ({}, [("evil.csv", b"PK\x03\x04" + b"\x00" * 40)], 400, "file_refused"),
        ({"grant": "g-nope"}, None, 403, "not_a_member"),
    ],
)
def test_submit_refusals(client, auth, form, files, status, code) -> None:  # noqa: ANN001
    r = submit(client, auth["alice"], files=files, **form)
    assert (r.status_code, r.json["error"]["code"]) == (status, code)


def test_non_member_and_revoked_grant_cannot_submit(client, auth, services) -> None:  # noqa: ANN001
    r = submit(client, auth["mallory"])
    assert (r.status_code, r.json["error"]["code"]) == (403, "not_a_member")
    services.policies.set_status(GRANT, "suspended", "admin")
    assert submit(client, auth["alice"]).json["error"]["code"] == "grant_suspended"
    assert client.post("/v1/exports", data={}).status_code == 401


def test_two_person_rule_and_independent_votes(client, auth) -> None:  # noqa: ANN001
    rid = submit(client, auth["alice"]).json["id"]
    r = vote(client, auth["carol"], rid, "approve", "ok by me")
    assert r.json["status"] == "partially_reviewed"
    # dave does not see carol's vote until he has voted; carol sees only her own
    assert client.get(f"/v1/exports/{rid}", headers=auth["dave"]).json["reviews"] == []
    carol_view = client.get(f"/v1/exports/{rid}", headers=auth["carol"]).json
    assert [v["reviewer"] for v in carol_view["reviews"]] == ["carol"]
    assert client.get(f"/v1/exports/{rid}", headers=auth["alice"]).json["reviews"] == []
    # carol cannot vote twice; her single approval never releases
    assert vote(client, auth["carol"], rid).json["error"]["code"] == "already_reviewed"
    early = client.get(f"/v1/exports/{rid}/files/table.csv", headers=auth["alice"])
    assert early.json["error"]["code"] == "not_released"
    r = vote(client, auth["dave"], rid, "approve")
    assert r.json["status"] == "approved"
    assert {v["reviewer"] for v in r.json["reviews"]} == {"carol", "dave"}


def test_one_reject_out_of_two_rejects(client, auth) -> None:  # noqa: ANN001
    rid = submit(client, auth["alice"]).json["id"]
    assert vote(client, auth["carol"], rid, "reject", "too small").json["status"] == "partially_reviewed"
    assert vote(client, auth["dave"], rid, "approve").json["status"] == "rejected"
    assert vote(client, auth["dave"], rid).json["error"]["code"] == "illegal_transition"


def test_self_review_and_non_reviewers_refused(client, auth, services) -> None:  # noqa: ANN001
    rid = submit(client, auth["alice"]).json["id"]
    for user, code in (("alice", "not_reviewer"), ("bob", "not_reviewer"), ("mallory", "not_reviewer")):
        r = vote(client, auth[user], rid)
        assert (r.status_code, r.json["error"]["code"]) == (403, code)
    single_reviewer_grant(services)  # carol is both a member and a reviewer of g-one
    own = submit(client, auth["carol"], grant="g-one").json["id"]
    r = vote(client, auth["carol"], own)
    assert (r.status_code, r.json["error"]["code"]) == (403, "self_review")
    assert own not in [q["id"] for q in client.get("/v1/exports", headers=auth["carol"]).json["queue"]]
    assert vote(client, auth["dave"], own).json["status"] == "approved"  # one approval suffices


def test_bad_decisions_and_comment_rules(client, auth) -> None:  # noqa: ANN001
    rid = submit(client, auth["alice"], files=[("t.csv", b"sex,n\nfemale,3\n")]).json["id"]
    assert vote(client, auth["carol"], rid, "maybe").json["error"]["code"] == "bad_decision"
    assert vote(client, auth["carol"], rid, "return", "").json["error"]["code"] == "missing_comment"
    # a failed check (count 3 < 10) blocks approval, with or without a comment
    for comment in ("", "suppressed upstream"):
        r = vote(client, auth["carol"], rid, "approve", comment)
        assert (r.status_code, r.json["error"]["code"]) == (409, "check_failed")
    # once an admin outside the grant overrode it, approving still needs a reason
    r = client.post(f"/v1/exports/{rid}/override", headers=auth["admin"], json={"reason": "published elsewhere"})
    assert r.status_code == 200, r.json
    assert vote(client, auth["carol"], rid, "approve", "").json["error"]["code"] == "comment_required"
    assert vote(client, auth["carol"], rid, "approve", "suppressed upstream").status_code == 200


def test_visibility(client, auth) -> None:  # noqa: ANN001
    rid = submit(client, auth["alice"]).json["id"]
    assert client.get(f"/v1/exports/{rid}", headers=auth["mallory"]).status_code == 404
    assert client.get(f"/v1/exports/{rid}", headers=auth["bob"]).status_code == 404
    assert client.get(f"/v1/exports/{rid}", headers=auth["admin"]).status_code == 200
    listing = client.get("/v1/exports", headers=auth["carol"]).json
    assert [q["id"] for q in listing["queue"]] == [rid]
    assert client.get("/v1/exports", headers=auth["alice"]).json["queue"] == []
    assert [m["id"] for m in client.get("/v1/exports", headers=auth["alice"]).json["mine"]] == [rid]


def test_release_gives_exact_bytes_to_the_requester_only(client, auth, services) -> None:  # noqa: ANN001
    rid = approved(client, auth)
    for user in ("bob", "carol", "mallory"):
        assert client.get(f"/v1/exports/{rid}/files/table.csv", headers=auth[user]).status_code in (403, 404)
    r = client.get(f"/v1/exports/{rid}/files/table.csv", headers=auth["alice"])
    assert r.status_code == 200
    assert r.data == TABLE
    assert r.headers["X-Content-SHA256"] == hashlib.sha256(TABLE).hexdigest()
    assert "attachment" in r.headers["Content-Disposition"]
    assert client.get(f"/v1/exports/{rid}", headers=auth["alice"]).json["status"] == "released"
    again = client.get(f"/v1/exports/{rid}/files/table.csv", headers=auth["alice"])
    assert again.data == TABLE
    assert client.get(f"/v1/exports/{rid}/files/other.csv", headers=auth["alice"]).status_code == 404
    actions = [e["action"] for e in services.audit.entries() if e["action"].startswith("export.")]
    assert actions == ["export.submitted", "export.reviewed", "export.approved", "export.released",
                       "export.downloaded", "export.downloaded"]
    assert services.audit.verify().ok


def test_tampered_bytes_are_never_released(client, auth, services) -> None:  # noqa: ANN001
    rid = approved(client, auth)
    digest = hashlib.sha256(TABLE).hexdigest()
    blob = services.db.dir / "exports" / rid / digest
    blob.write_bytes(b"sex,n\nfemale,3\nmale,4016\n")
    r = client.get(f"/v1/exports/{rid}/files/table.csv", headers=auth["alice"])
    assert (r.status_code, r.json["error"]["code"]) == (409, "integrity_failed")
    assert b"female,3" not in r.data
    # a consistent forgery of bytes and database row is caught by the approval in the audit chain
    forged = b"sex,n\nfemale,3\n"
    store.BlobStore(services.db).put(rid, forged)
    with closing(sqlite3.connect(services.db.path, isolation_level=None)) as raw:  # an attacker's own connection
        raw.execute("UPDATE export_files SET sha256 = ? WHERE request_id = ?",
                    (hashlib.sha256(forged).hexdigest(), rid))
    r = client.get(f"/v1/exports/{rid}/files/table.csv", headers=auth["alice"])
    assert (r.status_code, r.json["error"]["code"]) == (409, "integrity_failed")
    blob.unlink()
    assert client.get(f"/v1/exports/{rid}", headers=auth["alice"]).json["status"] == "approved"
    assert [e for e in services.audit.entries() if e["action"] == "export.integrity_failed"]


def test_return_change_resubmit_resets_reviews(client, auth, services) -> None:  # noqa: ANN001
    rid = submit(client, auth["alice"], files=[("t.csv", b"sex,n\nfemale,3\n"), ("x.md", b"# x\n")]).json["id"]
    assert vote(client, auth["carol"], rid, "approve", "ok").json["error"]["code"] == "check_failed"
    vote(client, auth["carol"], rid, "return", "3 is under the threshold")
    assert vote(client, auth["dave"], rid, "return", "suppress the 3").json["status"] == "returned"
    # the requester now sees both reviews of the completed round
    assert len(client.get(f"/v1/exports/{rid}", headers=auth["alice"]).json["reviews"]) == 2
    assert client.post(f"/v1/exports/{rid}/files", headers=auth["bob"], data={"remove": "x.md"}).status_code == 403
    r = client.post(f"/v1/exports/{rid}/files", headers=auth["alice"], content_type="multipart/form-data",
                    data={"files": [(io.BytesIO(b"sex,n\nfemale,30\n"), "t.csv")], "remove": "x.md"})
    assert r.status_code == 200, r.json
    assert [f["name"] for f in r.json["files"]] == ["t.csv"]
    assert r.json["status"] == "returned"
    r = client.post(f"/v1/exports/{rid}/resubmit", headers=auth["alice"])
    assert (r.json["status"], r.json["round"]) == ("submitted", 2)
    # carol's round-1 approval does not count: two fresh votes are needed
    assert vote(client, auth["carol"], rid, "approve").json["status"] == "partially_reviewed"
    assert vote(client, auth["dave"], rid, "approve").json["status"] == "approved"
    got = client.get(f"/v1/exports/{rid}/files/t.csv", headers=auth["alice"])
    assert got.data == b"sex,n\nfemale,30\n"
    history = [(e["action"], e["to_status"]) for e in r.json["history"]]
    assert history[-2:] == [("change_files", "returned"), ("resubmit", "submitted")]


def test_illegal_operations_in_every_reachable_state(client, auth) -> None:  # noqa: ANN001
    """Each API operation is refused (409 illegal_transition / not_released) where the table says so."""
    def fresh() -> str:
        return submit(client, auth["alice"]).json["id"]

    states = {"submitted": fresh()}
    states["partially_reviewed"] = fresh()
    vote(client, auth["carol"], states["partially_reviewed"])
    states["approved"] = approved(client, auth)
    states["released"] = approved(client, auth)
    client.get(f"/v1/exports/{states['released']}/files/table.csv", headers=auth["alice"])
    states["rejected"] = fresh()
    vote(client, auth["carol"], states["rejected"], "reject", "no")
    vote(client, auth["dave"], states["rejected"], "reject", "no")
    states["returned"] = fresh()
    vote(client, auth["carol"], states["returned"], "return", "fix")
    vote(client, auth["dave"], states["returned"], "return", "fix")
    states["withdrawn"] = fresh()
    client.post(f"/v1/exports/{states['withdrawn']}/withdraw", headers=auth["alice"])
    for state, rid in states.items():
        assert client.get(f"/v1/exports/{rid}", headers=auth["alice"]).json["status"] == state
    ops = {
        "review": lambda rid: vote(client, auth["carol"], rid, "return", "x"),
        "withdraw": lambda rid: client.post(f"/v1/exports/{rid}/withdraw", headers=auth["alice"]),
        "change_files": lambda rid: client.post(
            f"/v1/exports/{rid}/files", headers=auth["alice"], content_type="multipart/form-data",
            data={"files": [(io.BytesIO(b"sex,n\nfemale,40\n"), "new.csv")]}),
        "resubmit": lambda rid: client.post(f"/v1/exports/{rid}/resubmit", headers=auth["alice"]),
        "download": lambda rid: client.get(f"/v1/exports/{rid}/files/table.csv", headers=auth["alice"]),
    }
    allowed = {
        "review": {"submitted"},  # carol already voted on partially_reviewed
        "withdraw": {"submitted", "partially_reviewed", "returned", "approved"},
        "change_files": {"returned"},
        "resubmit": {"returned"},
        "download": {"approved", "released"},
    }
    refused_codes = {"illegal_transition", "not_released", "already_reviewed"}
    for op, call in ops.items():
        for state in states:
            if state in allowed[op]:
                continue
            r = call(states[state])
            assert r.status_code == 409, (op, state, r.status_code)
            assert r.json["error"]["code"] in refused_codes, (op, state)
            assert client.get(f"/v1/exports/{states[state]}", headers=auth["alice"]).json["status"] == state


def test_revoked_grant_withdraws_pending_requests(client, auth, services) -> None:  # noqa: ANN001
    pending = submit(client, auth["alice"]).json["id"]
    ready = approved(client, auth)
    done = approved(client, auth)
    client.get(f"/v1/exports/{done}/files/table.csv", headers=auth["alice"])
    services.policies.set_status(GRANT, "revoked", "admin")
    assert withdraw_pending_for_grant(export_deps(services), GRANT, "admin") == 2
    for rid, status in ((pending, "withdrawn"), (ready, "withdrawn"), (done, "released")):
        assert client.get(f"/v1/exports/{rid}", headers=auth["alice"]).json["status"] == status
    r = client.get(f"/v1/exports/{done}/files/table.csv", headers=auth["alice"])
    assert r.json["error"]["code"] == "grant_revoked"


def test_identifier_leak_checked_against_raw_ids(client, auth, services) -> None:  # noqa: ANN001
    # NHANES 2017-2018 respondent numbers start at 93703 (public codebook)
    leak = b"person,sex\n93703,male\n93704,female\n93705,female\n93706,male\n"
    r = submit(client, auth["alice"], files=[("leak.csv", leak)])
    # the requester sees no result (it would be a membership oracle); a reviewer sees it
    mine = {c["rule"]: c for c in r.json["files"][0]["checks"]}
    assert mine["identifiers"]["outcome"] == "review" and "reviewers only" in mine["identifiers"]["detail"]
    seen = client.get(f"/v1/exports/{r.json['id']}", headers=auth["carol"]).json
    checks = {c["rule"]: c for c in seen["files"][0]["checks"]}
    assert checks["identifiers"]["outcome"] == "fail"
    assert checks["identifiers"]["cells"][0]["column"] == "person"
    clean = submit(client, auth["alice"]).json["id"]
    clean_checks = client.get(f"/v1/exports/{clean}", headers=auth["carol"]).json["files"][0]["checks"]
    assert {c["rule"]: c for c in clean_checks}["identifiers"]["outcome"] == "pass"


def test_provenance_and_differencing_use_released_answers(client, auth, services) -> None:  # noqa: ANN001
    def release_answer(query_id: str, columns: list, rows: list, epsilon: float = 0.5) -> None:
        key = hashlib.sha256(query_id.encode()).hexdigest()
        services.ledger.charge(grant_id=GRANT, user="alice", query_id=query_id, epsilon=epsilon,
                               max_epsilon_per_query=1.0, cache_key=key, audit_detail={},
                               dataset=services.policies.datasets()["nhanes_2017"],
                               operator=services.policies.grant(GRANT).operator)
        services.ledger.store_answer(key, query_id, "alice", GRANT, {"columns": columns, "rows": rows})

    release_answer("q-sex", ["sex", "n"], [["female", 4180], ["male", 4016]])
    r = submit(client, auth["alice"])
    checks = {c["rule"]: c for c in r.json["files"][0]["checks"]}
    assert checks["provenance"]["outcome"] == "pass"
    assert checks["provenance"]["queries"][0]["query_id"] == "q-sex"
    assert checks["differencing"]["outcome"] == "pass"
    r = submit(client, auth["alice"], files=[("t.csv", b"sex,n\nfemale,4177\nmale,4016\n")])
    checks = {c["rule"]: c for c in r.json["files"][0]["checks"]}
    assert checks["provenance"]["outcome"] == "review"
    assert checks["differencing"]["outcome"] == "review"
    assert checks["differencing"]["cells"] == []  # the requester sees outcomes; cells quote the file
    seen = client.get(f"/v1/exports/{r.json['id']}", headers=auth["carol"]).json
    checks = {c["rule"]: c for c in seen["files"][0]["checks"]}
    assert checks["differencing"]["cells"][0]["row"] == 0
    # bob ran nothing: no provenance for his file, but differencing sees the grant's answers
    r = submit(client, auth["bob"], files=[("t.csv", b"sex,n\nfemale,4177\n")])
    checks = {c["rule"]: c for c in r.json["files"][0]["checks"]}
    assert checks["provenance"]["outcome"] == "review" and checks["provenance"]["queries"] == []
    assert checks["differencing"]["outcome"] == "review"


def test_every_transition_is_in_the_audit_chain(client, auth, services) -> None:  # noqa: ANN001
    rid = approved(client, auth)
    client.get(f"/v1/exports/{rid}/files/table.csv", headers=auth["alice"])
    events = exports_repo.events(services.db.conn, rid)
    audited = {e["seq"]: e for e in services.audit.entries()}
    for ev in events:
        assert ev.audit_seq is not None
        entry = audited[ev.audit_seq]
        assert entry["detail"]["request"] == rid
        assert (entry["detail"]["from"], entry["detail"]["to"]) == (ev.from_status, ev.to_status)
    assert services.audit.verify().ok
    assert json.dumps(audited)  # plain data


def test_html_pages_and_json_twins(client, auth) -> None:  # noqa: ANN001
    rid = submit(client, auth["alice"], files=[("t.csv", b"sex,n\nfemale,3\nmale,40\n")]).json["id"]
    page = client.get(f"/review/exports/{rid}", headers=auth["carol"])
    assert page.status_code == 200 and b"<table" in page.data
    assert b'data-flag="0:n"' in page.data  # the failing cell is outlined
    twin = client.get(f"/review/exports/{rid}?format=json", headers=auth["carol"]).json
    assert twin == client.get(f"/v1/exports/{rid}", headers=auth["carol"]).json
    assert client.get("/review/?format=json", headers=auth["carol"]).json["queue"][0]["id"] == rid
    assert client.get("/review/", headers=auth["alice"]).status_code == 302
    assert client.get("/review/mine?format=json", headers=auth["alice"]).json["mine"][0]["id"] == rid
    # forms need the CSRF token
    r = client.post(f"/review/exports/{rid}/decision", headers=auth["carol"],
                    data={"decision": "reject", "comment": "no"})
    assert r.status_code == 403 and b"<html" in r.data
    missing = client.get("/review/exports/exp-0000000000000000", headers=auth["carol"])
    assert missing.status_code == 404 and b"Traceback" not in missing.data and b"<html" in missing.data


def test_login_sets_a_strict_httponly_cookie(client, services) -> None:  # noqa: ANN001
    assert client.get("/review/").headers["Location"].startswith("/review/login")
    assert client.post("/review/login", data={"token": "sbx_wrong"}).status_code == 401
    token = services.tokens.create("carol")
    r = client.post("/review/login", data={"token": token, "next": "https://evil.example/"})
    assert r.status_code == 303 and r.headers["Location"] == "/review/"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/review/").status_code == 200


def test_suspended_grant_stops_downloads_until_resumed(client, auth, services) -> None:  # noqa: ANN001
    rid = approved(client, auth)
    services.policies.set_status(GRANT, "suspended", "admin")
    r = client.get(f"/v1/exports/{rid}/files/table.csv", headers=auth["alice"])
    assert (r.status_code, r.json["error"]["code"]) == (403, "grant_suspended")
    services.policies.set_status(GRANT, "active", "admin")
    assert client.get(f"/v1/exports/{rid}/files/table.csv", headers=auth["alice"]).data == TABLE
