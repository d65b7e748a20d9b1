"""Pydantic models for the policy files described in DESIGN.md.

Bounds and categories are public knowledge chosen by the admin; nothing here is ever
computed from the data.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import unicodedata
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

IDENT = re.compile(r"[a-z][a-z0-9_]{0,62}\Z")
GRANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}\Z")

ColumnType = Literal["id", "category", "int", "float", "text"]  # text: keys only through DP selection

# names the engine gives a meaning of its own: the `privacy_unit: row` sentinel, DuckDB's
# pseudo-columns and read_parquet's virtual columns; the engine's internal prefix is ``__``
RESERVED_COLUMNS = frozenset({"row", "rowid", "file_row_number", "filename", "file_index"})
RESERVED_PREFIXES = ("__",)
# a join names the other dataset's columns ``<dataset>__<column>``: a declared name holding ``__``
# anywhere could stand in for one (its bounds replaced by the lookup's), so none may
JOIN_SEPARATOR = "__"


def check_column_name(name: str, *, stored: bool = False) -> None:
    """Raise ValueError for a column name the engine reserves or cannot quote safely. ``stored``: an
    entry already in force, read back from the state, keeps a name holding ``__`` (applied before the
    rule; its joins are refused instead), so that reading the state never fails on it."""
    if name in RESERVED_COLUMNS or name.startswith(RESERVED_PREFIXES):
        raise ValueError(
            f"column name {name!r} is reserved (reserved: {', '.join(sorted(RESERVED_COLUMNS))} and names "
            f"starting with {', '.join(RESERVED_PREFIXES)}); rename the column in the Parquet and the catalog entry"
        )
    if not IDENT.match(name):
        raise ValueError(f"column name {name!r} is not a lower-case SQL identifier")
    if JOIN_SEPARATOR in name and not stored:
        raise ValueError(
            f"column name {name!r} holds {JOIN_SEPARATOR!r}, which joins reserve (a joined column is named "
            f"<dataset>{JOIN_SEPARATOR}<column>); rename the column in the Parquet and the catalog entry"
        )


def operator_key(operator: str) -> str:
    """The canonical key of an operator's name: caps across grants, and the one-spelling rule, key on it.

    NFKC, format characters (Unicode category Cf: zero-width spaces, joiners, bidi marks)
    removed, case folded, punctuation read as a space, whitespace collapsed. So "Acme Health
    Analytics Ltd.", "acme  health analytics ltd" and "ACME Health Analytics Ltd.\u200b" are one key.
    """
    text = unicodedata.normalize("NFKC", operator)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf").casefold()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


Classification = Literal["L1", "L2", "L3", "L4"]
EngineName = Literal["duckdb", "spark"]
ENGINES: tuple[str, ...] = ("duckdb", "spark")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Column(_Strict):
    """One column of a dataset: its type and the public domain the admin declared."""

    type: ColumnType
    values: tuple[str, ...] | None = None
    bounds: tuple[float, float] | None = None
    # floats are carried as integers in units of 10**-scale so that sums are exact
    scale: int = Field(default=2, ge=0, le=6)
    description: str = ""

    @model_validator(mode="after")
    def _domain_fits_type(self) -> Column:
        if self.type == "category":
            if not self.values:
                raise ValueError("a category column needs a non-empty `values` list")
            if len(set(self.values)) != len(self.values):
                raise ValueError("`values` has duplicates")
            if self.bounds is not None:
                raise ValueError("a category column takes `values`, not `bounds`")
        elif self.type == "int" and self.bounds is None:  # codes without a public range: keys only
            if self.values is not None:
                raise ValueError("an int column takes `bounds`, not `values`")
        elif self.type in ("int", "float"):
            if self.bounds is None:
                raise ValueError(f"an {self.type} column needs `bounds: [low, high]`")
            low, high = self.bounds
            if not low < high:
                raise ValueError("`bounds` must be [low, high] with low < high")
            if self.type == "int" and (low != int(low) or high != int(high)):
                raise ValueError("an int column needs whole-number bounds")
            if max(abs(low), abs(high)) * 10**self.scale > 2**40:
                raise ValueError("bounds too wide for exact fixed-point sums (|bound| * 10**scale > 2**40)")
            fixed_low, fixed_high = _fixed(low, high, 1 if self.type == "int" else 10**self.scale)
            if fixed_low > fixed_high:
                raise ValueError(f"bounds {list(self.bounds)} hold no value at scale {self.scale}; widen them")
            if self.values is not None:
                raise ValueError(f"an {self.type} column takes `bounds`, not `values`")
        elif self.values is not None or self.bounds is not None:
            raise ValueError(f"an {self.type} column takes neither `values` nor `bounds`")
        return self

    @property
    def numeric(self) -> bool:
        return self.type in ("int", "float")

    @property
    def open_keys(self) -> bool:
        """No declared values or bounds: grouped only through DP partition selection (text, unbounded int)."""
        return self.type == "text" or (self.type == "int" and self.bounds is None)

    @property
    def factor(self) -> int:
        """Fixed-point factor: the integer carried for a value v is round(v * factor)."""
        return 1 if self.type == "int" else 10**self.scale

    @property
    def fixed_bounds(self) -> tuple[int, int]:
        """The integer range the engine clamps fixed-point values to; sensitivity comes from it too."""
        assert self.bounds is not None
        return _fixed(self.bounds[0], self.bounds[1], self.factor)


def _fixed(low: float, high: float, factor: int) -> tuple[int, int]:
    # round to 9 places first so that 0.29 * 100 = 28.999999999999996 counts as 29
    return math.ceil(round(low * factor, 9)), math.floor(round(high * factor, 9))


class DatasetBudget(_Strict):
    """The total privacy loss of all grants together on a dataset (what is released to the world).

    ``delta``: the sum of the deltas of the zCDP grants that have spent on the dataset (each
    grant's delta counted once, at its first charge there) and of every DP partition selection a
    pure grant ran on it (per query) is at most this. Default 1e-5: ten grants at delta 1e-6."""

    epsilon: float = Field(gt=0, le=1000)
    delta: float = Field(default=1e-5, gt=0, lt=1e-3)


class Dataset(_Strict):
    id: str
    title: str
    source: str
    classification: Classification
    privacy_unit: str
    max_rows_per_unit: int = Field(ge=1, le=1000)
    columns: dict[str, Column]
    description: str = ""
    publisher: str = ""
    # a public lookup table (region names, populations, codes) that may be joined to private data
    # on its unique `key` column; it describes no people (privacy_unit: row)
    public: bool = False
    key: str | None = None
    # caps across grants, in epsilon (a zCDP grant counts with its epsilon at its delta):
    budget: DatasetBudget | None = None  # all grants together; required for L3
    max_epsilon_per_operator: float | None = Field(default=None, gt=0, le=1000)  # each operator's grants together
    operator_caps: dict[str, float] = Field(default_factory=dict)  # per-operator overrides of the default
    # which engine builds and answers it: DuckDB on the gateway's machine, or Apache Spark (sandbox.engine_spark)
    engine: EngineName = "duckdb"

    @field_validator("engine", mode="before")
    @classmethod
    def _known_engine(cls, v: object) -> object:
        if v not in ENGINES:
            raise ValueError(f"unknown engine {v!r}: `engine` is one of {', '.join(ENGINES)} (default duckdb)")
        return v

    @model_serializer(mode="wrap")
    def _default_engine_unwritten(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """``engine`` is written only when it is not the default, so an entry written before the field
        existed keeps its stored form and its digest (no rebuild, no change in the record)."""
        data: dict[str, object] = handler(self)
        if self.engine == "duckdb":
            data.pop("engine", None)
        return data

    def operator_cap(self, operator: str) -> float | None:
        """The cap on ``operator``'s grants together on this dataset, or None."""
        key = operator_key(operator)
        for name, cap in self.operator_caps.items():
            if operator_key(name) == key:
                return cap
        return self.max_epsilon_per_operator

    @field_validator("operator_caps")
    @classmethod
    def _caps_positive(cls, v: dict[str, float]) -> dict[str, float]:
        seen: dict[str, str] = {}
        for operator, cap in v.items():
            if not (isinstance(cap, int | float) and 0 < cap <= 1000):
                raise ValueError(f"{operator!r}: a cap is an epsilon above 0 and at most 1000")
            key = operator_key(operator)
            if not key:
                raise ValueError(f"{operator!r}: not an operator name")
            if key in seen:
                raise ValueError(f"{seen[key]!r} and {operator!r} are the same operator (caps match names "
                                 "ignoring case, spacing and punctuation): keep one")
            seen[key] = operator
        return v

    @model_validator(mode="after")
    def _lookup_is_keyed(self) -> Dataset:
        if not self.public:
            if self.key is not None:
                raise ValueError("`key` is only for public lookup tables (public: true)")
            return self
        if self.privacy_unit != "row":
            raise ValueError("a public lookup table describes no people: privacy_unit must be `row`")
        column = self.columns.get(self.key or "")
        if column is None or column.type not in ("category", "int", "text"):
            raise ValueError("a public lookup table needs `key`: a declared category, int or text column")
        return self

    @field_validator("id")
    @classmethod
    def _id_is_identifier(cls, v: str) -> str:
        if not IDENT.match(v):
            raise ValueError("must be lower-case letters, digits and _ (a SQL identifier)")
        return v

    @field_validator("source")
    @classmethod
    def _source_is_relative(cls, v: str) -> str:
        if v.startswith("/") or ".." in v.split("/") or not v.endswith(".parquet"):
            raise ValueError("must be a .parquet path relative to the data root")
        return v

    @model_validator(mode="after")
    def _unit_is_declared(self, info: ValidationInfo) -> Dataset:
        stored = bool(info.context and info.context.get("stored"))
        for name in self.columns:
            check_column_name(name, stored=stored)
        if self.classification == "L3" and self.budget is None:
            raise ValueError("an L3 dataset needs `budget: {epsilon: ...}`, the total for all grants together")
        if self.privacy_unit == "row":
            if self.max_rows_per_unit != 1:
                raise ValueError("privacy_unit `row` means max_rows_per_unit 1")
        else:
            col = self.columns.get(self.privacy_unit)
            if col is None or col.type != "id":
                raise ValueError(
                    f"privacy_unit {self.privacy_unit!r} must be a declared column of type id"
                )
        return self


class GrantedDataset(_Strict):
    columns: tuple[str, ...]


class Budget(_Strict):
    epsilon: float = Field(gt=0, le=100)
    delta: float = Field(default=0.0, ge=0, lt=1e-3)


class ExportRules(_Strict):
    reviewers_required: int = Field(default=2, ge=1, le=2)


class Resources(_Strict):
    """The notebook container's caps (applied by the hub's spawner, see docs/stack.md)."""

    cpu: float = Field(default=1.0, gt=0, le=16)
    memory: str = "2G"
    # processes and threads in the container (a fork bomb stops here)
    pids: int = Field(default=512, ge=64, le=32768)
    # size of the persistent home (/home/jovyan); writes beyond it fail with ENOSPC
    disk: str = "10G"

    @field_validator("memory")
    @classmethod
    def _memory_has_unit(cls, v: str) -> str:
        if not re.fullmatch(r"[1-9][0-9]*[KMG]", v):
            raise ValueError("memory must look like 512M or 2G")
        return v

    @field_validator("disk")
    @classmethod
    def _disk_has_unit(cls, v: str) -> str:
        m = re.fullmatch(r"([1-9][0-9]*)([MGT])", v)
        if not m or (m.group(2) == "M" and int(m.group(1)) < 16):
            raise ValueError("disk must look like 512M, 10G or 1T (at least 16M)")
        return v


GrantStatus = Literal["active", "suspended", "revoked"]


class Grant(_Strict):
    id: str
    operator: str = Field(min_length=1, max_length=200, pattern=r"\S")  # caps across grants key on it
    members: tuple[str, ...]
    mode: Literal["overall", "domain", "scenario"]
    purpose: str
    datasets: dict[str, GrantedDataset]
    valid_from: dt.date
    valid_until: dt.date
    budget: Budget
    max_epsilon_per_query: float = Field(gt=0)
    exports: ExportRules = ExportRules()
    resources: Resources = Resources()
    status: GrantStatus = "active"
    use: Literal["commercial", "public_welfare"] = "commercial"
    # pure: epsilon-DP, discrete Laplace, basic composition. zcdp: discrete Gaussian, charged in
    # rho; the budget's (epsilon, delta) is converted to a rho total with OpenDP's conversion
    accounting: Literal["pure", "zcdp"] = "pure"
    # the declared purpose category (prices.yaml lists those that qualify for free public-welfare use)
    purpose_category: str = Field(default="", max_length=64, pattern=r"^[a-z_]*$")

    @field_validator("id")
    @classmethod
    def _grant_id(cls, v: str) -> str:
        if not GRANT_ID.match(v):
            raise ValueError("must be letters, digits, '.', '_' or '-'")
        return v

    @field_validator("operator", "purpose")
    @classmethod
    def _published_text(cls, v: str) -> str:
        # both are published on the register: a blank would disclose nothing
        if not v.strip():
            raise ValueError("must not be blank: it is published on the register")
        if len(v) > 500:
            raise ValueError("at most 500 characters")
        return v.strip()

    @field_validator("operator")
    @classmethod
    def _operator_has_a_key(cls, v: str) -> str:
        if not operator_key(v):
            raise ValueError("must name the operating institution (letters or digits)")
        return v

    @field_validator("members")
    @classmethod
    def _members(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("a grant needs at least one member")
        for user in v:
            if not USER.match(user):
                raise ValueError(f"{user!r} is not a valid user name")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Grant:
        if self.valid_until < self.valid_from:
            raise ValueError("valid_until is before valid_from")
        if self.max_epsilon_per_query > self.budget.epsilon:
            raise ValueError("max_epsilon_per_query exceeds the whole budget")
        if not self.datasets:
            raise ValueError("a grant needs at least one dataset")
        if self.accounting == "zcdp" and self.budget.delta <= 0:
            raise ValueError("accounting zcdp needs a budget delta above 0, e.g. budget: {epsilon: 10, delta: 1.0e-6}")
        return self

    def is_in_window(self, today: dt.date) -> bool:
        return self.valid_from <= today <= self.valid_until


class Roles(_Strict):
    reviewers: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()
    auditors: tuple[str, ...] = ()  # audit authorities: read-only, no data access

    @model_validator(mode="after")
    def _auditors_only_audit(self) -> Roles:
        both = sorted(set(self.auditors) & (set(self.reviewers) | set(self.admins)))
        if both:
            raise ValueError(f"auditors are read-only and cannot also be reviewers or admins: {', '.join(both)}")
        return self
