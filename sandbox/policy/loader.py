"""Read policy YAML into models; an invalid file fails with the file, the field and the problem."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from sandbox.errors import PolicyError
from sandbox.policy.models import Dataset, Grant, Roles

M = TypeVar("M", bound=BaseModel)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: expected a mapping at the top level")
    return data


def format_validation_error(source: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"{source}: {where}: {msg}")
    return "\n".join(problems)


def parse_model(model: type[M], data: dict, source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(format_validation_error(source, exc)) from None


def load_dataset(path: Path) -> Dataset:
    return parse_model(Dataset, _read_yaml(path), str(path))


def load_grant(path: Path) -> Grant:
    return parse_model(Grant, _read_yaml(path), str(path))


def load_roles(path: Path) -> Roles:
    if not path.exists():
        return Roles()
    return parse_model(Roles, _read_yaml(path), str(path))


@dataclass
class Policies:
    datasets: dict[str, Dataset] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    roles: Roles = field(default_factory=Roles)


def _load_dir(directory: Path, loader) -> dict:  # noqa: ANN001
    items: dict = {}
    if not directory.is_dir():
        return items
    for path in sorted(directory.glob("*.y*ml")):
        item = loader(path)
        if item.id in items:
            raise PolicyError(f"{path}: id: {item.id!r} is declared twice")
        items[item.id] = item
    return items


def load_policies(root: Path) -> Policies:
    """Load ``datasets/*.yaml``, ``grants/*.yaml`` and ``roles.yaml`` under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise PolicyError(f"{root}: policies directory does not exist")
    return Policies(
        datasets=_load_dir(root / "datasets", load_dataset),
        grants=_load_dir(root / "grants", load_grant),
        roles=load_roles(root / "roles.yaml"),
    )
