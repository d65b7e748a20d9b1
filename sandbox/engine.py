"""The locked-down DuckDB engine behind the gateway, and how a new engine file replaces the old.

The engine file (built by :mod:`sandbox.engine_build` in a child process) is opened read-only
with external access, extension autoload and autoinstall off and configuration locked. The
engine never sees operator SQL: it runs SQL it builds from the typed plan.

Refresh without downtime (issue 13). The file in force is a :class:`Generation`: its connection,
the data versions it holds and the *catalog entries it was built from*. When the catalog or a
source file changes, :meth:`Engine.refresh` starts building the new file in the background and
returns at once; queries keep being answered by the generation in force, planned with that
generation's own entries (never a new bound over old data), until the new file is ready and
swapped in, in one assignment. A failed build leaves the generation in force serving; it is
logged and audited, and tried again only when the catalog or a file changes again.
:meth:`Engine.ensure` is the blocking form (start-up, the admin CLI).
"""

from __future__ import annotations

import hmac
import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import duckdb
from sqlglot import exp

from sandbox.bounding import KEY_FILE, col, ident, load_or_create_key, render
from sandbox.dp.planner import DPPlan, Primitive
from sandbox.dp.quantiles import counts_from_rows
from sandbox.engine_build import (  # noqa: F401 - re-exported: the engine's public names
    ENGINE_FORMAT,
    ID_SCHEME,
    ID_TABLE_PREFIX,
    KEY_CHECK,
    BuildReport,
    EngineError,
    build,
    build_in_child,
    catalog_digest,
    data_versions,
    derive_ids_key,
    fingerprint,
    fingerprint_of,
    keyed_id,
    redact,
)
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
DEFAULT_RETRY_AFTER = 10  # seconds, before the first build's duration is known
log = logging.getLogger("sandbox.engine")


@dataclass(eq=False)
class Generation:
    """One engine file in force: its connection, and what it was built from (entries and versions)."""

    fingerprint: str
    path: Path
    con: duckdb.DuckDBPyConnection
    datasets: Mapping[str, Dataset]
    versions: Mapping[str, str]
    tables: frozenset[str]
    local: threading.local = field(default_factory=threading.local)

    def entry(self, ds_id: str) -> Dataset | None:
        """The catalog entry ``ds_id``'s table was built from (None: not in this file)."""
        return self.datasets.get(ds_id) if ds_id in self.tables else None

    def cursor(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self.local, "cursor", None)
        if cur is None:
            cur = self.con.cursor()
            self.local.cursor = cur
        return cur


def data_building(ds_id: str, retry_after: int) -> EngineError:
    """503 ``data_building`` with ``Retry-After``: the data a query needs is not in the file in force yet."""
    exc = EngineError(f"dataset {ds_id} is being built from its new catalog entry or source file; ask again in "
                      f"about {retry_after} s", code="data_building")
    exc.retry_after = retry_after
    return exc


