"""Jupyter Server extension that closes the single-user server's side doors.

Inside the sandbox the only sanctioned way for results to leave is the gateway's export
airlock (``db.export(...)``). This extension refuses, with 403, the server routes that would
hand files to the browser or run converters on them:

- ``/files/...`` (raw file download; JupyterLab's "Download" uses it),
- ``/nbconvert/...`` and ``/api/nbconvert`` (export as HTML/PDF/...),
- ``/terminals/...`` and ``/api/terminals`` (belt and braces: terminals are also disabled),

Extension handlers are added with ``add_handlers``, which Tornado consults *before* the core
handlers, so these win over jupyter_server's own. The module ships in the notebook image only.
"""

from __future__ import annotations

from typing import Any

from tornado import web

REFUSED = [
    r"/files/.*",
    r"/nbconvert/.*",
    r"/api/nbconvert.*",
    r"/terminals/.*",
    r"/api/terminals.*",
]


class RefusedHandler(web.RequestHandler):
    """Answers every method with 403 and a short JSON reason."""

    def initialize(self, **kwargs: Any) -> None:
        """Accept (and ignore) handler parameters, e.g. the contents manager's ``path``."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        self.set_status(403)
        self.set_header("Content-Type", "application/json")
        self.finish(
            '{"message": "refused in the sandbox: results leave only through the export '
            'airlock (db.export)"}'
        )

    get = post = put = patch = delete = head = _refuse  # type: ignore[assignment]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "sandbox_lockdown"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Register the refusing handlers under the server's base URL."""
    base = serverapp.web_app.settings["base_url"].rstrip("/")
    handlers: list[tuple[str, type[web.RequestHandler]]] = [
        (base + pattern, RefusedHandler) for pattern in REFUSED
    ]
    serverapp.web_app.add_handlers(".*$", handlers)
    serverapp.log.info("sandbox_lockdown: refusing %s under %s", ", ".join(REFUSED), base or "/")
