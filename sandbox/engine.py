"""The locked-down DuckDB engine behind the gateway.

``build`` turns the Parquet under the data root into one DuckDB database file that holds,
per dataset, only the declared columns of the rows kept by the contribution bound, with
numeric columns also carried clamped and in fixed point (``__v_<col>``) so sums are exact
integers. The id column itself is not copied. The file is then opened read-only with
external access, extension autoload and autoinstall off and configuration locked.

The contribution bound (which rows of each unit are kept, and why that depends on the
unit's own rows only) is in :mod:`sandbox.bounding`.

The engine never sees operator SQL: it runs SQL it builds from the typed plan.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import duckdb

from sandbox.bounding import (
    KEY_FILE,
    bounded_rows_sql,
    hmac_sql,
    load_or_create_key,
    reserved_names_in,
)
from sandbox.bounding import literal as _lit
from sandbox.bounding import quote as _q
from sandbox.dp.planner import DPPlan, Primitive
from sandbox.dp.quantiles import counts_from_rows
from sandbox.engine_sql import aggregate_sql, quantile_counts_sql
from sandbox.errors import SandboxError
from sandbox.policy.models import Dataset
from sandbox.sql.plan import quantile_grid

LOCKED_CONFIG = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "lock_configuration": True,
}


ID_TABLE_PREFIX = "__ids_"
ENGINE_FORMAT = 4  # bumped when the engine file's columns change, so that old files are rebuilt


# the unit-id table holds HMAC-SHA256(ids key, id): the key is derived from the bounding key in the
# state directory and never written to the engine file (DuckDB's hash with a salt stored beside
# the table let anyone holding the file enumerate every id). Part of the fingerprint: a file
# built the old way is rebuilt.
ID_SCHEME = "ids-hmac-sha256-v1"
IDS_KEY_LABEL = b"sandbox export identifier check"
KEY_CHECK = "key check"


def derive_ids_key(bounding_key: bytes) -> bytes:
    """The key of the unit-id table: HMAC(bounding key, a fixed label), so a separate PRF."""
    return hmac.new(bounding_key, IDS_KEY_LABEL, hashlib.sha256).digest()


def keyed_id(ids_key: bytes, value: str) -> str:
    """HMAC-SHA256(ids key, value) in lowercase hex: what the unit-id table holds."""
    return hmac.new(ids_key, value.encode(), hashlib.sha256).hexdigest()
class EngineError(SandboxError):
    """503. ``admin_detail`` (never in the JSON answer) carries what only the administrator should read."""

    status = 503
    code = "engine_unavailable"
    admin_detail: str = ""


log = logging.getLogger("sandbox.engine")
_BYTES_LITERAL = re.compile(r"(\\x[0-9A-Fa-f]{2}){2,}")


def redact(text: str) -> str:
    """Byte-string literals (the bounding HMAC's key pads) removed from an error text."""
    return _BYTES_LITERAL.sub("<redacted>", text)


# catalog fields that change neither the engine file nor any answer
_NOT_IN_DIGEST = {"title", "description", "publisher", "budget", "max_epsilon_per_operator", "operator_caps"}


def catalog_digest(ds: Dataset) -> str:
    """The digest of what in a catalog entry shapes answers (source, unit, bound, columns, domains)."""
    body = ds.model_dump(mode="json", exclude=_NOT_IN_DIGEST)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def data_versions(datasets: Mapping[str, Dataset], data_root: Path) -> dict[str, str]:
    """Per dataset: a version that changes when its catalog entry, its source file or the
    engine file's format (``ENGINE_FORMAT``) changes."""
    out = {}
    for ds_id in sorted(datasets):
        ds = datasets[ds_id]
        h = hashlib.sha256(f"engine-format-{ENGINE_FORMAT}:{catalog_digest(ds)}".encode())
        try:
            st = (data_root / ds.source).stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode())
        except OSError:
            h.update(b"missing")
        out[ds_id] = h.hexdigest()[:16]
    return out


def fingerprint(datasets: Mapping[str, Dataset], data_root: Path) -> str:
    """Changes when a catalog entry or a source file changes: then the engine file is rebuilt."""
    h = hashlib.sha256(ID_SCHEME.encode())
    for ds_id, version in data_versions(datasets, data_root).items():
        h.update(f"{ds_id}:{version};".encode())
    return h.hexdigest()[:16]


