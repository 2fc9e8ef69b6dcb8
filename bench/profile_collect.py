"""Profile collections with cProfile: where the exporter's CPU goes, function by function.

The simulator runs in its own process (``cec-phone-exporter simulate``), so the
profile holds only the client side: ``CecClient.read_snapshot`` on an asyncio loop in
this process, as the exporter runs it, after one warm-up collection (token,
connections).

Usage::

    .venv/bin/python bench/profile_collect.py [--phones 20000 --latency-ms 40 \\
        --concurrency 8 --collections 5 --top 25 --sort tottime --out profile.pstats]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import math
import pstats
import sys
import time

import _path  # noqa: F401  (tests/ on sys.path)
from support import APP_KEY, APP_SECRET, PAGE_SIZE
from support_procs import simulate

from exporter.cec import CecClient
from exporter.scrape.api_metrics import ApiMetrics
from exporter.settings import parse_config


def client_for(url: str, concurrency: int, phones: int) -> CecClient:
    entry = {
        "name": "bench",
        "base_url": url,
        "app_key": APP_KEY,
        "app_secret": APP_SECRET,
        "max_concurrency": concurrency,
        "max_pages": max(1000, math.ceil(phones / PAGE_SIZE)),
        "timeout_seconds": 600,
    }
    return CecClient(parse_config({"targets": [entry]}).targets[0], ApiMetrics().observer("bench"))


async def collections(client: CecClient, count: int, profile: cProfile.Profile) -> float:
    """Wall seconds of ``count`` profiled collections, after one that is not profiled."""
    await client.read_snapshot()
    started = time.perf_counter()
    profile.enable()
    for _ in range(count):
        await client.read_snapshot()
    profile.disable()
    await client.aclose()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--phones", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=float, default=40.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--collections", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--sort", default="tottime", help="a pstats sort key")
    parser.add_argument("--out", help="also write the raw profile here (for snakeviz etc.)")
    opts = parser.parse_args()
    profile = cProfile.Profile(time.process_time)  # CPU: waiting and preemption are no cost
    with simulate(opts.phones, opts.latency_ms) as sim:
        client = client_for(sim.url, opts.concurrency, opts.phones)
        cpu_before = time.process_time()
        wall = asyncio.run(collections(client, opts.collections, profile))
        cpu = time.process_time() - cpu_before
    if opts.out:
        profile.dump_stats(opts.out)
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    stats.sort_stats(opts.sort).print_stats(opts.top)
    per_10k = 10_000 / (opts.phones * opts.collections)
    print(
        f"{opts.collections} collections of {opts.phones:,} phones, C={opts.concurrency}, "
        f"L={opts.latency_ms:g} ms: wall {wall:.2f} s, CPU {cpu:.2f} s including the "
        f"warm-up and profiler overhead (~{cpu * 1000 * per_10k:.0f} ms per 10,000 phones)"
    )
    print(text.getvalue().split("\n", 4)[-1].strip("\n"))  # drop pstats' header lines
    return 0


if __name__ == "__main__":
    sys.exit(main())
