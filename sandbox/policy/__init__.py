"""Policy models (datasets, grants, roles) and their YAML loader."""

from sandbox.policy.loader import Policies, load_dataset, load_grant, load_policies, load_roles
from sandbox.policy.models import Column, Dataset, Grant, Roles

__all__ = [
    "Column",
    "Dataset",
    "Grant",
    "Policies",
    "Roles",
    "load_dataset",
    "load_grant",
    "load_policies",
    "load_roles",
]
