"""The alert rules, their promtool unit tests, the PrometheusRule manifest made from
them, and the example Prometheus and Alertmanager configs.

External tools: promtool (Debian package `prometheus`), amtool and alertmanager
(`prometheus-alertmanager`). A missing tool skips its tests locally and fails
them when CI is set.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ops_common import (
    AM_CONFIG,
    EXPORTER_UP,
    FAST_ALERTS,
    K8S,
    METRIC_CATALOGUE,
    PROBE_CONFIG,
    PROM_CONFIG,
    REQUIRED_ALERTS,
    REQUIRED_RECORDS,
    RULE_TEST_FILES,
    RULES,
    RUNBOOK,
    RUNBOOK_BASE,
    RUNBOOK_URL,
    SYNC_SCRIPT,
    TUNABLES,
    alerts,
    load_yaml,
    metric_names,
    parse_duration,
    records,
    require_tool,
    rules,
    run_tool,
    runbook_anchors,
)

pytestmark = pytest.mark.e2e

# -------------------------------------------------------- rules: structure


def test_rule_file_parses_and_has_groups() -> None:
    doc = load_yaml(RULES)
    assert {g["name"] for g in doc["groups"]} >= {
        "cec-phone-exporter.rules",
        "cec-phone-exporter.alerts",
    }
    assert all(g["rules"] for g in doc["groups"])


def test_required_alerts_and_records_exist() -> None:
    assert set(alerts()) >= REQUIRED_ALERTS
    assert set(records()) >= REQUIRED_RECORDS


TUNABLE = re.compile(r"vector\(\s*[0-9.]+\s*\)")


def tunables() -> dict[str, dict[str, Any]]:
    """The records at the top of the file that hold what operators adapt."""
    return {name: rule for name, rule in records().items() if name in TUNABLES}


def test_recording_rule_names_follow_level_metric_operations() -> None:
    for name in records():
        assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", name), name
        level, metric, _ = name.split(":")
        if TUNABLE.fullmatch(records()[name]["expr"]):
            assert level == "cec", f"{name}: a tunable constant has no target label"
            continue
        assert metric.startswith("cec_"), name
        if name == EXPORTER_UP:  # the exporter's own scrapes: per job and instance
            assert level == "job_instance", name
            continue
        assert "target" in level.split("_"), f"{name}: every record keeps the target label"


def test_every_selector_and_threshold_is_tunable_at_the_top_of_the_file() -> None:
    """The tunables are the very first rules; no alert holds a literal threshold or job."""
    first = [rule.get("record") for rule in rules()[: len(TUNABLES)]]
    assert first == list(TUNABLES)
    constants = {name for name, rule in records().items() if TUNABLE.fullmatch(rule["expr"])}
    assert constants == set(TUNABLES) - {EXPORTER_UP}
    rising = alerts()["CECSuspendedSoftphonesRising"]
    for name in first[:2]:
        assert name in rising["expr"]
    assert parse_duration(rising["for"]) >= 300, "a for: that rides out churn"
    used = " ".join(rule["expr"] for rule in alerts().values())
    for name in TUNABLES[:-1]:  # the runbook base is read by the annotations
        assert name in used, f"{name} is used by no alert"
    for name, rule in alerts().items():
        bare = re.sub(r"\[\w+\]|offset \w+|\{[^}]*\}", "", rule["expr"])
        literals = re.findall(r"[<>=!]=?\s*([0-9.]+)", bare)
        # Comparisons with 0 (down, any failure) are the alert's meaning, not a threshold.
        assert set(literals) <= {"0"}, f"{name}: a literal threshold {literals} in the expression"
        assert not re.search(r"\bjob\s*!?=~?", rule["expr"]), f"{name}: a job selector"
    assert records()[EXPORTER_UP]["expr"].startswith("up{job=~")


def test_target_level_rules_do_not_add_up_instances() -> None:
    """Records and target alerts keep `target`, never `job`/`instance` (see the file header)."""
    per_instance = {"CECExporterDown", "CECExporterConfigReloadFailed"}
    for rule in rules():
        name = rule.get("alert") or rule.get("record")
        if name in per_instance or name in tunables():
            continue
        outer = re.findall(r"\b(?:sum|max|min) by \(([^)]*)\)", rule["expr"])
        for labels in outer:
            kept = {label.strip() for label in labels.split(",")}
            inner_only = kept >= {"job", "instance"}  # the per-instance step before max by
            assert inner_only or not kept & {"job", "instance"}, (name, labels)
    phone_records = [name for name in records() if name.startswith("target:cec_softphones")]
    for name in phone_records:
        if name.endswith(":ratio"):
            continue
        assert records()[name]["expr"].lstrip().startswith("max by (target"), name


@pytest.mark.parametrize("name", sorted(alerts()))
def test_alert_is_mixin_style(name: str) -> None:
    rule = alerts()[name]
    assert re.fullmatch(r"CEC[A-Z][A-Za-z0-9]*", name), "CamelCase with the CEC prefix"
    assert rule["labels"]["severity"] in {"warning", "critical"}
    annotations = rule["annotations"]
    assert set(annotations) >= {"summary", "description", "runbook_url"}
    assert annotations["summary"].strip()
    assert "$labels" in annotations["description"] or "$value" in annotations["description"]
    assert annotations["runbook_url"] == f"{RUNBOOK_URL}{name.lower()}"
    assert "for" in rule, "every alert has a for: duration"
    parse_duration(rule["for"])


@pytest.mark.parametrize("name", sorted(alerts()))
def test_alert_has_runbook_section(name: str) -> None:
    anchor = alerts()[name]["annotations"]["runbook_url"].rsplit("#", 1)[1]
    assert anchor in runbook_anchors(), f"docs/runbook.md has no heading for #{anchor}"


def test_runbook_has_no_section_for_a_missing_alert() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    sections = re.findall(r"^##\s+(CEC\w+)\s*$", text, re.M)
    assert sorted(sections) == sorted(alerts())
    for name in sections:
        body = text.split(f"## {name}", 1)[1].split("\n## ", 1)[0]
        for part in ("**Meaning.**", "**Impact.**", "**First checks.**", "**Fixes.**"):
            assert part in body, f"runbook section {name} lacks {part}"


def test_fast_alerts_fire_within_a_minute_or_two() -> None:
    for name in FAST_ALERTS:
        assert parse_duration(alerts()[name]["for"]) <= 60, name


def test_rules_use_only_catalogue_metrics() -> None:
    known = METRIC_CATALOGUE | set(records())
    for rule in rules():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown metrics {unknown}"


def test_rule_thresholds_are_documented_at_the_top() -> None:
    header = RULES.read_text(encoding="utf-8").split("groups:", 1)[0]
    for name in alerts():
        assert name in header, f"{name} missing from the table of tunable defaults"


# ------------------------------------------------------ rules: unit tests


def _rule_test_suites() -> list[dict[str, Any]]:
    return [load_yaml(path) for path in RULE_TEST_FILES]


def _rule_test_cases() -> dict[str, dict[str, bool]]:
    seen: dict[str, dict[str, bool]] = {}
    for case in (case for suite in _rule_test_suites() for case in suite["tests"]):
        for check in case.get("alert_rule_test", []):
            flags = seen.setdefault(check["alertname"], {"firing": False, "silent": False})
            if check.get("exp_alerts"):
                flags["firing"] = True
                for alert in check["exp_alerts"]:
                    assert alert.get("exp_labels", {}).get("severity"), check["alertname"]
                    assert set(alert.get("exp_annotations", {})) >= {
                        "summary",
                        "description",
                        "runbook_url",
                    }
            else:
                flags["silent"] = True
    return seen


@pytest.mark.parametrize("name", sorted(alerts()))
def test_every_alert_has_firing_and_silent_unit_tests(name: str) -> None:
    cases = _rule_test_cases()
    assert name in cases, f"{name} has no alert_rule_test"
    assert cases[name]["firing"], f"{name} never fires in prometheus/tests/"
    assert cases[name]["silent"], f"{name} is never checked silent (exp_alerts: [])"


def test_every_recording_rule_is_unit_tested() -> None:
    tested = set()
    for case in (case for suite in _rule_test_suites() for case in suite["tests"]):
        for check in case.get("promql_expr_test", []):
            if check.get("exp_samples"):
                tested |= metric_names(check["expr"])
    assert set(records()) <= tested, f"untested recording rules: {set(records()) - tested}"


def test_promtool_check_rules() -> None:
    run_tool(require_tool("promtool"), "check", "rules", str(RULES))


def test_promtool_test_rules() -> None:
    assert len(RULE_TEST_FILES) >= 2
    run_tool(require_tool("promtool"), "test", "rules", *map(str, RULE_TEST_FILES))


@pytest.mark.parametrize("path", RULE_TEST_FILES, ids=lambda p: p.name)
def test_promtool_test_rules_with_alerts_evaluated_first(tmp_path: Path, path: Path) -> None:
    """A real Prometheus runs groups independently: alerts may see records one step late."""
    promtool = require_tool("promtool")
    suite = load_yaml(path)
    assert suite["group_eval_order"] == [g["name"] for g in load_yaml(RULES)["groups"]]
    suite["group_eval_order"].reverse()
    suite["rule_files"] = [str((path.parent / f).resolve()) for f in suite["rule_files"]]
    reversed_suite = tmp_path / "reversed.test.yml"
    reversed_suite.write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    run_tool(promtool, "test", "rules", str(reversed_suite))


# ------------------------------------------------------ PrometheusRule sync


def _sync_module() -> Any:
    spec = importlib.util.spec_from_file_location("sync_prometheusrule", SYNC_SCRIPT)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheusrule_manifest_in_sync() -> None:
    module = _sync_module()
    wanted = module.render(RULES.read_text(encoding="utf-8"))
    current = (K8S / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert current == wanted, "run: python scripts/sync_prometheusrule.py"


def test_prometheusrule_manifest_has_the_same_groups() -> None:
    manifest = load_yaml(K8S / "prometheusrule.yaml")
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["spec"]["groups"] == load_yaml(RULES)["groups"]


def test_sync_script_check_mode_detects_drift(tmp_path: Path) -> None:
    module = _sync_module()
    stale = tmp_path / "prometheusrule.yaml"
    stale.write_text("stale\n", encoding="utf-8")
    module.MANIFEST = stale
    assert module.main(["--check"]) == 1
    assert module.main([]) == 0
    assert module.main(["--check"]) == 0
    assert stale.read_text(encoding="utf-8") == (K8S / "prometheusrule.yaml").read_text(
        encoding="utf-8"
    )


def test_prometheusrule_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    manifest = load_yaml(K8S / "prometheusrule.yaml")
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": manifest["spec"]["groups"]}), encoding="utf-8")
    run_tool(promtool, "check", "rules", str(extracted))


# ------------------------------------------------ Prometheus / Alertmanager


def _exporter_jobs(path: Path) -> dict[str, dict[str, Any]]:
    """The scrape jobs of a Prometheus config that talk to the exporter."""
    config = load_yaml(path)
    return {job["job_name"]: job for job in config["scrape_configs"] if "cec" in job["job_name"]}


def _collects_targets(job: dict[str, Any]) -> bool:
    """Whether a job's scrapes make the exporter collect CEC accounts."""
    if job.get("metrics_path", "/metrics") == "/probe":
        return True
    return job.get("params", {}).get("collect[]") != ["exporter"]


