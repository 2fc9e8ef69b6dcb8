"""Prometheus exporter for the Huawei Cloud CEC softphone API (queryPhone)."""

__version__ = "0.2.0"
