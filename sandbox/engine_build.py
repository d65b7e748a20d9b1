"""Building the engine file: Parquet in, one DuckDB file out, in a child process.

``build`` turns the Parquet under the data root into one DuckDB database file that holds,
per dataset, only the declared columns of the rows kept by the contribution bound, with
numeric columns also carried clamped and in fixed point (``__v_<col>``) so sums are exact
integers. The id column itself is not copied. The contribution bound (which rows of each unit
are kept, why that depends on the unit's own rows only, and how the build runs it in partitions
so that 100 million rows fit in a few GB) is in :mod:`sandbox.bounding`.

``build_in_child`` runs it in a child process, so that the serving process never holds the
import's memory; the child reports its progress, rows kept, wall time and peak memory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb
from sqlglot import exp

from sandbox.bounding import (
    bounded_rows,
    ident,
    parquet,
    render,
    reserved_names_in,
    stage,
    unit_ids,
)
from sandbox.errors import SandboxError
from sandbox.policy.models import Dataset

ID_TABLE_PREFIX = "__ids_"
ENGINE_FORMAT = 5  # bumped when the engine file's columns or build change, so that old files are rebuilt

# the unit-id table holds HMAC-SHA256(ids key, id): the key is derived from the bounding key in the
# state directory and never written to the engine file (DuckDB's hash with a salt stored beside
# the table let anyone holding the file enumerate every id). Part of the fingerprint: a file
# built the old way is rebuilt.
ID_SCHEME = "ids-hmac-sha256-v1"
IDS_KEY_LABEL = b"sandbox export identifier check"
KEY_CHECK = "key check"

# DuckDB gets this share of the build's memory (the rest: the Parquet writer's buffers, Python)
DUCKDB_SHARE = 0.75
# rows per pass of the contribution bound, per GB of DuckDB memory, for 5 declared columns (scaled by
# the column count): a pass's aggregate, join and window then stay in memory. Measured on 2 cores at
# 10M rows: 1.2M rows per pass peaked at 0.9 GB, 3M at 1.0 GB, 6M at 1.5 GB, in the same 13 s
ROWS_PER_GB = 800_000


class EngineError(SandboxError):
    """503. ``admin_detail`` (never in the JSON answer) carries what only the administrator should read;
    ``retry_after`` (seconds), when set, becomes the answer's ``Retry-After`` header."""

    status = 503
    code = "engine_unavailable"
    admin_detail: str = ""
    retry_after: int | None = None


log = logging.getLogger("sandbox.engine")
_BYTES_LITERAL = re.compile(r"(\\x[0-9A-Fa-f]{2}){2,}")
_LONG_HEX = re.compile(r"[0-9A-Fa-f]{64,}")


def redact(text: str) -> str:
    """Byte-string literals (the bounding HMAC's key pads), and long hex runs, removed from an error text."""
    return _LONG_HEX.sub("<redacted>", _BYTES_LITERAL.sub("<redacted>", text))


def derive_ids_key(bounding_key: bytes) -> bytes:
    """The key of the unit-id table: HMAC(bounding key, a fixed label), so a separate PRF."""
    return hmac.new(bounding_key, IDS_KEY_LABEL, hashlib.sha256).digest()


def keyed_id(ids_key: bytes, value: str) -> str:
    """HMAC-SHA256(ids key, value) in lowercase hex: what the unit-id table holds."""
    return hmac.new(ids_key, value.encode(), hashlib.sha256).hexdigest()


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


def fingerprint_of(versions: Mapping[str, str]) -> str:
    h = hashlib.sha256(ID_SCHEME.encode())
    for ds_id, version in versions.items():
        h.update(f"{ds_id}:{version};".encode())
    return h.hexdigest()[:16]