def build(
    datasets: Mapping[str, Dataset],
    data_root: Path,
    target: Path,
    progress: Callable[[str], None] = lambda _msg: None,
    memory_limit: str = "1GB",
    threads: int = 2,
    *,
    key: bytes,
) -> dict[str, int]:
    """Write the engine file (atomically); returns rows kept per dataset.

    ``key`` is the bounding PRF's secret (32 bytes, kept in the state directory, never
    written to the engine file). The build spills to ``<target dir>/spill`` rather than
    exceed ``memory_limit``.
    """
    tmp = target.with_suffix(".building")
    tmp.unlink(missing_ok=True)
    spill = target.parent / "spill"
    spill.mkdir(exist_ok=True)
    ids_key = derive_ids_key(key)
    kept: dict[str, int] = {}
    con = duckdb.connect(
        str(tmp),
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "memory_limit": memory_limit,
            "threads": threads,
            "temp_directory": str(spill),
            "preserve_insertion_order": False,
        },
    )
    try:
        for ds_id, ds in sorted(datasets.items()):
            source = data_root / ds.source
            if not source.is_file():
                progress(f"{ds_id}: source {ds.source} missing under the data root; skipped")
                continue
            _refuse_reserved_names(con, ds_id, source)
            progress(f"{ds_id}: bounding contributions and fixing point ...")
            try:
                con.execute(f"CREATE TABLE {_q(ds_id)} AS {bounded_rows_sql(ds, source, key)}")
            except duckdb.Error as exc:
                raise EngineError(f"{ds_id}: cannot import {ds.source}: {exc}", code="import_failed") from None
            kept[ds_id] = con.execute(f"SELECT COUNT(*) FROM {_q(ds_id)}").fetchone()[0]
            if ds.privacy_unit != "row":
                # keyed hashes of the unit ids, for the export identifier-leak check only
                unit = f"TRIM(CAST({_q(ds.privacy_unit)} AS VARCHAR))"
                con.execute(
                    f"CREATE TABLE {_q(ID_TABLE_PREFIX + ds_id)} AS SELECT DISTINCT {hmac_sql(ids_key, unit)} AS h "
                    f"FROM read_parquet({_lit(str(source))}) WHERE {_q(ds.privacy_unit)} IS NOT NULL"
                )
            progress(f"{ds_id}: {kept[ds_id]:,} rows kept")
        # a PRF output of the key, so a key that does not match the file is noticed (not silent zeros)
        con.execute("CREATE TABLE __meta AS SELECT ? AS key_check", [keyed_id(ids_key, KEY_CHECK)])
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.replace(tmp, target)
    return kept


def _refuse_reserved_names(con: duckdb.DuckDBPyConnection, ds_id: str, source: Path) -> None:
    """A file column named like an engine name (``__n``, ``rowid``...) could shadow it: refused."""
    try:
        names = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({_lit(str(source))})").fetchall()]
    except duckdb.Error as exc:
        raise EngineError(f"{ds_id}: cannot read the schema of its source: {exc}", code="import_failed") from None
    reserved = reserved_names_in(names)
    if reserved:
        raise EngineError(
            f"{ds_id}: its source file has reserved column names ({', '.join(sorted(reserved))}); rename or drop "
            "them in the Parquet (names starting with __ and row, rowid, file_row_number, filename, file_index)",
            code="reserved_column",
        )


def _child_main() -> None:
    """Entry point of the import child: a JSON job on stdin, JSON lines on stdout."""
    job = json.loads(sys.stdin.read())

    def say(kind: str, value: object) -> None:
        sys.stdout.write(json.dumps([kind, value]) + "\n")
        sys.stdout.flush()

    try:
        datasets = {k: Dataset.model_validate(v, context={"stored": True}) for k, v in job["datasets"].items()}
        kept = build(datasets, Path(job["data_root"]), Path(job["target"]), lambda m: say("progress", m),
                     job["memory"], job["threads"], key=bytes.fromhex(job["key"]))
        say("done", kept)
    except SandboxError as exc:
        say("error", exc.message)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        say("error", f"{type(exc).__name__}: {exc}")


