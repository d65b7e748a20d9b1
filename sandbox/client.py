"""The notebook client: the only way to data from inside a sandbox.

``import sandbox; db = sandbox.connect()`` reads its settings from the environment the
spawner set (``SANDBOX_GATEWAY_URL``, ``SANDBOX_GRANT`` and the kernel's hub token
``JUPYTERHUB_API_TOKEN``; outside the hub, ``SANDBOX_TOKEN`` from ``sandbox tokens create``).

Query results travel as Arrow IPC streams and come back as pandas DataFrames with the
response metadata in ``df.attrs`` (``query_id``, ``epsilon_spent``, ``cached``, ``accuracy``,
``budget``). Gateway errors surface as :class:`GatewayError` with the gateway's code and
message. This module needs only ``requests``, ``pyarrow`` and ``pandas``: it never imports
DuckDB, Flask or OpenDP. ``db.catalog()`` and ``db.budget()`` return DataFrames (the JSON in
``df.attrs["raw"]``, or with ``raw=True``). Mock mode (``connect(mock=True)``, ``db.mock``;
see :mod:`sandbox.mock`) adds the SQL analyser's ``sqlglot``, ``pydantic`` and ``pyyaml`` (the
``client`` extra), still no SQL engine and no data.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    import pandas as pd

ARROW_STREAM = "application/vnd.apache.arrow.stream"
#: Key of the JSON response metadata in the Arrow schema metadata.
ARROW_META_KEY = b"sandbox"
DEFAULT_TIMEOUT = 120.0

__all__ = ["ARROW_STREAM", "Client", "GatewayError", "budget_frame", "catalog_frame", "connect"]


class GatewayError(Exception):
    """An error answered by the gateway (or the transport to it).

    ``code`` is the gateway's stable error code (``bad_request``, ``unauthorized``,
    ``forbidden``, ``conflict``, ...), ``message`` its human-readable message and ``status``
    the HTTP status (0 when the gateway could not be reached at all).
    """

    def __init__(self, code: str, message: str, status: int = 0) -> None:
        super().__init__(f"[{code}] {message}" + (f" (HTTP {status})" if status else ""))
        self.code = code
        self.message = message
        self.status = status


def _error_from_response(resp: requests.Response) -> GatewayError:
    """Map a non-2xx response to :class:`GatewayError`, keeping the gateway's code."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return GatewayError(
            str(err.get("code", "error")), str(err.get("message", "")), resp.status_code
        )
    text = (resp.text or resp.reason or "").strip()[:500]
    return GatewayError(f"http_{resp.status_code}", text or "no message", resp.status_code)


def decode_arrow(payload: bytes) -> pd.DataFrame:
    """Decode an Arrow IPC stream into a DataFrame; JSON metadata goes into ``df.attrs``."""
    import pyarrow as pa

    reader = pa.ipc.open_stream(io.BytesIO(payload))
    table = reader.read_all()
    df = table.to_pandas()
    meta = table.schema.metadata or {}
    raw = meta.get(ARROW_META_KEY)
    if raw:
        df.attrs.update(json.loads(raw))
    return df


def frame_from_json(body: Mapping[str, Any]) -> pd.DataFrame:
    """Build the same DataFrame from the JSON form of a query answer."""
    import pandas as pd

    columns = list(body.get("columns") or [])
    df = pd.DataFrame(list(body.get("rows") or []), columns=columns or None)
    df.attrs.update({k: v for k, v in body.items() if k not in ("columns", "rows")})
    return df


CATALOG_COLUMNS = [
    "dataset", "column", "type", "bounds", "categories", "granted_by",
    "privacy_unit", "max_rows_per_unit", "title", "description",
]


