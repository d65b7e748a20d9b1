"""The price schedule (``policies/prices.yaml``) that usage statements are priced with.

Amounts are decimals in ``currency`` per unit; write them quoted in YAML (``"0.50"``) so no float
rounding ever creeps in. ``public_welfare: free`` means grants whose ``use`` is ``public_welfare``
are metered like any other but charged nothing; ``standard`` prices them like commercial grants.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sandbox.errors import PolicyError
from sandbox.policy.loader import _read_yaml, parse_model

PRICES_FILE = "prices.yaml"
REPO_POLICIES = Path(__file__).resolve().parents[2] / "policies"


class PublicWelfareConditions(BaseModel):
    """When a grant declared ``use: public_welfare`` is free: its declared purpose category is one of
    these, and (if required) every product its operator declared and the authority approved is free
    to the public. A grant that does not meet them is billed like a commercial one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    purpose_categories: tuple[str, ...] = Field(
        default=("public_health", "education", "social_assistance", "environment", "public_safety",
                 "scientific_research"),
        description="the grant's `purpose_category` must be one of these")
    products_free_to_public: bool = Field(default=True, description="approved products must be free to the public")


class PriceSchedule(BaseModel):
    """Unit prices for one month of use of one grant, the ceilings of operators' prices, and the
    conditions of free public-welfare use. Published at /public/prices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str = Field(default="CNY", description="ISO 4217 code; CNY unless set")
    monthly_base: Decimal = Field(ge=0, description="per grant in force during the month")
    per_query: Decimal = Field(ge=0, description="per charged DP query; cached replays are free")
    per_epsilon: Decimal = Field(ge=0, description="per unit of epsilon spent")
    per_export: Decimal = Field(ge=0, description="per export request submitted for review")
    per_notebook_hour: Decimal = Field(ge=0, description="per hour of notebook server time")
    public_welfare: Literal["free", "standard"] = "free"
    public_welfare_conditions: PublicWelfareConditions = PublicWelfareConditions()
    ceilings: dict[Literal["product", "service"], Decimal] = Field(
        default_factory=dict, description="the most an operator may charge for one product or service")

    @field_validator("ceilings")
    @classmethod
    def _ceilings_positive(cls, v: dict) -> dict:
        for kind, amount in v.items():
            if amount < 0:
                raise ValueError(f"the ceiling for {kind} must be zero or more")
        return v

    @field_validator("currency")
    @classmethod
    def _currency_code(cls, v: str) -> str:
        if len(v) != 3 or not v.isalpha() or not v.isupper():
            raise ValueError("must be a three-letter upper-case ISO 4217 code such as EUR")
        return v


def load_prices(path: Path) -> PriceSchedule:
    """Read a price schedule; a missing or invalid file raises PolicyError naming the file and field."""
    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"{path}: price schedule not found")
    return parse_model(PriceSchedule, _read_yaml(path), str(path))


def default_prices_path() -> Path:
    """``$SANDBOX_POLICIES/prices.yaml`` when that variable is set, else the repository's ``policies/``."""
    root = os.environ.get("SANDBOX_POLICIES")
    return (Path(root) if root else REPO_POLICIES) / PRICES_FILE
