"""Which engine answers a dataset: its catalog entry's ``engine`` (``duckdb``, the default, or ``spark``).

:class:`PerDatasetEngine` is the DuckDB :class:`~sandbox.engine.Engine` the gateway has always used,
handing the datasets marked ``engine: spark`` to a :class:`~sandbox.engine_spark.SparkEngine` (started
only when a dataset asks for it). Both satisfy :class:`EngineBackend`, the interface the query
service and the export checks use. A join reads both of its datasets from one engine: a join across
engines is refused before any charge (:func:`check_one_engine`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sandbox.bounding import KEY_FILE
from sandbox.dp.planner import DPPlan, Primitive
from sandbox.engine import Engine, Generation
from sandbox.errors import BadRequest
from sandbox.policy.models import Dataset
from sandbox.sql.plan import QueryPlan

if TYPE_CHECKING:  # pragma: no cover
    from sandbox.engine_spark import SparkEngine, SparkOptions


class EngineBackend(Protocol):
    """What the gateway asks of an engine (the DuckDB and the Spark engine both answer it)."""

    data_root: Path

    @property
    def build_id(self) -> str | None: ...

    def ensure(self, datasets: Mapping[str, Dataset], progress: Callable[[str], None] = ...) -> None: ...

    def has_table(self, ds_id: str) -> bool: ...

    def data_version(self, ds_id: str) -> str | None: ...

    def exact(self, plan: DPPlan, pin: Mapping[str, str] | None = None) -> dict[tuple[Any, ...], dict[Primitive, int]]:
        ...

    def lookup_key_unique(self, lookup: str, key: str) -> bool: ...

    def unit_id_matches(self, ds_id: str, values: list[str]) -> int: ...


def check_one_engine(plan: QueryPlan, catalog: Mapping[str, Dataset]) -> None:
    """A join reads both datasets in one engine: refused (400, before any charge) across engines."""
    if plan.join is None:
        return
    left, right = catalog[plan.dataset], catalog[plan.join.lookup]
    if left.engine != right.engine:
        raise BadRequest(
            f"{left.id} is answered by the {left.engine} engine and {right.id} by the {right.engine} engine; "
            "a join reads both datasets in one engine (the admin sets `engine` in their catalog entries)",
            "join_across_engines",
        )


def _on(datasets: Mapping[str, Dataset], engine: str) -> dict[str, Dataset]:
    return {ds_id: ds for ds_id, ds in datasets.items() if ds.engine == engine}


@dataclasses.dataclass(eq=False)
class MixedGeneration(Generation):
    """A DuckDB generation that also names the Spark datasets' entries (they live in the Spark engine)."""

    spark_entries: Mapping[str, Dataset] = dataclasses.field(default_factory=dict)

    def entry(self, ds_id: str) -> Dataset | None:
        spark = self.spark_entries.get(ds_id)
        return spark if spark is not None else super().entry(ds_id)


class PerDatasetEngine(Engine):
    """DuckDB for the datasets marked ``engine: duckdb``, Spark for those marked ``engine: spark``."""

    def __init__(self, data_root: Path, engine_dir: Path, *, spark: SparkOptions | None = None,
                 catalog: Callable[[], Mapping[str, Dataset]] | None = None, **duckdb_options: Any) -> None:
        # the DuckDB engine's background builds read the catalog in force: only its own datasets
        duck_catalog = None if catalog is None else (lambda: _on(catalog(), "duckdb"))
        super().__init__(data_root, engine_dir, catalog=duck_catalog, **duckdb_options)
        self.spark_options = spark
        self._spark: SparkEngine | None = None
        self._on_spark: frozenset[str] = frozenset()
        self._spark_entries: Mapping[str, Dataset] = {}

    def spark(self) -> SparkEngine:
        """The Spark engine (files under ``<engine dir>/spark``, the same bounding key), made on first use."""
        if self._spark is None:
            from sandbox.engine_spark import SparkEngine

            self._spark = SparkEngine(self.data_root, self.engine_dir / "spark", self.engine_dir / KEY_FILE,
                                      self.spark_options)
        return self._spark

    def ensure(self, datasets: Mapping[str, Dataset], progress: Callable[[str], None] = lambda _m: None) -> None:
        super().ensure(_on(datasets, "duckdb"), progress)
        self._ensure_spark(datasets, progress)

    def refresh(self, datasets: Mapping[str, Dataset]) -> Generation | None:
        """DuckDB's datasets refresh in the background (see Engine.refresh); Spark's are brought up to
        date before returning (a Spark build is a job of its own, not swapped in the background yet)."""
        gen = super().refresh(_on(datasets, "duckdb"))
        self._ensure_spark(datasets, lambda m: None)
        return self._with_spark(gen)

    def serving(self) -> Generation | None:
        return self._with_spark(super().serving())

    def _ensure_spark(self, datasets: Mapping[str, Dataset], progress: Callable[[str], None]) -> None:
        on_spark = _on(datasets, "spark")
        if on_spark or self._spark is not None:
            self.spark().ensure(on_spark, progress)
        self._on_spark, self._spark_entries = frozenset(on_spark), on_spark

    def _with_spark(self, gen: Generation | None) -> Generation | None:
        """The DuckDB generation, also answering for the Spark datasets (their entries and versions)."""
        if gen is None or not self._on_spark or self._spark is None:
            return gen
        spark = self._spark
        versions = {**gen.versions, **{d: v for d in self._on_spark if (v := spark.data_version(d)) is not None}}
        fields = {f.name: getattr(gen, f.name) for f in dataclasses.fields(Generation)}
        return MixedGeneration(**{**fields, "versions": versions}, spark_entries=dict(self._spark_entries))

    def _backend(self, ds_id: str) -> EngineBackend | None:
        """The Spark engine for a dataset on it, else None (this DuckDB engine)."""
        return self._spark if ds_id in self._on_spark else None

    @property
    def build_id(self) -> str | None:
        duck = super().build_id
        if self._spark is None or not self._on_spark:
            return duck
        return f"{duck}+spark-{self._spark.build_id}"

    def has_table(self, ds_id: str) -> bool:
        backend = self._backend(ds_id)
        return backend.has_table(ds_id) if backend is not None else super().has_table(ds_id)

    def data_version(self, ds_id: str) -> str | None:
        backend = self._backend(ds_id)
        return backend.data_version(ds_id) if backend is not None else super().data_version(ds_id)

    def exact(self, plan: DPPlan, pin: Mapping[str, str] | None = None) -> dict[tuple[Any, ...], dict[Primitive, int]]:
        backend = self._backend(plan.dataset.id)
        join = plan.query.join
        if join is not None and (self._backend(join.lookup) is None) != (backend is None):
            raise BadRequest(f"{plan.dataset.id} and {join.lookup} are answered by different engines",
                             "join_across_engines")
        return backend.exact(plan, pin) if backend is not None else super().exact(plan, pin)

    def lookup_key_unique(self, lookup: str, key: str) -> bool:
        backend = self._backend(lookup)
        return backend.lookup_key_unique(lookup, key) if backend is not None else super().lookup_key_unique(lookup, key)

    def unit_id_matches(self, ds_id: str, values: list[str]) -> int:
        backend = self._backend(ds_id)
        return backend.unit_id_matches(ds_id, values) if backend is not None else super().unit_id_matches(ds_id, values)
