"""The collection path against its invariants: a short seeded random run (issue 23, B).

``collection_invariants.Run`` drives real simulators and a real ``serve`` process through
roster edits, faults, token revocations, reloads and rounds of concurrent scrapes with
random timeouts, and checks after each step what must always hold (its docstring lists
them), the budget one included. ``bench/invariants.py`` runs it longer, with more seeds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from collection_invariants import Run

SEEDS = [int(seed) for seed in os.environ.get("CEC_INVARIANT_SEEDS", "23").split(",")]
STEPS = int(os.environ.get("CEC_INVARIANT_STEPS", "50"))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.slow
def test_the_collection_path_keeps_its_invariants(tmp_path: Path, seed: int) -> None:
    run = Run(tmp_path, seed, check_budget=True, more_targets=6)
    try:
        for index in range(STEPS):
            run.step(index)
    finally:
        run.close()
    assert run.steps["round"] >= 10, run.steps
    invariants = ("in time", "counts", "changes", "down is bare", "no secret", "monotone", "budget")
    for invariant in invariants:
        assert run.checked[invariant], f"{invariant} never checked in {STEPS} steps"