def build_in_child(
    datasets: Mapping[str, Dataset],
    data_root: Path,
    target: Path,
    progress: Callable[[str], None] = lambda _msg: None,
    memory_limit: str = "4GB",
    threads: int = 2,
    *,
    key: bytes,
) -> dict[str, int]:
    """Run :func:`build` in a child process, so the serving process never holds the import's
    memory (a bounded-contribution window over tens of millions of rows). The key travels
    on the child's stdin, never on its command line."""
    job = {
        "datasets": {k: v.model_dump(mode="json") for k, v in datasets.items()},
        "data_root": str(data_root), "target": str(target), "memory": memory_limit, "threads": threads,
        "key": key.hex(),
    }
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from sandbox.engine import _child_main; _child_main()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(job))
    proc.stdin.close()
    result: dict[str, int] | None = None
    error = "the import process ended without a result"
    for line in proc.stdout:
        try:
            kind, value = json.loads(line)
        except ValueError:
            continue
        if kind == "progress":
            progress(value)
        elif kind == "done":
            result = value
        else:
            error = value
    proc.wait()
    if result is None:
        # DuckDB's text can quote the SQL (near the key's pads): the administrator reads it in the
        # log and on the command line, an operator only learns that the data is unavailable
        detail = redact(error)
        log.error("engine build failed: %s", detail)
        exc = EngineError("the data engine could not be built; the administrator has been told (gateway log)",
                          code="import_failed")
        exc.admin_detail = detail
        raise exc
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    progress(f"built in {time.monotonic() - t0:.1f} s (import process peak memory {peak:.0f} MB)")
    return result


