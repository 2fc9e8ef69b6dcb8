"""Settings files watched for changes: their content fingerprint, and the web config in force.

``fingerprint`` tells whether any of a set of files changed (the config file and the
secret and CA files it names are watched this way by ``--config.auto-reload-interval``).
The web config is re-read when the file, or a file it names, changes: upstream re-reads
it on every request and connection; here a change is looked for at most once per
``RELOAD_CHECK_SECONDS``, so a renewed certificate or a changed password takes effect
without a restart.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from exporter.cec.text import fields
from exporter.settings.readers import ConfigError
from exporter.settings.webconfig import WebConfig, load_web_config

log = logging.getLogger(__name__)

RELOAD_CHECK_SECONDS = 1.0
"""The file and the certificates it names are looked at no more often than this."""


def fingerprint(paths: Iterable[str]) -> bytes:
    """A hash of the content of every file named (an unreadable one by its error), in order:
    equal fingerprints mean that no file changed, appeared or went."""
    digest = hashlib.sha256()
    for name in paths:
        try:
            digest.update(Path(name).read_bytes())
        except OSError as err:
            digest.update(f"\0unreadable {err.errno}\0".encode())
        digest.update(b"\0" + name.encode() + b"\0")
    return digest.digest()


class WebConfigFile:
    """The web config as last loaded, re-read when the file or a file it names changes.

    Upstream re-reads the file on every request and connection; here a change is
    looked for at most once per ``RELOAD_CHECK_SECONDS`` (a content hash of every
    file involved). A file that fails to load (broken, missing, or turning TLS on
    or off, which needs a restart) makes ``ok`` False until it is fixed: the web
    layer then fails closed, as upstream does, and one error line says why.
    """

    def __init__(self, path: str | None, config: WebConfig | None = None) -> None:
        self.path = path
        self._config = config if config is not None else WebConfig()
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._fingerprint = self._hash(self._config)
        self._bad_fingerprint: bytes | None = None

    @property
    def ok(self) -> bool:
        """False while the file on disk cannot be loaded (as of the last look)."""
        self.current()
        return self._bad_fingerprint is None

    def _hash(self, config: WebConfig) -> bytes:
        if self.path is None:
            return b""
        return fingerprint((self.path, *(config.tls.files if config.tls else ())))

    def current(self) -> WebConfig:
        """The last config that loaded, after looking for a change if one is due."""
        if self.path is None:
            return self._config
        with self._lock:
            now = time.monotonic()
            if now - self._checked < RELOAD_CHECK_SECONDS:
                return self._config
            self._checked = now
            old = self._config
            fingerprint = self._hash(old)
            if fingerprint == self._bad_fingerprint:
                return old
            if fingerprint == self._fingerprint:
                if self._bad_fingerprint is not None:
                    log.info(
                        "web config is back as it was; serving again", extra=fields(file=self.path)
                    )
                self._bad_fingerprint = None
                return old
            try:
                new = load_web_config(self.path)
                if (new.tls is None) != (old.tls is None):
                    raise ConfigError(self.path, "turning TLS on or off needs a restart")
            except ConfigError as err:
                # One line, no traceback: the message names the key path.
                log.error(  # noqa: TRY400
                    "web config cannot be loaded; answering 500 on every path but "
                    "/-/healthy and /-/ready until it is fixed",
                    extra=fields(file=self.path, error=err),
                )
                self._bad_fingerprint = fingerprint
                return old
            # Hashed before loading, so a change made meanwhile is seen next time; the
            # files named may differ now, and then the hash must cover the new ones.
            same_files = (new.tls.files if new.tls else ()) == (old.tls.files if old.tls else ())
            self._fingerprint = fingerprint if same_files else self._hash(new)
            self._bad_fingerprint = None
            self._config = new
            log.info("web config reloaded", extra=fields(file=self.path))
            return new
