"""The bundled dashboard in every shipped Prometheus setup (issue 18), on real processes.

For each of prometheus/prometheus.yml (plain /metrics), prometheus-probe.yml
(/probe per account plus the exporter's own metrics) and prometheus-sharded.yml
(two replicas), a real Prometheus scrapes real `serve` processes that collect
the simulator, with the faults that give the error panels something to show.
The template variables are then resolved as Grafana resolves them when the
dashboard opens (tests/dashboard_queries.py: grafana_variable_values), and
every panel query must return data. An HA pair (two exporters behind one job)
must not show a target twice: every series of a panel query has its own legend.
On a healthy system (no fault ever) every panel has data too: the panels about
failures draw 0, not "No data".

External tool: prometheus (Debian package); missing, it skips locally and fails under CI.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import target_entry
from support_procs import ServeProcess
from test_alerting_e2e import require_tool, wait_for
from test_sharding import NAMES, PROBE, SHARDED, shipped_config, start_replicas

from exporter.simulator import Fault, Simulator

try:
    import dashboard_queries as dq
except ImportError:  # tests/ imported as a package
    from tests import dashboard_queries as dq  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
PLAIN = ROOT / "prometheus" / "prometheus.yml"
RATE_INTERVAL = "15s"  # $__rate_interval for 1s scrapes
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")

# setup -> (shipped config, exporter replicas, accounts)
SETUPS = {
    "plain": (PLAIN, 1, NAMES[:2]),
    "probe": (PROBE, 1, NAMES[:2]),
    "sharded": (SHARDED, 2, NAMES),
    "plain-ha": (PLAIN, 2, NAMES[:2]),  # two replicas behind the one exporter job
}


def ha_plain_config(addresses: list[str]) -> str:
    """prometheus.yml with its exporter job scraping two replicas (an HA pair)."""
    config = yaml.safe_load(shipped_config(PLAIN, addresses[:1], "1s"))
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": addresses}]
    return yaml.safe_dump(config)


def panel_results(
    prom: dq.PrometheusProcess, variables: dict[str, str]
) -> dict[str, list[dict[str, Any]]]:
    """Every panel query's result over the last 30 s, run as Grafana runs it."""
    end = time.time()
    results = {}
    for q in dq.dashboard_queries(rate_interval=RATE_INTERVAL, **variables):
        key = f"{q.name} #{q.panel_id}"  # titles repeat across panels (a stat and its graph)
        if q.instant:
            results[key] = dq.query(prom.url, q.expr, at=end)
        else:
            results[key] = dq.query_range(prom.url, q.expr, end - 30, end, 1)
    return results


def legends() -> dict[str, str]:
    """Each panel query's legendFormat, by PanelQuery name."""
    found = {}
    for panel in dq.iter_panels(dq.load_dashboard()):
        for target in panel.get("targets", []):
            key = f"{panel.get('title', '')} [{target.get('refId', '')}] #{panel.get('id', 0)}"
            found[key] = target.get("legendFormat", "")
    return found