class Engine:
    """The generation in force, and the background build of the next one."""

    def __init__(
        self,
        data_root: Path,
        engine_dir: Path,
        threads: int = 2,
        memory_limit: str = "600MB",
        build_memory: str = "4GB",
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        catalog: Callable[[], Mapping[str, Dataset]] | None = None,
    ) -> None:
        self.data_root = Path(data_root)
        self.build_memory = build_memory
        self.engine_dir = Path(engine_dir)
        self.engine_dir.mkdir(parents=True, exist_ok=True)
        self.threads = threads
        self.config: dict[str, str | bool | int | float | list[str]] = {
            **LOCKED_CONFIG, "threads": threads, "memory_limit": memory_limit}
        self.on_event = on_event  # (audit action, detail): the catalog change, the swap, a failed build
        # the catalog in force, read when a background build starts (a request's copy may be older)
        self.catalog = catalog
        self._gen: Generation | None = None
        self._state = threading.Condition()  # guards the fields below; notified when the worker ends
        self._build_lock = threading.Lock()  # one build and swap at a time, background or not
        self._wanted: tuple[str, dict[str, Dataset], dict[str, str]] | None = None
        self._building: str | None = None
        self._worker: threading.Thread | None = None
        self._failed: str | None = None  # a build that failed: not tried again until something changes
        self._started: float | None = None
        self._last_seconds: float | None = None
        self._ids_key: bytes | None = None

    # -- which file is in force -----------------------------------------------------------------
    def serving(self) -> Generation | None:
        return self._gen

    def ensure(self, datasets: Mapping[str, Dataset], progress: Callable[[str], None] = lambda _m: None) -> None:
        """Blocking: return once the file built from ``datasets`` (and the files now) is in force."""
        versions = data_versions(datasets, self.data_root)
        fp = fingerprint_of(versions)
        gen = self._gen
        if gen is not None and gen.fingerprint == fp:
            return
        self._build_and_swap(fp, dict(datasets), versions, progress)

    def refresh(self, datasets: Mapping[str, Dataset]) -> Generation | None:
        """Non-blocking: the generation in force; if ``datasets`` (or their files) differ from what it was
        built from, a background build of the new file is started (unless one is under way or that very
        build failed). With no generation in force at all (a cold start), the first one is loaded (or
        built) before returning, as :meth:`ensure` would."""
        versions = data_versions(datasets, self.data_root)
        fp = fingerprint_of(versions)
        if self._gen is None and fp != self._failed:
            try:
                self._build_and_swap(fp, dict(datasets), versions, lambda m: log.info("engine: %s", m))
            except SandboxError:
                return None  # logged and audited; not tried again until something changes
        with self._state:
            gen = self._gen
            if (gen is not None and gen.fingerprint == fp) or fp in (self._failed, self._building):
                return gen
            if self._wanted is None or self._wanted[0] != fp:
                self._wanted = (fp, dict(datasets), versions)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="engine-refresh", daemon=True)
                self._worker.start()
        return gen

    def building(self) -> bool:
        """Whether a background build is queued or under way."""
        return self._worker is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Until no background build is queued or under way (True), or ``timeout`` seconds (False)."""
        with self._state:
            return self._state.wait_for(lambda: self._worker is None, timeout)

    def retry_after(self) -> int:
        """Seconds a client might wait for the build under way (from the last build's duration)."""
        started, last = self._started, self._last_seconds
        if started is None or last is None:
            return DEFAULT_RETRY_AFTER
        return int(min(300, max(1, last - (time.monotonic() - started) + 1)))

    def _work(self) -> None:
        while True:
            with self._state:
                job, self._wanted = self._wanted, None
                if job is None:
                    self._worker = None
                    self._state.notify_all()
                    return
                self._building = job[0]
            fp, datasets, versions = job
            try:
                if self.catalog is not None:  # build what is in force now, not what a request read earlier
                    datasets = dict(self.catalog())
                    versions = data_versions(datasets, self.data_root)
                    fp = fingerprint_of(versions)
                    with self._state:
                        self._building = fp
                if fp != self._failed:
                    self._build_and_swap(fp, datasets, versions, lambda m: log.info("engine: %s", m))
            except SandboxError:
                pass  # logged and audited; the generation in force keeps serving
            except Exception:  # noqa: BLE001 - the worker must outlive any failure
                log.exception("engine refresh failed")
                with self._state:
                    self._failed = fp
            finally:
                with self._state:
                    self._building = None

    def _build_and_swap(self, fp: str, datasets: dict[str, Dataset], versions: dict[str, str],
                        progress: Callable[[str], None]) -> None:
        with self._build_lock:
            previous = self._gen
            if previous is not None and previous.fingerprint == fp:
                return
            target = self.engine_dir / f"catalog-{fp}.duckdb"
            serving = previous.fingerprint if previous else None
            report: BuildReport | None = None
            if not target.exists():
                self._event("engine.catalog_changed", {"build": fp, "serving": serving,
                                                       **_changes(previous, versions)})
                self._started = time.monotonic()
                try:
                    report = build_in_child(datasets, self.data_root, target, progress, self.build_memory,
                                            self.threads, key=self.bounding_key())
                except SandboxError as exc:
                    self._failed_build(fp, serving, exc)
                    raise
                finally:
                    self._started = None
                self._last_seconds = report.seconds
            try:
                gen = self._open(fp, target, datasets, versions)
            except duckdb.Error as exc:
                error = EngineError(f"the engine file could not be opened: {type(exc).__name__}", code="open_failed")
                self._failed_build(fp, serving, error)
                raise error from None
            with self._state:
                self._gen = gen  # the swap: one assignment; requests holding the old generation finish on it
                if self._failed == fp:
                    self._failed = None
            self._remove_stale(target, previous.path if previous else None)
            if previous is not None or report is not None:
                detail: dict[str, Any] = {"build": fp, "previous": serving, "versions": dict(versions)}
                if report is not None:
                    detail.update(rows=report.kept, seconds=round(report.seconds, 1), peak_mb=round(report.peak_mb))
                self._event("engine.swapped", detail)

    def _remove_stale(self, current: Path, previous: Path | None) -> None:
        """Other engine files are unlinked (open connections keep reading an unlinked file); DuckDB's spill
        folders (``<file>.tmp``) too, but the previous generation's, which may still be answering."""
        for stale in self.engine_dir.glob("catalog-*.duckdb"):
            if stale != current:
                stale.unlink(missing_ok=True)
        keep = {current.name + ".tmp"} | ({previous.name + ".tmp"} if previous else set())
        for spill in self.engine_dir.glob("catalog-*.duckdb.tmp"):
            if spill.name not in keep:
                shutil.rmtree(spill, ignore_errors=True)

    def _failed_build(self, fp: str, serving: str | None, exc: SandboxError) -> None:
        with self._state:
            self._failed = fp
        log.error("engine build %s failed (%s); %s keeps serving", fp, exc.code, serving or "nothing")
        self._event("engine.build_failed", {"build": fp, "serving": serving, "code": exc.code})

    def _event(self, action: str, detail: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(action, detail)
        except Exception:  # noqa: BLE001 - an audit failure is logged; the engine keeps its state consistent
            log.exception("could not audit %s", action)

    def _open(self, fp: str, target: Path, datasets: Mapping[str, Dataset], versions: Mapping[str, str]) -> Generation:
        con = duckdb.connect(str(target), read_only=True, config=self.config)
        listing = exp.select(col("table_name")).from_(exp.Table(this=exp.Anonymous(this="duckdb_tables")))
        tables = frozenset(r[0] for r in con.execute(render(listing)).fetchall())
        return Generation(fp, target, con, MappingProxyType(dict(datasets)), MappingProxyType(dict(versions)), tables)

    # -- keys -------------------------------------------------------------------------------------
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

    # -- the generation in force --------------------------------------------------------------------
    @property
    def build_id(self) -> str | None:
        """The build in force: the fingerprint of the catalog and source files built."""
        gen = self._gen
        return gen.fingerprint if gen else None

    def data_version(self, ds_id: str) -> str | None:
        """The version of ``ds_id`` in the build in force (catalog entry and source file)."""
        gen = self._gen
        return gen.versions.get(ds_id) if gen else None

    def has_table(self, ds_id: str) -> bool:
        gen = self._gen
        return gen is not None and ds_id in gen.tables

    def _cursor(self, pin: Mapping[str, str] | None = None) -> duckdb.DuckDBPyConnection:
        """This thread's cursor on the build in force; with ``pin`` (dataset -> data version), refused
        unless the build in force holds those versions (a request pins the data it checked and planned
        against: a swap in between would answer from other data)."""
        gen = self._gen
        if gen is None:
            raise EngineError("the engine is not ready")
        if pin is not None and any(gen.versions.get(ds_id) != version for ds_id, version in pin.items()):
            raise EngineError("the data was refreshed while the query ran; ask again", code="data_refreshed")
        return gen.cursor()

    def unit_id_matches(self, ds_id: str, values: list[str]) -> int:
        """How many of ``values`` are privacy-unit ids of ``ds_id`` (compared as keyed hashes).

        Integral floats such as ``93703.0`` are compared as ``93703``. Reveals a count only.
        """
        if not values:
            return 0
        gen = self._gen
        if gen is None:
            raise EngineError("the engine is not ready")
        table = ID_TABLE_PREFIX + ds_id
        if table not in gen.tables:
            if ds_id not in gen.datasets and self.building():  # a new dataset: its ids are not loaded yet
                raise data_building(ds_id, self.retry_after())
            return 0
        cur = gen.cursor()
        ids_key = self.ids_key()
        try:
            check = cur.execute(render(exp.select(col("key_check")).from_(exp.Table(this=ident("__meta"))))).fetchone()
        except duckdb.Error:
            raise EngineError("the engine file has no identifier key check: rebuild the engine") from None
        if check is None or not hmac.compare_digest(str(check[0]), keyed_id(ids_key, KEY_CHECK)):
            raise EngineError("the identifier key does not match the engine file: rebuild the engine")
        keyed = [keyed_id(ids_key, _normalize_id(v)) for v in values]
        given = exp.select(exp.Alias(this=exp.Unnest(expressions=[exp.Cast(
            this=exp.Placeholder(), to=exp.DataType.build("VARCHAR[]", dialect="duckdb"))]), alias=ident("h")))
        known = exp.select(col("h")).from_(exp.Table(this=ident(table)))
        found = (exp.select(exp.Count(this=exp.Star())).from_(given.subquery("f"))
                 .where(exp.In(this=col("h", "f"), query=known.subquery())))
        row = cur.execute(render(found), [keyed]).fetchone()
        return int(row[0]) if row else 0

    def exact(self, plan: DPPlan, pin: Mapping[str, str] | None = None) -> dict[tuple[Any, ...], dict[Primitive, int]]:
        """Exact bounded aggregates per public key present in the data (for a quantile: the
        per-candidate counts its scores are computed from, :class:`QuantileCounts`), from the data
        versions ``pin`` only when given (:class:`EngineError` ``data_refreshed`` if others are in force)."""
        return exact_aggregates(plan, lambda sql: self._run(sql, pin))

    def lookup_key_unique(self, lookup: str, key: str) -> bool:
        """Whether a public lookup's key column holds each value at most once (public data only)."""
        unique = exp.EQ(this=exp.Count(this=col(key)), expression=exp.Count(this=exp.Distinct(expressions=[col(key)])))
        row = self._run(render(exp.select(unique).from_(exp.Table(this=ident(lookup)))))
        return bool(row[0][0])

    def _run(self, sql: str, pin: Mapping[str, str] | None = None) -> list[tuple[Any, ...]]:
        cursor = self._cursor(pin)
        try:
            return cursor.execute(sql).fetchall()
        except duckdb.Error as exc:
            raise EngineError(f"the engine could not run the query: {type(exc).__name__}") from None


def exact_aggregates(plan: DPPlan, run: Callable[[str], list[tuple[Any, ...]]]
                     ) -> dict[tuple[Any, ...], dict[Primitive, int]]:
    """The exact bounded aggregates of ``plan`` per public key present in the data, and each quantile's
    per-candidate counts, for any engine: ``run`` takes the engine's queries as DuckDB SQL (an engine
    renders them in its own dialect) and returns their rows."""
    scalar = tuple(p for p in plan.primitives if p.kind != "quantile")
    n_keys = len(plan.query.group_keys)
    domains = [_OPEN if k.open else {v: v for v in k.values} for k in plan.query.group_keys]
    out: dict[tuple[Any, ...], dict[Primitive, int]] = {}
    for row in run(aggregate_sql(plan, scalar)) if scalar else []:
        key = tuple(_match(row[i], domains[i]) for i in range(n_keys))
        if any(k is _MISSING for k in key):
            continue
        out[key] = {p: int(row[n_keys + j] or 0) for j, p in enumerate(scalar)}
    for prim in plan.primitives:
        if prim.kind != "quantile" or prim.column is None:
            continue
        grid = quantile_grid(plan.dataset.columns[prim.column])
        cells: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        for row in run(quantile_counts_sql(plan, prim, grid)):
            key = tuple(_match(row[i], domains[i]) for i in range(n_keys))
            if not any(k is _MISSING for k in key):
                cells.setdefault(key, []).append(tuple(row[n_keys:]))
        for key, rows in cells.items():
            out.setdefault(key, {})[prim] = counts_from_rows(rows, grid)  # type: ignore[assignment]
    return out


def _changes(previous: Generation | None, versions: Mapping[str, str]) -> dict[str, list[str]]:
    """What differs between the generation in force and a new build: datasets added, changed, removed."""
    old = dict(previous.versions) if previous else {}
    return {"added": sorted(set(versions) - set(old)), "removed": sorted(set(old) - set(versions)),
            "changed": sorted(d for d in set(old) & set(versions) if old[d] != versions[d])}


_MISSING = object()


def _normalize_id(value: object) -> str:
    text = str(value).strip()
    if text.endswith(".0") and text[:-2].lstrip("-").isdigit():
        return text[:-2]
    return text


class _Open(dict[object, object]):
    """The domain of a key without declared values (DP partition selection decides)."""

    def get(self, value: object, default: object = None) -> object:
        return value if isinstance(value, str | int) and not isinstance(value, bool) else default


_OPEN = _Open()


def _match(value: object, domain: dict[Any, Any]) -> object:
    """The domain's own value for an engine key (10 rather than 10.0), or _MISSING."""
    try:
        return domain.get(value, _MISSING)
    except TypeError:
        return _MISSING