class Engine:
    """Read-only, locked DuckDB over the engine file; rebuilt when the catalog changes."""

    def __init__(
        self,
        data_root: Path,
        engine_dir: Path,
        threads: int = 2,
        memory_limit: str = "1GB",
        build_memory: str = "4GB",
    ) -> None:
        self.data_root = Path(data_root)
        self.build_memory = build_memory
        self.engine_dir = Path(engine_dir)
        self.engine_dir.mkdir(parents=True, exist_ok=True)
        self.config = {**LOCKED_CONFIG, "threads": threads, "memory_limit": memory_limit}
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._fingerprint: str | None = None
        self._local = threading.local()
        # (connection, data versions, per-thread cursors), swapped as one: a cursor knows what it reads
        self._serving: tuple[duckdb.DuckDBPyConnection, dict[str, str], threading.local] | None = None
        self._tables: frozenset[str] = frozenset()
        self._versions: dict[str, str] = {}
        self._ids_key: bytes | None = None

    def ensure(self, datasets: Mapping[str, Dataset], progress: Callable[[str], None] = lambda _m: None) -> None:
        versions = data_versions(datasets, self.data_root)
        fp = fingerprint(datasets, self.data_root)
        if fp == self._fingerprint:
            return
        with self._lock:
            if fp == self._fingerprint:
                return
            target = self.engine_dir / f"catalog-{fp}.duckdb"
            if not target.exists():
                build_in_child(datasets, self.data_root, target, progress, self.build_memory,
                               self.config["threads"], key=self.bounding_key())
            con = duckdb.connect(str(target), read_only=True, config=self.config)
            tables = frozenset(r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall())
            old = self._con
            self._con, self._tables, self._fingerprint, self._versions = con, tables, fp, versions
            self._local = threading.local()
            self._serving = (con, versions, self._local)
            for stale in self.engine_dir.glob("catalog-*.duckdb"):
                if stale != target:
                    stale.unlink(missing_ok=True)
            if old is not None:
                old.close()

    def bounding_key(self) -> bytes:
        """The bounding PRF's key, created once in the state directory (``engine/bounding.key``, 0600).

        Kept across rebuilds so that the same data keeps the same rows; never in the engine file.
        """
        return load_or_create_key(self.engine_dir / KEY_FILE)

    def ids_key(self) -> bytes:
        """The key of the unit-id table (derived from the bounding key; never in the engine file)."""
        if self._ids_key is None:
            self._ids_key = derive_ids_key(self.bounding_key())
        return self._ids_key

    @property
    def build_id(self) -> str | None:
        """The build in force: the fingerprint of the catalog and source files built."""
        return self._fingerprint

    def data_version(self, ds_id: str) -> str | None:
        """The version of ``ds_id`` in the build in force (catalog entry and source file)."""
        return self._versions.get(ds_id)

    def _cursor(self, pin: Mapping[str, str] | None = None) -> duckdb.DuckDBPyConnection:
        """This thread's cursor on the build in force; with ``pin`` (dataset -> data version), refused
        unless the build in force holds those versions (a request pins the data it checked and planned
        against: a refresh of one of its datasets in between would answer from other data)."""
        serving = self._serving
        if self._con is None or serving is None:
            raise EngineError("the engine is not ready")
        con, versions, local = serving
        if pin is not None and any(versions.get(ds_id) != version for ds_id, version in pin.items()):
            raise EngineError("the data was refreshed while the query ran; ask again", code="data_refreshed")
        cur = getattr(local, "cursor", None)
        if cur is None:
            cur = con.cursor()
            local.cursor = cur
        return cur

    def has_table(self, ds_id: str) -> bool:
        return ds_id in self._tables

    def unit_id_matches(self, ds_id: str, values: list[str]) -> int:
        """How many of ``values`` are privacy-unit ids of ``ds_id`` (compared as keyed hashes).

        Integral floats such as ``93703.0`` are compared as ``93703``. Reveals a count only.
        """
        if not values:
            return 0
        table = ID_TABLE_PREFIX + ds_id
        if table not in self._tables:
            return 0
        cur = self._cursor()
        ids_key = self.ids_key()
        try:
            check = cur.execute("SELECT key_check FROM __meta").fetchone()
        except duckdb.Error:
            raise EngineError("the engine file has no identifier key check: rebuild the engine") from None
        if check is None or not hmac.compare_digest(str(check[0]), keyed_id(ids_key, KEY_CHECK)):
            raise EngineError("the identifier key does not match the engine file: rebuild the engine")
        keyed = [keyed_id(ids_key, _normalize_id(v)) for v in values]
        row = cur.execute(
            f"SELECT COUNT(*) FROM (SELECT UNNEST(?::VARCHAR[]) AS h) AS f WHERE f.h IN (SELECT h FROM {_q(table)})",
            [keyed],
        ).fetchone()
        return int(row[0])

    def exact(self, plan: DPPlan, pin: Mapping[str, str] | None = None) -> dict[tuple, dict[Primitive, int]]:
        """Exact bounded aggregates per public key present in the data (for a quantile: the
        per-candidate counts its scores are computed from, :class:`QuantileCounts`), from the data
        versions ``pin`` only when given (:class:`EngineError` ``data_refreshed`` if others are in force)."""
        scalar = tuple(p for p in plan.primitives if p.kind != "quantile")
        n_keys = len(plan.query.group_keys)
        domains = [_OPEN if k.open else {v: v for v in k.values} for k in plan.query.group_keys]
        out: dict[tuple, dict[Primitive, int]] = {}
        for row in self._run(aggregate_sql(plan, scalar), pin) if scalar else []:
            key = tuple(_match(row[i], domains[i]) for i in range(n_keys))
            if any(k is _MISSING for k in key):
                continue
            out[key] = {p: int(row[n_keys + j] or 0) for j, p in enumerate(scalar)}
        for prim in plan.primitives:
            if prim.kind != "quantile":
                continue
            grid = quantile_grid(plan.dataset.columns[prim.column])
            cells: dict[tuple, list] = {}
            for row in self._run(quantile_counts_sql(plan, prim, grid), pin):
                key = tuple(_match(row[i], domains[i]) for i in range(n_keys))
                if not any(k is _MISSING for k in key):
                    cells.setdefault(key, []).append(tuple(row[n_keys:]))
            for key, rows in cells.items():
                out.setdefault(key, {})[prim] = counts_from_rows(rows, grid)  # type: ignore[assignment]
        return out

    def lookup_key_unique(self, lookup: str, key: str) -> bool:
        """Whether a public lookup's key column holds each value at most once (public data only)."""
        row = self._run(f"SELECT COUNT({_q(key)}) = COUNT(DISTINCT {_q(key)}) FROM {_q(lookup)}")
        return bool(row[0][0])

    def _run(self, sql: str, pin: Mapping[str, str] | None = None) -> list[tuple]:
        cursor = self._cursor(pin)
        try:
            return cursor.execute(sql).fetchall()
        except duckdb.Error as exc:
            raise EngineError(f"the engine could not run the query: {type(exc).__name__}") from None


_MISSING = object()


def _normalize_id(value: object) -> str:
    text = str(value).strip()
    if text.endswith(".0") and text[:-2].lstrip("-").isdigit():
        return text[:-2]
    return text


class _Open(dict):
    """The domain of a key without declared values (DP partition selection decides)."""

    def get(self, value: object, default: object = None) -> object:
        return value if isinstance(value, str | int) and not isinstance(value, bool) else default


_OPEN = _Open()


def _match(value: object, domain: dict) -> object:
    """The domain's own value for an engine key (10 rather than 10.0), or _MISSING."""
    try:
        return domain.get(value, _MISSING)
    except TypeError:
        return _MISSING