def duplicate_legends(results: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    """Panel queries drawing two series under one legend (a target counted twice)."""
    doubled = {}
    for name, legend in legends().items():
        if legend in ("", "__auto"):
            continue  # tables: every label is a column
        labels = _LEGEND.findall(legend)
        shown = [tuple(s["metric"].get(label, "") for label in labels) for s in results[name]]
        if len(shown) != len(set(shown)):
            doubled[name] = [str(s) for s in shown]
    return doubled


def wait_for_every_panel(prom: dq.PrometheusProcess, what: str) -> dict[str, str]:
    """Wait until every panel query returns data, run as Grafana runs it (failing with the
    names of those still empty after 60 s); the template variables Grafana resolved."""

    def empty_panels() -> tuple[dict[str, str], list[str]]:
        variables = dq.grafana_variable_values(prom.url, time.time() - 300, time.time())
        results = panel_results(prom, variables)
        return variables, sorted(name for name, result in results.items() if not result)

    variables, _ = wait_for(what, empty_panels, lambda found: not found[1], timeout=60, step=1)
    return variables


def start_stack(
    setup: str,
    sim: Simulator,
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
    tmp_path: Path,
) -> tuple[str, list[ServeProcess]]:
    """The exporter replicas of `setup` and the Prometheus config that scrapes them."""
    path, replicas, names = SETUPS[setup]
    config = write_config(targets=[target_entry(sim, name) for name in names])
    running = start_replicas(replicas, config, tmp_path, serve_process)
    addresses = [r.url.removeprefix("http://") for r in running]
    if setup == "plain-ha":
        return ha_plain_config(addresses), running
    return shipped_config(path, addresses, "1s"), running


@pytest.mark.timeout(150)
@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_every_panel_has_data_in_each_shipped_setup(
    setup: str,
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
    tmp_path: Path,
) -> None:
    require_tool("prometheus")
    sim = simulator(phones=250, tenants=2, suspended_ratio=0.1, unknown_ratio=0.05, mode="pool")
    # One retCode failure and one HTTP 500 (retried): the error panels get a series.
    sim.set_faults(
        [
            Fault(kind="ret_code", value="1", pages=(0,), times=1),
            Fault(kind="http_status", value=500, pages=(1,), times=1),
        ]
    )
    prom_config, replicas = start_stack(setup, sim, write_config, serve_process, tmp_path)
    with dq.running_prometheus(tmp_path / "prometheus", prom_config) as prom:
        variables = wait_for_every_panel(prom, f"every panel with data ({setup})")
        expected_jobs = {"cec-phone-exporter"}
        if not setup.startswith("plain"):
            expected_jobs.add("cec-phone-exporter-probe")
        assert set(variables["job"].strip("()").split("|")) == expected_jobs
        doubled = duplicate_legends(panel_results(prom, variables))
        assert not doubled, f"series drawn twice under one legend: {doubled}"
        results = panel_results(prom, variables)
        [total] = [
            results[f"{p['title']} [A] #{p['id']}"]
            for p in dq.iter_panels(dq.load_dashboard())
            if p["type"] == "stat" and p["title"] == "Allocated softphones"
        ]
        # Every account once, however many replicas report it.
        assert float(total[0]["values"][-1][1]) == 250 * len(SETUPS[setup][2])
    for replica in replicas:
        assert "Traceback" not in replica.stop()


# Panels about failures: on a healthy system they draw 0, not "No data" (issue 25).
ERROR_PANELS = {
    "API error ratio",
    "retCode failures by code",
    "HTTP errors by status code",
    "Collection failures by reason",
    "Scrapes abandoned at their deadline",
}


@pytest.mark.timeout(150)
def test_error_panels_show_zero_on_a_healthy_system(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
    tmp_path: Path,
) -> None:
    require_tool("prometheus")
    sim = simulator(phones=250, tenants=2, mode="pool")  # no fault: nothing ever failed
    prom_config, replicas = start_stack("plain", sim, write_config, serve_process, tmp_path)
    titles = {p["title"] for p in dq.iter_panels(dq.load_dashboard())}
    assert titles >= ERROR_PANELS, ERROR_PANELS - titles
    with dq.running_prometheus(tmp_path / "prometheus", prom_config) as prom:
        variables = wait_for_every_panel(prom, "every panel with data on a healthy system")
        found = panel_results(prom, variables)
        errors = {name: rows for name, rows in found.items() if name.split(" [")[0] in ERROR_PANELS}
        assert len(errors) == len(ERROR_PANELS)
        drawn = {
            name: {float(value) for row in rows for _, value in row["values"]}
            for name, rows in errors.items()
        }
        assert all(values == {0.0} for values in drawn.values()), drawn
        assert not duplicate_legends(found)
    for replica in replicas:
        assert "Traceback" not in replica.stop()
