"""End-to-end proof of the operations bundle (issue 4), with real processes on loopback.

simulator -> exporter (/metrics) -> Prometheus (1s scrapes and evaluations, the
bundled rules) -> Alertmanager (the bundled config, a test webhook receiver):

1. With a healthy system every panel query of the bundled dashboard returns
   data, except those listed in EMPTY_WHEN_HEALTHY (asserted empty); the
   template variables list the job, target and tenants; every rule evaluates
   without error; CECSuspendedSoftphonesRising and CECQueryPhoneRetCodeFailures
   stay inactive.
2. retCode "1" answers for three scrapes, one HTTP 500 (retried), then the
   suspended ratio raised step by step (and some phones in an unknown status):
   both alerts fire in Prometheus after a `for: 1m`, with the rules' labels
   and annotations, reach Alertmanager (active, not inhibited) and its webhook;
   no other alert fires. CECSuspendedSoftphonesRising's own `for:` (5m, to ride
   out churn) is shortened to 1m in the rules Prometheus loads here: promtool
   tests (prometheus/tests/cec.suspended.test.yml) prove that `for:`, this test
   the path from the simulator to the webhook.
3. Every dashboard query, the EMPTY_WHEN_HEALTHY ones included, returns data.

External tools: prometheus and prometheus-alertmanager (Debian packages of the
same names). A missing tool skips the test locally and fails it when CI is set.
The test lasts a little over a minute: `for: 1m` is the shortest we ask of a rule.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from support import RunningExporter, target_entry

from exporter.simulator import Fault, Simulator

try:
    import dashboard_queries as dq
except ImportError:  # tests/ imported as a package
    from tests import dashboard_queries as dq  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "prometheus" / "rules" / "cec.rules.yml"
AM_CONFIG = ROOT / "prometheus" / "alertmanager.yml"

JOB = "cec-phone-exporter"
TARGET = "e2e"
RATE_INTERVAL = "15s"  # $__rate_interval for 1s scrapes: many samples per window
SUSPENDED = "CECSuspendedSoftphonesRising"
SUSPENDED_RECORD = f'target:cec_softphones_suspended:sum{{target="{TARGET}"}}'  # no job label
RET_CODE = "CECQueryPhoneRetCodeFailures"
FIRING = {SUSPENDED, RET_CODE}
WEBHOOK_RECEIVER = "e2e-webhook"

# Panel queries (PanelQuery.name) that have no data while the system is healthy,
# and why. The faults of this test give each of them data before the final check.
EMPTY_WHEN_HEALTHY = {
    "retCode failures by code [A]": (
        "cec_api_ret_code_failures_total has a series per ret_code seen; none was yet"
    ),
    "Softphones per tenant [C]": "no phone record has an unknown status yet",
}

T = TypeVar("T")


def require_tool(*names: str) -> str:
    """Path of the first of `names` on PATH: skip when none is, but fail under CI."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    message = f"{' or '.join(names)} is not installed"
    if os.environ.get("CI"):
        pytest.fail(message + " (required in CI)")
    pytest.skip(message)


def wait_for(
    what: str, probe: Callable[[], T], done: Callable[[T], bool], timeout: float, step: float = 0.25
) -> T:
    """Poll `probe()` until `done(value)`; fail with the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {value!r}")
        time.sleep(step)


# --------------------------------------------------------------------- webhook


class Webhook:
    """An Alertmanager webhook receiver on loopback that keeps every notification."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        lock = threading.Lock()
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    received.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def firing(self) -> dict[str, dict[str, Any]]:
        """Firing alerts notified so far, by alertname (the last notification wins)."""
        alerts = {}
        for notification in list(self.notifications):
            for alert in notification.get("alerts", []):
                if alert.get("status") == "firing":
                    alerts[alert["labels"]["alertname"]] = alert
        return alerts

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


# --------------------------------------------------------------------- configs


