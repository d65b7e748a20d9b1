"""The Spark engine: the DuckDB engine's bounded plan on Apache Spark, for datasets beyond one machine.

A dataset with ``engine: spark`` in its catalog entry is built and queried here, behind the same
interface as :class:`sandbox.engine.Engine` (:class:`sandbox.engines.EngineBackend`):

* **Build.** The engine table of :func:`sandbox.bounding.bounded_rows_sql` computed in Spark SQL
  (:func:`sandbox.spark_sql.bounded_rows_spark`: the same keyed HMAC-SHA256 selection of each
  unit's ``max_rows_per_unit`` rows, the same clamping and fixed point, ``__unit_first``,
  ``__unit``, ``__row``) and the keyed unit-id table, written as Parquet under
  ``<state>/engine/spark/ds-<id>-<data version>-s<format>/`` (to a temporary directory first,
  then renamed), with the key check beside them. The bounding key is the DuckDB engine's
  (``<state>/engine/bounding.key``): a dataset moved between engines keeps the same rows.
* **Query.** The plan's DuckDB SQL (:mod:`sandbox.engine_sql`) transpiled to Spark SQL
  (:func:`sandbox.spark_sql.to_spark`) over temporary views of those files, in a Spark session of
  the build in force; a request's pinned data versions are checked as in the DuckDB engine.

Spark runs in this process's JVM (pyspark): by default in local mode (``local[2]``, listening on
loopback only, no UI); ``SparkOptions.master`` names a cluster instead, whose executors must then
see the data root and the engine directory at the same paths (a shared file system).
"""

from __future__ import annotations

import atexit
import hmac
import json
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.bounding import KEY_BYTES, load_or_create_key, reserved_names_in
from sandbox.dp.planner import DPPlan, Primitive
from sandbox.engine import _normalize_id, exact_aggregates
from sandbox.engine_build import (
    ID_TABLE_PREFIX,
    KEY_CHECK,
    EngineError,
    data_versions,
    derive_ids_key,
    fingerprint,
    keyed_id,
    redact,
)
from sandbox.policy.models import Dataset
from sandbox.spark_sql import (
    PADS_VIEW,
    bounded_rows_spark,
    id_matches_spark,
    lookup_unique_spark,
    to_spark,
    unit_ids_spark,
)

log = logging.getLogger("sandbox.engine.spark")
SPARK_FORMAT = 1  # bumped when the Spark engine's files change, so that old ones are rebuilt
META_FILE = "_sandbox.json"  # Spark skips files starting with _ when it reads the directory
SOURCE_VIEW = "__source"


@dataclass(frozen=True)
class SparkOptions:
    """How the process's Spark session is started (the first engine to start it decides)."""

    master: str = "local[2]"
    driver_memory: str = "2g"
    shuffle_partitions: int = 4
    local_dir: Path | None = None  # Spark's scratch space (shuffle, spill); default: <engine dir>/local
    log_level: str = "ERROR"


_session_lock = threading.Lock()
_session: Any = None


def spark_session(options: SparkOptions) -> Any:
    """The process's one Spark session, started on first use and stopped at exit."""
    global _session
    with _session_lock:
        if _session is not None:
            return _session
        try:
            from pyspark.sql import SparkSession
        except ImportError:
            raise EngineError("a dataset uses the Spark engine, but pyspark is not installed "
                              "(pip install 'trusted-sandbox[spark]')", code="spark_unavailable") from None
        if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
            raise EngineError("a dataset uses the Spark engine, but no Java runtime is installed "
                              "(Debian: apt-get install openjdk-17-jre-headless)", code="spark_unavailable")
        builder = SparkSession.builder.master(options.master).appName("sandbox-engine")
        for key, value in _conf(options).items():
            builder = builder.config(key, value)
        _session = builder.getOrCreate()
        _session.sparkContext.setLogLevel(options.log_level)
        atexit.register(stop_session)
        return _session


def _conf(options: SparkOptions) -> dict[str, str]:
    conf = {
        "spark.driver.memory": options.driver_memory,
        "spark.sql.shuffle.partitions": str(options.shuffle_partitions),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # casts that fail are NULL, never an error on some rows only (see sandbox.spark_sql)
        "spark.sql.ansi.enabled": "false",
        # only the views the engine registers are readable by name: no `parquet.`/path`` in SQL
        "spark.sql.runSQLOnFiles": "false",
        "spark.sql.session.timeZone": "UTC",
    }
    if options.master.startswith("local"):  # nothing listens beyond loopback
        conf.update({"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"})
    if options.local_dir is not None:
        options.local_dir.mkdir(parents=True, exist_ok=True)
        conf.update({"spark.local.dir": str(options.local_dir),
                     "spark.sql.warehouse.dir": str(options.local_dir / "warehouse")})
    return conf


