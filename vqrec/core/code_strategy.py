"""How a target domain's items get their codes: the one list of strategies and the default.

A module of its own, with no imports, so the DAG files, the run plans and the codes stage
all read the same names without importing faiss at DAG-parse time.
"""

from __future__ import annotations

# "domain": the target gets its own strict OPQ quantizer (its codes are then aligned with
# the pre-trained tables by the matched assignment). On real data (pre-train Games +
# Beauty, transfer to Scientific) it beat the shared quantizer on every metric (test
# NDCG@10 0.0621 vs 0.0579). "shared": the frozen pre-training quantizer codes the target;
# no fit (the cheapest backfill), and what a domain too small for its own OPQ must use.
STRATEGIES = ("domain", "shared")
DEFAULT_STRATEGY = "domain"


def check_strategy(strategy: str, what: str = "code_strategy") -> str:
    """``strategy`` if it is one of :data:`STRATEGIES`, else a one-line ValueError."""
    if strategy not in STRATEGIES:
        raise ValueError(f"{what} must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    return strategy
