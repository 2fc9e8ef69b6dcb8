"""Paths, the metric catalogue and helpers shared by the operations-bundle tests.

Used by tests/test_ops_static.py (dashboard, compose, image, Kubernetes) and
tests/test_ops_rules.py (rules, their unit tests, Prometheus and Alertmanager configs).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "prometheus" / "rules" / "cec.rules.yml"
RULE_TESTS = ROOT / "prometheus" / "tests" / "cec.rules.test.yml"
RULE_TEST_FILES = sorted((ROOT / "prometheus" / "tests").glob("*.test.yml"))
PROM_CONFIG = ROOT / "prometheus" / "prometheus.yml"
PROBE_CONFIG = ROOT / "prometheus" / "prometheus-probe.yml"
AM_CONFIG = ROOT / "prometheus" / "alertmanager.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
DASHBOARD = ROOT / "grafana" / "dashboards" / "cec-softphones.json"
GRAFANA_PROVISIONING = ROOT / "grafana" / "provisioning"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S = ROOT / "deploy" / "kubernetes"
SYNC_SCRIPT = ROOT / "scripts" / "sync_prometheusrule.py"
CHECK_SCRIPT = ROOT / "scripts" / "check_ops.sh"

RUNBOOK_BASE = "https://github.com/cec-phone-exporter/cec-phone-exporter/blob/main/docs/runbook.md"
# Every alert's runbook_url: the base URL set once, in the cec:runbook:info rule.
RUNBOOK_URL = '{{ with query "cec:runbook:info" }}{{ . | first | label "base_url" }}{{ end }}#'
EXPORTER_UP = "job_instance:cec_exporter_up:selected"
# The settings users adapt, all at the top of the rules file (in this order).
TUNABLES = (
    "cec:softphones_suspended_rise:min_count",
    "cec:softphones_suspended_rise:min_ratio",
    "cec:softphones_suspended:max_ratio",
    "cec:api_request_errors:max_ratio",
    "cec:api_request_duration_seconds:max_p95",
    "cec:last_success_age_seconds:max",
    "cec:softphone_status_changes:min_count",
    "cec:softphone_status_changes:min_ratio",
    EXPORTER_UP,
    "cec:runbook:info",
)

REQUIRED_ALERTS = {
    "CECTargetDown",
    "CECExporterDown",
    "CECSuspendedSoftphonesRising",
    "CECSuspendedRatioHigh",
    "CECQueryPhoneRetCodeFailures",
    "CECAPIErrorRatioHigh",
    "CECAPILatencyHigh",
    "CECTokenEndpointFailing",
    "CECSoftphoneStatusChurnHigh",
}
# Alerts that must fire within ~1-2 minutes (CECSuspendedSoftphonesRising rides
# out churn with a longer for:; the end-to-end test shortens it, see there).
FAST_ALERTS = {"CECQueryPhoneRetCodeFailures"}

REQUIRED_RECORDS = {
    "target:cec_softphones:sum_by_status",
    "target:cec_softphones_suspended:ratio",
    "target_api:cec_api_requests:rate5m",
    "target_api:cec_api_request_errors:ratio_rate5m",
    "target_api:cec_api_request_duration_seconds:p95_rate5m",
}

# SPEC.md section 6 (histogram as its exposed series), plus Prometheus' own `up`.
METRIC_CATALOGUE = {
    "up",
    "cec_up",
    "cec_softphones_allocated",
    "cec_softphones",
    "cec_registration_endpoint_info",
    "cec_collection_duration_seconds",
    "cec_last_success_timestamp_seconds",
    "cec_collection_age_seconds",
    "cec_softphone_registered",
    "cec_softphone_status_changes_total",
    "cec_softphone_allocation_changes_total",
    "cec_api_requests_total",
    "cec_api_ret_code_failures_total",
    "cec_api_http_errors_total",
    "cec_api_request_duration_seconds_bucket",
    "cec_api_request_duration_seconds_sum",
    "cec_api_request_duration_seconds_count",
    "cec_collection_failures_total",
    "cec_scrapes_abandoned_total",
    "cec_token_expiry_timestamp_seconds",
    "cec_exporter_build_info",
    "cec_exporter_config_last_reload_successful",
    "cec_exporter_config_last_reload_success_timestamp_seconds",
}
# Metrics with a tenant_id label: dashboard queries on them filter by $tenant_id.
TENANT_METRICS = {
    "cec_softphones",
    "cec_softphone_registered",
    "cec_softphone_status_changes_total",
    "cec_softphone_allocation_changes_total",
}


# ------------------------------------------------------------------ helpers


def require_tool(name: str) -> str:
    """Path of an external tool: skip when missing, but fail under CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed"
        if os.environ.get("CI"):
            pytest.fail(message + " (required in CI)")
        pytest.skip(message)
    return path


def run_tool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def load_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_yaml_all(path: Path) -> list[Any]:
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def records() -> dict[str, dict[str, Any]]:
    return {rule["record"]: rule for rule in rules() if "record" in rule}


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_anchors() -> list[str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    return [github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)]


def parse_duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    total = 0.0
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", str(text))
    assert "".join(n + u for n, u in parts) == str(text), f"bad duration {text!r}"
    for number, unit in parts:
        total += int(number) * units[unit]
    return total


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Metric (and recording rule) names a PromQL expression reads, approximately."""
    bare = _STRING.sub('""', expr)
    names = set()
    for match in _IDENT.finditer(bare):
        name = match.group(0)
        rest = bare[match.end() :].lstrip()
        if rest.startswith("("):
            continue  # a function or an aggregation
        if name == "up" or name.startswith("cec_") or ":" in name:
            names.add(name)
    return names


def selectors(expr: str) -> list[tuple[str, str | None]]:
    """(metric name, matcher text or None) for each cec_* / up selector."""
    return [
        (m.group(1), m.group(2))
        for m in re.finditer(r"\b(cec_\w+|up)\b(?!\s*\()(\{[^}]*\})?", expr)
    ]
