"""The whole data path over loopback: simulator -> CEC client -> collector -> HTTP."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support import expected_counts, run_cli, sample, samples_named, target_entry
from support import softphone_counts as counts

from exporter import __version__
from exporter.simulator import Fault

GOLDEN = Path(__file__).parent / "golden"
COUNT_SERIES = (
    "cec_softphones",
    "cec_softphones_allocated",
    "cec_registration_endpoint_info",
    "cec_collection_age_seconds",
)


def endpoints(text: str) -> list[dict[str, str]]:
    return sorted(
        (labels for labels, value in samples_named(text, "cec_registration_endpoint_info")),
        key=lambda labels: sorted(labels.items()),
    )


def requests_total(text: str, api: str, outcome: str, target: str = "sim") -> float | None:
    return sample(text, "cec_api_requests_total", target=target, api=api, outcome=outcome)


# --- counts and shapes ----------------------------------------------------------------


def test_exact_counts_by_tenant_and_status_over_many_pages(
    simulator, write_config, exporter_server
):
    sim = simulator(phones=3456, tenants=5, suspended_ratio=0.23, unknown_ratio=0.05)
    ex = exporter_server(write_config(targets=[target_entry(sim, page_size=100)]))
    text = ex.metrics()
    assert sample(text, "cec_up", target="sim") == 1
    assert sample(text, "cec_softphones_allocated", target="sim") == 3456
    assert counts(text) == expected_counts(sim)
    assert sum(counts(text).values()) == 3456
    statuses = {status for _, status in counts(text)}
    assert statuses == {"registered", "suspended", "unknown"}
    assert sim.stats()["query_requests"] == 35  # ceil(3456 / 100) pages, each read once


def test_small_page_size_and_numbers_as_strings(simulator, write_config, exporter_server):
    sim = simulator(phones=97, tenants=2, numbers_as_strings=True)
    config = write_config(targets=[target_entry(sim, page_size=10, pagination_as_strings=True)])
    text = exporter_server(config).metrics()
    assert counts(text) == expected_counts(sim)
    assert sim.stats()["pagination_types"] == {"number": 0, "string": 10}


def test_legacy_shape_from_the_vendor_example(simulator, write_config, exporter_server):
    sim = simulator(phones=2, mode="legacy")
    text = exporter_server(write_config(targets=[target_entry(sim)])).metrics()
    assert sample(text, "cec_up", target="sim") == 1
    assert sample(text, "cec_softphones_allocated", target="sim") == 2
    assert counts(text) == {("", "unknown"): 2}
    assert endpoints(text) == [
        {
            "target": "sim",
            "mode": "legacy",
            "node": "",
            "reg_ip": "10.162.98.43",
            "reg_port": "5060",
            "sip_ip": "",
            "sip_port": "",
        }
    ]


def test_vendor_doc_example_body_parses_as_two_unknown_phones():
    """The exact response example printed in the vendor's queryPhone page."""
    from exporter.cec.parse import parse_page
    from exporter.cec.records import Status
    from exporter.cec.snapshot import SnapshotBuilder

    # Copied verbatim from shared/vendor/queryPhone-v2.0.0.txt ("Response parameters").
    body = (GOLDEN / "vendor_example.json").read_text().strip()
    builder = SnapshotBuilder()
    builder.add(parse_page(body.encode()))
    snap = builder.build()
    assert snap.total == 2
    assert snap.counts == {("", Status.UNKNOWN): 2}
    assert [(e.mode, e.reg_ip, e.reg_port) for e in snap.endpoints] == [
        ("legacy", "10.162.98.43", "5060")
    ]


def test_pool_mode_gives_one_endpoint_series_per_node(simulator, write_config, exporter_server):
    sim = simulator(phones=150, mode="pool", pool_nodes=3)
    text = exporter_server(write_config(targets=[target_entry(sim)])).metrics()
    found = endpoints(text)
    assert [e["node"] for e in found] == ["node1", "node2", "node3"]
    assert {e["mode"] for e in found} == {"pool"}
    assert len({(e["reg_ip"], e["sip_ip"]) for e in found}) == 3
    keys = ("mode", "node", "reg_ip", "reg_port", "sip_ip", "sip_port")
    want = [
        {"target": "sim", **dict(zip(keys, ep, strict=True))} for ep in sim.expected().endpoints
    ]
    assert found == sorted(want, key=lambda labels: sorted(labels.items()))


