"""Settings files into frozen, typed records; every error names its key path.

``targets`` reads the config file (the CEC accounts), ``webconfig`` the exporter-toolkit
web config (with ``tls`` building its TLS context), ``watch`` keeps the web config in
force current, and ``readers`` holds what the two files share.
"""

from exporter.cec.target import Secret, TargetConfig
from exporter.settings.readers import ConfigError
from exporter.settings.targets import (
    Config,
    load_config,
    parse_config,
    redacted_config,
    redacted_target,
    summary,
)
from exporter.settings.tls import TLSConfig
from exporter.settings.watch import WebConfigFile
from exporter.settings.webconfig import RateLimit, WebConfig, load_web_config

__all__ = [
    "Config",
    "ConfigError",
    "RateLimit",
    "Secret",
    "TLSConfig",
    "TargetConfig",
    "WebConfig",
    "WebConfigFile",
    "load_config",
    "load_web_config",
    "parse_config",
    "redacted_config",
    "redacted_target",
    "summary",
]
