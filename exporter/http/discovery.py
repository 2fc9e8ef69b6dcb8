"""``/sd``: Prometheus HTTP service discovery (``http_sd_configs``) of the configured targets."""

from __future__ import annotations

import json

from exporter.cec.upstream import budget_key
from exporter.settings import Config

SD_GROUP_LABEL = "__meta_cec_budget_group"


def service_discovery(config: Config) -> bytes:
    """``/sd``: one target group per vendor budget (base_url + app_key), in config order.

    Each group's ``__meta_cec_budget_group`` (the name of its first target, never the
    app key) lets a sharded setup keep one app's accounts on one replica, so a
    ``requests_per_second`` budget is not multiplied by the number of replicas.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for target in config.targets:
        groups.setdefault(budget_key(target), []).append(target.name)
    answer = [{"targets": names, "labels": {SD_GROUP_LABEL: names[0]}} for names in groups.values()]
    return json.dumps(answer, indent=1).encode() + b"\n"
