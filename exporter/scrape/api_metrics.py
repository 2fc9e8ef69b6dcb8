"""The exporter's own cumulative API and collection-failure metrics, kept as plain numbers.

They are emitted as fresh metric families on each scrape (the custom-collector
pattern), which also lets a target that leaves the config take its series with it.
Reports come through a ``TargetObserver``, which a reload detaches: a collection
cancelled by a reload counts nothing and cannot bring a removed target's series back.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from exporter.cec.errors import APIS, FORESEEN_STATUS, OUTCOMES, REASONS

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_MAX_LABEL_CODE = 8


def ret_code_label(code: str) -> str:
    """The vendor's code if short and tame, else ``other``: bounded cardinality."""
    tame = all(c.isascii() and (c.isalnum() or c in "._-") for c in code)
    return code if code and len(code) <= _MAX_LABEL_CODE and tame else "other"


@dataclass
class _Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    count: int = 0
    total: float = 0.0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(LATENCY_BUCKETS, value)
        if index < len(self.buckets):
            self.buckets[index] += 1
        self.count += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        running, out = 0, []
        for bound, n in zip(LATENCY_BUCKETS, self.buckets, strict=True):
            running += n
            out.append((repr(bound), float(running)))
        out.append(("+Inf", float(self.count)))
        return out


class ApiMetrics:
    """Request counters, latency histograms and token expiry for every target."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self._ret_codes: dict[tuple[str, str, str], int] = defaultdict(int)
        self._http_errors: dict[tuple[str, str, str], int] = defaultdict(int)
        self._latency: dict[tuple[str, str], _Histogram] = defaultdict(_Histogram)
        self._failures: dict[tuple[str, str], int] = {}
        self._abandoned: dict[str, int] = {}
        self._token_expiry: dict[str, float] = {}

    def add_target(self, target: str) -> None:
        """Start every outcome, failure reason and foreseen HTTP error status at zero, so
        ``rate()`` and ``increase()`` see the first one."""
        with self._lock:
            for api in APIS:
                _ = self._latency[(target, api)]
                for outcome in OUTCOMES:
                    _ = self._requests[(target, api, outcome)]
                for status in FORESEEN_STATUS:
                    _ = self._http_errors[(target, api, str(status))]
            for reason in REASONS:
                self._failures.setdefault((target, reason), 0)
            self._abandoned.setdefault(target, 0)

    def remove_target(self, target: str) -> None:
        """Drop every series of a target that left the config."""
        with self._lock:
            tables = (self._requests, self._ret_codes, self._http_errors, self._latency)
            for table in (*tables, self._failures):
                _drop_target(table, target)
            self._token_expiry.pop(target, None)
            self._abandoned.pop(target, None)

    def observer(self, target: str) -> TargetObserver:
        """The ``RequestObserver`` the CEC client of ``target`` reports to."""
        return TargetObserver(self, target)

    def record(
        self,
        target: str,
        api: str,
        outcome: str,
        seconds: float,
        status_code: int | None,
        ret_code: str | None,
    ) -> None:
        """Count one request once, with its own outcome."""
        with self._lock:
            self._requests[(target, api, outcome)] += 1
            self._latency[(target, api)].observe(seconds)
            if outcome == "http_error" and status_code is not None:
                self._http_errors[(target, api, str(status_code))] += 1
            if outcome == "ret_code_error" and ret_code is not None:
                self._ret_codes[(target, api, ret_code_label(ret_code))] += 1

    def record_failure(self, target: str, reason: str) -> None:
        """Count one failed collection of ``target``; ``reason`` is one of ``REASONS``."""
        with self._lock:
            self._failures[(target, reason)] = self._failures.get((target, reason), 0) + 1

    def record_abandoned(self, target: str) -> None:
        """Count one scrape of ``target`` that answered at its deadline while the shared
        collection went on: no failed collection, so not in ``cec_collection_failures_total``."""
        with self._lock:
            self._abandoned[target] = self._abandoned.get(target, 0) + 1

    def set_token_expiry(self, target: str, expires_at: float) -> None:
        """Remember when the target's current token expires."""
        with self._lock:
            self._token_expiry[target] = expires_at

    def families(self) -> Iterator[Metric]:
        """Fresh families with the current values."""
        requests = CounterMetricFamily(
            "cec_api_requests",
            "CEC API requests by outcome; each HTTP request is counted once.",
            labels=["target", "api", "outcome"],
        )
        ret_codes = CounterMetricFamily(
            "cec_api_ret_code_failures",
            "CEC API answers with a non-zero retCode (other = long or unusual code).",
            labels=["target", "api", "ret_code"],
        )
        http_errors = CounterMetricFamily(
            "cec_api_http_errors",
            "CEC API answers with an HTTP status other than 200.",
            labels=["target", "api", "status_code"],
        )
        latency = HistogramMetricFamily(
            "cec_api_request_duration_seconds",
            "Duration of CEC API requests, whatever their outcome.",
            labels=["target", "api"],
        )
        failures = CounterMetricFamily(
            "cec_collection_failures",
            "Failed collections of the target, by reason.",
            labels=["target", "reason"],
        )
        abandoned = CounterMetricFamily(
            "cec_scrapes_abandoned",
            "Scrapes that gave up waiting at their deadline while the shared collection went on.",
            labels=["target"],
        )
        expiry = GaugeMetricFamily(
            "cec_token_expiry_timestamp_seconds",
            "Unix time at which the target's current access token expires.",
            labels=["target"],
        )
        with self._lock:
            for key, n in sorted(self._requests.items()):
                requests.add_metric(list(key), n)
            for key, n in sorted(self._ret_codes.items()):
                ret_codes.add_metric(list(key), n)
            for key, n in sorted(self._http_errors.items()):
                http_errors.add_metric(list(key), n)
            for (target, api), hist in sorted(self._latency.items()):
                latency.add_metric([target, api], hist.cumulative(), hist.total)
            for (target, reason), n in sorted(self._failures.items()):
                failures.add_metric([target, reason], n)
            for target, n in sorted(self._abandoned.items()):
                abandoned.add_metric([target], n)
            for target, when in sorted(self._token_expiry.items()):
                expiry.add_metric([target], when)
        yield from (requests, ret_codes, http_errors, latency, failures, abandoned, expiry)


def _drop_target(table: dict[Any, Any], target: str) -> None:
    for key in [k for k in table if k[0] == target]:
        del table[key]


class TargetObserver:
    """Binds ``ApiMetrics`` to one target's collector, in the shape the CEC client expects.

    ``detach`` (on reload) makes every later report a no-op: requests cancelled with
    the old collector are neither counted as timeouts nor re-create removed series.
    """

    def __init__(self, metrics: ApiMetrics, target: str) -> None:
        self.metrics = metrics
        self.target = target
        self.attached = True

    def detach(self) -> None:
        """Ignore every report from now on."""
        self.attached = False

    def request_done(
        self,
        api: str,
        outcome: str,
        seconds: float,
        status_code: int | None = None,
        ret_code: str | None = None,
    ) -> None:
        if self.attached:
            self.metrics.record(self.target, api, outcome, seconds, status_code, ret_code)

    def token_issued(self, expires_at: float) -> None:
        if self.attached:
            self.metrics.set_token_expiry(self.target, expires_at)

    def collection_failed(self, reason: str) -> None:
        """Count one failed collection."""
        if self.attached:
            self.metrics.record_failure(self.target, reason)

    def scrape_abandoned(self) -> None:
        """Count one scrape that gave up waiting for the collection in flight."""
        if self.attached:
            self.metrics.record_abandoned(self.target)