def test_prometheus_config_has_one_active_exporter_job() -> None:
    """By default every account is scraped once: one /metrics job, no /probe job beside it."""
    jobs = _exporter_jobs(PROM_CONFIG)
    assert list(jobs) == ["cec-phone-exporter"]
    job = jobs["cec-phone-exporter"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert not job.get("params"), "the default job collects every account"
    assert [t for sc in job["static_configs"] for t in sc["targets"]] == ["exporter:9877"]
    text = PROM_CONFIG.read_text(encoding="utf-8")
    assert "prometheus-probe.yml" in text, "the alternative is documented"


def test_probe_config_is_a_complete_alternative() -> None:
    """prometheus-probe.yml: accounts through /probe only, the exporter's own metrics apart."""
    jobs = _exporter_jobs(PROBE_CONFIG)
    assert set(jobs) == {"cec-phone-exporter-probe", "cec-phone-exporter"}
    assert [name for name, job in jobs.items() if _collects_targets(job)] == [
        "cec-phone-exporter-probe"
    ], "no account may be collected by two jobs"
    own = jobs["cec-phone-exporter"]
    assert own.get("metrics_path", "/metrics") == "/metrics"
    assert own["params"] == {"collect[]": ["exporter"]}

    probe = jobs["cec-phone-exporter-probe"]
    assert probe["metrics_path"] == "/probe"
    # The names come from the exporter's /sd, never repeated here (tests/test_sharding.py
    # runs this file with a real Prometheus).
    assert "static_configs" not in probe
    assert [sd["url"] for sd in probe["http_sd_configs"]] == ["http://exporter:9877/sd"]
    relabel = {
        (tuple(r.get("source_labels", [])), r["target_label"]): r for r in probe["relabel_configs"]
    }
    assert (("__address__",), "__param_target") in relabel
    assert (("__param_target",), "instance") in relabel
    assert relabel[((), "__address__")]["replacement"] == "exporter:9877"


@pytest.mark.parametrize("path", [PROM_CONFIG, PROBE_CONFIG], ids=lambda p: p.name)
def test_prometheus_config_rules_and_alerting(path: Path) -> None:
    config = load_yaml(path)
    # Every exporter job is one of CECExporterDown's (the selector's default).
    selector = re.search(r'job=~"([^"]*)"', records()[EXPORTER_UP]["expr"])
    assert selector
    assert all(re.fullmatch(selector[1], name) for name in _exporter_jobs(path))
    assert config["rule_files"]
    assert any(
        Path(path.parent / pattern).parent.joinpath(RULES.name).exists()
        for pattern in config["rule_files"]
    )
    targets = [
        t
        for am in config["alerting"]["alertmanagers"]
        for sc in am["static_configs"]
        for t in sc["targets"]
    ]
    assert "alertmanager:9093" in targets


@pytest.mark.parametrize("path", [PROM_CONFIG, PROBE_CONFIG], ids=lambda p: p.name)
def test_promtool_check_config(path: Path) -> None:
    # Relative rule_files resolve against the config's folder.
    run_tool(require_tool("promtool"), "check", "config", str(path))


def test_alertmanager_config() -> None:
    config = load_yaml(AM_CONFIG)
    assert config["route"]["receiver"] in {r["name"] for r in config["receivers"]}
    # Target alerts carry no job or instance: grouping and inhibitions must not need them.
    assert not {"job", "instance"} & set(config["route"]["group_by"])
    for rule in config["inhibit_rules"]:
        assert rule["equal"] == ["target"], rule
    run_tool(require_tool("amtool"), "check-config", str(AM_CONFIG))


JOB_LABELS = 'job="monitoring/cec",instance="e:1"'


def test_alerts_adapt_through_the_tunables_alone(tmp_path: Path) -> None:
    """Another job name, another threshold and another runbook home: only tunables change."""
    promtool = require_tool("promtool")
    doc = load_yaml(RULES)
    tuned = {
        EXPORTER_UP: 'up{job="monitoring/cec"}',
        "cec:api_request_errors:max_ratio": "vector(0.25)",
    }
    base = "https://wiki.example.org/ops/cec-runbook.html"
    down = alerts()["CECExporterDown"]
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("record") in tuned:
                rule["expr"] = tuned[rule["record"]]
            if rule.get("record") == "cec:runbook:info":
                rule["labels"]["base_url"] = base
    adapted = tmp_path / "cec.rules.yml"
    adapted.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    adapted_alerts = [
        rule["expr"]
        for group in load_yaml(adapted)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    assert adapted_alerts == [a["expr"] for a in alerts().values()], (
        "no alert expression was edited"
    )

    def requests(outcome: str, per_minute: int) -> dict[str, str]:
        labels = f'{JOB_LABELS},target="prod",api="queryPhone",outcome="{outcome}"'
        return {"series": f"cec_api_requests_total{{{labels}}}", "values": f"0+{per_minute}x30"}

    suite = {
        "rule_files": [str(adapted)],
        "evaluation_interval": "1m",
        "group_eval_order": ["cec-phone-exporter.rules", "cec-phone-exporter.alerts"],
        "tests": [
            {
                "name": "a job named otherwise, healthy: silent (the default fires via absent)",
                "interval": "1m",
                "input_series": [
                    {"series": 'up{job="monitoring/cec",instance="e:1"}', "values": "1x15"}
                ],
                "alert_rule_test": [
                    {"eval_time": "15m", "alertname": "CECExporterDown", "exp_alerts": []}
                ],
            },
            {
                "name": "a job named otherwise, down: fires, linking to the adapted runbook",
                "interval": "1m",
                "input_series": [{"series": f"up{{{JOB_LABELS}}}", "values": "1x5 0x10"}],
                "alert_rule_test": [
                    {
                        "eval_time": "12m",
                        "alertname": "CECExporterDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "job": "monitoring/cec",
                                    "instance": "e:1",
                                },
                                "exp_annotations": {
                                    "summary": down["annotations"]["summary"],
                                    "description": "Prometheus cannot scrape e:1 (job "
                                    "monitoring/cec) for 5 minutes. There is no data about "
                                    "the CEC softphones.",
                                    "runbook_url": f"{base}#cecexporterdown",
                                },
                            }
                        ],
                    }
                ],
            },
            {
                "name": "20 % errors: above the default 10 %, below the tuned 25 %",
                "interval": "1m",
                "input_series": [requests("success", 40), requests("http_error", 10)],
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": "CECAPIErrorRatioHigh", "exp_alerts": []}
                ],
            },
            {
                "name": "40 % errors: above the tuned 25 %, which the description names",
                "interval": "1m",
                "input_series": [requests("success", 30), requests("http_error", 20)],
                "alert_rule_test": [
                    {
                        "eval_time": "20m",
                        "alertname": "CECAPIErrorRatioHigh",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "target": "prod",
                                    "api": "queryPhone",
                                },
                                "exp_annotations": {
                                    "summary": "Many CEC API requests fail.",
                                    "description": "40% of the queryPhone requests for CEC "
                                    "target prod did not succeed over the last 5 minutes "
                                    "(threshold 25%).",
                                    "runbook_url": f"{base}#cecapierrorratiohigh",
                                },
                            }
                        ],
                    }
                ],
            },
        ],
    }
    suite_path = tmp_path / "adapted.test.yml"
    suite_path.write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    run_tool(promtool, "test", "rules", str(suite_path))


def test_runbook_base_is_one_setting() -> None:
    """Every runbook_url reads the one base URL; the shipped base is the documented one."""
    info = records()["cec:runbook:info"]
    assert info["labels"]["base_url"] == RUNBOOK_BASE
    text = RULES.read_text(encoding="utf-8")
    assert text.count(RUNBOOK_BASE) == 1
