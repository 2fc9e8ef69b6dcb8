"""The collection path's invariants, long: many seeded random runs, the budget one included.

``tests/collection_invariants.py`` is the machinery (and its docstring the list of
invariants); ``tests/test_invariants.py`` runs one short seed in CI. This script runs
``--seeds`` seeds of ``--steps`` steps each, with the budget invariant (a rate budget
that fits k whole collections gives at least 0.8 k targets up) and ``--more-targets``
extra targets on the first vendor app so that the budget has several to share, and
prints what it checked, how often, and every violation with its seed and step.

Usage::

    .venv/bin/python bench/invariants.py [--seeds 5 --first-seed 1 --steps 300]
    .venv/bin/python bench/invariants.py --no-budget --steps 1000

Exits 1 when any invariant was broken.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import _path  # noqa: F401  (tests/ on sys.path)
from collection_invariants import Run
from support_procs import load, machine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--more-targets", type=int, default=6, help="on the first app")
    parser.add_argument("--no-budget", action="store_true", help="leave the budget one out")
    opts = parser.parse_args()
    started, load_before = time.time(), load()
    checked: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    broken: list[str] = []
    for seed in range(opts.first_seed, opts.first_seed + opts.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            run = Run(Path(tmp), seed, not opts.no_budget, opts.more_targets)
            try:
                for index in range(opts.steps):
                    try:
                        run.step(index)
                    except AssertionError as err:
                        broken.append(str(err))
                        print(f"BROKEN {err}\n", flush=True)
            finally:
                run.close()
            checked.update(run.checked)
            steps.update(run.steps)
            print(f"seed {seed}: {sum(run.steps.values())} steps", flush=True)
    print(f"machine: {machine()}")
    print(f"run: {time.time() - started:.0f} s; load average {load_before} -> {load()}")
    print(f"command: .venv/bin/python bench/invariants.py {' '.join(sys.argv[1:])}".rstrip())
    kinds = ", ".join(f"{kind} {n}" for kind, n in steps.most_common())
    print(f"steps taken: {sum(steps.values())} ({kinds})")
    print("invariants checked:")
    for name, n in checked.most_common():
        print(f"  {name:<14} {n:>7}")
    print(f"broken: {len(broken)}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