def e2e_rules(path: Path) -> Path:
    """The bundled rules with CECSuspendedSoftphonesRising's `for:` shortened to 1m."""
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == SUSPENDED:
                rule["for"] = "1m"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def prometheus_config(exporter_address: str, alertmanager_address: str, rules: Path) -> str:
    return yaml.safe_dump(
        {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(rules)],
            "alerting": {
                "alertmanagers": [{"static_configs": [{"targets": [alertmanager_address]}]}]
            },
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": [exporter_address]}],
                }
            ],
        }
    )


def alertmanager_config(webhook_url: str) -> str:
    """The bundled alertmanager.yml (routing, inhibitions), with fast timings and a webhook."""
    config = yaml.safe_load(AM_CONFIG.read_text(encoding="utf-8"))
    config["route"].update(
        receiver=WEBHOOK_RECEIVER, group_wait="1s", group_interval="1s", repeat_interval="1m"
    )
    config["receivers"].append(
        {"name": WEBHOOK_RECEIVER, "webhook_configs": [{"url": webhook_url}]}
    )
    return yaml.safe_dump(config)


def rule_records() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "record" in rule]


def rule_alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


# --------------------------------------------------------------------- queries


def selector(**labels: str) -> str:
    matchers = {"job": JOB, "target": TARGET, **labels}
    return "{" + ", ".join(f'{name}="{value}"' for name, value in matchers.items()) + "}"


def scalar(prom: dq.PrometheusProcess, expr: str) -> float | None:
    """The value of a one-element instant vector, None when empty."""
    result = dq.query(prom.url, expr)
    assert len(result) <= 1, (expr, result)
    return float(result[0]["value"][1]) if result else None


def empty_panel_queries(prom: dq.PrometheusProcess) -> list[str]:
    """Names of dashboard queries without data, run as Grafana runs them."""
    end = time.time()
    empty = []
    for q in dq.dashboard_queries(job=JOB, target=TARGET, rate_interval=RATE_INTERVAL):
        if q.instant:
            result = dq.query(prom.url, q.expr, at=end)
        else:
            result = dq.query_range(prom.url, q.expr, end - 30, end, 1)
        if not result:
            empty.append(q.name)
    return sorted(set(empty))


def variable_values(prom: dq.PrometheusProcess) -> dict[str, list[str]]:
    return {
        v.name: dq.api_get(
            prom.url,
            f"/api/v1/label/{v.label}/values",
            [("match[]", v.selector), ("start", f"{time.time() - 300:.0f}")],
        )
        for v in dq.variable_queries(job=JOB, target=TARGET)
    }


def rule_states(prom: dq.PrometheusProcess) -> dict[str, dict[str, Any]]:
    groups = dq.api_get(prom.url, "/api/v1/rules")["groups"]
    return {rule["name"]: rule for group in groups for rule in group["rules"]}


def prometheus_alerts(prom: dq.PrometheusProcess) -> dict[str, list[dict[str, Any]]]:
    """Pending and firing alerts by alertname."""
    alerts: dict[str, list[dict[str, Any]]] = {}
    for alert in dq.api_get(prom.url, "/api/v1/alerts")["alerts"]:
        alerts.setdefault(alert["labels"]["alertname"], []).append(alert)
    return alerts


def states(alerts: dict[str, list[dict[str, Any]]]) -> dict[str, set[str]]:
    return {name: {a["state"] for a in items} for name, items in alerts.items()}


def suspended_count(sim: Simulator) -> int:
    return sum(n for (_, status), n in sim.expected().counts.items() if status == "suspended")


def check_alert_identity(
    labels: dict[str, str], annotations: dict[str, str], rule: dict[str, Any]
) -> None:
    """The labels and annotations the bundled rule promises, on a real alert."""
    assert labels["alertname"] == rule["alert"]
    assert labels["severity"] == rule["labels"]["severity"] == "warning"
    assert labels["target"] == TARGET
    # Target alerts count a target once, whichever instances and jobs report it.
    assert "job" not in labels
    assert "instance" not in labels
    assert annotations["summary"] == rule["annotations"]["summary"]
    # The rule's runbook_url template, expanded: the one base URL (cec:runbook:info) + anchor.
    base = next(r for r in rule_records() if r["record"] == "cec:runbook:info")["labels"]
    assert annotations["runbook_url"] == f"{base['base_url']}#{rule['alert'].lower()}"
    assert TARGET in annotations["description"]
    assert "{{" not in annotations["description"], annotations["description"]


