"""The airlock, the usage metering and the public register take only the stores they use (issue 10):
no function of theirs takes the whole ``Services`` object, and none of those modules imports it. The
gateway, the CLI and the tests hand them their parts (``sandbox.wiring``)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import FunctionType, ModuleType

import sandbox.exports

ROOT = Path(__file__).resolve().parents[2]
NARROW = ["sandbox.usage", "sandbox.disclosure", "sandbox.billing",
          *sorted(m.name for m in pkgutil.walk_packages(sandbox.exports.__path__, "sandbox.exports."))]
SERVICES = re.compile(r"\bServices\b")


def _modules() -> list[ModuleType]:
    return [importlib.import_module(name) for name in NARROW]


def _functions(module: ModuleType) -> list[FunctionType]:
    """Every function defined in the module, private ones and methods of its classes included."""
    out: list[FunctionType] = []
    for obj in vars(module).values():
        if inspect.isfunction(obj) and obj.__module__ == module.__name__:
            out.append(obj)
        elif inspect.isclass(obj) and obj.__module__ == module.__name__:
            out.extend(f for f in vars(obj).values() if inspect.isfunction(f))
    return out


def test_no_function_takes_the_whole_services() -> None:
    found = []
    for module in _modules():
        for fn in _functions(module):
            for name, annotation in inspect.get_annotations(fn).items():
                if name == "services" or SERVICES.search(str(annotation)):
                    found.append(f"{module.__name__}.{fn.__qualname__}: {name}: {annotation}")
    assert not found, "take the stores you use, not Services:\n" + "\n".join(found)


def test_no_module_imports_services() -> None:
    found = []
    for module in _modules():
        path = Path(module.__file__ or "")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(n == "sandbox.services" or n.startswith("sandbox.services.") for n in names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, "imports sandbox.services:\n" + "\n".join(found)


def test_the_scan_sees_the_entry_points() -> None:
    """The signatures name what they use (so the tests above are not vacuous)."""
    from sandbox import disclosure, usage
    from sandbox.exports import override, uploads, views, workflow

    def params(fn: FunctionType) -> list[str]:
        return [str(a) for n, a in inspect.get_annotations(fn).items() if n != "return"]

    assert {"sandbox.exports.workflow", "sandbox.exports.views", "sandbox.exports.uploads",
            "sandbox.exports.override", "sandbox.exports.context"} <= set(NARROW)
    for action in (workflow.review, workflow.withdraw, workflow.resubmit, workflow.download, override.override):
        assert params(action)[0] == "ExportDeps"
    assert params(uploads.submit)[0] == params(uploads.change_files)[0] == "UploadDeps"
    assert params(views.request_view)[:2] == ["StateDB", "PolicyStore"]
    assert params(workflow.transition)[0] == "AuditLog"
    assert params(usage.usage_report)[0] == "UsageSources"
    assert params(disclosure.register) == ["PolicyStore", "AuditLog", "StateDB", "dt.date"]
