"""HTTP/1.1 plumbing: read a request, route it, write the (possibly broken) reply, quietly."""

import contextlib
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from exporter.simulator.api import QUERY_PATH, TOKEN_PATH, query_phone, token_by_ak_sk
from exporter.simulator.control import PREFIX, control
from exporter.simulator.reply import Reply, error_reply
from exporter.simulator.state import SimState

MAX_REQUEST_BODY = 1024 * 1024


class SimHTTPServer(ThreadingHTTPServer):
    """Threaded server that knows its open connections, so stop() can cut them all at once."""

    daemon_threads = True
    # The default backlog of 5 makes a burst of concurrent clients wait for SYN retries.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], state: SimState) -> None:
        self.state = state
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, SimHandler)

    def track(self, connection: socket.socket) -> None:
        """Remember an accepted connection."""
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        """Forget a connection that is closing."""
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut down every open connection; idle keep-alive clients then see the server gone."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the peer
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients hanging up; keep tracebacks for real bugs."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class SimHandler(BaseHTTPRequestHandler):
    """One connection: keep-alive HTTP/1.1 with Content-Length on every answer."""

    protocol_version = "HTTP/1.1"
    server_version = "CEC-Simulator"
    sys_version = ""
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    timeout = 300  # idle keep-alive connections are dropped after this many seconds

    @property
    def _sim(self) -> SimHTTPServer:
        assert isinstance(self.server, SimHTTPServer)
        return self.server

    def setup(self) -> None:
        """Count and track the new connection."""
        super().setup()
        self._sim.state.stats.connection_opened()
        self._sim.track(self.connection)

    def finish(self) -> None:
        """Untrack the connection as it closes."""
        try:
            super().finish()
        finally:
            self._sim.untrack(self.connection)
            self._sim.state.stats.connection_closed()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging: the simulator runs inside tests and benchmarks."""

    def do_GET(self) -> None:
        """Route a GET."""
        self._handle()

    def do_POST(self) -> None:
        """Route a POST."""
        self._handle()

    def do_PUT(self) -> None:
        """Route a PUT."""
        self._handle()

    def do_PATCH(self) -> None:
        """Route a PATCH."""
        self._handle()

    def do_DELETE(self) -> None:
        """Route a DELETE."""
        self._handle()

    def _read_body(self) -> bytes | Reply:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return error_reply(411, "send a Content-Length, not a chunked body")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return error_reply(400, "invalid Content-Length")
        if not 0 <= length <= MAX_REQUEST_BODY:
            return error_reply(413, "request body too large")
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        if isinstance(body, Reply):
            # The unread body would be taken for the next request: close after answering.
            self._write(Reply(status=body.status, body=body.body, close=True))
            return
        self._write(self._route(body))

    def _route(self, body: bytes) -> Reply:
        path = self.path.split("?", 1)[0]
        state = self._sim.state
        if path.startswith(PREFIX):
            return control(state, self.command, path, body)
        api = {TOKEN_PATH: token_by_ak_sk, QUERY_PATH: query_phone}.get(path)
        if api is None:
            return error_reply(404, f"no such path: {path}")
        if self.command != "POST":
            return error_reply(405, f"{self.command} is not allowed on {path}")
        return api(state, self.headers, body)

    def _write(self, reply: Reply) -> None:
        if reply.drop:
            self.close_connection = True
            return
        length = reply.declared_length if reply.declared_length is not None else len(reply.body)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(length))
        for name, value in reply.headers:
            self.send_header(name, value)
        if reply.close:
            self.close_connection = True
        self.end_headers()
        if reply.status == 401:
            self._sim.state.stats.incr("unauthorized")
        try:
            if reply.chunks is not None:
                for chunk in reply.chunks:
                    self.wfile.write(chunk)
            else:
                self.wfile.write(reply.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client gave up, typically on a huge body