def test_per_phone_metrics_are_opt_in(simulator, write_config, exporter_server):
    sim = simulator(phones=30, tenants=2, suspended_ratio=0.3)
    off = exporter_server(write_config(targets=[target_entry(sim, name="off")]))
    assert samples_named(off.metrics(), "cec_softphone_registered") == []
    on = exporter_server(write_config(targets=[target_entry(sim, per_phone_metrics=True)]))
    series = samples_named(on.metrics(), "cec_softphone_registered")
    assert len(series) == 30
    suspended = sim.expected().counts
    registered = sum(n for (_, status), n in suspended.items() if status == "registered")
    assert sum(value for _, value in series) == registered


# --- tokens -----------------------------------------------------------------------------


def test_one_token_serves_many_scrapes(simulator, write_config, exporter_server):
    sim = simulator(phones=500)
    ex = exporter_server(write_config(targets=[target_entry(sim)]))
    for _ in range(5):
        assert sample(ex.metrics(), "cec_up", target="sim") == 1
    stats = sim.stats()
    assert stats["tokens_issued"] == 1
    assert stats["query_requests"] == 25
    assert sim.stats()["token_expire_requested"][-1] == 600
    text = ex.metrics()
    assert requests_total(text, "tokenByAkSk", "success") == 1
    expiry = sample(text, "cec_token_expiry_timestamp_seconds", target="sim")
    assert expiry is not None
    assert expiry > 0


@pytest.mark.slow
def test_a_token_that_expires_is_renewed_before_use(simulator, write_config, exporter_server):
    sim = simulator(phones=50, token_max_seconds=2)
    ex = exporter_server(write_config(targets=[target_entry(sim)]))
    assert sample(ex.metrics(), "cec_up", target="sim") == 1
    time.sleep(2.2)  # past the token's life: the exporter must ask for a new one first
    assert sample(ex.metrics(), "cec_up", target="sim") == 1
    stats = sim.stats()
    assert stats["tokens_issued"] == 2
    assert stats["unauthorized"] == 0


def test_a_401_mid_paging_costs_exactly_one_new_token(simulator, write_config, exporter_server):
    sim = simulator(phones=1000)
    ex = exporter_server(write_config(targets=[target_entry(sim, max_concurrency=4)]))
    assert sample(ex.metrics(), "cec_up", target="sim") == 1
    sim.set_faults([Fault(kind="http_status", value=401, pages=(6,), times=1)])
    sim.reset_stats()
    text = ex.metrics()
    assert sample(text, "cec_up", target="sim") == 1
    assert counts(text) == expected_counts(sim)
    assert sim.stats()["tokens_issued"] == 1
    assert (
        sample(text, "cec_api_http_errors_total", target="sim", api="queryPhone", status_code="401")
        == 1
    )
    assert requests_total(text, "queryPhone", "http_error") == 1


def test_tokens_revoked_by_the_server_are_replaced_once(simulator, write_config, exporter_server):
    sim = simulator(phones=800)
    ex = exporter_server(write_config(targets=[target_entry(sim, max_concurrency=8)]))
    assert sample(ex.metrics(), "cec_up", target="sim") == 1
    sim.expire_tokens()
    sim.reset_stats()
    assert sample(ex.metrics(), "cec_up", target="sim") == 1
    assert sim.stats()["tokens_issued"] == 1


def test_targets_of_one_vendor_app_share_one_token(simulator, write_config, exporter_server):
    """One app, three tenant spaces: one token call, renewed once for all after a revoke."""
    sim, other = simulator(phones=250), simulator(phones=10, app_secret="another-secret")
    targets = [target_entry(sim, f"space-{n}", tenant_space_id=f"ts{n}") for n in range(3)]
    ex = exporter_server(write_config(targets=[*targets, target_entry(other, "other")]))
    text = ex.metrics()
    names = ("space-0", "space-1", "space-2", "other")
    assert [sample(text, "cec_up", target=name) for name in names] == [1, 1, 1, 1]
    assert sim.stats()["token_requests"] == 1
    assert other.stats()["token_requests"] == 1  # another app (and secret): its own token
    expiry = {sample(text, "cec_token_expiry_timestamp_seconds", target=n) for n in names[:3]}
    assert len(expiry) == 1
    assert None not in expiry
    sim.expire_tokens()  # the vendor revokes it: the 401s cost one new token, not three
    text = ex.metrics()
    assert [sample(text, "cec_up", target=name) for name in names[:3]] == [1, 1, 1]
    assert sim.stats()["tokens_issued"] == 2
    assert sum(requests_total(text, "tokenByAkSk", "success", n) for n in names[:3]) == 2


