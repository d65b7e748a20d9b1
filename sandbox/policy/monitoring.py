"""Alert rules over the audit stream (``policies/monitoring.yaml``; every field has a default).

```yaml
refused_burst:     {threshold: 20, window_minutes: 10, suspend: false}
id_probing:        {threshold: 10, window_minutes: 10, suspend: true}
bad_tokens:        {threshold: 10, window_minutes: 5}
budget_burn:       {fraction: 0.25, window_minutes: 60, suspend: false}
export_checks_failed: {threshold: 1, window_minutes: 60, suspend: false}
spawn_outside_hours: {start_hour: 7, end_hour: 20, timezone: UTC, suspend: false}
```
"""

from __future__ import annotations

import zoneinfo
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sandbox.policy.loader import _read_yaml, parse_model

MONITORING_FILE = "monitoring.yaml"
ID_PROBE_CODES = ("id_column", "column_not_granted", "unknown_column")


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    window_minutes: int = Field(default=10, ge=1, le=7 * 24 * 60, description="the sliding window")
    suspend: bool = Field(default=False, description="suspend the grant concerned when the rule fires")


class BurstRule(_Rule):
    threshold: int = Field(default=20, ge=1, le=100_000, description="events within the window that raise it")


class RefusedBurstRule(BurstRule):
    suspend: bool = Field(default=False, description="a refused request may name anyone's grant: always false")

    @field_validator("suspend")
    @classmethod
    def _no_grant(cls, v: bool) -> bool:
        if v:
            raise ValueError("a refused request may name any grant, so this rule cannot suspend one")
        return v


class IdProbingRule(BurstRule):
    threshold: int = Field(default=10, ge=1, le=100_000)
    suspend: bool = True
    codes: tuple[str, ...] = Field(default=ID_PROBE_CODES, description="refusal codes that count as probing")


class BadTokenRule(BurstRule):
    threshold: int = Field(default=10, ge=1, le=100_000)
    window_minutes: int = Field(default=5, ge=1, le=7 * 24 * 60)
    suspend: bool = Field(default=False, description="no grant is concerned: always false")

    @field_validator("suspend")
    @classmethod
    def _no_grant(cls, v: bool) -> bool:
        if v:
            raise ValueError("bad tokens name no grant, so this rule cannot suspend one")
        return v


class BudgetBurnRule(_Rule):
    fraction: float = Field(default=0.25, gt=0, le=1, description="share of the grant's budget spent within the window")
    window_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60)


class ExportFailRule(BurstRule):
    threshold: int = Field(default=1, ge=1, le=100_000)
    window_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60)


class HoursRule(_Rule):
    start_hour: int = Field(default=7, ge=0, le=23, description="first hour of working time")
    end_hour: int = Field(default=20, ge=1, le=24, description="working time ends at this hour")
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class MonitoringPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    refused_burst: RefusedBurstRule = RefusedBurstRule()
    id_probing: IdProbingRule = IdProbingRule()
    bad_tokens: BadTokenRule = BadTokenRule()
    budget_burn: BudgetBurnRule = BudgetBurnRule()
    export_checks_failed: ExportFailRule = ExportFailRule()
    spawn_outside_hours: HoursRule = HoursRule()


def load_monitoring(policies_dir: Path) -> MonitoringPolicy:
    """``<policies_dir>/monitoring.yaml``, or the defaults when there is none."""
    path = Path(policies_dir) / MONITORING_FILE
    if not path.is_file():
        return MonitoringPolicy()
    return parse_model(MonitoringPolicy, _read_yaml(path), str(path))