def catalog_frame(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (grant, dataset, column) of the gateway's catalog JSON; the JSON in ``attrs``."""
    import pandas as pd

    rows = []
    for entry in entries:
        for col in entry.get("columns") or []:
            bounds = col.get("bounds")
            values = col.get("values")
            rows.append({
                "dataset": entry.get("dataset", entry.get("id")),
                "column": col.get("name"),
                "type": col.get("type"),
                "bounds": tuple(bounds) if bounds is not None else None,
                "categories": list(values) if values is not None else None,
                "granted_by": entry.get("grant"),
                "privacy_unit": entry.get("privacy_unit"),
                "max_rows_per_unit": entry.get("max_rows_per_unit"),
                "title": entry.get("title"),
                "description": col.get("description") or "",
            })
    df = pd.DataFrame(rows, columns=CATALOG_COLUMNS)
    df.attrs["raw"] = entries
    return df


def budget_frame(items: list[dict[str, Any]], raw: Any) -> pd.DataFrame:
    """One row per grant; the gateway's JSON in ``attrs["raw"]``."""
    import pandas as pd

    first = ["grant", "status", "epsilon_total", "epsilon_spent", "epsilon_remaining"]
    extra = [k for item in items for k in item if k not in first]
    df = pd.DataFrame(items, columns=first + list(dict.fromkeys(extra)))
    df.attrs["raw"] = raw
    return df


class Client:
    """A connection to the gateway on behalf of one caller (and by default one grant)."""

    def __init__(
        self,
        url: str,
        token: str,
        grant: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.grant = grant
        self.timeout = timeout
        self._session = session or requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"
        self._session.headers.setdefault("User-Agent", "sandbox-client/0.1")

    def __repr__(self) -> str:
        return f"Client(url={self.url!r}, grant={self.grant!r})"

    # -- transport ---------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        try:
            resp = self._session.request(method, self.url + path, **kwargs)
        except requests.RequestException as exc:
            raise GatewayError("unreachable", f"gateway at {self.url}: {exc}") from exc
        if resp.status_code >= 400:
            raise _error_from_response(resp)
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._request(method, path, **kwargs)
        try:
            return resp.json()
        except ValueError as exc:
            raise GatewayError(
                "bad_response", f"expected JSON from {path}", resp.status_code
            ) from exc

    # -- API ---------------------------------------------------------------------------------
    def catalog(self, raw: bool = False) -> pd.DataFrame | list[dict[str, Any]]:
        """Datasets and columns the caller's grants allow (metadata only), one row per column.

        Columns: ``dataset``, ``column``, ``type``, ``bounds`` (numeric columns), ``categories``
        (category columns), ``granted_by`` (the grant that allows it), ``privacy_unit``,
        ``max_rows_per_unit``, ``title`` and ``description``. The gateway's JSON is in
        ``df.attrs["raw"]``; ``raw=True`` returns that JSON list instead.
        """
        body = self._json("GET", "/v1/catalog")
        entries = body["datasets"] if isinstance(body, dict) and "datasets" in body else body
        return entries if raw else catalog_frame(entries)

    def query(
        self, sql: str, epsilon: float | None = None, grant: str | None = None, *, rho: float | None = None
    ) -> pd.DataFrame:
        """Run one DP query; returns a DataFrame with the answer's metadata in ``df.attrs``.

        ``df.attrs["accuracy"]["ci_halfwidth"]`` holds the confidence half-width per column,
        ``df.attrs["epsilon_spent"]`` what the query charged (0 for a cached replay) and
        ``df.attrs["budget"]`` the grant's budget after it. A grant with ``accounting: zcdp``
        is charged in rho: pass ``rho=`` instead of ``epsilon``.
        """
        payload: dict[str, Any] = {"sql": sql, **({"rho": rho} if rho is not None else {"epsilon": epsilon})}
        grant = grant or self.grant
        if grant:
            payload["grant"] = grant
        resp = self._request(
            "POST", "/v1/query", json=payload, headers={"Accept": f"{ARROW_STREAM}, application/json"}
        )
        ctype = resp.headers.get("Content-Type", "")
        if ctype.startswith(ARROW_STREAM):
            return decode_arrow(resp.content)
        try:
            body = resp.json()
        except ValueError as exc:
            raise GatewayError("bad_response", f"unexpected {ctype!r}", resp.status_code) from exc
        return frame_from_json(body)

    def plan(
        self,
        sql: str,
        epsilon: float | None = None,
        grant: str | None = None,
        *,
        rho: float | None = None,
        ci_halfwidth: float | None = None,
    ) -> dict[str, Any]:
        """Accuracy before spending (free: no data touched, nothing charged).

        With ``epsilon`` (or ``rho``): the 95% half-width of every released column under
        ``["accuracy"]["ci_halfwidth"]``. With ``ci_halfwidth``: the epsilon (or rho) that
        reaches it, under ``["epsilon"]`` (or ``["rho"]``).
        """
        payload: dict[str, Any] = {"sql": sql}
        for name, value in (("epsilon", epsilon), ("rho", rho), ("ci_halfwidth", ci_halfwidth)):
            if value is not None:
                payload[name] = value
        grant = grant or self.grant
        if grant:
            payload["grant"] = grant
        return self._json("POST", "/v1/plan", json=payload)

    def budget(self, grant: str | None = None, raw: bool = False) -> Any:
        """The budget of each of the caller's grants (or just ``grant``'s) as a DataFrame.

        One row per grant: ``grant``, ``status``, ``epsilon_total``, ``epsilon_spent``,
        ``epsilon_remaining`` (and whatever else the gateway reports). The gateway's JSON is in
        ``df.attrs["raw"]``; ``raw=True`` returns that JSON (for one grant: its block).
        """
        body = self._json("GET", "/v1/budget")
        items = body.get("grants", body) if isinstance(body, dict) else body
        if isinstance(items, dict):  # {grant_id: block}
            items = [{"grant": k, **v} for k, v in items.items() if isinstance(v, dict)]
        items = [i for i in items if isinstance(i, dict)]
        if grant is not None:
            items = [i for i in items if grant in (i.get("grant"), i.get("id"))]
            if not items:
                raise GatewayError("not_found", f"no budget for grant {grant!r}", 404)
            if raw:
                return items[0]
        elif raw:
            return body
        return budget_frame(items, body)

    def mock(self, dataset: str, rows: int = 1000, seed: int | None = 0) -> pd.DataFrame:
        """``rows`` mock rows of ``dataset`` generated from its catalog metadata alone.

        Reads only the catalog (types, bounds, categories): no data is touched and no budget
        spent. ``df.attrs["mock"]`` is True. See :mod:`sandbox.mock`.
        """
        from sandbox.mock import MockClient

        return MockClient(self.catalog(raw=True), self.grant).mock(dataset, rows, seed)

    def export(
        self,
        items: Iterable[str | os.PathLike[str] | pd.DataFrame] | str | os.PathLike[str],
        title: str,
        justification: str,
        grant: str | None = None,
    ) -> dict[str, Any]:
        """Submit files or DataFrames to the export airlock; returns the new request.

        DataFrames are sent as CSV named ``result-<n>.csv``; paths are sent as they are.
        """
        if isinstance(items, (str, os.PathLike)) or _is_frame(items):
            items = [items]  # type: ignore[list-item]
        files: list[tuple[str, tuple[str, bytes, str]]] = []
        for n, item in enumerate(items, start=1):
            if _is_frame(item):
                data = item.to_csv(index=False).encode()  # type: ignore[union-attr]
                files.append(("files", (f"result-{n}.csv", data, "text/csv")))
            else:
                path = Path(item)  # type: ignore[arg-type]
                files.append(("files", (path.name, path.read_bytes(), "application/octet-stream")))
        if not files:
            raise GatewayError("bad_request", "nothing to export")
        form = {"title": title, "justification": justification}
        grant = grant or self.grant
        if grant:
            form["grant"] = grant
        return self._json("POST", "/v1/exports", data=form, files=files)

    def export_status(self, export_id: str) -> dict[str, Any]:
        """The export request with its files, checks and status."""
        return self._json("GET", f"/v1/exports/{export_id}")


def _is_frame(obj: object) -> bool:
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "to_csv")


def connect(
    url: str | None = None,
    token: str | None = None,
    grant: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    mock: bool = False,
    rows: int = 1000,
    seed: int | None = 0,
    catalog: list[dict[str, Any]] | None = None,
) -> Any:
    """A :class:`Client` configured from arguments, else from the environment.

    ``url``: ``SANDBOX_GATEWAY_URL``; ``token``: ``SANDBOX_TOKEN`` or the kernel's
    ``JUPYTERHUB_API_TOKEN``; ``grant``: ``SANDBOX_GRANT`` (optional when the caller holds
    exactly one grant).

    ``mock=True`` returns a :class:`sandbox.mock.MockClient` instead: the same ``query`` checked
    by the same analyser, answered locally over ``rows`` mock rows per dataset generated from
    the catalog metadata (fetched from the gateway, or given as ``catalog``), spending nothing.
    """
    url = url or os.environ.get("SANDBOX_GATEWAY_URL")
    token = token or os.environ.get("SANDBOX_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN")
    grant = grant or os.environ.get("SANDBOX_GRANT") or None
    if mock:
        from sandbox.mock import connect_mock

        remote = Client(url, token, grant, timeout=timeout) if url and token else None
        return connect_mock(remote, grant, rows=rows, seed=seed, catalog=catalog)
    if not url:
        raise GatewayError("not_configured", "no gateway URL: set SANDBOX_GATEWAY_URL or pass url=")
    if not token:
        raise GatewayError(
            "not_configured", "no token: set SANDBOX_TOKEN (or run inside the hub) or pass token="
        )
    return Client(url, token, grant, timeout=timeout)
