"""Helpers to run the bundled Grafana dashboard's queries against a real Prometheus.

Used by tests/test_ops_static.py (every query parses and returns data from a
throwaway Prometheus filled with synthetic series) and meant for the end-to-end
test (every query returns data from a Prometheus scraping a live exporter):

    from dashboard_queries import dashboard_queries, running_prometheus, query

    with running_prometheus(tmp_path, config_text) as prom:
        for q in dashboard_queries(job="cec-phone-exporter", rate_interval="1m"):
            result = query(prom.url, q.expr)   # raises on a PromQL error
            assert result, q.title

`dashboard_queries()` substitutes the dashboard's template variables: `$job`,
`$target` and `$tenant_id` become the given regular expressions (the
dashboard's "All" value is `.*`), `$__rate_interval` / `$__interval` /
`$__range` become the given durations. `${datasource}` never occurs in a query.

`grafana_variable_values()` resolves the variables from a running Prometheus
the way Grafana does when the dashboard opens (tests/test_dashboard_setups.py).

`running_alertmanager()` runs a real Alertmanager beside it (tests/test_alerting_e2e.py).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support import free_port
from support_procs import ServeProcess

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "cec-softphones.json"

# $name, ${name}, ${name:format}, [[name]]
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]")


@dataclass(frozen=True)
class PanelQuery:
    """One query of one dashboard panel."""

    panel_id: int
    title: str  # panel title
    ref_id: str  # the query's refId within the panel (A, B, ...)
    expr: str  # PromQL; template variables substituted unless raw=True
    instant: bool  # an instant query in Grafana (tables), else a range query

    @property
    def name(self) -> str:
        """A readable id, e.g. for pytest parametrization."""
        return f"{self.title} [{self.ref_id}]"


def load_dashboard(path: Path | str = DASHBOARD) -> dict[str, Any]:
    """The dashboard JSON as a dict."""
    with open(path, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, also those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute(
    expr: str,
    *,
    job: str = ".+",
    target: str = ".*",
    tenant_id: str = ".*",
    rate_interval: str = "1m",
    interval: str = "15s",
    range_: str = "1h",
    extra: dict[str, str] | None = None,
) -> str:
    """`expr` with Grafana's template variables replaced.

    job / target / tenant_id are put verbatim inside the `=~"..."` matchers of
    the dashboard, so they are regular expressions (escape literal values with
    re.escape when they contain regex characters; PromQL string escaping of
    backslashes is the caller's concern). An unknown variable raises KeyError.
    """
    values = {
        "job": job,
        "target": target,
        "tenant_id": tenant_id,
        "__rate_interval": rate_interval,
        "__interval": interval,
        "__range": range_,
    }
    values.update(extra or {})

    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g is not None)
        if name not in values:
            raise KeyError(f"unknown template variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def dashboard_queries(
    path: Path | str = DASHBOARD,
    *,
    raw: bool = False,
    **variables: Any,
) -> list[PanelQuery]:
    """Every panel query of the dashboard, variables substituted (see substitute()).

    With raw=True the expressions are returned as written in the dashboard.
    Hidden queries (`"hide": true`) are included: they are still sent.
    """
    queries = []
    for panel in iter_panels(load_dashboard(path)):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if not expr:
                continue
            queries.append(
                PanelQuery(
                    panel_id=panel.get("id", 0),
                    title=panel.get("title", ""),
                    ref_id=target.get("refId", ""),
                    expr=expr if raw else substitute(expr, **variables),
                    instant=bool(target.get("instant")) and not target.get("range", False),
                )
            )
    return queries


@dataclass(frozen=True)
class VariableQuery:
    """A `label_values(selector, label)` query of a template variable."""

    name: str  # the variable's name
    label: str  # the label whose values are listed
    selector: str  # series selector (variables substituted unless raw)


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*),\s*)?(\w+)\s*\)\s*$", re.S)


def variable_queries(
    path: Path | str = DASHBOARD, *, raw: bool = False, **variables: Any
) -> list[VariableQuery]:
    """The dashboard's `label_values(...)` template variables, in order."""
    result = []
    for var in load_dashboard(path).get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        match = _LABEL_VALUES.match(text)
        if not match:
            raise ValueError(f"variable {var.get('name')}: not a label_values() query: {text!r}")
        selector = match.group(1) or ""
        if not raw:
            selector = substitute(selector, **variables)
        result.append(VariableQuery(var["name"], match.group(2), selector))
    return result


# Characters Grafana escapes in each value of a multi-value or All regex
# (prometheusSpecialRegexEscape in Grafana's Prometheus data source).
_GRAFANA_REGEX_SPECIAL = re.compile(r"([$^*{}\[\]'+?.()|\\])")


def grafana_variable_values(
    base_url: str, start: float, end: float, path: Path | str = DASHBOARD
) -> dict[str, str]:
    """Each query variable's value as Grafana would set it on opening the dashboard.

    Variables are resolved in order, each query seeing the values before it:
    a multi-value variable whose default is All takes its allValue, or a regex
    of every value listed (`(a|b)`, as Grafana builds it when no allValue is
    set); a single-select variable takes the first value its query lists
    (after the variable's sort). A variable whose query lists nothing is `""`.
    """
    values: dict[str, str] = {}
    raw = {v.name: v for v in variable_queries(path, raw=True)}
    for var in load_dashboard(path)["templating"]["list"]:
        if var.get("type") != "query":
            continue
        vq = raw[var["name"]]
        listed: list[str] = api_get(
            base_url,
            f"/api/v1/label/{vq.label}/values",
            [
                ("match[]", substitute(vq.selector, **values)),
                ("start", f"{start:.0f}"),
                ("end", f"{end:.0f}"),
            ],
        )
        listed = sorted(listed, reverse=var.get("sort") == 2)  # 1: ascending, 2: descending
        current = var.get("current", {}).get("value")
        if var.get("multi") or var.get("includeAll"):
            assert current in (["$__all"], "$__all"), f"{var['name']}: default is not All"
            if var.get("allValue"):
                values[var["name"]] = var["allValue"]
            else:
                escaped = [_GRAFANA_REGEX_SPECIAL.sub(r"\\\\\1", v) for v in listed]
                values[var["name"]] = "(" + "|".join(escaped) + ")"
        else:
            values[var["name"]] = listed[0] if listed else ""
    return values


# --------------------------------------------------------------- Prometheus


def api_get(
    base_url: str,
    path: str,
    params: dict[str, Any] | list[tuple[str, str]] | None = None,
    timeout: float = 10,
) -> Any:
    """GET a Prometheus HTTP API path; returns `data`, raises on an API error."""
    url = base_url + path
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as err:
        body = json.load(err)
    if body.get("status") != "success":
        raise RuntimeError(f"{path} failed: {body.get('errorType')}: {body.get('error')} ({url})")
    return body["data"]


def query(base_url: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """Instant query; returns the result vector (raises on a PromQL error)."""
    params: dict[str, Any] = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    data = api_get(base_url, "/api/v1/query", params)
    result: list[dict[str, Any]] = (
        data["result"]
        if data["resultType"] in ("vector", "matrix")
        else [{"value": data["result"]}]
    )
    return result


def query_range(
    base_url: str, expr: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    """Range query, as Grafana sends for time series panels."""
    data = api_get(
        base_url,
        "/api/v1/query_range",
        {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"},
    )
    result: list[dict[str, Any]] = data["result"]
    return result


PrometheusProcess = ServeProcess  # running_prometheus() yields one


@contextlib.contextmanager
def running_prometheus(
    workdir: Path,
    config_text: str,
    *,
    binary: str = "prometheus",
    extra_args: tuple[str, ...] = (),
    storage: Path | None = None,
    ready_timeout: float = 60,
) -> Iterator[PrometheusProcess]:
    """Run a Prometheus on 127.0.0.1 with `config_text`, stopped on exit.

    `storage` is the TSDB dir (default: workdir/data); put backfilled blocks
    there before starting. Relative paths in the config (rule_files) resolve
    against workdir, where the config is written.
    """
    exe = shutil.which(binary)
    if exe is None:
        raise FileNotFoundError(binary)
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(config_text, encoding="utf-8")
    storage = storage or workdir / "data"
    storage.mkdir(parents=True, exist_ok=True)
    port = free_port()
    flags = [f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"]
    flags += [f"--storage.tsdb.path={storage}", *extra_args]
    prom = PrometheusProcess(*flags, **_settings(exe, port, workdir))
    try:
        yield prom.start(timeout=ready_timeout)
    finally:
        prom.stop()


def _settings(exe: str, port: int, workdir: Path) -> dict[str, Any]:
    """ServeProcess settings of a Prometheus-family server: its program, port and session."""
    url = f"http://127.0.0.1:{port}"
    place = {"cwd": workdir, "new_session": True}
    return {"program": (exe,), "command": (), "url": url, "ready": "/-/ready", **place}


def backfill_openmetrics(
    text: str, storage: Path, workdir: Path, promtool: str = "promtool"
) -> None:
    """Write OpenMetrics `text` (with timestamps, ending in '# EOF') as TSDB blocks into storage."""
    exe = shutil.which(promtool)
    if exe is None:
        raise FileNotFoundError(promtool)
    source = workdir / "backfill.om"
    source.write_text(text, encoding="utf-8")
    storage.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [exe, "tsdb", "create-blocks-from", "openmetrics", str(source), str(storage)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"promtool backfill failed:\n{proc.stdout}\n{proc.stderr}")


# ------------------------------------------------------------- Alertmanager


class AlertmanagerProcess(ServeProcess):
    """An Alertmanager in a subprocess, as running_alertmanager() yields it."""

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """`GET /api/v2/alerts` (label matchers as `filter=name="value"`)."""
        url = self.url + "/api/v2/alerts"
        if filters:
            url += "?" + urllib.parse.urlencode(
                [("filter", f'{name}="{value}"') for name, value in filters.items()]
            )
        with urllib.request.urlopen(url, timeout=10) as resp:
            alerts: list[dict[str, Any]] = json.load(resp)
        return alerts


ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")


@contextlib.contextmanager
def running_alertmanager(
    workdir: Path,
    config_text: str,
    *,
    binary: str | None = None,
    extra_args: tuple[str, ...] = (),
    ready_timeout: float = 60,
) -> Iterator[AlertmanagerProcess]:
    """Run an Alertmanager on 127.0.0.1 with `config_text` and no cluster gossip, stopped on exit.

    `binary` defaults to the first of ALERTMANAGER_BINARIES on PATH (Debian
    names it prometheus-alertmanager).
    """
    names = (binary,) if binary else ALERTMANAGER_BINARIES
    exe = next((path for path in map(shutil.which, names) if path), None)
    if exe is None:
        raise FileNotFoundError(" or ".join(names))
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "alertmanager.yml"
    config.write_text(config_text, encoding="utf-8")
    storage = workdir / "am-data"
    storage.mkdir(parents=True, exist_ok=True)
    port = free_port()
    flags = [f"--config.file={config}", f"--storage.path={storage}"]
    flags += [f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", *extra_args]
    am = AlertmanagerProcess(*flags, **_settings(exe, port, workdir))
    try:
        yield am.start(timeout=ready_timeout)
    finally:
        am.stop()
