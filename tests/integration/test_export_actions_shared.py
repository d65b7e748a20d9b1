"""One workflow function per export action, shared by the JSON API (gateway/blueprints/exports.py)
and the review UI (gateway/blueprints/review.py): the views translate input and errors only."""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path

from sandbox.services import Services

ROOT = Path(__file__).resolve().parents[2]
GRANT = "g-2026-001"
# the action functions, by the name the blueprints call them with
ACTIONS = {"workflow.review", "workflow.withdraw", "workflow.resubmit", "uploads.change_files", "uploads.submit",
           "overrides.override", "override_checks", "workflow.download", "views.preview"}
# what a view may call besides its one action: translating input, answering, and the app's context
NOT_ACTIONS = re.compile(r"^(identity|services|export_deps|csrf\.check|json_body|_form_or_json|uploaded_files|_back|"
                         r"export_response|file_response|request\..*|form\..*|body\.get|uploads\.parse_count_columns|str|len|"
                         r"isinstance|BadRequest|jsonify)$")


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _post_handlers(path: Path) -> dict[str, list[str]]:
    """Each POST route's handler -> the calls it makes (in order)."""
    out = {}
    for fn in ast.parse(path.read_text(encoding="utf-8")).body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        posts = [d for d in fn.decorator_list if isinstance(d, ast.Call) and _name(d.func).endswith(".post")]
        if posts:
            out[fn.name] = [_name(c.func) for stmt in fn.body for c in ast.walk(stmt) if isinstance(c, ast.Call)]
    return out


def test_each_export_form_and_api_call_calls_one_shared_action() -> None:
    api = _post_handlers(ROOT / "gateway/blueprints/exports.py")
    ui = {k: v for k, v in _post_handlers(ROOT / "gateway/blueprints/review.py").items()
          if k not in ("login_post", "logout")}
    assert set(ui) == {"decide", "override", "withdraw", "change_files", "resubmit"}
    api_actions = set()
    for where, handlers in (("api", api), ("ui", ui)):
        for handler, calls in handlers.items():
            actions = [c for c in calls if c in ACTIONS]
            assert len(actions) == 1, f"{where}.{handler} calls {actions}: one action per handler"
            others = [c for c in calls if c not in ACTIONS and not NOT_ACTIONS.match(c)]
            assert not others, f"{where}.{handler} does more than translate: {others}"
            if where == "api":
                api_actions.add(actions[0])
            else:  # the form's action is the API's, the same function
                same = {"override_checks": "overrides.override"}.get(actions[0], actions[0])
                assert same in api_actions, f"ui.{handler}: {actions[0]} has no API twin calling the same function"


def test_the_review_form_removes_files_by_their_sealed_names(services: Services, client) -> None:  # noqa: ANN001
    auth = {u: {"Authorization": f"Bearer {services.tokens.create(u)}"} for u in ("alice", "carol", "dave")}
    data = {"grant": GRANT, "title": "t", "justification": "j",
            "files": [(io.BytesIO(b"sex,n\nfemale,4180\n"), "counts.csv"), (io.BytesIO(b"sex,n\nmale,4016\n"),
                                                                            "more.csv")]}
    rid = client.post("/v1/exports", headers=auth["alice"], data=data, content_type="multipart/form-data").json["id"]
    for reviewer in ("carol", "dave"):
        client.post(f"/v1/exports/{rid}/reviews", headers=auth[reviewer], json={"decision": "return", "comment": "x"})
    html = client.get(f"/review/exports/{rid}", headers=auth["alice"]).get_data(as_text=True)
    assert "file-2.csv" in html  # the requester's sealed view names files by position
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token
    r = client.post(f"/review/exports/{rid}/files", headers=auth["alice"],
                    data={"csrf_token": token.group(1), "remove": ["file-2.csv"]}, content_type="multipart/form-data")
    assert r.status_code == 303
    files = client.get(f"/v1/exports/{rid}", headers=auth["alice"]).json["files"]
    assert len(files) == 1
    assert [f["name"] for f in client.get(f"/v1/exports/{rid}", headers=auth["carol"]).json["files"]] == ["counts.csv"]
