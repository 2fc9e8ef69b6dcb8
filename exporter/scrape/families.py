"""Collections and the exporter's own state as metric families, built afresh per scrape.

The custom-collector pattern of prometheus-client: nothing is kept in instrumented
metric objects; each scrape builds new families from plain values (counters carry no
``created`` value, so no ``_created`` series is ever written). ``Families`` adapts a
function that yields them to the registry interface.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.build import revision
from exporter.scrape.changes import ChangeReport
from exporter.scrape.collection import Collection


class Families(Collector):
    """Adapts a function that yields ready families to the registry interface."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families()

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to check at registration; families are built per scrape


def collection_families(collections: Iterable[Collection]) -> Iterator[Metric]:
    """Metric families for a set of collections.

    A failed collection shows only ``cec_up 0``, its duration and the last
    success time: a partial count must never look like a drop.
    """
    collections = list(collections)  # read twice: the gauges, then the change counters
    up = GaugeMetricFamily(
        "cec_up", "1 if the last collection read every page with retCode 0.", labels=["target"]
    )
    duration = GaugeMetricFamily(
        "cec_collection_duration_seconds",
        "How long the last collection of the target took.",
        labels=["target"],
    )
    last_success = GaugeMetricFamily(
        "cec_last_success_timestamp_seconds",
        "Unix time of the last successful collection of the target.",
        labels=["target"],
    )
    age = GaugeMetricFamily(
        "cec_collection_age_seconds",
        "Age of the collection being served; above 0 when served from cache.",
        labels=["target"],
    )
    allocated = GaugeMetricFamily(
        "cec_softphones_allocated",
        "Allocated softphones (result.total) as the API reports it.",
        labels=["target"],
    )
    phones = GaugeMetricFamily(
        "cec_softphones",
        "Softphone records by tenant and registration status.",
        labels=["target", "tenant_id", "status"],
    )
    endpoints = GaugeMetricFamily(
        "cec_registration_endpoint_info",
        "Registration endpoints reported by queryPhone; value is always 1.",
        labels=["target", "mode", "node", "reg_ip", "reg_port", "sip_ip", "sip_port"],
    )
    per_phone = GaugeMetricFamily(
        "cec_softphone_registered",
        "1 if the softphone is registered, 0 otherwise (per_phone_metrics only).",
        labels=["target", "tenant_id", "phone_num"],
    )
    for c in collections:
        up.add_metric([c.target], 1.0 if c.up else 0.0)
        duration.add_metric([c.target], c.duration)
        if c.last_success is not None:
            last_success.add_metric([c.target], c.last_success)
        snap = c.snapshot
        if snap is None:
            continue
        age.add_metric([c.target], c.age)
        if snap.total is not None:
            allocated.add_metric([c.target], snap.total)
        for (tenant, status), n in sorted(snap.counts.items()):
            phones.add_metric([c.target, tenant, status.value], n)
        for ep in snap.endpoints:
            endpoints.add_metric(
                [c.target, ep.mode, ep.node, ep.reg_ip, ep.reg_port, ep.sip_ip, ep.sip_port], 1
            )
        for (tenant, number), registered in sorted((snap.phones or {}).items()):
            per_phone.add_metric([c.target, tenant, number], 1.0 if registered else 0.0)
    families = (up, duration, last_success, age, allocated, phones, endpoints, per_phone)
    yield from (f for f in families if f.samples or f is up)
    yield from change_families((c.target, c.changes) for c in collections if c.changes)


def change_families(reports: Iterable[tuple[str, ChangeReport]]) -> Iterator[CounterMetricFamily]:
    """The two counter families for (target, report) pairs."""
    status = CounterMetricFamily(
        "cec_softphone_status_changes",
        "Softphones whose status moved between two successful collections.",
        labels=["target", "tenant_id", "from", "to"],
    )
    allocation = CounterMetricFamily(
        "cec_softphone_allocation_changes",
        "Softphones added or removed between two successful collections.",
        labels=["target", "tenant_id", "change"],
    )
    for target, report in reports:
        for (tenant, was, now), n in sorted(report.status_totals.items()):
            status.add_metric([target, tenant, was, now], n)
        for (tenant, change), n in sorted(report.allocation_totals.items()):
            allocation.add_metric([target, tenant, change], n)
    yield from (f for f in (status, allocation) if f.samples)


def exporter_families(reload_ok: bool, reload_success_time: float) -> Iterator[Metric]:
    """Build info and the config reload gauges."""
    info = GaugeMetricFamily(
        "cec_exporter_build_info",
        "Build information of cec-phone-exporter; value is always 1.",
        labels=["version", "revision", "python_version"],
    )
    info.add_metric([__version__, revision(), platform.python_version()], 1)
    ok = GaugeMetricFamily(
        "cec_exporter_config_last_reload_successful",
        "1 if the last config load or reload worked.",
    )
    ok.add_metric([], 1.0 if reload_ok else 0.0)
    when = GaugeMetricFamily(
        "cec_exporter_config_last_reload_success_timestamp_seconds",
        "Unix time of the last successful config load or reload.",
    )
    when.add_metric([], reload_success_time)
    yield from (info, ok, when)
