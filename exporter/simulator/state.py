"""Everything a running simulator shares between its request threads."""

import random
import threading

from exporter.simulator.edits import Change
from exporter.simulator.faults import FaultBook
from exporter.simulator.model import (
    Expected,
    SimConfig,
    expected,
    reset_edits,
    steer,
    validate,
    with_changes,
)
from exporter.simulator.stats import Stats
from exporter.simulator.tokens import TokenStore


class SimState:
    """Config, tokens, faults and stats behind locks, plus the stop signal delays wait on."""

    def __init__(self, config: SimConfig) -> None:
        validate(config)
        self._lock = threading.Lock()
        self._config = config
        self._rng = random.Random(config.seed)
        self.tokens = TokenStore()
        self.stats = Stats()
        self.faults = FaultBook()
        self.stopping = threading.Event()

    @property
    def config(self) -> SimConfig:
        """The current config; requests take it once so each sees one consistent version."""
        return self._config

    def update(self, changes: dict[str, object]) -> SimConfig:
        """Apply validated ``changes`` atomically (ValueError leaves the config as it was)."""
        with self._lock:
            self._config = with_changes(self._config, changes)
            return self._config

    def steer(self, change: Change) -> list[dict[str, object]]:
        """Change the phone list atomically; returns the phones touched (``before``/``after``)."""
        with self._lock:
            self._config, touched = steer(self._config, change)
            return touched

    def reset_edits(self) -> None:
        """Undo every phone-list edit: the config's ``phones`` are listed as generated."""
        with self._lock:
            self._config = reset_edits(self._config)

    def expected(self) -> Expected:
        """Ground truth for the current config."""
        return expected(self._config)

    def pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless the simulator stops first; False means it is stopping."""
        if seconds > 0:
            return not self.stopping.wait(seconds)
        return not self.stopping.is_set()

    def api_delay(self, config: SimConfig) -> float:
        """Seconds to wait before answering an API request: latency plus seeded jitter."""
        with self._lock:
            jitter = self._rng.uniform(0.0, config.jitter_ms) if config.jitter_ms > 0 else 0.0
        return (config.latency_ms + jitter) / 1000.0
