"""Settings of the authority's oversight duties (directory, cases, monitoring) and a state-dir key.

Every setting has a default and help text (``HELP``); ``sandbox serve`` exposes the ones an
operator of the gateway sets (``--alert-webhook``) and reads the monitoring rules from
``<policies>/monitoring.yaml`` when that file exists.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.policy.monitoring import MonitoringPolicy

HELP = {
    "public_filings_per_client_hour": "Public requests, feedback and complaints accepted per client address per hour.",
    "public_filings_per_hour": "Public filings accepted per hour from all clients together.",
    "public_filings_network_share": "The largest share of that hourly total one network (IPv4 /24, IPv6 /64) "
                                    "may take; clients are IPv4 addresses and IPv6 /64s.",
    "max_case_text": "Longest message (characters) a case may carry; the subject is capped at 200.",
    "alert_webhook_url": "If set, every alert is also POSTed there as JSON (env SANDBOX_ALERT_WEBHOOK).",
    "alert_webhook_timeout": "Seconds to wait for the webhook before giving up (the alert is stored anyway).",
    "monitor_horizon_hours": "Audit entries older than this raise no alert when first scanned (e.g. the history "
                             "present when monitoring is installed, or a scan that ran late).",
    "public_base_url": "Absolute URL the public reaches the gateway at (e.g. https://data.example.gov), used for "
                       "the DCAT @id and download URLs; unset: they are relative. Env SANDBOX_PUBLIC_BASE_URL, "
                       "`sandbox serve --public-base-url`.",
    "monitoring": "The alert rules (thresholds, windows, which rules suspend a grant); policies/monitoring.yaml.",
}


@dataclass
class OversightSettings:
    public_filings_per_client_hour: int = 5
    public_filings_per_hour: int = 200
    public_filings_network_share: float = 0.1
    max_case_text: int = 4000
    alert_webhook_url: str | None = field(default_factory=lambda: os.environ.get("SANDBOX_ALERT_WEBHOOK") or None)
    alert_webhook_timeout: float = 3.0
    monitor_horizon_hours: float = 24.0
    public_base_url: str | None = field(default_factory=lambda: os.environ.get("SANDBOX_PUBLIC_BASE_URL") or None)
    monitoring: MonitoringPolicy = field(default_factory=MonitoringPolicy)


def settings_of(services: object) -> OversightSettings:
    """The oversight settings of a Services (defaults when an older Settings has none)."""
    found = getattr(getattr(services, "settings", None), "oversight", None)
    return found if isinstance(found, OversightSettings) else OversightSettings()


def state_key(state_dir: Path, name: str) -> bytes:
    """A 32-byte secret kept in the state directory (created once, mode 0600, first writer wins)."""
    path = Path(state_dir) / f"{name}.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink(missing_ok=True)
        return path.read_bytes()
