"""Browser login for the gateway through JupyterHub's OAuth provider (``--auth hub`` only).

``GET /oauth_login?next=...`` starts the flow (state + PKCE, kept in the process, with a
short-lived state cookie), the hub sends the browser back to ``GET /oauth_callback``, which
exchanges the code for a token and stores it in an HttpOnly cookie that
:class:`gateway.hub_auth.HubAuthenticator` reads. Under the stack both routes live under the
service prefix (``/services/gateway/``, stripped by waitress's ``url_prefix``), which is where
the hub's ``JUPYTERHUB_OAUTH_CALLBACK_URL`` points. In embedded mode both answer 404.
"""

from __future__ import annotations

from urllib.parse import urlencode

from flask import Blueprint, Response, abort, current_app, redirect, request

bp = Blueprint("hub_oauth", __name__)


def _hub_auth():  # noqa: ANN202 - HubOAuth, imported lazily
    from gateway.hub_auth import HubAuthenticator

    auth = current_app.extensions.get("sandbox.auth")
    if not isinstance(auth, HubAuthenticator):
        abort(404)
    return auth.hub_auth


def _safe_next(target: str | None) -> str:
    prefix = request.script_root or ""
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return prefix + "/review/"


def _cookie_path() -> str:
    return (request.script_root or "") + "/"


@bp.get("/oauth_login")
def login() -> Response:
    """Redirect to the hub's authorize endpoint with a fresh state and PKCE challenge."""
    hub = _hub_auth()
    verifier, challenge, method = hub.generate_pkce_code_challenge()
    state = hub.generate_state(next_url=_safe_next(request.args.get("next")), code_verifier=verifier)
    params = {"state": state, "code_challenge": challenge, "code_challenge_method": method}
    resp = redirect(hub.login_url + "&" + urlencode(params))
    resp.set_cookie(
        hub.state_cookie_name, state, max_age=600, httponly=True, samesite="Lax",
        path=_cookie_path(), secure=request.is_secure,
    )
    return resp


@bp.get("/oauth_callback")
def callback() -> Response:
    """Finish the flow: check the state, trade the code for a token, set the cookie."""
    hub = _hub_auth()
    code = request.args.get("code")
    state = request.args.get("state")
    if not code or not state or state != request.cookies.get(hub.state_cookie_name):
        abort(403, "OAuth state mismatch: start again from the page you wanted")
    verifier = hub.get_code_verifier(state)
    next_url = hub.get_next_url(state)
    token = hub.token_for_code(code, code_verifier=verifier, sync=True)
    hub.clear_oauth_state(state)
    resp = redirect(next_url)
    resp.delete_cookie(hub.state_cookie_name, path=_cookie_path())
    resp.set_cookie(
        hub.cookie_name, token, httponly=True, samesite="Lax", path=_cookie_path(),
        secure=request.is_secure,
    )
    return resp