# --------------------------------------------------------------------- the test


@pytest.mark.timeout(170)
def test_dashboard_and_alerts_end_to_end(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
    webhook: Webhook,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    require_tool("prometheus")
    require_tool(*dq.ALERTMANAGER_BINARIES)
    started = time.monotonic()
    rules = rule_alerts()
    assert rules[RET_CODE]["for"] == "1m"
    assert rules[SUSPENDED]["for"] == "5m"  # shortened to 1m below (see the docstring)
    rules_file = e2e_rules(tmp_path / "cec.rules.yml")

    sim = simulator(phones=2000, tenants=3, suspended_ratio=0.1, mode="pool")
    exporter = exporter_server(write_config(targets=[target_entry(sim, TARGET)]))
    with (
        dq.running_alertmanager(tmp_path / "alertmanager", alertmanager_config(webhook.url)) as am,
        dq.running_prometheus(
            tmp_path / "prometheus",
            prometheus_config(
                exporter.url.removeprefix("http://"), am.url.removeprefix("http://"), rules_file
            ),
            extra_args=("--rules.alert.resend-delay=1s",),
        ) as prom,
    ):
        # --- 1. healthy ---------------------------------------------------------------
        up = selector()
        wait_for(
            "three successful scrapes",  # rate() needs two samples in its window
            lambda: scalar(prom, f"count_over_time(cec_up{up}[15s])"),
            lambda n: n is not None and n >= 3,
            timeout=45,
        )
        assert scalar(prom, f"min_over_time(cec_up{up}[15s])") == 1
        assert scalar(prom, f'up{{job="{JOB}"}}') == 1
        assert scalar(prom, SUSPENDED_RECORD) == suspended_count(sim)

        empty = wait_for(
            "dashboard queries with data",
            lambda: empty_panel_queries(prom),
            lambda names: set(names) <= set(EMPTY_WHEN_HEALTHY),
            timeout=20,
        )
        assert empty == sorted(EMPTY_WHEN_HEALTHY), "the healthy system has data for these"

        values = variable_values(prom)
        assert values["job"] == [JOB]
        assert values["target"] == [TARGET]
        assert set(values["tenant_id"]) == {tenant for tenant, _ in sim.expected().counts}
        assert len(values["tenant_id"]) == 3

        # Three evaluation rounds on healthy data: every rule works, neither alert is
        # even pending, and nothing reached Alertmanager.
        evaluations: set[str] = set()
        for _ in range(3):
            healthy_rules = wait_for(
                "a new rule evaluation",
                lambda: rule_states(prom),
                lambda r: r[SUSPENDED]["lastEvaluation"] not in evaluations,
                timeout=10,
            )
            evaluations.add(healthy_rules[SUSPENDED]["lastEvaluation"])
            assert healthy_rules[SUSPENDED]["state"] == "inactive"
            assert healthy_rules[RET_CODE]["state"] == "inactive"
        broken = {
            name: rule.get("lastError")
            for name, rule in healthy_rules.items()
            if rule["health"] != "ok"
        }
        assert not broken
        assert not FIRING & set(prometheus_alerts(prom))
        assert not FIRING & {a["labels"]["alertname"] for a in am.alerts()}
        assert not webhook.firing()
        healthy_at = time.monotonic()

        # --- 2. faults ----------------------------------------------------------------
        # Page 0 answers retCode "1" on three collections (each a failed scrape), then
        # page 1 answers one HTTP 500, which the client retries within the scrape.
        sim.set_faults(
            [
                Fault(kind="ret_code", value="1", pages=(0,), times=3),
                Fault(kind="http_status", value=500, pages=(1,), times=1),
            ]
        )
        ret_codes = selector(api="queryPhone", ret_code="1")
        wait_for(
            "three retCode failures in Prometheus",
            lambda: scalar(prom, f"cec_api_ret_code_failures_total{ret_codes}"),
            lambda n: n == 3,
            timeout=30,
        )
        http_errors = selector(api="queryPhone", status_code="500")
        wait_for(
            "the HTTP 500 in Prometheus, and the target up again",
            lambda: (
                scalar(prom, f"cec_api_http_errors_total{http_errors}"),
                scalar(prom, f"cec_up{up}"),
            ),
            lambda v: v == (1, 1),
            timeout=30,
        )
        assert sim.faults() == []
        assert scalar(prom, f"min_over_time(cec_up{up}[1m])") == 0  # the failed scrapes

        # Suspensions rise step by step; some phones turn up in an unknown status.
        baseline = suspended_count(sim)
        for ratio, unknown in ((0.13, 0.0), (0.16, 0.02), (0.19, 0.02)):
            sim.update(suspended_ratio=ratio, unknown_ratio=unknown)
            expected = suspended_count(sim)
            assert expected > baseline
            wait_for(
                f"{expected} suspended phones in Prometheus",
                lambda: scalar(prom, SUSPENDED_RECORD),
                lambda n, expected=expected: n == expected,
                timeout=20,
            )
        rise = suspended_count(sim) - baseline
        assert rise > 0
        pending = states(prometheus_alerts(prom))
        assert pending.get(SUSPENDED) == {"pending"}, pending
        assert pending.get(RET_CODE) == {"pending"}, pending

        # --- 3. both alerts fire (after their `for: 1m`) --------------------------------
        alerts = wait_for(
            "both alerts firing in Prometheus",
            lambda: prometheus_alerts(prom),
            lambda a: all(states(a).get(name) == {"firing"} for name in FIRING),
            timeout=90,
        )
        firing = {name for name, s in states(alerts).items() if "firing" in s}
        assert firing == FIRING, "no other alert may fire"
        for name in FIRING:
            [alert] = alerts[name]
            check_alert_identity(alert["labels"], alert["annotations"], rules[name])
        [suspended] = alerts[SUSPENDED]
        assert float(suspended["value"]) == rise
        assert f"{rise} more softphones" in suspended["annotations"]["description"]
        [ret_code] = alerts[RET_CODE]
        assert ret_code["labels"]["api"] == "queryPhone"
        assert ret_code["labels"]["ret_code"] == "1"
        assert float(ret_code["value"]) > 0

        am_alerts = wait_for(
            "both alerts in Alertmanager",
            lambda: {a["labels"]["alertname"]: a for a in am.alerts()},
            lambda a: set(a) >= FIRING,
            timeout=20,
        )
        assert set(am_alerts) == FIRING, "no other alert may reach Alertmanager"
        for name in FIRING:
            alert = am_alerts[name]
            check_alert_identity(alert["labels"], alert["annotations"], rules[name])
            assert alert["status"]["state"] == "active", alert["status"]  # not inhibited
            assert [r["name"] for r in alert["receivers"]] == [WEBHOOK_RECEIVER]
        assert am_alerts[RET_CODE]["labels"]["ret_code"] == "1"

        notified = wait_for(
            "both alerts at the webhook",
            webhook.firing,
            lambda a: set(a) >= FIRING,
            timeout=20,
        )
        for name in FIRING:
            check_alert_identity(
                notified[name]["labels"], notified[name]["annotations"], rules[name]
            )
        alerting_seconds = time.monotonic() - healthy_at

        # --- 4. every dashboard query has data now -------------------------------------
        empty = wait_for(
            "every dashboard query with data",
            lambda: empty_panel_queries(prom),
            lambda names: not names,
            timeout=20,
        )
        assert not empty

        slowest_scrape = scalar(prom, f'max_over_time(scrape_duration_seconds{{job="{JOB}"}}[5m])')
        assert slowest_scrape is not None

    duration = time.monotonic() - started
    record_property("duration_seconds", round(duration, 1))
    record_property("faults_to_notification_seconds", round(alerting_seconds, 1))
    record_property("slowest_scrape_seconds", slowest_scrape)
    print(
        f"\nalerting e2e: {duration:.1f}s in all, {alerting_seconds:.1f}s from the first "
        f"fault to both notifications at the webhook; slowest scrape {slowest_scrape:.3f}s"
    )
