"""The open directory of public data resources (``/public/datasets``) and the rules of each level.

Each level has its own rule, and the rule lives here as ``check_*`` (raises) / ``can_*`` (bool):

- **L1 open**: the resource itself may be downloaded by anyone, without login, as Parquet or CSV;
- **L2 conditionally open**: differentially private aggregates under a grant, nothing else;
- **L3 authorized operation only**: as L2 with stricter caps and two export reviewers
  (``sandbox.policy.rules.check_grant_fits_catalog``);
- **L4 never leaves**: listed for transparency, never downloadable and never granted.

The directory publishes metadata only: names and types of columns, never declared values,
bounds or any number computed from the data. Grants are named by id and operator institution,
never by member.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sandbox.errors import Forbidden, NotFound
from sandbox.policy.models import Dataset
from sandbox.policy.rules import effective_status
from sandbox.services import Services


@dataclass(frozen=True)
class Level:
    code: str
    name: str
    permits: str
    downloadable: bool
    grantable: bool


LEVELS: dict[str, Level] = {
    "L1": Level("L1", "Open", "Anyone may download the resource itself (Parquet or CSV) from this directory, "
                "without login.", downloadable=True, grantable=True),
    "L2": Level("L2", "Conditionally open", "Holders of a grant receive differentially private aggregates "
                "within a privacy budget; records never leave the secure environment.",
                downloadable=False, grantable=True),
    "L3": Level("L3", "Authorized operation only", "As L2, under stricter caps (at most 0.5 epsilon per query) "
                "and with two independent reviewers for every export.", downloadable=False, grantable=True),
    "L4": Level("L4", "Never leaves", "Listed for transparency only: never downloadable and never granted.",
                downloadable=False, grantable=False),
}

FORMATS = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv"}


def can_download(ds: Dataset) -> bool:
    return LEVELS[ds.classification].downloadable


def check_downloadable(ds: Dataset) -> None:
    """Only L1 (open) resources leave as files; everything else is refused with a stable code."""
    if not can_download(ds):
        level = LEVELS[ds.classification]
        raise Forbidden(
            f"{ds.id} is {ds.classification} ({level.name.lower()}): only L1 open resources can be downloaded. "
            f"{level.permits}",
            code="not_open_data",
        )


def _registered_dates(services: Services) -> dict[str, str]:
    return {ds_id: applied[:10] for ds_id, applied in services.policies.datasets_applied_at().items()}


def _data_modified(services: Services, ds: Dataset) -> str | None:
    try:
        mtime = (services.settings.data_root / ds.source).stat().st_mtime
    except OSError:
        return None
    return dt.datetime.fromtimestamp(mtime, dt.UTC).date().isoformat()


def entries(services: Services) -> list[dict]:
    """Every registered resource, as the directory publishes it."""
    prune_open_data(services)
    today = services.today()
    registered = _registered_dates(services)
    users: dict[str, list[dict]] = {}
    for grant in services.policies.grants():
        for ds_id in grant.datasets:
            users.setdefault(ds_id, []).append(
                {"id": grant.id, "operator": grant.operator, "status": effective_status(grant, today)}
            )
    catalog = services.policies.datasets()
    budgets = _budgets_left(services, catalog)
    out = []
    for ds_id, ds in sorted(catalog.items()):
        level = LEVELS[ds.classification]
        out.append({
            "id": ds_id,
            "title": ds.title,
            "description": ds.description,
            "publisher": ds.publisher,
            "level": ds.classification,
            "level_name": level.name,
            "permits": level.permits,
            "downloadable": level.downloadable,
            "downloads": {fmt: f"/public/datasets/{ds_id}.{fmt}" for fmt in FORMATS} if level.downloadable else {},
            "privacy_unit": ds.privacy_unit,
            "columns": [
                {"name": name, "type": col.type, "description": col.description}
                for name, col in ds.columns.items()
            ],
            "registered": registered.get(ds_id),
            "data_modified": _data_modified(services, ds),
            "grants": sorted(users.get(ds_id, []), key=lambda g: g["id"]),
            "budget": budgets.get(ds_id),
        })
    return out


def _budgets_left(services: Services, catalog: dict[str, Dataset]) -> dict[str, dict]:
    """Each dataset's privacy budget for all grants together and what is left, where one is set.

    The ledger keeps these tallies (``Ledger.dataset_budgets``); a ledger without dataset budgets
    publishes none.
    """
    tally = getattr(services.ledger, "dataset_budgets", None)
    if tally is None:
        return {}
    out = {}
    for item in tally(catalog):
        if item.get("epsilon_total") is not None:
            out[item["dataset"]] = {k: item[k] for k in ("epsilon_total", "epsilon_spent", "epsilon_remaining")}
    return out


def directory(services: Services) -> dict:
    return {"as_of": services.today().isoformat(), "levels": {k: vars(v) for k, v in LEVELS.items()},
            "datasets": entries(services)}


# -- DCAT-style JSON-LD, for catalogue harvesters ------------------------------------------------
DCAT_CONTEXT = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "csvw": "http://www.w3.org/ns/csvw#",
}


def dcat(services: Services, base_url: str | None = None) -> dict:
    """The directory as a DCAT catalogue in JSON-LD, its URLs under ``base_url`` (the configured
    ``public_base_url`` by default; relative when none is set, never taken from a request's Host)."""
    if base_url is None:
        from sandbox.oversight import settings_of

        base_url = settings_of(services).public_base_url or ""
    base = base_url.rstrip("/")
    datasets = []
    for e in entries(services):
        item: dict = {
            "@id": f"{base}/public/datasets#{e['id']}",
            "@type": "dcat:Dataset",
            "dct:identifier": e["id"],
            "dct:title": e["title"],
            "dct:description": e["description"],
            "dct:accessRights": f"{e['level']} {e['level_name']}: {e['permits']}",
            "dcat:landingPage": {"@id": f"{base}/public/datasets#{e['id']}"},
            "csvw:tableSchema": {
                "@type": "csvw:Schema",
                "csvw:column": [{"@type": "csvw:Column", "csvw:name": c["name"], "csvw:datatype": c["type"]}
                                for c in e["columns"]],
            },
        }
        if e["publisher"]:
            item["dct:publisher"] = {"@type": "foaf:Agent", "foaf:name": e["publisher"]}
        if e["registered"]:
            item["dct:issued"] = {"@value": e["registered"], "@type": "xsd:date"}
        if e["data_modified"] or e["registered"]:
            item["dct:modified"] = {"@value": e["data_modified"] or e["registered"], "@type": "xsd:date"}
        if e["downloadable"]:
            item["dcat:distribution"] = [
                {"@type": "dcat:Distribution", "dct:format": fmt, "dcat:mediaType": FORMATS[fmt],
                 "dcat:downloadURL": {"@id": base + url}}
                for fmt, url in e["downloads"].items()
            ]
        datasets.append(item)
    return {
        "@context": DCAT_CONTEXT,
        "@id": f"{base}/public/datasets.jsonld",
        "@type": "dcat:Catalog",
        "dct:title": "Directory of public data resources",
        "dct:description": "Every data resource registered in the trusted-circulation sandbox, with its level.",
        "dct:modified": {"@value": services.today().isoformat(), "@type": "xsd:date"},
        "dcat:dataset": datasets,
    }


# -- open data files (L1 only) --------------------------------------------------------------------
def open_data_file(services: Services, ds_id: str, fmt: str) -> Path:
    """A file of the declared columns of an L1 resource, rendered once per source version.

    Raises NotFound for an unknown resource or format and Forbidden(not_open_data) for L2-L4.
    """
    if fmt not in FORMATS:
        raise NotFound(f"no format {fmt!r}; use .parquet or .csv", code="unknown_format")
    ds = services.policies.datasets().get(ds_id)
    if ds is None:
        raise NotFound(f"no data resource {ds_id}", code="unknown_dataset")
    prune_open_data(services)
    check_downloadable(ds)
    source = services.settings.data_root / ds.source
    try:
        st = source.stat()
    except OSError:
        raise NotFound(f"{ds_id}: the source file is not available", code="source_missing") from None
    out_dir = services.db.dir / "open-data"
    out_dir.mkdir(exist_ok=True)
    shown = open_columns(ds)
    columns = hashlib.sha256(",".join(shown).encode()).hexdigest()[:8]
    version = f"{st.st_size}-{st.st_mtime_ns}-{columns}"
    target = out_dir / f"{ds_id}-{version}.{fmt}"
    if target.is_file():
        return target
    tmp = out_dir / f".{ds_id}.{secrets.token_hex(6)}.tmp"
    try:
        try:
            _render(source, shown, fmt, tmp)
        except (OSError, KeyError, pa.ArrowException):
            raise NotFound(f"{ds_id}: the source file cannot be read as declared", code="source_unreadable") from None
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    for old in out_dir.glob(f"{ds_id}-*.{fmt}"):
        if old != target and _file_dataset(old.name) == ds_id:  # not another resource named "<ds_id>-..."
            old.unlink(missing_ok=True)
    return target


def open_columns(ds: Dataset) -> list[str]:
    """The columns an open-data file carries: every declared column but the privacy unit's ids."""
    return [name for name, col in ds.columns.items() if col.type != "id" and name != ds.privacy_unit]


def prune_open_data(services: Services) -> None:
    """Delete rendered files of resources that are no longer L1 (reclassified or removed)."""
    out_dir = services.db.dir / "open-data"
    if not out_dir.is_dir():
        return
    open_ids = {ds_id for ds_id, ds in services.policies.datasets().items() if can_download(ds)}
    for path in out_dir.iterdir():
        if path.name.startswith("."):
            continue
        if _file_dataset(path.name) not in open_ids:
            path.unlink(missing_ok=True)


def _file_dataset(name: str) -> str:
    """The resource of a rendered file ``<ds_id>-<size>-<mtime_ns>-<columns>.<fmt>``."""
    return name.rsplit("-", 3)[0] if name.count("-") >= 3 else name


def _render(source: Path, columns: list[str], fmt: str, target: Path) -> None:
    """Stream the declared columns batch by batch, so memory stays bounded whatever the file's size."""
    reader = pq.ParquetFile(source)
    out_schema = pa.schema([reader.schema_arrow.field(name) for name in columns])
    writer: pq.ParquetWriter | pacsv.CSVWriter
    writer = pq.ParquetWriter(target, out_schema) if fmt == "parquet" else pacsv.CSVWriter(target, out_schema)
    try:
        for batch in reader.iter_batches(batch_size=65_536, columns=columns):
            writer.write_batch(batch)
    finally:
        writer.close()
