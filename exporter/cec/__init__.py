"""Client for the CEC queryPhone API: token, paging, and a typed snapshot.

A leaf: nothing here imports the rest of the exporter, and nothing here knows about
Prometheus; request outcomes are reported to a ``RequestObserver`` that the caller
supplies, in the words of ``exporter.cec.errors``.
"""

from exporter.cec.client import CecClient
from exporter.cec.deadline import Deadline
from exporter.cec.errors import APIS, OUTCOMES, REASONS, CecError
from exporter.cec.records import Endpoint, Status
from exporter.cec.snapshot import Snapshot
from exporter.cec.target import Secret, TargetConfig
from exporter.cec.trace import CollectionTrace
from exporter.cec.transport import RequestObserver
from exporter.cec.upstream import Upstream

__all__ = [
    "APIS",
    "OUTCOMES",
    "REASONS",
    "CecClient",
    "CecError",
    "CollectionTrace",
    "Deadline",
    "Endpoint",
    "RequestObserver",
    "Secret",
    "Snapshot",
    "Status",
    "TargetConfig",
    "Upstream",
]
