"""CSRF protection for the public forms, which have no login: a signed double-submit token.

The form carries ``itsdangerous``'s signature (keyed with the web UI's secret of :mod:`gateway.csrf`,
kept outside the state directory, with a timestamp) of a random nonce that also sits in an HttpOnly,
SameSite=Strict cookie. A post is accepted only when the signature is valid, younger than
``MAX_AGE`` and names the cookie's nonce: another site can neither read the cookie nor forge the
signature.
"""

from __future__ import annotations

import hmac
import secrets

from flask import Response, current_app, g, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from sandbox.errors import Forbidden

COOKIE = "sandbox_public_form"
MAX_AGE = 4 * 3600


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="public-form")  # see gateway.csrf


def form_token() -> str:
    """The token to put in a form's ``csrf_token`` field (sets the cookie if there is none)."""
    nonce = request.cookies.get(COOKIE)
    if not nonce or len(nonce) > 64:
        nonce = g.get("public_form_nonce") or secrets.token_urlsafe(24)
        g.public_form_nonce = nonce
    return _serializer().dumps(nonce)


def set_cookie(resp: Response) -> Response:
    nonce = g.get("public_form_nonce")
    if nonce:
        resp.set_cookie(COOKIE, nonce, httponly=True, samesite="Strict", secure=request.is_secure,
                        path="/public", max_age=MAX_AGE)
    return resp


def check_form_token() -> None:
    nonce = request.cookies.get(COOKIE, "")
    sent = request.form.get("csrf_token", "")
    try:
        signed = _serializer().loads(sent, max_age=MAX_AGE)
    except BadSignature:
        signed = None
    if not nonce or not isinstance(signed, str) or not hmac.compare_digest(signed, nonce):
        raise Forbidden("the form is stale or did not come from this site; reload it and send again",
                        code="bad_csrf")
