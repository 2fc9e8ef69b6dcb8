"""The bundled Alertmanager inhibitions, in a real Alertmanager on loopback.

A target's alerts may come from different scrape jobs (the probe job raises
CECTargetDown, the exporter's own /metrics job CECTokenEndpointFailing, see
prometheus/prometheus-probe.yml), or carry no job at all (the bundled rules
aggregate by target). Inhibitions must hold in every case, and only within
one target.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from ops_common import AM_CONFIG, require_tool

try:
    import dashboard_queries as dq
except ImportError:  # tests/ imported as a package
    from tests import dashboard_queries as dq  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

JOBS = {
    "same job": ("cec-phone-exporter", "cec-phone-exporter"),
    "probe job and exporter job": ("cec-phone-exporter", "cec-phone-exporter-probe"),
    "no job (aggregated by target)": (None, None),
}


def alert(name: str, severity: str, target: str, job: str | None) -> dict[str, Any]:
    labels = {"alertname": name, "severity": severity, "target": target}
    if job is not None:
        labels |= {"job": job, "instance": f"{job}:9877"}
    return {"labels": labels, "startsAt": datetime.now(UTC).isoformat()}


def post(url: str, alerts: list[dict[str, Any]]) -> None:
    request = urllib.request.Request(
        url + "/api/v2/alerts",
        data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.mark.parametrize("jobs", list(JOBS.values()), ids=list(JOBS))
def test_inhibitions_hold_whichever_job_raised_the_alerts(
    tmp_path: Path, jobs: tuple[str | None, str | None]
) -> None:
    if not any(map(shutil.which, dq.ALERTMANAGER_BINARIES)):
        require_tool(dq.ALERTMANAGER_BINARIES[0])  # skips, or fails under CI
    cause_job, symptom_job = jobs
    alerts = [
        alert("CECTokenEndpointFailing", "critical", "prod", cause_job),
        alert("CECTargetDown", "critical", "prod", symptom_job),
        alert("CECCollectionStale", "warning", "prod", symptom_job),
        alert("CECSuspendedRatioHigh", "warning", "prod", symptom_job),
        # Another target: nothing about prod may silence it.
        alert("CECTargetDown", "critical", "lab", symptom_job),
        alert("CECSuspendedRatioHigh", "warning", "lab", symptom_job),
    ]
    with dq.running_alertmanager(tmp_path, AM_CONFIG.read_text(encoding="utf-8")) as am:
        post(am.url, alerts)
        deadline = time.monotonic() + 20
        while True:
            found = {
                (a["labels"]["alertname"], a["labels"]["target"]): a["status"]["state"]
                for a in am.alerts()
            }
            if len(found) == len(alerts) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert found == {
        ("CECTokenEndpointFailing", "prod"): "active",
        # The token failure is the cause: its symptoms are inhibited...
        ("CECTargetDown", "prod"): "suppressed",
        ("CECCollectionStale", "prod"): "suppressed",
        # ...and a critical alert about prod silences prod's warnings.
        ("CECSuspendedRatioHigh", "prod"): "suppressed",
        ("CECTargetDown", "lab"): "active",
        ("CECSuspendedRatioHigh", "lab"): "suppressed",  # by lab's own CECTargetDown
    }
