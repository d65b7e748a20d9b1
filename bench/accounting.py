"""How many queries of a fixed 95% half-width fit in one grant under each accounting.

    python bench/accounting.py [--epsilon 10] [--delta 1e-6]

For COUNT(*) (sensitivity = the contribution bound k), the per-query cost that gives a 95%
half-width of h is found by the same planner the gateway uses for ``POST /v1/plan``; then
pure accounting fits floor(epsilon / epsilon_q) queries, zCDP floor(rho_total / rho_q) with
rho_total from OpenDP's conversion of (epsilon, delta). Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox.dp.accounting import epsilon_to_rho, rho_to_epsilon  # noqa: E402
from sandbox.dp.planner import cost_for_halfwidth  # noqa: E402
from sandbox.policy.models import Dataset  # noqa: E402
from sandbox.sql.plan import Aggregate, QueryPlan  # noqa: E402


def _count_query() -> QueryPlan:
    return QueryPlan(dataset="d", columns=("n",), aggregates=(Aggregate("count", None, "n"),), group_keys=(),
                     where=None)


def _dataset(k: int) -> Dataset:
    return Dataset.model_validate({
        "id": "d", "title": "d", "source": "d.parquet", "classification": "L2", "privacy_unit": "pid",
        "max_rows_per_unit": k, "columns": {"pid": {"type": "id"}, "x": {"type": "int", "bounds": [0, 1]}},
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epsilon", type=float, default=10.0)
    ap.add_argument("--delta", type=float, default=1e-6)
    args = ap.parse_args()
    rho_total = epsilon_to_rho(args.epsilon, args.delta)
    print(f"grant budget (epsilon={args.epsilon:g}, delta={args.delta:g}) = rho {rho_total:.6f} by OpenDP's "
          f"conversion (back: epsilon {rho_to_epsilon(rho_total, args.delta):.6f})")
    print(f"{'query':<22}{'half-width':>11}{'eps/query':>12}{'pure: n':>9}{'rho/query':>12}{'zcdp: n':>9}{'ratio':>7}")
    for k in (1, 5):
        for h in (10, 50, 100):
            eps_q = cost_for_halfwidth(_count_query(), _dataset(k), h, "pure")
            rho_q = cost_for_halfwidth(_count_query(), _dataset(k), h, "zcdp")
            n_pure = int(args.epsilon / eps_q + 1e-9)
            n_zcdp = int(rho_total / rho_q + 1e-9)
            print(f"{f'COUNT(*), bound {k}':<22}{h:>11}{eps_q:>12.6f}{n_pure:>9}{rho_q:>12.8f}{n_zcdp:>9}"
                  f"{n_zcdp / max(n_pure, 1):>7.1f}")


if __name__ == "__main__":
    main()
