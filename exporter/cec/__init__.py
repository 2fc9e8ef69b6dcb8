"""Client for the CEC queryPhone API: token, paging, and a typed snapshot.

Nothing here knows about Prometheus; request outcomes are reported to a
``RequestObserver`` that the collector supplies.
"""

from exporter.cec.client import CecClient, RequestObserver
from exporter.cec.errors import CecError
from exporter.cec.records import Endpoint, Status
from exporter.cec.snapshot import Snapshot

__all__ = ["CecClient", "CecError", "Endpoint", "RequestObserver", "Snapshot", "Status"]
