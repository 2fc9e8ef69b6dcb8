"""Sharding and HA on Prometheus (issue 11), with real Prometheus processes on loopback.

- Prometheus discovers the targets from the exporter's ``/sd`` (``http_sd_configs``,
  behind basic auth) and, with the shipped ``prometheus/prometheus-sharded.yml``,
  sends each account to exactly one of two ``serve`` replicas.
- An HA pair (two Prometheus servers, each with the shipped
  ``prometheus/prometheus-probe.yml``, scraping one exporter) with
  ``cache_ttl_seconds`` a little below the scrape interval costs the vendor one
  collection per interval, not two.

External tool: prometheus (Debian package); missing, it skips locally and fails under CI.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import httpx2
import pytest
import yaml
from support import basic_auth, samples_named, target_entry
from support_procs import ServeProcess
from test_alerting_e2e import require_tool, wait_for

from exporter.simulator import Simulator

try:
    import dashboard_queries as dq
except ImportError:  # tests/ imported as a package
    from tests import dashboard_queries as dq  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
SHARDED = ROOT / "prometheus" / "prometheus-sharded.yml"
PROBE = ROOT / "prometheus" / "prometheus-probe.yml"
K8S = ROOT / "deploy" / "kubernetes"
NAMES = [f"acct-{i}" for i in range(8)]
PROBE_JOB = "cec-phone-exporter-probe"
USER, PASSWORD = "prometheus", "shard-pw-horse"


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def test_sharded_manifests_keep_the_base_pod_spec() -> None:
    """The per-replica Deployments are the base one but for names and the instance label."""
    (base,) = load_docs(K8S / "deployment.yaml")
    docs = load_docs(K8S / "sharded" / "shards.yaml")
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert [d["metadata"]["name"] for d in deployments] == [
        "cec-phone-exporter-0",
        "cec-phone-exporter-1",
    ]
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        assert deployment["spec"]["template"]["spec"] == base["spec"]["template"]["spec"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels == {
            **base["spec"]["template"]["metadata"]["labels"],
            "app.kubernetes.io/instance": name,
        }
        assert deployment["spec"]["replicas"] == 1
        assert services[name]["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    # prometheus-sharded.yml talks to exactly these Services.
    text = SHARDED.read_text(encoding="utf-8")
    for name in services:
        assert f"{name}:9877" in text


def test_sharded_prometheus_config_passes_promtool() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(SHARDED)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def start_replicas(
    n: int,
    config: Path,
    tmp_path: Path,
    serve_process: Callable[..., ServeProcess],
) -> list[ServeProcess]:
    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web.write_text(yaml.safe_dump({"basic_auth_users": {USER: hashed}}))
    replicas = [serve_process("--config", str(config), "--web-config", str(web)) for _ in range(n)]
    return [r.start() for r in replicas]


def collected_targets(replica: ServeProcess) -> set[str]:
    """Targets this replica has collected (its own cec_api_requests_total, success)."""
    response = httpx2.get(
        replica.url + "/metrics?collect[]=exporter", headers=basic_auth(USER, PASSWORD), timeout=10
    )
    response.raise_for_status()
    return {
        labels["target"]
        for labels, value in samples_named(response.text, "cec_api_requests_total")
        if labels["api"] == "queryPhone" and labels["outcome"] == "success" and value > 0
    }


def test_prometheus_shards_targets_from_sd_across_two_replicas(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
    tmp_path: Path,
) -> None:
    require_tool("prometheus")
    sim = simulator(phones=5)
    config = write_config(targets=[target_entry(sim, name) for name in NAMES])
    replicas = start_replicas(2, config, tmp_path, serve_process)
    addresses = [r.url.removeprefix("http://") for r in replicas]
    with dq.running_prometheus(
        tmp_path / "prometheus", shipped_config(SHARDED, addresses, "1s")
    ) as prom:

        def probe_targets() -> list[dict[str, Any]]:
            active = dq.api_get(prom.url, "/api/v1/targets", {"state": "active"})["activeTargets"]
            return [t for t in active if t["labels"]["job"] == PROBE_JOB]

        wait_for(
            "every account scraped once and up",
            probe_targets,
            lambda ts: len(ts) == len(NAMES) and all(t["health"] == "up" for t in ts),
            timeout=60,
        )
        wait_for(
            "cec_up 1 for every account",
            lambda: dq.query(prom.url, f'cec_up{{job="{PROBE_JOB}"}} == 1'),
            lambda r: len(r) == len(NAMES),
            timeout=30,
        )
        # The own-metrics job is scraped on its own schedule: wait for both replicas.
        wait_for(
            "both replicas' own metrics scraped and up",
            lambda: dq.query(prom.url, 'up{job="cec-phone-exporter"} == 1'),
            lambda r: len(r) == len(replicas),
            timeout=30,
        )
        targets = probe_targets()
        assigned: dict[str, set[str]] = {a: set() for a in addresses}
        for t in targets:
            replica = t["scrapeUrl"].split("/")[2]
            assigned[replica].add(t["labels"]["instance"])
        assert {t["labels"]["instance"] for t in targets} == set(NAMES)
        assert {t["scrapePool"] for t in targets} == {f"{PROBE_JOB}-0", f"{PROBE_JOB}-1"}
        # hashmod split these names 5 / 3 (any non-empty split proves the point).
        assert all(assigned.values()), assigned
        # Each replica collected exactly the accounts Prometheus sent it, no other.
        for replica, address in zip(replicas, addresses, strict=True):
            assert collected_targets(replica) == assigned[address]
        assert assigned[addresses[0]].isdisjoint(assigned[addresses[1]])
    for replica in replicas:
        assert "Traceback" not in replica.stop()


def shipped_config(path: Path, addresses: list[str], interval: str, **global_: Any) -> str:
    """A shipped scrape config, pointed at exporters on loopback (basic auth on, no rules).

    ``exporter:9877`` (prometheus-probe.yml) or ``cec-phone-exporter-N:9877``
    (prometheus-sharded.yml) become the addresses, in order.
    """
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config.pop("rule_files")
    config.pop("alerting")
    config["scrape_configs"] = [
        j for j in config["scrape_configs"] if j["job_name"] != "prometheus"
    ]
    config["global"].update(scrape_interval=interval, scrape_timeout="1s", **global_)
    auth = {"basic_auth": {"username": USER, "password": PASSWORD}}
    for job in config["scrape_configs"]:
        job.update(copy.deepcopy(auth))
        for sd in job.get("http_sd_configs", []):
            sd.update(copy.deepcopy(auth), refresh_interval="1s")
    text = yaml.safe_dump(config)
    names = ["exporter:9877"] if len(addresses) == 1 else []
    names += [f"cec-phone-exporter-{i}:9877" for i in range(len(addresses))]
    for i, address in enumerate(addresses):
        text = text.replace(names[i], address)
    assert "exporter:9877" not in text
    return text


def ha_config(address: str, replica: str) -> str:
    """One server of an HA pair: the shipped prometheus-probe.yml (targets from /sd)."""
    return shipped_config(PROBE, [address], "2s", external_labels={"replica": replica})


def test_ha_pair_with_cache_costs_one_collection_per_interval(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    serve_process: Callable[..., ServeProcess],
    tmp_path: Path,
) -> None:
    """Two Prometheus servers scrape one exporter every 2 s; cache_ttl_seconds is 1.6 s."""
    require_tool("prometheus")
    sim = simulator(phones=5)  # one page: one queryPhone request per collection
    config = write_config(targets=[target_entry(sim, "ha", cache_ttl_seconds=1.6)])
    (replica,) = start_replicas(1, config, tmp_path, serve_process)
    address = replica.url.removeprefix("http://")
    with (
        dq.running_prometheus(tmp_path / "a", ha_config(address, "a")) as a,
        dq.running_prometheus(tmp_path / "b", ha_config(address, "b")) as b,
    ):

        def scrapes(prom: dq.PrometheusProcess) -> int:
            result = dq.query(prom.url, f'count_over_time(up{{job="{PROBE_JOB}"}}[1h])')
            return int(float(result[0]["value"][1])) if result else 0

        wait_for(
            "8 scrapes by each server",
            lambda: min(scrapes(a), scrapes(b)),
            lambda n: n >= 8,
            timeout=60,
        )
        collections = sim.stats()["query_requests"]
        by_a, by_b = scrapes(a), scrapes(b)
        assert isinstance(collections, int)
        # Two servers, one collection per interval: about as many as either server's scrapes.
        assert collections <= max(by_a, by_b) + 2, (collections, by_a, by_b)
        assert by_a + by_b >= collections * 1.6, (collections, by_a, by_b)
        # The other server was answered from the cache, and every answer was up.
        ages = [
            dq.query(p.url, f'max_over_time(cec_collection_age_seconds{{job="{PROBE_JOB}"}}[1h])')
            for p in (a, b)
        ]
        assert max(float(r[0]["value"][1]) for r in ages) > 0
        for prom in (a, b):
            assert dq.query(prom.url, f'min_over_time(cec_up{{job="{PROBE_JOB}"}}[1h]) == 1')
    assert "Traceback" not in replica.stop()
