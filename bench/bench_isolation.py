"""Benchmark how little one target costs another: huge vendor text, per-phone history.

Runs simulators in this process and one ``cec-phone-exporter serve`` process per figure
(logging at info, its output kept) on loopback, and prints:

* a healthy target's collection time (250 phones, simulator latency 100 ms) alone, and
  beside a target whose vendor answers every page with a 16 MB ``retMsg``: the median
  of ``--scrapes`` scrapes with a 1.5 s scrape timeout, how many were up, the
  exporter's log bytes and RSS growth per scrape;
* the exporter's RSS over ten scrapes of a ``per_phone_metrics`` target of
  ``--phones`` phones (the landing page's history of ten collections).

Usage::

    .venv/bin/python bench/bench_isolation.py [--scrapes 5 --ret-msg-bytes 16000000 --phones 50000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _path  # noqa: F401  (tests/ on sys.path)
import httpx2
from support import MIB, sample, scrape, target_entry
from support_procs import ServeProcess, load, machine, serve_config

from exporter.simulator import Fault, SimConfig, Simulator

SCRAPE_TIMEOUT = 1.5


@dataclass
class Served:
    """A ``serve`` process, logging at info, and a client to scrape it."""

    process: ServeProcess
    http: httpx2.Client

    def metrics(self, timeout_header: float | None = None) -> str:
        return scrape(self.http, self.process.url + "/metrics", timeout_header)[1]

    def rss(self) -> int:
        return int(self.process.ps.memory_info().rss)

    def log_bytes(self) -> int:
        return len(self.process.output.encode())


@contextmanager
def served(targets: list[dict[str, Any]], workdir: Path) -> Iterator[Served]:
    """A fresh exporter for ``targets``, logging at info (its output kept)."""
    with serve_config({"targets": targets}, workdir) as process, httpx2.Client(timeout=120) as http:
        yield Served(process, http)


@dataclass
class Beside:
    """What the healthy target saw over the scrapes of one run."""

    durations: list[float]
    up: int
    log_bytes_per_scrape: float
    rss_growth_per_scrape: float


def healthy_beside(targets: list[dict[str, Any]], scrapes: int, workdir: Path) -> Beside:
    with served(targets, workdir) as exp:
        exp.metrics(SCRAPE_TIMEOUT)  # warm: tokens, connections
        rss, log = exp.rss(), exp.log_bytes()
        durations, up = [], 0
        for _ in range(scrapes):
            text = exp.metrics(SCRAPE_TIMEOUT)
            up += sample(text, "cec_up", target="healthy") == 1
            duration = sample(text, "cec_collection_duration_seconds", target="healthy")
            durations.append(duration if duration is not None else float("nan"))
        return Beside(
            durations,
            up,
            (exp.log_bytes() - log) / scrapes,
            (exp.rss() - rss) / scrapes,
        )


def history_rss(sim: Simulator, workdir: Path) -> list[int]:
    """RSS after each of ten scrapes of one per-phone target."""
    target = target_entry(sim, "big", per_phone_metrics=True, timeout_seconds=120)
    with served([target], workdir) as exp:
        rss = []
        for _ in range(10):
            assert sample(exp.metrics(), "cec_up", target="big") == 1, "the big target failed"
            rss.append(exp.rss())
        return rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scrapes", type=int, default=5)
    parser.add_argument("--ret-msg-bytes", type=int, default=16_000_000)
    parser.add_argument("--phones", type=int, default=50_000)
    opts = parser.parse_args()
    print(machine())
    print(f"load average at start: {load()}")
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        healthy = stack.enter_context(Simulator(SimConfig(phones=250, latency_ms=100)))
        huge = stack.enter_context(Simulator(SimConfig(phones=10)))
        huge.set_faults([Fault("huge_ret_msg", value=opts.ret_msg_bytes)])
        big = stack.enter_context(Simulator(SimConfig(phones=opts.phones, tenants=5)))
        alone = healthy_beside([target_entry(healthy, "healthy")], opts.scrapes, workdir)
        pair = [target_entry(huge, "huge"), target_entry(healthy, "healthy")]
        beside = healthy_beside(pair, opts.scrapes, workdir)
        rss = history_rss(big, workdir)
    median_alone = statistics.median(alone.durations)
    median_beside = statistics.median(beside.durations)
    n = opts.scrapes
    rows = [
        ("healthy target alone: median collection", f"{median_alone:.3f}s, up {alone.up}/{n}"),
        (
            f"beside a {opts.ret_msg_bytes:,}-byte retMsg: median collection",
            f"{median_beside:.3f}s, up {beside.up}/{n}",
        ),
        ("beside / alone", f"{median_beside / median_alone:.2f}x"),
        (
            "exporter log per scrape, alone / beside",
            f"{alone.log_bytes_per_scrape:,.0f} B / {beside.log_bytes_per_scrape:,.0f} B",
        ),
        ("exporter RSS growth per scrape, beside", f"{beside.rss_growth_per_scrape / MIB:.1f} MiB"),
        (
            f"per-phone target ({opts.phones:,} phones): RSS after scrapes 1..10",
            " ".join(f"{r / MIB:.0f}" for r in rss) + " MiB",
        ),
        ("RSS growth from scrape 2 to 10", f"{(rss[-1] - rss[1]) / MIB:.1f} MiB"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, figure in rows:
        print(f"{name:<{width}}  {figure}")
    print(f"load average at end: {load()}")
    return 0 if beside.up == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
