"""The debug probe's report: why a target is up or down, in plain text.

As blackbox_exporter's ``debug=true``: the collection's log (each request and token
decision), the changes since the previous success, the metrics the probe returns,
and the target's effective config with every secret redacted. ``/probe?debug=true``
and ``scrape --debug`` print it.
"""

from __future__ import annotations

from prometheus_client.exposition import generate_latest

from exporter.cec import CollectionTrace, TargetConfig
from exporter.cec.text import ERROR_TEXT_CHARS, clip, utc
from exporter.cec.trace import RequestRecord
from exporter.cec.upstream import group_rates
from exporter.scrape import Collection, Exporter
from exporter.scrape.exporter import LOOP_GRACE_SECONDS
from exporter.settings import Config, redacted_target


def describe_result(collection: Collection) -> str:
    """``UP after 0.214s: 3 pages, 250 phone records`` or ``DOWN after …: <error>``."""
    if collection.up and collection.snapshot is not None:
        return (
            f"UP after {collection.duration:.3f}s: {collection.snapshot.pages} pages, "
            f"{collection.phone_records} phone records"
        )
    why = f" (reason {collection.reason})" if collection.reason else ""
    error = clip(collection.error or "?", ERROR_TEXT_CHARS)
    return f"DOWN after {collection.duration:.3f}s{why}: {error}"


def change_lines(collection: Collection) -> list[str]:
    """The phones this collection found changed since the previous success, per tenant."""
    report = collection.changes
    if report is None:
        return ["none compared: a failed collection keeps the last success as the baseline"]
    found = report.found
    if found is None:
        return ["none counted: this is the baseline (first success since start or a reload)"]
    per_tenant: dict[str, list[str]] = {}
    for (tenant, was, now), n in sorted(found.status.items()):
        per_tenant.setdefault(tenant, []).append(f"{was} -> {now} {n}")
    for (tenant, change), n in sorted(found.allocation.items()):
        per_tenant.setdefault(tenant, []).append(f"{change} {n}")
    lines = [f"tenant {tenant!r}: {', '.join(kinds)}" for tenant, kinds in per_tenant.items()]
    lines += [f"e.g. {example}" for example in report.examples]
    return lines or ["no phone changed"]


def _request_line(r: RequestRecord) -> str:
    where = "" if r.offset is None else f"offset={r.offset} "
    status = "-" if r.status is None else str(r.status)
    code = "" if r.ret_code is None else f" retCode={r.ret_code}"
    message = "" if not r.ret_msg else f" retMsg={r.ret_msg!r}"
    waited = f" waited={r.waited:.3f}s" if r.waited >= 0.001 else ""
    return (
        f"{r.api} {where}try={r.attempt} status={status}{code} duration={r.seconds:.3f}s "
        f"outcome={r.outcome}{waited}{message}"
    )


def trace_lines(trace: CollectionTrace) -> list[str]:
    """The log in time order: ``+0.012s queryPhone offset=100 try=1 status=200 …``."""
    entries = [(r.at, 1, _request_line(r)) for r in trace.requests]
    entries += [(at, 0, text) for at, text in trace.notes]
    lines = [f"+{at:.3f}s {text}" for at, _, text in sorted(entries, key=lambda e: e[:2])]
    if trace.dropped:
        lines.append(f"... {trace.dropped} more entries not kept")
    return lines


def effective_config(target: TargetConfig, config: Config) -> list[str]:
    """``key: value`` lines of the settings in force (as ``/config`` shows them: secrets and
    the app key redacted), then what the target shares with others."""
    lines = [f"{key}: {value}" for key, value in redacted_target(target).items()]
    shared = [t.name for t in config.targets if t.base_url == target.base_url]
    rates = group_rates(config.targets)
    rate = rates.get((target.base_url, target.app_key), 0.0)
    lines.append(f"effective requests_per_second of its app (shared budget): {rate:g}")
    lines.append(f"targets sharing its connection pool (same base_url): {len(shared)}")
    lines.append(f"max_inflight_requests (all targets): {config.max_inflight_requests}")
    return lines


async def debug_report(
    exporter: Exporter, name: str, scrape_timeout: float | None = None
) -> tuple[str, bool]:
    """Report on a collection of ``name``; returns (text, up).

    Like a scrape it honours ``cache_ttl_seconds`` (the cached collection's log is shown,
    and said to be) and joins a collection in flight, so debug probes cost the vendor
    no more than scrapes do: at most one fresh collection per target at a time.
    """
    target = exporter.config.target(name)
    if target is None:
        raise KeyError(name)
    scrape = await exporter.scrape(name, scrape_timeout)
    metrics = generate_latest(scrape.registry).decode()
    lines = [f"Debug probe of target {name!r}"]
    up = False
    if scrape.collections:
        collection = scrape.collections[0]
        up = collection.up
        given = scrape.deadlines[name] - scrape.started
        header = scrape_timeout or "none"
        lines.append(f"Started: {utc(collection.started_wall)}")
        lines.append(f"Deadline: {given:.2f}s (scrape timeout header: {header})")
        lines.append(f"Result: {describe_result(collection)}")
        if collection.age > 0:
            lines.append(
                f"Served from the cache (cache_ttl_seconds: {target.cache_ttl_seconds:g}), "
                f"age {collection.age:.3f}s: the log below is that collection's"
            )
        lines += ["", "Changes since the previous success:"]
        lines += [f"  {line}" for line in change_lines(collection)]
        lines += ["", "Collection log:"]
        if collection.trace is None:
            lines.append("  (no collection ran for this probe: it joined one that did not finish)")
        else:
            lines += [f"  {line}" for line in trace_lines(collection.trace)]
    else:
        lines.append("Result: DOWN: the collection loop did not answer in time")
    lines += ["", "Metrics that would be returned:", metrics.rstrip("\n"), ""]
    lines.append("Effective config (secrets redacted):")
    lines += [f"  {line}" for line in effective_config(target, exporter.config)]
    return "\n".join(lines) + "\n", up


def debug_report_blocking(exporter: Exporter, name: str) -> tuple[str, bool]:
    """``debug_report`` from outside the loop (``scrape --debug``)."""
    target = exporter.config.target(name)
    timeout = (target.timeout_seconds if target else 0) + LOOP_GRACE_SECONDS
    return exporter.run(debug_report(exporter, name), timeout)
