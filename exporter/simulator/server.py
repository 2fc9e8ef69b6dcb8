"""The :class:`Simulator`: a CEC API on loopback, started and steered from Python."""

import ssl
import threading
from types import TracebackType

from exporter.simulator.edits import Change
from exporter.simulator.faults import Fault
from exporter.simulator.handler import SimHTTPServer
from exporter.simulator.model import Expected, SimConfig
from exporter.simulator.state import SimState


class Simulator:
    """A running CEC simulator; binds at construction so ``url`` is known before serving."""

    def __init__(
        self,
        config: SimConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._state = SimState(config if config is not None else SimConfig())
        self._server = SimHTTPServer((host, port), self._state)
        self._tls = ssl_context is not None
        if ssl_context is not None:
            # HTTPS: the handshake runs in each connection's thread, on first read, so a
            # client that rejects the certificate never stalls the accept loop.
            self._server.socket = ssl_context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def host(self) -> str:
        """The address actually bound."""
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The port actually bound (a free one when constructed with port 0)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL to give the exporter, e.g. ``http://127.0.0.1:41234`` (https with TLS)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}"

    @property
    def config(self) -> SimConfig:
        """The current config (replaced, never mutated, by :meth:`update`)."""
        return self._state.config

    def start(self) -> "Simulator":
        """Serve in a daemon thread; returns self."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("a stopped Simulator cannot be restarted")
            if self._thread is None:
                # shutdown() waits for the loop's next poll: a short interval keeps stop() fast.
                self._thread = threading.Thread(
                    target=self._server.serve_forever,
                    kwargs={"poll_interval": 0.02},
                    name=f"cec-simulator-{self.port}",
                    daemon=True,
                )
                self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve until :meth:`stop` or Ctrl-C (KeyboardInterrupt propagates after stopping)."""
        self.start()
        try:
            # Short waits keep the main thread responsive to signals.
            while not self._state.stopping.wait(0.5):
                pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving, release hanging requests and cut open connections; idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            thread = self._thread
        self._state.stopping.set()
        if thread is not None:
            self._server.shutdown()
            thread.join()
        self._server.server_close()
        self._server.close_connections()

    def __enter__(self) -> "Simulator":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def update(self, **changes: object) -> None:
        """Change config fields at run time; ValueError on an unknown name or bad value."""
        self._state.update(changes)

    def change_phones(self, action: str, count: int, **options: str) -> list[dict[str, object]]:
        """Steer the phone list (``POST /_sim/phones``): ``suspend``, ``register``, ``flap``,
        ``remove``, ``add`` or ``move`` ``count`` phones, optionally of one ``tenant``
        (``move`` also takes ``to``, ``add`` a ``number``); returns the phones touched."""
        return self._state.steer(Change.parse({"action": action, "count": count, **options}))

    def set_faults(self, faults: list[Fault]) -> None:
        """Replace every active fault."""
        self._state.faults.set(list(faults))

    def add_fault(self, fault: Fault) -> None:
        """Add one fault."""
        self._state.faults.add(fault)

    def clear_faults(self) -> None:
        """Remove every fault."""
        self._state.faults.clear()

    def faults(self) -> list[Fault]:
        """Active faults; ``times`` shows what is left of each."""
        return self._state.faults.active()

    def expire_tokens(self) -> None:
        """Invalidate every issued token: the next queryPhone gets HTTP 401."""
        self._state.tokens.expire_all()

    def issued_tokens(self) -> list[str]:
        """Access tokens issued so far (the most recent 1024), for leak checks in tests."""
        return self._state.tokens.issued()

    def stats(self) -> dict[str, object]:
        """JSON-able request counters."""
        return self._state.stats.snapshot()

    def reset_stats(self) -> None:
        """Zero the request counters."""
        self._state.stats.reset()

    def expected(self) -> Expected:
        """Ground truth for the current config, ignoring faults."""
        return self._state.expected()
