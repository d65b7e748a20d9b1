"""CSRF protection of the signed-in forms (review UI, admin pages): Flask-WTF's ``CSRFProtect``.

The token is Flask-WTF's: a random value kept in Flask's signed session cookie (HttpOnly,
SameSite=Strict) and, signed with a timestamp, in each form's ``csrf_token`` field. Both are
signed with a secret derived from the audit MAC key (:meth:`sandbox.state.keys.MacKeyring.derived`),
which lives in the keys directory, outside ``--state``: whoever can read the state cannot mint a
token. Rotating the MAC key changes it (open forms must be reloaded). A post is accepted only
with a token that is validly signed, younger than ``TIME_LIMIT`` and matches the session cookie
of the browser that sent it, so forged, missing and cookie-less tokens are refused.

Nothing is checked by default (``WTF_CSRF_CHECK_DEFAULT`` off): the bearer-token JSON API carries
no cookie, so it needs no token and is exempt; every form handler calls :func:`check` itself.
"""

from __future__ import annotations

from flask import Flask
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf

from sandbox.errors import Forbidden
from sandbox.services import Services

TIME_LIMIT = 12 * 3600  # as long as the review UI's login cookie

_csrf = CSRFProtect()


def init_app(app: Flask, services: Services) -> None:
    app.config["SECRET_KEY"] = services.db.keyring.derived("web-ui")
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False  # forms call check(); the bearer-token JSON API is exempt
    app.config["WTF_CSRF_TIME_LIMIT"] = TIME_LIMIT
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Strict"
    _csrf.init_app(app)


def token() -> str:
    """The token to put in a form's ``csrf_token`` field (starts the session cookie if needed)."""
    return generate_csrf()


def check() -> None:
    """Refuse a form post without a valid token for this browser's session (403 ``bad_csrf``)."""
    try:
        _csrf.protect()
    except CSRFError:
        raise Forbidden("the form is stale or did not come from this site; reload and retry",
                        code="bad_csrf") from None
