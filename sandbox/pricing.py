"""The authority's price schedule as published, and the ceilings of operators' prices.

The schedule is ``prices.yaml`` in the policies directory (``$SANDBOX_POLICIES``, else the
repository's ``policies/``); when there is none, nothing is published and no ceiling applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sandbox.errors import PolicyError
from sandbox.policy.prices import PriceSchedule, default_prices_path, load_prices


@dataclass(frozen=True)
class Ceiling:
    amount: Decimal
    currency: str


def schedule() -> PriceSchedule | None:
    try:
        return load_prices(default_prices_path())
    except PolicyError:
        return None


def ceiling_for(services: object, kind: str) -> Ceiling | None:  # noqa: ARG001 - one schedule per deployment
    prices = schedule()
    if prices is None or kind not in prices.ceilings:
        return None
    return Ceiling(prices.ceilings[kind], prices.currency)  # type: ignore[index]


def published() -> dict | None:
    """The schedule as /public/prices shows it (amounts as exact strings)."""
    prices = schedule()
    if prices is None:
        return None
    return {
        "currency": prices.currency,
        "unit_prices": {
            "monthly_base": str(prices.monthly_base), "per_query": str(prices.per_query),
            "per_epsilon": str(prices.per_epsilon), "per_export": str(prices.per_export),
            "per_notebook_hour": str(prices.per_notebook_hour),
        },
        "ceilings": {k: str(v) for k, v in sorted(prices.ceilings.items())},
        "public_welfare": prices.public_welfare,
        "public_welfare_conditions": {
            "purpose_categories": list(prices.public_welfare_conditions.purpose_categories),
            "products_free_to_public": prices.public_welfare_conditions.products_free_to_public,
        },
        "rules": [
            "The monthly base is prorated by the days a grant is billable.",
            "Nothing is billed for days a grant is suspended, revoked, out of policy, not yet applied or outside "
            "its validity period.",
            "A change of a grant's terms applies from the moment it is made, never before.",
            "Public-welfare use is free when the grant's purpose category is listed and its products are free to "
            "the public.",
            "Export requests withdrawn by the authority are never billed.",
            "Operators' prices for products and services may not exceed the ceilings.",
        ],
    }