def stop_session() -> None:
    global _session
    with _session_lock:
        if _session is not None:
            _session.stop()
            _session = None


@dataclass(frozen=True)
class _Serving:
    """A build in force: its session (with one temporary view per table), versions and tables, swapped as one."""

    session: Any
    versions: dict[str, str]
    tables: frozenset[str]
    id_tables: frozenset[str]


class SparkEngine:
    """The datasets with ``engine: spark``, built and queried in Spark; rebuilt when the catalog changes."""

    def __init__(self, data_root: Path, engine_dir: Path, key_file: Path, options: SparkOptions | None = None) -> None:
        self.data_root = Path(data_root)
        self.engine_dir = Path(engine_dir)
        self.engine_dir.mkdir(parents=True, exist_ok=True)
        self.key_file = Path(key_file)
        self.options = options or SparkOptions(local_dir=self.engine_dir / "local")
        self._lock = threading.Lock()
        self._fingerprint: str | None = None
        self._serving: _Serving | None = None

    def bounding_key(self) -> bytes:
        return load_or_create_key(self.key_file)

    @property
    def build_id(self) -> str | None:
        return self._fingerprint

    def data_version(self, ds_id: str) -> str | None:
        serving = self._serving
        return serving.versions.get(ds_id) if serving is not None else None

    def has_table(self, ds_id: str) -> bool:
        serving = self._serving
        return serving is not None and ds_id in serving.tables

    def dataset_dir(self, ds_id: str, version: str) -> Path:
        return self.engine_dir / f"ds-{ds_id}-{version}-s{SPARK_FORMAT}"

    def ensure(self, datasets: Mapping[str, Dataset], progress: Callable[[str], None] = lambda _m: None) -> None:
        fp = fingerprint(datasets, self.data_root)
        if fp == self._fingerprint:
            return
        with self._lock:
            if fp == self._fingerprint:
                return
            versions = data_versions(datasets, self.data_root)
            dirs: dict[str, Path] = {}
            session: Any = spark_session(self.options).newSession() if datasets else None
            key = self.bounding_key()
            for ds_id, ds in sorted(datasets.items()):
                target = self.dataset_dir(ds_id, versions[ds_id])
                if not self._current(target, key):
                    if not (self.data_root / ds.source).is_file():
                        progress(f"{ds_id}: source {ds.source} missing under the data root; skipped")
                        continue
                    self._build(session, ds, target, key, progress)
                dirs[ds_id] = target
            id_tables = set()
            for ds_id, path in dirs.items():
                session.read.parquet(str(path / "rows")).createOrReplaceTempView(ds_id)
                if (path / "ids").is_dir():
                    session.read.parquet(str(path / "ids")).createOrReplaceTempView(ID_TABLE_PREFIX + ds_id)
                    id_tables.add(ds_id)
            self._serving = _Serving(session, versions, frozenset(dirs), frozenset(id_tables))
            self._fingerprint = fp
            for stale in self.engine_dir.glob("ds-*"):
                if stale not in dirs.values():
                    shutil.rmtree(stale, ignore_errors=True)

    def _current(self, target: Path, key: bytes) -> bool:
        """Whether ``target`` is a finished build under ``key`` (a replaced key file means a rebuild)."""
        try:
            meta = json.loads((target / META_FILE).read_text())
        except (OSError, ValueError):
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            return False
        if hmac.compare_digest(str(meta.get("key_check")), keyed_id(derive_ids_key(key), KEY_CHECK)):
            return True
        shutil.rmtree(target, ignore_errors=True)
        return False

    def _build(self, session: Any, ds: Dataset, target: Path, key: bytes, progress: Callable[[str], None]) -> None:
        build = session.newSession()
        source = self.data_root / ds.source
        tmp = self.engine_dir / f".building-{target.name}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            frame = build.read.parquet(str(source))
            reserved = reserved_names_in(list(frame.columns))
            if reserved:
                names = ", ".join(sorted(reserved))
                raise EngineError(f"{ds.id}: its source file has reserved column names ({names}); "
                                  "rename or drop them in the Parquet", code="reserved_column")
            frame.createOrReplaceTempView(SOURCE_VIEW)
            _pads(build, key).createOrReplaceTempView(PADS_VIEW)
            progress(f"{ds.id}: bounding contributions and fixing point (Spark) ...")
            build.sql(bounded_rows_spark(ds, SOURCE_VIEW)).write.parquet(str(tmp / "rows"))
            if ds.privacy_unit != "row":
                build.sql(unit_ids_spark(ds, SOURCE_VIEW)).write.parquet(str(tmp / "ids"))
            kept = build.read.parquet(str(tmp / "rows")).count()
        except EngineError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except Exception as exc:  # noqa: BLE001 - Spark's and py4j's errors, reported without key material
            shutil.rmtree(tmp, ignore_errors=True)
            detail = redact(str(exc))[:2000]
            log.error("spark engine build of %s failed: %s", ds.id, detail)
            err = EngineError("the data engine could not be built; the administrator has been told (gateway log)",
                              code="import_failed")
            err.admin_detail = detail
            raise err from None
        meta = {"dataset": ds.id, "kept": kept, "format": SPARK_FORMAT,
                "key_check": keyed_id(derive_ids_key(key), KEY_CHECK)}
        (tmp / META_FILE).write_text(json.dumps(meta))
        try:
            os.rename(tmp, target)
        except OSError:  # built by another process meanwhile: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        progress(f"{ds.id}: {kept:,} rows kept")

    def _serving_for(self, pin: Mapping[str, str] | None) -> _Serving:
        serving = self._serving
        if serving is None or serving.session is None:
            raise EngineError("the engine is not ready")
        if pin is not None and any(serving.versions.get(ds_id) != v for ds_id, v in pin.items()):
            raise EngineError("the data was refreshed while the query ran; ask again", code="data_refreshed")
        return serving

    def _run(self, spark_sql: str, pin: Mapping[str, str] | None = None) -> list[tuple[Any, ...]]:
        serving = self._serving_for(pin)
        try:
            return [tuple(row) for row in serving.session.sql(spark_sql).collect()]
        except Exception as exc:  # noqa: BLE001 - no engine text reaches the operator
            log.error("spark engine query failed: %s", redact(str(exc))[:2000])
            raise EngineError(f"the engine could not run the query: {type(exc).__name__}") from None

    def exact(self, plan: DPPlan, pin: Mapping[str, str] | None = None) -> dict[tuple[Any, ...], dict[Primitive, int]]:
        """As :meth:`sandbox.engine.Engine.exact`, from the same SQL transpiled to Spark."""
        return exact_aggregates(plan, lambda sql: self._run(to_spark(sql), pin))

    def lookup_key_unique(self, lookup: str, key: str) -> bool:
        return bool(self._run(lookup_unique_spark(lookup, key))[0][0])

    def unit_id_matches(self, ds_id: str, values: list[str]) -> int:
        """As :meth:`sandbox.engine.Engine.unit_id_matches` (a count of keyed-hash matches only)."""
        serving = self._serving_for(None)
        if not values or ds_id not in serving.id_tables:
            return 0
        ids_key = derive_ids_key(self.bounding_key())
        meta_path = self.dataset_dir(ds_id, serving.versions[ds_id]) / META_FILE
        try:
            check = json.loads(meta_path.read_text()).get("key_check")
        except (OSError, ValueError):
            raise EngineError("the engine files have no identifier key check: rebuild the engine") from None
        if not hmac.compare_digest(str(check), keyed_id(ids_key, KEY_CHECK)):
            raise EngineError("the identifier key does not match the engine files: rebuild the engine")
        keyed = [keyed_id(ids_key, _normalize_id(v)) for v in values]
        return int(self._run(id_matches_spark(ID_TABLE_PREFIX + ds_id, keyed))[0][0])


def _pads(session: Any, key: bytes) -> Any:
    """One row: the HMAC pads of the bounding key and of the ids key, as BINARY columns (never SQL text)."""
    from pyspark.sql.types import BinaryType, StructField, StructType

    if len(key) != KEY_BYTES:
        raise EngineError("the bounding key must be 32 bytes", code="bad_key")
    row: list[bytearray] = []
    for k in (key, derive_ids_key(key)):
        padded = k.ljust(64, b"\0")
        row += [bytearray(b ^ 0x36 for b in padded), bytearray(b ^ 0x5C for b in padded)]
    names = ["__ipad", "__opad", "__ipad_ids", "__opad_ids"]
    return session.createDataFrame([tuple(row)], StructType([StructField(n, BinaryType(), False) for n in names]))