def test_one_secret_value_is_one_token_wherever_it_is_written(
    simulator, write_config, exporter_server, tmp_path
):
    """One app behind a gateway that keeps one live token per app, written four ways: the
    secret inline, in a file, in another file with the same content, and the base URL
    as ``HTTP://`` with a trailing ``/``. A token each made them revoke one another in
    turn (56-64 token calls and 130 401s in 10 scrapes); one value, one token."""
    sim = simulator(phones=250, one_token_per_app=True)
    files = [tmp_path / "secret-a", tmp_path / "secret-b"]
    for path in files:
        path.write_text(sim.config.app_secret + "\n")
    by_file = [
        {**target_entry(sim, f"file-{n}"), "app_secret": None, "app_secret_file": str(path)}
        for n, path in enumerate(files)
    ]
    shouting = {**target_entry(sim, "shouting"), "base_url": sim.url.upper() + "/"}
    ex = exporter_server(write_config(targets=[target_entry(sim, "inline"), *by_file, shouting]))
    names = ("inline", "file-0", "file-1", "shouting")
    for _ in range(10):
        text = ex.metrics()
        assert [sample(text, "cec_up", target=name) for name in names] == [1, 1, 1, 1]
    stats = sim.stats()
    assert stats["token_requests"] == 1
    assert stats["unauthorized"] == 0
    assert ex.exporter.upstream.pools == 1


@pytest.mark.slow
def test_a_failed_early_renewal_keeps_the_held_token_until_it_expires(
    simulator, write_config, exporter_server
):
    """The renewal 1 s ahead of expiry answers 503: the collection uses the held token."""
    sim = simulator(phones=250, token_max_seconds=5)
    ex = exporter_server(write_config(targets=[target_entry(sim)]))
    text = ex.metrics()
    assert sample(text, "cec_up", target="sim") == 1
    expires_at = sample(text, "cec_token_expiry_timestamp_seconds", target="sim")
    sim.set_faults([Fault("http_status", api="tokenByAkSk", value=503)])
    time.sleep(max(0.0, expires_at - 0.8 - time.time()))  # renewal due, token still valid
    text = ex.metrics()
    assert sample(text, "cec_up", target="sim") == 1
    assert counts(text) == expected_counts(sim)
    assert requests_total(text, "tokenByAkSk", "http_error") == 1  # one try, counted
    assert sample(text, "cec_collection_failures_total", target="sim", reason="http_error") == 0
    assert sim.stats()["tokens_issued"] == 1
    time.sleep(max(0.0, expires_at + 0.2 - time.time()))  # now it has really expired
    text = ex.metrics()
    assert sample(text, "cec_up", target="sim") == 0
    assert sample(text, "cec_collection_failures_total", target="sim", reason="http_error") == 1


# --- failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("ret_code", ["1", "2", "3", "4", "5"])
@pytest.mark.parametrize("page", [0, 2])
def test_ret_codes_set_up_to_zero_and_hide_counts(
    simulator, write_config, exporter_server, ret_code, page
):
    sim = simulator(phones=300)
    sim.set_faults([Fault(kind="ret_code", value=ret_code, pages=(page,))])
    ex = exporter_server(write_config(targets=[target_entry(sim, max_concurrency=1)]))
    text = ex.metrics()
    assert sample(text, "cec_up", target="sim") == 0
    for name in COUNT_SERIES:
        assert samples_named(text, name) == [], name
    assert sample(text, "cec_collection_duration_seconds", target="sim") is not None
    assert samples_named(text, "cec_last_success_timestamp_seconds") == []
    assert (
        sample(
            text,
            "cec_api_ret_code_failures_total",
            target="sim",
            api="queryPhone",
            ret_code=ret_code,
        )
        == 1
    )
    assert requests_total(text, "queryPhone", "ret_code_error") == 1
    sim.clear_faults()
    text = ex.metrics()
    assert sample(text, "cec_up", target="sim") == 1
    assert sample(text, "cec_last_success_timestamp_seconds", target="sim") is not None


