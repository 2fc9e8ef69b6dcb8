"""Benchmark how little one target costs another: huge vendor text, per-phone history.

Runs simulators in this process and one ``cec-phone-exporter serve`` process per figure
(logging at info, to a file) on loopback, and prints:

* a healthy target's collection time (250 phones, simulator latency 100 ms) alone, and
  beside a target whose vendor answers every page with a 16 MB ``retMsg``: the median
  of ``--scrapes`` scrapes with a 1.5 s scrape timeout, how many were up, the
  exporter's log bytes and RSS growth per scrape;
* the exporter's RSS over ten scrapes of a ``per_phone_metrics`` target of
  ``--phones`` phones (the landing page's history of ten collections).

Usage::

    python bench/bench_isolation.py [--scrapes 5 --ret-msg-bytes 16000000 --phones 50000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import psutil
import yaml
from bench_collect import MIB, REPO, free_port, load, machine, value, wait_http

from exporter.simulator import Fault, SimConfig, Simulator

SCRAPE_TIMEOUT = 1.5


@dataclass
class Served:
    """A ``serve`` process, a client to scrape it, and the file its log goes to."""

    proc: psutil.Process
    url: str
    http: httpx2.Client
    log: Path

    def metrics(self, timeout_header: float | None = None) -> str:
        headers = {}
        if timeout_header is not None:
            headers["X-Prometheus-Scrape-Timeout-Seconds"] = str(timeout_header)
        response = self.http.get(self.url + "/metrics", headers=headers)
        response.raise_for_status()
        return response.text

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)


@contextmanager
def served(targets: list[dict[str, Any]], workdir: Path) -> Iterator[Served]:
    """A fresh exporter for ``targets``, logging at info to a file of its own."""
    config = workdir / f"config-{free_port()}.yml"
    config.write_text(yaml.safe_dump({"targets": targets}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = config.with_suffix(".log")
    args = ["serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", *args],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_http(url + "/-/healthy")
        with httpx2.Client(timeout=120) as http:
            yield Served(psutil.Process(proc.pid), url, http, log)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def entry(sim: Simulator, name: str, **settings: Any) -> dict[str, Any]:
    config = sim.config
    target = {"name": name, "base_url": sim.url, "app_key": config.app_key}
    return {**target, "app_secret": config.app_secret, **settings}


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
        rss, log = exp.rss(), exp.log.stat().st_size
        durations, up = [], 0
        for _ in range(scrapes):
            text = exp.metrics(SCRAPE_TIMEOUT)
            up += value(text, 'cec_up{target="healthy"}') == 1
            duration = value(text, 'cec_collection_duration_seconds{target="healthy"}')
            durations.append(duration if duration is not None else float("nan"))
        return Beside(
            durations,
            up,
            (exp.log.stat().st_size - log) / scrapes,
            (exp.rss() - rss) / scrapes,
        )


def history_rss(sim: Simulator, workdir: Path) -> list[int]:
    """RSS after each of ten scrapes of one per-phone target."""
    target = entry(sim, "big", per_phone_metrics=True, timeout_seconds=120)
    with served([target], workdir) as exp:
        rss = []
        for _ in range(10):
            assert value(exp.metrics(), 'cec_up{target="big"}') == 1, "the big target failed"
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
        alone = healthy_beside([entry(healthy, "healthy")], opts.scrapes, workdir)
        pair = [entry(huge, "huge"), entry(healthy, "healthy")]
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