def fingerprint(datasets: Mapping[str, Dataset], data_root: Path) -> str:
    """Changes when a catalog entry or a source file changes: then the engine file is rebuilt."""
    return fingerprint_of(data_versions(datasets, data_root))


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def memory_bytes(limit: str) -> int | None:
    """``"4GB"`` -> 4e9 (DuckDB's units); None if it cannot be read."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", limit)
    if not m or m.group(2).lower() not in _UNITS:
        return None
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def duckdb_memory(limit: str) -> str:
    """The DuckDB memory limit inside a build of ``limit`` in all (its share, in MB)."""
    total = memory_bytes(limit)
    return limit if total is None else f"{max(64, int(total * DUCKDB_SHARE / 10**6))}MB"


def pass_rows_for(limit: str, columns: int) -> int:
    """How many rows one pass of the contribution bound may hold, for a build of ``limit`` in all."""
    total = memory_bytes(limit) or 4 * 10**9
    return max(100_000, int(total * DUCKDB_SHARE / 1e9 * ROWS_PER_GB * 5 / max(columns, 1)))


@dataclass(frozen=True)
class BuildReport:
    kept: dict[str, int]
    seconds: float
    peak_mb: float


def _table(name: str) -> exp.Table:
    return exp.Table(this=ident(name))


def _scalar(con: duckdb.DuckDBPyConnection, query: exp.Expr) -> int:
    row = con.execute(render(query)).fetchone()
    assert row is not None
    return int(row[0])


def build(
    datasets: Mapping[str, Dataset],
    data_root: Path,
    target: Path,
    progress: Callable[[str], None] = lambda _msg: None,
    memory_limit: str = "1GB",
    threads: int = 2,
    *,
    key: bytes,
    pass_rows: int | None = None,
) -> dict[str, int]:
    """Write the engine file (atomically); returns rows kept per dataset.

    ``key`` is the bounding PRF's secret (32 bytes, kept in the state directory, never
    written to the engine file). ``memory_limit`` is the build's whole budget: DuckDB gets
    :data:`DUCKDB_SHARE` of it and spills to ``<target dir>/spill`` beyond; the contribution
    bound runs in passes of at most ``pass_rows`` rows (default: from the memory limit).
    """
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = target.with_name(f"{target.name}.{token}.building")  # one per builder: two processes never share it
    spill = target.parent / "spill"
    spill.mkdir(exist_ok=True)
    _remove_abandoned(spill)
    staging = spill / f"stage-{token}"
    ids_key = derive_ids_key(key)
    kept: dict[str, int] = {}
    con = duckdb.connect(
        str(tmp),
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "memory_limit": duckdb_memory(memory_limit),
            "threads": threads,
            "temp_directory": str(spill),
            "preserve_insertion_order": False,
        },
    )
    done = False
    try:
        for ds_id, ds in sorted(datasets.items()):
            source = data_root / ds.source
            if not source.is_file():
                progress(f"{ds_id}: source {ds.source} missing under the data root; skipped")
                continue
            _refuse_reserved_names(con, ds_id, source)
            progress(f"{ds_id}: bounding contributions and fixing point ...")
            try:
                if ds.privacy_unit == "row":
                    con.execute(render(exp.Create(this=_table(ds_id), kind="TABLE",
                                                  expression=bounded_rows(ds, source, key))))
                else:
                    rows = pass_rows or pass_rows_for(memory_limit, len(ds.columns))
                    _bound_in_passes(con, ds, source, staging / ds_id, key, ids_key, rows, progress)
            except duckdb.Error as exc:
                raise EngineError(f"{ds_id}: cannot import {ds.source}: {redact(str(exc))}",
                                  code="import_failed") from None
            kept[ds_id] = _scalar(con, exp.select(exp.Count(this=exp.Star())).from_(_table(ds_id)))
            progress(f"{ds_id}: {kept[ds_id]:,} rows kept")
        # a PRF output of the key, so a key that does not match the file is noticed (not silent zeros)
        meta = exp.select(exp.Alias(this=exp.Placeholder(), alias=ident("key_check")))
        con.execute(render(exp.Create(this=_table("__meta"), kind="TABLE", expression=meta)),
                    [keyed_id(ids_key, KEY_CHECK)])
        con.execute("CHECKPOINT")
        done = True
    finally:
        con.close()
        shutil.rmtree(staging, ignore_errors=True)
        if not done:
            for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
                leftover.unlink(missing_ok=True)
    os.replace(tmp, target)
    return kept


def _remove_abandoned(spill: Path) -> None:
    """Staged rows (and half-built files) of builders that died (their process is gone), removed."""
    for path in [*spill.glob("stage-*"), *spill.parent.glob("*.building"), *spill.parent.glob("*.building.wal")]:
        m = re.search(r"(?:stage-|\.)([0-9]+)-[0-9a-f]{8}(?:\.building(?:\.wal)?)?$", path.name)
        if m is None or _alive(int(m.group(1))):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _bound_in_passes(con: duckdb.DuckDBPyConnection, ds: Dataset, source: Path, staging: Path, key: bytes,
                     ids_key: bytes, pass_rows: int, progress: Callable[[str], None]) -> None:
    """Stage the rows in ``P`` partitions of the units, then bound each partition on its own and append
    it (the kept rows of a unit do not depend on ``P``: see :mod:`sandbox.bounding`)."""
    count = exp.select(exp.Count(this=exp.Star())).from_(parquet(source))
    total = _scalar(con, count)
    parts = max(1, math.ceil(total / pass_rows))
    progress(f"{ds.id}: {total:,} rows, {parts} pass{'es' if parts > 1 else ''} of the contribution bound")
    staging.mkdir(parents=True, exist_ok=True)
    con.execute(render(stage(ds, source, staging / "rows", parts)))
    table, ids = _table(ds.id), _table(ID_TABLE_PREFIX + ds.id)
    created = False
    t0 = time.monotonic()
    for i in range(parts):
        files = sorted((staging / "rows" / f"__p={i}").glob("*.parquet"))
        if not files:
            continue
        for into, query in ((table, bounded_rows(ds, files, key)), (ids, unit_ids(ds, files, ids_key))):
            statement = (exp.Insert(this=into, expression=query) if created
                         else exp.Create(this=into, kind="TABLE", expression=query))
            con.execute(render(statement))
        created = True
        shutil.rmtree(staging / "rows" / f"__p={i}", ignore_errors=True)
        if parts > 1:
            progress(f"{ds.id}: pass {i + 1}/{parts} done ({time.monotonic() - t0:.0f} s)")
    if not created:  # no row has a unit: empty tables of the right shape
        con.execute(render(exp.Create(this=table, kind="TABLE", expression=bounded_rows(ds, source, key))))
        con.execute(render(exp.Create(this=ids, kind="TABLE", expression=unit_ids(ds, source, ids_key))))


def _refuse_reserved_names(con: duckdb.DuckDBPyConnection, ds_id: str, source: Path) -> None:
    """A file column named like an engine name (``__n``, ``rowid``...) could shadow it: refused."""
    describe = exp.Describe(this=exp.select(exp.Star()).from_(parquet(source)))
    try:
        names = [r[0] for r in con.execute(render(describe)).fetchall()]
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
                     job["memory"], job["threads"], key=bytes.fromhex(job["key"]), pass_rows=job.get("pass_rows"))
        say("peak_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        say("done", kept)
    except SandboxError as exc:
        say("error", exc.message)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        say("error", f"{type(exc).__name__}: {exc}")


CHILD_COMMAND = [sys.executable, "-c", "from sandbox.engine_build import _child_main; _child_main()"]


def build_in_child(
    datasets: Mapping[str, Dataset],
    data_root: Path,
    target: Path,
    progress: Callable[[str], None] = lambda _msg: None,
    memory_limit: str = "4GB",
    threads: int = 2,
    *,
    key: bytes,
    pass_rows: int | None = None,
) -> BuildReport:
    """Run :func:`build` in a child process, so the serving process never holds the import's
    memory. The key travels on the child's stdin, never on its command line."""
    job = {
        "datasets": {k: v.model_dump(mode="json") for k, v in datasets.items()},
        "data_root": str(data_root), "target": str(target), "memory": memory_limit, "threads": threads,
        "key": key.hex(), "pass_rows": pass_rows,
    }
    t0 = time.monotonic()
    # the child imports this very package (not another installed copy): its folder comes first on its path
    here = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen(CHILD_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(job))
    proc.stdin.close()
    result: dict[str, int] | None = None
    peak = math.nan
    error = "the import process ended without a result"
    for line in proc.stdout:
        try:
            kind, value = json.loads(line)
        except ValueError:
            continue
        if kind == "progress":
            progress(value)
        elif kind == "peak_mb":
            peak = float(value)
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
    seconds = time.monotonic() - t0
    progress(f"built in {seconds:.1f} s (import process peak memory {peak:.0f} MB)")
    return BuildReport(result, seconds, peak)
