"""One blueprint per resource. A blueprint module that is not present yet is simply skipped."""

from __future__ import annotations

import importlib

from flask import Blueprint

MODULES = (
    "gateway.blueprints.query",
    "gateway.blueprints.internal",
    "gateway.blueprints.exports",
    "gateway.blueprints.review",
    "gateway.blueprints.admin",
    "gateway.blueprints.public",
    "gateway.blueprints.directory",
    "gateway.blueprints.cases",
    "gateway.blueprints.auditor",
    "gateway.blueprints.admin_alerts",
    "gateway.blueprints.offerings",
    "gateway.blueprints.pricing",
    "gateway.hub_oauth",
)


def all_blueprints() -> list[Blueprint]:
    found = []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        found.append(module.bp)
    return found
