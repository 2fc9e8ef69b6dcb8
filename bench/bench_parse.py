"""Benchmark the parsing edge: CPU to parse and fold one 100-phone queryPhone page.

No network, no processes: the simulator's own page bodies (``page_result``) are
encoded once, then ``parse_page`` and ``SnapshotBuilder.add`` run over them in
this process, timed with ``time.process_time`` (CPU, not wall: a loaded machine
slows the run but barely moves the figure). Best of ``--repeat`` passes.

Usage::

    .venv/bin/python bench/bench_parse.py [--phones 20000 --repeat 7]

Prints microseconds per page for each wire shape the simulator speaks, and for
the json.loads of the same body as a yardstick measured in the same run (the
last column: parse alone / json.loads); then what comparing two such
collections phone by phone (the change counters) costs per 100 phones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import _path  # noqa: F401  (tests/ on sys.path)
from support import PAGE_SIZE

from exporter.cec.parse import parse_page
from exporter.cec.snapshot import SnapshotBuilder
from exporter.simulator.model import SimConfig, page_result

SHAPES = {
    "single, numbers as numbers": {"mode": "single"},
    "single, numbers as strings": {"mode": "single", "numbers_as_strings": True},
    "pool, 2 nodes": {"mode": "pool"},
    "legacy": {"mode": "legacy"},
}


def bodies(phones: int, **config: object) -> list[bytes]:
    """Every page of a ``phones``-phone account, as the simulator encodes it."""
    sim = SimConfig(phones=phones, **config)  # type: ignore[arg-type]
    return [
        json.dumps(
            {"retCode": "0", "retMsg": "", "result": page_result(sim, offset, PAGE_SIZE)}
        ).encode()
        for offset in range(0, phones, PAGE_SIZE)
    ]


def per_page_us(pages: list[bytes], run: Callable[[list[bytes]], object], repeat: int) -> float:
    """Best CPU microseconds per page of ``run(pages)`` over ``repeat`` passes."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        run(pages)
        best = min(best, time.process_time() - started)
    return best / len(pages) * 1e6


def parse_and_fold(pages: list[bytes]) -> object:
    builder = SnapshotBuilder()
    # As the client does once it trusts total; getattr: older commits, timed for comparison,
    # have no expect().
    expect = getattr(builder, "expect", None)
    if expect is not None:
        expect(len(pages) * PAGE_SIZE)
    for body in pages:
        builder.add(parse_page(body))
    return builder.build()


def compare_us(pages: list[bytes], repeat: int) -> float | None:
    """Best CPU microseconds per 100 phones to compare two collections of ``pages``.

    None for an older commit without change tracking (timed for comparison).
    """
    try:
        from exporter.cec.roster import compare
    except ImportError:
        return None
    before, after = (getattr(parse_and_fold(pages), "roster", None) for _ in range(2))
    assert before is not None
    assert after is not None
    return per_page_us(pages, lambda _: compare(before, after), repeat)


def again_us(pages: list[bytes], repeat: int) -> float | None:
    """Best CPU microseconds per page to parse and fold ``pages`` when the last collection
    listed the same: its result is taken over, nothing is de-duplicated again.

    None for an older commit, which de-duplicates every collection.
    """
    after = getattr(SnapshotBuilder, "after", None)
    if after is None:
        return None
    first = SnapshotBuilder()
    for body in pages:
        first.add(parse_page(body))
    last = first.deduplicated

    def fold_again(pages: list[bytes]) -> object:
        builder = after(last)
        for body in pages:
            builder.add(parse_page(body))
        return builder.build()

    return per_page_us(pages, fold_again, repeat)


def parse_only(pages: list[bytes]) -> object:
    return [parse_page(body) for body in pages]


def json_loads(pages: list[bytes]) -> object:
    return [json.loads(body) for body in pages]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--phones", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    opts = parser.parse_args()
    print(f"CPU us per {PAGE_SIZE}-phone page, best of {opts.repeat} passes over {opts.phones:,}")
    print(f"{'shape':<28} {'parse+fold':>10} {'parse':>7} {'json.loads':>10} {'parse/json':>10}")
    for name, config in SHAPES.items():
        pages = bodies(opts.phones, **config)
        figures = (
            per_page_us(pages, run, opts.repeat) for run in (parse_and_fold, parse_only, json_loads)
        )
        both, parse, loads = figures
        print(f"{name:<28} {both:>10.0f} {parse:>7.0f} {loads:>10.0f} {parse / loads:>9.2f}x")
    again = again_us(bodies(opts.phones), opts.repeat)
    if again is not None:
        print(f"{'the same list again':<28} {again:>10.0f}  (taken over: not de-duplicated)")
    compared = compare_us(bodies(opts.phones), opts.repeat)
    if compared is not None:
        print(f"{'compare with the last one':<28} {compared:>10.0f}  (change counters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
