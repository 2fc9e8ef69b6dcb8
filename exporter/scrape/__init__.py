"""Snapshots into metric families, within the scrape deadline.

``Exporter`` holds one ``TargetCollector`` per target (coalescing, cache, change
counters, history) and the exporter's own metrics; ``families`` builds the metric
families afresh for each scrape. Nothing here speaks HTTP.
"""

from exporter.scrape.collection import Collection, CollectionSummary, collection_timeout
from exporter.scrape.exporter import Exporter, Scrape
from exporter.scrape.target import TargetCollector

__all__ = [
    "Collection",
    "CollectionSummary",
    "Exporter",
    "Scrape",
    "TargetCollector",
    "collection_timeout",
]