def test_one_failing_target_leaves_the_other_up(simulator, write_config, exporter_server):
    good, bad = simulator(phones=120), simulator(phones=120)
    bad.set_faults([Fault(kind="http_status", value=404)])
    config = write_config(targets=[target_entry(good, "good"), target_entry(bad, "bad")])
    ex = exporter_server(config)
    text = ex.metrics()
    assert sample(text, "cec_up", target="good") == 1
    assert sample(text, "cec_up", target="bad") == 0
    assert sample(text, "cec_softphones_allocated", target="good") == 120
    assert sample(text, "cec_softphones_allocated", target="bad") is None
    probe = ex.metrics("/probe?target=bad")
    assert sample(probe, "cec_up", target="bad") == 0
    assert "good" not in probe
    assert "cec_api_requests_total" not in probe  # exporter metrics only on /metrics


# --- exposition format ------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_exposition_passes_promtool_check_metrics(simulator, write_config, exporter_server):
    good = simulator(phones=200, mode="pool")
    bad = simulator(phones=10)
    bad.set_faults([Fault(kind="ret_code", value="E_VERY_LONG_CODE")])
    config = write_config(
        targets=[
            target_entry(good, "good", per_phone_metrics=True),
            target_entry(bad, "bad"),
        ]
    )
    ex = exporter_server(config)
    ex.metrics()
    text = ex.metrics()
    assert sample(
        text, "cec_api_ret_code_failures_total", target="bad", api="queryPhone", ret_code="other"
    )
    assert "_created" not in text
    for path in ("/metrics", "/probe?target=good"):
        body = ex.metrics(path)
        check = subprocess.run(
            ["promtool", "check", "metrics"],
            input=body,
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert (check.stdout + check.stderr).strip() == "", "promtool found lint problems"


def test_openmetrics_is_served_when_asked(simulator, write_config, exporter_server):
    sim = simulator(phones=10)
    ex = exporter_server(write_config(targets=[target_entry(sim)]))
    response = ex.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
    assert "cec_up" in response.text


def test_scrape_output_matches_golden_file(simulator, write_config):
    """json_exporter-style golden test: a fixed simulator gives a fixed exposition."""
    sim = simulator(phones=257, tenants=3, suspended_ratio=0.2, mode="pool", pool_nodes=2)
    config = write_config(targets=[target_entry(sim, "golden")])
    result = run_cli("scrape", "--config", str(config), "--target", "golden")
    assert result.returncode == 0, result.stderr
    normalised = re.sub(
        r"^((?:cec_collection_duration_seconds|cec_last_success_timestamp_seconds)\{[^}]*\}) .*$",
        r"\1 <volatile>",
        result.stdout,
        flags=re.M,
    )
    golden = GOLDEN / "scrape_pool.prom"
    assert normalised == golden.read_text(), f"update {golden} if this change is intended"


# --- endpoints --------------------------------------------------------------------------


def test_landing_health_and_errors(simulator, write_config, exporter_server):
    sim = simulator(phones=10)
    ex = exporter_server(write_config(targets=[target_entry(sim, "alpha")]))
    landing = ex.get("/")
    assert landing.status_code == 200
    assert __version__ in landing.text
    assert "alpha" in landing.text
    assert 'href="probe?target=alpha"' in landing.text  # relative: works under any prefix
    assert ex.get("/-/healthy").status_code == 200
    assert ex.get("/-/ready").status_code == 200
    assert ex.get("/nope").status_code == 404
    assert ex.get("/-/reload").status_code == 405
    before = sim.stats()["query_requests"]
    for query in (
        "",
        "?target=",
        "?target=beta",
        f"?target={sim.url}",
        "?target=alpha&target=alpha",
    ):
        assert ex.get("/probe" + query).status_code == 400, query
    assert sim.stats()["query_requests"] == before  # no upstream request for a bad probe


# --- CLI --------------------------------------------------------------------------------


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_check_config_good_and_bad(simulator, write_config):
    sim = simulator(phones=1)
    good = write_config(targets=[target_entry(sim, "alpha", page_size="50")])
    result = run_cli("check-config", "--config", str(good))
    assert result.returncode == 0, result.stderr
    assert "alpha" in result.stdout
    assert "page_size: 50" in result.stdout
    assert sim.config.app_secret not in result.stdout + result.stderr
    bad = write_config(targets=[target_entry(sim, "alpha", page_size=500)])
    result = run_cli("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert "targets[0].page_size: must be 1..100, got 500" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_file_from_environment_and_prometheus_style_alias(simulator, write_config):
    sim = simulator(phones=1)
    path = write_config(targets=[target_entry(sim)])
    by_env = run_cli("check-config", env={"CEC_EXPORTER_CONFIG": str(path)})
    assert by_env.returncode == 0, by_env.stderr
    by_alias = run_cli("check-config", "--config.file", str(path))
    assert by_alias.returncode == 0, by_alias.stderr


@pytest.mark.slow
def test_scrape_exit_codes(simulator, write_config, tmp_path):
    good, bad = simulator(phones=40), simulator(phones=40)
    bad.set_faults([Fault(kind="ret_code", value="1")])
    config = write_config(targets=[target_entry(good, "good"), target_entry(bad, "bad")])
    only_good = run_cli("scrape", "--config", str(config), "--target", "good")
    assert only_good.returncode == 0, only_good.stderr
    assert sample(only_good.stdout, "cec_softphones_allocated", target="good") == 40
    both = run_cli("scrape", "--config", str(config))
    assert both.returncode == 1
    assert sample(both.stdout, "cec_up", target="bad") == 0
    assert "target=bad" in both.stderr
    assert "retCode 1" in both.stderr
    unknown = run_cli("scrape", "--config", str(config), "--target", "nope")
    assert unknown.returncode == 2
    missing = run_cli("scrape", "--config", str(tmp_path / "missing.yml"))
    assert missing.returncode == 2
    assert "missing.yml" in missing.stderr


def test_no_password_or_secret_in_any_output_at_debug_level(simulator, write_config):
    sim = simulator(phones=300, app_secret="APP-SECRET-canary-e2e")
    sim.set_faults([Fault(kind="http_status", value=401, pages=(1,), times=1)])
    config = write_config(targets=[target_entry(sim, per_phone_metrics=True)])
    result = run_cli("scrape", "--config", str(config), "--log-level", "debug")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "level=debug" in output  # debug logging really was on
    assert "SIPPW-canary-" not in output
    assert "APP-SECRET-canary-e2e" not in output


def test_an_empty_account_is_up_with_zero_allocated(simulator, write_config, exporter_server):
    """``total: 0`` is a success: the target shows ``cec_up 1`` and ``allocated 0``.

    ``cec_softphones`` has no series then: it is labelled by tenant, and there is none
    (a ``tenant_id=""`` series would claim phones without a tenant).
    """
    sim = simulator(phones=0)
    text = exporter_server(write_config(targets=[target_entry(sim)])).metrics()
    assert sample(text, "cec_up", target="sim") == 1
    assert sample(text, "cec_softphones_allocated", target="sim") == 0
    assert counts(text) == {}
    assert sample(text, "cec_collection_age_seconds", target="sim") == 0
    assert sim.stats()["query_requests"] == 1


def test_per_phone_series_keep_phones_sharing_a_number_across_tenants(
    simulator, write_config, exporter_server
):
    """10 numbers, each allocated in 3 tenants: 30 phones, hence 30 series."""
    sim = simulator(phones=30, tenants=3, suspended_ratio=0.3, shared_numbers=True)
    ex = exporter_server(write_config(targets=[target_entry(sim, per_phone_metrics=True)]))
    series = samples_named(ex.metrics(), "cec_softphone_registered")
    assert len({(labels["tenant_id"], labels["phone_num"]) for labels, _ in series}) == 30
    assert len({labels["phone_num"] for labels, _ in series}) == 10
    expected = sim.expected().counts
    registered = sum(n for (_, status), n in expected.items() if status == "registered")
    assert sum(value for _, value in series) == registered
